//! Rule presets: which rule each kind of layer uses.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Tensor;
use burn::tensor::activation;
use mixq_core::{Error, SiteId};
use serde::{Deserialize, Serialize};

use crate::rules;

/// A named set of rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// AttnLRP (Achtibat et al. 2024): epsilon rule on linear/conv, LayerNorm with the std
    /// detached, GELU by identity, softmax by its plain gradient, uniform rule on the two
    /// attention matmuls.
    #[default]
    Attnlrp,
    /// Chefer et al. 2021 (likely what LRP-QViT used): alpha1-beta0 on linear/conv, relevance
    /// passed unchanged through LayerNorm, softmax and GELU, uniform rule on the attention
    /// matmuls.
    Chefer,
}

impl Preset {
    /// Every preset, for option lists.
    pub const ALL: [Preset; 2] = [Preset::Attnlrp, Preset::Chefer];

    /// The name the CLI and files use (`attnlrp`, `chefer`).
    pub fn name(self) -> &'static str {
        match self {
            Preset::Attnlrp => "attnlrp",
            Preset::Chefer => "chefer",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| Error::invalid("preset", s, "expected attnlrp or chefer"))
    }
}

/// How the attention probabilities are treated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionRule {
    /// Both matmuls split relevance equally between their operands, so part of it flows
    /// through the softmax into `q` and `k` (AttnLRP, and the choice for both presets).
    #[default]
    Uniform,
    /// The probabilities are constants (CP-LRP, Ali et al. 2022): all relevance of
    /// `attn @ v` goes to `v`, none to `q`/`k`. Fully conservative; used to test conservation
    /// and as an ablation.
    Constant,
}

/// Rules for linear and conv layers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinearRule {
    /// LRP-epsilon with this epsilon.
    Epsilon(f64),
    /// LRP-alpha1-beta0 (positive contributions only).
    Alpha1Beta0,
}

/// The pixel layer's z^B bounds: tensors of the image's shape holding the lowest and highest
/// normalised pixel value per channel. Give them autodiff + `require_grad` to read pixel
/// relevance (`x g_x + low g_low + high g_high`).
#[derive(Clone, Debug)]
pub struct PixelBounds {
    /// The site that consumes the pixels (`patch_embed.proj`).
    pub site: SiteId,
    /// The lowest normalised pixel value, per channel, broadcast to the image's shape.
    pub low: Tensor<4>,
    /// The highest normalised pixel value, likewise.
    pub high: Tensor<4>,
}

/// Everything a model needs to run in LRP mode.
#[derive(Clone, Debug)]
pub struct Rules {
    /// The preset these rules came from.
    pub preset: Preset,
    /// The rule of linear and conv layers.
    pub linear: LinearRule,
    /// The rule of the attention matmuls and softmax.
    pub attention: AttentionRule,
    /// z^B at the pixel layer; without it the pixel layer uses `linear`.
    pub pixels: Option<PixelBounds>,
}

/// AttnLRP's epsilon (LXT uses 1e-6 too): large enough to tame near-zero outputs, small
/// enough not to absorb relevance from ordinary ones.
pub const DEFAULT_EPSILON: f64 = 1e-6;

impl Rules {
    /// The rules of `preset`, without pixel bounds.
    pub fn new(preset: Preset) -> Self {
        Rules {
            preset,
            linear: match preset {
                Preset::Attnlrp => LinearRule::Epsilon(DEFAULT_EPSILON),
                Preset::Chefer => LinearRule::Alpha1Beta0,
            },
            attention: AttentionRule::Uniform,
            pixels: None,
        }
    }

    /// A linear layer `x @ W + b` (`W` as `[in, out]`), on the last axis of an input of any
    /// rank (tokens `[b, n, c]`, maps `[b, h, w, c]`).
    pub fn linear<const D: usize>(
        &self,
        x: Tensor<D>,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    ) -> Tensor<D> {
        self.affine_on(D - 1, x, weight, bias, |x, w| {
            burn::tensor::module::linear(x, w, None)
        })
    }

    /// Any affine layer given its bias-free map `op` (e.g. a convolution); `bias` is added on
    /// the channel axis: axis 1 of a 4-D (NCHW) output, else the last.
    pub fn affine<const DI: usize, const DW: usize, const DO: usize>(
        &self,
        x: Tensor<DI>,
        weight: Tensor<DW>,
        bias: Option<Tensor<1>>,
        op: impl Fn(Tensor<DI>, Tensor<DW>) -> Tensor<DO>,
    ) -> Tensor<DO> {
        let channel = if DO == 4 { 1 } else { DO - 1 };
        self.affine_on(channel, x, weight, bias, op)
    }

    /// [`Rules::affine`] with the bias on output axis `channel`.
    fn affine_on<const DI: usize, const DW: usize, const DO: usize>(
        &self,
        channel: usize,
        x: Tensor<DI>,
        weight: Tensor<DW>,
        bias: Option<Tensor<1>>,
        op: impl Fn(Tensor<DI>, Tensor<DW>) -> Tensor<DO>,
    ) -> Tensor<DO> {
        let add_bias = |z: Tensor<DO>| match &bias {
            Some(b) => {
                let mut shape = [1usize; DO];
                shape[channel] = b.dims()[0];
                z + b.clone().reshape(shape)
            }
            None => z,
        };
        match self.linear {
            LinearRule::Epsilon(eps) => rules::epsilon(add_bias(op(x, weight)), eps),
            LinearRule::Alpha1Beta0 => {
                let z = add_bias(op(x.clone().detach(), weight.clone()));
                rules::alpha1_beta0(x, weight, z, op)
            }
        }
    }

    /// The pixel layer (when [`Rules::pixels`] names `site`) by z^B, else like any affine layer.
    /// 4-D convolution inputs only; biases are added on axis 1.
    pub fn pixel_or_affine(
        &self,
        site: &SiteId,
        x: Tensor<4>,
        weight: Tensor<4>,
        bias: Option<Tensor<1>>,
        op: impl Fn(Tensor<4>, Tensor<4>) -> Tensor<4>,
    ) -> Tensor<4> {
        match &self.pixels {
            Some(p) if &p.site == site => {
                let mut z = op(x.clone().detach(), weight.clone());
                if let Some(b) = bias {
                    let c = b.dims()[0];
                    z = z + b.reshape([1, c, 1, 1]);
                }
                rules::z_beta(x, p.low.clone(), p.high.clone(), weight, z, op)
            }
            _ => self.affine(x, weight, bias, op),
        }
    }

    /// LayerNorm over the last axis.
    pub fn layer_norm<const D: usize>(
        &self,
        x: Tensor<D>,
        gamma: Tensor<1>,
        beta: Tensor<1>,
        eps: f64,
    ) -> Tensor<D> {
        match self.preset {
            Preset::Attnlrp => rules::layer_norm(x, gamma, beta, eps),
            Preset::Chefer => {
                let y =
                    burn::tensor::module::layer_norm(x.clone().detach(), gamma, Some(beta), eps);
                rules::identity(x, y)
            }
        }
    }

    /// The exact (erf) GELU by the identity rule (both presets).
    pub fn gelu<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let y = activation::gelu(x.clone().detach());
        rules::identity(x, y)
    }

    /// Softmax over `dim`: plain gradient (AttnLRP) or identity (Chefer).
    pub fn softmax<const D: usize>(&self, x: Tensor<D>, dim: usize) -> Tensor<D> {
        match self.preset {
            Preset::Attnlrp => activation::softmax(x, dim),
            Preset::Chefer => {
                let y = activation::softmax(x.clone().detach(), dim);
                rules::identity(x, y)
            }
        }
    }

    /// `q @ k^T` (already transposed `k`): uniform rule.
    pub fn matmul_qk<const D: usize>(&self, q: Tensor<D>, k_t: Tensor<D>) -> Tensor<D> {
        rules::uniform(q.matmul(k_t), 2)
    }

    /// `attn @ v`: uniform rule, or all relevance to `v` under [`AttentionRule::Constant`].
    pub fn matmul_av<const D: usize>(&self, attn: Tensor<D>, v: Tensor<D>) -> Tensor<D> {
        match self.attention {
            AttentionRule::Uniform => rules::uniform(attn.matmul(v), 2),
            AttentionRule::Constant => attn.detach().matmul(v),
        }
    }
}
