//! Learned-step-size quantizers (LSQ, Esser et al. 2020) as burn parameters, applied through the
//! model's site hook.
//!
//! Uniform rule, per tensor (activations) or per output channel (weights), with the integer
//! zero point `z` that PTQ calibrated kept fixed:
//!
//! ```text
//! s'    = grad_scale(s, g),  g = 1 / sqrt(N * Qp)
//! v     = x / s'
//! x_hat = (clamp(round_ste(v) + z, qmin, qmax) - z) * s'
//! ```
//!
//! `round_ste` rounds in the forward and passes the gradient unchanged; `clamp` passes it inside
//! the code range and blocks it outside, so `d x_hat / d x` is 1 inside the clip range and 0
//! outside, and `d x_hat / d s` is `(round(v) - v) * g` inside and `(qmin - z) * g` or
//! `(qmax - z) * g` at the clipped ends: LSQ's gradients. `N` is the number of elements one step
//! size covers (a weight channel, a whole activation tensor) and `Qp = qmax - qmin` the number of
//! steps of the code range (`2^b - 1`).
//!
//! Attention probabilities keep PTQ's log quantizer (`s * 2^(-k/d)` levels, log-sqrt2 by default)
//! with a learned top level `s`: `x_hat = s' * L(x / s)` where `L` picks the level; the gradient
//! to `s` is `L(x / s) * g`, the gradient to `x` passes straight through where `x` lands on a
//! level (not above `s`, not in the zero bin).
//!
//! Every forward value is computed with exactly PTQ's operations in PTQ's order (the gradient
//! tricks add exact zeros), so a freshly initialised [`LsqQuantizers`] reproduces the PTQ model
//! bit for bit (tested).

use std::collections::BTreeMap;

use burn::module::{Module, Param, ParamId};
use burn::tensor::{Tensor, TensorData};
use mixq_core::{BitWidth, Error, Result, SiteId};
use mixq_ptq::{ActQuantizer, QuantizedModel};
use mixq_quant_kernels::{Granularity, LogBase, LogQuantizer, MIN_SCALE, UniformQuantizer};
use mixq_vit_models::{SiteHook, Slot};

/// `x` in the forward, `g * dL/dx` in the backward: `x.detach() + (x - x.detach()) * g`, whose
/// value is exactly `x` (the second term is an exact zero).
pub fn grad_scale<const D: usize>(x: Tensor<D>, g: f32) -> Tensor<D> {
    let d = x.clone().detach();
    d.clone() + (x - d).mul_scalar(g)
}

/// `round(x)` in the forward (half to even), identity in the backward (straight-through).
pub fn round_ste<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let d = x.clone().detach();
    d.clone().round() + (x - d)
}

/// LSQ's gradient scale `1 / sqrt(n * qp)`.
pub fn lsq_grad_scale(n: usize, qp: f32) -> f32 {
    1.0 / ((n.max(1) as f32) * qp.max(1.0)).sqrt()
}

/// LSQ fake quantization of `x` (`[rows, cols]`) with learned steps `step`: one step (`[1]`) for
/// the whole tensor, or one per channel along `axis` (`[cols]` for axis 1, `[rows]` for axis 0).
/// `zero_points` holds the fixed integer zero point(s), one per step; `g` scales the step's
/// gradient (see [`lsq_grad_scale`]).
pub fn lsq_fake_quant(
    x: Tensor<2>,
    step: Tensor<1>,
    zero_points: &[f32],
    qmin: f32,
    qmax: f32,
    axis: Option<usize>,
    g: f32,
) -> Tensor<2> {
    let s = grad_scale(step.clamp_min(MIN_SCALE), g);
    match axis {
        None => {
            // PTQ's per-tensor path: clamp(round(x/s), qmin - z, qmax - z) * s + 0.
            let z = zero_points[0];
            let s = s.reshape([1, 1]);
            round_ste(x.div(s.clone()))
                .clamp(qmin - z, qmax - z)
                .mul(s)
                .add_scalar(0.0)
        }
        Some(axis) => {
            let n = zero_points.len();
            let shape = if axis == 1 { [1, n] } else { [n, 1] };
            let s = s.reshape(shape);
            let z =
                Tensor::<2>::from_data(TensorData::new(zero_points.to_vec(), shape), &x.device());
            (round_ste(x.div(s.clone())) + z.clone())
                .clamp(qmin, qmax)
                .sub(z)
                .mul(s)
        }
    }
}

/// Log fake quantization with a learned top level `scale` (`[1]`): PTQ's level rule on
/// `x / scale`, the gradient to `scale` through the chosen level, straight-through to `x` where
/// `x` is on a level.
pub fn log_fake_quant(
    x: Tensor<2>,
    scale: Tensor<1>,
    bits: BitWidth,
    base: LogBase,
    g: f32,
) -> Tensor<2> {
    let s = grad_scale(scale.clamp_min(MIN_SCALE), g).reshape([1, 1]);
    let y = x.clone().inner().div(s.clone().inner());
    let unit = LogQuantizer::new(bits, base, 1.0)
        .expect("1 is a valid log scale")
        .fake_quant(y.clone());
    let on_level = unit
        .clone()
        .greater_elem(0.0)
        .bool_and(y.lower_equal_elem(1.0))
        .float();
    let detached = x.clone().detach();
    unit.mul(s) + (x - detached).mul(on_level)
}

/// The rule of one quantizer.
#[derive(Clone, Debug, PartialEq)]
pub enum QuantRule {
    /// LSQ on a uniform grid: codes `[qmin, qmax]`, fixed zero points, per tensor (`axis: None`)
    /// or per channel along `axis` of the hook's 2-D view.
    Uniform {
        /// Bits per code.
        bits: BitWidth,
        /// The lowest code.
        qmin: f32,
        /// The highest code.
        qmax: f32,
        /// One per channel (one value per tensor), kept from PTQ.
        zero_points: Vec<f32>,
        /// The channel axis, or `None` per tensor.
        axis: Option<usize>,
    },
    /// Log levels with a learned top level.
    Log {
        /// Bits per code.
        bits: BitWidth,
        /// 2 or sqrt 2.
        base: LogBase,
    },
}

impl QuantRule {
    /// Bits per code.
    pub fn bits(&self) -> BitWidth {
        match self {
            QuantRule::Uniform { bits, .. } | QuantRule::Log { bits, .. } => *bits,
        }
    }
}

/// Which tensor one quantizer handles and how.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantSpec {
    /// The site.
    pub site: SiteId,
    /// Which of its tensors.
    pub slot: Slot,
    /// How it is quantized.
    pub rule: QuantRule,
}

/// Every quantizer of a QAT model: one learned step tensor per (site, slot), in the order of
/// `specs`. As a [`SiteHook`] it fake-quantizes the tensors it has a quantizer for and passes
/// the rest through unchanged.
#[derive(Module, Debug)]
pub struct LsqQuantizers {
    /// Step sizes (uniform) or top levels (log), `steps[i]` for `specs[i]`.
    pub steps: Vec<Param<Tensor<1>>>,
    /// What `steps[i]` quantizes.
    #[module(skip)]
    pub specs: Vec<QuantSpec>,
    /// `(site, slot)` → index into `specs` and `steps`.
    #[module(skip)]
    pub index: BTreeMap<(SiteId, Slot), usize>,
}

fn uniform_rule(q: &UniformQuantizer, axis: Option<usize>) -> QuantRule {
    QuantRule::Uniform {
        bits: q.bits(),
        qmin: q.qmin() as f32,
        qmax: q.qmax() as f32,
        zero_points: q.zero_points().to_vec(),
        axis,
    }
}

impl LsqQuantizers {
    /// Quantizers initialised from a PTQ calibration: the per-channel weight quantizers of
    /// `ptq.weights` (linear weights `[in, out]` channel axis 1, conv `[out, in*k*k]` axis 0) and
    /// every activation quantizer of `ptq.state`, steps and zero points as calibrated. Errors
    /// when the plan is empty or a quantizer has a layout QAT does not support.
    pub fn from_ptq<N>(ptq: &QuantizedModel<N>, device: &burn::tensor::Device) -> Result<Self> {
        if ptq.plan.sites.is_empty() {
            return Err(Error::invalid(
                "plan",
                "(empty)",
                "quantizes no site; QAT needs at least one",
            ));
        }
        let mut entries: Vec<(QuantSpec, Vec<f32>)> = Vec::new();
        for (site, q) in &ptq.weights {
            let axis = match q.granularity() {
                Granularity::PerChannel { axis } if axis <= 1 => axis,
                other => {
                    return Err(Error::invalid(
                        "weight quantizer",
                        format!("{site}: {other:?}"),
                        "QAT learns per-output-channel weight steps only",
                    ));
                }
            };
            entries.push((
                QuantSpec {
                    site: site.clone(),
                    slot: Slot::Weight,
                    rule: uniform_rule(q, Some(axis)),
                },
                q.scales().to_vec(),
            ));
        }
        for (site, slots) in &ptq.state.sites {
            for (slot, q) in slots {
                let (rule, init) = match q {
                    ActQuantizer::Uniform(u) => {
                        if u.granularity() != Granularity::PerTensor {
                            return Err(Error::invalid(
                                "activation quantizer",
                                format!("{site} {slot:?}: {:?}", u.granularity()),
                                "QAT learns per-tensor activation steps only",
                            ));
                        }
                        (uniform_rule(u, None), u.scales().to_vec())
                    }
                    ActQuantizer::Log(l) => (
                        QuantRule::Log {
                            bits: l.bits(),
                            base: l.base(),
                        },
                        vec![l.scale()],
                    ),
                };
                entries.push((
                    QuantSpec {
                        site: site.clone(),
                        slot: *slot,
                        rule,
                    },
                    init,
                ));
            }
        }
        let mut steps = Vec::with_capacity(entries.len());
        let mut specs = Vec::with_capacity(entries.len());
        let mut index = BTreeMap::new();
        for (i, (spec, init)) in entries.into_iter().enumerate() {
            let n = init.len();
            steps.push(Param::initialized(
                ParamId::new(),
                Tensor::<1>::from_data(TensorData::new(init, [n]), device),
            ));
            index.insert((spec.site.clone(), spec.slot), i);
            specs.push(spec);
        }
        Ok(LsqQuantizers {
            steps,
            specs,
            index,
        })
    }

    /// Number of quantizers.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Whether there is no quantizer.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// The learned steps (or log top levels) of `site`/`slot` on the host.
    pub fn step_values(&self, site: &SiteId, slot: Slot) -> Option<Vec<f32>> {
        let i = *self.index.get(&(site.clone(), slot))?;
        mixq_quant_kernels::host_values(&self.steps[i].val()).ok()
    }
}

impl SiteHook for LsqQuantizers {
    fn apply(&self, site: &SiteId, slot: Slot, x: Tensor<2>) -> Tensor<2> {
        let Some(&i) = self.index.get(&(site.clone(), slot)) else {
            return x;
        };
        let spec = &self.specs[i];
        let step = self.steps[i].val();
        let [rows, cols] = x.dims();
        match &spec.rule {
            QuantRule::Uniform {
                qmin,
                qmax,
                zero_points,
                axis,
                ..
            } => {
                let per_step = match axis {
                    None => rows * cols,
                    Some(1) => rows,
                    Some(_) => cols,
                };
                let g = lsq_grad_scale(per_step, qmax - qmin);
                lsq_fake_quant(x, step, zero_points, *qmin, *qmax, *axis, g)
            }
            QuantRule::Log { bits, base } => {
                let levels = (1usize << bits.get()) as f32;
                let g = lsq_grad_scale(rows * cols, levels);
                log_fake_quant(x, step, *bits, *base, g)
            }
        }
    }
}
