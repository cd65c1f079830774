//! Mixed precision (Mix-QViT) as library calls: calibration and probe images, LRP contribution
//! scores, the sensitivity sweep, and the allocator's plan at every budget next to the uniform
//! plan of the same size. [`make_plans`] runs the three; each is also callable alone;
//! [`evaluate_plans`] scores what it made.

use mixq_vit_models::Network;
use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Device, Tensor};
use mixq_allocator::{Budget, Criterion, Problem, allocate, parse_candidates};
use mixq_core::{
    BitPlan, BitWidth, ContributionScores, Error, Result, SensitivityTable, SiteBits, SiteInfo,
};
use mixq_datasets::{DataSpec, EvalData, sample_batch};
use mixq_sensitivity::{Metric, Probe, Shard, SweepCache, to_table};
use mixq_vit_models::{
    ExplainOptions, Model, ModelCard, Target, batch_tensor, contribution_scores,
};
use serde::{Deserialize, Serialize};

use crate::{
    Baseline, LabelFreeSpread, PtqConfig, PtqStage, SeedMetrics, SeededVariants, Spread,
    SweepOptions, Variant, compare_on, sensitivity_sweep, sweep_fingerprint, uniform_plan,
};

/// Where calibration (and probe) images come from, and the bits of the image input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationConfig {
    /// Calibration images (a seeded sample).
    pub images: usize,
    /// A training-split image folder or an in-memory data set; `None`: the model's data set
    /// (its validation split).
    pub data: Option<PathBuf>,
    /// Bits of the image input (the patch embedding's input).
    pub image_bits: u8,
}

/// The sensitivity sweep: each site alone at each candidate, damage measured on probe images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepConfig {
    /// Probe images, disjoint from the calibration images.
    pub probe: usize,
    /// Candidate bit-widths: `2,3,4,6,8` (WbAb pairs) or pairs like `4/8`.
    pub candidates: String,
    /// What the other sites run at while one is measured: `fp` or a bit-width.
    pub baseline: String,
    /// Damage metric written to the table.
    pub metric: Metric,
    /// Start each site from its block's cached input instead of from the images.
    pub block_cache: bool,
    /// Where measured points are kept so that a rerun resumes.
    pub cache_dir: PathBuf,
    /// Batch size of the sweep's forward passes.
    pub batch: usize,
}

impl SweepConfig {
    /// `baseline` parsed (`fp` or a bit-width).
    pub fn baseline(&self) -> Result<Baseline> {
        match self.baseline.as_str() {
            "fp" | "fp32" => Ok(Baseline::FullPrecision),
            b => b
                .parse::<u8>()
                .map_err(|_| Error::invalid("--baseline", b, "expected fp or a bit-width"))
                .and_then(BitWidth::new)
                .map(Baseline::Bits),
        }
    }

    /// `candidates` parsed, sorted and deduplicated.
    pub fn candidates(&self) -> Result<Vec<SiteBits>> {
        parse_candidates(&self.candidates)
    }
}

/// Budgets and the allocator's objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetConfig {
    /// Average weight bits (parameter-weighted); also caps the MAC-weighted average activation
    /// bits unless `avg_a_bits` is given. Several values: one plan each.
    pub avg_bits: Vec<f64>,
    /// Average activation bits (MAC-weighted).
    pub avg_a_bits: Option<f64>,
    /// Model size budget in bytes (weights only).
    pub model_bytes: Option<f64>,
    /// Bit-operation budget per image (MACs x w_bits x a_bits).
    pub bit_ops: Option<f64>,
    /// One plan per criterion at each budget.
    pub criteria: Vec<Criterion>,
    /// Weight of importance in the `mix` cost: damage x (1 + lambda x importance).
    pub lambda: f64,
}

impl BudgetConfig {
    /// The allocation problem at average bits `avg`; `scores` may be missing for the
    /// `sensitivity` criterion (a backbone without classes has no LRP scores).
    pub fn problem(
        &self,
        sites: &[SiteInfo],
        scores: Option<&ContributionScores>,
        table: &SensitivityTable,
        candidates: &[SiteBits],
        criterion: Criterion,
        avg: f64,
    ) -> Result<Problem> {
        let mut p = Problem::from_tables(sites, scores, Some(table), candidates)?
            .with_criterion(criterion)
            .with_lambda(self.lambda)
            .with_budget(Budget::avg_w_bits(avg))
            .with_budget(Budget::avg_a_bits(self.avg_a_bits.unwrap_or(avg)));
        if let Some(b) = self.model_bytes {
            p = p.with_budget(Budget::model_bytes(b));
        }
        if let Some(b) = self.bit_ops {
            p = p.with_budget(Budget::bit_ops(b));
        }
        Ok(p)
    }
}

/// Everything [`make_plans`] needs besides the model and the calibration source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MixedConfig {
    /// The sensitivity sweep.
    pub sweep: SweepConfig,
    /// Budgets and criteria.
    pub budget: BudgetConfig,
    /// LRP rules for the contribution scores (computed on the calibration images).
    pub lrp_preset: mixq_lrp::Preset,
}

/// Which step a progress report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MixedStage {
    /// LRP contribution scores on the calibration images.
    Lrp,
    /// The sensitivity sweep.
    Sensitivity,
}

impl MixedStage {
    /// How progress bars name the stage.
    pub fn name(self) -> &'static str {
        match self {
            MixedStage::Lrp => "lrp",
            MixedStage::Sensitivity => "sensitivity",
        }
    }
}

/// Calibration images and a disjoint probe set (the next images of the same seeded order).
pub fn calib_and_probe(
    spec: &DataSpec,
    calib: &CalibrationConfig,
    sweep: &SweepConfig,
    seed: u64,
    device: &Device,
) -> Result<(Tensor<4>, Probe)> {
    if sweep.probe == 0 {
        return Err(Error::invalid("--probe", 0, "must be at least 1"));
    }
    let folder = calib.data.as_deref();
    let first = sample_batch(spec, folder, calib.images, seed, "--calib")?;
    let both = sample_batch(spec, folder, calib.images + sweep.probe, seed, "--probe")?;
    let in_calib = |i: usize| {
        if both.paths.is_empty() {
            first.indices.contains(&both.indices[i])
        } else {
            first.paths.contains(&both.paths[i])
        }
    };
    let keep: Vec<usize> = (0..both.len()).filter(|&i| !in_calib(i)).collect();
    if keep.is_empty() {
        return Err(Error::invalid(
            "--probe",
            sweep.probe,
            "no training image is left for probing after the calibration images",
        ));
    }
    let probe = both.select(keep);
    let probe = Probe::new(batch_tensor(&probe, device), probe.labels, sweep.batch)?;
    Ok((batch_tensor(&first, device), probe))
}

/// A backbone has no classes: its sweep measures damage as 1 - token cosine, nothing else.
fn check_backbone_metric(model: &Model, model_name: &str, metric: Metric) -> Result<()> {
    if model.is_backbone() && metric != Metric::Cosine {
        return Err(Error::invalid(
            "--metric",
            metric.name(),
            format!(
                "{model_name} is a backbone without classes: its damage is measured as 1 - token \
                 cosine (--metric cosine)"
            ),
        ));
    }
    Ok(())
}

/// Runs (or resumes, from `sweep.cache_dir`) the sensitivity sweep of `shard`; `progress` gets
/// (points done, points in all).
#[allow(clippy::too_many_arguments)]
pub fn sensitivity_table(
    model: &Model,
    model_name: &str,
    calib: &Tensor<4>,
    probe: &Probe,
    sweep: &SweepConfig,
    image_bits: u8,
    shard: Shard,
    seed: u64,
    progress: impl FnMut(usize, usize),
) -> Result<SensitivityTable> {
    check_backbone_metric(model, model_name, sweep.metric)?;
    let config = PtqConfig::default();
    let options = SweepOptions {
        candidates: sweep.candidates()?,
        baseline: sweep.baseline()?,
        image_bits,
        use_cache: sweep.block_cache,
        shard,
    };
    let key = sweep_fingerprint(model, calib, probe, &config, &options);
    let mut cache = SweepCache::open(&sweep.cache_dir, &key)?;
    let records = sensitivity_sweep(model, calib, probe, &config, &options, &mut cache, progress)?;
    let mut meta = BTreeMap::new();
    meta.insert("fingerprint".into(), key);
    meta.insert("model".into(), model_name.to_string());
    meta.insert("seed".into(), seed.to_string());
    meta.insert("probe_images".into(), probe.len().to_string());
    meta.insert("baseline".into(), sweep.baseline.clone());
    meta.insert("candidates".into(), sweep.candidates.clone());
    meta.insert("shard".into(), shard.to_string());
    Ok(to_table(&records, sweep.metric, meta))
}

/// The image input stays at `image_bits` whatever the allocator chose for the patch embedding
/// (its candidates were measured that way).
pub fn fix_image_bits(plan: &mut BitPlan, sites: &[SiteInfo], image_bits: u8) -> Result<()> {
    let bits = BitWidth::new(image_bits)?;
    if let Some(first) = sites.first()
        && let Some(b) = plan.sites.get_mut(&first.id)
    {
        b.a_bits = bits;
    }
    Ok(())
}

/// Parameter-weighted average weight bits and MAC-weighted activation bits of a plan.
pub fn plan_averages(plan: &BitPlan, sites: &[SiteInfo]) -> (f64, f64) {
    let (mut wp, mut p, mut am, mut m) = (0.0, 0.0, 0.0, 0.0);
    for s in sites {
        if let Some(b) = plan.sites.get(&s.id) {
            wp += s.params as f64 * b.w_bits.get() as f64;
            p += s.params as f64;
            am += s.macs as f64 * b.a_bits.get() as f64;
            m += s.macs as f64;
        }
    }
    (wp / p.max(1.0), am / m.max(1.0))
}

/// The widest uniform WbAb candidate within an average-bits budget: the baseline every mixed
/// plan is compared with.
pub fn uniform_bits_within(candidates: &[SiteBits], avg: f64) -> Result<u8> {
    candidates
        .iter()
        .filter(|b| b.w_bits == b.a_bits && b.w_bits.get() as f64 <= avg + 1e-9)
        .map(|b| b.w_bits.get())
        .max()
        .ok_or_else(|| Error::invalid("--avg-bits", avg, "below every candidate bit-width"))
}

/// One plan of [`budget_plans`].
#[derive(Clone, Debug)]
pub struct BudgetPlan {
    /// `uniform WbAb` or `mixed <criterion>`.
    pub name: String,
    /// The average-bits budget it was made for.
    pub avg_bits: f64,
    /// Bits per site.
    pub plan: BitPlan,
    /// The allocator's result (objective, budgets used, solver); `None` for the uniform plan.
    pub allocation: Option<mixq_allocator::Allocation>,
}

/// For every budget in `budget.avg_bits`: the widest uniform plan within it (when
/// `with_uniform`), then the allocator's plan for every criterion (image input kept at
/// `image_bits`; `model`, when given, recorded in the allocated plans' metadata). `scores` may
/// be missing for the `sensitivity` criterion.
#[allow(clippy::too_many_arguments)]
pub fn budget_plans(
    sites: &[SiteInfo],
    scores: Option<&ContributionScores>,
    table: &SensitivityTable,
    candidates: &[SiteBits],
    budget: &BudgetConfig,
    image_bits: u8,
    model: Option<&str>,
    with_uniform: bool,
) -> Result<Vec<BudgetPlan>> {
    let mut plans = Vec::new();
    for &avg in &budget.avg_bits {
        if with_uniform {
            let bits = uniform_bits_within(candidates, avg)?;
            plans.push(BudgetPlan {
                name: format!("uniform W{bits}A{bits}"),
                avg_bits: avg,
                plan: uniform_plan(sites, bits, bits, image_bits)?,
                allocation: None,
            });
        }
        for &criterion in &budget.criteria {
            let problem = budget.problem(sites, scores, table, candidates, criterion, avg)?;
            let mut allocation = allocate(&problem)?;
            fix_image_bits(&mut allocation.plan, sites, image_bits)?;
            if let Some(model) = model {
                allocation
                    .plan
                    .meta
                    .insert("model".into(), model.to_string());
            }
            plans.push(BudgetPlan {
                name: format!("mixed {}", criterion.name()),
                avg_bits: avg,
                plan: allocation.plan.clone(),
                allocation: Some(allocation),
            });
        }
    }
    Ok(plans)
}

/// What [`make_plans`] produces.
pub struct MixedPlans {
    /// The calibration images.
    pub calib: Tensor<4>,
    /// The probe images, disjoint from them.
    pub probe: Probe,
    /// LRP contribution scores (none for a backbone: it has no class to explain).
    pub scores: Option<ContributionScores>,
    /// The sensitivity table.
    pub table: SensitivityTable,
    /// `(name, budget, plan)`: `uniform WbAb` then `mixed <criterion>` for every budget.
    pub plans: Vec<(String, Option<f64>, BitPlan)>,
}

/// LRP scores on the calibration images, the sensitivity sweep, then the allocator's plans at
/// every budget (and the uniform plan at the same budget): the plans `ptq --mixed` compares and
/// `qat --mixed` trains. `progress` gets (stage, done, total).
pub fn make_plans(
    model: &Model,
    card: &ModelCard,
    seed: u64,
    config: &MixedConfig,
    calibration: &CalibrationConfig,
    device: &Device,
    mut progress: impl FnMut(MixedStage, usize, usize),
) -> Result<MixedPlans> {
    let sites = model.sites();
    let candidates = config.sweep.candidates()?;
    if model.is_backbone() {
        // No class for LRP to explain: the plans come from the sweep alone.
        if let Some(c) = config.budget.criteria.iter().find(|c| c.needs_scores()) {
            return Err(Error::invalid(
                "--criterion",
                c.name(),
                format!(
                    "{} is a backbone without classes, so LRP has no class to explain: use \
                     --criterion sensitivity",
                    card.name
                ),
            ));
        }
        check_backbone_metric(model, &card.name, config.sweep.metric)?;
    }
    if calibration.data.is_none() && card.dataset.is_none() {
        return Err(Error::invalid(
            "--calib-data",
            "(none)",
            "mixed precision needs training images for calibration and probing: pass --calib-data DIR",
        ));
    }
    let (calib, probe) =
        calib_and_probe(&card.data_spec(), calibration, &config.sweep, seed, device)?;
    let n_calib = calib.dims()[0];

    // 1. LRP contribution scores on the calibration images (a classifier's predicted class).
    let scores = if model.is_backbone() {
        None
    } else {
        let pre = &card.preprocess;
        let options = ExplainOptions::new(config.lrp_preset, &pre.mean, &pre.std);
        let batches: Vec<(Tensor<4>, Target)> = (0..n_calib)
            .step_by(16)
            .map(|s| {
                (
                    calib.clone().narrow(0, s, 16.min(n_calib - s)),
                    Target::Predicted,
                )
            })
            .collect();
        let mut scores = contribution_scores(model, batches, &options, false, |done| {
            progress(MixedStage::Lrp, done, n_calib)
        })?;
        scores.meta.insert("model".into(), card.name.clone());
        Some(scores)
    };

    // 2. Sensitivity.
    let table = sensitivity_table(
        model,
        &card.name,
        &calib,
        &probe,
        &config.sweep,
        calibration.image_bits,
        Shard::WHOLE,
        seed,
        |done, total| progress(MixedStage::Sensitivity, done, total),
    )?;

    // 3. Plans: uniform and each criterion at each budget.
    let plans = budget_plans(
        &sites,
        scores.as_ref(),
        &table,
        &candidates,
        &config.budget,
        calibration.image_bits,
        Some(&card.name),
        true,
    )?
    .into_iter()
    .map(|p| (p.name, Some(p.avg_bits), p.plan))
    .collect();
    Ok(MixedPlans {
        calib,
        probe,
        scores,
        table,
        plans,
    })
}

/// The one plan of a command that quantizes with one (`qat`): given, uniform, or the
/// allocator's at one budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PlanChoice {
    /// A plan as it is, shown under `name`.
    Given {
        /// How reports name it.
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
    /// [`make_plans`] at `config.budget.avg_bits` (one value) with `criterion`.
    Mixed {
        /// The sweep, the budget and the LRP rules.
        config: MixedConfig,
        /// The allocator's criterion.
        criterion: Criterion,
    },
}

/// What [`choose_plan`] gives.
pub struct ChosenPlan {
    /// Bits per site, `model` and `seed` in its metadata.
    pub plan: BitPlan,
    /// How reports name it (`W4A4`, `mixed mix avg 3 bits (2,3,4)`, ...).
    pub label: String,
    /// The calibration images it is calibrated with.
    pub calib: Tensor<4>,
}

/// Resolves `choice` for `model` (of `card`) and draws its calibration images (the mixed plan
/// calibrates on the images its sweep used). A plan that quantizes no site or names a site the
/// model lacks is an error. `progress` gets the mixed pipeline's (stage, done, total).
pub fn choose_plan(
    model: &Model,
    card: &ModelCard,
    seed: u64,
    choice: &PlanChoice,
    calibration: &CalibrationConfig,
    device: &Device,
    progress: impl FnMut(MixedStage, usize, usize),
) -> Result<ChosenPlan> {
    let sites = model.sites();
    let calibrate = || {
        crate::calibration_images(
            &card.data_spec(),
            calibration.data.as_deref(),
            calibration.images,
            seed,
            device,
        )
    };
    let (mut plan, label, calib) = match choice {
        PlanChoice::Given { name, plan } => (plan.clone(), name.clone(), calibrate()?),
        PlanChoice::Uniform { w_bits, a_bits } => (
            uniform_plan(&sites, *w_bits, *a_bits, calibration.image_bits)?,
            format!("W{w_bits}A{a_bits}"),
            calibrate()?,
        ),
        PlanChoice::Mixed { config, criterion } => {
            let avg = match config.budget.avg_bits.as_slice() {
                [avg] => *avg,
                more => {
                    return Err(Error::invalid(
                        "--avg-bits",
                        format!("{more:?}"),
                        "qat trains one plan: give one budget",
                    ));
                }
            };
            let mut config = config.clone();
            config.budget.criteria = vec![*criterion];
            let made = make_plans(model, card, seed, &config, calibration, device, progress)?;
            let want = format!("mixed {}", criterion.name());
            let (name, _, plan) = made
                .plans
                .into_iter()
                .find(|(n, _, _)| *n == want)
                .expect("make_plans returns one plan per criterion");
            let label = format!("{name} avg {avg} bits ({})", config.sweep.candidates);
            (plan, label, made.calib)
        }
    };
    plan.meta.insert("model".into(), card.name.clone());
    plan.meta.insert("seed".into(), seed.to_string());
    if plan.sites.is_empty() {
        return Err(Error::invalid(
            "plan",
            &label,
            "quantizes no site; QAT needs at least one",
        ));
    }
    plan.check_sites(sites.iter().map(|s| &s.id))?;
    Ok(ChosenPlan { plan, label, calib })
}

/// One row of the mixed-precision table: a plan (or full precision) on the evaluation images,
/// every figure over the calibration seeds (each seed calibrates, scores and allocates anew,
/// so even the average bits of an allocated plan can differ between seeds).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MixedRow {
    /// `<model> FP32`, `uniform WbAb` or `mixed <criterion>`.
    pub name: String,
    /// The average-bits budget the plan was made for.
    pub budget: Option<f64>,
    /// Parameter-weighted average weight bits (32 for full precision).
    pub avg_w_bits: Spread,
    /// MAC-weighted average activation bits (32 for full precision).
    pub avg_a_bits: Spread,
    /// Top-1 %.
    pub top1: Spread,
    /// Top-5 %.
    pub top5: Spread,
    /// Mean KL(FP || quantized) (0 for full precision).
    pub kl: Spread,
    /// A backbone's token cosine and saliency agreement (none for classifiers).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub label_free: Option<LabelFreeSpread>,
    /// Every seed's figures (`seed: None` for full precision).
    pub seeds: Vec<SeedMetrics>,
}

impl MixedRow {
    /// `rows` as a markdown table (`mean ± std` over the seeds; the value alone for one seed).
    pub fn markdown(rows: &[MixedRow]) -> String {
        if rows.iter().any(|r| r.label_free.is_some()) {
            return Self::label_free_markdown(rows);
        }
        let mut s = String::from(
            "| plan | budget (avg bits) | avg W bits | avg A bits | top-1 % | top-5 % | KL to FP |\n|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in rows {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                r.name,
                r.budget.map_or("-".into(), |b| b.to_string()),
                r.avg_w_bits.format(2),
                r.avg_a_bits.format(2),
                r.top1.format(2),
                r.top5.format(2),
                r.kl.format(4)
            );
        }
        s
    }

    /// A backbone's table: token cosine (and saliency agreement) instead of accuracy.
    fn label_free_markdown(rows: &[MixedRow]) -> String {
        let saliency = rows
            .iter()
            .any(|r| r.label_free.is_some_and(|l| l.saliency.is_some()));
        let header = LabelFreeSpread::header(saliency);
        let rule = "---:|".repeat(header.matches('|').count() + 1);
        let mut s = format!(
            "| plan | budget (avg bits) | avg W bits | avg A bits | {header} |\n|---|---:|---:|---:|{rule}\n"
        );
        for r in rows {
            s += &format!(
                "| {} | {} | {} | {} | {} |\n",
                r.name,
                r.budget.map_or("-".into(), |b| b.to_string()),
                r.avg_w_bits.format(2),
                r.avg_a_bits.format(2),
                LabelFreeSpread::cells(r.label_free.as_ref(), saliency),
            );
        }
        s
    }
}

/// PTQ with every plan of [`make_plans`] on its calibration images (quantized by `quantizer`:
/// [`crate::Calibrate`], or block reconstruction), for each seed's plans, then one evaluation
/// pass over `data` for full precision and all of them. Every seed's plans
/// must carry the same names and budgets (the same [`MixedConfig`]). `progress` gets (stage,
/// done, total).
pub fn evaluate_plans(
    model: &Model,
    card: &ModelCard,
    seeded: &[(u64, MixedPlans)],
    quantizer: &dyn crate::Quantizer,
    data: EvalData,
    device: &Device,
    progress: impl FnMut(PtqStage, usize, usize) + Send,
) -> Result<Vec<MixedRow>> {
    let sites = model.sites();
    let variants = seeded
        .iter()
        .map(|(seed, plans)| SeededVariants {
            seed: *seed,
            images: plans.calib.clone(),
            variants: plans
                .plans
                .iter()
                .map(|(name, budget, plan)| Variant {
                    label: budget.map_or(name.clone(), |b| format!("{name} at {b} bits")),
                    plan: plan.clone(),
                    config: PtqConfig::default(),
                })
                .collect(),
        })
        .collect::<Vec<_>>();
    let result = compare_on(model, &variants, quantizer, data, device, progress)?;
    let fp = &result.fp;
    let one = |v: f64| Spread::of([v]);
    let mut rows = vec![MixedRow {
        name: format!("{} FP32", card.aliases[0]),
        budget: None,
        avg_w_bits: one(32.0),
        avg_a_bits: one(32.0),
        top1: one(fp.top1_pct()),
        top5: one(fp.top5_pct()),
        kl: one(0.0),
        label_free: LabelFreeSpread::of([fp]),
        seeds: vec![SeedMetrics {
            seed: None,
            metrics: fp.clone(),
        }],
    }];
    let Some((_, first)) = seeded.first() else {
        return Ok(rows);
    };
    for (i, ((name, budget, _), r)) in first.plans.iter().zip(result.variants).enumerate() {
        let averages: Vec<(f64, f64)> = seeded
            .iter()
            .map(|(_, plans)| plan_averages(&plans.plans[i].2, &sites))
            .collect();
        rows.push(MixedRow {
            name: name.clone(),
            budget: *budget,
            avg_w_bits: Spread::of(averages.iter().map(|a| a.0)),
            avg_a_bits: Spread::of(averages.iter().map(|a| a.1)),
            top1: r.top1,
            top5: r.top5,
            kl: r.kl,
            label_free: r.label_free,
            seeds: r.seeds,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixq_core::{SiteId, SiteKind};

    fn site(id: &str, params: u64, macs: u64) -> SiteInfo {
        SiteInfo {
            id: SiteId::new(id),
            kind: SiteKind::Linear,
            params,
            macs,
        }
    }

    #[test]
    fn averages_weigh_weight_bits_by_parameters_and_activation_bits_by_macs() {
        let sites = [site("a", 300, 10), site("b", 100, 30)];
        let mut plan = BitPlan::default();
        let bits = |w, a| SiteBits {
            w_bits: BitWidth::new(w).unwrap(),
            a_bits: BitWidth::new(a).unwrap(),
        };
        plan.sites.insert(SiteId::new("a"), bits(8, 2));
        plan.sites.insert(SiteId::new("b"), bits(4, 6));
        let (w, a) = plan_averages(&plan, &sites);
        assert_eq!(w, (300.0 * 8.0 + 100.0 * 4.0) / 400.0);
        assert_eq!(a, (10.0 * 2.0 + 30.0 * 6.0) / 40.0);
    }

    #[test]
    fn the_uniform_baseline_is_the_widest_square_candidate_within_the_budget() {
        let candidates = parse_candidates("2,3,4,6,8,4/8").unwrap();
        assert_eq!(uniform_bits_within(&candidates, 4.0).unwrap(), 4);
        assert_eq!(uniform_bits_within(&candidates, 5.9).unwrap(), 4);
        assert_eq!(uniform_bits_within(&candidates, 6.0).unwrap(), 6);
        let err = uniform_bits_within(&candidates, 1.5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--avg-bits"), "{err}");
    }

    #[test]
    fn the_first_site_reads_the_image_in_uniform_and_allocated_plans_alike() {
        // A user's MLP: its first site is a linear layer reading the pixels.
        let sites = [site("fc1", 300, 300), site("fc2", 100, 100)];
        let mut plan = uniform_plan(&sites, 3, 3, 8).unwrap();
        let first = |p: &BitPlan| p.sites[&SiteId::new("fc1")];
        assert_eq!(
            (first(&plan).w_bits.get(), first(&plan).a_bits.get()),
            (3, 8)
        );
        assert_eq!(plan.sites[&SiteId::new("fc2")].a_bits.get(), 3);
        plan.sites.get_mut(&SiteId::new("fc1")).unwrap().a_bits = BitWidth::new(2).unwrap();
        fix_image_bits(&mut plan, &sites, 8).unwrap();
        assert_eq!(first(&plan).a_bits.get(), 8);
    }
}
