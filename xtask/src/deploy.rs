//! `cargo xtask export`, `run-int` and `bench-int`: the integer engine (mixq-deploy) from the
//! command line — export a calibrated model to one file, evaluate the file, and time it
//! against burn-flex's f32 forward in one process.

use mixq_vit_models::Network;
use std::path::PathBuf;

use burn::tensor::Device;
use clap::Args;
use mixq_core::{BitPlan, Result};
use mixq_deploy::bench::{EngineBenchConfig, EngineBenchRow, bench_engine, gemm_speeds};
use mixq_deploy::{Export, ExportConfig, ExportPlan, IntModel, export_model};
use mixq_ptq::mixed::plan_averages;
use mixq_ptq::{PtqConfig, PtqRun, SoftmaxMode, evaluate_data};
use mixq_vit_models::{ModelCard, SiteInfo};

use crate::common::{BitArgs, CalibArgs, EvalDataArgs, ModelArgs, QuantizerArgs, progress};

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
    let bits = args.bits.unwrap_or(8);
    let config = ExportConfig {
        plan: match (run, &args.plan) {
            (Some(plan), _) => ExportPlan::Given(plan),
            (None, Some(path)) => ExportPlan::Given(BitPlan::load(path)?),
            (None, None) => ExportPlan::Uniform {
                w_bits: args.bit_args.w_bits.unwrap_or(bits),
                a_bits: args.bit_args.a_bits.unwrap_or(bits),
                image_bits: args.bit_args.image_bits,
            },
        },
        seed: args.model.seed,
        calib: args.calibration.calib,
        calib_data: args.calibration.calib_data.clone(),
        ptq: PtqConfig {
            post_ln,
            softmax,
            ..PtqConfig::default()
        },
    };
    let sites = model.sites();
    let Export {
        engine,
        quantized,
        max_abs_diff: max_d,
    } = export_model(&card, model, &config, &device)?;
    let plan = engine.plan();
    let bytes = engine.to_bytes()?;
    mixq_core::write_atomic(&args.out, &bytes)?;
    println!("| model | plan | integer sites | file bytes | max |Δlogits| vs fake-quant (calib) |");
    println!("|---|---|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {max_d:.2e} |",
        card.aliases[0],
        describe_plan(plan, &sites),
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
        print!("\n{}", a.markdown(&describe));
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
    let card = engine.card()?;
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

pub fn bench_int(args: BenchIntArgs) -> Result<()> {
    let config = EngineBenchConfig {
        batches: args.batches.clone(),
        images: args.images,
        calib: args.calib,
        repeat: args.repeat,
        softmax: args.softmax,
    };
    config.validate()?;
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
    let rows = bench_engine(&model, &config, &device)?;
    print!("{}", EngineBenchRow::markdown(&rows, &card.aliases[0]));
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

/// The integer GEMM's throughput against the machine's measured `u8 × i8` peak.
fn gemm_table(device: &Device, repeat: usize) -> Result<()> {
    let peak = mixq_quant_kernels::igemm::measured_vnni_peak_gops();
    println!(
        "integer GEMM: {}",
        mixq_quant_kernels::igemm::IntGemm::new().kernel_name()
    );
    match peak {
        Some(p) => println!(
            "measured u8 x i8 peak: {p:.0} GOP/s on {} threads (vpdpbusd loop, real clock)",
            crate::common::threads()
        ),
        None => println!("no AVX-512 VNNI: no peak measured"),
    }
    println!("\n| M x K x N | int8 GOP/s | % of peak | int4 GOP/s | f32 burn-flex GOP/s |");
    println!("|---|---:|---:|---:|---:|");
    for g in gemm_speeds(device, repeat)? {
        let (m, k, n) = g.shape;
        let pct = peak.map_or("-".into(), |p| format!("{:.0} %", 100.0 * g.int8_gops / p));
        println!(
            "| {m} x {k} x {n} | {:.0} | {pct} | {:.0} | {:.0} |",
            g.int8_gops, g.int4_gops, g.f32_gops
        );
    }
    println!();
    Ok(())
}
