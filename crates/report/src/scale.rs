//! Axis ticks, number formatting and colour maps shared by the charts.

use crate::Colour;

/// The ten colours of matplotlib's "tab10" cycle: distinct, print well, familiar to readers.
pub(crate) const PALETTE: [Colour; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// A 1-2-5 step (no 2.5: it gives odd ticks on integer data such as epochs) near `range / target`, so tick labels are round numbers.
pub(crate) fn nice_step(range: f64, target: usize) -> f64 {
    let raw = (range / target.max(1) as f64).abs();
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let frac = raw / mag;
    let nice = if frac <= 1.0 {
        1.0
    } else if frac <= 2.0 {
        2.0
    } else if frac <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Axis limits widened outward to whole steps, plus the ticks between them. A degenerate range
/// (all values equal) is opened up so the data still sits inside the plot.
pub(crate) fn nice_range(lo: f64, hi: f64, target: usize) -> (f64, f64, Vec<f64>) {
    let (mut lo, mut hi) = (lo.min(hi), lo.max(hi));
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        let pad = if hi == 0.0 { 1.0 } else { hi.abs() * 0.1 };
        lo -= pad;
        hi += pad;
    }
    let step = nice_step(hi - lo, target);
    let (nlo, nhi) = ((lo / step).floor() * step, (hi / step).ceil() * step);
    let n = ((nhi - nlo) / step).round();
    // Overflowing ranges or steps lost in float precision: just mark the ends.
    if !(nhi - nlo).is_finite() || !(1.0..=100.0).contains(&n) || nlo == nhi {
        return (lo, hi, vec![lo, hi]);
    }
    let ticks = (0..=n as usize).map(|i| nlo + i as f64 * step).collect();
    (nlo, nhi, ticks)
}

/// Tick label for `v` when ticks are `step` apart: just enough decimals, scientific notation
/// for very large or very small magnitudes.
pub(crate) fn format_tick(v: f64, step: f64) -> String {
    if v == 0.0 || v.abs() < step.abs() * 1e-9 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) || (step.abs() < 1e-3 && step != 0.0) {
        let s = format!("{v:.1e}");
        return s.replace(".0e", "e");
    }
    // As many decimals as the step itself needs (0.25 → 2, 0.5 → 1, 5 → 0).
    let decimals = (0..=9)
        .find(|&d| {
            let scaled = step.abs() * 10f64.powi(d);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
        })
        .unwrap_or(9) as usize;
    format!("{v:.decimals$}")
}

/// Short label for a value on its own (bar tops, heat-map cells): three significant digits.
pub(crate) fn format_value(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        let digits = (-a.log10().floor()) as usize + 2;
        format!("{v:.digits$}")
    }
}

/// Compact label for a log-scale tick: `0.01`, `2e-5`, `1000`.
pub(crate) fn format_log_tick(v: f64) -> String {
    let rounded: f64 = format!("{v:.2e}").parse().unwrap_or(v);
    let a = rounded.abs();
    if a == 0.0 || (1e-3..1e5).contains(&a) {
        format!("{rounded}")
    } else {
        format!("{rounded:e}")
    }
}

fn lerp(a: Colour, b: Colour, t: f32) -> Colour {
    let mut out = [0u8; 3];
    for i in 0..3 {
        out[i] = (a[i] as f32 + (b[i] as f32 - a[i] as f32) * t).round() as u8;
    }
    out
}

/// Viridis (perceptually uniform, colour-blind safe, prints in grey) sampled at nine stops.
pub(crate) fn viridis(t: f32) -> Colour {
    const STOPS: [Colour; 9] = [
        [68, 1, 84],
        [71, 44, 122],
        [59, 81, 139],
        [44, 113, 142],
        [33, 144, 141],
        [39, 173, 129],
        [92, 200, 99],
        [170, 220, 50],
        [253, 231, 37],
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f32;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    lerp(STOPS[i], STOPS[i + 1], x - i as f32)
}

/// Diverging blue–white–red ("bwr") for signed relevance: `t` in `[-1, 1]`, white at 0.
pub(crate) fn bwr(t: f32) -> Colour {
    let t = if t.is_finite() {
        t.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    if t >= 0.0 {
        lerp([255, 255, 255], [255, 0, 0], t)
    } else {
        lerp([255, 255, 255], [0, 0, 255], -t)
    }
}

/// Black or white, whichever reads better on `bg`.
pub(crate) fn contrast_text(bg: Colour) -> Colour {
    let l = 0.299 * bg[0] as f32 + 0.587 * bg[1] as f32 + 0.114 * bg[2] as f32;
    if l > 140.0 {
        [0, 0, 0]
    } else {
        [255, 255, 255]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ranges_cover_the_data_with_round_ticks() {
        let (lo, hi, ticks) = nice_range(0.0, 0.83, 5);
        assert_eq!(lo, 0.0);
        assert!((0.83..=1.0).contains(&hi), "{hi}");
        assert!(ticks.len() >= 4 && ticks.len() <= 11, "{ticks:?}");
        let (lo, hi, _) = nice_range(3.0, 3.0, 5);
        assert!(lo < 3.0 && hi > 3.0);
        let (lo, hi, _) = nice_range(0.0, 0.0, 5);
        assert!(lo < 0.0 && hi > 0.0);
        let (_, _, ticks) = nice_range(-1e308, 1e308, 5);
        assert_eq!(ticks.len(), 2);
        let (_, _, ticks) = nice_range(1e17, 1e17 + 64.0, 5);
        assert!(ticks.len() <= 101);
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(format_tick(0.2, 0.2), "0.2");
        assert_eq!(format_tick(10.0, 5.0), "10");
        assert_eq!(format_tick(0.25, 0.25), "0.25");
        assert_eq!(format_tick(0.0, 0.1), "0");
        assert_eq!(format_tick(2e-5, 1e-5), "2e-5");
        assert_eq!(format_value(0.01234), "0.0123");
        assert_eq!(format_log_tick(10f64.powi(-2)), "0.01");
        assert_eq!(format_log_tick(2.0 * 10f64.powi(-5)), "2e-5");
        assert_eq!(format_log_tick(1000.0), "1000");
        assert_eq!(format_value(123.4), "123");
    }

    #[test]
    fn colour_maps_hit_their_ends() {
        assert_eq!(viridis(0.0), [68, 1, 84]);
        assert_eq!(viridis(1.0), [253, 231, 37]);
        assert_eq!(bwr(0.0), [255, 255, 255]);
        assert_eq!(bwr(1.0), [255, 0, 0]);
        assert_eq!(bwr(-1.0), [0, 0, 255]);
    }
}
