//! AVX-512 versions of the engine's element-wise kernels, chosen at run time, with the scalar
//! code of [`crate::ops`] as the fallback (and the reference the tests compare with).
//!
//! * `u8` quantization: bit-identical to [`ActQuant::quantize_one`] (IEEE division,
//!   round-half-even by `vrndscaleps`, NaN → `qmin`).
//! * LayerNorm and GELU fused with the quantization of the next linear's input: the `f32`
//!   result never goes to memory. Sums run in 16 lanes, so a LayerNorm row differs from the
//!   sequential sum by float rounding only.
//! * `exp` (softmax) and `erf` (GELU): [`mixq_quant_kernels::vmath`]'s polynomials, a few ulp
//!   from libm's (tests bound them), about 20x faster than a libm call per value. The engine
//!   therefore matches the fake-quant forward within a tolerance, not bit for bit (it never
//!   did after an integer GEMM: exact integer sums vs `f32` matmuls).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::sync::OnceLock;

use mixq_quant_kernels::ActQuant;

/// Whether the AVX-512 paths run on this CPU.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        return is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512dq");
        #[allow(unreachable_code)]
        false
    })
}

/// The constants of one `u8` quantizer, and its scalar per-value arithmetic (the fallback).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Quant {
    s: f32,
    z: f32,
    lo: f32,
    hi: f32,
}

impl Quant {
    pub fn new(q: &ActQuant) -> Self {
        let (lo, hi) = q.code_range();
        Quant {
            s: q.scale(),
            z: q.zero_point() as f32,
            lo: lo as f32,
            hi: hi as f32,
        }
    }

    /// [`ActQuant::quantize_one`] of one value, bit for bit, without `round_ties_even`'s libm
    /// call ([`mixq_quant_kernels::round_ties_even_for_codes`]).
    #[inline]
    pub fn code(&self, v: f32) -> u8 {
        let r = mixq_quant_kernels::round_ties_even_for_codes(v / self.s);
        let c = (r + self.z).clamp(self.lo, self.hi);
        // NaN fails both comparisons of `clamp` and maps to `lo`, as in `quantize_one`.
        if c.is_nan() { self.lo as u8 } else { c as u8 }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::*;
    pub use mixq_quant_kernels::vmath::x86::{exp16, gelu16};

    /// Lanes of a `len`-value tail.
    #[inline]
    pub fn tail_mask(len: usize) -> __mmask16 {
        if len >= 16 {
            0xFFFF
        } else {
            ((1u32 << len) - 1) as u16
        }
    }

    /// `clamp(round_half_even(y / s) + z, lo, hi)` as `i32` lanes (NaN → `lo`).
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub fn quantize16(y: __m512, q: &Quant) -> __m512i {
        let c = _mm512_div_ps(y, _mm512_set1_ps(q.s));
        let c = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(c);
        let c = _mm512_add_ps(c, _mm512_set1_ps(q.z));
        // `max` returns its second operand when the first is NaN.
        let c = _mm512_max_ps(c, _mm512_set1_ps(q.lo));
        let c = _mm512_min_ps(c, _mm512_set1_ps(q.hi));
        _mm512_cvtps_epi32(c)
    }

    /// Stores the low byte of the masked lanes of `v` at `dst`.
    ///
    /// # Safety
    /// AVX-512F must be available; `dst` must hold the masked lanes.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn store_u8(dst: *mut u8, mask: __mmask16, v: __m512i) {
        // Safety: forwarded from the caller.
        unsafe { _mm512_mask_cvtusepi32_storeu_epi8(dst.cast(), mask, v) }
    }

    /// Quantizes `x` into `out` (same length).
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    pub fn quantize(x: &[f32], q: &Quant, out: &mut [u8]) {
        assert_eq!(x.len(), out.len());
        for (xs, os) in x.chunks(16).zip(out.chunks_mut(16)) {
            let m = tail_mask(xs.len());
            // Safety: the masked load and store touch only the chunk's `len` values.
            unsafe {
                let v = _mm512_maskz_loadu_ps(m, xs.as_ptr());
                store_u8(os.as_mut_ptr(), m, quantize16(v, q));
            }
        }
    }

    /// `x · mul`, quantized into `out` (same length); `mul = 1` is exact, so it serves unscaled
    /// operands too.
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    pub fn quantize_scaled(x: &[f32], mul: f32, q: &Quant, out: &mut [u8]) {
        assert_eq!(x.len(), out.len());
        let s = _mm512_set1_ps(mul);
        for (xs, os) in x.chunks(16).zip(out.chunks_mut(16)) {
            let m = tail_mask(xs.len());
            // Safety: the masked load and store touch only the chunk's `len` values.
            unsafe {
                let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, xs.as_ptr()), s);
                store_u8(os.as_mut_ptr(), m, quantize16(v, q));
            }
        }
    }

    /// GELU of `x`, quantized into `out` (same length).
    ///
    /// # Safety
    /// AVX-512F/DQ must be available.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub fn gelu_quantize(x: &[f32], q: &Quant, out: &mut [u8]) {
        assert_eq!(x.len(), out.len());
        for (xs, os) in x.chunks(16).zip(out.chunks_mut(16)) {
            let m = tail_mask(xs.len());
            // Safety: the masked load and store touch only the chunk's `len` values.
            unsafe {
                let v = _mm512_maskz_loadu_ps(m, xs.as_ptr());
                store_u8(os.as_mut_ptr(), m, quantize16(gelu16(v), q));
            }
        }
    }

    /// GELU of `x` in place.
    ///
    /// # Safety
    /// AVX-512F/DQ must be available.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub fn gelu(x: &mut [f32]) {
        for xs in x.chunks_mut(16) {
            let m = tail_mask(xs.len());
            // Safety: the masked load and store touch only the chunk's `len` values.
            unsafe {
                let v = _mm512_maskz_loadu_ps(m, xs.as_ptr());
                _mm512_mask_storeu_ps(xs.as_mut_ptr(), m, gelu16(v));
            }
        }
    }

    /// Sum of the lanes of `x` (16 partial sums).
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn sum(x: &[f32], shift: f32) -> (f32, f32) {
        let (mut s, mut s2) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let c = _mm512_set1_ps(shift);
        for xs in x.chunks(16) {
            let m = tail_mask(xs.len());
            // Safety: the masked load reads only the chunk's values.
            let v = unsafe { _mm512_maskz_loadu_ps(m, xs.as_ptr()) };
            let d = _mm512_maskz_sub_ps(m, v, c);
            s = _mm512_add_ps(s, v);
            s2 = _mm512_fmadd_ps(d, d, s2);
        }
        (_mm512_reduce_add_ps(s), _mm512_reduce_add_ps(s2))
    }

    /// LayerNorm of one row (`x`, `gamma`, `beta` of one length): `(v − mean) · (inv_std · g)
    /// + b` with the two-pass variance; `emit(i, y)` receives each 16-value chunk.
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub fn layer_norm_row(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        mut emit: impl FnMut(usize, __mmask16, __m512),
    ) {
        let n = x.len() as f32;
        let mean = sum(x, 0.0).0 / n;
        let var = sum(x, mean).1 / n;
        let inv_std = _mm512_set1_ps(1.0 / (var + eps).sqrt());
        let mean = _mm512_set1_ps(mean);
        for (i, ((xs, g), b)) in x
            .chunks(16)
            .zip(gamma.chunks(16))
            .zip(beta.chunks(16))
            .enumerate()
        {
            let m = tail_mask(xs.len());
            // Safety: the masked loads read only the chunk's values.
            let (v, g, b) = unsafe {
                (
                    _mm512_maskz_loadu_ps(m, xs.as_ptr()),
                    _mm512_maskz_loadu_ps(m, g.as_ptr()),
                    _mm512_maskz_loadu_ps(m, b.as_ptr()),
                )
            };
            let y = _mm512_add_ps(
                _mm512_mul_ps(_mm512_sub_ps(v, mean), _mm512_mul_ps(inv_std, g)),
                b,
            );
            emit(16 * i, m, y);
        }
    }

    /// Softmax of one row in place: max, `exp(v − max)`, one reciprocal.
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    pub fn softmax_row(row: &mut [f32]) {
        let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
        for xs in row.chunks(16) {
            let m = tail_mask(xs.len());
            // Safety: the masked load reads only the chunk's values.
            let v =
                unsafe { _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), m, xs.as_ptr()) };
            mx = _mm512_max_ps(mx, v);
        }
        let mx = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
        let mut s = _mm512_setzero_ps();
        for xs in row.chunks_mut(16) {
            let m = tail_mask(xs.len());
            // Safety: the masked load and store touch only the chunk's values.
            unsafe {
                let v = _mm512_maskz_loadu_ps(m, xs.as_ptr());
                let e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(v, mx)));
                s = _mm512_add_ps(s, e);
                _mm512_mask_storeu_ps(xs.as_mut_ptr(), m, e);
            }
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(s));
        for xs in row.chunks_mut(16) {
            let m = tail_mask(xs.len());
            // Safety: as above.
            unsafe {
                let v = _mm512_maskz_loadu_ps(m, xs.as_ptr());
                _mm512_mask_storeu_ps(xs.as_mut_ptr(), m, _mm512_mul_ps(v, inv));
            }
        }
    }
}
