//! `cargo xtask eval`: accuracy, loss and throughput of a model on a data set.

use mixq_vit_models::Network;
use std::path::{Path, PathBuf};

use clap::Args;
use mixq_core::{Error, Result, write_atomic};
use mixq_ptq::{evaluate_data, host_logits};

use crate::common::{EvalDataArgs, ModelArgs, progress};
use mixq_vit_models::batch_tensor;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub eval_data: EvalDataArgs,
    /// Also write every image's logits and label to this safetensors file (`logits` F32
    /// `[n, classes]`, `labels` I64 `[n]`), for peer checks such as tools/timm_peer_check.py.
    #[arg(long)]
    pub logits: Option<PathBuf>,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let card = args.model.card()?;
    if card.arch.num_classes() == 0 {
        return Err(mixq_core::Error::invalid(
            "--model",
            &card.aliases[0],
            "is a backbone without classes, so top-1 means nothing; `cargo xtask ptq` compares its \
             tokens with full precision's (token cosine), `cargo xtask outliers` shows its \
             post-LayerNorm channels",
        ));
    }
    let device = args.model.device.device()?;
    let model = args.model.load(&card, &device)?;
    let data = args.eval_data.open(&card)?;
    tracing::info!(model = %card.name, data = %data.describe, "evaluating");

    let describe = data.describe.clone();
    let bar = progress(data.len, "eval");
    let result = evaluate_data(
        data,
        args.logits.is_some(),
        |batch| Ok(host_logits(model.forward(batch_tensor(batch, &device)))),
        |done, _, metrics| {
            bar.set_position(done as u64);
            bar.set_message(format!("top-1 {:.2}%", metrics.top1_pct()));
        },
    )?;
    bar.finish_and_clear();
    if let Some(path) = &args.logits {
        let labels: Vec<i64> = result.labels.iter().map(|&l| l as i64).collect();
        write_logits(path, &result.logits, &labels)?;
    }
    let metrics = &result.metrics;

    println!("| model | data | device | batch | images | top-1 % | top-5 % | CE loss | images/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:?} | {} | {} | {:.2} | {:.2} | {:.4} | {:.1} |",
        card.aliases[0],
        describe,
        args.model.device,
        args.eval_data.batch,
        metrics.images,
        metrics.top1_pct(),
        metrics.top5_pct(),
        metrics.loss(),
        result.images_per_second(),
    );
    Ok(())
}

fn write_logits(path: &Path, logits: &[f32], labels: &[i64]) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let n = labels.len().max(1);
    let (lb, yb): (Vec<u8>, Vec<u8>) = (
        logits.iter().flat_map(|v| v.to_le_bytes()).collect(),
        labels.iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    let bad = |e: safetensors::SafeTensorError| Error::parse(path, e.to_string());
    let views = vec![
        (
            "logits",
            TensorView::new(Dtype::F32, vec![labels.len(), logits.len() / n], &lb).map_err(bad)?,
        ),
        (
            "labels",
            TensorView::new(Dtype::I64, vec![labels.len()], &yb).map_err(bad)?,
        ),
    ];
    let bytes = safetensors::serialize(views, None).map_err(bad)?;
    write_atomic(path, &bytes)
}
