//! Bar charts of one non-negative value per site (relevance, damage, chosen bits), with sites of
//! one transformer block shaded as a band so 70–80 bars stay readable.

use std::path::Path;

use image::RgbImage;
use mixq_core::{Error, Result};

use crate::canvas::{AXIS, Align, Canvas, TEXT, text_height, text_width};
use crate::chart::{
    Frame, TICK_PX, ValueAxis, draw_title, draw_y_axis, draw_y_grid, title_height, y_axis_margin,
};
use crate::scale::{PALETTE, format_value, nice_range};
use crate::{Colour, check_finite, check_size, save_png};

/// One bar.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    /// Full label, e.g. a site id `blocks.3.attn.qkv`.
    pub label: String,
    /// Height; must be finite and ≥ 0.
    pub value: f64,
    /// Consecutive bars with the same group share a shaded band and one group label, and their
    /// own labels drop the `group.` prefix. `None`: no band.
    pub group: Option<String>,
    /// Overrides [`BarChart::colour`] for this bar (e.g. colour by chosen bit-width).
    pub colour: Option<Colour>,
}

impl Bar {
    /// An ungrouped bar.
    pub fn new(label: impl Into<String>, value: f64) -> Self {
        Bar {
            label: label.into(),
            value,
            group: None,
            colour: None,
        }
    }

    /// A bar for a site id, grouped by its block ([`site_group`]).
    pub fn site(label: impl Into<String>, value: f64) -> Self {
        let label = label.into();
        let group = site_group(&label);
        Bar {
            label,
            value,
            group,
            colour: None,
        }
    }
}

/// The block a site belongs to: `blocks.3.attn.qkv` → `blocks.3`, `patch_embed.proj` →
/// `patch_embed`, `head` → `None`.
pub fn site_group(site: &str) -> Option<String> {
    let mut parts = site.split('.');
    let first = parts.next()?;
    let second = parts.next()?;
    if parts.next().is_some() && !second.is_empty() && second.bytes().all(|b| b.is_ascii_digit()) {
        Some(format!("{first}.{second}"))
    } else {
        Some(first.to_string())
    }
}

/// A bar chart; build it with `..Default::default()` for the styling fields.
#[derive(Clone, Debug, PartialEq)]
pub struct BarChart {
    /// Drawn above the chart.
    pub title: String,
    /// Label of the value axis.
    pub y_label: String,
    /// The bars, left to right.
    pub bars: Vec<Bar>,
    /// Colour of bars without their own.
    pub colour: Colour,
    /// Print each value above its bar; `None` does so when there are at most 24 bars.
    pub show_values: Option<bool>,
}

impl Default for BarChart {
    fn default() -> Self {
        BarChart {
            title: String::new(),
            y_label: String::new(),
            bars: Vec::new(),
            colour: PALETTE[0],
            show_values: None,
        }
    }
}

const PLOT_H: f32 = 320.0;
const MIN_PLOT_W: f32 = 480.0;
const BAND: Colour = [238, 240, 244];

fn short_label(bar: &Bar) -> &str {
    match &bar.group {
        Some(g) => bar
            .label
            .strip_prefix(g.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or(&bar.label),
        None => &bar.label,
    }
}

fn validate(chart: &BarChart) -> Result<()> {
    if chart.bars.is_empty() {
        return Err(Error::invalid(
            format!("bar chart '{}' bars", chart.title),
            "[]",
            "needs at least one bar",
        ));
    }
    for (i, b) in chart.bars.iter().enumerate() {
        let name = || format!("bar chart '{}' value of bar {i} '{}'", chart.title, b.label);
        check_finite(name, b.value)?;
        if b.value < 0.0 {
            return Err(Error::invalid(name(), b.value, "bar values must be >= 0"));
        }
    }
    Ok(())
}

/// Renders the chart in memory. The width grows with the bar count (about 18 px a bar) so
/// labels never overlap; labels are drawn vertically.
pub fn render_bar_chart(chart: &BarChart) -> Result<RgbImage> {
    validate(chart)?;
    let n = chart.bars.len();
    let max = chart.bars.iter().map(|b| b.value).fold(0.0, f64::max);
    let (_, hi, ticks) = nice_range(0.0, if max > 0.0 { max } else { 1.0 }, 5);
    let axis = ValueAxis { lo: 0.0, hi, ticks };

    let grouped = chart.bars.iter().any(|b| b.group.is_some());
    let slot = (MIN_PLOT_W / n as f32).clamp(18.0, 80.0);
    // Consecutive runs of one group, and the group caption each can show (if any fits).
    let mut bands: Vec<(usize, usize, Option<&str>)> = Vec::new();
    let mut i = 0;
    while i < n {
        let g = chart.bars[i].group.as_deref();
        let mut j = i + 1;
        while j < n && chart.bars[j].group.as_deref() == g {
            j += 1;
        }
        let room = slot * (j - i) as f32 - 2.0;
        let caption = g.and_then(|g| {
            [g, g.rsplit('.').next().unwrap_or(g)]
                .into_iter()
                .find(|t| text_width(t, TICK_PX) <= room)
        });
        bands.push((i, j, caption));
        i = j;
    }
    // Bars drop the group prefix only where the group caption is shown to carry it.
    let mut labels: Vec<String> = Vec::with_capacity(n);
    for &(i, j, caption) in &bands {
        for b in &chart.bars[i..j] {
            let l = if caption.is_some() {
                short_label(b)
            } else {
                &b.label
            };
            labels.push(Canvas::fit(l, TICK_PX, 160.0));
        }
    }
    let label_h = labels
        .iter()
        .map(|l| text_width(l, TICK_PX))
        .fold(0.0, f32::max)
        + 10.0;
    let group_h = if grouped {
        text_height(TICK_PX) + 8.0
    } else {
        0.0
    };
    let top = title_height(&chart.title)
        + if chart.show_values.unwrap_or(n <= 24) {
            text_height(TICK_PX)
        } else {
            0.0
        };
    let left = y_axis_margin(&axis, &chart.y_label) + 4.0;
    let plot_w = slot * n as f32;
    let width = (left + plot_w + 24.0).ceil();
    let height = (top + PLOT_H + label_h + group_h + 8.0).ceil();
    check_size(
        &format!("bar chart '{}'", chart.title),
        width as u64,
        height as u64,
    )?;

    let mut c = Canvas::new(width as u32, height as u32);
    let f = Frame {
        x0: left,
        y0: top,
        x1: left + plot_w,
        y1: top + PLOT_H,
    };

    // Group bands behind everything, reaching down through the labels.
    let mut shade = false;
    for &(i, j, caption) in &bands {
        let (bx0, bx1) = (f.x0 + slot * i as f32, f.x0 + slot * j as f32);
        if chart.bars[i].group.is_none() {
            continue;
        }
        if shade {
            c.fill_rect(bx0, f.y0, bx1, f.y1 + label_h + group_h, BAND);
        }
        shade = !shade;
        if let Some(t) = caption {
            let y = f.y1 + label_h + group_h / 2.0;
            c.text(
                t,
                (bx0 + bx1) / 2.0,
                y,
                TICK_PX,
                TEXT,
                Align::Center,
                Align::Center,
                0.0,
            );
        }
    }

    draw_y_grid(&mut c, f, &axis);
    let show_values = chart.show_values.unwrap_or(n <= 24);
    for (k, b) in chart.bars.iter().enumerate() {
        let cx = f.x0 + slot * (k as f32 + 0.5);
        let bw = (slot * 0.72).max(4.0);
        let y = f.y_of(&axis, b.value);
        c.fill_rect(
            cx - bw / 2.0,
            y,
            cx + bw / 2.0,
            f.y1,
            b.colour.unwrap_or(chart.colour),
        );
        c.fill_rect(cx - 0.5, f.y1, cx + 0.5, f.y1 + 4.0, AXIS);
        c.text(
            &labels[k],
            cx,
            f.y1 + 6.0,
            TICK_PX,
            TEXT,
            Align::End,
            Align::Center,
            90.0,
        );
        if show_values {
            let v = format_value(b.value);
            if text_width(&v, TICK_PX) <= slot + 4.0 {
                c.text(
                    &v,
                    cx,
                    y - 3.0,
                    TICK_PX,
                    TEXT,
                    Align::Center,
                    Align::End,
                    0.0,
                );
            }
        }
    }
    c.fill_rect(f.x0, f.y1 - 0.5, f.x1, f.y1 + 0.5, AXIS);
    draw_y_axis(&mut c, f, &axis, &chart.y_label, false);
    draw_title(&mut c, &chart.title, 8.0);
    Ok(c.img)
}

/// Renders [`render_bar_chart`] and writes it as a PNG at `path`, atomically.
pub fn bar_chart(path: impl AsRef<Path>, chart: &BarChart) -> Result<()> {
    save_png(path, &render_bar_chart(chart)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_groups_are_blocks() {
        assert_eq!(site_group("blocks.3.attn.qkv").as_deref(), Some("blocks.3"));
        assert_eq!(
            site_group("patch_embed.proj").as_deref(),
            Some("patch_embed")
        );
        assert_eq!(site_group("head"), None);
        let b = Bar::site("blocks.11.mlp.fc2", 1.0);
        assert_eq!(short_label(&b), "mlp.fc2");
    }
}
