//! `cargo xtask export`, `run-int` and `bench-int`: the integer engine (mixq-deploy) from the
//! command line — export a calibrated model to one file, evaluate the file, and time it
//! against burn-flex's f32 forward in one process.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use clap::Args;
use mixq_core::{BitPlan, BitWidth, Error, Result, SiteBits};
use mixq_deploy::{Export, IntModel};
use mixq_ptq::{PtqConfig, PtqRun, SoftmaxMode, evaluate_data, quantize, uniform_plan};
use mixq_vit_models::{ModelCard, SiteInfo};

use crate::common::median;
use crate::common::{BitArgs, CalibArgs, EvalDataArgs, ModelArgs, QuantizerArgs, progress};
use mixq_ptq::calibration_images;
use mixq_ptq::host_logits;
use mixq_ptq::mixed::plan_averages;

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A bit plan (TOML) instead of uniform bits.
    #[arg(long, conflicts_with_all = ["bits", "w_bits", "a_bits", "run"])]
    pub plan: Option<PathBuf>,
    /// A `cargo xtask ptq` run folder: its plan.toml, and the model, seed, calibration size and
    /// quantizer options recorded in its results.json (these override --model/--seed/--calib).
    #[arg(long, conflicts_with_all = ["bits", "w_bits", "a_bits"])]
    pub run: Option<PathBuf>,
    /// Weight and activation bits (sets both; default 8).
    #[arg(long)]
    pub bits: Option<u8>,
    #[command(flatten)]
    pub bit_args: BitArgs,
    #[command(flatten)]
    pub calibration: CalibArgs,
    #[command(flatten)]
    pub quantizers: QuantizerArgs,
    /// The output file (e.g. model.mixq.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Then run the engine, fake-quant and FP32 over the evaluation data (default: the card's
    /// test split): top-1 of each, images whose top-1 differs between engine and fake-quant,
    /// and images/s side by side.
    #[arg(long)]
    pub verify: bool,
    #[command(flatten)]
    pub eval_data: EvalDataArgs,
}

#[derive(Args, Debug)]
pub struct RunIntArgs {
    /// A file written by `cargo xtask export`.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub eval_data: EvalDataArgs,
}

#[derive(Args, Debug)]
pub struct BenchIntArgs {
    #[arg(long, default_value = "deit-s")]
    pub model: String,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batches: Vec<usize>,
    /// Images per measurement (at least one batch).
    #[arg(long, default_value_t = 16)]
    pub images: usize,
    /// Random calibration images.
    #[arg(long, default_value_t = 8)]
    pub calib: usize,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Attention-probability quantizer of the integer configurations.
    #[arg(long, default_value = "logsqrt2")]
    pub softmax: SoftmaxMode,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the random weights (timm names) here, for tools/ort_bench.sh.
    #[arg(long)]
    pub save_weights: Option<PathBuf>,
    /// Also write the results table (JSON) here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn export(mut args: ExportArgs) -> Result<()> {
    let (mut post_ln, mut softmax) = (args.quantizers.post_ln, args.quantizers.softmax);
    let run = match &args.run {
        Some(dir) => {
            let run = PtqRun::read(dir)?;
            args.model.model = run.model;
            args.model.seed = run.seed;
            args.calibration.calib = run.calib_images;
            if let Some(modes) = run.modes {
                (post_ln, softmax) = modes;
            }
            Some(run.plan)
        }
        None => None,
    };
    let card = args.model.card()?;
    // Bad evaluation data fails before calibration.
    let data = args
        .verify
        .then(|| args.eval_data.open(&card))
        .transpose()?;
    let device = args.model.device.device()?;
    let model = args.model.load(&card, &device)?;
    let fp_model = data.is_some().then(|| model.clone());
    let sites = model.sites();
    let bits = args.bits.unwrap_or(8);
    let mut plan = match (run, &args.plan) {
        (Some(plan), _) => plan,
        (None, Some(path)) => BitPlan::load(path)?,
        (None, None) => uniform_plan(
            &sites,
            args.bit_args.w_bits.unwrap_or(bits),
            args.bit_args.a_bits.unwrap_or(bits),
            args.bit_args.image_bits,
        )?,
    };
    plan.check_sites(sites.iter().map(|s| &s.id))?;
    plan.meta.insert("model".into(), card.name.clone());
    plan.meta.insert("seed".into(), args.model.seed.to_string());
    plan.meta.insert("post_ln".into(), post_ln.to_string());
    plan.meta.insert("softmax".into(), softmax.to_string());

    let calib = calibration_images(
        &card.data_spec(),
        args.calibration.calib_data.as_deref(),
        args.calibration.calib,
        args.model.seed,
        &device,
    )?;
    let config = PtqConfig {
        post_ln,
        softmax,
        ..PtqConfig::default()
    };
    let Export {
        engine,
        quantized,
        max_abs_diff: max_d,
    } = mixq_deploy::export(model, &plan, &config, calib)?;
    let bytes = engine.to_bytes()?;
    mixq_core::write_atomic(&args.out, &bytes)?;
    println!("| model | plan | integer sites | file bytes | max |Δlogits| vs fake-quant (calib) |");
    println!("|---|---|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {max_d:.2e} |",
        card.aliases[0],
        describe_plan(&plan, &sites),
        engine.num_integer_sites(),
        bytes.len(),
    );
    println!("\nwrote {}", args.out.display());
    if let (Some(data), Some(fp_model)) = (data, fp_model) {
        let describe = data.describe.clone();
        let bar = progress(data.len, "verify");
        let a = mixq_deploy::verify(&fp_model, &quantized, &engine, data, &device, |done, _| {
            bar.set_position(done as u64)
        })?;
        bar.finish_and_clear();
        println!(
            "\n| data | images | FP32 top-1 % | fake-quant top-1 % | engine top-1 % | top-1 disagreements | max |Δlogits| | FP32 images/s | fake-quant images/s | engine images/s | engine vs FP32 |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        println!(
            "| {describe} | {} | {:.2} | {:.2} | {:.2} | {} | {:.2e} | {:.0} | {:.0} | {:.0} | {:.2}x |",
            a.engine.metrics.images,
            a.fp.metrics.top1_pct(),
            a.fake_quant.metrics.top1_pct(),
            a.engine.metrics.top1_pct(),
            a.disagreements.len(),
            a.max_abs_diff,
            a.fp.images_per_second(),
            a.fake_quant.images_per_second(),
            a.engine.images_per_second(),
            a.engine.images_per_second() / a.fp.images_per_second(),
        );
        let [p50, p90, p99] = a.diff_percentiles;
        println!(
            "per-image max |Δlogits| engine vs fake-quant: median {p50:.2e}, 90th percentile {p90:.2e}, 99th {p99:.2e}"
        );
        if !a.disagreements.is_empty() {
            let shown: Vec<String> = a
                .disagreements
                .iter()
                .take(20)
                .map(usize::to_string)
                .collect();
            println!(
                "images whose top-1 differs (data-set index{}): {}",
                if a.disagreements.len() > 20 {
                    ", first 20"
                } else {
                    ""
                },
                shown.join(", ")
            );
        }
        println!(
            "\nbatch {}, {} threads; each batch runs through all three forwards in turn.",
            args.eval_data.batch,
            crate::common::threads()
        );
    }
    Ok(())
}

fn describe_plan(plan: &BitPlan, sites: &[SiteInfo]) -> String {
    format!("avg {:.2} weight bits", plan_averages(plan, sites).0)
}

pub fn run_int(args: RunIntArgs) -> Result<()> {
    let engine = IntModel::load(&args.model)?;
    let name = engine.plan().meta.get("model").cloned().ok_or_else(|| {
        Error::parse(
            &args.model,
            "header key 'plan.meta.model' missing: cannot tell which data set the model expects",
        )
    })?;
    let card = ModelCard::find(&name)?;
    if card.arch != *engine.arch() {
        return Err(Error::parse(
            &args.model,
            format!("header key 'arch' differs from model card '{name}'"),
        ));
    }
    let data = args.eval_data.open(&card)?;
    let describe = data.describe.clone();
    let bar = progress(data.len, "run-int");
    let result = evaluate_data(
        data,
        false,
        |batch| engine.forward(&batch.images, batch.len()),
        |done, _, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    let metrics = &result.metrics;
    println!("| model file | data | batch | images | top-1 % | top-5 % | images/s |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {describe} | {} | {} | {:.2} | {:.2} | {:.1} |",
        args.model.display(),
        args.eval_data.batch,
        metrics.images,
        metrics.top1_pct(),
        metrics.top5_pct(),
        result.images_per_second(),
    );
    Ok(())
}

/// The mixed plan of `bench-int`: activations at 8 bits; in even blocks qkv 4, proj 8, fc1 2,
/// fc2 4 weight bits, in odd blocks qkv 8, proj 4, fc1 4, fc2 2 — a 2/4/8 mix whose
/// parameter-weighted average over the blocks is exactly 4 bits; patch embedding and head at 8.
pub fn mixed_plan(sites: &[SiteInfo]) -> Result<BitPlan> {
    let mut plan = uniform_plan(sites, 8, 8, 8)?;
    for s in sites {
        let id = s.id.as_str();
        let Some(rest) = id.strip_prefix("blocks.") else {
            continue;
        };
        let (block, layer) = rest.split_once('.').unwrap_or((rest, ""));
        let even = block.parse::<usize>().map_or(true, |b| b % 2 == 0);
        let w = match (layer, even) {
            ("attn.qkv", true) | ("mlp.fc2", true) | ("attn.proj", false) | ("mlp.fc1", false) => 4,
            ("attn.proj", true) | ("attn.qkv", false) => 8,
            ("mlp.fc1", true) | ("mlp.fc2", false) => 2,
            _ => continue,
        };
        plan.sites.insert(
            s.id.clone(),
            SiteBits {
                w_bits: BitWidth::new(w)?,
                a_bits: BitWidth::new(8)?,
            },
        );
    }
    plan.meta.insert("name".into(), "mixed-2/4/8".into());
    Ok(plan)
}

#[derive(Debug, serde::Serialize)]
struct BenchRow {
    config: String,
    avg_weight_bits: f64,
    model_bytes: usize,
    /// (batch, images/s, ms per batch)
    speeds: Vec<(usize, f64, f64)>,
}

/// Seconds per image of `run(batch)` over `images` images (median of `repeat`, after a warm-up).
fn time_it(
    images: usize,
    batch: usize,
    repeat: usize,
    run: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<f64> {
    run(batch)?;
    let mut times = Vec::new();
    for _ in 0..repeat {
        let start = Instant::now();
        let mut done = 0;
        while done < images {
            run(batch)?;
            done += batch;
        }
        times.push(start.elapsed().as_secs_f64() / done as f64);
    }
    Ok(median(times))
}

pub fn bench_int(args: BenchIntArgs) -> Result<()> {
    if args.repeat == 0 || args.images == 0 || args.calib == 0 || args.batches.contains(&0) {
        return Err(Error::invalid(
            "--repeat/--images/--calib/--batches",
            0,
            "must be at least 1",
        ));
    }
    let card = ModelCard::find(&args.model)?;
    let device = Device::flex();
    device.seed(args.seed);
    crate::common::print_build();
    gemm_table(&device, args.repeat)?;
    let model = card.arch.init(&device)?;
    if let Some(path) = &args.save_weights {
        model.save_safetensors(path)?;
        println!("wrote {} (timm names)", path.display());
    }
    let sites = model.sites();
    let s = card.arch.img_size();
    let c = card.arch.in_chans();
    let max_batch = *args.batches.iter().max().expect("non-empty");
    let input = Tensor::<4>::random(
        [max_batch, c, s, s],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let host = mixq_quant_kernels::host_values(&input)?;
    let calib = Tensor::<4>::random(
        [args.calib, c, s, s],
        Distribution::Normal(0.0, 1.0),
        &device,
    );

    let mut rows = Vec::new();
    let fp_bytes = model.num_params() * 4;
    let mut speeds = Vec::new();
    for &b in &args.batches {
        let x = input.clone().narrow(0, 0, b);
        let spi = time_it(args.images, b, args.repeat, &mut |_| {
            let _ = host_logits(model.forward(x.clone()));
            Ok(())
        })?;
        speeds.push((b, 1.0 / spi, spi * b as f64 * 1e3));
    }
    rows.push(BenchRow {
        config: "FP32 burn-flex".into(),
        avg_weight_bits: 32.0,
        model_bytes: fp_bytes,
        speeds,
    });
    let configs: Vec<(&str, BitPlan)> = vec![
        ("W8A8", uniform_plan(&sites, 8, 8, 8)?),
        ("W4A8", uniform_plan(&sites, 4, 8, 8)?),
        ("mixed 2/4/8 A8", mixed_plan(&sites)?),
    ];
    let config = PtqConfig {
        softmax: args.softmax,
        ..PtqConfig::default()
    };
    for (name, plan) in configs {
        let q = quantize(model.clone(), calib.clone(), &plan, &config)?;
        let engine = IntModel::from_quantized(&q)?;
        drop(q);
        let model_bytes = engine.to_bytes()?.len();
        let mut speeds = Vec::new();
        for &b in &args.batches {
            let x = &host[..b * c * s * s];
            let spi = time_it(args.images, b, args.repeat, &mut |b| {
                engine.forward(x, b).map(|_| ())
            })?;
            speeds.push((b, 1.0 / spi, spi * b as f64 * 1e3));
        }
        rows.push(BenchRow {
            config: name.into(),
            avg_weight_bits: plan_averages(&plan, &sites).0,
            model_bytes,
            speeds,
        });
    }

    let fp = &rows[0];
    print!("| {} | config | avg w bits | model MB |", card.aliases[0]);
    for &b in &args.batches {
        print!(" b{b} images/s | b{b} ms/batch | b{b} vs FP32 |");
    }
    println!();
    print!("|---|---|---:|---:|");
    for _ in &args.batches {
        print!("---:|---:|---:|");
    }
    println!();
    for r in &rows {
        print!(
            "| | {} | {:.2} | {:.1} |",
            r.config,
            r.avg_weight_bits,
            r.model_bytes as f64 / 1e6
        );
        for (i, (_, ips, ms)) in r.speeds.iter().enumerate() {
            print!(" {ips:.1} | {ms:.1} | {:.2}x |", ips / fp.speeds[i].1);
        }
        println!();
    }
    println!(
        "\n{} threads (rayon), softmax {}, {} images per measurement, median of {}; random weights (seed {}), {} random calibration images.",
        crate::common::threads(),
        args.softmax,
        args.images,
        args.repeat,
        args.seed,
        args.calib
    );
    if let Some(path) = &args.json {
        let json = mixq_core::to_json(&rows, "results")?;
        mixq_core::write_atomic(path, json.as_bytes())?;
    }
    Ok(())
}

/// GOP/s of the integer GEMM (int8 and int4 weights, `f32` output with the fused epilogue) and
/// of burn-flex's `f32` matmul on DeiT-S's linear shapes, one image and a batch of 8, against
/// the machine's measured `u8 × i8` peak.
fn gemm_table(device: &Device, repeat: usize) -> Result<()> {
    use mixq_quant_kernels::igemm::{ActQuant, IntGemm, measured_vnni_peak_gops};
    use mixq_quant_kernels::packing::PackedWeights;
    let gemm = IntGemm::new();
    let peak = measured_vnni_peak_gops();
    println!("integer GEMM: {}", gemm.kernel_name());
    match peak {
        Some(p) => println!(
            "measured u8 x i8 peak: {p:.0} GOP/s on {} threads (vpdpbusd loop, real clock)",
            crate::common::threads()
        ),
        None => println!("no AVX-512 VNNI: no peak measured"),
    }
    println!(
        "
| M x K x N | int8 GOP/s | % of peak | int4 GOP/s | f32 burn-flex GOP/s |"
    );
    println!("|---|---:|---:|---:|---:|");
    let aq = ActQuant::new(0.02, 128, BitWidth::new(8)?)?;
    for (m, k, n) in [
        (197, 384, 1152),
        (197, 384, 1536),
        (197, 1536, 384),
        (1576, 384, 1152),
        (1576, 384, 1536),
        (1576, 1536, 384),
    ] {
        let ops = 2.0 * (m * n * k) as f64;
        let a: Vec<u8> = (0..m * k).map(|i| (i * 7 % 251) as u8).collect();
        // Best of at least `repeat` calls spread over at least 0.3 s: a single call is ~1 ms,
        // and a shared machine's interruptions last longer than a few of them.
        let best = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
            let (mut best, start, mut calls) = (f64::MAX, Instant::now(), 0);
            while calls < repeat.max(5) || start.elapsed().as_secs_f64() < 0.3 {
                let t = Instant::now();
                f()?;
                best = best.min(t.elapsed().as_secs_f64());
                calls += 1;
            }
            Ok(ops / best / 1e9)
        };
        let mut int = Vec::new();
        for bits in [8u8, 4] {
            let qmax = (1i32 << bits) - 1;
            let codes: Vec<i32> = (0..n * k)
                .map(|i| (i * 13 % 97) as i32 % (qmax + 1))
                .collect();
            let w = PackedWeights::from_codes(
                n,
                k,
                BitWidth::new(bits)?,
                &codes,
                vec![0.01; n],
                vec![(qmax + 1) / 2; n],
            )?;
            let p = gemm.prepare(w)?;
            let mut out = vec![0f32; m * n];
            int.push(best(&mut || gemm.gemm_f32(&a, m, aq, &p, None, &mut out))?);
        }
        let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), device);
        let w = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), device);
        let f32_gops = best(&mut || {
            let _ = x.clone().matmul(w.clone()).into_data();
            Ok(())
        })?;
        let pct = peak.map_or("-".into(), |p| format!("{:.0} %", 100.0 * int[0] / p));
        println!(
            "| {m} x {k} x {n} | {:.0} | {pct} | {:.0} | {f32_gops:.0} |",
            int[0], int[1]
        );
    }
    println!();
    Ok(())
}
