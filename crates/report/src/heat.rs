//! Heat maps of a rows × columns matrix (e.g. 74 sites × 5 bit-width candidates of quantization
//! damage) in viridis, with a colour bar so the colours can be read back as numbers.

use std::path::Path;

use image::RgbImage;
use mixq_core::{Error, Result};

use crate::canvas::{AXIS, Align, Canvas, TEXT, text_height, text_width};
use crate::chart::{LABEL_PX, TICK_PX, draw_title, title_height};
use crate::scale::{contrast_text, format_log_tick, format_tick, format_value, nice_step, viridis};
use crate::{check_finite, check_size, save_png};

/// A heat map; `values[r][c]` is drawn in row `r`, column `c`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeatMap {
    /// Drawn above the map.
    pub title: String,
    /// One per row of `values`, drawn left of the grid.
    pub row_labels: Vec<String>,
    /// One per column of `values`, drawn above the grid (vertically when long).
    pub col_labels: Vec<String>,
    /// The values, one row per row label.
    pub values: Vec<Vec<f64>>,
    /// Title of the colour bar, e.g. "Δ loss".
    pub colour_label: String,
    /// Colours by log10 of the value: damage often spans decades. Values ≤ 0 then take the
    /// lowest colour; at least one value must be > 0.
    pub log_scale: bool,
    /// Print each value in its cell; `None` does so when the grid is at most 30 × 12.
    pub cell_text: Option<bool>,
}

/// How values map to 0..=1 along the colour bar.
struct ColourScale {
    lo: f64,
    hi: f64,
    log: bool,
}

impl ColourScale {
    fn t(&self, v: f64) -> f32 {
        let (v, lo, hi) = if self.log {
            (v.max(self.lo).log10(), self.lo.log10(), self.hi.log10())
        } else {
            (v, self.lo, self.hi)
        };
        if hi > lo {
            ((v - lo) / (hi - lo)).clamp(0.0, 1.0) as f32
        } else {
            1.0
        }
    }

    /// Tick values inside `[lo, hi]`: round linear steps, or decades (with 2× and 5× when the
    /// range spans less than two decades).
    fn ticks(&self) -> Vec<f64> {
        let mut out = Vec::new();
        if self.hi <= self.lo {
            return vec![self.lo];
        }
        if self.log {
            let (a, b) = (
                self.lo.log10().floor() as i32,
                self.hi.log10().ceil() as i32,
            );
            let mults: &[f64] = if b - a <= 2 { &[1.0, 2.0, 5.0] } else { &[1.0] };
            let every = ((b - a) as usize).div_ceil(8).max(1);
            for e in (a..=b).step_by(every) {
                for m in mults {
                    let v = m * 10f64.powi(e);
                    if v >= self.lo * (1.0 - 1e-9) && v <= self.hi * (1.0 + 1e-9) {
                        out.push(v);
                    }
                }
            }
        } else {
            let step = nice_step(self.hi - self.lo, 5);
            let start = (self.lo / step).ceil() * step;
            // Bounded: a step lost in float precision must not loop forever.
            for i in 0..=20 {
                let v = start + i as f64 * step;
                if !v.is_finite() || v > self.hi + step * 1e-9 {
                    break;
                }
                out.push(v);
            }
        }
        if out.is_empty() {
            out = vec![self.lo, self.hi];
        }
        out
    }
}

fn validate(map: &HeatMap) -> Result<ColourScale> {
    let t = &map.title;
    if map.values.is_empty() || map.values[0].is_empty() {
        return Err(Error::invalid(
            format!("heat map '{t}' values"),
            "[]",
            "needs at least one row and one column",
        ));
    }
    if map.row_labels.len() != map.values.len() {
        return Err(Error::invalid(
            format!("heat map '{t}' row_labels count"),
            map.row_labels.len(),
            format!("must equal the number of rows ({})", map.values.len()),
        ));
    }
    let cols = map.col_labels.len();
    for (r, row) in map.values.iter().enumerate() {
        if row.len() != cols {
            return Err(Error::invalid(
                format!("heat map '{t}' length of row {r} '{}'", map.row_labels[r]),
                row.len(),
                format!("must equal the number of col_labels ({cols})"),
            ));
        }
        for (c, &v) in row.iter().enumerate() {
            check_finite(
                || {
                    format!(
                        "heat map '{t}' value at row '{}', column '{}'",
                        map.row_labels[r], map.col_labels[c]
                    )
                },
                v,
            )?;
        }
    }
    let all = map.values.iter().flatten().copied();
    let (lo, hi) = if map.log_scale {
        let pos = all.filter(|&v| v > 0.0);
        let lo = pos.clone().fold(f64::INFINITY, f64::min);
        let hi = pos.fold(0.0, f64::max);
        if !lo.is_finite() {
            return Err(Error::invalid(
                format!("heat map '{t}' log_scale"),
                true,
                "a log colour scale needs at least one value > 0",
            ));
        }
        (lo, hi)
    } else {
        let lo = all.clone().fold(f64::INFINITY, f64::min);
        (lo, all.fold(f64::NEG_INFINITY, f64::max))
    };
    Ok(ColourScale {
        lo,
        hi,
        log: map.log_scale,
    })
}

/// Renders the heat map in memory. Cells shrink to 14 px rows for tall matrices so 74 sites fit
/// on one page; the colour bar spans the grid's height.
pub fn render_heat_map(map: &HeatMap) -> Result<RgbImage> {
    let scale = validate(map)?;
    let (rows, cols) = (map.values.len(), map.col_labels.len());
    let cell_h: f32 = if rows <= 12 {
        30.0
    } else if rows <= 30 {
        20.0
    } else {
        14.0
    };
    let show_text = map.cell_text.unwrap_or(rows <= 30 && cols <= 12);
    let cell_px = if cell_h < 20.0 { 10.0 } else { TICK_PX };
    let texts: Vec<Vec<String>> = map
        .values
        .iter()
        .map(|r| r.iter().map(|&v| format_value(v)).collect())
        .collect();
    let text_w = if show_text {
        texts
            .iter()
            .flatten()
            .map(|s| text_width(s, cell_px))
            .fold(0.0, f32::max)
            + 8.0
    } else {
        0.0
    };
    let col_labels: Vec<String> = map
        .col_labels
        .iter()
        .map(|l| Canvas::fit(l, TICK_PX, 160.0))
        .collect();
    let col_w_max = col_labels
        .iter()
        .map(|l| text_width(l, TICK_PX))
        .fold(0.0, f32::max);
    let rotate_cols = col_w_max > 90.0;
    let cell_w = if rotate_cols {
        text_w.max(text_height(TICK_PX) + 8.0).max(28.0)
    } else {
        text_w.max(col_w_max + 10.0).max(44.0)
    };
    let row_labels: Vec<String> = map
        .row_labels
        .iter()
        .map(|l| Canvas::fit(l, TICK_PX, 220.0))
        .collect();
    let row_w = row_labels
        .iter()
        .map(|l| text_width(l, TICK_PX))
        .fold(0.0, f32::max);
    let col_h = if rotate_cols {
        col_w_max + 12.0
    } else {
        text_height(TICK_PX) + 10.0
    };

    let ticks = scale.ticks();
    let step = if ticks.len() >= 2 {
        ticks[1] - ticks[0]
    } else {
        0.0
    };
    let tick_labels: Vec<String> = ticks
        .iter()
        .map(|&v| {
            if scale.log {
                format_log_tick(v)
            } else {
                format_tick(v, step)
            }
        })
        .collect();
    let tick_w = tick_labels
        .iter()
        .map(|l| text_width(l, TICK_PX))
        .fold(0.0, f32::max);
    let bar_title_w = if map.colour_label.is_empty() {
        0.0
    } else {
        text_height(LABEL_PX) + 8.0
    };

    let grid_h = cell_h * rows as f32;
    let bar_h = grid_h.max(120.0);
    let top = title_height(&map.title) + col_h;
    let x0 = 12.0 + row_w + 8.0;
    let grid_w = cell_w * cols as f32;
    let bar_x = x0 + grid_w + 18.0;
    let width = (bar_x + 16.0 + 8.0 + tick_w + 8.0 + bar_title_w + 8.0)
        .max(x0 + grid_w + 12.0)
        .ceil();
    let height = (top + bar_h + 14.0).ceil();
    check_size(
        &format!("heat map '{}'", map.title),
        width as u64,
        height as u64,
    )?;

    let mut c = Canvas::new(width as u32, height as u32);
    for (r, row) in map.values.iter().enumerate() {
        let y = top + cell_h * r as f32;
        c.text(
            &row_labels[r],
            x0 - 6.0,
            y + cell_h / 2.0,
            TICK_PX,
            TEXT,
            Align::End,
            Align::Center,
            0.0,
        );
        for (col, &v) in row.iter().enumerate() {
            let x = x0 + cell_w * col as f32;
            let colour = viridis(scale.t(v));
            c.fill_rect(x, y, x + cell_w, y + cell_h, colour);
            if show_text {
                let tc = contrast_text(colour);
                let s = &texts[r][col];
                c.text(
                    s,
                    x + cell_w / 2.0,
                    y + cell_h / 2.0,
                    cell_px,
                    tc,
                    Align::Center,
                    Align::Center,
                    0.0,
                );
            }
        }
    }
    for (col, l) in col_labels.iter().enumerate() {
        let cx = x0 + cell_w * (col as f32 + 0.5);
        if rotate_cols {
            c.text(
                l,
                cx,
                top - 6.0,
                TICK_PX,
                TEXT,
                Align::Start,
                Align::Center,
                90.0,
            );
        } else {
            c.text(
                l,
                cx,
                top - 5.0,
                TICK_PX,
                TEXT,
                Align::Center,
                Align::End,
                0.0,
            );
        }
    }
    c.stroke_rect(
        x0 - 1.0,
        top - 1.0,
        x0 + grid_w + 1.0,
        top + grid_h + 1.0,
        AXIS,
    );

    // Colour bar: top is the maximum.
    let (by0, by1) = (top, top + bar_h);
    for y in by0 as i64..by1 as i64 {
        let t = 1.0 - (y as f32 + 0.5 - by0) / (by1 - by0);
        let v = if scale.log {
            10f64.powf(scale.lo.log10() + t as f64 * (scale.hi.log10() - scale.lo.log10()))
        } else {
            scale.lo + t as f64 * (scale.hi - scale.lo)
        };
        c.fill_rect(
            bar_x,
            y as f32,
            bar_x + 16.0,
            y as f32 + 1.0,
            viridis(scale.t(v)),
        );
    }
    c.stroke_rect(bar_x - 1.0, by0 - 1.0, bar_x + 17.0, by1 + 1.0, AXIS);
    for (v, l) in ticks.iter().zip(&tick_labels) {
        let y = (by1 - scale.t(*v) * (by1 - by0))
            .round()
            .clamp(by0, by1 - 1.0);
        c.fill_rect(bar_x + 16.0, y, bar_x + 21.0, y + 1.0, AXIS);
        c.text(
            l,
            bar_x + 24.0,
            y + 0.5,
            TICK_PX,
            TEXT,
            Align::Start,
            Align::Center,
            0.0,
        );
    }
    if !map.colour_label.is_empty() {
        let lx = bar_x + 16.0 + 8.0 + tick_w + 6.0 + text_height(LABEL_PX) / 2.0;
        let l = Canvas::fit(&map.colour_label, LABEL_PX, bar_h);
        c.text(
            &l,
            lx,
            (by0 + by1) / 2.0,
            LABEL_PX,
            TEXT,
            Align::Center,
            Align::Center,
            -90.0,
        );
    }
    draw_title(&mut c, &map.title, 8.0);
    Ok(c.img)
}

/// Renders [`render_heat_map`] and writes it as a PNG at `path`, atomically.
pub fn heat_map(path: impl AsRef<Path>, map: &HeatMap) -> Result<()> {
    save_png(path, &render_heat_map(map)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_are_decades_within_range() {
        let s = ColourScale {
            lo: 1e-4,
            hi: 3.0,
            log: true,
        };
        let t = s.ticks();
        assert_eq!(t.first().copied(), Some(1e-4));
        assert!(t.iter().all(|&v| (1e-4..=3.0).contains(&v)), "{t:?}");
        assert!(s.t(3.0) == 1.0 && s.t(1e-4) == 0.0 && s.t(0.0) == 0.0);
    }
}
