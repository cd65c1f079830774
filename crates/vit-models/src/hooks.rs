//! Site hooks: how quantizers, calibration observers and LRP reach into a model.
//!
//! Every site passes its tensors through a [`SiteHook`] as a 2-D view (`[rows, last_dim]`),
//! so the forward code path is one and the same for the plain model (`NoHook`), a calibration
//! pass (a hook that records), and fake quantization (a hook that quantizes). Keeping the
//! quantizer state outside the burn modules lets a forward with `&self` observe, and gives one
//! serialisable object per run.

use burn::tensor::Tensor;
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

    /// LRP mode: when `Some`, every layer computes its output through these rules (same values,
    /// gradients rewritten so that gradient × input is relevance).
    fn rules(&self) -> Option<&Rules> {
        None
    }
}

/// Softmax over `dim`, by the LRP rule when the hook asks for one.
pub fn softmax<const D: usize>(x: Tensor<D>, dim: usize, hook: &dyn SiteHook) -> Tensor<D> {
    match hook.rules() {
        Some(rules) => rules.softmax(x, dim),
        None => burn::tensor::activation::softmax(x, dim),
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
