//! Relevance (LRP) pictures: the raw signed map, the map blended over its input image, and a
//! captioned grid to compare several of them.

use std::path::Path;

use image::{GrayImage, Rgb, RgbImage};
use mixq_core::{Error, Result};

use crate::canvas::{Align, Canvas, TEXT, text_height};
use crate::scale::bwr;
use crate::{check_size, save_png};

/// Opacity of the colour at the largest |relevance|; lower values fade toward the grey image,
/// so zero relevance leaves the input visible and unchanged.
pub const OVERLAY_ALPHA: f32 = 0.75;

/// Checks `relevance` is a finite `w × h` map and returns its largest |value|, the symmetric
/// colour limit (red at +max, blue at -max, as in the LRP literature's `bwr` pictures).
fn check_relevance(relevance: &[f32], w: u32, h: u32) -> Result<f32> {
    if w == 0 || h == 0 || relevance.len() as u64 != w as u64 * h as u64 {
        return Err(Error::invalid(
            "relevance map length",
            relevance.len(),
            format!("must be rel_w * rel_h = {w} * {h} (both > 0)"),
        ));
    }
    let mut max = 0.0f32;
    for (i, &v) in relevance.iter().enumerate() {
        if !v.is_finite() {
            return Err(Error::invalid(
                format!("relevance at ({}, {})", i as u32 % w, i as u32 / w),
                v,
                "must be a finite number",
            ));
        }
        max = max.max(v.abs());
    }
    Ok(max)
}

/// The raw relevance map in `bwr`, each cell a `scale × scale` block (nearest neighbour keeps
/// patch boundaries visible).
pub fn relevance_image(relevance: &[f32], w: u32, h: u32, scale: u32) -> Result<RgbImage> {
    let max = check_relevance(relevance, w, h)?;
    if scale == 0 {
        return Err(Error::invalid(
            "relevance image scale",
            scale,
            "must be >= 1",
        ));
    }
    let (ow, oh) = (w as u64 * scale as u64, h as u64 * scale as u64);
    check_size("relevance image", ow, oh)?;
    Ok(RgbImage::from_fn(ow as u32, oh as u32, |x, y| {
        let v = relevance[((y / scale) * w + x / scale) as usize];
        Rgb(bwr(if max > 0.0 { v / max } else { 0.0 }))
    }))
}

/// Bilinear sample of a `w × h` map at continuous pixel-centre coordinates, clamped at edges.
fn sample(map: &[f32], w: u32, h: u32, x: f32, y: f32) -> f32 {
    let x = x.clamp(0.0, (w - 1) as f32);
    let y = y.clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (x.floor() as u32, y.floor() as u32);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (tx, ty) = (x - x0 as f32, y - y0 as f32);
    let at = |xi: u32, yi: u32| map[(yi * w + xi) as usize];
    let a = at(x0, y0) * (1.0 - tx) + at(x1, y0) * tx;
    let b = at(x0, y1) * (1.0 - tx) + at(x1, y1) * tx;
    a * (1.0 - ty) + b * ty
}

/// Blends `relevance` (a `rel_w × rel_h` map, e.g. 14 × 14 patches) over the greyscale version
/// of `image`, upscaled bilinearly to the image size. Opacity grows with |relevance| up to
/// [`OVERLAY_ALPHA`]: positive is red, negative blue, zero leaves the grey pixel unchanged.
pub fn overlay_heatmap(
    image: &RgbImage,
    relevance: &[f32],
    rel_w: u32,
    rel_h: u32,
) -> Result<RgbImage> {
    overlay_heatmap_gray(
        &image::DynamicImage::ImageRgb8(image.clone()).to_luma8(),
        relevance,
        rel_w,
        rel_h,
    )
}

/// [`overlay_heatmap`] for an image that is already greyscale.
pub fn overlay_heatmap_gray(
    image: &GrayImage,
    relevance: &[f32],
    rel_w: u32,
    rel_h: u32,
) -> Result<RgbImage> {
    let max = check_relevance(relevance, rel_w, rel_h)?;
    let (w, h) = image.dimensions();
    check_size("overlay image", w as u64, h as u64)?;
    let (sx, sy) = (rel_w as f32 / w as f32, rel_h as f32 / h as f32);
    Ok(RgbImage::from_fn(w, h, |x, y| {
        let g = image.get_pixel(x, y).0[0];
        let v = sample(
            relevance,
            rel_w,
            rel_h,
            (x as f32 + 0.5) * sx - 0.5,
            (y as f32 + 0.5) * sy - 0.5,
        );
        let t = if max > 0.0 { v / max } else { 0.0 };
        let alpha = OVERLAY_ALPHA * t.abs().min(1.0);
        let colour = bwr(t.signum());
        let mix = |c: u8| (g as f32 * (1.0 - alpha) + c as f32 * alpha).round() as u8;
        if alpha == 0.0 {
            Rgb([g, g, g])
        } else {
            Rgb([mix(colour[0]), mix(colour[1]), mix(colour[2])])
        }
    }))
}

/// [`overlay_heatmap`] written as a PNG at `path`, atomically.
pub fn write_overlay(
    path: impl AsRef<Path>,
    image: &RgbImage,
    relevance: &[f32],
    rel_w: u32,
    rel_h: u32,
) -> Result<()> {
    save_png(path, &overlay_heatmap(image, relevance, rel_w, rel_h)?)
}

const GRID_PAD: u32 = 8;
const CAPTION_PX: f32 = 12.0;
const FRAME: crate::Colour = [200, 200, 200];

/// Tiles `images` row by row, `columns` per row, each centred in a cell as large as the largest
/// image, with its caption underneath. `captions` is empty (no captions) or one per image.
pub fn image_grid(images: &[RgbImage], columns: usize, captions: &[String]) -> Result<RgbImage> {
    if images.is_empty() {
        return Err(Error::invalid(
            "image grid images",
            "[]",
            "needs at least one image",
        ));
    }
    if columns == 0 {
        return Err(Error::invalid(
            "image grid columns",
            columns,
            "must be >= 1",
        ));
    }
    if !captions.is_empty() && captions.len() != images.len() {
        return Err(Error::invalid(
            "image grid captions count",
            captions.len(),
            format!("must be 0 or the number of images ({})", images.len()),
        ));
    }
    let cell_w = images.iter().map(|i| i.width()).max().unwrap_or(0) as u64;
    let cell_h = images.iter().map(|i| i.height()).max().unwrap_or(0) as u64;
    let cap_h = if captions.is_empty() {
        0
    } else {
        (text_height(CAPTION_PX) + 6.0).ceil() as u64
    };
    let cols = columns.min(images.len()) as u64;
    let rows = images.len().div_ceil(columns) as u64;
    let pad = GRID_PAD as u64;
    let w = pad + cols * (cell_w + pad);
    let h = pad + rows * (cell_h + cap_h + pad);
    check_size("image grid", w.max(cell_w), h.max(cell_h))?;
    if cell_w == 0 || cell_h == 0 {
        return Err(Error::invalid(
            "image grid image size",
            "0x0",
            "images must not be empty",
        ));
    }

    let mut c = Canvas::new(w as u32, h as u32);
    for (i, img) in images.iter().enumerate() {
        let (col, row) = (i as u64 % cols, i as u64 / cols);
        let x = pad + col * (cell_w + pad);
        let y = pad + row * (cell_h + cap_h + pad);
        let ox = x + (cell_w - img.width() as u64) / 2;
        let oy = y + (cell_h - img.height() as u64) / 2;
        // A hairline frame so white-backed maps stay distinct from the page.
        let (fx, fy) = (ox as f32, oy as f32);
        let (fw, fh) = (img.width() as f32, img.height() as f32);
        c.stroke_rect(fx - 1.0, fy - 1.0, fx + fw + 1.0, fy + fh + 1.0, FRAME);
        image::imageops::replace(&mut c.img, img, ox as i64, oy as i64);
        if let Some(cap) = captions.get(i) {
            let t = Canvas::fit(cap, CAPTION_PX, cell_w as f32);
            let cx = x as f32 + cell_w as f32 / 2.0;
            let cy = (y + cell_h) as f32 + 3.0;
            c.text(
                &t,
                cx,
                cy,
                CAPTION_PX,
                TEXT,
                Align::Center,
                Align::Start,
                0.0,
            );
        }
    }
    Ok(c.img)
}

/// Grey intensities `[h * w]` in `[0, 1]` as an image, each pixel a `scale` x `scale` block (what
/// relevance is overlaid on).
pub fn gray_image(intensities: &[f32], w: usize, h: usize, scale: u32) -> GrayImage {
    GrayImage::from_fn(w as u32 * scale, h as u32 * scale, |x, y| {
        let v = intensities[(y / scale) as usize * w + (x / scale) as usize];
        image::Luma([(v * 255.0).round() as u8])
    })
}
