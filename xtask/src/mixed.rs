//! Mixed precision (Mix-QViT): `cargo xtask sensitivity`, `cargo xtask allocate`, and the
//! whole `cargo xtask ptq --mixed` pipeline (calibration, LRP scores, the sensitivity sweep,
//! allocation, PTQ with each plan, evaluation against FP and the uniform plan).

use std::path::{Path, PathBuf};

use clap::Args;
use mixq_allocator::parse_candidates;
use mixq_core::{ContributionScores, Result, RunDir, SensitivityTable};
use mixq_datasets::EvalData;
use mixq_ptq::mixed::{
    BudgetConfig, CalibrationConfig, MixedConfig, SweepConfig, budget_plans, calib_and_probe,
    evaluate_plans, make_plans, sensitivity_table,
};
use mixq_ptq::{MixedReport, calibration_images};
use mixq_report::sensitivity_heat_map;
use mixq_sensitivity::{Metric, Shard, merge_tables};
use mixq_vit_models::ModelCard;

use crate::common::{ModelArgs, StageBars};

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
    /// Damage metric written to the table: kl, ce, top1, cosine (backbones) or rel-mse (error
    /// relative to the outputs' energy).
    #[arg(long, default_value = "kl")]
    pub metric: Metric,
    /// Rerun every site from the images instead of from its block's cached input.
    #[arg(long)]
    pub no_block_cache: bool,
    /// Where measured points are kept so that a rerun resumes (default: `RUNS/.sensitivity-cache`).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Batch size of the sweep's forward passes.
    #[arg(long, default_value_t = 32)]
    pub sweep_batch: usize,
}

impl SweepArgs {
    /// The library's sweep options; the point cache defaults to `<runs>/.sensitivity-cache`.
    pub fn config(&self, runs: &Path) -> SweepConfig {
        SweepConfig {
            probe: self.probe,
            candidates: self.candidates.clone(),
            baseline: self.baseline.clone(),
            metric: self.metric,
            block_cache: !self.no_block_cache,
            cache_dir: self
                .cache_dir
                .clone()
                .unwrap_or_else(|| runs.join(".sensitivity-cache")),
            batch: self.sweep_batch,
        }
    }
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
        let calibration = CalibrationConfig {
            images: args.calib,
            data: args.calib_data.clone(),
            image_bits: args.image_bits,
        };
        let sweep = args.sweep.config(&args.runs);
        let (calib, probe) = calib_and_probe(
            &card.data_spec(),
            &calibration,
            &sweep,
            args.model.seed,
            &device,
        )?;
        let mut bars = StageBars::default();
        let table = sensitivity_table(
            &model,
            &card.name,
            &calib,
            &probe,
            &sweep,
            args.image_bits,
            args.shard,
            args.model.seed,
            |done, total| bars.update("sensitivity", done, total),
        )?;
        bars.finish();
        println!("{}", bars.times_line());
        table
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
    sensitivity_heat_map(
        run.file("sensitivity.png"),
        &table,
        &mixq_core::site_ids(&sites),
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
    /// Allocation criteria (mix, lrp, sensitivity); several give one plan each.
    #[arg(
        long = "criterion",
        alias = "preset",
        value_delimiter = ',',
        default_value = "mix,lrp,sensitivity"
    )]
    pub criteria: Vec<mixq_allocator::Criterion>,
    /// Weight of importance in the `mix` cost: damage x (1 + lambda x importance).
    #[arg(long, default_value_t = 1.0)]
    pub lambda: f64,
}

impl BudgetArgs {
    pub fn config(&self) -> BudgetConfig {
        BudgetConfig {
            avg_bits: self.avg_bits.clone(),
            avg_a_bits: self.avg_a_bits,
            model_bytes: self.model_bytes,
            bit_ops: self.bit_ops,
            criteria: self.criteria.clone(),
            lambda: self.lambda,
        }
    }
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
    let plans = budget_plans(
        &sites,
        Some(&scores),
        &table,
        &candidates,
        &args.budget.config(),
        args.image_bits,
        Some(&card.name),
        false,
    )?;
    for p in plans {
        let Some(a) = &p.allocation else { continue };
        let criterion = p.name.trim_start_matches("mixed ");
        println!(
            "| {criterion} | {} | {:.5} | {:.3} | {:.3} | {} |",
            p.avg_bits,
            a.objective,
            a.budgets[0].used,
            a.budgets[1].used,
            a.status.name()
        );
        run.write(
            &format!("plan-{criterion}-{}.toml", p.avg_bits),
            p.plan.to_toml()?.as_bytes(),
        )?;
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

impl MixedArgs {
    pub fn config(&self, runs: &Path) -> MixedConfig {
        MixedConfig {
            sweep: self.sweep.config(runs),
            budget: self.budget.config(),
            lrp_preset: self.lrp_preset,
        }
    }
}

/// `cargo xtask ptq --mixed`.
#[allow(clippy::too_many_arguments)]
pub fn run_mixed(
    model_args: &ModelArgs,
    seeds: &[u64],
    mixed: &MixedArgs,
    recon: &crate::ptq::ReconArgs,
    calibration: &CalibrationConfig,
    data: Option<&Path>,
    eval_limit: Option<usize>,
    batch: usize,
    runs: &Path,
) -> Result<()> {
    let card = model_args.card()?;
    // Bad evaluation data fails before the minutes of calibration and sweeping.
    let eval = EvalData::open(&card.data_spec(), data, eval_limit, batch)?;
    let device = model_args.device.device()?;
    let model = model_args.load(&card, &device)?;
    let bars = std::sync::Mutex::new(StageBars::default());
    let config = mixed.config(runs);
    let mut seeded = seeds
        .iter()
        .map(|&seed| {
            let plans = make_plans(
                &model,
                &card,
                seed,
                &config,
                calibration,
                &device,
                |stage, done, total| {
                    bars.lock().expect("progress bars").update(
                        &format!("{} (seed {seed})", stage.name()),
                        done,
                        total,
                    )
                },
            )?;
            Ok((seed, plans))
        })
        .collect::<Result<Vec<_>>>()?;
    bars.lock().expect("progress bars").finish();
    // With --recon every plan is block-reconstructed after calibration; its rows say so.
    let recon_images = |seed: u64| {
        calibration_images(
            &card.data_spec(),
            calibration.data.as_deref(),
            recon.recon_images,
            seed,
            &device,
        )
    };
    let progress = |p: &mixq_qat_trainer::ReconProgress| crate::ptq::recon_progress(&bars, p);
    let method = recon.method(Some(&recon_images), &progress);
    for (_, plans) in &mut seeded {
        for (name, _, _) in &mut plans.plans {
            *name = method.label(name);
        }
    }
    let describe = eval.describe.clone();
    let rows = evaluate_plans(&model, &card, &seeded, &method, eval, &device, |s, d, t| {
        bars.lock()
            .expect("progress bars")
            .update(crate::ptq::stage_name(s, &method), d, t)
    })?;
    let recon_reports = method.into_reports();
    let mut bars = bars.into_inner().expect("progress bars");
    bars.finish();
    println!("{}", bars.times_line());
    let report = MixedReport {
        card: &card,
        seeded: &seeded,
        rows: &rows,
        config: &config,
        eval: &describe,
    };
    let (table_md, agreement_md) = report.tables()?;
    print!("\n{table_md}");
    print!("\n{agreement_md}");
    let run = RunDir::create(runs, "ptq-mixed")?;
    crate::ptq::write_recon(&recon_reports, &run)?;
    report.write(&run, &crate::common::command_line())?;
    let path = run.finish()?;
    println!("\nwrote {}", path.display());
    Ok(())
}
