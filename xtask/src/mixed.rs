//! Mixed precision (Mix-QViT): `cargo xtask sensitivity`, `cargo xtask allocate`, and the
//! whole `cargo xtask ptq --mixed` pipeline (calibration, LRP scores, the sensitivity sweep,
//! allocation, PTQ with each plan, evaluation against FP and the uniform plan).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use clap::Args;
use mixq_allocator::{Budget, Problem, allocate, parse_candidates};
use mixq_core::{
    BitPlan, BitWidth, ContributionScores, Error, Result, RunDir, SensitivityTable, SiteBits,
    SiteInfo,
};
use mixq_datasets::Batch;
use mixq_ptq::{
    Baseline, PtqConfig, SweepOptions, Variant, sensitivity_sweep, sweep_fingerprint, uniform_plan,
};
use mixq_report::{Bar, BarChart, HeatMap, LineChart, Series, bar_chart, heat_map, line_chart};
use mixq_sensitivity::{Metric, Probe, Shard, SweepCache, merge_tables, to_table};
use mixq_vit_models::{ExplainOptions, Model, ModelCard, Target, contribution_scores};
use serde::Serialize;

use crate::common::{ModelArgs, progress};
use crate::ptq::evaluate_variants;
use mixq_datasets::{EvalData, sample_batch};
use mixq_vit_models::batch_tensor;

/// Where calibration images come from (`ptq` has its own flags for these).
#[derive(Clone, Debug)]
pub struct CalibSource {
    pub calib: usize,
    pub calib_data: Option<PathBuf>,
    pub image_bits: u8,
}

/// Options shared by `sensitivity` and `ptq --mixed`.
#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    /// Probe images for the sensitivity sweep, disjoint from the calibration images.
    #[arg(long, default_value_t = 64)]
    pub probe: usize,
    /// Candidate bit-widths: `2,3,4,6,8` (WbAb pairs) or pairs like `4/8`.
    #[arg(long, default_value = "2,3,4,6,8")]
    pub candidates: String,
    /// What the other sites run at while one is measured: `fp` or a bit-width (e.g. 8).
    #[arg(long, default_value = "fp")]
    pub baseline: String,
    /// Damage metric written to the table: kl, ce or top1.
    #[arg(long, default_value = "kl")]
    pub metric: Metric,
    /// Rerun every site from the images instead of from its block's cached input.
    #[arg(long)]
    pub no_block_cache: bool,
    /// Where measured points are kept so that a rerun resumes (default: <runs>/.sensitivity-cache).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Batch size of the sweep's forward passes.
    #[arg(long, default_value_t = 32)]
    pub sweep_batch: usize,
}

impl SweepArgs {
    fn baseline(&self) -> Result<Baseline> {
        match self.baseline.as_str() {
            "fp" | "fp32" => Ok(Baseline::FullPrecision),
            b => b
                .parse::<u8>()
                .map_err(|_| Error::invalid("--baseline", b, "expected fp or a bit-width"))
                .and_then(BitWidth::new)
                .map(Baseline::Bits),
        }
    }

    pub(crate) fn candidates(&self) -> Result<Vec<SiteBits>> {
        parse_candidates(&self.candidates)
    }
}

/// Calibration images and a disjoint probe set (the next images of the same seeded order).
fn calib_and_probe(
    card: &ModelCard,
    source: &CalibSource,
    args: &SweepArgs,
    seed: u64,
    device: &Device,
) -> Result<(Tensor<4>, Probe)> {
    if args.probe == 0 {
        return Err(Error::invalid("--probe", 0, "must be at least 1"));
    }
    let folder = source.calib_data.as_deref();
    let calib = sample_batch(&card.data_spec(), folder, source.calib, seed, "--calib")?;
    let both = sample_batch(
        &card.data_spec(),
        folder,
        source.calib + args.probe,
        seed,
        "--probe",
    )?;
    let in_calib = |i: usize| {
        if both.paths.is_empty() {
            calib.indices.contains(&both.indices[i])
        } else {
            calib.paths.contains(&both.paths[i])
        }
    };
    let keep: Vec<usize> = (0..both.len()).filter(|&i| !in_calib(i)).collect();
    if keep.is_empty() {
        return Err(Error::invalid(
            "--probe",
            args.probe,
            "no training image is left for probing after the calibration images",
        ));
    }
    let per = both.images.len() / both.len();
    let probe = Batch {
        images: keep
            .iter()
            .flat_map(|&i| both.images[i * per..(i + 1) * per].iter().copied())
            .collect(),
        shape: [keep.len(), both.shape[1], both.shape[2], both.shape[3]],
        labels: keep.iter().map(|&i| both.labels[i]).collect(),
        paths: keep
            .iter()
            .filter_map(|&i| both.paths.get(i).cloned())
            .collect(),
        indices: keep.iter().map(|&i| both.indices[i]).collect(),
    };
    let probe = Probe::new(batch_tensor(&probe, device), probe.labels, args.sweep_batch)?;
    Ok((batch_tensor(&calib, device), probe))
}

/// Runs (or resumes) the sweep with a progress bar; returns the table.
#[allow(clippy::too_many_arguments)]
fn sweep(
    model: &Model,
    card: &ModelCard,
    calib: &Tensor<4>,
    probe: &Probe,
    args: &SweepArgs,
    image_bits: u8,
    shard: Shard,
    runs: &Path,
    seed: u64,
) -> Result<SensitivityTable> {
    let config = PtqConfig::default();
    let options = SweepOptions {
        candidates: args.candidates()?,
        baseline: args.baseline()?,
        image_bits,
        use_cache: !args.no_block_cache,
        shard,
    };
    let key = sweep_fingerprint(model, calib, probe, &config, &options);
    let dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| runs.join(".sensitivity-cache"));
    let mut cache = SweepCache::open(&dir, &key)?;
    let bar = progress(0, "sensitivity");
    let records = sensitivity_sweep(
        model,
        calib,
        probe,
        &config,
        &options,
        &mut cache,
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    let mut meta = BTreeMap::new();
    meta.insert("fingerprint".into(), key);
    meta.insert("model".into(), card.name.clone());
    meta.insert("seed".into(), seed.to_string());
    meta.insert("probe_images".into(), probe.len().to_string());
    meta.insert("baseline".into(), args.baseline.clone());
    meta.insert("candidates".into(), args.candidates.clone());
    meta.insert("shard".into(), shard.to_string());
    Ok(to_table(&records, args.metric, meta))
}

/// The sensitivity heat map: sites (rows, forward order) x candidates.
pub(crate) fn sensitivity_png(
    path: &Path,
    table: &SensitivityTable,
    sites: &[SiteInfo],
    title: &str,
) -> Result<()> {
    let rows: Vec<&SiteInfo> = sites
        .iter()
        .filter(|s| table.sites.contains_key(&s.id))
        .collect();
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let cols: Vec<SiteBits> = table.sites[&first.id].iter().map(|p| p.bits).collect();
    let values = rows
        .iter()
        .map(|s| {
            cols.iter()
                .map(|b| {
                    table.sites[&s.id]
                        .iter()
                        .find(|p| p.bits == *b)
                        .map(|p| p.damage.max(0.0))
                        .unwrap_or(0.0)
                })
                .collect()
        })
        .collect();
    heat_map(
        path,
        &HeatMap {
            title: title.into(),
            row_labels: rows.iter().map(|s| s.id.to_string()).collect(),
            col_labels: cols
                .iter()
                .map(|b| format!("W{}A{}", b.w_bits, b.a_bits))
                .collect(),
            values,
            colour_label: format!("damage ({})", table.metric),
            log_scale: true,
            ..Default::default()
        },
    )
}

#[derive(Args, Debug)]
pub struct SensitivityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sweep: SweepArgs,
    /// Calibration images (a seeded sample of the training split).
    #[arg(long, default_value_t = 32)]
    pub calib: usize,
    /// Calibration and probe images: digits, fashion-mnist, mnist (their validation split;
    /// digits: its train split), a folder of IDX files or an ImageNet-style training folder;
    /// default: the card's data set.
    #[arg(long, alias = "data")]
    pub calib_data: Option<PathBuf>,
    /// Bits of the image input.
    #[arg(long, default_value_t = 8)]
    pub image_bits: u8,
    /// Run slice k of n of the (site, candidate) grid, e.g. `2/4`.
    #[arg(long, default_value = "1/1")]
    pub shard: Shard,
    /// Join shard tables (written by `--shard` runs) instead of measuring.
    #[arg(long, num_args = 1..)]
    pub merge: Vec<PathBuf>,
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
}

pub fn run_sensitivity(args: SensitivityArgs) -> Result<()> {
    let card = args.model.card()?;
    let sites = card.arch.sites();
    let table = if args.merge.is_empty() {
        let device = args.model.device.device()?;
        let model = args.model.load(&card, &device)?;
        let source = CalibSource {
            calib: args.calib,
            calib_data: args.calib_data.clone(),
            image_bits: args.image_bits,
        };
        let (calib, probe) =
            calib_and_probe(&card, &source, &args.sweep, args.model.seed, &device)?;
        sweep(
            &model,
            &card,
            &calib,
            &probe,
            &args.sweep,
            args.image_bits,
            args.shard,
            &args.runs,
            args.model.seed,
        )?
    } else {
        let tables = args
            .merge
            .iter()
            .map(|p| SensitivityTable::load(p).map(|t| (p.clone(), t)))
            .collect::<Result<Vec<_>>>()?;
        merge_tables(&tables)?
    };
    let points: usize = table.sites.values().map(Vec::len).sum();
    println!(
        "{} sites, {points} points, metric {} (shard {})",
        table.sites.len(),
        table.metric,
        table
            .meta
            .get("shard")
            .map(String::as_str)
            .unwrap_or("merged")
    );
    let run = RunDir::create(&args.runs, "sensitivity")?;
    table.save(run.file("sensitivity.toml"))?;
    table.save(run.file("sensitivity.json"))?;
    sensitivity_png(
        &run.file("sensitivity.png"),
        &table,
        &sites,
        &format!("Sensitivity — {} ({})", card.aliases[0], table.metric),
    )?;
    let path = run.finish()?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Budget and objective options shared by `allocate` and `ptq --mixed`.
#[derive(Args, Debug, Clone)]
pub struct BudgetArgs {
    /// Average weight bits (parameter-weighted); also caps the MAC-weighted average
    /// activation bits unless --avg-a-bits is given. Several values: one plan each.
    #[arg(long, value_delimiter = ',', default_value = "4")]
    pub avg_bits: Vec<f64>,
    /// Average activation bits (MAC-weighted).
    #[arg(long)]
    pub avg_a_bits: Option<f64>,
    /// Model size budget in bytes (weights only).
    #[arg(long)]
    pub model_bytes: Option<f64>,
    /// Bit-operation budget per image (MACs x w_bits x a_bits).
    #[arg(long)]
    pub bit_ops: Option<f64>,
    /// Objective presets (mix, lrp, sensitivity); several give one plan each.
    #[arg(
        long = "preset",
        value_delimiter = ',',
        default_value = "mix,lrp,sensitivity"
    )]
    pub presets: Vec<mixq_allocator::Criterion>,
    /// Weight of importance in the `mix` cost: damage x (1 + lambda x importance).
    #[arg(long, default_value_t = 1.0)]
    pub lambda: f64,
}

impl BudgetArgs {
    /// `scores` may be missing for the `sensitivity` preset (pose models have no LRP path).
    pub(crate) fn problem(
        &self,
        sites: &[SiteInfo],
        scores: Option<&ContributionScores>,
        table: &SensitivityTable,
        candidates: &[SiteBits],
        preset: mixq_allocator::Criterion,
        avg: f64,
    ) -> Result<Problem> {
        let mut p = Problem::from_tables(sites, scores, Some(table), candidates)?
            .with_criterion(preset)
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

/// The image input stays at `image_bits` whatever the allocator chose for the patch embedding
/// (its candidates were measured that way).
pub(crate) fn fix_image_bits(plan: &mut BitPlan, sites: &[SiteInfo], image_bits: u8) -> Result<()> {
    let bits = BitWidth::new(image_bits)?;
    if let Some(first) = sites.first()
        && let Some(b) = plan.sites.get_mut(&first.id)
    {
        b.a_bits = bits;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct AllocateArgs {
    /// The model whose sites are allocated (its card gives parameters and MACs).
    #[arg(long)]
    pub model: String,
    /// LRP contribution scores (from `cargo xtask lrp`).
    #[arg(long)]
    pub scores: PathBuf,
    /// Sensitivity table (from `cargo xtask sensitivity`).
    #[arg(long)]
    pub sensitivity: PathBuf,
    #[command(flatten)]
    pub budget: BudgetArgs,
    #[arg(long, default_value = "2,3,4,6,8")]
    pub candidates: String,
    #[arg(long, default_value_t = 8)]
    pub image_bits: u8,
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
}

pub fn run_allocate(args: AllocateArgs) -> Result<()> {
    let card = ModelCard::find(&args.model)?;
    let sites = card.arch.sites();
    let scores = ContributionScores::load(&args.scores)?;
    let table = SensitivityTable::load(&args.sensitivity)?;
    let candidates = parse_candidates(&args.candidates)?;
    let run = RunDir::create(&args.runs, "allocate")?;
    println!("| preset | avg bits | objective | avg w bits used | avg a bits used | status |");
    println!("|---|---:|---:|---:|---:|---|");
    for &avg in &args.budget.avg_bits {
        for &preset in &args.budget.presets {
            let problem =
                args.budget
                    .problem(&sites, Some(&scores), &table, &candidates, preset, avg)?;
            let a = allocate(&problem)?;
            let mut plan = a.plan.clone();
            fix_image_bits(&mut plan, &sites, args.image_bits)?;
            plan.meta.insert("model".into(), card.name.clone());
            println!(
                "| {} | {avg} | {:.5} | {:.3} | {:.3} | {} |",
                preset.name(),
                a.objective,
                a.budgets[0].used,
                a.budgets[1].used,
                a.status.name()
            );
            run.write(
                &format!("plan-{}-{avg}.toml", preset.name()),
                plan.to_toml()?.as_bytes(),
            )?;
        }
    }
    let path = run.finish()?;
    println!("wrote {}", path.display());
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct MixedArgs {
    #[command(flatten)]
    pub sweep: SweepArgs,
    #[command(flatten)]
    pub budget: BudgetArgs,
    /// LRP rules for the contribution scores (computed on the calibration images).
    #[arg(long, default_value = "attnlrp")]
    pub lrp_preset: mixq_lrp::Preset,
}

#[derive(Serialize)]
struct MixedRow {
    name: String,
    budget: Option<f64>,
    avg_w_bits: f64,
    avg_a_bits: f64,
    top1: f64,
    top5: f64,
    kl: f64,
}

/// Parameter-weighted average weight bits and MAC-weighted activation bits of a plan.
pub(crate) fn plan_averages(plan: &BitPlan, sites: &[SiteInfo]) -> (f64, f64) {
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
pub(crate) fn uniform_bits_within(candidates: &[SiteBits], avg: f64) -> Result<u8> {
    candidates
        .iter()
        .filter(|b| b.w_bits == b.a_bits && b.w_bits.get() as f64 <= avg + 1e-9)
        .map(|b| b.w_bits.get())
        .max()
        .ok_or_else(|| Error::invalid("--avg-bits", avg, "below every candidate bit-width"))
}

/// What steps 1-3 of `ptq --mixed` produce: the calibration and probe images, the LRP scores,
/// the sensitivity table and, per budget, the uniform plan and one plan per preset.
pub struct MixedPlans {
    pub calib: Tensor<4>,
    pub probe: Probe,
    pub scores: ContributionScores,
    pub table: SensitivityTable,
    /// `(name, budget, plan)`: `uniform WbAb` then `mixed <preset>` for every budget.
    pub plans: Vec<(String, Option<f64>, BitPlan)>,
}

/// LRP scores on the calibration images, the sensitivity sweep, then the allocator's plans at
/// every budget (and the uniform plan at the same budget): the plans `ptq --mixed` compares and
/// `qat --mixed` trains.
pub fn make_plans(
    model: &Model,
    card: &ModelCard,
    seed: u64,
    mixed: &MixedArgs,
    source: &CalibSource,
    runs: &Path,
    device: &Device,
) -> Result<MixedPlans> {
    let sites = model.sites();
    let candidates = mixed.sweep.candidates()?;
    if source.calib_data.is_none() && card.dataset.is_none() {
        return Err(Error::invalid(
            "--calib-data",
            "(none)",
            "mixed precision needs training images for calibration and probing: pass --calib-data DIR",
        ));
    }
    let (calib, probe) = calib_and_probe(card, source, &mixed.sweep, seed, device)?;
    let n_calib = calib.dims()[0];

    // 1. LRP contribution scores on the calibration images.
    let pre = &card.preprocess;
    let options = ExplainOptions::new(mixed.lrp_preset, &pre.mean, &pre.std);
    let bar = progress(n_calib, "lrp");
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
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    scores.meta.insert("model".into(), card.name.clone());

    // 2. Sensitivity.
    let table = sweep(
        model,
        card,
        &calib,
        &probe,
        &mixed.sweep,
        source.image_bits,
        Shard::WHOLE,
        runs,
        seed,
    )?;

    // 3. Plans: uniform and each preset at each budget.
    let mut plans: Vec<(String, Option<f64>, BitPlan)> = Vec::new();
    for &avg in &mixed.budget.avg_bits {
        let uniform_bits = uniform_bits_within(&candidates, avg)?;
        plans.push((
            format!("uniform W{uniform_bits}A{uniform_bits}"),
            Some(avg),
            uniform_plan(&sites, uniform_bits, uniform_bits, source.image_bits)?,
        ));
        for &preset in &mixed.budget.presets {
            let problem =
                mixed
                    .budget
                    .problem(&sites, Some(&scores), &table, &candidates, preset, avg)?;
            let mut plan = allocate(&problem)?.plan;
            fix_image_bits(&mut plan, &sites, source.image_bits)?;
            plan.meta.insert("model".into(), card.name.clone());
            plans.push((format!("mixed {}", preset.name()), Some(avg), plan));
        }
    }
    Ok(MixedPlans {
        calib,
        probe,
        scores,
        table,
        plans,
    })
}

/// `cargo xtask ptq --mixed`.
pub fn run_mixed(
    model_args: &ModelArgs,
    mixed: &MixedArgs,
    source: &CalibSource,
    data: Option<&Path>,
    eval_limit: Option<usize>,
    batch: usize,
    runs: &Path,
) -> Result<()> {
    let card = model_args.card()?;
    let device = model_args.device.device()?;
    let model = model_args.load(&card, &device)?;
    let sites = model.sites();
    let MixedPlans {
        calib,
        probe,
        scores,
        table,
        plans,
    } = make_plans(&model, &card, model_args.seed, mixed, source, runs, &device)?;
    let n_calib = calib.dims()[0];

    // 4. PTQ with every plan, then one evaluation pass for all.
    let eval = EvalData::open(&card.data_spec(), data, eval_limit, batch)?;
    let describe = eval.describe.clone();
    let variants: Vec<Variant> = plans
        .iter()
        .map(|(name, _, plan)| Variant {
            label: name.clone(),
            plan: plan.clone(),
            config: PtqConfig::default(),
        })
        .collect();
    let result = evaluate_variants(
        &model,
        &variants,
        &[(model_args.seed, calib.clone())],
        eval,
        data,
        &device,
    )?;
    let fp = &result.fp;
    let mut rows = vec![MixedRow {
        name: format!("{} FP32", card.aliases[0]),
        budget: None,
        avg_w_bits: 32.0,
        avg_a_bits: 32.0,
        top1: fp.top1_pct(),
        top5: fp.top5_pct(),
        kl: 0.0,
    }];
    for ((name, budget, plan), r) in plans.iter().zip(&result.variants) {
        let (w, a) = plan_averages(plan, &sites);
        let m = &r.seeds[0].metrics;
        rows.push(MixedRow {
            name: name.clone(),
            budget: *budget,
            avg_w_bits: w,
            avg_a_bits: a,
            top1: m.top1_pct(),
            top5: m.top5_pct(),
            kl: m.kl(),
        });
    }
    let mut table_md = String::from(
        "| plan | budget (avg bits) | avg W bits | avg A bits | top-1 % | top-5 % | KL to FP |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        table_md += &format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.4} |\n",
            r.name,
            r.budget
                .map(|b| format!("{b}"))
                .unwrap_or_else(|| "-".into()),
            r.avg_w_bits,
            r.avg_a_bits,
            r.top1,
            r.top5,
            r.kl
        );
    }
    print!("\n{table_md}");

    // 5. The run folder.
    let run = RunDir::create(runs, "ptq-mixed")?;
    scores.save(run.file("scores.toml"))?;
    table.save(run.file("sensitivity.toml"))?;
    for (name, budget, plan) in &plans {
        let file = format!(
            "plan-{}-{}.toml",
            name.replace(' ', "-"),
            budget.map(|b| b.to_string()).unwrap_or_default()
        );
        run.write(&file, plan.to_toml()?.as_bytes())?;
    }
    bar_chart(
        run.file("relevance.png"),
        &BarChart {
            title: format!(
                "LRP contribution per site — {} ({})",
                card.aliases[0], mixed.lrp_preset
            ),
            y_label: "share of |relevance|".into(),
            bars: sites
                .iter()
                .map(|s| {
                    Bar::site(
                        s.id.as_str(),
                        scores.scores.get(&s.id).copied().unwrap_or(0.0),
                    )
                })
                .collect(),
            ..Default::default()
        },
    )?;
    sensitivity_png(
        &run.file("sensitivity.png"),
        &table,
        &sites,
        &format!(
            "Sensitivity — {} ({}, {} probe images)",
            card.aliases[0],
            table.metric,
            probe.len()
        ),
    )?;
    for &avg in &mixed.budget.avg_bits {
        let series = plans
            .iter()
            .filter(|(_, b, _)| *b == Some(avg))
            .map(|(name, _, plan)| {
                Series::step(
                    name.clone(),
                    sites
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (i as f64, plan.sites[&s.id].w_bits.get() as f64))
                        .collect(),
                )
            })
            .collect();
        line_chart(
            run.file(&format!("bits-{avg}.png")),
            &LineChart {
                title: format!(
                    "Weight bits per site along the depth — {} at {avg} bits",
                    card.aliases[0]
                ),
                x_label: "site (forward order)".into(),
                y_label: "weight bits".into(),
                series,
                ..Default::default()
            },
        )?;
    }
    let json = mixq_core::to_json(
        &serde_json::json!({
            "model": card.name,
            "seed": model_args.seed,
            "calib_images": n_calib,
            "probe_images": probe.len(),
            "eval": describe,
            "candidates": mixed.sweep.candidates,
            "lambda": mixed.budget.lambda,
            "rows": rows,
        }),
        "results",
    )?;
    run.write("results.json", json.as_bytes())?;
    let mut pictures =
        String::from("![relevance](relevance.png)\n\n![sensitivity](sensitivity.png)\n\n");
    for &avg in &mixed.budget.avg_bits {
        pictures += &format!("![bits at {avg}](bits-{avg}.png)\n\n");
    }
    let report = format!(
        "# Mixed-precision PTQ: {}\n\nCalibration {n_calib} images, probe {} images (disjoint), seed {}. Evaluation: {describe}.\n\
         Budgets cap the parameter-weighted average weight bits and the MAC-weighted average activation bits.\n\n{table_md}\n{pictures}Reproduce:\n\n```\ncargo xtask ptq {}\n```\n",
        card.aliases[0],
        probe.len(),
        model_args.seed,
        std::env::args().skip(2).collect::<Vec<_>>().join(" ")
    );
    run.write("report.md", report.as_bytes())?;
    let path = run.finish()?;
    println!("\nwrote {}", path.display());
    Ok(())
}
