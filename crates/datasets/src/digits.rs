//! The UCI / scikit-learn handwritten digits set, embedded in the crate.
//!
//! 1,797 grayscale 8x8 images with pixel values 0..=16 in 10 classes. It is
//! small enough to train and quantise a tiny ViT in seconds, which makes it
//! the end-to-end test bed that needs no download. See `data/README.md` for
//! the source and license.

use std::io::Read;

use crate::LabelledImages;

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

/// The embedded digits set (see [`Digits::load`] and [`Digits::split`]).
#[derive(Debug, Clone, Copy)]
pub struct Digits;

impl Digits {
    /// Decompresses and parses the embedded copy: all 1,797 images in file order, raw values
    /// 0..=16 (`max_value` 16).
    ///
    /// # Panics
    ///
    /// Only if the embedded file is corrupt, which the crate's tests rule out.
    pub fn load() -> LabelledImages {
        parse_csv_gz(DIGITS_CSV_GZ).unwrap_or_else(|e| panic!("embedded digits data: {e}"))
    }

    /// A stratified, seeded train/test split: 1,437 train and 360 test images
    /// ([`LabelledImages::stratified_split`] of the whole set). The same seed gives the same
    /// split on every machine.
    pub fn split(seed: u64) -> (LabelledImages, LabelledImages) {
        Self::load().stratified_split(TEST_SIZE, seed)
    }
}

fn parse_csv_gz(bytes: &[u8]) -> Result<LabelledImages, String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .map_err(|e| format!("gzip: {e}"))?;
    let mut images = Vec::with_capacity(NUM_IMAGES * PIXELS);
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
        images.extend_from_slice(&values[..PIXELS]);
        labels.push(label as usize);
    }
    LabelledImages::new(images, [1, SIDE, SIDE], MAX_VALUE, labels, NUM_CLASSES)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Batch;

    #[test]
    fn loads_all_images() {
        let d = Digits::load();
        assert_eq!(d.len(), NUM_IMAGES);
        assert_eq!(d.images.len(), NUM_IMAGES * PIXELS);
        assert!(d.images.iter().all(|&v| (0.0..=16.0).contains(&v)));
        assert!(d.labels.iter().all(|&l| l < NUM_CLASSES));
        // scikit-learn's class sizes.
        assert_eq!(
            d.class_counts(),
            [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
        );
        // First image of the set (a zero), as in sklearn's `load_digits().data[0]`.
        assert_eq!(d.labels[0], 0);
        assert_eq!(&d.image(0)[..8], &[0., 0., 5., 13., 9., 1., 0., 0.]);
    }

    #[test]
    fn split_properties() {
        let d = Digits::load();
        let (train, test) = Digits::split(7);
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
            assert_eq!(test.image(k), d.image(i));
        }
    }

    /// The split the shipped digits checkpoints were trained on must never move.
    #[test]
    fn split_zero_is_the_one_the_checkpoints_used() {
        // Indices computed by the pre-LabelledImages implementation (mixq 85d47d6) that the
        // shipped digits checkpoints were trained with.
        let (_, test) = Digits::split(0);
        assert_eq!(&test.indices[..8], &[6, 11, 14, 17, 21, 25, 29, 32]);
        assert_eq!(test.indices.iter().sum::<usize>(), 316_234);
    }

    #[test]
    fn split_is_seeded() {
        assert_eq!(Digits::split(3), Digits::split(3));
        assert_ne!(Digits::split(3).1.indices, Digits::split(4).1.indices);
    }

    #[test]
    fn batches_are_normalised_and_cover_the_split() {
        let d = Digits::load();
        let (_, test) = Digits::split(0);
        let batches: Vec<Batch> = test.batches(100, 0.5, 0.5).unwrap().collect();
        assert_eq!(batches.len(), 4);
        assert_eq!(batches[3].shape, [60, 1, 8, 8]);
        assert_eq!(batches[0].shape, [100, 1, 8, 8]);
        assert_eq!(batches[0].images.len(), 100 * 64);
        let i0 = test.indices[0];
        let expect: Vec<f32> = d.image(i0).iter().map(|v| (v / 16.0 - 0.5) / 0.5).collect();
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
