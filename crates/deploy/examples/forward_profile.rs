//! Runs the integer engine's DeiT-S forward (random weights, W8A8 or W`wbits`A8) repeatedly,
//! for profilers: `cargo run --release -p mixq-deploy --example forward_profile -- [batch]
//! [runs] [wbits]`, e.g. under `perf record`. Prints the time per batch.

use mixq_vit_models::Network;
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use mixq_deploy::IntModel;
use mixq_ptq::{PtqConfig, quantize, uniform_plan};
use mixq_quant_kernels::host_values;
use mixq_vit_models::ModelCard;

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let batch = args.next().unwrap_or(8);
    let runs = args.next().unwrap_or(10);
    let wbits = args.next().unwrap_or(8) as u8;
    let device = Device::flex();
    device.seed(0);
    let card = ModelCard::find("deit-s").expect("built-in card");
    let model = card.arch.init(&device).expect("init");
    let calib = Tensor::<4>::random([4, 3, 224, 224], Distribution::Normal(0.0, 1.0), &device);
    let input = Tensor::<4>::random(
        [batch, 3, 224, 224],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let host = host_values(&input).expect("f32");
    let plan = uniform_plan(&model.sites(), wbits, 8, 8).expect("plan");
    let q = quantize(model, calib, &plan, &PtqConfig::default()).expect("quantize");
    let engine = IntModel::from_quantized(&q).expect("export");
    engine.forward(&host, batch).expect("forward");
    let t = Instant::now();
    for _ in 0..runs {
        engine.forward(&host, batch).expect("forward");
    }
    let ms = t.elapsed().as_secs_f64() * 1e3 / runs as f64;
    println!(
        "batch {batch}: {ms:.1} ms per batch, {:.1} images/s",
        batch as f64 * 1e3 / ms
    );
}
