//! Loading and saving weights in timm's formats: a safetensors state dict, a PyTorch `.pth`
//! (optionally nested under `"model"`, as the original DeiT releases are), or a Hugging Face hub
//! cache folder. Every problem in a file is reported at once, by key, with expected and found
//! shapes, so a user fixes a conversion in one round instead of one error at a time.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{
    ApplyError, ApplyResult, BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter,
    PytorchStore, SafetensorsStore,
};
use burn::tensor::Device;
use mixq_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::card::ModelCard;
use crate::model::Model;

/// State-dict entries that timm may write but that mixq recomputes instead of loading.
const RECOMPUTED_BUFFERS: [&str; 2] = ["relative_position_index", "attn_mask"];

/// Where weights come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightsSource {
    /// A `.safetensors` file.
    Safetensors(PathBuf),
    /// A PyTorch pickle (`.pth`, `.pt`, `.bin`).
    Pytorch(PathBuf),
    /// An ONNX export of a Hugging Face ViT/DINOv2 (`.onnx`): its initializers, mapped to timm's
    /// names ([`crate::onnx`]).
    Onnx(PathBuf),
}

impl WeightsSource {
    /// Picks the format from the file name; a folder is searched as a Hugging Face cache for
    /// `hf_repo` (e.g. `timm/deit_small_patch16_224.fb_in1k`).
    pub fn resolve(path: &Path, hf_repo: Option<&str>) -> Result<Self> {
        if path.is_dir() {
            let repo = hf_repo.ok_or_else(|| {
                Error::invalid(
                    "weights",
                    path.display(),
                    "is a folder, but the model card names no hf_repo",
                )
            })?;
            return hf_cache_file(path, repo).map(WeightsSource::Safetensors);
        }
        if !path.exists() {
            return Err(Error::Weights {
                path: path.into(),
                problems: vec!["file not found".into()],
            });
        }
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("safetensors") => Ok(WeightsSource::Safetensors(path.into())),
            Some("pth" | "pt" | "bin" | "tar") => Ok(WeightsSource::Pytorch(path.into())),
            Some("onnx") => Ok(WeightsSource::Onnx(path.into())),
            _ => Err(Error::Weights {
                path: path.into(),
                problems: vec!["unknown format: expected .safetensors, .pth or .onnx".into()],
            }),
        }
    }

    /// The weights file.
    pub fn path(&self) -> &Path {
        match self {
            WeightsSource::Safetensors(p) | WeightsSource::Pytorch(p) | WeightsSource::Onnx(p) => p,
        }
    }
}

/// `DIR/models--<org>--<name>/snapshots/<rev>/model.safetensors`, the newest snapshot first.
/// `DIR` may be the hub cache itself or its parent (`~/.cache/huggingface`).
pub fn hf_cache_file(dir: &Path, repo: &str) -> Result<PathBuf> {
    let folder = format!("models--{}", repo.replace('/', "--"));
    let candidates = [dir.join(&folder), dir.join("hub").join(&folder)];
    let Some(model_dir) = candidates.iter().find(|p| p.is_dir()) else {
        return Err(Error::Weights {
            path: dir.join(&folder),
            problems: vec![format!("no Hugging Face cache entry for '{repo}'")],
        });
    };
    let snapshots = model_dir.join("snapshots");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&snapshots)
        .map_err(|e| Error::io(&snapshots, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("model.safetensors"))
        .filter(|p| p.exists())
        .map(|p| {
            (
                p.metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH),
                p,
            )
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).ok_or_else(|| Error::Weights {
        path: snapshots,
        problems: vec!["no snapshot holds model.safetensors".into()],
    })
}

/// A model path in timm's naming: LayerNorm's burn-side `gamma`/`beta` are `weight`/`bias`.
fn timm_key(path: &str) -> String {
    if let Some(stem) = path.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = path.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        path.to_string()
    }
}

/// A shape in timm's layout: linear weights are `[out, in]` in files and `[in, out]` in burn.
fn timm_shape(path: &str, shape: &[usize]) -> Vec<usize> {
    if shape.len() == 2 && path.ends_with(".weight") {
        vec![shape[1], shape[0]]
    } else {
        shape.to_vec()
    }
}

/// Turns a store's report into one error listing every problem, or `Ok` when it loaded clean.
fn check_applied(path: &Path, result: &ApplyResult) -> Result<()> {
    let mut problems = Vec::new();
    for e in &result.errors {
        problems.push(match e {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => format!(
                "'{}' has shape {:?}, the model expects {:?}",
                timm_key(path),
                timm_shape(path, found.as_slice()),
                timm_shape(path, expected.as_slice())
            ),
            other => other.to_string(),
        });
    }
    for (key, _) in &result.missing {
        problems.push(format!("missing key '{}'", timm_key(key)));
    }
    for key in &result.unused {
        if !RECOMPUTED_BUFFERS.iter().any(|b| key.ends_with(b)) {
            problems.push(format!("unexpected key '{key}'"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Weights {
            path: path.into(),
            problems,
        })
    }
}

/// Reads the file header first so that an empty, truncated or foreign file gets a precise
/// message rather than a parser's internals.
fn check_safetensors_file(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::Weights {
        path: path.into(),
        problems: vec![msg],
    };
    if bytes.is_empty() {
        return Err(bad("file is empty".into()));
    }
    safetensors::SafeTensors::deserialize(&bytes)
        .map(|_| ())
        .map_err(|e| bad(format!("not a valid safetensors file ({e})")))
}

/// Where a model's weights come from (the CLI's `--weights`, `--hf-cache`,
/// `--random-weights`); all unset means the card's shipped checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightsChoice {
    /// A timm `.safetensors` or `.pth` file, or a folder holding one of the card's files.
    pub weights: Option<PathBuf>,
    /// A Hugging Face hub cache folder searched for the card's `hf_repo`.
    pub hf_cache: Option<PathBuf>,
    /// Random weights (seeded); for speed measurements only.
    pub random: bool,
}

impl ModelCard {
    /// Where the weights come from, or `None` for random weights. Errors say which option to
    /// pass when the card has nothing to offer.
    pub fn weights_source(&self, choice: &WeightsChoice) -> Result<Option<WeightsSource>> {
        if choice.random {
            return Ok(None);
        }
        if let Some(dir) = &choice.hf_cache {
            let repo = self.hf_repo.as_deref().ok_or_else(|| {
                Error::invalid(
                    "--hf-cache",
                    dir.display(),
                    format!("model '{}' has no hf_repo", self.name),
                )
            })?;
            return Ok(Some(WeightsSource::Safetensors(hf_cache_file(dir, repo)?)));
        }
        if let Some(path) = &choice.weights {
            if path.is_dir()
                && let Some(file) = self.weights_in_folder(path)
            {
                return WeightsSource::resolve(&file, None).map(Some);
            }
            return WeightsSource::resolve(path, self.hf_repo.as_deref()).map(Some);
        }
        let name = &self.aliases[0];
        match self.shipped_path() {
            Some(path) if !path.exists() && self.train.is_some() => Err(Error::invalid(
                "--weights",
                "(none)",
                format!(
                    "model '{name}' names {} but it is not there yet: make it with `cargo xtask \
                     train --model {name}`, or pass --weights FILE or --random-weights",
                    path.display(),
                ),
            )),
            Some(path) => WeightsSource::resolve(&path, None).map(Some),
            None => Err(Error::invalid(
                "--weights",
                "(none)",
                format!(
                    "model '{name}' ships no checkpoint: pass --weights FILE, --hf-cache DIR or \
                     --random-weights"
                ),
            )),
        }
    }

    /// The model with its weights on `device`; `seed` seeds the initial (random) weights.
    pub fn load(&self, choice: &WeightsChoice, seed: u64, device: &Device) -> Result<Model> {
        let source = self.weights_source(choice)?;
        let model = self.arch.init_seeded(device, seed)?;
        match source {
            Some(source) => model.load_weights(&source),
            None => Ok(model),
        }
    }
}

/// A store that writes safetensors with one metadata key, `format: pt` (what Hugging Face's
/// loaders look for). burn's default writes three keys from a `HashMap`, whose order changes
/// from run to run, so the same weights would give different files.
pub(crate) fn safetensors_writer() -> SafetensorsStore {
    SafetensorsStore::from_bytes(None)
        .clear_metadata()
        .metadata("format", "pt")
}

fn load_module<M: ModuleSnapshot>(module: &mut M, source: &WeightsSource) -> Result<()> {
    let result = apply_file(module, source)?;
    check_applied(source.path(), &result)
}

/// The checkpoint's patch grid when the only thing that keeps it from loading is a position
/// embedding for another (square) grid of the same width.
fn other_pos_embed_grid(result: &ApplyResult, config: &crate::vit::VitConfig) -> Option<usize> {
    let [
        ApplyError::ShapeMismatch {
            path,
            expected,
            found,
        },
    ] = result.errors.as_slice()
    else {
        return None;
    };
    let prefix = config.num_prefix_tokens();
    let (expected, found) = (expected.as_slice(), found.as_slice());
    if path != "pos_embed" || !result.missing.is_empty() || found.len() != 3 {
        return None;
    }
    if found[0] != 1 || found[2] != expected[2] || found[1] <= prefix {
        return None;
    }
    let grid = ((found[1] - prefix) as f64).sqrt().round() as usize;
    (grid * grid + prefix == found[1]).then_some(grid)
}

/// A ViT's weights from an ONNX export: the initializers in timm's names, the position
/// embedding resized to the model's grid as the exported graph resizes it (bicubic, no
/// antialias), then the same checked load as a safetensors file.
fn load_onnx(m: &mut crate::vit::VisionTransformer, path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut onnx = crate::onnx::read_onnx_backbone(&bytes, path)?;
    if m.decoder.is_none() {
        onnx.drop_decoder();
    }
    let config = &m.config;
    if onnx.pos_grid != config.grid() {
        let device = m.pos_embed.val().device();
        let (shape, values) = onnx.tensors.remove("pos_embed").expect("read above");
        let pos = burn::tensor::Tensor::<3>::from_data(
            burn::tensor::TensorData::new(values, [shape[0], shape[1], shape[2]]),
            &device,
        );
        let pos = crate::vit::resample_pos_embed(
            pos,
            config.num_prefix_tokens(),
            onnx.pos_grid,
            config.grid(),
            false,
        )?;
        let dims = pos.dims().to_vec();
        let values = pos
            .to_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| Error::invalid("pos_embed", "(values)", e.to_string()))?;
        onnx.tensors.insert("pos_embed".into(), (dims, values));
    }
    let mut store = SafetensorsStore::from_bytes(Some(crate::onnx::to_safetensors(&onnx.tensors)?))
        .with_from_adapter(PyTorchToBurnAdapter)
        .allow_partial(true)
        .validate(false);
    let result = m.load_from(&mut store).map_err(|e| Error::Weights {
        path: path.into(),
        problems: vec![e.to_string()],
    })?;
    check_applied(path, &result)
}

/// Applies the file's tensors to `module`; what did not fit is in the result.
fn apply_file<M: ModuleSnapshot>(module: &mut M, source: &WeightsSource) -> Result<ApplyResult> {
    let path = source.path();
    let store_err = |e: String| Error::Weights {
        path: path.into(),
        problems: vec![e],
    };
    let result = match source {
        WeightsSource::Onnx(p) => {
            return Err(Error::Weights {
                path: p.clone(),
                problems: vec![
                    "ONNX weights load into ViT/DINOv2 models (Hugging Face exports) only".into(),
                ],
            });
        }
        WeightsSource::Safetensors(p) => {
            check_safetensors_file(p)?;
            let mut store = SafetensorsStore::from_file(p)
                .with_from_adapter(PyTorchToBurnAdapter)
                .allow_partial(true)
                .validate(false);
            module
                .load_from(&mut store)
                .map_err(|e| store_err(e.to_string()))?
        }
        WeightsSource::Pytorch(p) => {
            let plain = PytorchStore::from_file(p)
                .allow_partial(true)
                .validate(false);
            let nested = PytorchStore::from_file(p)
                .with_top_level_key("model")
                .allow_partial(true)
                .validate(false);
            // Original DeiT checkpoints nest the state dict under "model"; timm's do not.
            let mut trial = module.clone();
            match trial.load_from(&mut { nested }) {
                Ok(r) if !r.applied.is_empty() => {
                    *module = trial;
                    r
                }
                _ => module
                    .load_from(&mut { plain })
                    .map_err(|e| store_err(e.to_string()))?,
            }
        }
    };
    Ok(result)
}

impl Model {
    /// Loads timm weights into this model; on error the model is left unusable and should be
    /// dropped (the caller gets a complete list of problems instead).
    pub fn load_weights(self, source: &WeightsSource) -> Result<Self> {
        tracing::info!(path = %source.path().display(), "loading weights");
        Ok(match self {
            Model::Vit(mut m) => {
                if let WeightsSource::Onnx(path) = source {
                    load_onnx(&mut m, path)?;
                    return Ok(Model::Vit(m));
                }
                let result = apply_file(&mut m, source)?;
                match other_pos_embed_grid(&result, &m.config) {
                    // timm's checkpoint filter: a position embedding learned for another image
                    // size is resampled to this one (bicubic, antialiased, as timm does).
                    Some(from) => {
                        let config = m.config.clone();
                        let mut at_checkpoint = config.clone();
                        at_checkpoint.img_size = from * config.patch_size;
                        let device = m.pos_embed.val().device();
                        let Model::Vit(mut loaded) =
                            Model::Vit(at_checkpoint.init(&device)?).load_weights(source)?
                        else {
                            unreachable!("a ViT stays a ViT")
                        };
                        let pos = crate::vit::resample_pos_embed(
                            loaded.pos_embed.val(),
                            config.num_prefix_tokens(),
                            from,
                            config.grid(),
                            true,
                        )?;
                        tracing::info!(from, to = config.grid(), "resampled pos_embed");
                        loaded.pos_embed = burn::module::Param::from_tensor(pos);
                        loaded.config = config;
                        Model::Vit(loaded)
                    }
                    None => {
                        check_applied(source.path(), &result)?;
                        Model::Vit(m)
                    }
                }
            }
            Model::Swin(mut m) => {
                load_module(&mut m, source)?;
                Model::Swin(m)
            }
        })
    }

    /// The state dict in timm's layout and names, as safetensors bytes.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        fn bytes<M: ModuleSnapshot>(m: &M) -> std::result::Result<Vec<u8>, String> {
            let mut store = safetensors_writer().with_to_adapter(BurnToPyTorchAdapter);
            m.save_into(&mut store).map_err(|e| e.to_string())?;
            store.get_bytes().map_err(|e| e.to_string())
        }
        match self {
            Model::Vit(m) => bytes(m),
            Model::Swin(m) => bytes(m),
        }
        .map_err(|e| Error::invalid("model", "<state dict>", e))
    }

    /// Saves the state dict (timm layout) atomically.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        mixq_core::write_atomic(path, &self.to_safetensors_bytes()?)
    }

    /// Number of parameters (every float parameter, as timm counts them).
    pub fn num_params(&self) -> usize {
        match self {
            Model::Vit(m) => m.num_params(),
            Model::Swin(m) => m.num_params(),
        }
    }
}
