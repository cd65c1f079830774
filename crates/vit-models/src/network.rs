//! The model interface the pipeline stages take: what a model family declares about its
//! structure (its sites, its residual-stream blocks and what they contain, the parameters PTQ
//! rewrites, what it outputs), implemented once per family next to its layers.

use burn::tensor::{Int, Tensor};
use mixq_core::{Result, SiteId, SiteInfo};
use serde::{Deserialize, Serialize};

use crate::explain::{ExplainOptions, Explanation, Target};
use crate::hooks::{NoHook, SiteHook};
use crate::layers::{Conv2d, LayerNorm, Linear};

/// The state at a block boundary, batch first: the residual stream `[b, tokens, c]`, and for a
/// model whose later layers read earlier outputs (WTPose: its Swin stages feed the waterfall)
/// those outputs, carried along unchanged by the blocks that do not make them. A sweep caches
/// all of it; block reconstruction fits a block's output stream.
#[derive(Clone, Debug)]
pub struct Boundary {
    /// The residual stream the next block reads.
    pub stream: Tensor<3>,
    /// Earlier outputs that later layers read, in the model's own layout.
    pub carried: Vec<Tensor<3>>,
}

impl Boundary {
    /// A boundary that is the residual stream alone (ViT, Swin).
    pub fn new(stream: Tensor<3>) -> Self {
        Boundary {
            stream,
            carried: Vec::new(),
        }
    }

    /// Images in the batch.
    pub fn batch(&self) -> usize {
        self.stream.dims()[0]
    }

    /// Every tensor through `f` (which keeps the batch axis first).
    pub fn map(self, f: impl Fn(Tensor<3>) -> Tensor<3>) -> Self {
        Boundary {
            stream: f(self.stream),
            carried: self.carried.into_iter().map(&f).collect(),
        }
    }

    /// Images `start..start + len`.
    pub fn narrow(self, start: usize, len: usize) -> Self {
        self.map(|t| t.narrow(0, start, len))
    }

    /// The images at `indices`.
    pub fn select(self, indices: Tensor<1, Int>) -> Self {
        self.map(|t| t.select(0, indices.clone()))
    }

    /// Batches joined along the batch axis (all with the same layout).
    pub fn cat(parts: Vec<Boundary>) -> Self {
        let carried = parts.first().map_or(0, |p| p.carried.len());
        let mut streams = Vec::with_capacity(parts.len());
        let mut columns: Vec<Vec<Tensor<3>>> = vec![Vec::with_capacity(parts.len()); carried];
        for part in parts {
            streams.push(part.stream);
            for (column, t) in columns.iter_mut().zip(part.carried) {
                column.push(t);
            }
        }
        Boundary {
            stream: Tensor::cat(streams, 0),
            carried: columns.into_iter().map(|c| Tensor::cat(c, 0)).collect(),
        }
    }
}

/// What a model's forward returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// Class logits `[b, classes]` (a classifier: top-1, KL, LRP targets).
    Logits,
    /// Features of a backbone without a head: the final-normed class token `[b, dim]`
    /// (`Model::features_with` gives every token; label-free metrics compare by cosine).
    Features,
    /// Keypoint heatmaps `[b, keypoints, height, width]`, flattened row-major to
    /// `[b, keypoints * height * width]` (a top-down pose model: WTPose).
    Heatmaps {
        /// Heatmaps per image, one per keypoint.
        keypoints: usize,
        /// Rows of each heatmap.
        height: usize,
        /// Columns of each heatmap.
        width: usize,
    },
}

/// A model family's structure, as sensitivity sweeps, PTQ and block reconstruction use it.
///
/// The residual stream is cut into *blocks*: boundary `i` is block `i`'s input and boundary
/// [`Network::num_blocks`] the input of what follows the last block (final norm and head). A
/// block's sites are what [`Network::forward_block`] runs, so a change at one site only needs
/// the model rerun from its block ([`Network::resume_point`]). The state at a boundary is a
/// [`Boundary`]: the stream, plus whatever earlier outputs later layers read (WTPose carries its
/// Swin stages' outputs to the waterfall). A model that declares no blocks has no boundaries,
/// none of its sites a resume point, and a sweep reruns it from the images.
///
/// A model of one's own built from mixq's layers ([`Linear`] and
/// the others take a [`SiteHook`]) implements it to be swept with the block cache
/// (`mixq_sensitivity::measure_candidate`); `Sync` because sweeps measure sites in parallel.
pub trait Network: Sync {
    /// Every quantizable site in forward order, with parameters and MACs per image.
    fn sites(&self) -> Vec<SiteInfo>;

    /// What the forward returns.
    fn output_kind(&self) -> OutputKind;

    /// The output for normalized images `[b, c, h, w]`, every site's tensors through `hook`
    /// (quantizers, observers).
    fn forward_with(&self, images: Tensor<4>, hook: &dyn SiteHook) -> Tensor<2> {
        self.forward_with_boundaries(images, hook, &mut |x| x)
    }

    /// The plain forward.
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_with(images, &NoHook)
    }

    /// [`Network::forward_with`], passing the state at every block boundary through
    /// `boundary` (each block's input, then the input of what follows the last block) and
    /// going on with what it returns.
    fn forward_with_boundaries(
        &self,
        images: Tensor<4>,
        hook: &dyn SiteHook,
        boundary: &mut dyn FnMut(Boundary) -> Boundary,
    ) -> Tensor<2>;

    /// The state at every boundary and the output, all through `hook`: what a sweep caches so
    /// that a change at one site only reruns the model from its block.
    fn boundaries(&self, images: Tensor<4>, hook: &dyn SiteHook) -> (Vec<Boundary>, Tensor<2>) {
        let mut kept = Vec::new();
        let out = self.forward_with_boundaries(images, hook, &mut |x| {
            kept.push(x.clone());
            x
        });
        (kept, out)
    }

    /// The sites each block runs, block by block in forward order, as the modules were built
    /// with them.
    fn block_sites(&self) -> Vec<Vec<SiteId>>;

    /// Blocks in forward order.
    fn num_blocks(&self) -> usize {
        self.block_sites().len()
    }

    /// Boundary `i + 1` from boundary `i`: block `i`.
    fn forward_block(&self, i: usize, x: Boundary, hook: &dyn SiteHook) -> Boundary;

    /// The output from boundary `point` onward, given the state there.
    fn forward_from(&self, point: usize, x: Boundary, hook: &dyn SiteHook) -> Tensor<2>;

    /// Every linear site, in forward order.
    fn linears_mut(&mut self) -> Vec<&mut Linear>;

    /// Every conv site, in forward order (the patch embedding of a ViT; WTPose's convs).
    fn convs_mut(&mut self) -> Vec<&mut Conv2d>;

    /// Each LayerNorm with the linear site that reads its output directly: the post-LayerNorm
    /// sites whose per-channel ranges can be folded into the norm (RepQ-ViT reparameterization).
    fn post_norm_pairs_mut(&mut self) -> Vec<(&mut LayerNorm, &mut Linear)>;

    /// LRP: explains a batch of normalised images `[b, c, h, w]` with one forward in LRP mode
    /// (mixq-lrp's rules at every layer, relevance read at every site, block boundary and
    /// pixel) and one backward from the target logits. Works on a plain (non-autodiff) model:
    /// the parameters act as constants, so no parameter gradients are computed.
    fn explain(
        &self,
        images: Tensor<4>,
        target: &Target,
        options: &ExplainOptions,
    ) -> Result<Explanation> {
        crate::explain::explain(self, images, target, options)
    }

    /// The boundary from which `site`'s computation can be rerun with [`Network::forward_from`]:
    /// its block, or [`Network::num_blocks`] for a site after the last block (the head);
    /// `None` when it needs the images (the patch embedding) or is no site of the model.
    fn resume_point(&self, site: &SiteId) -> Option<usize> {
        let blocks = self.block_sites();
        if let Some(i) = blocks.iter().position(|b| b.contains(site)) {
            return Some(i);
        }
        let order: Vec<SiteId> = self.sites().into_iter().map(|s| s.id).collect();
        let at = order.iter().position(|id| id == site)?;
        let last_in_a_block = blocks
            .iter()
            .flatten()
            .filter_map(|id| order.iter().position(|o| o == id))
            .max();
        match last_in_a_block {
            Some(last) if at > last => Some(blocks.len()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn ramp(batch: usize, rows: usize, cols: usize, start: f32, device: &Device) -> Tensor<3> {
        let n = batch * rows * cols;
        let v: Vec<f32> = (0..n).map(|i| start + i as f32).collect();
        Tensor::from_data(TensorData::new(v, [batch, rows, cols]), device)
    }

    fn host(t: &Tensor<3>) -> Vec<f32> {
        t.clone().into_data().try_into_vec::<f32>().unwrap()
    }

    /// Batch operations act on the stream and every carried tensor alike, along the batch axis.
    #[test]
    fn boundary_batch_operations_keep_stream_and_carried_aligned() {
        let device = Device::flex();
        let b = Boundary {
            stream: ramp(4, 2, 3, 0.0, &device),
            carried: vec![ramp(4, 5, 1, 100.0, &device)],
        };
        assert_eq!(b.batch(), 4);
        let parts = vec![b.clone().narrow(0, 1), b.clone().narrow(1, 3)];
        let joined = Boundary::cat(parts);
        assert_eq!(host(&joined.stream), host(&b.stream));
        assert_eq!(host(&joined.carried[0]), host(&b.carried[0]));
        let picked = b.clone().select(Tensor::from_data(
            TensorData::new(vec![2i64, 0], [2]),
            &device,
        ));
        assert_eq!(host(&picked.stream)[..6], host(&b.stream)[12..18]);
        assert_eq!(host(&picked.carried[0])[..5], host(&b.carried[0])[10..15]);
        assert_eq!(host(&picked.carried[0])[5..], host(&b.carried[0])[..5]);
        let doubled = b.map(|t| t.mul_scalar(2.0));
        assert_eq!(host(&doubled.carried[0])[0], 200.0);
    }
}
