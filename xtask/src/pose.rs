//! `cargo xtask pose train|eval`: top-down WTPose on a COCO-format keypoint set (the synthetic
//! set by default). Evaluation follows HRNet/mmpose: ground-truth person boxes, heatmap argmax
//! with the quarter-pixel shift toward the higher neighbour, flip test (flipped heatmaps
//! mirrored, left/right swapped, shifted one pixel), instance rescoring, OKS-NMS at 0.9, and
//! pycocotools' OKS AP. A run folder holds the checkpoint, metrics (JSON + Markdown), the loss
//! curve and skeleton pictures.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use mixq_core::{Error, Result};
use mixq_datasets::{CocoKeypoints, PoseData, PoseDataConfig, topdown_dataset};
use mixq_ptq::pose::{PoseEval, evaluate_pose, write_pose_run};
use mixq_qat_trainer::{PoseTrainConfig, PoseTrainProgress, PoseTrainResults, train_pose};
use mixq_vit_models::{ModelCard, NoHook, WtPoseConfig};

use crate::common::{DeviceName, progress};

#[derive(Args, Debug)]
pub struct PoseArgs {
    #[command(subcommand)]
    pub command: PoseCommand,
}

#[derive(Subcommand, Debug)]
pub enum PoseCommand {
    /// Train a WTPose variant from scratch, then evaluate it on the held-out set.
    Train(TrainArgs),
    /// Evaluate a checkpoint: OKS AP table and skeleton pictures.
    Eval(EvalArgs),
}

/// Where the images come from.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// A COCO-format folder holding person_keypoints.json (train) and a `val/` sub-folder with
    /// its own person_keypoints.json (held out). Without it, a synthetic set is generated.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Images of the generated synthetic training set (held-out set: a fifth as many, from a
    /// different seed).
    #[arg(long, default_value_t = 400)]
    pub synthetic: usize,
    /// Held-out synthetic images (default: synthetic / 5).
    #[arg(long)]
    pub val_images: Option<usize>,
    /// Gaussian sigma of the heatmap targets (heatmap pixels).
    #[arg(long, default_value_t = 2.0)]
    pub sigma: f64,
}

impl DataArgs {
    pub fn config(&self) -> PoseDataConfig {
        PoseDataConfig {
            data: self.data.clone(),
            synthetic: self.synthetic,
            val_images: self.val_images,
            sigma: self.sigma,
        }
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A pose model's card: wtpose-tiny, wtpose-t, wtpose-b, wtpose-l (+ -384x288), or a
    /// card .toml file.
    #[arg(long, default_value = "wtpose-tiny")]
    pub model: String,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Peak learning rate (AdamW, linear warm-up then cosine decay).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip the flip test in the final evaluation.
    #[arg(long)]
    pub no_flip: bool,
    /// Start from this checkpoint (a `model.safetensors` of the same variant) instead of a
    /// random init: continues training with a fresh schedule.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Where run folders are written.
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    #[arg(long, value_enum, default_value = "flex")]
    pub device: DeviceName,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long, default_value = "wtpose-tiny")]
    pub model: String,
    /// A checkpoint written by `pose train` (model.safetensors in its run folder); default: the
    /// card's shipped checkpoint (wtpose-tiny).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Seed of the synthetic set (the held-out set uses seed + 1).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long)]
    pub no_flip: bool,
    /// Fold BatchNorm into the convs before evaluating.
    #[arg(long)]
    pub fold_bn: bool,
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    #[arg(long, value_enum, default_value = "flex")]
    pub device: DeviceName,
}

pub fn run(args: PoseArgs) -> Result<()> {
    match args.command {
        PoseCommand::Train(a) => train(a),
        PoseCommand::Eval(a) => eval(a),
    }
}

/// The synthetic set is a pure function of (count, seed): cached next to the run folders.
pub(crate) fn open_data(args: &DataArgs, seed: u64, runs: &Path) -> Result<PoseData> {
    PoseData::open(&args.config(), seed, &runs.join("pose-data"))
}

/// [`evaluate_pose`] with a progress bar.
pub(crate) fn evaluate(
    model: &mixq_vit_models::WtPose,
    hook: &dyn mixq_vit_models::SiteHook,
    ds: &mixq_datasets::TopDownDataset,
    coco: &CocoKeypoints,
    batch: usize,
    flip: bool,
    device: &burn::tensor::Device,
) -> Result<(PoseEval, mixq_ptq::pose::PosePredictions)> {
    let bar = progress(ds.len().div_ceil(batch), "eval");
    let out = evaluate_pose(model, hook, ds, coco, batch, flip, device, |done, _| {
        bar.set_position(done as u64)
    });
    bar.finish_and_clear();
    out
}

fn run_dir(runs: &Path, name: String) -> Result<PathBuf> {
    let dir = runs.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
        path: dir.clone(),
        source: e,
    })?;
    Ok(dir)
}

fn train(args: TrainArgs) -> Result<()> {
    let config = PoseTrainConfig {
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        weight_decay: args.weight_decay,
        seed: args.seed,
    };
    config.validate()?;
    let (card, cfg) = pose_card(&args.model)?;
    let model_name = &card.aliases[0];
    let name = match &args.init {
        Some(_) => format!("pose-{model_name}-s{}-continued", args.seed),
        None => format!("pose-{model_name}-s{}", args.seed),
    };
    if let Some(init) = args.init.as_deref().filter(|p| !p.is_file()) {
        return Err(Error::invalid(
            "--init",
            init.display(),
            "no such checkpoint (a model.safetensors of a `pose train` run)",
        ));
    }
    let data = open_data(&args.data, args.seed, &args.runs)?;
    let td = cfg.topdown(args.data.sigma);
    let train_set = topdown_dataset(&data.train, &td)?;
    let val_set = topdown_dataset(&data.val, &td)?;
    // The run folder once every input has been read: bad input leaves no empty folder behind.
    let dir = run_dir(&args.runs, name)?;
    tracing::info!(
        train = train_set.len(),
        val = val_set.len(),
        "{}",
        data.description
    );

    let device = args.device.device()?.autodiff();
    let bar = progress(train_set.len().div_ceil(args.batch) * args.epochs, "train");
    let (model, history) = train_pose(
        &cfg,
        args.init.as_deref(),
        &train_set,
        &config,
        &device,
        Some(&dir.join("model.safetensors")),
        |p| match p {
            PoseTrainProgress::Step { done, .. } => bar.set_position(done as u64),
            PoseTrainProgress::Epoch { epoch, loss, .. } => {
                bar.set_message(format!("epoch {epoch} loss {loss:.6}"))
            }
        },
    )?;
    bar.finish_and_clear();
    let (epoch_seconds, epoch_loss) = (history.epoch_seconds, history.epoch_loss);

    let eval_device = args.device.device()?;
    let (result, predictions) = evaluate(
        &model,
        &NoHook,
        &val_set,
        &data.val.0,
        32,
        !args.no_flip,
        &eval_device,
    )?;
    let report = PoseTrainResults {
        model: model_name,
        config: &cfg,
        params: cfg.num_params(),
        gflops: cfg.gflops(),
        data: &data.description,
        train_persons: train_set.len(),
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        seed: args.seed,
        init: args.init.as_deref(),
        epoch_seconds,
        epoch_loss,
        eval: &result,
    };
    let md = report.markdown(val_set.len());
    write_pose_run(&dir, &report, &md, &data.val, &predictions)?;
    println!("{md}");
    println!("run folder: {}", dir.display());
    Ok(())
}

/// A pose model's card and its configuration.
fn pose_card(model: &str) -> Result<(ModelCard, WtPoseConfig)> {
    let card = ModelCard::find(model)?;
    let config = card.pose_config()?.clone();
    Ok((card, config))
}

fn eval(args: EvalArgs) -> Result<()> {
    let (card, cfg) = pose_card(&args.model)?;
    let data = open_data(&args.data, args.seed, &args.runs)?;
    let val_set = topdown_dataset(&data.val, &cfg.topdown(args.data.sigma))?;
    let device = args.device.device()?;
    let mut model = card.load_pose(args.checkpoint.as_deref(), &device)?;
    // The run folder once every input has been read: bad input leaves no empty folder behind.
    let dir = run_dir(
        &args.runs,
        format!("pose-eval-{}-s{}", card.aliases[0], args.seed),
    )?;
    let checkpoint = args.checkpoint.clone().or_else(|| card.shipped_path());
    if args.fold_bn {
        model = model.fold_batch_norm();
    }
    let (result, predictions) = evaluate(
        &model,
        &NoHook,
        &val_set,
        &data.val.0,
        args.batch,
        !args.no_flip,
        &device,
    )?;
    let md = result.report_markdown(
        &card.aliases[0],
        &data.description,
        &checkpoint.unwrap_or_default(),
    );
    write_pose_run(&dir, &result, &md, &data.val, &predictions)?;
    println!("{md}");
    println!("run folder: {}", dir.display());
    Ok(())
}
