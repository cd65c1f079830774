//! Instance generators and an independent reference (brute force) for the allocator tests.
#![allow(dead_code)]

use mixq_allocator::{Budget, BudgetKind, Criterion};
use mixq_core::{
    ContributionScores, SensitivityPoint, SensitivityTable, SiteBits, SiteId, SiteInfo, SiteKind,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn bits(w: u8, a: u8) -> SiteBits {
    SiteBits::new(w, a).unwrap()
}

pub struct Instance {
    pub sites: Vec<SiteInfo>,
    pub scores: ContributionScores,
    pub table: SensitivityTable,
    pub candidates: Vec<SiteBits>,
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn tables(sites: &[SiteInfo], candidates: &[SiteBits], rng: &mut ChaCha8Rng) -> Instance {
    let mut scores = ContributionScores::default();
    let mut table = SensitivityTable {
        metric: "kl".into(),
        ..Default::default()
    };
    for s in sites {
        scores.scores.insert(s.id.clone(), rng.random::<f64>());
        let base = rng.random_range(0.01..1.0);
        let points = candidates
            .iter()
            .map(|&b| SensitivityPoint {
                bits: b,
                damage: base
                    * (2f64.powi(-i32::from(b.w_bits.get()))
                        + 2f64.powi(-i32::from(b.a_bits.get())))
                    * rng.random_range(0.5..1.5),
            })
            .collect();
        table.sites.insert(s.id.clone(), points);
    }
    Instance {
        sites: sites.to_vec(),
        scores,
        table,
        candidates: candidates.to_vec(),
    }
}

/// `n` sites (about a quarter without weights), `n_cand` distinct random (w, a) pairs. Odd
/// seeds use tiny sizes so that many plans land exactly on (or one unit past) a budget.
pub fn small(seed: u64, n: usize, n_cand: usize) -> Instance {
    let mut rng = rng(seed);
    let max_params = if seed % 2 == 1 { 6 } else { 2000u64 };
    let sites: Vec<SiteInfo> = (0..n)
        .map(|i| {
            let matmul = i > 0 && rng.random_bool(0.25);
            let params = if matmul {
                0
            } else {
                rng.random_range(1..max_params)
            };
            SiteInfo {
                id: SiteId::new(format!("blocks.{i}.site")),
                kind: if matmul {
                    SiteKind::MatMulQk
                } else {
                    SiteKind::Linear
                },
                params,
                macs: if matmul {
                    rng.random_range(1..max_params * 25)
                } else {
                    params * rng.random_range(1..max_params.min(200))
                },
            }
        })
        .collect();
    let pool = [2u8, 3, 4, 6, 8];
    let mut candidates: Vec<SiteBits> = Vec::new();
    while candidates.len() < n_cand {
        let c = bits(
            pool[rng.random_range(0..pool.len())],
            pool[rng.random_range(0..pool.len())],
        );
        if !candidates.contains(&c) {
            candidates.push(c);
        }
    }
    candidates.sort_by_key(|b| (b.w_bits, b.a_bits));
    tables(&sites, &candidates, &mut rng)
}

/// DeiT-S sites: 12 blocks of qkv, proj, fc1, fc2 and two attention matmuls, plus patch
/// embedding and head (74 sites); MACs = params * 197 for the linears.
pub fn deit_s_sites() -> Vec<SiteInfo> {
    let lin = |id: String, kind, params: u64| SiteInfo {
        id: SiteId::new(id),
        kind,
        params,
        macs: params * 197,
    };
    let mut sites = vec![lin("patch_embed.proj".into(), SiteKind::Conv, 768 * 384)];
    for b in 0..12 {
        sites.push(lin(
            format!("blocks.{b}.attn.qkv"),
            SiteKind::Linear,
            384 * 1152,
        ));
        sites.push(SiteInfo {
            id: SiteId::new(format!("blocks.{b}.attn.matmul_qk")),
            kind: SiteKind::MatMulQk,
            params: 0,
            macs: 6 * 197 * 197 * 64,
        });
        sites.push(SiteInfo {
            id: SiteId::new(format!("blocks.{b}.attn.matmul_av")),
            kind: SiteKind::MatMulAv,
            params: 0,
            macs: 6 * 197 * 197 * 64,
        });
        sites.push(lin(
            format!("blocks.{b}.attn.proj"),
            SiteKind::Linear,
            384 * 384,
        ));
        sites.push(lin(
            format!("blocks.{b}.mlp.fc1"),
            SiteKind::Linear,
            384 * 1536,
        ));
        sites.push(lin(
            format!("blocks.{b}.mlp.fc2"),
            SiteKind::Linear,
            1536 * 384,
        ));
    }
    sites.push(lin("head".into(), SiteKind::Linear, 384 * 1000));
    assert_eq!(sites.len(), 74);
    sites
}

pub fn deit_s(seed: u64) -> Instance {
    let mut rng = rng(seed);
    tables(
        &deit_s_sites(),
        &mixq_allocator::default_candidates(),
        &mut rng,
    )
}

/// The used value of a budget, computed here independently of the crate.
pub fn used(kind: BudgetKind, sites: &[SiteInfo], plan: &[SiteBits]) -> f64 {
    let mut num = 0u128;
    let mut den = 0u128;
    for (s, b) in sites.iter().zip(plan) {
        let (w, a) = (u128::from(b.w_bits.get()), u128::from(b.a_bits.get()));
        let (p, m) = (u128::from(s.params), u128::from(s.macs));
        match kind {
            BudgetKind::AvgWeightBits => {
                num += p * w;
                den += p;
            }
            BudgetKind::AvgActBits => {
                num += m * a;
                den += m;
            }
            BudgetKind::ModelBytes => num += p * w,
            BudgetKind::BitOps => num += m * w * a,
        }
    }
    match kind {
        BudgetKind::AvgWeightBits | BudgetKind::AvgActBits => num as f64 / den as f64,
        BudgetKind::ModelBytes => num as f64 / 8.0,
        BudgetKind::BitOps => num as f64,
    }
}

/// Cost of one site at `b`, from the documented formulas.
pub fn cost(inst: &Instance, criterion: Criterion, lambda: f64, s: usize, b: SiteBits) -> f64 {
    let id = &inst.sites[s].id;
    let mean = inst
        .sites
        .iter()
        .map(|x| inst.scores.scores[&x.id])
        .sum::<f64>()
        / inst.sites.len() as f64;
    let imp = inst.scores.scores[id] / mean;
    let damage = || {
        inst.table.sites[id]
            .iter()
            .find(|p| p.bits == b)
            .unwrap()
            .damage
    };
    match criterion {
        Criterion::Sensitivity => damage(),
        Criterion::Mix => damage() * (1.0 + lambda * imp),
        Criterion::Lrp => {
            imp * 0.5
                * (4f64.powi(2 - i32::from(b.w_bits.get()))
                    + 4f64.powi(2 - i32::from(b.a_bits.get())))
        }
    }
}

pub fn objective(inst: &Instance, criterion: Criterion, lambda: f64, plan: &[SiteBits]) -> f64 {
    plan.iter()
        .enumerate()
        .map(|(s, &b)| cost(inst, criterion, lambda, s, b))
        .sum()
}

pub fn within(budgets: &[Budget], sites: &[SiteInfo], plan: &[SiteBits]) -> bool {
    budgets.iter().all(|b| used(b.kind, sites, plan) <= b.value)
}

/// Least objective over every assignment within `budgets` (per-site `allowed` filters the
/// candidates); `None` if none fits.
pub fn brute_force(
    inst: &Instance,
    criterion: Criterion,
    lambda: f64,
    budgets: &[Budget],
    allowed: &dyn Fn(usize, SiteBits) -> bool,
) -> Option<f64> {
    let n = inst.sites.len();
    let options: Vec<Vec<SiteBits>> = (0..n)
        .map(|s| {
            inst.candidates
                .iter()
                .copied()
                .filter(|&b| allowed(s, b))
                .collect()
        })
        .collect();
    let mut idx = vec![0usize; n];
    let mut best: Option<f64> = None;
    loop {
        let plan: Vec<SiteBits> = (0..n).map(|s| options[s][idx[s]]).collect();
        if within(budgets, &inst.sites, &plan) {
            let o = objective(inst, criterion, lambda, &plan);
            if best.is_none_or(|b| o < b) {
                best = Some(o);
            }
        }
        let mut s = 0;
        loop {
            if s == n {
                return best;
            }
            idx[s] += 1;
            if idx[s] < options[s].len() {
                break;
            }
            idx[s] = 0;
            s += 1;
        }
    }
}

/// The range [least, most] a budget kind can take over all assignments (each kind is a
/// separable sum, monotone in a per-site key).
pub fn range(inst: &Instance, kind: BudgetKind) -> (f64, f64) {
    let key = |b: &SiteBits| {
        let (w, a) = (u32::from(b.w_bits.get()), u32::from(b.a_bits.get()));
        match kind {
            BudgetKind::AvgWeightBits | BudgetKind::ModelBytes => w,
            BudgetKind::AvgActBits => a,
            BudgetKind::BitOps => w * a,
        }
    };
    let lo = inst.candidates.iter().copied().min_by_key(key).unwrap();
    let hi = inst.candidates.iter().copied().max_by_key(key).unwrap();
    let n = inst.sites.len();
    (
        used(kind, &inst.sites, &vec![lo; n]),
        used(kind, &inst.sites, &vec![hi; n]),
    )
}

pub fn plan_vec(inst: &Instance, plan: &mixq_core::BitPlan) -> Vec<SiteBits> {
    inst.sites.iter().map(|s| plan.sites[&s.id]).collect()
}
