//! `cargo xtask bench`: whole-model timings measured side by side in one process (the machine
//! is shared and noisy; ratios from one run are what we report). Random weights, random images.

use mixq_vit_models::Network;
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use clap::{Args, ValueEnum};
use mixq_core::{Error, Result};
use mixq_ptq::{PtqConfig, quantize, uniform_plan};
use mixq_qat_trainer::{FpConfig, FpTrainer, ImageSet};
use mixq_vit_models::{ExplainOptions, Model, ModelCard, SiteHook, Target};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::DeviceName;
use mixq_deploy::bench::median;

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

/// Seconds to run `images` images through `model` in batches of `batch`.
fn time_forward(
    model: &Model,
    hook: &dyn SiteHook,
    input: &Tensor<4>,
    images: usize,
    batch: usize,
) -> f64 {
    let start = Instant::now();
    let mut done = 0;
    while done < images {
        let b = batch.min(images - done);
        let x = input.clone().narrow(0, 0, b);
        let _ = model.forward_with(x, hook).into_data();
        done += b;
    }
    start.elapsed().as_secs_f64()
}

fn random_images(card: &ModelCard, n: usize, device: &Device) -> Tensor<4> {
    let s = card.arch.img_size();
    Tensor::random(
        [n, card.arch.in_chans(), s, s],
        Distribution::Normal(0.0, 1.0),
        device,
    )
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.repeat == 0 || args.images == 0 || args.batches.contains(&0) {
        return Err(Error::invalid(
            "--repeat/--images/--batches",
            0,
            "must be at least 1",
        ));
    }
    let card = ModelCard::find(&args.model)?;
    crate::common::print_build();
    match args.suite {
        Suite::Forward => {
            println!("| model | device | batch | images/s | ms per batch |");
            println!("|---|---|---:|---:|---:|");
            for &name in &args.devices {
                let device = name.device()?;
                device.seed(args.seed);
                let model = card.arch.init(&device)?;
                let input = random_images(&card, *args.batches.iter().max().unwrap(), &device);
                for &batch in &args.batches {
                    let _ = time_forward(&model, &mixq_vit_models::NoHook, &input, batch, batch); // warm-up
                    let secs = median(
                        (0..args.repeat)
                            .map(|_| {
                                time_forward(
                                    &model,
                                    &mixq_vit_models::NoHook,
                                    &input,
                                    args.images,
                                    batch,
                                )
                            })
                            .collect(),
                    );
                    println!(
                        "| {} | {name:?} | {batch} | {:.2} | {:.1} |",
                        card.aliases[0],
                        args.images as f64 / secs,
                        1000.0 * secs * batch as f64 / args.images as f64
                    );
                }
            }
        }
        Suite::Lrp => {
            let device = args.devices[0].device()?;
            device.seed(args.seed);
            let model = card.arch.init(&device)?;
            let batch = *args.batches.iter().max().unwrap();
            let input = random_images(&card, batch, &device);
            let pre = &card.preprocess;
            let options = ExplainOptions::new(args.preset, &pre.mean, &pre.std);
            let explain = |images: usize| -> Result<f64> {
                let start = Instant::now();
                let mut done = 0;
                while done < images {
                    let b = batch.min(images - done);
                    model.explain(input.clone().narrow(0, 0, b), &Target::Predicted, &options)?;
                    done += b;
                }
                Ok(start.elapsed().as_secs_f64())
            };
            explain(batch)?; // warm-up
            let (mut fp, mut lrp) = (Vec::new(), Vec::new());
            for _ in 0..args.repeat {
                // Interleaved so that machine noise hits both alike.
                fp.push(time_forward(
                    &model,
                    &mixq_vit_models::NoHook,
                    &input,
                    args.images,
                    batch,
                ));
                lrp.push(explain(args.images)?);
            }
            let (fp, lrp) = (median(fp), median(lrp));
            println!("| model | preset | images | batch | forward s | LRP s | LRP / forward |");
            println!("|---|---|---:|---:|---:|---:|---:|");
            println!(
                "| {} | {} | {} | {batch} | {fp:.2} | {lrp:.2} | {:.2}x |",
                card.aliases[0],
                args.preset,
                args.images,
                lrp / fp
            );
        }
        Suite::Train => {
            println!("| model | device | batch | train images/s | ms per step |");
            println!("|---|---|---:|---:|---:|");
            let recipe = card.train.clone().unwrap_or_default();
            let [c, s] = [card.arch.in_chans(), card.arch.img_size()];
            for &name in &args.devices {
                let device = name.device()?;
                for &batch in &args.batches {
                    let n = args.images.max(batch);
                    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
                    let classes = card.arch.num_classes();
                    let data = ImageSet::new(
                        (0..n * c * s * s)
                            .map(|_| rng.random_range(-1.0..1.0))
                            .collect(),
                        [c, s, s],
                        (0..n).map(|_| rng.random_range(0..classes)).collect(),
                    )?;
                    let config = FpConfig {
                        epochs: args.repeat + 1,
                        batch,
                        lr: recipe.lr,
                        weight_decay: recipe.weight_decay,
                        seed: args.seed,
                        shift: recipe.pad,
                        shift_fill: card.preprocess.black_level(),
                        hflip: recipe.hflip,
                        label_smoothing: recipe.label_smoothing,
                        workers: args.workers,
                    };
                    let mut trainer = FpTrainer::new(&card.name, &card.arch, &device, config)?;
                    trainer.train_epoch(&data, &mut |_| {})?; // warm-up
                    let secs = median(
                        (0..args.repeat)
                            .map(|_| trainer.train_epoch(&data, &mut |_| {}).map(|e| e.seconds))
                            .collect::<Result<Vec<_>>>()?,
                    );
                    let steps = n.div_ceil(batch) as f64;
                    println!(
                        "| {} | {name:?} | {batch} | {:.0} | {:.1} |",
                        card.aliases[0],
                        n as f64 / secs,
                        1e3 * secs / steps
                    );
                }
            }
        }
        Suite::Ptq => {
            let device = args.devices[0].device()?;
            device.seed(args.seed);
            let model = card.arch.init(&device)?;
            let calib = random_images(&card, args.calib, &device);
            let input = random_images(&card, 8, &device);
            let plan = uniform_plan(&model.sites(), args.bits, args.bits, 8)?;
            let start = Instant::now();
            let config = PtqConfig {
                softmax: args.softmax,
                ..PtqConfig::default()
            };
            let q = quantize(model.clone(), calib, &plan, &config)?;
            let calib_secs = start.elapsed().as_secs_f64();
            let (mut fp, mut fq) = (Vec::new(), Vec::new());
            for _ in 0..args.repeat {
                // Interleaved so that machine noise hits both alike.
                fp.push(time_forward(
                    &model,
                    &mixq_vit_models::NoHook,
                    &input,
                    args.eval,
                    8,
                ));
                fq.push(time_forward(&q.model, &q.state, &input, args.eval, 8));
            }
            let (fp, fq) = (median(fp), median(fq));
            println!(
                "| model | softmax | calib images | calibration s | eval images | FP32 eval s | W{b}A{b} eval s | fake-quant overhead |",
                b = args.bits
            );
            println!("|---|---|---:|---:|---:|---:|---:|---:|");
            println!(
                "| {} | {} | {} | {calib_secs:.1} | {} | {fp:.2} | {fq:.2} | {:+.1} % |",
                card.aliases[0],
                args.softmax,
                args.calib,
                args.eval,
                100.0 * (fq / fp - 1.0)
            );
        }
    }
    Ok(())
}
