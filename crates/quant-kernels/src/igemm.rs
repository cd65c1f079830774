//! Integer GEMM for CPU inference: `u8` activations × packed 2–8-bit weights → exact `i32`
//! accumulators → `f32` (dequantize) or `u8` (requantize) outputs.
//!
//! # Math
//!
//! Activations `A[M, K]` carry one scale `s_a` and zero point `z_a` ([`ActQuant`]); weights
//! `W[N, K]` ([`PackedWeights`]) carry `s_w[n]`, `z_w[n]`. The exact integer accumulator is
//!
//! ```text
//! acc[m, n] = Σ_k (a[m, k] − z_a) · (q[n, k] − z_w[n])
//! ```
//!
//! and the epilogues are `y = acc as f32 · (s_a · s_w[n]) + bias[n]` (that operation order,
//! no fused multiply-add) and, for `u8` outputs, `clamp(round_half_even(y / s_o) + z_o, qmin,
//! qmax)` — [`UniformQuantizer`]'s math on `y`.
//!
//! # How it is computed
//!
//! On CPUs with AVX-512 VNNI, every container (and attention's `u8 × u8` products) runs this
//! crate's own kernel (`igemm/vnni.rs`): weights re-laid once into 64-channel panels (8-bit
//! ones centred to `i8`, 4- and 2-bit ones as nibbles unpacked in registers), a
//! 6 × 64 tile of `vpdpbusd` accumulators, and the zero-point terms and the dequantize /
//! requantize epilogue applied while the accumulators are still in registers. Everything else
//! runs [rten-gemm](https://docs.rs/rten-gemm)'s `u8 × i8 → i32` kernel (AVX-512 VNNI,
//! AVX-512BW or AVX2 chosen at run time) and a separate epilogue pass, both parallel over
//! rayon's pool. Codes are fed to rten **centred**: `w_s = q − 2^(b−1)` (an `i8`), with the
//! zero point shifted the same way (`z_s = z_w − 2^(b−1)`), and rten is given no zero points.
//! The zero-point terms are applied in `i32` with wrapping arithmetic (the true result fits in
//! `i32`, see [`MAX_IN_FEATURES`], so the wrapped result is exact):
//!
//! ```text
//! acc = Σ a·w_s − z_a · colsum(w_s)[n] − z_s[n] · rowsum(a)[m] + K · z_a · z_s[n]
//! ```
//!
//! Centring keeps `|w_s| ≤ 64` for 2–7-bit weights, so the pairwise `i16` sums of AVX2's
//! saturating `vpmaddubsw` (`2 · 255 · 64 = 32640`) cannot saturate. 8-bit weights (and
//! `u8 × u8` attention products) can, so on a machine whose kernel [may
//! saturate](IntGemm::may_saturate) (no VNNI) they take the exact portable kernel instead.
//!
//! * 8-bit containers off the own kernel are centred and pre-packed into rten's panel layout
//!   once, by [`IntGemm::prepare`].
//! * 4- and 2-bit containers off the own kernel stay bit-packed; each call unpacks
//!   them (SSE2 nibble/crumb shuffles) into a per-thread `i8` scratch and runs rten's `i8`
//!   kernel. Unpacking costs `N·K` byte operations against `2·M·N·K` GEMM operations.
//!
//! Every path produces the same `i32` accumulators as [`reference::gemm_i32`], and the
//! epilogues compute one formula with the same `f32` operations (the own kernel's SIMD
//! epilogue and the scalar one agree bit for bit), so all backends agree bit for bit.

use std::cell::RefCell;

use mixq_core::{BitWidth, Error, Result};
use rayon::prelude::*;
use rten_gemm::{GemmExecutor, GemmInputA, GemmInputB, GemmOptions, PackedBMatrix};
use rten_tensor::Matrix;

use crate::packing::{MAX_IN_FEATURES, PackedWeights};
use crate::uniform::{Granularity, UniformQuantizer};

/// Per-tensor `u8` activation quantization: `q = clamp(round(x / s) + z, qmin, qmax)`.
///
/// Symmetric quantizers (codes `[−m, m]`, `z = 0`) are stored shifted by `2^(b−1)`, so every
/// code is a `u8` and [`ActQuant::dequantize`] gives the same values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActQuant {
    scale: f32,
    zero_point: i32,
    qmin: i32,
    qmax: i32,
}

impl ActQuant {
    /// An asymmetric `bits`-bit quantizer with codes `[0, 2^bits − 1]`.
    pub fn new(scale: f32, zero_point: i32, bits: BitWidth) -> Result<Self> {
        Self::with_code_range(scale, zero_point, 0, (1 << bits.get()) - 1)
    }

    fn with_code_range(scale: f32, zero_point: i32, qmin: i32, qmax: i32) -> Result<Self> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::invalid(
                "scale",
                scale,
                "must be finite and positive",
            ));
        }
        if !(qmin..=qmax).contains(&zero_point) {
            return Err(Error::invalid(
                "zero_point",
                zero_point,
                format!("must be in [{qmin}, {qmax}]"),
            ));
        }
        Ok(ActQuant {
            scale,
            zero_point,
            qmin,
            qmax,
        })
    }

    /// From a calibrated per-tensor [`UniformQuantizer`] (asymmetric, or symmetric shifted by
    /// `2^(b−1)`); [`ActQuant::quantize`] then equals its `quantize_host` (plus the shift).
    pub fn from_quantizer(q: &UniformQuantizer) -> Result<Self> {
        if q.granularity() != Granularity::PerTensor {
            return Err(Error::invalid(
                "granularity",
                format!("{:?}", q.granularity()),
                "integer GEMM activations need one step per tensor",
            ));
        }
        let shift = if q.is_symmetric() {
            1 << (q.bits().get() - 1)
        } else {
            0
        };
        Self::with_code_range(
            q.scales()[0],
            q.zero_points()[0] as i32 + shift,
            q.qmin() + shift,
            q.qmax() + shift,
        )
    }

    /// An asymmetric quantizer for the range `[lo, hi]` (widened to contain 0).
    pub fn from_range(lo: f32, hi: f32, bits: BitWidth) -> Result<Self> {
        let q = UniformQuantizer::from_range(bits, false, Granularity::PerTensor, &[lo], &[hi])?;
        Self::from_quantizer(&q)
    }

    /// The step size of one integer level.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The integer that represents 0.0.
    pub fn zero_point(&self) -> i32 {
        self.zero_point
    }

    /// `(qmin, qmax)`, within `[0, 255]`.
    pub fn code_range(&self) -> (i32, i32) {
        (self.qmin, self.qmax)
    }

    /// The code of one value (NaN maps to `qmin`).
    #[inline]
    pub fn quantize_one(&self, x: f32) -> u8 {
        let c = ((x / self.scale).round_ties_even() + self.zero_point as f32)
            .clamp(self.qmin as f32, self.qmax as f32);
        if c.is_nan() { self.qmin as u8 } else { c as u8 }
    }

    /// Quantizes `x` into `out` (same length).
    pub fn quantize(&self, x: &[f32], out: &mut [u8]) -> Result<()> {
        if x.len() != out.len() {
            return Err(Error::invalid(
                "out",
                format!("{} values", out.len()),
                format!("need one per input ({})", x.len()),
            ));
        }
        const CHUNK: usize = 1 << 14;
        let work = |(xs, os): (&[f32], &mut [u8])| {
            for (o, &v) in os.iter_mut().zip(xs) {
                *o = self.quantize_one(v);
            }
        };
        if x.len() >= 2 * CHUNK {
            x.par_chunks(CHUNK)
                .zip(out.par_chunks_mut(CHUNK))
                .for_each(work);
        } else {
            work((x, out));
        }
        Ok(())
    }

    /// Quantizes `x` into a new vector.
    pub fn quantize_vec(&self, x: &[f32]) -> Vec<u8> {
        let mut out = vec![0; x.len()];
        self.quantize(x, &mut out).expect("lengths match");
        out
    }

    /// `(q − z) · s`.
    pub fn dequantize(&self, q: u8) -> f32 {
        (f32::from(q) - self.zero_point as f32) * self.scale
    }
}

/// Which kernel computes the `i32` dot products. Every backend gives identical results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// On CPUs with AVX-512 VNNI, this crate's fused kernel for 8- and 4-bit containers and
    /// for attention's `u8 × u8` products; otherwise as [`Backend::Rten`].
    #[default]
    Auto,
    /// rten-gemm's best kernel for this CPU (4/2-bit containers unpacked to `i8` per call)
    /// and a separate epilogue pass; the portable kernel where rten could saturate.
    Rten,
    /// Plain Rust loops over `u8 × i8` (auto-vectorised, rayon over rows). Exact everywhere.
    Portable,
}

/// Weights ready for [`IntGemm`]: the packed codes, per-channel parameters and the
/// pre-computed zero-point terms (and, for 8-bit containers, rten's pre-packed panels).
pub struct PreparedWeights {
    packed: PackedWeights,
    /// `2^(b−1)`: what is subtracted from every code to centre it.
    offset: i32,
    /// `Σ_k (q[n, k] − offset)`.
    col_sums: Vec<i32>,
    /// `z_w[n] − offset`.
    zero_shifted: Vec<i32>,
    /// rten's panels, for 8-bit containers on the rten backend.
    prepacked: Option<PackedBMatrix<i8>>,
    /// Panels of this crate's VNNI kernel (see [`IntGemm::uses_own_vnni`]).
    vnni: Option<Vec<u8>>,
}

impl std::fmt::Debug for PreparedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedWeights")
            .field("out_features", &self.packed.out_features())
            .field("in_features", &self.packed.in_features())
            .field("bits", &self.packed.bits().get())
            .field("prepacked", &self.prepacked.is_some())
            .field("vnni", &self.vnni.is_some())
            .finish()
    }
}

impl PreparedWeights {
    /// The packed integer weights.
    pub fn packed(&self) -> &PackedWeights {
        &self.packed
    }

    /// Output features (rows of the weight matrix).
    pub fn out_features(&self) -> usize {
        self.packed.out_features()
    }

    /// Input features (columns of the weight matrix).
    pub fn in_features(&self) -> usize {
        self.packed.in_features()
    }
}

thread_local! {
    /// rten's executor is `!Send` (a boxed kernel); one per thread keeps [`IntGemm`] `Send`.
    static EXEC: GemmExecutor<u8, i8, i32> = GemmExecutor::default();
    /// Per-thread scratch for unpacked / centred `i8` right-hand sides.
    static SCRATCH: RefCell<Vec<i8>> = const { RefCell::new(Vec::new()) };
}

/// The integer GEMM engine. Cheap to create and copy; see the module docs for the math.
///
/// ```
/// use mixq_core::BitWidth;
/// use mixq_quant_kernels::igemm::{ActQuant, IntGemm};
/// use mixq_quant_kernels::packing::PackedWeights;
///
/// // A 3-output, 4-input linear layer with 4-bit per-channel weights.
/// let w = [0.5f32, -1.0, 0.25, 2.0, 0.1, 0.2, -0.3, 0.05, 1.0, 1.0, -1.0, 0.0];
/// let bias = [0.0f32, 1.0, -1.0];
/// let packed = PackedWeights::quantize_minmax(&w, 3, 4, BitWidth::new(4)?)?;
/// let gemm = IntGemm::new();
/// let weights = gemm.prepare(packed)?;
///
/// // Two tokens of u8 activations.
/// let x = [1.0f32, 0.5, -0.5, 0.25, 0.0, -1.0, 1.0, 2.0];
/// let aq = ActQuant::from_range(-1.0, 2.0, BitWidth::new(8)?)?;
/// let a = aq.quantize_vec(&x);
/// let mut y = vec![0f32; 2 * 3];
/// gemm.gemm_f32(&a, 2, aq, &weights, Some(&bias), &mut y)?;
///
/// let exact: Vec<f32> = (0..6)
///     .map(|i| (0..4).map(|k| x[i / 3 * 4 + k] * w[i % 3 * 4 + k]).sum::<f32>() + bias[i % 3])
///     .collect();
/// for (got, want) in y.iter().zip(&exact) {
///     assert!((got - want).abs() < 0.2, "{got} vs {want}");
/// }
/// # Ok::<(), mixq_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct IntGemm {
    backend: Backend,
}

/// How the right-hand side of a `u8 × u8` product is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RhsLayout {
    /// `[N, K]`, K contiguous (keys in `Q · Kᵀ`, weights).
    NK,
    /// `[K, N]`, N contiguous (values in `P · V`).
    KN,
}

/// A centred `i8` right-hand side in some storage, plus its zero-point terms.
struct Rhs<'a> {
    n: usize,
    k: usize,
    src: RhsSrc<'a>,
    col_sums: &'a [i32],
    zero_shifted: &'a [i32],
    /// Per-column `s_w` (length `n`) or one shared scale (length 1).
    scales: &'a [f32],
}

enum RhsSrc<'a> {
    Prepacked(&'a PackedBMatrix<i8>),
    /// [`vnni`] panels, container bits and the code offset.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Vnni(&'a [u8], u32, i32),
    /// Centred `i8` values with `(row stride, column stride)` of the `[K, N]` view.
    Slice(&'a [i8], [usize; 2]),
}

impl IntGemm {
    /// The default engine ([`Backend::Auto`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A GEMM that always uses `backend` (for benchmarks and cross-checks).
    pub fn with_backend(backend: Backend) -> Self {
        IntGemm { backend }
    }

    /// The kernel family this GEMM runs.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The kernels in use, e.g. `mixq-vnni-6x64 (8/4-bit), rten x86_64-u8i8i32-avx512` or
    /// `portable`.
    pub fn kernel_name(&self) -> String {
        let rten = || EXEC.with(|e| e.kernel_name().to_string());
        match self.backend {
            Backend::Portable => "portable".into(),
            Backend::Auto if vnni_available() => format!("mixq-vnni-6x64, rten {}", rten()),
            Backend::Auto | Backend::Rten => rten(),
        }
    }

    /// Whether `bits`-wide weights run on this crate's VNNI kernel.
    pub fn uses_own_vnni(&self, bits: BitWidth) -> bool {
        self.own_for(crate::packing::container_bits(bits))
    }

    fn own_for(&self, container: u32) -> bool {
        self.backend == Backend::Auto && matches!(container, 2 | 4 | 8) && vnni_available()
    }

    /// Whether rten's kernel can saturate intermediate `i16` sums (AVX2 without VNNI). When it
    /// can, 8-bit right-hand sides use the portable kernel (see the module docs).
    pub fn may_saturate(&self) -> bool {
        EXEC.with(|e| e.may_saturate())
    }

    /// Whether an `i8` right-hand side with codes centred from `bits` bits runs on rten.
    fn use_rten(&self, bits: u8) -> bool {
        self.backend != Backend::Portable && !(bits == 8 && self.may_saturate())
    }

    /// Pre-computes the zero-point terms (and rten's panels for 8-bit containers).
    pub fn prepare(&self, packed: PackedWeights) -> Result<PreparedWeights> {
        let (n, k) = (packed.out_features(), packed.in_features());
        let offset = 1i32 << (packed.bits().get() - 1);
        let centred = centred_codes(&packed, offset);
        let col_sums = centred
            .chunks_exact(k)
            .map(|r| r.iter().map(|&v| i32::from(v)).sum())
            .collect();
        let zero_shifted = packed.zero_points().iter().map(|z| z - offset).collect();
        let own = self.own_for(packed.container_bits());
        let prepacked =
            if packed.container_bits() == 8 && !own && self.use_rten(packed.bits().get()) {
                let view = Matrix::from_data_with_strides([k, n], centred.as_slice(), [1, k])
                    .map_err(|e| Error::invalid("weights", format!("[{n}, {k}]"), e.to_string()))?;
                Some(EXEC.with(|e| e.prepack_b(view)))
            } else {
                None
            };
        let vnni = if own {
            build_vnni(&packed, offset as u8)
        } else {
            None
        };
        Ok(PreparedWeights {
            packed,
            offset,
            col_sums,
            zero_shifted,
            prepacked,
            vnni,
        })
    }

    /// Exact accumulators `acc[m, n] = Σ_k (a[m, k] − z_a)(q[n, k] − z_w[n])` into
    /// `out[M · N]` (row-major); `a` is `[M, K]` row-major, `M = a.len() / K`.
    pub fn gemm_i32(
        &self,
        a: &[u8],
        m: usize,
        a_zero_point: i32,
        w: &PreparedWeights,
        out: &mut [i32],
    ) -> Result<()> {
        self.with_weights(a, m, w, |rhs| {
            self.run(a, m, a_zero_point, &rhs, out, Epi::Raw)
        })
    }

    /// Dequantizing linear layer: `out[m, n] = acc · (s_a · s_w[n]) + bias[n]`.
    pub fn gemm_f32(
        &self,
        a: &[u8],
        m: usize,
        a_quant: ActQuant,
        w: &PreparedWeights,
        bias: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<()> {
        check_bias(bias, w.out_features())?;
        self.with_weights(a, m, w, |rhs| {
            let epi = Epi::Dequant {
                sa: a_quant.scale,
                bias,
            };
            self.run(a, m, a_quant.zero_point, &rhs, out, epi)
        })
    }

    /// Requantizing linear layer: the [`IntGemm::gemm_f32`] value, quantized with `out_quant`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_u8(
        &self,
        a: &[u8],
        m: usize,
        a_quant: ActQuant,
        w: &PreparedWeights,
        bias: Option<&[f32]>,
        out_quant: ActQuant,
        out: &mut [u8],
    ) -> Result<()> {
        self.requantize(a, m, a_quant, w, bias, out_quant, false, out)
    }

    /// [`IntGemm::gemm_u8`] and [`IntGemm::gemm_gelu_u8`].
    #[allow(clippy::too_many_arguments)]
    fn requantize(
        &self,
        a: &[u8],
        m: usize,
        a_quant: ActQuant,
        w: &PreparedWeights,
        bias: Option<&[f32]>,
        out_quant: ActQuant,
        gelu: bool,
        out: &mut [u8],
    ) -> Result<()> {
        check_bias(bias, w.out_features())?;
        self.with_weights(a, m, w, |rhs| {
            let (sa, o) = (a_quant.scale, out_quant);
            let epi = if gelu {
                Epi::GeluRequant { sa, bias, out: o }
            } else {
                Epi::Requant { sa, bias, out: o }
            };
            self.run(a, m, a_quant.zero_point, &rhs, out, epi)
        })
    }

    /// Linear layer, GELU and requantization in one pass: `out_quant(GELU(acc · (s_a · s_w[n]) +
    /// bias[n]))` — a transformer MLP's first linear writing the second one's input codes, with
    /// no `f32` activation in memory. GELU is [`crate::vmath`]'s: the AVX-512 polynomial on the
    /// own kernel (within 1e-6 of `erf`, so a code can differ by one step from the scalar
    /// libm-based GELU of the other backends), libm elsewhere.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_gelu_u8(
        &self,
        a: &[u8],
        m: usize,
        a_quant: ActQuant,
        w: &PreparedWeights,
        bias: Option<&[f32]>,
        out_quant: ActQuant,
        out: &mut [u8],
    ) -> Result<()> {
        self.requantize(a, m, a_quant, w, bias, out_quant, true, out)
    }

    /// `u8 × u8` product of two per-tensor quantized activations (attention's `Q · Kᵀ` with
    /// `b_layout = NK`, `P · V` with `KN`), dequantized: `acc · (s_a · s_b)`.
    /// `a` is `[M, K]`, `b` is `[N, K]` or `[K, N]`, `out` is `[M, N]`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_u8u8_f32(
        &self,
        a: &[u8],
        m: usize,
        a_quant: ActQuant,
        b: &[u8],
        n: usize,
        b_quant: ActQuant,
        b_layout: RhsLayout,
        out: &mut [f32],
    ) -> Result<()> {
        if n == 0 || b.is_empty() || !b.len().is_multiple_of(n) {
            return Err(Error::invalid(
                "b",
                format!("{} values", b.len()),
                format!("need a positive multiple of n = {n}"),
            ));
        }
        let k = b.len() / n;
        check_k(k)?;
        check_a(a, m, k)?;
        // Centre by 128: `b − 128` is `b ^ 0x80` read as `i8`.
        let centred: Vec<i8> = b.iter().map(|&v| (v ^ 0x80) as i8).collect();
        let mut col_sums = vec![0i32; n];
        match b_layout {
            RhsLayout::NK => {
                for (s, row) in col_sums.iter_mut().zip(centred.chunks_exact(k)) {
                    *s = row.iter().map(|&v| i32::from(v)).sum();
                }
            }
            RhsLayout::KN => {
                for row in centred.chunks_exact(n) {
                    for (s, &v) in col_sums.iter_mut().zip(row) {
                        *s += i32::from(v);
                    }
                }
            }
        }
        let zero_shifted = vec![b_quant.zero_point - 128; n];
        let strides = match b_layout {
            RhsLayout::NK => [1, k],
            RhsLayout::KN => [n, 1],
        };
        let scales = [b_quant.scale];
        let own_panels;
        let src = if self.own_for(8) {
            own_panels = build_vnni_i8(&centred, n, k, strides);
            RhsSrc::Vnni(&own_panels, 8, 0)
        } else {
            RhsSrc::Slice(&centred, strides)
        };
        let rhs = Rhs {
            n,
            k,
            src,
            col_sums: &col_sums,
            zero_shifted: &zero_shifted,
            scales: &scales,
        };
        let portable = !self.use_rten(8);
        let this = if portable {
            IntGemm::with_backend(Backend::Portable)
        } else {
            *self
        };
        let epi = Epi::Dequant {
            sa: a_quant.scale,
            bias: None,
        };
        this.run(a, m, a_quant.zero_point, &rhs, out, epi)
    }

    /// Validates `a` against `w` and hands a view of the weights to `f`.
    fn with_weights<R>(
        &self,
        a: &[u8],
        m: usize,
        w: &PreparedWeights,
        f: impl FnOnce(Rhs<'_>) -> Result<R>,
    ) -> Result<R> {
        let (n, k) = (w.out_features(), w.in_features());
        check_a(a, m, k)?;
        let rhs = |src| Rhs {
            n,
            k,
            src,
            col_sums: &w.col_sums,
            zero_shifted: &w.zero_shifted,
            scales: w.packed.scales(),
        };
        let container = w.packed.container_bits();
        if let Some(p) = &w.vnni
            && self.own_for(container)
        {
            let panel = if container == 8 { 8 } else { 4 };
            return f(rhs(RhsSrc::Vnni(p, panel, w.offset)));
        }
        if let Some(p) = &w.prepacked
            && self.use_rten(w.packed.bits().get())
        {
            return f(rhs(RhsSrc::Prepacked(p)));
        }
        // Unpack (4/2-bit) or centre (8-bit without prepacked panels) into the scratch.
        let mut scratch = SCRATCH.with(|s| s.take());
        scratch.resize(n * k, 0);
        unpack_centred(&w.packed, w.offset, &mut scratch);
        let r = f(rhs(RhsSrc::Slice(&scratch, [1, k])));
        SCRATCH.with(|s| s.replace(scratch));
        r
    }

    /// Raw dot products, zero-point correction and the epilogue into `out`.
    fn run<T: OutElem>(
        &self,
        a: &[u8],
        m: usize,
        a_zero: i32,
        rhs: &Rhs<'_>,
        out: &mut [T],
        epi: Epi<'_>,
    ) -> Result<()> {
        let (n, k) = (rhs.n, rhs.k);
        if out.len() != m * n {
            return Err(Error::invalid(
                "out",
                format!("{} values", out.len()),
                format!("need M * N = {m} * {n}"),
            ));
        }
        if m == 0 {
            return Ok(());
        }
        let scale_of = |j: usize| rhs.scales[if rhs.scales.len() == 1 { 0 } else { j }];
        #[cfg(target_arch = "x86_64")]
        if let RhsSrc::Vnni(p, container, offset) = rhs.src {
            // 4-bit panels hold raw codes: fold the centring offset back into the terms.
            let shift = if container == 4 { offset } else { 0 };
            let padded = n.div_ceil(vnni::NR) * vnni::NR;
            let mut col_const = vec![0i32; padded];
            let mut zero = vec![0i32; padded];
            for j in 0..n {
                let z = rhs.zero_shifted[j] + shift;
                let col_sum = rhs.col_sums[j].wrapping_add((k as i32).wrapping_mul(shift));
                zero[j] = z;
                col_const[j] = zero_point_const(k, a_zero, z, col_sum);
            }
            let needs_rows = zero.iter().any(|&z| z != 0);
            let row_sums: Vec<i32> = if needs_rows {
                row_sums(a, k)
            } else {
                Vec::new()
            };
            let (mut scale, mut bias) = (vec![0f32; padded], vec![0f32; padded]);
            let (sa, b, kind) = match epi {
                Epi::Raw => (1.0, None, vnni::OutKind::I32),
                Epi::Dequant { sa, bias } => (sa, bias, vnni::OutKind::F32),
                Epi::Requant { sa, bias, out } | Epi::GeluRequant { sa, bias, out } => {
                    let (lo, hi) = out.code_range();
                    let (s, z, lo, hi) = (out.scale, out.zero_point as f32, lo as f32, hi as f32);
                    let kind = if matches!(epi, Epi::Requant { .. }) {
                        vnni::OutKind::U8 { s, z, lo, hi }
                    } else {
                        vnni::OutKind::GeluU8 { s, z, lo, hi }
                    };
                    (sa, bias, kind)
                }
            };
            for j in 0..n {
                scale[j] = sa * scale_of(j);
                bias[j] = b.map_or(0.0, |b| b[j]);
            }
            let ep = vnni::Epilogue {
                col_const: &col_const,
                zero: needs_rows.then_some(zero.as_slice()),
                row_sums: &row_sums,
                scale: &scale,
                bias: &bias,
                out: kind,
            };
            vnni::gemm(a, m, k, n, p, container, &ep, out);
            return Ok(());
        }
        let mut raw = vec![0i32; m * n];
        let use_rten = self.backend != Backend::Portable;
        match (&rhs.src, use_rten) {
            (RhsSrc::Vnni(..), _) => unreachable!("VNNI panels are handled above"),
            (RhsSrc::Prepacked(p), _) => {
                let av = Matrix::from_data([m, k], a);
                rten_gemm(&mut raw, av, GemmInputB::Packed(p))?;
            }
            (RhsSrc::Slice(b, strides), true) => {
                let av = Matrix::from_data([m, k], a);
                let bv = Matrix::from_data_with_strides([k, n], *b, *strides)
                    .map_err(|e| Error::invalid("rhs", format!("[{k}, {n}]"), e.to_string()))?;
                rten_gemm(&mut raw, av, GemmInputB::Unpacked(bv))?;
            }
            (RhsSrc::Slice(b, strides), false) => portable_gemm(a, k, b, n, *strides, &mut raw),
        }
        let col_const: Vec<i32> = (0..n)
            .map(|j| zero_point_const(k, a_zero, rhs.zero_shifted[j], rhs.col_sums[j]))
            .collect();
        let epilogue = |acc: i32, j: usize| -> T {
            match epi {
                Epi::Raw => T::from_i32(acc),
                Epi::Dequant { sa, bias } => {
                    T::from_f32(dequant(acc, sa * scale_of(j), bias.map_or(0.0, |b| b[j])))
                }
                Epi::Requant { sa, bias, out } => T::from_u8(out.quantize_one(dequant(
                    acc,
                    sa * scale_of(j),
                    bias.map_or(0.0, |b| b[j]),
                ))),
                Epi::GeluRequant { sa, bias, out } => T::from_u8(out.quantize_one(
                    crate::vmath::gelu(dequant(acc, sa * scale_of(j), bias.map_or(0.0, |b| b[j]))),
                )),
            }
        };
        let rows_per_task = (4096 / n).max(1);
        out.par_chunks_mut(rows_per_task * n)
            .zip(raw.par_chunks(rows_per_task * n))
            .zip(a.par_chunks(rows_per_task * k))
            .for_each(|((o, r), a_rows)| {
                for ((o_row, r_row), a_row) in o
                    .chunks_exact_mut(n)
                    .zip(r.chunks_exact(n))
                    .zip(a_rows.chunks_exact(k))
                {
                    let row_sum: i32 = a_row.iter().map(|&v| i32::from(v)).sum();
                    for (j, (o, &r)) in o_row.iter_mut().zip(r_row).enumerate() {
                        let acc = r
                            .wrapping_add(col_const[j])
                            .wrapping_sub(rhs.zero_shifted[j].wrapping_mul(row_sum));
                        *o = epilogue(acc, j);
                    }
                }
            });
        Ok(())
    }
}

/// What a GEMM call writes (see the module docs for the formulas).
#[derive(Clone, Copy)]
enum Epi<'a> {
    /// The corrected `i32` accumulators.
    Raw,
    /// `acc · (s_a · s_w[n]) + bias[n]`.
    Dequant { sa: f32, bias: Option<&'a [f32]> },
    /// The dequantized value quantized with `out`.
    Requant {
        sa: f32,
        bias: Option<&'a [f32]>,
        out: ActQuant,
    },
    /// GELU of the dequantized value, quantized with `out`.
    GeluRequant {
        sa: f32,
        bias: Option<&'a [f32]>,
        out: ActQuant,
    },
}

/// Output elements of the GEMM calls; each call site pairs the element with its epilogue
/// (`Raw` → `i32`, `Dequant` → `f32`, `Requant` → `u8`), so the other conversions are never
/// reached.
trait OutElem: Copy + Send + Sync + Default + 'static {
    /// 0, 1, 2 for `i32`, `f32`, `u8` (what the own kernel's epilogue stores).
    const KIND: u8;
    fn from_i32(_: i32) -> Self {
        unreachable!("this output has no i32 epilogue")
    }
    fn from_f32(_: f32) -> Self {
        unreachable!("this output has no f32 epilogue")
    }
    fn from_u8(_: u8) -> Self {
        unreachable!("this output has no u8 epilogue")
    }
}

impl OutElem for i32 {
    const KIND: u8 = 0;
    fn from_i32(v: i32) -> Self {
        v
    }
}

impl OutElem for f32 {
    const KIND: u8 = 1;
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl OutElem for u8 {
    const KIND: u8 = 2;
    fn from_u8(v: u8) -> Self {
        v
    }
}

/// `K · z_a · z − z_a · col_sum`, wrapping (see the module docs).
fn zero_point_const(k: usize, a_zero: i32, z: i32, col_sum: i32) -> i32 {
    (k as i32)
        .wrapping_mul(a_zero)
        .wrapping_mul(z)
        .wrapping_sub(a_zero.wrapping_mul(col_sum))
}

/// `Σ_k a[m, k]` for every row of `a` (`[M, K]`).
fn row_sums(a: &[u8], k: usize) -> Vec<i32> {
    let sum = |row: &[u8]| row.iter().map(|&v| v as u32).sum::<u32>() as i32;
    if a.len() >= 1 << 16 {
        a.par_chunks(k).map(sum).collect()
    } else {
        a.chunks(k).map(sum).collect()
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni;

/// `(M, K, N)` of DeiT-S's linears — qkv (384 → 1152), fc1 (384 → 1536), fc2 (1536 → 384) —
/// for one image (197 tokens) and a batch of 8: the shapes the GEMM benchmarks time.
pub const DEIT_S_SHAPES: [(usize, usize, usize); 6] = [
    (197, 384, 1152),
    (197, 384, 1536),
    (197, 1536, 384),
    (1576, 384, 1152),
    (1576, 384, 1536),
    (1576, 1536, 384),
];

/// The machine's measured `u8 × i8` peak in GOP/s on all rayon threads (a register-only
/// `vpdpbusd` loop, see `igemm/vnni.rs`), or `None` without AVX-512 VNNI. What the integer
/// GEMM's GOP/s are reported against.
pub fn measured_vnni_peak_gops() -> Option<f64> {
    if !vnni_available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // Warm up (clocks ramp), then take the best of three.
        vnni::measured_peak_gops(200_000);
        return Some(
            (0..3)
                .map(|_| vnni::measured_peak_gops(2_000_000))
                .fold(0.0, f64::max),
        );
    }
    #[allow(unreachable_code)]
    None
}

fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return vnni::available();
    #[allow(unreachable_code)]
    false
}

/// Own-kernel panels of a centred `i8` right-hand side `[K, N]` with `strides`.
fn build_vnni_i8(b: &[i8], n: usize, k: usize, strides: [usize; 2]) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    return vnni::build_panels_i8(b, n, k, strides);
    #[allow(unreachable_code)]
    {
        let _ = (b, n, k, strides);
        unreachable!("the own kernel is only used on x86-64")
    }
}

fn build_vnni(w: &PackedWeights, offset: u8) -> Option<Vec<u8>> {
    #[cfg(target_arch = "x86_64")]
    return Some(vnni::build_panels(w, offset));
    #[allow(unreachable_code)]
    {
        let _ = (w, offset);
        None
    }
}

/// `acc · scale + bias`, in that order (no FMA), the one dequantization formula.
#[inline]
fn dequant(acc: i32, scale: f32, bias: f32) -> f32 {
    acc as f32 * scale + bias
}

fn rten_gemm(raw: &mut [i32], a: Matrix<'_, u8>, b: GemmInputB<'_, i8>) -> Result<()> {
    EXEC.with(|e| e.gemm(raw, GemmInputA::Unpacked(a), b, GemmOptions::default()))
        .map_err(|e| Error::invalid("gemm", "rten-gemm", e.to_string()))
}

/// Exact `Σ_k a[m, k] · b[k, n]` with plain loops; rayon over row blocks.
fn portable_gemm(a: &[u8], k: usize, b: &[i8], n: usize, strides: [usize; 2], raw: &mut [i32]) {
    // Make B `[N, K]` (K contiguous) so each output is one contiguous dot product.
    let owned;
    let bt: &[i8] = if strides == [1, k] {
        b
    } else {
        let mut t = vec![0i8; n * k];
        for kk in 0..k {
            for j in 0..n {
                t[j * k + kk] = b[kk * strides[0] + j * strides[1]];
            }
        }
        owned = t;
        &owned
    };
    raw.par_chunks_mut(n)
        .zip(a.par_chunks(k))
        .for_each(|(r_row, a_row)| {
            for (r, b_row) in r_row.iter_mut().zip(bt.chunks_exact(k)) {
                *r = dot_u8_i8(a_row, b_row);
            }
        });
}

#[inline]
fn dot_u8_i8(a: &[u8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

fn check_k(k: usize) -> Result<()> {
    if k > MAX_IN_FEATURES {
        return Err(Error::invalid(
            "K",
            k,
            format!("must be at most {MAX_IN_FEATURES} for exact i32 accumulation"),
        ));
    }
    Ok(())
}

fn check_a(a: &[u8], m: usize, k: usize) -> Result<()> {
    if a.len() != m * k {
        return Err(Error::invalid(
            "activations",
            format!("{} values", a.len()),
            format!("need M * K = {m} * {k}"),
        ));
    }
    Ok(())
}

fn check_bias(bias: Option<&[f32]>, n: usize) -> Result<()> {
    match bias {
        Some(b) if b.len() != n => Err(Error::invalid(
            "bias",
            format!("{} values", b.len()),
            format!("need one per output channel ({n})"),
        )),
        _ => Ok(()),
    }
}

/// All codes of `w` minus `offset`, as `i8`, row-major `[N, K]`.
fn centred_codes(w: &PackedWeights, offset: i32) -> Vec<i8> {
    let mut out = vec![0i8; w.out_features() * w.in_features()];
    unpack_centred(w, offset, &mut out);
    out
}

/// Unpacks every row of `w` into `out` (`[N, K]`), subtracting `offset` from each code.
fn unpack_centred(w: &PackedWeights, offset: i32, out: &mut [i8]) {
    let (k, rb) = (w.in_features(), w.row_bytes());
    let container = w.container_bits();
    let offset = offset as u8;
    let work = |(src, dst): (&[u8], &mut [i8])| {
        // Safety of the cast: i8 and u8 have the same size and alignment, every bit pattern is
        // valid for both.
        let dst: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), dst.len()) };
        unpack_codes_offset(src, container, offset, dst);
    };
    if out.len() >= 1 << 16 {
        w.data()
            .par_chunks(rb)
            .zip(out.par_chunks_mut(k))
            .for_each(work);
    } else {
        w.data().chunks(rb).zip(out.chunks_mut(k)).for_each(work);
    }
}

/// Unpacks `out.len()` codes of `container` bits from `src` (see [`crate::packing`]).
pub fn unpack_codes(src: &[u8], container: u32, out: &mut [u8]) {
    unpack_codes_offset(src, container, 0, out)
}

/// [`unpack_codes`] with `offset` subtracted (wrapping) from each code: the SIMD path where the
/// CPU has one, the scalar twin otherwise. Both give identical bytes.
pub fn unpack_codes_offset(src: &[u8], container: u32, offset: u8, out: &mut [u8]) {
    let per = 8 / container as usize;
    assert!(src.len() * per >= out.len(), "source too short");
    #[cfg(target_arch = "x86_64")]
    {
        let done = match container {
            // Safety: SSE2 is part of the x86-64 baseline; the helpers only touch whole
            // 16-byte blocks of `src` and 16·per-byte blocks of `out` inside the slices.
            4 => unsafe { x86::unpack4_sse2(src, offset, out) },
            2 => unsafe { x86::unpack2_sse2(src, offset, out) },
            _ => 0,
        };
        return unpack_codes_scalar(&src[done / per..], container, offset, &mut out[done..]);
    }
    #[allow(unreachable_code)]
    unpack_codes_scalar(src, container, offset, out)
}

/// The scalar reference of [`unpack_codes_offset`].
pub fn unpack_codes_scalar(src: &[u8], container: u32, offset: u8, out: &mut [u8]) {
    let c = container as usize;
    let per = 8 / c;
    let mask = ((1u16 << c) - 1) as u8;
    for (i, o) in out.iter_mut().enumerate() {
        let q = (src[i / per] >> (c * (i % per))) & mask;
        *o = q.wrapping_sub(offset);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Unpacks whole 16-byte blocks of nibbles (32 codes each); returns the codes written.
    ///
    /// # Safety
    /// SSE2 must be available (always true on x86-64).
    #[target_feature(enable = "sse2")]
    pub unsafe fn unpack4_sse2(src: &[u8], offset: u8, out: &mut [u8]) -> usize {
        let blocks = (out.len() / 32).min(src.len() / 16);
        let mask = _mm_set1_epi8(0x0F);
        let off = _mm_set1_epi8(offset as i8);
        for i in 0..blocks {
            // Safety: `i < blocks` keeps the 16-byte load inside `src` and the two 16-byte
            // stores inside `out`; unaligned load/store intrinsics have no alignment needs.
            unsafe {
                let v = _mm_loadu_si128(src.as_ptr().add(16 * i).cast());
                let lo = _mm_and_si128(v, mask);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), mask);
                let o = out.as_mut_ptr().add(32 * i);
                _mm_storeu_si128(o.cast(), _mm_sub_epi8(_mm_unpacklo_epi8(lo, hi), off));
                _mm_storeu_si128(
                    o.add(16).cast(),
                    _mm_sub_epi8(_mm_unpackhi_epi8(lo, hi), off),
                );
            }
        }
        blocks * 32
    }

    /// Unpacks whole 16-byte blocks of 2-bit codes (64 codes each); returns the codes written.
    ///
    /// # Safety
    /// SSE2 must be available (always true on x86-64).
    #[target_feature(enable = "sse2")]
    pub unsafe fn unpack2_sse2(src: &[u8], offset: u8, out: &mut [u8]) -> usize {
        let blocks = (out.len() / 64).min(src.len() / 16);
        let mask = _mm_set1_epi8(0x03);
        let off = _mm_set1_epi8(offset as i8);
        for i in 0..blocks {
            // Safety: `i < blocks` keeps the 16-byte load inside `src` and the four 16-byte
            // stores inside `out`; unaligned intrinsics have no alignment needs.
            unsafe {
                let v = _mm_loadu_si128(src.as_ptr().add(16 * i).cast());
                let c0 = _mm_and_si128(v, mask);
                let c1 = _mm_and_si128(_mm_srli_epi16::<2>(v), mask);
                let c2 = _mm_and_si128(_mm_srli_epi16::<4>(v), mask);
                let c3 = _mm_and_si128(_mm_srli_epi16::<6>(v), mask);
                let p01_lo = _mm_unpacklo_epi8(c0, c1);
                let p01_hi = _mm_unpackhi_epi8(c0, c1);
                let p23_lo = _mm_unpacklo_epi8(c2, c3);
                let p23_hi = _mm_unpackhi_epi8(c2, c3);
                let o = out.as_mut_ptr().add(64 * i);
                let parts = [
                    _mm_unpacklo_epi16(p01_lo, p23_lo),
                    _mm_unpackhi_epi16(p01_lo, p23_lo),
                    _mm_unpacklo_epi16(p01_hi, p23_hi),
                    _mm_unpackhi_epi16(p01_hi, p23_hi),
                ];
                for (j, p) in parts.into_iter().enumerate() {
                    _mm_storeu_si128(o.add(16 * j).cast(), _mm_sub_epi8(p, off));
                }
            }
        }
        blocks * 64
    }
}

/// Plain-loop references the kernels are tested against.
pub mod reference {
    use super::*;

    /// `acc[m, n] = Σ_k (a[m, k] − z_a)(q[n, k] − z_w[n])`, in `i64`, straight from the codes.
    pub fn gemm_i32(a: &[u8], m: usize, a_zero_point: i32, w: &PackedWeights) -> Vec<i32> {
        let (n, k) = (w.out_features(), w.in_features());
        assert_eq!(a.len(), m * k);
        let mut out = vec![0i32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0i64;
                for kk in 0..k {
                    let x = i64::from(a[i * k + kk]) - i64::from(a_zero_point);
                    let q = i64::from(w.code(j, kk)) - i64::from(w.zero_points()[j]);
                    acc += x * q;
                }
                out[i * n + j] = i32::try_from(acc).expect("accumulator fits i32");
            }
        }
        out
    }

    /// `acc · (s_a · s_w[n]) + bias[n]`.
    pub fn gemm_f32(
        a: &[u8],
        m: usize,
        a_quant: ActQuant,
        w: &PackedWeights,
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        let n = w.out_features();
        gemm_i32(a, m, a_quant.zero_point(), w)
            .iter()
            .enumerate()
            .map(|(i, &acc)| {
                let j = i % n;
                acc as f32 * (a_quant.scale() * w.scales()[j]) + bias.map_or(0.0, |b| b[j])
            })
            .collect()
    }

    /// [`gemm_f32`] quantized with `out_quant`.
    pub fn gemm_u8(
        a: &[u8],
        m: usize,
        a_quant: ActQuant,
        w: &PackedWeights,
        bias: Option<&[f32]>,
        out_quant: ActQuant,
    ) -> Vec<u8> {
        gemm_f32(a, m, a_quant, w, bias)
            .into_iter()
            .map(|y| out_quant.quantize_one(y))
            .collect()
    }

    /// `Σ_k (a[m, k] − z_a)(b[k, n] − z_b) · (s_a · s_b)` for `b` as laid out by `layout`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_u8u8_f32(
        a: &[u8],
        m: usize,
        a_quant: ActQuant,
        b: &[u8],
        n: usize,
        b_quant: ActQuant,
        layout: RhsLayout,
    ) -> Vec<f32> {
        let k = b.len() / n;
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0i64;
                for kk in 0..k {
                    let bv = match layout {
                        RhsLayout::NK => b[j * k + kk],
                        RhsLayout::KN => b[kk * n + j],
                    };
                    acc += (i64::from(a[i * k + kk]) - i64::from(a_quant.zero_point()))
                        * (i64::from(bv) - i64::from(b_quant.zero_point()));
                }
                let acc = i32::try_from(acc).expect("accumulator fits i32");
                out[i * n + j] = acc as f32 * (a_quant.scale() * b_quant.scale());
            }
        }
        out
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<IntGemm>();
    is::<PreparedWeights>();
}
