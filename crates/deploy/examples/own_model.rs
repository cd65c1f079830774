//! A model that is not one of mixq's, taken through mixed-precision PTQ and onto the integer
//! kernels with the public API only: a three-layer MLP for the 8x8 digits, built from mixq's
//! `Linear` sites so that its forward passes every tensor through a `SiteHook`.
//!
//! 1. train it in full precision (burn autodiff, a few epochs);
//! 2. calibrate uniform W3A3 and W8A8 with `quantize_hooked`;
//! 3. measure every site alone at every candidate bit-width (`sensitivity_hooked`);
//! 4. let the allocator choose a plan at an average of 3 bits (`budget_plans`);
//! 5. calibrate that plan and compare all of them on the test split;
//! 6. export each quantized model's layers to a `.mixq.safetensors` file (`IntSites`: packed
//!    weights, quantizers, a readable JSON header), load it back and run it on the integer
//!    kernels (`u8` activations x packed 2-8-bit weights, exact `i32` sums), comparing it with
//!    its fake-quant forward.
//!
//! `cargo run -p mixq-deploy --example own_model`. CI runs it through its test.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData, activation::relu};
use mixq_allocator::{Criterion, parse_candidates};
use mixq_core::{Result, SiteId, SiteInfo, SiteKind};
use mixq_datasets::{KnownDataset, LabelledImages};
use mixq_deploy::IntSites;
use mixq_ptq::mixed::{BudgetConfig, budget_plans};
use mixq_ptq::{PtqConfig, host_logits, quantize_hooked, sensitivity_hooked, uniform_plan};
use mixq_quant_kernels::host_values;
use mixq_vit_models::layers::{Linear, LinearConfig};
use mixq_vit_models::{NoHook, SiteHook};

/// 64 → 64 → 64 → 10 with ReLU; each layer a mixq site.
#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    head: Linear,
}

const LAYERS: [(&str, usize, usize); 3] = [("fc1", 64, 64), ("fc2", 64, 64), ("head", 64, 10)];

impl Mlp {
    fn new(device: &Device) -> Self {
        let [fc1, fc2, head] =
            LAYERS.map(|(name, i, o)| LinearConfig::new(i, o).init(SiteId::new(name), device));
        Self { fc1, fc2, head }
    }

    /// What the allocator needs: each site's parameters and MACs per image.
    fn sites() -> Vec<SiteInfo> {
        LAYERS
            .iter()
            .map(|&(name, i, o)| SiteInfo {
                id: SiteId::new(name),
                kind: SiteKind::Linear,
                params: (i * o) as u64,
                macs: (i * o) as u64,
            })
            .collect()
    }

    fn forward(&self, x: Tensor<2>, hook: &dyn SiteHook) -> Tensor<2> {
        let x = relu(self.fc1.forward(x, hook));
        let x = relu(self.fc2.forward(x, hook));
        self.head.forward(x, hook)
    }
}

/// The MLP on the integer kernels: its layers as exported (each an `IntLinear` built from the
/// quantizers calibration found); the forward between them is ours, ReLU in `f32`.
struct IntMlp {
    layers: IntSites,
}

impl IntMlp {
    /// Checks that the file holds every layer this forward needs.
    fn new(layers: IntSites) -> Result<Self> {
        for (name, ..) in LAYERS {
            layers.get(name)?;
        }
        Ok(Self { layers })
    }

    /// Logits of `rows` images (`[rows, 64]`, row-major), as `[rows, 10]`.
    fn forward(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let layer = |name: &str, x: &[f32]| self.layers.get(name)?.forward(x, rows);
        let relu = |mut v: Vec<f32>| {
            v.iter_mut().for_each(|x| *x = x.max(0.0));
            v
        };
        let x = relu(layer("fc1", x)?);
        let x = relu(layer("fc2", &x)?);
        layer("head", &x)
    }
}

/// A split as one `[n, 64]` tensor of normalised pixels and its labels.
fn tensors(set: &LabelledImages, device: &Device) -> Result<(Tensor<2>, Vec<usize>)> {
    let x = set
        .normalised(0.5, 0.5)
        .map_err(|e| mixq_core::Error::invalid("data", "digits", e.to_string()))?;
    let x = Tensor::<2>::from_data(TensorData::new(x, [set.len(), set.per_image()]), device);
    Ok((x, set.labels.clone()))
}

/// Each image's predicted class (the first largest logit) from row-major logits.
fn predictions(logits: &[f32], images: usize) -> Vec<usize> {
    let k = logits.len() / images;
    logits
        .chunks_exact(k)
        .map(|row| (0..k).fold(0, |best, j| if row[j] > row[best] { j } else { best }))
        .collect()
}

fn top1(predicted: &[usize], labels: &[usize]) -> f64 {
    let correct = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    100.0 * correct as f64 / labels.len() as f64
}

/// One row of the comparison.
#[derive(Debug)]
struct Row {
    name: String,
    avg_w_bits: f64,
    /// Fake-quant (or FP32) test top-1 %.
    top1: f64,
    /// On the integer kernels, and how many test images change class there (quantized rows).
    engine: Option<(f64, usize)>,
}

/// Trains in full precision: AdamW, full-batch steps (the set is small).
fn train(train: &LabelledImages, epochs: usize) -> Result<Mlp> {
    let device = Device::flex().autodiff();
    device.seed(0);
    let mut model = Mlp::new(&device);
    let (x, labels) = tensors(train, &device)?;
    let targets: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [labels.len()]), &device);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optim = AdamWConfig::new().init();
    for _ in 0..epochs {
        let loss = loss_fn.forward(model.forward(x.clone(), &NoHook), targets.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    Ok(model.valid())
}

/// Every row of the comparison.
fn run() -> Result<Vec<Row>> {
    let data = KnownDataset::Digits
        .open()
        .map_err(|e| mixq_core::Error::invalid("data", "digits", e.to_string()))?;
    let model = train(&data.train, 150)?;
    let device = Device::flex();
    let sites = Mlp::sites();
    let (calib, _) = tensors(&data.train.sample(64, 0, 1), &device)?;
    let (probe, _) = tensors(&data.train.sample(128, 1, 2), &device)?;
    let (test, labels) = tensors(&data.test, &device)?;
    let calibrate = |h: &dyn SiteHook| {
        let _ = model.forward(calib.clone(), h);
    };

    // Sensitivity of every site alone, then the allocator's plan at 3 bits on average.
    let candidates = parse_candidates("2,3,4,6,8")?;
    let table = sensitivity_hooked(
        &sites,
        &candidates,
        8,
        "logits-rel-mse",
        calibrate,
        |h| host_logits(model.forward(probe.clone(), h)),
        |_, _| {},
    )?;
    let budget = BudgetConfig {
        avg_bits: vec![3.0],
        avg_a_bits: None,
        model_bytes: None,
        bit_ops: None,
        criteria: vec![Criterion::Sensitivity],
        lambda: 1.0,
    };
    let mut plans = budget_plans(&sites, None, &table, &candidates, &budget, 8, None, true)?;
    plans.push(mixq_ptq::mixed::BudgetPlan {
        name: "uniform W8A8".into(),
        avg_bits: 8.0,
        plan: uniform_plan(&sites, 8, 8, 8)?,
        allocation: None,
    });

    let n = labels.len();
    let fp = host_logits(model.forward(test.clone(), &NoHook));
    let mut rows = vec![Row {
        name: "FP32".into(),
        avg_w_bits: 32.0,
        top1: top1(&predictions(&fp, n), &labels),
        engine: None,
    }];
    let test_host = host_values(&test)?;
    let dir = tempfile::tempdir().map_err(|e| mixq_core::Error::io("<temporary folder>", e))?;
    for p in &plans {
        let quantized = quantize_hooked(&sites, &p.plan, &PtqConfig::default(), false, calibrate)?;
        let (avg_w_bits, _) = mixq_ptq::mixed::plan_averages(&p.plan, &sites);
        let fake = predictions(&host_logits(model.forward(test.clone(), &quantized)), n);
        // Export the layers, then run what a deployment would load.
        let file = dir
            .path()
            .join(format!("{}.mixq.safetensors", p.name.replace(' ', "-")));
        IntSites::from_layers([&model.fc1, &model.fc2, &model.head], &quantized)?.save(&file)?;
        let engine = IntMlp::new(IntSites::load(&file)?)?;
        let int = predictions(&engine.forward(&test_host, n)?, n);
        let differ = fake.iter().zip(&int).filter(|(a, b)| a != b).count();
        rows.push(Row {
            name: p.name.clone(),
            avg_w_bits,
            top1: top1(&fake, &labels),
            engine: Some((top1(&int, &labels), differ)),
        });
    }
    Ok(rows)
}

fn main() -> Result<()> {
    println!(
        "| plan | avg weight bits | test top-1 % | integer kernels top-1 % | images whose class differs |"
    );
    println!("|---|---:|---:|---:|---:|");
    for r in run()? {
        let (engine, differ) = r.engine.map_or(("-".into(), "-".into()), |(t, d)| {
            (format!("{t:.2}"), d.to_string())
        });
        println!(
            "| {} | {:.2} | {:.2} | {engine} | {differ} |",
            r.name, r.avg_w_bits, r.top1
        );
    }
    Ok(())
}

#[test]
fn an_own_model_goes_through_mixed_precision_ptq_onto_the_integer_kernels() {
    let rows = run().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["FP32", "uniform W3A3", "mixed sensitivity", "uniform W8A8"]
    );
    let fp = rows[0].top1;
    assert!(fp > 85.0, "the MLP did not train: {fp} %");
    // The allocated plan keeps to its budget; W8A8 is close to full precision.
    assert!(rows[2].avg_w_bits <= 3.0 + 1e-9, "{rows:?}");
    assert!((rows[3].top1 - fp).abs() <= 2.0, "{rows:?}");
    // The integer kernels compute the fake-quant function: at most 2 of the 360 test images
    // change class (a value on a rounding boundary may land on the neighbouring code).
    for r in &rows[1..] {
        let (engine, differ) = r.engine.unwrap();
        assert!(differ <= 2, "{rows:?}");
        assert!(
            (engine - r.top1).abs() <= 2.0 * 100.0 / 360.0 + 1e-9,
            "{rows:?}"
        );
    }
}
