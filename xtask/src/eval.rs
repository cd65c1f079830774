//! `cargo xtask eval`: accuracy, loss and throughput of a model on a data set.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::Tensor;
use clap::Args;
use mixq_core::Result;

use crate::common::{EvalData, ModelArgs, batch_tensor, progress};

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// ImageNet-style folder (class sub-folders); digits models default to the digits test split.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Evaluate only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
}

/// Top-1/top-5 accuracy and mean cross-entropy, accumulated over batches of logits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    pub images: usize,
    pub top1: usize,
    pub top5: usize,
    pub loss_sum: f64,
}

impl Metrics {
    /// Adds a batch: `logits` row-major `[labels.len(), classes]`.
    pub fn add(&mut self, logits: &[f32], labels: &[usize]) {
        let classes = logits.len() / labels.len().max(1);
        for (row, &label) in logits.chunks_exact(classes).zip(labels) {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let log_sum = row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            self.loss_sum += log_sum - row[label] as f64;
            let rank = row.iter().filter(|&&v| v > row[label]).count();
            self.top1 += (rank == 0) as usize;
            self.top5 += (rank < 5) as usize;
            self.images += 1;
        }
    }

    pub fn top1_pct(&self) -> f64 {
        100.0 * self.top1 as f64 / self.images.max(1) as f64
    }

    pub fn top5_pct(&self) -> f64 {
        100.0 * self.top5 as f64 / self.images.max(1) as f64
    }

    pub fn loss(&self) -> f64 {
        self.loss_sum / self.images.max(1) as f64
    }
}

/// Logits as host values (this also waits for the device).
pub fn logits_vec(logits: Tensor<2>) -> Vec<f32> {
    logits
        .into_data()
        .try_into_vec::<f32>()
        .expect("logits are f32")
}

pub fn run(args: EvalArgs) -> Result<()> {
    let card = args.model.card()?;
    let device = args.model.device.device()?;
    let model = args.model.load(&card, &device)?;
    let data = EvalData::open(
        &card,
        args.data.as_deref(),
        args.limit,
        args.batch,
        args.model.seed,
    )?;
    tracing::info!(model = %card.name, data = %data.describe, "evaluating");

    let bar = progress(data.len, "eval");
    let mut metrics = Metrics::default();
    let mut forward_secs = 0.0;
    for batch in data.batches {
        if batch.is_empty() {
            continue;
        }
        let x = batch_tensor(&batch, &device);
        let start = Instant::now();
        let logits = logits_vec(model.forward(x));
        forward_secs += start.elapsed().as_secs_f64();
        metrics.add(&logits, &batch.labels);
        bar.inc(batch.len() as u64);
        bar.set_message(format!("top-1 {:.2}%", metrics.top1_pct()));
    }
    bar.finish_and_clear();

    println!("| model | data | device | batch | images | top-1 % | top-5 % | CE loss | images/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:?} | {} | {} | {:.2} | {:.2} | {:.4} | {:.1} |",
        card.aliases[0],
        data.describe,
        args.model.device,
        args.batch,
        metrics.images,
        metrics.top1_pct(),
        metrics.top5_pct(),
        metrics.loss(),
        metrics.images as f64 / forward_secs.max(1e-9),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_count_ranks_and_cross_entropy() {
        let mut m = Metrics::default();
        // Row 0: label 2 is the largest -> top-1. Row 1: label 0 ranks 3rd of 6 -> top-5 only.
        let logits = [0.0, 1.0, 3.0, 0.0, 0.0, 0.0, 1.0, 3.0, 2.0, 0.0, 0.0, 0.0];
        m.add(&logits, &[2, 0]);
        assert_eq!((m.images, m.top1, m.top5), (2, 1, 2));
        let ce0 = (1.0f64 + std::f64::consts::E + 3f64.exp() + 3.0).ln() - 3.0;
        let ce1 = (3.0 + std::f64::consts::E + 3f64.exp() + 2f64.exp()).ln() - 1.0;
        assert!((m.loss() - (ce0 + ce1) / 2.0).abs() < 1e-9);
    }
}
