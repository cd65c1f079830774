//! Range observers: from calibration values on the host to the `[lo, hi]` each quantizer
//! parameter should cover.
//!
//! Statistics run on `f32` slices rather than tensors because they are one-off, need sorting
//! (quantiles) and a small search, and must give the same answer whatever device the model ran
//! on.

use mixq_core::{BitWidth, Error, Result};
use serde::{Deserialize, Serialize};

use crate::log::{LogBase, LogQuantizer};
use crate::uniform::{Granularity, UniformQuantizer, affine_params, code_range, fake_quant_scalar};

/// How a range is read off the calibration values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RangeMethod {
    /// `[min, max]`: loses nothing to clipping, but one outlier stretches every step.
    MinMax,
    /// `[quantile(1 - p), quantile(p)]` with `p` in `(0.5, 1]`, e.g. 0.9999: clips outliers.
    Quantile(f64),
    /// Tries `Quantile(p)` for each candidate `p` and keeps, per channel/group (or for the
    /// whole tensor), the one whose fake-quantized values have the lowest squared error against
    /// the originals; ties go to the earlier candidate. RepQ-ViT's calibration.
    Search(Vec<f64>),
}

impl RangeMethod {
    /// RepQ-ViT's percentile candidates.
    pub const REPQ_CANDIDATES: [f64; 3] = [0.999, 0.9999, 0.99999];

    /// `Search` over [`RangeMethod::REPQ_CANDIDATES`].
    pub fn repq() -> Self {
        RangeMethod::Search(Self::REPQ_CANDIDATES.to_vec())
    }

    /// Checks every `p` is in `(0.5, 1]` and a search has at least one candidate.
    pub fn validate(&self) -> Result<()> {
        let check = |p: f64| {
            if p > 0.5 && p <= 1.0 {
                Ok(())
            } else {
                Err(Error::invalid("quantile", p, "must be in (0.5, 1]"))
            }
        };
        match self {
            RangeMethod::MinMax => Ok(()),
            RangeMethod::Quantile(p) => check(*p),
            RangeMethod::Search(ps) if ps.is_empty() => Err(no_candidates()),
            RangeMethod::Search(ps) => ps.iter().try_for_each(|p| check(*p)),
        }
    }
}

fn no_candidates() -> Error {
    Error::invalid("search candidates", "[]", "need at least one quantile")
}

/// The `p`-quantile of `values` with linear interpolation between order statistics, like
/// numpy's default (`method="linear"`) and `torch.quantile`: position `p * (n - 1)` in the
/// sorted values. Errors on empty or non-finite input and `p` outside `[0, 1]`.
pub fn quantile(values: &[f32], p: f64) -> Result<f32> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::invalid("quantile", p, "must be in [0, 1]"));
    }
    check_values(values)?;
    Ok(quantile_sorted(&sorted(values), p))
}

fn sorted(values: &[f32]) -> Vec<f32> {
    let mut v = values.to_vec();
    v.sort_unstable_by(f32::total_cmp);
    v
}

/// The values reordered so that every position `quantile_sorted` reads for the quantiles `ps`
/// (and `1 - p`) holds what a full sort would put there. Clipping quantiles sit in the tails, so
/// two selections plus sorts of the tails replace a full sort: O(n) instead of O(n log n) on
/// the millions of activation values a calibration pass sees.
fn sorted_for(values: &[f32], ps: &[f64]) -> Vec<f32> {
    let n = values.len();
    let mut positions: Vec<usize> = Vec::new();
    for &p in ps {
        for q in [p, 1.0 - p] {
            let i = ((q * (n - 1) as f64).floor() as usize).min(n - 1);
            positions.extend([i, (i + 1).min(n - 1)]);
        }
    }
    let lo_max = positions.iter().copied().filter(|&i| i < n / 2).max();
    let hi_min = positions.iter().copied().filter(|&i| i >= n / 2).min();
    let (Some(lo_max), Some(hi_min)) = (lo_max, hi_min) else {
        return sorted(values);
    };
    if hi_min <= lo_max + 1 {
        return sorted(values);
    }
    let mut v = values.to_vec();
    v.select_nth_unstable_by(lo_max, f32::total_cmp);
    v[..=lo_max].sort_unstable_by(f32::total_cmp);
    let rest = &mut v[lo_max + 1..];
    let offset = hi_min - lo_max - 1;
    rest.select_nth_unstable_by(offset, f32::total_cmp);
    rest[offset..].sort_unstable_by(f32::total_cmp);
    v
}

/// `p`-quantile of non-empty sorted values.
fn quantile_sorted(sorted: &[f32], p: f64) -> f32 {
    let pos = p * (sorted.len() - 1) as f64;
    let i = (pos.floor() as usize).min(sorted.len() - 1);
    let frac = pos - i as f64;
    match sorted.get(i + 1) {
        Some(&next) if frac > 0.0 => {
            let a = f64::from(sorted[i]);
            (a + frac * (f64::from(next) - a)) as f32
        }
        _ => sorted[i],
    }
}

fn check_values(values: &[f32]) -> Result<()> {
    if values.is_empty() {
        return Err(Error::invalid(
            "calibration data",
            "[]",
            "need at least one value",
        ));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(
            "calibration data",
            values[i],
            format!("non-finite value at index {i}"),
        ));
    }
    Ok(())
}

/// Splits row-major `x` of `shape` into the values of each quantizer parameter.
fn split_groups(x: &[f32], shape: &[usize], granularity: Granularity) -> Result<Vec<Vec<f32>>> {
    let layout = granularity.layout(shape)?;
    if layout.numel() != x.len() {
        return Err(Error::invalid(
            "shape",
            format!("{shape:?}"),
            format!("has {} elements, the data {}", layout.numel(), x.len()),
        ));
    }
    check_values(x)?;
    let mut groups = vec![Vec::with_capacity(x.len() / layout.params); layout.params];
    for (i, &v) in x.iter().enumerate() {
        groups[layout.param_of(i)].push(v);
    }
    Ok(groups)
}

/// Squared error of fake-quantizing `values` with one step/zero point, in `f64`.
fn squared_error(values: &[f32], s: f32, z: f32, qmin: f32, qmax: f32) -> f64 {
    values
        .iter()
        .map(|&v| {
            let e = f64::from(fake_quant_scalar(v, s, z, qmin, qmax)) - f64::from(v);
            e * e
        })
        .sum()
}

fn observe_group(
    values: &[f32],
    method: &RangeMethod,
    bits: BitWidth,
    symmetric: bool,
) -> Result<(f32, f32)> {
    match method {
        RangeMethod::MinMax => Ok(values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            })),
        RangeMethod::Quantile(p) => {
            let s = sorted_for(values, &[*p]);
            Ok((quantile_sorted(&s, 1.0 - p), quantile_sorted(&s, *p)))
        }
        RangeMethod::Search(candidates) => {
            let s = sorted_for(values, candidates);
            let (qmin, qmax) = code_range(bits, symmetric);
            let mut best: Option<(f64, (f32, f32))> = None;
            for &p in candidates {
                let range = (quantile_sorted(&s, 1.0 - p), quantile_sorted(&s, p));
                let (step, z) = affine_params(bits, symmetric, range.0, range.1)?;
                let err = squared_error(values, step, z, qmin as f32, qmax as f32);
                if best.is_none_or(|(b, _)| err < b) {
                    best = Some((err, range));
                }
            }
            best.map(|(_, r)| r).ok_or_else(no_candidates)
        }
    }
}

/// Observed `(lo, hi)` ranges of row-major `x` of `shape`, one per tensor/channel/group as
/// `granularity` says. `bits` and `symmetric` only matter for [`RangeMethod::Search`], whose
/// error is measured with the quantizer [`UniformQuantizer::from_range`] would build. The
/// ranges are returned as observed (not yet widened to include 0).
pub fn observe_ranges(
    x: &[f32],
    shape: &[usize],
    granularity: Granularity,
    method: &RangeMethod,
    bits: BitWidth,
    symmetric: bool,
) -> Result<(Vec<f32>, Vec<f32>)> {
    method.validate()?;
    let groups = split_groups(x, shape, granularity)?;
    let ranges = groups
        .iter()
        .map(|g| observe_group(g, method, bits, symmetric))
        .collect::<Result<Vec<_>>>()?;
    Ok(ranges.into_iter().unzip())
}

/// [`observe_ranges`] then [`UniformQuantizer::from_range`]: the whole calibration of a
/// uniform quantizer from host values.
pub fn calibrate_uniform(
    x: &[f32],
    shape: &[usize],
    granularity: Granularity,
    method: &RangeMethod,
    bits: BitWidth,
    symmetric: bool,
) -> Result<UniformQuantizer> {
    let (lo, hi) = observe_ranges(x, shape, granularity, method, bits, symmetric)?;
    UniformQuantizer::from_range(bits, symmetric, granularity, &lo, &hi)
}

/// Calibrates a log quantizer (per tensor) on non-negative values: the top level is the
/// maximum (`MinMax`), the `p`-quantile (`Quantile`), or the candidate quantile with the lowest
/// squared fake-quant error (`Search`, RepQ-ViT's rule; ties to the earlier candidate).
pub fn calibrate_log(
    x: &[f32],
    bits: BitWidth,
    base: LogBase,
    method: &RangeMethod,
) -> Result<LogQuantizer> {
    method.validate()?;
    check_values(x)?;
    match method {
        RangeMethod::MinMax => {
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            LogQuantizer::from_max(bits, base, max)
        }
        RangeMethod::Quantile(p) => {
            LogQuantizer::from_max(bits, base, quantile_sorted(&sorted_for(x, &[*p]), *p))
        }
        RangeMethod::Search(candidates) => {
            let s = sorted_for(x, candidates);
            let mut best: Option<(f64, LogQuantizer)> = None;
            for &p in candidates {
                let q = LogQuantizer::from_max(bits, base, quantile_sorted(&s, p))?;
                let err: f64 = q
                    .fake_quant_host(x)
                    .iter()
                    .zip(x)
                    .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                    .sum();
                if best.is_none_or(|(b, _)| err < b) {
                    best = Some((err, q));
                }
            }
            best.map(|(_, q)| q).ok_or_else(no_candidates)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_selection_reads_the_same_quantiles_as_a_full_sort() {
        // A deterministic scramble with duplicates and negatives; sizes around the tails' edges.
        for n in [1usize, 2, 3, 7, 100, 1001, 20_000] {
            let values: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 7.0)
                .collect();
            let full = sorted(&values);
            for ps in [
                vec![0.999, 0.9999, 0.99999],
                vec![0.75],
                vec![0.5],
                vec![1.0],
            ] {
                let partial = sorted_for(&values, &ps);
                for &p in &ps {
                    for q in [p, 1.0 - p] {
                        assert_eq!(
                            quantile_sorted(&partial, q),
                            quantile_sorted(&full, q),
                            "n {n}, p {q}"
                        );
                    }
                }
            }
        }
    }
}
