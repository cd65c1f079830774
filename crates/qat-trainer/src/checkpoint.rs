//! Checkpoints of both trainers: one safetensors file, written atomically, holding every
//! trained parameter (`param/<module path>`), the optimizers' states (`optim/...`, burnpack
//! bytes) and, in the header metadata, what the run is (model, config; QAT: the plan's
//! fingerprint), where it stands (epoch, step, history; FP training: the data generator's
//! position) and a checksum of all tensor bytes.
//!
//! Loading checks all of that against the trainer it is loaded into and names the file and the
//! key at fault, so a corrupt file or one from another run is one clear error instead of a
//! silently different training run.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::{Bytes, Device};
use mixq_core::{BitPlan, Error, Result, write_atomic};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::trainer::{EpochStats, HostParam, PathMapper, QatTrainer};

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

/// Everything a trainer writes: its parameters by module path, its optimizers' states by key
/// and its metadata (`format` and `checksum` are added here).
pub(crate) fn write_checkpoint(
    path: &Path,
    format: &str,
    params: Vec<(String, Vec<usize>, Vec<f32>)>,
    optims: &[(&str, &ModuleOptimizer)],
    mut meta: HashMap<String, String>,
) -> Result<()> {
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
    for (name, optim) in optims {
        let bytes = optim_bytes(optim, path)?;
        blobs.push((name.to_string(), vec![bytes.len()], Dtype::U8, bytes));
    }
    meta.insert("format".to_string(), format.to_string());
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

/// A checkpoint read back and checked: format, checksum, the model it trains and every
/// parameter's path and shape against the trainer's own (`ours`).
pub(crate) struct LoadedCheckpoint {
    path: std::path::PathBuf,
    meta: HashMap<String, String>,
    params: BTreeMap<String, HostParam>,
    optims: HashMap<String, Vec<u8>>,
}

impl LoadedCheckpoint {
    pub(crate) fn read(
        path: &Path,
        format: &str,
        model_name: &str,
        ours: &[(String, Vec<usize>, Vec<f32>)],
    ) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |message: String| Error::parse(path, message);
        let what = if format == CHECKPOINT_FORMAT {
            "QAT"
        } else {
            "training"
        };
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a readable {what} checkpoint ({e})")))?;
        let tensors = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a readable {what} checkpoint ({e})")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let mut loaded = LoadedCheckpoint {
            path: path.to_path_buf(),
            meta,
            params: BTreeMap::new(),
            optims: HashMap::new(),
        };
        let found = loaded.get("format").map_err(|_| {
            bad(format!(
                "key 'format' is missing: not a mixq {what} checkpoint"
            ))
        })?;
        if found != format {
            return Err(bad(format!(
                "key 'format' is '{found}', expected '{format}'"
            )));
        }
        let names: Vec<(String, TensorView)> = tensors.tensors();
        let sum = checksum(names.iter().map(|(n, v)| (n.as_str(), v.data())));
        if *loaded.get("checksum")? != sum {
            return Err(bad(
                "key 'checksum' does not match the tensor data: the file is corrupt".into(),
            ));
        }
        let model = loaded.get("model")?;
        if model != model_name {
            return Err(bad(format!(
                "key 'model': the checkpoint trains '{model}', this run trains '{model_name}'"
            )));
        }

        // Parameters: the same paths with the same shapes, no more, no fewer.
        let mut problems = Vec::new();
        for (p, dims, _) in ours {
            let key = format!("param/{p}");
            match tensors.tensor(&key) {
                Ok(view) if view.dtype() == Dtype::F32 && view.shape() == dims.as_slice() => {
                    let values = view
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    loaded.params.insert(p.clone(), (dims.clone(), values));
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
        for (name, view) in &names {
            if name.starts_with("param/") {
                if !expected.contains(name) {
                    problems.push(format!("'{name}' is not a parameter of this model"));
                }
            } else {
                loaded.optims.insert(name.clone(), view.data().to_vec());
            }
        }
        if !problems.is_empty() {
            problems.sort();
            return Err(bad(format!(
                "parameters do not match this model: {}",
                problems.join("; ")
            )));
        }
        Ok(loaded)
    }

    fn bad(&self, message: String) -> Error {
        Error::parse(&self.path, message)
    }

    pub(crate) fn get(&self, key: &str) -> Result<&String> {
        self.meta
            .get(key)
            .ok_or_else(|| self.bad(format!("key '{key}' is missing")))
    }

    pub(crate) fn number<T: std::str::FromStr>(&self, key: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        self.get(key)?
            .parse()
            .map_err(|e| self.bad(format!("key '{key}': {e}")))
    }

    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<T> {
        serde_json::from_str(self.get(key)?).map_err(|e| self.bad(format!("key '{key}': {e}")))
    }

    /// The run's settings, which must equal this run's.
    pub(crate) fn config<T>(&self, ours: &T) -> Result<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq,
    {
        let theirs: T = self.json("config")?;
        if theirs != *ours {
            return Err(self.bad(format!(
                "key 'config': the checkpoint was trained with other settings ({})",
                config_diff(&theirs, ours)
            )));
        }
        Ok(theirs)
    }

    /// The optimizer state stored under `key`, loaded into a copy of `fresh`.
    pub(crate) fn optim(&self, key: &str, fresh: &ModuleOptimizer) -> Result<ModuleOptimizer> {
        let bytes = self
            .optims
            .get(key)
            .ok_or_else(|| self.bad(format!("'{key}' is missing")))?;
        fresh
            .clone()
            .from_bytes(Bytes::from_bytes_vec(bytes.clone()))
            .map_err(|e| self.bad(format!("'{key}': {e}")))
    }

    /// Replaces every float parameter of `module` by the checkpoint's (trainable leaves on
    /// `device`, ids kept).
    pub(crate) fn restore<M: Module>(&self, module: M, device: &Device) -> M {
        let lookup = |p: &str| self.params.get(p).cloned();
        let mut mapper = PathMapper::new(&lookup, device.clone().autodiff());
        module.map(&mut mapper)
    }
}

/// The metadata every trainer records: where the run stands.
pub(crate) fn progress_meta(
    model_name: &str,
    config: &impl serde::Serialize,
    epoch: usize,
    step: usize,
    train_images: Option<usize>,
    history: &[EpochStats],
    path: &Path,
) -> Result<HashMap<String, String>> {
    let mut meta = HashMap::new();
    meta.insert("model".to_string(), model_name.to_string());
    meta.insert("config".to_string(), to_json(config, path)?);
    meta.insert("epoch".to_string(), epoch.to_string());
    meta.insert("step".to_string(), step.to_string());
    meta.insert(
        "train_images".to_string(),
        train_images.unwrap_or(0).to_string(),
    );
    meta.insert("history".to_string(), to_json(&history, path)?);
    Ok(meta)
}

impl<N: mixq_vit_models::Network + burn::module::Module + burn::module::ModuleDisplay>
    QatTrainer<N>
{
    /// Writes the checkpoint to `path` atomically (a crash leaves the previous one).
    pub fn save_checkpoint(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut meta = progress_meta(
            &self.model_name,
            &self.config,
            self.epoch,
            self.step,
            self.train_images,
            &self.history,
            path,
        )?;
        meta.insert("plan_fingerprint".to_string(), plan_fingerprint(&self.plan));
        write_checkpoint(
            path,
            CHECKPOINT_FORMAT,
            self.param_values(),
            &[
                (OPTIM_WEIGHTS, &self.weight_optim),
                (OPTIM_STEPS, &self.step_optim),
            ],
            meta,
        )
    }

    /// Restores parameters, optimizer states and the schedule position from `path`, after
    /// checking that it is an intact checkpoint of this very run (model, plan, config and every
    /// parameter's shape).
    pub fn load_checkpoint(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let loaded = LoadedCheckpoint::read(
            path,
            CHECKPOINT_FORMAT,
            &self.model_name,
            &self.param_values(),
        )?;
        let plan_fp = loaded.get("plan_fingerprint")?;
        let ours = plan_fingerprint(&self.plan);
        if *plan_fp != ours {
            return Err(Error::parse(
                path,
                format!(
                    "key 'plan_fingerprint': the checkpoint was trained with another bit plan \
                     ({plan_fp}, this run's is {ours})"
                ),
            ));
        }
        loaded.config(&self.config)?;
        let (epoch, step, train_images): (usize, usize, usize) = (
            loaded.number("epoch")?,
            loaded.number("step")?,
            loaded.number("train_images")?,
        );
        let history: Vec<EpochStats> = loaded.json("history")?;
        let weight_optim = loaded.optim(OPTIM_WEIGHTS, &self.weight_optim)?;
        let step_optim = loaded.optim(OPTIM_STEPS, &self.step_optim)?;
        self.module = loaded.restore(self.module.clone(), &self.device);
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
fn config_diff<T: serde::Serialize>(theirs: &T, ours: &T) -> String {
    let as_map = |c: &T| -> BTreeMap<String, serde_json::Value> {
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
