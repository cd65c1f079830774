//! The committed timm parity fixtures (tests/fixtures, made by tools/make_fixtures.py), for
//! the tests of this crate and of the crates built on it.

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};

use crate::swin::SwinConfig;
use crate::vit::VitConfig;
use crate::weights::WeightsSource;
use crate::{ArchConfig, Model};

/// The fixture names: a ViT, its distilled DeiT twin, and a Swin whose two stages both shift.
pub const FIXTURES: [&str; 4] = ["vit_tiny", "deit_tiny_distilled", "swin_tiny", "vit_ls_p14"];

/// `tests/fixtures` at the repository root.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// One f32 tensor of a fixture file as `(values, shape)`. Panics with the file and key when
/// missing: fixtures are part of the repository.
pub fn read_f32(file: &str, key: &str) -> (Vec<f32>, Vec<usize>) {
    let path = fixtures_dir().join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st =
        safetensors::SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
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

/// A fixture tensor on `device`.
pub fn tensor<const D: usize>(file: &str, key: &str, device: &Device) -> Tensor<D> {
    let (values, shape) = read_f32(file, key);
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Max absolute difference of two tensors of the same shape.
pub fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar::<f32>()
}

/// The architecture the fixture script builds under `name`.
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
            layer_scale: None,
            saliency_decoder: None,
        })
    };
    match name {
        "vit_tiny" => vit(false),
        "deit_tiny_distilled" => vit(true),
        "vit_ls_p14" => ArchConfig::Vit(VitConfig {
            img_size: 42,
            patch_size: 14,
            in_chans: 3,
            num_classes: 10,
            embed_dim: 48,
            depth: 2,
            num_heads: 3,
            mlp_ratio: 4.0,
            distilled: false,
            norm_eps: 1e-6,
            layer_scale: Some(1e-5),
            saliency_decoder: None,
        }),
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
        other => panic!("no fixture named {other}"),
    }
}

/// The fixture model with timm's weights, its input batch and timm's logits.
pub fn fixture(name: &str, device: &Device) -> (Model, Tensor<4>, Tensor<2>) {
    let source = WeightsSource::resolve(&fixtures_dir().join(format!("{name}.safetensors")), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let model = fixture_arch(name)
        .init(device)
        .and_then(|m| m.load_weights(&source))
        .unwrap_or_else(|e| panic!("{e}"));
    let io = format!("{name}_io.safetensors");
    (
        model,
        tensor(&io, "input", device),
        tensor(&io, "logits", device),
    )
}

/// A digits model card (`digits-deit`, `digits-swin`) with its shipped checkpoint (models/).
pub fn shipped(name: &str, device: &Device) -> (crate::ModelCard, Model) {
    let card = crate::ModelCard::find(name).unwrap_or_else(|e| panic!("{e}"));
    let path = card
        .shipped_path()
        .unwrap_or_else(|| panic!("model '{name}' ships no checkpoint"));
    let model = card
        .arch
        .init(device)
        .and_then(|m| m.load_weights(&WeightsSource::Safetensors(path)))
        .unwrap_or_else(|e| panic!("{e}"));
    (card, model)
}
