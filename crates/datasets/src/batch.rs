//! The batch type shared by every loader in this crate.

use std::path::PathBuf;

use crate::{DataError, EvalTransform, PassOrder, load_image};

/// A batch of preprocessed images as one flat `f32` buffer.
///
/// The crate has no tensor dependency; a model crate turns `images` and
/// `shape` into a tensor of its own backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `B * C * H * W` values, row-major in `shape` order.
    pub images: Vec<f32>,
    /// `[B, C, H, W]`.
    pub shape: [usize; 4],
    /// Class index of each image.
    pub labels: Vec<usize>,
    /// Source file of each image; empty for in-memory data sets (digits).
    pub paths: Vec<PathBuf>,
    /// Index of each image in the data set it came from (for digits, in the
    /// full 1,797-image set), so that a prediction can be traced back.
    pub indices: Vec<usize>,
}

impl Batch {
    /// The image files `paths` through `transform`, in that order, without labels. A file that
    /// does not decode is an error naming it.
    pub fn from_files(paths: &[PathBuf], transform: &EvalTransform) -> Result<Self, DataError> {
        let mut images = Vec::with_capacity(paths.len() * transform.output_len());
        for path in paths {
            let img = load_image(path)?;
            images.extend(crate::preprocess::try_eval_transform(
                &img,
                transform,
                PassOrder::default(),
            )?);
        }
        let size = transform.img_size;
        Ok(Batch {
            images,
            shape: [paths.len(), transform.channels, size, size],
            labels: Vec::new(),
            paths: paths.to_vec(),
            indices: (0..paths.len()).collect(),
        })
    }

    /// Where image `i` came from: its file, else `#<index in its data set>`.
    pub fn source_name(&self, i: usize) -> String {
        match self.paths.get(i) {
            Some(p) => p.display().to_string(),
            None => format!("#{}", self.indices.get(i).copied().unwrap_or(i)),
        }
    }

    /// Number of images in the batch.
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    /// Whether the batch holds no image.
    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }

    /// The `C * H * W` values of image `i`.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.shape[1] * self.shape[2] * self.shape[3];
        &self.images[i * n..(i + 1) * n]
    }

    /// The images at `indices` (in that order) with their labels, paths and indices: a
    /// sub-batch or a reordering. Labels, paths or indices the batch does not carry (empty
    /// vectors) stay empty.
    ///
    /// # Panics
    ///
    /// If an index is `>= self.len()`.
    pub fn select(&self, indices: impl IntoIterator<Item = usize>) -> Batch {
        let keep: Vec<usize> = indices.into_iter().collect();
        let pick = |v: &[usize]| -> Vec<usize> {
            if v.is_empty() {
                Vec::new()
            } else {
                keep.iter().map(|&i| v[i]).collect()
            }
        };
        Batch {
            images: keep
                .iter()
                .flat_map(|&i| self.image(i).iter().copied())
                .collect(),
            shape: [keep.len(), self.shape[1], self.shape[2], self.shape[3]],
            labels: pick(&self.labels),
            paths: if self.paths.is_empty() {
                Vec::new()
            } else {
                keep.iter().map(|&i| self.paths[i].clone()).collect()
            },
            indices: pick(&self.indices),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_takes_images_and_their_metadata_in_the_order_given() {
        let b = Batch {
            images: (0..12).map(|v| v as f32).collect(),
            shape: [3, 1, 2, 2],
            labels: vec![7, 8, 9],
            paths: vec![],
            indices: vec![100, 101, 102],
        };
        let s = b.select([2, 0]);
        assert_eq!(s.shape, [2, 1, 2, 2]);
        assert_eq!(s.images, [8.0, 9.0, 10.0, 11.0, 0.0, 1.0, 2.0, 3.0]);
        assert_eq!((s.labels, s.indices), (vec![9, 7], vec![102, 100]));
        assert!(s.paths.is_empty());
        assert!(b.select(1..1).is_empty());
    }
}
