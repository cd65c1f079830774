//! Block reconstruction's optimisation step on one fmnist-deit block (dim 96, 50 tokens, batch
//! 32, random weights and images): `reconstruct` on a one-block copy of the card's model with
//! 20 steps, so the throughput figure is steps per second. Compares QDrop off and on (its masks
//! are drawn on the host) and the MSE and Fisher-weighted losses.
//! `cargo bench -p mixq-qat-trainer --bench recon_step`.

use mixq_vit_models::Network;
use std::time::Duration;

use burn::tensor::{Device, Distribution, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mixq_ptq::{PtqConfig, uniform_plan};
use mixq_qat_trainer::{ReconConfig, ReconLoss, reconstruct};
use mixq_vit_models::{ArchConfig, ModelCard};

const STEPS: usize = 20;

fn block_step(c: &mut Criterion) {
    let device = Device::flex();
    device.seed(0);
    let card = ModelCard::find("fmnist-deit").expect("built-in card");
    let ArchConfig::Vit(mut vit) = card.arch.clone() else {
        panic!("fmnist-deit is a ViT")
    };
    vit.depth = 1;
    let model = ArchConfig::Vit(vit).init(&device).expect("init");
    let images = Tensor::<4>::random([64, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let calib = images.clone().narrow(0, 0, 32);
    let plan = uniform_plan(&model.sites(), 4, 4, 8).expect("plan");
    let ptq = PtqConfig::default();

    let mut group = c.benchmark_group("recon_block_step");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Elements(STEPS as u64));
    for (name, drop_prob, loss) in [
        ("mse", 0.0, ReconLoss::Mse),
        ("mse_qdrop", 0.5, ReconLoss::Mse),
        ("fisher", 0.0, ReconLoss::Fisher),
    ] {
        let config = ReconConfig {
            iters: STEPS,
            drop_prob,
            loss,
            ..ReconConfig::default()
        };
        group.bench_function(BenchmarkId::new(name, STEPS), |b| {
            b.iter(|| {
                reconstruct(
                    &model,
                    calib.clone(),
                    images.clone(),
                    &plan,
                    &ptq,
                    &config,
                    |_| {},
                )
                .expect("reconstruct")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, block_step);
criterion_main!(benches);
