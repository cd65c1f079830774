//! A tiny anti-aliased raster canvas over an [`RgbImage`]: rectangles, thick lines, discs and
//! text from the embedded font. Everything clips to the image, so callers never index out of
//! bounds whatever coordinates their layout produced.

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, GlyphId, PxScale, ScaleFont, point};
use image::{Rgb, RgbImage};

use crate::Colour;

/// DejaVu Sans, vendored so text renders identically on every machine (see the crate docs).
static FONT_BYTES: &[u8] = include_bytes!("font/DejaVuSans.ttf");

fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).expect("embedded font parses"))
}

pub(crate) const WHITE: Colour = [255, 255, 255];
pub(crate) const TEXT: Colour = [30, 30, 30];
pub(crate) const AXIS: Colour = [60, 60, 60];
pub(crate) const GRID: Colour = [225, 225, 225];

/// Where a text's anchor point sits on its (unrotated) box.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Align {
    Start,
    Center,
    End,
}

/// A text measured and rasterised into a coverage mask, ready to composite at any angle.
struct TextMask {
    w: usize,
    h: usize,
    cov: Vec<f32>,
}

impl TextMask {
    fn sample(&self, x: f32, y: f32) -> f32 {
        // Bilinear over pixel centres; outside the mask is empty.
        let fx = x - 0.5;
        let fy = y - 0.5;
        let x0 = fx.floor();
        let y0 = fy.floor();
        let tx = fx - x0;
        let ty = fy - y0;
        let at = |xi: f32, yi: f32| -> f32 {
            if xi < 0.0 || yi < 0.0 || xi >= self.w as f32 || yi >= self.h as f32 {
                0.0
            } else {
                self.cov[yi as usize * self.w + xi as usize]
            }
        };
        let a = at(x0, y0) * (1.0 - tx) + at(x0 + 1.0, y0) * tx;
        let b = at(x0, y0 + 1.0) * (1.0 - tx) + at(x0 + 1.0, y0 + 1.0) * tx;
        a * (1.0 - ty) + b * ty
    }
}

fn layout(text: &str, px: f32) -> (Vec<(GlyphId, f32)>, f32, f32, f32) {
    let scaled = font().as_scaled(PxScale::from(px));
    let mut caret = 0.0f32;
    let mut prev: Option<GlyphId> = None;
    let mut glyphs = Vec::with_capacity(text.len());
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = prev {
            caret += scaled.kern(p, id);
        }
        glyphs.push((id, caret));
        caret += scaled.h_advance(id);
        prev = Some(id);
    }
    (glyphs, caret, scaled.ascent(), scaled.descent())
}

/// Width in pixels of `text` at `px` pixels per em.
pub(crate) fn text_width(text: &str, px: f32) -> f32 {
    layout(text, px).1
}

/// Line height (ascent + descent) at `px`.
pub(crate) fn text_height(px: f32) -> f32 {
    let scaled = font().as_scaled(PxScale::from(px));
    scaled.ascent() - scaled.descent()
}

fn rasterise(text: &str, px: f32) -> TextMask {
    let (glyphs, width, ascent, descent) = layout(text, px);
    let w = (width.ceil() as usize).max(1) + 2;
    let h = ((ascent - descent).ceil() as usize).max(1) + 2;
    let mut cov = vec![0.0f32; w * h];
    for (id, x) in glyphs {
        let glyph = id.with_scale_and_position(PxScale::from(px), point(x + 1.0, ascent + 1.0));
        if let Some(outlined) = font().outline_glyph(glyph) {
            let b = outlined.px_bounds();
            outlined.draw(|gx, gy, c| {
                let px = b.min.x as i64 + gx as i64;
                let py = b.min.y as i64 + gy as i64;
                if px >= 0 && py >= 0 && (px as usize) < w && (py as usize) < h {
                    let cell = &mut cov[py as usize * w + px as usize];
                    *cell = (*cell + c).min(1.0);
                }
            });
        }
    }
    TextMask { w, h, cov }
}

/// The drawing surface every chart renders into.
pub(crate) struct Canvas {
    pub img: RgbImage,
}

impl Canvas {
    pub fn new(w: u32, h: u32) -> Self {
        Canvas {
            img: RgbImage::from_pixel(w, h, Rgb(WHITE)),
        }
    }

    pub fn width(&self) -> u32 {
        self.img.width()
    }

    /// Mixes `colour` into one pixel with opacity `alpha` (0..=1); off-image pixels are ignored.
    pub fn blend(&mut self, x: i64, y: i64, colour: Colour, alpha: f32) {
        if x < 0 || y < 0 || x >= self.img.width() as i64 || y >= self.img.height() as i64 {
            return;
        }
        let a = alpha.clamp(0.0, 1.0);
        if a <= 0.0 {
            return;
        }
        let p = self.img.get_pixel_mut(x as u32, y as u32);
        for (dst, src) in p.0.iter_mut().zip(colour) {
            *dst = (*dst as f32 * (1.0 - a) + src as f32 * a).round() as u8;
        }
    }

    /// Fills the pixels whose centres lie in `[x0, x1) × [y0, y1)`.
    pub fn fill_rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, colour: Colour) {
        let (xa, xb) = (x0.min(x1).round() as i64, x0.max(x1).round() as i64);
        let (ya, yb) = (y0.min(y1).round() as i64, y0.max(y1).round() as i64);
        let xa = xa.max(0);
        let ya = ya.max(0);
        let xb = xb.min(self.img.width() as i64);
        let yb = yb.min(self.img.height() as i64);
        for y in ya..yb {
            for x in xa..xb {
                self.img.put_pixel(x as u32, y as u32, Rgb(colour));
            }
        }
    }

    /// One-pixel rectangle outline.
    pub fn stroke_rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, colour: Colour) {
        self.fill_rect(x0, y0, x1, y0 + 1.0, colour);
        self.fill_rect(x0, y1 - 1.0, x1, y1, colour);
        self.fill_rect(x0, y0, x0 + 1.0, y1, colour);
        self.fill_rect(x1 - 1.0, y0, x1, y1, colour);
    }

    /// Anti-aliased line of `width` pixels with round caps (coverage from the distance to the
    /// segment, so any slope looks the same).
    pub fn line(&mut self, a: (f32, f32), b: (f32, f32), width: f32, colour: Colour) {
        let hw = width / 2.0;
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = dx * dx + dy * dy;
        let pad = hw + 1.0;
        let xa = (a.0.min(b.0) - pad).floor().max(0.0) as i64;
        let xb = (a.0.max(b.0) + pad).ceil().min(self.img.width() as f32) as i64;
        let ya = (a.1.min(b.1) - pad).floor().max(0.0) as i64;
        let yb = (a.1.max(b.1) + pad).ceil().min(self.img.height() as f32) as i64;
        for y in ya..yb {
            for x in xa..xb {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let t = if len2 > 0.0 {
                    (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (cx, cy) = (a.0 + t * dx, a.1 + t * dy);
                let d = ((px - cx).powi(2) + (py - cy).powi(2)).sqrt();
                let cov = (hw + 0.5 - d).clamp(0.0, 1.0);
                self.blend(x, y, colour, cov);
            }
        }
    }

    /// Anti-aliased filled disc.
    pub fn disc(&mut self, c: (f32, f32), r: f32, colour: Colour) {
        self.line(c, c, 2.0 * r, colour);
    }

    /// Draws `text` so that its anchor point (chosen by `h`/`v` on the unrotated box) lands on
    /// `(x, y)`, rotated by `deg` degrees counter-clockwise about that anchor. Rotating a mask
    /// instead of the outlines keeps one code path for every angle.
    #[allow(clippy::too_many_arguments)]
    pub fn text(
        &mut self,
        text: &str,
        x: f32,
        y: f32,
        px: f32,
        colour: Colour,
        h: Align,
        v: Align,
        deg: f32,
    ) {
        if text.is_empty() {
            return;
        }
        let mask = rasterise(text, px);
        let ax = match h {
            Align::Start => 1.0,
            Align::Center => mask.w as f32 / 2.0,
            Align::End => mask.w as f32 - 1.0,
        };
        let ay = match v {
            Align::Start => 1.0,
            Align::Center => mask.h as f32 / 2.0,
            Align::End => mask.h as f32 - 1.0,
        };
        let (s, c) = (-deg.to_radians()).sin_cos();
        let (s, c) = if (deg / 90.0).fract() == 0.0 {
            (s.round(), c.round())
        } else {
            (s, c)
        };
        // Forward map: image = R·(mask − anchor) + (x, y), with y pointing down.
        let corners = [
            (0.0, 0.0),
            (mask.w as f32, 0.0),
            (0.0, mask.h as f32),
            (mask.w as f32, mask.h as f32),
        ];
        let (mut xmin, mut xmax, mut ymin, mut ymax) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for (mx, my) in corners {
            let (u, w) = (mx - ax, my - ay);
            let ix = c * u - s * w + x;
            let iy = s * u + c * w + y;
            xmin = xmin.min(ix);
            xmax = xmax.max(ix);
            ymin = ymin.min(iy);
            ymax = ymax.max(iy);
        }
        // At multiples of 90° shift the anchor so mask pixels land exactly on image pixels:
        // no resampling blur, crisp text.
        let (x, y) = if (deg / 90.0).fract() == 0.0 {
            let (s, c) = (s.round(), c.round());
            let (dx, dy) = (0.5 - x, 0.5 - y);
            let u = c * dx + s * dy + ax - 0.5;
            let w = -s * dx + c * dy + ay - 0.5;
            let (eu, ew) = (u - u.round(), w - w.round());
            (x + c * eu - s * ew, y + s * eu + c * ew)
        } else {
            (x, y)
        };
        let x0 = (xmin.floor() as i64 - 1).max(0);
        let x1 = (xmax.ceil() as i64 + 1).min(self.img.width() as i64);
        let y0 = (ymin.floor() as i64 - 1).max(0);
        let y1 = (ymax.ceil() as i64 + 1).min(self.img.height() as i64);
        for iy in y0..y1 {
            for ix in x0..x1 {
                let (dx, dy) = (ix as f32 + 0.5 - x, iy as f32 + 0.5 - y);
                // Inverse rotation back into mask space.
                let u = c * dx + s * dy + ax;
                let w = -s * dx + c * dy + ay;
                let cov = mask.sample(u, w);
                if cov > 0.0 {
                    self.blend(ix, iy, colour, cov);
                }
            }
        }
    }

    /// `text` shortened with a trailing "…" until it fits `max_w` pixels.
    pub fn fit(text: &str, px: f32, max_w: f32) -> String {
        if text_width(text, px) <= max_w {
            return text.to_string();
        }
        let chars: Vec<char> = text.chars().collect();
        for keep in (1..chars.len()).rev() {
            let s: String = chars[..keep].iter().collect::<String>() + "…";
            if text_width(&s, px) <= max_w {
                return s;
            }
        }
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLACK: Colour = [0, 0, 0];

    #[test]
    fn text_draws_ink_inside_the_expected_box() {
        let mut c = Canvas::new(200, 60);
        c.text(
            "Hello",
            100.0,
            30.0,
            20.0,
            BLACK,
            Align::Center,
            Align::Center,
            0.0,
        );
        let w = text_width("Hello", 20.0);
        assert!(w > 30.0 && w < 80.0, "{w}");
        let mut dark = 0;
        for (x, y, p) in c.img.enumerate_pixels() {
            if p.0[0] < 128 {
                dark += 1;
                assert!((x as f32 - 100.0).abs() < w / 2.0 + 3.0, "ink at x={x}");
                assert!((y as f32 - 30.0).abs() < 14.0, "ink at y={y}");
            }
        }
        assert!(dark > 40, "only {dark} dark pixels");
    }

    #[test]
    fn rotated_text_is_taller_than_wide() {
        let mut c = Canvas::new(60, 200);
        c.text(
            "Vertical",
            30.0,
            100.0,
            16.0,
            BLACK,
            Align::Center,
            Align::Center,
            90.0,
        );
        let ink: Vec<(u32, u32)> = c
            .img
            .enumerate_pixels()
            .filter(|(_, _, p)| p.0[0] < 128)
            .map(|(x, y, _)| (x, y))
            .collect();
        let (xmin, xmax) = (ink.iter().map(|p| p.0).min(), ink.iter().map(|p| p.0).max());
        let (ymin, ymax) = (ink.iter().map(|p| p.1).min(), ink.iter().map(|p| p.1).max());
        let wide = xmax.unwrap() - xmin.unwrap();
        let tall = ymax.unwrap() - ymin.unwrap();
        assert!(tall > 2 * wide, "{wide}×{tall}");
    }

    #[test]
    fn drawing_off_canvas_is_clipped_not_a_panic() {
        let mut c = Canvas::new(10, 10);
        c.line((-50.0, -50.0), (500.0, 500.0), 3.0, BLACK);
        c.fill_rect(-5.0, -5.0, 50.0, 3.0, BLACK);
        c.text(
            "clipped",
            -20.0,
            200.0,
            30.0,
            BLACK,
            Align::End,
            Align::End,
            33.0,
        );
        c.disc((9.0, 9.0), 40.0, BLACK);
        assert_eq!(c.img.get_pixel(5, 5).0, BLACK);
    }

    #[test]
    fn fit_shortens_with_ellipsis() {
        let s = Canvas::fit("blocks.11.attn.proj", 12.0, 40.0);
        assert!(s.ends_with('…') && text_width(&s, 12.0) <= 40.0, "{s}");
        assert_eq!(Canvas::fit("qkv", 12.0, 400.0), "qkv");
    }
}
