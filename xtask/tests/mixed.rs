//! `ptq --mixed`, `sensitivity` and `allocate` end to end on the shipped digits model.

use crate::common::{fails, only_run, tmpdir, xtask};

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
    "--criterion",
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

/// `ptq --mixed --seeds 0,1`: each seed calibrates, scores, sweeps and allocates on its own
/// sample, and its figures are those of a run with that seed alone.
#[test]
fn ptq_mixed_over_seeds_summarises_each_seeds_own_plans() {
    let run_with = |name: &str, seeds: &[&str]| {
        let runs = tmpdir(name);
        let mut args = vec![
            "ptq",
            "--model",
            "digits-deit",
            "--mixed",
            "--runs",
            runs.to_str().unwrap(),
        ];
        args.extend(SMALL);
        args.extend(seeds);
        let out = xtask(&args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let run = only_run(&runs, "-ptq-mixed");
        let results: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap())
                .unwrap();
        (stdout, run, results)
    };
    let (stdout, both, results) = run_with("ptq-seeds", &["--seeds", "0,1"]);
    let (_, alone, alone_results) = run_with("ptq-seed1", &["--seed", "1"]);
    let mix_row = stdout
        .lines()
        .find(|l| l.starts_with("| mixed mix"))
        .unwrap();
    assert!(mix_row.contains('±'), "{stdout}");
    assert_eq!(results["seeds"], serde_json::json!([0, 1]));
    let plan = |path: std::path::PathBuf| mixq_core::BitPlan::load(path).unwrap().sites;
    assert_eq!(
        plan(both.join("plan-mixed-mix-4-seed1.toml")),
        plan(alone.join("plan-mixed-mix-4.toml")),
        "seed 1's plan is the plan of a run with seed 1 alone"
    );
    assert!(
        both.join("scores-seed0.toml").is_file() && both.join("sensitivity-seed1.toml").is_file()
    );
    let rows = results["rows"].as_array().unwrap();
    let mix = rows.iter().find(|r| r["name"] == "mixed mix").unwrap();
    let alone_mix = alone_results["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "mixed mix")
        .unwrap();
    assert_eq!(mix["seeds"][1]["seed"], 1);
    assert_eq!(mix["seeds"][1]["metrics"], alone_mix["seeds"][0]["metrics"]);
    let top1 = |i: usize| {
        let m = &mix["seeds"][i]["metrics"];
        100.0 * m["top1"].as_f64().unwrap() / m["images"].as_f64().unwrap()
    };
    let mean = (top1(0) + top1(1)) / 2.0;
    assert!((mix["top1"]["mean"].as_f64().unwrap() - mean).abs() < 1e-9);
    // Spearman's ρ of LRP and sensitivity, for every seed and candidate.
    let agreement = results["rank_agreement"].as_array().unwrap();
    assert_eq!(agreement.len(), 2 * 3, "{agreement:?}");
    for a in agreement {
        let rho = a["spearman"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&rho), "{a}");
    }
    assert!(
        stdout.contains("| W2A2 | ") && stdout.contains("Spearman"),
        "{stdout}"
    );
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

/// `qat --mixed`: a run stopped after one epoch and resumed from its unfinished folder ends with
/// the same weights as an uninterrupted run; bad inputs are one clear error each.
#[test]
fn qat_mixed_resume_matches_uninterrupted_run() {
    let cache = tmpdir("qat-cache");
    let common_args = |runs: &std::path::Path| -> Vec<String> {
        [
            "qat",
            "--model",
            "digits-deit",
            "--mixed",
            "--avg-bits",
            "3",
            "--candidates",
            "2,3,4",
            // The old spelling of --criterion, kept as a hidden alias.
            "--preset",
            "mix",
            "--calib",
            "16",
            "--probe",
            "16",
            "--epochs",
            "2",
            "--batch",
            "32",
            "--limit",
            "64",
            "--eval",
            "60",
            "--cache-dir",
            cache.to_str().unwrap(),
            "--runs",
            runs.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = xtask(&args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let fingerprint = |dir: &std::path::Path| -> String {
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap())
                .unwrap();
        json["params_fingerprint"].as_str().unwrap().to_string()
    };

    let whole = tmpdir("qat-whole");
    let stdout = run(&common_args(&whole));
    assert!(stdout.contains("QAT top-1"), "{stdout}");
    let done = only_run(&whole, "-qat");
    for f in [
        "plan.toml",
        "curves.png",
        "results.json",
        "report.md",
        "checkpoint.safetensors",
    ] {
        assert!(done.join(f).is_file(), "{f}");
    }

    let stopped = tmpdir("qat-stopped");
    let mut args = common_args(&stopped);
    args.extend(["--stop-after".to_string(), "1".to_string()]);
    let stdout = run(&args);
    assert!(stdout.contains("stopped after epoch 1 of 2"), "{stdout}");
    let partial = only_run(&stopped, "-qat.partial");
    let resumed = tmpdir("qat-resumed");
    let mut args = common_args(&resumed);
    args.extend(["--resume".to_string(), partial.display().to_string()]);
    run(&args);
    assert_eq!(
        fingerprint(&done),
        fingerprint(&only_run(&resumed, "-qat")),
        "resumed run ends with other weights"
    );

    let e = fails(&["qat", "--resume", cache.to_str().unwrap(), "--epochs", "1"]);
    assert!(
        e.contains("--resume") && e.contains("checkpoint.safetensors"),
        "{e}"
    );
    let e = fails(&["qat", "--plan", "/nonexistent/plan.toml"]);
    assert!(e.contains("/nonexistent/plan.toml"), "{e}");
    let e = fails(&["qat", "--w-bits", "1", "--epochs", "1"]);
    assert!(e.contains("bits") && e.contains("1"), "{e}");
    let e = fails(&["qat", "--model", "deit-s", "--random-weights"]);
    assert!(e.contains("digits"), "{e}");
}
