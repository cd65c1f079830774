//! The batch type shared by every loader in this crate.

use std::path::PathBuf;

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
}
