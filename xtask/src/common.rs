//! What every command shares: device selection, model + weights resolution, data sources.

use std::path::{Path, PathBuf};
use std::time::Duration;

use burn::tensor::{Device, Tensor, TensorData};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mixq_core::{Error, Result};
use mixq_datasets::{Batch, Digits, EvalTransform, ImageFolder, Loader};
use mixq_vit_models::{Model, ModelCard, WeightsSource};

/// The digits train/test split is fixed: the shipped checkpoints were trained on split 0, and
/// every `--seed` must evaluate on the same held-out images (seeds vary sampling and init only).
pub const DIGITS_SPLIT_SEED: u64 = 0;

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

/// Images for evaluation: the digits test split or an ImageNet-style folder.
pub struct EvalData {
    pub batches: Box<dyn Iterator<Item = Batch>>,
    pub len: usize,
    pub describe: String,
}

impl EvalData {
    pub fn open(
        card: &ModelCard,
        data: Option<&Path>,
        limit: Option<usize>,
        batch: usize,
    ) -> Result<Self> {
        if batch == 0 {
            return Err(Error::invalid("--batch", 0, "must be at least 1"));
        }
        if limit == Some(0) {
            return Err(Error::invalid("--limit", 0, "must be at least 1"));
        }
        let pre = &card.preprocess;
        match data {
            Some(dir) => {
                let folder = ImageFolder::new(dir).map_err(|e| data_error(dir, e))?;
                let transform = EvalTransform {
                    img_size: pre.img_size,
                    crop_pct: pre.crop_pct,
                    mean: channel3(&pre.mean),
                    std: channel3(&pre.std),
                    channels: card.arch.in_chans(),
                };
                let loader =
                    Loader::new(folder, transform, batch, limit).map_err(|e| data_error(dir, e))?;
                let len = loader.num_samples();
                Ok(EvalData {
                    batches: Box::new(loader),
                    len,
                    describe: format!("{} ({len} images)", dir.display()),
                })
            }
            None if card.dataset.as_deref() == Some("digits") => {
                let (_, mut test) = Digits::load().split(DIGITS_SPLIT_SEED);
                if let Some(n) = limit {
                    test.truncate(n);
                }
                let len = test.len();
                let batches: Vec<Batch> = test
                    .batches(batch, pre.mean[0], pre.std[0])
                    .map_err(|e| data_error(Path::new("digits"), e))?
                    .collect();
                Ok(EvalData {
                    batches: Box::new(batches.into_iter()),
                    len,
                    describe: format!("digits test split ({len} images)"),
                })
            }
            None => Err(Error::invalid(
                "--data",
                "(none)",
                format!(
                    "model '{}' needs an ImageNet-style folder: pass --data DIR",
                    card.aliases[0]
                ),
            )),
        }
    }
}

fn channel3(v: &[f32]) -> [f32; 3] {
    [v[0], *v.get(1).unwrap_or(&v[0]), *v.get(2).unwrap_or(&v[0])]
}

pub fn data_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Data {
        path: path.into(),
        message: e.to_string(),
    }
}

/// A batch as a `[b, c, h, w]` tensor.
pub fn batch_tensor(batch: &Batch, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(batch.images.clone(), batch.shape), device)
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

/// `n` calibration images, a seeded sample: from the digits train split, or from `folder`
/// (a training-split folder). Fewer available than asked is a warning, not an error.
pub fn calibration_images(
    card: &ModelCard,
    folder: Option<&Path>,
    n: usize,
    seed: u64,
    device: &Device,
) -> Result<Tensor<4>> {
    Ok(batch_tensor(
        &sample_batch(card, folder, n, seed, "--calib")?,
        device,
    ))
}

/// A seeded sample of `n` training images (with labels and sources) as one batch; `what` names
/// the option that asked for them in errors.
pub fn sample_batch(
    card: &ModelCard,
    folder: Option<&Path>,
    n: usize,
    seed: u64,
    what: &str,
) -> Result<Batch> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    if n == 0 {
        return Err(Error::invalid(what, 0, "must be at least 1"));
    }
    let pre = &card.preprocess;
    let batch = match folder {
        Some(dir) => {
            let folder = ImageFolder::new(dir).map_err(|e| data_error(dir, e))?;
            let available = folder.len();
            let folder = folder.subset(n.min(available), seed);
            let transform = eval_transform(card);
            let mut loader =
                Loader::new(folder, transform, n, None).map_err(|e| data_error(dir, e))?;
            loader
                .next()
                .ok_or_else(|| data_error(dir, "no decodable calibration image"))?
        }
        None if card.dataset.as_deref() == Some("digits") => {
            let (train, _) = Digits::load().split(DIGITS_SPLIT_SEED);
            let mut order: Vec<usize> = (0..train.len()).collect();
            order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
                seed ^ 0x00ca_11b0,
            ));
            order.truncate(n);
            let pick = mixq_datasets::Split {
                indices: order.iter().map(|&i| train.indices[i]).collect(),
                images: order.iter().map(|&i| train.images[i]).collect(),
                labels: order.iter().map(|&i| train.labels[i]).collect(),
            };
            pick.batches(n, pre.mean[0], pre.std[0])
                .map_err(|e| data_error(Path::new("digits"), e))?
                .next()
                .expect("the digits train split is not empty")
        }
        None => {
            return Err(Error::invalid(
                "--calib-data",
                "(none)",
                format!(
                    "model '{}' needs calibration images: pass --calib-data DIR (a training-split folder)",
                    card.aliases[0]
                ),
            ));
        }
    };
    if batch.len() < n {
        tracing::warn!(
            asked = n,
            available = batch.len(),
            "fewer training images than asked; using all there are"
        );
    }
    Ok(batch)
}

/// The model card's eval transform for image folders.
pub fn eval_transform(card: &ModelCard) -> EvalTransform {
    let pre = &card.preprocess;
    EvalTransform {
        img_size: pre.img_size,
        crop_pct: pre.crop_pct,
        mean: channel3(&pre.mean),
        std: channel3(&pre.std),
        channels: card.arch.in_chans(),
    }
}
