//! Calibration: from a full-precision model, a calibration batch and a bit plan to a
//! fake-quantized model (weights quantized in place, activations through [`QuantState`]).

use mixq_vit_models::Network;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use mixq_core::{BitPlan, Error, Result, SiteId, SiteInfo, SiteKind};
use mixq_quant_kernels::{
    Granularity, LogBase, RangeMethod, UniformQuantizer, calibrate_log, calibrate_uniform,
    host_values,
};
use mixq_vit_models::{Model, SiteHook, Slot};

use crate::config::{PostLnMode, PtqConfig, SoftmaxMode};
use crate::reparam::{ChannelTarget, apply_fold, channel_fold};
use crate::state::{ActQuantizer, QuantState};

/// A model ready for fake-quantized inference: one of mixq's families ([`Model`], the
/// default) or any other [`Network`] (WTPose, a model of one's own).
#[derive(Debug)]
pub struct QuantizedModel<N = Model> {
    /// Weights already fake-quantized (and post-LN sites reparameterized when asked).
    pub model: N,
    /// Activation quantizers, by site and slot.
    pub state: QuantState,
    /// The bits every site was quantized with.
    pub plan: BitPlan,
    /// The per-output-channel weight quantizer of every planned linear/conv site (linear
    /// weights `[in, out]` on axis 1, conv weights as `[out, in*k*k]` on axis 0): what an
    /// integer engine needs to recover the integer codes.
    pub weights: BTreeMap<SiteId, UniformQuantizer>,
}

/// Every planned site quantized *alone*: the quantizers each site gets when every other site
/// stays in full precision (one calibration for all sites, instead of one per site).
#[derive(Debug)]
pub struct IsolatedQuantizers<N = Model> {
    /// The full-precision model, post-LN sites reparameterized (the same function as the
    /// original up to float rounding).
    pub model: N,
    /// Activation quantizers, calibrated in a full-precision pass.
    pub state: QuantState,
    /// Fake-quantized weights by site, in the 2-D view the site hook sees at
    /// [`Slot::Weight`] (linear `[in, out]`, conv `[out, in*k*k]`).
    pub weights: BTreeMap<SiteId, Tensor<2>>,
    /// The bits every site was quantized with.
    pub plan: BitPlan,
}

impl<N: Network> QuantizedModel<N> {
    /// The output (logits, features, flattened heatmaps) of `images` with every planned site
    /// fake-quantized.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.model.forward_with(images, &self.state)
    }
}

impl QuantizedModel {
    /// Final-normed tokens `[b, tokens, c]` with every planned site fake-quantized.
    pub fn features(&self, images: Tensor<4>) -> Tensor<3> {
        self.model.features_with(images, &self.state)
    }
}

/// Fake quantizers of any model whose forward pass routes its weights ([`Slot::Weight`]) and
/// activations through a [`SiteHook`] (WTPose, or a user's own burn model built from
/// mixq-vit-models' layers): pass them as the hook of that forward. Made by
/// [`quantize_hooked`].
#[derive(Clone, Debug)]
pub struct HookQuantizers {
    /// Activation quantizers.
    pub state: QuantState,
    /// Fake-quantized weights in the hook's 2-D view (linear `[in, out]`, conv
    /// `[out, in*k*k]`).
    pub weights: BTreeMap<SiteId, Tensor<2>>,
    /// The per-output-channel quantizer of every weight (the integer codes' scales and zero
    /// points, as in [`QuantizedModel::weights`]).
    pub weight_quantizers: BTreeMap<SiteId, UniformQuantizer>,
    /// The bits every site was quantized with.
    pub plan: BitPlan,
}

/// Weights replaced by their fake-quantized copies, activations through `state`.
fn substitute(
    weights: &BTreeMap<SiteId, Tensor<2>>,
    state: &dyn SiteHook,
    site: &SiteId,
    slot: Slot,
    x: Tensor<2>,
) -> Tensor<2> {
    match slot {
        Slot::Weight => match weights.get(site) {
            Some(w) => w.clone(),
            None => x,
        },
        _ => state.apply(site, slot, x),
    }
}

/// Quantizes every site it has quantizers for: weights from [`IsolatedQuantizers::weights`],
/// activations through the state. Wrap it to quantize one site at a time.
impl<N: Sync> SiteHook for IsolatedQuantizers<N> {
    fn apply(&self, site: &SiteId, slot: Slot, x: Tensor<2>) -> Tensor<2> {
        substitute(&self.weights, &self.state, site, slot, x)
    }
}

impl SiteHook for HookQuantizers {
    fn apply(&self, site: &SiteId, slot: Slot, x: Tensor<2>) -> Tensor<2> {
        substitute(&self.weights, &self.state, site, slot, x)
    }
}

/// Keeps the weight tensors of the planned sites as they pass [`Slot::Weight`].
struct WeightRecorder<'a> {
    plan: &'a BitPlan,
    seen: Mutex<BTreeMap<SiteId, Tensor<2>>>,
}

impl SiteHook for WeightRecorder<'_> {
    fn apply(&self, site: &SiteId, slot: Slot, x: Tensor<2>) -> Tensor<2> {
        if slot == Slot::Weight && self.plan.sites.contains_key(site) {
            self.seen
                .lock()
                .expect("recorder lock")
                .insert(site.clone(), x.clone());
        }
        x
    }
}

/// Quantized weights in place of the originals; everything else through `inner`.
struct WithWeights<'a> {
    weights: &'a BTreeMap<SiteId, Tensor<2>>,
    inner: &'a dyn SiteHook,
}

impl SiteHook for WithWeights<'_> {
    fn apply(&self, site: &SiteId, slot: Slot, x: Tensor<2>) -> Tensor<2> {
        substitute(self.weights, self.inner, site, slot, x)
    }
}

/// Host values `[rows, cols]` (as values and `cols`) of recorded (site, slot) tensors.
type Recorded = BTreeMap<(SiteId, Slot), (Vec<f32>, usize)>;

/// Records the host values of selected (site, slot) tensors during one forward pass.
struct Recorder {
    wanted: BTreeSet<(SiteId, Slot)>,
    seen: Mutex<Recorded>,
}

impl SiteHook for Recorder {
    fn apply(&self, site: &SiteId, slot: Slot, x: Tensor<2>) -> Tensor<2> {
        let key = (site.clone(), slot);
        if self.wanted.contains(&key) {
            let cols = x.dims()[1];
            if let Ok(values) = host_values(&x) {
                self.seen
                    .lock()
                    .expect("recorder lock")
                    .insert(key, (values, cols));
            }
        }
        x
    }
}

/// The per-channel magnitudes of one post-LayerNorm activation (the input of a linear that reads
/// a LayerNorm's output, `qkv` or `fc1`), over a set of images: where trained ViTs keep the few
/// channels tens of times larger than the rest that channel-wise post-LN quantization exists for.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PostLnChannels {
    /// The linear site that reads the LayerNorm's output.
    pub site: SiteId,
    /// Max |x| of each channel over every token of every image.
    pub abs_max: Vec<f32>,
}

impl PostLnChannels {
    /// The median channel's max |x|.
    pub fn median(&self) -> f32 {
        let mut v = self.abs_max.clone();
        v.sort_by(f32::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }

    /// The largest channel's max |x|.
    pub fn max(&self) -> f32 {
        self.abs_max.iter().copied().fold(0.0, f32::max)
    }

    /// How many times the median channel's max |x| the largest channel's is (the outlier
    /// figure; a zero median counts as the smallest positive float).
    pub fn outlier_ratio(&self) -> f32 {
        self.max() / self.median().max(f32::MIN_POSITIVE)
    }

    /// Channels whose max |x| is at least `factor` times the median channel's, largest first.
    pub fn outliers(&self, factor: f32) -> Vec<(usize, f32)> {
        let bound = factor * self.median();
        let mut out: Vec<(usize, f32)> = self
            .abs_max
            .iter()
            .copied()
            .enumerate()
            .filter(|&(_, v)| v >= bound && v > 0.0)
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

/// [`PostLnChannels`] of every LayerNorm → linear pair of `model` over `images`, in forward order
/// (one full-precision pass).
pub fn post_ln_channels(model: &Model, images: Tensor<4>) -> Result<Vec<PostLnChannels>> {
    let mut model = model.clone();
    let sites: Vec<SiteId> = model
        .post_norm_pairs_mut()
        .into_iter()
        .map(|(_, lin)| lin.site.clone())
        .collect();
    let recorder = Recorder {
        wanted: sites.iter().map(|s| (s.clone(), Slot::Input)).collect(),
        seen: Mutex::new(BTreeMap::new()),
    };
    let _ = model.forward_with(images, &recorder);
    let seen = recorder.seen.into_inner().expect("recorder lock");
    sites
        .into_iter()
        .map(|site| {
            let (values, channels) = seen.get(&(site.clone(), Slot::Input)).ok_or_else(|| {
                Error::invalid("site", site.as_str(), "its input never passed the hook")
            })?;
            let mut abs_max = vec![0f32; *channels];
            for row in values.chunks_exact(*channels) {
                for (m, v) in abs_max.iter_mut().zip(row) {
                    *m = m.max(v.abs());
                }
            }
            Ok(PostLnChannels { site, abs_max })
        })
        .collect()
}

/// Calibrates each activation quantizer as its tensor passes by (one full-precision pass), so
/// no more than one tensor is held on the host at a time.
struct Calibrator<'a> {
    plan: &'a BitPlan,
    config: &'a PtqConfig,
    kinds: BTreeMap<SiteId, SiteKind>,
    skip: BTreeSet<(SiteId, Slot)>,
    state: Mutex<QuantState>,
    error: Mutex<Option<Error>>,
}

impl Calibrator<'_> {
    fn calibrate(&self, site: &SiteId, slot: Slot, x: &Tensor<2>) -> Result<Option<ActQuantizer>> {
        let Some(bits) = self.plan.sites.get(site) else {
            return Ok(None);
        };
        let kind = self.kinds[site];
        let bits = bits.a_bits;
        let values = host_values(x)?;
        let shape = x.dims();
        let uniform = || -> Result<ActQuantizer> {
            calibrate_uniform(
                &values,
                &shape,
                Granularity::PerTensor,
                &self.config.act_method,
                bits,
                false,
            )
            .map(ActQuantizer::Uniform)
        };
        Ok(Some(match (kind, slot) {
            (SiteKind::MatMulAv, Slot::OperandA) => match self.config.softmax {
                SoftmaxMode::Uniform => uniform()?,
                SoftmaxMode::Log2 => ActQuantizer::Log(calibrate_log(
                    &values,
                    bits,
                    LogBase::Log2,
                    &self.config.act_method,
                )?),
                SoftmaxMode::LogSqrt2 => ActQuantizer::Log(calibrate_log(
                    &values,
                    bits,
                    LogBase::LogSqrt2,
                    &self.config.act_method,
                )?),
            },
            _ => uniform()?,
        }))
    }
}

impl SiteHook for Calibrator<'_> {
    fn apply(&self, site: &SiteId, slot: Slot, x: Tensor<2>) -> Tensor<2> {
        let activation = matches!(slot, Slot::Input | Slot::OperandA | Slot::OperandB);
        if !activation || self.skip.contains(&(site.clone(), slot)) {
            return x;
        }
        match self.calibrate(site, slot, &x) {
            Ok(Some(q)) => {
                self.state
                    .lock()
                    .expect("calibrator lock")
                    .insert(site.clone(), slot, q)
            }
            Ok(None) => {}
            Err(e) => {
                self.error.lock().expect("calibrator lock").get_or_insert(e);
            }
        }
        x
    }
}

/// Fake-quantizes a weight tensor per output channel: linear `[in, out]` (axis 1), conv
/// flattened to `[out, in*k*k]` (axis 0).
fn quantize_weight<const D: usize>(
    w: Tensor<D>,
    axis_out: usize,
    bits: mixq_core::BitWidth,
    config: &PtqConfig,
) -> Result<(Tensor<D>, UniformQuantizer)> {
    let dims = w.dims();
    let (rows, cols) = if axis_out == 1 {
        (dims[0], dims[1])
    } else {
        (dims[0], dims.iter().skip(1).product())
    };
    let values = host_values(&w)?;
    let q = calibrate_uniform(
        &values,
        &[rows, cols],
        Granularity::PerChannel { axis: axis_out },
        &config.weight_method,
        bits,
        false,
    )?;
    let quantized = q.fake_quant_host(&values, &[rows, cols])?;
    Ok((
        Tensor::from_data(TensorData::new(quantized, dims), &w.device()),
        q,
    ))
}

/// Folds the per-channel ranges of the post-LN inputs into the model (step 1 of [`quantize`])
/// and returns the per-tensor quantizers of those inputs.
fn fold_post_ln(
    model: &mut dyn Network,
    calib: &Tensor<4>,
    plan: &BitPlan,
    mode: PostLnMode,
) -> Result<QuantState> {
    let mut state = QuantState::default();
    let (target, method) = match mode {
        PostLnMode::Uniform => return Ok(state),
        PostLnMode::ChannelReparam => (ChannelTarget::Mean, RangeMethod::MinMax),
        PostLnMode::ClippedChannel => (ChannelTarget::Median, RangeMethod::repq()),
    };
    let wanted = model
        .post_norm_pairs_mut()
        .into_iter()
        .map(|(_, lin)| (lin.site.clone(), Slot::Input))
        .filter(|(s, _)| plan.sites.contains_key(s))
        .collect();
    let recorder = Recorder {
        wanted,
        seen: Mutex::new(BTreeMap::new()),
    };
    let _ = model.forward_with(calib.clone(), &recorder);
    let seen = recorder.seen.into_inner().expect("recorder lock");
    for (norm, linear) in model.post_norm_pairs_mut() {
        let Some((values, channels)) = seen.get(&(linear.site.clone(), Slot::Input)) else {
            continue;
        };
        let bits = plan.sites[&linear.site].a_bits;
        let fold = channel_fold(values, *channels, bits, &method, target)?;
        apply_fold(norm, linear, &fold);
        state.insert(
            linear.site.clone(),
            Slot::Input,
            ActQuantizer::Uniform(fold.per_tensor),
        );
    }
    Ok(state)
}

/// Post-training quantization of `model` with `plan`, calibrated on `calib` (`[n, c, h, w]`).
///
/// Steps: (1) for `channel-reparam`/`clipped-channel`, record the post-LN inputs and fold their
/// per-channel ranges into the model; (2) quantize every planned weight per output channel;
/// (3) one full-precision pass calibrates the remaining activation quantizers.
pub fn quantize<N: Network>(
    model: N,
    calib: Tensor<4>,
    plan: &BitPlan,
    config: &PtqConfig,
) -> Result<QuantizedModel<N>> {
    let (model, state, weights, quantizers) = calibrate(model, calib, plan, config, true)?;
    debug_assert!(weights.is_empty());
    Ok(QuantizedModel {
        model,
        state,
        plan: plan.clone(),
        weights: quantizers,
    })
}

/// Calibrates every planned site as if it were the only quantized one (see
/// [`IsolatedQuantizers`]); a sensitivity sweep then quantizes one site at a time through a
/// hook, from one calibration per bit-width.
pub fn quantize_isolated<N: Network>(
    model: N,
    calib: Tensor<4>,
    plan: &BitPlan,
    config: &PtqConfig,
) -> Result<IsolatedQuantizers<N>> {
    let (model, state, weights, _) = calibrate(model, calib, plan, config, false)?;
    Ok(IsolatedQuantizers {
        model,
        state,
        weights,
        plan: plan.clone(),
    })
}

type Calibrated<N> = (
    N,
    QuantState,
    BTreeMap<SiteId, Tensor<2>>,
    BTreeMap<SiteId, UniformQuantizer>,
);

/// Steps (1)-(3) of [`quantize`]; with `in_place` false the quantized weights are returned
/// instead of written into the model, so the calibration pass runs on full-precision weights.
fn calibrate<N: Network>(
    mut model: N,
    calib: Tensor<4>,
    plan: &BitPlan,
    config: &PtqConfig,
    in_place: bool,
) -> Result<Calibrated<N>> {
    let sites = model.sites();
    plan.check_sites(sites.iter().map(|s| &s.id))?;
    let kinds: BTreeMap<SiteId, SiteKind> = sites.iter().map(|s| (s.id.clone(), s.kind)).collect();

    let state = fold_post_ln(&mut model, &calib, plan, config.post_ln)?;
    let skip: BTreeSet<(SiteId, Slot)> = state
        .sites
        .iter()
        .flat_map(|(site, slots)| slots.keys().map(move |slot| (site.clone(), *slot)))
        .collect();

    let mut weights = BTreeMap::new();
    let mut quantizers = BTreeMap::new();
    for linear in model.linears_mut() {
        if let Some(bits) = plan.sites.get(&linear.site) {
            let (w, q) = quantize_weight(linear.weight.val(), 1, bits.w_bits, config)?;
            quantizers.insert(linear.site.clone(), q);
            if in_place {
                linear.weight = Param::initialized(linear.weight.id, w);
            } else {
                weights.insert(linear.site.clone(), w);
            }
        }
    }
    for conv in model.convs_mut() {
        if let Some(bits) = plan.sites.get(&conv.site) {
            let (w, q) = quantize_weight(conv.weight.val(), 0, bits.w_bits, config)?;
            quantizers.insert(conv.site.clone(), q);
            if in_place {
                conv.weight = Param::initialized(conv.weight.id, w);
            } else {
                let [o, i, kh, kw] = w.dims();
                weights.insert(conv.site.clone(), w.reshape([o, i * kh * kw]));
            }
        }
    }
    // A planned site whose weights neither `linears_mut` nor `convs_mut` handed over would
    // silently stay in full precision.
    if let Some(missed) = sites.iter().find(|s| {
        s.kind.has_weights() && plan.sites.contains_key(&s.id) && !quantizers.contains_key(&s.id)
    }) {
        return Err(Error::invalid(
            "site",
            &missed.id,
            "has weights but the model's linears_mut/convs_mut do not hand them over",
        ));
    }

    let calibrator = Calibrator {
        plan,
        config,
        kinds,
        skip,
        state: Mutex::new(state),
        error: Mutex::new(None),
    };
    let _ = model.forward_with(calib, &calibrator);
    if let Some(e) = calibrator.error.into_inner().expect("calibrator lock") {
        return Err(e);
    }
    let state = calibrator.state.into_inner().expect("calibrator lock");
    tracing::info!(quantizers = state.len(), "calibrated");
    Ok((model, state, weights, quantizers))
}

/// Only the reparameterization (step 1), in full precision: the returned model computes the
/// same function as `model` (up to float rounding); its post-LN inputs are the folded `X'`.
/// Any [`Network`] (its `post_norm_pairs_mut` says what to fold), so a model of one's own can
/// be reparameterized before [`quantize_hooked`].
pub fn reparameterize<N: Network>(
    mut model: N,
    calib: Tensor<4>,
    plan: &BitPlan,
    mode: PostLnMode,
) -> Result<N> {
    plan.check_sites(model.sites().iter().map(|s| &s.id))?;
    fold_post_ln(&mut model, &calib, plan, mode)?;
    Ok(model)
}

/// Post-training quantization through the site hook alone, for models other than the
/// classification [`Model`]s: `forward(hook)` must run the model on the calibration images
/// with `hook`. A first pass reads every planned weight at [`Slot::Weight`] and quantizes it
/// per output channel; a second calibrates the activation quantizers, with the quantized
/// weights in place (`isolated == false`, like [`quantize`]) or with full-precision weights
/// (`true`, like [`quantize_isolated`], for a sensitivity sweep).
///
/// The post-LN reparameterization needs the model's LayerNorm/linear pairs and is not applied
/// here: post-LN inputs get per-tensor quantizers whatever `config.post_ln` says (a model that
/// implements [`Network`] can be folded by [`reparameterize`] first).
pub fn quantize_hooked(
    sites: &[SiteInfo],
    plan: &BitPlan,
    config: &PtqConfig,
    isolated: bool,
    forward: impl Fn(&dyn SiteHook),
) -> Result<HookQuantizers> {
    plan.check_sites(sites.iter().map(|s| &s.id))?;
    let recorder = WeightRecorder {
        plan,
        seen: Mutex::new(BTreeMap::new()),
    };
    forward(&recorder);
    let seen = recorder.seen.into_inner().expect("recorder lock");
    let mut weights = BTreeMap::new();
    let mut weight_quantizers = BTreeMap::new();
    for info in sites.iter().filter(|s| s.kind.has_weights()) {
        let Some(bits) = plan.sites.get(&info.id) else {
            continue;
        };
        let w = seen.get(&info.id).ok_or_else(|| {
            Error::invalid(
                "site",
                &info.id,
                "has weights but none passed the hook during the forward pass",
            )
        })?;
        let axis_out = if info.kind == SiteKind::Linear { 1 } else { 0 };
        let (q, quantizer) = quantize_weight(w.clone(), axis_out, bits.w_bits, config)?;
        weights.insert(info.id.clone(), q);
        weight_quantizers.insert(info.id.clone(), quantizer);
    }

    let calibrator = Calibrator {
        plan,
        config,
        kinds: sites.iter().map(|s| (s.id.clone(), s.kind)).collect(),
        skip: BTreeSet::new(),
        state: Mutex::new(QuantState::default()),
        error: Mutex::new(None),
    };
    let no_weights = BTreeMap::new();
    forward(&WithWeights {
        weights: if isolated { &no_weights } else { &weights },
        inner: &calibrator,
    });
    if let Some(e) = calibrator.error.into_inner().expect("calibrator lock") {
        return Err(e);
    }
    let state = calibrator.state.into_inner().expect("calibrator lock");
    tracing::info!(
        quantizers = state.len(),
        weights = weights.len(),
        "calibrated"
    );
    Ok(HookQuantizers {
        state,
        weights,
        weight_quantizers,
        plan: plan.clone(),
    })
}

/// A seeded sample of `n` calibration images as one `[n, c, h, w]` tensor: from `folder` (a
/// training-split image folder, or an in-memory data set's validation split), else from the
/// model's data set (see [`mixq_datasets::sample_batch`]).
pub fn calibration_images(
    spec: &mixq_datasets::DataSpec,
    folder: Option<&std::path::Path>,
    n: usize,
    seed: u64,
    device: &burn::tensor::Device,
) -> Result<Tensor<4>> {
    let batch = mixq_datasets::sample_batch(spec, folder, n, seed, "--calib")?;
    Ok(mixq_vit_models::batch_tensor(&batch, device))
}
