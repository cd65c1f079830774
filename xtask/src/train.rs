//! `cargo xtask train`: trains a shipped model (digits-*, fmnist-*, mnist-*) from scratch with
//! the recipe of its model card and writes the checkpoint that models/ ships. Checkpoints every
//! epoch into a run folder; `--resume DIR` continues an interrupted run bitwise. Deterministic
//! for a given `--seed` on the flex backend.

use std::path::PathBuf;

use clap::Args;
use mixq_core::{Error, Result};
use mixq_qat_trainer::{
    EpochStats, FpConfig, FpTrainer, RecipeOverrides, TrainResults, TrainingSplits, train_recipe,
};

use crate::common::{DeviceName, ResumeArgs, fit_with_bars};
use mixq_datasets::classification_data;

/// The checkpoint file inside a train run folder.
const TRAIN_CHECKPOINT: &str = "train-checkpoint.safetensors";

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A model card with a `[train]` recipe or a digits card (digits-deit, digits-swin,
    /// fmnist-deit, ...).
    #[arg(long, default_value = "digits-deit")]
    pub model: String,
    /// Seed of the initial weights, the data order and the augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Data set (default: the card's); `--data DIR` takes a folder of the four IDX files.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Epochs (default: the card's recipe).
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch: Option<usize>,
    /// Peak learning rate (AdamW, linear warm-up then cosine decay).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Random-crop padding in pixels (0: no crop).
    #[arg(long)]
    pub pad: Option<usize>,
    /// Label smoothing of the cross-entropy, 0 to 1 (default: the card's recipe, else 0).
    #[arg(long)]
    pub label_smoothing: Option<f32>,
    /// Turn random horizontal flips off (on in the recipe of data sets where they keep the class).
    #[arg(long)]
    pub no_flip: bool,
    /// Split each batch into N parts trained on N threads (gradients averaged; default: the
    /// card's recipe, else 1). Faster on several cores; a different run from the 1-part one.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Train on the first N training images only (quick runs; not a shipped checkpoint).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Output checkpoint; defaults to the card's shipped file in models/.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub run: ResumeArgs,
    #[arg(long, value_enum, default_value = "flex")]
    pub device: DeviceName,
}

/// The per-epoch log beside the checkpoint, rewritten after every epoch.
const TRAIN_LOG: &str = "train-log.tsv";

pub fn run(args: TrainArgs) -> Result<()> {
    let card = mixq_vit_models::ModelCard::find(&args.model)?;
    // Before loading any data: can the card be trained at all?
    train_recipe(&card)?;
    let data = classification_data(&card.data_spec(), args.data.as_deref(), "train")?;
    let overrides = RecipeOverrides {
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        weight_decay: args.weight_decay,
        pad: args.pad,
        label_smoothing: args.label_smoothing,
        no_flip: args.no_flip,
        workers: args.workers,
    };
    let config = FpConfig::from_card(&card, &data, args.seed, &overrides)?;
    let out = match &args.out {
        Some(p) => p.clone(),
        None => card.shipped_path().ok_or_else(|| {
            Error::invalid(
                "--out",
                "(none)",
                "the card ships no checkpoint: pass --out FILE",
            )
        })?,
    };
    let resume = args.run.checkpoint(TRAIN_CHECKPOINT, "train")?;

    // Per-epoch monitoring on the validation split; the test set is for the final figure only
    // (digits, which has no validation split, monitors nothing).
    let splits = TrainingSplits::new(&data, &card, args.limit, None)?;

    let device = args.device.device()?;
    let mut trainer = FpTrainer::new(&card.name, &card.arch, &device, config.clone())?;
    let run = args
        .run
        .start(&mut trainer, "train", TRAIN_CHECKPOINT, resume)?;
    eprintln!(
        "training {} on {} ({} images, {} epochs); checkpoints: {} (continue an interrupted \
         run with --resume {})",
        card.aliases[0],
        data.name,
        splits.train.len(),
        config.epochs,
        run.checkpoint.display(),
        run.partial_dir().display()
    );
    let eval_batch = 256;
    let fit_config = run.fit_config(splits.val.as_ref(), eval_batch, args.run.stop_after);
    let finished = fit_with_bars(
        &mut trainer,
        &splits.train,
        &fit_config,
        |stats, history| {
            run.dir
                .write(TRAIN_LOG, EpochStats::tsv(history).as_bytes())?;
            if let Some(val_top1) = stats.monitor_top1 {
                eprintln!(
                    "epoch {}/{}: loss {:.4}, train top-1 {:.2} %, val top-1 {val_top1:.2} %, {:.0} s",
                    stats.epoch, config.epochs, stats.train_loss, stats.train_top1, stats.seconds
                );
            }
            Ok(())
        },
    )?;
    if !finished {
        return Ok(());
    }

    let metrics = trainer.evaluate(&splits.test, eval_batch)?;
    trainer.model().save_safetensors(&out)?;
    let device_name = format!("{:?}", args.device).to_lowercase();
    let results = TrainResults::new(
        &card.name,
        &data.name,
        &trainer,
        &splits,
        &metrics,
        &device_name,
        &out,
    );
    let json = mixq_core::to_json(&results, "results")?;
    run.dir.write("results.json", json.as_bytes())?;
    let path = run.dir.finish()?;
    print!("{}", results.markdown(&card.aliases[0]));
    println!("\nwrote {}", path.display());
    Ok(())
}
