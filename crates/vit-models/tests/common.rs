//! Shared helpers of the vit-models integration tests: reading the committed timm fixtures.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use mixq_vit_models::{ArchConfig, SwinConfig, VitConfig};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// One f32 tensor of a fixture file as `(values, shape)`.
pub fn read_tensor(file: &str, key: &str) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(fixtures().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st
        .tensor(key)
        .unwrap_or_else(|e| panic!("{file}:{key}: {e}"));
    let values = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (values, view.shape().to_vec())
}

pub fn tensor<const D: usize>(file: &str, key: &str, device: &Device) -> Tensor<D> {
    let (values, shape) = read_tensor(file, key);
    Tensor::from_data(TensorData::new(values, shape), device)
}

pub fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar::<f32>()
}

/// The architectures the fixture script builds (tools/make_fixtures.py).
pub fn fixture_arch(name: &str) -> ArchConfig {
    let vit = |distilled| {
        ArchConfig::Vit(VitConfig {
            img_size: 32,
            patch_size: 8,
            in_chans: 3,
            num_classes: 10,
            embed_dim: 48,
            depth: 2,
            num_heads: 3,
            mlp_ratio: 4.0,
            distilled,
            norm_eps: 1e-6,
        })
    };
    match name {
        "vit_tiny" => vit(false),
        "deit_tiny_distilled" => vit(true),
        "swin_tiny" => ArchConfig::Swin(SwinConfig {
            img_size: 64,
            patch_size: 4,
            in_chans: 3,
            num_classes: 10,
            embed_dim: 24,
            depths: vec![2, 2],
            num_heads: vec![2, 4],
            window_size: 4,
            mlp_ratio: 4.0,
            norm_eps: 1e-5,
        }),
        other => panic!("no fixture {other}"),
    }
}

pub const FIXTURES: [&str; 3] = ["vit_tiny", "deit_tiny_distilled", "swin_tiny"];
