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

use burn::tensor::{Device, Tensor};
use mixq_allocator::Criterion;
use mixq_core::{BitPlan, Error, Result, RunDir, SensitivityPoint, SensitivityTable, SiteInfo};
use mixq_datasets::TopDownDataset;
use mixq_ptq::{PtqConfig, quantize_hooked, uniform_plan};
use mixq_sensitivity::OnlySite;
use mixq_vit_models::{NoHook, SiteHook, WtPose, WtPoseConfig};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::common::progress;
use crate::mixed::sensitivity_png;
use crate::pose::{
    DataArgs, EvalResult, dataset, evaluate, images_tensor, open_data, skeleton_pictures, topdown,
};
use crate::ptq::PtqArgs;
use mixq_ptq::mixed::{BudgetConfig, budget_plans, plan_averages};

/// Crops `idx` of `ds` as one image tensor (no augmentation).
fn crops(ds: &TopDownDataset, idx: &[usize], device: &Device) -> Result<Tensor<4>> {
    let b = ds
        .batch(idx, None, 0)
        .map_err(|e| Error::invalid("data", "<batch>", e.to_string()))?;
    Ok(images_tensor(&b, device))
}

/// Heatmaps of every probe batch through `hook`, flattened.
fn heatmaps(model: &WtPose, batches: &[Tensor<4>], hook: &dyn SiteHook) -> Vec<f32> {
    batches
        .iter()
        .flat_map(|x| {
            model
                .forward_with(x.clone(), hook)
                .into_data()
                .try_into_vec::<f32>()
                .unwrap_or_default()
        })
        .collect()
}

/// `sum (q - r)^2 / sum r^2`: the quantized heatmaps' error relative to the full-precision
/// heatmaps' energy (scale-free, so budgets mean the same on any checkpoint).
fn relative_mse(reference: &[f32], quantized: &[f32]) -> Result<f64> {
    if reference.len() != quantized.len() || reference.is_empty() {
        return Err(Error::invalid(
            "heatmaps",
            quantized.len(),
            format!("expected {} values", reference.len()),
        ));
    }
    let (mut err, mut energy) = (0.0f64, 0.0f64);
    for (&r, &q) in reference.iter().zip(quantized) {
        err += ((q - r) as f64).powi(2);
        energy += (r as f64).powi(2);
    }
    Ok(err / energy.max(f64::MIN_POSITIVE))
}

/// Every site alone at every candidate, the others in full precision.
fn sensitivity(
    model: &WtPose,
    sites: &[SiteInfo],
    calib: &Tensor<4>,
    probe: &[Tensor<4>],
    args: &PtqArgs,
) -> Result<SensitivityTable> {
    let candidates = args.mixed_args.sweep.candidates()?;
    let reference = heatmaps(model, probe, &NoHook);
    let mut table = SensitivityTable {
        metric: "heatmap-rel-mse".into(),
        ..Default::default()
    };
    let bar = progress(candidates.len() * sites.len(), "sensitivity");
    for bits in &candidates {
        let plan = uniform_plan(sites, bits.w_bits.get(), bits.a_bits.get(), args.image_bits)?;
        let isolated = quantize_hooked(sites, &plan, &PtqConfig::default(), true, |h| {
            let _ = model.forward_with(calib.clone(), h);
        })?;
        for site in sites {
            let hook = OnlySite {
                site: &site.id,
                quantized: &isolated,
                baseline: &NoHook,
            };
            let damage = relative_mse(&reference, &heatmaps(model, probe, &hook))?;
            table
                .sites
                .entry(site.id.clone())
                .or_default()
                .push(SensitivityPoint {
                    bits: *bits,
                    damage,
                });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(table)
}

/// `(name, budget, plan)` per row: `--plan`, uniform bits, or (with `--mixed`) the uniform plan
/// and the allocator's plan at every budget.
fn plans(
    sites: &[SiteInfo],
    table: Option<&SensitivityTable>,
    args: &PtqArgs,
) -> Result<Vec<(String, Option<f64>, BitPlan)>> {
    let Some(table) = table else {
        if let Some(path) = &args.plan {
            let plan = BitPlan::load(path)?;
            plan.check_sites(sites.iter().map(|s| &s.id))?;
            return Ok(vec![(format!("plan {}", path.display()), None, plan)]);
        }
        let (w, a) = args.single_bit_pair()?;
        return Ok(vec![(
            format!("W{w}A{a}"),
            None,
            uniform_plan(sites, w, a, args.image_bits)?,
        )]);
    };
    let budget = args.mixed_args.budget.config();
    let candidates = args.mixed_args.sweep.candidates()?;
    let budget = BudgetConfig {
        criteria: vec![Criterion::Sensitivity],
        ..budget
    };
    let out: Vec<_> = budget_plans(
        sites,
        None,
        table,
        &candidates,
        &budget,
        args.image_bits,
        None,
        true,
    )?
    .into_iter()
    .map(|p| (p.name, Some(p.avg_bits), p.plan))
    .collect();
    Ok(out)
}

#[derive(Serialize)]
struct Row {
    name: String,
    budget: Option<f64>,
    avg_w_bits: f64,
    avg_a_bits: f64,
    /// Bytes of the quantized weights (linear/conv sites; biases and norms not counted).
    weight_bytes: f64,
    eval: EvalResult,
}

fn weight_bytes(sites: &[SiteInfo], plan: Option<&BitPlan>) -> f64 {
    sites
        .iter()
        .map(|s| {
            let bits = plan
                .and_then(|p| p.sites.get(&s.id))
                .map_or(32.0, |b| b.w_bits.get() as f64);
            s.params as f64 * bits / 8.0
        })
        .sum()
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
    if args.calib_data.is_some() {
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
        data: args.data.clone(),
        synthetic: args.synthetic,
        val_images: args.val_images,
        sigma: 2.0,
    };
    let data = open_data(&data_args, seed, &args.runs.join("ptq-pose"))?;
    let td = topdown(&cfg, data_args.sigma);
    let train_set = dataset(&data.train, &td)?;
    let val_set = dataset(&data.val, &td)?;

    // Calibration and probe crops: disjoint, from a seeded order of the training crops.
    let n_probe = if args.mixed {
        args.mixed_args.sweep.probe
    } else {
        0
    };
    if args.calib == 0 {
        return Err(Error::invalid("--calib", 0, "must be at least 1"));
    }
    if args.mixed && n_probe == 0 {
        return Err(Error::invalid("--probe", 0, "must be at least 1"));
    }
    if args.calib + n_probe > train_set.len() {
        return Err(Error::invalid(
            "--calib",
            args.calib,
            format!(
                "calibration ({}) + probe ({n_probe}) crops exceed the {} training crops",
                args.calib,
                train_set.len()
            ),
        ));
    }
    let mut order: Vec<usize> = (0..train_set.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let calib = crops(&train_set, &order[..args.calib], &device)?;
    let probe: Vec<Tensor<4>> = order[args.calib..args.calib + n_probe]
        .chunks(args.mixed_args.sweep.sweep_batch.max(1))
        .map(|idx| crops(&train_set, idx, &device))
        .collect::<Result<_>>()?;

    let table = if args.mixed {
        Some(sensitivity(&model, &sites, &calib, &probe, args)?)
    } else {
        None
    };
    let mut plans = plans(&sites, table.as_ref(), args)?;
    for (_, _, plan) in &mut plans {
        plan.meta.insert("model".into(), args.model.model.clone());
        plan.meta.insert("seed".into(), seed.to_string());
    }

    // PTQ with every plan, then the AP of each on the held-out set.
    let bar = progress(plans.len(), "calibrate");
    let mut quantized = Vec::new();
    for (_, _, plan) in &plans {
        quantized.push(quantize_hooked(
            &sites,
            plan,
            &PtqConfig::default(),
            false,
            |h| {
                let _ = model.forward_with(calib.clone(), h);
            },
        )?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let flip = !args.no_flip;
    let batch = args.batch.max(1);
    let (fp, fp_pred) = evaluate(&model, &NoHook, &val_set, &data.val.0, batch, flip, &device)?;
    let mut rows = vec![Row {
        name: format!("{} FP32", args.model.model),
        budget: None,
        avg_w_bits: 32.0,
        avg_a_bits: 32.0,
        weight_bytes: weight_bytes(&sites, None),
        eval: fp,
    }];
    let mut predictions = vec![fp_pred];
    for ((name, budget, plan), q) in plans.iter().zip(&quantized) {
        let (result, pred) = evaluate(&model, q, &val_set, &data.val.0, batch, flip, &device)?;
        let (w, a) = plan_averages(plan, &sites);
        rows.push(Row {
            name: name.clone(),
            budget: *budget,
            avg_w_bits: w,
            avg_a_bits: a,
            weight_bytes: weight_bytes(&sites, Some(plan)),
            eval: result,
        });
        predictions.push(pred);
    }

    let fp_ap = rows[0].eval.stats[0];
    let mut md = String::from(
        "| plan | budget (avg bits) | avg W bits | avg A bits | weights (KB) | AP | AP .5 | AP .75 | AR | ΔAP vs FP |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        let s = &r.eval.stats;
        md += &format!(
            "| {} | {} | {:.2} | {:.2} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} | {:+.3} |\n",
            r.name,
            r.budget.map_or("-".into(), |b| b.to_string()),
            r.avg_w_bits,
            r.avg_a_bits,
            r.weight_bytes / 1e3,
            s[0],
            s[1],
            s[2],
            s[5],
            s[0] - fp_ap,
        );
    }
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
        sensitivity_png(
            &run.file("sensitivity.png"),
            table,
            &sites,
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
            "calib_crops": args.calib,
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
        args.calib,
        val_set.len(),
        if flip { "on" } else { "off" },
        std::env::args().skip(2).collect::<Vec<_>>().join(" ")
    );
    run.write("report.md", report.as_bytes())?;
    let path = run.finish()?;
    println!("\nwrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_mse_is_scale_free_and_checks_lengths() {
        let r = [1.0, -2.0, 2.0];
        assert_eq!(relative_mse(&r, &r).unwrap(), 0.0);
        // error energy 1 over reference energy 9
        assert!((relative_mse(&r, &[2.0, -2.0, 2.0]).unwrap() - 1.0 / 9.0).abs() < 1e-12);
        let r10: Vec<f32> = r.iter().map(|v| v * 10.0).collect();
        assert!((relative_mse(&r10, &[20.0, -20.0, 20.0]).unwrap() - 1.0 / 9.0).abs() < 1e-12);
        assert!(relative_mse(&r, &[1.0]).is_err());
    }

    #[test]
    fn weight_bytes_counts_bits_per_site() {
        let sites = WtPoseConfig::tiny().sites();
        let fp = weight_bytes(&sites, None);
        let w4 = weight_bytes(&sites, Some(&uniform_plan(&sites, 4, 8, 8).unwrap()));
        assert!((fp / w4 - 8.0).abs() < 1e-9);
    }
}
