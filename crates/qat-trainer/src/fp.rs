//! Full-precision training from scratch: how mixq makes the checkpoints it ships
//! (`cargo xtask train`). AdamW with linear warm-up and cosine decay, cross-entropy, random
//! crop with padding and (where the data set allows) horizontal flips.
//!
//! Resumable like QAT, bitwise: one ChaCha8 generator seeded with the run's seed draws every
//! epoch's order and augmentation in turn, and each checkpoint records its position, so a
//! resumed run draws exactly what the uninterrupted one would have.

use mixq_vit_models::Network;
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
    /// Each batch split into this many parts, whose forward and backward run on their own
    /// threads; the gradients are averaged weighted by the parts' sizes. burn-flex keeps about
    /// one core busy on these small models, so 2 parts on 2 cores train about twice as many
    /// images per second. The same step in exact arithmetic, not in float: part of a run's
    /// identity (1, the default, is not written).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub workers: usize,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
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
    /// Data-parallel parts of each batch (see [`FpConfig::workers`]).
    pub workers: Option<usize>,
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
        let flips_ok = data.dataset.is_some_and(|d| d.flips_keep_class());
        let config = Self::from_recipe(card, &train_recipe(card)?, seed, overrides, flips_ok);
        config.validate()?;
        Ok(config)
    }

    /// `recipe` for a model of `card` with `overrides` applied; flips only if `flips_ok`.
    fn from_recipe(
        card: &ModelCard,
        recipe: &TrainRecipe,
        seed: u64,
        overrides: &RecipeOverrides,
        flips_ok: bool,
    ) -> Self {
        FpConfig {
            epochs: overrides.epochs.unwrap_or(recipe.epochs),
            batch: overrides.batch.unwrap_or(recipe.batch),
            lr: overrides.lr.unwrap_or(recipe.lr),
            weight_decay: overrides.weight_decay.unwrap_or(recipe.weight_decay),
            seed,
            shift: overrides.pad.unwrap_or(recipe.pad),
            shift_fill: card.preprocess.black_level(),
            hflip: recipe.hflip && flips_ok && !overrides.no_flip,
            label_smoothing: overrides.label_smoothing.unwrap_or(recipe.label_smoothing),
            workers: overrides.workers.unwrap_or(recipe.workers),
        }
    }

    /// Errors name the CLI flag of the bad value.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::invalid("--epochs", 0, "must be at least 1"));
        }
        if self.batch == 0 {
            return Err(Error::invalid("--batch", 0, "must be at least 1"));
        }
        if self.workers == 0 || self.workers > self.batch {
            return Err(Error::invalid(
                "--workers",
                self.workers,
                format!("must be between 1 and the batch ({})", self.batch),
            ));
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
///     shift: 1, shift_fill: -1.0, hflip: false, label_smoothing: 0.1, workers: 2,
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
        let model = arch
            .init_seeded(&ad, config.seed)?
            .map(&mut MakeTrainable::default());
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
            let n = labels.len();
            let mut parts = split_batch(images, shape, labels, c.workers);
            let model = &self.model;
            let several = parts.len() > 1;
            let run_part = |(images, shape, labels): (Vec<f32>, [usize; 4], Vec<usize>)| {
                if several {
                    // Each part on leaves of its own: burn's autodiff puts tensors that share
                    // leaves into one graph behind one lock, which would run the parts'
                    // backward passes one after the other.
                    let own = model.clone().map(&mut OwnLeaves);
                    part_step(&own, &loss_fn, images, shape, &labels, &ad)
                } else {
                    part_step(model, &loss_fn, images, shape, &labels, &ad)
                }
            };
            // On rayon's pool, whose threads live on: a thread spawned per step would start a
            // fresh allocator heap every step, and the kernel would fault and zero its pages.
            let results: Vec<Result<PartStep>> = if several {
                use rayon::prelude::*;
                parts.into_par_iter().map(run_part).collect()
            } else {
                vec![run_part(parts.pop().expect("one part"))]
            };
            let results = results.into_iter().collect::<Result<Vec<_>>>()?;
            let loss_value = match results.as_slice() {
                [one] => one.loss,
                parts => parts.iter().map(|r| r.loss * r.images as f64).sum::<f64>() / n as f64,
            };
            if !loss_value.is_finite() {
                return Err(Error::invalid(
                    "loss",
                    loss_value,
                    format!("diverged at step {} (lower --lr)", self.step + 1),
                ));
            }
            correct += results.iter().map(|r| r.correct).sum::<usize>();
            seen += n;
            loss_sum += loss_value * n as f64;
            let grads = average_grads(&self.model, results, n);
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

/// What [`bench_training`] measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainingBench {
    /// Images per step.
    pub batch: usize,
    /// Random images per epoch (at least one batch).
    pub images: usize,
    /// Epochs timed after a warm-up one; the median is reported.
    pub repeat: usize,
    /// Data-parallel parts of each batch ([`FpConfig::workers`]).
    pub workers: usize,
    /// Seed of the weights, the random images and their order.
    pub seed: u64,
}

/// Median seconds of a training epoch (forward, backward, AdamW, augmentation) of a fresh
/// `card` model with the card's recipe on random images, and the images of that epoch
/// (`cargo xtask bench train`; the time does not depend on the values).
pub fn bench_training(
    card: &ModelCard,
    bench: &TrainingBench,
    device: &Device,
) -> Result<(usize, f64)> {
    use rand::Rng;
    if bench.repeat == 0 || bench.images == 0 || bench.batch == 0 {
        return Err(Error::invalid(
            "--repeat/--images/--batches",
            0,
            "must be at least 1",
        ));
    }
    let [c, s] = [card.arch.in_chans(), card.arch.img_size()];
    let n = bench.images.max(bench.batch);
    let mut rng = ChaCha8Rng::seed_from_u64(bench.seed);
    let classes = card.arch.num_classes();
    let data = ImageSet::new(
        (0..n * c * s * s)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect(),
        [c, s, s],
        (0..n).map(|_| rng.random_range(0..classes)).collect(),
    )?;
    // Any card's speed can be measured: one without a recipe trains with the default one.
    let overrides = RecipeOverrides {
        epochs: Some(bench.repeat + 1),
        batch: Some(bench.batch),
        workers: Some(bench.workers),
        ..RecipeOverrides::default()
    };
    let recipe = card.train.clone().unwrap_or_default();
    let config = FpConfig::from_recipe(card, &recipe, bench.seed, &overrides, true);
    let mut trainer = FpTrainer::new(&card.name, &card.arch, device, config)?;
    trainer.train_epoch(&data, &mut |_| {})?; // warm-up
    let times = (0..bench.repeat)
        .map(|_| trainer.train_epoch(&data, &mut |_| {}).map(|e| e.seconds))
        .collect::<Result<Vec<_>>>()?;
    Ok((n, mixq_ptq::bench::median(times)))
}

/// The same parameters (ids and values) as new autodiff leaves.
struct OwnLeaves;

impl burn::module::ModuleMapper for OwnLeaves {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        let value = param.val().inner().autodiff().require_grad();
        burn::module::Param::initialized(param.id, value)
    }
}

/// One part of a batch: its mean loss, images, correct top-1 and gradients.
struct PartStep {
    loss: f64,
    images: usize,
    correct: usize,
    grads: GradientsParams,
}

/// The batch as `parts` consecutive slices of (nearly) equal size; one part is the batch itself,
/// not a copy.
fn split_batch(
    images: Vec<f32>,
    shape: [usize; 4],
    labels: Vec<usize>,
    parts: usize,
) -> Vec<(Vec<f32>, [usize; 4], Vec<usize>)> {
    let n = labels.len();
    let per_image = images.len() / n.max(1);
    let parts = parts.clamp(1, n.max(1));
    if parts == 1 {
        return vec![(images, shape, labels)];
    }
    let size = n.div_ceil(parts);
    (0..n)
        .step_by(size)
        .map(|start| {
            let end = (start + size).min(n);
            (
                images[start * per_image..end * per_image].to_vec(),
                [end - start, shape[1], shape[2], shape[3]],
                labels[start..end].to_vec(),
            )
        })
        .collect()
}

/// Forward and backward of one part on the autodiff device.
fn part_step(
    model: &Model,
    loss_fn: &burn::nn::loss::CrossEntropyLoss,
    images: Vec<f32>,
    shape: [usize; 4],
    labels: &[usize],
    ad: &Device,
) -> Result<PartStep> {
    let x = Tensor::<4>::from_data(TensorData::new(images, shape), ad);
    let targets: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [shape[0]]), ad);
    let logits = model.forward(x);
    let loss = loss_fn.forward(logits.clone(), targets);
    let loss_value = loss.clone().into_scalar::<f32>() as f64;
    let correct = count_correct(&host_values(&logits.inner())?, labels);
    Ok(PartStep {
        loss: loss_value,
        images: labels.len(),
        correct,
        grads: GradientsParams::from_grads(loss.backward(), model),
    })
}

/// The batch's gradients from its parts': each part's mean-loss gradient weighted by its share
/// of the `n` images, summed in part order (one part: its gradients unchanged).
fn average_grads(model: &Model, mut parts: Vec<PartStep>, n: usize) -> GradientsParams {
    if parts.len() == 1 {
        return parts.pop().expect("one part").grads;
    }
    struct Sum {
        parts: Vec<(GradientsParams, f32)>,
        out: GradientsParams,
    }
    impl burn::module::ModuleVisitor for Sum {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let mut sum: Option<Tensor<D>> = None;
            for (grads, weight) in &mut self.parts {
                if let Some(g) = grads.remove::<D>(param.id) {
                    let g = g.mul_scalar(*weight);
                    sum = Some(match sum {
                        Some(s) => s + g,
                        None => g,
                    });
                }
            }
            if let Some(s) = sum {
                self.out.register(param.id, s);
            }
        }
    }
    let mut sum = Sum {
        parts: parts
            .into_iter()
            .map(|p| (p.grads, p.images as f32 / n as f32))
            .collect(),
        out: GradientsParams::new(),
    };
    model.visit(&mut sum);
    sum.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixq_datasets::KnownDataset;

    /// Every float parameter's gradient in `a` and in `b`: the largest |difference| relative to
    /// the largest |gradient|.
    fn worst_relative_difference(model: &Model, a: &GradientsParams, b: &GradientsParams) -> f32 {
        struct Compare<'a> {
            a: &'a GradientsParams,
            b: &'a GradientsParams,
            worst: f32,
            params: usize,
        }
        impl burn::module::ModuleVisitor for Compare<'_> {
            fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
                let (Some(x), Some(y)) = (self.a.get::<D>(param.id), self.b.get::<D>(param.id))
                else {
                    panic!("a gradient is missing")
                };
                let (x, y) = (host_values(&x).unwrap(), host_values(&y).unwrap());
                let scale = x.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
                let diff = x
                    .iter()
                    .zip(&y)
                    .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
                self.worst = self.worst.max(diff / scale);
                self.params += 1;
            }
        }
        let mut c = Compare {
            a,
            b,
            worst: 0.0,
            params: 0,
        };
        model.visit(&mut c);
        assert!(c.params > 10);
        c.worst
    }

    #[test]
    fn parts_weighted_by_size_give_the_whole_batchs_gradient() {
        let card = ModelCard::find("digits-deit").unwrap();
        let ad = Device::flex().autodiff();
        let model = card
            .arch
            .init(&ad)
            .unwrap()
            .map(&mut crate::trainer::MakeTrainable::default());
        let loss_fn = CrossEntropyLossConfig::new()
            .with_smoothing(Some(0.1))
            .init(&ad);
        // 7 images: parts of 4 and 3, so the weights are not equal.
        let n = 7;
        let images: Vec<f32> = (0..n * 64)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let labels: Vec<usize> = (0..n).map(|i| i * 3 % 10).collect();
        let shape = [n, 1, 8, 8];
        let whole = part_step(&model, &loss_fn, images.clone(), shape, &labels, &ad).unwrap();
        let parts: Vec<PartStep> = split_batch(images, shape, labels, 2)
            .into_iter()
            .map(|(x, s, l)| {
                let own = model.clone().map(&mut OwnLeaves);
                part_step(&own, &loss_fn, x, s, &l, &ad).unwrap()
            })
            .collect();
        assert_eq!(parts.iter().map(|p| p.images).collect::<Vec<_>>(), [4, 3]);
        let loss = parts.iter().map(|p| p.loss * p.images as f64).sum::<f64>() / n as f64;
        assert!((loss - whole.loss).abs() < 1e-6, "{loss} vs {}", whole.loss);
        let averaged = average_grads(&model, parts, n);
        let worst = worst_relative_difference(&model, &whole.grads, &averaged);
        assert!(worst < 1e-5, "parts vs whole batch: {worst}");
    }

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
