//! `cargo xtask bench`: whole-model timings measured side by side in one process (the machine
//! is shared and noisy; ratios from one run are what we report). Random weights, random images.

use clap::{Args, ValueEnum};
use mixq_core::{Error, Result};
use mixq_ptq::bench::{BenchConfig, bench_forward, bench_lrp, bench_ptq};
use mixq_qat_trainer::{TrainingBench, bench_training};
use mixq_vit_models::ModelCard;

use crate::common::DeviceName;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// Plain forward images/s at each batch size, on each device given.
    Forward,
    /// Calibration time, and W4A4 fake-quant evaluation vs the plain forward.
    Ptq,
    /// LRP (forward in LRP mode + one backward) vs plain forwards of the same images.
    Lrp,
    /// Full-precision training steps (forward, backward, AdamW, augmentation) images/s at each
    /// batch size, with the card's training recipe (`--images` images per epoch).
    Train,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(value_enum)]
    pub suite: Suite,
    #[arg(long, default_value = "deit-s")]
    pub model: String,
    /// Devices to compare (forward suite).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "flex")]
    pub devices: Vec<DeviceName>,
    /// Batch sizes (forward suite).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batches: Vec<usize>,
    /// Images per measurement.
    #[arg(long, default_value_t = 16)]
    pub images: usize,
    /// Calibration images (ptq suite).
    #[arg(long, default_value_t = 32)]
    pub calib: usize,
    /// Evaluation images (ptq suite).
    #[arg(long, default_value_t = 64)]
    pub eval: usize,
    /// Bits for the ptq suite.
    #[arg(long, default_value_t = 4)]
    pub bits: u8,
    /// LRP rule preset (lrp suite).
    #[arg(long, default_value = "attnlrp")]
    pub preset: mixq_lrp::Preset,
    /// Attention-probability quantizer (ptq suite).
    #[arg(long, default_value = "logsqrt2")]
    pub softmax: mixq_ptq::SoftmaxMode,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Data-parallel parts of each training batch, one thread each (train suite).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let config = BenchConfig {
        images: args.images,
        repeat: args.repeat,
    };
    config.validate()?;
    if args.batches.contains(&0) {
        return Err(Error::invalid("--batches", 0, "must be at least 1"));
    }
    let card = ModelCard::find(&args.model)?;
    crate::common::print_build();
    let model_on = |name: DeviceName| -> Result<_> {
        let device = name.device()?;
        device.seed(args.seed);
        let model = card.arch.init(&device)?;
        Ok((model, device))
    };
    let largest = *args.batches.iter().max().unwrap_or(&1);
    let alias = &card.aliases[0];
    match args.suite {
        Suite::Forward => {
            println!("| model | device | batch | images/s | ms per batch |");
            println!("|---|---|---:|---:|---:|");
            for &name in &args.devices {
                let (model, device) = model_on(name)?;
                for (batch, secs) in bench_forward(&model, &card, &args.batches, &config, &device)?
                {
                    println!(
                        "| {alias} | {name:?} | {batch} | {:.2} | {:.1} |",
                        args.images as f64 / secs,
                        1000.0 * secs * batch as f64 / args.images as f64
                    );
                }
            }
        }
        Suite::Lrp => {
            let (model, device) = model_on(args.devices[0])?;
            let t = bench_lrp(&model, &card, args.preset, largest, &config, &device)?;
            let (fp, lrp) = (t.forward_seconds, t.lrp_seconds);
            println!("| model | preset | images | batch | forward s | LRP s | LRP / forward |");
            println!("|---|---|---:|---:|---:|---:|---:|");
            println!(
                "| {alias} | {} | {} | {largest} | {fp:.2} | {lrp:.2} | {:.2}x |",
                args.preset,
                args.images,
                lrp / fp
            );
        }
        Suite::Train => {
            println!("| model | device | batch | train images/s | ms per step |");
            println!("|---|---|---:|---:|---:|");
            for &name in &args.devices {
                let device = name.device()?;
                for &batch in &args.batches {
                    let bench = TrainingBench {
                        batch,
                        images: args.images,
                        repeat: args.repeat,
                        workers: args.workers,
                        seed: args.seed,
                    };
                    let (n, secs) = bench_training(&card, &bench, &device)?;
                    println!(
                        "| {alias} | {name:?} | {batch} | {:.0} | {:.1} |",
                        n as f64 / secs,
                        1e3 * secs / n.div_ceil(batch) as f64
                    );
                }
            }
        }
        Suite::Ptq => {
            let (model, device) = model_on(args.devices[0])?;
            let t = bench_ptq(
                &model,
                &card,
                args.bits,
                args.softmax,
                args.calib,
                &BenchConfig {
                    images: args.eval,
                    ..config
                },
                &device,
            )?;
            let (fp, fq) = (t.forward_seconds, t.quantized_seconds);
            println!(
                "| model | softmax | calib images | calibration s | eval images | FP32 eval s | W{b}A{b} eval s | fake-quant overhead |",
                b = args.bits
            );
            println!("|---|---|---:|---:|---:|---:|---:|---:|");
            println!(
                "| {alias} | {} | {} | {:.1} | {} | {fp:.2} | {fq:.2} | {:+.1} % |",
                args.softmax,
                args.calib,
                t.calibration_seconds,
                args.eval,
                100.0 * (fq / fp - 1.0)
            );
        }
    }
    Ok(())
}
