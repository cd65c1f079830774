//! `cargo xtask ptq`: post-training quantization with a fixed bit plan (or `--plan FILE`),
//! full precision and quantized side by side, and the run folder with plan, results, report.

use std::path::{Path, PathBuf};

use clap::Args;
use mixq_core::{BitPlan, Error, Result, RunDir};
use mixq_ptq::{
    Metrics, PostLnMode, PtqConfig, QuantizedModel, SoftmaxMode, quantize, uniform_plan,
};
use serde::Serialize;

use crate::common::{
    EvalData, ModelArgs, batch_tensor, calibration_images, calibration_source, is_in_memory,
    progress,
};
use crate::eval::logits_vec;
use crate::mixed::{CalibSource, MixedArgs, run_mixed};

#[derive(Args, Debug)]
pub struct PtqArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Weight and activation bits (sets both).
    #[arg(long, default_value_t = 4)]
    pub bits: u8,
    /// Weight bits (overrides --bits).
    #[arg(long)]
    pub wbits: Option<u8>,
    /// Activation bits (overrides --bits).
    #[arg(long)]
    pub abits: Option<u8>,
    /// Bits of the image input (the patch embedding's input).
    #[arg(long, default_value_t = 8)]
    pub image_bits: u8,
    /// A bit plan (TOML, as written by every run) instead of uniform bits.
    #[arg(long, conflicts_with_all = ["wbits", "abits"])]
    pub plan: Option<PathBuf>,
    /// Calibration images (seeded sample of the train split).
    #[arg(long, default_value_t = 32)]
    pub calib: usize,
    /// Evaluate on the first N images only.
    #[arg(long)]
    pub eval: Option<usize>,
    /// Evaluation folder (ImageNet layout); digits models default to the digits test split.
    /// Pose models: a COCO-format folder (person_keypoints.json + val/), synthetic if absent.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Calibration folder (a training split in ImageNet layout); digits models use their train split.
    #[arg(long)]
    pub calib_data: Option<PathBuf>,
    /// Quantization of post-LayerNorm inputs.
    #[arg(long, default_value = "clipped-channel")]
    pub post_ln: PostLnMode,
    /// Quantization of the attention probabilities.
    #[arg(long, default_value = "logsqrt2")]
    pub softmax: SoftmaxMode,
    /// Run the post-LN x softmax grid at these bits and write it as one table.
    #[arg(long)]
    pub ablation: bool,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Where run folders are written.
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    /// Mixed precision: LRP scores + sensitivity sweep + allocation at --avg-bits, compared
    /// with the uniform plan at the same budget.
    #[arg(long, conflicts_with_all = ["plan", "ablation", "wbits", "abits"])]
    pub mixed: bool,
    #[command(flatten)]
    pub mixed_args: MixedArgs,
    /// Images of the generated synthetic training set (without --data); calibration and probe
    /// crops come from it, the held-out set (a fifth as many, or --val-images) is scored.
    #[arg(long, default_value_t = 300, help_heading = "Pose models (wtpose-*)")]
    pub synthetic: usize,
    /// Held-out synthetic images.
    #[arg(long, help_heading = "Pose models (wtpose-*)")]
    pub val_images: Option<usize>,
    /// Skip the flip test when scoring.
    #[arg(long, help_heading = "Pose models (wtpose-*)")]
    pub no_flip: bool,
}

/// One row of the results table.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    post_ln: Option<PostLnMode>,
    softmax: Option<SoftmaxMode>,
    metrics: Metrics,
}

#[derive(Debug, Serialize)]
struct Results<'a> {
    model: &'a str,
    seed: u64,
    calib_images: usize,
    eval_images: usize,
    data: &'a str,
    rows: &'a [Row],
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| model | post-LN | softmax | top-1 % | top-5 % | CE loss | KL to FP |\n|---|---|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let opt = |o: Option<String>| o.unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.4} | {} |\n",
            r.name,
            opt(r.post_ln.map(|m| m.to_string())),
            opt(r.softmax.map(|m| m.to_string())),
            r.metrics.top1_pct(),
            r.metrics.top5_pct(),
            r.metrics.loss(),
            if r.post_ln.is_some() {
                format!("{:.4}", r.metrics.kl())
            } else {
                "-".into()
            },
        ));
    }
    s
}

pub fn run(args: PtqArgs) -> Result<()> {
    if args.model.model.starts_with("wtpose") {
        return crate::pose_ptq::run(&args);
    }
    if args.mixed {
        let source = CalibSource {
            calib: args.calib,
            calib_data: calibration_source(args.calib_data.as_deref(), args.data.as_deref())
                .map(Path::to_path_buf),
            image_bits: args.image_bits,
        };
        return run_mixed(
            &args.model,
            &args.mixed_args,
            &source,
            args.data.as_deref(),
            args.eval,
            args.batch,
            &args.runs,
        );
    }
    let card = args.model.card()?;
    // Bad evaluation data fails before the minutes of calibration.
    let data = EvalData::open(&card, args.data.as_deref(), args.eval, args.batch)?;
    let device = args.model.device.device()?;
    let model = args.model.load(&card, &device)?;
    let sites = model.sites();
    let (w, a) = (
        args.wbits.unwrap_or(args.bits),
        args.abits.unwrap_or(args.bits),
    );
    let mut plan = match &args.plan {
        Some(path) => BitPlan::load(path)?,
        None => uniform_plan(&sites, w, a, args.image_bits)?,
    };
    plan.check_sites(sites.iter().map(|s| &s.id))?;
    plan.meta.insert("model".into(), card.name.clone());
    plan.meta.insert("seed".into(), args.model.seed.to_string());
    let label = match &args.plan {
        Some(p) => format!("plan {}", p.display()),
        None => format!("W{w}A{a}"),
    };

    let calib = calibration_images(
        &card,
        args.calib_data.as_deref().or(args.data.as_deref()),
        args.calib,
        args.model.seed,
        &device,
    )?;
    if args.calib_data.is_none() && args.data.as_deref().is_some_and(|d| !is_in_memory(d)) {
        tracing::warn!(
            "no --calib-data: calibrating on a seeded sample of --data (evaluation images)"
        );
    }
    let n_calib = calib.dims()[0];

    let grid: Vec<(PostLnMode, SoftmaxMode)> = if args.ablation {
        let post = [
            PostLnMode::Uniform,
            PostLnMode::ChannelReparam,
            PostLnMode::ClippedChannel,
        ];
        let soft = [
            SoftmaxMode::Uniform,
            SoftmaxMode::Log2,
            SoftmaxMode::LogSqrt2,
        ];
        post.iter()
            .flat_map(|&p| soft.iter().map(move |&s| (p, s)))
            .collect()
    } else {
        vec![(args.post_ln, args.softmax)]
    };
    let bar = progress(grid.len(), "calibrate");
    let mut quantized: Vec<(PostLnMode, SoftmaxMode, QuantizedModel)> = Vec::new();
    for &(post_ln, softmax) in &grid {
        let config = PtqConfig {
            post_ln,
            softmax,
            ..PtqConfig::default()
        };
        quantized.push((
            post_ln,
            softmax,
            quantize(model.clone(), calib.clone(), &plan, &config)?,
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();

    let describe = data.describe.clone();
    let bar = progress(data.len, "evaluate");
    let mut fp = Metrics::default();
    let mut qm = vec![Metrics::default(); quantized.len()];
    for batch in data.batches {
        if batch.is_empty() {
            continue;
        }
        let x = batch_tensor(&batch, &device);
        let fp_logits = logits_vec(model.forward(x.clone()));
        fp.add(&fp_logits, &batch.labels, None);
        for ((_, _, q), m) in quantized.iter().zip(&mut qm) {
            m.add(
                &logits_vec(q.forward(x.clone())),
                &batch.labels,
                Some(&fp_logits),
            );
        }
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    if fp.images == 0 {
        return Err(Error::Data {
            path: args.data.clone().unwrap_or_default(),
            message: "no image could be evaluated".into(),
        });
    }

    let mut rows = vec![Row {
        name: format!("{} FP32", card.aliases[0]),
        post_ln: None,
        softmax: None,
        metrics: fp,
    }];
    for ((post_ln, softmax, _), metrics) in quantized.iter().zip(qm) {
        rows.push(Row {
            name: format!("{} {label}", card.aliases[0]),
            post_ln: Some(*post_ln),
            softmax: Some(*softmax),
            metrics,
        });
    }
    let table = table(&rows);
    print!("{table}");

    let run = RunDir::create(
        &args.runs,
        if args.ablation { "ptq-ablation" } else { "ptq" },
    )?;
    let results = Results {
        model: &card.name,
        seed: args.model.seed,
        calib_images: n_calib,
        eval_images: rows[0].metrics.images,
        data: &describe,
        rows: &rows,
    };
    let json = serde_json::to_string_pretty(&results)
        .map_err(|e| Error::invalid("results", "json", e.to_string()))?;
    run.write("results.json", json.as_bytes())?;
    run.write("plan.toml", plan.to_toml()?.as_bytes())?;
    let report = format!(
        "# PTQ: {} ({label})\n\nCalibration: {n_calib} images (seed {}). Evaluation: {describe}.\n\n{table}\n\
         KL is the mean KL(FP || quantized) over the evaluation images. Reproduce:\n\n```\ncargo xtask ptq {}\n```\n",
        card.aliases[0],
        args.model.seed,
        std::env::args().skip(2).collect::<Vec<_>>().join(" "),
    );
    run.write("report.md", report.as_bytes())?;
    let path = run.finish()?;
    println!("\nwrote {}", path.display());
    Ok(())
}
