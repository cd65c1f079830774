//! A model that is not one of mixq's, taken through mixed-precision PTQ with the public API
//! only: a three-layer MLP for the 8x8 digits, built from mixq's `Linear` sites so that its
//! forward passes every tensor through a `SiteHook`.
//!
//! 1. train it in full precision (burn autodiff, a few epochs);
//! 2. calibrate uniform W3A3 and W8A8 with `quantize_hooked`;
//! 3. measure every site alone at every candidate bit-width (`sensitivity_hooked`);
//! 4. let the allocator choose a plan at an average of 3 bits (`budget_plans`);
//! 5. calibrate that plan and compare all of them on the test split.
//!
//! `cargo run -p mixq-ptq --example own_model`. CI runs it through its test. Export to the
//! integer engine is not part of it: the engine runs the ViT family only so far.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData, activation::relu};
use mixq_allocator::{Criterion, parse_candidates};
use mixq_core::{Result, SiteId, SiteInfo, SiteKind};
use mixq_datasets::{KnownDataset, LabelledImages};
use mixq_ptq::mixed::{BudgetConfig, budget_plans};
use mixq_ptq::{PtqConfig, host_logits, quantize_hooked, sensitivity_hooked, uniform_plan};
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

/// A split as one `[n, 64]` tensor of normalised pixels and its labels.
fn tensors(set: &LabelledImages, device: &Device) -> Result<(Tensor<2>, Vec<usize>)> {
    let x = set
        .normalised(0.5, 0.5)
        .map_err(|e| mixq_core::Error::invalid("data", "digits", e.to_string()))?;
    let x = Tensor::<2>::from_data(TensorData::new(x, [set.len(), set.per_image()]), device);
    Ok((x, set.labels.clone()))
}

fn top1(logits: Tensor<2>, labels: &[usize]) -> f64 {
    let v = host_logits(logits);
    let k = v.len() / labels.len();
    let correct = labels
        .iter()
        .enumerate()
        .filter(|&(i, &l)| {
            let row = &v[i * k..(i + 1) * k];
            (0..k).all(|j| row[j] <= row[l])
        })
        .count();
    100.0 * correct as f64 / labels.len() as f64
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

/// Every row of the comparison: (name, average weight bits, test top-1 %).
fn run() -> Result<Vec<(String, f64, f64)>> {
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

    let mut rows = vec![(
        "FP32".to_string(),
        32.0,
        top1(model.forward(test.clone(), &NoHook), &labels),
    )];
    for p in &plans {
        let quantized = quantize_hooked(&sites, &p.plan, &PtqConfig::default(), false, calibrate)?;
        let (w_bits, _) = mixq_ptq::mixed::plan_averages(&p.plan, &sites);
        let acc = top1(model.forward(test.clone(), &quantized), &labels);
        rows.push((p.name.clone(), w_bits, acc));
    }
    Ok(rows)
}

fn main() -> Result<()> {
    println!("| plan | avg weight bits | test top-1 % |\n|---|---:|---:|");
    for (name, bits, acc) in run()? {
        println!("| {name} | {bits:.2} | {acc:.2} |");
    }
    Ok(())
}

#[test]
fn an_own_model_goes_through_mixed_precision_ptq() {
    let rows = run().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        names,
        ["FP32", "uniform W3A3", "mixed sensitivity", "uniform W8A8"]
    );
    let fp = rows[0].2;
    assert!(fp > 85.0, "the MLP did not train: {fp} %");
    // The allocated plan keeps to its budget; W8A8 is close to full precision.
    assert!(rows[2].1 <= 3.0 + 1e-9, "{rows:?}");
    assert!((rows[3].2 - fp).abs() <= 2.0, "{rows:?}");
}
