//! One type over the model families, so that tools can take "a model" without generics.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use mixq_core::{Result, SiteId, SiteInfo};
use serde::{Deserialize, Serialize};

use crate::hooks::SiteHook;
use crate::layers::{Conv2d, LayerNorm, Linear};
use crate::network::{Boundary, Network, OutputKind};
use crate::swin::{SwinConfig, SwinTransformer};
use crate::vit::{VisionTransformer, VitConfig};
use crate::wtpose::WtPoseConfig;

/// Architecture of any supported model, tagged by family in TOML (`family = "vit"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum ArchConfig {
    /// ViT / DeiT.
    Vit(VitConfig),
    /// Swin.
    Swin(SwinConfig),
    /// WTPose (pose estimation: heatmaps, not classes). Its card resolves it like any model's;
    /// it is built as a [`WtPose`](crate::WtPose) ([`ModelCard::load_pose`](crate::ModelCard::load_pose)), not
    /// as a [`Model`].
    #[serde(rename = "wtpose")]
    WtPose(WtPoseConfig),
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
            ArchConfig::WtPose(c) => c.validate(),
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
            ArchConfig::WtPose(_) => return Err(not_a_classifier()),
        })
    }

    /// Every quantizable site in forward order, with parameters and MACs per image.
    pub fn sites(&self) -> Vec<SiteInfo> {
        match self {
            ArchConfig::Vit(c) => c.sites(),
            ArchConfig::Swin(c) => c.sites(),
            ArchConfig::WtPose(c) => c.sites(),
        }
    }

    /// Side of the square input (a pose model's input height; its width:
    /// [`WtPoseConfig::input_size`]).
    pub fn img_size(&self) -> usize {
        match self {
            ArchConfig::Vit(c) => c.img_size,
            ArchConfig::Swin(c) => c.img_size,
            ArchConfig::WtPose(c) => c.input_size[0],
        }
    }

    /// Input channels (1 for grey, 3 for RGB).
    pub fn in_chans(&self) -> usize {
        match self {
            ArchConfig::Vit(c) => c.in_chans,
            ArchConfig::Swin(c) => c.in_chans,
            ArchConfig::WtPose(c) => c.in_chans,
        }
    }

    /// Classes of the classifier head (0: a backbone or a pose model).
    pub fn num_classes(&self) -> usize {
        match self {
            ArchConfig::Vit(c) => c.num_classes,
            ArchConfig::Swin(c) => c.num_classes,
            ArchConfig::WtPose(_) => 0,
        }
    }

    /// The configuration of a pose model (`None` for classifiers and backbones).
    pub fn pose(&self) -> Option<&WtPoseConfig> {
        match self {
            ArchConfig::WtPose(c) => Some(c),
            _ => None,
        }
    }
}

/// Why a pose architecture is not built as a [`Model`].
fn not_a_classifier() -> mixq_core::Error {
    mixq_core::Error::invalid(
        "arch.family",
        "wtpose",
        "a pose model is built as a WtPose (ModelCard::load_pose); `cargo xtask pose` and \
         `cargo xtask ptq` take it",
    )
}

/// `$body` with `$m` bound to the family's model, whichever family `$model` holds.
macro_rules! each_family {
    ($model:expr, $m:ident => $body:expr) => {
        match $model {
            Model::Vit($m) => $body,
            Model::Swin($m) => $body,
        }
    };
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

    /// A backbone: no classifier head, its output is features (a ViT with `num_classes = 0`).
    pub fn is_backbone(&self) -> bool {
        self.output_kind() == OutputKind::Features
    }

    /// The configuration the model was built from.
    pub fn arch(&self) -> ArchConfig {
        match self {
            Model::Vit(m) => ArchConfig::Vit(m.config.clone()),
            Model::Swin(m) => ArchConfig::Swin(m.config.clone()),
        }
    }
}

/// Each family's own declaration, through one type.
impl Network for Model {
    fn sites(&self) -> Vec<SiteInfo> {
        each_family!(self, m => m.sites())
    }

    fn output_kind(&self) -> OutputKind {
        each_family!(self, m => m.output_kind())
    }

    fn forward_with_boundaries(
        &self,
        images: Tensor<4>,
        hook: &dyn SiteHook,
        boundary: &mut dyn FnMut(Boundary) -> Boundary,
    ) -> Tensor<2> {
        each_family!(self, m => m.forward_with_boundaries(images, hook, boundary))
    }

    fn block_sites(&self) -> Vec<Vec<SiteId>> {
        each_family!(self, m => m.block_sites())
    }

    fn num_blocks(&self) -> usize {
        each_family!(self, m => m.num_blocks())
    }

    fn forward_block(&self, i: usize, x: Boundary, hook: &dyn SiteHook) -> Boundary {
        each_family!(self, m => m.forward_block(i, x, hook))
    }

    fn forward_from(&self, point: usize, x: Boundary, hook: &dyn SiteHook) -> Tensor<2> {
        each_family!(self, m => m.forward_from(point, x, hook))
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        each_family!(self, m => m.linears_mut())
    }

    fn convs_mut(&mut self) -> Vec<&mut Conv2d> {
        each_family!(self, m => m.convs_mut())
    }

    fn post_norm_pairs_mut(&mut self) -> Vec<(&mut LayerNorm, &mut Linear)> {
        each_family!(self, m => m.post_norm_pairs_mut())
    }

    fn resume_point(&self, site: &SiteId) -> Option<usize> {
        each_family!(self, m => m.resume_point(site))
    }
}

/// Mutable access to the parameters that post-training quantization rewrites.
impl Model {
    /// The patch-embedding convolution.
    pub fn patch_embed_mut(&mut self) -> &mut Conv2d {
        each_family!(self, m => &mut m.patch_embed.proj)
    }
}
