//! The UCI / scikit-learn handwritten digits set, embedded in the crate.
//!
//! 1,797 grayscale 8x8 images with pixel values 0..=16 in 10 classes. It is
//! small enough to train and quantise a tiny ViT in seconds, which makes it
//! the end-to-end test bed that needs no download. See `data/README.md` for
//! the source and license.

use std::io::Read;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::{Batch, DataError};

/// scikit-learn's `digits.csv.gz` (CC BY 4.0, UCI ML repository).
static DIGITS_CSV_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// Side of a digit image.
pub const SIDE: usize = 8;
/// Pixels per digit image.
pub const PIXELS: usize = SIDE * SIDE;
/// Number of classes (the digits 0 to 9).
pub const NUM_CLASSES: usize = 10;
/// Largest pixel value; images are mapped to `[0, 1]` by dividing by it.
pub const MAX_VALUE: f32 = 16.0;
/// Number of images.
pub const NUM_IMAGES: usize = 1797;
/// Size of the test split made by [`Digits::split`] (about 20%).
pub const TEST_SIZE: usize = 360;
/// Size of the train split made by [`Digits::split`].
pub const TRAIN_SIZE: usize = NUM_IMAGES - TEST_SIZE;

/// The whole digits set, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Digits {
    /// Raw pixel values 0..=16, row-major.
    pub images: Vec<[f32; PIXELS]>,
    /// Digit of each image.
    pub labels: Vec<usize>,
}

impl Digits {
    /// Decompresses and parses the embedded copy.
    ///
    /// # Panics
    ///
    /// Only if the embedded file is corrupt, which the crate's tests rule out.
    pub fn load() -> Digits {
        parse_csv_gz(DIGITS_CSV_GZ).unwrap_or_else(|e| panic!("embedded digits data: {e}"))
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set is empty (never, for the embedded data).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Images per class.
    pub fn class_counts(&self) -> [usize; NUM_CLASSES] {
        let mut counts = [0; NUM_CLASSES];
        for &l in &self.labels {
            counts[l] += 1;
        }
        counts
    }

    /// A stratified, seeded train/test split: 1,437 train and 360 test images.
    ///
    /// Each class gets a test share proportional to its size (largest
    /// remainder allocation of 360, ties to the lower class). One
    /// `ChaCha8Rng::seed_from_u64(seed)` shuffles each class's indices in turn
    /// (classes 0 to 9); the first ones of each class go to test, the rest to
    /// train, and both splits are sorted by index. The same seed gives the
    /// same split on every machine.
    pub fn split(&self, seed: u64) -> (Split, Split) {
        let counts = self.class_counts();
        let test_counts = largest_remainder(&counts, TEST_SIZE.min(self.len()));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for (class, &n_test) in test_counts.iter().enumerate() {
            let mut idx: Vec<usize> = (0..self.len())
                .filter(|&i| self.labels[i] == class)
                .collect();
            idx.shuffle(&mut rng);
            test.extend_from_slice(&idx[..n_test]);
            train.extend_from_slice(&idx[n_test..]);
        }
        train.sort_unstable();
        test.sort_unstable();
        (self.select(train), self.select(test))
    }

    fn select(&self, indices: Vec<usize>) -> Split {
        Split {
            images: indices.iter().map(|&i| self.images[i]).collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            indices,
        }
    }
}

/// Splits `total` over classes proportionally to `counts`: every class gets
/// the floor of its quota, and the leftover units go to the largest
/// fractional parts (lower class first on ties). Exact integer arithmetic.
fn largest_remainder(counts: &[usize; NUM_CLASSES], total: usize) -> [usize; NUM_CLASSES] {
    let n: usize = counts.iter().sum();
    let mut out = [0; NUM_CLASSES];
    if n == 0 {
        return out;
    }
    let mut rems: Vec<(usize, usize)> = Vec::with_capacity(NUM_CLASSES);
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

fn parse_csv_gz(bytes: &[u8]) -> Result<Digits, String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .map_err(|e| format!("gzip: {e}"))?;
    let mut images = Vec::with_capacity(NUM_IMAGES);
    let mut labels = Vec::with_capacity(NUM_IMAGES);
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let values: Vec<f32> = line
            .split(',')
            .map(|v| v.trim().parse::<f32>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("line {}: {e}", i + 1))?;
        if values.len() != PIXELS + 1 {
            return Err(format!(
                "line {}: {} values, expected {}",
                i + 1,
                values.len(),
                PIXELS + 1
            ));
        }
        let label = values[PIXELS];
        if !(0.0..NUM_CLASSES as f32).contains(&label) || label.fract() != 0.0 {
            return Err(format!("line {}: bad label {label}", i + 1));
        }
        let mut img = [0.0f32; PIXELS];
        img.copy_from_slice(&values[..PIXELS]);
        images.push(img);
        labels.push(label as usize);
    }
    Ok(Digits { images, labels })
}

/// One side of a digits split, holding copies of its images.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Index of each image in the full set (ascending in splits made by
    /// [`Digits::split`]).
    pub indices: Vec<usize>,
    /// Raw pixel values 0..=16.
    pub images: Vec<[f32; PIXELS]>,
    /// Digit of each image.
    pub labels: Vec<usize>,
}

impl Split {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Keeps the first `n` images (a quick run over a prefix).
    pub fn truncate(&mut self, n: usize) {
        self.indices.truncate(n);
        self.images.truncate(n);
        self.labels.truncate(n);
    }

    /// Batches of `1 x 8 x 8` images in split order, each pixel mapped to
    /// `(v / 16 - mean) / std`: the same `[0, 1]` then normalise convention
    /// as the ImageNet path, so models see inputs on the same scale.
    ///
    /// Errors when `batch_size` is 0, `std` is 0 or not finite, or the three
    /// public vectors have different lengths.
    pub fn batches(
        &self,
        batch_size: usize,
        mean: f32,
        std: f32,
    ) -> Result<DigitsBatches<'_>, DataError> {
        if self.images.len() != self.labels.len() || self.indices.len() != self.labels.len() {
            return Err(DataError::InvalidArgument(format!(
                "split has {} images, {} labels and {} indices",
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
        if !(mean.is_finite() && std.is_finite() && std != 0.0) {
            return Err(DataError::InvalidArgument(format!(
                "mean/std must be finite with std != 0, got {mean} / {std}"
            )));
        }
        Ok(DigitsBatches {
            split: self,
            batch_size,
            mean,
            std,
            next: 0,
        })
    }
}

/// Iterator over the batches of a [`Split`], see [`Split::batches`].
#[derive(Debug, Clone)]
pub struct DigitsBatches<'a> {
    split: &'a Split,
    batch_size: usize,
    mean: f32,
    std: f32,
    next: usize,
}

impl Iterator for DigitsBatches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let n = self.split.len();
        if self.next >= n {
            return None;
        }
        let range = self.next..(self.next + self.batch_size).min(n);
        self.next = range.end;
        let images = self.split.images[range.clone()]
            .iter()
            .flatten()
            .map(|&v| (v / MAX_VALUE - self.mean) / self.std)
            .collect();
        Some(Batch {
            images,
            shape: [range.len(), 1, SIDE, SIDE],
            labels: self.split.labels[range.clone()].to_vec(),
            paths: Vec::new(),
            indices: self.split.indices[range].to_vec(),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.split.len() - self.next).div_ceil(self.batch_size);
        (left, Some(left))
    }
}

impl ExactSizeIterator for DigitsBatches<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_all_images() {
        let d = Digits::load();
        assert_eq!(d.len(), NUM_IMAGES);
        assert_eq!(d.images.len(), NUM_IMAGES);
        assert!(
            d.images
                .iter()
                .flatten()
                .all(|&v| (0.0..=16.0).contains(&v))
        );
        assert!(d.labels.iter().all(|&l| l < NUM_CLASSES));
        // scikit-learn's class sizes.
        assert_eq!(
            d.class_counts(),
            [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
        );
        // First image of the set (a zero), as in sklearn's `load_digits().data[0]`.
        assert_eq!(d.labels[0], 0);
        assert_eq!(&d.images[0][..8], &[0., 0., 5., 13., 9., 1., 0., 0.]);
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
        assert_eq!(
            largest_remainder(&[1, 1, 1, 1, 0, 0, 0, 0, 0, 0], 3)[..4],
            [1, 1, 1, 0]
        );
    }

    #[test]
    fn split_properties() {
        let d = Digits::load();
        let (train, test) = d.split(7);
        assert_eq!(train.len(), TRAIN_SIZE);
        assert_eq!(test.len(), TEST_SIZE);
        assert_eq!((TRAIN_SIZE, TEST_SIZE), (1437, 360));
        assert!(train.indices.windows(2).all(|w| w[0] < w[1]));
        assert!(test.indices.windows(2).all(|w| w[0] < w[1]));
        let mut all: Vec<usize> = train.indices.iter().chain(&test.indices).copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..NUM_IMAGES).collect::<Vec<_>>(),
            "disjoint and complete"
        );
        let counts = d.class_counts();
        for (c, &count) in counts.iter().enumerate() {
            let in_test = test.labels.iter().filter(|&&l| l == c).count();
            let share = 0.2 * count as f64;
            assert!(
                (in_test as f64 - share).abs() <= 1.0,
                "class {c}: {in_test} test of {count}"
            );
        }
        for (k, &i) in test.indices.iter().enumerate() {
            assert_eq!(test.labels[k], d.labels[i]);
            assert_eq!(test.images[k], d.images[i]);
        }
    }

    #[test]
    fn split_is_seeded() {
        let d = Digits::load();
        assert_eq!(d.split(3), d.split(3));
        assert_ne!(d.split(3).1.indices, d.split(4).1.indices);
    }

    #[test]
    fn batches_are_normalised_and_cover_the_split() {
        let d = Digits::load();
        let (_, test) = d.split(0);
        let batches: Vec<Batch> = test.batches(100, 0.5, 0.5).unwrap().collect();
        assert_eq!(batches.len(), 4);
        assert_eq!(batches[3].shape, [60, 1, 8, 8]);
        assert_eq!(batches[0].shape, [100, 1, 8, 8]);
        assert_eq!(batches[0].images.len(), 100 * 64);
        let i0 = test.indices[0];
        let expect: Vec<f32> = d.images[i0]
            .iter()
            .map(|v| (v / 16.0 - 0.5) / 0.5)
            .collect();
        assert_eq!(batches[0].image(0), &expect[..]);
        let labels: Vec<usize> = batches.iter().flat_map(|b| b.labels.clone()).collect();
        assert_eq!(labels, test.labels);
        assert!(batches.iter().all(|b| b.paths.is_empty()));
        assert!(test.batches(0, 0.5, 0.5).is_err());
        let mut short = test.clone();
        short.truncate(10);
        assert_eq!(short.batches(4, 0.5, 0.5).unwrap().count(), 3);
        short.labels.pop();
        assert!(short.batches(4, 0.5, 0.5).is_err());
        assert!(test.batches(8, 0.5, 0.0).is_err());
    }
}
