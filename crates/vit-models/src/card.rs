//! Model cards: one TOML per architecture (models/ in the repository), holding the timm name,
//! aliases, architecture, preprocessing and where weights are looked for. The cards of the
//! supported models are compiled in, so `--model deit-s` works from any folder; a path to a
//! `.toml` file selects a user's own card.

use std::path::{Path, PathBuf};

use mixq_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::model::ArchConfig;
use crate::wtpose::{WTPOSE_VARIANTS, WtPoseConfig};

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

    /// A weights file inside a folder, trying `weight_files` in order.
    pub fn weights_in_folder(&self, dir: &Path) -> Option<PathBuf> {
        self.weight_files
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
    }
}

/// What a `--model` name resolves to where both kinds of model are taken (`ptq`, `info`): a
/// classifier's or backbone's card, or a WTPose variant, whose configuration is the variant's.
#[derive(Clone, Debug)]
pub enum ModelRef {
    /// A model with a card.
    Card(Box<ModelCard>),
    /// A WTPose variant ([`crate::WTPOSE_VARIANTS`]).
    Pose {
        /// The variant's name.
        name: String,
        /// Its configuration.
        config: Box<WtPoseConfig>,
    },
}

impl ModelRef {
    /// Resolves `name`: a card's alias or timm name, a `.toml` card file, or a WTPose variant.
    /// An unknown name is one error listing every name either kind answers to.
    ///
    /// ```
    /// use mixq_vit_models::ModelRef;
    ///
    /// assert!(matches!(ModelRef::find("digits-deit")?, ModelRef::Card(_)));
    /// assert!(matches!(ModelRef::find("wtpose-tiny")?, ModelRef::Pose { .. }));
    /// let err = ModelRef::find("wtpose-xl").unwrap_err().to_string();
    /// assert!(err.contains("digits-deit") && err.contains("wtpose-b-384x288"), "{err}");
    /// # Ok::<(), mixq_core::Error>(())
    /// ```
    pub fn find(name: &str) -> Result<Self> {
        match ModelCard::find(name) {
            Ok(card) => Ok(ModelRef::Card(Box::new(card))),
            Err(Error::UnknownModel { name, mut known }) => {
                if WTPOSE_VARIANTS.iter().any(|(n, _)| *n == name) {
                    return Ok(ModelRef::Pose {
                        config: Box::new(WtPoseConfig::variant(&name)?),
                        name,
                    });
                }
                known.extend(WTPOSE_VARIANTS.iter().map(|(n, _)| n.to_string()));
                Err(Error::UnknownModel { name, known })
            }
            Err(e) => Err(e),
        }
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
}
