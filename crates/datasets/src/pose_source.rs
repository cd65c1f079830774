//! Where a pose model's images come from: a COCO-format folder, or the generated synthetic set
//! (cached, since it is a pure function of its size and seed).

use std::path::{Path, PathBuf};

use mixq_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::synthetic_pose::SYNTHETIC_JSON;
use crate::{CocoKeypoints, SyntheticPoses, TopDownConfig, TopDownDataset, data_error};

/// The pose data a command asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoseDataConfig {
    /// A COCO-format folder holding `person_keypoints.json` (train) and a `val/` sub-folder
    /// with its own (held out). `None`: the synthetic set.
    pub data: Option<PathBuf>,
    /// Images of the synthetic training set.
    pub synthetic: usize,
    /// Held-out synthetic images (default: a fifth of `synthetic`, at least one).
    pub val_images: Option<usize>,
    /// Gaussian sigma of the heatmap targets (heatmap pixels).
    pub sigma: f64,
}

impl Default for PoseDataConfig {
    fn default() -> Self {
        Self {
            data: None,
            synthetic: 400,
            val_images: None,
            sigma: 2.0,
        }
    }
}

/// A training and a held-out keypoint set, each with the folder its image paths are relative to.
pub struct PoseData {
    /// Training annotations and their image folder.
    pub train: (CocoKeypoints, PathBuf),
    /// Held-out annotations and their image folder.
    pub val: (CocoKeypoints, PathBuf),
    /// One line for logs and reports.
    pub description: String,
}

fn load_coco(dir: &Path) -> Result<CocoKeypoints> {
    let json = dir.join(SYNTHETIC_JSON);
    CocoKeypoints::load(&json).map_err(|e| data_error(&json, e))
}

impl PoseData {
    /// Opens `config.data`, or generates (once, under `cache_root`) the synthetic set of
    /// `seed`; its held-out set uses another generator seed, so no image is in both.
    pub fn open(config: &PoseDataConfig, seed: u64, cache_root: &Path) -> Result<Self> {
        if let Some(dir) = &config.data {
            let val = dir.join("val");
            return Ok(Self {
                train: (load_coco(dir)?, dir.clone()),
                val: (load_coco(&val)?, val),
                description: dir.display().to_string(),
            });
        }
        if config.synthetic == 0 {
            return Err(Error::invalid("--synthetic", 0, "must be at least 1"));
        }
        let n_val = config.val_images.unwrap_or((config.synthetic / 5).max(1));
        let cache = cache_root.join(format!("synthetic-{}-{}-s{seed}", config.synthetic, n_val));
        let make = |dir: PathBuf, n: usize, s: u64| -> Result<(CocoKeypoints, PathBuf)> {
            if !dir.join(SYNTHETIC_JSON).is_file() {
                SyntheticPoses::default()
                    .write(&dir, n, s)
                    .map_err(|e| data_error(&dir, e))?;
            }
            Ok((load_coco(&dir)?, dir))
        };
        Ok(Self {
            train: make(cache.join("train"), config.synthetic, seed)?,
            val: make(cache.join("val"), n_val, seed.wrapping_add(1_000_003))?,
            description: format!(
                "synthetic: {} train / {n_val} held-out images (seed {seed}), {}",
                config.synthetic,
                cache.display()
            ),
        })
    }
}

/// The ground-truth person crops of one keypoint set.
pub fn topdown_dataset(
    coco: &(CocoKeypoints, PathBuf),
    geometry: &TopDownConfig,
) -> Result<TopDownDataset> {
    TopDownDataset::from_gt(&coco.0, &coco.1, geometry.clone()).map_err(|e| data_error(&coco.1, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_synthetic_set_is_cached_and_its_held_out_part_differs() {
        let dir = tempfile::tempdir().unwrap();
        let config = PoseDataConfig {
            synthetic: 3,
            ..PoseDataConfig::default()
        };
        let data = PoseData::open(&config, 7, dir.path()).unwrap();
        assert_eq!(data.train.0.images.len(), 3);
        assert_eq!(data.val.0.images.len(), 1);
        assert!(
            data.train
                .1
                .starts_with(dir.path().join("synthetic-3-1-s7"))
        );
        // The second open reads the cached files.
        let again = PoseData::open(&config, 7, dir.path()).unwrap();
        assert_eq!(again.train.0.annotations, data.train.0.annotations);
        assert_ne!(data.train.0.annotations[0], data.val.0.annotations[0]);
        let zero = PoseDataConfig {
            synthetic: 0,
            ..config
        };
        assert!(PoseData::open(&zero, 7, dir.path()).is_err());
    }
}
