//! # mixq-allocator
//!
//! Mixed-precision bit allocation: choose one (weight bits, activation bits) candidate per
//! quantization site so that a sum of per-site costs is least, subject to budgets. It is a
//! multiple-choice knapsack, solved exactly as an integer program with good_lp's pure-Rust
//! `microlp` backend ([`allocate`]), with an exact dynamic program for the single-budget case
//! as a cross-check ([`allocate_dp`]).
//!
//! ## The integer program
//! One binary `x[s,k]` per site `s` and allowed candidate `k` (candidates outside a site's
//! [`BitLimits`] get no variable), `sum_k x[s,k] = 1` per site, one row per [`Budget`]:
//!
//! | budget ([`BudgetKind`]) | used value, `<= value` |
//! | --- | --- |
//! | `avg-w-bits` | `sum_s params_s w_s / sum_s params_s` (attention matmuls have 0 params and do not count) |
//! | `avg-a-bits` | `sum_s macs_s a_s / sum_s macs_s` (MAC-weighted, like bit-operations) |
//! | `model-bytes` | `sum_s params_s w_s / 8` (scales, zero points, biases, LayerNorm not counted) |
//! | `bit-ops` | `sum_s macs_s w_s a_s` per image |
//!
//! Every row is an integer sum, so it is checked exactly (the solvers compare the integer
//! left side with the largest integer whose `used` is `<= value` in f64); a returned plan is
//! never over a budget.
//!
//! ## Costs (objective criteria, [`Criterion`])
//! With `importance_s = score_s / mean_t(score_t)` (mean over the problem's sites, so the
//! average site has importance 1; all-zero scores stay 0) and `damage(s, b)` the sensitivity
//! table's value for site `s` alone at candidate `b`:
//! - `lrp` (LRP-QViT, importance only): `cost(s, b) = importance_s * (4^(2-w) + 4^(2-a)) / 2`,
//!   an importance-weighted quantization-noise proxy (noise power of a uniform quantizer
//!   scales as `4^-bits`; 1 at W2A2), so more important sites get more bits.
//! - `sensitivity` (measured damage only): `cost(s, b) = damage(s, b)`.
//! - `mix` (default: both signals): `cost(s, b) = damage(s, b) * (1 + lambda * importance_s)`,
//!   `lambda` default 1.
//!
//! The objective value is `sum_s cost(s, b_s)`. A missing sensitivity point for a candidate a
//! site may use, or sites present in one input but not another, is an error naming the site.
//!
//! ## Infeasible budgets and the time limit
//! A budget no plan meets is [`mixq_core::Error::InvalidValue`] naming the smallest feasible
//! value (also available from [`smallest_feasible`]). microlp honours a wall-clock limit
//! ([`Problem::with_time_limit`], default 60 s) and returns its best incumbent; it is seeded
//! with a greedy plan, which is also returned ([`SolveStatus::Heuristic`]) if microlp finds
//! nothing in time.
//!
//! ```
//! use mixq_allocator::{Budget, Problem, allocate, allocate_dp, default_candidates};
//! use mixq_core::{ContributionScores, SensitivityPoint, SensitivityTable, SiteId, SiteInfo, SiteKind};
//!
//! let site = |id: &str, kind, params, macs| SiteInfo { id: SiteId::new(id), kind, params, macs };
//! let sites = [
//!     site("blocks.0.attn.qkv", SiteKind::Linear, 1000, 197_000),
//!     site("blocks.0.attn.matmul_qk", SiteKind::MatMulQk, 0, 50_000),
//!     site("head", SiteKind::Linear, 1000, 1000),
//! ];
//! let candidates = default_candidates();
//! let mut scores = ContributionScores::default();
//! let mut table = SensitivityTable { metric: "kl".into(), ..Default::default() };
//! for (s, score) in sites.iter().zip([0.2, 0.3, 0.5]) {
//!     scores.scores.insert(s.id.clone(), score);
//!     let points = candidates.iter().map(|&bits| SensitivityPoint {
//!         bits,
//!         damage: score * 4f64.powi(-i32::from(bits.w_bits.get())),
//!     });
//!     table.sites.insert(s.id.clone(), points.collect());
//! }
//! let problem = Problem::from_tables(&sites, Some(&scores), Some(&table), &candidates)?
//!     .with_budget(Budget::avg_w_bits(5.0));
//! let milp = allocate(&problem)?;
//! assert!(milp.budgets[0].used <= 5.0);
//! // The exact DP agrees on the optimum.
//! let dp = allocate_dp(&problem)?;
//! assert!((milp.objective - dp.objective).abs() <= 1e-9 * dp.objective.abs());
//! // The matmul has no weights, so it takes its least-damage candidate.
//! assert_eq!(milp.plan.sites[&SiteId::new("blocks.0.attn.matmul_qk")].w_bits.get(), 8);
//! // An impossible budget names the smallest one that works.
//! let err = allocate(&problem.clone().with_budget(Budget::avg_w_bits(1.5))).unwrap_err();
//! assert!(err.to_string().contains("smallest feasible average weight bits"), "{err}");
//! assert!(err.to_string().contains("is 2.00"), "{err}");
//! # Ok::<(), mixq_core::Error>(())
//! ```

#![warn(missing_docs)]

mod instance;
mod problem;
mod solve;

use mixq_core::{BitPlan, Error, Result, SiteBits};
use serde::Serialize;

use crate::instance::{Instance, infeasible};
use crate::problem::label;
use crate::solve::{Goal, Outcome, dp, greedy, milp, scale_row};

pub use crate::problem::{
    BitLimits, Budget, BudgetKind, Criterion, Problem, default_candidates, parse_candidates,
};

/// How trustworthy the returned plan is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SolveStatus {
    /// Proven optimal (MILP with zero gap, or the exact DP).
    Optimal,
    /// The MILP time limit fired; the best plan it had found.
    TimeLimit,
    /// The greedy plan: microlp found nothing better or nothing usable in time.
    Heuristic,
}

impl SolveStatus {
    /// The name reports and plan files use.
    pub fn name(self) -> &'static str {
        match self {
            SolveStatus::Optimal => "optimal",
            SolveStatus::TimeLimit => "time-limit",
            SolveStatus::Heuristic => "heuristic",
        }
    }
}

/// Which solver produced the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SolverKind {
    /// good_lp + microlp branch and bound.
    Milp,
    /// Dynamic program over the budget (single budget only).
    Dp,
}

impl SolverKind {
    /// The name reports and plan files use.
    pub fn name(self) -> &'static str {
        match self {
            SolverKind::Milp => "milp-microlp",
            SolverKind::Dp => "dp",
        }
    }
}

/// One budget of the result: the user's bound, what the plan uses, and `slack = value - used`
/// (>= 0).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BudgetUse {
    /// The bound asked for.
    pub budget: Budget,
    /// What the plan uses of it.
    pub used: f64,
    /// `value - used`, >= 0.
    pub slack: f64,
}

/// A solved allocation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Allocation {
    /// Bits for every site; `meta` records the criterion (key `preset`), lambda, budget,
    /// objective, solver, status, candidates (and the sensitivity metric when a table was used).
    pub plan: BitPlan,
    /// `sum_s cost(s, b_s)` (see the crate docs for the cost of each criterion).
    pub objective: f64,
    /// One entry per budget, in [`BudgetKind`] order.
    pub budgets: Vec<BudgetUse>,
    /// Optimal, stopped at the time limit, or the greedy fallback.
    pub status: SolveStatus,
    /// Which solver produced the plan.
    pub solver: SolverKind,
}

/// Solves the allocation with the MILP (any combination of budgets).
pub fn allocate(problem: &Problem) -> Result<Allocation> {
    let inst = Instance::compile(problem)?;
    check_rows_alone(&inst)?;
    let warm = greedy(&inst);
    let solved = milp(&inst, Goal::Cost, warm.as_deref(), problem.time_limit)?;
    let (choice, status) = match (solved, warm) {
        (Some((c, o)), _) if inst.feasible(&c) => (c, status_of(o)),
        // microlp's answer rounded over a budget (LP tolerance): the greedy plan is safe.
        (Some(_), Some(w)) | (None, Some(w)) => (w, SolveStatus::Heuristic),
        (Some(_), None) => {
            return Err(Error::invalid(
                "solver",
                "microlp",
                "its plan violates a budget after rounding and no greedy plan fits; \
                 loosen the budgets slightly",
            ));
        }
        (None, None) => return Err(diagnose(problem, &inst)?),
    };
    Ok(finish(problem, &inst, &choice, status, SolverKind::Milp))
}

/// Solves a problem with at most one budget exactly by dynamic programming over the budget,
/// in units of the gcd of the per-site usage differences (exact: no rounding of sizes).
/// Errors for two or more budgets, or when the table would exceed 64 M cells.
pub fn allocate_dp(problem: &Problem) -> Result<Allocation> {
    let inst = Instance::compile(problem)?;
    check_rows_alone(&inst)?;
    let choice = dp(&inst)?;
    Ok(finish(
        problem,
        &inst,
        &choice,
        SolveStatus::Optimal,
        SolverKind::Dp,
    ))
}

/// The smallest value of `kind` any plan reaches within the problem's limits and its other
/// budgets (its own budget of `kind`, if any, is ignored). Errors if the other budgets alone
/// are infeasible.
pub fn smallest_feasible(problem: &Problem, kind: BudgetKind) -> Result<f64> {
    let relaxed = problem.clone().with_budget(Budget::new(kind, f64::MAX));
    let inst = Instance::compile(&relaxed)?;
    let r = inst
        .rows
        .iter()
        .position(|row| row.budget.kind == kind)
        .expect("the relaxed problem has this budget");
    let lhs = min_resource(&inst, r, problem.time_limit)?.ok_or_else(|| {
        Error::invalid(
            kind.name(),
            "any value",
            "infeasible: the other budgets and limits admit no plan",
        )
    })?;
    Ok(inst.rows[r].used(lhs))
}

fn status_of(o: Outcome) -> SolveStatus {
    match o {
        Outcome::Optimal => SolveStatus::Optimal,
        Outcome::TimeLimit => SolveStatus::TimeLimit,
    }
}

/// A budget that even the least-resource plan misses: the smallest value is just that plan's.
fn check_rows_alone(inst: &Instance) -> Result<()> {
    match inst.rows.iter().find(|r| r.min_lhs > r.cap) {
        Some(row) => Err(infeasible(row, row.min_lhs, false)),
        None => Ok(()),
    }
}

/// Least lhs of row `r` subject to the other rows; `None` if they admit no plan.
fn min_resource(
    inst: &Instance,
    r: usize,
    time_limit: Option<std::time::Duration>,
) -> Result<Option<u64>> {
    let row = &inst.rows[r];
    let others_bind = inst
        .rows
        .iter()
        .enumerate()
        .any(|(i, o)| i != r && !o.slack_always());
    if !others_bind {
        return Ok(Some(row.min_lhs));
    }
    // `scale_row` is only None for an infeasible row; use a row with an unlimited cap.
    let mut open = row.clone();
    open.cap = open.max_lhs;
    let scaled = scale_row(&open).expect("max_lhs >= min_lhs");
    let others_ok = |c: &[usize]| {
        inst.rows
            .iter()
            .enumerate()
            .all(|(i, o)| i == r || o.lhs(c) <= o.cap)
    };
    match milp(
        inst,
        Goal::Resource {
            row: &scaled,
            skip: r,
        },
        None,
        time_limit,
    )? {
        Some((c, _)) if others_ok(&c) => Ok(Some(row.lhs(&c))),
        _ => Ok(None),
    }
}

/// The MILP found no plan: name the first budget whose smallest feasible value (given the
/// others) is above the user's value.
fn diagnose(problem: &Problem, inst: &Instance) -> Result<Error> {
    for (r, row) in inst.rows.iter().enumerate() {
        if let Some(lhs) = min_resource(inst, r, problem.time_limit)?
            && lhs > row.cap
        {
            return Ok(infeasible(row, lhs, inst.rows.len() > 1));
        }
    }
    Ok(Error::invalid(
        "budgets",
        problem
            .budgets
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        match problem.time_limit {
            Some(t) => format!(
                "no plan found within the time limit of {:.1} s; raise it or loosen a budget",
                t.as_secs_f64()
            ),
            None => "no plan meets all budgets together; loosen one".to_string(),
        },
    ))
}

fn finish(
    problem: &Problem,
    inst: &Instance,
    choice: &[usize],
    status: SolveStatus,
    solver: SolverKind,
) -> Allocation {
    let objective = inst.objective(choice);
    let budgets: Vec<BudgetUse> = inst
        .rows
        .iter()
        .map(|row| {
            let used = row.used(row.lhs(choice));
            BudgetUse {
                budget: row.budget,
                used,
                slack: row.budget.value - used,
            }
        })
        .collect();
    let mut plan = BitPlan::default();
    for (s, site) in problem.sites.iter().enumerate() {
        let bits: SiteBits = problem.candidates[inst.allowed[s][choice[s]]];
        plan.sites.insert(site.id.clone(), bits);
    }
    let meta = &mut plan.meta;
    meta.insert("preset".into(), problem.criterion.name().into());
    meta.insert("lambda".into(), problem.lambda.to_string());
    meta.insert(
        "budget".into(),
        if problem.budgets.is_empty() {
            "none".into()
        } else {
            problem
                .budgets
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    meta.insert("objective".into(), objective.to_string());
    meta.insert("solver".into(), solver.name().into());
    meta.insert("status".into(), status.name().into());
    meta.insert(
        "candidates".into(),
        problem
            .candidates
            .iter()
            .map(|c| label(*c))
            .collect::<Vec<_>>()
            .join(","),
    );
    if let Some(metric) = problem
        .metric
        .as_ref()
        .filter(|_| problem.criterion != Criterion::Lrp)
    {
        meta.insert("metric".into(), metric.clone());
    }
    Allocation {
        plan,
        objective,
        budgets,
        status,
        solver,
    }
}
