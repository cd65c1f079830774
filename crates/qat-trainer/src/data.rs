//! Training images in memory and their augmentation. QAT derives epoch `e`'s order and shifts
//! from `(seed, e)` alone, so a resumed run needs no random-generator state; FP training draws
//! from one generator whose position its checkpoints keep.

use mixq_core::{Error, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Normalised images (`[c, h, w]` each, row-major) with their class labels.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    /// All images, one after another.
    pub images: Vec<f32>,
    /// `[c, h, w]` of each image.
    pub image_shape: [usize; 3],
    /// Class of each image.
    pub labels: Vec<usize>,
}

/// A classification data set's splits as the trainers take them, normalised with the model's
/// mean and std (these sets are grayscale: the first channel's).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingSplits {
    /// The training split, cut to the `limit` asked for.
    pub train: ImageSet,
    /// The validation split, where the set has one (digits has none).
    pub val: Option<ImageSet>,
    /// The test split, cut to the `eval` limit asked for: for final figures.
    pub test: ImageSet,
}

impl TrainingSplits {
    /// `data`'s splits for a model of `card`: the first `limit` training images and the first
    /// `eval` test images (all without a limit; a limit of 0 is an error naming `--limit` or
    /// `--eval`).
    pub fn new(
        data: &mixq_datasets::ClassificationData,
        card: &mixq_vit_models::ModelCard,
        limit: Option<usize>,
        eval: Option<usize>,
    ) -> Result<Self> {
        for (flag, value) in [("--limit", limit), ("--eval", eval)] {
            if value == Some(0) {
                return Err(Error::invalid(flag, 0, "must be at least 1"));
            }
        }
        let (mean, std) = (card.preprocess.mean[0], card.preprocess.std[0]);
        let set = |s| ImageSet::from_labelled(s, &data.name, mean, std);
        let mut train = set(&data.train)?;
        let mut test = set(&data.test)?;
        if let Some(n) = limit {
            train.truncate(n);
        }
        if let Some(n) = eval {
            test.truncate(n);
        }
        Ok(Self {
            train,
            val: data.val.as_ref().map(set).transpose()?,
            test,
        })
    }

    /// The split per-epoch curves are drawn on and its name: validation where there is one,
    /// else test (digits).
    pub fn monitor(&self) -> (&ImageSet, &'static str) {
        match &self.val {
            Some(v) => (v, "val"),
            None => (&self.test, "test"),
        }
    }
}

/// One training batch: `[len, c, h, w]` values and the labels.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainBatch {
    /// `[len, c, h, w]` values, row-major.
    pub images: Vec<f32>,
    /// `[len, c, h, w]`.
    pub shape: [usize; 4],
    /// Class of each image.
    pub labels: Vec<usize>,
}

impl ImageSet {
    /// The images of `set`, normalised `(v / max - mean) / std`; `name` names the data set in
    /// errors.
    pub fn from_labelled(
        set: &mixq_datasets::LabelledImages,
        name: &str,
        mean: f32,
        std: f32,
    ) -> Result<Self> {
        let images = set
            .normalised(mean, std)
            .map_err(|e| mixq_datasets::data_error(std::path::Path::new(name), e))?;
        Self::new(images, set.image_shape, set.labels.clone())
    }

    /// Checks that `images` holds one `image_shape` image per label.
    pub fn new(images: Vec<f32>, image_shape: [usize; 3], labels: Vec<usize>) -> Result<Self> {
        let per: usize = image_shape.iter().product();
        if per == 0 || images.len() != per * labels.len() {
            return Err(Error::invalid(
                "images",
                format!("{} values", images.len()),
                format!(
                    "need {} images of shape {image_shape:?} ({} values)",
                    labels.len(),
                    per * labels.len()
                ),
            ));
        }
        Ok(ImageSet {
            images,
            image_shape,
            labels,
        })
    }

    /// Images in the set.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn per_image(&self) -> usize {
        self.image_shape.iter().product()
    }

    /// Keeps the first `n` images.
    pub fn truncate(&mut self, n: usize) {
        let per = self.per_image();
        self.labels.truncate(n);
        self.images.truncate(n * per);
    }

    /// Images `range` as one batch, in order, unaugmented (evaluation).
    pub fn slice(&self, range: std::ops::Range<usize>) -> TrainBatch {
        let per = self.per_image();
        let [c, h, w] = self.image_shape;
        TrainBatch {
            images: self.images[range.start * per..range.end * per].to_vec(),
            shape: [range.len(), c, h, w],
            labels: self.labels[range].to_vec(),
        }
    }

    /// The batches of epoch `epoch`: a shuffle and, when `shift > 0`, a random translation of
    /// every image by up to `shift` pixels each way (vacated pixels take `fill`), all drawn from
    /// ChaCha8 seeded with `seed` on stream `epoch`.
    pub fn epoch_batches(
        &self,
        batch: usize,
        seed: u64,
        epoch: usize,
        shift: usize,
        fill: f32,
    ) -> Vec<TrainBatch> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(epoch as u64);
        self.augmented_batches(
            batch,
            &mut rng,
            Augment {
                shift,
                fill,
                hflip: false,
            },
        )
    }

    /// One epoch of batches drawn from `rng`: first the shuffle, then per image (in the new
    /// order) the translation `dy`, `dx` (when `shift > 0`) and a coin for the mirror image
    /// (when `hflip`). Translating by up to `shift` pixels with `fill` shifted in is exactly
    /// torchvision's `RandomCrop(size, padding=shift, fill)`.
    pub fn augmented_batches(
        &self,
        batch: usize,
        rng: &mut ChaCha8Rng,
        augment: Augment,
    ) -> Vec<TrainBatch> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(rng);
        let per = self.per_image();
        let [c, h, w] = self.image_shape;
        let s = augment.shift as i32;
        order
            .chunks(batch.max(1))
            .map(|idx| {
                let mut images = Vec::with_capacity(idx.len() * per);
                for &i in idx {
                    let img = &self.images[i * per..(i + 1) * per];
                    let mut out = if augment.shift == 0 {
                        img.to_vec()
                    } else {
                        let (dy, dx) = (rng.random_range(-s..=s), rng.random_range(-s..=s));
                        shift_image(img, self.image_shape, dy, dx, augment.fill)
                    };
                    if augment.hflip && rng.random_bool(0.5) {
                        flip_horizontal(&mut out, self.image_shape);
                    }
                    images.extend(out);
                }
                TrainBatch {
                    images,
                    shape: [idx.len(), c, h, w],
                    labels: idx.iter().map(|&i| self.labels[i]).collect(),
                }
            })
            .collect()
    }
}

/// Training-time augmentation of [`ImageSet::augmented_batches`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augment {
    /// Random translation by up to this many pixels each way (0: none).
    pub shift: usize,
    /// Value of pixels shifted in from outside (the normalised background).
    pub fill: f32,
    /// Mirror half of the images left-right.
    pub hflip: bool,
}

/// Mirrors a `[c, h, w]` image left-right in place.
pub fn flip_horizontal(img: &mut [f32], shape: [usize; 3]) {
    let w = shape[2];
    for row in img.chunks_exact_mut(w.max(1)) {
        row.reverse();
    }
}

/// Translates a `[c, h, w]` image by `(dy, dx)` pixels; pixels shifted in from outside are
/// `fill`.
pub fn shift_image(img: &[f32], shape: [usize; 3], dy: i32, dx: i32, fill: f32) -> Vec<f32> {
    let [c, h, w] = shape;
    let (h, w) = (h as i32, w as i32);
    let mut out = vec![fill; img.len()];
    for ch in 0..c {
        let base = ch * (h * w) as usize;
        for y in 0..h {
            for x in 0..w {
                let (sy, sx) = (y - dy, x - dx);
                if (0..h).contains(&sy) && (0..w).contains(&sx) {
                    out[base + (y * w + x) as usize] = img[base + (sy * w + sx) as usize];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_moves_pixels_and_fills_background() {
        let mut img = vec![0.0; 64];
        img[0] = 16.0;
        img[63] = 5.0;
        let s = shift_image(&img, [1, 8, 8], 1, 1, -1.0);
        assert_eq!(s[9], 16.0);
        assert_eq!(s[0], -1.0, "vacated pixels take the fill value");
        assert!(!s.contains(&5.0), "the corner pixel leaves the image");
    }

    #[test]
    fn flip_mirrors_each_row() {
        let mut img: Vec<f32> = (0..12).map(|v| v as f32).collect();
        flip_horizontal(&mut img, [2, 2, 3]);
        assert_eq!(img, [2., 1., 0., 5., 4., 3., 8., 7., 6., 11., 10., 9.]);
    }

    #[test]
    fn hflip_mirrors_about_half_the_images_and_keeps_labels() {
        let n = 400;
        let images: Vec<f32> = (0..n).flat_map(|i| [i as f32, 0.0]).collect();
        let set = ImageSet::new(images, [1, 1, 2], (0..n).map(|i| i % 10).collect()).unwrap();
        let augment = Augment {
            shift: 0,
            fill: 0.0,
            hflip: true,
        };
        let batches = set.augmented_batches(64, &mut ChaCha8Rng::seed_from_u64(1), augment);
        let mut flipped = 0;
        for b in &batches {
            for (k, px) in b.images.chunks(2).enumerate() {
                let (value, mirrored) = if px[1] == 0.0 && px[0] != 0.0 {
                    (px[0], false)
                } else {
                    (px[1], true)
                };
                flipped += mirrored as usize;
                assert_eq!(
                    value as usize % 10,
                    b.labels[k],
                    "label travels with its image"
                );
            }
        }
        assert!((150..250).contains(&flipped), "{flipped} of {n} mirrored");
    }

    #[test]
    fn epoch_batches_depend_on_seed_and_epoch_only() {
        let set = ImageSet::new(
            (0..40).map(|v| v as f32).collect(),
            [1, 2, 2],
            (0..10).collect(),
        )
        .unwrap();
        let a = set.epoch_batches(3, 7, 2, 1, 0.0);
        assert_eq!(a, set.epoch_batches(3, 7, 2, 1, 0.0));
        assert_ne!(a, set.epoch_batches(3, 7, 3, 1, 0.0));
        assert_eq!(a.len(), 4);
        assert_eq!(a.iter().map(|b| b.labels.len()).sum::<usize>(), 10);
    }
}
