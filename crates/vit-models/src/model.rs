//! One type over the model families, so that tools can take "a model" without generics.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use mixq_core::{Result, SiteInfo};
use serde::{Deserialize, Serialize};

use crate::hooks::{NoHook, SiteHook};
use crate::layers::{Conv2d, LayerNorm, Linear};
use crate::swin::{SwinConfig, SwinTransformer};
use crate::vit::{VisionTransformer, VitConfig};

/// Architecture of any supported model, tagged by family in TOML (`family = "vit"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum ArchConfig {
    Vit(VitConfig),
    Swin(SwinConfig),
}

impl ArchConfig {
    pub fn validate(&self) -> Result<()> {
        match self {
            ArchConfig::Vit(c) => c.validate(),
            ArchConfig::Swin(c) => c.validate(),
        }
    }

    /// A model with random weights (call `device.seed(..)` first for reproducibility).
    pub fn init(&self, device: &Device) -> Result<Model> {
        Ok(match self {
            ArchConfig::Vit(c) => Model::Vit(c.init(device)?),
            ArchConfig::Swin(c) => Model::Swin(c.init(device)?),
        })
    }

    pub fn sites(&self) -> Vec<SiteInfo> {
        match self {
            ArchConfig::Vit(c) => c.sites(),
            ArchConfig::Swin(c) => c.sites(),
        }
    }

    pub fn img_size(&self) -> usize {
        match self {
            ArchConfig::Vit(c) => c.img_size,
            ArchConfig::Swin(c) => c.img_size,
        }
    }

    pub fn in_chans(&self) -> usize {
        match self {
            ArchConfig::Vit(c) => c.in_chans,
            ArchConfig::Swin(c) => c.in_chans,
        }
    }

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
    Vit(VisionTransformer),
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
                out.push(&mut m.head);
                if let Some(h) = &mut m.head_dist {
                    out.push(h);
                }
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
