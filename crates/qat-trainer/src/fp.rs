//! Full-precision training from scratch: how mixq makes the checkpoints it ships
//! (`cargo xtask train`). AdamW with linear warm-up and cosine decay, cross-entropy, random
//! crop with padding and (where the data set allows) horizontal flips.
//!
//! Resumable like QAT, bitwise: one ChaCha8 generator seeded with the run's seed draws every
//! epoch's order and augmentation in turn, and each checkpoint records its position, so a
//! resumed run draws exactly what the uninterrupted one would have.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use mixq_core::{Error, Result};
use mixq_datasets::ClassificationData;
use mixq_ptq::Metrics;
use mixq_quant_kernels::host_values;
use mixq_vit_models::{ArchConfig, Model, ModelCard, NoHook, TrainRecipe};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{LoadedCheckpoint, progress_meta, write_checkpoint};
use crate::data::{Augment, ImageSet, TrainBatch};
use crate::schedule::{cosine_with_warmup, default_warmup};
use crate::trainer::{
    EpochStats, MakeTrainable, PathVisitor, StepStats, count_correct, evaluate_with,
};

/// The `format` value of every FP training checkpoint this version writes.
pub const FP_CHECKPOINT_FORMAT: &str = "mixq-train-checkpoint/1";

const OPTIM: &str = "optim/weights";

/// Hyper-parameters of an FP training run; all of them are part of a checkpoint's identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FpConfig {
    /// Passes over the training images.
    pub epochs: usize,
    /// Images per step.
    pub batch: usize,
    /// Peak AdamW learning rate (warm-up over 5 % of the steps, then cosine to 0).
    pub lr: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f32,
    /// Seed of the initial weights, the data order and the augmentation.
    pub seed: u64,
    /// Random crop with this much padding (translation by up to `shift` pixels each way).
    pub shift: usize,
    /// Value of the padding (the normalised background).
    pub shift_fill: f32,
    /// Random horizontal flips.
    pub hflip: bool,
    /// Label smoothing of the cross-entropy (0: none; timm's recipes use 0.1).
    #[serde(default)]
    pub label_smoothing: f32,
}

/// The card's `[train]` recipe; digits cards without one train with the default recipe, any
/// other card without one cannot be trained (an error naming it).
pub fn train_recipe(card: &ModelCard) -> Result<TrainRecipe> {
    match (&card.train, card.dataset.as_deref()) {
        (Some(r), _) => Ok(r.clone()),
        (None, Some("digits")) => Ok(TrainRecipe::default()),
        _ => Err(Error::invalid(
            "--model",
            &card.aliases[0],
            "the card has no [train] recipe; train reproduces mixq's shipped models \
             (digits-deit, digits-swin, fmnist-deit)",
        )),
    }
}

/// Changes to a card's training recipe (`cargo xtask train`'s flags); `None` keeps the
/// recipe's value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecipeOverrides {
    /// Passes over the training images.
    pub epochs: Option<usize>,
    /// Images per step.
    pub batch: Option<usize>,
    /// Peak learning rate.
    pub lr: Option<f64>,
    /// AdamW weight decay.
    pub weight_decay: Option<f32>,
    /// Random-crop padding in pixels.
    pub pad: Option<usize>,
    /// Label smoothing of the cross-entropy.
    pub label_smoothing: Option<f32>,
    /// Turn random horizontal flips off.
    pub no_flip: bool,
}

impl FpConfig {
    /// The run `card`'s `[train]` recipe describes (digits cards without one: the default
    /// recipe), with `overrides` applied; flips only where `data` keeps the class under them.
    pub fn from_card(
        card: &ModelCard,
        data: &ClassificationData,
        seed: u64,
        overrides: &RecipeOverrides,
    ) -> Result<Self> {
        let recipe = train_recipe(card)?;
        let (mean, std) = (card.preprocess.mean[0], card.preprocess.std[0]);
        let flips_ok = data.dataset.is_some_and(|d| d.flips_keep_class());
        let config = FpConfig {
            epochs: overrides.epochs.unwrap_or(recipe.epochs),
            batch: overrides.batch.unwrap_or(recipe.batch),
            lr: overrides.lr.unwrap_or(recipe.lr),
            weight_decay: overrides.weight_decay.unwrap_or(recipe.weight_decay),
            seed,
            shift: overrides.pad.unwrap_or(recipe.pad),
            shift_fill: (0.0 - mean) / std,
            hflip: recipe.hflip && flips_ok && !overrides.no_flip,
            label_smoothing: overrides.label_smoothing.unwrap_or(recipe.label_smoothing),
        };
        config.validate()?;
        Ok(config)
    }

    /// Errors name the CLI flag of the bad value.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::invalid("--epochs", 0, "must be at least 1"));
        }
        if self.batch == 0 {
            return Err(Error::invalid("--batch", 0, "must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid("--lr", self.lr, "must be positive"));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::invalid(
                "--weight-decay",
                self.weight_decay,
                "must be >= 0",
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::invalid(
                "--label-smoothing",
                self.label_smoothing,
                "must be in [0, 1)",
            ));
        }
        Ok(())
    }
}

/// A full-precision training run in progress.
///
/// ```
/// use burn::tensor::Device;
/// use mixq_qat_trainer::{FpConfig, FpTrainer, ImageSet};
/// use mixq_vit_models::ModelCard;
///
/// let card = ModelCard::find("digits-deit")?;
/// let config = FpConfig {
///     epochs: 1, batch: 4, lr: 1e-3, weight_decay: 0.05, seed: 0,
///     shift: 1, shift_fill: -1.0, hflip: false, label_smoothing: 0.1,
/// };
/// let mut trainer = FpTrainer::new("digits-deit", &card.arch, &Device::flex(), config)?;
/// let train = ImageSet::new(vec![0.5; 8 * 64], [1, 8, 8], vec![3; 8])?;
/// trainer.train_epoch(&train, &mut |_| {})?;
/// assert!(trainer.finished());
/// let model = trainer.model(); // inference copy: save_safetensors, quantize, ...
/// # let _ = model;
/// # Ok::<(), mixq_core::Error>(())
/// ```
pub struct FpTrainer {
    model_name: String,
    config: FpConfig,
    model: Model,
    optim: ModuleOptimizer,
    rng: ChaCha8Rng,
    epoch: usize,
    step: usize,
    train_images: Option<usize>,
    history: Vec<EpochStats>,
    device: Device,
}

impl FpTrainer {
    /// A fresh model of `arch` on `device`, initialised from `config.seed`.
    pub fn new(
        model_name: &str,
        arch: &ArchConfig,
        device: &Device,
        config: FpConfig,
    ) -> Result<Self> {
        config.validate()?;
        let ad = device.clone().autodiff();
        ad.seed(config.seed);
        let model = arch.init(&ad)?.map(&mut MakeTrainable::default());
        let optim = AdamWConfig::new()
            .with_weight_decay(config.weight_decay)
            .init();
        Ok(FpTrainer {
            model_name: model_name.to_string(),
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            config,
            model,
            optim,
            epoch: 0,
            step: 0,
            train_images: None,
            history: Vec::new(),
            device: device.clone(),
        })
    }

    /// The run's hyper-parameters.
    pub fn config(&self) -> &FpConfig {
        &self.config
    }

    /// Epochs finished (also those of a resumed checkpoint).
    pub fn epochs_done(&self) -> usize {
        self.epoch
    }

    /// Whether every epoch of the schedule is done.
    pub fn finished(&self) -> bool {
        self.epoch >= self.config.epochs
    }

    /// Every finished epoch's figures.
    pub fn history(&self) -> &[EpochStats] {
        &self.history
    }

    /// The model as it stands, for inference (off the autodiff graph).
    pub fn model(&self) -> Model {
        self.model.valid()
    }

    /// Every float parameter by module path, in visiting order, as host values.
    pub fn param_values(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut out = Vec::new();
        let mut v = PathVisitor::new(|path, dims, values| out.push((path, dims, values)));
        self.model.visit(&mut v);
        out
    }

    /// Trains the next epoch on `data`; `on_step` sees every step.
    pub fn train_epoch(
        &mut self,
        data: &ImageSet,
        on_step: &mut dyn FnMut(&StepStats),
    ) -> Result<EpochStats> {
        if data.is_empty() {
            return Err(Error::invalid("training images", 0, "need at least one"));
        }
        if self.finished() {
            return Err(Error::invalid(
                "--epochs",
                self.config.epochs,
                "every epoch is already trained",
            ));
        }
        match self.train_images {
            Some(n) if n != data.len() => {
                return Err(Error::invalid(
                    "training images",
                    data.len(),
                    format!("this run trained on {n} images per epoch; resume with the same data"),
                ));
            }
            _ => self.train_images = Some(data.len()),
        }
        let start = Instant::now();
        let c = self.config.clone();
        let total = data.len().div_ceil(c.batch) * c.epochs;
        let warmup = default_warmup(total);
        let ad = self.device.clone().autodiff();
        let loss_fn = CrossEntropyLossConfig::new()
            .with_smoothing((c.label_smoothing > 0.0).then_some(c.label_smoothing))
            .init(&ad);
        let augment = Augment {
            shift: c.shift,
            fill: c.shift_fill,
            hflip: c.hflip,
        };
        let batches = data.augmented_batches(c.batch, &mut self.rng, augment);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        for TrainBatch {
            images,
            shape,
            labels,
        } in batches
        {
            let x = Tensor::<4>::from_data(TensorData::new(images, shape), &ad);
            let targets: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
            let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [shape[0]]), &ad);
            let logits = self.model.forward(x);
            let loss = loss_fn.forward(logits.clone(), targets);
            let loss_value = loss.clone().into_scalar::<f32>() as f64;
            if !loss_value.is_finite() {
                return Err(Error::invalid(
                    "loss",
                    loss_value,
                    format!("diverged at step {} (lower --lr)", self.step + 1),
                ));
            }
            correct += count_correct(&host_values(&logits.inner())?, &labels);
            seen += labels.len();
            loss_sum += loss_value * labels.len() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &self.model);
            let lr = cosine_with_warmup(self.step, total, warmup, c.lr);
            self.model = self.optim.step(lr, self.model.clone(), grads);
            self.step += 1;
            on_step(&StepStats {
                step: self.step,
                total_steps: total,
                epoch: self.epoch + 1,
                loss: loss_value,
                train_top1: 100.0 * correct as f64 / seen as f64,
            });
        }
        self.epoch += 1;
        let stats = EpochStats {
            epoch: self.epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            train_top1: 100.0 * correct as f64 / seen.max(1) as f64,
            monitor_top1: None,
            seconds: start.elapsed().as_secs_f64(),
        };
        self.history.push(stats.clone());
        Ok(stats)
    }

    /// Records the monitoring split's top-1 of the last finished epoch in the history.
    pub fn record_monitor_top1(&mut self, top1: f64) {
        if let Some(last) = self.history.last_mut() {
            last.monitor_top1 = Some(top1);
        }
    }

    /// The model on `data`.
    pub fn evaluate(&self, data: &ImageSet, batch: usize) -> Result<Metrics> {
        evaluate_with(&self.model(), &NoHook, data, batch, &self.device)
    }

    /// Writes the checkpoint to `path` atomically (a crash leaves the previous one).
    pub fn save_checkpoint(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut meta: HashMap<String, String> = progress_meta(
            &self.model_name,
            &self.config,
            self.epoch,
            self.step,
            self.train_images,
            &self.history,
            path,
        )?;
        meta.insert("rng_word_pos".into(), self.rng.get_word_pos().to_string());
        write_checkpoint(
            path,
            FP_CHECKPOINT_FORMAT,
            self.param_values(),
            &[(OPTIM, &self.optim)],
            meta,
        )
    }

    /// Restores a checkpoint of this very run (model, config and every parameter's shape are
    /// checked).
    pub fn load_checkpoint(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let loaded = LoadedCheckpoint::read(
            path,
            FP_CHECKPOINT_FORMAT,
            &self.model_name,
            &self.param_values(),
        )?;
        loaded.config(&self.config)?;
        let (epoch, step, train_images): (usize, usize, usize) = (
            loaded.number("epoch")?,
            loaded.number("step")?,
            loaded.number("train_images")?,
        );
        let word_pos: u128 = loaded.number("rng_word_pos")?;
        let history: Vec<EpochStats> = loaded.json("history")?;
        self.optim = loaded.optim(OPTIM, &self.optim)?;
        self.model = loaded.restore(self.model.clone(), &self.device);
        self.rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        self.rng.set_word_pos(word_pos);
        self.epoch = epoch;
        self.step = step;
        self.train_images = (train_images > 0).then_some(train_images);
        self.history = history;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixq_datasets::KnownDataset;

    #[test]
    fn a_cards_recipe_with_overrides_applied() {
        let digits = KnownDataset::Digits.open().unwrap();
        let card = ModelCard::find("digits-deit").unwrap();
        let recipe = train_recipe(&card).unwrap();
        let plain = FpConfig::from_card(&card, &digits, 3, &RecipeOverrides::default()).unwrap();
        assert_eq!(
            (plain.epochs, plain.batch, plain.lr, plain.seed),
            (recipe.epochs, recipe.batch, recipe.lr, 3)
        );
        assert!(!plain.hflip, "digits change class under flips");
        let changed = RecipeOverrides {
            epochs: Some(2),
            lr: Some(1e-3),
            label_smoothing: Some(0.1),
            ..RecipeOverrides::default()
        };
        let c = FpConfig::from_card(&card, &digits, 3, &changed).unwrap();
        assert_eq!((c.epochs, c.lr, c.label_smoothing), (2, 1e-3, 0.1));
        assert_eq!(c.batch, plain.batch);

        let bad = RecipeOverrides {
            batch: Some(0),
            ..RecipeOverrides::default()
        };
        let err = FpConfig::from_card(&card, &digits, 3, &bad).unwrap_err();
        assert!(err.to_string().contains("--batch"), "{err}");
        let err = train_recipe(&ModelCard::find("deit-s").unwrap()).unwrap_err();
        assert!(err.to_string().contains("no [train] recipe"), "{err}");
    }

    #[test]
    fn the_training_log_has_one_line_per_epoch() {
        let e = |epoch, val| EpochStats {
            epoch,
            train_loss: 1.23456,
            train_top1: 50.0,
            monitor_top1: val,
            seconds: 12.34,
        };
        assert_eq!(
            EpochStats::tsv(&[e(1, Some(71.5)), e(2, None)]),
            "epoch\ttrain_loss\ttrain_top1\tval_top1\tseconds\n\
             1\t1.2346\t50.00\t71.50\t12.3\n\
             2\t1.2346\t50.00\t-\t12.3\n"
        );
    }
}
