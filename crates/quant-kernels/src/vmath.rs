//! Vectorised float math for the integer engine's float pieces: `exp` (softmax), `erf` and
//! GELU, as AVX-512 polynomials (x86-64), plus the scalar GELU they approximate. Shared by the
//! GEMM's fused GELU epilogue ([`crate::igemm::IntGemm::gemm_gelu_u8`]) and `mixq-deploy`.

/// `0.5 · x · (1 + erf(x / √2))` with libm's `erff`, as burn-flex computes GELU.
#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x / std::f32::consts::SQRT_2))
}

#[cfg(target_arch = "x86_64")]
/// AVX-512 versions of the functions above, for the integer engine's kernels.
pub mod x86 {
    use std::arch::x86_64::*;

    /// `e^x` (Cephes' `expf` polynomial, scaled with `vscalefps`): within 2 ulp of libm for
    /// the softmax's `x ≤ 0`, 0 below about −103.
    ///
    /// # Safety
    /// The CPU must have AVX-512F (callers compiled with it call it safely).
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub fn exp16(x: __m512) -> __m512 {
        let x = _mm512_min_ps(x, _mm512_set1_ps(88.376_26));
        let x = _mm512_max_ps(x, _mm512_set1_ps(-103.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let e = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
        _mm512_scalef_ps(e, n)
    }

    /// `erf(x)` (Abramowitz & Stegun 7.1.26 with [`exp16`]): absolute error below 1e-6 (tested),
    /// i.e. GELU within `5e-7 · |x|` of the libm-based formula.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and DQ (callers compiled with them call it safely).
    #[target_feature(enable = "avx512f,avx512dq")]
    #[inline]
    pub fn erf16(x: __m512) -> __m512 {
        let sign = _mm512_and_ps(x, _mm512_set1_ps(-0.0));
        let ax = _mm512_andnot_ps(_mm512_set1_ps(-0.0), x);
        let one = _mm512_set1_ps(1.0);
        // 1 / (1 + p·|x|) by `vrcp14ps` and one Newton step (relative error ~2^-28): a
        // division here made GELU the slowest part of the fused MLP epilogue.
        let den = _mm512_fmadd_ps(_mm512_set1_ps(0.327_591_1), ax, one);
        let r = _mm512_rcp14_ps(den);
        let t = _mm512_mul_ps(r, _mm512_fnmadd_ps(den, r, _mm512_set1_ps(2.0)));
        let mut p = _mm512_set1_ps(1.061_405_4);
        for c in [-1.453_152, 1.421_413_8, -0.284_496_74, 0.254_829_6] {
            p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(c));
        }
        let p = _mm512_mul_ps(p, t);
        let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(ax, ax)));
        let y = _mm512_fnmadd_ps(p, e, one);
        _mm512_or_ps(y, sign)
    }

    /// `0.5 · x · (1 + erf(x / √2))`.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and DQ (callers compiled with them call it safely).
    #[target_feature(enable = "avx512f,avx512dq")]
    #[inline]
    pub fn gelu16(x: __m512) -> __m512 {
        let e = erf16(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2),
        ));
        let h = _mm512_mul_ps(_mm512_set1_ps(0.5), x);
        _mm512_mul_ps(h, _mm512_add_ps(_mm512_set1_ps(1.0), e))
    }
}

#[cfg(test)]
mod tests {
    /// A deterministic stream of values in `[lo, hi)`.
    fn values(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
        let mut state = seed | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                lo + (hi - lo) * ((state >> 40) as f32 / (1u64 << 24) as f32)
            })
            .collect()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_exp_and_erf_are_within_their_stated_error() {
        use std::arch::x86_64::*;
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq")) {
            return;
        }
        let run = |f: unsafe fn(__m512) -> __m512, x: &[f32]| -> Vec<f32> {
            x.chunks(16)
                .flat_map(|c| {
                    let mut buf = [0f32; 16];
                    buf[..c.len()].copy_from_slice(c);
                    // Safety: `available()` checked the features; the buffers hold 16 values.
                    unsafe { _mm512_storeu_ps(buf.as_mut_ptr(), f(_mm512_loadu_ps(buf.as_ptr()))) };
                    buf[..c.len()].to_vec()
                })
                .collect()
        };
        // exp: softmax's range, relative to the f64 value.
        let mut x = values(100_000, -110.0, 0.0, 7);
        x.extend([0.0, -0.0, -1e-8, -87.0, -103.0, -104.0, f32::NEG_INFINITY]);
        let got = run(super::x86::exp16, &x);
        for (&x, &g) in x.iter().zip(&got) {
            let want = f64::from(x).exp();
            let err = (f64::from(g) - want).abs();
            assert!(
                err <= 3.0 * f64::from(f32::EPSILON) * want + 1e-44,
                "exp({x}) = {g}, want {want}"
            );
        }
        // erf: absolute error below 1e-6 (Abramowitz & Stegun 7.1.26: 1.5e-7, plus f32 rounding
        // and the reciprocal estimate).
        let mut x = values(100_000, -6.0, 6.0, 8);
        x.extend([0.0, -0.0, 1e-6, -1e-6, 10.0, -10.0]);
        let got = run(super::x86::erf16, &x);
        for (&x, &g) in x.iter().zip(&got) {
            let want = libm::erf(f64::from(x));
            assert!(
                (f64::from(g) - want).abs() <= 1e-6,
                "erf({x}) = {g}, want {want}"
            );
        }
    }
}
