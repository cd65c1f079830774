//! Folding per-channel activation ranges of post-LayerNorm sites into the model
//! (RepQ-ViT's scale reparameterization), so one per-tensor quantizer gives per-channel
//! quantization.
//!
//! Per channel `c` of the LayerNorm output `X`, the per-channel quantizer has scale `s_c` and
//! zero point `z_c`. With a target `(s, z)` and `r_c = s_c / s`, define
//! `X'_c = X_c / r_c + s (z_c - z)`. Then `round(X'_c / s) + z = round(X_c / s_c) + z_c`: the
//! per-tensor quantizer `(s, z)` on `X'` yields exactly the per-channel codes of `X`. `X'` is
//! what the LayerNorm produces with `gamma' = gamma / r` and `beta' = beta / r + s (z_c - z)`,
//! and the next linear gives the same output with rows `W'_c = r_c W_c` and bias
//! `b' = b - sum_c W'_c s (z_c - z)`. In full precision the model is unchanged.
//!
//! The target: RepQ-ViT takes the mean of the scales and zero points. In exact arithmetic the
//! choice does not change a single code — every channel keeps its own effective step — and it
//! scales all weight rows by one common factor, to which per-output-channel weight quantization
//! is invariant. What it changes is float rounding and the size of the bias correction
//! `s (z_c - z)`. `clipped-channel` takes the median channel, so the typical channel keeps
//! `r_c ≈ 1` and a small correction, and a few outlier channels cannot drag the target.

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use mixq_core::{BitWidth, Result};
use mixq_quant_kernels::{Granularity, RangeMethod, UniformQuantizer, calibrate_uniform};
use mixq_vit_models::layers::{LayerNorm, Linear};

/// How the per-channel target is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelTarget {
    /// The mean channel (RepQ-ViT).
    Mean,
    /// The median channel (the clipped-channel variant).
    Median,
}

/// The per-channel quantizer of one post-LN input and its per-tensor equivalent after folding.
pub struct ChannelFold {
    /// The per-channel quantizer the fold reproduces.
    pub per_channel: UniformQuantizer,
    /// `r_c`.
    pub ratio: Vec<f32>,
    /// `s (z_c - z)`.
    pub shift: Vec<f32>,
    /// The per-tensor quantizer of the folded activation `X'`.
    pub per_tensor: UniformQuantizer,
}

fn center(v: &[f32], target: ChannelTarget) -> f32 {
    match target {
        ChannelTarget::Mean => v.iter().map(|&x| x as f64).sum::<f64>() as f32 / v.len() as f32,
        ChannelTarget::Median => {
            let mut s = v.to_vec();
            s.sort_by(f32::total_cmp);
            let n = s.len();
            if n % 2 == 1 {
                s[n / 2]
            } else {
                0.5 * (s[n / 2 - 1] + s[n / 2])
            }
        }
    }
}

/// Per-channel ranges of `x` (`[rows, channels]` host values) and the fold that makes them one
/// per-tensor quantizer.
pub fn channel_fold(
    x: &[f32],
    channels: usize,
    bits: BitWidth,
    method: &RangeMethod,
    target: ChannelTarget,
) -> Result<ChannelFold> {
    let rows = x.len() / channels;
    let per_channel = calibrate_uniform(
        x,
        &[rows, channels],
        Granularity::PerChannel { axis: 1 },
        method,
        bits,
        false,
    )?;
    let s = per_channel.scales().to_vec();
    let z = per_channel.zero_points().to_vec();
    let s_t = center(&s, target);
    let z_t = center(&z, target).round_ties_even();
    let ratio: Vec<f32> = s.iter().map(|&sc| sc / s_t).collect();
    let shift: Vec<f32> = z.iter().map(|&zc| s_t * (zc - z_t)).collect();
    let per_tensor =
        UniformQuantizer::from_parts(bits, false, Granularity::PerTensor, vec![s_t], vec![z_t])?;
    Ok(ChannelFold {
        per_channel,
        ratio,
        shift,
        per_tensor,
    })
}

fn vector(v: &[f32], like: &Tensor<1>) -> Tensor<1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &like.device())
}

/// Rewrites `norm` and `linear` so the norm outputs `X'` and the linear's output is unchanged.
pub fn apply_fold(norm: &mut LayerNorm, linear: &mut Linear, fold: &ChannelFold) {
    let gamma = norm.gamma.val();
    let r = vector(&fold.ratio, &gamma);
    let shift = vector(&fold.shift, &gamma);
    let new_gamma = gamma.clone().div(r.clone());
    let new_beta = norm.beta.val().div(r.clone()) + shift.clone();
    norm.gamma = Param::initialized(norm.gamma.id, new_gamma);
    norm.beta = Param::initialized(norm.beta.id, new_beta);

    // W is [in, out]: row c scales by r_c.
    let w = linear.weight.val();
    let new_w = w.mul(r.unsqueeze_dim::<2>(1));
    // b' = b - shift @ W'.
    let correction = shift
        .unsqueeze_dim::<2>(0)
        .matmul(new_w.clone())
        .squeeze_dim::<1>(0);
    let new_b = match &linear.bias {
        Some(b) => b.val() - correction,
        None => correction.neg(),
    };
    linear.weight = Param::initialized(linear.weight.id, new_w);
    linear.bias = Some(match linear.bias.take() {
        Some(b) => Param::initialized(b.id, new_b),
        None => Param::from_tensor(new_b),
    });
}
