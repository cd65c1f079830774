//! Image folders (torchvision `ImageFolder` order) and a parallel batch loader.
//!
//! Labels must agree with the ones the checkpoint was trained with, so the
//! class and file order follows torchvision exactly: class folders sorted by
//! name, and within a class every directory reached by `os.walk` (following
//! links) visited in sorted path order with its files sorted by name.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::preprocess::{EvalTransform, PassOrder, load_image, try_eval_transform};
use crate::{Batch, DataError};

/// torchvision's `IMG_EXTENSIONS`, matched case-insensitively.
pub const IMG_EXTENSIONS: [&str; 9] = [
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
];

fn has_image_extension(name: &Path) -> bool {
    let lower = name.as_os_str().to_string_lossy().to_lowercase();
    IMG_EXTENSIONS.iter().any(|ext| lower.ends_with(ext))
}

/// A labelled list of image files, in a fixed, reproducible order.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    samples: Vec<(PathBuf, usize)>,
    skipped_non_images: usize,
}

impl ImageFolder {
    /// Reads an ImageNet-style folder, `root/<class>/<file>`.
    ///
    /// Class indices follow the sorted class-folder names. Files without an
    /// image extension are skipped and reported once. A class folder without
    /// any image is an error (torchvision's rule), since dropping it would
    /// shift the labels of every later class.
    pub fn new(root: impl AsRef<Path>) -> Result<Self, DataError> {
        let root = root.as_ref().to_path_buf();
        check_dir(&root)?;
        let mut class_dirs: Vec<OsString> = Vec::new();
        for entry in read_dir(&root)? {
            let entry = entry.map_err(|e| DataError::io(&root, e))?;
            // `fs::metadata` follows symlinks, like Python's `entry.is_dir()`.
            if fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
                class_dirs.push(entry.file_name());
            }
        }
        if class_dirs.is_empty() {
            return Err(DataError::EmptyFolder(root));
        }
        class_dirs.sort();

        let mut samples = Vec::new();
        let mut skipped = 0usize;
        for (label, class) in class_dirs.iter().enumerate() {
            let class_dir = root.join(class);
            let before = samples.len();
            for dir in walk_dirs_sorted(&class_dir)? {
                let mut files: Vec<OsString> = Vec::new();
                for entry in read_dir(&dir)? {
                    let entry = entry.map_err(|e| DataError::io(&dir, e))?;
                    // Broken links count as files, as in `os.walk`.
                    if !fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
                        files.push(entry.file_name());
                    }
                }
                files.sort();
                for name in files {
                    let path = dir.join(&name);
                    if has_image_extension(Path::new(&name)) {
                        samples.push((path, label));
                    } else {
                        skipped += 1;
                    }
                }
            }
            if samples.len() == before {
                return Err(DataError::EmptyClass(class_dir));
            }
        }
        if skipped > 0 {
            tracing::warn!(
                root = %root.display(),
                skipped,
                "skipped files without an image extension ({})",
                IMG_EXTENSIONS.join(" ")
            );
        }
        Ok(Self {
            root,
            classes: class_dirs
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect(),
            samples,
            skipped_non_images: skipped,
        })
    }

    /// Reads a flat folder of images labelled by a text file.
    ///
    /// Each line of `labels_file` is `relative/path.jpg label`, separated by
    /// whitespace or a comma (e.g. the ImageNet validation list). Blank lines
    /// and lines starting with `#` are ignored. Samples keep the file's line
    /// order; class names are the label numbers `"0"..="max"`.
    pub fn flat(dir: impl AsRef<Path>, labels_file: impl AsRef<Path>) -> Result<Self, DataError> {
        let dir = dir.as_ref().to_path_buf();
        let labels_file = labels_file.as_ref().to_path_buf();
        check_dir(&dir)?;
        if !labels_file.exists() {
            return Err(DataError::NotFound(labels_file));
        }
        let text = fs::read_to_string(&labels_file).map_err(|e| DataError::io(&labels_file, e))?;
        let bad_line = |line: usize, message: String| DataError::Labels {
            file: labels_file.clone(),
            line,
            message,
        };
        let mut samples = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let is_sep = |c: char| c == ',' || c.is_whitespace();
            let Some(pos) = line.rfind(is_sep) else {
                return Err(bad_line(
                    line_no,
                    format!("expected `path label`, got {line:?}"),
                ));
            };
            let name = line[..pos].trim_end_matches(is_sep);
            let label_text = &line[pos + 1..];
            if name.is_empty() {
                return Err(bad_line(line_no, format!("missing file name in {line:?}")));
            }
            let label: usize = label_text.parse().map_err(|_| {
                bad_line(
                    line_no,
                    format!("label {label_text:?} is not a non-negative integer"),
                )
            })?;
            let path = dir.join(name);
            if !path.is_file() {
                return Err(bad_line(
                    line_no,
                    format!("image file not found: {}", path.display()),
                ));
            }
            samples.push((path, label));
        }
        let Some(max_label) = samples.iter().map(|s| s.1).max() else {
            return Err(DataError::EmptyFolder(dir));
        };
        Ok(Self {
            root: dir,
            classes: (0..=max_label).map(|c| c.to_string()).collect(),
            samples,
            skipped_non_images: 0,
        })
    }

    /// The folder the samples were read from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there is no sample (only after `limit(0)`/`subset(0, _)`).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Class names; a label is an index into this list.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// All `(path, label)` pairs in order.
    pub fn samples(&self) -> &[(PathBuf, usize)] {
        &self.samples
    }

    /// Sample `i` as `(path, label)`.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    pub fn sample(&self, i: usize) -> (PathBuf, usize) {
        self.samples[i].clone()
    }

    /// How many files were ignored for lacking an image extension.
    pub fn skipped_non_images(&self) -> usize {
        self.skipped_non_images
    }

    /// Keeps the first `n` samples (a quick run over a prefix).
    pub fn limit(mut self, n: usize) -> Self {
        self.samples.truncate(n);
        self
    }

    /// Keeps `n` samples chosen uniformly at random with a seeded ChaCha8
    /// RNG, in their original order, so a subset is reproducible across runs
    /// and machines and spans all classes rather than the first few.
    pub fn subset(mut self, n: usize, seed: u64) -> Self {
        if n >= self.samples.len() {
            return self;
        }
        let mut idx: Vec<usize> = (0..self.samples.len()).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        idx.truncate(n);
        idx.sort_unstable();
        let mut keep = vec![false; self.samples.len()];
        for i in idx {
            keep[i] = true;
        }
        let mut k = keep.into_iter();
        self.samples.retain(|_| k.next().unwrap_or(false));
        self
    }
}

fn check_dir(path: &Path) -> Result<(), DataError> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(DataError::NotADirectory(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(DataError::NotFound(path.to_path_buf()))
        }
        Err(e) => Err(DataError::io(path, e)),
    }
}

fn read_dir(dir: &Path) -> Result<fs::ReadDir, DataError> {
    fs::read_dir(dir).map_err(|e| DataError::io(dir, e))
}

/// `sorted(os.walk(top, followlinks=True))`: every directory under `top`
/// (itself included), sorted by the *string* of its path. String order is not
/// depth-first order: `a/b-c` sorts before `a/b/x` because `-` < `/`.
/// Symlink cycles are cut by remembering canonical paths.
fn walk_dirs_sorted(top: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(canon) = fs::canonicalize(&dir)
            && !seen.insert(canon)
        {
            continue;
        }
        for entry in read_dir(&dir)? {
            let entry = entry.map_err(|e| DataError::io(&dir, e))?;
            let path = entry.path();
            if fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                stack.push(path);
            }
        }
        out.push(dir);
    }
    // Compare the OS strings, not `Path`s: `Path` compares component-wise.
    out.sort_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
    Ok(out)
}

/// Yields preprocessed batches of an [`ImageFolder`] in data set order.
///
/// Each batch is decoded and transformed in parallel (rayon). A file that
/// cannot be read or decoded is left out of its batch rather than aborting
/// a long evaluation; such files are counted ([`Loader::skipped`]) and
/// reported once with `tracing::warn!` when the loader finishes or is
/// dropped. A batch can therefore hold fewer than `batch_size` images.
#[derive(Debug)]
pub struct Loader {
    dataset: ImageFolder,
    transform: EvalTransform,
    order: PassOrder,
    batch_size: usize,
    end: usize,
    next: usize,
    skipped: Vec<(PathBuf, String)>,
    reported: bool,
}

impl Loader {
    /// Creates a loader over the first `limit` samples (all when `None`).
    ///
    /// Errors when `batch_size` or `limit` is 0 or the transform is invalid.
    pub fn new(
        dataset: ImageFolder,
        transform: EvalTransform,
        batch_size: usize,
        limit: Option<usize>,
    ) -> Result<Self, DataError> {
        if batch_size == 0 {
            return Err(DataError::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        if limit == Some(0) {
            return Err(DataError::InvalidArgument(
                "limit must be at least 1 (use None for no limit)".into(),
            ));
        }
        transform.validate()?;
        let end = limit.map_or(dataset.len(), |l| l.min(dataset.len()));
        Ok(Self {
            dataset,
            transform,
            order: PassOrder::default(),
            batch_size,
            end,
            next: 0,
            skipped: Vec::new(),
            reported: false,
        })
    }

    /// Uses another resampling pass order (default: Pillow 13's), e.g. to
    /// match reference tensors made with Pillow 12 or earlier.
    pub fn with_pass_order(mut self, order: PassOrder) -> Self {
        self.order = order;
        self
    }

    /// The data set being loaded.
    pub fn dataset(&self) -> &ImageFolder {
        &self.dataset
    }

    /// The transform applied to every image.
    pub fn transform(&self) -> &EvalTransform {
        &self.transform
    }

    /// Number of samples the loader visits (after the limit).
    pub fn num_samples(&self) -> usize {
        self.end
    }

    /// Number of batches the loader yields if no batch ends up empty.
    pub fn num_batches(&self) -> usize {
        self.end.div_ceil(self.batch_size)
    }

    /// Number of files skipped so far because they could not be read or decoded.
    pub fn skipped(&self) -> usize {
        self.skipped.len()
    }

    /// The skipped files so far, with the reason for each.
    pub fn skipped_files(&self) -> &[(PathBuf, String)] {
        &self.skipped
    }

    fn report(&mut self) {
        if self.reported || self.skipped.is_empty() {
            return;
        }
        self.reported = true;
        let names: Vec<String> = self
            .skipped
            .iter()
            .take(5)
            .map(|(p, why)| format!("{} ({why})", p.display()))
            .collect();
        let more = self.skipped.len().saturating_sub(names.len());
        tracing::warn!(
            skipped = self.skipped.len(),
            "skipped unreadable or corrupt images: {}{}",
            names.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        while self.next < self.end {
            let range = self.next..(self.next + self.batch_size).min(self.end);
            self.next = range.end;
            let (t, order) = (self.transform, self.order);
            let samples = &self.dataset.samples[range.clone()];
            let results: Vec<Result<Vec<f32>, String>> = samples
                .par_iter()
                .map(|(path, _)| {
                    let img = load_image(path).map_err(|e| match e {
                        DataError::Decode { source, .. } => source.to_string(),
                        DataError::Io { source, .. } => source.to_string(),
                        other => other.to_string(),
                    })?;
                    try_eval_transform(&img, &t, order).map_err(|e| e.to_string())
                })
                .collect();

            let mut images = Vec::with_capacity(results.len() * t.output_len());
            let (mut labels, mut paths, mut indices) = (Vec::new(), Vec::new(), Vec::new());
            for ((i, (path, label)), result) in range.zip(samples).zip(results) {
                match result {
                    Ok(pixels) => {
                        images.extend_from_slice(&pixels);
                        labels.push(*label);
                        paths.push(path.clone());
                        indices.push(i);
                    }
                    Err(why) => self.skipped.push((path.clone(), why)),
                }
            }
            if labels.is_empty() {
                continue;
            }
            let s = t.img_size;
            return Some(Batch {
                images,
                shape: [labels.len(), t.channels, s, s],
                labels,
                paths,
                indices,
            });
        }
        self.report();
        None
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.report();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_case_insensitive() {
        for ok in ["a.jpg", "a.JPEG", "b/c.Png", "x.webp", "y.TIFF", ".jpg"] {
            assert!(has_image_extension(Path::new(ok)), "{ok}");
        }
        for bad in ["a.txt", "a.jpg.bak", "jpg", "a.gif", "a.JPG~"] {
            assert!(!has_image_extension(Path::new(bad)), "{bad}");
        }
    }
}
