//! One type over the model families, so that tools can take "a model" without generics.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use mixq_core::{Result, SiteId, SiteInfo};
use serde::{Deserialize, Serialize};

use crate::hooks::{NoHook, SiteHook};
use crate::layers::{Conv2d, LayerNorm, Linear};
use crate::swin::{SwinConfig, SwinTransformer};
use crate::vit::{VisionTransformer, VitConfig};

/// Architecture of any supported model, tagged by family in TOML (`family = "vit"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum ArchConfig {
    /// ViT / DeiT.
    Vit(VitConfig),
    /// Swin.
    Swin(SwinConfig),
}

/// Runs `init` right after seeding `device`'s generator with `seed` and draws every parameter
/// before returning, holding a process-wide lock: burn's generator is global state and its
/// parameters are drawn lazily, on first use, so two seeded initialisations on other threads
/// (parallel tests, a library user's threads) would otherwise interleave their draws and get
/// weights that depend on the timing.
pub fn seeded<M: Module>(
    device: &Device,
    seed: u64,
    init: impl FnOnce() -> Result<M>,
) -> Result<M> {
    /// Touches every parameter, which draws the lazily initialised ones.
    struct Draw;
    impl burn::module::ModuleVisitor for Draw {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(seed);
    let model = init()?;
    model.visit(&mut Draw);
    Ok(model)
}

impl ArchConfig {
    /// Checks the configuration (sizes divide, heads divide the width); errors name the key.
    pub fn validate(&self) -> Result<()> {
        match self {
            ArchConfig::Vit(c) => c.validate(),
            ArchConfig::Swin(c) => c.validate(),
        }
    }

    /// A model with random weights drawn from `seed` (see [`seeded`]).
    pub fn init_seeded(&self, device: &Device, seed: u64) -> Result<Model> {
        seeded(device, seed, || self.init(device))
    }

    /// A model with random weights (call `device.seed(..)` first for reproducibility, or use
    /// [`ArchConfig::init_seeded`]).
    pub fn init(&self, device: &Device) -> Result<Model> {
        Ok(match self {
            ArchConfig::Vit(c) => Model::Vit(c.init(device)?),
            ArchConfig::Swin(c) => Model::Swin(c.init(device)?),
        })
    }

    /// Every quantizable site in forward order, with parameters and MACs per image.
    pub fn sites(&self) -> Vec<SiteInfo> {
        match self {
            ArchConfig::Vit(c) => c.sites(),
            ArchConfig::Swin(c) => c.sites(),
        }
    }

    /// Side of the square input.
    pub fn img_size(&self) -> usize {
        match self {
            ArchConfig::Vit(c) => c.img_size,
            ArchConfig::Swin(c) => c.img_size,
        }
    }

    /// Input channels (1 for grey, 3 for RGB).
    pub fn in_chans(&self) -> usize {
        match self {
            ArchConfig::Vit(c) => c.in_chans,
            ArchConfig::Swin(c) => c.in_chans,
        }
    }

    /// Classes of the classifier head.
    pub fn num_classes(&self) -> usize {
        match self {
            ArchConfig::Vit(c) => c.num_classes,
            ArchConfig::Swin(c) => c.num_classes,
        }
    }
}

/// A classification model of any family. (A process holds one or two models, so the size
/// difference between variants costs nothing worth a box on every access.)
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Model {
    /// A ViT / DeiT.
    Vit(VisionTransformer),
    /// A Swin.
    Swin(SwinTransformer),
}

impl Model {
    /// Logits `[b, classes]` for normalized images `[b, c, h, w]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_with(images, &NoHook)
    }

    /// The forward with every site's tensors passed through `hook` (quantizers, observers).
    pub fn forward_with(&self, images: Tensor<4>, hook: &dyn SiteHook) -> Tensor<2> {
        match self {
            Model::Vit(m) => m.forward_with(images, hook),
            Model::Swin(m) => m.forward_with(images, hook),
        }
    }

    /// The final-normed tokens `[b, tokens, c]` (ViT: prefix tokens and patches; Swin: the
    /// last stage's map, row-major), every site through `hook`: what a backbone outputs, and
    /// what a label-free comparison of two models reads.
    pub fn features_with(&self, images: Tensor<4>, hook: &dyn SiteHook) -> Tensor<3> {
        match self {
            Model::Vit(m) => m.forward_features(images, hook),
            Model::Swin(m) => {
                let x = m.forward_features(images, hook);
                let [b, h, w, c] = x.dims();
                x.reshape([b, h * w, c])
            }
        }
    }

    /// A saliency decoder's map `[b, h, w]` in (0, 1) from the final-normed tokens
    /// [`Self::features_with`] returns, for images of `h x w`; `None` for models without one.
    pub fn saliency(&self, features: Tensor<3>, size: [usize; 2]) -> Option<Tensor<3>> {
        match self {
            Model::Vit(m) => m.saliency(features, size),
            Model::Swin(_) => None,
        }
    }

    /// [`Self::forward_with`], passing the residual stream (`[b, tokens, c]`) through
    /// `boundary` at the input of every block and of the final norm.
    pub fn forward_with_boundaries(
        &self,
        images: Tensor<4>,
        hook: &dyn SiteHook,
        boundary: &mut dyn FnMut(Tensor<3>) -> Tensor<3>,
    ) -> Tensor<2> {
        match self {
            Model::Vit(m) => m.forward_head(m.forward_features_with(images, hook, boundary), hook),
            Model::Swin(m) => m.forward_head(m.forward_features_with(images, hook, boundary), hook),
        }
    }

    /// The residual-stream tensors at every boundary (block inputs, then the final norm's
    /// input, as `[b, tokens, c]`) and the logits, all through `hook`: what a sweep caches so
    /// that a change at one site only reruns the model from the site's block onward.
    pub fn boundaries(
        &self,
        images: Tensor<4>,
        hook: &dyn SiteHook,
    ) -> (Vec<Tensor<3>>, Tensor<2>) {
        let mut kept = Vec::new();
        let logits = self.forward_with_boundaries(images, hook, &mut |x| {
            kept.push(x.clone());
            x
        });
        (kept, logits)
    }

    /// The boundary from which `site`'s computation can be rerun (see [`Self::forward_from`]),
    /// or `None` when it needs the images (the patch embedding, or an unknown site).
    pub fn resume_point(&self, site: &SiteId) -> Option<usize> {
        let parts: Vec<&str> = site.as_str().split('.').collect();
        let index = |i: usize| parts.get(i).and_then(|p| p.parse::<usize>().ok());
        match self {
            Model::Vit(m) => match parts.first().copied() {
                Some("blocks") => index(1).filter(|&b| b < m.blocks.len()),
                Some("head") | Some("head_dist") => Some(m.blocks.len()),
                _ => None,
            },
            Model::Swin(m) => {
                let first_block_of = |stage: usize| -> usize {
                    m.layers[..stage].iter().map(|l| l.blocks.len()).sum()
                };
                match (parts.first().copied(), parts.get(2).copied()) {
                    (Some("layers"), Some("blocks")) => {
                        let (stage, block) = (index(1)?, index(3)?);
                        (stage < m.layers.len() && block < m.layers[stage].blocks.len())
                            .then(|| first_block_of(stage) + block)
                    }
                    // Patch merging sits before its stage's first block: rerun the previous
                    // stage's last block too.
                    (Some("layers"), Some("downsample")) => {
                        let stage = index(1)?;
                        (stage > 0 && stage < m.layers.len()).then(|| first_block_of(stage) - 1)
                    }
                    (Some("head"), _) => Some(first_block_of(m.layers.len())),
                    _ => None,
                }
            }
        }
    }

    /// Transformer blocks in forward order (boundary `i` is block `i`'s input, boundary
    /// `num_blocks()` the final norm's).
    pub fn num_blocks(&self) -> usize {
        match self {
            Model::Vit(m) => m.blocks.len(),
            Model::Swin(m) => m.layers.iter().map(|l| l.blocks.len()).sum(),
        }
    }

    /// Boundary `i + 1` from boundary `i` (`[b, tokens, c]`): block `i`, and for Swin the next
    /// stage's patch merging when block `i` ends a stage. Its sites are those whose
    /// [`Self::resume_point`] is `i`: the unit block reconstruction optimises at once.
    pub fn forward_block(&self, i: usize, x: Tensor<3>, hook: &dyn SiteHook) -> Tensor<3> {
        match self {
            Model::Vit(m) => m.blocks[i].forward(x, hook),
            Model::Swin(m) => {
                let [b, n, c] = x.dims();
                let side = (n as f64).sqrt().round() as usize;
                let mut y = x.reshape([b, side, side, c]);
                let mut start = 0;
                for (s, layer) in m.layers.iter().enumerate() {
                    let end = start + layer.blocks.len();
                    if i < end {
                        y = layer.blocks[i - start].forward(y, hook);
                        if i + 1 == end
                            && let Some(down) =
                                m.layers.get(s + 1).and_then(|l| l.downsample.as_ref())
                        {
                            y = down.forward(y, hook);
                        }
                        break;
                    }
                    start = end;
                }
                let [b, h, w, c] = y.dims();
                y.reshape([b, h * w, c])
            }
        }
    }

    /// Logits from boundary `point` onward, given that boundary's tensor (`[b, tokens, c]`
    /// as [`Self::boundaries`] returns it).
    pub fn forward_from(&self, point: usize, x: Tensor<3>, hook: &dyn SiteHook) -> Tensor<2> {
        match self {
            Model::Vit(m) => {
                let x = m.blocks[point.min(m.blocks.len())..]
                    .iter()
                    .fold(x, |x, b| b.forward(x, hook));
                m.forward_head(m.norm.forward(x, hook), hook)
            }
            Model::Swin(m) => {
                let [b, n, c] = x.dims();
                let side = (n as f64).sqrt().round() as usize;
                let mut y = x.reshape([b, side, side, c]);
                let (mut start, mut entered) = (0, false);
                for layer in &m.layers {
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
                m.forward_head(m.norm.forward(y, hook), hook)
            }
        }
    }

    /// A backbone: no classifier head, its output is features (a ViT with `num_classes = 0`).
    pub fn is_backbone(&self) -> bool {
        matches!(self, Model::Vit(m) if m.head.is_none())
    }

    /// The configuration the model was built from.
    pub fn arch(&self) -> ArchConfig {
        match self {
            Model::Vit(m) => ArchConfig::Vit(m.config.clone()),
            Model::Swin(m) => ArchConfig::Swin(m.config.clone()),
        }
    }

    /// Every quantizable site in forward order.
    pub fn sites(&self) -> Vec<SiteInfo> {
        self.arch().sites()
    }
}

/// Mutable access to the parameters that post-training quantization rewrites.
impl Model {
    /// Every linear site, in forward order.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = Vec::new();
        match self {
            Model::Vit(m) => {
                for b in &mut m.blocks {
                    out.extend([
                        &mut b.attn.qkv,
                        &mut b.attn.proj,
                        &mut b.mlp.fc1,
                        &mut b.mlp.fc2,
                    ]);
                }
                out.extend(m.head.as_mut());
                out.extend(m.head_dist.as_mut());
            }
            Model::Swin(m) => {
                for stage in &mut m.layers {
                    if let Some(d) = &mut stage.downsample {
                        out.push(&mut d.reduction);
                    }
                    for b in &mut stage.blocks {
                        out.extend([
                            &mut b.attn.qkv,
                            &mut b.attn.proj,
                            &mut b.mlp.fc1,
                            &mut b.mlp.fc2,
                        ]);
                    }
                }
                out.push(&mut m.head.fc);
            }
        }
        out
    }

    /// The patch-embedding convolution.
    pub fn patch_embed_mut(&mut self) -> &mut Conv2d {
        match self {
            Model::Vit(m) => &mut m.patch_embed.proj,
            Model::Swin(m) => &mut m.patch_embed.proj,
        }
    }

    /// Each LayerNorm with the linear site that reads its output directly (`norm1` -> `qkv`,
    /// `norm2` -> `fc1`, Swin's `downsample.norm` -> `reduction`): the post-LayerNorm sites whose
    /// per-channel ranges can be folded into the norm (RepQ-ViT reparameterization).
    pub fn post_norm_pairs_mut(&mut self) -> Vec<(&mut LayerNorm, &mut Linear)> {
        let mut out = Vec::new();
        match self {
            Model::Vit(m) => {
                for b in &mut m.blocks {
                    out.push((&mut b.norm1, &mut b.attn.qkv));
                    out.push((&mut b.norm2, &mut b.mlp.fc1));
                }
            }
            Model::Swin(m) => {
                for stage in &mut m.layers {
                    if let Some(d) = &mut stage.downsample {
                        out.push((&mut d.norm, &mut d.reduction));
                    }
                    for b in &mut stage.blocks {
                        out.push((&mut b.norm1, &mut b.attn.qkv));
                        out.push((&mut b.norm2, &mut b.mlp.fc1));
                    }
                }
            }
        }
        out
    }
}
