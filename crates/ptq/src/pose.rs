//! Pose models as library calls: OKS AP evaluation of a WTPose model (full precision or through
//! quantizers), the per-site sensitivity sweep on heatmaps, and post-training quantization of a
//! pose model with one plan, uniform bits, or the allocator's plan at every budget.
//!
//! Evaluation follows HRNet/mmpose: ground-truth person boxes, heatmap argmax with the
//! quarter-pixel shift toward the higher neighbour, flip test (flipped heatmaps mirrored,
//! left/right swapped, shifted one pixel), instance rescoring, OKS-NMS at 0.9, and pycocotools'
//! OKS AP. The quantizers are the classification models' (per-output-channel weights,
//! per-tensor activations, log-sqrt2 attention probabilities) through WTPose's
//! [`Network`] implementation ([`quantize`](crate::quantize())); quantize a model with BatchNorm folded, as it is
//! deployed.

use std::time::Instant;

use burn::tensor::{Device, Tensor};
use mixq_core::{BitPlan, ContributionScores, Error, Result, SensitivityTable, SiteBits, SiteInfo};
use mixq_datasets::pose_transform::{decode_heatmaps, flip_heatmaps_back};
use mixq_datasets::{
    CocoKeypoints, PoseData, PoseMeta, TopDownDataset, evaluate_keypoints, keypoint_results,
};
use mixq_vit_models::{
    ExplainOptions, Network, NoHook, SiteHook, Target, WtPose, contribution_scores,
    pose_batch_tensor,
};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::mixed::{BudgetConfig, budget_plans, plan_averages};
use crate::sweep::{Baseline, SweepOptions, sensitivity_sweep};
use crate::{PostLnMode, PtqConfig, Quantizer, Variant, uniform_plan};
use mixq_sensitivity::{Metric, Probe, Shard, SweepCache, to_table};

/// Per crop: its geometry and `[x, y, score]` per keypoint in image pixels.
pub type PosePredictions = Vec<(PoseMeta, Vec<[f64; 3]>)>;

/// OKS AP of one model on one keypoint set.
#[derive(Clone, Debug, Serialize)]
pub struct PoseEval {
    /// Person crops scored.
    pub persons: usize,
    /// Images they come from.
    pub images: usize,
    /// Whether flipped heatmaps were averaged in.
    pub flip_test: bool,
    /// Wall time of the evaluation.
    pub seconds: f64,
    /// AP, AP50, AP75, AP(M), AP(L), AR, AR50, AR75, AR(M), AR(L).
    pub stats: [f64; 10],
}

impl PoseEval {
    /// `(name, evaluation)` rows as a markdown table of the ten OKS figures.
    pub fn markdown(rows: &[(String, &PoseEval)]) -> String {
        let mut s = String::from("| model | flip | ");
        s.push_str(&mixq_datasets::OksStats::NAMES.join(" | "));
        s.push_str(" |\n|---|---|");
        s.push_str(&"---:|".repeat(10));
        s.push('\n');
        for (name, r) in rows {
            s.push_str(&format!(
                "| {name} | {} |",
                if r.flip_test { "yes" } else { "no" }
            ));
            for v in r.stats {
                s.push_str(&format!(" {v:.3} |"));
            }
            s.push('\n');
        }
        s
    }

    /// `results.md` of a scored checkpoint: model, data, checkpoint and time, then the table.
    pub fn report_markdown(&self, model: &str, data: &str, checkpoint: &std::path::Path) -> String {
        format!(
            "# pose eval {model}\n\n{data}; checkpoint {}; {:.1} s\n\n{}",
            checkpoint.display(),
            self.seconds,
            Self::markdown(&[(model.to_string(), self)])
        )
    }
}

/// Writes a scored pose model's run folder `dir` (`pose train`, `pose eval`): `results.json`
/// (`results`), `results.md` (`markdown`) and `skeletons.png`, the first eight held-out crops
/// of `val` with their predicted skeletons.
pub fn write_pose_run(
    dir: &std::path::Path,
    results: &impl Serialize,
    markdown: &str,
    val: &(CocoKeypoints, std::path::PathBuf),
    predictions: &PosePredictions,
) -> Result<()> {
    skeleton_pictures(val, predictions, 8, &dir.join("skeletons.png"))?;
    let json = mixq_core::to_json(results, "report")?;
    mixq_core::write_atomic(dir.join("results.json"), json.as_bytes())?;
    mixq_core::write_atomic(dir.join("results.md"), markdown.as_bytes())
}

fn host_heatmaps(x: Tensor<4>) -> Result<Vec<f32>> {
    x.into_data()
        .try_into_vec::<f32>()
        .map_err(|e| Error::invalid("heatmaps", "<tensor>", format!("{e:?}")))
}

/// Crops `idx` of `ds` as one image tensor (no augmentation).
pub fn crops(ds: &TopDownDataset, idx: &[usize], device: &Device) -> Result<Tensor<4>> {
    let b = ds
        .batch(idx, None, 0)
        .map_err(|e| Error::invalid("data", "<batch>", e.to_string()))?;
    Ok(pose_batch_tensor(&b, device))
}

/// Predicts every crop of `ds` (flip test optional) through `hook` ([`NoHook`] for full
/// precision, quantizers for a quantized model) and scores it against `coco`; `progress` gets
/// (batches done, batches in all).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_pose(
    model: &WtPose,
    hook: &dyn SiteHook,
    ds: &TopDownDataset,
    coco: &CocoKeypoints,
    batch: usize,
    flip: bool,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<(PoseEval, PosePredictions)> {
    let start = Instant::now();
    let td = ds.config().clone();
    let k = model.config.num_keypoints;
    let (hw, hh) = (td.heatmap_w, td.heatmap_h);
    let plane = k * hw * hh;
    let idx: Vec<usize> = (0..ds.len()).collect();
    let mut predictions = Vec::with_capacity(ds.len());
    let total = ds.len().div_ceil(batch);
    for (done, chunk) in idx.chunks(batch).enumerate() {
        let b = ds
            .batch(chunk, None, 0)
            .map_err(|e| Error::invalid("data", "<batch>", e.to_string()))?;
        let x = pose_batch_tensor(&b, device);
        let mut hm = host_heatmaps(model.heatmaps_with(x.clone(), hook))?;
        if flip {
            let hf = host_heatmaps(model.heatmaps_with(x.flip([3]), hook))?;
            for i in 0..chunk.len() {
                let back = flip_heatmaps_back(&hf[i * plane..(i + 1) * plane], k, (hw, hh), true);
                for (a, f) in hm[i * plane..(i + 1) * plane].iter_mut().zip(back) {
                    *a = 0.5 * (*a + f);
                }
            }
        }
        for (i, meta) in b.metas.into_iter().enumerate() {
            let kps = decode_heatmaps(
                &hm[i * plane..(i + 1) * plane],
                k,
                (hw, hh),
                meta.center,
                meta.scale,
            );
            predictions.push((meta, kps));
        }
        progress(done + 1, total);
    }
    let results = keypoint_results(&predictions, 0.2, Some(0.9));
    let stats = evaluate_keypoints(coco, &results)
        .map_err(|e| Error::invalid("evaluation", "<results>", e.to_string()))?;
    Ok((
        PoseEval {
            persons: ds.len(),
            images: coco.images.len(),
            flip_test: flip,
            seconds: start.elapsed().as_secs_f64(),
            stats: stats.to_array(),
        },
        predictions,
    ))
}

/// Every site alone at every candidate, the others in full precision, through the sweep of
/// every [`Network`] ([`sensitivity_sweep`], in memory; with `use_cache`, each site reruns from
/// its block): damage [`Metric::RelMse`] of the heatmaps on the probe crops (their labels
/// unused). `progress` gets (points done, points in all).
pub fn pose_sensitivity(
    model: &WtPose,
    calib: &Tensor<4>,
    probe: &Probe,
    candidates: &[SiteBits],
    image_bits: u8,
    use_cache: bool,
    progress: impl FnMut(usize, usize),
) -> Result<SensitivityTable> {
    let options = SweepOptions {
        candidates: candidates.to_vec(),
        baseline: Baseline::FullPrecision,
        image_bits,
        use_cache,
        shard: Shard::WHOLE,
    };
    let records = sensitivity_sweep(
        model,
        calib,
        probe,
        &pose_ptq_config(),
        &options,
        &mut SweepCache::in_memory(),
        progress,
    )?;
    Ok(to_table(&records, Metric::RelMse, Default::default()))
}

/// Pose PTQ's quantizer settings: post-LN inputs per tensor (RepQ-ViT's fold is not measured
/// on pose models yet), the rest as for classifiers.
fn pose_ptq_config() -> PtqConfig {
    PtqConfig {
        post_ln: PostLnMode::Uniform,
        ..PtqConfig::default()
    }
}

/// Bytes of the quantized weights (linear/conv sites; biases and norms not counted); `None`:
/// 32-bit floats.
pub fn weight_bytes(sites: &[SiteInfo], plan: Option<&BitPlan>) -> f64 {
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

/// Which plans pose PTQ quantizes with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PosePlans {
    /// A plan as it is, shown under `name`.
    Given {
        /// The row's name.
        name: String,
        /// Bits per site.
        plan: BitPlan,
    },
    /// The same bits at every site.
    Uniform {
        /// Weight bits.
        w_bits: u8,
        /// Activation bits.
        a_bits: u8,
    },
    /// Every site measured alone at every candidate on probe crops and, for the `lrp` and
    /// `mix` criteria, LRP contribution scores on the calibration crops (each crop's brightest
    /// heatmap pixel explained); then, at every budget, the uniform plan within it and the
    /// allocator's plan for each of `budget.criteria`.
    Mixed {
        /// Probe crops, disjoint from the calibration crops.
        probe: usize,
        /// Batch size of the sweep's forward passes.
        probe_batch: usize,
        /// Candidate bit-widths: `2,3,4,6,8` or pairs like `4/8`.
        candidates: String,
        /// Budgets.
        budget: BudgetConfig,
        /// LRP rules for the contribution scores.
        #[serde(default)]
        lrp_preset: mixq_lrp::Preset,
        /// Rerun each site from its block with the probe crops' boundaries cached (the same
        /// numbers; memory: every boundary of every probe crop).
        block_cache: bool,
    },
}

/// Post-training quantization of a pose model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PosePtqConfig {
    /// The model's name, recorded in the plans.
    pub model: String,
    /// Seed of the calibration (and probe) crop order.
    pub seed: u64,
    /// Calibration crops, drawn from the training set.
    pub calib: usize,
    /// The plans.
    pub plans: PosePlans,
    /// Bits of the image input.
    pub image_bits: u8,
    /// Batch size of the evaluation.
    pub batch: usize,
    /// Average flipped heatmaps in when scoring.
    pub flip: bool,
}

/// Which step a progress report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoseStage {
    /// LRP contribution scores (calibration crops).
    Lrp,
    /// The sensitivity sweep (points).
    Sensitivity,
    /// Calibration of each plan (plans).
    Calibrate,
    /// Scoring the held-out set (batches, once per model).
    Eval,
}

impl PoseStage {
    /// How progress bars name the stage.
    pub fn name(self) -> &'static str {
        match self {
            PoseStage::Lrp => "lrp",
            PoseStage::Sensitivity => "sensitivity",
            PoseStage::Calibrate => "calibrate",
            PoseStage::Eval => "eval",
        }
    }
}

/// One quantized (or the full-precision) model's row.
#[derive(Clone, Debug, Serialize)]
pub struct PosePtqRow {
    /// `<model> FP32`, `WbAb`, the plan's name, `uniform WbAb` or `mixed sensitivity`.
    pub name: String,
    /// The average-bits budget the plan was made for.
    pub budget: Option<f64>,
    /// Parameter-weighted average weight bits.
    pub avg_w_bits: f64,
    /// MAC-weighted average activation bits.
    pub avg_a_bits: f64,
    /// Bytes of the quantized weights (linear/conv sites; biases and norms not counted).
    pub weight_bytes: f64,
    /// OKS AP on the held-out set.
    pub eval: PoseEval,
}

impl PosePtqRow {
    /// `rows` (full precision first) as a markdown table with AP, AP .5, AP .75, AR and the AP
    /// lost against the first row.
    pub fn markdown(rows: &[PosePtqRow]) -> String {
        let fp_ap = rows.first().map_or(0.0, |r| r.eval.stats[0]);
        let mut md = String::from(
            "| plan | budget (avg bits) | avg W bits | avg A bits | weights (KB) | AP | AP .5 | AP .75 | AR | ΔAP vs FP |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in rows {
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
        md
    }
}

/// What [`pose_ptq`] produces.
pub struct PosePtq {
    /// `(name, budget, plan)` in the order of `rows[1..]`.
    pub plans: Vec<(String, Option<f64>, BitPlan)>,
    /// Full precision first, then one row per plan.
    pub rows: Vec<PosePtqRow>,
    /// The predictions behind each row.
    pub predictions: Vec<PosePredictions>,
    /// The sensitivity table (mixed plans only).
    pub table: Option<SensitivityTable>,
    /// LRP contribution scores (mixed plans with the `lrp` or `mix` criterion only).
    pub scores: Option<ContributionScores>,
    /// Probe crops used (0 without a sweep).
    pub probe_crops: usize,
    /// Held-out person crops scored.
    pub held_out: usize,
    /// The model's sites, in forward order (the sensitivity map's rows).
    pub sites: Vec<SiteInfo>,
}

/// Calibration and probe crops (disjoint, from a seeded order of the training crops), the
/// plans, each quantized by `quantizer` ([`Calibrate`](crate::Calibrate), or block
/// reconstruction), and the OKS AP of full precision and of every plan on the held-out set.
/// `model` should have BatchNorm folded; `progress` gets (stage, done, total).
#[allow(clippy::too_many_arguments)]
pub fn pose_ptq(
    model: &WtPose,
    data: &PoseData,
    sigma: f64,
    config: &PosePtqConfig,
    quantizer: &dyn Quantizer<WtPose>,
    device: &Device,
    mut progress: impl FnMut(PoseStage, usize, usize),
) -> Result<PosePtq> {
    let sites = model.sites();
    let td = model.config.topdown(sigma);
    let train_set = mixq_datasets::topdown_dataset(&data.train, &td)?;
    let val_set = mixq_datasets::topdown_dataset(&data.val, &td)?;
    let (n_probe, probe_batch) = match &config.plans {
        PosePlans::Mixed {
            probe, probe_batch, ..
        } => (*probe, *probe_batch),
        _ => (0, 1),
    };
    if config.calib == 0 {
        return Err(Error::invalid("--calib", 0, "must be at least 1"));
    }
    if matches!(config.plans, PosePlans::Mixed { .. }) && n_probe == 0 {
        return Err(Error::invalid("--probe", 0, "must be at least 1"));
    }
    if config.calib + n_probe > train_set.len() {
        return Err(Error::invalid(
            "--calib",
            config.calib,
            format!(
                "calibration ({}) + probe ({n_probe}) crops exceed the {} training crops",
                config.calib,
                train_set.len()
            ),
        ));
    }
    let mut order: Vec<usize> = (0..train_set.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(config.seed));
    let calib = crops(&train_set, &order[..config.calib], device)?;

    let (mut plans, table, scores) = match &config.plans {
        PosePlans::Given { name, plan } => {
            plan.check_sites(sites.iter().map(|s| &s.id))?;
            (vec![(name.clone(), None, plan.clone())], None, None)
        }
        PosePlans::Uniform { w_bits, a_bits } => (
            vec![(
                format!("W{w_bits}A{a_bits}"),
                None,
                uniform_plan(&sites, *w_bits, *a_bits, config.image_bits)?,
            )],
            None,
            None,
        ),
        PosePlans::Mixed {
            candidates,
            budget,
            block_cache,
            lrp_preset,
            ..
        } => {
            let candidates = mixq_allocator::parse_candidates(candidates)?;
            let scores = if budget.criteria.iter().any(|c| c.needs_scores()) {
                Some(pose_contribution_scores(
                    model,
                    &calib,
                    *lrp_preset,
                    &config.model,
                    |d, t| progress(PoseStage::Lrp, d, t),
                )?)
            } else {
                None
            };
            let probe_idx = &order[config.calib..config.calib + n_probe];
            let probe = Probe::new(
                crops(&train_set, probe_idx, device)?,
                vec![0; n_probe],
                probe_batch.max(1),
            )?;
            let table = pose_sensitivity(
                model,
                &calib,
                &probe,
                &candidates,
                config.image_bits,
                *block_cache,
                |d, t| progress(PoseStage::Sensitivity, d, t),
            )?;
            let plans = budget_plans(
                &sites,
                scores.as_ref(),
                &table,
                &candidates,
                budget,
                config.image_bits,
                None,
                true,
            )?
            .into_iter()
            .map(|p| (p.name, Some(p.avg_bits), p.plan))
            .collect();
            (plans, Some(table), scores)
        }
    };
    for (_, _, plan) in &mut plans {
        plan.meta.insert("model".into(), config.model.clone());
        plan.meta.insert("seed".into(), config.seed.to_string());
    }

    let batch = config.batch.max(1);
    let eval =
        |model: &WtPose, hook: &dyn SiteHook, progress: &mut dyn FnMut(PoseStage, usize, usize)| {
            evaluate_pose(
                model,
                hook,
                &val_set,
                &data.val.0,
                batch,
                config.flip,
                device,
                |d, t| progress(PoseStage::Eval, d, t),
            )
        };
    let (fp, fp_pred) = eval(model, &NoHook, &mut progress)?;
    let mut rows = vec![PosePtqRow {
        name: format!("{} FP32", config.model),
        budget: None,
        avg_w_bits: 32.0,
        avg_a_bits: 32.0,
        weight_bytes: weight_bytes(&sites, None),
        eval: fp,
    }];
    let mut predictions = vec![fp_pred];
    let ptq = pose_ptq_config();
    // One quantized copy at a time: a plan is calibrated, evaluated and dropped.
    for (done, (name, budget, plan)) in plans.iter().enumerate() {
        let variant = Variant {
            label: name.clone(),
            plan: plan.clone(),
            config: ptq.clone(),
        };
        let q = quantizer.quantize(model, config.seed, calib.clone(), &variant)?;
        progress(PoseStage::Calibrate, done + 1, plans.len());
        let (result, pred) = eval(&q.model, &q.state, &mut progress)?;
        let (w, a) = plan_averages(plan, &sites);
        rows.push(PosePtqRow {
            name: name.clone(),
            budget: *budget,
            avg_w_bits: w,
            avg_a_bits: a,
            weight_bytes: weight_bytes(&sites, Some(plan)),
            eval: result,
        });
        predictions.push(pred);
    }
    Ok(PosePtq {
        plans,
        rows,
        predictions,
        table,
        scores,
        probe_crops: n_probe,
        held_out: val_set.len(),
        sites,
    })
}

/// LRP contribution scores of a pose model's sites on `crops` (16 at a time): each crop's
/// brightest heatmap pixel is explained (`Target::Predicted` over the flattened heatmaps), with
/// the pixel rule bounded by the crops' normalisation.
pub fn pose_contribution_scores(
    model: &WtPose,
    crops: &Tensor<4>,
    preset: mixq_lrp::Preset,
    model_name: &str,
    mut progress: impl FnMut(usize, usize),
) -> Result<ContributionScores> {
    let n = crops.dims()[0];
    let norm = mixq_datasets::pose_transform::Normalize::default();
    let options = ExplainOptions::new(preset, &norm.mean, &norm.std);
    let batches: Vec<(Tensor<4>, Target)> = (0..n)
        .step_by(16)
        .map(|s| (crops.clone().narrow(0, s, 16.min(n - s)), Target::Predicted))
        .collect();
    let mut scores =
        contribution_scores(model, batches, &options, false, |done| progress(done, n))?;
    scores.meta.insert("model".into(), model_name.to_string());
    Ok(scores)
}

/// Skeletons of the predictions (instance score >= 0.3, keypoints >= 0.2) over the first
/// `count` images of `coco` (the set and its image folder), ground truth in green under the
/// prediction in red, four to a row, written as one PNG to `out`.
pub fn skeleton_pictures(
    coco: &(CocoKeypoints, std::path::PathBuf),
    predictions: &PosePredictions,
    count: usize,
    out: &std::path::Path,
) -> Result<()> {
    let results = keypoint_results(predictions, 0.2, Some(0.9));
    let mut pictures = Vec::new();
    let mut captions = Vec::new();
    for im in coco.0.images.iter().take(count) {
        let path = coco.1.join(&im.file_name);
        let mut img = mixq_datasets::load_image(&path)
            .map_err(|e| mixq_datasets::data_error(&path, e))?
            .to_rgb8();
        for a in coco.0.annotations.iter().filter(|a| a.image_id == im.id) {
            let kps: Vec<(f32, f32, f32)> = (0..17)
                .map(|k| {
                    let (x, y, v) = a.keypoint(k);
                    (x as f32, y as f32, if v > 0.0 { 1.0 } else { 0.0 })
                })
                .collect();
            mixq_report::draw_skeleton(
                &mut img,
                &kps,
                &mixq_report::COCO_SKELETON,
                [60, 200, 60],
                0.5,
            )?;
        }
        let mut shown = 0;
        for r in results
            .iter()
            .filter(|r| r.image_id == im.id && r.score >= 0.3)
        {
            let kps: Vec<(f32, f32, f32)> = r
                .keypoints
                .chunks(3)
                .map(|p| (p[0] as f32, p[1] as f32, p[2] as f32))
                .collect();
            mixq_report::draw_skeleton(
                &mut img,
                &kps,
                &mixq_report::COCO_SKELETON,
                [230, 40, 40],
                0.2,
            )?;
            shown += 1;
        }
        captions.push(format!("image {}: {shown} predicted", im.id));
        pictures.push(img);
    }
    let grid = mixq_report::image_grid(&pictures, 4, &captions)?;
    mixq_report::save_png(out, &grid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixq_vit_models::WtPoseConfig;

    #[test]
    fn weight_bytes_counts_bits_per_site() {
        let sites = WtPoseConfig::tiny().sites();
        let fp = weight_bytes(&sites, None);
        let w4 = weight_bytes(&sites, Some(&uniform_plan(&sites, 4, 8, 8).unwrap()));
        assert!((fp / w4 - 8.0).abs() < 1e-9);
    }
}
