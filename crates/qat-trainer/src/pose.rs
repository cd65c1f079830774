//! Training a WTPose model on top-down person crops: mmpose's heatmap loss, AdamW on the
//! warm-up + cosine schedule, the pose augmentation of [`mixq_datasets::PoseAugment`], and the
//! weights saved after every epoch so a run stopped early keeps its last ones.

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use mixq_core::{Error, Result};
use mixq_datasets::{PoseAugment, PoseBatch, TopDownDataset};
use mixq_vit_models::{WtPose, WtPoseConfig, pose_batch_tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::schedule::{cosine_with_warmup, default_warmup};

/// The training recipe of a pose model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoseTrainConfig {
    /// Passes over the training crops.
    pub epochs: usize,
    /// Crops per step.
    pub batch: usize,
    /// Peak AdamW learning rate (warm-up over 5 % of the steps, then cosine to 0).
    pub lr: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f32,
    /// Seed of the initial weights, the crop order and the augmentation.
    pub seed: u64,
}

impl Default for PoseTrainConfig {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch: 16,
            lr: 2e-3,
            weight_decay: 1e-4,
            seed: 0,
        }
    }
}

impl PoseTrainConfig {
    /// Rejects zero epochs or batch size, naming the flag.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [("--epochs", self.epochs), ("--batch", self.batch)] {
            if value == 0 {
                return Err(Error::invalid(name, 0, "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// mmpose's `KeypointMSELoss(use_target_weight=True)`: mean over keypoints and pixels of
/// `(w * (pred - target))^2`, halved.
pub fn heatmap_loss(pred: Tensor<4>, batch: &PoseBatch, device: &Device) -> Tensor<1> {
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

/// What [`train_pose`] reports while it runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PoseTrainProgress {
    /// A step finished.
    Step {
        /// Steps done.
        done: usize,
        /// Steps in all.
        total: usize,
    },
    /// An epoch finished.
    Epoch {
        /// 1-based.
        epoch: usize,
        /// Mean loss over its crops.
        loss: f64,
        /// Its wall time.
        seconds: f64,
    },
}

/// Loss and time per epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PoseTrainHistory {
    /// Wall seconds of each epoch.
    pub epoch_seconds: Vec<f64>,
    /// Mean heatmap loss of each epoch.
    pub epoch_loss: Vec<f64>,
}

/// Trains `cfg` on `train_set` with `config` on `device` (an autodiff device), starting from
/// random weights of `config.seed` or from the weights in `init`; the weights are written to
/// `checkpoint` (when given) after every epoch. Returns the trained model (without autodiff).
pub fn train_pose(
    cfg: &WtPoseConfig,
    init: Option<&Path>,
    train_set: &TopDownDataset,
    config: &PoseTrainConfig,
    device: &Device,
    checkpoint: Option<&Path>,
    mut progress: impl FnMut(PoseTrainProgress),
) -> Result<(WtPose, PoseTrainHistory)> {
    config.validate()?;
    let mut model = mixq_vit_models::seeded(device, config.seed, || cfg.init(device))?;
    if let Some(path) = init {
        model = model.load_safetensors(path)?;
    }
    let mut optim = AdamWConfig::new()
        .with_weight_decay(config.weight_decay)
        .init();
    let augment = PoseAugment::default();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let total = train_set.len().div_ceil(config.batch) * config.epochs;
    let warmup = default_warmup(total);
    let mut history = PoseTrainHistory::default();
    let mut step = 0;
    for epoch in 0..config.epochs {
        let start = Instant::now();
        let mut order: Vec<usize> = (0..train_set.len()).collect();
        order.shuffle(&mut rng);
        let mut sum = 0.0;
        for chunk in order.chunks(config.batch) {
            let b = train_set
                .batch(
                    chunk,
                    Some(&augment),
                    config.seed ^ (epoch as u64).wrapping_mul(0x5851_F42D),
                )
                .map_err(|e| Error::invalid("data", "<batch>", e.to_string()))?;
            let pred = model.heatmaps(pose_batch_tensor(&b, device));
            let loss = heatmap_loss(pred, &b, device);
            sum += loss.clone().into_scalar::<f32>() as f64 * chunk.len() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = cosine_with_warmup(step, total, warmup, config.lr);
            model = optim.step(lr, model, grads);
            step += 1;
            progress(PoseTrainProgress::Step { done: step, total });
        }
        let seconds = start.elapsed().as_secs_f64();
        let loss = sum / train_set.len() as f64;
        tracing::info!(epoch = epoch + 1, loss, secs = seconds, "epoch done");
        history.epoch_seconds.push(seconds);
        history.epoch_loss.push(loss);
        if let Some(path) = checkpoint {
            model.valid().save_safetensors(path)?;
        }
        progress(PoseTrainProgress::Epoch {
            epoch: epoch + 1,
            loss,
            seconds,
        });
    }
    Ok((model.valid(), history))
}
