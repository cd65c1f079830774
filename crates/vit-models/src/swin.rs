//! Swin Transformer as timm's `SwinTransformer` (current layout: `PatchMerging` at the start of
//! stages 1..n, `head.fc`). Tokens stay NHWC `[b, h, w, c]` between blocks, as in timm.
//! The relative-position index and the shifted-window mask are recomputed, never loaded.

use std::cell::RefCell;

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::ops::PadMode;
use burn::tensor::{Device, Int, Tensor, TensorData};
use mixq_core::{Error, Result, SiteId, SiteInfo, SiteKind};
use serde::{Deserialize, Serialize};

use crate::hooks::SiteHook;
use crate::layers::{
    Conv2d, Conv2dConfig, LayerNorm, Linear, LinearConfig, Mlp, SiteBuilder, merge_heads, split_qkv,
};
use crate::network::{Boundary, Network, OutputKind};
use crate::vit::{attention_scores, attention_values};

/// Architecture of a Swin Transformer (timm's constructor arguments).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwinConfig {
    /// Side of the square input.
    pub img_size: usize,
    /// Side of the square patches.
    pub patch_size: usize,
    #[serde(default = "crate::layers::rgb")]
    /// Input channels.
    pub in_chans: usize,
    /// Classes of the classifier head.
    pub num_classes: usize,
    /// Channels after the patch embedding (doubled by every patch merging).
    pub embed_dim: usize,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Attention heads per stage.
    pub num_heads: Vec<usize>,
    /// Side of the square attention windows.
    pub window_size: usize,
    #[serde(default = "crate::layers::mlp_ratio_4")]
    /// Hidden width of the MLPs as a multiple of their input width.
    pub mlp_ratio: f64,
    #[serde(default = "swin_eps")]
    /// Epsilon of every LayerNorm.
    pub norm_eps: f64,
}

fn swin_eps() -> f64 {
    1e-5
}

/// One block's effective geometry after timm's `_calc_window_shift`: a stage whose resolution
/// is not larger than the window uses one window of the whole map and no shift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowGeometry {
    /// Side of the token grid at this block.
    pub resolution: usize,
    /// Side of the attention window at this block (the grid's side if smaller).
    pub window: usize,
    /// Cyclic shift of the windows (0 in unshifted blocks).
    pub shift: usize,
}

impl SwinConfig {
    /// Checks the configuration (patch and window sizes divide, heads divide the width); errors name the key.
    pub fn validate(&self) -> Result<()> {
        if self.depths.is_empty() || self.depths.len() != self.num_heads.len() {
            return Err(Error::invalid(
                "depths",
                format!("{:?}", self.depths),
                format!(
                    "needs one entry per stage, like num_heads {:?}",
                    self.num_heads
                ),
            ));
        }
        if self.patch_size == 0 || !self.img_size.is_multiple_of(self.patch_size) {
            return Err(Error::invalid(
                "patch_size",
                self.patch_size,
                format!("must divide img_size {}", self.img_size),
            ));
        }
        for s in 0..self.depths.len() {
            let dim = self.stage_dim(s);
            if !dim.is_multiple_of(self.num_heads[s]) {
                return Err(Error::invalid(
                    "num_heads",
                    self.num_heads[s],
                    format!("must divide stage {s} dim {dim}"),
                ));
            }
            let g = self.geometry(s, 0);
            if g.resolution == 0 || !g.resolution.is_multiple_of(g.window) {
                return Err(Error::invalid(
                    "window_size",
                    self.window_size,
                    format!(
                        "stage {s} resolution {} is not a multiple of it",
                        g.resolution
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Channels of stage `stage` (0-based).
    pub fn stage_dim(&self, stage: usize) -> usize {
        self.embed_dim << stage
    }

    /// Side of the token grid of stage `stage`.
    pub fn stage_resolution(&self, stage: usize) -> usize {
        (self.img_size / self.patch_size) >> stage
    }

    /// Channels of the final features (the last stage's).
    pub fn num_features(&self) -> usize {
        self.stage_dim(self.depths.len() - 1)
    }

    /// Window size and shift of block `block` of stage `stage`, as timm clamps them.
    pub fn geometry(&self, stage: usize, block: usize) -> WindowGeometry {
        let resolution = self.stage_resolution(stage);
        let target_shift = if block % 2 == 1 {
            self.window_size / 2
        } else {
            0
        };
        let window = self.window_size.min(resolution);
        let shift = if resolution <= window {
            0
        } else {
            target_shift
        };
        WindowGeometry {
            resolution,
            window,
            shift,
        }
    }

    /// A model with timm-like random init, its sites recorded as it is built (in forward
    /// order).
    pub fn init(&self, device: &Device) -> Result<SwinTransformer> {
        self.validate()?;
        let sites = RefCell::new(Vec::new());
        let b = SiteBuilder::new(&sites, device);
        let e = self.embed_dim;
        let r0 = self.stage_resolution(0);
        let patch_embed = SwinPatchEmbed {
            proj: b
                .pp("patch_embed.proj")
                .rows(r0 * r0)
                .conv(&Conv2dConfig::new(
                    self.in_chans,
                    e,
                    self.patch_size,
                    self.patch_size,
                )),
            norm: LayerNorm::new(e, self.norm_eps, device),
        };
        let layers = (0..self.depths.len())
            .map(|s| {
                let r = self.stage_resolution(s);
                let geometry: Vec<(usize, usize)> = (0..self.depths[s])
                    .map(|b| {
                        let g = self.geometry(s, b);
                        (g.window, g.shift)
                    })
                    .collect();
                SwinStage::build(
                    &b.pp(&format!("layers.{s}")),
                    SwinStageDims {
                        dim: self.stage_dim(s),
                        heads: self.num_heads[s],
                        resolution: [r, r],
                        downsample: s > 0,
                        mlp_ratio: self.mlp_ratio,
                        norm_eps: self.norm_eps,
                    },
                    &geometry,
                )
            })
            .collect();
        let head = ClassifierHead {
            fc: b
                .pp("head.fc")
                .linear(&LinearConfig::new(self.num_features(), self.num_classes)),
        };
        Ok(SwinTransformer {
            patch_embed,
            layers,
            norm: LayerNorm::new(self.num_features(), self.norm_eps, device),
            head,
            config: self.clone(),
            sites: sites.into_inner(),
        })
    }

    /// Every quantizable site in forward order, with parameters and MACs per image: those the
    /// model records as it is built (its parameters are drawn lazily, so nothing is allocated).
    /// Empty for a configuration [`Self::validate`] rejects.
    pub fn sites(&self) -> Vec<SiteInfo> {
        self.init(&Device::flex())
            .map(|m| m.sites)
            .unwrap_or_default()
    }
}

/// Patch embedding with LayerNorm, output NHWC.
#[derive(Module, Debug)]
pub struct SwinPatchEmbed {
    /// The patch embedding conv.
    pub proj: Conv2d,
    /// Its LayerNorm.
    pub norm: LayerNorm,
}

/// Window attention with a learned relative-position bias.
#[derive(Module, Debug)]
pub struct WindowAttention {
    /// Query, key and value projection.
    pub qkv: Linear,
    /// Output projection.
    pub proj: Linear,
    /// Learned relative position biases, `[(2w-1)^2, heads]`.
    pub relative_position_bias_table: Param<Tensor<2>>,
    /// Index into the table for each (query, key) pair of a window, `[n*n]`; recomputed.
    pub relative_position_index: Tensor<1, Int>,
    #[module(skip)]
    /// Attention heads.
    pub num_heads: usize,
    #[module(skip)]
    /// Side of the attention window.
    pub window: usize,
    #[module(skip)]
    /// The `q kᵀ` site.
    pub matmul_qk: SiteId,
    #[module(skip)]
    /// The `attn v` site.
    pub matmul_av: SiteId,
}

/// timm's `get_relative_position_index` for a square window, flattened.
pub fn relative_position_index(window: usize) -> Vec<i64> {
    let n = window * window;
    let w = window as i64;
    let mut idx = Vec::with_capacity(n * n);
    for i in 0..n as i64 {
        for j in 0..n as i64 {
            let dh = i / w - j / w + w - 1;
            let dw = i % w - j % w + w - 1;
            idx.push(dh * (2 * w - 1) + dw);
        }
    }
    idx
}

/// timm's shifted-window attention mask, `[num_windows, n, n]` with 0 inside a region and -100
/// across regions.
pub fn shifted_window_mask(resolution: usize, window: usize, shift: usize) -> Vec<f32> {
    shifted_window_mask_hw(resolution, resolution, window, shift)
}

/// [`shifted_window_mask`] for an `h x w` map (both multiples of `window`), as mmpose's
/// `ShiftWindowMSA` builds it on the padded map.
pub fn shifted_window_mask_hw(h: usize, w: usize, window: usize, shift: usize) -> Vec<f32> {
    let region = |i: usize, r: usize| -> usize {
        if i < r - window {
            0
        } else if i < r - shift {
            1
        } else {
            2
        }
    };
    let (nh, nw) = (h / window, w / window);
    let n = window * window;
    let mut mask = Vec::with_capacity(nh * nw * n * n);
    for wh in 0..nh {
        for ww in 0..nw {
            let label = |p: usize| {
                let (y, x) = (wh * window + p / window, ww * window + p % window);
                region(y, h) * 3 + region(x, w)
            };
            for i in 0..n {
                for j in 0..n {
                    mask.push(if label(i) == label(j) { 0.0 } else { -100.0 });
                }
            }
        }
    }
    mask
}

impl WindowAttention {
    /// Its sites in forward order: `qkv`, `matmul_qk`, `matmul_av`, `proj`.
    pub fn site_ids(&self) -> [SiteId; 4] {
        [
            self.qkv.site.clone(),
            self.matmul_qk.clone(),
            self.matmul_av.clone(),
            self.proj.site.clone(),
        ]
    }

    /// Attention within windows: `x` is `[windows, n, c]`, `mask` `[mask_windows, n, n]`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        mask: Option<&Tensor<3>>,
        hook: &dyn SiteHook,
    ) -> Tensor<3> {
        let [q, k, v] = split_qkv(self.qkv.forward(x, hook), self.num_heads);
        let [bw, h, n, d] = q.dims();
        let q = q.mul_scalar((d as f64).powf(-0.5));
        let bias = self
            .relative_position_bias_table
            .val()
            .select(0, self.relative_position_index.clone())
            .reshape([n, n, h])
            .permute([2, 0, 1])
            .unsqueeze::<4>();
        let mut attn = attention_scores(q, k, &self.matmul_qk, hook) + bias;
        if let Some(mask) = mask {
            let nw = mask.dims()[0];
            attn = (attn.reshape([bw / nw, nw, h, n, n]) + mask.clone().reshape([1, nw, 1, n, n]))
                .reshape([bw, h, n, n]);
        }
        let out = attention_values(hook.ops().softmax(attn, 3), v, &self.matmul_av, hook);
        self.proj.forward(merge_heads(out), hook)
    }
}

/// `[b, h, w, c]` -> `[b * windows, window^2, c]`.
pub fn window_partition(x: Tensor<4>, window: usize) -> Tensor<3> {
    let [b, h, w, c] = x.dims();
    x.reshape([b, h / window, window, w / window, window, c])
        .permute([0, 1, 3, 2, 4, 5])
        .reshape([b * (h / window) * (w / window), window * window, c])
}

/// Inverse of [`window_partition`].
pub fn window_reverse(windows: Tensor<3>, window: usize, h: usize, w: usize) -> Tensor<4> {
    let c = windows.dims()[2];
    let b = windows.dims()[0] / ((h / window) * (w / window));
    windows
        .reshape([b, h / window, w / window, window, window, c])
        .permute([0, 1, 3, 2, 4, 5])
        .reshape([b, h, w, c])
}

/// A Swin block: (shifted) window attention and MLP, both pre-LN with residuals.
///
/// A map whose sides are not multiples of the window is zero-padded at the bottom/right after
/// `norm1` (the padded tokens enter the windows, as in mmpose's `ShiftWindowMSA`) and cropped
/// after the attention; the shift mask is built on the padded map.
#[derive(Module, Debug)]
pub struct SwinBlock {
    /// Before attention.
    pub norm1: LayerNorm,
    /// Window attention.
    pub attn: WindowAttention,
    /// Before the MLP.
    pub norm2: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
    /// Masks attention across the wrapped-around borders of shifted windows.
    pub attn_mask: Option<Tensor<3>>,
    #[module(skip)]
    /// Cyclic shift of the windows (0 in unshifted blocks).
    pub shift: usize,
    /// The padded `[h, w]` that `attn_mask` was built for.
    #[module(skip)]
    pub mask_size: [usize; 2],
    /// The `[h, w]` map the block was built for.
    #[module(skip)]
    pub resolution: [usize; 2],
}

/// `h` rounded up to a multiple of `window`.
pub fn padded_len(h: usize, window: usize) -> usize {
    h.div_ceil(window) * window
}

impl SwinBlock {
    /// A block at `b`'s path for an `[h, w]` map with the given (effective) window and shift.
    /// Its attention runs on the map padded to whole windows, its MLP on the map's tokens: the
    /// sites are recorded with those rows.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        b: &SiteBuilder,
        dim: usize,
        heads: usize,
        window: usize,
        shift: usize,
        resolution: [usize; 2],
        mlp_ratio: f64,
        norm_eps: f64,
    ) -> Self {
        let device = b.device();
        let n = window * window;
        let table = (2 * window - 1) * (2 * window - 1);
        let index = relative_position_index(window);
        let mask_size = resolution.map(|r| padded_len(r, window));
        let attn_mask = (shift > 0).then(|| block_mask(mask_size, window, shift, device));
        let padded = b.pp("attn").rows(mask_size[0] * mask_size[1]);
        // Each window's matmuls: heads x n x n x head_dim = n x n x dim, over padded / n windows.
        let matmul_macs = padded.rows_per_image() * n * dim;
        let qkv = padded.pp("qkv").linear(&LinearConfig::new(dim, 3 * dim));
        let matmul_qk = padded
            .pp("matmul_qk")
            .matmul(SiteKind::MatMulQk, matmul_macs);
        let matmul_av = padded
            .pp("matmul_av")
            .matmul(SiteKind::MatMulAv, matmul_macs);
        let proj = padded.pp("proj").linear(&LinearConfig::new(dim, dim));
        let tokens = b.rows(resolution[0] * resolution[1]);
        SwinBlock {
            norm1: LayerNorm::new(dim, norm_eps, device),
            attn: WindowAttention {
                qkv,
                proj,
                relative_position_bias_table: Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                }
                .init([table, heads], device),
                relative_position_index: Tensor::from_data(TensorData::new(index, [n * n]), device),
                num_heads: heads,
                window,
                matmul_qk,
                matmul_av,
            },
            norm2: LayerNorm::new(dim, norm_eps, device),
            mlp: Mlp::build(&tokens.pp("mlp"), dim, (dim as f64 * mlp_ratio) as usize),
            attn_mask,
            shift,
            mask_size,
            resolution,
        }
    }

    /// Whether the block pads its normed tokens to whole windows (as timm and mmpose do): the
    /// zero rows enter `qkv` as real keys, and a post-LN fold would shift them, so its
    /// `norm1 -> qkv` is then no foldable pair.
    pub fn pads_normed_tokens(&self) -> bool {
        self.mask_size != self.resolution
    }

    /// Its sites in forward order (attention, then MLP).
    pub fn site_ids(&self) -> Vec<SiteId> {
        let mut ids = self.attn.site_ids().to_vec();
        ids.extend(self.mlp.site_ids());
        ids
    }

    /// One block on `[b, h, w, c]` tokens.
    pub fn forward(&self, x: Tensor<4>, hook: &dyn SiteHook) -> Tensor<4> {
        let [b, h, w, c] = x.dims();
        let window = self.attn.window;
        let (hp, wp) = (padded_len(h, window), padded_len(w, window));
        let s = self.shift as i64;
        let mut y = self.norm1.forward(x.clone(), hook);
        if (hp, wp) != (h, w) {
            y = y.pad([(0, hp - h), (0, wp - w), (0, 0)], PadMode::Constant(0.0));
        }
        if s > 0 {
            y = y.roll(&[-s, -s], &[1, 2]);
        }
        let built;
        let mask = match &self.attn_mask {
            Some(m) if self.mask_size == [hp, wp] => Some(m),
            _ if s > 0 => {
                built = block_mask([hp, wp], window, self.shift, &x.device());
                Some(&built)
            }
            _ => None,
        };
        let y = self.attn.forward(window_partition(y, window), mask, hook);
        let mut y = window_reverse(y, window, hp, wp);
        if s > 0 {
            y = y.roll(&[s, s], &[1, 2]);
        }
        if (hp, wp) != (h, w) {
            y = y.slice([0..b, 0..h, 0..w, 0..c]);
        }
        let x = (x + y).reshape([b, h * w, c]);
        let x = x.clone() + self.mlp.forward(self.norm2.forward(x, hook), hook);
        x.reshape([b, h, w, c])
    }
}

fn block_mask(size: [usize; 2], window: usize, shift: usize, device: &Device) -> Tensor<3> {
    let [h, w] = size;
    let nw = (h / window) * (w / window);
    let n = window * window;
    Tensor::from_data(
        TensorData::new(shifted_window_mask_hw(h, w, window, shift), [nw, n, n]),
        device,
    )
}

/// timm's `PatchMerging`: 2x2 neighbours concatenated (in timm's order), normed, reduced.
#[derive(Module, Debug)]
pub struct PatchMerging {
    /// Over the four merged tokens' channels.
    pub norm: LayerNorm,
    /// The linear halving the merged channels.
    pub reduction: Linear,
}

impl PatchMerging {
    /// Merges 2x2 neighbouring tokens: `[b, h, w, c]` to `[b, h/2, w/2, 2c]`.
    pub fn forward(&self, x: Tensor<4>, hook: &dyn SiteHook) -> Tensor<4> {
        let [b, h, w, c] = x.dims();
        let x = x
            .reshape([b, h / 2, 2, w / 2, 2, c])
            .permute([0, 1, 3, 4, 2, 5])
            .reshape([b, h / 2, w / 2, 4 * c]);
        self.reduction.forward(self.norm.forward(x, hook), hook)
    }
}

/// One stage: optional downsampling, then blocks.
#[derive(Module, Debug)]
pub struct SwinStage {
    /// Patch merging at the start of the stage (none in the first stage).
    pub downsample: Option<PatchMerging>,
    /// The stage's blocks.
    pub blocks: Vec<SwinBlock>,
}

/// The shape of a [`SwinStage`] (its blocks' geometry is passed separately).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SwinStageDims {
    /// Channels inside the stage (after the optional patch merging).
    pub dim: usize,
    /// Attention heads.
    pub heads: usize,
    /// `[h, w]` of the stage's blocks (after the optional patch merging).
    pub resolution: [usize; 2],
    /// Whether the stage starts with a patch merging from `dim / 2` channels.
    pub downsample: bool,
    /// Hidden width of the MLPs as a multiple of their input width.
    pub mlp_ratio: f64,
    /// Epsilon of every LayerNorm.
    pub norm_eps: f64,
}

impl SwinStage {
    /// A stage at `b`'s path (`layers.2`); `geometry` holds each block's `(window, shift)`.
    pub fn build(b: &SiteBuilder, dims: SwinStageDims, geometry: &[(usize, usize)]) -> Self {
        let (dim, device) = (dims.dim, b.device());
        let [rh, rw] = dims.resolution;
        SwinStage {
            downsample: dims.downsample.then(|| PatchMerging {
                norm: LayerNorm::new(2 * dim, dims.norm_eps, device),
                reduction: b
                    .pp("downsample.reduction")
                    .rows(rh * rw)
                    .linear(&LinearConfig::new(2 * dim, dim).with_bias(false)),
            }),
            blocks: geometry
                .iter()
                .enumerate()
                .map(|(i, &(window, shift))| {
                    SwinBlock::build(
                        &b.pp(&format!("blocks.{i}")),
                        dim,
                        dims.heads,
                        window,
                        shift,
                        dims.resolution,
                        dims.mlp_ratio,
                        dims.norm_eps,
                    )
                })
                .collect(),
        }
    }

    /// Patch merging (if any), then the blocks; NHWC in and out.
    pub fn forward(&self, mut x: Tensor<4>, hook: &dyn SiteHook) -> Tensor<4> {
        if let Some(down) = &self.downsample {
            x = down.forward(x, hook);
        }
        for block in &self.blocks {
            x = block.forward(x, hook);
        }
        x
    }

    /// Its linear sites in forward order: the merging's reduction, then each block's.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = Vec::new();
        if let Some(d) = &mut self.downsample {
            out.push(&mut d.reduction);
        }
        for b in &mut self.blocks {
            out.extend([
                &mut b.attn.qkv,
                &mut b.attn.proj,
                &mut b.mlp.fc1,
                &mut b.mlp.fc2,
            ]);
        }
        out
    }

    /// `downsample.norm` -> `reduction`, and `norm1` -> `qkv` (where the block does not pad,
    /// see [`SwinBlock::pads_normed_tokens`]), `norm2` -> `fc1` of every block.
    pub fn post_norm_pairs_mut(&mut self) -> Vec<(&mut LayerNorm, &mut Linear)> {
        let mut out = Vec::new();
        if let Some(d) = &mut self.downsample {
            out.push((&mut d.norm, &mut d.reduction));
        }
        for b in &mut self.blocks {
            if !b.pads_normed_tokens() {
                out.push((&mut b.norm1, &mut b.attn.qkv));
            }
            out.push((&mut b.norm2, &mut b.mlp.fc1));
        }
        out
    }
}

/// timm's `ClassifierHead` (average pool, then `fc`).
#[derive(Module, Debug)]
pub struct ClassifierHead {
    /// The classifier.
    pub fc: Linear,
}

/// timm's `SwinTransformer`.
#[derive(Module, Debug)]
pub struct SwinTransformer {
    /// The patch embedding.
    pub patch_embed: SwinPatchEmbed,
    /// The stages.
    pub layers: Vec<SwinStage>,
    /// The final LayerNorm.
    pub norm: LayerNorm,
    /// Global average pooling and the classifier.
    pub head: ClassifierHead,
    #[module(skip)]
    /// The configuration the model was built from.
    pub config: SwinConfig,
    #[module(skip)]
    /// Its sites, recorded while it was built.
    pub sites: Vec<SiteInfo>,
}

impl SwinTransformer {
    /// Patch-embedded, normed tokens `[b, h, w, c]`.
    pub fn embed(&self, images: Tensor<4>, hook: &dyn SiteHook) -> Tensor<4> {
        let x = self
            .patch_embed
            .proj
            .forward(images, hook)
            .permute([0, 2, 3, 1]);
        self.patch_embed.norm.forward(x, hook)
    }

    /// Final-normed NHWC features.
    pub fn forward_features(&self, images: Tensor<4>, hook: &dyn SiteHook) -> Tensor<4> {
        self.forward_features_with(images, hook, &mut |x| x)
    }

    /// [`Self::forward_features`], passing the residual stream (`[b, h*w, c]`) through
    /// `boundary` at the input of every block and of the final norm (LRP reads relevance
    /// there).
    pub fn forward_features_with(
        &self,
        images: Tensor<4>,
        hook: &dyn SiteHook,
        boundary: &mut dyn FnMut(Tensor<3>) -> Tensor<3>,
    ) -> Tensor<4> {
        let mut through = |x: Tensor<4>| {
            let [b, h, w, c] = x.dims();
            boundary(x.reshape([b, h * w, c])).reshape([b, h, w, c])
        };
        let mut x = self.embed(images, hook);
        for stage in &self.layers {
            if let Some(down) = &stage.downsample {
                x = down.forward(x, hook);
            }
            for block in &stage.blocks {
                x = block.forward(through(x), hook);
            }
        }
        self.norm.forward(through(x), hook)
    }

    /// Average pool over positions, then `head.fc`.
    pub fn forward_head(&self, x: Tensor<4>, hook: &dyn SiteHook) -> Tensor<2> {
        let [b, h, w, c] = x.dims();
        let pooled = x.reshape([b, h * w, c]).mean_dim(1).reshape([b, c]);
        self.head.fc.forward(pooled, hook)
    }
}

/// `[b, h*w, c]` as the square NHWC map `[b, side, side, c]` Swin's blocks take.
fn square_map(x: Tensor<3>) -> Tensor<4> {
    let [b, n, c] = x.dims();
    let side = (n as f64).sqrt().round() as usize;
    x.reshape([b, side, side, c])
}

/// Block `i` of the residual stream is the `i`-th Swin block counted over all stages, and,
/// when it ends a stage, the next stage's patch merging: merging sits before its stage's first
/// block, so a change there reruns from the previous stage's last block.
impl Network for SwinTransformer {
    fn sites(&self) -> Vec<SiteInfo> {
        self.sites.clone()
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Logits
    }

    fn forward_with_boundaries(
        &self,
        images: Tensor<4>,
        hook: &dyn SiteHook,
        boundary: &mut dyn FnMut(Boundary) -> Boundary,
    ) -> Tensor<2> {
        let mut stream = |x| boundary(Boundary::new(x)).stream;
        self.forward_head(self.forward_features_with(images, hook, &mut stream), hook)
    }

    fn block_sites(&self) -> Vec<Vec<SiteId>> {
        let mut out = Vec::new();
        for (s, stage) in self.layers.iter().enumerate() {
            for (b, block) in stage.blocks.iter().enumerate() {
                let mut ids = block.site_ids();
                if b + 1 == stage.blocks.len()
                    && let Some(down) = self.layers.get(s + 1).and_then(|l| l.downsample.as_ref())
                {
                    ids.push(down.reduction.site.clone());
                }
                out.push(ids);
            }
        }
        out
    }

    fn num_blocks(&self) -> usize {
        self.layers.iter().map(|l| l.blocks.len()).sum()
    }

    fn forward_block(&self, i: usize, x: Boundary, hook: &dyn SiteHook) -> Boundary {
        let mut y = square_map(x.stream);
        let mut start = 0;
        for (s, layer) in self.layers.iter().enumerate() {
            let end = start + layer.blocks.len();
            if i < end {
                y = layer.blocks[i - start].forward(y, hook);
                if i + 1 == end
                    && let Some(down) = self.layers.get(s + 1).and_then(|l| l.downsample.as_ref())
                {
                    y = down.forward(y, hook);
                }
                break;
            }
            start = end;
        }
        let [b, h, w, c] = y.dims();
        Boundary::new(y.reshape([b, h * w, c]))
    }

    fn forward_from(&self, point: usize, x: Boundary, hook: &dyn SiteHook) -> Tensor<2> {
        let mut y = square_map(x.stream);
        let (mut start, mut entered) = (0, false);
        for layer in &self.layers {
            let end = start + layer.blocks.len();
            if entered {
                if let Some(down) = &layer.downsample {
                    y = down.forward(y, hook);
                }
                for block in &layer.blocks {
                    y = block.forward(y, hook);
                }
            } else if point < end {
                entered = true;
                for block in &layer.blocks[point - start..] {
                    y = block.forward(y, hook);
                }
            }
            start = end;
        }
        self.forward_head(self.norm.forward(y, hook), hook)
    }

    fn convs_mut(&mut self) -> Vec<&mut Conv2d> {
        vec![&mut self.patch_embed.proj]
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out: Vec<&mut Linear> = self
            .layers
            .iter_mut()
            .flat_map(SwinStage::linears_mut)
            .collect();
        out.push(&mut self.head.fc);
        out
    }

    /// Every stage's pairs ([`SwinStage::post_norm_pairs_mut`]).
    fn post_norm_pairs_mut(&mut self) -> Vec<(&mut LayerNorm, &mut Linear)> {
        self.layers
            .iter_mut()
            .flat_map(SwinStage::post_norm_pairs_mut)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_index_matches_timm_corners() {
        // timm: for a 2x2 window the index matrix is [[4,3,1,0],[5,4,2,1],[7,6,4,3],[8,7,5,4]].
        assert_eq!(
            relative_position_index(2),
            vec![4, 3, 1, 0, 5, 4, 2, 1, 7, 6, 4, 3, 8, 7, 5, 4]
        );
    }

    #[test]
    fn mask_separates_regions_of_the_last_window_only() {
        // 4x4 map, window 2, shift 1: windows 0 (top-left) is one region; window 3 (bottom-right)
        // holds 4 regions so only its diagonal is 0.
        let m = shifted_window_mask(4, 2, 1);
        assert!(m[..16].iter().all(|&v| v == 0.0));
        let last = &m[48..64];
        for i in 0..4 {
            for j in 0..4 {
                assert_eq!(
                    last[i * 4 + j],
                    if i == j { 0.0 } else { -100.0 },
                    "({i},{j})"
                );
            }
        }
    }

    #[test]
    fn small_stages_use_one_window_without_shift() {
        let cfg = SwinConfig {
            img_size: 224,
            patch_size: 4,
            in_chans: 3,
            num_classes: 1000,
            embed_dim: 96,
            depths: vec![2, 2, 6, 2],
            num_heads: vec![3, 6, 12, 24],
            window_size: 7,
            mlp_ratio: 4.0,
            norm_eps: 1e-5,
        };
        assert_eq!(
            cfg.geometry(0, 1),
            WindowGeometry {
                resolution: 56,
                window: 7,
                shift: 3
            }
        );
        assert_eq!(
            cfg.geometry(3, 1),
            WindowGeometry {
                resolution: 7,
                window: 7,
                shift: 0
            }
        );
        cfg.validate().unwrap();
    }
}
