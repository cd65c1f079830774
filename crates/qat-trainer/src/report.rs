//! What a training run leaves in its run folder: a QAT run's `results.json`, `curves.png` and
//! `report.md`, an FP run's `results.json`; written by the library so that a user driving
//! [`crate::QatTrainer`] or [`crate::FpTrainer`] gets the same files as `cargo xtask qat|train`.

use std::path::Path;

use burn::module::{Module, ModuleDisplay};
use mixq_core::{Result, RunDir};
use mixq_ptq::Metrics;
use mixq_ptq::mixed::plan_averages;
use mixq_report::{LineChart, Series, line_chart};
use mixq_vit_models::Network;
use serde::Serialize;

use crate::{EpochStats, FpConfig, FpTrainer, QatConfig, QatTrainer, TrainingSplits};

/// A finished QAT run: `results.json` is its serialised form.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QatResults {
    /// The model card's name.
    pub model: String,
    /// The plan's label (`W4A4`, `mixed sensitivity 3`, `plan <file>`).
    pub plan: String,
    /// The run's seed.
    pub seed: u64,
    /// Parameter-weighted average weight bits of the plan.
    pub avg_w_bits: f64,
    /// MAC-weighted average activation bits of the plan.
    pub avg_a_bits: f64,
    /// Training images.
    pub train_images: usize,
    /// Test images of the final figures.
    pub test_images: usize,
    /// Full precision's test top-1 %.
    pub fp_top1: f64,
    /// PTQ's test top-1 % (the starting point).
    pub ptq_top1: f64,
    /// QAT's test top-1 %.
    pub qat_top1: f64,
    /// QAT's test top-5 %.
    pub qat_top5: f64,
    /// QAT's test cross-entropy.
    pub qat_loss: f64,
    /// Mean seconds of an epoch's training steps.
    pub mean_epoch_seconds: f64,
    /// Every epoch.
    pub epochs: Vec<EpochStats>,
    /// The hyper-parameters.
    pub config: QatConfig,
    /// Fingerprint of the trained parameters.
    pub params_fingerprint: String,
    /// The checkpoint the run continued from.
    pub resumed_from: Option<String>,
}

/// What the report says besides the results.
#[derive(Clone, Debug, PartialEq)]
pub struct QatReportContext<'a> {
    /// The model's short name.
    pub alias: &'a str,
    /// Calibration images of the PTQ start.
    pub calib_images: usize,
    /// The data set's name.
    pub data: &'a str,
    /// The split the per-epoch top-1 was measured on (`val` or `test`).
    pub monitor: &'a str,
}

/// A QAT run's test-set figures: its two starting points and the trained model.
#[derive(Clone, Debug, PartialEq)]
pub struct QatScores {
    /// The full-precision teacher ([`QatTrainer::evaluate_fp`]).
    pub fp: Metrics,
    /// PTQ with the run's plan, before training ([`QatTrainer::evaluate_ptq`]).
    pub ptq: Metrics,
    /// The trained model ([`QatTrainer::evaluate`]).
    pub qat: Metrics,
}

impl QatResults {
    /// The results of `trainer`'s finished run on `splits` under the plan labelled `plan`;
    /// `resumed_from`: the checkpoint the run continued from.
    pub fn new<N: Network + Module + ModuleDisplay>(
        model: &str,
        plan: &str,
        trainer: &QatTrainer<N>,
        splits: &TrainingSplits,
        scores: &QatScores,
        resumed_from: Option<&Path>,
    ) -> Self {
        let (avg_w_bits, avg_a_bits) = plan_averages(trainer.plan(), &trainer.teacher().sites());
        let history = trainer.history().to_vec();
        Self {
            model: model.to_string(),
            plan: plan.to_string(),
            seed: trainer.config().seed,
            avg_w_bits,
            avg_a_bits,
            train_images: splits.train.len(),
            test_images: splits.test.len(),
            fp_top1: scores.fp.top1_pct(),
            ptq_top1: scores.ptq.top1_pct(),
            qat_top1: scores.qat.top1_pct(),
            qat_top5: scores.qat.top5_pct(),
            qat_loss: scores.qat.loss(),
            mean_epoch_seconds: Self::mean_seconds(&history),
            epochs: history,
            config: trainer.config().clone(),
            params_fingerprint: trainer.params_fingerprint(),
            resumed_from: resumed_from.map(|p| p.display().to_string()),
        }
    }

    /// The mean of the epochs' training seconds (0 without epochs).
    pub fn mean_seconds(epochs: &[EpochStats]) -> f64 {
        if epochs.is_empty() {
            0.0
        } else {
            epochs.iter().map(|e| e.seconds).sum::<f64>() / epochs.len() as f64
        }
    }

    /// The one-row summary table.
    pub fn markdown(&self, alias: &str) -> String {
        format!(
            "| model | plan | avg W bits | avg A bits | FP top-1 % | PTQ top-1 % | QAT top-1 % | epochs | s / epoch |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|\n\
             | {alias} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.1} |\n",
            self.plan,
            self.avg_w_bits,
            self.avg_a_bits,
            self.fp_top1,
            self.ptq_top1,
            self.qat_top1,
            self.config.epochs,
            self.mean_epoch_seconds,
        )
    }

    /// Writes the learning curves (`curves.png`, when an epoch ran), `results.json` and
    /// `report.md`, whose reproduce line is `command` (the `cargo xtask qat` arguments).
    pub fn write_run(&self, run: &RunDir, ctx: &QatReportContext, command: &str) -> Result<()> {
        let (alias, label, history) = (ctx.alias, &self.plan, &self.epochs);
        if !history.is_empty() {
            let epochs = |f: &dyn Fn(&EpochStats) -> Option<f64>| -> Vec<(f64, f64)> {
                history
                    .iter()
                    .filter_map(|e| f(e).map(|v| (e.epoch as f64, v)))
                    .collect()
            };
            let flat = |v: f64| vec![(1.0, v), (history.len() as f64, v)];
            line_chart(
                run.file("curves.png"),
                &LineChart {
                    title: format!("QAT learning curves — {alias}, {label}"),
                    x_label: "epoch".into(),
                    y_label: "train loss".into(),
                    y2_label: "top-1 %".into(),
                    series: vec![
                        Series::line("train loss", epochs(&|e| Some(e.train_loss))),
                        Series::line("train top-1", epochs(&|e| Some(e.train_top1))).on_right(),
                        Series::line(
                            format!("{} top-1", ctx.monitor),
                            epochs(&|e| e.monitor_top1),
                        )
                        .on_right(),
                        Series::line("FP test top-1", flat(self.fp_top1)).on_right(),
                        Series::line("PTQ test top-1", flat(self.ptq_top1)).on_right(),
                    ],
                    ..Default::default()
                },
            )?;
        }
        let json = mixq_core::to_json(self, "results")?;
        run.write("results.json", json.as_bytes())?;
        let config = &self.config;
        let report = format!(
            "# QAT: {alias} ({label})\n\nLSQ steps initialised from PTQ ({} calibration images, seed {}); \
             distillation from the FP model (alpha {}, T {}); AdamW lr {} (steps {}), warm-up + cosine; \
             {} training images, {} test images ({}).\n\n{}\n\
             ![learning curves](curves.png)\n\nReproduce:\n\n```\ncargo xtask qat {command}\n```\n",
            ctx.calib_images,
            self.seed,
            config.kd_alpha,
            config.kd_temperature,
            config.lr,
            config.step_lr,
            self.train_images,
            self.test_images,
            ctx.data,
            self.markdown(alias),
        );
        run.write("report.md", report.as_bytes())
    }
}

/// A finished full-precision training run: `results.json` is its serialised form.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainResults {
    /// The model card's name.
    pub model: String,
    /// The data set's name.
    pub data: String,
    /// The run's seed.
    pub seed: u64,
    /// The recipe.
    pub config: FpConfig,
    /// Training images.
    pub train_images: usize,
    /// Validation images (0 without a validation split).
    pub val_images: usize,
    /// Test images of the final figures.
    pub test_images: usize,
    /// Test top-1 %.
    pub test_top1: f64,
    /// Test top-5 %.
    pub test_top5: f64,
    /// Test cross-entropy.
    pub test_loss: f64,
    /// Seconds of all epochs' training steps.
    pub train_seconds: f64,
    /// The burn device it trained on.
    pub device: String,
    /// Every epoch.
    pub epochs: Vec<EpochStats>,
    /// Where the weights were written.
    pub checkpoint: String,
}

impl TrainResults {
    /// The results of `trainer`'s finished run on `data` (the set's name) and `splits`: `test`
    /// scores the test split, `device` names the burn device, `checkpoint` is where the weights
    /// went.
    pub fn new(
        model: &str,
        data: &str,
        trainer: &FpTrainer,
        splits: &TrainingSplits,
        test: &Metrics,
        device: &str,
        checkpoint: &Path,
    ) -> Self {
        let history = trainer.history().to_vec();
        Self {
            model: model.to_string(),
            data: data.to_string(),
            seed: trainer.config().seed,
            config: trainer.config().clone(),
            train_images: splits.train.len(),
            val_images: splits.val.as_ref().map_or(0, |v| v.len()),
            test_images: test.images,
            test_top1: test.top1_pct(),
            test_top5: test.top5_pct(),
            test_loss: test.loss(),
            train_seconds: history.iter().map(|e| e.seconds).sum(),
            device: device.to_string(),
            epochs: history,
            checkpoint: checkpoint.display().to_string(),
        }
    }

    /// The one-row summary table.
    pub fn markdown(&self, alias: &str) -> String {
        format!(
            "| model | data | seed | epochs | train s | test images | test top-1 % | test CE | checkpoint |\n\
             |---|---|---|---|---|---|---|---|---|\n\
             | {alias} | {} | {} | {} | {:.0} | {} | {:.2} | {:.4} | {} |\n",
            self.data,
            self.seed,
            self.config.epochs,
            self.train_seconds,
            self.test_images,
            self.test_top1,
            self.test_loss,
            self.checkpoint,
        )
    }
}

/// A finished pose training run: `results.json` is its serialised form.
#[derive(Debug, Serialize)]
pub struct PoseTrainResults<'a> {
    /// The WTPose variant.
    pub model: &'a str,
    /// Its configuration.
    pub config: &'a mixq_vit_models::WtPoseConfig,
    /// Parameters.
    pub params: u64,
    /// GFLOPs as the paper counts them.
    pub gflops: f64,
    /// The data, in words.
    pub data: &'a str,
    /// Person crops trained on.
    pub train_persons: usize,
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// The run's seed.
    pub seed: u64,
    /// The checkpoint training started from (`None`: random weights).
    pub init: Option<&'a std::path::Path>,
    /// Wall seconds of each epoch.
    pub epoch_seconds: Vec<f64>,
    /// Mean heatmap loss of each epoch.
    pub epoch_loss: Vec<f64>,
    /// OKS AP on the held-out persons.
    pub eval: &'a mixq_ptq::pose::PoseEval,
}

impl PoseTrainResults<'_> {
    /// `results.md`: what was trained on what, then the OKS AP table.
    pub fn markdown(&self, held_out: usize) -> String {
        let mean_epoch =
            self.epoch_seconds.iter().sum::<f64>() / self.epoch_seconds.len().max(1) as f64;
        let mut md = format!(
            "# pose train {}\n\n{}\n\ntrain persons {}, held-out persons {held_out}, {} epochs, batch {}, \
             {mean_epoch:.1} s/epoch (mean), params {:.2} M, {:.3} GFLOPs\n\n",
            self.model,
            self.data,
            self.train_persons,
            self.epochs,
            self.batch,
            self.params as f64 / 1e6,
            self.gflops,
        );
        md.push_str(&mixq_ptq::pose::PoseEval::markdown(&[(
            self.model.to_string(),
            self.eval,
        )]));
        md
    }
}
