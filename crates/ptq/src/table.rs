//! A PTQ comparison as one call: full precision against every quantized variant (plans ×
//! quantizer options), each calibrated once per seed, all evaluated in one pass over the data,
//! every figure summarised over the seeds.
//!
//! ```no_run
//! use mixq_datasets::EvalData;
//! use mixq_ptq::{Calibrate, PtqTableConfig, ablation_grid, ptq_table, uniform_plan};
//! use mixq_vit_models::{ModelCard, Network, WeightsChoice};
//!
//! let card = ModelCard::find("fmnist-deit")?;
//! let device = burn::tensor::Device::flex();
//! let model = card.load(&WeightsChoice::default(), 0, &device)?; // the shipped checkpoint
//! let plans = [8, 4]
//!     .into_iter()
//!     .map(|b| Ok((format!("W{b}A{b}"), uniform_plan(&model.sites(), b, b, 8)?)))
//!     .collect::<mixq_core::Result<_>>()?;
//! let config = PtqTableConfig {
//!     plans,
//!     grid: ablation_grid(), // or vec![(PostLnMode::ClippedChannel, SoftmaxMode::LogSqrt2)]
//!     seeds: vec![0, 1, 2],
//!     calib: 32,
//!     calib_data: None, // the card's data set (its validation split)
//! };
//! let data = EvalData::open(&card.data_spec(), None, None, 250)?; // the 10,000 test images
//! let results = ptq_table(&model, &card, &config, &Calibrate, data, &device, |_, _, _| {})?;
//! print!("{}", results.markdown()); // "| fmnist-deit W4A4 | clipped-channel | logsqrt2 | 90.02 ± 0.21 | ..."
//! # Ok::<(), mixq_core::Error>(())
//! ```

use mixq_vit_models::Network;
use std::path::PathBuf;
use std::sync::Mutex;

use burn::tensor::{Device, Tensor};
use mixq_core::{BitPlan, Error, Result};
use mixq_datasets::EvalData;
use mixq_vit_models::{Model, ModelCard, batch_tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{
    Comparison, Metrics, PostLnMode, PtqConfig, PtqResults, PtqRow, QuantizedModel, SoftmaxMode,
    Spread, calibration_images, compare, quantize,
};

/// One quantized configuration: a plan and the quantizer options.
#[derive(Clone, Debug)]
pub struct Variant {
    /// How reports name it (`W4A4`, `mix 4`, ...).
    pub label: String,
    /// Bits per site.
    pub plan: BitPlan,
    /// Post-LN and softmax quantizers, range methods.
    pub config: PtqConfig,
}

/// One configuration's figures for one calibration seed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeedMetrics {
    /// `None` for full precision, which no seed changes.
    pub seed: Option<u64>,
    /// Its figures on the evaluation images.
    pub metrics: Metrics,
}

/// A configuration over every calibration seed, with the spread of each figure.
#[derive(Clone, Debug, PartialEq)]
pub struct VariantResult {
    /// The variant's label.
    pub label: String,
    /// Figures per calibration seed.
    pub seeds: Vec<SeedMetrics>,
    /// Top-1 % over the seeds.
    pub top1: Spread,
    /// Top-5 % over the seeds.
    pub top5: Spread,
    /// Cross-entropy over the seeds.
    pub loss: Spread,
    /// Mean KL(FP || quantized).
    pub kl: Spread,
    /// A backbone's token cosine and saliency agreement (none for classifiers).
    pub label_free: Option<crate::LabelFreeSpread>,
}

impl VariantResult {
    fn new(label: String, seeds: Vec<SeedMetrics>) -> Self {
        let spread = |f: fn(&Metrics) -> f64| Spread::of(seeds.iter().map(|s| f(&s.metrics)));
        Self {
            label,
            top1: spread(Metrics::top1_pct),
            top5: spread(Metrics::top5_pct),
            loss: spread(Metrics::loss),
            kl: spread(Metrics::kl),
            label_free: crate::LabelFreeSpread::of(seeds.iter().map(|s| &s.metrics)),
            seeds,
        }
    }
}

/// Full precision and every variant, in the order given.
#[derive(Clone, Debug, PartialEq)]
pub struct VariantTable {
    /// The full-precision model's figures.
    pub fp: Metrics,
    /// One per variant, in the order given.
    pub variants: Vec<VariantResult>,
}

/// Quantizes `model` with every variant for every `(seed, calibration images)` pair, then
/// evaluates full precision and all of them over `batches` in one pass. `calibrated` is called
/// with 0 before the first quantization and with the number done after each, `evaluated` with
/// each batch's size.
pub fn compare_variants(
    model: &Model,
    variants: &[Variant],
    calibrations: &[(u64, Tensor<4>)],
    batches: impl IntoIterator<Item = (Tensor<4>, Vec<usize>)>,
    calibrated: impl FnMut(usize) + Send,
    evaluated: impl FnMut(usize),
) -> Result<VariantTable> {
    let seeded: Vec<SeededVariants> = calibrations
        .iter()
        .map(|(seed, images)| SeededVariants {
            seed: *seed,
            images: images.clone(),
            variants: variants.to_vec(),
        })
        .collect();
    compare_seeded(model, &seeded, &Calibrate, batches, calibrated, evaluated)
}

/// One model to quantize: a variant under a calibration seed and its images.
#[derive(Clone, Copy, Debug)]
pub struct QuantizeJob<'a> {
    /// The calibration seed.
    pub seed: u64,
    /// Its calibration images.
    pub calib: &'a Tensor<4>,
    /// The plan and options.
    pub variant: &'a Variant,
}

/// How a variant becomes a quantized model. [`Calibrate`] is PTQ's calibration ([`quantize`]);
/// block reconstruction (mixq-qat-trainer's `Reconstruct`) starts from it and optimises it.
pub trait Quantizer<N: Send + Sync = Model>: Sync {
    /// `model` quantized with `variant`, calibrated on `calib`, the images of `seed`.
    fn quantize(
        &self,
        model: &N,
        seed: u64,
        calib: Tensor<4>,
        variant: &Variant,
    ) -> Result<QuantizedModel<N>>;

    /// Every job, in order. The jobs are independent, so they run one per rayon thread (one
    /// small model's calibration or reconstruction keeps about one core busy); `done` is
    /// called after each, from the thread that finished it, with the number done so far.
    fn quantize_all(
        &self,
        model: &N,
        jobs: &[QuantizeJob<'_>],
        done: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<QuantizedModel<N>>> {
        run_jobs(jobs, done, |job| {
            self.quantize(model, job.seed, job.calib.clone(), job.variant)
        })
    }
}

/// `work` on every job, one per rayon thread, the results in the jobs' order; `done` is called
/// after each job with the number done so far (what [`Quantizer::quantize_all`] does, for
/// quantizers that return more than the model).
pub fn run_jobs<T: Send>(
    jobs: &[QuantizeJob<'_>],
    done: &(dyn Fn(usize) + Sync),
    work: impl Fn(&QuantizeJob<'_>) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let finished = std::sync::atomic::AtomicUsize::new(0);
    jobs.par_iter()
        .map(|job| {
            let out = work(job)?;
            done(finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1);
            Ok(out)
        })
        .collect()
}

/// PTQ's calibration: [`quantize`] with the variant's plan and options.
#[derive(Clone, Copy, Debug, Default)]
pub struct Calibrate;

impl<N: Network + Clone + Send> Quantizer<N> for Calibrate {
    fn quantize(
        &self,
        model: &N,
        _seed: u64,
        calib: Tensor<4>,
        variant: &Variant,
    ) -> Result<QuantizedModel<N>> {
        quantize(model.clone(), calib, &variant.plan, &variant.config)
    }
}

/// One calibration sample and the variants calibrated with it. Mixed precision chooses its
/// plans from the calibration images, so each seed can bring its own plans under the same
/// labels.
#[derive(Clone, Debug)]
pub struct SeededVariants {
    /// The calibration seed.
    pub seed: u64,
    /// Its calibration images.
    pub images: Tensor<4>,
    /// The variants, with the same labels in the same order for every seed.
    pub variants: Vec<Variant>,
}

/// [`compare_variants`] where each seed brings its own variants (same labels, same order):
/// the i-th variant of every seed is one row of the result, summarised over the seeds.
pub fn compare_seeded(
    model: &Model,
    seeded: &[SeededVariants],
    quantizer: &dyn Quantizer,
    batches: impl IntoIterator<Item = (Tensor<4>, Vec<usize>)>,
    mut calibrated: impl FnMut(usize) + Send,
    evaluated: impl FnMut(usize),
) -> Result<VariantTable> {
    let labels: Vec<&str> = seeded.first().map_or(Vec::new(), |s| {
        s.variants.iter().map(|v| v.label.as_str()).collect()
    });
    for s in seeded {
        if !s
            .variants
            .iter()
            .map(|v| v.label.as_str())
            .eq(labels.iter().copied())
        {
            return Err(Error::invalid(
                "variants",
                format!("seed {}", s.seed),
                "every calibration seed needs the same variant labels in the same order",
            ));
        }
    }
    // Seed-major: seed i's variants are quantized[i * labels.len()..].
    let jobs: Vec<QuantizeJob> = seeded
        .iter()
        .flat_map(|s| {
            s.variants.iter().map(|variant| QuantizeJob {
                seed: s.seed,
                calib: &s.images,
                variant,
            })
        })
        .collect();
    calibrated(0);
    let calibrated = Mutex::new(&mut calibrated);
    let quantized = quantizer.quantize_all(model, &jobs, &|n| {
        (calibrated.lock().expect("progress lock"))(n)
    })?;
    let Comparison { fp, quantized: qm } = compare(model, &quantized, batches, evaluated);
    let variants = labels
        .iter()
        .enumerate()
        .map(|(v, label)| {
            let seeds = seeded
                .iter()
                .enumerate()
                .map(|(i, s)| SeedMetrics {
                    seed: Some(s.seed),
                    metrics: qm[i * labels.len() + v].clone(),
                })
                .collect();
            VariantResult::new(label.to_string(), seeds)
        })
        .collect();
    Ok(VariantTable { fp, variants })
}

/// Which step a progress report of [`compare_on`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtqStage {
    /// Quantizing (counts models).
    Calibrate,
    /// The evaluation pass (counts images).
    Evaluate,
}

impl PtqStage {
    /// How progress bars name the stage.
    pub fn name(self) -> &'static str {
        match self {
            PtqStage::Calibrate => "calibrate",
            PtqStage::Evaluate => "evaluate",
        }
    }
}

/// [`compare_seeded`] over the batches of `data`; `progress` gets (stage, done, total). An
/// evaluation in which no image could be read is an error naming `data`'s source.
pub fn compare_on(
    model: &Model,
    seeded: &[SeededVariants],
    quantizer: &dyn Quantizer,
    data: EvalData,
    device: &Device,
    mut progress: impl FnMut(PtqStage, usize, usize) + Send,
) -> Result<VariantTable> {
    let total = seeded.iter().map(|s| s.variants.len()).sum();
    let (len, source) = (data.len, data.source);
    let batches = data.batches.map(|b| (batch_tensor(&b, device), b.labels));
    let progress = Mutex::new(&mut progress);
    let report = |stage, done, total| (progress.lock().expect("progress lock"))(stage, done, total);
    let mut evaluated = 0;
    let result = compare_seeded(
        model,
        seeded,
        quantizer,
        batches,
        |done| report(PtqStage::Calibrate, done, total),
        |n| {
            evaluated += n;
            report(PtqStage::Evaluate, evaluated, len)
        },
    )?;
    if result.fp.images == 0 {
        return Err(crate::eval::no_image_evaluated(source));
    }
    Ok(result)
}

/// A PTQ table's configurations: named plans under a grid of post-LN and softmax quantizers,
/// each calibrated once per seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PtqTableConfig {
    /// `(label, plan)`: `W4A4`, `plan FILE`, ...
    pub plans: Vec<(String, BitPlan)>,
    /// Post-LN x softmax quantizers ([`crate::ablation_grid`] for the ablation).
    pub grid: Vec<(PostLnMode, SoftmaxMode)>,
    /// Calibration seeds.
    pub seeds: Vec<u64>,
    /// Calibration images per seed.
    pub calib: usize,
    /// Where they are drawn from (`None`: the model's data set).
    pub calib_data: Option<PathBuf>,
}

/// The PTQ table of `model` (of `card`): full precision, then every plan x quantizer
/// configuration over the seeds, each quantized by `quantizer` ([`Calibrate`] for PTQ), all
/// evaluated in one pass over `data`. `progress` gets (stage, done, total).
pub fn ptq_table(
    model: &Model,
    card: &ModelCard,
    config: &PtqTableConfig,
    quantizer: &dyn Quantizer,
    data: EvalData,
    device: &Device,
    progress: impl FnMut(PtqStage, usize, usize) + Send,
) -> Result<PtqResults> {
    let sites = model.sites();
    for (_, plan) in &config.plans {
        plan.check_sites(sites.iter().map(|s| &s.id))?;
    }
    let variants: Vec<Variant> = config
        .plans
        .iter()
        .flat_map(|(label, plan)| {
            config.grid.iter().map(|&(post_ln, softmax)| Variant {
                label: label.clone(),
                plan: plan.clone(),
                config: PtqConfig {
                    post_ln,
                    softmax,
                    ..PtqConfig::default()
                },
            })
        })
        .collect();
    let seeded = config
        .seeds
        .iter()
        .map(|&seed| {
            let images = calibration_images(
                &card.data_spec(),
                config.calib_data.as_deref(),
                config.calib,
                seed,
                device,
            )?;
            Ok(SeededVariants {
                seed,
                images,
                variants: variants.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let calib_images = seeded.first().map_or(0, |s| s.images.dims()[0]);
    let describe = data.describe.clone();
    let name = &card.aliases[0];
    let result = compare_on(model, &seeded, quantizer, data, device, progress)?;
    let mut rows = vec![PtqRow::full_precision(format!("{name} FP32"), result.fp)];
    for (v, r) in variants.iter().zip(result.variants) {
        let modes = (v.config.post_ln, v.config.softmax);
        rows.push(PtqRow::quantized(format!("{name} {}", r.label), modes, r));
    }
    Ok(PtqResults {
        model: card.name.clone(),
        seeds: config.seeds.clone(),
        calib_images,
        eval_images: rows[0].seeds[0].metrics.images,
        data: describe,
        rows,
    })
}
