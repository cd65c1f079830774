//! Bad weight files get one error naming the file and every key at fault.

use std::path::{Path, PathBuf};

use crate::common::*;
use burn::tensor::Device;
use mixq_vit_models::weights::WeightsSource;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mixq-weights-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}.safetensors"))
}

fn load_err(path: &Path) -> String {
    let source = match WeightsSource::resolve(path, None) {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    match fixture_arch("vit_tiny")
        .init(&Device::flex())
        .unwrap()
        .load_weights(&source)
    {
        Ok(_) => panic!("{} loaded without error", path.display()),
        Err(e) => e.to_string(),
    }
}

/// The vit_tiny fixture rewritten through `edit` (which may drop or replace tensors).
fn edited(
    name: &str,
    edit: impl Fn(&str, Vec<usize>, Vec<u8>) -> Option<(Vec<usize>, Vec<u8>)>,
) -> PathBuf {
    let bytes = std::fs::read(fixtures().join("vit_tiny.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept = Vec::new();
    for (key, view) in st.tensors() {
        if let Some((shape, data)) = edit(&key, view.shape().to_vec(), view.data().to_vec()) {
            kept.push((key, shape, data));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = kept
        .iter()
        .map(|(k, s, d)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    let path = tmp(name);
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    path
}

#[test]
fn missing_file() {
    let err = load_err(Path::new("/nonexistent/deit.safetensors"));
    assert!(
        err.contains("/nonexistent/deit.safetensors") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn empty_file() {
    let path = tmp("empty");
    std::fs::write(&path, b"").unwrap();
    let err = load_err(&path);
    assert!(
        err.contains("empty.safetensors") && err.contains("empty"),
        "{err}"
    );
}

#[test]
fn truncated_file() {
    let bytes = std::fs::read(fixtures().join("vit_tiny.safetensors")).unwrap();
    let path = tmp("truncated");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(&path);
    assert!(
        err.contains("truncated.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
}

#[test]
fn not_safetensors() {
    let path = tmp("text");
    std::fs::write(&path, b"this is a text file, not tensors").unwrap();
    let err = load_err(&path);
    assert!(err.contains("not a valid safetensors"), "{err}");
}

#[test]
fn unknown_extension() {
    let path = tmp("weights").with_extension("h5");
    std::fs::write(&path, b"x").unwrap();
    let err = load_err(&path);
    assert!(
        err.contains("weights.h5") && err.contains("unknown format"),
        "{err}"
    );
}

#[test]
fn onnx_that_is_not_a_model_or_has_no_backbone_names_the_file() {
    let path = tmp("garbage").with_extension("onnx");
    std::fs::write(&path, [0xffu8; 16]).unwrap();
    let err = load_err(&path);
    assert!(
        err.contains("garbage.onnx") && err.contains("not an ONNX model"),
        "{err}"
    );
    // An empty file is a valid (empty) protobuf message: a model without a graph.
    let path = tmp("empty-model").with_extension("onnx");
    std::fs::write(&path, b"").unwrap();
    let err = load_err(&path);
    assert!(
        err.contains("empty-model.onnx") && err.contains("no graph"),
        "{err}"
    );
}

#[test]
fn wrong_shape_names_key_and_both_shapes() {
    let path = edited("shape", |key, shape, data| {
        if key == "blocks.1.mlp.fc1.weight" {
            Some((
                vec![shape[0] / 2, shape[1]],
                data[..data.len() / 2].to_vec(),
            ))
        } else {
            Some((shape, data))
        }
    });
    let err = load_err(&path);
    assert!(err.contains("blocks.1.mlp.fc1.weight"), "{err}");
    assert!(
        err.contains("[96, 48]") && err.contains("[192, 48]"),
        "timm-layout shapes in: {err}"
    );
}

#[test]
fn missing_and_extra_keys_are_all_listed() {
    let path = edited("keys", |key, shape, data| match key {
        "head.bias" | "norm.weight" => None,
        _ => Some((shape, data)),
    });
    let err = load_err(&path);
    assert!(
        err.contains("missing key 'head.bias'") && err.contains("missing key 'norm.weight'"),
        "{err}"
    );

    // Keys of another architecture are unexpected, and the ViT's own are missing.
    let err = load_err(&fixtures().join("swin_tiny.safetensors"));
    assert!(
        err.contains("unexpected key 'layers.0.blocks.0.attn.qkv.weight'"),
        "{err}"
    );
    assert!(
        err.contains("missing key 'blocks.0.attn.qkv.weight'"),
        "{err}"
    );
}

#[test]
fn weights_choice_resolves_shipped_random_and_missing() {
    use mixq_vit_models::{ModelCard, WeightsChoice};
    let digits = ModelCard::find("digits-deit").unwrap();
    match digits.weights_source(&WeightsChoice::default()).unwrap() {
        Some(WeightsSource::Safetensors(p)) => assert_eq!(Some(p), digits.shipped_path()),
        other => panic!("{other:?}"),
    }
    let random = WeightsChoice {
        random: true,
        ..WeightsChoice::default()
    };
    assert!(digits.weights_source(&random).unwrap().is_none());
    let err = ModelCard::find("deit-s")
        .unwrap()
        .weights_source(&WeightsChoice::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ships no checkpoint") && err.contains("--weights"),
        "{err}"
    );
    let hf = WeightsChoice {
        hf_cache: Some(tmp("no-hf-repo")),
        ..WeightsChoice::default()
    };
    let err = digits.weights_source(&hf).unwrap_err().to_string();
    assert!(err.contains("has no hf_repo"), "{err}");
}
