//! The committed timm parity fixtures (tests/fixtures, made by tools/make_fixtures.py), and a
//! small model of one's own ([`RowMlp`]), for the tests of this crate and of the crates built
//! on it.

use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor, TensorData};
use mixq_core::{SiteId, SiteInfo, SiteKind};

use crate::hooks::{SiteHook, Slot};
use crate::layers::{LayerNorm, Linear, LinearConfig};
use crate::network::{Boundary, Network, OutputKind};
use crate::swin::SwinConfig;
use crate::vit::VitConfig;
use crate::weights::WeightsSource;
use crate::{ArchConfig, Model};

/// The fixture names: a ViT, its distilled DeiT twin, and a Swin whose two stages both shift.
pub const FIXTURES: [&str; 4] = ["vit_tiny", "deit_tiny_distilled", "swin_tiny", "vit_ls_p14"];

/// `tests/fixtures` at the repository root.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// One f32 tensor of a fixture file as `(values, shape)`. Panics with the file and key when
/// missing: fixtures are part of the repository.
pub fn read_f32(file: &str, key: &str) -> (Vec<f32>, Vec<usize>) {
    let path = fixtures_dir().join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st =
        safetensors::SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
    let view = st
        .tensor(key)
        .unwrap_or_else(|e| panic!("{file}:{key}: {e}"));
    let values = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (values, view.shape().to_vec())
}

/// A fixture tensor on `device`.
pub fn tensor<const D: usize>(file: &str, key: &str, device: &Device) -> Tensor<D> {
    let (values, shape) = read_f32(file, key);
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Max absolute difference of two tensors of the same shape.
pub fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar::<f32>()
}

/// The architecture the fixture script builds under `name`.
pub fn fixture_arch(name: &str) -> ArchConfig {
    let vit = |distilled| {
        ArchConfig::Vit(VitConfig {
            img_size: 32,
            patch_size: 8,
            in_chans: 3,
            num_classes: 10,
            embed_dim: 48,
            depth: 2,
            num_heads: 3,
            mlp_ratio: 4.0,
            distilled,
            norm_eps: 1e-6,
            layer_scale: None,
            saliency_decoder: None,
        })
    };
    match name {
        "vit_tiny" => vit(false),
        "deit_tiny_distilled" => vit(true),
        "vit_ls_p14" => ArchConfig::Vit(VitConfig {
            img_size: 42,
            patch_size: 14,
            in_chans: 3,
            num_classes: 10,
            embed_dim: 48,
            depth: 2,
            num_heads: 3,
            mlp_ratio: 4.0,
            distilled: false,
            norm_eps: 1e-6,
            layer_scale: Some(1e-5),
            saliency_decoder: None,
        }),
        "swin_tiny" => ArchConfig::Swin(SwinConfig {
            img_size: 64,
            patch_size: 4,
            in_chans: 3,
            num_classes: 10,
            embed_dim: 24,
            depths: vec![2, 2],
            num_heads: vec![2, 4],
            window_size: 4,
            mlp_ratio: 4.0,
            norm_eps: 1e-5,
        }),
        other => panic!("no fixture named {other}"),
    }
}

/// The fixture model with timm's weights, its input batch and timm's logits.
pub fn fixture(name: &str, device: &Device) -> (Model, Tensor<4>, Tensor<2>) {
    let source = WeightsSource::resolve(&fixtures_dir().join(format!("{name}.safetensors")), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let model = fixture_arch(name)
        .init(device)
        .and_then(|m| m.load_weights(&source))
        .unwrap_or_else(|e| panic!("{e}"));
    let io = format!("{name}_io.safetensors");
    (
        model,
        tensor(&io, "input", device),
        tensor(&io, "logits", device),
    )
}

/// A digits model card (`digits-deit`, `digits-swin`) with its shipped checkpoint (models/).
pub fn shipped(name: &str, device: &Device) -> (crate::ModelCard, Model) {
    let card = crate::ModelCard::find(name).unwrap_or_else(|e| panic!("{e}"));
    let path = card
        .shipped_path()
        .unwrap_or_else(|| panic!("model '{name}' ships no checkpoint"));
    let model = card
        .arch
        .init(device)
        .and_then(|m| m.load_weights(&WeightsSource::Safetensors(path)))
        .unwrap_or_else(|e| panic!("{e}"));
    (card, model)
}

/// A model of one's own built from mixq's layers, as a user would write it: the rows of an
/// 8x8 grey image as 8 tokens, residual MLP blocks, mean over tokens, a 10-class classifier.
/// It implements [`Network`], so the crates built on this one test their model-agnostic
/// paths with a model that is none of mixq's families.
#[derive(Module, Debug)]
pub struct RowMlp {
    /// The residual blocks.
    pub blocks: Vec<RowBlock>,
    /// The classifier on the mean token.
    pub head: Linear,
}

/// `x + fc2(gelu(fc1(norm(x))))`.
#[derive(Module, Debug)]
pub struct RowBlock {
    /// Before `fc1`.
    pub norm: LayerNorm,
    /// 8 -> 16.
    pub fc1: Linear,
    /// 16 -> 8.
    pub fc2: Linear,
}

impl RowBlock {
    fn new(i: usize, device: &Device) -> Self {
        let path = SiteId::new(format!("blocks.{i}"));
        RowBlock {
            norm: LayerNorm::new(8, 1e-6, device),
            fc1: LinearConfig::new(8, 16).init(path.join("fc1"), device),
            fc2: LinearConfig::new(16, 8).init(path.join("fc2"), device),
        }
    }

    fn forward(&self, x: Tensor<3>, hook: &dyn SiteHook) -> Tensor<3> {
        let h = self.fc1.forward(self.norm.forward(x.clone(), hook), hook);
        x + self.fc2.forward(gelu(h), hook)
    }
}

impl RowMlp {
    /// Three blocks with random weights (seed `device` first for reproducibility).
    pub fn new(device: &Device) -> Self {
        RowMlp {
            blocks: (0..3).map(|i| RowBlock::new(i, device)).collect(),
            head: LinearConfig::new(8, 10).init(SiteId::new("head"), device),
        }
    }

    fn pool_and_classify(&self, x: Tensor<3>, hook: &dyn SiteHook) -> Tensor<2> {
        let [b, _, c] = x.dims();
        self.head.forward(x.mean_dim(1).reshape([b, c]), hook)
    }
}

impl Network for RowMlp {
    fn sites(&self) -> Vec<SiteInfo> {
        // The blocks run on 8 tokens, the head on their mean.
        let linears = self.blocks.iter().flat_map(|b| [(&b.fc1, 8), (&b.fc2, 8)]);
        linears
            .chain([(&self.head, 1)])
            .map(|(l, tokens)| {
                let (i, o) = l.dims();
                let params = (i * o) as u64;
                SiteInfo {
                    id: l.site.clone(),
                    kind: SiteKind::Linear,
                    params,
                    macs: tokens * params,
                }
            })
            .collect()
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Logits
    }

    fn forward_with_boundaries(
        &self,
        images: Tensor<4>,
        hook: &dyn SiteHook,
        boundary: &mut dyn FnMut(Boundary) -> Boundary,
    ) -> Tensor<2> {
        let [b, _, h, w] = images.dims();
        let mut stream = |x| boundary(Boundary::new(x)).stream;
        let x = self
            .blocks
            .iter()
            .fold(images.reshape([b, h, w]), |x, block| {
                block.forward(stream(x), hook)
            });
        self.pool_and_classify(stream(x), hook)
    }

    fn block_sites(&self) -> Vec<Vec<SiteId>> {
        self.blocks
            .iter()
            .map(|b| vec![b.fc1.site.clone(), b.fc2.site.clone()])
            .collect()
    }

    fn forward_block(&self, i: usize, x: Boundary, hook: &dyn SiteHook) -> Boundary {
        Boundary::new(self.blocks[i].forward(x.stream, hook))
    }

    fn forward_from(&self, point: usize, x: Boundary, hook: &dyn SiteHook) -> Tensor<2> {
        let x = self.blocks[point..]
            .iter()
            .fold(x.stream, |x, block| block.forward(x, hook));
        self.pool_and_classify(x, hook)
    }

    /// None: it reads the image rows as tokens.
    fn convs_mut(&mut self) -> Vec<&mut crate::layers::Conv2d> {
        Vec::new()
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out: Vec<&mut Linear> = Vec::new();
        for b in &mut self.blocks {
            out.extend([&mut b.fc1, &mut b.fc2]);
        }
        out.push(&mut self.head);
        out
    }

    fn post_norm_pairs_mut(&mut self) -> Vec<(&mut LayerNorm, &mut Linear)> {
        self.blocks
            .iter_mut()
            .map(|b| (&mut b.norm, &mut b.fc1))
            .collect()
    }
}

/// Records every (site, slot, 2-D dims) the hook sees, in order.
#[derive(Default)]
struct SlotDims(std::sync::Mutex<Vec<(SiteId, Slot, [usize; 2])>>);

impl SiteHook for SlotDims {
    fn apply(&self, site: &SiteId, slot: Slot, x: Tensor<2>) -> Tensor<2> {
        let dims = x.dims();
        self.0
            .lock()
            .expect("recorder lock")
            .push((site.clone(), slot, dims));
        x
    }
}

/// Checks a model's declared [`Network::sites`] against one forward of `images`
/// (`[b, c, h, w]`): the sites appear in forward order, and each site's parameters and MACs per
/// image follow from the tensors it passes through the hook (a linear's weight `[in, out]`, a
/// conv's `[out, in*k*k]`, a matmul's left operand `[rows, inner]`, times the output per image).
/// The error lists every mismatch. For the tests of a model family, the own one included.
pub fn check_sites(model: &dyn Network, images: Tensor<4>) -> std::result::Result<(), String> {
    let batch = images.dims()[0];
    let seen = SlotDims::default();
    let _ = model.forward_with(images, &seen);
    let seen = seen.0.into_inner().expect("recorder lock");
    let mut order: Vec<SiteId> = Vec::new();
    let mut dims: std::collections::BTreeMap<(SiteId, Slot), [usize; 2]> = Default::default();
    for (site, slot, d) in seen {
        if !order.contains(&site) {
            order.push(site.clone());
        }
        dims.insert((site, slot), d);
    }
    let sites = model.sites();
    let listed: Vec<SiteId> = sites.iter().map(|s| s.id.clone()).collect();
    let mut problems = Vec::new();
    if order != listed {
        problems.push(format!(
            "sites() order {listed:?} differs from the forward's {order:?}"
        ));
    }
    for s in &sites {
        let get = |slot| dims.get(&(s.id.clone(), slot)).copied();
        let Some([orows, ocols]) = get(Slot::Output) else {
            problems.push(format!("{}: no output passed the hook", s.id));
            continue;
        };
        let out_per_image = (orows * ocols / batch) as u64;
        let weight = get(Slot::Weight);
        let (params, inner) = match (s.kind, weight, get(Slot::OperandA)) {
            (SiteKind::Linear, Some([i, o]), _) => ((i * o) as u64, i as u64),
            (SiteKind::Conv, Some([o, ikk]), _) => ((o * ikk) as u64, ikk as u64),
            (SiteKind::MatMulQk | SiteKind::MatMulAv, None, Some([_, inner])) => (0, inner as u64),
            (kind, w, a) => {
                problems.push(format!(
                    "{}: declared {kind:?} but passed weight {w:?}, operand {a:?}",
                    s.id
                ));
                continue;
            }
        };
        if s.params != params {
            problems.push(format!(
                "{}: {} params declared, {params} seen",
                s.id, s.params
            ));
        }
        if s.macs != out_per_image * inner {
            problems.push(format!(
                "{}: {} MACs declared, {} seen",
                s.id,
                s.macs,
                out_per_image * inner
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Scales the input (or left operand) of one site: what a sweep's candidate does to one site.
struct Nudge(SiteId);

impl SiteHook for Nudge {
    fn apply(&self, site: &SiteId, slot: Slot, x: Tensor<2>) -> Tensor<2> {
        if *site == self.0 && matches!(slot, Slot::Input | Slot::OperandA) {
            x.mul_scalar(1.5)
        } else {
            x
        }
    }
}

/// Checks a model's declared blocks against its forward on `images`: there is one boundary
/// more than blocks; [`Network::forward_block`] from each boundary reproduces the next one
/// exactly (stream and carried tensors); and for every site, rerunning from its
/// [`Network::resume_point`] with only that site changed gives exactly the full forward's
/// output, while rerunning from the next boundary would miss the change (a site without a
/// resume point changes the model before boundary 0). Returns how many sites resume from a
/// boundary; the error lists every mismatch.
pub fn check_blocks(model: &dyn Network, images: Tensor<4>) -> std::result::Result<usize, String> {
    let hook = crate::hooks::NoHook;
    let (bounds, _) = model.boundaries(images.clone(), &hook);
    let blocks = model.num_blocks();
    let mut problems = Vec::new();
    if bounds.len() != blocks + usize::from(blocks > 0) {
        problems.push(format!("{} boundaries for {blocks} blocks", bounds.len()));
    }
    let same = |a: &Boundary, b: &Boundary| {
        a.carried.len() == b.carried.len()
            && max_abs_diff(a.stream.clone(), b.stream.clone()) == 0.0
            && a.carried
                .iter()
                .zip(&b.carried)
                .all(|(x, y)| max_abs_diff(x.clone(), y.clone()) == 0.0)
    };
    for i in 0..blocks.min(bounds.len().saturating_sub(1)) {
        let next = model.forward_block(i, bounds[i].clone(), &hook);
        if !same(&next, &bounds[i + 1]) {
            problems.push(format!("block {i} does not reproduce boundary {}", i + 1));
        }
    }
    let mut resumed = 0;
    for site in model.sites() {
        let nudge = Nudge(site.id.clone());
        let full = model.forward_with(images.clone(), &nudge);
        let from = |k: usize| model.forward_from(k, bounds[k].clone(), &nudge);
        match model.resume_point(&site.id) {
            Some(k) => {
                resumed += 1;
                let err = max_abs_diff(from(k), full.clone());
                if err != 0.0 {
                    problems.push(format!("{}: rerun from {k} differs by {err}", site.id));
                }
                if k < blocks && max_abs_diff(from(k + 1), full) == 0.0 {
                    problems.push(format!("{}: boundary {} already sees it", site.id, k + 1));
                }
            }
            None if blocks > 0 && max_abs_diff(from(0), full) == 0.0 => {
                problems.push(format!(
                    "{}: no resume point, yet boundary 0 sees it",
                    site.id
                ));
            }
            None => {}
        }
    }
    if problems.is_empty() {
        Ok(resumed)
    } else {
        Err(problems.join("\n"))
    }
}

/// Asserts that each image's target logit reaches every block boundary and the pixels of `e`
/// within `tolerance` (relative): LRP's conservation, for models explained with conservative
/// rules and no biases. Prints the totals; panics naming the image and boundary.
pub fn assert_conserved(e: &crate::explain::Explanation, tolerance: f32) {
    for (i, &logit) in e.target_logits.iter().enumerate() {
        let totals: Vec<f32> = e
            .boundaries
            .iter()
            .map(|b| b[i])
            .chain([e.pixel_totals()[i]])
            .collect();
        println!("image {i}: logit {logit}, boundaries and pixels {totals:?}");
        for (k, &r) in totals.iter().enumerate() {
            assert!(
                (r - logit).abs() / logit.abs() < tolerance,
                "image {i} boundary {k} (the last: pixels): {r} vs logit {logit}"
            );
        }
    }
}
