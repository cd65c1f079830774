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

/// `export --verify`: engine, fake-quant and FP32 over the test split; the fake-quant column is
/// the PTQ table's figure for the same plan and calibration, and the engine agrees image by
/// image.
#[test]
fn export_verify_matches_the_ptq_table_image_by_image() {
    let dir = tmpdir("export-verify");
    let file = dir.join("digits-w4a4.mixq.safetensors");
    let out = ok(&[
        "export",
        "--model",
        "digits-deit",
        "--bits",
        "4",
        "--out",
        file.to_str().unwrap(),
        "--verify",
        "--batch",
        "50",
    ]);
    let row = out
        .lines()
        .find(|l| l.starts_with("| digits test split"))
        .unwrap_or_else(|| panic!("no verify row in {out}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    let (images, fp, fake_quant, engine, disagree) =
        (cells[2], cells[3], cells[4], cells[5], cells[6]);
    assert_eq!(images, "360", "{row}");
    assert_eq!(fake_quant, engine, "{row}");
    assert_eq!(disagree, "0", "{row}");
    let runs = dir.join("runs");
    let ptq = ok(&[
        "ptq",
        "--model",
        "digits-deit",
        "--bits",
        "4",
        "--runs",
        runs.to_str().unwrap(),
    ]);
    let ptq_rows: Vec<&str> = ptq
        .lines()
        .filter(|l| l.starts_with("| digits-deit"))
        .collect();
    let ptq_top1 = |r: &str| r.split('|').map(str::trim).nth(4).unwrap().to_string();
    assert_eq!(ptq_top1(ptq_rows[0]), fp, "{ptq}");
    assert_eq!(ptq_top1(ptq_rows[1]), fake_quant, "{ptq}");
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
