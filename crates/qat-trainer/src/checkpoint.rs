//! Checkpoints: one safetensors file, written atomically, holding every student parameter
//! (`param/<module path>`), both optimizers' states (`optim/weights`, `optim/steps`, burnpack
//! bytes) and, in the header metadata, what the run is (model, plan fingerprint, config), where
//! it stands (epoch, step, history) and a checksum of all tensor bytes.
//!
//! Loading checks all of that against the trainer it is loaded into and names the file and the
//! key at fault, so a corrupt file or one from another run is one clear error instead of a
//! silently different training run.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::Bytes;
use mixq_core::{BitPlan, Error, Result, write_atomic};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::trainer::{EpochStats, PathMapper, QatConfig, QatTrainer};

/// The `format` value of every QAT checkpoint this version writes.
pub const CHECKPOINT_FORMAT: &str = "mixq-qat-checkpoint/1";

/// The checkpoint file name inside a run folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

const OPTIM_WEIGHTS: &str = "optim/weights";
const OPTIM_STEPS: &str = "optim/steps";

/// A hash of a plan's sites and bits (its metadata, such as the seed that made it, excluded).
pub fn plan_fingerprint(plan: &BitPlan) -> String {
    let text: String = plan
        .sites
        .iter()
        .map(|(s, b)| format!("{s}={}/{};", b.w_bits, b.a_bits))
        .collect();
    mixq_sensitivity::fingerprint([text.as_bytes()])
}

fn checksum<'a>(parts: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut sorted: Vec<(&str, &[u8])> = parts.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    mixq_sensitivity::fingerprint(sorted.iter().flat_map(|(n, d)| [n.as_bytes(), *d]))
}

fn optim_bytes(optim: &ModuleOptimizer, path: &Path) -> Result<Vec<u8>> {
    optim
        .into_bytes()
        .map(|b| b.to_vec())
        .map_err(|e| Error::parse(path, format!("cannot serialise optimizer state: {e}")))
}

impl QatTrainer {
    /// Writes the checkpoint to `path` atomically (a crash leaves the previous one).
    pub fn save_checkpoint(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let params = self.param_values();
        let mut blobs: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = params
            .into_iter()
            .map(|(p, dims, values)| {
                (
                    format!("param/{p}"),
                    dims,
                    Dtype::F32,
                    values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            })
            .collect();
        for (name, optim) in [
            (OPTIM_WEIGHTS, &self.weight_optim),
            (OPTIM_STEPS, &self.step_optim),
        ] {
            let bytes = optim_bytes(optim, path)?;
            blobs.push((name.to_string(), vec![bytes.len()], Dtype::U8, bytes));
        }
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), CHECKPOINT_FORMAT.to_string());
        meta.insert("model".to_string(), self.model_name.clone());
        meta.insert("plan_fingerprint".to_string(), plan_fingerprint(&self.plan));
        meta.insert("config".to_string(), to_json(&self.config, path)?);
        meta.insert("epoch".to_string(), self.epoch.to_string());
        meta.insert("step".to_string(), self.step.to_string());
        meta.insert(
            "train_images".to_string(),
            self.train_images.unwrap_or(0).to_string(),
        );
        meta.insert("history".to_string(), to_json(&self.history, path)?);
        meta.insert(
            "checksum".to_string(),
            checksum(blobs.iter().map(|(n, _, _, d)| (n.as_str(), d.as_slice()))),
        );
        let views = blobs
            .iter()
            .map(|(name, dims, dtype, data)| {
                TensorView::new(*dtype, dims.clone(), data)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::parse(path, format!("tensor '{name}': {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::parse(path, format!("cannot serialise checkpoint: {e}")))?;
        write_atomic(path, &bytes)
    }

    /// Restores parameters, optimizer states and the schedule position from `path`, after
    /// checking that it is an intact checkpoint of this very run (model, plan, config and every
    /// parameter's shape).
    pub fn load_checkpoint(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |message: String| Error::parse(path, message);
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a readable QAT checkpoint ({e})")))?;
        let tensors = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a readable QAT checkpoint ({e})")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |key: &str| -> Result<&String> {
            meta.get(key)
                .ok_or_else(|| bad(format!("key '{key}' is missing: not a mixq QAT checkpoint")))
        };
        let format = get("format")?;
        if format != CHECKPOINT_FORMAT {
            return Err(bad(format!(
                "key 'format' is '{format}', expected '{CHECKPOINT_FORMAT}'"
            )));
        }
        let names: Vec<(String, TensorView)> = tensors.tensors();
        let sum = checksum(names.iter().map(|(n, v)| (n.as_str(), v.data())));
        if *get("checksum")? != sum {
            return Err(bad(
                "key 'checksum' does not match the tensor data: the file is corrupt".into(),
            ));
        }
        let model = get("model")?;
        if *model != self.model_name {
            return Err(bad(format!(
                "key 'model': the checkpoint trains '{model}', this run trains '{}'",
                self.model_name
            )));
        }
        let plan_fp = get("plan_fingerprint")?;
        let ours = plan_fingerprint(&self.plan);
        if *plan_fp != ours {
            return Err(bad(format!(
                "key 'plan_fingerprint': the checkpoint was trained with another bit plan \
                 ({plan_fp}, this run's is {ours})"
            )));
        }
        let config: QatConfig =
            serde_json::from_str(get("config")?).map_err(|e| bad(format!("key 'config': {e}")))?;
        if config != self.config {
            return Err(bad(format!(
                "key 'config': the checkpoint was trained with other settings ({})",
                config_diff(&config, &self.config)
            )));
        }
        let number = |key: &str| -> Result<usize> {
            get(key)?
                .parse()
                .map_err(|e| bad(format!("key '{key}': {e}")))
        };
        let (epoch, step, train_images) =
            (number("epoch")?, number("step")?, number("train_images")?);
        let history: Vec<EpochStats> = serde_json::from_str(get("history")?)
            .map_err(|e| bad(format!("key 'history': {e}")))?;

        // Parameters: the same paths with the same shapes, no more, no fewer.
        let ours = self.param_values();
        let mut loaded: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
        let mut problems = Vec::new();
        for (p, dims, _) in &ours {
            let key = format!("param/{p}");
            match tensors.tensor(&key) {
                Ok(view) if view.dtype() == Dtype::F32 && view.shape() == dims.as_slice() => {
                    let values = view
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    loaded.insert(p.clone(), (dims.clone(), values));
                }
                Ok(view) => problems.push(format!(
                    "'{key}' is {:?} {:?}, expected F32 {dims:?}",
                    view.dtype(),
                    view.shape()
                )),
                Err(_) => problems.push(format!("'{key}' is missing")),
            }
        }
        let expected: std::collections::BTreeSet<String> =
            ours.iter().map(|(p, _, _)| format!("param/{p}")).collect();
        for (name, _) in &names {
            if name.starts_with("param/") && !expected.contains(name) {
                problems.push(format!("'{name}' is not a parameter of this model"));
            }
        }
        if !problems.is_empty() {
            problems.sort();
            return Err(bad(format!(
                "parameters do not match this model: {}",
                problems.join("; ")
            )));
        }
        let optim = |key: &str, fresh: &ModuleOptimizer| -> Result<ModuleOptimizer> {
            let view = tensors
                .tensor(key)
                .map_err(|_| bad(format!("'{key}' is missing")))?;
            fresh
                .clone()
                .from_bytes(Bytes::from_bytes_vec(view.data().to_vec()))
                .map_err(|e| bad(format!("'{key}': {e}")))
        };
        let weight_optim = optim(OPTIM_WEIGHTS, &self.weight_optim)?;
        let step_optim = optim(OPTIM_STEPS, &self.step_optim)?;

        let lookup = |p: &str| loaded.get(p).cloned();
        let mut mapper = PathMapper::new(&lookup, self.device.clone().autodiff());
        self.module = self.module.clone().map(&mut mapper);
        self.weight_optim = weight_optim;
        self.step_optim = step_optim;
        self.epoch = epoch;
        self.step = step;
        self.train_images = (train_images > 0).then_some(train_images);
        self.history = history;
        Ok(())
    }
}

fn to_json<T: serde::Serialize>(value: &T, path: &Path) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::parse(path, e.to_string()))
}

/// `key: theirs vs ours` for every differing field.
fn config_diff(theirs: &QatConfig, ours: &QatConfig) -> String {
    let as_map = |c: &QatConfig| -> BTreeMap<String, serde_json::Value> {
        match serde_json::to_value(c) {
            Ok(serde_json::Value::Object(m)) => m.into_iter().collect(),
            _ => BTreeMap::new(),
        }
    };
    let (a, b) = (as_map(theirs), as_map(ours));
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| {
            format!(
                "{k}: checkpoint {v}, this run {}",
                b.get(k).cloned().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
