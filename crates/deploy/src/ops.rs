//! Host kernels of the engine: integer and float linear layers, the attention operands and
//! the float element-wise pieces (LayerNorm, softmax, GELU) that ONNX Runtime's QDQ graphs
//! also keep in `f32`.
//!
//! The float pieces follow burn-flex's formulas and operation order (two-pass LayerNorm,
//! max-shifted softmax with one reciprocal, `0.5 · x · (1 + erf(x / √2))`). Where the CPU has
//! AVX-512 they run in [`crate::simd`]: 16-lane sums and polynomial `exp`/`erf`, a few ulp from
//! the scalar formulas, and LayerNorm / GELU fused with the quantization of the next integer
//! linear's input. The scalar code is the fallback and the reference the tests compare with.

use mixq_core::{Error, Result, SiteId};
use mixq_quant_kernels::{ActQuant, IntGemm, LogQuantizer, PreparedWeights, RhsLayout};
use rayon::prelude::*;
use rten_gemm::{GemmExecutor, GemmInputA, GemmInputB, GemmOptions, PackedBMatrix};
use rten_tensor::Matrix;

use crate::simd::{self, Quant};

thread_local! {
    /// rten's executor is `!Send`; one per thread.
    static SGEMM: GemmExecutor<f32, f32, f32> = GemmExecutor::default();
}

/// Buffers of the forward pass, kept for the next block and the next call: every block needs
/// the same few sizes, and fresh multi-megabyte allocations cost a page fault per 4 KiB
/// (about a fifth of a DeiT-S batch-8 forward before this pool).
pub(crate) mod pool {
    use std::sync::Mutex;

    /// Buffers kept per element type, at most.
    const KEEP: usize = 32;

    static F32: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
    static U8: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

    fn take<T: Copy + Default>(pool: &Mutex<Vec<Vec<T>>>, len: usize) -> Vec<T> {
        let mut v = {
            let mut p = pool.lock().unwrap_or_else(|e| e.into_inner());
            // The shortest buffer already as long as `len` (usually the one this role had in
            // the previous block: no fill), else the smallest that fits, else any (it grows),
            // else a new one.
            let by_len = (0..p.len())
                .filter(|&i| p[i].len() >= len)
                .min_by_key(|&i| p[i].len());
            let by_capacity = (0..p.len())
                .filter(|&i| p[i].capacity() >= len)
                .min_by_key(|&i| p[i].capacity());
            match by_len.or(by_capacity).or(p.len().checked_sub(1)) {
                Some(i) => p.swap_remove(i),
                None => Vec::new(),
            }
        };
        // No zeroing of a reused buffer (a memset per block cost ~5 % of a forward): its
        // old values stay until the caller overwrites them, which every caller does.
        v.truncate(len);
        v.resize(len, T::default());
        v
    }

    fn give<T>(pool: &Mutex<Vec<Vec<T>>>, v: Vec<T>) {
        let mut p = pool.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < KEEP {
            p.push(v);
        } else if let Some(i) = (0..p.len()).min_by_key(|&i| p[i].capacity())
            && p[i].capacity() < v.capacity()
        {
            // Full: keep the larger buffers (their page faults are what the pool saves).
            p[i] = v;
        }
    }

    thread_local! {
        /// Per-thread scratch for small per-task buffers (attention scores).
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Runs `f` on this thread's scratch of `len` values (stale contents, see [`f32s`]).
    pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
        let mut v = SCRATCH.with(|s| s.take());
        v.truncate(len);
        v.resize(len, 0.0);
        let r = f(&mut v);
        SCRATCH.with(|s| s.replace(v));
        r
    }

    /// An `f32` buffer of `len` values with unspecified (stale) contents: the caller writes
    /// every value.
    pub fn f32s(len: usize) -> Vec<f32> {
        take(&F32, len)
    }

    /// A `u8` buffer of `len` values with unspecified contents (see [`f32s`]).
    pub fn u8s(len: usize) -> Vec<u8> {
        take(&U8, len)
    }

    pub fn give_f32(v: Vec<f32>) {
        give(&F32, v)
    }

    pub fn give_u8(v: Vec<u8>) {
        give(&U8, v)
    }
}

/// Below this many values an element-wise pass runs on the calling thread: splitting it costs
/// more than the pass itself (a batch-1 forward spent ~15 % of its time in the scheduler
/// before this and [`crate::IntModel::forward`]'s running on a pool worker).
pub(crate) const PARALLEL_FROM: usize = 1 << 14;

/// `f(out_chunk, in_chunk)` over matching chunks of `out` and `x`; parallel only when `x` has
/// at least [`PARALLEL_FROM`] values.
pub(crate) fn zip_chunks<A: Send, B: Sync>(
    out: &mut [A],
    out_chunk: usize,
    x: &[B],
    in_chunk: usize,
    f: impl Fn(&mut [A], &[B]) + Sync,
) {
    if x.len() < PARALLEL_FROM {
        out.chunks_mut(out_chunk)
            .zip(x.chunks(in_chunk))
            .for_each(|(o, x)| f(o, x));
    } else {
        out.par_chunks_mut(out_chunk)
            .zip(x.par_chunks(in_chunk))
            .for_each(|(o, x)| f(o, x));
    }
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

/// [`ActQuant::quantize_one`] for a whole slice, bit for bit: AVX-512 where it runs, else
/// [`Quant::code`] per value.
pub(crate) fn quantize_u8(q: &ActQuant, x: &[f32]) -> Vec<u8> {
    map_quantize(q, x, false)
}

/// `x`, or `GELU(x)` with `gelu`, quantized with `q` into a pooled buffer.
fn map_quantize(q: &ActQuant, x: &[f32], gelu: bool) -> Vec<u8> {
    let r = Quant::new(q);
    let mut out = pool::u8s(x.len());
    zip_chunks(&mut out, 1 << 14, x, 1 << 14, |o, x| {
        #[cfg(target_arch = "x86_64")]
        if simd::available() {
            // Safety: `available()` checked the CPU features.
            return unsafe {
                if gelu {
                    simd::x86::gelu_quantize(x, &r, o)
                } else {
                    simd::x86::quantize(x, &r, o)
                }
            };
        }
        for (o, &v) in o.iter_mut().zip(x) {
            *o = r.code(if gelu { gelu_one(v) } else { v });
        }
    });
    out
}

/// `x · mul` (or `x`) quantized with `q` into `out`, on the calling thread (head rows).
pub(crate) fn quantize_scaled(q: &ActQuant, mul: Option<f32>, x: &[f32], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // Safety: `available()` checked the CPU features.
        return unsafe { simd::x86::quantize_scaled(x, mul.unwrap_or(1.0), &Quant::new(q), out) };
    }
    let r = Quant::new(q);
    for (o, &v) in out.iter_mut().zip(x) {
        *o = r.code(mul.map_or(v, |s| v * s));
    }
}

/// GELU of `x` quantized with `q` (the input of the next integer linear), without an `f32`
/// buffer in between.
pub(crate) fn gelu_u8(q: &ActQuant, x: &[f32]) -> Vec<u8> {
    map_quantize(q, x, true)
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

    /// The quantizer of an integer site's input (`None` for a float site).
    pub fn input_quant(&self) -> Option<&ActQuant> {
        match &self.kind {
            LinearKind::Int { act, .. } => Some(act),
            LinearKind::F32 { .. } => None,
        }
    }

    /// `y = LayerNorm(x) W + b`; an integer site quantizes the normalised rows directly.
    pub fn forward_normed(
        &self,
        gemm: &IntGemm,
        norm: &Norm,
        x: &[f32],
        m: usize,
    ) -> Result<Vec<f32>> {
        match self.input_quant() {
            Some(q) => {
                let a = norm.forward_u8(x, q);
                let y = self.forward_codes(gemm, &a, m);
                pool::give_u8(a);
                y
            }
            None => {
                let h = norm.forward(x);
                let y = self.forward(gemm, &h, m);
                pool::give_f32(h);
                y
            }
        }
    }

    /// `GELU(LayerNorm(x) W + b)` quantized with `q` (the next integer linear's input): one
    /// fused GEMM epilogue when this site is integer.
    pub fn forward_normed_gelu_u8(
        &self,
        gemm: &IntGemm,
        norm: &Norm,
        x: &[f32],
        m: usize,
        q: &ActQuant,
    ) -> Result<Vec<u8>> {
        match &self.kind {
            LinearKind::Int { w, act } => {
                let a = norm.forward_u8(x, act);
                let mut out = pool::u8s(m * self.out_features);
                gemm.gemm_gelu_u8(&a, m, *act, w, self.bias.as_deref(), *q, &mut out)?;
                pool::give_u8(a);
                Ok(out)
            }
            LinearKind::F32 { .. } => {
                let f = self.forward_normed(gemm, norm, x, m)?;
                let codes = gelu_u8(q, &f);
                pool::give_f32(f);
                Ok(codes)
            }
        }
    }

    /// `y = GELU(x) W + b`; an integer site quantizes the GELU values directly.
    pub fn forward_gelu(&self, gemm: &IntGemm, mut x: Vec<f32>, m: usize) -> Result<Vec<f32>> {
        match self.input_quant() {
            Some(q) => {
                let a = gelu_u8(q, &x);
                pool::give_f32(x);
                let y = self.forward_codes(gemm, &a, m);
                pool::give_u8(a);
                y
            }
            None => {
                gelu(&mut x);
                self.forward(gemm, &x, m)
            }
        }
    }

    /// `y = a W + b` for an integer site's input codes `a` `[m, in]`.
    pub fn forward_codes(&self, gemm: &IntGemm, a: &[u8], m: usize) -> Result<Vec<f32>> {
        let LinearKind::Int { w, act } = &self.kind else {
            unreachable!("codes are only made for integer sites")
        };
        let mut y = pool::f32s(m * self.out_features);
        gemm.gemm_f32(a, m, *act, w, self.bias.as_deref(), &mut y)?;
        Ok(y)
    }

    /// `y = x W + b` for `x` `[m, in]`, into a new `[m, out]` buffer.
    pub fn forward(&self, gemm: &IntGemm, x: &[f32], m: usize) -> Result<Vec<f32>> {
        debug_assert_eq!(x.len(), m * self.in_features);
        let mut y = pool::f32s(m * self.out_features);
        match &self.kind {
            LinearKind::Int { w, act } => {
                let a = quantize_u8(act, x);
                gemm.gemm_f32(&a, m, *act, w, self.bias.as_deref(), &mut y)?;
                pool::give_u8(a);
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
    /// `above` widened for AVX-512 gathers.
    above_i32: Vec<i32>,
    /// The count as arithmetic on the bit pattern, where it was verified (see [`Octaves`]).
    octaves: Option<Octaves>,
    /// Codes `0..=scaled_upto` whose level equals `values[code % d] · 2^(−⌊code / d⌋)` bit for
    /// bit (all normal levels: rounding commutes with scaling by powers of 2), so the vector
    /// path computes them with `vscalefps` instead of a gather; `None`: always gather.
    scaled_upto: Option<i32>,
}

/// The threshold count of a positive normal `y` as arithmetic on its bits: the unit thresholds
/// are `2^(−(k + ½)/d)`, so every octave holds the same `d` thresholds at the same mantissas
/// and the count grows by `d` per octave down. For exponent `e` and mantissa bucket `m3` (the
/// top 3 mantissa bits, as in the bucket table): `count = clamp(base[m3] + d · (E − e) +
/// (mant_thr[m3] > mant), 0, N)`. Two 8-entry register lookups replace the two table gathers;
/// [`FastLog::new`] checks the formula against the exact count on every normal bucket (edges
/// and every threshold ± 1 ulp) and keeps it only if it agrees everywhere.
#[derive(Clone, Debug)]
struct Octaves {
    base: [i32; 8],
    mant_thr: [u32; 8],
    e_ref: i32,
    per_octave: i32,
}

impl Octaves {
    /// Derives the formula from the octave of the first threshold (where no count is clamped)
    /// and verifies it (`None` if it does not hold on some normal bucket).
    fn derive(f: &FastLog, per_octave: i32) -> Option<Self> {
        let e_ref = (f.thresholds[0].to_bits() >> 23) as i32;
        let n = (f.thresholds.len() - 1) as i32;
        let mut base = [0i32; 8];
        let mut mant_thr = [0u32; 8];
        for m3 in 0..8u32 {
            let b = ((e_ref as u32) << 3) | m3;
            let k = f.above[b as usize];
            if k == SEARCH {
                return None;
            }
            base[m3 as usize] = i32::from(k);
            let low = f32::from_bits(b << BUCKET_SHIFT);
            if let Some(&t) = f.thresholds.get(usize::from(k))
                && t >= low
                && t.to_bits() >> BUCKET_SHIFT == b
            {
                mant_thr[m3 as usize] = t.to_bits() & 0x7F_FFFF;
            }
        }
        let o = Octaves {
            base,
            mant_thr,
            e_ref,
            per_octave,
        };
        let count = |y: f32| -> i32 {
            let bits = y.to_bits();
            let (e, m3, mant) = (
                (bits >> 23) as i32,
                (bits >> 20 & 7) as usize,
                bits & 0x7F_FFFF,
            );
            let k = o.base[m3] + o.per_octave * (o.e_ref - e) + i32::from(o.mant_thr[m3] > mant);
            k.clamp(0, n)
        };
        let exact = |y: f32| f.unit_code(y) as i32;
        let normal = |y: f32| y.is_normal() && y > 0.0;
        let mut probes: Vec<f32> = Vec::new();
        for b in (1u32 << 3)..(255u32 << 3) {
            let low = f32::from_bits(b << BUCKET_SHIFT);
            let top = f32::from_bits(((b + 1) << BUCKET_SHIFT) - 1);
            probes.extend([low, low.next_up(), top, top.next_down()]);
        }
        for &t in &f.thresholds[..n as usize] {
            probes.extend([t, t.next_up(), t.next_down()]);
        }
        let all_agree = probes
            .into_iter()
            .filter(|&y| normal(y))
            .all(|y| count(y) == exact(y));
        all_agree.then_some(o)
    }
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
        let above: Vec<u16> = (0..buckets)
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
        let above_i32 = above.iter().map(|&a: &u16| i32::from(a)).collect();
        let mut f = FastLog {
            q,
            thresholds,
            above,
            values,
            above_i32,
            octaves: None,
            scaled_upto: None,
        };
        f.octaves = Octaves::derive(&f, d as i32);
        let per = d as usize;
        // `values[k % d] · 2^(−⌊k / d⌋)`, exact while the power of 2 is normal.
        let scaled = |k: usize| {
            let j = (k / per) as u32;
            (j < 126).then(|| f.values[k % per] * f32::from_bits((127 - j) << 23))
        };
        f.scaled_upto = (0..n)
            .take_while(|&k| {
                f.values[k].is_normal()
                    && scaled(k).is_some_and(|v| v.to_bits() == f.values[k].to_bits())
            })
            .last()
            .map(|k| k as i32);
        f
    }

    /// [`FastLog::fake_quant`] of every value in place (AVX-512 gathers where available).
    pub fn fake_quant_slice(&self, x: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if simd::available() {
            // Safety: `available()` checked the CPU features.
            return unsafe { self.fake_quant_avx512(x) };
        }
        for v in x {
            *v = self.fake_quant(*v);
        }
    }

    /// # Safety
    /// [`simd::available`] must hold.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn fake_quant_avx512(&self, x: &mut [f32]) {
        use std::arch::x86_64::*;
        let last = (self.thresholds.len() - 1) as i32;
        let s = _mm512_set1_ps(self.q.scale());
        let octaves = self.octaves.as_ref().map(|o| {
            let widen = |t: [i32; 8]| {
                let mut v = [0i32; 16];
                v[..8].copy_from_slice(&t);
                // Safety: reads 16 `i32` from a 16-entry array.
                unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
            };
            (o, widen(o.base), widen(o.mant_thr.map(|m| m as i32)))
        });
        let scaled_upto = self.scaled_upto;
        let two_per_octave = self.q.base().levels_per_octave() == 2;
        let level01 = {
            let mut v = [0f32; 16];
            v[0] = self.values[0];
            v[1] = self.values[1];
            // Safety: reads 16 `f32` from a 16-entry array.
            unsafe { _mm512_loadu_ps(v.as_ptr()) }
        };
        for xs in x.chunks_mut(16) {
            let m = simd::x86::tail_mask(xs.len());
            let mut orig = [0f32; 16];
            orig[..xs.len()].copy_from_slice(xs);
            // Safety: masked loads/stores touch only the chunk; gathers read `above_i32` at
            // buckets of positive floats (< 2048 entries), `thresholds` at counts ≤ N and
            // `values` at codes ≤ N, all inside the tables.
            let search = unsafe {
                let y = _mm512_div_ps(_mm512_maskz_loadu_ps(m, xs.as_ptr()), s);
                let pos = m & _mm512_cmp_ps_mask::<_CMP_GT_OQ>(y, _mm512_setzero_ps());
                let nan = m & _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(y, y);
                let bits = _mm512_castps_si512(y);
                // Positive normals by the per-octave formula where it holds.
                let (k_fast, fast) = match &octaves {
                    Some((o, base, mant_thr)) => {
                        let e = _mm512_srli_epi32::<23>(bits);
                        let normal = pos
                            & _mm512_cmpgt_epi32_mask(e, _mm512_setzero_si512())
                            & _mm512_cmplt_epi32_mask(e, _mm512_set1_epi32(255));
                        let m3 =
                            _mm512_and_si512(_mm512_srli_epi32::<20>(bits), _mm512_set1_epi32(7));
                        let mant = _mm512_and_si512(bits, _mm512_set1_epi32(0x7F_FFFF));
                        let k = _mm512_add_epi32(
                            _mm512_permutexvar_epi32(m3, *base),
                            _mm512_mullo_epi32(
                                _mm512_set1_epi32(o.per_octave),
                                _mm512_sub_epi32(_mm512_set1_epi32(o.e_ref), e),
                            ),
                        );
                        let up =
                            _mm512_cmpgt_epu32_mask(_mm512_permutexvar_epi32(m3, *mant_thr), mant);
                        let k = _mm512_mask_add_epi32(k, up, k, _mm512_set1_epi32(1));
                        let k = _mm512_max_epi32(k, _mm512_setzero_si512());
                        (_mm512_min_epi32(k, _mm512_set1_epi32(last)), normal)
                    }
                    None => (_mm512_setzero_si512(), 0),
                };
                // The rest of the positive values (subnormals, infinity, or no formula): the
                // bucket table.
                let slow = pos & !fast;
                let (code, search) = if slow == 0 {
                    (k_fast, 0)
                } else {
                    let bucket = _mm512_srli_epi32::<BUCKET_SHIFT>(bits);
                    let k = _mm512_mask_i32gather_epi32::<4>(
                        _mm512_setzero_si512(),
                        slow,
                        bucket,
                        self.above_i32.as_ptr().cast(),
                    );
                    let search =
                        slow & _mm512_cmpeq_epi32_mask(k, _mm512_set1_epi32(i32::from(SEARCH)));
                    let ok = slow & !search;
                    let t = _mm512_mask_i32gather_ps::<4>(
                        _mm512_setzero_ps(),
                        ok,
                        k,
                        self.thresholds.as_ptr().cast(),
                    );
                    let up = ok & _mm512_cmp_ps_mask::<_CMP_GT_OQ>(t, y);
                    let k = _mm512_mask_add_epi32(k, up, k, _mm512_set1_epi32(1));
                    (_mm512_mask_mov_epi32(k, fast, k_fast), search)
                };
                let rest = m & !pos & !nan;
                let code = _mm512_mask_mov_epi32(code, rest, _mm512_set1_epi32(last));
                let code = _mm512_mask_mov_epi32(code, nan, _mm512_setzero_si512());
                // Searched lanes hold the `SEARCH` sentinel, not a code: they are not gathered
                // (the scalar search below fills them).
                // Levels by scaling where verified, else (deep levels, no formula) gathered.
                let (by_scale, v) = match scaled_upto {
                    Some(upto) => {
                        let by_scale =
                            m & !search & _mm512_cmple_epi32_mask(code, _mm512_set1_epi32(upto));
                        // d is 1 or 2: ⌊code / d⌋ is a shift, `code % d` a mask.
                        let j = _mm512_srli_epi32::<1>(code);
                        let (j, r) = if two_per_octave {
                            (j, _mm512_and_si512(code, _mm512_set1_epi32(1)))
                        } else {
                            (code, _mm512_setzero_si512())
                        };
                        let base = _mm512_permutexvar_ps(r, level01);
                        let v = _mm512_scalef_ps(
                            base,
                            _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_setzero_si512(), j)),
                        );
                        (by_scale, _mm512_maskz_mov_ps(by_scale, v))
                    }
                    None => (0, _mm512_setzero_ps()),
                };
                let v = _mm512_mask_i32gather_ps::<4>(
                    v,
                    m & !search & !by_scale,
                    code,
                    self.values.as_ptr().cast(),
                );
                _mm512_mask_storeu_ps(xs.as_mut_ptr(), m, v);
                search
            };
            // Buckets holding two thresholds (deep subnormals): the scalar search.
            if search != 0 {
                for (i, v) in xs.iter_mut().enumerate() {
                    if search >> i & 1 == 1 {
                        *v = self.fake_quant(orig[i]);
                    }
                }
            }
        }
    }

    /// The level index: how many thresholds lie above `x / s`.
    #[inline]
    pub fn code(&self, x: f32) -> usize {
        self.unit_code(x / self.q.scale())
    }

    /// The level index of `y = x / s`.
    #[inline]
    fn unit_code(&self, y: f32) -> usize {
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

/// A borrowed part of a [`QuantOperand`] (one head).
#[derive(Clone, Copy)]
pub(crate) enum QuantRef<'a> {
    Codes(&'a [u8], ActQuant),
    Values(&'a [f32]),
}

impl QuantOperand {
    /// The values in `range`, borrowed.
    pub fn view(&self, range: std::ops::Range<usize>) -> QuantRef<'_> {
        match self {
            QuantOperand::Codes(c, q) => QuantRef::Codes(&c[range], *q),
            QuantOperand::Values(v) => QuantRef::Values(&v[range]),
        }
    }
}

impl QuantRef<'_> {
    /// The dequantized values (for the float path when only one side is integer).
    fn values(&self) -> std::borrow::Cow<'_, [f32]> {
        match *self {
            QuantRef::Values(v) => v.into(),
            QuantRef::Codes(c, q) => c
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
    a: QuantRef<'_>,
    m: usize,
    b: QuantRef<'_>,
    n: usize,
    layout: RhsLayout,
    out: &mut [f32],
) -> Result<()> {
    match (a, b) {
        (QuantRef::Codes(a, qa), QuantRef::Codes(b, qb)) => {
            gemm.gemm_u8u8_f32(a, m, qa, b, n, qb, layout, out)
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
    /// The engine's copy of a model's LayerNorm.
    pub fn of(n: &mixq_vit_models::layers::LayerNorm) -> mixq_core::Result<Self> {
        Ok(Norm {
            gamma: mixq_quant_kernels::host_values(&n.gamma.val())?,
            beta: mixq_quant_kernels::host_values(&n.beta.val())?,
            eps: n.eps as f32,
        })
    }

    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let d = self.gamma.len();
        let mut out = pool::f32s(x.len());
        zip_chunks(&mut out, d * ROWS_PER_TASK, x, d * ROWS_PER_TASK, |o, x| {
            for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                #[cfg(target_arch = "x86_64")]
                if simd::available() {
                    // Safety: `available()` checked the CPU features.
                    unsafe { self.row_avx512(x, o) };
                    continue;
                }
                self.row(x, o);
            }
        });
        out
    }

    /// The normalised rows quantized with `q` (the input of the next integer linear).
    pub fn forward_u8(&self, x: &[f32], q: &ActQuant) -> Vec<u8> {
        let d = self.gamma.len();
        let r = Quant::new(q);
        let mut out = pool::u8s(x.len());
        zip_chunks(&mut out, d * ROWS_PER_TASK, x, d * ROWS_PER_TASK, |o, x| {
            #[cfg(target_arch = "x86_64")]
            if simd::available() {
                for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                    // Safety: `available()` checked the CPU features.
                    unsafe { self.row_u8_avx512(x, &r, o) };
                }
                return;
            }
            // The scalar fallback normalises into a scratch row, then quantizes it.
            let mut row = vec![0f32; d];
            for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                self.row(x, &mut row);
                for (o, &v) in o.iter_mut().zip(&row) {
                    *o = r.code(v);
                }
            }
        });
        out
    }

    /// # Safety
    /// [`simd::available`] must hold.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn row_avx512(&self, x: &[f32], out: &mut [f32]) {
        simd::x86::layer_norm_row(x, &self.gamma, &self.beta, self.eps, |i, m, y| {
            // Safety: `i` is a chunk start inside the row and the mask covers the chunk.
            unsafe { std::arch::x86_64::_mm512_mask_storeu_ps(out.as_mut_ptr().add(i), m, y) }
        });
    }

    /// # Safety
    /// [`simd::available`] must hold.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn row_u8_avx512(&self, x: &[f32], q: &simd::Quant, out: &mut [u8]) {
        simd::x86::layer_norm_row(x, &self.gamma, &self.beta, self.eps, |i, m, y| {
            // Safety: `i` is a chunk start inside the row and the mask covers the chunk.
            unsafe { simd::x86::store_u8(out.as_mut_ptr().add(i), m, simd::x86::quantize16(y, q)) }
        });
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
/// on the calling thread (the attention's tasks are already one per head).
pub(crate) fn softmax_rows_here(rows: &mut [f32], len: usize) {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        for row in rows.chunks_exact_mut(len) {
            // Safety: `available()` checked the CPU features.
            unsafe { simd::x86::softmax_row(row) };
        }
        return;
    }
    {
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
    }
}

/// Exact (erf) GELU in place: burn-flex's formula, with a polynomial `erf` where AVX-512 runs.
pub(crate) fn gelu(x: &mut [f32]) {
    x.par_chunks_mut(1 << 13).for_each(|c| {
        #[cfg(target_arch = "x86_64")]
        if simd::available() {
            // Safety: `available()` checked the CPU features.
            return unsafe { simd::x86::gelu(c) };
        }
        for v in c {
            *v = gelu_one(*v);
        }
    });
}

use mixq_quant_kernels::vmath::gelu as gelu_one;

/// `x += y` element-wise (residual connections).
pub(crate) fn add_in_place(x: &mut [f32], y: &[f32]) {
    zip_chunks(x, 1 << 14, y, 1 << 14, |x, y| {
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

    /// `n` deterministic values spread over `[lo, hi)` (a golden-ratio sequence from `seed`).
    fn values(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
        const PHI: f64 = 0.618_033_988_749_895;
        (0..n)
            .map(|i| lo + (hi - lo) * ((seed as f64 + i as f64) * PHI).fract() as f32)
            .collect()
    }

    /// The fused paths against the scalar formulas (libm `erff`, sequential sums): the same
    /// code almost everywhere, never more than one step apart.
    #[test]
    fn fused_norm_gelu_and_softmax_match_the_scalar_path() {
        let q = ActQuant::new(0.02, 128, BitWidth::new(8).unwrap()).unwrap();
        let r = Quant::new(&q);
        let compare = |got: &[u8], want: &[u8], what: &str| {
            let off = got.iter().zip(want).filter(|(a, b)| a != b).count();
            let far = got.iter().zip(want).any(|(&a, &b)| a.abs_diff(b) > 1);
            assert!(
                !far && off * 1000 <= got.len(),
                "{what}: {off} of {} codes differ",
                got.len()
            );
        };
        let d = 384;
        let x = values(64 * d, -3.0, 3.0, 9);
        let norm = Norm {
            gamma: values(d, 0.5, 1.5, 10),
            beta: values(d, -0.2, 0.2, 11),
            eps: 1e-6,
        };
        let mut want = vec![0u8; x.len()];
        let mut row = vec![0f32; d];
        for (xs, o) in x.chunks(d).zip(want.chunks_mut(d)) {
            norm.row(xs, &mut row);
            for (o, &v) in o.iter_mut().zip(&row) {
                *o = r.code(v);
            }
        }
        compare(&norm.forward_u8(&x, &q), &want, "LayerNorm");
        let want: Vec<u8> = x.iter().map(|&v| r.code(gelu_one(v))).collect();
        compare(&gelu_u8(&q, &x), &want, "GELU");
        let mut got = values(50 * 197, -20.0, 5.0, 12);
        let mut want = got.clone();
        softmax_rows_here(&mut got, 197);
        for row in want.chunks_mut(197) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row
                .iter_mut()
                .map(|v| {
                    *v = (*v - max).exp();
                    *v
                })
                .sum();
            row.iter_mut().for_each(|v| *v /= sum);
        }
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-6 * w.max(1e-30) + 1e-12,
                "softmax {g} vs {w}"
            );
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
                    assert!(
                        fast.octaves.is_some(),
                        "per-octave formula for {bits} bits {base:?}"
                    );
                    // Level values by scaling, at least over the normal levels of 4 bits.
                    assert!(
                        fast.scaled_upto
                            .is_some_and(|k| k as usize >= (1usize << bits).min(16) - 1),
                        "scaled levels for {bits} bits {base:?}: {:?}",
                        fast.scaled_upto
                    );
                    // Exactly on the thresholds and one ulp around them, too.
                    let mut all = xs.clone();
                    for &t in &fast.thresholds[..fast.thresholds.len() - 1] {
                        let x = t * scale;
                        all.extend([x, x.next_up(), x.next_down()]);
                    }
                    let want = q.fake_quant_host(&all);
                    let mut sliced = all.clone();
                    fast.fake_quant_slice(&mut sliced);
                    for ((x, w), s) in all.iter().zip(&want).zip(&sliced) {
                        assert_eq!(s.to_bits(), w.to_bits(), "slice: x = {x:e}, {bits} bits");
                    }
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
