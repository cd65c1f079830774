//! Helpers shared by the CLI integration tests: run the real binary, check the error contract.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("xtask runs")
}

/// Runs the CLI in `dir` with `$MIXQ_DATA` pointing at it (so only the data sets placed there
/// are found).
pub fn xtask_with_data_root(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("MIXQ_DATA", dir)
        .env("RUST_LOG", "error")
        .current_dir(dir)
        .output()
        .expect("xtask runs")
}

/// Runs a command expected to succeed and returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = xtask(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs a command expected to fail: exit code 2, no panic, exactly one `error:` line (returned).
pub fn fails(args: &[&str]) -> String {
    let out = xtask(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?} should exit 2; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors.len(),
        1,
        "{args:?} should print one error line: {stderr}"
    );
    errors[0].to_string()
}

/// A fresh temporary folder for one test.
pub fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mixq-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The one finished run folder in `runs` whose name ends with `suffix`.
pub fn only_run(runs: &Path, suffix: &str) -> PathBuf {
    std::fs::read_dir(runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().ends_with(suffix))
        .unwrap_or_else(|| panic!("no *{suffix} run in {}", runs.display()))
}
