//! docs/adding-a-model.md, followed once: a model family that is none of mixq's, a ViT whose
//! patch embedding is a small conv stem (Xiao et al., "Early convolutions help transformers see
//! better"), built from mixq's layers, declared through `Network`, and taken through the
//! pipeline's model-agnostic stages: site check, PTQ, the sensitivity sweep with the block
//! cache, RepQ-ViT's reparameterization and LRP.

use std::cell::RefCell;

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use mixq_core::{SiteBits, SiteId, SiteInfo};
use mixq_lrp::{AttentionRule, Preset};
use mixq_ptq::{
    Baseline, PostLnMode, PtqConfig, SweepOptions, quantize, reparameterize, sensitivity_sweep,
    uniform_plan,
};
use mixq_sensitivity::{Probe, Shard, SweepCache};
use mixq_vit_models::layers::{Conv2d, Conv2dConfig, LayerNorm, Linear, LinearConfig, SiteBuilder};
use mixq_vit_models::testing::{assert_conserved, check_blocks, check_sites, max_abs_diff};
use mixq_vit_models::vit::{Block, BlockDims};
use mixq_vit_models::{Boundary, ExplainOptions, Network, OutputKind, SiteHook, Target};

/// 8x8 grey images: a 3x3 stride-2 conv (16 channels) and ReLU, a 1x1 conv to the token width:
/// 16 tokens, learned position embeddings, pre-LN blocks, final norm, mean over tokens, classes.
#[derive(Module, Debug)]
pub struct ConvStemVit {
    /// `stem.0` (3x3, stride 2) and `stem.1` (1x1).
    pub stem: Vec<Conv2d>,
    /// `[1, tokens, dim]`.
    pub pos_embed: Param<Tensor<3>>,
    /// `blocks.{i}`.
    pub blocks: Vec<Block>,
    /// Before pooling.
    pub norm: LayerNorm,
    /// `head`.
    pub head: Linear,
    /// Its sites, recorded while it was built.
    #[module(skip)]
    pub sites: Vec<SiteInfo>,
}

const DIM: usize = 32;
const HEADS: usize = 2;
const HIDDEN: usize = 64;
const STEM: usize = 16;
const TOKENS: usize = 16;
const CLASSES: usize = 10;

impl ConvStemVit {
    /// Two blocks, random weights (seed with `mixq_vit_models::seeded`). Built in forward
    /// order through a `SiteBuilder`, which records the sites as the layers are made.
    pub fn new(device: &Device) -> Self {
        let sites = RefCell::new(Vec::new());
        let b = SiteBuilder::new(&sites, device);
        let tokens = b.rows(TOKENS);
        let dims = BlockDims {
            dim: DIM,
            heads: HEADS,
            mlp_hidden: HIDDEN,
            norm_eps: 1e-6,
            layer_scale: None,
        };
        ConvStemVit {
            // Both stem convs output the 4x4 token grid.
            stem: vec![
                tokens
                    .pp("stem.0")
                    .conv(&Conv2dConfig::new(1, STEM, 3, 2).with_padding(1)),
                tokens
                    .pp("stem.1")
                    .conv(&Conv2dConfig::new(STEM, DIM, 1, 1)),
            ],
            pos_embed: Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([1, TOKENS, DIM], device),
            blocks: (0..2)
                .map(|i| Block::build(&tokens.pp(&format!("blocks.{i}")), dims))
                .collect(),
            norm: LayerNorm::new(DIM, 1e-6, device),
            head: b.pp("head").linear(&LinearConfig::new(DIM, CLASSES)),
            sites: sites.into_inner(),
        }
    }

    /// Images to tokens `[b, 16, dim]`.
    fn embed(&self, images: Tensor<4>, hook: &dyn SiteHook) -> Tensor<3> {
        let x = relu(self.stem[0].forward(images, hook));
        let x = self.stem[1].forward(x, hook);
        let [b, c, h, w] = x.dims();
        x.reshape([b, c, h * w]).swap_dims(1, 2) + self.pos_embed.val()
    }

    fn pool_and_classify(&self, x: Tensor<3>, hook: &dyn SiteHook) -> Tensor<2> {
        let [b, _, c] = x.dims();
        let x = self.norm.forward(x, hook).mean_dim(1).reshape([b, c]);
        self.head.forward(x, hook)
    }
}

impl Network for ConvStemVit {
    /// Recorded while it was built; `check_sites` compares them with a forward.
    fn sites(&self) -> Vec<SiteInfo> {
        self.sites.clone()
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
        // The state at each boundary is the residual stream alone.
        let mut stream = |x| boundary(Boundary::new(x)).stream;
        let x = self
            .blocks
            .iter()
            .fold(self.embed(images, hook), |x, block| {
                block.forward(stream(x), hook)
            });
        self.pool_and_classify(stream(x), hook)
    }

    fn block_sites(&self) -> Vec<Vec<SiteId>> {
        self.blocks.iter().map(Block::site_ids).collect()
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

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = Vec::new();
        for b in &mut self.blocks {
            out.extend([
                &mut b.attn.qkv,
                &mut b.attn.proj,
                &mut b.mlp.fc1,
                &mut b.mlp.fc2,
            ]);
        }
        out.push(&mut self.head);
        out
    }

    fn convs_mut(&mut self) -> Vec<&mut Conv2d> {
        self.stem.iter_mut().collect()
    }

    fn post_norm_pairs_mut(&mut self) -> Vec<(&mut LayerNorm, &mut Linear)> {
        let mut out = Vec::new();
        for b in &mut self.blocks {
            out.push((&mut b.norm1, &mut b.attn.qkv));
            out.push((&mut b.norm2, &mut b.mlp.fc1));
        }
        out
    }
}

/// The model (seeded: burn draws parameters lazily from a global generator, which parallel
/// tests share) and 16 images from a fixed sequence.
fn setup(seed: u64) -> (ConvStemVit, Tensor<4>, Device) {
    let device = Device::flex();
    let model = mixq_vit_models::seeded(&device, seed, || Ok(ConvStemVit::new(&device))).unwrap();
    let values: Vec<f32> = (0..16 * 64u64)
        .map(|i| {
            let h = (i + 1 + 1000 * seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            (h % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    let images = Tensor::from_data(TensorData::new(values, [16, 1, 8, 8]), &device);
    (model, images, device)
}

fn relative_error(a: Tensor<2>, reference: Tensor<2>) -> f32 {
    let scale = reference.clone().abs().max().into_scalar::<f32>();
    max_abs_diff(a, reference) / scale
}

#[test]
fn conv_stem_sites_match_its_forward() {
    let (model, images, _) = setup(0);
    check_sites(&model, images.clone()).unwrap();
    // Each block steps to the next boundary, and a change at any site after the stem is seen
    // from its resume point and missed from the next boundary.
    assert_eq!(
        check_blocks(&model, images).unwrap(),
        model.sites().len() - 2
    );
    // The derived resume points: a block's sites rerun from its boundary, the head from the
    // last, the stem from the images.
    assert_eq!(
        model.resume_point(&SiteId::new("blocks.1.mlp.fc1")),
        Some(1)
    );
    assert_eq!(model.resume_point(&SiteId::new("head")), Some(2));
    assert_eq!(model.resume_point(&SiteId::new("stem.1")), None);
}

/// `quantize` takes the model as it takes mixq's families: every conv and linear weight on its
/// per-channel grid, activations calibrated; 8 bits stay close to full precision, 3 do not.
#[test]
fn conv_stem_is_quantized_like_a_builtin_family() {
    let (model, images, _) = setup(1);
    let reference = model.forward(images.clone());
    let sites = model.sites();
    let mut errors = Vec::new();
    for bits in [8, 3] {
        let plan = uniform_plan(&sites, bits, bits, 8).unwrap();
        let q = quantize(model.clone(), images.clone(), &plan, &PtqConfig::default()).unwrap();
        let weighted = sites.iter().filter(|s| s.kind.has_weights()).count();
        assert_eq!(q.weights.len(), weighted);
        // The stem conv's weights lie on their grid: quantizing them again changes nothing.
        let w = q.model.stem[0].weight.val().reshape([STEM, 9]);
        let again = q.weights[&SiteId::new("stem.0")].fake_quant(w.clone());
        assert!(max_abs_diff(again, w) < 1e-6);
        errors.push(relative_error(q.forward(images.clone()), reference.clone()));
    }
    println!(
        "relative logit error at W8A8 {}, W3A3 {}",
        errors[0], errors[1]
    );
    assert!(errors[0] < 0.05, "{errors:?}");
    assert!(errors[1] > 4.0 * errors[0], "{errors:?}");
}

/// The sweep reruns each site from its block: cached and uncached records are identical.
#[test]
fn conv_stem_sweep_uses_the_block_cache() {
    let (model, images, _) = setup(2);
    let probe = Probe::new(images.clone(), vec![0; 16], 8).unwrap();
    let run = |use_cache| {
        let options = SweepOptions {
            candidates: vec![SiteBits::new(3, 3).unwrap()],
            baseline: Baseline::FullPrecision,
            image_bits: 8,
            use_cache,
            shard: Shard::WHOLE,
        };
        sensitivity_sweep(
            &model,
            &images,
            &probe,
            &PtqConfig::default(),
            &options,
            &mut SweepCache::in_memory(),
            |_, _| {},
        )
        .unwrap()
    };
    let cached = run(true);
    assert_eq!(cached.len(), model.sites().len());
    assert!(cached.iter().filter(|r| r.damage.kl > 0.0).count() > cached.len() / 2);
    assert_eq!(cached, run(false));
}

/// RepQ-ViT's fold keeps the function; LRP carries each image's target logit through every
/// block boundary and the conv stem to the pixels (biases and position embeddings removed, so nothing else absorbs relevance).
#[test]
fn conv_stem_is_reparameterized_and_explained() {
    let (mut model, images, device) = setup(3);
    let reference = model.forward(images.clone());
    let plan = uniform_plan(&model.sites(), 4, 4, 8).unwrap();
    let folded = reparameterize(
        model.clone(),
        images.clone(),
        &plan,
        PostLnMode::ChannelReparam,
    )
    .unwrap();
    assert!(relative_error(folded.forward(images.clone()), reference) < 1e-4);

    for linear in model.linears_mut() {
        linear.bias = None;
    }
    for conv in model.convs_mut() {
        conv.bias = None;
    }
    model.pos_embed = Param::from_tensor(Tensor::zeros([1, TOKENS, DIM], &device));
    // The exactly conservative rules: z-rule for linears, attention probabilities as constants.
    let mut options = ExplainOptions::new(Preset::Attnlrp, &[0.0], &[1.0]);
    options.epsilon = Some(0.0);
    options.attention = AttentionRule::Constant;
    let e = model
        .explain(images.narrow(0, 0, 3), &Target::Predicted, &options)
        .unwrap();
    assert_eq!(e.boundaries.len(), model.num_blocks() + 1);
    assert_conserved(&e, 1e-4);
}
