//! The model interface the pipeline stages take: what a model family declares about its
//! structure (its sites, its residual-stream blocks and what they contain, the parameters PTQ
//! rewrites, what it outputs), implemented once per family next to its layers.

use burn::tensor::Tensor;
use mixq_core::{Result, SiteId, SiteInfo};
use serde::{Deserialize, Serialize};

use crate::explain::{ExplainOptions, Explanation, Target};
use crate::hooks::{NoHook, SiteHook};
use crate::layers::{Conv2d, LayerNorm, Linear};

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
/// the model rerun from its block ([`Network::resume_point`]). A model without one residual
/// stream declares no blocks (WTPose: its stages feed the head at several scales): it has no
/// boundaries, none of its sites a resume point, and a sweep reruns it from the images.
///
/// A model of one's own built from mixq's layers ([`Linear`](crate::layers::Linear) and
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

    /// [`Network::forward_with`], passing the residual stream (`[b, tokens, c]`) through
    /// `boundary` at every block boundary (each block's input, then the input of what
    /// follows the last block).
    fn forward_with_boundaries(
        &self,
        images: Tensor<4>,
        hook: &dyn SiteHook,
        boundary: &mut dyn FnMut(Tensor<3>) -> Tensor<3>,
    ) -> Tensor<2>;

    /// The residual-stream tensors at every boundary and the output, all through `hook`: what
    /// a sweep caches so that a change at one site only reruns the model from its block.
    fn boundaries(&self, images: Tensor<4>, hook: &dyn SiteHook) -> (Vec<Tensor<3>>, Tensor<2>) {
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

    /// Boundary `i + 1` from boundary `i` (`[b, tokens, c]`): block `i`.
    fn forward_block(&self, i: usize, x: Tensor<3>, hook: &dyn SiteHook) -> Tensor<3>;

    /// The output from boundary `point` onward, given that boundary's tensor.
    fn forward_from(&self, point: usize, x: Tensor<3>, hook: &dyn SiteHook) -> Tensor<2>;

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
