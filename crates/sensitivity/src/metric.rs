//! Damage metrics: how far quantized logits are from the full-precision ones.

use std::fmt;
use std::str::FromStr;

use mixq_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which damage the sensitivity table carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// Mean KL(FP ‖ quantized) of the softmax outputs, nats per image (the default: smooth,
    /// and needs no labels).
    #[default]
    Kl,
    /// Mean cross-entropy increase against the labels.
    Ce,
    /// Top-1 accuracy drop, percentage points.
    Top1,
    /// Mean 1 − cosine similarity of each image's output to full precision's: needs no labels
    /// and no classes (a backbone's output is its final-normed class token).
    Cosine,
    /// [`relative_mse`] of all outputs against full precision's: the error relative to the
    /// outputs' energy, for outputs that are no distribution (a pose model's heatmaps).
    RelMse,
}

impl Metric {
    /// The name tables and the CLI use (`kl`, `ce`, `top1`, `cosine`, `rel-mse`).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Kl => "kl",
            Metric::Ce => "ce",
            Metric::Top1 => "top1",
            Metric::Cosine => "cosine",
            Metric::RelMse => "rel-mse",
        }
    }

    /// This metric's value of a measurement.
    pub fn of(self, d: &Damage) -> f64 {
        match self {
            Metric::Kl => d.kl,
            Metric::Ce => d.ce,
            Metric::Top1 => d.top1,
            Metric::Cosine => d.cosine,
            Metric::RelMse => d.rel_mse,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        [
            Metric::Kl,
            Metric::Ce,
            Metric::Top1,
            Metric::Cosine,
            Metric::RelMse,
        ]
        .into_iter()
        .find(|m| m.name() == s)
        .ok_or_else(|| Error::invalid("metric", s, "expected kl, ce, top1, cosine or rel-mse"))
    }
}

/// All three damages of one measurement (they cost nothing extra once the logits exist).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Damage {
    /// Mean KL(reference ‖ quantized) per image, in nats.
    pub kl: f64,
    /// Increase of the mean cross-entropy.
    pub ce: f64,
    /// Drop in top-1, in percentage points.
    pub top1: f64,
    /// Mean over images of 1 − cosine(reference output, quantized output). Cache lines from
    /// before this field read it as NaN: not measured, so the sweep measures them again.
    #[serde(default = "not_measured")]
    pub cosine: f64,
    /// [`relative_mse`] of all outputs. Cache lines from before this field read it as NaN,
    /// as for `cosine`.
    #[serde(default = "not_measured")]
    pub rel_mse: f64,
}

fn not_measured() -> f64 {
    f64::NAN
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let lse = row
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    row.iter().map(|&v| v as f64 - lse).collect()
}

/// `sum (q - r)^2 / sum r^2`: the quantized outputs' error relative to the full-precision
/// outputs' energy (scale-free, so budgets mean the same on any checkpoint).
pub fn relative_mse(reference: &[f32], quantized: &[f32]) -> Result<f64> {
    if reference.len() != quantized.len() || reference.is_empty() {
        return Err(Error::invalid(
            "outputs",
            quantized.len(),
            format!("expected {} values", reference.len()),
        ));
    }
    let (mut err, mut energy) = (0.0f64, 0.0f64);
    for (&r, &q) in reference.iter().zip(quantized) {
        err += ((q - r) as f64).powi(2);
        energy += (r as f64).powi(2);
    }
    Ok(err / energy.max(f64::MIN_POSITIVE))
}

/// The predicted class of one row of logits (the first of equal maxima).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0
}

/// Damage of `logits` against the full-precision `reference` (both `[n, classes]`).
pub fn damage(reference: &[f32], logits: &[f32], labels: &[usize]) -> Result<Damage> {
    let n = labels.len();
    if n == 0 || reference.len() != logits.len() || !reference.len().is_multiple_of(n) {
        return Err(Error::invalid(
            "logits",
            logits.len(),
            format!("expected {} values for {n} images", reference.len()),
        ));
    }
    let classes = reference.len() / n;
    let mut d = Damage {
        rel_mse: relative_mse(reference, logits)?,
        ..Damage::default()
    };
    for i in 0..n {
        let (r, q) = (
            &reference[i * classes..(i + 1) * classes],
            &logits[i * classes..(i + 1) * classes],
        );
        let (lr, lq) = (log_softmax(r), log_softmax(q));
        d.kl += lr
            .iter()
            .zip(&lq)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
        let label = labels[i].min(classes - 1);
        d.ce += lr[label] - lq[label];
        d.top1 += (argmax(r) == label) as u8 as f64 - (argmax(q) == label) as u8 as f64;
        let (mut rq, mut rr, mut qq) = (0f64, 0f64, 0f64);
        for (&a, &b) in r.iter().zip(q) {
            rq += a as f64 * b as f64;
            rr += a as f64 * a as f64;
            qq += b as f64 * b as f64;
        }
        d.cosine += 1.0 - rq / (rr * qq).sqrt().max(f64::MIN_POSITIVE);
    }
    d.cosine /= n as f64;
    d.kl /= n as f64;
    d.ce /= n as f64;
    d.top1 *= 100.0 / n as f64;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_damage_needs_no_labels_and_ignores_scale() {
        // Image 0: the same direction, twice as long (cosine damage 0, KL > 0).
        // Image 1: orthogonal outputs (cosine damage 1).
        let reference = [1.0, 0.0, 0.0, 1.0];
        let quantized = [2.0, 0.0, 1.0, 0.0];
        let d = damage(&reference, &quantized, &[0, 0]).unwrap();
        assert!((d.cosine - 0.5).abs() < 1e-12, "{d:?}");
        assert!(d.kl > 0.0);
        assert_eq!(Metric::Cosine.of(&d), d.cosine);
        assert_eq!("cosine".parse::<Metric>().unwrap(), Metric::Cosine);
        let same = damage(&reference, &reference, &[0, 1]).unwrap();
        assert_eq!((same.cosine, same.kl, same.top1), (0.0, 0.0, 0.0));
        // A cache line written before the field existed still reads, as not measured.
        let old: Damage = serde_json::from_str(r#"{"kl": 0.1, "ce": 0.2, "top1": 0.0}"#).unwrap();
        assert!(old.cosine.is_nan());
        assert!(old.rel_mse.is_nan());
    }

    #[test]
    fn relative_mse_is_scale_free_and_over_every_output() {
        // Errors 1 and 2 against energy 3^2 + 4^2 + 0 + 0: (1 + 4) / 25, whatever the rows.
        let reference = [3.0, 4.0, 0.0, 0.0];
        let quantized = [4.0, 4.0, 0.0, 2.0];
        let d = damage(&reference, &quantized, &[0, 0]).unwrap();
        assert!((d.rel_mse - 0.2).abs() < 1e-12, "{d:?}");
        assert_eq!(Metric::RelMse.of(&d), d.rel_mse);
        assert_eq!("rel-mse".parse::<Metric>().unwrap(), Metric::RelMse);
        let scaled: Vec<f32> = quantized.iter().map(|v| 10.0 * v).collect();
        let reference10: Vec<f32> = reference.iter().map(|v| 10.0 * v).collect();
        let d10 = damage(&reference10, &scaled, &[0, 0]).unwrap();
        assert!((d10.rel_mse - 0.2).abs() < 1e-12, "{d10:?}");
        assert!(relative_mse(&reference, &quantized[..3]).is_err());
        assert!(relative_mse(&[], &[]).is_err());
    }
}
