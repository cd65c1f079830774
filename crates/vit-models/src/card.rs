//! Model cards: one TOML per architecture (models/ in the repository), holding the timm name,
//! aliases, architecture, preprocessing and where weights are looked for. The cards of the
//! supported models are compiled in, so `--model deit-s` works from any folder; a path to a
//! `.toml` file selects a user's own card.

use std::path::{Path, PathBuf};

use mixq_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::model::ArchConfig;

/// Evaluation preprocessing of a model (timm's `pretrained_cfg`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Side of the square network input, in pixels.
    pub img_size: usize,
    /// Fraction of the resized image kept by the centre crop (timm's `crop_pct`).
    pub crop_pct: f64,
    /// Per-channel mean on the `[0, 1]` scale.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation on the `[0, 1]` scale.
    pub std: Vec<f32>,
}

impl Preprocess {
    /// A black pixel after normalisation (first channel): what a shifted image's uncovered
    /// border is filled with, as torchvision's `RandomCrop(padding)` pads before normalising.
    pub fn black_level(&self) -> f32 {
        (0.0 - self.mean[0]) / self.std[0]
    }

    /// One normalised `[c, h, w]` image back to `[0, 1]` intensities, averaged over the
    /// channels: `[h * w]` (what relevance maps are drawn over and compared with).
    pub fn intensities(&self, normalised: &[f32], channels: usize) -> Vec<f32> {
        let hw = normalised.len() / channels.max(1);
        (0..hw)
            .map(|p| {
                (0..channels)
                    .map(|ch| {
                        (normalised[ch * hw + p] * self.std[ch] + self.mean[ch]).clamp(0.0, 1.0)
                    })
                    .sum::<f32>()
                    / channels as f32
            })
            .collect()
    }
}

/// How mixq trains a shipped model from scratch (`cargo xtask train` defaults; its flags
/// override them). Part of the card so that the card alone says how its checkpoint was made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainRecipe {
    /// Passes over the training split.
    pub epochs: usize,
    /// Images per step.
    pub batch: usize,
    /// Peak AdamW learning rate (linear warm-up over 5 % of the steps, then cosine to 0).
    pub lr: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f32,
    /// Random crop with this much padding (a translation by up to this many pixels each way,
    /// background shifted in), as torchvision's `RandomCrop(size, padding)`.
    pub pad: usize,
    /// Random horizontal flips (only where a mirrored image keeps its class).
    #[serde(default)]
    pub hflip: bool,
    /// Label smoothing of the cross-entropy (0: none).
    #[serde(default)]
    pub label_smoothing: f32,
    /// Data-parallel parts of each batch, each on its own thread (1: none).
    #[serde(default = "one_worker")]
    pub workers: usize,
}

fn one_worker() -> usize {
    1
}

impl Default for TrainRecipe {
    /// The recipe of the digits checkpoints.
    fn default() -> Self {
        TrainRecipe {
            epochs: 100,
            batch: 64,
            lr: 3e-3,
            weight_decay: 0.05,
            pad: 1,
            hflip: false,
            label_smoothing: 0.0,
            workers: 1,
        }
    }
}

/// One model card.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// timm's model name (`deit_small_patch16_224`).
    pub name: String,
    /// Names the card answers to (the first is the one reports use).
    pub aliases: Vec<String>,
    #[serde(default)]
    /// One line on what the model is.
    pub description: String,
    /// Hugging Face repo id for `--hf-cache` lookups.
    #[serde(default)]
    pub hf_repo: Option<String>,
    /// File names tried, in order, in a `--weights` folder.
    #[serde(default)]
    pub weight_files: Vec<String>,
    /// A checkpoint the project ships in models/ (digits models); used when no weights are given.
    #[serde(default)]
    pub shipped: Option<String>,
    /// The data set the shipped checkpoint was trained on (`digits`, `fashion-mnist`, `mnist`).
    #[serde(default)]
    pub dataset: Option<String>,
    /// The architecture.
    pub arch: ArchConfig,
    /// How images are prepared for the model (timm's eval transform).
    pub preprocess: Preprocess,
    /// The training recipe of the shipped checkpoint (models mixq trains itself).
    #[serde(default)]
    pub train: Option<TrainRecipe>,
}

/// The cards compiled into the library, by file name.
const BUILTIN: &[(&str, &str)] = &[
    ("deit-t.toml", include_str!("../../../models/deit-t.toml")),
    ("deit-s.toml", include_str!("../../../models/deit-s.toml")),
    ("deit-b.toml", include_str!("../../../models/deit-b.toml")),
    (
        "deit-s-distilled.toml",
        include_str!("../../../models/deit-s-distilled.toml"),
    ),
    ("vit-s.toml", include_str!("../../../models/vit-s.toml")),
    ("vit-b.toml", include_str!("../../../models/vit-b.toml")),
    ("swin-t.toml", include_str!("../../../models/swin-t.toml")),
    ("swin-s.toml", include_str!("../../../models/swin-s.toml")),
    ("swin-b.toml", include_str!("../../../models/swin-b.toml")),
    (
        "digits-deit.toml",
        include_str!("../../../models/digits-deit.toml"),
    ),
    (
        "digits-swin.toml",
        include_str!("../../../models/digits-swin.toml"),
    ),
    (
        "fmnist-deit.toml",
        include_str!("../../../models/fmnist-deit.toml"),
    ),
    (
        "dinov2-s-focus.toml",
        include_str!("../../../models/dinov2-s-focus.toml"),
    ),
    (
        "fmnist-swin.toml",
        include_str!("../../../models/fmnist-swin.toml"),
    ),
    (
        "mnist-deit.toml",
        include_str!("../../../models/mnist-deit.toml"),
    ),
    (
        "wtpose-tiny.toml",
        include_str!("../../../models/wtpose-tiny.toml"),
    ),
    (
        "wtpose-t.toml",
        include_str!("../../../models/wtpose-t.toml"),
    ),
    (
        "wtpose-b.toml",
        include_str!("../../../models/wtpose-b.toml"),
    ),
    (
        "wtpose-l.toml",
        include_str!("../../../models/wtpose-l.toml"),
    ),
    (
        "wtpose-t-384x288.toml",
        include_str!("../../../models/wtpose-t-384x288.toml"),
    ),
    (
        "wtpose-b-384x288.toml",
        include_str!("../../../models/wtpose-b-384x288.toml"),
    ),
    (
        "wtpose-l-384x288.toml",
        include_str!("../../../models/wtpose-l-384x288.toml"),
    ),
];

impl ModelCard {
    /// What the model needs from its data: its data set and timm's eval transform.
    pub fn data_spec(&self) -> mixq_datasets::DataSpec {
        let pre = &self.preprocess;
        let channel3 = |v: &[f32]| [v[0], *v.get(1).unwrap_or(&v[0]), *v.get(2).unwrap_or(&v[0])];
        mixq_datasets::DataSpec {
            model: self.aliases[0].clone(),
            dataset: self.dataset.clone(),
            transform: mixq_datasets::EvalTransform {
                img_size: pre.img_size,
                crop_pct: pre.crop_pct,
                mean: channel3(&pre.mean),
                std: channel3(&pre.std),
                channels: self.arch.in_chans(),
            },
        }
    }

    /// Parses a card; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: impl AsRef<Path>) -> Result<Self> {
        let card: ModelCard =
            toml::from_str(text).map_err(|e| Error::parse(origin.as_ref(), e.message()))?;
        card.arch.validate()?;
        let channels = card.arch.in_chans();
        if card.preprocess.mean.len() != channels || card.preprocess.std.len() != channels {
            return Err(Error::parse(
                origin.as_ref(),
                format!("preprocess mean/std need {channels} values (one per input channel)"),
            ));
        }
        if let Some(pose) = card.arch.pose() {
            // The top-down crops are normalised as mmpose does; the card records it.
            let crops = mixq_datasets::pose_transform::Normalize::default();
            let pre = &card.preprocess;
            if pre.img_size != pose.input_size[0] || pre.mean != crops.mean || pre.std != crops.std
            {
                return Err(Error::parse(
                    origin.as_ref(),
                    format!(
                        "a pose card's preprocess is its crops': img_size = {} (the input \
                         height), mean = {:?}, std = {:?}",
                        pose.input_size[0], crops.mean, crops.std
                    ),
                ));
            }
        }
        Ok(card)
    }

    /// Every built-in card.
    pub fn builtin() -> Vec<ModelCard> {
        BUILTIN
            .iter()
            .map(|(file, text)| {
                ModelCard::from_toml(text, file).expect("built-in model cards are valid")
            })
            .collect()
    }

    /// The primary alias of each built-in card (what `--model` accepts first).
    pub fn known_names() -> Vec<String> {
        Self::builtin()
            .into_iter()
            .map(|c| c.aliases[0].clone())
            .collect()
    }

    /// Finds a card by alias or timm name, or reads a `.toml` path.
    pub fn find(name: &str) -> Result<Self> {
        if name.ends_with(".toml") {
            let text = std::fs::read_to_string(name).map_err(|e| Error::io(name, e))?;
            return Self::from_toml(&text, name);
        }
        let wanted = name.to_ascii_lowercase();
        Self::builtin()
            .into_iter()
            .find(|c| c.name == wanted || c.aliases.contains(&wanted))
            .ok_or_else(|| Error::UnknownModel {
                name: name.into(),
                known: Self::known_names(),
            })
    }

    /// Where a shipped checkpoint lives: `models/<file>` at the repository root.
    pub fn shipped_path(&self) -> Option<PathBuf> {
        self.shipped.as_ref().map(|f| models_dir().join(f))
    }

    /// The configuration of a pose model's card; an error naming the card (and the pose
    /// models there are) for any other.
    pub fn pose_config(&self) -> Result<&crate::WtPoseConfig> {
        self.arch.pose().ok_or_else(|| {
            Error::invalid(
                "--model",
                &self.aliases[0],
                format!(
                    "is not a pose model; the WTPose variants: {}",
                    crate::WTPOSE_VARIANTS.map(|(n, _)| n).join(", ")
                ),
            )
        })
    }

    /// A pose model with its checkpoint (`weights`, else the card's shipped one) on `device`.
    /// Errors name the card when it is not a pose model, and `--weights` when there is no
    /// checkpoint.
    pub fn load_pose(
        &self,
        weights: Option<&Path>,
        device: &burn::tensor::Device,
    ) -> Result<crate::WtPose> {
        let name = &self.aliases[0];
        let config = self.pose_config()?;
        let path = match (weights, self.shipped_path()) {
            (Some(path), _) => path.to_path_buf(),
            (None, Some(path)) if path.exists() => path,
            _ => {
                return Err(Error::invalid(
                    "--weights",
                    "(none)",
                    format!(
                        "pose model '{name}' has no shipped checkpoint: pass the \
                         model.safetensors of a `pose train` run"
                    ),
                ));
            }
        };
        config.init(device)?.load_safetensors(path)
    }

    /// A weights file inside a folder, trying `weight_files` in order.
    pub fn weights_in_folder(&self, dir: &Path) -> Option<PathBuf> {
        self.weight_files
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
    }
}

/// The repository's models/ folder (overridable with `MIXQ_MODELS_DIR`).
pub fn models_dir() -> PathBuf {
    std::env::var_os("MIXQ_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_cards_parse_and_resolve_aliases() {
        assert_eq!(ModelCard::builtin().len(), BUILTIN.len());
        assert_eq!(
            ModelCard::find("deit-s").unwrap().name,
            "deit_small_patch16_224"
        );
        assert_eq!(
            ModelCard::find("swin_tiny_patch4_window7_224")
                .unwrap()
                .aliases[0],
            "swin-t"
        );
    }

    #[test]
    fn unknown_model_lists_known_ones() {
        let err = ModelCard::find("resnet50").unwrap_err().to_string();
        assert!(
            err.contains("resnet50") && err.contains("deit-s") && err.contains("swin-t"),
            "{err}"
        );
    }

    #[test]
    fn bad_card_names_the_file_and_field() {
        let err = ModelCard::from_toml("name = 3", "mine.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mine.toml"), "{err}");
    }

    /// Pose models have cards like every model: the small one is the code's `tiny()` (the
    /// shipped checkpoint's config), the paper's variants are checked against the paper's
    /// parameter counts and GFLOPs in tests/wtpose.rs.
    #[test]
    fn pose_models_have_cards() {
        let tiny = ModelCard::find("wtpose-tiny").unwrap();
        assert_eq!(tiny.arch.pose(), Some(&crate::WtPoseConfig::tiny()));
        assert!(tiny.shipped_path().unwrap().is_file());
        assert_eq!(tiny.arch.num_classes(), 0);
        for (name, _) in crate::WTPOSE_VARIANTS {
            let card = ModelCard::find(name).unwrap();
            let pose = card.arch.pose().unwrap();
            assert_eq!(card.preprocess.img_size, pose.input_size[0], "{name}");
            // A pose card is not a classifier: building it as one is one clear error.
            let err = card
                .arch
                .init(&burn::tensor::Device::flex())
                .unwrap_err()
                .to_string();
            assert!(err.contains("WtPose"), "{err}");
        }
        assert_eq!(
            ModelCard::find("wtpose-b-384x288")
                .unwrap()
                .arch
                .pose()
                .unwrap()
                .input_size,
            [384, 288]
        );
        // Its preprocess must be what the crops get.
        let text = include_str!("../../../models/wtpose-t.toml").replace("0.485,", "0.5,");
        let err = ModelCard::from_toml(&text, "mine.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mine.toml") && err.contains("mean"), "{err}");
        // A classifier's card is not a pose model.
        let err = ModelCard::find("digits-deit")
            .unwrap()
            .load_pose(None, &burn::tensor::Device::flex())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("digits-deit") && err.contains("not a pose model"),
            "{err}"
        );
    }
}
