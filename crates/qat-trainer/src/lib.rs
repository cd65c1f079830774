//! # mixq-qat-trainer
//!
//! Training for mixq: [`FpTrainer`] trains the full-precision models mixq ships from scratch
//! (`cargo xtask train`), and [`QatTrainer`] does quantization-aware training for any
//! [`BitPlan`](mixq_core::BitPlan), uniform or mixed:
//!
//! * **LSQ quantizers** ([`LsqQuantizers`]): a learned step size per weight output channel and
//!   per activation tensor, straight-through rounding, gradient scale `1/sqrt(N·Qp)`, each
//!   initialised from the PTQ calibration of the same plan (steps and zero points). Attention
//!   probabilities keep PTQ's log-sqrt2 quantizer with a learned top level.
//! * **Knowledge distillation** from the full-precision model ([`distillation_loss`]):
//!   `alpha·T²·KL(teacher‖student)` on temperature-softened logits plus `(1−alpha)·CE`.
//! * **Two AdamW optimizers** (model parameters, step sizes), each with its own peak learning
//!   rate on the same warm-up + cosine schedule ([`cosine_with_warmup`]).
//! * **Resumable**: [`QatTrainer::save_checkpoint`] writes parameters, both optimizer states and
//!   the schedule position atomically; the data order of epoch `e` depends only on `(seed, e)`,
//!   so a run resumed from a checkpoint ends with bitwise the same weights as an uninterrupted
//!   one. [`QatTrainer::load_checkpoint`] rejects corrupt or mismatched files by key.
//!
//! [`reconstruct`] is the PTQ-time counterpart: block by block it learns the weights' rounding
//! (AdaRound) and the activation steps (LSQ, QDrop) against the FP block's output on a few
//! hundred images, leaving a plain quantized model on PTQ's grid ([`Reconstruct`] plugs it
//! into `mixq_ptq::ptq_table` as a `Quantizer`; `cargo xtask ptq --recon`).
//!
//! The student starts as the FP model with PTQ's post-LayerNorm reparameterization applied, so
//! before the first step it computes exactly the PTQ model; the teacher is the FP model itself.
//! The CLI is `cargo xtask qat`. Pose models train with [`train_pose`].
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use mixq_ptq::{PtqConfig, uniform_plan};
//! use mixq_qat_trainer::{ImageSet, QatConfig, QatTrainer};
//! use mixq_vit_models::{ModelCard, Network};
//!
//! let device = Device::flex();
//! let card = ModelCard::find("digits-deit")?;
//! let fp = card.arch.init(&device)?; // or trained weights
//! let calib = Tensor::<4>::random([8, 1, 8, 8], Distribution::Normal(0.0, 1.0), &device);
//! let plan = uniform_plan(&fp.sites(), 4, 4, 8)?; // W4A4
//! let config = QatConfig { epochs: 1, batch: 4, ..QatConfig::default() };
//! let mut qat = QatTrainer::new("digits-deit", fp, calib, &plan, &PtqConfig::default(), config)?;
//!
//! let train = ImageSet::new(vec![0.5; 8 * 64], [1, 8, 8], vec![3; 8])?;
//! let stats = qat.train_epoch(&train, &mut |step| println!("loss {:.3}", step.loss))?;
//! assert_eq!(stats.epoch, 1);
//! assert!(qat.finished());
//! let top1 = qat.evaluate(&train, 64)?.top1_pct();
//! println!("QAT top-1 {top1:.1} %");
//! # Ok::<(), mixq_core::Error>(())
//! ```

#![warn(missing_docs)]

pub mod checkpoint;
pub mod data;
pub mod fit;
pub mod fp;
pub mod loss;
pub mod lsq;
pub mod pose;
pub mod recon;
pub mod report;
pub mod schedule;
pub mod trainer;

pub use checkpoint::{CHECKPOINT_FILE, CHECKPOINT_FORMAT, plan_fingerprint};
pub use data::{Augment, ImageSet, TrainBatch, TrainingSplits, flip_horizontal, shift_image};
pub use fit::{EpochTrainer, FitConfig, FitEvent, FitOutcome, TrainingRun, fit};
pub use fp::{
    FP_CHECKPOINT_FORMAT, FpConfig, FpTrainer, RecipeOverrides, TrainingBench, bench_training,
    train_recipe,
};
pub use loss::distillation_loss;
pub use lsq::{
    LsqQuantizers, QuantRule, QuantSpec, grad_scale, log_fake_quant, lsq_fake_quant,
    lsq_grad_scale, round_ste,
};
pub use pose::{PoseTrainConfig, PoseTrainHistory, PoseTrainProgress, heatmap_loss, train_pose};
pub use recon::{
    BlockRecon, PtqMethod, ReconConfig, ReconLoss, ReconProgress, ReconReport, Reconstruct,
    Reconstruction, reconstruct,
};
pub use report::{PoseTrainResults, QatReportContext, QatResults, QatScores, TrainResults};
pub use schedule::{cosine_with_warmup, default_warmup};
pub use trainer::{EpochStats, QatConfig, QatModule, QatTrainer, StepStats, evaluate_with};
