//! What every command shares: device selection, model + weights resolution, data sources.

use std::path::{Path, PathBuf};
use std::time::Duration;

use burn::tensor::{Device, Tensor, TensorData};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mixq_core::{Error, Result};
use mixq_datasets::{
    Batch, ClassificationData, DataError, EvalTransform, IdxDataset, ImageFolder, KnownDataset,
    LabelledImages, Loader,
};
use mixq_qat_trainer::ImageSet;
use mixq_vit_models::{Model, ModelCard, WeightsSource};

/// Separates the calibration sample's shuffle from other uses of the same `--seed`.
const CALIBRATION_SALT: u64 = 0x00ca_11b0;

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

/// What `--data` names, resolved: an in-memory data set with its fixed splits, or an
/// ImageNet-style folder.
pub enum DataSource {
    /// digits, Fashion-MNIST, MNIST or a folder of IDX files.
    InMemory(Box<ClassificationData>),
    /// An ImageNet-style folder (one sub-folder per class).
    Folder(PathBuf),
}

/// Resolves `--data` for `card`: a known data set's name (`digits`, `fashion-mnist`,
/// `mnist`; a folder of that name needs a path such as `./mnist`), a folder holding the four
/// IDX files, or an ImageNet-style folder; without `--data`, the data set the card names.
pub fn open_data(card: &ModelCard, data: Option<&Path>) -> Result<DataSource> {
    let known = |name: &str| {
        KnownDataset::from_name(name).filter(|_| !name.contains(std::path::MAIN_SEPARATOR))
    };
    let source = match data {
        Some(dir) => match dir.to_str().and_then(known) {
            Some(set) => in_memory(set.open(), Path::new(set.name()))?,
            None if IdxDataset::is_idx_dir(dir) || holds_idx_file(dir) => {
                in_memory(ClassificationData::from_idx(dir, None), dir)?
            }
            None => DataSource::Folder(dir.to_path_buf()),
        },
        None => match card.dataset.as_deref().and_then(KnownDataset::from_name) {
            Some(set) => in_memory(set.open(), Path::new(set.name()))?,
            None => {
                return Err(Error::invalid(
                    "--data",
                    "(none)",
                    format!(
                        "model '{}' needs data: pass --data DIR (an ImageNet-style folder or \
                         a folder of IDX files) or --data fashion-mnist|mnist|digits",
                        card.aliases[0]
                    ),
                ));
            }
        },
    };
    if let DataSource::InMemory(set) = &source {
        let want = [
            card.arch.in_chans(),
            card.preprocess.img_size,
            card.preprocess.img_size,
        ];
        if set.test.image_shape != want {
            return Err(Error::invalid(
                "--data",
                &set.name,
                format!(
                    "holds {:?} images, model '{}' takes {want:?}",
                    set.test.image_shape, card.aliases[0]
                ),
            ));
        }
    }
    Ok(source)
}

fn in_memory(
    set: std::result::Result<ClassificationData, DataError>,
    path: &Path,
) -> Result<DataSource> {
    set.map(|s| DataSource::InMemory(Box::new(s)))
        .map_err(|e| data_error(path, e))
}

/// Whether `--data` names a data set held in memory (a known name or a folder of IDX files),
/// whose calibration pool is its validation split: such a `--data` may also serve calibration,
/// an ImageNet-style evaluation folder may not.
pub fn is_in_memory(data: &Path) -> bool {
    data.to_str().is_some_and(|n| {
        KnownDataset::from_name(n).is_some() && !n.contains(std::path::MAIN_SEPARATOR)
    }) || IdxDataset::is_idx_dir(data)
        || holds_idx_file(data)
}

/// Where calibration (and probe) images come from: `--calib-data`, else `--data` when it is an
/// in-memory data set (its validation split), else the card's data set.
pub fn calibration_source<'a>(
    calib_data: Option<&'a Path>,
    data: Option<&'a Path>,
) -> Option<&'a Path> {
    calib_data.or(data.filter(|d| is_in_memory(d)))
}

/// Whether `dir` holds at least one of the four IDX files (so a missing one is an error, not
/// a fall-back to an image folder).
fn holds_idx_file(dir: &Path) -> bool {
    mixq_datasets::idx::IDX_FILES
        .iter()
        .any(|n| dir.join(n).is_file() || dir.join(format!("{n}.gz")).is_file())
}

/// The in-memory data set of `card` (or `--data`) with its fixed splits; `command` names the
/// command that needs one in the error for an image folder.
pub fn classification_data(
    card: &ModelCard,
    data: Option<&Path>,
    command: &str,
) -> Result<ClassificationData> {
    match open_data(card, data)? {
        DataSource::InMemory(set) => Ok(*set),
        DataSource::Folder(dir) => Err(Error::invalid(
            "--data",
            dir.display(),
            format!(
                "{command} needs a data set in memory: digits, fashion-mnist, mnist or a folder \
                 of the four IDX files"
            ),
        )),
    }
}

/// Normalised images of `set` (`(v / max - mean) / std`) for the trainers.
pub fn image_set(set: &LabelledImages, name: &str, mean: f32, std: f32) -> Result<ImageSet> {
    let images = set
        .normalised(mean, std)
        .map_err(|e| data_error(Path::new(name), e))?;
    ImageSet::new(images, set.image_shape, set.labels.clone())
}

/// Images for evaluation: the test split of an in-memory data set or an ImageNet-style folder.
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
        match open_data(card, data)? {
            DataSource::Folder(dir) => {
                let folder = ImageFolder::new(&dir).map_err(|e| data_error(&dir, e))?;
                let mut loader = Loader::new(folder, eval_transform(card), batch, limit)
                    .map_err(|e| data_error(&dir, e))?;
                let len = loader.num_samples();
                // The loader skips unreadable files; decoding the first batch now turns a folder
                // in which none is readable into an error instead of a table of 0 images.
                let first = loader
                    .next()
                    .ok_or_else(|| no_readable_image(&dir, &loader))?;
                Ok(EvalData {
                    batches: Box::new(std::iter::once(first).chain(loader)),
                    len,
                    describe: format!("{} ({len} images)", dir.display()),
                })
            }
            DataSource::InMemory(set) => {
                let mut test = set.test;
                if let Some(n) = limit {
                    test.truncate(n);
                }
                let len = test.len();
                let batches: Vec<Batch> = test
                    .batches(batch, pre.mean[0], pre.std[0])
                    .map_err(|e| data_error(Path::new(&set.name), e))?
                    .collect();
                Ok(EvalData {
                    batches: Box::new(batches.into_iter()),
                    len,
                    describe: format!("{} test split ({len} images)", set.name),
                })
            }
        }
    }
}

fn channel3(v: &[f32]) -> [f32; 3] {
    [v[0], *v.get(1).unwrap_or(&v[0]), *v.get(2).unwrap_or(&v[0])]
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

/// The error for a folder whose every file the loader had to skip.
fn no_readable_image(dir: &Path, loader: &Loader) -> Error {
    let first = loader
        .skipped_files()
        .first()
        .map(|(p, why)| format!("; first: {} ({why})", p.display()))
        .unwrap_or_default();
    data_error(
        dir,
        format!(
            "no readable image: all {} files were skipped as unreadable or corrupt{first}",
            loader.skipped()
        ),
    )
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

/// `n` calibration images, a seeded sample: from the in-memory data set's calibration pool
/// (the validation split; digits: the train split), or from `folder`
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
    if n == 0 {
        return Err(Error::invalid(what, 0, "must be at least 1"));
    }
    let pre = &card.preprocess;
    let source = match folder {
        Some(dir) => open_data(card, Some(dir))?,
        None => match open_data(card, None) {
            Ok(source) => source,
            Err(_) if card.dataset.is_none() => {
                return Err(Error::invalid(
                    "--calib-data",
                    "(none)",
                    format!(
                        "model '{}' needs calibration images: pass --calib-data DIR (a \
                         training-split folder)",
                        card.aliases[0]
                    ),
                ));
            }
            Err(e) => return Err(e),
        },
    };
    let batch = match source {
        DataSource::Folder(dir) => {
            let folder = ImageFolder::new(&dir).map_err(|e| data_error(&dir, e))?;
            let available = folder.len();
            let folder = folder.subset(n.min(available), seed);
            let mut loader = Loader::new(folder, eval_transform(card), n, None)
                .map_err(|e| data_error(&dir, e))?;
            loader
                .next()
                .ok_or_else(|| no_readable_image(&dir, &loader))?
        }
        DataSource::InMemory(set) => set
            .calibration_pool()
            .sample(n, seed, CALIBRATION_SALT)
            .batches(n, pre.mean[0], pre.std[0])
            .map_err(|e| data_error(Path::new(&set.name), e))?
            .next()
            .ok_or_else(|| data_error(Path::new(&set.name), "no calibration image"))?,
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
