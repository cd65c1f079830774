//! The solvers: MILP (good_lp + microlp), exact dynamic program, greedy incumbent.

use std::time::Duration;

use good_lp::solvers::{SolutionStatus, WithInitialSolution, WithTimeLimit};
use good_lp::{
    Expression, ProblemVariables, ResolutionError, Solution, SolverModel, Variable, microlp,
    variable,
};
use mixq_core::{Error, Result};

use crate::instance::{Instance, Row};

/// How a MILP solve ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Optimal,
    TimeLimit,
}

/// Shifted, gcd-scaled integer usage of one row: `sum_s units[s][k] <= cap` is equivalent to
/// the row's exact constraint. Smaller numbers keep the LP well-conditioned and the DP small.
pub(crate) struct Scaled {
    pub units: Vec<Vec<u64>>,
    pub cap: u64,
    /// `sum_s max_k units[s][k]`.
    pub max_total: u64,
}

pub(crate) fn scale_row(row: &Row) -> Option<Scaled> {
    if row.min_lhs > row.cap {
        return None;
    }
    let mins: Vec<u64> = row
        .usage
        .iter()
        .map(|u| u.iter().copied().min().unwrap_or(0))
        .collect();
    let g = row
        .usage
        .iter()
        .zip(&mins)
        .flat_map(|(u, &m)| u.iter().map(move |&x| x - m))
        .fold(0, gcd);
    let g = g.max(1);
    let units: Vec<Vec<u64>> = row
        .usage
        .iter()
        .zip(&mins)
        .map(|(u, &m)| u.iter().map(|&x| (x - m) / g).collect())
        .collect();
    let max_total = units
        .iter()
        .map(|u| u.iter().copied().max().unwrap_or(0))
        .sum();
    Some(Scaled {
        units,
        cap: (row.cap - row.min_lhs) / g,
        max_total,
    })
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Most DP cells (sites x capacity) allowed: the choice table is one byte per cell.
pub(crate) const DP_MAX_CELLS: u64 = 64_000_000;

/// Exact optimum for zero or one budget by dynamic programming over the (scaled) capacity.
/// Ties go to the earlier candidate, scanning sites in order.
pub(crate) fn dp(inst: &Instance) -> Result<Vec<usize>> {
    let row = match inst.rows.as_slice() {
        [] => return Ok(inst.argmin_cost()),
        [row] => row,
        rows => {
            return Err(Error::invalid(
                "solver",
                "dp",
                format!(
                    "the dynamic program handles one budget; this problem has {}",
                    rows.len()
                ),
            ));
        }
    };
    let scaled =
        scale_row(row).ok_or_else(|| crate::instance::infeasible(row, row.min_lhs, false))?;
    let cap = scaled.cap.min(scaled.max_total);
    let n = inst.n_sites() as u64;
    if n.saturating_mul(cap + 1) > DP_MAX_CELLS {
        return Err(Error::invalid(
            "solver",
            "dp",
            format!(
                "{} budget needs {} x {} table cells (limit {DP_MAX_CELLS}); use the MILP",
                row.budget.kind,
                n,
                cap + 1
            ),
        ));
    }
    let width = cap as usize + 1;
    // best[c]: least cost of the sites so far using at most c units.
    let mut best = vec![0.0f64; width];
    let mut next = vec![0.0f64; width];
    let mut choice = vec![0u8; inst.n_sites() * width];
    for s in 0..inst.n_sites() {
        let units = &scaled.units[s];
        let cost = &inst.cost[s];
        let table = &mut choice[s * width..(s + 1) * width];
        for c in 0..width {
            let mut v = f64::INFINITY;
            let mut arg = 0u8;
            for (k, (&u, &w)) in units.iter().zip(cost).enumerate() {
                let u = u as usize;
                if u <= c {
                    let cand = best[c - u] + w;
                    if cand < v {
                        v = cand;
                        arg = k as u8;
                    }
                }
            }
            next[c] = v;
            table[c] = arg;
        }
        std::mem::swap(&mut best, &mut next);
    }
    let mut out = vec![0; inst.n_sites()];
    let mut c = cap as usize;
    for s in (0..inst.n_sites()).rev() {
        let k = choice[s * width + c] as usize;
        out[s] = k;
        c -= scaled.units[s][k] as usize;
    }
    Ok(out)
}

/// A feasible plan by greedy upgrades, or `None` if the start is already over a budget.
///
/// Start from each site's least-resource candidate, then repeatedly take the feasible move
/// with the largest cost decrease per unit of (budget-normalised) extra resource. Used as the
/// MILP warm start and as the fallback when the MILP finds nothing in time.
pub(crate) fn greedy(inst: &Instance) -> Option<Vec<usize>> {
    let n = inst.n_sites();
    let norm: Vec<f64> = inst.rows.iter().map(|r| (r.cap.max(1)) as f64).collect();
    let weight = |s: usize, k: usize| -> f64 {
        inst.rows
            .iter()
            .zip(&norm)
            .map(|(r, d)| r.usage[s][k] as f64 / d)
            .sum()
    };
    let mut choice: Vec<usize> = (0..n)
        .map(|s| {
            (0..inst.allowed[s].len()).fold(0, |b, k| {
                let (wk, wb) = (weight(s, k), weight(s, b));
                if wk < wb || (wk == wb && inst.cost[s][k] < inst.cost[s][b]) {
                    k
                } else {
                    b
                }
            })
        })
        .collect();
    if !inst.feasible(&choice) {
        return None;
    }
    let mut lhs: Vec<u64> = inst.rows.iter().map(|r| r.lhs(&choice)).collect();
    for _ in 0..100_000 {
        let mut best: Option<(f64, usize, usize)> = None;
        for (s, &cur) in choice.iter().enumerate() {
            for k in 0..inst.allowed[s].len() {
                let dcost = inst.cost[s][k] - inst.cost[s][cur];
                if k == cur || dcost >= 0.0 {
                    continue;
                }
                let mut extra = 0.0;
                let mut fits = true;
                for (r, row) in inst.rows.iter().enumerate() {
                    let new = lhs[r] - row.usage[s][cur] + row.usage[s][k];
                    fits &= new <= row.cap;
                    extra += (row.usage[s][k] as f64 - row.usage[s][cur] as f64).max(0.0) / norm[r];
                }
                if !fits {
                    continue;
                }
                let score = if extra <= 0.0 {
                    f64::INFINITY
                } else {
                    -dcost / extra
                };
                if best.is_none_or(|(b, _, _)| score > b) {
                    best = Some((score, s, k));
                }
            }
        }
        let Some((_, s, k)) = best else { break };
        for (r, row) in inst.rows.iter().enumerate() {
            lhs[r] = lhs[r] - row.usage[s][choice[s]] + row.usage[s][k];
        }
        choice[s] = k;
    }
    Some(choice)
}

/// What the MILP minimises.
pub(crate) enum Goal<'a> {
    /// The allocation cost.
    Cost,
    /// One row's resource (to find the smallest feasible budget value), with the rows other
    /// than `skip` as constraints.
    Resource { row: &'a Scaled, skip: usize },
}

/// Solves the multiple-choice knapsack MILP with microlp. `Ok(None)`: proven infeasible, or
/// no feasible point found before the time limit (the caller falls back to the greedy plan).
pub(crate) fn milp(
    inst: &Instance,
    goal: Goal<'_>,
    warm: Option<&[usize]>,
    time_limit: Option<Duration>,
) -> Result<Option<(Vec<usize>, Outcome)>> {
    let mut scaled = Vec::new();
    for (r, row) in inst.rows.iter().enumerate() {
        if let Goal::Resource { skip, .. } = goal
            && skip == r
        {
            continue;
        }
        match scale_row(row) {
            None => return Ok(None),
            Some(sc) if sc.max_total <= sc.cap => {}
            Some(sc) => scaled.push(sc),
        }
    }

    let mut vars = ProblemVariables::new();
    let x: Vec<Vec<Variable>> = inst
        .allowed
        .iter()
        .map(|ks| vars.add_vector(variable().binary(), ks.len()))
        .collect();

    // Objective: per-site cost minus its minimum (a constant), divided by the largest such
    // range, so microlp's pruning tolerance (1e-9, absolute below 1) is small against it.
    let mut objective = Expression::with_capacity(x.iter().map(Vec::len).sum());
    match &goal {
        Goal::Cost => {
            let shifted: Vec<Vec<f64>> = inst
                .cost
                .iter()
                .map(|c| {
                    let m = c.iter().copied().fold(f64::INFINITY, f64::min);
                    c.iter().map(|v| v - m).collect()
                })
                .collect();
            let range = shifted.iter().flatten().copied().fold(0.0f64, f64::max);
            let scale = if range > 0.0 { range } else { 1.0 };
            for (xs, cs) in x.iter().zip(&shifted) {
                for (&v, &c) in xs.iter().zip(cs) {
                    if c != 0.0 {
                        objective.add_mul(c / scale, v);
                    }
                }
            }
        }
        Goal::Resource { row, .. } => {
            for (xs, us) in x.iter().zip(&row.units) {
                for (&v, &u) in xs.iter().zip(us) {
                    if u != 0 {
                        objective.add_mul(u as f64, v);
                    }
                }
            }
        }
    }

    let mut model = vars.minimise(objective).using(microlp);
    if let Some(t) = time_limit {
        model = model.with_time_limit(t.as_secs_f64());
    }
    if let Some(w) = warm {
        let init: Vec<(Variable, f64)> = x
            .iter()
            .zip(w)
            .flat_map(|(xs, &k)| {
                xs.iter()
                    .enumerate()
                    .map(move |(j, &v)| (v, if j == k { 1.0 } else { 0.0 }))
            })
            .collect();
        model = model.with_initial_solution(init);
    }
    for xs in &x {
        let mut e = Expression::with_capacity(xs.len());
        for &v in xs {
            e.add_mul(1.0, v);
        }
        model.add_constraint(e.eq(1.0));
    }
    // Integer usage <= cap is the same as <= cap + 0.5: the half unit keeps the optimum
    // inside the LP's feasibility tolerance; rows are divided by their right-hand side.
    for sc in &scaled {
        let rhs = sc.cap as f64 + 0.5;
        let mut e = Expression::with_capacity(sc.units.iter().map(Vec::len).sum());
        for (xs, us) in x.iter().zip(&sc.units) {
            for (&v, &u) in xs.iter().zip(us) {
                if u != 0 {
                    e.add_mul(u as f64 / rhs, v);
                }
            }
        }
        model.add_constraint(e.leq(1.0));
    }

    let solution = match model.solve() {
        Ok(s) => s,
        Err(ResolutionError::Infeasible) => return Ok(None),
        Err(ResolutionError::Other(msg)) if msg.contains("Time limit") => return Ok(None),
        Err(e) => {
            return Err(Error::invalid(
                "solver",
                "microlp",
                format!("the MILP failed: {e}"),
            ));
        }
    };
    let outcome = match solution.status() {
        SolutionStatus::Optimal => Outcome::Optimal,
        _ => Outcome::TimeLimit,
    };
    let choice: Vec<usize> = x
        .iter()
        .map(|xs| {
            (0..xs.len()).fold(0, |b, j| {
                if solution.value(xs[j]) > solution.value(xs[b]) {
                    j
                } else {
                    b
                }
            })
        })
        .collect();
    Ok(Some((choice, outcome)))
}
