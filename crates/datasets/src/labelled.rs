//! Labelled images held in memory (digits, MNIST, Fashion-MNIST): stratified seeded splits,
//! seeded samples and normalised batches, the same for every in-memory data set.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::{Batch, DataError};

/// Images with their raw pixel values (`0..=max_value`), labels and where each came from.
///
/// Splits and samples copy the images they keep, so each side can be batched, truncated and
/// handed around on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledImages {
    /// Raw pixel values, image after image, each `image_shape` row-major.
    pub images: Vec<f32>,
    /// `[c, h, w]` of every image.
    pub image_shape: [usize; 3],
    /// The raw value of full intensity (16 for digits, 255 for IDX files): batches divide by
    /// it before normalising, so every data set reaches the model on the `[0, 1]` scale.
    pub max_value: f32,
    /// Class of each image, below `num_classes`.
    pub labels: Vec<usize>,
    /// Index of each image in the file or set it was read from, so a prediction can be traced
    /// back (ascending in splits).
    pub indices: Vec<usize>,
    /// Number of classes of the data set.
    pub num_classes: usize,
}

impl LabelledImages {
    /// Checks that every image has a label below `num_classes` and `images` holds one
    /// `image_shape` image per label; indices are `0..n`.
    pub fn new(
        images: Vec<f32>,
        image_shape: [usize; 3],
        max_value: f32,
        labels: Vec<usize>,
        num_classes: usize,
    ) -> Result<Self, DataError> {
        let per: usize = image_shape.iter().product();
        if per == 0 || images.len() != per * labels.len() {
            return Err(DataError::InvalidArgument(format!(
                "{} values for {} images of shape {image_shape:?}",
                images.len(),
                labels.len()
            )));
        }
        if !(max_value.is_finite() && max_value > 0.0) {
            return Err(DataError::InvalidArgument(format!(
                "max pixel value must be positive, got {max_value}"
            )));
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, l)| **l >= num_classes) {
            return Err(DataError::InvalidArgument(format!(
                "label {l} of image {i} is not below {num_classes}"
            )));
        }
        Ok(LabelledImages {
            indices: (0..labels.len()).collect(),
            images,
            image_shape,
            max_value,
            labels,
            num_classes,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image.
    pub fn per_image(&self) -> usize {
        self.image_shape.iter().product()
    }

    /// The raw values of image `i`.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    pub fn image(&self, i: usize) -> &[f32] {
        let per = self.per_image();
        &self.images[i * per..(i + 1) * per]
    }

    /// Images per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            counts[l] += 1;
        }
        counts
    }

    /// The images at positions `positions` (into this set), in that order.
    pub fn select(&self, positions: &[usize]) -> LabelledImages {
        let per = self.per_image();
        let mut images = Vec::with_capacity(positions.len() * per);
        for &p in positions {
            images.extend_from_slice(self.image(p));
        }
        LabelledImages {
            images,
            image_shape: self.image_shape,
            max_value: self.max_value,
            labels: positions.iter().map(|&p| self.labels[p]).collect(),
            indices: positions.iter().map(|&p| self.indices[p]).collect(),
            num_classes: self.num_classes,
        }
    }

    /// A stratified, seeded split into `(rest, held_out)` with `held_out.len() == n` (or all
    /// images, when there are fewer).
    ///
    /// Each class gets a held-out share proportional to its size (largest remainder, ties to
    /// the lower class). One `ChaCha8Rng::seed_from_u64(seed)` shuffles each class's positions
    /// in turn (class 0 first); the first ones of each class are held out. Both sides keep the
    /// original order. The same seed gives the same split on every machine.
    pub fn stratified_split(&self, n: usize, seed: u64) -> (LabelledImages, LabelledImages) {
        let counts = self.class_counts();
        let held = largest_remainder(&counts, n.min(self.len()));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut rest, mut out) = (Vec::new(), Vec::new());
        for (class, &n_held) in held.iter().enumerate() {
            let mut idx: Vec<usize> = (0..self.len())
                .filter(|&i| self.labels[i] == class)
                .collect();
            idx.shuffle(&mut rng);
            out.extend_from_slice(&idx[..n_held]);
            rest.extend_from_slice(&idx[n_held..]);
        }
        rest.sort_unstable();
        out.sort_unstable();
        (self.select(&rest), self.select(&out))
    }

    /// A seeded random sample of `n` images (all of them, shuffled, when there are fewer).
    ///
    /// `salt` separates samples drawn for different purposes from the same seed (calibration
    /// and probe images must not coincide by accident).
    pub fn sample(&self, n: usize, seed: u64, salt: u64) -> LabelledImages {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ salt));
        order.truncate(n);
        self.select(&order)
    }

    /// Keeps the first `n` images (a quick run over a prefix).
    pub fn truncate(&mut self, n: usize) {
        let per = self.per_image();
        self.indices.truncate(n);
        self.labels.truncate(n);
        self.images.truncate(n * per);
    }

    /// Every image mapped to `(v / max_value - mean) / std`, in order: the `[0, 1]` then
    /// normalise convention of the ImageNet path, so models see inputs on the same scale.
    pub fn normalised(&self, mean: f32, std: f32) -> Result<Vec<f32>, DataError> {
        check_norm(mean, std)?;
        let max = self.max_value;
        Ok(self
            .images
            .iter()
            .map(|&v| (v / max - mean) / std)
            .collect())
    }

    /// Batches in order, normalised as [`normalised`](Self::normalised).
    ///
    /// Errors when `batch_size` is 0, `std` is 0 or not finite, or the public vectors
    /// disagree in length.
    pub fn batches(
        &self,
        batch_size: usize,
        mean: f32,
        std: f32,
    ) -> Result<LabelledBatches<'_>, DataError> {
        if self.images.len() != self.labels.len() * self.per_image()
            || self.indices.len() != self.labels.len()
        {
            return Err(DataError::InvalidArgument(format!(
                "set has {} values, {} labels and {} indices",
                self.images.len(),
                self.labels.len(),
                self.indices.len()
            )));
        }
        if batch_size == 0 {
            return Err(DataError::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        check_norm(mean, std)?;
        Ok(LabelledBatches {
            set: self,
            batch_size,
            mean,
            std,
            next: 0,
        })
    }
}

fn check_norm(mean: f32, std: f32) -> Result<(), DataError> {
    if mean.is_finite() && std.is_finite() && std != 0.0 {
        Ok(())
    } else {
        Err(DataError::InvalidArgument(format!(
            "mean/std must be finite with std != 0, got {mean} / {std}"
        )))
    }
}

/// Splits `total` over classes proportionally to `counts`: every class gets the floor of its
/// quota, and the leftover units go to the largest fractional parts (lower class first on
/// ties). Exact integer arithmetic.
pub(crate) fn largest_remainder(counts: &[usize], total: usize) -> Vec<usize> {
    let n: usize = counts.iter().sum();
    let mut out = vec![0; counts.len()];
    if n == 0 {
        return out;
    }
    let mut rems: Vec<(usize, usize)> = Vec::with_capacity(counts.len());
    for (c, &k) in counts.iter().enumerate() {
        out[c] = total * k / n;
        rems.push((total * k % n, c));
    }
    let left = total - out.iter().sum::<usize>();
    // Larger remainder first, then lower class index.
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, c) in rems.iter().take(left) {
        out[c] += 1;
    }
    out
}

/// Iterator over the batches of a [`LabelledImages`], see [`LabelledImages::batches`].
#[derive(Debug, Clone)]
pub struct LabelledBatches<'a> {
    set: &'a LabelledImages,
    batch_size: usize,
    mean: f32,
    std: f32,
    next: usize,
}

impl Iterator for LabelledBatches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let n = self.set.len();
        if self.next >= n {
            return None;
        }
        let range = self.next..(self.next + self.batch_size).min(n);
        self.next = range.end;
        let per = self.set.per_image();
        let max = self.set.max_value;
        let images = self.set.images[range.start * per..range.end * per]
            .iter()
            .map(|&v| (v / max - self.mean) / self.std)
            .collect();
        let [c, h, w] = self.set.image_shape;
        Some(Batch {
            images,
            shape: [range.len(), c, h, w],
            labels: self.set.labels[range.clone()].to_vec(),
            paths: Vec::new(),
            indices: self.set.indices[range].to_vec(),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.set.len() - self.next).div_ceil(self.batch_size);
        (left, Some(left))
    }
}

impl ExactSizeIterator for LabelledBatches<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> LabelledImages {
        // 20 images of 1x2x2, class = i % 4 (5 per class), values = i.
        let images = (0..20).flat_map(|i| [i as f32; 4]).collect();
        LabelledImages::new(
            images,
            [1, 2, 2],
            255.0,
            (0..20).map(|i| i % 4).collect(),
            4,
        )
        .unwrap()
    }

    #[test]
    fn largest_remainder_allocates_exactly() {
        let counts = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180];
        let alloc = largest_remainder(&counts, 360);
        assert_eq!(alloc.iter().sum::<usize>(), 360);
        for (c, (&k, &a)) in counts.iter().zip(&alloc).enumerate() {
            let quota = 360.0 * k as f64 / 1797.0;
            assert!((a as f64 - quota).abs() < 1.0, "class {c}: {a} vs {quota}");
        }
        // Ties go to the lower class: 3 units over 4 equal classes.
        assert_eq!(largest_remainder(&[1, 1, 1, 1], 3), [1, 1, 1, 0]);
    }

    #[test]
    fn new_rejects_inconsistent_sets() {
        let e = LabelledImages::new(vec![0.0; 7], [1, 2, 2], 1.0, vec![0, 1], 2).unwrap_err();
        assert!(e.to_string().contains("7 values for 2 images"), "{e}");
        let e = LabelledImages::new(vec![0.0; 8], [1, 2, 2], 1.0, vec![0, 2], 2).unwrap_err();
        assert!(e.to_string().contains("label 2 of image 1"), "{e}");
        assert!(LabelledImages::new(vec![0.0; 8], [1, 2, 2], 0.0, vec![0, 1], 2).is_err());
    }

    #[test]
    fn stratified_split_is_balanced_disjoint_and_seeded() {
        let set = toy();
        let (rest, held) = set.stratified_split(8, 3);
        assert_eq!((rest.len(), held.len()), (12, 8));
        assert_eq!(held.class_counts(), [2, 2, 2, 2]);
        let mut all: Vec<usize> = rest.indices.iter().chain(&held.indices).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..20).collect::<Vec<_>>());
        assert!(held.indices.windows(2).all(|w| w[0] < w[1]));
        for (k, &i) in held.indices.iter().enumerate() {
            assert_eq!(held.image(k), set.image(i));
            assert_eq!(held.labels[k], set.labels[i]);
        }
        assert_eq!(set.stratified_split(8, 3), (rest, held.clone()));
        assert_ne!(set.stratified_split(8, 4).1.indices, held.indices);
    }

    #[test]
    fn samples_are_seeded_and_salted() {
        let set = toy();
        let a = set.sample(5, 1, 0);
        assert_eq!(a.len(), 5);
        assert_eq!(a, set.sample(5, 1, 0));
        assert_ne!(a.indices, set.sample(5, 1, 7).indices);
        assert_eq!(set.sample(50, 1, 0).len(), 20);
    }

    #[test]
    fn batches_normalise_by_the_max_value() {
        let set = toy();
        let batches: Vec<Batch> = set.batches(8, 0.5, 0.5).unwrap().collect();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[2].shape, [4, 1, 2, 2]);
        assert_eq!(batches[1].image(0), &[(8.0 / 255.0 - 0.5) / 0.5; 4]);
        assert_eq!(batches[1].indices[0], 8);
        assert_eq!(
            set.normalised(0.5, 0.5).unwrap()[32],
            batches[1].image(0)[0]
        );
        assert!(set.batches(0, 0.5, 0.5).is_err());
        assert!(set.batches(4, 0.5, 0.0).is_err());
        let mut bad = set.clone();
        bad.labels.pop();
        assert!(bad.batches(4, 0.5, 0.5).is_err());
    }
}
