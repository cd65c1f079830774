//! Host kernels of the engine: integer and float linear layers, the attention operands and
//! the float element-wise pieces (LayerNorm, softmax, GELU) that ONNX Runtime's QDQ graphs
//! also keep in `f32`.
//!
//! The float pieces follow burn-flex's formulas and operation order (two-pass LayerNorm,
//! max-shifted softmax with one reciprocal, `0.5 · x · (1 + erf(x / √2))` with libm's `erff`),
//! so that where the engine sees the same `f32` inputs as the fake-quant forward it produces
//! the same outputs, and a quantizer downstream picks the same code.

use mixq_core::{Error, Result, SiteId};
use mixq_quant_kernels::{ActQuant, IntGemm, LogQuantizer, PreparedWeights, RhsLayout};
use rayon::prelude::*;
use rten_gemm::{GemmExecutor, GemmInputA, GemmInputB, GemmOptions, PackedBMatrix};
use rten_tensor::Matrix;

thread_local! {
    /// rten's executor is `!Send`; one per thread.
    static SGEMM: GemmExecutor<f32, f32, f32> = GemmExecutor::default();
}

/// Rows per rayon task in the element-wise kernels.
const ROWS_PER_TASK: usize = 16;

/// `out[m, n] = Σ_k a[m, k] · b[k, n]` in `f32`; `b` is a `[k, n]` view with `b_strides`.
pub(crate) fn sgemm(
    a: &[f32],
    m: usize,
    k: usize,
    b: &[f32],
    n: usize,
    b_strides: [usize; 2],
    out: &mut [f32],
) -> Result<()> {
    let bad = |what: &str, e: String| Error::invalid(what, format!("[{m}, {k}, {n}]"), e);
    let av =
        Matrix::from_data_with_strides([m, k], a, [k, 1]).map_err(|e| bad("lhs", e.to_string()))?;
    let bv = Matrix::from_data_with_strides([k, n], b, b_strides)
        .map_err(|e| bad("rhs", e.to_string()))?;
    SGEMM
        .with(|g| {
            g.gemm(
                out,
                GemmInputA::Unpacked(av),
                GemmInputB::Unpacked(bv),
                GemmOptions::default(),
            )
        })
        .map_err(|e| bad("gemm", e.to_string()))
}

/// [`ActQuant::quantize_one`] for a whole slice, bit for bit, without `round_ties_even`'s
/// libm call (x86-64's baseline has no SSE4.1 `roundss`, so it is a function call per value):
/// adding and subtracting `1.5 · 2^23` rounds half to even in the default rounding mode for
/// `|y| ≤ 2^22`, and larger values clamp to the end codes either way.
pub(crate) fn quantize_u8(q: &ActQuant, x: &[f32]) -> Vec<u8> {
    let r = U8Rounder::new(q);
    let mut out = vec![0u8; x.len()];
    out.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14))
        .for_each(|(o, x)| {
            for (o, &v) in o.iter_mut().zip(x) {
                *o = r.code(v);
            }
        });
    out
}

/// The per-value arithmetic of [`quantize_u8`], for kernels that quantize as they copy.
#[derive(Clone, Copy, Debug)]
pub(crate) struct U8Rounder {
    s: f32,
    z: f32,
    lo: f32,
    hi: f32,
}

impl U8Rounder {
    pub fn new(q: &ActQuant) -> Self {
        let (lo, hi) = q.code_range();
        U8Rounder {
            s: q.scale(),
            z: q.zero_point() as f32,
            lo: lo as f32,
            hi: hi as f32,
        }
    }

    #[inline]
    pub fn code(&self, v: f32) -> u8 {
        const MAGIC: f32 = 12_582_912.0;
        const LIMIT: f32 = 4_194_304.0;
        let y = (v / self.s).clamp(-LIMIT, LIMIT);
        let r = (y + MAGIC) - MAGIC;
        let c = (r + self.z).clamp(self.lo, self.hi);
        // NaN fails both comparisons of `clamp` and maps to `lo`, as in `quantize_one`.
        if c.is_nan() { self.lo as u8 } else { c as u8 }
    }
}

/// How a linear (or the patch-embedding convolution, as a linear over patches) computes.
pub(crate) enum LinearKind {
    /// `u8` activations (quantized with the site's input quantizer) × packed weights.
    Int { w: PreparedWeights, act: ActQuant },
    /// A site the plan leaves in full precision: `f32` weights `[in, out]`, pre-packed.
    F32 {
        w: Vec<f32>,
        packed: PackedBMatrix<f32>,
    },
}

/// One linear site of the engine.
pub(crate) struct LinearOp {
    pub site: SiteId,
    pub in_features: usize,
    pub out_features: usize,
    pub kind: LinearKind,
    pub bias: Option<Vec<f32>>,
}

impl LinearOp {
    pub fn float(
        site: SiteId,
        in_features: usize,
        out_features: usize,
        w: Vec<f32>,
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        let view = Matrix::from_data_with_strides(
            [in_features, out_features],
            w.as_slice(),
            [out_features, 1],
        )
        .map_err(|e| Error::invalid("weight", site.as_str(), e.to_string()))?;
        let packed = SGEMM.with(|g| g.prepack_b(view));
        Ok(LinearOp {
            site,
            in_features,
            out_features,
            kind: LinearKind::F32 { w, packed },
            bias,
        })
    }

    /// `y = x W + b` for `x` `[m, in]`, into a new `[m, out]` buffer.
    pub fn forward(&self, gemm: &IntGemm, x: &[f32], m: usize) -> Result<Vec<f32>> {
        debug_assert_eq!(x.len(), m * self.in_features);
        let mut y = vec![0f32; m * self.out_features];
        match &self.kind {
            LinearKind::Int { w, act } => {
                let a = quantize_u8(act, x);
                gemm.gemm_f32(&a, m, *act, w, self.bias.as_deref(), &mut y)?;
            }
            LinearKind::F32 { packed, .. } => {
                let av =
                    Matrix::from_data_with_strides([m, self.in_features], x, [self.in_features, 1])
                        .map_err(|e| Error::invalid("input", self.site.as_str(), e.to_string()))?;
                SGEMM
                    .with(|g| {
                        g.gemm(
                            &mut y,
                            GemmInputA::Unpacked(av),
                            GemmInputB::Packed(packed),
                            GemmOptions::default(),
                        )
                    })
                    .map_err(|e| Error::invalid("gemm", self.site.as_str(), e.to_string()))?;
                if let Some(b) = &self.bias {
                    y.par_chunks_mut(self.out_features * ROWS_PER_TASK)
                        .for_each(|rows| {
                            for row in rows.chunks_exact_mut(self.out_features) {
                                for (v, b) in row.iter_mut().zip(b) {
                                    *v += b;
                                }
                            }
                        });
                }
            }
        }
        Ok(y)
    }
}

/// How one operand of an attention matmul is represented.
#[derive(Clone, Debug)]
pub(crate) enum Operand {
    /// Not quantized (a site the plan leaves in full precision).
    F32,
    /// Per-tensor uniform: `u8` codes.
    Uniform(ActQuant),
    /// Log-√2 / log-2 attention probabilities.
    Log(FastLog),
}

/// [`LogQuantizer::fake_quant_host`] without its binary search: a table indexed by the top
/// 12 bits of `x / s` (sign, exponent and 3 mantissa bits, so each bucket is at most 1/8 of an
/// octave and holds at most one threshold, except among deep subnormals, which are searched) gives the number of thresholds above the bucket, and
/// one comparison with the next threshold (`τ_k = 2^(−(k + ½)/d)` rounded up to `f32`, as the
/// reference compares) finishes the count: identical results (tested), no branches to
/// mispredict on the attention probabilities.
#[derive(Clone, Debug)]
pub(crate) struct FastLog {
    q: LogQuantizer,
    /// Unit thresholds `T_k`, descending, `k = 0..N`, then 0 as a sentinel.
    thresholds: Vec<f32>,
    /// Thresholds above each bucket's largest value, by `bits >> 20` of a positive `f32`.
    above: Vec<u16>,
    /// Level values `s · 2^(−k/d)`, `k = 0..N`, then 0.
    values: Vec<f32>,
}

/// Buckets of positive `f32` bit patterns: `bits >> BUCKET_SHIFT`.
const BUCKET_SHIFT: u32 = 20;
/// A bucket holding more than one threshold: binary search there.
const SEARCH: u16 = u16::MAX;

impl FastLog {
    pub fn new(q: LogQuantizer) -> Self {
        let n = q.num_levels();
        let d = f64::from(q.base().levels_per_octave());
        let mut thresholds: Vec<f32> = (0..n)
            .map(|k| {
                let tau = (-(k as f64 + 0.5) / d).exp2();
                let t = tau as f32;
                if f64::from(t) < tau { t.next_up() } else { t }
            })
            .collect();
        let buckets = 1usize << (31 - BUCKET_SHIFT);
        let above = (0..buckets)
            .map(|b| {
                let low = f32::from_bits((b as u32) << BUCKET_SHIFT);
                let top = f32::from_bits((((b as u32) + 1) << BUCKET_SHIFT) - 1);
                // Infinity and NaN patterns: nothing lies above them.
                let top = if top.is_finite() { top } else { f32::INFINITY };
                let k = thresholds.partition_point(|&t| t > top);
                let inside = thresholds.partition_point(|&t| t >= low) - k;
                // Two thresholds in one bucket (deep subnormals of wide log-2 quantizers):
                // that bucket is searched.
                if inside > 1 { SEARCH } else { k as u16 }
            })
            .collect();
        thresholds.push(0.0);
        let mut values = q.levels();
        values.push(0.0);
        FastLog {
            q,
            thresholds,
            above,
            values,
        }
    }

    /// The level index: how many thresholds lie above `x / s`.
    #[inline]
    pub fn code(&self, x: f32) -> usize {
        let y = x / self.q.scale();
        if y.is_nan() {
            return 0;
        }
        if y <= 0.0 {
            return self.thresholds.len() - 1;
        }
        match self.above[(y.to_bits() >> BUCKET_SHIFT) as usize] {
            SEARCH => self.thresholds.partition_point(|&t| t > y),
            k => k as usize + (self.thresholds[k as usize] > y) as usize,
        }
    }

    /// The fake-quantized value of `x`.
    #[inline]
    pub fn fake_quant(&self, x: f32) -> f32 {
        self.values[self.code(x)]
    }
}

/// An operand after quantization: codes for the integer kernel, or exact `f32` values.
pub(crate) enum QuantOperand {
    Codes(Vec<u8>, ActQuant),
    Values(Vec<f32>),
}

impl Operand {
    /// Quantizes `x`: uniform operands to `u8` codes; log operands to their exact level values
    /// (what the fake-quant forward multiplies with); float operands pass through.
    pub fn apply(&self, x: Vec<f32>) -> QuantOperand {
        match self {
            Operand::F32 => QuantOperand::Values(x),
            Operand::Uniform(q) => QuantOperand::Codes(quantize_u8(q, &x), *q),
            Operand::Log(q) => {
                let mut x = x;
                for v in &mut x {
                    *v = q.fake_quant(*v);
                }
                QuantOperand::Values(x)
            }
        }
    }
}

impl QuantOperand {
    /// The dequantized values (for the float path when only one side is integer).
    fn values(&self) -> std::borrow::Cow<'_, [f32]> {
        match self {
            QuantOperand::Values(v) => v.into(),
            QuantOperand::Codes(c, q) => c
                .iter()
                .map(|&c| q.dequantize(c))
                .collect::<Vec<_>>()
                .into(),
        }
    }
}

/// `out[m, n] = a[m, k] · b`, `b` `[n, k]` (`NK`) or `[k, n]` (`KN`) per head: integer when both
/// operands are `u8` codes, else `f32` on the dequantized values.
pub(crate) fn matmul(
    gemm: &IntGemm,
    a: &QuantOperand,
    m: usize,
    b: &QuantOperand,
    n: usize,
    layout: RhsLayout,
    out: &mut [f32],
) -> Result<()> {
    match (a, b) {
        (QuantOperand::Codes(a, qa), QuantOperand::Codes(b, qb)) => {
            gemm.gemm_u8u8_f32(a, m, *qa, b, n, *qb, layout, out)
        }
        _ => {
            let (av, bv) = (a.values(), b.values());
            let k = av.len() / m.max(1);
            let strides = match layout {
                RhsLayout::NK => [1, k],
                RhsLayout::KN => [n, 1],
            };
            sgemm(&av, m, k, &bv, n, strides, out)
        }
    }
}

/// LayerNorm over rows of `dim` values: burn-flex's two-pass formula.
pub(crate) struct Norm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub eps: f32,
}

impl Norm {
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let d = self.gamma.len();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d * ROWS_PER_TASK)
            .zip(x.par_chunks(d * ROWS_PER_TASK))
            .for_each(|(o, x)| {
                for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                    self.row(x, o);
                }
            });
        out
    }

    fn row(&self, x: &[f32], out: &mut [f32]) {
        let n = x.len() as f32;
        let mean = x.iter().sum::<f32>() / n;
        let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv_std = 1.0f32 / (var + self.eps).sqrt();
        for (((o, &v), &g), &b) in out.iter_mut().zip(x).zip(&self.gamma).zip(&self.beta) {
            *o = (v - mean) * (inv_std * g) + b;
        }
    }
}

/// Softmax over rows of `len` values in place (burn-flex's order: max, `exp`, one reciprocal).
pub(crate) fn softmax_rows(x: &mut [f32], len: usize) {
    x.par_chunks_mut(len * ROWS_PER_TASK).for_each(|rows| {
        for row in rows.chunks_exact_mut(len) {
            let max = row
                .iter()
                .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
            let mut sum = 0f32;
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            let inv = 1.0f32 / sum;
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    });
}

/// Exact (erf) GELU in place, as burn-flex computes it.
pub(crate) fn gelu(x: &mut [f32]) {
    x.par_chunks_mut(1 << 13).for_each(|c| {
        for v in c {
            let x = *v;
            *v = 0.5 * x * (1.0 + libm::erff(x / std::f32::consts::SQRT_2));
        }
    });
}

/// `x += y` element-wise (residual connections).
pub(crate) fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(1 << 14)
        .zip(y.par_chunks(1 << 14))
        .for_each(|(x, y)| {
            for (a, b) in x.iter_mut().zip(y) {
                *a += b;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixq_core::BitWidth;
    use mixq_quant_kernels::LogBase;

    #[test]
    fn fast_quantize_equals_the_reference() {
        let mut xs: Vec<f32> = vec![
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e30,
            -1e30,
        ];
        for i in -4000..4000 {
            // Exact half steps (ties), and values around them.
            let h = i as f32 * 0.5 * 0.0125;
            xs.extend([h, h.next_up(), h.next_down(), i as f32 * 0.37]);
        }
        for (scale, zp, bits) in [
            (0.0125f32, 128, 8u8),
            (0.0125, 3, 4),
            (0.7, 0, 2),
            (1e-3, 255, 8),
        ] {
            let q = ActQuant::new(scale, zp.min((1 << bits) - 1), BitWidth::new(bits).unwrap())
                .unwrap();
            let fast = quantize_u8(&q, &xs);
            for (x, f) in xs.iter().zip(fast) {
                assert_eq!(f, q.quantize_one(*x), "x = {x:e}, scale {scale}");
            }
        }
    }

    #[test]
    fn fast_log_equals_the_reference() {
        let mut xs: Vec<f32> = vec![
            0.0,
            -1.0,
            1e-45,
            1e-39,
            1e-30,
            f32::MIN_POSITIVE,
            1.0,
            2.0,
            5.0,
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            xs.push((-(u * 60.0)).exp2() as f32 * 1.3);
        }
        for bits in [2, 3, 4, 8] {
            for base in [LogBase::Log2, LogBase::LogSqrt2] {
                for scale in [1.0f32, 0.37, 0.9] {
                    let q = LogQuantizer::new(BitWidth::new(bits).unwrap(), base, scale).unwrap();
                    let fast = FastLog::new(q);
                    // Exactly on the thresholds and one ulp around them, too.
                    let mut all = xs.clone();
                    for &t in &fast.thresholds[..fast.thresholds.len() - 1] {
                        let x = t * scale;
                        all.extend([x, x.next_up(), x.next_down()]);
                    }
                    let want = q.fake_quant_host(&all);
                    for (x, w) in all.iter().zip(want) {
                        assert_eq!(
                            fast.fake_quant(*x).to_bits(),
                            w.to_bits(),
                            "x = {x:e}, {bits} bits {base:?}"
                        );
                    }
                }
            }
        }
    }
}
