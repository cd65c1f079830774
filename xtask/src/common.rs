//! What every command shares: device selection, the model flags, progress bars.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mixq_core::Result;
use mixq_ptq::{PostLnMode, SoftmaxMode};
use mixq_qat_trainer::{
    EpochStats, EpochTrainer, FitConfig, FitEvent, FitOutcome, ImageSet, TrainingRun, fit,
};
use mixq_vit_models::{Model, ModelCard, WeightsChoice};

/// The compute backend, chosen at the command line only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceName {
    /// burn-flex, burn's default CPU backend.
    Flex,
    /// burn-ndarray (cross-check CPU backend).
    Ndarray,
    /// burn-wgpu on the default GPU (build with `--features wgpu`).
    Wgpu,
    /// burn-wgpu on a CPU Vulkan device such as lavapipe (build with `--features wgpu`).
    WgpuCpu,
}

impl DeviceName {
    pub fn device(self) -> Result<Device> {
        match self {
            DeviceName::Flex => Ok(Device::flex()),
            #[allow(deprecated)]
            DeviceName::Ndarray => Ok(Device::ndarray()),
            #[cfg(feature = "wgpu")]
            DeviceName::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(feature = "wgpu")]
            DeviceName::WgpuCpu => Ok(Device::wgpu(burn::tensor::DeviceKind::Cpu)),
            #[cfg(not(feature = "wgpu"))]
            other => Err(mixq_core::Error::invalid(
                "--device",
                format!("{other:?}").to_lowercase(),
                "this build has no wgpu backend; rebuild with the feature: \
                 cargo run --release -p xtask --features wgpu -- <command> ...",
            )),
        }
    }
}

/// Model selection shared by the commands.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model alias (deit-s, swin-t, digits-deit, ...) or a model-card .toml file.
    #[arg(long, default_value = "digits-deit")]
    pub model: String,
    /// Weights: a timm .safetensors or .pth file, or a folder holding one.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// A Hugging Face hub cache folder (`models--timm--NAME/snapshots/*/model.safetensors`).
    #[arg(long)]
    pub hf_cache: Option<PathBuf>,
    /// Use random weights (seeded by --seed); for speed measurements only.
    #[arg(long, conflicts_with_all = ["weights", "hf_cache"])]
    pub random_weights: bool,
    /// Compute backend.
    #[arg(long, value_enum, default_value = "flex")]
    pub device: DeviceName,
    /// Seed for everything random (weights with --random-weights, data splits).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl ModelArgs {
    /// The card of a classifier or backbone; a pose model's card is refused by name (only
    /// `ptq` and `pose` take those, through [`ModelCard::find`]).
    pub fn card(&self) -> Result<ModelCard> {
        let card = ModelCard::find(&self.model)?;
        if card.arch.pose().is_some() {
            return Err(mixq_core::Error::invalid(
                "--model",
                &self.model,
                "is a pose model: `cargo xtask pose train|eval` and `cargo xtask ptq` take it",
            ));
        }
        Ok(card)
    }

    /// Where the weights come from, as the library takes it.
    pub fn weights_choice(&self) -> WeightsChoice {
        WeightsChoice {
            weights: self.weights.clone(),
            hf_cache: self.hf_cache.clone(),
            random: self.random_weights,
        }
    }

    /// The model with its weights on the chosen device.
    pub fn load(&self, card: &ModelCard, device: &Device) -> Result<Model> {
        card.load(&self.weights_choice(), self.seed, device)
    }
}

/// The arguments after `cargo xtask <command>`, for a report's reproduce line.
pub fn command_line() -> String {
    std::env::args().skip(2).collect::<Vec<_>>().join(" ")
}

/// Prints which build a benchmark measures, and warns when its kernels are not optimised.
pub fn print_build() {
    let build = mixq_deploy::BuildInfo::current();
    println!("build: {build}");
    if !build.is_optimised() {
        tracing::warn!(
            "this build is not optimised ({build}): timings are not representative; \
             build as the README does (cargo xtask ...) with the workspace's profile settings"
        );
    }
}

/// A progress bar in mixq's style, hidden when stderr is not a terminal.
pub fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Progress bars for work reported as (stage, done, total): one bar per stage, made when its
/// first report arrives and cleared when the next stage starts; each stage's wall time is kept.
#[derive(Default)]
pub struct StageBars {
    current: Option<(String, ProgressBar, Instant)>,
    times: Vec<(String, f64)>,
}

impl StageBars {
    pub fn update(&mut self, stage: &str, done: usize, total: usize) {
        if self.current.as_ref().is_none_or(|(s, _, _)| s != stage) {
            self.finish();
            self.current = Some((stage.to_string(), progress(total, stage), Instant::now()));
        }
        let (_, bar, _) = self.current.as_ref().expect("set above");
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    }

    /// Shows `message` beside the current stage's bar.
    pub fn message(&self, message: &str) {
        if let Some((_, bar, _)) = &self.current {
            bar.set_message(message.to_string());
        }
    }

    pub fn finish(&mut self) {
        if let Some((stage, bar, start)) = self.current.take() {
            bar.finish_and_clear();
            self.times.push((stage, start.elapsed().as_secs_f64()));
        }
    }

    /// One line with each finished stage's wall time, in order (from its first report to the
    /// next stage's, so a stage's set-up before its first report counts to the previous one).
    pub fn times_line(&self) -> String {
        let stages: Vec<String> = self
            .times
            .iter()
            .map(|(stage, secs)| format!("{stage} {secs:.1} s"))
            .collect();
        format!(
            "stage wall times ({} threads): {}",
            threads(),
            stages.join(", ")
        )
    }
}

/// The cores the process may use (what the CPU backends' thread pools size themselves to).
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// [`fit()`] with a progress bar per epoch (loss, running train top-1, images/s); `on_epoch` sees
/// every finished epoch and the history. A run stopped by `--stop-after` prints where it
/// continues from and gives `false`.
pub fn fit_with_bars<T: EpochTrainer>(
    trainer: &mut T,
    train: &ImageSet,
    config: &FitConfig,
    mut on_epoch: impl FnMut(&EpochStats, &[EpochStats]) -> Result<()>,
) -> Result<bool> {
    let (epochs, batch) = (trainer.epochs(), trainer.batch());
    let mut bar: Option<(ProgressBar, Instant)> = None;
    let outcome = fit(trainer, train, config, |event| {
        match event {
            FitEvent::EpochStart { epoch, steps } => {
                bar = Some((
                    progress(steps, &format!("epoch {epoch}/{epochs}")),
                    Instant::now(),
                ));
            }
            FitEvent::Step(s) => {
                let (bar, start) = bar.as_ref().expect("an epoch has started");
                bar.inc(1);
                let per_sec =
                    (bar.position() as usize * batch) as f64 / start.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "loss {:.4} acc {:.1}% {per_sec:.0} images/s",
                    s.loss, s.train_top1
                ));
            }
            FitEvent::EpochEnd { stats, history } => {
                if let Some((bar, _)) = bar.take() {
                    bar.finish_and_clear();
                }
                on_epoch(stats, history)?;
            }
        }
        Ok(())
    })?;
    if outcome == FitOutcome::Stopped {
        println!(
            "stopped after epoch {} of {epochs} (run folder left unfinished: {})",
            trainer.epochs_done(),
            config
                .checkpoint
                .parent()
                .unwrap_or(Path::new("."))
                .display()
        );
    }
    Ok(outcome == FitOutcome::Finished)
}

/// Weight and activation bits that override `--bits`, and the image input's bits (ptq, export,
/// qat): one spelling everywhere, the old `--wbits/--abits` kept as hidden aliases.
#[derive(Args, Debug, Clone)]
pub struct BitArgs {
    /// Weight bits (overrides --bits).
    #[arg(long, alias = "wbits")]
    pub w_bits: Option<u8>,
    /// Activation bits (overrides --bits).
    #[arg(long, alias = "abits")]
    pub a_bits: Option<u8>,
    /// Bits of the image input (the patch embedding's input).
    #[arg(long, default_value_t = 8)]
    pub image_bits: u8,
}

/// How many calibration images, from where (ptq, export).
#[derive(Args, Debug, Clone)]
pub struct CalibArgs {
    /// Calibration images (a seeded sample of the validation split, or of the train split where
    /// the data set has none).
    #[arg(long, default_value_t = 32)]
    pub calib: usize,
    /// Calibration data: digits, fashion-mnist, mnist, a folder of the four IDX files or an
    /// ImageNet-style training folder; default: the card's data set.
    #[arg(long)]
    pub calib_data: Option<PathBuf>,
}

/// The quantizers of post-LayerNorm inputs and attention probabilities (ptq, export).
#[derive(Args, Debug, Clone)]
pub struct QuantizerArgs {
    /// Quantization of post-LayerNorm inputs.
    #[arg(long, default_value = "clipped-channel")]
    pub post_ln: PostLnMode,
    /// Quantization of the attention probabilities (`uniform` runs p·v on the engine's integer
    /// kernel).
    #[arg(long, default_value = "logsqrt2")]
    pub softmax: SoftmaxMode,
}

/// Where a training run writes, and how it continues (train, qat).
#[derive(Args, Debug, Clone)]
pub struct ResumeArgs {
    /// Continue the run whose folder (finished, or an interrupted `.…partial` one) holds its
    /// checkpoint; every other option must be the same as in that run.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Where run folders are written.
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    /// Stop after this many epochs in this invocation, leaving the run folder unfinished (as a
    /// kill would): for testing --resume.
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

impl ResumeArgs {
    /// The checkpoint `--resume` points at (a run folder holding `file`, or the file itself).
    pub fn checkpoint(&self, file: &str, command: &str) -> Result<Option<PathBuf>> {
        TrainingRun::resume_checkpoint(self.resume.as_deref(), file, command)
    }

    /// Restores `trainer` from `resume` and creates the run folder; says where it goes on.
    pub fn start<T: EpochTrainer>(
        &self,
        trainer: &mut T,
        command: &str,
        file: &str,
        resume: Option<PathBuf>,
    ) -> Result<TrainingRun> {
        let run = TrainingRun::start(trainer, &self.runs, command, file, resume)?;
        if let Some(from) = &run.resumed_from {
            eprintln!(
                "resumed {} at epoch {}/{}",
                from.display(),
                trainer.epochs_done(),
                trainer.epochs()
            );
        }
        Ok(run)
    }
}

/// Evaluation images (eval, run-int, ptq).
#[derive(Args, Debug, Clone)]
pub struct EvalDataArgs {
    /// Evaluation data: digits, fashion-mnist, mnist, a folder of the four IDX files or an
    /// ImageNet-style folder; models of a known data set default to its test split. Pose
    /// models (ptq): a COCO-format folder (person_keypoints.json + val/), synthetic if absent.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Evaluate only the first N images (`--limit` is an old spelling).
    #[arg(long, alias = "limit")]
    pub eval: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
}

impl EvalDataArgs {
    /// The evaluation batches for a model of `card`.
    pub fn open(&self, card: &ModelCard) -> Result<mixq_datasets::EvalData> {
        mixq_datasets::EvalData::open(
            &card.data_spec(),
            self.data.as_deref(),
            self.eval,
            self.batch,
        )
    }
}
