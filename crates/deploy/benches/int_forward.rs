//! Whole DeiT-S (random weights) on the integer engine vs burn-flex's f32 forward, batch 1 and 8.
//! `cargo xtask bench-int` prints the same comparison as one table with model bytes.

use mixq_vit_models::Network;
use std::time::Duration;

use burn::tensor::{Device, Distribution, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mixq_deploy::IntModel;
use mixq_ptq::{PtqConfig, quantize, uniform_plan};
use mixq_quant_kernels::host_values;
use mixq_vit_models::ModelCard;

fn deit_s(c: &mut Criterion) {
    let device = Device::flex();
    device.seed(0);
    let card = ModelCard::find("deit-s").expect("built-in card");
    let model = card.arch.init(&device).expect("init");
    let input = Tensor::<4>::random([8, 3, 224, 224], Distribution::Normal(0.0, 1.0), &device);
    let calib = Tensor::<4>::random([4, 3, 224, 224], Distribution::Normal(0.0, 1.0), &device);
    let host = host_values(&input).expect("f32");

    let mut group = c.benchmark_group("deit_s");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for batch in [1usize, 8] {
        group.throughput(Throughput::Elements(batch as u64));
        let x = input.clone().narrow(0, 0, batch);
        group.bench_with_input(BenchmarkId::new("fp32_flex", batch), &batch, |b, _| {
            b.iter(|| model.forward(x.clone()).into_data())
        });
    }
    for (name, w) in [("w8a8", 8), ("w4a8", 4)] {
        let plan = uniform_plan(&model.sites(), w, 8, 8).expect("plan");
        let q =
            quantize(model.clone(), calib.clone(), &plan, &PtqConfig::default()).expect("quantize");
        let engine = IntModel::from_quantized(&q).expect("export");
        for batch in [1usize, 8] {
            group.throughput(Throughput::Elements(batch as u64));
            let x = &host[..batch * 3 * 224 * 224];
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, &batch| {
                b.iter(|| engine.forward(x, batch).expect("forward"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, deit_s);
criterion_main!(benches);
