//! From "the data a command was given" to batches: a known data set's name, a folder of IDX
//! files or an ImageNet-style folder, checked against what the model takes ([`DataSpec`]).
//!
//! Errors name the option a user set (`--data`, `--calib`, ...) because these functions are
//! where the CLI's arguments first meet the files; a library caller reads them the same way.

use std::path::{Path, PathBuf};

use mixq_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::{
    Batch, ClassificationData, DataError, EvalTransform, IdxDataset, ImageFolder, KnownDataset,
    Loader,
};

/// Separates the calibration sample's shuffle from other uses of the same seed.
const CALIBRATION_SALT: u64 = 0x00ca_11b0;

/// What a model needs from its data (from its model card: `ModelCard::data_spec` in
/// mixq-vit-models).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    /// The model's name, for errors.
    pub model: String,
    /// The data set the model was made for (`digits`, `fashion-mnist`, `mnist`): the data used
    /// when none is named.
    pub dataset: Option<String>,
    /// Input size, crop, normalisation and channels (timm's eval transform).
    pub transform: EvalTransform,
}

/// What `--data` names, resolved: an in-memory data set with its fixed splits, or an
/// ImageNet-style folder.
pub enum DataSource {
    /// digits, Fashion-MNIST, MNIST or a folder of IDX files.
    InMemory(Box<ClassificationData>),
    /// An ImageNet-style folder (one sub-folder per class).
    Folder(PathBuf),
}

/// A [`DataError`] (or any message) about `path` as mixq's error.
pub fn data_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Data {
        path: path.into(),
        message: e.to_string(),
    }
}

fn known(name: &str) -> Option<KnownDataset> {
    KnownDataset::from_name(name).filter(|_| !name.contains(std::path::MAIN_SEPARATOR))
}

/// Resolves `data` for a model: a known data set's name (`digits`, `fashion-mnist`, `mnist`;
/// a folder of that name needs a path such as `./mnist`), a folder holding the four IDX files,
/// or an ImageNet-style folder; without `data`, the data set the model names. An in-memory set
/// whose images are not the model's input shape is an error naming both.
pub fn open_data(spec: &DataSpec, data: Option<&Path>) -> Result<DataSource> {
    let source = match data {
        Some(dir) => match dir.to_str().and_then(known) {
            Some(set) => in_memory(set.open(), Path::new(set.name()))?,
            None if IdxDataset::is_idx_dir(dir) || holds_idx_file(dir) => {
                in_memory(ClassificationData::from_idx(dir, None), dir)?
            }
            None => DataSource::Folder(dir.to_path_buf()),
        },
        None => match spec.dataset.as_deref().and_then(KnownDataset::from_name) {
            Some(set) => in_memory(set.open(), Path::new(set.name()))?,
            None => {
                return Err(Error::invalid(
                    "--data",
                    "(none)",
                    format!(
                        "model '{}' needs data: pass --data DIR (an ImageNet-style folder or \
                         a folder of IDX files) or --data fashion-mnist|mnist|digits",
                        spec.model
                    ),
                ));
            }
        },
    };
    if let DataSource::InMemory(set) = &source {
        let t = &spec.transform;
        let want = [t.channels, t.img_size, t.img_size];
        if set.test.image_shape != want {
            return Err(Error::invalid(
                "--data",
                &set.name,
                format!(
                    "holds {:?} images, model '{}' takes {want:?}",
                    set.test.image_shape, spec.model
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

/// Whether `data` names a data set held in memory (a known name or a folder of IDX files),
/// whose calibration pool is its validation split: such data may also serve calibration, an
/// ImageNet-style evaluation folder may not.
pub fn is_in_memory(data: &Path) -> bool {
    data.to_str().is_some_and(|n| known(n).is_some())
        || IdxDataset::is_idx_dir(data)
        || holds_idx_file(data)
}

/// Where calibration (and probe) images come from: `calib_data`, else `data` when it is an
/// in-memory data set (its validation split), else (`None`) the model's data set.
pub fn calibration_source<'a>(
    calib_data: Option<&'a Path>,
    data: Option<&'a Path>,
) -> Option<&'a Path> {
    calib_data.or(data.filter(|d| is_in_memory(d)))
}

/// Whether `dir` holds at least one of the four IDX files (so a missing one is an error, not
/// a fall-back to an image folder).
fn holds_idx_file(dir: &Path) -> bool {
    crate::idx::IDX_FILES
        .iter()
        .any(|n| dir.join(n).is_file() || dir.join(format!("{n}.gz")).is_file())
}

/// The in-memory data set (`data`, else the model's) with its fixed splits; `command` names
/// what needs one in the error for an image folder.
pub fn classification_data(
    spec: &DataSpec,
    data: Option<&Path>,
    command: &str,
) -> Result<ClassificationData> {
    match open_data(spec, data)? {
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

/// Images for evaluation: the test split of an in-memory data set or an ImageNet-style folder.
pub struct EvalData {
    /// The batches, in the data set's order.
    pub batches: Box<dyn Iterator<Item = Batch>>,
    /// Images there are to evaluate (a folder's unreadable files are skipped on the way).
    pub len: usize,
    /// For reports: which data, how many images.
    pub describe: String,
    /// The `data` it was opened with (`None`: the model's data set), for errors.
    pub source: Option<PathBuf>,
}

impl EvalData {
    /// Batches of `batch` images of `data` (else the model's data set), the first `limit` only
    /// when given. A folder in which no file is readable is an error here, not an empty table.
    pub fn open(
        spec: &DataSpec,
        data: Option<&Path>,
        limit: Option<usize>,
        batch: usize,
    ) -> Result<Self> {
        if batch == 0 {
            return Err(Error::invalid("--batch", 0, "must be at least 1"));
        }
        if limit == Some(0) {
            return Err(Error::invalid("--eval", 0, "must be at least 1"));
        }
        let t = &spec.transform;
        match open_data(spec, data)? {
            DataSource::Folder(dir) => {
                let folder = ImageFolder::new(&dir).map_err(|e| data_error(&dir, e))?;
                let mut loader =
                    Loader::new(folder, *t, batch, limit).map_err(|e| data_error(&dir, e))?;
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
                    source: data.map(Path::to_path_buf),
                })
            }
            DataSource::InMemory(set) => {
                let mut test = set.test;
                if let Some(n) = limit {
                    test.truncate(n);
                }
                let len = test.len();
                let batches: Vec<Batch> = test
                    .batches(batch, t.mean[0], t.std[0])
                    .map_err(|e| data_error(Path::new(&set.name), e))?
                    .collect();
                Ok(EvalData {
                    batches: Box::new(batches.into_iter()),
                    len,
                    describe: format!("{} test split ({len} images)", set.name),
                    source: data.map(Path::to_path_buf),
                })
            }
        }
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

/// A seeded sample of `n` calibration images (with labels and sources) as one batch: from
/// `folder` (a training-split image folder or an in-memory data set's validation split), else
/// the model's data set. `what` names the option that asked for them in errors.
pub fn sample_batch(
    spec: &DataSpec,
    folder: Option<&Path>,
    n: usize,
    seed: u64,
    what: &str,
) -> Result<Batch> {
    if n == 0 {
        return Err(Error::invalid(what, 0, "must be at least 1"));
    }
    let t = &spec.transform;
    let source = match folder {
        Some(dir) => open_data(spec, Some(dir))?,
        None => match open_data(spec, None) {
            Ok(source) => source,
            Err(_) if spec.dataset.is_none() => {
                return Err(Error::invalid(
                    "--calib-data",
                    "(none)",
                    format!(
                        "model '{}' needs calibration images: pass --calib-data DIR (a \
                         training-split folder)",
                        spec.model
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
            let mut loader = Loader::new(folder, *t, n, None).map_err(|e| data_error(&dir, e))?;
            loader
                .next()
                .ok_or_else(|| no_readable_image(&dir, &loader))?
        }
        DataSource::InMemory(set) => set
            .calibration_pool()
            .sample(n, seed, CALIBRATION_SALT)
            .batches(n, t.mean[0], t.std[0])
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
