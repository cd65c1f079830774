//! # mixq-vit-models
//!
//! ViT, DeiT (plain and distilled) and Swin as burn modules that reproduce timm's logits, and the
//! WTPose pose model (`wtpose`, with NATTEN-style neighbourhood attention in `neighborhood`),
//! built from quantizable *sites* (every linear and conv, and both attention matmuls), each named
//! by its module path and reporting parameters and MACs per image.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use mixq_vit_models::{ModelCard, Network, summarize_sites};
//!
//! let card = ModelCard::find("digits-deit")?;
//! let device = Device::flex();
//! let model = card.arch.init(&device)?; // random weights; see `Model::load_weights`
//! let logits = model.forward(Tensor::zeros([2, 1, 8, 8], &device));
//! assert_eq!(logits.dims(), [2, 10]);
//! let totals = summarize_sites(&model.sites());
//! println!("{} sites, {} MACs per image", totals.sites, totals.macs);
//! # Ok::<(), mixq_core::Error>(())
//! ```

#![warn(missing_docs)]

pub mod card;
pub mod explain;
pub mod explain_data;
pub mod hooks;
pub mod layers;
pub mod model;
pub mod neighborhood;
pub mod network;
pub mod onnx;
pub mod saliency;
pub mod swin;
pub mod testing;
pub mod vit;
pub mod weights;
pub mod wtpose;

pub use card::{ModelCard, Preprocess, TrainRecipe, models_dir};
pub use explain::{
    ExplainOptions, Explanation, SiteRelevance, Target, contribution_scores,
    contribution_scores_with, object_shares,
};
pub use explain_data::{
    DataExplanation, ExplainDataConfig, ImageRelevance, InputMap, TargetRule, explain_data,
};
pub use hooks::{NoHook, Ops, SiteHook, Slot};
pub use mixq_core::{SiteId, SiteInfo, SiteKind, summarize_sites};
pub use model::{ArchConfig, Model, seeded};
pub use network::{Boundary, Network, OutputKind};
pub use saliency::{SaliencyDecoder, SaliencyDecoderConfig};
pub use swin::{SwinConfig, SwinTransformer};
pub use vit::{VisionTransformer, VitConfig, resample_pos_embed};
pub use weights::{WeightsChoice, WeightsSource};
pub use wtpose::{MacCount, WTPOSE_VARIANTS, WtPose, WtPoseConfig};

/// A batch of images as the models' `[b, c, h, w]` input on `device`.
pub fn batch_tensor(
    batch: &mixq_datasets::Batch,
    device: &burn::tensor::Device,
) -> burn::tensor::Tensor<4> {
    burn::tensor::Tensor::from_data(
        burn::tensor::TensorData::new(batch.images.clone(), batch.shape),
        device,
    )
}

/// A batch of pose crops as the `[batch, 3, h, w]` tensor a pose model takes.
pub fn pose_batch_tensor(
    batch: &mixq_datasets::PoseBatch,
    device: &burn::tensor::Device,
) -> burn::tensor::Tensor<4> {
    burn::tensor::Tensor::from_data(
        burn::tensor::TensorData::new(batch.images.clone(), batch.image_shape),
        device,
    )
}
