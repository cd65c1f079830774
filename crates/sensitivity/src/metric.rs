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
}

impl Metric {
    /// The name tables and the CLI use (`kl`, `ce`, `top1`).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Kl => "kl",
            Metric::Ce => "ce",
            Metric::Top1 => "top1",
        }
    }

    /// This metric's value of a measurement.
    pub fn of(self, d: &Damage) -> f64 {
        match self {
            Metric::Kl => d.kl,
            Metric::Ce => d.ce,
            Metric::Top1 => d.top1,
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
        [Metric::Kl, Metric::Ce, Metric::Top1]
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| Error::invalid("metric", s, "expected kl, ce or top1"))
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
    let mut d = Damage::default();
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
    }
    d.kl /= n as f64;
    d.ce /= n as f64;
    d.top1 *= 100.0 / n as f64;
    Ok(d)
}
