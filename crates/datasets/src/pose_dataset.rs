//! Top-down person samples from COCO keypoints: one crop per person, with
//! heatmap targets for training and the crop geometry needed to map
//! predictions back for evaluation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::coco::{
    COCO_FLIP_PAIRS, COCO_SIGMAS, CocoKeypoints, KeypointResult, NUM_KEYPOINTS, PersonDetection,
    bad_file,
};
use crate::pose_transform::{
    Affine, Normalize, box_to_center_scale, clean_gt_box, crop_transform, gaussian_targets,
    oks_nms, rescore, warp_rgb,
};
use crate::{DataError, load_image};

/// Input and target geometry of a top-down pose model.
#[derive(Debug, Clone, PartialEq)]
pub struct TopDownConfig {
    /// Crop width fed to the model (192).
    pub input_w: usize,
    /// Crop height (256).
    pub input_h: usize,
    /// Heatmap width (48, stride 4).
    pub heatmap_w: usize,
    /// Heatmap height (64).
    pub heatmap_h: usize,
    /// Gaussian sigma of the targets, in heatmap pixels (2).
    pub sigma: f64,
    /// Box padding factor (1.25).
    pub padding: f64,
    /// Pixel normalisation.
    pub normalize: Normalize,
}

impl Default for TopDownConfig {
    fn default() -> Self {
        Self {
            input_w: 192,
            input_h: 256,
            heatmap_w: 48,
            heatmap_h: 64,
            sigma: 2.0,
            padding: 1.25,
            normalize: Normalize::default(),
        }
    }
}

impl TopDownConfig {
    /// `input_w / input_h`.
    pub fn aspect_ratio(&self) -> f64 {
        self.input_w as f64 / self.input_h as f64
    }

    fn validate(&self) -> Result<(), DataError> {
        if self.input_w == 0 || self.input_h == 0 || self.heatmap_w == 0 || self.heatmap_h == 0 {
            return Err(DataError::InvalidArgument(
                "top-down input and heatmap sizes must be positive".into(),
            ));
        }
        if !(self.sigma > 0.0 && self.padding > 0.0) {
            return Err(DataError::InvalidArgument(format!(
                "sigma ({}) and padding ({}) must be positive",
                self.sigma, self.padding
            )));
        }
        Ok(())
    }
}

/// Random training augmentation (HRNet's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct PoseAugment {
    /// Probability of a horizontal flip (0.5).
    pub flip_prob: f64,
    /// Scale jitter: `scale *= clip(N(0,1) * f + 1, 1 - f, 1 + f)` (0.35).
    pub scale_factor: f64,
    /// Rotation: `clip(N(0,1) * f, -2f, 2f)` degrees (40).
    pub rotation_factor: f64,
    /// Probability that a rotation is applied at all (0.6).
    pub rotation_prob: f64,
}

impl Default for PoseAugment {
    fn default() -> Self {
        Self {
            flip_prob: 0.5,
            scale_factor: 0.35,
            rotation_factor: 40.0,
            rotation_prob: 0.6,
        }
    }
}

/// One person to crop: from a ground-truth annotation or a detector box.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonSample {
    /// Index into [`TopDownDataset::images`].
    pub image: usize,
    /// COCO image id.
    pub image_id: i64,
    /// Annotation id for ground-truth samples.
    pub ann_id: Option<i64>,
    /// Crop centre in image pixels.
    pub center: [f64; 2],
    /// Crop size in image pixels (padded, at the input aspect ratio).
    pub scale: [f64; 2],
    /// Detector score (1 for ground-truth boxes).
    pub score: f64,
    /// Ground-truth keypoints `[x, y, v]` in image pixels (zeros for detections).
    pub joints: [[f64; 3]; NUM_KEYPOINTS],
}

/// Where a crop came from, to map predictions back.
#[derive(Debug, Clone, PartialEq)]
pub struct PoseMeta {
    /// Sample index in the dataset.
    pub index: usize,
    /// COCO image id.
    pub image_id: i64,
    /// Crop centre (of the unflipped image).
    pub center: [f64; 2],
    /// Crop size after scale augmentation.
    pub scale: [f64; 2],
    /// Rotation in degrees.
    pub rotation: f64,
    /// Whether the crop was flipped.
    pub flipped: bool,
    /// Detector score.
    pub score: f64,
    /// Padded crop area `scale[0] * scale[1]` (HRNet's area for OKS-NMS).
    pub area: f64,
}

/// One preprocessed person crop.
#[derive(Debug, Clone, PartialEq)]
pub struct PoseItem {
    /// `[3, input_h, input_w]`.
    pub image: Vec<f32>,
    /// `[17, heatmap_h, heatmap_w]`.
    pub target: Vec<f32>,
    /// `[17]`.
    pub target_weight: Vec<f32>,
    /// Crop geometry.
    pub meta: PoseMeta,
}

/// A batch of crops as flat buffers (no tensor dependency).
#[derive(Debug, Clone, PartialEq)]
pub struct PoseBatch {
    /// `B * 3 * H * W` values.
    pub images: Vec<f32>,
    /// `[B, 3, H, W]`.
    pub image_shape: [usize; 4],
    /// `B * 17 * h * w` values.
    pub targets: Vec<f32>,
    /// `[B, 17, h, w]`.
    pub target_shape: [usize; 4],
    /// `B * 17` values.
    pub target_weights: Vec<f32>,
    /// Geometry of each crop.
    pub metas: Vec<PoseMeta>,
}

/// An image the samples refer to.
#[derive(Debug, Clone, PartialEq)]
pub struct PoseImage {
    /// COCO id.
    pub id: i64,
    /// Full path.
    pub path: PathBuf,
    /// Width from the annotation file.
    pub width: u32,
    /// Height from the annotation file.
    pub height: u32,
}

/// Person crops of a COCO keypoints set, top-down style.
#[derive(Debug, Clone)]
pub struct TopDownDataset {
    images: Vec<PoseImage>,
    samples: Vec<PersonSample>,
    config: TopDownConfig,
}

impl TopDownDataset {
    /// One sample per ground-truth person, skipping crowd regions, persons
    /// without a labelled keypoint and boxes with no area in the image (HRNet's
    /// training and GT-box validation set). Every image used must exist under
    /// `image_dir`.
    pub fn from_gt(
        coco: &CocoKeypoints,
        image_dir: impl AsRef<Path>,
        config: TopDownConfig,
    ) -> Result<Self, DataError> {
        config.validate()?;
        let index = coco.image_index();
        let mut samples = Vec::new();
        for a in &coco.annotations {
            let labelled = (0..NUM_KEYPOINTS).any(|k| a.keypoints[3 * k + 2] > 0.0);
            if a.iscrowd || !labelled {
                continue;
            }
            let Some(&img) = index.get(&a.image_id) else {
                continue;
            };
            let im = &coco.images[img];
            let Some(bbox) = clean_gt_box(a.bbox, im.width, im.height, a.area) else {
                continue;
            };
            let (center, scale) = box_to_center_scale(bbox, config.aspect_ratio(), config.padding);
            let mut joints = [[0.0; 3]; NUM_KEYPOINTS];
            for (k, j) in joints.iter_mut().enumerate() {
                let (x, y, v) = a.keypoint(k);
                *j = [x, y, v.clamp(0.0, 1.0)];
            }
            samples.push(PersonSample {
                image: img,
                image_id: a.image_id,
                ann_id: Some(a.id),
                center,
                scale,
                score: 1.0,
                joints,
            });
        }
        Self::build(coco, image_dir.as_ref(), samples, config)
    }

    /// One sample per person detection (category 1) with `score >=
    /// score_threshold`, for evaluation with a detector's boxes. Detections of
    /// images missing from `coco` are an error.
    pub fn from_detections(
        coco: &CocoKeypoints,
        image_dir: impl AsRef<Path>,
        detections: &[PersonDetection],
        score_threshold: f64,
        config: TopDownConfig,
    ) -> Result<Self, DataError> {
        config.validate()?;
        if detections.is_empty() {
            return Err(DataError::InvalidArgument(
                "the person detection list is empty".into(),
            ));
        }
        let index = coco.image_index();
        let mut samples = Vec::new();
        for (i, d) in detections.iter().enumerate() {
            let Some(&img) = index.get(&d.image_id) else {
                return Err(DataError::InvalidArgument(format!(
                    "detections[{i}].image_id: image {} is not in {}",
                    d.image_id,
                    coco.source.display()
                )));
            };
            if d.category_id != 1 || d.score < score_threshold {
                continue;
            }
            let (center, scale) =
                box_to_center_scale(d.bbox, config.aspect_ratio(), config.padding);
            samples.push(PersonSample {
                image: img,
                image_id: d.image_id,
                ann_id: None,
                center,
                scale,
                score: d.score,
                joints: [[0.0; 3]; NUM_KEYPOINTS],
            });
        }
        Self::build(coco, image_dir.as_ref(), samples, config)
    }

    fn build(
        coco: &CocoKeypoints,
        image_dir: &Path,
        samples: Vec<PersonSample>,
        config: TopDownConfig,
    ) -> Result<Self, DataError> {
        let mut used = vec![false; coco.images.len()];
        for s in &samples {
            used[s.image] = true;
        }
        let images: Vec<PoseImage> = coco
            .images
            .iter()
            .map(|im| PoseImage {
                id: im.id,
                path: image_dir.join(&im.file_name),
                width: im.width,
                height: im.height,
            })
            .collect();
        for (i, im) in images.iter().enumerate() {
            if used[i] && !im.path.is_file() {
                return Err(bad_file(
                    &coco.source,
                    &format!("images[{i}] (id {}).file_name", im.id),
                    format!("image file not found: {}", im.path.display()),
                ));
            }
        }
        Ok(Self {
            images,
            samples,
            config,
        })
    }

    /// Number of person samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there is no sample.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The samples, in annotation (or detection) order.
    pub fn samples(&self) -> &[PersonSample] {
        &self.samples
    }

    /// The images of the annotation file.
    pub fn images(&self) -> &[PoseImage] {
        &self.images
    }

    /// The geometry settings.
    pub fn config(&self) -> &TopDownConfig {
        &self.config
    }

    /// Crops sample `index`. With `augment`, the random flip, scale and
    /// rotation are drawn from a generator seeded by `(seed, index)`, so a
    /// batch is the same whatever thread builds it.
    pub fn item(
        &self,
        index: usize,
        augment: Option<&PoseAugment>,
        seed: u64,
    ) -> Result<PoseItem, DataError> {
        let s = self.samples.get(index).ok_or_else(|| {
            DataError::InvalidArgument(format!(
                "sample {index} out of range (the set has {})",
                self.samples.len()
            ))
        })?;
        let im = &self.images[s.image];
        let rgb = load_image(&im.path)?.to_rgb8();
        let (width, height) = (rgb.width() as usize, rgb.height() as usize);
        let mut scale = s.scale;
        let mut rotation = 0.0;
        let mut flipped = false;
        if let Some(aug) = augment {
            let mut rng =
                ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index as u64);
            let sf = aug.scale_factor;
            let f = (normal(&mut rng) * sf + 1.0).clamp(1.0 - sf, 1.0 + sf);
            scale = [scale[0] * f, scale[1] * f];
            let rf = aug.rotation_factor;
            let r = (normal(&mut rng) * rf).clamp(-2.0 * rf, 2.0 * rf);
            if rng.random::<f64>() <= aug.rotation_prob {
                rotation = r;
            }
            flipped = rng.random::<f64>() < aug.flip_prob;
        }
        let cfg = &self.config;
        let crop = crop_transform(
            if flipped {
                [width as f64 - 1.0 - s.center[0], s.center[1]]
            } else {
                s.center
            },
            scale,
            rotation,
            cfg.input_w as f64,
            cfg.input_h as f64,
        );
        // Flipping the image first, as HRNet does, then cropping around the
        // mirrored centre.
        let to_crop = if flipped {
            Affine::hflip(width as f64).then(&crop)
        } else {
            crop
        };
        let image = warp_rgb(
            rgb.as_raw(),
            width,
            height,
            &to_crop,
            cfg.input_w,
            cfg.input_h,
            &cfg.normalize,
        )
        .ok_or_else(|| {
            DataError::InvalidArgument(format!(
                "sample {index} (image {}): degenerate crop scale {:?}",
                s.image_id, scale
            ))
        })?;
        let mut joints = s.joints;
        if flipped {
            for &(a, b) in &COCO_FLIP_PAIRS {
                joints.swap(a, b);
            }
        }
        for j in joints.iter_mut() {
            if j[2] > 0.0 {
                let (x, y) = to_crop.apply(j[0], j[1]);
                *j = [x, y, j[2]];
            } else {
                *j = [0.0; 3];
            }
        }
        let (target, target_weight) = gaussian_targets(
            &joints,
            (cfg.input_w, cfg.input_h),
            (cfg.heatmap_w, cfg.heatmap_h),
            cfg.sigma,
        );
        Ok(PoseItem {
            image,
            target,
            target_weight,
            meta: PoseMeta {
                index,
                image_id: s.image_id,
                center: s.center,
                scale,
                rotation,
                flipped,
                score: s.score,
                area: scale[0] * scale[1],
            },
        })
    }

    /// Crops the samples `indices` in parallel into one batch.
    pub fn batch(
        &self,
        indices: &[usize],
        augment: Option<&PoseAugment>,
        seed: u64,
    ) -> Result<PoseBatch, DataError> {
        let items: Vec<PoseItem> = indices
            .par_iter()
            .map(|&i| self.item(i, augment, seed))
            .collect::<Result<_, _>>()?;
        let c = &self.config;
        let b = items.len();
        let mut batch = PoseBatch {
            images: Vec::with_capacity(b * 3 * c.input_h * c.input_w),
            image_shape: [b, 3, c.input_h, c.input_w],
            targets: Vec::with_capacity(b * NUM_KEYPOINTS * c.heatmap_h * c.heatmap_w),
            target_shape: [b, NUM_KEYPOINTS, c.heatmap_h, c.heatmap_w],
            target_weights: Vec::with_capacity(b * NUM_KEYPOINTS),
            metas: Vec::with_capacity(b),
        };
        for it in items {
            batch.images.extend_from_slice(&it.image);
            batch.targets.extend_from_slice(&it.target);
            batch.target_weights.extend_from_slice(&it.target_weight);
            batch.metas.push(it.meta);
        }
        Ok(batch)
    }

    /// Sample indices grouped by image id, for per-image OKS-NMS.
    pub fn samples_by_image(&self) -> HashMap<i64, Vec<usize>> {
        let mut map: HashMap<i64, Vec<usize>> = HashMap::new();
        for (i, s) in self.samples.iter().enumerate() {
            map.entry(s.image_id).or_default().push(i);
        }
        map
    }
}

/// Turns decoded per-crop predictions into COCO keypoint results the way
/// HRNet's evaluation does: each instance score becomes the box score times
/// the mean keypoint maximum above `vis_threshold` (0.2), then, per image,
/// OKS-NMS at `nms_threshold` (0.9; `None` keeps everything).
///
/// `predictions[i] = (meta of the crop, [x, y, maxval] per keypoint in image
/// pixels)`, e.g. from [`crate::pose_transform::decode_heatmaps`].
pub fn keypoint_results(
    predictions: &[(PoseMeta, Vec<[f64; 3]>)],
    vis_threshold: f64,
    nms_threshold: Option<f64>,
) -> Vec<KeypointResult> {
    let mut by_image: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
    for (i, (m, _)) in predictions.iter().enumerate() {
        by_image.entry(m.image_id).or_default().push(i);
    }
    let mut out = Vec::with_capacity(predictions.len());
    for (image_id, idx) in by_image {
        let poses: Vec<(Vec<[f64; 3]>, f64, f64)> = idx
            .iter()
            .map(|&i| {
                let (m, k) = &predictions[i];
                (k.clone(), rescore(m.score, k, vis_threshold), m.area)
            })
            .collect();
        let keep: Vec<usize> = match nms_threshold {
            Some(t) => oks_nms(&poses, t, &COCO_SIGMAS, vis_threshold),
            None => (0..poses.len()).collect(),
        };
        for j in keep {
            let (k, score, _) = &poses[j];
            out.push(KeypointResult {
                image_id,
                category_id: 1,
                keypoints: k.iter().flat_map(|p| *p).collect(),
                score: *score,
                bbox: None,
            });
        }
    }
    out
}

/// Standard normal draw (Box-Muller), so no extra distribution crate is needed.
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
