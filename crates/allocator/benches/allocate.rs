//! MILP and DP on a DeiT-S-size instance (74 sites, 5 candidates, avg-w-bits = 4).
//! Goal: well under a second each.

use criterion::{Criterion, criterion_group, criterion_main};
use mixq_allocator::{Budget, Problem, allocate, allocate_dp, default_candidates};
use mixq_core::{
    ContributionScores, SensitivityPoint, SensitivityTable, SiteId, SiteInfo, SiteKind,
};

fn deit_s() -> Problem {
    let lin = |id: String, kind, params: u64| SiteInfo {
        id: SiteId::new(id),
        kind,
        params,
        macs: params * 197,
    };
    let mm = |id: String, kind| SiteInfo {
        id: SiteId::new(id),
        kind,
        params: 0,
        macs: 6 * 197 * 197 * 64,
    };
    let mut sites = vec![lin("patch_embed.proj".into(), SiteKind::Conv, 768 * 384)];
    for b in 0..12 {
        sites.push(lin(
            format!("blocks.{b}.attn.qkv"),
            SiteKind::Linear,
            384 * 1152,
        ));
        sites.push(mm(format!("blocks.{b}.attn.matmul_qk"), SiteKind::MatMulQk));
        sites.push(mm(format!("blocks.{b}.attn.matmul_av"), SiteKind::MatMulAv));
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

    // Deterministic pseudo-random scores and damages (an LCG; no extra dependency).
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let candidates = default_candidates();
    let mut scores = ContributionScores::default();
    let mut table = SensitivityTable {
        metric: "kl".into(),
        ..Default::default()
    };
    for s in &sites {
        scores.scores.insert(s.id.clone(), next());
        let base = 0.01 + next();
        let points = candidates
            .iter()
            .map(|&bits| SensitivityPoint {
                bits,
                damage: base * 2f64.powi(1 - i32::from(bits.w_bits.get())) * (0.5 + next()),
            })
            .collect();
        table.sites.insert(s.id.clone(), points);
    }
    Problem::from_tables(&sites, Some(&scores), Some(&table), &candidates)
        .expect("consistent tables")
        .with_budget(Budget::avg_w_bits(4.0))
}

fn bench(c: &mut Criterion) {
    let p = deit_s();
    let m = allocate(&p).expect("feasible");
    let d = allocate_dp(&p).expect("feasible");
    assert!((m.objective - d.objective).abs() <= 1e-9 * d.objective.abs());
    let mut g = c.benchmark_group("deit_s_74_sites_5_candidates");
    g.sample_size(20);
    g.bench_function("milp_microlp", |b| b.iter(|| allocate(&p).unwrap()));
    g.bench_function("dp", |b| b.iter(|| allocate_dp(&p).unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
