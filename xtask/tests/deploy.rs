//! `cargo xtask export` / `run-int` / `bench-int` end to end: a digits model exported and
//! evaluated on the integer engine, and bad input as one `error:` line with exit code 2.

use crate::common::{fails, ok, tmpdir};

/// The top-1 % column of a one-row Markdown table.
fn top1(stdout: &str, column: usize) -> f64 {
    let row = stdout
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .nth(1)
        .unwrap_or_else(|| panic!("no table row in {stdout}"));
    row.split('|')
        .map(str::trim)
        .nth(column)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn export_then_run_int_on_digits() {
    let dir = tmpdir("export");
    let file = dir.join("digits-w8a8.mixq.safetensors");
    let out = ok(&[
        "export",
        "--model",
        "digits-deit",
        "--bits",
        "8",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(out.contains("wrote"), "{out}");
    let out = ok(&[
        "run-int",
        "--model",
        file.to_str().unwrap(),
        "--batch",
        "50",
    ]);
    assert!(
        out.contains("digits test split") && out.contains("images/s"),
        "{out}"
    );
    let acc = top1(&out, 5);
    assert!(acc > 90.0, "W8A8 digits top-1 {acc}: {out}");
}

#[test]
fn export_from_a_ptq_run_folder() {
    let dir = tmpdir("run");
    let runs = dir.join("runs");
    ok(&[
        "ptq",
        "--model",
        "digits-deit",
        "--bits",
        "6",
        "--eval",
        "40",
        "--calib",
        "16",
        "--runs",
        runs.to_str().unwrap(),
    ]);
    let run = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("a run folder");
    let file = dir.join("from-run.mixq.safetensors");
    ok(&[
        "export",
        "--run",
        run.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
    ]);
    let out = ok(&[
        "run-int",
        "--model",
        file.to_str().unwrap(),
        "--limit",
        "40",
    ]);
    assert!(out.contains("| 40 |"), "{out}");
}

#[test]
fn bad_input_is_one_error_line() {
    let dir = tmpdir("bad");
    let err = fails(&["run-int", "--model", "/no/such/model.mixq.safetensors"]);
    assert!(err.contains("/no/such/model.mixq.safetensors"), "{err}");

    let corrupt = dir.join("corrupt.mixq.safetensors");
    std::fs::write(&corrupt, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    let err = fails(&["run-int", "--model", corrupt.to_str().unwrap()]);
    assert!(err.contains("corrupt.mixq.safetensors"), "{err}");

    let out = dir.join("x.safetensors");
    let err = fails(&["export", "--bits", "9", "--out", out.to_str().unwrap()]);
    assert!(err.contains("bits"), "{err}");
    let err = fails(&[
        "export",
        "--run",
        "/no/such/run",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("/no/such/run"), "{err}");
    let err = fails(&[
        "export",
        "--model",
        "digits-swin",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("Swin"), "{err}");
    assert!(!out.exists());

    let err = fails(&["bench-int", "--repeat", "0"]);
    assert!(err.contains("--repeat"), "{err}");
}
