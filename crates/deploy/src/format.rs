//! The `.mixq.safetensors` file: one safetensors file holding everything the integer engine
//! needs, readable by any safetensors tool.
//!
//! * Tensors, named by timm module path:
//!   - `{site}.qweight` (`U8`, `[out, row_bytes]`): packed weight codes, layout of
//!     [`PackedWeights`](mixq_quant_kernels::PackedWeights) (K contiguous, 8/4/2-bit containers);
//!   - `{site}.scales` (`F32`, `[out]`) and `{site}.zero_points` (`I32`, `[out]`): the
//!     per-output-channel weight quantizer, `w = s · (q − z)`;
//!   - `{site}.weight` (`F32`, `[in, out]`): sites the plan leaves in full precision;
//!   - `{site}.bias`, LayerNorm `*.weight`/`*.bias`, `cls_token`, `dist_token`, `pos_embed`
//!     (`F32`, timm's names and shapes).
//! * `__metadata__["mixq"]`: a pretty-printed JSON [`Header`]: format name and version, the
//!   architecture (or, for the layers of a model of one's own, [`crate::IntSites`], the list of
//!   its sites), the bit plan, the weight bits and shape of every integer site and the
//!   activation quantizers (scale, zero point, bits; log quantizers' top level) by site and slot.
//!
//! Every read is checked: a truncated or corrupt file, a missing tensor, a wrong dtype or shape,
//! an invalid code or scale and a version mismatch each give one [`Error::Parse`] naming the
//! file and the key.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use mixq_core::{BitPlan, Error, Result, SiteId};
use mixq_ptq::ActQuantizer;
use mixq_vit_models::{ArchConfig, Slot};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

/// The `format` field of every header.
pub const FORMAT_NAME: &str = "mixq-int";
/// The version this build reads and writes; any other is rejected.
pub const FORMAT_VERSION: u32 = 1;
/// The `__metadata__` key holding the JSON header.
pub const HEADER_KEY: &str = "mixq";
/// The value `header_checksum` has while the header's own checksum is computed.
const HEADER_CHECKSUM_PLACEHOLDER: &str = "0000000000000000";

/// Shape and bits of one integer (packed) site.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightInfo {
    /// Weight bits (2..8).
    pub bits: u8,
    /// Input features (columns of the weight matrix).
    pub in_features: usize,
    /// Output features (rows).
    pub out_features: usize,
}

/// The readable JSON header of a file (also [`crate::IntModel::header`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Always `mixq-int`: what the file is.
    pub format: String,
    /// Bumped whenever a reader of an older version could misread the file.
    pub format_version: u32,
    /// FNV-1a 64 (hex) of this JSON text with this value replaced by sixteen zeros: a flipped
    /// byte anywhere in the header is detected. Filled in when writing.
    #[serde(default)]
    pub header_checksum: String,
    /// The model's architecture (as its model card gives it); absent in a file of a model of
    /// one's own ([`crate::IntSites`]), whose forward the engine does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<ArchConfig>,
    /// The bits every site was quantized with.
    pub plan: BitPlan,
    /// Integer sites: weight bits and shape.
    pub weights: BTreeMap<SiteId, WeightInfo>,
    /// Every linear/conv site of a file without an architecture, in the model's order (a
    /// whole model's file lists none: its architecture names them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<SiteId>,
    /// Activation quantizers used by the engine, by site and slot.
    pub activations: BTreeMap<SiteId, BTreeMap<Slot, ActQuantizer>>,
    /// FNV-1a 64 of every tensor's bytes (hex), filled in when writing: a flipped bit in the
    /// data names its tensor, and every tensor of the file is accounted for.
    #[serde(default)]
    pub checksums: BTreeMap<String, String>,
}

/// FNV-1a 64-bit hash, hex: cheap (one pass), and any single flipped byte changes it.
fn checksum(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{h:016x}")
}

/// One stored tensor.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Stored {
    U8(Vec<usize>, Vec<u8>),
    I32(Vec<usize>, Vec<i32>),
    F32(Vec<usize>, Vec<f32>),
}

impl Stored {
    fn dtype(&self) -> Dtype {
        match self {
            Stored::U8(..) => Dtype::U8,
            Stored::I32(..) => Dtype::I32,
            Stored::F32(..) => Dtype::F32,
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            Stored::U8(s, _) | Stored::I32(s, _) | Stored::F32(s, _) => s,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Stored::U8(_, d) => d.clone(),
            Stored::I32(_, d) => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Stored::F32(_, d) => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn num_bytes(&self) -> usize {
        match self {
            Stored::U8(_, d) => d.len(),
            Stored::I32(_, d) => 4 * d.len(),
            Stored::F32(_, d) => 4 * d.len(),
        }
    }
}

/// Named tensors with checked typed access; `origin` names the file (or the in-memory model)
/// in every error.
pub(crate) struct Tensors {
    pub origin: PathBuf,
    pub map: BTreeMap<String, Stored>,
}

impl Tensors {
    pub fn new(origin: impl Into<PathBuf>) -> Self {
        Tensors {
            origin: origin.into(),
            map: BTreeMap::new(),
        }
    }

    pub fn insert(&mut self, key: impl Into<String>, t: Stored) {
        self.map.insert(key.into(), t);
    }

    /// An error naming the file and the key.
    pub fn error(&self, key: &str, message: impl std::fmt::Display) -> Error {
        Error::parse(&self.origin, format!("tensor '{key}': {message}"))
    }

    fn get(&self, key: &str, dtype: Dtype, shape: &[usize]) -> Result<&Stored> {
        let t = self
            .map
            .get(key)
            .ok_or_else(|| self.error(key, "missing"))?;
        if t.dtype() != dtype {
            return Err(self.error(key, format!("dtype {:?}, expected {dtype:?}", t.dtype())));
        }
        if t.shape() != shape {
            return Err(self.error(key, format!("shape {:?}, expected {shape:?}", t.shape())));
        }
        Ok(t)
    }

    /// An `f32` tensor of exactly `shape`, every value finite.
    pub fn f32(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        match self.get(key, Dtype::F32, shape)? {
            Stored::F32(_, d) => {
                if let Some(v) = d.iter().find(|v| !v.is_finite()) {
                    return Err(self.error(key, format!("non-finite value {v}")));
                }
                Ok(d.clone())
            }
            _ => unreachable!("dtype checked"),
        }
    }

    /// The shape of a stored tensor.
    pub fn shape(&self, key: &str) -> Result<&[usize]> {
        self.map
            .get(key)
            .map(Stored::shape)
            .ok_or_else(|| self.error(key, "missing"))
    }

    pub fn u8(&self, key: &str, shape: &[usize]) -> Result<Vec<u8>> {
        match self.get(key, Dtype::U8, shape)? {
            Stored::U8(_, d) => Ok(d.clone()),
            _ => unreachable!("dtype checked"),
        }
    }

    pub fn i32(&self, key: &str, shape: &[usize]) -> Result<Vec<i32>> {
        match self.get(key, Dtype::I32, shape)? {
            Stored::I32(_, d) => Ok(d.clone()),
            _ => unreachable!("dtype checked"),
        }
    }

    /// Total tensor bytes.
    pub fn num_bytes(&self) -> usize {
        self.map.values().map(Stored::num_bytes).sum()
    }
}

/// Serializes a header and tensors into safetensors bytes.
pub(crate) fn to_bytes(header: &Header, tensors: &Tensors) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .map
        .iter()
        .map(|(k, t)| (k.clone(), t.dtype(), t.shape().to_vec(), t.bytes()))
        .collect();
    let mut header = header.clone();
    header.checksums = bytes
        .iter()
        .map(|(k, _, _, data)| (k.clone(), checksum(data)))
        .collect();
    header.header_checksum = HEADER_CHECKSUM_PLACEHOLDER.into();
    let json = mixq_core::to_json(&header, "header")?;
    // `header_checksum` precedes every tensor checksum, so the first placeholder is its value.
    let placeholder = format!("\"{HEADER_CHECKSUM_PLACEHOLDER}\"");
    let json = json.replacen(
        &placeholder,
        &format!("\"{}\"", checksum(json.as_bytes())),
        1,
    );
    let views = bytes
        .iter()
        .map(|(k, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::invalid("tensor", k, e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    // One metadata key: safetensors writes a HashMap, whose order would vary between runs.
    let meta = HashMap::from([(HEADER_KEY.to_string(), json)]);
    safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::invalid("safetensors", "serialize", e.to_string()))
}

/// Parses a file's bytes and builds what it holds with `build`; every error names `origin`.
pub(crate) fn parse_with<T>(
    bytes: &[u8],
    origin: &Path,
    build: impl FnOnce(Header, &Tensors) -> Result<T>,
) -> Result<T> {
    let (header, t) = from_bytes(bytes, origin)?;
    build(header, &t).map_err(|e| match e {
        Error::Parse { .. } => e,
        other => Error::parse(origin, other.to_string()),
    })
}

/// Reads a file and builds what it holds (see [`parse_with`]).
pub(crate) fn read_with<T>(
    path: &Path,
    build: impl FnOnce(Header, &Tensors) -> Result<T>,
) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_with(&bytes, path, build)
}

/// Parses safetensors bytes into a checked header and the tensors.
pub(crate) fn from_bytes(bytes: &[u8], path: &Path) -> Result<(Header, Tensors)> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        Error::parse(
            path,
            format!("not a complete safetensors file (truncated or corrupt?): {e}"),
        )
    })?;
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::parse(path, format!("safetensors header: {e}")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let json = meta.get(HEADER_KEY).ok_or_else(|| {
        Error::parse(
            path,
            format!("__metadata__ key '{HEADER_KEY}' missing: not a mixq integer model"),
        )
    })?;
    let header = parse_header(json, path)?;
    for key in header.checksums.keys() {
        if st.tensor(key).is_err() {
            return Err(Error::parse(path, format!("tensor '{key}': missing")));
        }
    }
    let mut tensors = Tensors::new(path);
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        match header.checksums.get(&name) {
            None => {
                return Err(Error::parse(
                    path,
                    format!("tensor '{name}': not listed in the header's checksums"),
                ));
            }
            Some(sum) if *sum != checksum(data) => {
                return Err(Error::parse(
                    path,
                    format!("tensor '{name}': checksum mismatch (corrupt data)"),
                ));
            }
            Some(_) => {}
        }
        let t = match view.dtype() {
            Dtype::U8 => Stored::U8(shape, data.to_vec()),
            Dtype::I32 => Stored::I32(
                shape,
                data.chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Dtype::F32 => Stored::F32(
                shape,
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            other => {
                return Err(Error::parse(
                    path,
                    format!("tensor '{name}': unsupported dtype {other:?}"),
                ));
            }
        };
        tensors.insert(name, t);
    }
    Ok((header, tensors))
}

/// Verifies `header_checksum` against the JSON text (see [`Header::header_checksum`]).
fn check_header_checksum(json: &str, path: &Path) -> Result<()> {
    let corrupt = |m: &str| {
        Error::parse(
            path,
            format!("header key 'header_checksum': {m} (corrupt header)"),
        )
    };
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| Error::parse(path, format!("header '{HEADER_KEY}': invalid JSON: {e}")))?;
    let sum = value
        .get("header_checksum")
        .and_then(|v| v.as_str())
        .ok_or_else(|| corrupt("missing"))?;
    if sum.len() != HEADER_CHECKSUM_PLACEHOLDER.len() {
        return Err(corrupt("not 16 hex digits"));
    }
    let text = json.replacen(
        &format!("\"{sum}\""),
        &format!("\"{HEADER_CHECKSUM_PLACEHOLDER}\""),
        1,
    );
    if checksum(text.as_bytes()) != sum {
        return Err(corrupt("mismatch"));
    }
    Ok(())
}

fn parse_header(json: &str, path: &Path) -> Result<Header> {
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| Error::parse(path, format!("header '{HEADER_KEY}': invalid JSON: {e}")))?;
    let bad =
        |key: &str, message: String| Error::parse(path, format!("header key '{key}': {message}"));
    let obj = value
        .as_object()
        .ok_or_else(|| bad(HEADER_KEY, "not a JSON object".into()))?;
    let format = obj.get("format").and_then(|v| v.as_str());
    if format != Some(FORMAT_NAME) {
        return Err(bad(
            "format",
            format!("is {format:?}, expected \"{FORMAT_NAME}\""),
        ));
    }
    let version = obj.get("format_version").and_then(|v| v.as_u64());
    if version != Some(u64::from(FORMAT_VERSION)) {
        return Err(bad(
            "format_version",
            format!(
                "is {}, this build reads version {FORMAT_VERSION}",
                version.map_or("missing".to_string(), |v| v.to_string())
            ),
        ));
    }
    check_header_checksum(json, path)?;
    // Field by field (and site by site), so that an error names the key at fault.
    fn field<T: serde::de::DeserializeOwned>(
        v: Option<&serde_json::Value>,
        key: &str,
        bad: &dyn Fn(&str, String) -> Error,
    ) -> Result<T> {
        let v = v.ok_or_else(|| bad(key, "missing".into()))?;
        serde_json::from_value(v.clone()).map_err(|e| bad(key, e.to_string()))
    }
    let map = |key: &str| -> Result<&serde_json::Map<String, serde_json::Value>> {
        obj.get(key)
            .and_then(|v| v.as_object())
            .ok_or_else(|| bad(key, "missing or not an object".into()))
    };
    let mut weights = BTreeMap::new();
    for (site, v) in map("weights")? {
        weights.insert(
            SiteId::new(site),
            field(Some(v), &format!("weights.{site}"), &bad)?,
        );
    }
    let mut activations: BTreeMap<SiteId, BTreeMap<Slot, ActQuantizer>> = BTreeMap::new();
    for (site, slots) in map("activations")? {
        let key = format!("activations.{site}");
        let slots = slots
            .as_object()
            .ok_or_else(|| bad(&key, "not an object".into()))?;
        for (slot, q) in slots {
            let key = format!("{key}.{slot}");
            let slot: Slot = field(Some(&serde_json::Value::String(slot.clone())), &key, &bad)?;
            activations
                .entry(SiteId::new(site))
                .or_default()
                .insert(slot, field(Some(q), &key, &bad)?);
        }
    }
    Ok(Header {
        format: FORMAT_NAME.into(),
        format_version: FORMAT_VERSION,
        header_checksum: field(obj.get("header_checksum"), "header_checksum", &bad)?,
        arch: obj
            .get("arch")
            .map(|v| field(Some(v), "arch", &bad))
            .transpose()?,
        plan: field(obj.get("plan"), "plan", &bad)?,
        weights,
        layers: match obj.get("layers") {
            None => Vec::new(),
            v => field(v, "layers", &bad)?,
        },
        activations,
        checksums: field(obj.get("checksums"), "checksums", &bad)?,
    })
}
