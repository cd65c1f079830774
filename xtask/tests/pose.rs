//! `cargo xtask pose` and `cargo xtask ptq --model wtpose-*` end to end on small synthetic
//! sets, with the shipped wtpose-tiny checkpoint where a trained model matters.

use crate::common::{fails, ok, only_run, tmpdir};

const CHECKPOINT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/wtpose-tiny.safetensors"
);

/// The numeric cells of the table row starting with `| {name} |`.
fn row(stdout: &str, name: &str) -> Vec<f64> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("| {name} |")))
        .unwrap_or_else(|| panic!("no row {name} in:\n{stdout}"));
    line.split('|')
        .skip(2)
        .filter_map(|c| c.trim().parse::<f64>().ok())
        .collect()
}

#[test]
fn train_then_eval_reproduces_the_same_table() {
    let dir = tmpdir("pose-train");
    let runs = dir.to_str().unwrap();
    let common = ["--synthetic", "6", "--val-images", "3", "--runs", runs];
    let trained = ok(&[
        &["pose", "train", "--epochs", "1", "--batch", "4"],
        &common[..],
    ]
    .concat());
    let run = only_run(&dir, "pose-wtpose-tiny-s0");
    for file in [
        "model.safetensors",
        "results.json",
        "results.md",
        "skeletons.png",
    ] {
        assert!(run.join(file).is_file(), "{file}");
    }
    let ckpt = run.join("model.safetensors");
    let evaluated = ok(&[
        &["pose", "eval", "--checkpoint", ckpt.to_str().unwrap()],
        &common[..],
    ]
    .concat());
    assert_eq!(row(&trained, "wtpose-tiny"), row(&evaluated, "wtpose-tiny"));
    // Folding BatchNorm changes the arithmetic, not the predictions' scores.
    let folded = ok(&[
        &[
            "pose",
            "eval",
            "--fold-bn",
            "--checkpoint",
            ckpt.to_str().unwrap(),
        ],
        &common[..],
    ]
    .concat());
    let (a, b) = (row(&evaluated, "wtpose-tiny"), row(&folded, "wtpose-tiny"));
    assert!(
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 0.002),
        "{a:?} vs {b:?}"
    );
}

#[test]
fn w8a8_pose_model_stays_within_one_ap_point() {
    let dir = tmpdir("pose-ptq");
    let stdout = ok(&[
        "ptq",
        "--model",
        "wtpose-tiny",
        "--weights",
        CHECKPOINT,
        "--bits",
        "8",
        "--calib",
        "16",
        "--synthetic",
        "20",
        "--val-images",
        "20",
        "--runs",
        dir.to_str().unwrap(),
    ]);
    let fp = row(&stdout, "wtpose-tiny FP32");
    let q = row(&stdout, "W8A8");
    // Columns: budget is "-", so [avg W, avg A, KB, AP, AP.5, AP.75, AR, dAP].
    assert_eq!((q[0], q[1]), (8.0, 8.0), "{stdout}");
    assert!(
        fp[3] > 0.4,
        "the shipped checkpoint should be trained: {stdout}"
    );
    assert!((fp[3] - q[3]).abs() <= 0.01, "{stdout}");
    assert!(
        (fp[2] / q[2] - 4.0).abs() < 1e-3,
        "weights 4x smaller: {stdout}"
    );
    let run = only_run(&dir, "ptq-pose");
    for file in [
        "plan-0-W8A8.toml",
        "results.json",
        "report.md",
        "skeletons-0.png",
        "skeletons-1.png",
    ] {
        assert!(run.join(file).is_file(), "{file} in {}", run.display());
    }
}

/// `--recon` reconstructs a pose model block by block on its calibration crops, and with
/// `--recon-tail` what follows the last block: the row is labelled as reconstructed, every
/// unit's loss is recorded in recon.json, and the same seed gives the same table.
#[test]
fn pose_model_is_reconstructed() {
    let dir = tmpdir("pose-recon");
    let args = [
        "ptq",
        "--model",
        "wtpose-tiny",
        "--weights",
        CHECKPOINT,
        "--bits",
        "4",
        "--recon",
        "--recon-iters",
        "4",
        "--recon-tail",
        "--calib",
        "4",
        "--synthetic",
        "8",
        "--val-images",
        "2",
        "--no-flip",
        "--runs",
        dir.to_str().unwrap(),
    ];
    let first = ok(&args);
    let recon = row(&first, "W4A4 recon");
    let run = only_run(&dir, "ptq-pose");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("recon.json")).unwrap()).unwrap();
    let blocks = json[0]["blocks"].as_array().unwrap();
    // WTPose-tiny: 5 Swin blocks, 4 neighbourhood-attention layers, then the tail.
    assert_eq!(blocks.len(), 10, "{json}");
    assert_eq!(blocks[9]["block"], 9);
    assert_eq!(json[0]["config"]["iters"], 4);
    std::fs::remove_dir_all(&run).unwrap();
    assert_eq!(row(&ok(&args), "W4A4 recon"), recon);
}

#[test]
fn mixed_pose_plan_meets_its_budget_and_is_reproducible() {
    let dir = tmpdir("pose-mixed");
    let args = [
        "ptq",
        "--model",
        "wtpose-tiny",
        "--weights",
        CHECKPOINT,
        "--mixed",
        "--candidates",
        "3,8",
        "--avg-bits",
        "5",
        "--calib",
        "8",
        "--probe",
        "4",
        "--synthetic",
        "12",
        "--val-images",
        "6",
        "--no-flip",
        "--runs",
        dir.to_str().unwrap(),
    ];
    let first = ok(&args);
    let mixed = row(&first, "mixed sensitivity");
    let uniform = row(&first, "uniform W3A3");
    // [budget, avg W, avg A, KB, AP, ...]
    assert!(mixed[1] <= 5.0 + 1e-9 && mixed[2] <= 5.0 + 1e-9, "{first}");
    assert!(
        mixed[1] > 3.0,
        "the budget leaves room for 8-bit sites: {first}"
    );
    // The image input stays at 8 bits: the MAC-weighted activation average is a bit above 3.
    assert_eq!(uniform[1], 3.0);
    assert!(uniform[2] > 3.0 && uniform[2] < 3.2, "{first}");
    // The LRP criterion's plan (contribution scores on the calibration crops) keeps the budget.
    let lrp = row(&first, "mixed lrp");
    // How LRP's ranking of the sites agrees with the measured damage, at each candidate.
    assert!(
        first.contains("| W3A3 |") && first.contains("Spearman ρ"),
        "{first}"
    );
    assert!(lrp[1] <= 5.0 + 1e-9 && lrp[2] <= 5.0 + 1e-9, "{first}");
    let run = only_run(&dir, "ptq-pose-mixed");
    let table = std::fs::read_to_string(run.join("sensitivity.toml")).unwrap();
    assert!(table.contains("metric = \"rel-mse\""), "{table}");
    assert!(run.join("sensitivity.png").is_file());
    let scores = std::fs::read_to_string(run.join("scores.toml")).unwrap();
    assert!(
        scores.contains("\"wtm.blocks.0.attn.qkv\"") && scores.contains("images = \"8\""),
        "{scores}"
    );
    // Same seed, same plan and numbers.
    std::fs::remove_dir_all(&run).unwrap();
    let again = ok(&args);
    assert_eq!(row(&again, "mixed sensitivity"), mixed);
    assert_eq!(row(&again, "mixed lrp"), lrp);
}

#[test]
fn pose_ptq_bad_input_gets_one_clear_error() {
    let dir = tmpdir("pose-bad");
    let runs = dir.to_str().unwrap();
    let base = [
        "ptq",
        "--model",
        "wtpose-tiny",
        "--synthetic",
        "4",
        "--runs",
        runs,
    ];
    // A variant without a shipped checkpoint needs one.
    let no_checkpoint = base.map(|a| if a == "wtpose-tiny" { "wtpose-t" } else { a });
    let err = fails(&no_checkpoint);
    assert!(err.contains("--weights"), "{err}");
    let err = fails(&[&base[..], &["--weights", "/nonexistent/wtpose.safetensors"]].concat());
    assert!(err.contains("/nonexistent/wtpose.safetensors"), "{err}");
    let with_ckpt = [&base[..], &["--weights", CHECKPOINT]].concat();
    let err = fails(&[&with_ckpt[..], &["--calib", "100000"]].concat());
    assert!(err.contains("--calib"), "{err}");
    let err = fails(&[&with_ckpt[..], &["--ablation"]].concat());
    assert!(err.contains("--ablation"), "{err}");
    let err = fails(&[&with_ckpt[..], &["--recon", "--recon-loss", "fisher"]].concat());
    assert!(err.contains("--recon-loss") && err.contains("mse"), "{err}");
    let err = fails(&[&with_ckpt[..], &["--mixed", "--baseline", "8"]].concat());
    assert!(err.contains("--baseline"), "{err}");
    let err = fails(&[
        "ptq",
        "--model",
        "wtpose-huge",
        "--weights",
        CHECKPOINT,
        "--runs",
        runs,
    ]);
    assert!(
        err.contains("wtpose-tiny"),
        "lists the known variants: {err}"
    );
    // A checkpoint of another variant names the mismatching tensor.
    let err = fails(&[
        "ptq",
        "--model",
        "wtpose-t",
        "--weights",
        CHECKPOINT,
        "--runs",
        runs,
    ]);
    assert!(err.contains("wtpose-tiny.safetensors"), "{err}");
    // Nothing half-written.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("ptq-pose"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `pose train|eval` with a bad input: one error naming it, and no run folder left behind (the
/// folder is made once every input has been read).
#[test]
fn pose_train_and_eval_bad_input_leave_no_run_folder() {
    let dir = tmpdir("pose-train-bad");
    let runs = dir.to_str().unwrap();
    let err = fails(&["pose", "train", "--data", "/nonexistent", "--runs", runs]);
    assert!(err.contains("/nonexistent"), "{err}");
    let err = fails(&[
        "pose",
        "train",
        "--init",
        "/nonexistent/model.safetensors",
        "--synthetic",
        "8",
        "--runs",
        runs,
    ]);
    assert!(err.contains("--init"), "{err}");
    let err = fails(&[
        "pose",
        "eval",
        "--checkpoint",
        "/nonexistent/model.safetensors",
        "--synthetic",
        "8",
        "--runs",
        runs,
    ]);
    assert!(err.contains("/nonexistent/model.safetensors"), "{err}");
    // Only the synthetic set's cache may be there.
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "pose-data")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
