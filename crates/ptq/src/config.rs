//! The options of a post-training quantization run.

use std::str::FromStr;

use mixq_core::{BitPlan, BitWidth, Error, Result, SiteBits, SiteInfo, SiteKind};
use mixq_quant_kernels::RangeMethod;
use serde::{Deserialize, Serialize};

/// How the inputs of post-LayerNorm sites (qkv, fc1, Swin's reduction) are quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PostLnMode {
    /// One per-tensor range, like every other activation.
    Uniform,
    /// RepQ-ViT: per-channel min/max ranges, folded into the LayerNorm and the next linear so
    /// that one per-tensor quantizer reproduces per-channel quantization.
    ChannelReparam,
    /// Ours (the LRP-QViT idea): per-channel ranges from clipped quantiles, searched per channel
    /// by squared error, so a few outlier tokens cannot stretch a channel; then folded the same
    /// way. The reparameterization target is the median channel (see `reparam`).
    ClippedChannel,
}

/// How the attention probabilities (the left operand of `matmul_av`) are quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SoftmaxMode {
    /// The uniform quantizer, like every other activation.
    Uniform,
    /// Levels at powers of 2.
    Log2,
    /// Levels at powers of sqrt 2 (finer near 1, where attention mass sits).
    #[serde(rename = "logsqrt2")]
    LogSqrt2,
}

macro_rules! kebab_from_str {
    ($t:ty, $what:literal, [$($name:literal => $v:path),*]) => {
        impl FromStr for $t {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($name => Ok($v),)*
                    other => Err(Error::invalid($what, other, concat!("expected one of: ", $($name, " "),*))),
                }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let name = match self { $($v => $name,)* };
                f.write_str(name)
            }
        }
    };
}

kebab_from_str!(PostLnMode, "post-ln", [
    "uniform" => PostLnMode::Uniform,
    "channel-reparam" => PostLnMode::ChannelReparam,
    "clipped-channel" => PostLnMode::ClippedChannel
]);
kebab_from_str!(SoftmaxMode, "softmax", [
    "uniform" => SoftmaxMode::Uniform,
    "log2" => SoftmaxMode::Log2,
    "logsqrt2" => SoftmaxMode::LogSqrt2
]);

/// Everything a PTQ run needs besides the bit plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PtqConfig {
    /// How post-LayerNorm inputs are quantized.
    pub post_ln: PostLnMode,
    /// How attention probabilities are quantized.
    pub softmax: SoftmaxMode,
    /// Range estimation of weights (per output channel).
    pub weight_method: RangeMethod,
    /// Range estimation of activations (per tensor).
    pub act_method: RangeMethod,
}

impl Default for PtqConfig {
    fn default() -> Self {
        PtqConfig {
            post_ln: PostLnMode::ClippedChannel,
            softmax: SoftmaxMode::LogSqrt2,
            weight_method: RangeMethod::repq(),
            act_method: RangeMethod::repq(),
        }
    }
}

/// The same bits at every site, with the image input (the first site's input: the patch
/// embedding, WTPose's stem convolution, or the first linear layer of a user's model) at
/// `image_bits`, as [`crate::mixed::fix_image_bits`] keeps it in allocated plans. Matmul sites
/// use `a_bits` for both operands; their `w_bits` is set equal and ignored.
pub fn uniform_plan(sites: &[SiteInfo], w_bits: u8, a_bits: u8, image_bits: u8) -> Result<BitPlan> {
    let (w, a, img) = (
        BitWidth::new(w_bits)?,
        BitWidth::new(a_bits)?,
        BitWidth::new(image_bits)?,
    );
    let mut plan = BitPlan::default();
    for (i, s) in sites.iter().enumerate() {
        let bits = match s.kind {
            // The first site reads the image (a patch embedding, WTPose's stem, a user model's
            // first layer); later ones read activations.
            SiteKind::Conv | SiteKind::Linear if i == 0 => SiteBits {
                w_bits: w,
                a_bits: img,
            },
            SiteKind::Conv | SiteKind::Linear => SiteBits {
                w_bits: w,
                a_bits: a,
            },
            SiteKind::MatMulQk | SiteKind::MatMulAv => SiteBits {
                w_bits: a,
                a_bits: a,
            },
        };
        plan.sites.insert(s.id.clone(), bits);
    }
    plan.meta.insert("w_bits".into(), w_bits.to_string());
    plan.meta.insert("a_bits".into(), a_bits.to_string());
    plan.meta
        .insert("image_bits".into(), image_bits.to_string());
    Ok(plan)
}
