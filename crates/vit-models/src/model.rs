//! One type over the model families, so that tools can take "a model" without generics.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use mixq_core::{Result, SiteInfo};
use serde::{Deserialize, Serialize};

use crate::hooks::{NoHook, SiteHook};
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

/// A classification model of any family.
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
