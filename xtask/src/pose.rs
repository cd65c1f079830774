//! `cargo xtask pose train|eval`: top-down WTPose on a COCO-format keypoint set (the synthetic
//! set by default). Evaluation follows HRNet/mmpose: ground-truth person boxes, heatmap argmax
//! with the quarter-pixel shift toward the higher neighbour, flip test (flipped heatmaps
//! mirrored, left/right swapped, shifted one pixel), instance rescoring, OKS-NMS at 0.9, and
//! pycocotools' OKS AP. A run folder holds the checkpoint, metrics (JSON + Markdown), the loss
//! curve and skeleton pictures.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use clap::{Args, Subcommand};
use mixq_core::{Error, Result};
use mixq_datasets::pose_transform::{decode_heatmaps, flip_heatmaps_back};
use mixq_datasets::synthetic_pose::SYNTHETIC_JSON;
use mixq_datasets::{
    Augment, CocoKeypoints, OksStats, PoseBatch, PoseMeta, SyntheticPoses, TopDownConfig,
    TopDownDataset, evaluate_keypoints, keypoint_results, load_image,
};
use mixq_vit_models::{NoHook, SiteHook, WtPose, WtPoseConfig};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::common::{DeviceName, progress};
use mixq_datasets::data_error;

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

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// wtpose-tiny, wtpose-t, wtpose-b, wtpose-l (+ -384x288).
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
    /// A checkpoint written by `pose train` (model.safetensors in its run folder).
    #[arg(long)]
    pub checkpoint: PathBuf,
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

/// The crop/heatmap geometry of a model.
pub(crate) fn topdown(cfg: &WtPoseConfig, sigma: f64) -> TopDownConfig {
    let [h, w] = cfg.input_size;
    let [hh, hw] = cfg.heatmap_size();
    TopDownConfig {
        input_w: w,
        input_h: h,
        heatmap_w: hw,
        heatmap_h: hh,
        sigma,
        ..TopDownConfig::default()
    }
}

/// Train and held-out sets: `(coco, image folder)` each.
pub(crate) struct PoseData {
    pub train: (CocoKeypoints, PathBuf),
    pub val: (CocoKeypoints, PathBuf),
    pub description: String,
}

fn load_coco(dir: &Path) -> Result<CocoKeypoints> {
    let json = dir.join(SYNTHETIC_JSON);
    CocoKeypoints::load(&json).map_err(|e| data_error(&json, e))
}

pub(crate) fn open_data(args: &DataArgs, seed: u64, run_dir: &Path) -> Result<PoseData> {
    if let Some(dir) = &args.data {
        let val = dir.join("val");
        return Ok(PoseData {
            train: (load_coco(dir)?, dir.clone()),
            val: (load_coco(&val)?, val),
            description: dir.display().to_string(),
        });
    }
    if args.synthetic == 0 {
        return Err(Error::invalid("--synthetic", 0, "must be at least 1"));
    }
    let n_val = args.val_images.unwrap_or((args.synthetic / 5).max(1));
    // The synthetic set is a pure function of (count, seed): cache it next to the runs.
    let cache = run_dir
        .parent()
        .unwrap_or(run_dir)
        .join("pose-data")
        .join(format!("synthetic-{}-{}-s{seed}", args.synthetic, n_val));
    let make = |dir: PathBuf, n: usize, s: u64| -> Result<(CocoKeypoints, PathBuf)> {
        if !dir.join(SYNTHETIC_JSON).is_file() {
            SyntheticPoses::default()
                .write(&dir, n, s)
                .map_err(|e| data_error(&dir, e))?;
        }
        Ok((load_coco(&dir)?, dir))
    };
    Ok(PoseData {
        train: make(cache.join("train"), args.synthetic, seed)?,
        // A different generator seed: no image is shared with the training set.
        val: make(cache.join("val"), n_val, seed.wrapping_add(1_000_003))?,
        description: format!(
            "synthetic: {} train / {n_val} held-out images (seed {seed}), {}",
            args.synthetic,
            cache.display()
        ),
    })
}

pub(crate) fn dataset(
    coco: &(CocoKeypoints, PathBuf),
    td: &TopDownConfig,
) -> Result<TopDownDataset> {
    TopDownDataset::from_gt(&coco.0, &coco.1, td.clone()).map_err(|e| data_error(&coco.1, e))
}

pub(crate) fn images_tensor(batch: &PoseBatch, device: &Device) -> Tensor<4> {
    Tensor::from_data(
        TensorData::new(batch.images.clone(), batch.image_shape),
        device,
    )
}

fn learning_rate(step: usize, total: usize, peak: f64) -> f64 {
    let warmup = (total / 20).max(1);
    if step < warmup {
        peak * (step + 1) as f64 / warmup as f64
    } else {
        let t = (step - warmup) as f64 / (total - warmup).max(1) as f64;
        peak * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// mmpose's `KeypointMSELoss(use_target_weight=True)`: mean over keypoints and pixels of
/// `(w * (pred - target))^2`, halved.
fn heatmap_loss(pred: Tensor<4>, batch: &PoseBatch, device: &Device) -> Tensor<1> {
    let target = Tensor::<4>::from_data(
        TensorData::new(batch.targets.clone(), batch.target_shape),
        device,
    );
    let [b, k, ..] = batch.target_shape;
    let w = Tensor::<4>::from_data(
        TensorData::new(batch.target_weights.clone(), [b, k, 1, 1]),
        device,
    );
    let d = (pred - target) * w;
    (d.clone() * d).mean().mul_scalar(0.5)
}

/// Per crop: its geometry and `[x, y, score]` per keypoint in image pixels.
pub(crate) type Predictions = Vec<(PoseMeta, Vec<[f64; 3]>)>;

#[derive(Debug, Serialize)]
pub(crate) struct EvalResult {
    pub persons: usize,
    pub images: usize,
    pub flip_test: bool,
    pub seconds: f64,
    /// AP, AP50, AP75, AP(M), AP(L), AR, AR50, AR75, AR(M), AR(L).
    pub stats: [f64; 10],
}

/// Predicts every crop of `ds` (flip test optional) through `hook` (`&NoHook` for full
/// precision, quantizers for a quantized model) and scores it against `coco`.
pub(crate) fn evaluate(
    model: &WtPose,
    hook: &dyn SiteHook,
    ds: &TopDownDataset,
    coco: &CocoKeypoints,
    batch: usize,
    flip: bool,
    device: &Device,
) -> Result<(EvalResult, Predictions)> {
    let start = Instant::now();
    let td = ds.config().clone();
    let k = model.config.num_keypoints;
    let (hw, hh) = (td.heatmap_w, td.heatmap_h);
    let plane = k * hw * hh;
    let idx: Vec<usize> = (0..ds.len()).collect();
    let mut predictions = Vec::with_capacity(ds.len());
    let bar = progress(ds.len().div_ceil(batch), "eval");
    for chunk in idx.chunks(batch) {
        let b = ds
            .batch(chunk, None, 0)
            .map_err(|e| Error::invalid("data", "<batch>", e.to_string()))?;
        let x = images_tensor(&b, device);
        let mut hm: Vec<f32> = model
            .forward_with(x.clone(), hook)
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| Error::invalid("heatmaps", "<tensor>", format!("{e:?}")))?;
        if flip {
            let hf: Vec<f32> = model
                .forward_with(x.flip([3]), hook)
                .into_data()
                .try_into_vec::<f32>()
                .map_err(|e| Error::invalid("heatmaps", "<tensor>", format!("{e:?}")))?;
            for i in 0..chunk.len() {
                let back = flip_heatmaps_back(&hf[i * plane..(i + 1) * plane], k, (hw, hh), true);
                for (a, f) in hm[i * plane..(i + 1) * plane].iter_mut().zip(back) {
                    *a = 0.5 * (*a + f);
                }
            }
        }
        for (i, meta) in b.metas.into_iter().enumerate() {
            let kps = decode_heatmaps(
                &hm[i * plane..(i + 1) * plane],
                k,
                (hw, hh),
                meta.center,
                meta.scale,
            );
            predictions.push((meta, kps));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let results = keypoint_results(&predictions, 0.2, Some(0.9));
    let stats = evaluate_keypoints(coco, &results)
        .map_err(|e| Error::invalid("evaluation", "<results>", e.to_string()))?;
    Ok((
        EvalResult {
            persons: ds.len(),
            images: coco.images.len(),
            flip_test: flip,
            seconds: start.elapsed().as_secs_f64(),
            stats: stats.to_array(),
        },
        predictions,
    ))
}

fn stats_table(rows: &[(String, &EvalResult)]) -> String {
    let mut s = String::from("| model | flip | ");
    s.push_str(&OksStats::NAMES.join(" | "));
    s.push_str(" |\n|---|---|");
    s.push_str(&"---:|".repeat(10));
    s.push('\n');
    for (name, r) in rows {
        s.push_str(&format!(
            "| {name} | {} |",
            if r.flip_test { "yes" } else { "no" }
        ));
        for v in r.stats {
            s.push_str(&format!(" {v:.3} |"));
        }
        s.push('\n');
    }
    s
}

/// Skeletons of the predictions (instance score >= 0.3, keypoints >= 0.2) over the first
/// `count` held-out images, ground truth in green under the prediction in red.
pub(crate) fn skeleton_pictures(
    coco: &(CocoKeypoints, PathBuf),
    predictions: &[(PoseMeta, Vec<[f64; 3]>)],
    count: usize,
    out: &Path,
) -> Result<()> {
    let results = keypoint_results(predictions, 0.2, Some(0.9));
    let mut pictures = Vec::new();
    let mut captions = Vec::new();
    for im in coco.0.images.iter().take(count) {
        let path = coco.1.join(&im.file_name);
        let mut img = load_image(&path)
            .map_err(|e| data_error(&path, e))?
            .to_rgb8();
        for a in coco.0.annotations.iter().filter(|a| a.image_id == im.id) {
            let kps: Vec<(f32, f32, f32)> = (0..17)
                .map(|k| {
                    let (x, y, v) = a.keypoint(k);
                    (x as f32, y as f32, if v > 0.0 { 1.0 } else { 0.0 })
                })
                .collect();
            mixq_report::draw_skeleton(
                &mut img,
                &kps,
                &mixq_report::COCO_SKELETON,
                [60, 200, 60],
                0.5,
            )?;
        }
        let mut shown = 0;
        for r in results
            .iter()
            .filter(|r| r.image_id == im.id && r.score >= 0.3)
        {
            let kps: Vec<(f32, f32, f32)> = r
                .keypoints
                .chunks(3)
                .map(|p| (p[0] as f32, p[1] as f32, p[2] as f32))
                .collect();
            mixq_report::draw_skeleton(
                &mut img,
                &kps,
                &mixq_report::COCO_SKELETON,
                [230, 40, 40],
                0.2,
            )?;
            shown += 1;
        }
        captions.push(format!("image {}: {shown} predicted", im.id));
        pictures.push(img);
    }
    let grid = mixq_report::image_grid(&pictures, 4, &captions)?;
    mixq_report::save_png(out, &grid)
}

fn run_dir(runs: &Path, name: String) -> Result<PathBuf> {
    let dir = runs.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
        path: dir.clone(),
        source: e,
    })?;
    Ok(dir)
}

pub(crate) fn write(path: &Path, text: &str) -> Result<()> {
    mixq_core::write_atomic(path, text.as_bytes())
}

#[derive(Debug, Serialize)]
struct TrainReport<'a> {
    model: &'a str,
    config: &'a WtPoseConfig,
    params: u64,
    gflops: f64,
    data: &'a str,
    train_persons: usize,
    epochs: usize,
    batch: usize,
    lr: f64,
    seed: u64,
    init: Option<&'a Path>,
    epoch_seconds: Vec<f64>,
    epoch_loss: Vec<f64>,
    eval: &'a EvalResult,
}

fn train(args: TrainArgs) -> Result<()> {
    for (name, value) in [("--epochs", args.epochs), ("--batch", args.batch)] {
        if value == 0 {
            return Err(Error::invalid(name, 0, "must be at least 1"));
        }
    }
    let cfg = WtPoseConfig::variant(&args.model)?;
    let name = match &args.init {
        Some(_) => format!("pose-{}-s{}-continued", args.model, args.seed),
        None => format!("pose-{}-s{}", args.model, args.seed),
    };
    let dir = run_dir(&args.runs, name)?;
    let data = open_data(&args.data, args.seed, &dir)?;
    let td = topdown(&cfg, args.data.sigma);
    let train_set = dataset(&data.train, &td)?;
    let val_set = dataset(&data.val, &td)?;
    tracing::info!(
        train = train_set.len(),
        val = val_set.len(),
        "{}",
        data.description
    );

    let device = args.device.device()?.autodiff();
    device.seed(args.seed);
    let mut model = cfg.init(&device)?;
    if let Some(path) = &args.init {
        model = model.load_safetensors(path)?;
    }
    let mut optim = AdamWConfig::new()
        .with_weight_decay(args.weight_decay)
        .init();
    let augment = Augment::default();
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let steps_per_epoch = train_set.len().div_ceil(args.batch);
    let total = steps_per_epoch * args.epochs;
    let bar = progress(total, "train");
    let ckpt = dir.join("model.safetensors");
    let (mut epoch_seconds, mut epoch_loss) = (Vec::new(), Vec::new());
    let mut step = 0;
    for epoch in 0..args.epochs {
        let start = Instant::now();
        let mut order: Vec<usize> = (0..train_set.len()).collect();
        order.shuffle(&mut rng);
        let mut sum = 0.0;
        for chunk in order.chunks(args.batch) {
            let b = train_set
                .batch(
                    chunk,
                    Some(&augment),
                    args.seed ^ (epoch as u64).wrapping_mul(0x5851_F42D),
                )
                .map_err(|e| Error::invalid("data", "<batch>", e.to_string()))?;
            let pred = model.forward(images_tensor(&b, &device));
            let loss = heatmap_loss(pred, &b, &device);
            sum += loss.clone().into_scalar::<f32>() as f64 * chunk.len() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(learning_rate(step, total, args.lr), model, grads);
            step += 1;
            bar.inc(1);
        }
        let secs = start.elapsed().as_secs_f64();
        let loss = sum / train_set.len() as f64;
        bar.set_message(format!("epoch {} loss {:.6}", epoch + 1, loss));
        tracing::info!(epoch = epoch + 1, loss, secs, "epoch done");
        epoch_seconds.push(secs);
        epoch_loss.push(loss);
        // Every epoch, so a run stopped early (killed, out of time) keeps its last weights.
        model.valid().save_safetensors(&ckpt)?;
    }
    bar.finish_and_clear();

    let model = model.valid();
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
    skeleton_pictures(&data.val, &predictions, 8, &dir.join("skeletons.png"))?;
    let mean_epoch = epoch_seconds.iter().sum::<f64>() / epoch_seconds.len() as f64;
    let report = TrainReport {
        model: &args.model,
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
        epoch_seconds: epoch_seconds.clone(),
        epoch_loss: epoch_loss.clone(),
        eval: &result,
    };
    write(
        &dir.join("results.json"),
        &mixq_core::to_json(&report, "report")?,
    )?;
    let mut md = format!(
        "# pose train {}\n\n{}\n\ntrain persons {}, held-out persons {}, {} epochs, batch {}, \
         {:.1} s/epoch (mean), params {:.2} M, {:.3} GFLOPs\n\n",
        args.model,
        data.description,
        train_set.len(),
        val_set.len(),
        args.epochs,
        args.batch,
        mean_epoch,
        cfg.num_params() as f64 / 1e6,
        cfg.gflops(),
    );
    md.push_str(&stats_table(&[(args.model.clone(), &result)]));
    write(&dir.join("results.md"), &md)?;
    println!("{md}");
    println!("run folder: {}", dir.display());
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    let cfg = WtPoseConfig::variant(&args.model)?;
    let dir = run_dir(
        &args.runs,
        format!("pose-eval-{}-s{}", args.model, args.seed),
    )?;
    let data = open_data(&args.data, args.seed, &dir)?;
    let td = topdown(&cfg, args.data.sigma);
    let val_set = dataset(&data.val, &td)?;
    let device = args.device.device()?;
    let mut model = cfg.init(&device)?.load_safetensors(&args.checkpoint)?;
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
    skeleton_pictures(&data.val, &predictions, 8, &dir.join("skeletons.png"))?;
    write(
        &dir.join("results.json"),
        &mixq_core::to_json(&result, "report")?,
    )?;
    let md = format!(
        "# pose eval {}\n\n{}; checkpoint {}; {:.1} s\n\n{}",
        args.model,
        data.description,
        args.checkpoint.display(),
        result.seconds,
        stats_table(&[(args.model.clone(), &result)])
    );
    write(&dir.join("results.md"), &md)?;
    println!("{md}");
    println!("run folder: {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topdown_geometry_follows_the_model() {
        let td = topdown(&WtPoseConfig::tiny(), 2.0);
        assert_eq!((td.input_w, td.input_h), (96, 128));
        assert_eq!((td.heatmap_w, td.heatmap_h), (24, 32));
    }
}
