//! `ptq --mixed`, `sensitivity` and `allocate` end to end on the shipped digits model.

mod common;

use common::{fails, only_run, tmpdir, xtask};

const SMALL: [&str; 12] = [
    "--calib",
    "16",
    "--probe",
    "16",
    "--eval",
    "90",
    "--candidates",
    "2,4,8",
    "--avg-bits",
    "4",
    "--preset",
    "mix",
];

#[test]
fn ptq_mixed_writes_plans_pictures_and_is_deterministic() {
    let mut plans = Vec::new();
    for attempt in 0..2 {
        let runs = tmpdir(&format!("ptq-{attempt}"));
        let mut args = vec![
            "ptq",
            "--model",
            "digits-deit",
            "--mixed",
            "--runs",
            runs.to_str().unwrap(),
        ];
        args.extend(SMALL);
        let out = xtask(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("uniform W4A4") && stdout.contains("mixed mix"),
            "{stdout}"
        );
        let run = only_run(&runs, "-ptq-mixed");
        for f in [
            "report.md",
            "results.json",
            "scores.toml",
            "sensitivity.toml",
            "relevance.png",
            "sensitivity.png",
            "bits-4.png",
        ] {
            assert!(run.join(f).is_file(), "{f}");
        }
        let plan = std::fs::read_to_string(run.join("plan-mixed-mix-4.toml")).unwrap();
        let parsed = mixq_core::BitPlan::from_toml(&plan, "plan").unwrap();
        assert_eq!(parsed.sites.len(), 26);
        assert!(
            parsed.sites.values().any(|b| b.w_bits.get() != 4),
            "a mixed plan mixes: {plan}"
        );
        plans.push(plan);
        // The second run resumes the whole sweep from the cache.
        assert!(runs.join(".sensitivity-cache").is_dir());
    }
    assert_eq!(plans[0], plans[1], "same seed, same plan");
}

#[test]
fn sensitivity_shards_merge_and_allocate_reads_the_files() {
    let runs = tmpdir("shards");
    let runs_s = runs.to_str().unwrap();
    let common = [
        "--model",
        "digits-deit",
        "--calib",
        "8",
        "--probe",
        "8",
        "--candidates",
        "2,8",
        "--runs",
        runs_s,
    ];
    let mut tables = Vec::new();
    for shard in ["1/2", "2/2"] {
        let sub = runs.join(shard.replace('/', "of"));
        let mut args = vec!["sensitivity", "--shard", shard];
        args.extend(common);
        let sub_s = sub.to_str().unwrap().to_string();
        let n = args.len();
        args[n - 1] = &sub_s;
        let out = xtask(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tables.push(only_run(&sub, "-sensitivity").join("sensitivity.json"));
    }
    let merged_runs = runs.join("merged");
    let out = xtask(&[
        "sensitivity",
        "--model",
        "digits-deit",
        "--merge",
        tables[0].to_str().unwrap(),
        tables[1].to_str().unwrap(),
        "--runs",
        merged_runs.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged = only_run(&merged_runs, "-sensitivity").join("sensitivity.toml");
    let table = mixq_core::SensitivityTable::load(&merged).unwrap();
    assert_eq!(table.sites.len(), 26);
    assert!(table.sites.values().all(|p| p.len() == 2));

    // Scores from `lrp`, then `allocate`; an infeasible budget names the smallest feasible one.
    let lrp_runs = runs.join("lrp");
    let out = xtask(&[
        "lrp",
        "--model",
        "digits-deit",
        "--images",
        "8",
        "--heatmaps",
        "0",
        "--runs",
        lrp_runs.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let scores = only_run(&lrp_runs, "-lrp").join("scores.toml");
    let alloc_runs = runs.join("alloc");
    let out = xtask(&[
        "allocate",
        "--model",
        "digits-deit",
        "--scores",
        scores.to_str().unwrap(),
        "--sensitivity",
        merged.to_str().unwrap(),
        "--candidates",
        "2,8",
        "--avg-bits",
        "5",
        "--runs",
        alloc_runs.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = only_run(&alloc_runs, "-allocate").join("plan-mix-5.toml");
    assert!(plan.is_file());
    let err = fails(&[
        "allocate",
        "--model",
        "digits-deit",
        "--scores",
        scores.to_str().unwrap(),
        "--sensitivity",
        merged.to_str().unwrap(),
        "--candidates",
        "2,8",
        "--avg-bits",
        "1.5",
        "--runs",
        alloc_runs.to_str().unwrap(),
    ]);
    assert!(
        err.contains("1.5") && err.contains("smallest feasible"),
        "{err}"
    );
    let out = xtask(&["sensitivity", "--model", "digits-deit", "--shard", "3/2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--shard = 3/2") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
