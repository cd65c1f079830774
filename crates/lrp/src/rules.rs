//! LRP rules in gradient × input form.
//!
//! Each function returns a tensor whose *value* is the layer's ordinary output and whose
//! *gradient* is rewritten with `detach`, so that after one autodiff backward pass,
//! `x * grad(x)` at any tensor equals the relevance the rule assigns to it (AttnLRP's efficient
//! formulation). Relevance at a tensor `t` is therefore `t * dF/dt`, where `F` is the target
//! logit; the rules only change what `dF/dt` is.
//!
//! Conservation (sum of relevance at a layer's input vs its output), per rule, exactly:
//! - [`epsilon`]: `sum R_in = sum_j R_j (z_j - b_j) / (z_j + eps sign z_j)` — the bias and
//!   epsilon leak, nothing else;
//! - [`alpha1_beta0`], [`z_beta`]: `sum R_in = sum_j R_j` wherever the positive (resp. bounded)
//!   pre-activation is non-zero; biases do not leak;
//! - [`identity`] (GELU, and LayerNorm/softmax in the `chefer` preset): elementwise exact;
//! - [`layer_norm`] with the std detached: `sum R_in = sum R_out - sum beta * g` (exact when
//!   beta = 0);
//! - [`uniform`] on a bilinear product (attention matmuls): exact, split equally between the
//!   operands;
//! - softmax by its plain gradient (AttnLRP) is *not* conservative: its Taylor bias absorbs
//!   `sum_i s_i g_i - sum_i x_i s_i (g_i - sum_k s_k g_k)`.
//!
//! Tensors that do not use autodiff are treated as constants by burn, so these rules can be
//! applied to a plain model: only the input (and the probes) need autodiff.

use burn::tensor::Tensor;

/// Below this magnitude a divisor counts as zero and its relevance is dropped (as Chefer's
/// `safe_divide` does) instead of exploding.
const TINY: f64 = 1e-12;

/// The value of `z` with the gradient flowing into `z` multiplied by `scale` (a constant).
///
/// `z.detach() + (z - z.detach()) * scale`: the second term is exactly zero in value, so the
/// forward result is bit-identical to `z`.
pub fn scale_gradient<const D: usize>(z: Tensor<D>, scale: Tensor<D>) -> Tensor<D> {
    let fixed = z.clone().detach();
    fixed.clone() + (z - fixed) * scale.detach()
}

/// [`scale_gradient`] with one scalar factor.
pub fn scale_gradient_by<const D: usize>(z: Tensor<D>, factor: f64) -> Tensor<D> {
    let fixed = z.clone().detach();
    fixed.clone() + (z - fixed).mul_scalar(factor)
}

/// `numerator / denominator` where `|denominator| > TINY`, else 0.
pub fn safe_divide<const D: usize>(numerator: Tensor<D>, denominator: Tensor<D>) -> Tensor<D> {
    let small = denominator.clone().abs().lower_equal_elem(TINY);
    numerator
        .div(denominator.mask_fill(small.clone(), 1.0))
        .mask_fill(small, 0.0)
}

/// `z + eps * sign(z)` with `sign(0) = +1`: the epsilon rule's stabiliser.
pub fn stabilize<const D: usize>(z: Tensor<D>, eps: f64) -> Tensor<D> {
    let sign = z
        .clone()
        .greater_equal_elem(0.0)
        .float()
        .mul_scalar(2.0)
        .sub_scalar(1.0);
    z + sign.mul_scalar(eps)
}

/// Epsilon rule for any affine map `z = op(x, W) + b` (linear or conv), applied to its output:
/// `R_i = sum_j x_i w_ij R_j / (z_j + eps sign z_j)`.
///
/// The gradient of an affine map already routes `g_j` through `w_ij`; the rule only scales it by
/// `z_j / (z_j + eps sign z_j)`. With `eps = 0` this is plain gradient × input (the z-rule).
pub fn epsilon<const D: usize>(z: Tensor<D>, eps: f64) -> Tensor<D> {
    if eps == 0.0 {
        return z;
    }
    let fixed = z.clone().detach();
    let scale = fixed.clone().div(stabilize(fixed, eps));
    scale_gradient(z, scale)
}

/// Alpha-beta rule with alpha = 1, beta = 0 (Chefer et al.): only positive contributions
/// `x_i w_ij > 0` carry relevance, `R_i = sum_j (x_i w_ij)^+ / sum_i' (x_i' w_i'j)^+ R_j`.
///
/// `op` is the layer's bias-free map (`x @ W`, a convolution...) and `z` its real output
/// (bias included); the result has `z`'s value. Inputs of either sign are handled as Chefer's
/// code does: `x+ W+ + x- W-` are the positive contributions.
pub fn alpha1_beta0<const DI: usize, const DW: usize, const DO: usize>(
    x: Tensor<DI>,
    weight: Tensor<DW>,
    z: Tensor<DO>,
    op: impl Fn(Tensor<DI>, Tensor<DW>) -> Tensor<DO>,
) -> Tensor<DO> {
    let weight = weight.detach();
    let positive = op(x.clone().clamp_min(0.0), weight.clone().clamp_min(0.0))
        + op(x.clamp_max(0.0), weight.clamp_max(0.0));
    redistribute(z, positive)
}

/// The z^B rule for the pixel layer: relevance bounded by the input range `[low, high]`
/// (the normalised pixel range), `R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / z^B_j R_j`.
///
/// `low` and `high` are tensors of `x`'s shape. Give them autodiff and `require_grad` to read
/// the pixel relevance as `x g_x + low g_low + high g_high` (see [`RelevanceTap`](crate::RelevanceTap) for
/// the read-out); the sum over pixels then equals the relevance at the output.
pub fn z_beta<const DI: usize, const DW: usize, const DO: usize>(
    x: Tensor<DI>,
    low: Tensor<DI>,
    high: Tensor<DI>,
    weight: Tensor<DW>,
    z: Tensor<DO>,
    op: impl Fn(Tensor<DI>, Tensor<DW>) -> Tensor<DO>,
) -> Tensor<DO> {
    let weight = weight.detach();
    let bounded = op(x, weight.clone())
        - op(low, weight.clone().clamp_min(0.0))
        - op(high, weight.clamp_max(0.0));
    redistribute(z, bounded)
}

/// Value of `z`; gradient into `share` scaled by `z / share`, so that the relevance of `z`
/// (`z * g`) is handed out in proportion to the terms of `share`.
fn redistribute<const D: usize>(z: Tensor<D>, share: Tensor<D>) -> Tensor<D> {
    let z = z.detach();
    let ratio = safe_divide(z.clone(), share.clone().detach());
    let fixed = share.clone().detach();
    z + (share - fixed) * ratio
}

/// Identity rule for an elementwise map `y = f(x)`: relevance passes unchanged,
/// `R_in = R_out` elementwise (GELU in both presets; LayerNorm and softmax in `chefer`).
/// Implemented as `x * (f(x) / x).detach()`, value exactly `y`.
pub fn identity<const D: usize>(x: Tensor<D>, y: Tensor<D>) -> Tensor<D> {
    let ratio = safe_divide(y.clone().detach(), x.clone().detach());
    let fixed = x.clone().detach();
    y.detach() + (x - fixed) * ratio
}

/// LayerNorm over the last axis with the standard deviation detached (AttnLRP): the map from
/// `x` to the output becomes linear (centering, then a constant scale), so gradient × input
/// conserves relevance up to what `beta` absorbs.
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f64,
) -> Tensor<D> {
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    let std = var.add_scalar(eps).sqrt().detach();
    let shape = {
        let mut s = [1usize; D];
        s[D - 1] = gamma.dims()[0];
        s
    };
    (x - mean) / std * gamma.reshape(shape) + beta.reshape(shape)
}

/// Uniform rule for a product of `n` operands (the attention matmuls, `n = 2`): each operand
/// receives `1/n` of the output relevance, since gradient × input of a multilinear product
/// hands the full relevance to every operand.
pub fn uniform<const D: usize>(product: Tensor<D>, operands: usize) -> Tensor<D> {
    scale_gradient_by(product, 1.0 / operands as f64)
}
