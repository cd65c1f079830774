//! Bit-packed integer weights for the CPU integer GEMM ([`crate::igemm`]).
//!
//! # Layout
//!
//! A `[out_features, in_features]` weight (PyTorch / burn `Linear` order transposed to
//! `[N, K]`) is stored **row-major per output channel, K contiguous**: row `n` occupies bytes
//! `n * row_bytes .. (n + 1) * row_bytes` of [`PackedWeights::data`], and each row starts on a
//! byte boundary (the last byte of a row is zero-padded). Within a row the codes are packed
//! little-end first into a *container* of 8, 4 or 2 bits:
//!
//! | bits | container | codes per byte | code `k` of a row                          |
//! |------|-----------|----------------|--------------------------------------------|
//! | 8, 7, 6, 5 | 8   | 1              | byte `k`                                   |
//! | 4, 3 | 4         | 2              | byte `k / 2`, bits `4 * (k % 2) ..+ 4`     |
//! | 2    | 2         | 4              | byte `k / 4`, bits `2 * (k % 4) ..+ 2`     |
//!
//! Codes are **unsigned** `q ∈ [0, 2^b − 1]` with one `f32` scale and one integer zero point
//! per output channel: `w ≈ s[n] · (q − z[n])`, `q = clamp(round(w / s) + z, 0, 2^b − 1)`,
//! exactly [`UniformQuantizer`]'s asymmetric math. Symmetric quantizers (codes in
//! `[−m, m]`, `z = 0`) are stored shifted by `2^(b−1)` with `z = 2^(b−1)`, which dequantizes to
//! the same values.
//!
//! K-contiguous rows make a weight row one dot product with an activation row, so the integer
//! GEMM reads every byte once per row block and unpacking a row is a streaming operation.

use mixq_core::{BitWidth, Error, Result};

use crate::uniform::{Granularity, UniformQuantizer};

/// The largest `in_features` the integer GEMM accepts: `K · 255 · 255` must fit in `i32` so
/// that the zero-point-corrected accumulators are exact.
pub const MAX_IN_FEATURES: usize = (i32::MAX / (255 * 255)) as usize;

/// Bits of storage per code for a `bits`-wide quantizer: 8, 4 or 2.
pub fn container_bits(bits: BitWidth) -> u32 {
    match bits.get() {
        2 => 2,
        3 | 4 => 4,
        _ => 8,
    }
}

/// Bytes of one packed row of `k` codes in a `container`-bit container.
fn row_bytes_for(k: usize, container: u32) -> usize {
    (k * container as usize).div_ceil(8)
}

/// Integer weights of one linear layer, bit-packed per output channel. See the module docs for
/// the layout.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedWeights {
    out_features: usize,
    in_features: usize,
    bits: BitWidth,
    data: Vec<u8>,
    scales: Vec<f32>,
    zero_points: Vec<i32>,
}

impl PackedWeights {
    /// Packs integer codes (row-major `[out_features, in_features]`, each in
    /// `[0, 2^bits − 1]`) with one scale and zero point per output channel.
    pub fn from_codes(
        out_features: usize,
        in_features: usize,
        bits: BitWidth,
        codes: &[i32],
        scales: Vec<f32>,
        zero_points: Vec<i32>,
    ) -> Result<Self> {
        check_dims(out_features, in_features)?;
        if codes.len() != out_features * in_features {
            return Err(Error::invalid(
                "codes",
                format!("{} values", codes.len()),
                format!("need out_features * in_features = {out_features} * {in_features}"),
            ));
        }
        let qmax = (1i32 << bits.get()) - 1;
        if let Some(c) = codes.iter().find(|&&c| !(0..=qmax).contains(&c)) {
            return Err(Error::invalid(
                "code",
                c,
                format!("must be in [0, {qmax}] for {} bits", bits.get()),
            ));
        }
        check_params(out_features, bits, &scales, &zero_points)?;
        let container = container_bits(bits);
        let rb = row_bytes_for(in_features, container);
        let mut data = vec![0u8; rb * out_features];
        for (row, dst) in codes
            .chunks_exact(in_features)
            .zip(data.chunks_exact_mut(rb))
        {
            pack_row(row.iter().map(|&c| c as u8), container, dst);
        }
        Ok(PackedWeights {
            out_features,
            in_features,
            bits,
            data,
            scales,
            zero_points,
        })
    }

    /// Adopts already packed bytes (e.g. read from a file), validating every length and code.
    pub fn from_parts(
        out_features: usize,
        in_features: usize,
        bits: BitWidth,
        data: Vec<u8>,
        scales: Vec<f32>,
        zero_points: Vec<i32>,
    ) -> Result<Self> {
        check_dims(out_features, in_features)?;
        let container = container_bits(bits);
        let rb = row_bytes_for(in_features, container);
        if data.len() != rb * out_features {
            return Err(Error::invalid(
                "data",
                format!("{} bytes", data.len()),
                format!(
                    "{out_features} rows of {in_features} {}-bit codes need {} bytes",
                    bits.get(),
                    rb * out_features
                ),
            ));
        }
        check_params(out_features, bits, &scales, &zero_points)?;
        let w = PackedWeights {
            out_features,
            in_features,
            bits,
            data,
            scales,
            zero_points,
        };
        // Codes above 2^b − 1 (5/6/7 bits in an 8-bit container, 3 bits in a nibble) and
        // non-zero padding would silently change results: reject them.
        let qmax = (1u32 << bits.get()) - 1;
        let mut row = vec![0u8; in_features];
        for n in 0..out_features {
            w.unpack_row(n, &mut row);
            if let Some(&c) = row.iter().find(|&&c| u32::from(c) > qmax) {
                return Err(Error::invalid(
                    "code",
                    c,
                    format!("in row {n} must be in [0, {qmax}] for {} bits", bits.get()),
                ));
            }
            let used_bits = in_features * container as usize;
            if !used_bits.is_multiple_of(8) {
                let last = w.data[(n + 1) * rb - 1];
                if last >> (used_bits % 8) != 0 {
                    return Err(Error::invalid(
                        "data",
                        format!("row {n} padding {last:#04x}"),
                        "padding bits must be zero",
                    ));
                }
            }
        }
        Ok(w)
    }

    /// Quantizes `f32` weights (row-major `[out_features, in_features]`) with a calibrated
    /// quantizer: per-channel over axis 0 or per-tensor, symmetric or not.
    pub fn quantize(
        weights: &[f32],
        out_features: usize,
        in_features: usize,
        quantizer: &UniformQuantizer,
    ) -> Result<Self> {
        check_dims(out_features, in_features)?;
        match quantizer.granularity() {
            Granularity::PerTensor | Granularity::PerChannel { axis: 0 } => {}
            g => {
                return Err(Error::invalid(
                    "granularity",
                    format!("{g:?}"),
                    "packed weights need one step per output channel (axis 0) or per tensor",
                ));
            }
        }
        let codes = quantizer.quantize_host(weights, &[out_features, in_features])?;
        let bits = quantizer.bits();
        let per_channel = |i: usize| if quantizer.num_params() == 1 { 0 } else { i };
        let shift = if quantizer.is_symmetric() {
            1i32 << (bits.get() - 1)
        } else {
            0
        };
        let codes: Vec<i32> = codes.into_iter().map(|c| c + shift).collect();
        let scales = (0..out_features)
            .map(|n| quantizer.scales()[per_channel(n)])
            .collect();
        let zero_points = (0..out_features)
            .map(|n| quantizer.zero_points()[per_channel(n)] as i32 + shift)
            .collect();
        Self::from_codes(out_features, in_features, bits, &codes, scales, zero_points)
    }

    /// Calibrates an asymmetric per-output-channel min/max quantizer and packs with it.
    pub fn quantize_minmax(
        weights: &[f32],
        out_features: usize,
        in_features: usize,
        bits: BitWidth,
    ) -> Result<Self> {
        check_dims(out_features, in_features)?;
        if weights.len() != out_features * in_features {
            return Err(Error::invalid(
                "weights",
                format!("{} values", weights.len()),
                format!("need out_features * in_features = {out_features} * {in_features}"),
            ));
        }
        let (lo, hi): (Vec<f32>, Vec<f32>) = weights
            .chunks_exact(in_features)
            .map(|r| {
                r.iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| {
                        (l.min(x), h.max(x))
                    })
            })
            .unzip();
        let q = UniformQuantizer::from_range(
            bits,
            false,
            Granularity::PerChannel { axis: 0 },
            &lo,
            &hi,
        )?;
        Self::quantize(weights, out_features, in_features, &q)
    }

    /// `N`, the number of output channels (rows).
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// `K`, the reduction length (codes per row).
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Bits per packed weight.
    pub fn bits(&self) -> BitWidth {
        self.bits
    }

    /// 8, 4 or 2: see [`container_bits`].
    pub fn container_bits(&self) -> u32 {
        container_bits(self.bits)
    }

    /// Bytes per packed row.
    pub fn row_bytes(&self) -> usize {
        row_bytes_for(self.in_features, self.container_bits())
    }

    /// The packed bytes, `out_features * row_bytes()` of them.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// One step size per output channel.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// One zero point per output channel, in `[0, 2^bits − 1]`.
    pub fn zero_points(&self) -> &[i32] {
        &self.zero_points
    }

    /// The code of output channel `n`, input `k`. Panics when out of range.
    pub fn code(&self, n: usize, k: usize) -> u8 {
        assert!(n < self.out_features && k < self.in_features);
        let c = self.container_bits() as usize;
        let byte = self.data[n * self.row_bytes() + k * c / 8];
        let per = 8 / c;
        (byte >> (c * (k % per))) & ((1u16 << c) - 1) as u8
    }

    /// Unpacks the codes of row `n` into `out[..in_features]` (SIMD where available).
    /// Panics when `n` or `out` is out of range.
    pub fn unpack_row(&self, n: usize, out: &mut [u8]) {
        let rb = self.row_bytes();
        let src = &self.data[n * rb..(n + 1) * rb];
        crate::igemm::unpack_codes(src, self.container_bits(), &mut out[..self.in_features]);
    }

    /// All codes, row-major `[out_features, in_features]`.
    pub fn unpack_codes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.out_features * self.in_features];
        for (n, row) in out.chunks_exact_mut(self.in_features).enumerate() {
            self.unpack_row(n, row);
        }
        out
    }

    /// Dequantized weights `s[n] · (q − z[n])`, row-major `[out_features, in_features]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let codes = self.unpack_codes();
        codes
            .chunks_exact(self.in_features)
            .enumerate()
            .flat_map(|(n, row)| {
                let (s, z) = (self.scales[n], self.zero_points[n] as f32);
                row.iter().map(move |&q| (f32::from(q) - z) * s)
            })
            .collect()
    }
}

/// Packs `codes` (each below `2^container`) into `dst` little-end first.
fn pack_row(codes: impl Iterator<Item = u8>, container: u32, dst: &mut [u8]) {
    let c = container as usize;
    let per = 8 / c;
    for (k, q) in codes.enumerate() {
        dst[k / per] |= q << (c * (k % per));
    }
}

fn check_dims(out_features: usize, in_features: usize) -> Result<()> {
    if out_features == 0 {
        return Err(Error::invalid("out_features", 0, "must be positive"));
    }
    if in_features == 0 || in_features > MAX_IN_FEATURES {
        return Err(Error::invalid(
            "in_features",
            in_features,
            format!("must be in 1..={MAX_IN_FEATURES} for exact i32 accumulation"),
        ));
    }
    Ok(())
}

fn check_params(n: usize, bits: BitWidth, scales: &[f32], zero_points: &[i32]) -> Result<()> {
    if scales.len() != n {
        return Err(Error::invalid(
            "scales",
            format!("{} values", scales.len()),
            format!("need one per output channel ({n})"),
        ));
    }
    if zero_points.len() != n {
        return Err(Error::invalid(
            "zero_points",
            format!("{} values", zero_points.len()),
            format!("need one per output channel ({n})"),
        ));
    }
    if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(Error::invalid("scale", s, "must be finite and positive"));
    }
    let qmax = (1i32 << bits.get()) - 1;
    if let Some(z) = zero_points.iter().find(|&&z| !(0..=qmax).contains(&z)) {
        return Err(Error::invalid(
            "zero_point",
            z,
            format!("must be in [0, {qmax}] for {} bits", bits.get()),
        ));
    }
    Ok(())
}
