//! Own AVX-512 VNNI kernel for `u8` activations × 8-, 4- and 2-bit-container weights (4- and
//! 2-bit codes held as nibbles and unpacked in registers), with the zero-point correction and the dequantize / requantize
//! epilogue applied to the accumulators while they are still in registers.
//!
//! Why not a library kernel: rten-gemm's `u8 × i8` kernel computes raw `i32` products into
//! memory, so every call paid a second pass (zero points, scales, bias) over an `M × N` `i32`
//! buffer, and no library covers nibble weights. Fusing the epilogue and using a wider tile
//! (6 rows × 64 channels = 24 accumulators, 4 weight loads and 6 broadcasts per 24 `vpdpbusd`)
//! made the DeiT-S linears about 2x faster than rten + epilogue pass.
//!
//! # Panel layout
//!
//! Weights are re-laid once (in [`build_panels`]) into panels of [`NR`] = 64 output channels.
//! `K` is padded to a multiple of 4 (`G = K/4` groups).
//!
//! * 8-bit containers: codes are stored **centred** (`q − offset` as `i8`). Panel `p`, group
//!   `g` is 256 bytes at `(p·G + g)·256`; byte `64v + j` is channel `64p + 16v + j/4`, input
//!   `4g + j%4`.
//! * 4- and 2-bit containers: codes are stored **raw** (`0..=15`, already valid `i8`), so no
//!   centring is needed in registers; the offset is folded into the zero-point terms.
//!   Group `g` is 128 bytes at `(p·G + g)·128`; byte `64h + j` holds in its low nibble channel
//!   `64p + 32h + j/4` and in its high nibble channel `64p + 32h + 16 + j/4`, input `4g + j%4`.
//!   Two loads, two shifts and four masks give the four `vpdpbusd` operands.
//!
//! Padding (inputs past `K`, channels past `N`) is stored as zero; padded activations are zero.
//!
//! # Work split
//!
//! rayon tasks are blocks of [`ROW_BLOCK`] rows × [`PANELS_PER_TASK`] panels, so one image
//! (197 rows) still gives both cores balanced work; inside a task each panel is reused across
//! the row tiles.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::OutElem;
use crate::packing::PackedWeights;

/// Output channels per panel (four zmm registers of 16 `i32`).
pub const NR: usize = 64;
/// Rows of the output tile: 6 × 4 = 24 accumulators, leaving 8 registers for operands.
const MR: usize = 6;
/// Rows per rayon task (a multiple of [`MR`]).
const ROW_BLOCK: usize = 48;
/// Panels per rayon task.
const PANELS_PER_TASK: usize = 4;
/// Below this many panel bytes, or multiply-adds per GEMM, the work stays on the calling
/// thread (a head's attention product already runs in its own task; splitting it further cost
/// more in scheduling than it saved).
const SMALL_BYTES: usize = 1 << 16;
const SMALL_MACS: usize = 1 << 22;

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vnni")
}

/// Bytes per panel group for a container width.
fn group_bytes(container: u32) -> usize {
    if container == 8 { 256 } else { 128 }
}

/// Panels of a right-hand side whose element `(n, k)` (as a byte: centred `i8` for 8-bit
/// containers, raw code for 4-bit ones) `row(n, buf)` writes for a whole channel.
fn build(n: usize, k: usize, container: u32, row: impl Fn(usize, &mut [u8]) + Sync) -> Vec<u8> {
    assert!(container == 8 || container == 4);
    let gb = group_bytes(container);
    let groups = k.div_ceil(4);
    let panels = n.div_ceil(NR);
    let mut out = vec![0u8; panels * groups * gb];
    let fill = |rows: &mut Vec<u8>, p: usize, dst: &mut [u8]| {
        rows.clear();
        rows.resize(NR * groups * 4, 0);
        for (c, r) in rows.chunks_exact_mut(groups * 4).enumerate() {
            if p * NR + c < n {
                row(p * NR + c, &mut r[..k]);
            }
        }
        let at = |c: usize, kk: usize| rows[c * groups * 4 + kk];
        for (g, dst) in dst.chunks_exact_mut(gb).enumerate() {
            for j in 0..64 {
                let (c, kk) = (j / 4, 4 * g + j % 4);
                if container == 8 {
                    for v in 0..4 {
                        dst[64 * v + j] = at(16 * v + c, kk);
                    }
                } else {
                    for h in 0..2 {
                        dst[64 * h + j] = at(32 * h + c, kk) | (at(32 * h + 16 + c, kk) << 4);
                    }
                }
            }
        }
    };
    if out.len() < SMALL_BYTES {
        // Attention operands, rebuilt per head inside a parallel task: stay on this thread.
        let mut rows = Vec::new();
        for (p, dst) in out.chunks_mut(groups * gb).enumerate() {
            fill(&mut rows, p, dst);
        }
    } else {
        out.par_chunks_mut(groups * gb)
            .enumerate()
            .for_each_init(Vec::new, |rows, (p, dst)| fill(rows, p, dst));
    }
    out
}

/// Re-lays 8-, 4- or 2-bit-container weights into panels (see the module docs): 2-bit codes
/// go into 4-bit panels (they are valid nibbles); `offset` is what centres 8-bit codes.
pub fn build_panels(w: &PackedWeights, offset: u8) -> Vec<u8> {
    let container = if w.container_bits() == 8 { 8 } else { 4 };
    let centre = if container == 8 { offset } else { 0 };
    build(w.out_features(), w.in_features(), container, |ch, r| {
        w.unpack_row(ch, r);
        for v in r {
            *v = v.wrapping_sub(centre);
        }
    })
}

/// Panels of an `i8` right-hand side given as a `[K, N]` view with `strides` (attention
/// operands, rebuilt per call).
pub fn build_panels_i8(b: &[i8], n: usize, k: usize, strides: [usize; 2]) -> Vec<u8> {
    if strides == [1, k] && k.is_multiple_of(4) {
        // `[N, K]` rows (attention's keys): in the 8-bit layout, 32-bit word `c` of group `g`
        // is channel `c`'s inputs `4g..4g + 4`, i.e. word `g` of its row — a word transpose.
        let groups = k / 4;
        let panels = n.div_ceil(NR);
        let mut out = vec![0u8; panels * groups * 256];
        for (p, panel) in out.chunks_exact_mut(groups * 256).enumerate() {
            for c in 0..NR.min(n - p * NR) {
                let row = &b[(p * NR + c) * k..(p * NR + c + 1) * k];
                for (g, word) in row.chunks_exact(4).enumerate() {
                    let dst = &mut panel[g * 256 + 4 * c..g * 256 + 4 * c + 4];
                    for (d, &v) in dst.iter_mut().zip(word) {
                        *d = v as u8;
                    }
                }
            }
        }
        return out;
    }
    build(n, k, 8, |ch, r| {
        for (kk, v) in r.iter_mut().enumerate() {
            *v = b[kk * strides[0] + ch * strides[1]] as u8;
        }
    })
}

/// What the epilogue writes.
#[derive(Clone, Copy, Debug)]
pub enum OutKind {
    /// The corrected accumulators.
    I32,
    /// `acc · scale[n] + bias[n]`.
    F32,
    /// The `F32` value quantized: `clamp(round_half_even(y / s) + z, lo, hi)`.
    U8 { s: f32, z: f32, lo: f32, hi: f32 },
    /// `GELU(F32 value)` ([`crate::vmath`]'s polynomial), quantized as `U8`.
    GeluU8 { s: f32, z: f32, lo: f32, hi: f32 },
}

/// Per-call constants of the epilogue, every per-channel slice padded to whole panels.
pub struct Epilogue<'a> {
    /// `K · z_a · z_w[n] − z_a · colsum[n]` (wrapping).
    pub col_const: &'a [i32],
    /// `z_w[n]` as the kernel sees the codes; `None` when every one is zero.
    pub zero: Option<&'a [i32]>,
    /// `Σ_k a[m, k]` per row (used only with `zero`).
    pub row_sums: &'a [i32],
    /// `s_a · s_w[n]`.
    pub scale: &'a [f32],
    /// `bias[n]` (zeros when there is none).
    pub bias: &'a [f32],
    pub out: OutKind,
}

#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// Safety: tasks write disjoint output tiles (distinct row/panel blocks).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(&self) -> *mut T {
        self.0
    }
}

/// `out[m, n] = epilogue(Σ_k a[m, k] · w[n, k] + corrections)` for `a` `[M, K]` and panels
/// from [`build_panels`] of a `container`-bit weight. Panics unless [`available`] and the
/// slices have the documented lengths.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm<T: OutElem>(
    a: &[u8],
    m: usize,
    k: usize,
    n: usize,
    panels: &[u8],
    container: u32,
    ep: &Epilogue<'_>,
    out: &mut [T],
) {
    assert!(available(), "AVX-512 VNNI is not available");
    assert!(container == 8 || container == 4);
    let groups = k.div_ceil(4);
    let np = n.div_ceil(NR);
    assert_eq!(panels.len(), np * groups * group_bytes(container));
    assert_eq!(a.len(), m * k);
    assert_eq!(out.len(), m * n);
    for s in [ep.col_const.len(), ep.scale.len(), ep.bias.len()] {
        assert_eq!(s, np * NR);
    }
    if let Some(z) = ep.zero {
        assert_eq!(z.len(), np * NR);
        assert_eq!(ep.row_sums.len(), m);
    }
    match (T::KIND, ep.out) {
        (0, OutKind::I32)
        | (1, OutKind::F32)
        | (2, OutKind::U8 { .. } | OutKind::GeluU8 { .. }) => {}
        _ => panic!("output element does not match the epilogue"),
    }
    // Rows padded to whole groups of 4 with zeros (which add nothing to the dot products).
    let padded;
    let a: &[u8] = if k == groups * 4 {
        a
    } else {
        let mut p = vec![0u8; m * groups * 4];
        for (dst, src) in p.chunks_exact_mut(groups * 4).zip(a.chunks_exact(k)) {
            dst[..k].copy_from_slice(src);
        }
        padded = p;
        &padded
    };
    let kp = groups * 4;
    let row_blocks = m.div_ceil(ROW_BLOCK);
    let col_blocks = np.div_ceil(PANELS_PER_TASK);
    let dst = SendPtr(out.as_mut_ptr());
    let task = |t: usize| {
        let (rb, cb) = (t / col_blocks, t % col_blocks);
        let rows = rb * ROW_BLOCK..((rb + 1) * ROW_BLOCK).min(m);
        let panels_here = cb * PANELS_PER_TASK..((cb + 1) * PANELS_PER_TASK).min(np);
        // Safety: `available()` was checked; the asserts above give the slice lengths the
        // block function relies on, and tasks write disjoint blocks of `out`.
        unsafe {
            if container == 8 {
                block::<true, T>(a, kp, n, panels, ep, rows, panels_here, dst.get())
            } else {
                block::<false, T>(a, kp, n, panels, ep, rows, panels_here, dst.get())
            }
        }
    };
    let tasks = row_blocks * col_blocks;
    if tasks == 1 || m * n * kp < SMALL_MACS {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// One task: the given panels against the given rows.
///
/// # Safety
/// AVX-512F/BW/VNNI must be available; lengths as asserted in [`gemm`]; `out` points to an
/// `M × n` buffer of `T` of which this call writes only rows `rows` × the panels' columns.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni")]
unsafe fn block<const W8: bool, T: OutElem>(
    a: &[u8],
    kp: usize,
    n: usize,
    panels: &[u8],
    ep: &Epilogue<'_>,
    rows: std::ops::Range<usize>,
    panel_range: std::ops::Range<usize>,
    out: *mut T,
) {
    let groups = kp / 4;
    let gb = if W8 { 256 } else { 128 };
    for p in panel_range {
        let panel = panels[p * groups * gb..(p + 1) * groups * gb].as_ptr();
        let col0 = p * NR;
        let cols = (n - col0).min(NR);
        let mut r0 = rows.start;
        while r0 < rows.end {
            let mr = (rows.end - r0).min(MR);
            let at = Tile {
                a: a[r0 * kp..(r0 + mr) * kp].as_ptr(),
                kp,
                panel,
                groups,
                row0: r0,
                col0,
                cols,
                // Safety: row `r0`, column `col0` lies inside the `M × n` output.
                out: unsafe { out.add(r0 * n + col0) },
                n,
            };
            // Safety: forwarded from this function's contract; `at` describes `mr` whole rows.
            unsafe {
                match mr {
                    6 => tile::<6, W8, T>(&at, ep),
                    5 => tile::<5, W8, T>(&at, ep),
                    4 => tile::<4, W8, T>(&at, ep),
                    3 => tile::<3, W8, T>(&at, ep),
                    2 => tile::<2, W8, T>(&at, ep),
                    _ => tile::<1, W8, T>(&at, ep),
                }
            }
            r0 += mr;
        }
    }
}

/// Where one output tile's operands lie.
struct Tile<T> {
    /// First activation row of the tile (rows `kp` apart).
    a: *const u8,
    kp: usize,
    /// The panel (`groups` groups).
    panel: *const u8,
    groups: usize,
    /// Global row and column of the tile's first output.
    row0: usize,
    col0: usize,
    /// Valid columns in this panel (≤ 64).
    cols: usize,
    /// Output `(row0, col0)`; rows `n` apart.
    out: *mut T,
    n: usize,
}

/// An `R × 64` output tile over all of `K`, with the epilogue.
///
/// # Safety
/// AVX-512F/BW/VNNI must be available; `t.a` holds `R` rows of `kp` bytes, `t.panel` a whole
/// panel, `t.out` `R` rows of at least `t.cols` writable values; the epilogue slices are
/// padded to whole panels.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni")]
#[inline]
unsafe fn tile<const R: usize, const W8: bool, T: OutElem>(t: &Tile<T>, ep: &Epilogue<'_>) {
    let nib = _mm512_set1_epi8(0x0F);
    let mut acc = [[_mm512_setzero_si512(); 4]; R];
    let (ap, wp, kp) = (t.a, t.panel, t.kp);
    for g in 0..t.groups {
        // Safety: `g < groups` keeps the panel loads inside the panel and the 4-byte activation
        // reads inside row `r < R`; unaligned loads need no alignment.
        unsafe {
            let w = if W8 {
                let p = wp.add(256 * g);
                [
                    _mm512_loadu_si512(p.cast()),
                    _mm512_loadu_si512(p.add(64).cast()),
                    _mm512_loadu_si512(p.add(128).cast()),
                    _mm512_loadu_si512(p.add(192).cast()),
                ]
            } else {
                let p = wp.add(128 * g);
                let v0 = _mm512_loadu_si512(p.cast());
                let v1 = _mm512_loadu_si512(p.add(64).cast());
                [
                    _mm512_and_si512(v0, nib),
                    _mm512_and_si512(_mm512_srli_epi16::<4>(v0), nib),
                    _mm512_and_si512(v1, nib),
                    _mm512_and_si512(_mm512_srli_epi16::<4>(v1), nib),
                ]
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32(ap.add(r * kp + 4 * g).cast::<i32>().read_unaligned());
                for (acc, w) in acc.iter_mut().zip(&w) {
                    *acc = _mm512_dpbusd_epi32(*acc, x, *w);
                }
            }
        }
    }
    // The sums leave the registers once, into an uninitialised stash the epilogue reads: with
    // the epilogue indexing `acc` itself, the array lived on the stack and every tile began
    // with a `memset` of it.
    let mut stash = [std::mem::MaybeUninit::<__m512i>::uninit(); 24];
    for (r, acc) in acc.iter().enumerate() {
        for (v, a) in acc.iter().enumerate() {
            stash[4 * r + v].write(*a);
        }
    }
    for (v, c) in (0..4).map(|v| (v, t.col0 + 16 * v)) {
        let valid = t.cols.saturating_sub(16 * v).min(16);
        if valid == 0 {
            break;
        }
        let mask: __mmask16 = if valid == 16 {
            0xFFFF
        } else {
            (1u16 << valid) - 1
        };
        // Safety: the epilogue slices are padded to whole panels, so 16 values from `c` exist;
        // the masked stores write only the `valid` columns of row `r`, inside `out`.
        unsafe {
            let cc = _mm512_loadu_si512(ep.col_const.as_ptr().add(c).cast());
            let zero = ep
                .zero
                .map(|z| _mm512_loadu_si512(z.as_ptr().add(c).cast()));
            let scale = _mm512_loadu_ps(ep.scale.as_ptr().add(c));
            let bias = _mm512_loadu_ps(ep.bias.as_ptr().add(c));
            for r in 0..R {
                // Safety: the first `4 · R` entries were written above.
                let mut s = _mm512_add_epi32(stash[4 * r + v].assume_init(), cc);
                if let Some(zero) = zero {
                    let rs = _mm512_set1_epi32(ep.row_sums[t.row0 + r]);
                    s = _mm512_sub_epi32(s, _mm512_mullo_epi32(zero, rs));
                }
                let o = t.out.add(r * t.n + 16 * v);
                if T::KIND == 0 {
                    _mm512_mask_storeu_epi32(o.cast(), mask, s);
                    continue;
                }
                let y = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(s), scale), bias);
                // The GELU path is approximate anyway: it scales by the reciprocal step (a
                // multiplication, not a ~10-cycle division per vector); exact requantization
                // divides, as `ActQuant::quantize_one` does.
                let (y, out) = match ep.out {
                    OutKind::GeluU8 { s, z, lo, hi } => {
                        let g = crate::vmath::x86::gelu16(y);
                        (
                            _mm512_mul_ps(g, _mm512_set1_ps(1.0 / s)),
                            OutKind::U8 { s: 1.0, z, lo, hi },
                        )
                    }
                    other => (y, other),
                };
                match out {
                    OutKind::U8 { s, z, lo, hi } => {
                        let q = if s == 1.0 {
                            y
                        } else {
                            _mm512_div_ps(y, _mm512_set1_ps(s))
                        };
                        let q = _mm512_roundscale_ps::<
                            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
                        >(q);
                        let q = _mm512_add_ps(q, _mm512_set1_ps(z));
                        // `max` returns its second operand when the first is NaN: NaN → `lo`.
                        let q = _mm512_max_ps(q, _mm512_set1_ps(lo));
                        let q = _mm512_min_ps(q, _mm512_set1_ps(hi));
                        _mm512_mask_cvtusepi32_storeu_epi8(o.cast(), mask, _mm512_cvtps_epi32(q));
                    }
                    _ => _mm512_mask_storeu_ps(o.cast(), mask, y),
                }
            }
        }
    }
}

/// Measured `u8 × i8` peak of the machine in GOP/s: every rayon thread at once runs
/// independent `vpdpbusd zmm` chains (24 accumulators, enough to hide the latency) for
/// `iterations` rounds; each instruction is 64 multiply-adds = 128 operations. This is the
/// ceiling the GEMM kernels are compared with: it includes the real (turbo) clock, which a
/// peak computed from the nominal clock would miss.
pub fn measured_peak_gops(iterations: usize) -> f64 {
    assert!(available(), "AVX-512 VNNI is not available");
    /// # Safety
    /// AVX-512F/BW/VNNI must be available.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn chains(iterations: usize, seed: i32) -> i32 {
        let x = _mm512_set1_epi32(std::hint::black_box(seed));
        let w = _mm512_set1_epi32(std::hint::black_box(seed ^ 0x0101));
        let mut acc = [_mm512_setzero_si512(); 24];
        for _ in 0..iterations {
            for a in &mut acc {
                *a = _mm512_dpbusd_epi32(*a, x, w);
            }
        }
        acc.iter()
            .fold(0, |s, &a| s.wrapping_add(_mm512_reduce_add_epi32(a)))
    }
    let start = std::time::Instant::now();
    let threads: Vec<(i32, f64)> = rayon::broadcast(|ctx| {
        let t = std::time::Instant::now();
        // Safety: `available()` was asserted above.
        let r = unsafe { chains(iterations, ctx.index() as i32 + 1) };
        (r, t.elapsed().as_secs_f64())
    });
    std::hint::black_box(&threads);
    let wall = start.elapsed().as_secs_f64();
    let ops = threads.len() as f64 * iterations as f64 * 24.0 * 128.0;
    ops / wall / 1e9
}
