//! Weights from an ONNX file: a Hugging Face ViT/DINOv2 (`Dinov2Model`) exported by
//! `torch.onnx.export`, mapped onto mixq's ViT in timm's names. Named initializers map by name;
//! the anonymous `onnx::MatMul_*` weights (stored `[in, out]`) are named by the MatMul node that
//! consumes them (`/backbone/encoder/layer.3/mlp/fc1/MatMul`); the position embedding is the
//! `[1, 1, d]` initializer the embeddings' Concat reads (class token) joined with the
//! `[1, N, d]` one its Reshape reads (the patch grid).

use std::collections::BTreeMap;
use std::path::Path;

use mixq_core::{Error, Result};
use onnx_protobuf::{ModelProto, TensorProto};
use protobuf::Message;

/// A tensor of a state dict: its shape and values (row-major).
pub type Entry = (Vec<usize>, Vec<f32>);

/// A timm-named state dict read from an ONNX file, and what it says about the architecture.
#[derive(Debug)]
pub struct OnnxWeights {
    /// Tensors in timm's names and layouts (`blocks.0.attn.qkv.weight` is `[3d, d]`).
    pub tensors: BTreeMap<String, Entry>,
    /// Side of the square patch grid the position embedding was learned for.
    pub pos_grid: usize,
}

impl OnnxWeights {
    /// Drops the saliency decoder's tensors (`decoder.*`), for a model built without one.
    pub fn drop_decoder(&mut self) {
        self.tensors.retain(|k, _| !k.starts_with("decoder."));
    }
}

fn parse_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Weights {
        path: path.into(),
        problems: vec![message.into()],
    }
}

/// An initializer's values as `f32` (FLOAT only: the exports mixq reads hold no other weights).
fn values(path: &Path, t: &TensorProto) -> Result<Entry> {
    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let n: usize = shape.iter().product();
    if t.data_type != 1 {
        return Err(parse_err(
            path,
            format!(
                "initializer '{}' has data type {}, expected FLOAT (1)",
                t.name, t.data_type
            ),
        ));
    }
    let data: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    if data.len() != n {
        return Err(parse_err(
            path,
            format!(
                "initializer '{}' holds {} values for shape {shape:?}",
                t.name,
                data.len()
            ),
        ));
    }
    Ok((shape, data))
}

/// `[rows, cols]` row-major to `[cols, rows]`.
fn transpose((shape, data): Entry) -> Entry {
    let (r, c) = (shape[0], shape[1]);
    let mut out = vec![0f32; data.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = data[i * c + j];
        }
    }
    (vec![c, r], out)
}

/// The timm name of a named Hugging Face ViT/DINOv2 initializer, if it is one of the backbone's
/// (the saliency decoder's, `decoder.*`, keep their names: mixq's decoder uses them).
fn timm_name(hf: &str) -> Option<String> {
    if hf.starts_with("decoder.") {
        return Some(hf.to_string());
    }
    let rest = hf.strip_prefix("backbone.").unwrap_or(hf);
    let fixed = match rest {
        "embeddings.cls_token" => Some("cls_token".to_string()),
        "embeddings.patch_embeddings.projection.weight" => Some("patch_embed.proj.weight".into()),
        "embeddings.patch_embeddings.projection.bias" => Some("patch_embed.proj.bias".into()),
        "layernorm.weight" => Some("norm.weight".into()),
        "layernorm.bias" => Some("norm.bias".into()),
        _ => None,
    };
    if fixed.is_some() {
        return fixed;
    }
    let rest = rest.strip_prefix("encoder.layer.")?;
    let (block, leaf) = rest.split_once('.')?;
    let leaf = match leaf {
        "norm1.weight" | "norm1.bias" | "norm2.weight" | "norm2.bias" | "mlp.fc1.bias"
        | "mlp.fc2.bias" => leaf.to_string(),
        "attention.output.dense.bias" => "attn.proj.bias".into(),
        "layer_scale1.lambda1" => "ls1.gamma".into(),
        "layer_scale2.lambda1" => "ls2.gamma".into(),
        "attention.attention.query.bias" => "attn.q.bias".into(),
        "attention.attention.key.bias" => "attn.k.bias".into(),
        "attention.attention.value.bias" => "attn.v.bias".into(),
        _ => return None,
    };
    Some(format!("blocks.{block}.{leaf}"))
}

/// The timm name of the weight a MatMul node multiplies by (`/backbone/encoder/layer.0/mlp/fc1/MatMul`).
fn matmul_weight_name(node: &str) -> Option<String> {
    let rest = node.strip_prefix("/backbone/encoder/layer.")?;
    let (block, leaf) = rest.split_once('/')?;
    let leaf = match leaf {
        "attention/attention/query/MatMul" => "attn.q.weight",
        "attention/attention/key/MatMul" => "attn.k.weight",
        "attention/attention/value/MatMul" => "attn.v.weight",
        "attention/output/dense/MatMul" => "attn.proj.weight",
        "mlp/fc1/MatMul" => "mlp.fc1.weight",
        "mlp/fc2/MatMul" => "mlp.fc2.weight",
        _ => return None,
    };
    Some(format!("blocks.{block}.{leaf}"))
}

/// Reads the backbone of a Hugging Face ViT/DINOv2 ONNX export (`path` names it in errors).
pub fn read_onnx_backbone(bytes: &[u8], path: &Path) -> Result<OnnxWeights> {
    let model = ModelProto::parse_from_bytes(bytes)
        .map_err(|e| parse_err(path, format!("not an ONNX model ({e})")))?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| parse_err(path, "the ONNX model has no graph"))?;
    let inits: BTreeMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut tensors = BTreeMap::new();
    for (name, t) in &inits {
        if let Some(timm) = timm_name(name) {
            tensors.insert(timm, values(path, t)?);
        }
    }
    let (mut cls_pos, mut grid_pos) = (None, None);
    for node in &graph.node {
        for input in &node.input {
            let Some(t) = inits.get(input.as_str()) else {
                continue;
            };
            if node.op_type == "MatMul"
                && let Some(timm) = matmul_weight_name(&node.name)
            {
                // ONNX MatMul weights are [in, out]; timm stores linears [out, in].
                tensors.insert(timm, transpose(values(path, t)?));
            } else if node.name.starts_with("/backbone/embeddings/") && input.starts_with("onnx::")
            {
                let entry = values(path, t)?;
                match (node.op_type.as_str(), entry.0.as_slice()) {
                    ("Concat", [1, 1, _]) => cls_pos = Some(entry),
                    ("Reshape", [1, n, _]) if *n > 1 => grid_pos = Some(entry),
                    _ => {}
                }
            }
        }
    }
    let (Some(cls_pos), Some(grid_pos)) = (cls_pos, grid_pos) else {
        return Err(parse_err(
            path,
            "no position embedding found (a [1, 1, d] initializer read by a Concat and a [1, N, d] \
             one read by a Reshape under /backbone/embeddings/)",
        ));
    };
    let (n, d) = (grid_pos.0[1], grid_pos.0[2]);
    let pos_grid = (n as f64).sqrt().round() as usize;
    if pos_grid * pos_grid != n || cls_pos.0[2] != d {
        return Err(parse_err(
            path,
            format!("position embedding of {n} patches (width {d}) is not a square grid"),
        ));
    }
    let mut pos = cls_pos.1;
    pos.extend(grid_pos.1);
    tensors.insert("pos_embed".into(), (vec![1, 1 + n, d], pos));
    fuse_qkv(&mut tensors, path)?;
    Ok(OnnxWeights { tensors, pos_grid })
}

/// Joins each block's separate query, key and value projections into timm's fused `qkv`.
fn fuse_qkv(tensors: &mut BTreeMap<String, Entry>, path: &Path) -> Result<()> {
    let blocks: Vec<String> = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(".attn.q.weight").map(String::from))
        .collect();
    for block in blocks {
        for leaf in ["weight", "bias"] {
            let mut shape = Vec::new();
            let mut fused = Vec::new();
            for part in ["q", "k", "v"] {
                let key = format!("{block}.attn.{part}.{leaf}");
                let (s, v) = tensors
                    .remove(&key)
                    .ok_or_else(|| parse_err(path, format!("'{key}' not found")))?;
                shape = s;
                fused.extend(v);
            }
            shape[0] *= 3;
            tensors.insert(format!("{block}.attn.qkv.{leaf}"), (shape, fused));
        }
    }
    Ok(())
}

/// The state dict as safetensors bytes, for the same loader every other file goes through.
pub fn to_safetensors(tensors: &BTreeMap<String, Entry>) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, (shape, data))| {
            let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (k.clone(), shape.clone(), raw)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, shape, raw)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), raw)
                .map(|v| (k.clone(), v))
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::invalid("state dict", "(onnx)", e.to_string()))?;
    safetensors::serialize(views, None)
        .map_err(|e| Error::invalid("state dict", "(onnx)", e.to_string()))
}
