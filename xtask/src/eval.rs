//! `cargo xtask eval`: accuracy, loss and throughput of a model on a data set.

use mixq_vit_models::Network;
use std::path::PathBuf;

use clap::Args;
use mixq_core::Result;
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
        result.save_logits(path)?;
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
