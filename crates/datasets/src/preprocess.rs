//! timm-exact evaluation preprocessing.
//!
//! A quantised model is judged by how far its accuracy drops from the float
//! model's, so the float baseline must see the same pixels it saw in timm.
//! This module reproduces timm's `transforms_imagenet_eval` (crop mode
//! `center`) step by step:
//!
//! 1. `scale_size = floor(img_size / crop_pct)`;
//! 2. torchvision `Resize(scale_size)`: the shorter side becomes
//!    `scale_size`, the longer one `int(scale_size * long / short)`;
//! 3. Pillow `BICUBIC` resampling, reproduced integer for integer from
//!    Pillow's `libImaging/Resample.c` (8-bit fixed point, 22 fraction bits,
//!    Pillow 13's choice of which pass runs first, see [`PassOrder`]);
//! 4. torchvision `CenterCrop(img_size)` with Python's round-half-to-even
//!    offsets (and zero padding when the image is smaller than the crop);
//! 5. `ToTensor` (`x / 255`) and `Normalize` (`(x - mean) / std`) in `f32`.
//!
//! Decoding is the one step that is not bit-exact: the `image` crate's JPEG
//! decoder is not libjpeg-turbo, so a JPEG may decode to pixels that differ by
//! a level or so. PNG decoding is lossless and therefore exact.

use std::ops::Range;
use std::path::Path;

use image::{DynamicImage, ImageReader};
use serde::{Deserialize, Serialize};

use crate::DataError;

/// timm's `DEFAULT_CROP_PCT`.
pub const DEFAULT_CROP_PCT: f64 = 0.875;
/// timm's `IMAGENET_DEFAULT_MEAN`.
pub const IMAGENET_DEFAULT_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// timm's `IMAGENET_DEFAULT_STD`.
pub const IMAGENET_DEFAULT_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// timm's `IMAGENET_INCEPTION_MEAN`, used by many ViT checkpoints.
pub const IMAGENET_INCEPTION_MEAN: [f32; 3] = [0.5, 0.5, 0.5];
/// timm's `IMAGENET_INCEPTION_STD`, used by many ViT checkpoints.
pub const IMAGENET_INCEPTION_STD: [f32; 3] = [0.5, 0.5, 0.5];

/// The evaluation transform of a timm model (its `pretrained_cfg`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalTransform {
    /// Side of the square network input (`input_size[1]`).
    pub img_size: usize,
    /// Fraction of the resized image kept by the centre crop.
    pub crop_pct: f64,
    /// Per-channel mean on the `[0, 1]` scale; only `[0]` is used for 1 channel.
    pub mean: [f32; 3],
    /// Per-channel standard deviation; only `[0]` is used for 1 channel.
    pub std: [f32; 3],
    /// 3 for RGB, 1 for grayscale (Pillow `convert('L')`).
    pub channels: usize,
}

impl EvalTransform {
    /// timm's defaults: crop 0.875 and the ImageNet mean/std, RGB.
    pub fn imagenet(img_size: usize) -> Self {
        Self {
            img_size,
            crop_pct: DEFAULT_CROP_PCT,
            mean: IMAGENET_DEFAULT_MEAN,
            std: IMAGENET_DEFAULT_STD,
            channels: 3,
        }
    }

    /// Checks the fields so that a bad config fails before any image is read.
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |msg: String| Err(DataError::InvalidArgument(msg));
        if self.img_size == 0 {
            return bad("img_size must be positive".into());
        }
        if !(self.crop_pct.is_finite() && self.crop_pct > 0.0) {
            return bad(format!(
                "crop_pct must be positive and finite, got {}",
                self.crop_pct
            ));
        }
        if self.channels != 1 && self.channels != 3 {
            return bad(format!("channels must be 1 or 3, got {}", self.channels));
        }
        if self.scale_size() == 0 {
            return bad(format!(
                "img_size {} / crop_pct {} rounds down to a zero resize",
                self.img_size, self.crop_pct
            ));
        }
        for c in 0..self.channels {
            if !self.mean[c].is_finite() || !self.std[c].is_finite() || self.std[c] == 0.0 {
                return bad(format!(
                    "mean/std of channel {c} must be finite with std != 0, got {} / {}",
                    self.mean[c], self.std[c]
                ));
            }
        }
        Ok(())
    }

    /// Target of the shorter side before cropping: `floor(img_size / crop_pct)`.
    pub fn scale_size(&self) -> usize {
        (self.img_size as f64 / self.crop_pct).floor() as usize
    }

    /// Number of `f32` values one preprocessed image occupies (`C * H * W`).
    pub fn output_len(&self) -> usize {
        self.channels * self.img_size * self.img_size
    }
}

/// Opens and decodes an image, detecting the format from its content as
/// Pillow does (a PNG named `.jpg` still loads).
pub fn load_image(path: impl AsRef<Path>) -> Result<DynamicImage, DataError> {
    let path = path.as_ref();
    let reader = ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    reader.decode().map_err(|source| DataError::Decode {
        path: path.to_path_buf(),
        source,
    })
}

/// Applies the timm evaluation transform to a decoded image and returns the
/// `C x img_size x img_size` tensor in row-major CHW order.
///
/// # Panics
///
/// If the transform is invalid (see [`EvalTransform::validate`]) or the image
/// has a zero width or height.
pub fn eval_transform_image(img: &DynamicImage, t: &EvalTransform) -> Vec<f32> {
    eval_transform_image_with_order(img, t, PassOrder::default())
}

/// [`eval_transform_image`] with an explicit resampling pass order, to match
/// references made with Pillow 12 or earlier ([`PassOrder::HorizontalFirst`]).
///
/// # Panics
///
/// As [`eval_transform_image`].
pub fn eval_transform_image_with_order(
    img: &DynamicImage,
    t: &EvalTransform,
    order: PassOrder,
) -> Vec<f32> {
    try_eval_transform(img, t, order).unwrap_or_else(|e| panic!("eval_transform_image: {e}"))
}

/// Fallible version of [`eval_transform_image`], used by the loader.
pub(crate) fn try_eval_transform(
    img: &DynamicImage,
    t: &EvalTransform,
    order: PassOrder,
) -> Result<Vec<f32>, DataError> {
    t.validate()?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(DataError::InvalidArgument(format!(
            "image has zero size {w}x{h}"
        )));
    }
    let pixels = to_channels(img, t.channels);
    let c = t.channels;
    let (new_w, new_h) = resized_size_shorter(w, h, t.scale_size());
    let size = t.img_size;
    let top = center_crop_offset(new_h, size);
    let left = center_crop_offset(new_w, size);
    // The part of the crop that lies inside the resized image; the rest is
    // torchvision's zero padding (only when crop_pct > 1).
    let ys = window(top, size, new_h);
    let xs = window(left, size, new_w);
    let geometry = Size {
        width: w,
        height: h,
        channels: c,
        new_width: new_w,
        new_height: new_h,
    };
    let patch = resize_bicubic_window(&pixels, geometry, xs.clone(), ys.clone(), order);

    let plane = size * size;
    let mut out = vec![0.0f32; c * plane];
    for ch in 0..c {
        let (mean, std) = (t.mean[ch], t.std[ch]);
        let zero = normalize(0, mean, std);
        let dst = &mut out[ch * plane..(ch + 1) * plane];
        dst.fill(zero);
        for (py, sy) in ys.clone().enumerate() {
            let oy = (sy as isize - top) as usize;
            for (px, sx) in xs.clone().enumerate() {
                let ox = (sx as isize - left) as usize;
                let v = patch[(py * xs.len() + px) * c + ch];
                dst[oy * size + ox] = normalize(v, mean, std);
            }
        }
    }
    Ok(out)
}

/// torchvision `ToTensor` then `Normalize`, in the same f32 operation order.
#[inline]
fn normalize(v: u8, mean: f32, std: f32) -> f32 {
    (v as f32 / 255.0 - mean) / std
}

/// Source range covered by a crop of `crop` starting at `offset` in `0..size`.
fn window(offset: isize, crop: usize, size: usize) -> Range<usize> {
    let start = offset.max(0) as usize;
    let end = (offset + crop as isize)
        .min(size as isize)
        .max(start as isize) as usize;
    start..end
}

/// Converts to interleaved 8-bit pixels as Pillow's `convert('RGB')` or
/// `convert('L')` would: alpha is dropped (not composited), gray is
/// replicated, and RGB -> L uses Pillow's ITU-R 601-2 fixed-point luma.
fn to_channels(img: &DynamicImage, channels: usize) -> Vec<u8> {
    match (channels, img) {
        (1, DynamicImage::ImageLuma8(g)) => g.as_raw().clone(),
        (1, _) => img
            .to_rgb8()
            .as_raw()
            .chunks_exact(3)
            .map(|p| luma_pillow(p[0], p[1], p[2]))
            .collect(),
        (_, DynamicImage::ImageRgb8(rgb)) => rgb.as_raw().clone(),
        _ => img.to_rgb8().into_raw(),
    }
}

/// Pillow's `L24` macro: `(r*19595 + g*38470 + b*7471 + 0x8000) >> 16`.
#[inline]
pub(crate) fn luma_pillow(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Output size of torchvision `Resize(size)` with an int `size` on an image
/// of `width x height`: the shorter side becomes `size`, the longer one
/// `int(size * long / short)` (truncated, computed in f64 like Python).
pub fn resized_size_shorter(width: usize, height: usize, size: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = ((size * long) as f64 / short as f64) as usize;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// Start offset of torchvision's `CenterCrop` along one dimension:
/// `int(round((size - crop) / 2.0))` with Python's round-half-to-even. When
/// `crop > size`, torchvision first pads `(crop - size) // 2` zeros before
/// the image, which shows up here as a negative offset.
pub fn center_crop_offset(size: usize, crop: usize) -> isize {
    if crop > size {
        return -(((crop - size) / 2) as isize);
    }
    let d = size - crop;
    let half = d / 2;
    // d odd means the exact value is half + 0.5: round to the even neighbour.
    let rounded = if d % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    };
    rounded as isize
}

/// Which Pillow rule orders the two resampling passes.
///
/// The order changes results by a level here and there, because the first
/// pass is rounded to 8 bits before the second one reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PassOrder {
    /// Pillow 13 and later: the vertical pass runs first when the height
    /// shrinks by more than twice as many pixels as the width does;
    /// otherwise the horizontal pass runs first.
    #[default]
    Pillow13,
    /// Pillow 12 and earlier: always horizontal first.
    HorizontalFirst,
}

impl PassOrder {
    /// Whether the vertical pass runs first for this resize.
    pub fn vertical_first(self, width: usize, height: usize, new_w: usize, new_h: usize) -> bool {
        match self {
            PassOrder::HorizontalFirst => false,
            PassOrder::Pillow13 => {
                let (w, h, nw, nh) = (width as i64, height as i64, new_w as i64, new_h as i64);
                nh < h && h - nh > 2 * (w - nw)
            }
        }
    }
}

/// Resizes an interleaved 8-bit image (`channels` values per pixel) with
/// Pillow's `BICUBIC` filter, bit-exactly as Pillow 13's `Image.resize`.
pub fn resize_bicubic(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    new_width: usize,
    new_height: usize,
) -> Vec<u8> {
    resize_bicubic_with_order(
        src,
        width,
        height,
        channels,
        new_width,
        new_height,
        PassOrder::default(),
    )
}

/// [`resize_bicubic`] with an explicit pass order, e.g. to match Pillow 12.
pub fn resize_bicubic_with_order(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    new_width: usize,
    new_height: usize,
    order: PassOrder,
) -> Vec<u8> {
    let size = Size {
        width,
        height,
        channels,
        new_width,
        new_height,
    };
    resize_bicubic_window(src, size, 0..new_width, 0..new_height, order)
}

/// Pillow's fixed-point precision: 32 bits minus 8 for the value and 2 for
/// the overshoot of the negative-lobed filter.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bicubic kernel (Keys, a = -0.5), support 2.
#[inline]
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Resampling coefficients for one axis, as Pillow's `precompute_coeffs`
/// followed by `normalize_coeffs_8bpc`.
struct Kernel {
    /// `(first source index, number of taps)` per output index.
    bounds: Vec<(usize, usize)>,
    /// Row stride of `coeffs`.
    ksize: usize,
    /// Fixed-point weights, `ksize` per output index.
    coeffs: Vec<i32>,
}

impl Kernel {
    fn new(in_size: usize, out_size: usize) -> Self {
        const SUPPORT: f64 = 2.0;
        // Pillow takes the box edges as C floats: in0 = 0, in1 = in_size.
        let in0 = 0.0f32;
        let in1 = in_size as f32;
        let scale = (in1 - in0) as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;
        let mut bounds = Vec::with_capacity(out_size);
        let mut coeffs = vec![0i32; out_size * ksize];
        let mut weights = vec![0.0f64; ksize];
        for xx in 0..out_size {
            let center = in0 as f64 + (xx as f64 + 0.5) * scale;
            // `as i64` truncates toward zero like C's (int) cast.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
            let (xmin, xmax) = (xmin as usize, xmax.max(0) as usize);
            let mut ww = 0.0f64;
            for (x, w) in weights.iter_mut().enumerate().take(xmax) {
                *w = bicubic_filter(((x + xmin) as f64 - center + 0.5) * ss);
                ww += *w;
            }
            let k = &mut coeffs[xx * ksize..xx * ksize + xmax];
            for (dst, &w) in k.iter_mut().zip(&weights) {
                let w = if ww != 0.0 { w / ww } else { w };
                let fixed = w * (1u32 << PRECISION_BITS) as f64;
                *dst = if w < 0.0 {
                    (-0.5 + fixed) as i32
                } else {
                    (0.5 + fixed) as i32
                };
            }
            bounds.push((xmin, xmax));
        }
        Self {
            bounds,
            ksize,
            coeffs,
        }
    }

    #[inline]
    fn taps(&self, out: usize) -> (usize, &[i32]) {
        let (start, len) = self.bounds[out];
        let k = &self.coeffs[out * self.ksize..out * self.ksize + len];
        (start, k)
    }
}

/// Pillow's `clip8`: drop the fraction bits (arithmetic shift) and clamp.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Accumulator start: one half, so that the final shift rounds.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Source and target geometry of a resize.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Size {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub new_width: usize,
    pub new_height: usize,
}

/// The union of the source ranges that the outputs `outs` read.
fn taps_span(k: &Kernel, outs: &Range<usize>) -> Range<usize> {
    let first = outs.clone().map(|o| k.bounds[o].0).min().unwrap_or(0);
    let last = outs
        .clone()
        .map(|o| k.bounds[o].0 + k.bounds[o].1)
        .max()
        .unwrap_or(first);
    first..last.max(first)
}

/// Horizontal pass over `rows` of `buf` (a `cols`-wide slice of the source,
/// so `cols.start` is the source column of `buf`'s column 0), producing the
/// output columns `xs`.
fn pass_horizontal(
    buf: &[u8],
    cols: &Range<usize>,
    c: usize,
    rows: Range<usize>,
    k: &Kernel,
    xs: &Range<usize>,
) -> Vec<u8> {
    let in_stride = cols.len() * c;
    let out_stride = xs.len() * c;
    let mut out = vec![0u8; rows.len() * out_stride];
    for (dst_row, r) in out.chunks_exact_mut(out_stride.max(1)).zip(rows) {
        let src_row = &buf[r * in_stride..(r + 1) * in_stride];
        for (tx, ox) in xs.clone().enumerate() {
            let (start, taps) = k.taps(ox);
            let base = (start - cols.start) * c;
            for ch in 0..c {
                let mut acc = HALF;
                for (i, &w) in taps.iter().enumerate() {
                    acc += src_row[base + i * c + ch] as i32 * w;
                }
                dst_row[tx * c + ch] = clip8(acc);
            }
        }
    }
    out
}

/// Vertical pass over the columns `cols` of `buf` (`width` pixels wide, its
/// row 0 being source row `row0`), producing the output rows `ys`.
fn pass_vertical(
    buf: &[u8],
    width: usize,
    c: usize,
    row0: usize,
    cols: &Range<usize>,
    k: &Kernel,
    ys: &Range<usize>,
) -> Vec<u8> {
    let in_stride = width * c;
    let out_stride = cols.len() * c;
    let mut out = vec![0u8; ys.len() * out_stride];
    for (dst, oy) in out.chunks_exact_mut(out_stride.max(1)).zip(ys.clone()) {
        let (start, taps) = k.taps(oy);
        let base = (start - row0) * in_stride + cols.start * c;
        for (i, d) in dst.iter_mut().enumerate() {
            let mut acc = HALF;
            for (j, &w) in taps.iter().enumerate() {
                acc += buf[base + j * in_stride + i] as i32 * w;
            }
            *d = clip8(acc);
        }
    }
    out
}

/// Copies the `rows x cols` block of an image `width` pixels wide.
fn copy_block(
    buf: &[u8],
    width: usize,
    c: usize,
    rows: &Range<usize>,
    cols: &Range<usize>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * cols.len() * c);
    for r in rows.clone() {
        out.extend_from_slice(&buf[(r * width + cols.start) * c..(r * width + cols.end) * c]);
    }
    out
}

/// Pillow's two-pass resample restricted to the output window `xs x ys`.
///
/// Every output pixel depends only on its own coefficients and on the
/// intermediate pixels it reads, so computing a window gives exactly the
/// pixels Pillow would produce there; the centre crop then costs no work
/// outside the crop. As in Pillow, the first pass writes an 8-bit
/// intermediate, and a pass is skipped when its dimension keeps its size.
/// Returns `ys.len() x xs.len() x channels` bytes.
pub(crate) fn resize_bicubic_window(
    src: &[u8],
    size: Size,
    xs: Range<usize>,
    ys: Range<usize>,
    order: PassOrder,
) -> Vec<u8> {
    let Size {
        width,
        height,
        channels: c,
        new_width,
        new_height,
    } = size;
    assert_eq!(src.len(), width * height * c, "buffer size mismatch");
    assert!(
        xs.end <= new_width && ys.end <= new_height,
        "window outside output"
    );
    let hk = (new_width != width).then(|| Kernel::new(width, new_width));
    let vk = (new_height != height).then(|| Kernel::new(height, new_height));
    match (&hk, &vk) {
        (None, None) => copy_block(src, width, c, &ys, &xs),
        (Some(hk), None) => pass_horizontal(src, &(0..width), c, ys, hk, &xs),
        (None, Some(vk)) => pass_vertical(src, width, c, 0, &xs, vk, &ys),
        (Some(hk), Some(vk)) => {
            if order.vertical_first(width, height, new_width, new_height) {
                let cols = taps_span(hk, &xs);
                let tmp = pass_vertical(src, width, c, 0, &cols, vk, &ys);
                pass_horizontal(&tmp, &cols, c, 0..ys.len(), hk, &xs)
            } else {
                let rows = taps_span(vk, &ys);
                let tmp = pass_horizontal(src, &(0..width), c, rows.clone(), hk, &xs);
                pass_vertical(&tmp, xs.len(), c, rows.start, &(0..xs.len()), vk, &ys)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_filter_values_match_hand_computation() {
        // f(0.25) = (1.5*0.25 - 2.5) * 0.25^2 + 1 = 0.8671875 = 111/128
        assert_eq!(bicubic_filter(0.25), 111.0 / 128.0);
        assert_eq!(bicubic_filter(-0.25), 111.0 / 128.0);
        // f(0.75) = (1.5*0.75 - 2.5) * 0.75^2 + 1 = 29/128
        assert_eq!(bicubic_filter(0.75), 29.0 / 128.0);
        // f(1.25) = (((1.25 - 5) * 1.25 + 8) * 1.25 - 4) * -0.5 = -9/128
        assert_eq!(bicubic_filter(1.25), -9.0 / 128.0);
        assert_eq!(bicubic_filter(0.0), 1.0);
        assert_eq!(bicubic_filter(1.0), 0.0);
        assert_eq!(bicubic_filter(2.0), 0.0);
    }

    #[test]
    fn kernel_downscale_by_two_matches_hand_computation() {
        // 4 -> 2: scale = filterscale = 2, support = 4, ss = 0.5.
        // out 0: center 1, taps 0..4 at (x - 1 + 0.5) * 0.5 = -0.25, 0.25, 0.75, 1.25
        // weights 111, 111, 29, -9 (/128), sum 242/128 -> 111/242 ...
        let k = Kernel::new(4, 2);
        assert_eq!(k.bounds, vec![(0, 4), (0, 4)]);
        let q = |num: f64| {
            let w = num / 242.0 * 4194304.0;
            if w < 0.0 {
                (w - 0.5) as i32
            } else {
                (w + 0.5) as i32
            }
        };
        // 111/242 * 2^22 = 1923833.65 -> 1923834; 29/242 * 2^22 = 502623.21 -> 502623;
        // -9/242 * 2^22 = -155986.51 -> -155987 (negative weights round away from 0).
        assert_eq!(q(111.0), 1923834);
        assert_eq!(q(29.0), 502623);
        assert_eq!(q(-9.0), -155987);
        assert_eq!(k.taps(0).1, &[1923834, 1923834, 502623, -155987]);
        assert_eq!(k.taps(1).1, &[-155987, 502623, 1923834, 1923834]);
    }

    #[test]
    fn resize_row_downscale_by_two() {
        // out0 = (0*111 + 100*111 + 200*29 - 255*9) / 242 = 14605/242 = 60.35 -> 60
        // out1 = (0*-9 + 100*29 + 200*111 + 255*111) / 242 = 53405/242 = 220.68 -> 221
        let out = resize_bicubic(&[0, 100, 200, 255], 4, 1, 1, 2, 1);
        assert_eq!(out, vec![60, 221]);
    }

    #[test]
    fn resize_row_upscale_by_two() {
        // 2 -> 4: scale 0.5, filterscale 1, support 2; centers 0.25, 0.75, 1.25, 1.75.
        // Both source pixels are taps of every output pixel:
        //   out0: f(0.25), f(1.25) = 111, -9  -> (100*111 - 200*9) / 102 = 91.18 -> 91
        //   out1: f(-0.25), f(0.75) = 111, 29 -> (100*111 + 200*29) / 140 = 120.71 -> 121
        //   out2: f(-0.75), f(0.25) = 29, 111 -> (100*29 + 200*111) / 140 = 179.29 -> 179
        //   out3: f(-1.25), f(-0.25) = -9, 111 -> (-100*9 + 200*111) / 102 = 208.82 -> 209
        let out = resize_bicubic(&[100, 200], 2, 1, 1, 4, 1);
        assert_eq!(out, vec![91, 121, 179, 209]);
    }

    #[test]
    fn resize_upscale_clips_overshoot() {
        // [0, 255] -> 4: out0 = -9/102*255 < 0 -> 0; out3 = 111/102*255 = 277.5 -> 255.
        // out1 = 29/140*255 = 52.82 -> 53; out2 = 111/140*255 = 202.18 -> 202.
        let out = resize_bicubic(&[0, 255], 2, 1, 1, 4, 1);
        assert_eq!(out, vec![0, 53, 202, 255]);
    }

    #[test]
    fn resize_column_is_the_transpose_of_the_row() {
        let out = resize_bicubic(&[0, 100, 200, 255], 1, 4, 1, 1, 2);
        assert_eq!(out, vec![60, 221]);
        let out = resize_bicubic(&[100, 200], 1, 2, 1, 1, 4);
        assert_eq!(out, vec![91, 121, 179, 209]);
    }

    #[test]
    fn resize_channels_are_independent() {
        // Two channels interleaved: channel 0 = [0, 100, 200, 255], channel 1 = reversed.
        let src = [0, 255, 100, 200, 200, 100, 255, 0];
        let out = resize_bicubic(&src, 4, 1, 2, 2, 1);
        assert_eq!(out, vec![60, 221, 221, 60]);
    }

    #[test]
    fn resize_same_size_is_identity() {
        let src: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(resize_bicubic(&src, 5, 3, 3, 5, 3), src);
    }

    #[test]
    fn resize_2d_goes_through_an_8_bit_intermediate() {
        // 2x2 -> 4x4: the horizontal pass rounds each row to u8 first.
        // Row [100, 200] -> [91, 121, 179, 209]; row [200, 100] -> [209, 179, 121, 91].
        // Column 0 is then [91, 209] -> (91*111 - 209*9)/102 = 80.6 -> 81,
        // (91*111 + 209*29)/140 = 115.44 -> 115, (91*29 + 209*111)/140 = 184.56 -> 185,
        // (-91*9 + 209*111)/102 = 219.4 -> 219.
        let out = resize_bicubic(&[100, 200, 200, 100], 2, 2, 1, 4, 4);
        let col0: Vec<u8> = (0..4).map(|y| out[y * 4]).collect();
        assert_eq!(col0, vec![81, 115, 185, 219]);
        // The input is symmetric under transposition, but the intermediate
        // rounding is not: row 0 is (row0*111 - row1*9)/102 of the rounded rows,
        // e.g. (121*111 - 179*9)/102 = 115.88 -> 116 where column 0 has 115.
        assert_eq!(&out[..4], &[81, 116, 184, 219]);
    }

    #[test]
    fn window_matches_full_resize() {
        let (w, h, c) = (13, 9, 3);
        let src: Vec<u8> = (0..w * h * c).map(|i| ((i * 7919) % 251) as u8).collect();
        for &(nw, nh) in &[(7, 5), (20, 9), (13, 17), (30, 4)] {
            let full = resize_bicubic(&src, w, h, c, nw, nh);
            let (xs, ys) = (2..nw - 1, 1..nh - 1);
            let size = Size {
                width: w,
                height: h,
                channels: c,
                new_width: nw,
                new_height: nh,
            };
            let win =
                resize_bicubic_window(&src, size, xs.clone(), ys.clone(), PassOrder::Pillow13);
            for (wy, y) in ys.clone().enumerate() {
                for (wx, x) in xs.clone().enumerate() {
                    for ch in 0..c {
                        assert_eq!(
                            win[(wy * xs.len() + wx) * c + ch],
                            full[(y * nw + x) * c + ch]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn pillow13_pass_order_rule() {
        let o = PassOrder::Pillow13;
        // Height loses 60 px, width 30: not more than twice -> horizontal first.
        assert!(!o.vertical_first(120, 120, 90, 60));
        assert!(o.vertical_first(120, 120, 90, 59));
        // Width grows, height shrinks -> vertical first; height grows -> horizontal.
        assert!(o.vertical_first(120, 120, 200, 119));
        assert!(!o.vertical_first(120, 120, 200, 121));
        // Typical ImageNet photo: horizontal first; a tall strip: vertical first.
        assert!(!o.vertical_first(500, 375, 341, 256));
        assert!(o.vertical_first(100, 400, 64, 256));
        assert!(!PassOrder::HorizontalFirst.vertical_first(100, 400, 64, 256));
    }

    #[test]
    fn vertical_first_is_the_transpose_of_horizontal_first() {
        // Resizing the transposed image vertically first must give the
        // transpose of resizing the original horizontally first.
        let (w, h, nw, nh) = (20, 10, 8, 9);
        let src: Vec<u8> = (0..w * h)
            .map(|i| ((i * 7919 + i / 3) % 256) as u8)
            .collect();
        let src_t: Vec<u8> = (0..w * h).map(|i| src[(i % h) * w + i / h]).collect();
        assert!(PassOrder::Pillow13.vertical_first(h, w, nh, nw));
        let out = resize_bicubic_with_order(&src, w, h, 1, nw, nh, PassOrder::HorizontalFirst);
        let out_t = resize_bicubic(&src_t, h, w, 1, nh, nw);
        let back: Vec<u8> = (0..nw * nh)
            .map(|i| out_t[(i % nw) * nh + i / nw])
            .collect();
        assert_eq!(out, back);
        // ... and the order does matter for this input.
        let out_t_h =
            resize_bicubic_with_order(&src_t, h, w, 1, nh, nw, PassOrder::HorizontalFirst);
        assert_ne!(out_t, out_t_h);
    }

    #[test]
    fn center_crop_offsets_use_bankers_rounding() {
        assert_eq!(center_crop_offset(10, 10), 0);
        assert_eq!(center_crop_offset(11, 10), 0); // round(0.5) = 0
        assert_eq!(center_crop_offset(12, 10), 1);
        assert_eq!(center_crop_offset(13, 10), 2); // round(1.5) = 2
        assert_eq!(center_crop_offset(15, 10), 2); // round(2.5) = 2
        assert_eq!(center_crop_offset(17, 10), 4); // round(3.5) = 4
        assert_eq!(center_crop_offset(256, 224), 16);
        // Smaller than the crop: torchvision pads (crop - size) // 2 in front.
        assert_eq!(center_crop_offset(7, 10), -1);
        assert_eq!(center_crop_offset(6, 10), -2);
    }

    #[test]
    fn resize_size_follows_torchvision() {
        assert_eq!(resized_size_shorter(500, 375, 256), (341, 256)); // int(341.33)
        assert_eq!(resized_size_shorter(375, 500, 256), (256, 341));
        assert_eq!(resized_size_shorter(300, 300, 256), (256, 256));
        assert_eq!(resized_size_shorter(3, 1000, 10), (10, 3333));
    }

    #[test]
    fn scale_size_is_floored() {
        assert_eq!(EvalTransform::imagenet(224).scale_size(), 256);
        let t = EvalTransform {
            crop_pct: 0.9,
            ..EvalTransform::imagenet(224)
        };
        assert_eq!(t.scale_size(), 248); // 248.88
        let t = EvalTransform {
            crop_pct: 1.0,
            ..EvalTransform::imagenet(384)
        };
        assert_eq!(t.scale_size(), 384);
    }

    #[test]
    fn validate_rejects_bad_fields() {
        let ok = EvalTransform::imagenet(32);
        assert!(ok.validate().is_ok());
        for bad in [
            EvalTransform { img_size: 0, ..ok },
            EvalTransform {
                crop_pct: 0.0,
                ..ok
            },
            EvalTransform {
                crop_pct: f64::NAN,
                ..ok
            },
            EvalTransform { channels: 2, ..ok },
            EvalTransform {
                std: [0.0, 1.0, 1.0],
                ..ok
            },
        ] {
            assert!(matches!(bad.validate(), Err(DataError::InvalidArgument(_))));
        }
    }

    #[test]
    fn luma_matches_pillow_fixed_point() {
        assert_eq!(luma_pillow(0, 0, 0), 0);
        assert_eq!(luma_pillow(255, 255, 255), 255);
        assert_eq!(luma_pillow(77, 77, 77), 77);
        // (255*19595 + 0x8000) >> 16 = 76.74 -> 76
        assert_eq!(luma_pillow(255, 0, 0), 76);
        assert_eq!(luma_pillow(0, 255, 0), 150);
        assert_eq!(luma_pillow(0, 0, 255), 29);
    }

    #[test]
    fn eval_transform_without_resize_only_normalizes() {
        // 4x4 image, img_size 4, crop_pct 1: no resize, no crop.
        let mut img = image::RgbImage::new(4, 4);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([(x * 60) as u8, (y * 60) as u8, 255]);
        }
        let t = EvalTransform {
            img_size: 4,
            crop_pct: 1.0,
            mean: [0.5, 0.25, 0.0],
            std: [0.5, 0.5, 2.0],
            channels: 3,
        };
        let out = eval_transform_image(&DynamicImage::ImageRgb8(img), &t);
        assert_eq!(out.len(), 48);
        // Channel 0 at (y=1, x=2): (120/255 - 0.5) / 0.5
        assert_eq!(out[4 + 2], (120.0f32 / 255.0 - 0.5) / 0.5);
        // Channel 1 at (y=3, x=0): (180/255 - 0.25) / 0.5
        assert_eq!(out[16 + 12], (180.0f32 / 255.0 - 0.25) / 0.5);
        // Channel 2 constant 255: (1 - 0) / 2
        assert!(out[32..].iter().all(|&v| v == 0.5));
    }

    #[test]
    fn eval_transform_crops_the_centre_with_bankers_rounding() {
        // A 7x5 gray ramp with scale_size 5 is not resized (5 -> 5, 7 -> int(5*7/5));
        // crop 4: left = round(1.5) = 2, top = round(0.5) = 0.
        let img = image::GrayImage::from_fn(7, 5, |x, y| image::Luma([(x * 10 + y * 40) as u8]));
        let t = EvalTransform {
            img_size: 4,
            crop_pct: 0.8, // floor(4 / 0.8) = 5
            mean: [0.0; 3],
            std: [1.0; 3],
            channels: 1,
        };
        assert_eq!(t.scale_size(), 5);
        let out = eval_transform_image(&DynamicImage::ImageLuma8(img), &t);
        let back: Vec<u8> = out.iter().map(|v| (v * 255.0).round() as u8).collect();
        let expect: Vec<u8> = (0..4)
            .flat_map(|y| (0..4).map(move |x| ((x + 2) * 10 + y * 40) as u8))
            .collect();
        assert_eq!(back, expect);
    }

    #[test]
    fn eval_transform_pads_when_crop_exceeds_image() {
        // crop_pct 2: scale 2 for img_size 4, a 2x2 image is padded by 1 on each side.
        let img = image::GrayImage::from_pixel(2, 2, image::Luma([255]));
        let t = EvalTransform {
            img_size: 4,
            crop_pct: 2.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            channels: 1,
        };
        let out = eval_transform_image(&DynamicImage::ImageLuma8(img), &t);
        let expect = [
            0., 0., 0., 0., //
            0., 1., 1., 0., //
            0., 1., 1., 0., //
            0., 0., 0., 0.,
        ];
        assert_eq!(out, expect);
    }

    #[test]
    fn gray_images_are_replicated_to_rgb() {
        let img = image::GrayImage::from_fn(3, 3, |x, y| image::Luma([(x * 40 + y) as u8]));
        let t = EvalTransform {
            img_size: 3,
            crop_pct: 1.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            channels: 3,
        };
        let out = eval_transform_image(&DynamicImage::ImageLuma8(img), &t);
        assert_eq!(out[..9], out[9..18]);
        assert_eq!(out[..9], out[18..]);
    }

    #[test]
    fn alpha_is_dropped_not_composited() {
        let img = image::RgbaImage::from_pixel(2, 2, image::Rgba([200, 100, 50, 0]));
        let t = EvalTransform {
            img_size: 2,
            crop_pct: 1.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            channels: 3,
        };
        let out = eval_transform_image(&DynamicImage::ImageRgba8(img), &t);
        assert_eq!(out[0], 200.0 / 255.0);
        assert_eq!(out[4], 100.0 / 255.0);
        assert_eq!(out[8], 50.0 / 255.0);
    }
}
