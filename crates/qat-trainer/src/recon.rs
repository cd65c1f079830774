//! Block reconstruction: PTQ that optimises each transformer block's quantization against the
//! full-precision block's output on a few hundred calibration images (BRECQ, QDrop, and the
//! ViT methods built on them), instead of rounding to nearest with calibrated ranges alone.
//!
//! For block `i` (the unit between two residual-stream boundaries, [`Network::forward_block`]):
//!
//! * **input**: boundary `i` computed by the already-quantized (and already reconstructed)
//!   blocks before it; **target**: boundary `i + 1` of the full-precision model;
//! * **learned rounding of the weights** (AdaRound, Nagel et al. 2020): every weight `w` of a
//!   site in the block, on its PTQ grid (step `s`, zero point `z`, per output channel), becomes
//!   `s * (clamp(floor(w / s) + h(v) + z, qmin, qmax) - z)` with
//!   `h(v) = clamp(sigmoid(v) * (ζ - γ) + γ, 0, 1)`, `ζ = 1.1`, `γ = -0.1`, `v` initialised so
//!   that `h(v) = w / s - floor(w / s)` (the soft weight starts at `w`). The loss adds
//!   `λ Σ (1 - |2 h(v) - 1|^β)`, off for the first `warmup` of the iterations, then with `β`
//!   annealed linearly from 20 to 2, which drives every `h(v)` to 0 or 1. At the end each
//!   weight takes `floor(w / s) + [v ≥ 0]`: the floor or the ceiling of `w / s`, so the scales
//!   and zero points stay PTQ's and the weights stay on their integer grid;
//! * **learned activation steps** (LSQ, [`LsqQuantizers`]) of the block's activation quantizers
//!   (the attention probabilities' log quantizer learns its top level);
//! * **QDrop** (Wei et al. 2022, off by default): while optimising, each activation element
//!   keeps its full-precision value with probability `drop_prob` instead of its quantized one,
//!   which the paper finds makes the learned rounding robust to the noise it will see (on
//!   fmnist-deit it gained nothing over three seeds at twice the time, hence off);
//! * **loss**: the squared error of the block output, summed over channels and averaged over
//!   tokens and images (BRECQ's `lp_loss`), plus the rounding term; Adam on `v` and on the steps.
//!
//! The patch embedding and the head keep PTQ's rounding (they run at 8 bits in mixq's plans).
//! Any [`Network`] with blocks is reconstructed (mixq's families, WTPose, a model of one's
//! own); one without is refused. Linear and conv weights inside a block get learned rounding.
//!
//! The result is a plain [`QuantizedModel`], so evaluation, `export` and the integer engine take
//! it unchanged.
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use mixq_ptq::{PtqConfig, uniform_plan};
//! use mixq_qat_trainer::{ReconConfig, reconstruct};
//! use mixq_vit_models::{ModelCard, Network};
//!
//! let device = Device::flex();
//! let card = ModelCard::find("digits-deit")?;
//! let fp = card.arch.init(&device)?; // or trained weights
//! let calib = Tensor::<4>::random([8, 1, 8, 8], Distribution::Normal(0.0, 1.0), &device);
//! let images = Tensor::<4>::random([16, 1, 8, 8], Distribution::Normal(0.0, 1.0), &device);
//! let plan = uniform_plan(&fp.sites(), 3, 3, 8)?; // W3A3
//! let config = ReconConfig { iters: 10, batch: 8, ..ReconConfig::default() };
//! let r = reconstruct(&fp, calib, images, &plan, &PtqConfig::default(), &config, |_| {})?;
//! for b in &r.blocks {
//!     println!("block {}: {:.4} -> {:.4}", b.block, b.loss_before, b.loss_after);
//! }
//! let logits = r.quantized.forward(Tensor::zeros([1, 1, 8, 8], &device)); // a QuantizedModel
//! assert_eq!(logits.dims(), [1, 10]);
//! # Ok::<(), mixq_core::Error>(())
//! ```

use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use mixq_core::{BitPlan, Error, Result, SiteId};
use mixq_ptq::{ActQuantizer, PtqConfig, QuantizedModel, quantize, reparameterize};
use mixq_quant_kernels::{Granularity, LogQuantizer, MIN_SCALE, UniformQuantizer, host_values};
use mixq_vit_models::{Boundary, Model, Network, NoHook, OutputKind, SiteHook, Slot};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::lsq::{LsqQuantizers, QuantRule};
use crate::trainer::MakeTrainable;

/// AdaRound's stretch of the sigmoid: `h` reaches 0 and 1 at finite `v`.
const ZETA: f32 = 1.1;
const GAMMA: f32 = -0.1;

/// What the block-output error is weighted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconLoss {
    /// Every element alike: squared error.
    #[default]
    Mse,
    /// Each element by `1 + F / mean(F)`, `F = g²` the diagonal Fisher estimate of that
    /// element: `g` the gradient of KL(FP logits ‖ logits) with respect to the block output, per
    /// image, the block quantized and the blocks after it in full precision (BRECQ's
    /// `fisher_diag`, normalised to mean 1 and damped by 1 so that elements without gradient
    /// still count). Classifiers only.
    Fisher,
}

impl ReconLoss {
    /// The name the CLI uses.
    pub fn name(self) -> &'static str {
        match self {
            ReconLoss::Mse => "mse",
            ReconLoss::Fisher => "fisher",
        }
    }
}

/// Hyper-parameters of [`reconstruct`] (defaults: BRECQ's, with fewer iterations).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconConfig {
    /// Optimisation steps per block.
    pub iters: usize,
    /// Images per step (drawn from the reconstruction images, seeded).
    pub batch: usize,
    /// Adam learning rate of the rounding variables.
    pub round_lr: f64,
    /// Adam learning rate of the activation steps.
    pub step_lr: f64,
    /// Weight `λ` of the rounding regulariser.
    pub round_weight: f64,
    /// `β` of the regulariser at the end of the warm-up and at the last step.
    pub beta: (f64, f64),
    /// Share of the steps before the regulariser starts.
    pub warmup: f64,
    /// QDrop (Wei et al. 2022): during the optimisation each activation element keeps its
    /// full-precision value with this probability instead of its quantized one (0, the
    /// default: off; the paper's 0.5 did not beat 0 on fmnist-deit over three seeds and costs
    /// about twice the time per step).
    pub drop_prob: f64,
    /// The block-output loss.
    pub loss: ReconLoss,
    /// Seeds the batch order and the QDrop masks.
    pub seed: u64,
    /// Also reconstruct what follows the last block (final norm and head; WTPose's waterfall
    /// convs and heatmap head) against the full-precision output, as one more unit after the
    /// blocks (off by default: mixq's classifier plans keep the head at 8 bits).
    pub tail: bool,
}

impl Default for ReconConfig {
    fn default() -> Self {
        Self {
            iters: 1000,
            batch: 32,
            round_lr: 1e-3,
            step_lr: 4e-5,
            round_weight: 0.01,
            beta: (20.0, 2.0),
            warmup: 0.2,
            drop_prob: 0.0,
            loss: ReconLoss::Mse,
            seed: 0,
            tail: false,
        }
    }
}

impl ReconConfig {
    /// Checks the values; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if self.iters == 0 {
            return Err(Error::invalid("--recon-iters", 0, "must be at least 1"));
        }
        if self.batch == 0 {
            return Err(Error::invalid("recon batch", 0, "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.warmup) {
            return Err(Error::invalid(
                "recon warmup",
                self.warmup,
                "must be in [0, 1)",
            ));
        }
        if !(0.0..1.0).contains(&self.drop_prob) {
            return Err(Error::invalid(
                "--recon-drop",
                self.drop_prob,
                "must be in [0, 1)",
            ));
        }
        Ok(())
    }

    /// `β` at step `t`: 20 → 2 linearly after the warm-up (AdaRound's `LinearTempDecay`).
    fn beta_at(&self, t: usize) -> f64 {
        let start = self.warmup * self.iters as f64;
        let rel = ((t as f64 - start) / (self.iters as f64 - start)).clamp(0.0, 1.0);
        self.beta.1 + (self.beta.0 - self.beta.1) * (1.0 - rel)
    }
}

/// One block's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BlockRecon {
    /// Block index (boundary `block` to `block + 1`).
    pub block: usize,
    /// Its quantized sites with weights (their rounding was learned).
    pub sites: Vec<SiteId>,
    /// Block-output loss of PTQ's round-to-nearest model, over all reconstruction images, with
    /// the reconstructed blocks before it as input.
    pub loss_before: f64,
    /// The same after reconstruction (hard rounding, learned steps).
    pub loss_after: f64,
    /// Weights whose code differs from round-to-nearest.
    pub flipped: usize,
    /// Weights in the block's sites.
    pub weights: usize,
    /// Wall seconds.
    pub seconds: f64,
}

/// What [`reconstruct`] reports while it runs.
#[derive(Clone, Copy, Debug)]
pub struct ReconProgress {
    /// The block being reconstructed.
    pub block: usize,
    /// Blocks in all.
    pub blocks: usize,
    /// Steps done in this block.
    pub iter: usize,
    /// Steps per block.
    pub iters: usize,
    /// The last step's block-output loss (without the regulariser).
    pub loss: f64,
}

/// A reconstructed model and each block's figures.
#[derive(Debug)]
pub struct Reconstruction<N = Model> {
    /// The quantized model: PTQ's scales and zero points, learned integer codes and steps.
    pub quantized: QuantizedModel<N>,
    /// One entry per block, in order.
    pub blocks: Vec<BlockRecon>,
}

/// A weight's integer grid: the PTQ quantizer's steps and zero points in the hook's 2-D view,
/// and `floor(w / s)` of the full-precision weight.
struct WeightGrid {
    site: SiteId,
    floor: Tensor<2>,
    scale: Tensor<2>,
    zero: Tensor<2>,
    qmin: f32,
    qmax: f32,
    /// Round-to-nearest codes minus `z`, to count flips.
    nearest: Vec<f32>,
}

impl WeightGrid {
    /// `w` (`[rows, cols]`, the hook's view) on `q`'s grid; `q` is per output channel along
    /// axis 1 (linear `[in, out]`) or 0 (conv `[out, in*k*k]`).
    fn new(site: SiteId, w: &Tensor<2>, q: &UniformQuantizer) -> Result<Self> {
        let Granularity::PerChannel { axis } = q.granularity() else {
            return Err(Error::invalid(
                "weight quantizer",
                format!("{site}: {:?}", q.granularity()),
                "reconstruction needs per-output-channel weight steps",
            ));
        };
        let [rows, cols] = w.dims();
        let device = w.device();
        let n = q.scales().len();
        let shape = if axis == 1 { [1, n] } else { [n, 1] };
        let values = host_values(w)?;
        let scale_of = |i: usize, j: usize| if axis == 1 { j } else { i };
        let mut floor = vec![0f32; rows * cols];
        let mut nearest = vec![0f32; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                let k = i * cols + j;
                let c = scale_of(i, j);
                let v = values[k] / q.scales()[c];
                floor[k] = v.floor();
                let z = q.zero_points()[c];
                nearest[k] = (v.round_ties_even() + z).clamp(q.qmin() as f32, q.qmax() as f32) - z;
            }
        }
        let tensor =
            |v: Vec<f32>, s: [usize; 2]| Tensor::<2>::from_data(TensorData::new(v, s), &device);
        Ok(WeightGrid {
            site,
            floor: tensor(floor, [rows, cols]),
            scale: tensor(q.scales().to_vec(), shape),
            zero: tensor(q.zero_points().to_vec(), shape),
            qmin: q.qmin() as f32,
            qmax: q.qmax() as f32,
            nearest,
        })
    }

    /// The weight for rounding offsets `h` (`[rows, cols]`, 0..1).
    fn weight(&self, h: Tensor<2>) -> Tensor<2> {
        let zero = self.zero.clone();
        (self.floor.clone() + h + zero.clone())
            .clamp(self.qmin, self.qmax)
            .sub(zero)
            .mul(self.scale.clone())
    }
}

/// AdaRound's rectified sigmoid.
fn rectified_sigmoid(v: Tensor<2>) -> Tensor<2> {
    sigmoid(v)
        .mul_scalar(ZETA - GAMMA)
        .add_scalar(GAMMA)
        .clamp(0.0, 1.0)
}

/// The rounding variables of one block's weights.
#[derive(Module, Debug)]
struct Rounding {
    v: Vec<Param<Tensor<2>>>,
}

/// The block's forward during reconstruction: soft-rounded weights, LSQ activations.
struct ReconHook<'a> {
    grids: &'a [WeightGrid],
    index: &'a BTreeMap<SiteId, usize>,
    rounding: &'a Rounding,
    acts: &'a LsqQuantizers,
    drop_prob: f64,
    /// QDrop's masks come from here, not the device's generator, so that the same seed gives
    /// the same masks whatever else runs on the device.
    masks: &'a std::sync::Mutex<ChaCha8Rng>,
}

impl SiteHook for ReconHook<'_> {
    fn apply(&self, site: &SiteId, slot: Slot, x: Tensor<2>) -> Tensor<2> {
        match (slot, self.index.get(site)) {
            (Slot::Weight, Some(&i)) => {
                self.grids[i].weight(rectified_sigmoid(self.rounding.v[i].val()))
            }
            (Slot::Weight, None) => x,
            _ if self.drop_prob > 0.0 => {
                // QDrop: each element keeps its FP value with probability `drop_prob`. One
                // select (`mask_where`) rather than blending with a 0/1 tensor: the same values
                // and gradients in one op instead of five. Not faster on burn-flex (benches/
                // recon_step.rs: QDrop steps take 1.8x the plain ones either way; the host draws
                // are a few per cent of it, burn-flex's select most of the rest).
                let quantized = self.acts.apply(site, slot, x.clone());
                let [rows, cols] = x.dims();
                let dropped: Vec<bool> = {
                    let mut rng = self.masks.lock().expect("mask lock");
                    (0..rows * cols)
                        .map(|_| rng.random::<f64>() < self.drop_prob)
                        .collect()
                };
                let dropped = Tensor::<2, Bool>::from_data(
                    TensorData::new(dropped, [rows, cols]),
                    &x.device(),
                );
                quantized.mask_where(dropped, x)
            }
            _ => self.acts.apply(site, slot, x),
        }
    }
}

/// The full-precision weights of every planned site in the block, as the hook sees them.
struct WeightTaker<'a> {
    sites: &'a [SiteId],
    seen: std::sync::Mutex<BTreeMap<SiteId, Tensor<2>>>,
}

impl SiteHook for WeightTaker<'_> {
    fn apply(&self, site: &SiteId, slot: Slot, x: Tensor<2>) -> Tensor<2> {
        if slot == Slot::Weight && self.sites.contains(site) {
            self.seen
                .lock()
                .expect("weight lock")
                .insert(site.clone(), x.clone());
        }
        x
    }
}

/// Moves every float parameter to the autodiff device without tracking its gradient.
struct Frozen;

impl ModuleMapper for Frozen {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        Param::initialized(param.id, param.val().inner().autodiff())
    }
}

/// Block-output loss: squared error (times `weights`, when given) summed over channels, mean
/// over tokens and images.
fn block_loss(out: Tensor<3>, target: Tensor<3>, weights: Option<Tensor<3>>) -> Tensor<1> {
    let err = out.sub(target).powi_scalar(2);
    match weights {
        Some(w) => err.mul(w),
        None => err,
    }
    .sum_dim(2)
    .mean()
}

/// [`ReconLoss::Fisher`]'s element weights for block `i` over every image: `1 + g² / mean(g²)`,
/// `g` the gradient of KL(FP ‖ model) at the block's output, with the block as `quantized`
/// computes it and the blocks after it as `fp_after` (the full-precision model on the autodiff
/// device).
fn fisher_weights<N: Network>(
    quantized: &N,
    state: &dyn SiteHook,
    fp_after: &N,
    i: usize,
    input: &Boundary,
    fp_logits: &Tensor<2>,
    batch: usize,
) -> Result<Tensor<3>> {
    let n = input.batch();
    let mut squares = Vec::new();
    for start in (0..n).step_by(batch) {
        let b = batch.min(n - start);
        let mut out = quantized
            .forward_block(i, input.clone().narrow(start, b), state)
            .map(|t| t.autodiff());
        let y = out.stream.require_grad();
        out.stream = y.clone();
        let logits = fp_after.forward_from(i + 1, out, &NoHook);
        // Summed over images (alpha 1: the KL term alone), so each image's gradient is its own.
        let kl = crate::loss::distillation_loss(
            logits,
            fp_logits.clone().narrow(0, start, b),
            &vec![0; b],
            1.0,
            1.0,
        )
        .mul_scalar(b as f32);
        let grads = kl.backward();
        let g = y.grad(&grads).ok_or_else(|| {
            Error::invalid("fisher weights", i, "no gradient reached the block output")
        })?;
        squares.push(g.powi_scalar(2));
    }
    let squares = Tensor::cat(squares, 0);
    let mean = host_values(&squares.clone().mean())?[0].max(f32::MIN_POSITIVE);
    Ok(squares.div_scalar(mean).add_scalar(1.0))
}

fn scalar(t: Tensor<1>) -> Result<f64> {
    Ok(host_values(&t.inner())?[0] as f64)
}

/// What one reconstruction unit is: block `i`, fitted on its output stream, or what follows
/// the last block (boundary `n` onward), fitted on the model's output.
#[derive(Clone, Copy, Debug)]
enum Unit {
    Block(usize),
    Tail(usize),
}

impl Unit {
    /// The index reports use: the block's, or the number of blocks for the tail.
    fn index(self) -> usize {
        match self {
            Unit::Block(i) | Unit::Tail(i) => i,
        }
    }

    /// The unit's output (`[b, tokens, c]`; the tail's `[b, 1, outputs]`) from its input.
    fn run<N: Network>(self, model: &N, x: Boundary, hook: &dyn SiteHook) -> Tensor<3> {
        match self {
            Unit::Block(i) => model.forward_block(i, x, hook).stream,
            Unit::Tail(n) => {
                let y = model.forward_from(n, x, hook);
                let [b, k] = y.dims();
                y.reshape([b, 1, k])
            }
        }
    }
}

/// [`block_loss`] of `unit` over every image, in batches of `batch`.
fn full_loss<N: Network>(
    model: &N,
    unit: Unit,
    input: &Boundary,
    target: &Boundary,
    hook: &dyn SiteHook,
    batch: usize,
) -> Result<f64> {
    let n = input.batch();
    let mut sum = 0.0;
    for start in (0..n).step_by(batch) {
        let b = batch.min(n - start);
        let out = unit.run(model, input.clone().narrow(start, b), hook);
        let target = target.clone().narrow(start, b);
        sum += scalar(block_loss(out, target.stream, None))? * b as f64;
    }
    Ok(sum / n as f64)
}

/// The PTQ activation quantizer of a learned LSQ step (the forward is the same function).
fn act_quantizer(rule: &QuantRule, step: f32) -> Result<ActQuantizer> {
    let step = step.max(MIN_SCALE);
    Ok(match rule {
        QuantRule::Uniform {
            bits, zero_points, ..
        } => ActQuantizer::Uniform(UniformQuantizer::from_parts(
            *bits,
            false,
            Granularity::PerTensor,
            vec![step],
            zero_points.clone(),
        )?),
        QuantRule::Log { bits, base } => ActQuantizer::Log(LogQuantizer::new(*bits, *base, step)?),
    })
}

/// Block reconstruction of `fp` with `plan` (see the module documentation): PTQ on `calib` with
/// `ptq` first, then every block optimised on `images` (`[n, c, h, w]`, normalised) in forward
/// order. `progress` gets every step. Deterministic for a given `config.seed`.
pub fn reconstruct<N: Network + Module>(
    fp: &N,
    calib: Tensor<4>,
    images: Tensor<4>,
    plan: &BitPlan,
    ptq: &PtqConfig,
    config: &ReconConfig,
    mut progress: impl FnMut(ReconProgress),
) -> Result<Reconstruction<N>> {
    config.validate()?;
    if fp.num_blocks() == 0 {
        return Err(Error::invalid(
            "model",
            "(no blocks)",
            "declares no residual-stream blocks (Network::block_sites) to reconstruct one by one",
        ));
    }
    let device = images.device();
    let ad: Device = device.clone().autodiff();
    let masks = std::sync::Mutex::new(ChaCha8Rng::seed_from_u64(config.seed.wrapping_add(1)));
    let mut quantized = quantize(fp.clone(), calib.clone(), plan, ptq)?;
    let student = reparameterize(fp.clone(), calib, plan, ptq.post_ln)?;
    let frozen = student.clone().map(&mut Frozen);
    let n = images.dims()[0];
    let (targets, fp_logits) = fp.boundaries(images.clone(), &NoHook);
    if config.loss == ReconLoss::Fisher && fp.output_kind() != OutputKind::Logits {
        return Err(Error::invalid(
            "--recon-loss",
            "fisher",
            "needs class logits; a backbone or pose model reconstructs with mse",
        ));
    }
    let (quantized_bounds, _) = quantized.model.boundaries(images, &quantized.state);
    let mut input = quantized_bounds[0].clone();
    drop(quantized_bounds);
    let blocks = fp.num_blocks();
    let sites = fp.sites();
    let units: Vec<Unit> = (0..blocks)
        .map(Unit::Block)
        .chain(config.tail.then_some(Unit::Tail(blocks)))
        .collect();
    let mut report = Vec::with_capacity(units.len());
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    for &unit in &units {
        let i = unit.index();
        let start = Instant::now();
        let block_sites: Vec<SiteId> = sites
            .iter()
            .map(|s| s.id.clone())
            .filter(|id| plan.sites.contains_key(id) && fp.resume_point(id) == Some(i))
            .collect();
        let target = match unit {
            Unit::Block(i) => targets[i + 1].clone(),
            Unit::Tail(_) => {
                let [n, k] = fp_logits.dims();
                Boundary::new(fp_logits.clone().reshape([n, 1, k]))
            }
        };
        let loss_before = full_loss(
            &quantized.model,
            unit,
            &input,
            &target,
            &quantized.state,
            config.batch,
        )?;

        let fisher = match (config.loss, unit) {
            (ReconLoss::Mse, _) | (_, Unit::Tail(_)) => None,
            (ReconLoss::Fisher, Unit::Block(i)) => Some(fisher_weights(
                &quantized.model.clone().map(&mut Frozen),
                &quantized.state,
                &frozen,
                i,
                &input,
                &fp_logits,
                config.batch,
            )?),
        };

        // The block's full-precision (reparameterized) weights and their PTQ grids.
        let taker = WeightTaker {
            sites: &block_sites,
            seen: std::sync::Mutex::new(BTreeMap::new()),
        };
        let _ = unit.run(&student, input.clone().narrow(0, 1), &taker);
        let weights = taker.seen.into_inner().expect("weight lock");
        let mut grids = Vec::new();
        let mut v = Vec::new();
        for (site, w) in &weights {
            let q = quantized
                .weights
                .get(site)
                .ok_or_else(|| Error::invalid("site", site.as_str(), "has no weight quantizer"))?;
            let grid = WeightGrid::new(site.clone(), w, q)?;
            // h(v) = w / s - floor(w / s): v = -ln((ζ - γ) / (rest - γ) - 1).
            let rest = (w.clone().div(grid.scale.clone()) - grid.floor.clone()).clamp(0.0, 1.0);
            let init = rest
                .sub_scalar(GAMMA)
                .recip()
                .mul_scalar(ZETA - GAMMA)
                .sub_scalar(1.0)
                .log()
                .neg();
            v.push(Param::initialized(
                ParamId::new(),
                Tensor::<2>::from_data(init.into_data(), &ad).require_grad(),
            ));
            grids.push(WeightGrid {
                floor: Tensor::from_data(grid.floor.into_data(), &ad),
                scale: Tensor::from_data(grid.scale.into_data(), &ad),
                zero: Tensor::from_data(grid.zero.into_data(), &ad),
                ..grid
            });
        }
        let index: BTreeMap<SiteId, usize> = grids
            .iter()
            .enumerate()
            .map(|(k, g)| (g.site.clone(), k))
            .collect();
        let mut rounding = Rounding { v };
        let mut acts =
            LsqQuantizers::from_ptq(&quantized, &device)?.map(&mut MakeTrainable::default());
        let mut round_optim = AdamConfig::new().init();
        let mut step_optim = AdamConfig::new().init();
        let mut order: Vec<usize> = Vec::new();
        for t in 0..config.iters {
            if order.len() < config.batch {
                let mut more: Vec<usize> = (0..n).collect();
                more.shuffle(&mut rng);
                order.extend(more);
            }
            let picked: Vec<i64> = order
                .drain(..config.batch.min(n))
                .map(|k| k as i64)
                .collect();
            let idx = Tensor::<1, Int>::from_data(
                TensorData::new(picked.clone(), [picked.len()]),
                &device,
            );
            let x = input.clone().select(idx.clone()).map(|t| t.autodiff());
            let y = target.stream.clone().select(0, idx.clone()).autodiff();
            let w = fisher.as_ref().map(|f| f.clone().select(0, idx).autodiff());
            let hook = ReconHook {
                grids: &grids,
                index: &index,
                rounding: &rounding,
                acts: &acts,
                drop_prob: config.drop_prob,
                masks: &masks,
            };
            let rec = block_loss(unit.run(&frozen, x, &hook), y, w);
            let rec_value = scalar(rec.clone())?;
            if !rec_value.is_finite() {
                return Err(Error::invalid(
                    "reconstruction loss",
                    rec_value,
                    format!("diverged in block {i} at step {t} (lower the learning rates)"),
                ));
            }
            let loss = if (t as f64) < config.warmup * config.iters as f64 || grids.is_empty() {
                rec
            } else {
                let beta = config.beta_at(t) as f32;
                let reg = rounding
                    .v
                    .iter()
                    .map(|v| {
                        let h = rectified_sigmoid(v.val());
                        (h.mul_scalar(2.0).sub_scalar(1.0).abs().powf_scalar(beta))
                            .neg()
                            .add_scalar(1.0)
                            .sum()
                    })
                    .reduce(|a, b| a + b)
                    .expect("grids is not empty");
                rec + reg.mul_scalar(config.round_weight as f32)
            };
            let mut grads = loss.backward();
            let gr = GradientsParams::from_module(&mut grads, &rounding);
            let gs = GradientsParams::from_module(&mut grads, &acts);
            rounding = round_optim.step(config.round_lr, rounding, gr);
            acts = step_optim.step(config.step_lr, acts, gs);
            progress(ReconProgress {
                block: i,
                blocks: units.len(),
                iter: t + 1,
                iters: config.iters,
                loss: rec_value,
            });
        }

        // Hard rounding into the model, learned steps into the activation quantizers.
        let mut flipped = 0;
        let mut count = 0;
        let mut hard = BTreeMap::new();
        for (grid, v) in grids.iter().zip(&rounding.v) {
            let up = v.val().inner().greater_equal_elem(0.0).float();
            let floor = grid.floor.clone().inner();
            let codes = host_values(&(floor.clone() + up.clone()))?;
            let [qmin, qmax] = [grid.qmin, grid.qmax];
            let zero = host_values(&grid.zero.clone().inner())?;
            let dims = floor.dims();
            let axis1 = grid.scale.dims()[0] == 1;
            for (k, c) in codes.iter().enumerate() {
                let ch = if axis1 { k % dims[1] } else { k / dims[1] };
                let z = zero[ch];
                let code = (c + z).clamp(qmin, qmax) - z;
                flipped += (code != grid.nearest[k]) as usize;
            }
            count += codes.len();
            let w = (floor + up + grid.zero.clone().inner())
                .clamp(qmin, qmax)
                .sub(grid.zero.clone().inner())
                .mul(grid.scale.clone().inner());
            hard.insert(grid.site.clone(), w);
        }
        for linear in quantized.model.linears_mut() {
            if let Some(w) = hard.remove(&linear.site) {
                linear.weight = Param::initialized(linear.weight.id, w);
            }
        }
        for conv in quantized.model.convs_mut() {
            if let Some(w) = hard.remove(&conv.site) {
                // The hook's view `[out, in*k*k]` back to the kernel's shape.
                let w = w.reshape(conv.weight.dims());
                conv.weight = Param::initialized(conv.weight.id, w);
            }
        }
        if let Some((site, _)) = hard.into_iter().next() {
            return Err(Error::invalid(
                "site",
                site.as_str(),
                "passed weights through the hook, but the model's linears_mut/convs_mut do not \
                 hand it over",
            ));
        }
        for (k, spec) in acts.specs.iter().enumerate() {
            if spec.slot == Slot::Weight || !block_sites.contains(&spec.site) {
                continue;
            }
            let step = host_values(&acts.steps[k].val().inner())?[0];
            quantized.state.insert(
                spec.site.clone(),
                spec.slot,
                act_quantizer(&spec.rule, step)?,
            );
        }

        let loss_after = full_loss(
            &quantized.model,
            unit,
            &input,
            &target,
            &quantized.state,
            config.batch,
        )?;
        // The next block's input: this block, quantized as it now is, on every image.
        if let Unit::Block(i) = unit {
            let mut next = Vec::new();
            for start in (0..n).step_by(config.batch) {
                let b = config.batch.min(n - start);
                next.push(quantized.model.forward_block(
                    i,
                    input.clone().narrow(start, b),
                    &quantized.state,
                ));
            }
            input = Boundary::cat(next);
        }
        report.push(BlockRecon {
            block: i,
            sites: grids.iter().map(|g| g.site.clone()).collect(),
            loss_before,
            loss_after,
            flipped,
            weights: count,
            seconds: start.elapsed().as_secs_f64(),
        });
        tracing::info!(block = i, loss_before, loss_after, flipped, "reconstructed");
    }
    Ok(Reconstruction {
        quantized,
        blocks: report,
    })
}

/// One reconstructed variant's figures, as [`Reconstruct`] keeps them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReconReport {
    /// The calibration seed.
    pub seed: u64,
    /// The variant's label (`W4A4`, ...).
    pub label: String,
    /// Reconstruction images.
    pub images: usize,
    /// The hyper-parameters it ran with (`seed` is the calibration seed).
    pub config: ReconConfig,
    /// Every block's figures.
    pub blocks: Vec<BlockRecon>,
}

impl ReconReport {
    /// Each variant's blocks as a markdown table: the block-output loss before (PTQ) and after,
    /// the share of weights whose rounding changed, and the time.
    pub fn markdown(reports: &[Self]) -> String {
        let mut s = String::from(
            "| seed | variant | block | loss PTQ | loss recon | weights flipped | seconds |\n|---:|---|---:|---:|---:|---:|---:|\n",
        );
        for r in reports {
            for b in &r.blocks {
                s += &format!(
                    "| {} | {} | {} | {:.5} | {:.5} | {:.2} % | {:.1} |\n",
                    r.seed,
                    r.label,
                    b.block,
                    b.loss_before,
                    b.loss_after,
                    100.0 * b.flipped as f64 / b.weights.max(1) as f64,
                    b.seconds
                );
            }
        }
        s
    }
}

/// How the models of a PTQ table are made: calibration alone, or calibration followed by block
/// reconstruction. The choice every `ptq` run makes (uniform bits, `--mixed`, pose models), with
/// what follows from it: the rows' labels and the reconstruction reports.
pub enum PtqMethod<'a> {
    /// [`mixq_ptq::Calibrate`].
    Calibrate,
    /// [`Reconstruct`].
    Reconstruct(Reconstruct<'a>),
}

impl PtqMethod<'_> {
    /// Whether the models are block-reconstructed.
    pub fn reconstructs(&self) -> bool {
        matches!(self, PtqMethod::Reconstruct(_))
    }

    /// A row's label as this method's rows read: reconstructed rows say so (`W4A4 recon`).
    pub fn label(&self, base: &str) -> String {
        match self {
            PtqMethod::Calibrate => base.to_string(),
            PtqMethod::Reconstruct(_) => format!("{base} recon"),
        }
    }

    /// What every reconstruction reported, in the order of the jobs (none for calibration).
    pub fn into_reports(self) -> Vec<ReconReport> {
        match self {
            PtqMethod::Calibrate => Vec::new(),
            PtqMethod::Reconstruct(r) => r.into_reports(),
        }
    }
}

impl<N: Network + Module> mixq_ptq::Quantizer<N> for PtqMethod<'_> {
    fn quantize(
        &self,
        model: &N,
        seed: u64,
        calib: Tensor<4>,
        variant: &mixq_ptq::Variant,
    ) -> Result<QuantizedModel<N>> {
        match self {
            PtqMethod::Calibrate => mixq_ptq::Calibrate.quantize(model, seed, calib, variant),
            PtqMethod::Reconstruct(r) => r.quantize(model, seed, calib, variant),
        }
    }

    fn quantize_all(
        &self,
        model: &N,
        jobs: &[mixq_ptq::QuantizeJob<'_>],
        done: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<QuantizedModel<N>>> {
        match self {
            PtqMethod::Calibrate => mixq_ptq::Calibrate.quantize_all(model, jobs, done),
            PtqMethod::Reconstruct(r) => r.quantize_all(model, jobs, done),
        }
    }
}

/// [`reconstruct`] as a [`mixq_ptq::Quantizer`], so PTQ tables (`ptq_table`) can compare
/// reconstructed variants: PTQ on each seed's calibration images, then block reconstruction on
/// `images(seed)` with the batch order seeded by the calibration seed. Variants are
/// reconstructed one per rayon thread (each on its own variables: the result does not depend on
/// the thread count); each one's block figures are appended to `reports` in the order of the
/// jobs.
pub struct Reconstruct<'a> {
    /// The hyper-parameters (`seed` is replaced by each calibration seed).
    pub config: ReconConfig,
    /// The reconstruction images of a calibration seed; `None`: the calibration images.
    pub images: Option<&'a (dyn Fn(u64) -> Result<Tensor<4>> + Sync)>,
    /// Every optimisation step (of whichever variant made it).
    pub progress: &'a (dyn Fn(&ReconProgress) + Sync),
    /// What every call reconstructed.
    pub reports: std::sync::Mutex<Vec<ReconReport>>,
}

impl Reconstruct<'_> {
    /// One variant reconstructed, and its report.
    fn one<N: Network + Module>(
        &self,
        model: &N,
        seed: u64,
        calib: Tensor<4>,
        variant: &mixq_ptq::Variant,
    ) -> Result<(QuantizedModel<N>, ReconReport)> {
        let images = match self.images {
            Some(images) => images(seed)?,
            None => calib.clone(),
        };
        let n = images.dims()[0];
        let config = ReconConfig {
            seed,
            ..self.config.clone()
        };
        let r = reconstruct(
            model,
            calib,
            images,
            &variant.plan,
            &variant.config,
            &config,
            |p| (self.progress)(&p),
        )?;
        let report = ReconReport {
            seed,
            label: variant.label.clone(),
            images: n,
            config,
            blocks: r.blocks,
        };
        Ok((r.quantized, report))
    }

    /// The reports so far (what [`Self::reports`] holds).
    pub fn into_reports(self) -> Vec<ReconReport> {
        self.reports.into_inner().expect("reports lock")
    }
}

impl<N: Network + Module> mixq_ptq::Quantizer<N> for Reconstruct<'_> {
    fn quantize(
        &self,
        model: &N,
        seed: u64,
        calib: Tensor<4>,
        variant: &mixq_ptq::Variant,
    ) -> Result<QuantizedModel<N>> {
        let (q, report) = self.one(model, seed, calib, variant)?;
        self.reports.lock().expect("reports lock").push(report);
        Ok(q)
    }

    fn quantize_all(
        &self,
        model: &N,
        jobs: &[mixq_ptq::QuantizeJob<'_>],
        done: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<QuantizedModel<N>>> {
        let results = mixq_ptq::run_jobs(jobs, done, |job| {
            self.one(model, job.seed, job.calib.clone(), job.variant)
        })?;
        let mut reports = self.reports.lock().expect("reports lock");
        Ok(results
            .into_iter()
            .map(|(q, report)| {
                reports.push(report);
                q
            })
            .collect())
    }
}
