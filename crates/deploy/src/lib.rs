//! # mixq-deploy
//!
//! Real low-bit inference for a model that [`mixq_ptq::quantize`] calibrated: every planned
//! linear and the patch embedding run as `u8` activations × bit-packed 2–8-bit weights with
//! exact `i32` accumulation ([`mixq_quant_kernels::IntGemm`]); the attention matmuls run on
//! their operand quantizers; LayerNorm, softmax and GELU stay in `f32`, as in ONNX Runtime's
//! QDQ graphs. The engine works on host `f32` buffers and uses rayon's pool (every core).
//!
//! # What it computes
//!
//! The same function as the fake-quant forward ([`mixq_ptq::QuantizedModel::forward`]):
//! the fake-quant weights lie exactly on their quantizer's grid, so they become integer codes
//! without loss (checked at export), and every activation is quantized by the same quantizer
//! with the same rounding. What differs is float rounding: the integer products are exact
//! where the fake-quant `f32` matmuls round, so now and then a value close to a rounding
//! boundary lands on the neighbouring code and the difference propagates. The tests bound the
//! logits difference on the shipped digits model (see `tests/engine.rs`) and require identical
//! top-1 on the whole digits test split.
//!
//! `p · v` with **log-√2 probabilities** (the default): the log codes are decoded to their exact
//! level values `s · 2^(−k/2)` and multiplied in `f32` with the `u8`-quantized `v` decoded
//! to its exact grid values — the fake-quant arithmetic itself. A shift-based integer form
//! would need `√2` folded into a fixed-point mantissa (inexact for odd `k`); the matmul is about
//! 4 % of DeiT-S's MACs, so exactness wins. With `--softmax uniform` both operands are `u8` and
//! `p · v` runs on the integer kernel like `q · kᵀ`.
//!
//! Sites the plan leaves out run in `f32` with the model's weights.
//!
//! A model of one's own (any [`mixq_vit_models::Network`], or layers calibrated through a hook)
//! exports its layers instead, [`IntSites`], to the same file format; its forward is its own.
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use mixq_deploy::IntModel;
//! use mixq_ptq::{PtqConfig, quantize, uniform_plan};
//! use mixq_quant_kernels::host_values;
//! use mixq_vit_models::{ModelCard, Network};
//!
//! let device = Device::flex();
//! let card = ModelCard::find("digits-deit")?;
//! let model = card.arch.init(&device)?;
//! let calib = Tensor::<4>::random([8, 1, 8, 8], Distribution::Normal(0.0, 1.0), &device);
//! let plan = uniform_plan(&model.sites(), 8, 8, 8)?;
//! let q = quantize(model, calib.clone(), &plan, &PtqConfig::default())?;
//!
//! let engine = IntModel::from_quantized(&q)?;
//! let images = host_values(&calib)?;
//! let logits = engine.forward(&images, 8)?;
//! assert_eq!(logits.len(), 8 * 10);
//!
//! // One file with packed weights, quantizers and a readable JSON header.
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("digits.mixq.safetensors");
//! engine.save(&path)?;
//! let loaded = IntModel::load(&path)?;
//! assert_eq!(loaded.forward(&images, 8)?, logits);
//! # Ok::<(), mixq_core::Error>(())
//! ```

#![warn(missing_docs)]

pub mod bench;
pub mod format;
mod layer;
mod ops;
mod simd;
mod sites;
mod verify;
mod vit;

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use mixq_core::{BitPlan, Error, Result, SiteId};
use mixq_ptq::{ActQuantizer, QuantizedModel};
use mixq_quant_kernels::{Granularity, IntGemm, PackedWeights, UniformQuantizer, host_values};
use mixq_vit_models::{ArchConfig, Model, ModelCard, Network, Slot};

pub use format::{FORMAT_NAME, FORMAT_VERSION, Header, WeightInfo};
pub use layer::IntLinear;
pub use sites::IntSites;
pub use verify::{Agreement, Forward, verify};

use format::Tensors;
use vit::VitNet;

/// How the engine was compiled. Its kernels are only fast when optimised without debug
/// assertions; benchmarks print this and warn otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    /// Cargo's base profile: `dev` (the README's commands, `cargo test`) or `release`.
    pub profile: &'static str,
    /// This crate's optimisation level (`0`..`3`, `s`, `z`).
    pub opt_level: &'static str,
    /// Whether this crate was compiled with debug assertions.
    pub debug_assertions: bool,
}

impl BuildInfo {
    /// The build of this crate.
    pub const fn current() -> Self {
        BuildInfo {
            profile: env!("MIXQ_BUILD_PROFILE"),
            opt_level: env!("MIXQ_BUILD_OPT_LEVEL"),
            debug_assertions: cfg!(debug_assertions),
        }
    }

    /// Whether the kernels run at full speed (opt-level 3, no debug assertions).
    pub fn is_optimised(&self) -> bool {
        self.opt_level == "3" && !self.debug_assertions
    }
}

impl std::fmt::Display for BuildInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} profile (engine opt-level {}, debug assertions {})",
            self.profile,
            self.opt_level,
            if self.debug_assertions { "on" } else { "off" }
        )
    }
}

/// A model on the integer engine. Build one with [`IntModel::from_quantized`] or
/// [`IntModel::load`].
pub struct IntModel {
    header: Header,
    /// The header's architecture (present in every whole model's file).
    arch: ArchConfig,
    net: Net,
    gemm: IntGemm,
    /// The file it was read from (`<quantized model>` for a fresh export), for errors.
    origin: std::path::PathBuf,
}

enum Net {
    Vit(Box<VitNet>),
}

impl std::fmt::Debug for IntModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntModel")
            .field("arch", &self.arch)
            .field("integer_sites", &self.header.weights.len())
            .finish()
    }
}

fn unsupported(arch: &ArchConfig) -> Option<Error> {
    match arch {
        ArchConfig::Vit(v) if v.layer_scale.is_some() => Some(Error::invalid(
            "arch.layer_scale",
            v.layer_scale.unwrap_or_default(),
            "the integer engine does not run layer-scale (DeiT-III, DINOv2) yet",
        )),
        ArchConfig::Vit(v) if v.num_classes == 0 => Some(Error::invalid(
            "arch.num_classes",
            0,
            "the integer engine runs classifiers; a backbone without a head is not supported yet",
        )),
        ArchConfig::Vit(_) => None,
        ArchConfig::Swin(_) => Some(Error::invalid(
            "arch",
            "swin",
            "the integer engine runs ViT/DeiT models; Swin is not supported yet",
        )),
        ArchConfig::WtPose(_) => Some(Error::invalid(
            "arch",
            "wtpose",
            "the integer engine runs ViT/DeiT models; WTPose is not supported yet",
        )),
    }
}

impl IntModel {
    /// Exports a fake-quantized model to the integer engine: packs every planned linear/conv
    /// site's weights with its weight quantizer (erroring if a weight is off its grid) and
    /// copies the float tensors and the activation quantizers.
    pub fn from_quantized(q: &QuantizedModel) -> Result<Self> {
        let arch = q.model.arch();
        if let Some(e) = unsupported(&arch) {
            return Err(e);
        }
        let Model::Vit(m) = &q.model else {
            unreachable!("checked above")
        };
        let mut t = Tensors::new("<quantized model>");
        let exported = sites::export_sites(q, &mut t)?;
        sites::write_floats(m, &m.sites, &mut t)?;

        let header = Header {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            header_checksum: String::new(),
            arch: Some(arch),
            plan: q.plan.clone(),
            weights: exported.weights,
            // A whole model's architecture names its layers.
            layers: Vec::new(),
            activations: exported.activations,
            checksums: BTreeMap::new(),
        };
        Self::from_parts(header, &t, IntGemm::new())
    }

    fn from_parts(header: Header, t: &Tensors, gemm: IntGemm) -> Result<Self> {
        let arch = header.arch.clone().ok_or_else(|| {
            Error::parse(
                &t.origin,
                "holds the layers of a model of one's own (no architecture): read it with IntSites::load",
            )
        })?;
        if let Some(e) = unsupported(&arch) {
            return Err(e);
        }
        let net = match &arch {
            ArchConfig::Vit(cfg) => Net::Vit(Box::new(VitNet::build(cfg, &header, t, gemm)?)),
            ArchConfig::Swin(_) | ArchConfig::WtPose(_) => unreachable!("checked above"),
        };
        Ok(IntModel {
            header,
            arch,
            net,
            gemm,
            origin: t.origin.clone(),
        })
    }

    /// Logits `[batch, num_classes]` (row-major) for normalized images `[batch, c, h, w]`.
    pub fn forward(&self, images: &[f32], batch: usize) -> Result<Vec<f32>> {
        // The whole forward runs on one of rayon's workers: its ~60 parallel regions then fork
        // by work stealing instead of each injecting a job from outside the pool and parking
        // the caller (the scheduler's share of a batch-1 forward).
        rayon::scope(|_| match &self.net {
            Net::Vit(n) => n.forward(&self.gemm, images, batch),
        })
    }

    /// [`IntModel::forward`] on a burn tensor (copied to the host and back).
    pub fn forward_tensor(&self, images: Tensor<4>) -> Result<Tensor<2>> {
        let batch = images.dims()[0];
        let device = images.device();
        let logits = self.forward(&host_values(&images)?, batch)?;
        Ok(Tensor::from_data(
            TensorData::new(logits, [batch, self.num_classes()]),
            &device,
        ))
    }

    /// The JSON header (architecture, plan, quantizers) as stored in the file.
    /// The file's JSON header: format, architecture, plan, weight shapes.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The model's architecture.
    pub fn arch(&self) -> &ArchConfig {
        &self.arch
    }

    /// The bits the model was quantized with.
    pub fn plan(&self) -> &BitPlan {
        &self.header.plan
    }

    /// The model card the file was exported from (the plan's `meta.model`, as
    /// [`export_model`] records it), checked against the file's architecture: what says which
    /// data set and preprocessing the model expects.
    pub fn card(&self) -> Result<ModelCard> {
        let name = self.header.plan.meta.get("model").ok_or_else(|| {
            Error::parse(
                &self.origin,
                "header key 'plan.meta.model' missing: cannot tell which data set the model expects",
            )
        })?;
        let card = ModelCard::find(name)?;
        if card.arch != self.arch {
            return Err(Error::parse(
                &self.origin,
                format!("header key 'arch' differs from model card '{name}'"),
            ));
        }
        Ok(card)
    }

    /// Classes of the classifier head.
    pub fn num_classes(&self) -> usize {
        self.arch.num_classes()
    }

    /// `[c, h, w]` of one input image.
    pub fn input_shape(&self) -> [usize; 3] {
        let a = &self.arch;
        [a.in_chans(), a.img_size(), a.img_size()]
    }

    /// Number of integer (packed) linear/conv sites.
    pub fn num_integer_sites(&self) -> usize {
        self.header.weights.len()
    }

    /// Number of attention matmuls whose both operands are uniform `u8` (integer kernel).
    pub fn integer_matmuls(&self) -> usize {
        self.header
            .activations
            .values()
            .filter(|slots| {
                slots.contains_key(&Slot::OperandA)
                    && slots.len() == 2
                    && slots
                        .values()
                        .all(|q| matches!(q, ActQuantizer::Uniform(_)))
            })
            .count()
    }

    fn tensors(&self) -> Tensors {
        let mut t = Tensors::new("<engine>");
        match &self.net {
            Net::Vit(n) => n.tensors(&mut t),
        }
        t
    }

    /// Bytes of all stored tensors (packed weights, scales, zero points, float tensors).
    pub fn tensor_bytes(&self) -> usize {
        self.tensors().num_bytes()
    }

    /// The file's bytes (safetensors with the JSON header in `__metadata__`).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        format::to_bytes(&self.header, &self.tensors())
    }

    /// Parses a file's bytes; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: impl AsRef<Path>) -> Result<Self> {
        format::parse_with(bytes, origin.as_ref(), |h, t| {
            Self::from_parts(h, t, IntGemm::new())
        })
    }

    /// Writes the model atomically (a temporary file renamed into place).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        mixq_core::write_atomic(path, &self.to_bytes()?)
    }

    /// Reads a file written by [`IntModel::save`]; every inconsistency is one
    /// [`Error::Parse`] naming the file and the key.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        format::read_with(path.as_ref(), |h, t| Self::from_parts(h, t, IntGemm::new()))
    }
}

/// A row-major `[rows, cols]` matrix as `[cols, rows]`.
fn transposed(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// `w_out_in` (`[out, in]`, already fake-quantized) as integer codes of the per-output-channel
/// weight quantizer `wq` (axis 1 of `[in, out]` linear weights, axis 0 of `[out, in*k*k]` conv
/// weights; the packed rows are output channels). A value off the grid is an error: the codes
/// would not reproduce it.
fn pack_on_grid(
    id: &SiteId,
    w_out_in: &[f32],
    (in_f, out_f): (usize, usize),
    wq: &UniformQuantizer,
) -> Result<PackedWeights> {
    let rows = UniformQuantizer::from_parts(
        wq.bits(),
        wq.is_symmetric(),
        match wq.granularity() {
            Granularity::PerTensor => Granularity::PerTensor,
            _ => Granularity::PerChannel { axis: 0 },
        },
        wq.scales().to_vec(),
        wq.zero_points().to_vec(),
    )?;
    let packed = PackedWeights::quantize(w_out_in, out_f, in_f, &rows)?;
    if let Some(i) = packed
        .dequantize()
        .iter()
        .zip(w_out_in)
        .position(|(a, b)| a.to_bits() != b.to_bits() && a != b)
    {
        return Err(Error::invalid(
            "weights",
            id,
            format!(
                "value {} (output {}, input {}) is not on the quantizer grid: was the model quantized with this plan?",
                w_out_in[i],
                i / in_f,
                i % in_f
            ),
        ));
    }
    Ok(packed)
}

/// Where an export's bits come from.
#[derive(Clone, Debug, PartialEq)]
pub enum ExportPlan {
    /// A given plan (a plan file, a `ptq` run's plan).
    Given(BitPlan),
    /// The same bits at every site; the image input at `image_bits`.
    Uniform {
        /// Weight bits.
        w_bits: u8,
        /// Activation bits.
        a_bits: u8,
        /// Bits of the image input (the first site's input).
        image_bits: u8,
    },
}

/// An export of a model card's model, as `cargo xtask export` resolves it from its flags.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// The bits.
    pub plan: ExportPlan,
    /// Seed of the calibration sample (recorded in the file).
    pub seed: u64,
    /// Calibration images.
    pub calib: usize,
    /// Where they come from (`None`: the card's data set).
    pub calib_data: Option<std::path::PathBuf>,
    /// Quantizer modes (post-LN, softmax).
    pub ptq: mixq_ptq::PtqConfig,
}

/// `model`, the model of `card`, exported as `config` says: the plan checked against the
/// model's sites and stamped with where the file comes from (card name, seed, quantizer modes:
/// what [`IntModel::card`] reads back), calibration images drawn from `config.calib_data` (else
/// the card's data set) with `config.seed`, then [`export`].
pub fn export_model(
    card: &ModelCard,
    model: Model,
    config: &ExportConfig,
    device: &burn::tensor::Device,
) -> Result<Export> {
    let sites = model.sites();
    let mut plan = match &config.plan {
        ExportPlan::Given(plan) => plan.clone(),
        ExportPlan::Uniform {
            w_bits,
            a_bits,
            image_bits,
        } => mixq_ptq::uniform_plan(&sites, *w_bits, *a_bits, *image_bits)?,
    };
    plan.check_sites(sites.iter().map(|s| &s.id))?;
    plan.meta.insert("model".into(), card.name.clone());
    plan.meta.insert("seed".into(), config.seed.to_string());
    plan.meta
        .insert("post_ln".into(), config.ptq.post_ln.to_string());
    plan.meta
        .insert("softmax".into(), config.ptq.softmax.to_string());
    let calib = mixq_ptq::calibration_images(
        &card.data_spec(),
        config.calib_data.as_deref(),
        config.calib,
        config.seed,
        device,
    )?;
    export(model, &plan, &config.ptq, calib)
}

/// An exported model and how closely it follows the fake-quant model it came from.
pub struct Export {
    /// The integer model (write it with [`IntModel::to_bytes`]).
    pub engine: IntModel,
    /// The fake-quant model it was built from ([`verify`] compares the two on a data set).
    pub quantized: QuantizedModel,
    /// Max |logit difference| between the engine and fake-quant on the calibration images.
    pub max_abs_diff: f32,
}

/// Quantizes `model` with `plan` and `config` (calibrated on `calib`), builds the integer
/// engine and checks it against the fake-quant model on the same images: everything
/// `cargo xtask export` does between resolving its inputs and writing the file.
pub fn export(
    model: Model,
    plan: &BitPlan,
    config: &mixq_ptq::PtqConfig,
    calib: Tensor<4>,
) -> Result<Export> {
    let q = mixq_ptq::quantize(model, calib.clone(), plan, config)?;
    let engine = IntModel::from_quantized(&q)?;
    let n = calib.dims()[0];
    let fq = mixq_ptq::host_logits(q.forward(calib.clone()));
    let int = engine.forward(&host_values(&calib)?, n)?;
    let max_abs_diff = fq
        .iter()
        .zip(&int)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    Ok(Export {
        engine,
        quantized: q,
        max_abs_diff,
    })
}

#[cfg(test)]
mod tests {
    use super::BuildInfo;

    /// The README's commands (and `cargo test`) build the dev profile; the workspace's profile
    /// settings must keep the engine compiled as in release there.
    #[test]
    fn the_dev_and_test_builds_compile_the_engine_as_release() {
        let build = BuildInfo::current();
        assert!(build.is_optimised(), "{build}");
        assert!(["dev", "release"].contains(&build.profile), "{build}");
    }
}
