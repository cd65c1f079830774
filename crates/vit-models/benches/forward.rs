//! Forward-pass throughput of full-size models with random weights on burn-flex.
//! `cargo bench -p mixq-vit-models --bench forward`

use burn::tensor::{Device, Distribution, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mixq_vit_models::ModelCard;
use mixq_vit_models::Network;

fn forward(c: &mut Criterion) {
    let device = Device::flex();
    device.seed(0);
    let mut group = c.benchmark_group("forward_flex");
    group.sample_size(10);
    for name in ["deit-s", "swin-t"] {
        let card = ModelCard::find(name).unwrap();
        let model = card.arch.init(&device).unwrap();
        for batch in [1usize, 8] {
            let x = Tensor::<4>::random(
                [batch, 3, 224, 224],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new(name, batch), &x, |b, x| {
                b.iter(|| model.forward(x.clone()).into_data())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
