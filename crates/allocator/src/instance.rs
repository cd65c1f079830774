//! The problem compiled to numbers: allowed candidates, costs and integer resource rows.

use mixq_core::{Error, Result, SiteBits};

use crate::problem::{Budget, BudgetKind, Criterion, Problem, label};

/// Largest integer every f64 holds exactly: resource sums must stay below it so that the
/// integer check and the f64 `used <= value` check agree.
const EXACT_F64: u128 = 1 << 53;

/// One budget as an integer knapsack row: `sum_s usage[s][k] <= cap`.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub budget: Budget,
    /// Integer usage per site and allowed candidate (aligned with `Instance::allowed`).
    pub usage: Vec<Vec<u64>>,
    /// `used = lhs / denom` is what the user's value bounds.
    pub denom: u64,
    /// Largest lhs with `lhs as f64 / denom as f64 <= value`.
    pub cap: u64,
    /// Smallest lhs any assignment reaches (each site at its cheapest candidate).
    pub min_lhs: u64,
    /// Largest lhs any assignment reaches.
    pub max_lhs: u64,
}

impl Row {
    pub fn used(&self, lhs: u64) -> f64 {
        lhs as f64 / self.denom as f64
    }

    pub fn lhs(&self, choice: &[usize]) -> u64 {
        choice
            .iter()
            .enumerate()
            .map(|(s, &k)| self.usage[s][k])
            .sum()
    }

    /// The row can never bind: even the most expensive plan fits.
    pub fn slack_always(&self) -> bool {
        self.max_lhs <= self.cap
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Instance {
    /// Indices into `Problem::candidates` each site may use, ascending.
    pub allowed: Vec<Vec<usize>>,
    /// Cost per site and allowed candidate.
    pub cost: Vec<Vec<f64>>,
    pub rows: Vec<Row>,
}

impl Instance {
    pub fn compile(p: &Problem) -> Result<Self> {
        if !(p.lambda.is_finite() && p.lambda >= 0.0) {
            return Err(Error::invalid(
                "lambda",
                p.lambda,
                "expected a finite value >= 0",
            ));
        }
        let mut allowed = Vec::with_capacity(p.sites.len());
        for (s, site) in p.sites.iter().enumerate() {
            let ks: Vec<usize> = (0..p.candidates.len())
                .filter(|&k| p.limits[s].allows(p.candidates[k]))
                .collect();
            if ks.is_empty() {
                return Err(Error::invalid(
                    format!("bit limits of {}", site.id),
                    format!("{:?}", p.limits[s]),
                    format!(
                        "no candidate ({}) satisfies them",
                        p.candidates
                            .iter()
                            .map(|c| label(*c))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))?;
            }
            allowed.push(ks);
        }

        let importance = match p.criterion {
            Criterion::Sensitivity => None,
            Criterion::Lrp | Criterion::Mix => {
                let scores = p.scores.as_ref().ok_or_else(|| {
                    Error::invalid(
                        "preset",
                        p.criterion,
                        "needs contribution scores (LRP); none were given",
                    )
                })?;
                Some(normalised_importance(scores))
            }
        };
        if p.criterion == Criterion::Lrp
            && importance
                .as_ref()
                .is_some_and(|v| v.iter().all(|&x| x == 0.0))
        {
            return Err(Error::invalid(
                "preset",
                "lrp",
                "every contribution score is 0, so the lrp objective cannot rank sites",
            ));
        }
        let damage = match p.criterion {
            Criterion::Lrp => None,
            Criterion::Sensitivity | Criterion::Mix => {
                Some(p.damage.as_ref().ok_or_else(|| {
                    Error::invalid(
                        "preset",
                        p.criterion,
                        "needs a sensitivity table; none was given",
                    )
                })?)
            }
        };

        let mut cost = Vec::with_capacity(p.sites.len());
        for (s, ks) in allowed.iter().enumerate() {
            let mut row = Vec::with_capacity(ks.len());
            for &k in ks {
                let bits = p.candidates[k];
                let d = match damage {
                    None => 0.0,
                    Some(table) => table[s][k].ok_or_else(|| {
                        Error::invalid(
                            "sensitivity table",
                            &p.sites[s].id,
                            format!(
                                "no measured damage at {} (a candidate for this site); measure \
                                 it or drop the candidate",
                                label(bits)
                            ),
                        )
                    })?,
                };
                let c = match p.criterion {
                    Criterion::Sensitivity => d,
                    Criterion::Mix => d * (1.0 + p.lambda * importance.as_ref().unwrap()[s]),
                    Criterion::Lrp => importance.as_ref().unwrap()[s] * noise_proxy(bits),
                };
                row.push(c);
            }
            cost.push(row);
        }

        let mut rows = Vec::with_capacity(p.budgets.len());
        for b in &p.budgets {
            rows.push(build_row(p, &allowed, *b)?);
        }
        Ok(Instance {
            allowed,
            cost,
            rows,
        })
    }

    pub fn n_sites(&self) -> usize {
        self.allowed.len()
    }

    pub fn objective(&self, choice: &[usize]) -> f64 {
        choice
            .iter()
            .enumerate()
            .map(|(s, &k)| self.cost[s][k])
            .sum()
    }

    pub fn feasible(&self, choice: &[usize]) -> bool {
        self.rows.iter().all(|r| r.lhs(choice) <= r.cap)
    }

    /// Each site's cheapest-cost candidate (first on ties): the optimum without budgets.
    pub fn argmin_cost(&self) -> Vec<usize> {
        self.cost
            .iter()
            .map(|c| (0..c.len()).fold(0, |best, k| if c[k] < c[best] { k } else { best }))
            .collect()
    }
}

/// Scores divided by their mean over the problem's sites, so the average site has importance 1
/// and `lambda = 1` means "the average site's damage counts double". All zero stays all zero.
pub(crate) fn normalised_importance(scores: &[f64]) -> Vec<f64> {
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    if mean > 0.0 {
        scores.iter().map(|s| s / mean).collect()
    } else {
        vec![0.0; scores.len()]
    }
}

/// Relative quantization-noise power of a uniform b-bit quantizer, `4^(2-b)` (step^2/12 with
/// step ∝ 2^-b, scaled to 1 at 2 bits), averaged over the weight and activation quantizer.
pub(crate) fn noise_proxy(bits: SiteBits) -> f64 {
    let n = |b: u8| 4f64.powi(2 - i32::from(b));
    0.5 * (n(bits.w_bits.get()) + n(bits.a_bits.get()))
}

fn build_row(p: &Problem, allowed: &[Vec<usize>], budget: Budget) -> Result<Row> {
    let name = budget.kind.name();
    if !(budget.value.is_finite() && budget.value > 0.0) {
        return Err(Error::invalid(
            name,
            budget.value,
            "expected a finite value > 0",
        ));
    }
    let weight = |s: usize, bits: SiteBits| -> u128 {
        let site = &p.sites[s];
        let (w, a) = (u128::from(bits.w_bits.get()), u128::from(bits.a_bits.get()));
        match budget.kind {
            BudgetKind::AvgWeightBits | BudgetKind::ModelBytes => u128::from(site.params) * w,
            BudgetKind::AvgActBits => u128::from(site.macs) * a,
            BudgetKind::BitOps => u128::from(site.macs) * w * a,
        }
    };
    let denom: u128 = match budget.kind {
        BudgetKind::AvgWeightBits => p.sites.iter().map(|s| u128::from(s.params)).sum(),
        BudgetKind::AvgActBits => p.sites.iter().map(|s| u128::from(s.macs)).sum(),
        BudgetKind::ModelBytes => 8,
        BudgetKind::BitOps => 1,
    };
    if denom == 0 {
        return Err(Error::invalid(
            name,
            budget.value,
            match budget.kind {
                BudgetKind::AvgWeightBits => "no site has weights (all params are 0)",
                _ => "no site has multiply-accumulates (all macs are 0)",
            },
        ));
    }
    let mut usage = Vec::with_capacity(allowed.len());
    let (mut min_lhs, mut max_lhs) = (0u128, 0u128);
    for (s, ks) in allowed.iter().enumerate() {
        let u: Vec<u128> = ks.iter().map(|&k| weight(s, p.candidates[k])).collect();
        min_lhs += u.iter().min().copied().unwrap_or(0);
        max_lhs += u.iter().max().copied().unwrap_or(0);
        usage.push(u);
    }
    if max_lhs >= EXACT_F64 || denom >= EXACT_F64 {
        return Err(Error::invalid(
            name,
            budget.value,
            "the model's sizes are too large to check this budget exactly (sum above 2^53)",
        ));
    }
    let usage: Vec<Vec<u64>> = usage
        .into_iter()
        .map(|u| u.into_iter().map(|x| x as u64).collect())
        .collect();
    let (denom, min_lhs, max_lhs) = (denom as u64, min_lhs as u64, max_lhs as u64);
    let fits = |lhs: u64| lhs as f64 / denom as f64 <= budget.value;
    // Largest lhs that fits, found exactly: f64 division is monotone in lhs.
    let mut cap = (budget.value * denom as f64)
        .floor()
        .clamp(0.0, max_lhs as f64) as u64;
    while cap < max_lhs && fits(cap + 1) {
        cap += 1;
    }
    while cap > 0 && !fits(cap) {
        cap -= 1;
    }
    Ok(Row {
        budget,
        usage,
        denom,
        cap,
        min_lhs,
        max_lhs,
    })
}

/// A value of `kind` that is at least `exact` and that a user can type back: 4 decimals
/// rounded up for averages (at least 2 shown), a whole number rounded up for bytes and
/// bit-operations.
pub(crate) fn format_at_least(kind: BudgetKind, exact: f64) -> String {
    match kind {
        BudgetKind::AvgWeightBits | BudgetKind::AvgActBits => {
            let mut x = (exact * 1e4).ceil() / 1e4;
            loop {
                let mut s = format!("{x:.4}");
                while s.ends_with('0') && s.len() - s.find('.').unwrap_or(0) > 3 {
                    s.pop();
                }
                if s.parse::<f64>().is_ok_and(|v| v >= exact) {
                    return s;
                }
                x += 1e-4;
            }
        }
        BudgetKind::ModelBytes | BudgetKind::BitOps => format!("{}", exact.ceil() as u64),
    }
}

/// The error for a budget that no plan meets, naming the smallest value that works.
pub(crate) fn infeasible(row: &Row, smallest_lhs: u64, others: bool) -> Error {
    let exact = row.used(smallest_lhs);
    Error::invalid(
        row.budget.kind.name(),
        row.budget.value,
        format!(
            "infeasible; the smallest feasible {} with these candidates{} is {}",
            row.budget.kind.describe(),
            if others {
                ", limits and the other budgets"
            } else {
                " and limits"
            },
            format_at_least(row.budget.kind, exact)
        ),
    )
}
