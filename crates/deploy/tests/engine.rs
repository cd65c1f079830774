//! The integer engine against the fake-quant forward it replaces, on the shipped digits DeiT:
//! logits within a stated tolerance and identical top-1 on the whole digits test split; and
//! the file format's round trip and its errors.

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use mixq_core::{BitPlan, Error};
use mixq_datasets::Digits;
use mixq_deploy::{IntModel, IntSites};
use mixq_ptq::{PtqConfig, QuantizedModel, SoftmaxMode, quantize, uniform_plan};
use mixq_quant_kernels::host_values;
use mixq_sensitivity::argmax;
use mixq_vit_models::Network;
use mixq_vit_models::{ArchConfig, ModelCard, VitConfig, WeightsSource};

/// The engine and the fake-quant model differ only by float rounding (exact integer products
/// vs `f32` matmuls). On almost every image that stays at float-rounding level: at least
/// `MIN_CLOSE` of the images must have every logit within `CLOSE` of the fake-quant one. Now
/// and then a value lands on the other side of a rounding boundary of the next quantizer (one
/// code step of one activation) and that step propagates: the largest difference over the test
/// split must stay below `rel_tol(a_bits)` × the largest |logit| (a 4-bit activation step is 16× an
/// 8-bit one). Measured values: run with `--nocapture`.
const CLOSE: f32 = 1e-4;
const MIN_CLOSE: f32 = 0.90;
fn rel_tol(a_bits: u8) -> f32 {
    if a_bits >= 8 { 0.10 } else { 0.15 }
}

struct Digits8 {
    images: Vec<f32>,
    labels: Vec<usize>,
    calib: Tensor<4>,
}

fn digits(device: &Device) -> Digits8 {
    let card = ModelCard::find("digits-deit").unwrap();
    let (mean, std) = (card.preprocess.mean[0], card.preprocess.std[0]);
    let (mut train, test) = Digits::split(0);
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for b in test.batches(256, mean, std).unwrap() {
        images.extend_from_slice(&b.images);
        labels.extend_from_slice(&b.labels);
    }
    train.truncate(32);
    let b = train.batches(32, mean, std).unwrap().next().unwrap();
    let calib = Tensor::from_data(TensorData::new(b.images, b.shape), device);
    Digits8 {
        images,
        labels,
        calib,
    }
}

fn digits_model(device: &Device) -> mixq_vit_models::Model {
    let card = ModelCard::find("digits-deit").unwrap();
    let source = WeightsSource::resolve(&card.shipped_path().unwrap(), None).unwrap();
    card.arch
        .init(device)
        .unwrap()
        .load_weights(&source)
        .unwrap()
}

/// Runs both models on every digits test image; returns (max |Δ|, max |logit|, top-1 agreements,
/// correct fake-quant, correct engine, images).
fn compare(q: &QuantizedModel, engine: &IntModel, data: &Digits8, device: &Device) -> [f32; 6] {
    let per = 64;
    let classes = engine.num_classes();
    let (mut max_d, mut max_l, mut agree, mut ok_fq, mut ok_int) = (0f32, 0f32, 0, 0, 0);
    let mut per_image = Vec::new();
    let n = data.labels.len();
    for start in (0..n).step_by(per) {
        let b = per.min(n - start);
        let x = &data.images[start * 64..(start + b) * 64];
        let fq = host_values(&q.forward(Tensor::from_data(
            TensorData::new(x.to_vec(), [b, 1, 8, 8]),
            device,
        )))
        .unwrap();
        let int = engine.forward(x, b).unwrap();
        for i in 0..b {
            let (f, e) = (
                &fq[i * classes..(i + 1) * classes],
                &int[i * classes..(i + 1) * classes],
            );
            let mut img_d = 0f32;
            for (a, c) in f.iter().zip(e) {
                img_d = img_d.max((a - c).abs());
                max_l = max_l.max(a.abs());
            }
            max_d = max_d.max(img_d);
            per_image.push(img_d);
            let (tf, ti) = (argmax(f), argmax(e));
            agree += (tf == ti) as usize;
            ok_fq += (tf == data.labels[start + i]) as usize;
            ok_int += (ti == data.labels[start + i]) as usize;
        }
    }
    per_image.sort_by(f32::total_cmp);
    let close = per_image.iter().filter(|&&d| d <= CLOSE).count();
    println!(
        "per-image max |Δlogits|: median {:.2e}, 90th percentile {:.2e}; {close} of {n} images within {CLOSE:e}",
        per_image[n / 2],
        per_image[n * 9 / 10],
    );
    assert!(
        close as f32 >= MIN_CLOSE * n as f32,
        "only {close} of {n} images within {CLOSE}"
    );
    [
        max_d,
        max_l,
        agree as f32,
        ok_fq as f32,
        ok_int as f32,
        n as f32,
    ]
}

fn check_plan(w: u8, a: u8, softmax: SoftmaxMode) -> IntModel {
    let device = Device::flex();
    let data = digits(&device);
    let model = digits_model(&device);
    let plan = uniform_plan(&model.sites(), w, a, 8).unwrap();
    let config = PtqConfig {
        softmax,
        ..PtqConfig::default()
    };
    let q = quantize(model, data.calib.clone(), &plan, &config).unwrap();
    let engine = IntModel::from_quantized(&q).unwrap();
    let [max_d, max_l, agree, ok_fq, ok_int, n] = compare(&q, &engine, &data, &device);
    println!(
        "W{w}A{a} softmax {softmax}: max |Δlogits| {max_d:.3e} (max |logit| {max_l:.2}, relative {:.3e}); \
         top-1 agree {agree}/{n}; accuracy fake-quant {ok_fq}/{n}, engine {ok_int}/{n}",
        max_d / max_l
    );
    let tol = rel_tol(a);
    assert!(
        max_d <= tol * max_l,
        "max |Δlogits| {max_d} above {tol} x {max_l}"
    );
    assert_eq!(agree, n, "top-1 must be identical on every test image");
    assert_eq!(ok_fq, ok_int);
    engine
}

#[test]
fn export_builds_the_engine_of_the_fake_quant_model_and_measures_the_gap() {
    let device = Device::flex();
    let data = digits(&device);
    let model = digits_model(&device);
    let plan = uniform_plan(&model.sites(), 8, 8, 8).unwrap();
    let config = PtqConfig::default();
    let q = quantize(model.clone(), data.calib.clone(), &plan, &config).unwrap();
    let out = mixq_deploy::export(model, &plan, &config, data.calib.clone()).unwrap();
    // The same engine as built by hand from the same quantized model, byte for byte.
    let by_hand = IntModel::from_quantized(&q).unwrap();
    assert!(out.engine.to_bytes().unwrap() == by_hand.to_bytes().unwrap());
    // The gap it reports is the gap on the calibration images.
    let n = data.calib.dims()[0];
    let fq = q
        .forward(data.calib.clone())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let int = by_hand
        .forward(
            &data.calib.clone().into_data().try_to_vec::<f32>().unwrap(),
            n,
        )
        .unwrap();
    let gap = fq
        .iter()
        .zip(&int)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert_eq!(out.max_abs_diff, gap);
    assert!(gap > 0.0 && gap < 0.5, "{gap}");
}

#[test]
fn digits_w8a8_matches_fake_quant() {
    check_plan(8, 8, SoftmaxMode::LogSqrt2);
}

#[test]
fn digits_w4a4_matches_fake_quant() {
    check_plan(4, 4, SoftmaxMode::LogSqrt2);
}

#[test]
fn digits_integer_softmax_and_mixed_bits() {
    // Uniform probabilities: p·v on the integer kernel too.
    let engine = check_plan(6, 8, SoftmaxMode::Uniform);
    assert_eq!(engine.integer_matmuls(), 8);
    // 2- and 3-bit containers.
    check_plan(3, 8, SoftmaxMode::LogSqrt2);
    check_plan(2, 8, SoftmaxMode::LogSqrt2);
}

/// A small random distilled DeiT, quantized at W8A8 with the head and one attention matmul left
/// out of the plan.
fn small_distilled() -> (QuantizedModel, Tensor<4>) {
    let device = Device::flex();
    device.seed(3);
    let cfg = VitConfig {
        img_size: 16,
        patch_size: 4,
        in_chans: 3,
        num_classes: 7,
        embed_dim: 48,
        depth: 2,
        num_heads: 3,
        mlp_ratio: 2.0,
        distilled: true,
        norm_eps: 1e-6,
        layer_scale: None,
        saliency_decoder: None,
    };
    let model = ArchConfig::Vit(cfg).init(&device).unwrap();
    let mut plan = uniform_plan(&model.sites(), 8, 8, 8).unwrap();
    plan.sites.remove(&mixq_core::SiteId::new("head")).unwrap();
    plan.sites
        .remove(&mixq_core::SiteId::new("blocks.1.attn.matmul_qk"))
        .unwrap();
    let calib = Tensor::<4>::random([16, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    let q = quantize(model, calib.clone(), &plan, &PtqConfig::default()).unwrap();
    (q, calib)
}

/// A small random distilled DeiT, with the head left out of the plan (f32 site).
#[test]
fn distilled_and_float_sites() {
    let (q, calib) = small_distilled();
    let engine = IntModel::from_quantized(&q).unwrap();
    assert_eq!(engine.num_integer_sites(), 1 + 2 * 4 + 1);
    let fq = host_values(&q.forward(calib.clone())).unwrap();
    let int = engine.forward(&host_values(&calib).unwrap(), 16).unwrap();
    let max_l = fq.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_d = fq
        .iter()
        .zip(&int)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("distilled: max |Δlogits| {max_d:.3e}, max |logit| {max_l:.3}");
    assert!(max_d <= rel_tol(8) * max_l, "{max_d} vs {max_l}");
}

/// A model's layers on their own (the file of a model whose forward the engine does not know),
/// read from the model's declaration: every linear/conv site in order, each stored exactly as
/// the whole model's file stores it (that file's engine follows the fake-quant model, above).
#[test]
fn a_models_layers_are_exported_from_its_declaration() {
    let (q, _) = small_distilled();
    let layers = IntSites::from_quantized(&q).unwrap();
    let declared: Vec<String> = q
        .model
        .sites()
        .into_iter()
        .filter(|s| s.kind.has_weights())
        .map(|s| s.id.to_string())
        .collect();
    let names: Vec<String> = layers.iter().map(|l| l.site().to_string()).collect();
    assert_eq!(names, declared);
    assert_eq!(names[0], "patch_embed.proj");
    for l in layers.iter() {
        let planned = q.plan.sites.get(l.site()).map(|b| b.w_bits.get());
        assert_eq!(l.weight_bits(), planned, "{}", l.site());
    }
    assert_eq!(layers.get("head").unwrap().weight_bits(), None);
    assert!(layers.matmul_operands("blocks.0.attn.matmul_qk").is_some());
    assert!(layers.matmul_operands("blocks.1.attn.matmul_qk").is_none());
    let err = layers.get("blocks.9.mlp.fc1").unwrap_err().to_string();
    assert!(
        err.contains("blocks.9.mlp.fc1") && err.contains("head_dist"),
        "{err}"
    );

    // Every tensor and quantizer is the whole model's, bit for bit.
    let bytes = layers.to_bytes().unwrap();
    let whole = IntModel::from_quantized(&q).unwrap().to_bytes().unwrap();
    let (ours, theirs) = (
        safetensors::SafeTensors::deserialize(&bytes).unwrap(),
        safetensors::SafeTensors::deserialize(&whole).unwrap(),
    );
    assert_eq!(
        ours.len(),
        // A bias each; `qweight`, `scales`, `zero_points` per integer site, `weight` per other.
        2 * names.len() + 2 * layers.header().weights.len()
    );
    for (name, t) in ours.tensors() {
        let w = theirs.tensor(&name).unwrap();
        assert_eq!((t.shape(), t.data()), (w.shape(), w.data()), "{name}");
    }
    let engine = IntModel::from_quantized(&q).unwrap();
    assert_eq!(layers.header().activations, engine.header().activations);
    assert_eq!(layers.header().weights, engine.header().weights);

    // Save, load, run: the same layers; each file refuses the other reader by name.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layers.mixq.safetensors");
    layers.save(&path).unwrap();
    let loaded = IntSites::load(&path).unwrap();
    assert_eq!(loaded.to_bytes().unwrap(), bytes);
    let x: Vec<f32> = (0..5 * 48)
        .map(|i| ((i * 37) % 17) as f32 / 8.0 - 1.0)
        .collect();
    for name in ["blocks.0.attn.qkv", "head"] {
        assert_eq!(
            loaded.get(name).unwrap().forward(&x, 5).unwrap(),
            layers.get(name).unwrap().forward(&x, 5).unwrap()
        );
    }
    let err = IntModel::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("layers.mixq.safetensors") && err.contains("IntSites::load"),
        "{err}"
    );
    let model_path = dir.path().join("model.mixq.safetensors");
    std::fs::write(&model_path, &whole).unwrap();
    let err = IntSites::load(&model_path).unwrap_err().to_string();
    assert!(
        err.contains("model.mixq.safetensors") && err.contains("IntModel::load"),
        "{err}"
    );
    // A listed layer without its tensors names the tensor.
    let bad = edit_header(&bytes, |h| {
        h["layers"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!("ghost"));
    });
    let err = IntSites::from_bytes(&bad, "bad.mixq.safetensors")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.mixq.safetensors") && err.contains("tensor 'ghost.weight': missing"),
        "{err}"
    );
}

/// `export_model` records where the file comes from; `IntModel::card` reads it back (after a
/// save and load too), and a file without it says which header key is missing.
#[test]
fn an_export_knows_its_model_card() {
    let device = Device::flex();
    let card = ModelCard::find("digits-deit").unwrap();
    let config = mixq_deploy::ExportConfig {
        plan: mixq_deploy::ExportPlan::Uniform {
            w_bits: 4,
            a_bits: 8,
            image_bits: 8,
        },
        seed: 3,
        calib: 16,
        calib_data: None,
        ptq: PtqConfig::default(),
    };
    let export = mixq_deploy::export_model(&card, digits_model(&device), &config, &device).unwrap();
    let meta = &export.engine.plan().meta;
    assert_eq!(meta["model"], card.name);
    assert_eq!(meta["seed"], "3");
    assert_eq!(export.engine.card().unwrap(), card);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("digits.mixq.safetensors");
    export.engine.save(&path).unwrap();
    assert_eq!(IntModel::load(&path).unwrap().card().unwrap(), card);
    // A model built without a card's provenance cannot tell its data set.
    let (engine, bytes) = small_file();
    let err = engine.card().unwrap_err().to_string();
    assert!(err.contains("plan.meta.model"), "{err}");
    std::fs::write(&path, bytes).unwrap();
    let err = IntModel::load(&path)
        .unwrap()
        .card()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("digits.mixq.safetensors") && err.contains("plan.meta.model"),
        "{err}"
    );
}

#[test]
fn swin_is_a_clear_error() {
    let device = Device::flex();
    let card = ModelCard::find("digits-swin").unwrap();
    let model = card.arch.init(&device).unwrap();
    let plan = uniform_plan(&model.sites(), 8, 8, 8).unwrap();
    let calib = Tensor::<4>::random([4, 1, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let q = quantize(model, calib, &plan, &PtqConfig::default()).unwrap();
    let err = IntModel::from_quantized(&q).unwrap_err().to_string();
    assert!(err.contains("Swin is not supported yet"), "{err}");
}

/// A small W4A8 digits engine and its file bytes.
fn small_file() -> (IntModel, Vec<u8>) {
    let device = Device::flex();
    let data = digits(&device);
    let model = digits_model(&device);
    let plan = uniform_plan(&model.sites(), 4, 8, 8).unwrap();
    let q = quantize(model, data.calib, &plan, &PtqConfig::default()).unwrap();
    let engine = IntModel::from_quantized(&q).unwrap();
    let bytes = engine.to_bytes().unwrap();
    (engine, bytes)
}

#[test]
fn save_load_round_trip_is_exact() {
    let (engine, bytes) = small_file();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.mixq.safetensors");
    engine.save(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let loaded = IntModel::load(&path).unwrap();
    assert_eq!(loaded.plan(), engine.plan());
    let x: Vec<f32> = (0..4 * 64)
        .map(|i| ((i * 37) % 17) as f32 / 8.0 - 1.0)
        .collect();
    assert_eq!(
        loaded.forward(&x, 4).unwrap(),
        engine.forward(&x, 4).unwrap()
    );
    // The header is readable JSON with the format version.
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let json = &meta.metadata().as_ref().unwrap()["mixq"];
    assert!(json.contains("\"format_version\": 1"), "{json}");
    assert!(json.contains("blocks.0.attn.qkv"));
    // Re-saving a loaded model gives the same bytes.
    assert_eq!(loaded.to_bytes().unwrap(), bytes);
}

fn load_err(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.mixq.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let err = IntModel::load(&path).unwrap_err();
    assert!(matches!(err, Error::Parse { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("bad.mixq.safetensors"), "{msg}");
    msg
}

/// The JSON header's byte range in the file.
fn header_range(bytes: &[u8]) -> std::ops::Range<usize> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    8..8 + n
}

/// The format's checksum (FNV-1a 64, hex), so a test can forge a consistent header.
fn fnv(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{h:016x}")
}

/// Rewrites the file with `edit` applied to the `__metadata__` JSON.
fn edit_header(bytes: &[u8], edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let r = header_range(bytes);
    let mut outer: serde_json::Value = serde_json::from_slice(&bytes[r.clone()]).unwrap();
    let inner = outer["__metadata__"]["mixq"].as_str().unwrap().to_string();
    let mut header: serde_json::Value = serde_json::from_str(&inner).unwrap();
    edit(&mut header);
    let zeros = "\"0000000000000000\"";
    header["header_checksum"] = serde_json::json!("0000000000000000");
    let text = header.to_string();
    let text = text.replacen(zeros, &format!("\"{}\"", fnv(text.as_bytes())), 1);
    outer["__metadata__"]["mixq"] = serde_json::Value::String(text);
    let mut text = serde_json::to_vec(&outer).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend_from_slice(&bytes[r.end..]);
    out
}

#[test]
fn truncated_file_is_a_clear_error() {
    let (_, bytes) = small_file();
    for cut in [4, 100, bytes.len() / 2, bytes.len() - 1] {
        let msg = load_err(&bytes[..cut]);
        assert!(msg.contains("truncated or corrupt"), "{msg}");
    }
}

#[test]
fn corrupt_header_and_data_name_the_key() {
    let (_, bytes) = small_file();
    // One flipped byte anywhere in the safetensors header (tensor index or JSON header).
    let r = header_range(&bytes);
    for i in (r.start..r.end).step_by(r.len() / 9) {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        load_err(&b);
    }
    // A flipped byte in the packed weights of one site.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let qw = st.tensor("blocks.2.mlp.fc1.qweight").unwrap();
    let off = qw.data().as_ptr() as usize - bytes.as_ptr() as usize;
    let mut b = bytes.clone();
    b[off + 7] ^= 0x10;
    let msg = load_err(&b);
    assert!(
        msg.contains("blocks.2.mlp.fc1.qweight") && msg.contains("checksum"),
        "{msg}"
    );
    // A flipped bit in a header value (an activation scale).
    let b = edit_header(&bytes, |h| {
        h["activations"]["blocks.0.attn.qkv"]["input"]["scale"][0] = serde_json::json!(-1.0);
    });
    let msg = load_err(&b);
    assert!(msg.contains("blocks.0.attn.qkv"), "{msg}");
}

#[test]
fn version_mismatch_names_the_key() {
    let (_, bytes) = small_file();
    let b = edit_header(&bytes, |h| h["format_version"] = serde_json::json!(99));
    let msg = load_err(&b);
    assert!(
        msg.contains("format_version") && msg.contains("99"),
        "{msg}"
    );
    let b = edit_header(&bytes, |h| h["format"] = serde_json::json!("other"));
    let msg = load_err(&b);
    assert!(msg.contains("'format'"), "{msg}");
}

#[test]
fn dropped_tensor_names_the_key() {
    let (_, bytes) = small_file();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(k, _)| k != "blocks.1.norm2.bias")
        .collect();
    let b = safetensors::serialize(kept, meta.metadata().clone()).unwrap();
    let msg = load_err(&b);
    assert!(
        msg.contains("blocks.1.norm2.bias") && msg.contains("missing"),
        "{msg}"
    );
    // Dropped from the checksums too: the engine still finds it missing.
    let b = edit_header(&b, |h| {
        h["checksums"]
            .as_object_mut()
            .unwrap()
            .remove("blocks.1.norm2.bias");
    });
    let msg = load_err(&b);
    assert!(
        msg.contains("blocks.1.norm2.bias") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn not_a_mixq_file() {
    let device = Device::flex();
    let bytes = digits_model(&device).to_safetensors_bytes().unwrap();
    let msg = load_err(&bytes);
    assert!(msg.contains("mixq"), "{msg}");
    let dir = tempfile::tempdir().unwrap();
    let err = IntModel::load(dir.path().join("none.safetensors")).unwrap_err();
    assert!(err.to_string().contains("none.safetensors"));
    let _ = BitPlan::default();
}
