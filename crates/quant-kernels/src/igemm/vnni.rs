//! Own AVX-512 VNNI kernel for 8- and 4-bit-container weights, the 4-bit ones unpacked in
//! registers: no library covers nibble weights in a `u8 × i8` kernel, and unpacking to `i8`
//! per call costs a pass over `N·K` bytes plus rten's own repacking. The 8-bit variant exists
//! to compare with rten-gemm's int8 kernel ([`super::Backend::OwnVnni`]).
//!
//! # Panel layout
//!
//! Weights are re-laid once (in [`build_panels`]) into panels of [`NR`] = 32 output channels.
//! `K` is padded to a multiple of 4 (`G = K/4` groups). Codes are stored raw and centred in
//! registers (`vpsubb` of the offset).
//!
//! * 4-bit: panel `p`, group `g` is 64 bytes at `(p·G + g)·64`; byte `j` holds in its low
//!   nibble the code of channel `32p + j/4`, input `4g + j%4`, and in its high nibble channel
//!   `32p + 16 + j/4`, same input. One 64-byte load, a shift and two masks give two `vpdpbusd`
//!   operands of 16 channels × 4 inputs.
//! * 8-bit: panel `p`, group `g` is 128 bytes at `(p·G + g)·128`; byte `j < 64` is channel
//!   `32p + j/4`, byte `64 + j` channel `32p + 16 + j/4`, input `4g + j%4`.
//!
//! Padding codes (inputs past `K`, channels past `N`) equal the offset, i.e. centred zero.
//!
//! The kernel computes the raw `Σ_k a[m, k] · (q[n, k] − offset)`; [`super`] applies the
//! zero-point terms.

use std::arch::x86_64::*;

use rayon::prelude::*;

use crate::packing::PackedWeights;

/// Output channels per panel (two zmm registers of 16 `i32`).
pub const NR: usize = 32;
/// Rows of the output tile (16 accumulators).
const MR: usize = 8;
/// Rows per rayon task: the panel is reused from L1 across these.
const ROWS_PER_TASK: usize = 32;

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// Bytes per panel group for a container width.
fn group_bytes(container: u32) -> usize {
    if container == 8 { 128 } else { 64 }
}

/// Re-lays 8- or 4-bit-container weights into panels (see the module docs).
pub fn build_panels(w: &PackedWeights, offset: u8) -> Vec<u8> {
    let container = w.container_bits();
    assert!(container == 8 || container == 4);
    let gb = group_bytes(container);
    let (n, k) = (w.out_features(), w.in_features());
    let groups = k.div_ceil(4);
    let panels = n.div_ceil(NR);
    let mut out = vec![0u8; panels * groups * gb];
    let mut rows = vec![vec![offset; groups * 4]; NR];
    for p in 0..panels {
        for (c, row) in rows.iter_mut().enumerate() {
            row.fill(offset);
            let ch = p * NR + c;
            if ch < n {
                w.unpack_row(ch, &mut row[..k]);
            }
        }
        for g in 0..groups {
            let dst = &mut out[(p * groups + g) * gb..][..gb];
            for j in 0..64 {
                let (c, kk) = (j / 4, 4 * g + j % 4);
                if container == 8 {
                    dst[j] = rows[c][kk];
                    dst[64 + j] = rows[c + 16][kk];
                } else {
                    dst[j] = rows[c][kk] | (rows[c + 16][kk] << 4);
                }
            }
        }
    }
    out
}

/// `raw[m, n] = Σ_k a[m, k] · (q[n, k] − offset)` for `a` `[M, K]` and panels from
/// [`build_panels`] of a `container`-bit weight. Panics unless [`available`].
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    a: &[u8],
    m: usize,
    k: usize,
    n: usize,
    panels: &[u8],
    container: u32,
    offset: u8,
    raw: &mut [i32],
) {
    assert!(available(), "AVX-512 VNNI is not available");
    assert!(container == 8 || container == 4);
    let groups = k.div_ceil(4);
    assert_eq!(
        panels.len(),
        n.div_ceil(NR) * groups * group_bytes(container)
    );
    assert_eq!(a.len(), m * k);
    assert_eq!(raw.len(), m * n);
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
    raw.par_chunks_mut(ROWS_PER_TASK * n)
        .zip(a.par_chunks(ROWS_PER_TASK * kp))
        .for_each(|(out, a)| {
            // Safety: `available()` was checked above; the task's slices have the lengths
            // `task` expects (whole rows of `kp` inputs and `n` outputs, panels as asserted).
            unsafe {
                if container == 8 {
                    task::<true>(a, kp, n, panels, offset, out)
                } else {
                    task::<false>(a, kp, n, panels, offset, out)
                }
            }
        });
}

/// One task: every panel against up to [`ROWS_PER_TASK`] rows.
///
/// # Safety
/// AVX-512F/BW/VNNI must be available; `a.len() == rows · kp`, `out.len() == rows · n`,
/// `panels.len() == ceil(n / NR) · kp/4 · (W8 ? 128 : 64)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn task<const W8: bool>(
    a: &[u8],
    kp: usize,
    n: usize,
    panels: &[u8],
    offset: u8,
    out: &mut [i32],
) {
    let rows = a.len() / kp;
    let groups = kp / 4;
    let gb = if W8 { 128 } else { 64 };
    for p in 0..n.div_ceil(NR) {
        let panel = &panels[p * groups * gb..(p + 1) * groups * gb];
        let cols = (n - p * NR).min(NR);
        let mut r0 = 0;
        while r0 < rows {
            let mr = (rows - r0).min(MR);
            let a_tile = &a[r0 * kp..(r0 + mr) * kp];
            let out_tile = &mut out[r0 * n + p * NR..];
            // Safety: forwarded from this function's contract; `a_tile` has `mr` rows of `kp`,
            // `out_tile` starts at row `r0`, column `p·NR` and holds `mr - 1` further rows of
            // `n` plus `cols` values.
            unsafe {
                match mr {
                    8 => tile::<8, W8>(a_tile, kp, panel, offset, out_tile, n, cols),
                    7 => tile::<7, W8>(a_tile, kp, panel, offset, out_tile, n, cols),
                    6 => tile::<6, W8>(a_tile, kp, panel, offset, out_tile, n, cols),
                    5 => tile::<5, W8>(a_tile, kp, panel, offset, out_tile, n, cols),
                    4 => tile::<4, W8>(a_tile, kp, panel, offset, out_tile, n, cols),
                    3 => tile::<3, W8>(a_tile, kp, panel, offset, out_tile, n, cols),
                    2 => tile::<2, W8>(a_tile, kp, panel, offset, out_tile, n, cols),
                    _ => tile::<1, W8>(a_tile, kp, panel, offset, out_tile, n, cols),
                }
            }
            r0 += mr;
        }
    }
}

/// An `R × 32` output tile over all of `K`.
///
/// # Safety
/// AVX-512F/BW/VNNI must be available; `a.len() == R · kp`,
/// `panel.len() == kp/4 · (W8 ? 128 : 64)`, `out.len() >= (R − 1) · n + cols`, `cols <= 32`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn tile<const R: usize, const W8: bool>(
    a: &[u8],
    kp: usize,
    panel: &[u8],
    offset: u8,
    out: &mut [i32],
    n: usize,
    cols: usize,
) {
    debug_assert!(a.len() == R * kp && out.len() >= (R - 1) * n + cols && cols <= NR);
    let mask = _mm512_set1_epi8(0x0F);
    let off = _mm512_set1_epi8(offset as i8);
    let mut acc = [[_mm512_setzero_si512(); 2]; R];
    let ap = a.as_ptr();
    let wp = panel.as_ptr();
    for g in 0..kp / 4 {
        // Safety: `g < kp/4` keeps the 64- or 128-byte panel loads inside `panel` and the 4-byte
        // activation reads inside row `r` of `a` (`r < R`); unaligned loads need no alignment.
        unsafe {
            let (lo, hi) = if W8 {
                let w = wp.add(128 * g);
                (
                    _mm512_sub_epi8(_mm512_loadu_si512(w.cast()), off),
                    _mm512_sub_epi8(_mm512_loadu_si512(w.add(64).cast()), off),
                )
            } else {
                let v = _mm512_loadu_si512(wp.add(64 * g).cast());
                (
                    _mm512_sub_epi8(_mm512_and_si512(v, mask), off),
                    _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16::<4>(v), mask), off),
                )
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32(ap.add(r * kp + 4 * g).cast::<i32>().read_unaligned());
                acc[0] = _mm512_dpbusd_epi32(acc[0], x, lo);
                acc[1] = _mm512_dpbusd_epi32(acc[1], x, hi);
            }
        }
    }
    let m0 = if cols >= 16 {
        0xFFFF
    } else {
        (1u16 << cols) - 1
    };
    let m1 = if cols > 16 {
        ((1u32 << (cols - 16)) - 1) as u16
    } else {
        0
    };
    for (r, acc) in acc.iter().enumerate() {
        // Safety: the masked stores write only the first `cols` values of row `r`, which the
        // contract places inside `out`.
        unsafe {
            let o = out.as_mut_ptr().add(r * n);
            _mm512_mask_storeu_epi32(o.cast(), m0, acc[0]);
            _mm512_mask_storeu_epi32(o.add(16).cast(), m1, acc[1]);
        }
    }
}
