//! Uniform (affine) quantization: evenly spaced levels, one step size per tensor, channel or
//! group.
//!
//! The forward rule, on the host and on any burn device alike, is
//!
//! ```text
//! q     = clamp(round(x / s) + z, qmin, qmax)
//! x_hat = (q - z) * s
//! ```
//!
//! evaluated in `f32` in exactly this order, with `round` = round half to even (burn's
//! `Tensor::round` on every backend, and [`f32::round_ties_even`] on the host). The host
//! reference and the tensor path therefore agree bit for bit on IEEE-754 backends.

use burn::tensor::{DType, Device, Tensor, TensorData};
use mixq_core::{BitWidth, Error, Result};
use serde::{Deserialize, Serialize};

/// The smallest step size a quantizer will use.
///
/// An all-zero channel has a zero-width range; a zero step would turn `x / s` into NaN. Any
/// range narrower than `MIN_SCALE` times the level count is numerical noise for `f32` weights and
/// activations, so flooring the step there changes nothing that matters while keeping every
/// output finite (zeros stay exact zeros).
pub const MIN_SCALE: f32 = 1e-12;

/// Which elements share one step size and zero point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Granularity {
    /// One step for the whole tensor (activations).
    PerTensor,
    /// One step per index of `axis` (e.g. `axis: 0` for the output rows of a `[out, in]`
    /// weight, or the last axis for the channels of `[batch, tokens, channels]` activations).
    PerChannel {
        /// The axis whose every index has its own step.
        axis: usize,
    },
    /// One step per run of `group_size` consecutive elements of the **last** dimension, which
    /// `group_size` must divide. Groups are numbered in row-major order, so a `[rows, cols]`
    /// tensor has `rows * cols / group_size` groups and group `g` covers flat indices
    /// `g * group_size .. (g + 1) * group_size`. There is no axis: grouping along the
    /// reduction (last) dimension is what integer matmul kernels use.
    PerGroup {
        /// Consecutive elements of the last dimension per group.
        group_size: usize,
    },
}

/// How a tensor of a given shape maps onto the quantizer's parameters: flat index `i` uses
/// parameter `(i / inner) % params`, i.e. the tensor is viewed as `[outer, params, inner]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub outer: usize,
    pub params: usize,
    pub inner: usize,
}

impl Layout {
    pub fn numel(&self) -> usize {
        self.outer * self.params * self.inner
    }

    pub fn param_of(&self, flat: usize) -> usize {
        (flat / self.inner) % self.params
    }
}

impl Granularity {
    /// How many step sizes a tensor of `shape` needs, or an error when the granularity does not
    /// fit the shape (axis out of range, group size not dividing the last dimension, empty).
    pub fn num_params(&self, shape: &[usize]) -> Result<usize> {
        Ok(self.layout(shape)?.params)
    }

    pub(crate) fn layout(&self, shape: &[usize]) -> Result<Layout> {
        let numel: usize = shape.iter().product();
        if numel == 0 {
            return Err(Error::invalid(
                "shape",
                format!("{shape:?}"),
                "tensor has no elements",
            ));
        }
        match *self {
            Granularity::PerTensor => Ok(Layout {
                outer: 1,
                params: 1,
                inner: numel,
            }),
            Granularity::PerChannel { axis } => {
                if axis >= shape.len() {
                    return Err(Error::invalid(
                        "axis",
                        axis,
                        format!("out of range for a tensor of shape {shape:?}"),
                    ));
                }
                Ok(Layout {
                    outer: shape[..axis].iter().product(),
                    params: shape[axis],
                    inner: shape[axis + 1..].iter().product(),
                })
            }
            Granularity::PerGroup { group_size } => {
                let last = shape.last().copied().unwrap_or(0);
                if group_size == 0 || last == 0 || last % group_size != 0 {
                    return Err(Error::invalid(
                        "group_size",
                        group_size,
                        format!("must divide the last dimension of shape {shape:?}"),
                    ));
                }
                Ok(Layout {
                    outer: 1,
                    params: numel / group_size,
                    inner: group_size,
                })
            }
        }
    }
}

/// Integer code range for `bits`: `[0, 2^b - 1]` asymmetric, `[-(2^(b-1) - 1), 2^(b-1) - 1]`
/// symmetric.
pub(crate) fn code_range(bits: BitWidth, symmetric: bool) -> (i32, i32) {
    let b = u32::from(bits.get());
    if symmetric {
        let m = (1i32 << (b - 1)) - 1;
        (-m, m)
    } else {
        (0, (1i32 << b) - 1)
    }
}

/// Step size and zero point of one range, after widening it to include 0.
pub(crate) fn affine_params(
    bits: BitWidth,
    symmetric: bool,
    lo: f32,
    hi: f32,
) -> Result<(f32, f32)> {
    if !lo.is_finite() || !hi.is_finite() {
        return Err(Error::invalid(
            "range",
            format!("[{lo}, {hi}]"),
            "bounds must be finite",
        ));
    }
    if lo > hi {
        return Err(Error::invalid(
            "range",
            format!("[{lo}, {hi}]"),
            "lower bound above upper bound",
        ));
    }
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let (qmin, qmax) = code_range(bits, symmetric);
    if symmetric {
        let s = (lo.abs().max(hi) / qmax as f32).max(MIN_SCALE);
        Ok((s, 0.0))
    } else {
        let s = ((hi - lo) / qmax as f32).max(MIN_SCALE);
        if !s.is_finite() {
            return Err(Error::invalid(
                "range",
                format!("[{lo}, {hi}]"),
                "width overflows f32",
            ));
        }
        let z = (-lo / s).round_ties_even().clamp(qmin as f32, qmax as f32);
        Ok((s, z))
    }
}

/// `y.round_ties_even()` wherever it matters for a code, without its libm call (x86-64's
/// baseline has no SSE4.1 `roundss`, so `round_ties_even` is a call per value and does not
/// vectorise): adding and subtracting `1.5 · 2^23` rounds half to even in the default rounding
/// mode for `|y| ≤ 2^22`; larger values are first clamped to `±2^22`, which clamps to the same
/// end code as the exact rounding would (codes are within `±2^9`). NaN stays NaN.
#[inline]
pub fn round_ties_even_for_codes(y: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    const LIMIT: f32 = 4_194_304.0;
    (y.clamp(-LIMIT, LIMIT) + MAGIC) - MAGIC
}

/// The integer code of one value, as an `f32` (exact: codes are below 2^24).
#[inline]
pub(crate) fn code(x: f32, s: f32, z: f32, qmin: f32, qmax: f32) -> f32 {
    (round_ties_even_for_codes(x / s) + z).clamp(qmin, qmax)
}

/// Fake-quantizes one value; the scalar twin of [`UniformQuantizer::fake_quant`].
#[inline]
pub(crate) fn fake_quant_scalar(x: f32, s: f32, z: f32, qmin: f32, qmax: f32) -> f32 {
    (code(x, s, z, qmin, qmax) - z) * s
}

/// A calibrated uniform quantizer: bit-width, symmetric or not, granularity, and one step size
/// and zero point per tensor/channel/group.
///
/// * Asymmetric: `s = (hi - lo) / (2^b - 1)`, `z = round(-lo / s)`, codes in `[0, 2^b - 1]`.
/// * Symmetric: `s = max(|lo|, |hi|) / (2^(b-1) - 1)`, `z = 0`, codes in
///   `[-(2^(b-1) - 1), 2^(b-1) - 1]` — the "restricted" range, so that `+m` and `-m` are both
///   representable and the grid is symmetric (a 2-bit symmetric quantizer has levels
///   `{-s, 0, s}`); this is what int8 kernels with a zero-free weight offset expect.
///
/// Ranges are widened to contain 0 first so that 0 (padding, ReLU/GELU zeros) is exactly
/// representable. Steps are floored at [`MIN_SCALE`].
///
/// Deserializing validates the parameters like [`UniformQuantizer::from_parts`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "UniformParts", into = "UniformParts")]
pub struct UniformQuantizer {
    bits: BitWidth,
    symmetric: bool,
    granularity: Granularity,
    scale: Vec<f32>,
    zero_point: Vec<f32>,
}

/// The serialized form; validated on the way in.
#[derive(Clone, Serialize, Deserialize)]
struct UniformParts {
    bits: BitWidth,
    symmetric: bool,
    granularity: Granularity,
    scale: Vec<f32>,
    zero_point: Vec<f32>,
}

impl TryFrom<UniformParts> for UniformQuantizer {
    type Error = Error;
    fn try_from(p: UniformParts) -> Result<Self> {
        UniformQuantizer::from_parts(p.bits, p.symmetric, p.granularity, p.scale, p.zero_point)
    }
}

impl From<UniformQuantizer> for UniformParts {
    fn from(q: UniformQuantizer) -> Self {
        UniformParts {
            bits: q.bits,
            symmetric: q.symmetric,
            granularity: q.granularity,
            scale: q.scale,
            zero_point: q.zero_point,
        }
    }
}

impl UniformQuantizer {
    /// A quantizer from observed ranges, one `lo[i]..=hi[i]` per tensor/channel/group (one pair
    /// for [`Granularity::PerTensor`]). See the type docs for the formulas.
    pub fn from_range(
        bits: BitWidth,
        symmetric: bool,
        granularity: Granularity,
        lo: &[f32],
        hi: &[f32],
    ) -> Result<Self> {
        check_param_count(granularity, lo.len())?;
        if lo.len() != hi.len() {
            return Err(Error::invalid(
                "range",
                format!("{} lower / {} upper bounds", lo.len(), hi.len()),
                "need as many lower as upper bounds",
            ));
        }
        let (scale, zero_point) = lo
            .iter()
            .zip(hi)
            .map(|(&l, &h)| affine_params(bits, symmetric, l, h))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        Ok(UniformQuantizer {
            bits,
            symmetric,
            granularity,
            scale,
            zero_point,
        })
    }

    /// A quantizer from explicit step sizes and zero points (e.g. loaded from a checkpoint).
    /// Steps must be finite and positive; zero points integers within the code range (0 when
    /// symmetric).
    pub fn from_parts(
        bits: BitWidth,
        symmetric: bool,
        granularity: Granularity,
        scale: Vec<f32>,
        zero_point: Vec<f32>,
    ) -> Result<Self> {
        check_param_count(granularity, scale.len())?;
        if scale.len() != zero_point.len() {
            return Err(Error::invalid(
                "zero_point",
                format!("{} values", zero_point.len()),
                format!("need one per step size ({})", scale.len()),
            ));
        }
        if let Some(s) = scale.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::invalid("scale", s, "must be finite and positive"));
        }
        let (qmin, qmax) = code_range(bits, symmetric);
        let zp_ok = |z: f32| {
            if symmetric {
                z == 0.0
            } else {
                z.fract() == 0.0 && z >= qmin as f32 && z <= qmax as f32
            }
        };
        if let Some(z) = zero_point.iter().find(|z| !zp_ok(**z)) {
            return Err(Error::invalid(
                "zero_point",
                z,
                format!("must be an integer in [{qmin}, {qmax}] (0 when symmetric)"),
            ));
        }
        Ok(UniformQuantizer {
            bits,
            symmetric,
            granularity,
            scale,
            zero_point,
        })
    }

    /// Bits per code.
    pub fn bits(&self) -> BitWidth {
        self.bits
    }

    /// Whether the zero point is fixed at the middle of the range.
    pub fn is_symmetric(&self) -> bool {
        self.symmetric
    }

    /// Per tensor, per channel or per group.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// Step sizes, one per tensor/channel/group.
    pub fn scales(&self) -> &[f32] {
        &self.scale
    }

    /// Zero points (integer-valued), one per step size.
    pub fn zero_points(&self) -> &[f32] {
        &self.zero_point
    }

    /// Number of step sizes (1, channels or groups).
    pub fn num_params(&self) -> usize {
        self.scale.len()
    }

    /// Step size of parameter `i` (the distance between adjacent levels); the rounding error of
    /// an in-range value is at most half of it. Panics when `i >= num_params()`.
    pub fn step(&self, i: usize) -> f32 {
        self.scale[i]
    }

    /// Smallest integer code.
    pub fn qmin(&self) -> i32 {
        code_range(self.bits, self.symmetric).0
    }

    /// Largest integer code.
    pub fn qmax(&self) -> i32 {
        code_range(self.bits, self.symmetric).1
    }

    /// The lowest and highest representable value of parameter `i`; inputs outside clamp to
    /// them.
    pub fn representable_range(&self, i: usize) -> (f32, f32) {
        let (s, z) = (self.scale[i], self.zero_point[i]);
        ((self.qmin() as f32 - z) * s, (self.qmax() as f32 - z) * s)
    }

    /// Checks that a tensor of `shape` fits this quantizer (axis in range, same channel or
    /// group count). [`UniformQuantizer::fake_quant`] panics where this errors, so call it once
    /// when wiring a quantizer to a layer.
    pub fn check_shape(&self, shape: &[usize]) -> Result<()> {
        self.layout(shape).map(|_| ())
    }

    fn layout(&self, shape: &[usize]) -> Result<Layout> {
        let layout = self.granularity.layout(shape)?;
        if layout.params != self.scale.len() {
            return Err(Error::invalid(
                "shape",
                format!("{shape:?}"),
                format!(
                    "needs {} step sizes for {:?}, the quantizer has {}",
                    layout.params,
                    self.granularity,
                    self.scale.len()
                ),
            ));
        }
        Ok(layout)
    }

    fn host_layout(&self, len: usize, shape: &[usize]) -> Result<Layout> {
        let layout = self.layout(shape)?;
        if layout.numel() != len {
            return Err(Error::invalid(
                "shape",
                format!("{shape:?}"),
                format!("has {} elements, the data {len}", layout.numel()),
            ));
        }
        Ok(layout)
    }

    /// Integer codes of `x` (row-major, of `shape`): `clamp(round(x / s) + z, qmin, qmax)`.
    pub fn quantize_host(&self, x: &[f32], shape: &[usize]) -> Result<Vec<i32>> {
        let layout = self.host_layout(x.len(), shape)?;
        let (qmin, qmax) = (self.qmin() as f32, self.qmax() as f32);
        Ok(x.iter()
            .enumerate()
            .map(|(i, &v)| {
                let p = layout.param_of(i);
                code(v, self.scale[p], self.zero_point[p], qmin, qmax) as i32
            })
            .collect())
    }

    /// Real values of integer codes: `(q - z) * s`.
    pub fn dequantize_host(&self, q: &[i32], shape: &[usize]) -> Result<Vec<f32>> {
        let layout = self.host_layout(q.len(), shape)?;
        Ok(q.iter()
            .enumerate()
            .map(|(i, &c)| {
                let p = layout.param_of(i);
                (c as f32 - self.zero_point[p]) * self.scale[p]
            })
            .collect())
    }

    /// The host reference of [`UniformQuantizer::fake_quant`]: `dequantize(quantize(x))`,
    /// bit-identical to the tensor path.
    pub fn fake_quant_host(&self, x: &[f32], shape: &[usize]) -> Result<Vec<f32>> {
        let layout = self.host_layout(x.len(), shape)?;
        let (qmin, qmax) = (self.qmin() as f32, self.qmax() as f32);
        let mut out = Vec::with_capacity(x.len());
        // Runs of `inner` values share one step size: one tight loop per run.
        for (run, values) in x.chunks_exact(layout.inner).enumerate() {
            let p = run % layout.params;
            let (s, z) = (self.scale[p], self.zero_point[p]);
            out.extend(
                values
                    .iter()
                    .map(|&v| fake_quant_scalar(v, s, z, qmin, qmax)),
            );
        }
        Ok(out)
    }

    /// Quantizes and dequantizes `x` on its own device, keeping its shape and float dtype.
    ///
    /// No straight-through gradient: `round` has zero gradient, so this is a PTQ forward.
    ///
    /// # Panics
    /// When `x`'s shape does not fit the quantizer (see [`UniformQuantizer::check_shape`]).
    pub fn fake_quant<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let layout = self
            .layout(&dims)
            .unwrap_or_else(|e| panic!("UniformQuantizer::fake_quant: {e}"));
        if crate::takes_host_pass(&x) {
            return crate::host_pass(x, |v| {
                self.fake_quant_host(v, &dims)
                    .expect("the shape was checked above")
            });
        }
        if layout.params == 1 {
            // One range: scalar ops, and `clamp(round(x/s) + z, qmin, qmax) - z` as
            // `clamp(round(x/s), qmin - z, qmax - z)` (z is an integer, so this is exact in f32).
            // The final `+ 0` turns a -0 into +0, as the host reference's `+ z - z` does.
            let (s, z) = (self.scale[0], self.zero_point[0]);
            return x
                .div_scalar(s)
                .round()
                .clamp(self.qmin() as f32 - z, self.qmax() as f32 - z)
                .mul_scalar(s)
                .add_scalar(0.0);
        }
        let device = x.device();
        let dtype = x.dtype();
        let param = |v: &[f32]| param_tensor(v, layout.params, &device, dtype);
        let (s, z) = (param(&self.scale), param(&self.zero_point));
        let x3: Tensor<3> = x.reshape([layout.outer, layout.params, layout.inner]);
        let q = x3
            .div(s.clone())
            .round()
            .add(z.clone())
            .clamp(self.qmin() as f32, self.qmax() as f32);
        q.sub(z).mul(s).reshape(dims)
    }
}

/// A `[1, params, 1]` tensor that broadcasts over the `[outer, params, inner]` view.
fn param_tensor(values: &[f32], params: usize, device: &Device, dtype: DType) -> Tensor<3> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), [1, params, 1]),
        (device, dtype),
    )
}

fn check_param_count(granularity: Granularity, n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid("range", "[]", "need at least one range"));
    }
    if granularity == Granularity::PerTensor && n != 1 {
        return Err(Error::invalid(
            "range",
            format!("{n} ranges"),
            "per-tensor quantization takes exactly one",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod rounding_tests {
    use super::*;

    /// The add-and-subtract rounding gives `round_ties_even`'s codes for every value a code can
    /// come from: ties, values near them, large and non-finite values (which clamp).
    #[test]
    fn fast_rounding_gives_the_exact_codes() {
        let mut values = vec![0.0f32, -0.0, f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30];
        for k in -600..600 {
            let tie = k as f32 + 0.5;
            values.extend([tie, tie.next_up(), tie.next_down(), k as f32 * 0.37]);
        }
        values.extend([
            4_194_303.5,
            4_194_304.5,
            8_388_607.5,
            16_777_217.0,
            -4_194_304.5,
        ]);
        for (qmin, qmax, z) in [(0.0, 255.0, 0.0), (0.0, 15.0, 7.0), (-127.0, 127.0, 0.0)] {
            for &y in &values {
                let exact = (y.round_ties_even() + z).clamp(qmin, qmax);
                let fast = (round_ties_even_for_codes(y) + z).clamp(qmin, qmax);
                assert_eq!(exact, fast, "y {y}, codes [{qmin}, {qmax}], z {z}");
            }
            assert!(round_ties_even_for_codes(f32::NAN).is_nan());
        }
    }
}
