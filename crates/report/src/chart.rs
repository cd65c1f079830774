//! Layout pieces shared by the bar and line charts: the plot frame, value axes and titles.

use crate::canvas::{AXIS, Align, Canvas, GRID, TEXT, text_height, text_width};
use crate::scale::format_tick;

pub(crate) const TITLE_PX: f32 = 16.0;
pub(crate) const LABEL_PX: f32 = 13.0;
pub(crate) const TICK_PX: f32 = 11.0;

/// The plot area in pixels; `y0` is the top edge.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}

/// A linear value axis.
#[derive(Clone, Debug)]
pub(crate) struct ValueAxis {
    pub lo: f64,
    pub hi: f64,
    pub ticks: Vec<f64>,
}

impl ValueAxis {
    pub fn step(&self) -> f64 {
        if self.ticks.len() >= 2 {
            self.ticks[1] - self.ticks[0]
        } else {
            self.hi - self.lo
        }
    }

    pub fn labels(&self) -> Vec<String> {
        let step = self.step();
        self.ticks.iter().map(|&t| format_tick(t, step)).collect()
    }

    /// Widest tick label, for sizing margins before drawing.
    pub fn label_width(&self) -> f32 {
        self.labels()
            .iter()
            .map(|l| text_width(l, TICK_PX))
            .fold(0.0, f32::max)
    }

    /// Fraction 0..=1 of the way from `lo` to `hi`.
    pub fn frac(&self, v: f64) -> f32 {
        ((v - self.lo) / (self.hi - self.lo)) as f32
    }
}

impl Frame {
    pub fn y_of(&self, axis: &ValueAxis, v: f64) -> f32 {
        self.y1 - axis.frac(v) * (self.y1 - self.y0)
    }

    pub fn x_of(&self, axis: &ValueAxis, v: f64) -> f32 {
        self.x0 + axis.frac(v) * (self.x1 - self.x0)
    }
}

/// Space a vertical axis needs beside the frame: tick labels plus a rotated axis title.
pub(crate) fn y_axis_margin(axis: &ValueAxis, label: &str) -> f32 {
    let title = if label.is_empty() {
        0.0
    } else {
        text_height(LABEL_PX) + 6.0
    };
    axis.label_width() + 10.0 + title + 6.0
}

/// Horizontal grid lines (drawn first, under the data).
pub(crate) fn draw_y_grid(c: &mut Canvas, f: Frame, axis: &ValueAxis) {
    for &t in &axis.ticks {
        let y = f.y_of(axis, t).round();
        c.fill_rect(f.x0, y, f.x1, y + 1.0, GRID);
    }
}

/// Ticks, tick labels and the rotated title of a vertical axis on the left or right edge.
pub(crate) fn draw_y_axis(c: &mut Canvas, f: Frame, axis: &ValueAxis, label: &str, right: bool) {
    let x = if right { f.x1 } else { f.x0 };
    let dir = if right { 1.0 } else { -1.0 };
    c.fill_rect(x - 0.5, f.y0, x + 0.5, f.y1, AXIS);
    for (t, l) in axis.ticks.iter().zip(axis.labels()) {
        let y = f.y_of(axis, *t).round();
        c.fill_rect(x.min(x + dir * 5.0), y, x.max(x + dir * 5.0), y + 1.0, AXIS);
        let h = if right { Align::Start } else { Align::End };
        c.text(
            &l,
            x + dir * 8.0,
            y + 0.5,
            TICK_PX,
            TEXT,
            h,
            Align::Center,
            0.0,
        );
    }
    if !label.is_empty() {
        let lx = x + dir * (axis.label_width() + 12.0 + text_height(LABEL_PX) / 2.0);
        let ly = (f.y0 + f.y1) / 2.0;
        let deg = if right { -90.0 } else { 90.0 };
        let fitted = Canvas::fit(label, LABEL_PX, f.y1 - f.y0);
        c.text(
            &fitted,
            lx,
            ly,
            LABEL_PX,
            TEXT,
            Align::Center,
            Align::Center,
            deg,
        );
    }
}

/// Centred title at the top of the picture.
pub(crate) fn draw_title(c: &mut Canvas, title: &str, y: f32) {
    let w = c.width() as f32;
    let t = Canvas::fit(title, TITLE_PX, w - 20.0);
    c.text(
        &t,
        w / 2.0,
        y,
        TITLE_PX,
        TEXT,
        Align::Center,
        Align::Start,
        0.0,
    );
}

/// Height the title row takes (nothing when there is no title).
pub(crate) fn title_height(title: &str) -> f32 {
    if title.is_empty() {
        10.0
    } else {
        text_height(TITLE_PX) + 18.0
    }
}
