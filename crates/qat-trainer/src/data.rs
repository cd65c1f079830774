//! Training images in memory, with the per-epoch order and shift augmentation derived from
//! `(seed, epoch)` alone, so that a resumed run needs no random-generator state.

use mixq_core::{Error, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Normalised images (`[c, h, w]` each, row-major) with their class labels.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    pub images: Vec<f32>,
    pub image_shape: [usize; 3],
    pub labels: Vec<usize>,
}

/// One training batch: `[len, c, h, w]` values and the labels.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainBatch {
    pub images: Vec<f32>,
    pub shape: [usize; 4],
    pub labels: Vec<usize>,
}

impl ImageSet {
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

    pub fn len(&self) -> usize {
        self.labels.len()
    }

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
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut rng);
        let per = self.per_image();
        let [c, h, w] = self.image_shape;
        let s = shift as i32;
        order
            .chunks(batch.max(1))
            .map(|idx| {
                let mut images = Vec::with_capacity(idx.len() * per);
                for &i in idx {
                    let img = &self.images[i * per..(i + 1) * per];
                    if shift == 0 {
                        images.extend_from_slice(img);
                    } else {
                        let (dy, dx) = (rng.random_range(-s..=s), rng.random_range(-s..=s));
                        images.extend(shift_image(img, self.image_shape, dy, dx, fill));
                    }
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
