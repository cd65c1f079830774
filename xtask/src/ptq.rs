//! `cargo xtask ptq`: post-training quantization with a fixed bit plan (or `--plan FILE`),
//! full precision and quantized side by side, and the run folder with plan, results, report.

use mixq_qat_trainer::PtqMethod;
use mixq_vit_models::{ModelCard, Network};
use std::path::{Path, PathBuf};

use clap::Args;
use mixq_core::{BitPlan, Error, Result, RunDir};
use mixq_ptq::{PtqTableConfig, ablation_grid, calibration_images, ptq_table, uniform_plan};

use crate::common::{BitArgs, CalibArgs, EvalDataArgs, ModelArgs, QuantizerArgs, StageBars};
use crate::mixed::{MixedArgs, run_mixed};
use mixq_datasets::{calibration_source, is_in_memory};
use mixq_ptq::mixed::CalibrationConfig;

#[derive(Args, Debug)]
pub struct PtqArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Weight and activation bits (sets both). A list (`--bits 8,6,4,3`) quantizes at each,
    /// evaluated in the same pass over the data.
    #[arg(long, value_delimiter = ',', default_value = "4")]
    pub bits: Vec<u8>,
    #[command(flatten)]
    pub bit_args: BitArgs,
    #[command(flatten)]
    pub calibration: CalibArgs,
    #[command(flatten)]
    pub eval_data: EvalDataArgs,
    #[command(flatten)]
    pub quantizers: QuantizerArgs,
    /// A bit plan (TOML, as written by every run) instead of uniform bits.
    #[arg(long, conflicts_with_all = ["w_bits", "a_bits"])]
    pub plan: Option<PathBuf>,
    /// Calibration seeds (`--seeds 0,1,2`; default: `--seed`): one calibration sample per seed,
    /// every figure reported as mean ± std over them (with --mixed: probe images, LRP scores,
    /// sensitivity and allocation anew for each seed).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Run the post-LN x softmax grid at these bits and write it as one table.
    #[arg(long)]
    pub ablation: bool,
    /// Where run folders are written.
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    /// Mixed precision: LRP scores + sensitivity sweep + allocation at --avg-bits, compared
    /// with the uniform plan at the same budget.
    #[arg(long, conflicts_with_all = ["plan", "ablation", "w_bits", "a_bits"])]
    pub mixed: bool,
    #[command(flatten)]
    pub mixed_args: MixedArgs,
    #[command(flatten)]
    pub recon: ReconArgs,
    /// Images of the generated synthetic training set (without --data); calibration and probe
    /// crops come from it, the held-out set (a fifth as many, or --val-images) is scored.
    #[arg(long, default_value_t = 300, help_heading = "Pose models (wtpose-*)")]
    pub synthetic: usize,
    /// Held-out synthetic images.
    #[arg(long, help_heading = "Pose models (wtpose-*)")]
    pub val_images: Option<usize>,
    /// Skip the flip test when scoring.
    #[arg(long, help_heading = "Pose models (wtpose-*)")]
    pub no_flip: bool,
}

/// Block reconstruction after calibration (learned rounding and activation steps per block).
#[derive(Args, Debug)]
#[command(next_help_heading = "Block reconstruction")]
pub struct ReconArgs {
    /// Optimise every block's weight rounding and activation steps against the FP block's
    /// output (AdaRound + LSQ, block by block) after calibrating.
    #[arg(long)]
    pub recon: bool,
    /// Optimisation steps per block.
    #[arg(long, default_value_t = 1000, requires = "recon")]
    pub recon_iters: usize,
    /// Reconstruction images per seed (a seeded draw from the calibration source).
    #[arg(long, default_value_t = 256, requires = "recon")]
    pub recon_images: usize,
    /// QDrop: the probability that an activation element keeps its FP value while optimising
    /// (0, the default, turns it off; QDrop's paper uses 0.5).
    #[arg(long, default_value_t = 0.0, requires = "recon")]
    pub recon_drop: f64,
    /// Block-output loss: `mse`, or `fisher` (each element weighted by the diagonal Fisher of
    /// the KL to the FP logits at the block output; classifiers).
    #[arg(long, default_value = "mse", value_parser = ["mse", "fisher"], requires = "recon")]
    pub recon_loss: String,
    /// Also reconstruct what follows the last block (head; a pose model's waterfall convs and
    /// heatmap head) against the full-precision output.
    #[arg(long, requires = "recon")]
    pub recon_tail: bool,
}

impl ReconArgs {
    /// How the table's models are made: calibration, or with `--recon` block reconstruction
    /// (`images` gives a seed's reconstruction images, `None`: the calibration images;
    /// `progress` every step).
    pub fn method<'a>(
        &self,
        images: Option<&'a (dyn Fn(u64) -> Result<burn::tensor::Tensor<4>> + Sync)>,
        progress: &'a (dyn Fn(&mixq_qat_trainer::ReconProgress) + Sync),
    ) -> PtqMethod<'a> {
        if !self.recon {
            return PtqMethod::Calibrate;
        }
        PtqMethod::Reconstruct(mixq_qat_trainer::Reconstruct {
            config: self.config(),
            images,
            progress,
            reports: Default::default(),
        })
    }

    /// The library's hyper-parameters (`seed` is each calibration seed's).
    pub fn config(&self) -> mixq_qat_trainer::ReconConfig {
        mixq_qat_trainer::ReconConfig {
            iters: self.recon_iters,
            drop_prob: self.recon_drop,
            loss: if self.recon_loss == "fisher" {
                mixq_qat_trainer::ReconLoss::Fisher
            } else {
                mixq_qat_trainer::ReconLoss::Mse
            },
            tail: self.recon_tail,
            ..Default::default()
        }
    }
}

impl PtqArgs {
    /// The (weight, activation) bits asked for, one pair per `--bits` value.
    pub fn bit_pairs(&self) -> Result<Vec<(u8, u8)>> {
        if self.bits.len() > 1 && (self.bit_args.w_bits.is_some() || self.bit_args.a_bits.is_some())
        {
            return Err(Error::invalid(
                "--bits",
                self.bits_text(),
                "--w-bits/--a-bits override one --bits value, not a list",
            ));
        }
        Ok(self
            .bits
            .iter()
            .map(|&b| {
                (
                    self.bit_args.w_bits.unwrap_or(b),
                    self.bit_args.a_bits.unwrap_or(b),
                )
            })
            .collect())
    }

    /// `--bits` as typed (`8,4`), for errors.
    fn bits_text(&self) -> String {
        self.bits
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The one (weight, activation) pair of commands that take a single one.
    pub fn single_bit_pair(&self) -> Result<(u8, u8)> {
        match self.bit_pairs()?.as_slice() {
            [pair] => Ok(*pair),
            _ => Err(Error::invalid(
                "--bits",
                self.bits_text(),
                "this model takes one --bits value",
            )),
        }
    }

    /// The calibration seeds: `--seeds`, else `--seed`.
    fn calibration_seeds(&self) -> Vec<u64> {
        if self.seeds.is_empty() {
            vec![self.model.seed]
        } else {
            self.seeds.clone()
        }
    }
}

pub fn run(args: PtqArgs) -> Result<()> {
    let card = ModelCard::find(&args.model.model)?;
    if card.arch.pose().is_some() {
        if args.seeds.len() > 1 {
            return Err(Error::invalid(
                "--seeds",
                args.seeds.len(),
                "pose models take one calibration seed (--seed)",
            ));
        }
        return crate::pose_ptq::run(&args, &card);
    }
    if args.recon.recon {
        // Fails before the minutes of calibration and sweeping.
        args.recon.config().validate()?;
        if args.recon.recon_images == 0 {
            return Err(Error::invalid("--recon-images", 0, "must be at least 1"));
        }
    }
    if args.mixed {
        let calibration = CalibrationConfig {
            images: args.calibration.calib,
            data: calibration_source(
                args.calibration.calib_data.as_deref(),
                args.eval_data.data.as_deref(),
            )
            .map(Path::to_path_buf),
            image_bits: args.bit_args.image_bits,
        };
        return run_mixed(
            &args.model,
            &args.calibration_seeds(),
            &args.mixed_args,
            &args.recon,
            &calibration,
            args.eval_data.data.as_deref(),
            args.eval_data.eval,
            args.eval_data.batch,
            &args.runs,
        );
    }
    // Bad evaluation data fails before the minutes of calibration.
    let data = args.eval_data.open(&card)?;
    let device = args.model.device.device()?;
    let model = args.model.load(&card, &device)?;
    let sites = model.sites();
    let seeds = args.calibration_seeds();
    // One (label, plan) per bit width, or the --plan file.
    let plans: Vec<(String, BitPlan)> = match &args.plan {
        Some(path) => vec![(format!("plan {}", path.display()), BitPlan::load(path)?)],
        None => args
            .bit_pairs()?
            .into_iter()
            .map(|(w, a)| {
                Ok((
                    format!("W{w}A{a}"),
                    uniform_plan(&sites, w, a, args.bit_args.image_bits)?,
                ))
            })
            .collect::<Result<_>>()?,
    };
    let grid = if args.ablation {
        ablation_grid()
    } else {
        vec![(args.quantizers.post_ln, args.quantizers.softmax)]
    };
    if args.calibration.calib_data.is_none()
        && args
            .eval_data
            .data
            .as_deref()
            .is_some_and(|d| !is_in_memory(d))
    {
        tracing::warn!(
            "no --calib-data: calibrating on a seeded sample of --data (evaluation images)"
        );
    }
    let calib_data = args
        .calibration
        .calib_data
        .clone()
        .or(args.eval_data.data.clone());
    let bars = std::sync::Mutex::new(StageBars::default());
    let recon_images = |seed: u64| {
        calibration_images(
            &card.data_spec(),
            calib_data.as_deref(),
            args.recon.recon_images,
            seed,
            &device,
        )
    };
    let progress = |p: &mixq_qat_trainer::ReconProgress| recon_progress(&bars, p);
    let method = args.recon.method(Some(&recon_images), &progress);
    let config = PtqTableConfig {
        plans: plans
            .into_iter()
            .map(|(label, plan)| (method.label(&label), plan))
            .collect(),
        grid,
        seeds,
        calib: args.calibration.calib,
        calib_data: calib_data.clone(),
    };
    let results = ptq_table(
        &model,
        &card,
        &config,
        &method,
        data,
        &device,
        |stage, d, t| {
            bars.lock()
                .expect("progress bars")
                .update(stage_name(stage, &method), d, t)
        },
    )?;
    let recon_reports = method.into_reports();
    let mut bars = bars.into_inner().expect("progress bars");
    bars.finish();
    println!("{}", bars.times_line());
    print!("{}", results.markdown());
    let run = RunDir::create(
        &args.runs,
        if args.ablation { "ptq-ablation" } else { "ptq" },
    )?;
    write_recon(&recon_reports, &run)?;
    results.write_run(&run, &card, &config.plans, &crate::common::command_line())?;
    let path = run.finish()?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// Shows a reconstruction step on the current stage's bar (one bar per block, its loss).
pub fn recon_progress(bars: &std::sync::Mutex<StageBars>, p: &mixq_qat_trainer::ReconProgress) {
    // Models are reconstructed in parallel: the bar counts finished models (the table's
    // calibrate stage, named `reconstruct`), the message shows the latest step of any of them.
    bars.lock().expect("progress bars").message(&format!(
        "block {}/{} step {}/{} loss {:.4}",
        p.block + 1,
        p.blocks,
        p.iter,
        p.iters,
        p.loss
    ));
}

/// How a PTQ table's stage is named on its bar: with `--recon` the quantizing stage is the
/// reconstruction.
pub fn stage_name(stage: mixq_ptq::PtqStage, method: &PtqMethod) -> &'static str {
    match stage {
        mixq_ptq::PtqStage::Calibrate if method.reconstructs() => "reconstruct",
        _ => stage.name(),
    }
}

/// Prints the per-block table and writes `recon.json` into the run folder (nothing without
/// reconstruction).
pub fn write_recon(reports: &[mixq_qat_trainer::ReconReport], run: &RunDir) -> Result<()> {
    if reports.is_empty() {
        return Ok(());
    }
    print!("\n{}", mixq_qat_trainer::ReconReport::markdown(reports));
    let json = mixq_core::to_json(&reports, "reconstruction")?;
    run.write("recon.json", json.as_bytes())
}
