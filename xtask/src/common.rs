//! What every command shares: device selection, model + weights resolution, data sources.

use std::path::{Path, PathBuf};
use std::time::Duration;

use burn::tensor::Device;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mixq_core::{Error, Result};
use mixq_datasets::{LabelledImages, data_error};
use mixq_qat_trainer::ImageSet;
use mixq_vit_models::{Model, ModelCard, WeightsSource};

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
            other => Err(Error::invalid(
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
    /// A Hugging Face hub cache folder (models--timm--<name>/snapshots/*/model.safetensors).
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
    pub fn card(&self) -> Result<ModelCard> {
        ModelCard::find(&self.model)
    }

    /// Where the weights come from, or `None` for random weights.
    pub fn weights_source(&self, card: &ModelCard) -> Result<Option<WeightsSource>> {
        if self.random_weights {
            return Ok(None);
        }
        if let Some(dir) = &self.hf_cache {
            let repo = card.hf_repo.as_deref().ok_or_else(|| {
                Error::invalid(
                    "--hf-cache",
                    dir.display(),
                    format!("model '{}' has no hf_repo", card.name),
                )
            })?;
            return Ok(Some(WeightsSource::Safetensors(
                mixq_vit_models::weights::hf_cache_file(dir, repo)?,
            )));
        }
        if let Some(path) = &self.weights {
            if path.is_dir()
                && let Some(file) = card.weights_in_folder(path)
            {
                return WeightsSource::resolve(&file, None).map(Some);
            }
            return WeightsSource::resolve(path, card.hf_repo.as_deref()).map(Some);
        }
        match card.shipped_path() {
            Some(path) if !path.exists() && card.train.is_some() => Err(Error::invalid(
                "--weights",
                "(none)",
                format!(
                    "model '{}' names {} but it is not there yet: make it with `cargo xtask \
                     train --model {}`, or pass --weights FILE or --random-weights",
                    card.aliases[0],
                    path.display(),
                    card.aliases[0]
                ),
            )),
            Some(path) => WeightsSource::resolve(&path, None).map(Some),
            None => Err(Error::invalid(
                "--weights",
                "(none)",
                format!(
                    "model '{}' ships no checkpoint: pass --weights FILE, --hf-cache DIR or --random-weights",
                    card.aliases[0]
                ),
            )),
        }
    }

    /// The model with its weights on the chosen device.
    pub fn load(&self, card: &ModelCard, device: &Device) -> Result<Model> {
        let source = self.weights_source(card)?;
        device.seed(self.seed);
        let model = card.arch.init(device)?;
        match source {
            Some(source) => model.load_weights(&source),
            None => Ok(model),
        }
    }
}

/// Normalised images of `set` (`(v / max - mean) / std`) for the trainers.
pub fn image_set(set: &LabelledImages, name: &str, mean: f32, std: f32) -> Result<ImageSet> {
    let images = set
        .normalised(mean, std)
        .map_err(|e| data_error(Path::new(name), e))?;
    ImageSet::new(images, set.image_shape, set.labels.clone())
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
