//! `cargo xtask ptq --model wtpose-*`: post-training quantization of a pose model, scored by
//! OKS AP on the held-out set.
//!
//! The quantizers are the classification models' (per-output-channel weights, per-tensor
//! activations, log-sqrt2 attention probabilities), through WTPose's `Network` implementation
//! (`mixq_ptq::quantize`, or block reconstruction with `--recon`), after BatchNorm is folded
//! into the convolutions as a deployed model would have it. `--mixed` measures every site alone at every candidate bit-width on
//! probe crops (damage: the heatmaps' squared error relative to the full-precision heatmaps'
//! energy), lets the allocator choose a plan per budget (preset `sensitivity`: WTPose has no LRP
//! path, so no contribution scores), and compares it with the uniform plan at that budget.

use mixq_core::{BitPlan, Error, Result, RunDir};
use mixq_ptq::RankAgreement;
use mixq_ptq::pose::{PosePlans, PosePtqConfig, PosePtqRow, PoseStage, pose_ptq};
use mixq_vit_models::ModelCard;

use crate::common::StageBars;
use crate::pose::{DataArgs, open_data};
use crate::ptq::PtqArgs;

/// The plans `args` ask for.
fn plans(args: &PtqArgs) -> Result<PosePlans> {
    if args.mixed {
        return Ok(PosePlans::Mixed {
            probe: args.mixed_args.sweep.probe,
            probe_batch: args.mixed_args.sweep.sweep_batch,
            candidates: args.mixed_args.sweep.candidates.clone(),
            budget: args.mixed_args.budget.config(),
            lrp_preset: args.mixed_args.lrp_preset,
            block_cache: !args.mixed_args.sweep.no_block_cache,
        });
    }
    if let Some(path) = &args.plan {
        return Ok(PosePlans::Given {
            name: format!("plan {}", path.display()),
            plan: BitPlan::load(path)?,
        });
    }
    let (w_bits, a_bits) = args.single_bit_pair()?;
    Ok(PosePlans::Uniform { w_bits, a_bits })
}

/// `cargo xtask ptq --model wtpose-*`.
pub fn run(args: &PtqArgs, card: &ModelCard) -> Result<()> {
    if args.ablation {
        return Err(Error::invalid(
            "--ablation",
            &args.model.model,
            "the post-LN x softmax ablation is for the classification models",
        ));
    }
    if args.recon.recon {
        // Fails before the data and the calibration.
        args.recon.config().validate()?;
        if args.recon.recon_loss == "fisher" {
            return Err(Error::invalid(
                "--recon-loss",
                "fisher",
                "needs class logits; a pose model reconstructs with mse",
            ));
        }
    }
    if args.mixed && !matches!(args.mixed_args.sweep.baseline.as_str(), "fp" | "fp32") {
        return Err(Error::invalid(
            "--baseline",
            &args.mixed_args.sweep.baseline,
            "pose sensitivity is measured against full precision only (fp)",
        ));
    }
    if args.calibration.calib_data.is_some() {
        return Err(Error::invalid(
            "--calib-data",
            &args.model.model,
            "pose models calibrate on crops of --data's training set",
        ));
    }
    let device = args.model.device.device()?;
    let seed = args.model.seed;
    // Deployed pose models run with BatchNorm folded: quantize those weights.
    let model = card
        .load_pose(args.model.weights.as_deref(), &device)?
        .fold_batch_norm();
    let weights = args
        .model
        .weights
        .clone()
        .or_else(|| card.shipped_path())
        .unwrap_or_default();

    let data_args = DataArgs {
        data: args.eval_data.data.clone(),
        synthetic: args.synthetic,
        val_images: args.val_images,
        sigma: 2.0,
    };
    let data = open_data(&data_args, seed, &args.runs)?;
    let config = PosePtqConfig {
        model: args.model.model.clone(),
        seed,
        calib: args.calibration.calib,
        plans: plans(args)?,
        image_bits: args.bit_args.image_bits,
        batch: args.eval_data.batch,
        flip: !args.no_flip,
    };
    let bars = std::sync::Mutex::new(StageBars::default());
    // Pose models are reconstructed on their calibration crops.
    let progress = |p: &mixq_qat_trainer::ReconProgress| crate::ptq::recon_progress(&bars, p);
    let method = args.recon.method(None, &progress);
    let mut out = pose_ptq(
        &model,
        &data,
        data_args.sigma,
        &config,
        &method,
        &device,
        |stage, d, t| {
            let mut bars = bars.lock().expect("progress bars");
            let name = match stage {
                PoseStage::Calibrate if method.reconstructs() => "reconstruct",
                stage => stage.name(),
            };
            bars.update(name, d, t);
            if stage == PoseStage::Eval && d == t {
                bars.finish();
            }
        },
    )?;
    bars.lock().expect("progress bars").finish();
    for row in out.rows.iter_mut().skip(1) {
        row.name = method.label(&row.name);
    }
    print!("\n{}", PosePtqRow::markdown(&out.rows));
    let (agreement, candidates) = out.rank_agreement(seed);
    if !agreement.is_empty() {
        print!("\n{}", RankAgreement::markdown(&agreement, &candidates));
    }
    let run = RunDir::create(
        &args.runs,
        if args.mixed {
            "ptq-pose-mixed"
        } else {
            "ptq-pose"
        },
    )?;
    out.write_run(
        &run,
        &config,
        &data,
        &weights,
        &crate::common::command_line(),
    )?;
    crate::ptq::write_recon(&method.into_reports(), &run)?;
    let path = run.finish()?;
    println!("\nwrote {}", path.display());
    Ok(())
}
