//! `cargo xtask lrp`: LRP relevance of a model over N images — per-site contribution scores
//! (the allocator's input) as TOML/JSON and a bar chart, and input heatmaps.

use std::path::PathBuf;

use clap::Args;
use mixq_core::{Error, Result, RunDir};
use mixq_datasets::{Batch, sample_batch};
use mixq_lrp::Preset;
use mixq_ptq::LrpRun;
use mixq_vit_models::{ExplainDataConfig, TargetRule, explain_data};

use crate::common::{ModelArgs, progress};

#[derive(Args, Debug)]
pub struct LrpArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images to explain (a seeded sample of the training split, or of --data).
    #[arg(long, default_value_t = 32)]
    pub images: usize,
    /// Explain these image files instead (repeatable).
    #[arg(long = "image", conflicts_with = "data")]
    pub files: Vec<PathBuf>,
    /// An ImageNet-style folder to sample from; digits models default to their train split.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Rule preset.
    #[arg(long, default_value = "attnlrp")]
    pub preset: Preset,
    /// Start from the `predicted` class, the `label`, or a class index.
    #[arg(long, default_value = "predicted")]
    pub target: TargetRule,
    /// Read site relevance at the site's input instead of its output.
    #[arg(long)]
    pub at_inputs: bool,
    /// Grayscale data sets (digits, Fashion-MNIST, MNIST): intensity (0..1) from which a pixel
    /// counts as ink (foreground) in the ink-share figure.
    #[arg(long, default_value_t = 0.5)]
    pub ink_threshold: f32,
    /// How many images get a heatmap.
    #[arg(long, default_value_t = 8)]
    pub heatmaps: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
}

pub fn run(args: LrpArgs) -> Result<()> {
    let card = args.model.card()?;
    let device = args.model.device.device()?;
    if args.images == 0 {
        return Err(Error::invalid("--images", 0, "must be at least 1"));
    }
    let config = ExplainDataConfig {
        preset: args.preset,
        target: args.target,
        at_inputs: args.at_inputs,
        batch: args.batch,
        ink_threshold: args.ink_threshold,
        heatmaps: args.heatmaps,
    };
    let data = if args.files.is_empty() {
        sample_batch(
            &card.data_spec(),
            args.data.as_deref(),
            args.images,
            args.model.seed,
            "--images",
        )?
    } else {
        Batch::from_files(&args.files, &card.data_spec().transform)?
    };
    let model = args.model.load(&card, &device)?;
    let n = data.len();
    let bar = progress(n, "explain");
    let explained = explain_data(&model, &card, &data, &config, &device, |done| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    let lrp = LrpRun {
        card: &card,
        explained: &explained,
        image_shape: data.shape,
        preset: args.preset,
        seed: args.model.seed,
        at_inputs: args.at_inputs,
        ink_threshold: args.ink_threshold,
    };
    print!("\n{}\n{}", lrp.summary(), explained.top_sites_markdown(10));
    let run = RunDir::create(&args.runs, "lrp")?;
    lrp.write(&run, &crate::common::command_line())?;
    let path = run.finish()?;
    println!("\nwrote {}", path.display());
    Ok(())
}
