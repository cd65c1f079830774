//! The CLI end to end: bad input gets one `error:` line and exit code 2, never a panic; the
//! shipped digits checkpoints evaluate at their reported accuracy.

use std::path::PathBuf;
use std::process::{Command, Output};

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("xtask runs")
}

/// Runs a command expected to fail and returns its stderr after checking the contract.
fn fails(args: &[&str]) -> String {
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

fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mixq-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn unknown_model_lists_the_known_ones() {
    let err = fails(&["eval", "--model", "resnet-50"]);
    assert!(
        err.contains("resnet-50") && err.contains("deit-s") && err.contains("digits-deit"),
        "{err}"
    );
    fails(&["info", "--model", "resnet-50"]);
}

#[test]
fn missing_weights_name_the_file() {
    let err = fails(&[
        "eval",
        "--model",
        "digits-deit",
        "--weights",
        "/no/such/file.safetensors",
    ]);
    assert!(err.contains("/no/such/file.safetensors"), "{err}");
}

#[test]
fn corrupt_weights_name_the_file() {
    let dir = tmpdir("corrupt");
    let path = dir.join("w.safetensors");
    std::fs::write(&path, b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}").unwrap();
    let err = fails(&[
        "eval",
        "--model",
        "digits-deit",
        "--weights",
        path.to_str().unwrap(),
    ]);
    assert!(
        err.contains("w.safetensors") && err.contains("safetensors"),
        "{err}"
    );
}

#[test]
fn weights_of_another_model_list_the_mismatches() {
    let swin = mixq_vit_models::ModelCard::find("digits-swin")
        .unwrap()
        .shipped_path()
        .unwrap();
    let err = fails(&[
        "eval",
        "--model",
        "digits-deit",
        "--weights",
        swin.to_str().unwrap(),
    ]);
    assert!(
        err.contains("missing key 'blocks.0.attn.qkv.weight'"),
        "{err}"
    );
}

#[test]
fn limit_and_batch_zero_are_rejected() {
    let err = fails(&["eval", "--limit", "0"]);
    assert!(err.contains("--limit"), "{err}");
    let err = fails(&["eval", "--batch", "0"]);
    assert!(err.contains("--batch"), "{err}");
}

#[test]
fn data_folder_missing_or_empty() {
    let err = fails(&["eval", "--data", "/no/such/folder"]);
    assert!(err.contains("/no/such/folder"), "{err}");
    let empty = tmpdir("empty");
    let err = fails(&["eval", "--data", empty.to_str().unwrap()]);
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn imagenet_model_without_weights_or_data_says_what_to_pass() {
    let err = fails(&["eval", "--model", "deit-s", "--data", "/no/such/folder"]);
    assert!(
        err.contains("--weights") && err.contains("--hf-cache"),
        "{err}"
    );
}

#[test]
fn non_image_and_corrupt_files_are_skipped_not_fatal() {
    // A tiny image folder for the digits model: one good PNG, one corrupt PNG, one text file.
    let root = tmpdir("folder");
    let class = root.join("3");
    std::fs::create_dir_all(&class).unwrap();
    image::GrayImage::from_fn(8, 8, |x, y| image::Luma([((x + y) * 16) as u8]))
        .save(class.join("good.png"))
        .unwrap();
    std::fs::write(class.join("bad.png"), b"not a png").unwrap();
    std::fs::write(class.join("notes.txt"), b"hello").unwrap();
    let out = xtask(&[
        "eval",
        "--model",
        "digits-deit",
        "--data",
        root.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One image evaluated; the table's images column says 1.
    assert!(stdout.lines().any(|l| l.contains("| 1 |")), "{stdout}");
}

#[test]
fn shipped_digits_models_reach_96_percent() {
    for model in ["digits-deit", "digits-swin"] {
        let out = xtask(&["eval", "--model", model]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let row = stdout.lines().last().unwrap();
        let top1: f64 = row
            .split('|')
            .map(str::trim)
            .nth(6)
            .unwrap()
            .parse()
            .unwrap();
        assert!(top1 >= 96.0, "{model}: top-1 {top1} in {row}");
    }
}

#[test]
fn info_reports_deit_small_figures() {
    let out = xtask(&["info", "--model", "deit-s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("74 sites; 22.05 M parameters"), "{stdout}");
    assert!(stdout.contains("4.599 GMACs"), "{stdout}");
}
