mod common;

use std::time::Duration;

use common::{bits, brute_force, deit_s, plan_vec, range, small, used, within};
use mixq_allocator::{
    BitLimits, Budget, BudgetKind, Criterion, Problem, SolveStatus, allocate, allocate_dp,
    parse_candidates, smallest_feasible,
};
use mixq_core::{BitWidth, Error, SiteBits, SiteId};
use rand::Rng;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()) + 1e-12
}

fn problem(inst: &common::Instance) -> Problem {
    Problem::from_tables(
        &inst.sites,
        Some(&inst.scores),
        Some(&inst.table),
        &inst.candidates,
    )
    .unwrap()
}

/// The number after "is " at the end of an infeasibility message.
fn reported_value(err: &Error) -> f64 {
    let text = err.to_string();
    let tail = text.rsplit("is ").next().unwrap();
    tail.trim().parse().unwrap_or_else(|_| panic!("{text}"))
}

const CRITERIA: [Criterion; 3] = [Criterion::Mix, Criterion::Sensitivity, Criterion::Lrp];

#[test]
fn equals_brute_force_on_small_random_instances() {
    use BudgetKind::*;
    let combos: [&[BudgetKind]; 8] = [
        &[],
        &[AvgWeightBits],
        &[AvgActBits],
        &[ModelBytes],
        &[BitOps],
        &[AvgWeightBits, BitOps],
        &[AvgActBits, ModelBytes],
        &[AvgWeightBits, AvgActBits, ModelBytes, BitOps],
    ];
    let mut checked = 0;
    let mut infeasible = 0;
    for seed in 0..16u64 {
        let n = 3 + (seed as usize % 6);
        let inst = small(seed, n, 2 + (seed as usize % 3));
        let mut rng = common::rng(1000 + seed);
        let criterion = CRITERIA[seed as usize % 3];
        let lambda = rng.random_range(0.0..3.0);
        // Every third instance keeps site 0 at >= 4 bits.
        let limit = seed % 3 == 0;
        let min4 = BitLimits::at_least(BitWidth::new(4).unwrap());
        let allowed = |s: usize, b: SiteBits| !(limit && s == 0) || min4.allows(b);
        if limit && !inst.candidates.iter().any(|&b| min4.allows(b)) {
            continue;
        }
        for kinds in combos {
            let budgets: Vec<Budget> = kinds
                .iter()
                .map(|&k| {
                    let (lo, hi) = range(&inst, k);
                    if rng.random_bool(0.5) {
                        Budget::new(k, lo + rng.random_range(0.1..0.9) * (hi - lo))
                    } else {
                        // Exactly what some plan uses: the optimum often sits on the budget.
                        let plan: Vec<SiteBits> = (0..inst.sites.len())
                            .map(|_| inst.candidates[rng.random_range(0..inst.candidates.len())])
                            .collect();
                        Budget::new(k, used(k, &inst.sites, &plan))
                    }
                })
                .collect();
            let mut p = problem(&inst).with_criterion(criterion).with_lambda(lambda);
            if limit {
                p = p.with_limit(inst.sites[0].id.as_str(), min4).unwrap();
            }
            for b in &budgets {
                p = p.with_budget(*b);
            }
            let best = brute_force(&inst, criterion, lambda, &budgets, &allowed);
            let got = allocate(&p);
            let Some(best) = best else {
                let err = got.unwrap_err();
                assert!(
                    matches!(err, Error::InvalidValue { .. })
                        && err.to_string().contains("infeasible"),
                    "{err}"
                );
                infeasible += 1;
                continue;
            };
            let a = got.unwrap_or_else(|e| panic!("seed {seed} {kinds:?}: {e}"));
            let plan = plan_vec(&inst, &a.plan);
            assert!(
                within(&budgets, &inst.sites, &plan),
                "seed {seed} {kinds:?}"
            );
            assert!(plan.iter().enumerate().all(|(s, &b)| allowed(s, b)));
            assert!(
                close(
                    a.objective,
                    common::objective(&inst, criterion, lambda, &plan)
                ),
                "reported objective is the plan's"
            );
            assert!(
                close(a.objective, best),
                "seed {seed} {kinds:?} {criterion}: milp {} brute force {best}",
                a.objective
            );
            assert_eq!(a.status, SolveStatus::Optimal);
            for u in &a.budgets {
                assert_eq!(u.used, used(u.budget.kind, &inst.sites, &plan));
                assert!(u.slack >= 0.0 && u.used <= u.budget.value);
            }
            if kinds.len() <= 1 {
                let d = allocate_dp(&p).unwrap();
                assert!(close(d.objective, best), "dp {} vs {best}", d.objective);
            }
            checked += 1;
        }
    }
    assert!(checked >= 60, "only {checked} feasible cases");
    assert!(infeasible <= 20, "{infeasible} infeasible cases");
}

#[test]
fn larger_budget_never_worse_and_never_exceeded() {
    let inst = deit_s(7);
    let mut prev = f64::INFINITY;
    for step in 0..=24 {
        let b = 2.0 + 0.25 * f64::from(step);
        let a = allocate(&problem(&inst).with_budget(Budget::avg_w_bits(b))).unwrap();
        let plan = plan_vec(&inst, &a.plan);
        assert!(used(BudgetKind::AvgWeightBits, &inst.sites, &plan) <= b);
        assert!(
            a.objective <= prev + 1e-12,
            "budget {b}: {} > {prev}",
            a.objective
        );
        prev = a.objective;
    }
    // Bit-operations on a small instance, through the MILP.
    let inst = small(3, 8, 4);
    let (lo, hi) = range(&inst, BudgetKind::BitOps);
    let mut prev = f64::INFINITY;
    for step in 0..=20 {
        let b = lo + (hi - lo) * f64::from(step) / 20.0;
        let a = allocate(&problem(&inst).with_budget(Budget::bit_ops(b))).unwrap();
        assert!(a.budgets[0].used <= b && a.budgets[0].slack >= 0.0);
        assert!(a.objective <= prev + 1e-12);
        prev = a.objective;
    }
}

#[test]
fn infeasible_budget_names_a_feasible_smallest_value() {
    for seed in 0..6u64 {
        let inst = small(50 + seed, 6, 3);
        for kind in BudgetKind::ALL {
            let (lo, _) = range(&inst, kind);
            let err =
                allocate(&problem(&inst).with_budget(Budget::new(kind, lo * 0.9))).unwrap_err();
            assert!(matches!(err, Error::InvalidValue { .. }), "{err}");
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("invalid {} = ", kind.name()))
                    && text.contains("infeasible; the smallest feasible"),
                "{text}"
            );
            let v = reported_value(&err);
            assert!(v >= lo && v <= lo * 1.001 + 1.0, "{v} vs {lo}");
            let p = problem(&inst).with_budget(Budget::new(kind, v));
            let a = allocate(&p).unwrap_or_else(|e| panic!("reported {v} fails: {e}"));
            assert!(a.budgets[0].used <= v);
            assert_eq!(smallest_feasible(&p, kind).unwrap(), lo);
        }
    }
    // The documented message.
    let inst = small(1, 5, 4);
    let inst = common::Instance {
        candidates: mixq_allocator::default_candidates(),
        table: common::deit_s(0).table, // unused by lrp
        ..inst
    };
    let p = Problem::from_tables(&inst.sites, Some(&inst.scores), None, &inst.candidates)
        .unwrap()
        .with_criterion(Criterion::Lrp)
        .with_budget(Budget::avg_w_bits(1.5));
    assert_eq!(
        allocate(&p).unwrap_err().to_string(),
        "invalid avg-w-bits = 1.5: infeasible; the smallest feasible average weight bits with \
         these candidates and limits is 2.00"
    );
}

#[test]
fn jointly_infeasible_budgets_name_the_value_given_the_others() {
    // W2A8 is cheap in weights, W8A2 in activations: each budget alone is easy, both are not.
    let mut inst = small(9, 6, 2);
    inst.candidates = vec![bits(2, 8), bits(8, 2), bits(8, 8)];
    let inst = common::Instance {
        table: {
            let mut t = inst.table.clone();
            for points in t.sites.values_mut() {
                *points = inst
                    .candidates
                    .iter()
                    .map(|&b| mixq_core::SensitivityPoint {
                        bits: b,
                        damage: 0.1,
                    })
                    .collect();
            }
            t
        },
        ..inst
    };
    let p = problem(&inst)
        .with_budget(Budget::avg_w_bits(3.0))
        .with_budget(Budget::avg_a_bits(3.0));
    let err = allocate(&p).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("the other budgets"), "{text}");
    let v = reported_value(&err);
    let kind = if text.starts_with("invalid avg-w-bits") {
        BudgetKind::AvgWeightBits
    } else {
        BudgetKind::AvgActBits
    };
    let fixed = p.clone().with_budget(Budget::new(kind, v));
    let a = allocate(&fixed).unwrap_or_else(|e| panic!("{text} / {e}"));
    let plan = plan_vec(&inst, &a.plan);
    assert!(within(fixed.budgets(), &inst.sites, &plan));
    assert!(brute_force(&inst, Criterion::Mix, 1.0, p.budgets(), &|_, _| true).is_none());
}

#[test]
fn dp_and_milp_agree_on_deit_s_size() {
    for seed in 0..6u64 {
        let inst = deit_s(100 + seed);
        let mut rng = common::rng(seed);
        let criterion = CRITERIA[seed as usize % 3];
        let budget = if seed == 5 {
            let (lo, hi) = range(&inst, BudgetKind::ModelBytes);
            Budget::model_bytes(lo + (hi - lo) * rng.random_range(0.1..0.9))
        } else {
            Budget::avg_w_bits(rng.random_range(2.2..7.5))
        };
        let p = problem(&inst)
            .with_criterion(criterion)
            .with_lambda(rng.random_range(0.0..4.0))
            .with_budget(budget);
        let m = allocate(&p).unwrap();
        let d = allocate_dp(&p).unwrap();
        assert_eq!(m.status, SolveStatus::Optimal);
        assert!(
            close(m.objective, d.objective),
            "seed {seed} {budget}: milp {} dp {}",
            m.objective,
            d.objective
        );
        assert!(m.budgets[0].used <= budget.value && d.budgets[0].used <= budget.value);
    }
}

#[test]
fn per_site_limits_are_respected() {
    let inst = deit_s(3);
    let eight = BitWidth::new(8).unwrap();
    let three = BitWidth::new(3).unwrap();
    let p = problem(&inst)
        .with_budget(Budget::avg_w_bits(3.0))
        .with_limit("head", BitLimits::at_least(eight))
        .unwrap()
        .with_limit("patch_embed.proj", BitLimits::at_least(eight))
        .unwrap()
        .with_limit("blocks.0.attn.matmul_qk", BitLimits::at_most(three))
        .unwrap();
    for a in [allocate(&p).unwrap(), allocate_dp(&p).unwrap()] {
        let at = |s: &str| a.plan.sites[&SiteId::new(s)];
        assert_eq!(at("head"), bits(8, 8));
        assert_eq!(at("patch_embed.proj"), bits(8, 8));
        assert!(at("blocks.0.attn.matmul_qk").w_bits <= three);
        assert!(a.budgets[0].used <= 3.0);
    }
    // Without the limits the head would not get 8 bits at this budget.
    let free = allocate(&problem(&inst).with_budget(Budget::avg_w_bits(3.0))).unwrap();
    assert_ne!(free.plan.sites[&SiteId::new("head")], bits(8, 8));

    // A limit no candidate meets, and a limit on an unknown site, are errors naming the site.
    let err = problem(&inst)
        .with_limit("head", BitLimits::at_least(eight))
        .unwrap()
        .with_limit("head", BitLimits::at_most(three))
        .unwrap()
        .with_budget(Budget::avg_w_bits(4.0));
    let err = allocate(&err).unwrap_err().to_string();
    assert!(
        err.contains("head") && err.contains("no candidate"),
        "{err}"
    );
    let err = problem(&inst)
        .with_limit("blocks.99.mlp.fc1", BitLimits::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("blocks.99.mlp.fc1"), "{err}");

    // Points for candidates a limit excludes need not be measured.
    let mut table = inst.table.clone();
    table
        .sites
        .get_mut(&SiteId::new("head"))
        .unwrap()
        .retain(|pt| pt.bits == bits(8, 8));
    let p = Problem::from_tables(
        &inst.sites,
        Some(&inst.scores),
        Some(&table),
        &inst.candidates,
    )
    .unwrap()
    .with_budget(Budget::avg_w_bits(4.0));
    let err = allocate(&p).unwrap_err().to_string();
    assert!(err.contains("head") && err.contains("W2A2"), "{err}");
    allocate(&p.with_limit("head", BitLimits::at_least(eight)).unwrap()).unwrap();
}

#[test]
fn same_input_gives_identical_plan_toml() {
    let inst = deit_s(11);
    let p = problem(&inst)
        .with_budget(Budget::avg_w_bits(4.5))
        .with_budget(Budget::avg_a_bits(6.0));
    let a = allocate(&p).unwrap().plan.to_toml().unwrap();
    let b = allocate(&p.clone()).unwrap().plan.to_toml().unwrap();
    assert_eq!(a, b);
    for key in [
        "preset",
        "lambda",
        "budget",
        "objective",
        "solver",
        "status",
    ] {
        assert!(a.contains(&format!("{key} = ")), "{key} missing from\n{a}");
    }
    assert!(a.contains("avg-w-bits <= 4.5, avg-a-bits <= 6"), "{a}");
    let d1 = allocate_dp(&problem(&inst).with_budget(Budget::avg_w_bits(4.5))).unwrap();
    let d2 = allocate_dp(&problem(&inst).with_budget(Budget::avg_w_bits(4.5))).unwrap();
    assert_eq!(d1.plan.to_toml().unwrap(), d2.plan.to_toml().unwrap());
}

#[test]
fn mismatched_inputs_are_errors_naming_the_site() {
    let inst = small(4, 5, 3);
    let cands = &inst.candidates;

    let mut scores = inst.scores.clone();
    scores.scores.insert(SiteId::new("blocks.77.extra"), 0.1);
    let err = Problem::from_tables(&inst.sites, Some(&scores), None, cands).unwrap_err();
    assert!(
        matches!(err, Error::UnknownSite { .. }) && err.to_string().contains("blocks.77.extra")
    );

    let mut scores = inst.scores.clone();
    scores.scores.remove(&inst.sites[2].id);
    let err = Problem::from_tables(&inst.sites, Some(&scores), None, cands)
        .unwrap_err()
        .to_string();
    assert!(err.contains(inst.sites[2].id.as_str()), "{err}");

    let mut table = inst.table.clone();
    table.sites.remove(&inst.sites[1].id);
    let err = Problem::from_tables(&inst.sites, None, Some(&table), cands)
        .unwrap_err()
        .to_string();
    assert!(err.contains(inst.sites[1].id.as_str()), "{err}");

    let mut table = inst.table.clone();
    table.sites.insert(SiteId::new("blocks.9.nowhere"), vec![]);
    let err = Problem::from_tables(&inst.sites, None, Some(&table), cands).unwrap_err();
    assert!(err.to_string().contains("blocks.9.nowhere"));

    // A missing point names the site and the bits.
    let mut table = inst.table.clone();
    let missing = cands[1];
    table
        .sites
        .get_mut(&inst.sites[3].id)
        .unwrap()
        .retain(|pt| pt.bits != missing);
    let p = Problem::from_tables(&inst.sites, Some(&inst.scores), Some(&table), cands).unwrap();
    let err = allocate(&p.with_criterion(Criterion::Sensitivity))
        .unwrap_err()
        .to_string();
    let label = format!("W{}A{}", missing.w_bits, missing.a_bits);
    assert!(
        err.contains(inst.sites[3].id.as_str()) && err.contains(&label),
        "{err}"
    );

    // Presets need their inputs; values are range-checked.
    let only_scores = Problem::from_tables(&inst.sites, Some(&inst.scores), None, cands).unwrap();
    assert!(allocate(&only_scores.clone().with_criterion(Criterion::Lrp)).is_ok());
    let err = allocate(&only_scores.clone().with_criterion(Criterion::Mix)).unwrap_err();
    assert!(err.to_string().contains("sensitivity table"), "{err}");
    let err = allocate(&problem(&inst).with_lambda(-1.0)).unwrap_err();
    assert!(err.to_string().contains("lambda"), "{err}");
    let err = allocate(&problem(&inst).with_budget(Budget::avg_w_bits(f64::NAN))).unwrap_err();
    assert!(err.to_string().contains("avg-w-bits"), "{err}");
    let err = allocate(&problem(&inst).with_budget(Budget::bit_ops(0.0))).unwrap_err();
    assert!(err.to_string().contains("bit-ops"), "{err}");
    let mut no_weights = inst.sites.clone();
    no_weights.iter_mut().for_each(|s| s.params = 0);
    let p = Problem::from_tables(&no_weights, Some(&inst.scores), Some(&inst.table), cands)
        .unwrap()
        .with_budget(Budget::avg_w_bits(4.0));
    assert!(
        allocate(&p)
            .unwrap_err()
            .to_string()
            .contains("no site has weights")
    );
    let err = allocate_dp(
        &problem(&inst)
            .with_budget(Budget::avg_w_bits(4.0))
            .with_budget(Budget::bit_ops(1e12)),
    )
    .unwrap_err();
    assert!(err.to_string().contains("one budget"), "{err}");
}

#[test]
fn candidates_parse_plain_and_pairs() {
    let c = parse_candidates("2,3,4,6,8").unwrap();
    assert_eq!(c, mixq_allocator::default_candidates());
    let c = parse_candidates(" w4a8, 8/8 ,4/8, 2").unwrap();
    assert_eq!(c, vec![bits(2, 2), bits(4, 8), bits(8, 8)]);
    for bad in ["", "1", "9", "4/9", "x", "w4"] {
        assert!(parse_candidates(bad).is_err(), "{bad}");
    }
    assert_eq!("mix".parse::<Criterion>().unwrap(), Criterion::Mix);
    assert!("lrp-qvit".parse::<Criterion>().is_err());
    assert_eq!(
        "avg_w_bits".parse::<BudgetKind>().unwrap(),
        BudgetKind::AvgWeightBits
    );
}

#[test]
fn time_limit_still_returns_a_plan_within_budget() {
    let inst = deit_s(21);
    let p = problem(&inst)
        .with_budget(Budget::avg_w_bits(4.0))
        .with_budget(Budget::bit_ops(2.0e11))
        .with_time_limit(Some(Duration::from_nanos(1)));
    let a = allocate(&p).unwrap();
    let plan = plan_vec(&inst, &a.plan);
    assert!(within(p.budgets(), &inst.sites, &plan), "{:?}", a.status);
    let exact = allocate(&p.with_time_limit(None)).unwrap();
    assert_eq!(exact.status, SolveStatus::Optimal);
    assert!(exact.objective <= a.objective + 1e-12);
}

#[test]
fn reads_score_files() {
    let inst = small(8, 4, 3);
    let dir = tempfile::tempdir().unwrap();
    let (s, t) = (dir.path().join("scores.toml"), dir.path().join("sens.json"));
    inst.scores.save(&s).unwrap();
    inst.table.save(&t).unwrap();
    let p = Problem::from_files(&inst.sites, Some(&s), Some(&t), &inst.candidates)
        .unwrap()
        .with_budget(Budget::avg_w_bits(5.0));
    let from_files = allocate(&p).unwrap();
    let in_memory = allocate(&problem(&inst).with_budget(Budget::avg_w_bits(5.0))).unwrap();
    assert_eq!(from_files.plan.sites, in_memory.plan.sites);
    assert!(close(from_files.objective, in_memory.objective));
}
