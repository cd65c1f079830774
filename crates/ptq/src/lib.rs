//! # mixq-ptq
//!
//! Post-training quantization of the mixq models: calibration on a few images, RepQ-ViT's
//! reparameterization of post-LayerNorm activations (and our clipped variant), per-channel
//! weight quantization, log-sqrt2 attention probabilities, and the metrics a PTQ table reports.
//! The CLI (`cargo xtask ptq`) is a thin layer over this crate.
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use mixq_ptq::{PtqConfig, quantize, uniform_plan};
//! use mixq_vit_models::{ModelCard, Network};
//!
//! let device = Device::flex();
//! let card = ModelCard::find("digits-deit")?;
//! let model = card.arch.init(&device)?; // or load trained weights
//! let calib = Tensor::<4>::random([8, 1, 8, 8], Distribution::Normal(0.0, 1.0), &device);
//! let plan = uniform_plan(&model.sites(), 4, 4, 8)?; // W4A4, image at 8 bits
//! let q = quantize(model, calib.clone(), &plan, &PtqConfig::default())?;
//! assert_eq!(q.forward(calib).dims(), [8, 10]);
//! # Ok::<(), mixq_core::Error>(())
//! ```

#![warn(missing_docs)]

pub mod bench;
pub mod calibrate;
pub mod config;
pub mod eval;
pub mod hooked;
pub mod mixed;
pub mod pose;
pub mod record;
pub mod reparam;
pub mod run_report;
pub mod state;
pub mod sweep;
pub mod table;

pub use calibrate::{
    HookQuantizers, IsolatedQuantizers, PostLnChannels, QuantizedModel, calibration_images,
    post_ln_channels, quantize, quantize_hooked, quantize_isolated, reparameterize,
};
pub use config::{PostLnMode, PtqConfig, SoftmaxMode, uniform_plan};
pub use eval::{
    Comparison, Evaluation, FeatureAgreement, LabelFreeSpread, Metrics, SaliencyAgreement,
    SaliencySpread, Spread, compare, evaluate_data, host_logits, no_image_evaluated,
};
pub use hooked::sensitivity_hooked;
pub use mixq_sensitivity::relative_mse;
pub use record::{PtqResults, PtqRow, PtqRun, ablation_grid};
pub use run_report::{LrpRun, MixedReport, RankAgreement};
pub use state::{ActQuantizer, QuantState};
pub use sweep::{Baseline, SweepOptions, sensitivity_sweep, sweep_fingerprint};
pub use table::{
    Calibrate, PtqStage, PtqTableConfig, QuantizeJob, Quantizer, SeedMetrics, SeededVariants,
    Variant, VariantResult, VariantTable, compare_on, compare_seeded, compare_variants, ptq_table,
    run_jobs,
};
