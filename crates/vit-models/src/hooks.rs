//! Site hooks: how quantizers, calibration observers and LRP reach into a model.
//!
//! Every site passes its tensors through a [`SiteHook`] as a 2-D view (`[rows, last_dim]`),
//! so the forward code path is one and the same for the plain model (`NoHook`), a calibration
//! pass (a hook that records), and fake quantization (a hook that quantizes). Keeping the
//! quantizer state outside the burn modules lets a forward with `&self` observe, and gives one
//! serialisable object per run.

use burn::tensor::module;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, activation};
use mixq_core::SiteId;
use mixq_lrp::Rules;
use serde::{Deserialize, Serialize};

/// Which tensor of a site a hook sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    /// The input activation of a linear/conv site (`[rows, in]`).
    Input,
    /// The weight of a linear (`[in, out]`) or conv site (`[out, in*k*k]`).
    Weight,
    /// The left operand of a matmul site: `q` for `matmul_qk`, the attention probabilities for
    /// `matmul_av` (`[rows, last]`).
    OperandA,
    /// The right operand: `k` for `matmul_qk`, `v` for `matmul_av`.
    OperandB,
    /// The output of a site.
    Output,
}

/// Sees (and may replace) each tensor of each site during a forward pass.
pub trait SiteHook: Sync {
    /// `false` lets the model skip the 2-D views entirely (the plain forward pays nothing).
    fn active(&self) -> bool {
        true
    }

    /// Returns the tensor to use in place of `x` (same shape).
    fn apply(&self, site: &SiteId, slot: Slot, x: Tensor<2>) -> Tensor<2>;

    /// How the layers compute the operations LRP rewrites during this forward: plainly (the
    /// default; quantizing and calibrating hooks leave it so), or by the rules an explainer
    /// brings.
    fn ops(&self) -> Ops<'_> {
        Ops::Plain
    }
}

/// The operations whose backward LRP rewrites, as the layers compute them. Layers call these
/// and never branch on explanation: [`Ops::Plain`] is the ordinary forward, [`Ops::Lrp`] the
/// same values through an explainer's [`Rules`] (gradients rewritten so that gradient × input
/// is relevance). The hook running the forward says which ([`SiteHook::ops`]).
#[derive(Clone, Copy, Debug)]
pub enum Ops<'a> {
    /// The ordinary forward.
    Plain,
    /// Every operation by these LRP rules.
    Lrp(&'a Rules),
}

impl Ops<'_> {
    /// `x W + b` (`W` as `[in, out]`).
    pub fn linear<const D: usize>(
        self,
        x: Tensor<D>,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    ) -> Tensor<D> {
        match self {
            Ops::Plain => module::linear(x, weight, bias),
            Ops::Lrp(rules) => rules.linear(x, weight, bias),
        }
    }

    /// A 2-D convolution of site `site` (the pixel rule applies to the site that sees the
    /// pixels).
    pub fn conv2d(
        self,
        site: &SiteId,
        x: Tensor<4>,
        weight: Tensor<4>,
        bias: Option<Tensor<1>>,
        options: ConvOptions<2>,
    ) -> Tensor<4> {
        match self {
            Ops::Plain => module::conv2d(x, weight, bias, options),
            Ops::Lrp(rules) => rules.pixel_or_affine(site, x, weight, bias, |x, w| {
                module::conv2d(x, w, None, options.clone())
            }),
        }
    }

    /// LayerNorm over the last axis.
    pub fn layer_norm<const D: usize>(
        self,
        x: Tensor<D>,
        gamma: Tensor<1>,
        beta: Tensor<1>,
        eps: f64,
    ) -> Tensor<D> {
        match self {
            Ops::Plain => module::layer_norm(x, gamma, Some(beta), eps),
            Ops::Lrp(rules) => rules.layer_norm(x, gamma, beta, eps),
        }
    }

    /// The exact (erf) GELU.
    pub fn gelu<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Ops::Plain => activation::gelu(x),
            Ops::Lrp(rules) => rules.gelu(x),
        }
    }

    /// Softmax over `dim`.
    pub fn softmax<const D: usize>(self, x: Tensor<D>, dim: usize) -> Tensor<D> {
        match self {
            Ops::Plain => activation::softmax(x, dim),
            Ops::Lrp(rules) => rules.softmax(x, dim),
        }
    }

    /// `q @ k^T` (`k_t` already transposed).
    pub fn matmul_qk<const D: usize>(self, q: Tensor<D>, k_t: Tensor<D>) -> Tensor<D> {
        match self {
            Ops::Plain => q.matmul(k_t),
            Ops::Lrp(rules) => rules.matmul_qk(q, k_t),
        }
    }

    /// `attn @ v`.
    pub fn matmul_av<const D: usize>(self, attn: Tensor<D>, v: Tensor<D>) -> Tensor<D> {
        match self {
            Ops::Plain => attn.matmul(v),
            Ops::Lrp(rules) => rules.matmul_av(attn, v),
        }
    }

    /// Neighbourhood attention's `q @ k^T`: each query `[b, n, 1, d]` against its own keys
    /// `[b, n, k*k, d]`, giving `[b, n, 1, k*k]`. Plainly a broadcast product and a sum (one
    /// tiny matmul per query is far slower on CPU, forward and backward); the rules take the
    /// matmul.
    pub fn neighbour_scores(self, q: Tensor<4>, k: Tensor<4>) -> Tensor<4> {
        match self {
            Ops::Plain => {
                let [b, n, kk, _] = k.dims();
                (q * k).sum_dim(3).reshape([b, n, 1, kk])
            }
            Ops::Lrp(_) => self.matmul_qk(q, k.swap_dims(2, 3)),
        }
    }

    /// Neighbourhood attention's `p @ v`: probabilities `[b, n, 1, k*k]` times each query's
    /// values `[b, n, k*k, d]`, giving `[b, n, 1, d]` (as [`Ops::neighbour_scores`]).
    pub fn neighbour_values(self, p: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
        match self {
            Ops::Plain => {
                let [b, n, kk, _] = v.dims();
                (p.reshape([b, n, kk, 1]) * v).sum_dim(2)
            }
            Ops::Lrp(_) => self.matmul_av(p, v),
        }
    }
}

/// The plain forward: every tensor passes unchanged.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHook;

impl SiteHook for NoHook {
    fn active(&self) -> bool {
        false
    }

    fn apply(&self, _site: &SiteId, _slot: Slot, x: Tensor<2>) -> Tensor<2> {
        x
    }
}

/// Passes a tensor of any rank through `hook` as `[rows, last_dim]`.
pub fn hook_nd<const D: usize>(
    hook: &dyn SiteHook,
    site: &SiteId,
    slot: Slot,
    x: Tensor<D>,
) -> Tensor<D> {
    if !hook.active() {
        return x;
    }
    let dims = x.dims();
    let last = dims[D - 1];
    let rows = dims.iter().product::<usize>() / last.max(1);
    hook.apply(site, slot, x.reshape([rows, last]))
        .reshape(dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};
    use mixq_lrp::Preset;

    fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// LRP's rules rewrite gradients only: every operation's forward value under either preset
    /// is the plain one (neighbourhood attention's broadcast form against the rules' matmul).
    #[test]
    fn the_rules_keep_every_operations_forward_value() {
        let device = Device::flex();
        let r =
            |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (x, q, k, p) = (
            r([2, 3, 5, 8]),
            r([2, 6, 1, 4]),
            r([2, 6, 9, 4]),
            r([2, 6, 1, 9]),
        );
        let w = Tensor::<2>::random([8, 7], Distribution::Normal(0.0, 1.0), &device);
        let cw = r([4, 3, 3, 3]);
        let v = |n: usize, mean: f64| {
            Tensor::<1>::random([n], Distribution::Normal(mean, 0.5), &device)
        };
        let (b7, b4, g8, b8) = (v(7, 0.0), v(4, 0.0), v(8, 1.0), v(8, 0.0));
        let site = SiteId::new("conv");
        let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        for preset in [Preset::Attnlrp, Preset::Chefer] {
            let rules = Rules::new(preset);
            let (plain, lrp) = (Ops::Plain, Ops::Lrp(&rules));
            let diffs = [
                max_diff(
                    plain.linear(x.clone(), w.clone(), Some(b7.clone())),
                    lrp.linear(x.clone(), w.clone(), Some(b7.clone())),
                ),
                max_diff(
                    plain.conv2d(
                        &site,
                        x.clone().narrow(3, 0, 5),
                        cw.clone(),
                        Some(b4.clone()),
                        options.clone(),
                    ),
                    lrp.conv2d(
                        &site,
                        x.clone().narrow(3, 0, 5),
                        cw.clone(),
                        Some(b4.clone()),
                        options.clone(),
                    ),
                ),
                max_diff(
                    plain.layer_norm(x.clone(), g8.clone(), b8.clone(), 1e-6),
                    lrp.layer_norm(x.clone(), g8.clone(), b8.clone(), 1e-6),
                ),
                max_diff(plain.gelu(x.clone()), lrp.gelu(x.clone())),
                max_diff(plain.softmax(x.clone(), 3), lrp.softmax(x.clone(), 3)),
                max_diff(
                    plain.matmul_qk(x.clone(), x.clone().swap_dims(2, 3)),
                    lrp.matmul_qk(x.clone(), x.clone().swap_dims(2, 3)),
                ),
                max_diff(
                    plain.neighbour_scores(q.clone(), k.clone()),
                    lrp.neighbour_scores(q.clone(), k.clone()),
                ),
                max_diff(
                    plain.neighbour_values(p.clone(), k.clone()),
                    lrp.neighbour_values(p.clone(), k.clone()),
                ),
            ];
            for (i, d) in diffs.iter().enumerate() {
                assert!(*d < 1e-4, "{preset:?}: operation {i} differs by {d}");
            }
        }
    }
}
