//! The QAT loop: a student (the reparameterized FP model plus LSQ quantizers) trained against
//! the FP teacher with two AdamW optimizers, one for the model's parameters and one, with its
//! own learning rate and no weight decay, for the step sizes.

use mixq_vit_models::Network;
use std::time::Instant;

use burn::module::{Module, ModuleDisplay, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use mixq_core::{BitPlan, Error, Result};
use mixq_ptq::{Metrics, PtqConfig, QuantizedModel, quantize, reparameterize};
use mixq_quant_kernels::host_values;
use mixq_vit_models::{Model, NoHook, SiteHook};
use serde::{Deserialize, Serialize};

use crate::data::{ImageSet, TrainBatch};
use crate::loss::distillation_loss;
use crate::lsq::LsqQuantizers;
use crate::schedule::{cosine_with_warmup, default_warmup};

/// Hyper-parameters of a QAT run. Everything here is part of a checkpoint's identity: resuming
/// with different values is an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QatConfig {
    /// Passes over the training images.
    pub epochs: usize,
    /// Images per step.
    pub batch: usize,
    /// Peak learning rate of the model's parameters (AdamW, warm-up then cosine).
    pub lr: f64,
    /// Peak learning rate of the step sizes (same schedule, no weight decay).
    pub step_lr: f64,
    /// AdamW weight decay of the model's parameters.
    pub weight_decay: f32,
    /// Weight of the distillation term (the label loss gets `1 - kd_alpha`).
    pub kd_alpha: f64,
    /// Softmax temperature of the distillation term.
    pub kd_temperature: f64,
    /// Seed of the data order and augmentation (epoch `e` draws from stream `e`).
    pub seed: u64,
    /// Random translation of training images by up to this many pixels (0: none).
    pub shift: usize,
    /// Value of pixels shifted in from outside (the normalised background).
    pub shift_fill: f32,
}

impl Default for QatConfig {
    fn default() -> Self {
        QatConfig {
            epochs: 10,
            batch: 64,
            lr: 1e-3,
            step_lr: 5e-3,
            weight_decay: 0.01,
            kd_alpha: 0.7,
            kd_temperature: 4.0,
            seed: 0,
            shift: 1,
            shift_fill: 0.0,
        }
    }
}

impl QatConfig {
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
        if !(self.step_lr.is_finite() && self.step_lr >= 0.0) {
            return Err(Error::invalid("--step-lr", self.step_lr, "must be >= 0"));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::invalid(
                "--weight-decay",
                self.weight_decay,
                "must be >= 0",
            ));
        }
        if !(0.0..=1.0).contains(&self.kd_alpha) {
            return Err(Error::invalid(
                "--kd-alpha",
                self.kd_alpha,
                "must be in [0, 1]",
            ));
        }
        if !(self.kd_temperature.is_finite() && self.kd_temperature > 0.0) {
            return Err(Error::invalid(
                "--kd-temperature",
                self.kd_temperature,
                "must be positive",
            ));
        }
        Ok(())
    }
}

/// The trained module: the model and its quantizers (the hook of the model's forward).
#[derive(Module, Debug)]
pub struct QatModule<N: Module + ModuleDisplay = Model> {
    /// The student model.
    pub model: N,
    /// Its learned quantizers.
    pub quant: LsqQuantizers,
}

impl<N: Network + Module + ModuleDisplay> QatModule<N> {
    /// Fake-quantized logits.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.model.forward_with(images, &self.quant)
    }
}

/// Parameter ids start here: fixed ids (in visiting order) make optimizer states, which burn
/// keys by parameter id, loadable into a freshly built trainer.
const PARAM_ID_BASE: u64 = 0x5147_0000_0000;

/// Gives every float parameter a fixed id and makes it a trainable autodiff leaf.
#[derive(Default)]
pub(crate) struct MakeTrainable {
    next: u64,
}

impl ModuleMapper for MakeTrainable {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let value = param.val().inner().autodiff().require_grad();
        let id = ParamId::from(PARAM_ID_BASE + self.next);
        self.next += 1;
        Param::initialized(id, value)
    }
}

/// Dotted module paths of the float parameters, in visiting order.
pub(crate) struct PathVisitor<F> {
    path: Vec<String>,
    pub(crate) f: F,
}

impl<F> PathVisitor<F> {
    pub(crate) fn new(f: F) -> Self {
        PathVisitor {
            path: Vec::new(),
            f,
        }
    }
}

impl<F: FnMut(String, Vec<usize>, Vec<f32>)> ModuleVisitor for PathVisitor<F> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let dims = value.dims().to_vec();
        let values = host_values(&value).unwrap_or_default();
        (self.f)(self.path.join("."), dims, values);
    }
}

/// A parameter's shape and values on the host.
pub(crate) type HostParam = (Vec<usize>, Vec<f32>);

/// Replaces every float parameter by the host values `lookup(path)` returns (as trainable
/// leaves on `device`, ids kept).
pub(crate) struct PathMapper<'a> {
    path: Vec<String>,
    lookup: &'a dyn Fn(&str) -> Option<HostParam>,
    device: Device,
}

impl<'a> PathMapper<'a> {
    pub(crate) fn new(lookup: &'a dyn Fn(&str) -> Option<HostParam>, device: Device) -> Self {
        PathMapper {
            path: Vec::new(),
            lookup,
            device,
        }
    }
}

impl ModuleMapper for PathMapper<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match (self.lookup)(&self.path.join(".")) {
            Some((shape, values)) => {
                let value = Tensor::<D>::from_data(TensorData::new(values, shape), &self.device)
                    .require_grad();
                Param::initialized(param.id, value)
            }
            None => param,
        }
    }
}

/// One training step, for progress reporting.
#[derive(Clone, Debug)]
pub struct StepStats {
    /// Steps done so far over the whole run.
    pub step: usize,
    /// Steps in the whole run.
    pub total_steps: usize,
    /// 1-based epoch of this step.
    pub epoch: usize,
    /// Loss of this batch.
    pub loss: f64,
    /// Running train top-1 % of the epoch so far.
    pub train_top1: f64,
}

/// One finished epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss of the epoch.
    pub train_loss: f64,
    /// Training top-1 % (on augmented images) of the epoch.
    pub train_top1: f64,
    /// Top-1 % on the monitoring split after the epoch, when evaluated: the validation split
    /// (digits, which has none: its test split).
    #[serde(alias = "test_top1")]
    pub monitor_top1: Option<f64>,
    /// Wall-clock seconds of the epoch's training steps.
    pub seconds: f64,
}

impl EpochStats {
    /// The training log (`train-log.tsv`): a header, then one tab-separated line per epoch
    /// (epoch, train loss, train top-1, monitoring top-1 or `-`, seconds).
    pub fn tsv(history: &[EpochStats]) -> String {
        let mut log = String::from("epoch\ttrain_loss\ttrain_top1\tval_top1\tseconds\n");
        for e in history {
            let val = e.monitor_top1.map_or("-".into(), |v| format!("{v:.2}"));
            log += &format!(
                "{}\t{:.4}\t{:.2}\t{val}\t{:.1}\n",
                e.epoch, e.train_loss, e.train_top1, e.seconds
            );
        }
        log
    }
}

/// A QAT run in progress: the student, the teacher, both optimizers and the position in the
/// schedule. See the crate docs for an example.
pub struct QatTrainer<N: Network + Module + ModuleDisplay = Model> {
    pub(crate) model_name: String,
    pub(crate) plan: BitPlan,
    pub(crate) config: QatConfig,
    pub(crate) teacher: N,
    pub(crate) ptq: QuantizedModel<N>,
    pub(crate) module: QatModule<N>,
    pub(crate) weight_optim: ModuleOptimizer,
    pub(crate) step_optim: ModuleOptimizer,
    /// Epochs completed.
    pub(crate) epoch: usize,
    /// Optimizer steps taken.
    pub(crate) step: usize,
    /// Training images per epoch, fixed by the first epoch (a resumed run must use as many).
    pub(crate) train_images: Option<usize>,
    pub(crate) history: Vec<EpochStats>,
    pub(crate) device: Device,
}

impl<N: Network + Module + ModuleDisplay> QatTrainer<N> {
    /// Sets a run up from the full-precision model `fp` (the teacher), calibration images and a
    /// bit plan: PTQ with `ptq` gives the quantizers' initial steps and zero points; the student
    /// starts from the FP model with the same post-LN reparameterization PTQ applied, so at step
    /// 0 the student computes exactly the PTQ model. Runs on the device of `calib`.
    pub fn new(
        model_name: &str,
        fp: N,
        calib: Tensor<4>,
        plan: &BitPlan,
        ptq: &PtqConfig,
        config: QatConfig,
    ) -> Result<Self> {
        config.validate()?;
        if plan.sites.is_empty() {
            return Err(Error::invalid(
                "plan",
                "(empty)",
                "quantizes no site; QAT needs at least one",
            ));
        }
        plan.check_sites(fp.sites().iter().map(|s| &s.id))?;
        let device = calib.device().inner();
        let quantized = quantize(fp.clone(), calib.clone(), plan, ptq)?;
        let student = reparameterize(fp.clone(), calib, plan, ptq.post_ln)?;
        let quant = LsqQuantizers::from_ptq(&quantized, &device)?;
        let module = QatModule {
            model: student,
            quant,
        }
        .map(&mut MakeTrainable::default());
        let weight_optim = AdamWConfig::new()
            .with_weight_decay(config.weight_decay)
            .init();
        let step_optim = AdamWConfig::new().with_weight_decay(0.0).init();
        Ok(QatTrainer {
            model_name: model_name.to_string(),
            plan: plan.clone(),
            config,
            teacher: fp,
            ptq: quantized,
            module,
            weight_optim,
            step_optim,
            epoch: 0,
            step: 0,
            train_images: None,
            history: Vec::new(),
            device,
        })
    }

    /// The run's hyper-parameters.
    pub fn config(&self) -> &QatConfig {
        &self.config
    }

    /// The bits being trained.
    pub fn plan(&self) -> &BitPlan {
        &self.plan
    }

    /// Epochs completed (including those restored from a checkpoint).
    pub fn epochs_done(&self) -> usize {
        self.epoch
    }

    /// Whether every configured epoch is done.
    pub fn finished(&self) -> bool {
        self.epoch >= self.config.epochs
    }

    /// Steps done (also those of a resumed checkpoint).
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// Every finished epoch's figures.
    pub fn history(&self) -> &[EpochStats] {
        &self.history
    }

    /// The student (on the autodiff device).
    pub fn module(&self) -> &QatModule<N> {
        &self.module
    }

    /// The PTQ model the quantizers were initialised from.
    pub fn ptq(&self) -> &QuantizedModel<N> {
        &self.ptq
    }

    /// The full-precision teacher.
    pub fn teacher(&self) -> &N {
        &self.teacher
    }

    /// Every float parameter of the student (model and steps) by module path, in visiting
    /// order, as host values.
    pub fn param_values(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut out = Vec::new();
        let mut v = PathVisitor::new(|path, dims, values| out.push((path, dims, values)));
        self.module.visit(&mut v);
        out
    }

    /// A hash of every parameter's bits: equal for bitwise-equal students.
    pub fn params_fingerprint(&self) -> String {
        let params = self.param_values();
        let bytes: Vec<Vec<u8>> = params
            .iter()
            .flat_map(|(p, _, v)| {
                [
                    p.as_bytes().to_vec(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ]
            })
            .collect();
        mixq_sensitivity::fingerprint(bytes.iter().map(Vec::as_slice))
    }

    fn steps_per_epoch(&self, n: usize) -> usize {
        n.div_ceil(self.config.batch)
    }

    /// Trains one epoch (the next one) on `data`; `on_step` sees every step.
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
        let c = &self.config;
        let total = self.steps_per_epoch(data.len()) * c.epochs;
        let warmup = default_warmup(total);
        let ad = self.device.clone().autodiff();
        let batches = data.epoch_batches(c.batch, c.seed, self.epoch, c.shift, c.shift_fill);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        for batch in batches {
            let TrainBatch {
                images,
                shape,
                labels,
            } = batch;
            let x_plain =
                Tensor::<4>::from_data(TensorData::new(images.clone(), shape), &self.device);
            let x = Tensor::<4>::from_data(TensorData::new(images, shape), &ad);
            let teacher = if self.config.kd_alpha > 0.0 {
                self.teacher.forward(x_plain)
            } else {
                Tensor::zeros([shape[0], 1], &self.device)
            };
            let logits = self.module.forward(x);
            let loss = distillation_loss(
                logits.clone(),
                teacher,
                &labels,
                self.config.kd_alpha,
                self.config.kd_temperature,
            );
            let loss_value = host_values(&loss.clone().inner())?[0] as f64;
            if !loss_value.is_finite() {
                return Err(Error::invalid(
                    "loss",
                    loss_value,
                    format!(
                        "diverged at step {} (lower --lr or --step-lr)",
                        self.step + 1
                    ),
                ));
            }
            correct += count_correct(&host_values(&logits.inner())?, &labels);
            seen += labels.len();
            loss_sum += loss_value * labels.len() as f64;
            let mut grads = loss.backward();
            let gw = GradientsParams::from_module(&mut grads, &self.module.model);
            let gs = GradientsParams::from_module(&mut grads, &self.module.quant);
            let lr_w = cosine_with_warmup(self.step, total, warmup, self.config.lr);
            let lr_s = cosine_with_warmup(self.step, total, warmup, self.config.step_lr);
            self.module.model = self.weight_optim.step(lr_w, self.module.model.clone(), gw);
            self.module.quant = self.step_optim.step(lr_s, self.module.quant.clone(), gs);
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

    /// The fake-quantized student on `data`.
    pub fn evaluate(&self, data: &ImageSet, batch: usize) -> Result<Metrics> {
        let student = self.module.valid();
        evaluate_with(&student.model, &student.quant, data, batch, &self.device)
    }

    /// The PTQ model (the student's starting point) on `data`.
    pub fn evaluate_ptq(&self, data: &ImageSet, batch: usize) -> Result<Metrics> {
        evaluate_with(&self.ptq.model, &self.ptq.state, data, batch, &self.device)
    }

    /// The full-precision teacher on `data`.
    pub fn evaluate_fp(&self, data: &ImageSet, batch: usize) -> Result<Metrics> {
        evaluate_with(&self.teacher, &NoHook, data, batch, &self.device)
    }
}

pub(crate) fn count_correct(logits: &[f32], labels: &[usize]) -> usize {
    let k = logits.len() / labels.len().max(1);
    logits
        .chunks_exact(k.max(1))
        .zip(labels)
        .filter(|(row, l)| row.iter().filter(|&&v| v > row[**l]).count() == 0)
        .count()
}

/// Top-1/top-5/CE of `model` through `hook` on `data`, in batches of `batch`.
pub fn evaluate_with(
    model: &dyn Network,
    hook: &dyn SiteHook,
    data: &ImageSet,
    batch: usize,
    device: &Device,
) -> Result<Metrics> {
    if batch == 0 {
        return Err(Error::invalid("--eval-batch", 0, "must be at least 1"));
    }
    let mut metrics = Metrics::default();
    let mut start = 0;
    while start < data.len() {
        let end = (start + batch).min(data.len());
        let b = data.slice(start..end);
        let x = Tensor::<4>::from_data(TensorData::new(b.images, b.shape), device);
        metrics.add(&host_values(&model.forward_with(x, hook))?, &b.labels, None);
        start = end;
    }
    Ok(metrics)
}
