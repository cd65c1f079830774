//! QAT: LSQ gradients, the straight-through estimator, the PTQ starting point, distillation,
//! resume equivalence and checkpoint validation; FP training's resume and checkpoints. One test binary (each costs a burn link).

use mixq_vit_models::Network;
use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use mixq_core::{BitPlan, BitWidth, Error};
use mixq_datasets::Digits;
use mixq_ptq::{PtqConfig, uniform_plan};
use mixq_qat_trainer::{
    CHECKPOINT_FILE, FpConfig, FpTrainer, ImageSet, QatConfig, QatTrainer, distillation_loss,
    grad_scale, log_fake_quant, lsq_fake_quant, lsq_grad_scale, round_ste,
};
use mixq_quant_kernels::{LogBase, LogQuantizer, host_values};
use mixq_vit_models::{Model, ModelCard};

fn ad() -> Device {
    Device::flex().autodiff()
}

fn leaf<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(values, shape), &ad()).require_grad()
}

fn host<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    host_values(&t.clone().inner()).unwrap()
}

/// A fixed pseudo-random sequence in [-1, 1).
fn pseudo(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f64 / u32::MAX as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

/// The LSQ surrogate whose derivatives LSQ uses: `s * (clamp(x/s + c + z, qmin, qmax) - z)` with
/// the rounding offset `c = round(v0) - v0` frozen at the evaluation point, in f64. LSQ's clip
/// range is inclusive (a value whose code is exactly `qmin` or `qmax` passes the gradient; burn's
/// clamp masks only values strictly outside): `u` within a tenth of a code outside the range
/// counts as inside (codes are integers, so only values exactly on a bound code are affected).
fn surrogate(x: f64, s: f64, c: f64, z: f64, qmin: f64, qmax: f64) -> f64 {
    let u = x / s + c + z;
    let q = if u < qmin - 0.1 {
        qmin
    } else if u > qmax + 0.1 {
        qmax
    } else {
        u
    };
    s * (q - z)
}

#[test]
fn lsq_gradients_match_finite_differences() {
    // 3-bit asymmetric grid (codes 0..7), per channel along axis 1 of a [3, 4] tensor, with
    // channel zero points 3, 0, 7, 2: inside and clipped values on both ends.
    let (rows, cols) = (3usize, 4usize);
    let (qmin, qmax) = (0.0f32, 7.0f32);
    let zs = [3.0f32, 0.0, 7.0, 2.0];
    let steps = [0.1f32, 0.05, 0.2, 0.15];
    let xs: Vec<f32> = pseudo(rows * cols, 7).iter().map(|v| v * 0.8).collect();
    let upstream = pseudo(rows * cols, 11);
    let g = lsq_grad_scale(rows, qmax - qmin);
    assert!((g - 1.0 / (3.0f32 * 7.0).sqrt()).abs() < 1e-7);

    let x = leaf(xs.clone(), [rows, cols]);
    let s = leaf(steps.to_vec(), [cols]);
    let w = Tensor::<2>::from_data(TensorData::new(upstream.clone(), [rows, cols]), &ad());
    let y = lsq_fake_quant(x.clone(), s.clone(), &zs, qmin, qmax, Some(1), g);
    let grads = y.clone().mul(w).sum().backward();
    let gx = host(&x.grad(&grads).expect("input gradient"));
    let gs = host(&s.grad(&grads).expect("step gradient"));

    // Forward: the PTQ grid.
    let yv = host(&y);
    for i in 0..rows * cols {
        let c = i % cols;
        let code = ((xs[i] / steps[c]).round_ties_even() + zs[c]).clamp(qmin, qmax);
        assert_eq!(yv[i], (code - zs[c]) * steps[c], "forward value {i}");
    }

    let h = 1e-5f64;
    let mut inside = 0;
    let mut clipped = 0;
    for i in 0..rows * cols {
        let c = i % cols;
        let (xi, sc, z) = (xs[i] as f64, steps[c] as f64, zs[c] as f64);
        let v0 = (xs[i] / steps[c]) as f64;
        let off = v0.round_ties_even() - v0;
        let f = |x: f64, s: f64| surrogate(x, s, off, z, qmin as f64, qmax as f64);
        let fd_x = (f(xi + h, sc) - f(xi - h, sc)) / (2.0 * h) * upstream[i] as f64;
        assert!(
            (gx[i] as f64 - fd_x).abs() < 1e-3,
            "d/dx[{i}]: autodiff {} vs finite difference {fd_x}",
            gx[i]
        );
        if (v0 + off + z) >= qmin as f64 && (v0 + off + z) <= qmax as f64 {
            inside += 1;
        } else {
            clipped += 1;
        }
    }
    assert!(
        inside > 2 && clipped > 2,
        "{inside} inside, {clipped} clipped"
    );
    for c in 0..cols {
        let sc = steps[c] as f64;
        let loss = |s: f64| -> f64 {
            (0..rows)
                .map(|r| {
                    let i = r * cols + c;
                    let v0 = (xs[i] / steps[c]) as f64;
                    let off = v0.round_ties_even() - v0;
                    surrogate(xs[i] as f64, s, off, zs[c] as f64, qmin as f64, qmax as f64)
                        * upstream[i] as f64
                })
                .sum()
        };
        let fd_s = (loss(sc + h) - loss(sc - h)) / (2.0 * h) * g as f64;
        assert!(
            (gs[c] as f64 - fd_s).abs() < 1e-3,
            "d/ds[{c}]: autodiff {} vs finite difference {fd_s}",
            gs[c]
        );
    }

    // Per tensor, symmetric 2-bit grid (codes -1..1), gradient scale from the element count.
    let xs: Vec<f32> = pseudo(8, 3).iter().map(|v| v * 0.5).collect();
    let up = pseudo(8, 5);
    let step = 0.2f32;
    let g = lsq_grad_scale(8, 2.0);
    let x = leaf(xs.clone(), [2, 4]);
    let s = leaf(vec![step], [1]);
    let w = Tensor::<2>::from_data(TensorData::new(up.clone(), [2, 4]), &ad());
    let grads = lsq_fake_quant(x.clone(), s.clone(), &[0.0], -1.0, 1.0, None, g)
        .mul(w)
        .sum()
        .backward();
    let gx = host(&x.grad(&grads).unwrap());
    let gs = host(&s.grad(&grads).unwrap())[0] as f64;
    let loss = |x: &[f64], s: f64| -> f64 {
        (0..8)
            .map(|i| {
                let v0 = (xs[i] / step) as f64;
                surrogate(x[i], s, v0.round_ties_even() - v0, 0.0, -1.0, 1.0) * up[i] as f64
            })
            .sum()
    };
    let x64: Vec<f64> = xs.iter().map(|&v| v as f64).collect();
    for i in 0..8 {
        let (mut a, mut b) = (x64.clone(), x64.clone());
        a[i] += h;
        b[i] -= h;
        let fd = (loss(&a, step as f64) - loss(&b, step as f64)) / (2.0 * h);
        assert!((gx[i] as f64 - fd).abs() < 1e-3, "per-tensor d/dx[{i}]");
    }
    let fd_s = (loss(&x64, step as f64 + h) - loss(&x64, step as f64 - h)) / (2.0 * h) * g as f64;
    assert!((gs - fd_s).abs() < 1e-3, "per-tensor d/ds: {gs} vs {fd_s}");
}

#[test]
fn ste_passes_gradients_inside_the_clip_range_and_zero_outside() {
    // burn's clamp itself: gradient 1 inside [lo, hi], 0 outside.
    let x = leaf(vec![-2.0, -0.5, 0.0, 0.7, 3.0], [5]);
    let grads = x.clone().clamp(-1.0, 1.0).sum().backward();
    assert_eq!(
        host(&x.grad(&grads).unwrap()),
        vec![0.0, 1.0, 1.0, 1.0, 0.0]
    );

    // round_ste: rounds forward, identity backward; grad_scale: same value, scaled gradient.
    let x = leaf(vec![0.4, 1.6, -2.5], [3]);
    let y = round_ste(x.clone());
    assert_eq!(host(&y), vec![0.0, 2.0, -2.0]);
    let grads = y.sum().backward();
    assert_eq!(host(&x.grad(&grads).unwrap()), vec![1.0, 1.0, 1.0]);
    let x = leaf(vec![0.3, -1.7], [2]);
    let y = grad_scale(x.clone(), 0.25);
    assert_eq!(host(&y), vec![0.3, -1.7]);
    let grads = y.sum().backward();
    assert_eq!(host(&x.grad(&grads).unwrap()), vec![0.25, 0.25]);

    // The whole uniform quantizer: 4-bit unsigned grid with step 0.1 covers [0, 1.5].
    let xs = vec![-0.3, 0.0, 0.04, 0.5, 1.44, 1.6, 5.0];
    let x = leaf(xs.clone(), [1, 7]);
    let s = leaf(vec![0.1], [1]);
    let y = lsq_fake_quant(x.clone(), s, &[0.0], 0.0, 15.0, None, 1.0);
    let grads = y.sum().backward();
    let gx = host(&x.grad(&grads).unwrap());
    assert_eq!(gx, vec![0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0], "inputs {xs:?}");

    // The log quantizer with a learned scale: straight through on the levels, zero above the
    // top level and in the zero bin; the scale's gradient is the chosen unit level times g.
    let bits = BitWidth::new(2).unwrap();
    let xs = vec![0.0005, 0.2, 0.3, 0.5, 0.9];
    let x = leaf(xs.clone(), [1, 5]);
    let scale = leaf(vec![0.5], [1]);
    let y = log_fake_quant(x.clone(), scale.clone(), bits, LogBase::LogSqrt2, 0.5);
    let ptq = LogQuantizer::new(bits, LogBase::LogSqrt2, 0.5)
        .unwrap()
        .fake_quant_host(&xs);
    assert_eq!(host(&y), ptq, "same levels as the PTQ log quantizer");
    let grads = y.sum().backward();
    assert_eq!(
        host(&x.grad(&grads).unwrap()),
        vec![0.0, 1.0, 1.0, 1.0, 0.0]
    );
    let unit_sum: f32 = ptq.iter().map(|v| v / 0.5).sum();
    let gs = host(&scale.grad(&grads).unwrap())[0];
    assert!(
        (gs - 0.5 * unit_sum).abs() < 1e-6,
        "{gs} vs {}",
        0.5 * unit_sum
    );
}

#[test]
fn distillation_loss_matches_hand_computation() {
    let s = [1.0f32, 2.0, 0.5, -1.0, 0.0, 3.0];
    let t = [2.0f32, 0.0, 1.0, 0.5, 0.5, 0.5];
    let labels = [1usize, 2];
    let (alpha, temp) = (0.6, 2.0);
    let student = Tensor::<2>::from_data(TensorData::new(s.to_vec(), [2, 3]), &ad());
    let teacher = Tensor::<2>::from_data(TensorData::new(t.to_vec(), [2, 3]), &Device::flex());
    let got = host(&distillation_loss(student, teacher, &labels, alpha, temp))[0] as f64;
    let log_softmax = |row: &[f32], t: f64| -> Vec<f64> {
        let z: Vec<f64> = row.iter().map(|&v| v as f64 / t).collect();
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let lse = z.iter().map(|v| (v - m).exp()).sum::<f64>().ln() + m;
        z.iter().map(|v| v - lse).collect()
    };
    let (mut kl, mut ce) = (0.0, 0.0);
    for b in 0..2 {
        let (sr, tr) = (&s[b * 3..b * 3 + 3], &t[b * 3..b * 3 + 3]);
        let (ls, lt) = (log_softmax(sr, temp), log_softmax(tr, temp));
        kl += (0..3).map(|k| lt[k].exp() * (lt[k] - ls[k])).sum::<f64>();
        ce -= log_softmax(sr, 1.0)[labels[b]];
    }
    let expected = alpha * temp * temp * kl / 2.0 + (1.0 - alpha) * ce / 2.0;
    assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
}

fn shipped(name: &str) -> (ModelCard, Model) {
    mixq_vit_models::testing::shipped(name, &Device::flex())
}

/// The first `n` training and `m` test digits, normalised as the model card says.
fn digits(card: &ModelCard, n: usize, m: usize) -> (ImageSet, ImageSet, Tensor<4>) {
    let (mean, std) = (card.preprocess.mean[0], card.preprocess.std[0]);
    let (train, test) = Digits::split(0);
    let set = |split: &mixq_datasets::LabelledImages, k: usize| {
        let b = split.batches(k, mean, std).unwrap().next().unwrap();
        ImageSet::new(b.images, [1, 8, 8], b.labels).unwrap()
    };
    let train_set = set(&train, n);
    let calib = Tensor::<4>::from_data(
        TensorData::new(train_set.images[..16 * 64].to_vec(), [16, 1, 8, 8]),
        &Device::flex(),
    );
    (train_set, set(&test, m), calib)
}

fn tiny_config(epochs: usize) -> QatConfig {
    QatConfig {
        epochs,
        batch: 16,
        seed: 5,
        shift_fill: -1.0,
        ..QatConfig::default()
    }
}

fn trainer(name: &str, plan: &BitPlan, config: QatConfig) -> (QatTrainer, ImageSet, ImageSet) {
    let (card, model) = shipped(name);
    let (train, test, calib) = digits(&card, 48, 32);
    let t = QatTrainer::new(
        &card.name,
        model,
        calib,
        plan,
        &PtqConfig::default(),
        config,
    )
    .unwrap();
    (t, train, test)
}

fn w3a3(name: &str) -> BitPlan {
    let card = ModelCard::find(name).unwrap();
    uniform_plan(&card.arch.sites(), 3, 3, 8).unwrap()
}

#[test]
fn fresh_student_computes_exactly_the_ptq_model() {
    for name in ["digits-deit", "digits-swin"] {
        let (t, _, test) = trainer(name, &w3a3(name), tiny_config(1));
        let x = Tensor::<4>::from_data(
            TensorData::new(test.images.clone(), [test.len(), 1, 8, 8]),
            &Device::flex(),
        );
        let qat = host(&t.module().valid().forward(x.clone()));
        let ptq = host(&t.ptq().forward(x));
        let worst = qat
            .iter()
            .zip(&ptq)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert_eq!(
            worst, 0.0,
            "{name}: QAT at step 0 differs from PTQ by {worst}"
        );
        assert_eq!(
            t.evaluate(&test, 16).unwrap().top1,
            t.evaluate_ptq(&test, 16).unwrap().top1
        );
    }
}

fn assert_same_params(a: &QatTrainer, b: &QatTrainer) {
    let (pa, pb) = (a.param_values(), b.param_values());
    assert_eq!(pa.len(), pb.len());
    for ((na, _, va), (nb, _, vb)) in pa.iter().zip(&pb) {
        assert_eq!(na, nb);
        let same = va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "parameter {na} differs after resume");
    }
    assert_eq!(a.params_fingerprint(), b.params_fingerprint());
}

#[test]
fn resumed_run_ends_with_bitwise_the_same_weights() {
    let name = "digits-deit";
    let plan = w3a3(name);
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join(CHECKPOINT_FILE);

    // Uninterrupted: two epochs.
    let (mut whole, train, _) = trainer(name, &plan, tiny_config(2));
    let start = whole.param_values();
    whole.train_epoch(&train, &mut |_| {}).unwrap();
    whole.train_epoch(&train, &mut |_| {}).unwrap();
    assert!(whole.finished());
    assert_eq!(whole.steps_done(), 6);

    // Interrupted after one epoch; a fresh process resumes from the checkpoint.
    let (mut first, train, _) = trainer(name, &plan, tiny_config(2));
    first.train_epoch(&train, &mut |_| {}).unwrap();
    first.save_checkpoint(&ckpt).unwrap();
    drop(first);
    let (mut resumed, train, _) = trainer(name, &plan, tiny_config(2));
    resumed.load_checkpoint(&ckpt).unwrap();
    assert_eq!((resumed.epochs_done(), resumed.steps_done()), (1, 3));
    resumed.train_epoch(&train, &mut |_| {}).unwrap();
    assert_same_params(&whole, &resumed);
    assert_eq!(whole.history().len(), resumed.history().len());

    // Training moved both the weights and the step sizes.
    let end = whole.param_values();
    let moved = |pred: &dyn Fn(&str) -> bool| {
        start
            .iter()
            .zip(&end)
            .filter(|((n, _, _), _)| pred(n))
            .any(|((_, _, a), (_, _, b))| a != b)
    };
    assert!(moved(&|n| n.starts_with("quant")), "steps never changed");
    assert!(moved(&|n| n.starts_with("model")), "weights never changed");

    // Another seed (data order and augmentation) ends elsewhere: equality above is not trivial.
    let (mut reseeded, train, _) = trainer(
        name,
        &plan,
        QatConfig {
            seed: 6,
            ..tiny_config(2)
        },
    );
    reseeded.train_epoch(&train, &mut |_| {}).unwrap();
    reseeded.train_epoch(&train, &mut |_| {}).unwrap();
    assert_ne!(reseeded.params_fingerprint(), whole.params_fingerprint());
}

fn error_of(r: Result<(), Error>) -> String {
    r.expect_err("should be an error").to_string()
}

#[test]
fn corrupt_or_mismatched_checkpoints_are_clear_errors() {
    let name = "digits-deit";
    let plan = w3a3(name);
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join(CHECKPOINT_FILE);
    let (mut t, train, _) = trainer(name, &plan, tiny_config(2));
    t.train_epoch(&train, &mut |_| {}).unwrap();
    t.save_checkpoint(&ckpt).unwrap();
    let good = std::fs::read(&ckpt).unwrap();
    let path = ckpt.display().to_string();

    // Missing file.
    let e = error_of(t.load_checkpoint(dir.path().join("nope.safetensors")));
    assert!(e.contains("nope.safetensors"), "{e}");

    // Truncated file.
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    let e = error_of(t.load_checkpoint(&cut));
    assert!(
        e.contains("cut.safetensors") && e.contains("not a readable"),
        "{e}"
    );

    // Garbage.
    std::fs::write(&cut, b"hello, not a checkpoint").unwrap();
    let e = error_of(t.load_checkpoint(&cut));
    assert!(e.contains("not a readable"), "{e}");

    // One flipped bit in the tensor data.
    let mut flipped = good.clone();
    let last = flipped.len() - 5;
    flipped[last] ^= 0x10;
    std::fs::write(&ckpt, &flipped).unwrap();
    let e = error_of(t.load_checkpoint(&ckpt));
    assert!(e.contains(&path) && e.contains("checksum"), "{e}");
    std::fs::write(&ckpt, &good).unwrap();

    // Another plan.
    let (mut other_plan, _, _) = trainer(
        name,
        &uniform_plan(&ModelCard::find(name).unwrap().arch.sites(), 4, 4, 8).unwrap(),
        tiny_config(2),
    );
    let e = error_of(other_plan.load_checkpoint(&ckpt));
    assert!(e.contains(&path) && e.contains("plan_fingerprint"), "{e}");

    // Other settings: the differing key is named.
    let (mut other_cfg, _, _) = trainer(name, &plan, tiny_config(3));
    let before = other_cfg.params_fingerprint();
    let e = error_of(other_cfg.load_checkpoint(&ckpt));
    assert!(
        e.contains("'config'") && e.contains("epochs: checkpoint 2, this run 3"),
        "{e}"
    );

    // Another model.
    let swin_plan = w3a3("digits-swin");
    let (mut swin, _, _) = trainer("digits-swin", &swin_plan, tiny_config(2));
    let e = error_of(swin.load_checkpoint(&ckpt));
    assert!(e.contains("'model'") && e.contains("digits-deit"), "{e}");

    // The good file still loads, and a failed load left the trainer untouched.
    assert_eq!(before, other_cfg.params_fingerprint());
    assert_eq!(other_cfg.epochs_done(), 0);
    t.load_checkpoint(&ckpt).unwrap();
    assert_eq!(t.epochs_done(), 1);
}

#[test]
fn bad_settings_and_empty_plans_are_errors() {
    let (card, model) = shipped("digits-deit");
    let (_, _, calib) = digits(&card, 16, 8);
    let plan = w3a3("digits-deit");
    let make = |plan: &BitPlan, config: QatConfig| {
        QatTrainer::new(
            &card.name,
            model.clone(),
            calib.clone(),
            plan,
            &PtqConfig::default(),
            config,
        )
        .err()
        .expect("should fail")
        .to_string()
    };
    let e = make(&BitPlan::default(), tiny_config(1));
    assert!(e.contains("plan") && e.contains("no site"), "{e}");
    let e = make(
        &plan,
        QatConfig {
            epochs: 0,
            ..tiny_config(1)
        },
    );
    assert!(e.contains("--epochs"), "{e}");
    let e = make(
        &plan,
        QatConfig {
            kd_alpha: 1.5,
            ..tiny_config(1)
        },
    );
    assert!(e.contains("--kd-alpha"), "{e}");
    let e = make(
        &plan,
        QatConfig {
            kd_temperature: 0.0,
            ..tiny_config(1)
        },
    );
    assert!(e.contains("--kd-temperature"), "{e}");
}

fn fp_config(epochs: usize) -> FpConfig {
    FpConfig {
        epochs,
        batch: 8,
        lr: 2e-3,
        weight_decay: 0.05,
        seed: 3,
        shift: 1,
        shift_fill: -1.0,
        hflip: true,
        label_smoothing: 0.1,
        workers: 1,
    }
}

/// `n` 8x8 images of two classes: ink (1.0) in the top half (class 0) or the bottom half.
fn halves(n: usize) -> ImageSet {
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for i in 0..n {
        let class = i % 2;
        images.extend((0..64).map(|p| if (p / 32) == class { 1.0 } else { -1.0 }));
        labels.push(class);
    }
    ImageSet::new(images, [1, 8, 8], labels).unwrap()
}

fn fp_trainer(name: &str, config: FpConfig) -> FpTrainer {
    let card = ModelCard::find(name).unwrap();
    FpTrainer::new(&card.name, &card.arch, &Device::flex(), config).unwrap()
}

fn same_values(a: &FpTrainer, b: &FpTrainer) -> bool {
    a.param_values()
        .iter()
        .zip(b.param_values())
        .all(|((na, _, va), (nb, _, vb))| {
            na == &nb && va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits())
        })
}

/// A ViT from scratch needs hundreds of steps on digits; on two classes that differ in which
/// half holds the ink, `config`'s 80 steps must reach near-perfect accuracy.
fn assert_learns_halves(config: FpConfig) {
    let halves = halves(64);
    let mut learner = fp_trainer("digits-deit", config);
    let before = learner.evaluate(&halves, 64).unwrap();
    while !learner.finished() {
        learner.train_epoch(&halves, &mut |_| {}).unwrap();
    }
    let after = learner.evaluate(&halves, 64).unwrap();
    assert!(
        after.loss() < 0.5 * before.loss() && after.top1_pct() > 95.0,
        "loss {} -> {}, top-1 {:.1} %: training did not learn",
        before.loss(),
        after.loss(),
        after.top1_pct()
    );
}

#[test]
fn fp_training_learns_and_resumes_bitwise() {
    let card = ModelCard::find("digits-deit").unwrap();
    let (train, _, _) = digits(&card, 160, 64);
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("train.safetensors");

    let mut whole = fp_trainer("digits-deit", fp_config(3));
    let fresh = whole.param_values();
    for _ in 0..3 {
        whole.train_epoch(&train, &mut |_| {}).unwrap();
    }
    assert!(whole.finished());

    assert_learns_halves(fp_config(10));

    // Interrupted after epoch 1, resumed in a fresh trainer: the data generator continues
    // where it stood, so the end is bitwise the same.
    let mut first = fp_trainer("digits-deit", fp_config(3));
    first.train_epoch(&train, &mut |_| {}).unwrap();
    first.save_checkpoint(&ckpt).unwrap();
    drop(first);
    let mut resumed = fp_trainer("digits-deit", fp_config(3));
    assert!(
        resumed.param_values() == fresh,
        "same seed, same initial weights"
    );
    resumed.load_checkpoint(&ckpt).unwrap();
    assert_eq!(resumed.epochs_done(), 1);
    while !resumed.finished() {
        resumed.train_epoch(&train, &mut |_| {}).unwrap();
    }
    assert!(same_values(&whole, &resumed), "resumed run differs");

    // Without the generator's position the last epochs see other batches: the check above
    // is not trivial.
    let mut reseeded = fp_trainer(
        "digits-deit",
        FpConfig {
            seed: 4,
            ..fp_config(3)
        },
    );
    reseeded.train_epoch(&train, &mut |_| {}).unwrap();
    assert!(!same_values(&whole, &reseeded));

    // Mismatches are named.
    let mut other = fp_trainer(
        "digits-deit",
        FpConfig {
            hflip: false,
            ..fp_config(3)
        },
    );
    let e = error_of(other.load_checkpoint(&ckpt));
    assert!(
        e.contains("'config'") && e.contains("hflip: checkpoint true, this run false"),
        "{e}"
    );
    let mut swin = fp_trainer("digits-swin", fp_config(3));
    let e = error_of(swin.load_checkpoint(&ckpt));
    assert!(e.contains("'model'"), "{e}");
    let (mut qat, _, _) = trainer("digits-deit", &w3a3("digits-deit"), tiny_config(2));
    let e = error_of(qat.load_checkpoint(&ckpt));
    assert!(
        e.contains("mixq-train-checkpoint/1") && e.contains("mixq-qat-checkpoint/1"),
        "{e}"
    );
}

#[test]
fn fp_config_errors_name_the_flag() {
    for (config, flag) in [
        (
            FpConfig {
                epochs: 0,
                ..fp_config(1)
            },
            "--epochs",
        ),
        (
            FpConfig {
                batch: 0,
                ..fp_config(1)
            },
            "--batch",
        ),
        (
            FpConfig {
                lr: -1.0,
                ..fp_config(1)
            },
            "--lr",
        ),
        (
            FpConfig {
                label_smoothing: 1.0,
                ..fp_config(1)
            },
            "--label-smoothing",
        ),
        (
            FpConfig {
                label_smoothing: -0.1,
                ..fp_config(1)
            },
            "--label-smoothing",
        ),
    ] {
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains(flag), "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Block reconstruction (AdaRound + LSQ activation steps, block by block).

/// A trained digits model at `bits`, reconstructed on 64 training digits (`iters` per block):
/// (the result, the FP reparameterized model PTQ quantized, test images, their labels).
fn reconstructed(
    name: &str,
    bits: u8,
    iters: usize,
    seed: u64,
) -> (
    mixq_qat_trainer::Reconstruction,
    Model,
    Tensor<4>,
    Vec<usize>,
) {
    reconstructed_with(
        name,
        bits,
        iters,
        seed,
        mixq_qat_trainer::ReconLoss::Mse,
        0.0,
    )
}

fn reconstructed_with(
    name: &str,
    bits: u8,
    iters: usize,
    seed: u64,
    loss: mixq_qat_trainer::ReconLoss,
    drop_prob: f64,
) -> (
    mixq_qat_trainer::Reconstruction,
    Model,
    Tensor<4>,
    Vec<usize>,
) {
    let (card, model) = shipped(name);
    let (train, test, calib) = digits(&card, 64, 360);
    let plan = uniform_plan(&model.sites(), bits, bits, 8).unwrap();
    let images = Tensor::<4>::from_data(
        TensorData::new(train.images.clone(), [64, 1, 8, 8]),
        &Device::flex(),
    );
    let config = mixq_qat_trainer::ReconConfig {
        iters,
        batch: 16,
        seed,
        loss,
        drop_prob,
        ..Default::default()
    };
    let ptq = PtqConfig::default();
    let student =
        mixq_ptq::reparameterize(model.clone(), calib.clone(), &plan, ptq.post_ln).unwrap();
    let r =
        mixq_qat_trainer::reconstruct(&model, calib, images, &plan, &ptq, &config, |_| {}).unwrap();
    let test_images = Tensor::<4>::from_data(
        TensorData::new(test.images.clone(), [test.len(), 1, 8, 8]),
        &Device::flex(),
    );
    (r, student, test_images, test.labels.clone())
}

#[test]
fn reconstruction_rounds_each_weight_down_or_up_and_lowers_every_block_loss() {
    let (mut r, mut student, test, labels) = reconstructed("digits-deit", 3, 200, 0);
    for b in &r.blocks {
        println!(
            "block {}: loss {:.5} -> {:.5}, {} of {} weights flipped, {:.1} s",
            b.block, b.loss_before, b.loss_after, b.flipped, b.weights, b.seconds
        );
        assert!(b.loss_after < b.loss_before, "{b:?}");
        assert!(b.flipped > 0 && b.flipped < b.weights, "{b:?}");
    }
    // Every reconstructed weight is s * (code - z) with code = floor(w / s) or floor(w / s) + 1
    // (clamped to the code range), w the FP weight PTQ's scales were computed from.
    let fp: BTreeMap<_, _> = student
        .linears_mut()
        .into_iter()
        .map(|l| (l.site.clone(), host(&l.weight.val())))
        .collect();
    let q = &mut r.quantized;
    let weights = q.weights.clone();
    for linear in q.model.linears_mut() {
        let Some(quant) = weights.get(&linear.site) else {
            continue;
        };
        if !r.blocks.iter().any(|b| b.sites.contains(&linear.site)) {
            continue;
        }
        let cols = linear.weight.val().dims()[1];
        let (w, wq) = (&fp[&linear.site], host(&linear.weight.val()));
        for (k, (&w, &wq)) in w.iter().zip(&wq).enumerate() {
            let (s, z) = (quant.scales()[k % cols], quant.zero_points()[k % cols]);
            let code = wq / s + z;
            assert!(
                (code - code.round()).abs() < 1e-3,
                "{}: off the grid",
                linear.site
            );
            let floor = ((w / s).floor() + z).clamp(quant.qmin() as f32, quant.qmax() as f32);
            let ceil = ((w / s).floor() + 1.0 + z).clamp(quant.qmin() as f32, quant.qmax() as f32);
            assert!(
                code.round() == floor || code.round() == ceil,
                "{} weight {k}: code {code} for w/s {}",
                linear.site,
                w / s
            );
        }
    }
    let top1 = |logits: Tensor<2>| {
        let v = host(&logits);
        let correct = labels
            .iter()
            .enumerate()
            .filter(|&(i, &l)| mixq_sensitivity::argmax(&v[i * 10..(i + 1) * 10]) == l)
            .count();
        100.0 * correct as f64 / labels.len() as f64
    };
    println!(
        "W3A3 test top-1 after reconstruction {:.2} %",
        top1(r.quantized.forward(test))
    );
}

/// The same seed gives bitwise the same reconstructed weights; the exported integer engine
/// computes what the reconstructed fake-quant model computes (the codes are on PTQ's grid).
#[test]
fn reconstruction_is_seeded_and_exports_to_the_integer_engine() {
    let weights = |r: &mut mixq_qat_trainer::Reconstruction| -> Vec<Vec<f32>> {
        r.quantized
            .model
            .linears_mut()
            .into_iter()
            .map(|l| host(&l.weight.val()))
            .collect()
    };
    // With QDrop on, the seed also draws the masks.
    let qdrop = |seed| {
        reconstructed_with(
            "digits-deit",
            4,
            40,
            seed,
            mixq_qat_trainer::ReconLoss::Mse,
            0.5,
        )
    };
    let (mut a, _, test, _) = qdrop(3);
    let (mut b, _, _, _) = qdrop(3);
    assert!(
        weights(&mut a) == weights(&mut b),
        "same seed, other weights"
    );
    assert_eq!(a.quantized.state, b.quantized.state);
    // QDrop acts: the default (off) ends elsewhere from the same seed.
    let (mut off, _, _, _) = reconstructed("digits-deit", 4, 40, 3);
    assert!(
        weights(&mut a) != weights(&mut off),
        "QDrop 0.5 and QDrop off gave the same weights"
    );

    let engine = mixq_deploy::IntModel::from_quantized(&a.quantized).unwrap();
    let n = test.dims()[0];
    let fq = host(&a.quantized.forward(test.clone()));
    let int = engine.forward(&host(&test), n).unwrap();
    let (mut agree, mut max_d, mut max_l) = (0, 0f32, 0f32);
    for (f, e) in fq.chunks(10).zip(int.chunks(10)) {
        agree += (mixq_sensitivity::argmax(f) == mixq_sensitivity::argmax(e)) as usize;
        for (x, y) in f.iter().zip(e) {
            max_d = max_d.max((x - y).abs());
            max_l = max_l.max(x.abs());
        }
    }
    println!(
        "engine vs fake-quant after reconstruction: top-1 agree {agree}/{n}, max |Δ| {max_d:.3e} of {max_l:.2}"
    );
    assert!(agree as f32 >= 0.99 * n as f32, "{agree}/{n}");
    assert!(max_d <= 0.05 * max_l, "{max_d} vs {max_l}");
}

/// `Reconstruct` runs its variants on rayon's threads: one thread and three give the same
/// models and the same reports, in the order of the jobs.
#[test]
fn reconstructing_variants_in_parallel_equals_one_after_another() {
    let (card, model) = shipped("digits-deit");
    let (train, _, calib) = digits(&card, 64, 8);
    let images = Tensor::<4>::from_data(
        TensorData::new(train.images.clone(), [64, 1, 8, 8]),
        &Device::flex(),
    );
    let variants: Vec<mixq_ptq::Variant> = [4, 3]
        .map(|b| mixq_ptq::Variant {
            label: format!("W{b}A{b}"),
            plan: uniform_plan(&model.sites(), b, b, 8).unwrap(),
            config: PtqConfig::default(),
        })
        .into();
    let jobs: Vec<mixq_ptq::QuantizeJob> = [0, 1]
        .iter()
        .flat_map(|&seed| variants.iter().map(move |variant| (seed, variant)))
        .map(|(seed, variant)| mixq_ptq::QuantizeJob {
            seed,
            calib: &calib,
            variant,
        })
        .collect();
    let on = |threads: usize| {
        let images = |_: u64| Ok(images.clone());
        let recon = mixq_qat_trainer::Reconstruct {
            config: mixq_qat_trainer::ReconConfig {
                iters: 20,
                batch: 16,
                ..Default::default()
            },
            images: Some(&images),
            progress: &|_| {},
            reports: Default::default(),
        };
        let models = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                use mixq_ptq::Quantizer;
                recon.quantize_all(&model, &jobs, &|_| {})
            })
            .unwrap();
        let mut weights = Vec::new();
        for mut q in models {
            weights.extend(
                q.model
                    .linears_mut()
                    .into_iter()
                    .map(|l| host(&l.weight.val())),
            );
        }
        let reports: Vec<(u64, String, Vec<f64>)> = recon
            .into_reports()
            .into_iter()
            .map(|r| {
                (
                    r.seed,
                    r.label,
                    r.blocks.iter().map(|b| b.loss_after).collect(),
                )
            })
            .collect();
        (weights, reports)
    };
    let (one_w, one_r) = on(1);
    let (three_w, three_r) = on(3);
    assert!(one_w == three_w, "other weights on three threads");
    assert_eq!(one_r, three_r);
    let order: Vec<(u64, &str)> = one_r.iter().map(|r| (r.0, r.1.as_str())).collect();
    assert_eq!(order, [(0, "W4A4"), (0, "W3A3"), (1, "W4A4"), (1, "W3A3")]);
}

/// At 8 bits the quantized blocks already follow the FP ones closely: reconstruction keeps
/// nearly every weight at its round-to-nearest code and does not raise any block's loss.
#[test]
fn reconstruction_at_eight_bits_keeps_the_nearest_rounding() {
    let (r, _, _, _) = reconstructed("digits-deit", 8, 100, 0);
    for b in &r.blocks {
        println!(
            "W8A8 block {}: loss {:.3e} -> {:.3e}, {} of {} flipped",
            b.block, b.loss_before, b.loss_after, b.flipped, b.weights
        );
        assert!(b.loss_after <= b.loss_before * 1.01, "{b:?}");
        assert!(b.flipped * 100 < b.weights, "{b:?}");
    }
}

/// The Fisher-weighted loss (each element of the block-output error weighted by the KL
/// gradient's square at it) still lowers every block's plain squared error, and a backbone,
/// which has no logits for the KL, is refused by name.
#[test]
fn fisher_reconstruction_lowers_each_block_loss_and_needs_logits() {
    let (r, _, _, _) = reconstructed_with(
        "digits-deit",
        3,
        100,
        0,
        mixq_qat_trainer::ReconLoss::Fisher,
        0.0,
    );
    for b in &r.blocks {
        println!(
            "fisher block {}: loss {:.4} -> {:.4}, {} flipped",
            b.block, b.loss_before, b.loss_after, b.flipped
        );
        assert!(b.loss_after < b.loss_before, "{b:?}");
    }
    let device = Device::flex();
    let (card, _) = shipped("digits-deit");
    let mut arch = card.arch.clone();
    if let mixq_vit_models::ArchConfig::Vit(c) = &mut arch {
        c.num_classes = 0;
    }
    let backbone = arch.init(&device).unwrap();
    let images = Tensor::<4>::random([4, 1, 8, 8], burn::tensor::Distribution::Default, &device);
    let plan = uniform_plan(&backbone.sites(), 4, 4, 8).unwrap();
    let config = mixq_qat_trainer::ReconConfig {
        loss: mixq_qat_trainer::ReconLoss::Fisher,
        ..Default::default()
    };
    let err = mixq_qat_trainer::reconstruct(
        &backbone,
        images.clone(),
        images,
        &plan,
        &PtqConfig::default(),
        &config,
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("--recon-loss") && err.contains("fisher"),
        "{err}"
    );
}

#[test]
fn training_splits_cut_train_and_test_and_monitor_val_or_test() {
    use mixq_qat_trainer::TrainingSplits;
    let card = ModelCard::find("digits-deit").unwrap();
    let data = mixq_datasets::classification_data(&card.data_spec(), None, "test").unwrap();
    let splits = TrainingSplits::new(&data, &card, Some(10), Some(5)).unwrap();
    assert_eq!((splits.train.len(), splits.test.len()), (10, 5));
    assert!(splits.val.is_none(), "digits has no validation split");
    let (monitor, name) = splits.monitor();
    assert_eq!((monitor.len(), name), (5, "test"));
    let all = TrainingSplits::new(&data, &card, None, None).unwrap();
    assert_eq!(all.train.len(), data.train.labels.len());
    let err = TrainingSplits::new(&data, &card, Some(0), None).unwrap_err();
    assert!(err.to_string().contains("--limit = 0"), "{err}");
}

#[test]
fn fp_training_in_two_parts_is_deterministic_resumes_bitwise_and_learns() {
    let card = ModelCard::find("digits-deit").unwrap();
    let (train, _, _) = digits(&card, 96, 16);
    let two = |epochs| FpConfig {
        workers: 2,
        ..fp_config(epochs)
    };
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("train.safetensors");
    let run = |epochs| {
        let mut t = fp_trainer("digits-deit", two(epochs));
        while !t.finished() {
            t.train_epoch(&train, &mut |_| {}).unwrap();
        }
        t
    };
    let (a, b) = (run(2), run(2));
    assert!(
        same_values(&a, &b),
        "two-part training is not deterministic"
    );
    // A different run from the one-part one (the parts' gradients are summed in float), but
    // the same start.
    let mut one = fp_trainer("digits-deit", fp_config(2));
    assert!(one.param_values() == fp_trainer("digits-deit", two(2)).param_values());
    while !one.finished() {
        one.train_epoch(&train, &mut |_| {}).unwrap();
    }
    assert!(!same_values(&a, &one));
    let mut first = fp_trainer("digits-deit", two(2));
    first.train_epoch(&train, &mut |_| {}).unwrap();
    first.save_checkpoint(&ckpt).unwrap();
    let mut resumed = fp_trainer("digits-deit", two(2));
    resumed.load_checkpoint(&ckpt).unwrap();
    resumed.train_epoch(&train, &mut |_| {}).unwrap();
    assert!(same_values(&a, &resumed), "resumed two-part run differs");
    // The worker count is part of the run's identity.
    let mut other = fp_trainer("digits-deit", fp_config(2));
    let e = error_of(other.load_checkpoint(&ckpt));
    assert!(e.contains("workers"), "{e}");
    assert_learns_halves(FpConfig {
        workers: 2,
        ..fp_config(10)
    });
}

/// Block reconstruction takes any `Network` with blocks: a model of one's own (`RowMlp`, a
/// residual MLP) gets every block's loss lowered with its weights on their grids.
#[test]
fn an_own_network_is_reconstructed() {
    let device = Device::flex();
    let mut model = mixq_vit_models::seeded(&device, 4, || {
        Ok(mixq_vit_models::testing::RowMlp::new(&device))
    })
    .unwrap();
    // Branches as strong as a trained model's (the init's are a few per cent of the stream).
    for linear in model.linears_mut() {
        let w = linear.weight.val().mul_scalar(4.0);
        linear.weight = burn::module::Param::initialized(linear.weight.id, w);
    }
    let images =
        Tensor::<4>::from_data(TensorData::new(pseudo(48 * 64, 7), [48, 1, 8, 8]), &device);
    let plan = uniform_plan(&model.sites(), 3, 3, 8).unwrap();
    let config = mixq_qat_trainer::ReconConfig {
        iters: 150,
        batch: 16,
        ..Default::default()
    };
    let ptq = PtqConfig::default();
    let r = mixq_qat_trainer::reconstruct(
        &model,
        images.clone().narrow(0, 0, 16),
        images.clone(),
        &plan,
        &ptq,
        &config,
        |_| {},
    )
    .unwrap();
    assert_eq!(r.blocks.len(), model.num_blocks());
    for b in &r.blocks {
        println!(
            "block {}: loss {:.6} -> {:.6}, {} of {} flipped",
            b.block, b.loss_before, b.loss_after, b.flipped, b.weights
        );
        assert!(b.loss_after < b.loss_before, "{b:?}");
        assert!(b.flipped > 0, "{b:?}");
    }
    // The reconstructed weights stay on their PTQ grids.
    let mut q = r.quantized;
    let weights = q.weights.clone();
    for linear in q.model.linears_mut() {
        let quant = &weights[&linear.site];
        let cols = linear.weight.val().dims()[1];
        for (k, w) in host(&linear.weight.val()).into_iter().enumerate() {
            let code = w / quant.scales()[k % cols] + quant.zero_points()[k % cols];
            assert!(
                (code - code.round()).abs() < 1e-3,
                "{}: off the grid",
                linear.site
            );
        }
    }
}

/// WTPose is reconstructed block by block (Swin blocks, then the waterfall's neighbourhood
/// attention, the fusion conv included), then its tail (the waterfall's last convs and the
/// heatmap head, against the full-precision heatmaps) on the shipped checkpoint: no unit's loss
/// rises, the Swin blocks' and the tail's fall (the waterfall's layers, scaled by a layer scale
/// of 0.1, inherit most of their error from their input), and every reconstructed weight,
/// linear or conv, stays on its grid.
#[test]
fn wtpose_is_reconstructed_block_by_block() {
    let device = Device::flex();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/wtpose-tiny.safetensors"
    );
    let model = mixq_vit_models::WtPoseConfig::tiny()
        .init(&device)
        .unwrap()
        .load_safetensors(path)
        .unwrap()
        .fold_batch_norm();
    let crops = Tensor::<4>::from_data(
        TensorData::new(pseudo(8 * 3 * 128 * 96, 3), [8, 3, 128, 96]),
        &device,
    );
    let plan = uniform_plan(&model.sites(), 4, 4, 8).unwrap();
    let config = mixq_qat_trainer::ReconConfig {
        iters: 60,
        batch: 4,
        tail: true,
        ..Default::default()
    };
    let ptq = PtqConfig {
        post_ln: mixq_ptq::PostLnMode::Uniform,
        ..PtqConfig::default()
    };
    let r =
        mixq_qat_trainer::reconstruct(&model, crops.clone(), crops, &plan, &ptq, &config, |_| {})
            .unwrap();
    assert_eq!(r.blocks.len(), model.num_blocks() + 1);
    for b in &r.blocks {
        println!(
            "unit {} ({} sites): loss {:.6} -> {:.6}, {} of {} flipped, {:.1} s",
            b.block,
            b.sites.len(),
            b.loss_before,
            b.loss_after,
            b.flipped,
            b.weights,
            b.seconds
        );
        assert!(b.loss_after <= b.loss_before, "{b:?}");
    }
    let swin = model.config.depths.iter().sum::<usize>();
    assert!(
        r.blocks[..swin]
            .iter()
            .all(|b| b.loss_after < 0.99 * b.loss_before)
    );
    let tail = r.blocks.last().unwrap();
    assert_eq!(tail.block, model.num_blocks());
    assert!(
        tail.sites
            .contains(&mixq_core::SiteId::new("head.final_layer")),
        "{tail:?}"
    );
    assert!(tail.loss_after < 0.99 * tail.loss_before, "{tail:?}");
    assert!(
        r.blocks
            .iter()
            .any(|b| b.sites.contains(&mixq_core::SiteId::new("wtm.conv1")))
    );
    let mut q = r.quantized;
    let weights = q.weights.clone();
    let on_grid = |site: &mixq_core::SiteId, w: Vec<f32>, cols: usize, axis1: bool| {
        let quant = &weights[site];
        for (k, w) in w.into_iter().enumerate() {
            let c = if axis1 { k % cols } else { k / cols };
            let code = w / quant.scales()[c] + quant.zero_points()[c];
            assert!((code - code.round()).abs() < 1e-3, "{site}: off the grid");
        }
    };
    for linear in q.model.linears_mut() {
        let cols = linear.weight.val().dims()[1];
        on_grid(&linear.site, host(&linear.weight.val()), cols, true);
    }
    for conv in q.model.convs_mut() {
        let [o, i, kh, kw] = conv.weight.val().dims();
        let _ = o;
        on_grid(&conv.site, host(&conv.weight.val()), i * kh * kw, false);
    }
}

/// QAT takes any `Network`: a model of one's own (`RowMlp` on digits) starts from exactly its
/// PTQ model, and training updates its weights and steps and lowers the loss (a small model on
/// 8 row tokens learns slowly: the point is that the whole loop runs on it).
#[test]
fn an_own_network_is_trained_with_qat() {
    let device = Device::flex();
    let model = mixq_vit_models::seeded(&device, 6, || {
        Ok(mixq_vit_models::testing::RowMlp::new(&device))
    })
    .unwrap();
    let card = ModelCard::find("digits-deit").unwrap();
    let (train, test, calib) = digits(&card, 96, 32);
    let plan = uniform_plan(&model.sites(), 4, 4, 8).unwrap();
    let mut t = QatTrainer::new(
        "row-mlp",
        model,
        calib,
        &plan,
        &PtqConfig::default(),
        QatConfig {
            lr: 1e-2,
            ..tiny_config(3)
        },
    )
    .unwrap();
    let x = Tensor::<4>::from_data(
        TensorData::new(test.images.clone(), [test.len(), 1, 8, 8]),
        &device,
    );
    let qat = host(&t.module().valid().forward(x.clone()));
    assert_eq!(qat, host(&t.ptq().forward(x)));
    let before = t.params_fingerprint();
    let mut losses = Vec::new();
    while !t.finished() {
        losses.push(t.train_epoch(&train, &mut |_| {}).unwrap().train_loss);
    }
    println!("training loss per epoch: {losses:?}");
    assert_ne!(t.params_fingerprint(), before);
    assert!(losses.last().unwrap() < &losses[0], "{losses:?}");
}

/// `tail: true` adds one unit after the blocks for a classifier too: its sites are the head's,
/// its loss (against the full-precision logits) falls with a 4-bit head, and the blocks before
/// it are exactly those of a run without it.
#[test]
fn a_classifier_head_is_reconstructed_as_the_tail() {
    let (card, model) = shipped("digits-deit");
    let (train, _, calib) = digits(&card, 64, 8);
    let images = Tensor::<4>::from_data(
        TensorData::new(train.images.clone(), [64, 1, 8, 8]),
        &Device::flex(),
    );
    let mut plan = uniform_plan(&model.sites(), 4, 4, 8).unwrap();
    // mixq's plans keep the head at 8 bits, where there is little to learn; at 4 there is.
    plan.sites.insert(
        mixq_core::SiteId::new("head"),
        mixq_core::SiteBits::new(4, 4).unwrap(),
    );
    let run = |tail: bool| {
        let config = mixq_qat_trainer::ReconConfig {
            iters: 200,
            batch: 16,
            tail,
            ..Default::default()
        };
        mixq_qat_trainer::reconstruct(
            &model,
            calib.clone(),
            images.clone(),
            &plan,
            &PtqConfig::default(),
            &config,
            |_| {},
        )
        .unwrap()
        .blocks
    };
    let (with, without) = (run(true), run(false));
    assert_eq!(with.len(), model.num_blocks() + 1);
    let tail = with.last().unwrap();
    assert_eq!(tail.sites, vec![mixq_core::SiteId::new("head")], "{tail:?}");
    println!("tail: {tail:?}");
    // At 40 steps this head ends slightly worse (4.578 -> 4.582): the head wants more steps.
    assert!(tail.loss_after < tail.loss_before, "{tail:?}");
    for (a, b) in with.iter().zip(&without) {
        assert_eq!(
            (a.loss_before, a.loss_after, a.flipped),
            (b.loss_before, b.loss_after, b.flipped)
        );
    }
}
