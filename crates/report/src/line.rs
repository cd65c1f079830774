//! Line charts: learning curves (loss and accuracy per epoch) and step/marker plots such as
//! chosen bits per site along depth.
//!
//! Series may sit on a left or a right y-axis so two quantities with different units share one
//! picture; the legend marks right-axis series with "(right)". The legend sits outside the plot
//! so it never hides data.

use std::path::Path;

use image::RgbImage;
use mixq_core::{Error, Result};

use crate::canvas::{AXIS, Align, Canvas, GRID, TEXT, text_height, text_width};
use crate::chart::{
    Frame, LABEL_PX, TICK_PX, ValueAxis, draw_title, draw_y_axis, draw_y_grid, title_height,
    y_axis_margin,
};
use crate::scale::{PALETTE, nice_range};
use crate::{Colour, check_finite, check_size, save_png};

/// How a series is drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeriesStyle {
    /// Straight segments between points.
    #[default]
    Line,
    /// Only a dot per point.
    Markers,
    /// Segments and dots.
    LineMarkers,
    /// Holds each y until the next x, with dots: for discrete values such as bit-widths.
    Step,
}

/// Which y-axis a series is measured against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Axis {
    /// The left axis (the default).
    #[default]
    Left,
    /// The right axis, scaled on its own.
    Right,
}

/// One named series of `(x, y)` points, drawn in the order given.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// The legend's label.
    pub name: String,
    /// `(x, y)` in the axes' units.
    pub points: Vec<(f64, f64)>,
    /// Line, dashed line or markers.
    pub style: SeriesStyle,
    /// Which y-axis the points are measured against.
    pub axis: Axis,
    /// `None`: the next colour of the tab10 cycle.
    pub colour: Option<Colour>,
}

impl Series {
    /// A plain line on the left axis.
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            ..Default::default()
        }
    }

    /// A step plot on the left axis.
    pub fn step(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            style: SeriesStyle::Step,
            ..Series::line(name, points)
        }
    }

    /// The same series measured against the right y-axis.
    pub fn on_right(self) -> Self {
        Series {
            axis: Axis::Right,
            ..self
        }
    }
}

/// A line chart; build it with `..Default::default()` for the size (800 × 480).
#[derive(Clone, Debug, PartialEq)]
pub struct LineChart {
    /// Drawn above the chart.
    pub title: String,
    /// Label of the x-axis.
    pub x_label: String,
    /// Label of the left y-axis.
    pub y_label: String,
    /// Title of the right axis, used when a series has [`Axis::Right`].
    pub y2_label: String,
    /// The series, drawn in order (later ones on top).
    pub series: Vec<Series>,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
}

impl Default for LineChart {
    fn default() -> Self {
        LineChart {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            y2_label: String::new(),
            series: Vec::new(),
            width: 800,
            height: 480,
        }
    }
}

fn validate(chart: &LineChart) -> Result<()> {
    let t = &chart.title;
    if chart.series.is_empty() {
        return Err(Error::invalid(
            format!("line chart '{t}' series"),
            "[]",
            "needs at least one series",
        ));
    }
    for s in &chart.series {
        if s.points.is_empty() {
            return Err(Error::invalid(
                format!("line chart '{t}' points of series '{}'", s.name),
                "[]",
                "needs at least one point",
            ));
        }
        for (i, &(x, y)) in s.points.iter().enumerate() {
            check_finite(
                || format!("line chart '{t}' series '{}' x of point {i}", s.name),
                x,
            )?;
            check_finite(
                || format!("line chart '{t}' series '{}' y of point {i}", s.name),
                y,
            )?;
        }
    }
    check_size(
        &format!("line chart '{t}'"),
        chart.width as u64,
        chart.height as u64,
    )
}

/// A nice axis over the values; `pad` widens the data range by that fraction each side first so
/// points at the extremes do not sit on the frame.
fn axis_over<'a>(
    points: impl Iterator<Item = &'a f64>,
    target: usize,
    pad: f64,
) -> Option<ValueAxis> {
    let (lo, hi) = points.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return None;
    }
    let margin = (hi - lo) * pad;
    // Keep a zero baseline at zero rather than padding below it.
    let lo = if lo >= 0.0 && lo - margin < 0.0 {
        0.0
    } else {
        lo - margin
    };
    let hi = hi + margin;
    let (lo, hi, ticks) = nice_range(lo, hi, target);
    Some(ValueAxis { lo, hi, ticks })
}

/// Renders the chart in memory at `chart.width × chart.height`.
pub fn render_line_chart(chart: &LineChart) -> Result<RgbImage> {
    validate(chart)?;
    let xs = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| &p.0));
    let x_axis = axis_over(xs, 8, 0.0).expect("validated non-empty");
    let on = |a: Axis| {
        chart
            .series
            .iter()
            .filter(move |s| s.axis == a)
            .flat_map(|s| s.points.iter().map(|p| &p.1))
    };
    let left_axis = axis_over(on(Axis::Left), 6, 0.04);
    let right_axis = axis_over(on(Axis::Right), 6, 0.04);
    let has_right = right_axis.is_some();

    let colours: Vec<Colour> = chart
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| s.colour.unwrap_or(PALETTE[i % PALETTE.len()]))
        .collect();
    let names: Vec<String> = chart
        .series
        .iter()
        .map(|s| {
            let n = Canvas::fit(&s.name, TICK_PX, 200.0);
            if has_right && s.axis == Axis::Right {
                format!("{n} (right)")
            } else {
                n
            }
        })
        .collect();
    let legend_w = names
        .iter()
        .map(|n| text_width(n, TICK_PX))
        .fold(0.0, f32::max)
        + 48.0;

    let top = title_height(&chart.title);
    let left = left_axis
        .as_ref()
        .map_or(16.0, |a| y_axis_margin(a, &chart.y_label) + 6.0);
    let right = right_axis
        .as_ref()
        .map_or(16.0, |a| y_axis_margin(a, &chart.y2_label) + 6.0);
    let bottom = text_height(TICK_PX)
        + 12.0
        + if chart.x_label.is_empty() {
            0.0
        } else {
            text_height(LABEL_PX) + 8.0
        }
        + 8.0;
    let (w, h) = (chart.width as f32, chart.height as f32);
    let f = Frame {
        x0: left,
        y0: top,
        x1: w - right - legend_w - 8.0,
        y1: h - bottom,
    };
    if f.x1 - f.x0 < 80.0 || f.y1 - f.y0 < 60.0 {
        return Err(Error::invalid(
            format!("line chart '{}' size", chart.title),
            format!("{}x{}", chart.width, chart.height),
            "too small for its axes and legend",
        ));
    }

    let mut c = Canvas::new(chart.width, chart.height);
    if let Some(a) = left_axis.as_ref().or(right_axis.as_ref()) {
        draw_y_grid(&mut c, f, a);
    }
    for (t, l) in x_axis.ticks.iter().zip(x_axis.labels()) {
        let x = f.x_of(&x_axis, *t).round();
        c.fill_rect(x, f.y0, x + 1.0, f.y1, GRID);
        c.fill_rect(x, f.y1, x + 1.0, f.y1 + 5.0, AXIS);
        c.text(
            &l,
            x + 0.5,
            f.y1 + 8.0,
            TICK_PX,
            TEXT,
            Align::Center,
            Align::Start,
            0.0,
        );
    }
    c.fill_rect(f.x0, f.y1 - 0.5, f.x1, f.y1 + 0.5, AXIS);
    if !chart.x_label.is_empty() {
        let y = f.y1 + 12.0 + text_height(TICK_PX) + 4.0;
        let l = Canvas::fit(&chart.x_label, LABEL_PX, f.x1 - f.x0);
        c.text(
            &l,
            (f.x0 + f.x1) / 2.0,
            y,
            LABEL_PX,
            TEXT,
            Align::Center,
            Align::Start,
            0.0,
        );
    }
    if let Some(a) = &left_axis {
        draw_y_axis(&mut c, f, a, &chart.y_label, false);
    }
    if let Some(a) = &right_axis {
        draw_y_axis(&mut c, f, a, &chart.y2_label, true);
    }

    for (s, &colour) in chart.series.iter().zip(&colours) {
        let ya = match s.axis {
            Axis::Left => left_axis.as_ref(),
            Axis::Right => right_axis.as_ref(),
        }
        .expect("the series' own axis exists");
        let px: Vec<(f32, f32)> = s
            .points
            .iter()
            .map(|&(x, y)| (f.x_of(&x_axis, x), f.y_of(ya, y)))
            .collect();
        match s.style {
            SeriesStyle::Line | SeriesStyle::LineMarkers => {
                for w in px.windows(2) {
                    c.line(w[0], w[1], 2.0, colour);
                }
            }
            SeriesStyle::Step => {
                for w in px.windows(2) {
                    let corner = (w[1].0, w[0].1);
                    c.line(w[0], corner, 2.0, colour);
                    c.line(corner, w[1], 2.0, colour);
                }
            }
            SeriesStyle::Markers => {}
        }
        let marker = match s.style {
            SeriesStyle::Line => px.len() == 1,
            SeriesStyle::Step => px.len() <= 100,
            _ => true,
        };
        if marker {
            for &p in &px {
                c.disc(p, 3.5, colour);
            }
        }
    }
    if has_right {
        // Close the box on the right; the left edge comes with the left axis.
        c.fill_rect(f.x1 - 0.5, f.y0, f.x1 + 0.5, f.y1, AXIS);
    }

    // Legend outside the plot, top right.
    let lx = w - legend_w - 4.0;
    let row_h = text_height(TICK_PX) + 6.0;
    c.stroke_rect(
        lx,
        f.y0,
        w - 8.0,
        f.y0 + row_h * names.len() as f32 + 8.0,
        GRID,
    );
    for (i, (n, (s, &colour))) in names
        .iter()
        .zip(chart.series.iter().zip(&colours))
        .enumerate()
    {
        let y = f.y0 + 4.0 + row_h * (i as f32 + 0.5);
        if s.style != SeriesStyle::Markers {
            c.line((lx + 8.0, y), (lx + 28.0, y), 2.0, colour);
        }
        if s.style != SeriesStyle::Line {
            c.disc((lx + 18.0, y), 3.5, colour);
        }
        c.text(
            n,
            lx + 34.0,
            y,
            TICK_PX,
            TEXT,
            Align::Start,
            Align::Center,
            0.0,
        );
    }
    draw_title(&mut c, &chart.title, 8.0);
    Ok(c.img)
}

/// Renders [`render_line_chart`] and writes it as a PNG at `path`, atomically.
pub fn line_chart(path: impl AsRef<Path>, chart: &LineChart) -> Result<()> {
    save_png(path, &render_line_chart(chart)?)
}
