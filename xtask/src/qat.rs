//! `cargo xtask qat`: quantization-aware training of a shipped model (digits, Fashion-MNIST, MNIST) with any bit plan (uniform,
//! `--plan FILE`, or `--mixed` from the same allocator as `ptq --mixed`), resumable from the
//! checkpoint every epoch writes, and a run folder with learning curves and the final table.

use std::path::PathBuf;

use clap::Args;
use mixq_core::{BitPlan, Result};
use mixq_ptq::PtqConfig;
use mixq_qat_trainer::{
    CHECKPOINT_FILE, QatConfig, QatReportContext, QatResults, QatScores, QatTrainer, TrainingSplits,
};

use crate::common::{BitArgs, ModelArgs, ResumeArgs, StageBars, fit_with_bars};
use crate::mixed::MixedArgs;
use mixq_datasets::classification_data;
use mixq_ptq::mixed::{CalibrationConfig, ChosenPlan, PlanChoice, choose_plan};

#[derive(Args, Debug)]
pub struct QatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Data set: digits, fashion-mnist, mnist or a folder of the four IDX files (default: the
    /// card's). Training uses its train split, validation its val split, final figures its test.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A bit plan (TOML, as `ptq`/`allocate` write) instead of uniform bits.
    #[arg(long, conflicts_with_all = ["bits", "w_bits", "a_bits", "mixed"])]
    pub plan: Option<PathBuf>,
    /// Uniform weight and activation bits (sets both).
    #[arg(long, default_value_t = 4)]
    pub bits: u8,
    #[command(flatten)]
    pub bit_args: BitArgs,
    /// Mixed precision: the plan of the allocator at one --avg-bits budget with the first
    /// --criterion (default mix), exactly as `ptq --mixed` makes it.
    #[arg(long, conflicts_with_all = ["bits", "w_bits", "a_bits"])]
    pub mixed: bool,
    #[command(flatten)]
    pub mixed_args: MixedArgs,
    /// Calibration images (initial steps and zero points; a seeded sample of the train split).
    #[arg(long, default_value_t = 32)]
    pub calib: usize,
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Peak learning rate of the model's weights (AdamW, warm-up then cosine).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Peak learning rate of the quantizers' step sizes.
    #[arg(long, default_value_t = 5e-3)]
    pub step_lr: f64,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f32,
    /// Weight of the distillation loss (the label loss gets 1 - alpha).
    #[arg(long, default_value_t = 0.7)]
    pub kd_alpha: f64,
    /// Softmax temperature of the distillation loss.
    #[arg(long, default_value_t = 4.0)]
    pub kd_temperature: f64,
    /// Random shift of training images by up to this many pixels (0: none).
    #[arg(long, default_value_t = 1)]
    pub shift: usize,
    /// Train on the first N training images only (quick runs).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Evaluate on the first N test images only.
    #[arg(long)]
    pub eval: Option<usize>,
    #[command(flatten)]
    pub run: ResumeArgs,
}

/// `cargo xtask qat`.
pub fn run(args: QatArgs) -> Result<()> {
    let card = args.model.card()?;
    let data = classification_data(&card.data_spec(), args.data.as_deref(), "qat")?;
    let config = QatConfig {
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        step_lr: args.step_lr,
        weight_decay: args.weight_decay,
        kd_alpha: args.kd_alpha,
        kd_temperature: args.kd_temperature,
        seed: args.model.seed,
        shift: args.shift,
        shift_fill: card.preprocess.black_level(),
    };
    config.validate()?;
    let splits = TrainingSplits::new(&data, &card, args.limit, args.eval)?;
    let resume = args.run.checkpoint(CHECKPOINT_FILE, "qat")?;

    let device = args.model.device.device()?;
    let fp = args.model.load(&card, &device)?;
    let seed = args.model.seed;
    let choice = if let Some(path) = &args.plan {
        PlanChoice::Given {
            name: format!("plan {}", path.display()),
            plan: BitPlan::load(path)?,
        }
    } else if args.mixed {
        PlanChoice::Mixed {
            config: args.mixed_args.config(&args.run.runs),
            criterion: args.mixed_args.budget.criteria[0],
        }
    } else {
        PlanChoice::Uniform {
            w_bits: args.bit_args.w_bits.unwrap_or(args.bits),
            a_bits: args.bit_args.a_bits.unwrap_or(args.bits),
        }
    };
    let calibration = CalibrationConfig {
        images: args.calib,
        data: args.data.clone(),
        image_bits: args.bit_args.image_bits,
    };
    let mut bars = StageBars::default();
    let ChosenPlan { plan, label, calib } = choose_plan(
        &fp,
        &card,
        seed,
        &choice,
        &calibration,
        &device,
        |stage, d, t| bars.update(stage.name(), d, t),
    )?;
    bars.finish();

    // Per-epoch curves on the validation split where there is one (the test set is for the
    // final figure only); digits has none and monitors its test split.
    let (monitor, monitor_name) = splits.monitor();

    let mut trainer = QatTrainer::new(
        &card.name,
        fp,
        calib,
        &plan,
        &PtqConfig::default(),
        config.clone(),
    )?;
    let run = args
        .run
        .start(&mut trainer, "qat", CHECKPOINT_FILE, resume)?;
    run.dir.write("plan.toml", plan.to_toml()?.as_bytes())?;
    eprintln!(
        "checkpoints: {} (continue an interrupted run with --resume {})",
        run.checkpoint.display(),
        run.partial_dir().display()
    );

    let eval_batch = 256;
    let fp_metrics = trainer.evaluate_fp(&splits.test, eval_batch)?;
    let ptq_metrics = trainer.evaluate_ptq(&splits.test, eval_batch)?;
    let fit_config = run.fit_config(Some(monitor), eval_batch, args.run.stop_after);
    if !fit_with_bars(&mut trainer, &splits.train, &fit_config, |_, _| Ok(()))? {
        return Ok(());
    }
    let scores = QatScores {
        fp: fp_metrics,
        ptq: ptq_metrics,
        qat: trainer.evaluate(&splits.test, eval_batch)?,
    };
    let results = QatResults::new(
        &card.name,
        &label,
        &trainer,
        &splits,
        &scores,
        run.resumed_from.as_deref(),
    );
    let alias = &card.aliases[0];
    print!("{}", results.markdown(alias));
    let ctx = QatReportContext {
        alias,
        calib_images: args.calib,
        data: &data.name,
        monitor: monitor_name,
    };
    results.write_run(&run.dir, &ctx, &crate::common::command_line())?;
    let path = run.dir.finish()?;
    println!("\nwrote {}", path.display());
    Ok(())
}
