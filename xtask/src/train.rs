//! `cargo xtask train`: trains a digits model from scratch and writes the checkpoint that
//! models/ ships. Deterministic for a given `--seed` on the flex backend.

use std::path::PathBuf;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Int, Tensor, TensorData};
use clap::Args;
use mixq_core::{Error, Result};
use mixq_datasets::Digits;
use mixq_datasets::digits::Split;
use mixq_qat_trainer::{cosine_with_warmup, default_warmup, shift_image};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::{DIGITS_SPLIT_SEED, DeviceName, batch_tensor, progress};
use crate::eval::logits_vec;
use mixq_ptq::Metrics;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A digits model card (digits-deit, digits-swin).
    #[arg(long, default_value = "digits-deit")]
    pub model: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Peak learning rate (AdamW, linear warm-up then cosine decay).
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f32,
    /// Output checkpoint; defaults to the card's shipped file in models/.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "flex")]
    pub device: DeviceName,
}

/// Shifts an 8x8 digit by (dy, dx) pixels, filling with background (0).
fn shift(img: &[f32; 64], dy: i32, dx: i32) -> [f32; 64] {
    shift_image(img, [1, 8, 8], dy, dx, 0.0)
        .try_into()
        .expect("a shifted 8x8 image has 64 pixels")
}

pub fn run(args: TrainArgs) -> Result<()> {
    let card = mixq_vit_models::ModelCard::find(&args.model)?;
    if card.dataset.as_deref() != Some("digits") {
        return Err(Error::invalid(
            "--model",
            &args.model,
            "train reproduces the digits checkpoints only (digits-deit, digits-swin)",
        ));
    }
    for (name, value) in [("--epochs", args.epochs), ("--batch", args.batch)] {
        if value == 0 {
            return Err(Error::invalid(name, 0, "must be at least 1"));
        }
    }
    let out = match &args.out {
        Some(p) => p.clone(),
        None => card
            .shipped_path()
            .expect("digits cards name their shipped file"),
    };
    let (mean, std) = (card.preprocess.mean[0], card.preprocess.std[0]);
    let (train, test) = Digits::load().split(DIGITS_SPLIT_SEED);

    let device = args.device.device()?.autodiff();
    device.seed(args.seed);
    let mut model = card.arch.init(&device)?;
    let mut optim = AdamWConfig::new()
        .with_weight_decay(args.weight_decay)
        .init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let steps_per_epoch = train.len().div_ceil(args.batch);
    let total = steps_per_epoch * args.epochs;
    let bar = progress(total, "train");
    let start = std::time::Instant::now();
    let mut step = 0;
    for epoch in 0..args.epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rng);
        let augmented = Split {
            indices: order.iter().map(|&i| train.indices[i]).collect(),
            images: order
                .iter()
                .map(|&i| {
                    shift(
                        &train.images[i],
                        rng.random_range(-1..=1),
                        rng.random_range(-1..=1),
                    )
                })
                .collect(),
            labels: order.iter().map(|&i| train.labels[i]).collect(),
        };
        let mut epoch_loss = 0.0;
        for batch in augmented
            .batches(args.batch, mean, std)
            .map_err(|e| Error::invalid("--batch", args.batch, e.to_string()))?
        {
            let x = batch_tensor(&batch, &device);
            let labels: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
            let targets =
                Tensor::<1, Int>::from_data(TensorData::new(labels, [batch.len()]), &device);
            let loss = loss_fn.forward(model.forward(x), targets);
            epoch_loss += loss.clone().into_scalar::<f32>() as f64 * batch.len() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = cosine_with_warmup(step, total, default_warmup(total), args.lr);
            model = optim.step(lr, model, grads);
            step += 1;
            bar.inc(1);
        }
        bar.set_message(format!(
            "epoch {} loss {:.4}",
            epoch + 1,
            epoch_loss / train.len() as f64
        ));
    }
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();

    let model = model.valid();
    let eval_device = args.device.device()?;
    let mut metrics = Metrics::default();
    for batch in test
        .batches(256, mean, std)
        .map_err(|e| Error::invalid("--batch", 256, e.to_string()))?
    {
        metrics.add(
            &logits_vec(model.forward(batch_tensor(&batch, &eval_device))),
            &batch.labels,
            None,
        );
    }
    model.save_safetensors(&out)?;
    println!(
        "| model | seed | epochs | train s | test images | test top-1 % | test CE | checkpoint |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {:.0} | {} | {:.2} | {:.4} | {} |",
        card.aliases[0],
        args.seed,
        args.epochs,
        secs,
        metrics.images,
        metrics.top1_pct(),
        metrics.loss(),
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_moves_pixels_and_fills_background() {
        let mut img = [0.0; 64];
        img[0] = 16.0;
        img[63] = 5.0;
        let s = shift(&img, 1, 1);
        assert_eq!(s[9], 16.0);
        assert_eq!(
            s.iter().filter(|&&v| v != 0.0).count(),
            1,
            "the corner pixel leaves the image"
        );
    }
}
