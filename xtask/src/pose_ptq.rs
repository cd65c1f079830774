//! `cargo xtask ptq --model wtpose-*`: post-training quantization of a pose model, scored by
//! OKS AP on the held-out set.
//!
//! The quantizers are the classification models' (per-output-channel weights, per-tensor
//! activations, log-sqrt2 attention probabilities), applied through the site hook alone
//! (`mixq_ptq::quantize_hooked`), after BatchNorm is folded into the convolutions as a deployed
//! model would have it. `--mixed` measures every site alone at every candidate bit-width on
//! probe crops (damage: the heatmaps' squared error relative to the full-precision heatmaps'
//! energy), lets the allocator choose a plan per budget (preset `sensitivity`: WTPose has no LRP
//! path, so no contribution scores), and compares it with the uniform plan at that budget.

use mixq_core::{BitPlan, Error, Result, RunDir};
use mixq_ptq::pose::{PosePlans, PosePtqConfig, PosePtqRow, PoseStage, pose_ptq};
use mixq_vit_models::WtPoseConfig;

use crate::common::StageBars;
use crate::pose::{DataArgs, open_data};
use crate::ptq::PtqArgs;
use mixq_ptq::pose::skeleton_pictures;
use mixq_report::sensitivity_heat_map;

/// The plans `args` ask for.
fn plans(args: &PtqArgs) -> Result<PosePlans> {
    if args.mixed {
        return Ok(PosePlans::Mixed {
            probe: args.mixed_args.sweep.probe,
            probe_batch: args.mixed_args.sweep.sweep_batch,
            candidates: args.mixed_args.sweep.candidates.clone(),
            budget: args.mixed_args.budget.config(),
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
pub fn run(args: &PtqArgs) -> Result<()> {
    if args.ablation {
        return Err(Error::invalid(
            "--ablation",
            &args.model.model,
            "the post-LN x softmax ablation is for the classification models",
        ));
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
    let cfg = WtPoseConfig::variant(&args.model.model)?;
    let weights = args.model.weights.as_ref().ok_or_else(|| {
        Error::invalid(
            "--weights",
            "(none)",
            "pose models need a checkpoint: the model.safetensors of a `pose train` run",
        )
    })?;
    let device = args.model.device.device()?;
    let seed = args.model.seed;
    // Deployed pose models run with BatchNorm folded: quantize those weights.
    let model = cfg
        .init(&device)?
        .load_safetensors(weights)?
        .fold_batch_norm();
    let sites = model.sites();

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
    let mut bars = StageBars::default();
    let out = pose_ptq(
        &model,
        &data,
        data_args.sigma,
        &config,
        &device,
        |stage, d, t| {
            bars.update(stage.name(), d, t);
            if stage == PoseStage::Eval && d == t {
                bars.finish();
            }
        },
    )?;
    bars.finish();
    let (plans, rows, predictions, table) = (out.plans, out.rows, out.predictions, out.table);
    let (n_probe, flip) = (out.probe_crops, config.flip);

    let md = PosePtqRow::markdown(&rows);
    print!("\n{md}");

    let run = RunDir::create(
        &args.runs,
        if args.mixed {
            "ptq-pose-mixed"
        } else {
            "ptq-pose"
        },
    )?;
    for (i, (name, budget, plan)) in plans.iter().enumerate() {
        let file = format!(
            "plan-{i}-{}{}.toml",
            name.replace([' ', '/'], "-"),
            budget.map(|b| format!("-{b}")).unwrap_or_default()
        );
        run.write(&file, plan.to_toml()?.as_bytes())?;
    }
    let mut pictures = String::new();
    if let Some(table) = &table {
        table.save(run.file("sensitivity.toml"))?;
        sensitivity_heat_map(
            run.file("sensitivity.png"),
            table,
            &mixq_core::site_ids(&sites),
            &format!(
                "Sensitivity — {} (relative heatmap MSE, {n_probe} probe crops)",
                args.model.model
            ),
        )?;
        pictures += "![sensitivity](sensitivity.png)\n\n";
    }
    for (i, (row, pred)) in rows.iter().zip(&predictions).enumerate() {
        let file = format!("skeletons-{i}.png");
        skeleton_pictures(&data.val, pred, 8, &run.file(&file))?;
        pictures += &format!("{}: ![{}]({file})\n\n", row.name, row.name);
    }
    let json = mixq_core::to_json(
        &serde_json::json!({
            "model": args.model.model,
            "weights": weights,
            "seed": seed,
            "data": data.description,
            "calib_crops": args.calibration.calib,
            "probe_crops": n_probe,
            "flip_test": flip,
            "stats_order": mixq_datasets::OksStats::NAMES,
            "rows": rows,
        }),
        "results",
    )?;
    run.write("results.json", json.as_bytes())?;
    let report = format!(
        "# PTQ: {} (pose)\n\n{}; checkpoint {} (BatchNorm folded); calibration {} crops, \
         probe {n_probe} crops (disjoint, seed {seed}); held-out {} persons, flip test {}.\n\n\
         {md}\n{pictures}Reproduce:\n\n```\ncargo xtask ptq {}\n```\n",
        args.model.model,
        data.description,
        weights.display(),
        args.calibration.calib,
        out.held_out,
        if flip { "on" } else { "off" },
        crate::common::command_line()
    );
    run.write("report.md", report.as_bytes())?;
    let path = run.finish()?;
    println!("\nwrote {}", path.display());
    Ok(())
}
