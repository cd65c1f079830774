//! # mixq-report
//!
//! PNG pictures for mixq run reports: per-site bar charts, sensitivity heat maps, learning
//! curves and bit-width steps, LRP relevance overlays and pose skeletons. Every `*_chart`/`*_map`
//! writer validates its input first (empty data, NaN, mismatched label counts give an
//! [`Error::InvalidValue`] naming the offending value), renders
//! in memory, encodes the PNG into a buffer and only then writes it with
//! [`mixq_core::write_atomic`], so a failure never leaves a half-written file.
//!
//! ## Why a small renderer of its own
//!
//! The charts a report needs are few and fixed, so this crate draws them itself on an
//! [`image::RgbImage`] (anti-aliased lines, discs, rectangles) and renders text with
//! [`ab_glyph`] from an embedded copy of DejaVu Sans (`src/font/`, Bitstream Vera licence).
//! Compared with `plotters` that means one small pure-Rust dependency tree
//! (`ab_glyph` → `ttf-parser`), no fontconfig/freetype, identical output on every machine, and
//! full control of the layouts that matter here: 80 rotated site labels with block bands, a tall
//! heat map with a colour bar, and pixel positions that the tests can check.
//!
//! Line charts put series on a left or a right y-axis ([`Axis`]) so loss and accuracy can share
//! one picture; drawing them as two charts works just as well.
//!
//! ```
//! use mixq_report::{Bar, BarChart, bar_chart};
//!
//! let dir = tempfile::tempdir()?;
//! let chart = BarChart {
//!     title: "Relevance per site".into(),
//!     y_label: "relevance".into(),
//!     bars: vec![
//!         Bar::site("blocks.0.attn.qkv", 0.8),
//!         Bar::site("blocks.0.mlp.fc1", 0.3),
//!         Bar::site("blocks.1.attn.qkv", 0.5),
//!     ],
//!     ..Default::default()
//! };
//! let path = dir.path().join("relevance.png");
//! bar_chart(&path, &chart)?;
//! let img = image::open(&path).expect("a PNG");
//! assert!(img.height() > 320); // the plot alone is 320 px tall
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod bar;
mod canvas;
mod chart;
mod heat;
mod line;
mod pipeline;
mod pose;
mod relevance;
mod scale;

use std::path::Path;

use image::RgbImage;
use mixq_core::{Error, Result};

pub use bar::{Bar, BarChart, bar_chart, render_bar_chart, site_group};
pub use heat::{HeatMap, heat_map, render_heat_map};
pub use line::{Axis, LineChart, Series, SeriesStyle, line_chart, render_line_chart};
pub use pipeline::{bits_chart, channel_outlier_chart, contribution_chart, sensitivity_heat_map};
pub use pose::{COCO_SKELETON, draw_skeleton};
pub use relevance::{
    OVERLAY_ALPHA, gray_image, image_grid, overlay_heatmap, overlay_heatmap_gray, relevance_image,
    write_overlay,
};

/// An sRGB colour, `[r, g, b]`.
pub type Colour = [u8; 3];

/// Largest width or height a chart may reach; beyond it the input is surely a mistake and the
/// allocation would hurt.
pub const MAX_SIDE: u32 = 16_384;

/// Encodes `img` as PNG in memory and writes it atomically, so an encoding failure leaves no
/// file behind and a crash leaves the old one.
pub fn save_png(path: impl AsRef<Path>, img: &RgbImage) -> Result<()> {
    let path = path.as_ref();
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(img.clone())
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| {
            Error::io(
                path,
                std::io::Error::other(format!("cannot encode PNG: {e}")),
            )
        })?;
    mixq_core::write_atomic(path, &bytes)
}

/// Rejects NaN and infinities with the name of the value at fault.
pub(crate) fn check_finite(name: impl FnOnce() -> String, v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid(name(), v, "must be a finite number"))
    }
}

/// Rejects picture sizes that are zero or too large to allocate sensibly.
pub(crate) fn check_size(what: &str, w: u64, h: u64) -> Result<()> {
    if w == 0 || h == 0 || w > MAX_SIDE as u64 || h > MAX_SIDE as u64 {
        return Err(Error::invalid(
            format!("{what} size"),
            format!("{w}x{h}"),
            format!("width and height must be within 1..={MAX_SIDE} pixels"),
        ));
    }
    Ok(())
}
