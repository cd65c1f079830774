//! Logarithmic quantization of non-negative values (post-softmax attention probabilities).
//!
//! Attention probabilities are concentrated near 0 with a few large values; power-of-two (or
//! power-of-√2) levels spend the codes where the mass is. The rule follows RepQ-ViT's
//! `LogSqrt2Quantizer`: with `y = x / s`, `d` = 1 (log2) or 2 (log√2) and `N = 2^b`,
//!
//! ```text
//! q     = round(-d * log2(y))
//! x_hat = 0                              if q >= N   (below the last level, and x <= 0)
//! x_hat = s * 2^(-clamp(q, 0, N-1) / d)  otherwise
//! ```
//!
//! `-d * log2(y)` is never a half-integer for `y > 0` (that would make `y` an irrational power
//! of two), so rounding has no ties and `q` is exactly "the number of thresholds
//! `τ_k = 2^(-(k + 1/2) / d)`, `k = 0..N`, lying above `y`". Both the host reference and the
//! tensor path implement that exact rule with the thresholds rounded up to `f32` (so `y < T_k`
//! iff `y < τ_k`) and the levels `2^(-k/d)` rounded to nearest `f32`; they agree bit for bit.
//! The tensor path estimates `q` with `ln` and then corrects it by one comparison against the
//! neighbouring thresholds, so an imprecise `ln` cannot change the result.
//!
//! Negative inputs are treated like 0. NaN inputs are not supported.

use std::f64::consts::LN_2;

use burn::tensor::{Int, Tensor, TensorData};
use mixq_core::{BitWidth, Error, Result};
use serde::{Deserialize, Serialize};

use crate::uniform::MIN_SCALE;

/// Spacing of the log levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LogBase {
    /// Levels `s * 2^-k`: one level per octave.
    Log2,
    /// Levels `s * 2^(-k/2)`: two levels per octave (RepQ-ViT), half the relative error of
    /// `Log2` near the top where attention mass matters.
    LogSqrt2,
}

impl LogBase {
    /// Levels per octave (`d` above).
    pub fn levels_per_octave(self) -> u32 {
        match self {
            LogBase::Log2 => 1,
            LogBase::LogSqrt2 => 2,
        }
    }
}

/// A log quantizer: `2^b` non-zero levels `s * 2^(-k/d)`, `k = 0..2^b`, plus exact 0.
///
/// Deserializing validates the scale like [`LogQuantizer::new`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "LogParts", into = "LogParts")]
pub struct LogQuantizer {
    bits: BitWidth,
    base: LogBase,
    scale: f32,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
struct LogParts {
    bits: BitWidth,
    base: LogBase,
    scale: f32,
}

impl TryFrom<LogParts> for LogQuantizer {
    type Error = Error;
    fn try_from(p: LogParts) -> Result<Self> {
        LogQuantizer::new(p.bits, p.base, p.scale)
    }
}

impl From<LogQuantizer> for LogParts {
    fn from(q: LogQuantizer) -> Self {
        LogParts {
            bits: q.bits,
            base: q.base,
            scale: q.scale,
        }
    }
}

impl LogQuantizer {
    /// A quantizer whose top level is `scale` (finite and positive).
    pub fn new(bits: BitWidth, base: LogBase, scale: f32) -> Result<Self> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::invalid(
                "scale",
                scale,
                "must be finite and positive",
            ));
        }
        Ok(LogQuantizer { bits, base, scale })
    }

    /// A quantizer whose top level is the observed maximum `max` (RepQ-ViT's starting point;
    /// see [`crate::calibrate_log`] for its quantile search). A maximum `<= 0` (an all-zero
    /// input) gives the step floor [`MIN_SCALE`], so everything maps to 0.
    pub fn from_max(bits: BitWidth, base: LogBase, max: f32) -> Result<Self> {
        if !max.is_finite() {
            return Err(Error::invalid("max", max, "must be finite"));
        }
        Self::new(bits, base, max.max(MIN_SCALE))
    }

    /// Bits per code.
    pub fn bits(&self) -> BitWidth {
        self.bits
    }

    /// The base of the levels (2 or sqrt 2).
    pub fn base(&self) -> LogBase {
        self.base
    }

    /// The top level.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Number of non-zero levels, `2^b`.
    pub fn num_levels(&self) -> usize {
        1 << self.bits.get()
    }

    /// All representable non-zero values, largest first: `s * 2^(-k/d)` for `k = 0..2^b`
    /// (each the `f32` product of the rounded unit level and `s`). At 8-bit `Log2` the deepest
    /// levels underflow `f32` (`2^-k` for `k > 149`) and come out as 0.
    pub fn levels(&self) -> Vec<f32> {
        let unit = unit_levels(self.num_levels(), self.base);
        unit[..self.num_levels()]
            .iter()
            .map(|l| l * self.scale)
            .collect()
    }

    /// Level index of each value: `0..2^b` for the level `s * 2^(-k/d)`, `2^b` for 0.
    pub fn quantize_host(&self, x: &[f32]) -> Vec<u32> {
        let thresholds = unit_thresholds(self.num_levels(), self.base);
        x.iter()
            .map(|&v| {
                let y = v / self.scale;
                // Thresholds descend, so those above `y` form a prefix.
                thresholds.partition_point(|&t| t > y) as u32
            })
            .collect()
    }

    /// Values of level indices from [`LogQuantizer::quantize_host`].
    ///
    /// # Panics
    /// On an index above `2^b`.
    pub fn dequantize_host(&self, q: &[u32]) -> Vec<f32> {
        let unit = unit_levels(self.num_levels(), self.base);
        q.iter().map(|&k| unit[k as usize] * self.scale).collect()
    }

    /// The host reference of [`LogQuantizer::fake_quant`], bit-identical to it.
    pub fn fake_quant_host(&self, x: &[f32]) -> Vec<f32> {
        self.dequantize_host(&self.quantize_host(x))
    }

    /// Quantizes and dequantizes `x` on its own device, keeping its shape. Never NaN for
    /// `x >= 0` (0 maps to exactly 0).
    pub fn fake_quant<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if crate::takes_host_pass(&x) {
            return crate::host_pass(x, |v| self.fake_quant_host(v));
        }
        let dims = x.dims();
        let numel: usize = dims.iter().product();
        let device = x.device();
        let dtype = x.dtype();
        let n = self.num_levels();
        let d = f64::from(self.base.levels_per_octave());
        let vec1 = |v: Vec<f32>| {
            let len = v.len();
            Tensor::<1>::from_data(TensorData::new(v, [len]), (&device, dtype))
        };

        let scale = vec1(vec![self.scale]);
        // Values above 2 land on level 0 and values <= 0 on "zero" whatever their size, so the
        // clamp only removes negatives (NaN from ln) and infinities; ln(0) = -inf is fine: it
        // becomes +inf and clamps to N.
        let y = x.reshape([numel]).div(scale.clone()).clamp(0.0, 2.0);
        let q0 = y
            .clone()
            .log()
            .mul_scalar(-d / LN_2)
            .round()
            .clamp(0.0, n as f64)
            .int();
        // padded[j] = T_{j-1}, with T_{-1} above every y and T_N below every y, so that
        // level q holds iff padded[q + 1] <= y < padded[q].
        let mut padded = Vec::with_capacity(n + 2);
        padded.push(4.0);
        padded.extend(unit_thresholds(n, self.base));
        padded.push(-1.0);
        let padded = vec1(padded);
        let above: Tensor<1> = padded.clone().select(0, q0.clone());
        let below: Tensor<1> = padded.select(0, q0.clone().add_scalar(1));
        let q: Tensor<1, Int> = q0
            .sub(y.clone().greater_equal(above).int())
            .add(y.lower(below).int());
        vec1(unit_levels(n, self.base))
            .select(0, q)
            .mul(scale)
            .reshape(dims)
    }
}

/// `2^(-k/d)` for `k = 0..n` rounded to nearest `f32`, then a trailing 0 for "below the last
/// level" (length `n + 1`).
pub(crate) fn unit_levels(n: usize, base: LogBase) -> Vec<f32> {
    let d = f64::from(base.levels_per_octave());
    (0..n)
        .map(|k| (-(k as f64) / d).exp2() as f32)
        .chain(std::iter::once(0.0))
        .collect()
}

/// Rounding thresholds `τ_k = 2^(-(k + 1/2)/d)`, `k = 0..n`, each rounded up to the next `f32`
/// so that `y < T_k` iff `y < τ_k` for every `f32` `y`. Non-increasing.
pub(crate) fn unit_thresholds(n: usize, base: LogBase) -> Vec<f32> {
    let d = f64::from(base.levels_per_octave());
    (0..n)
        .map(|k| {
            let tau = (-(k as f64 + 0.5) / d).exp2();
            let t = tau as f32;
            if f64::from(t) < tau { t.next_up() } else { t }
        })
        .collect()
}
