//! WTPose (Waterfall Transformer for multi-person pose estimation, Ranjan & Savakis), top-down
//! heatmap model, as the authors' mmpose `wtSwin` backbone + `WTM_A` waterfall module +
//! `HeatmapHeadWTPose`:
//!
//! 1. stem: two 3x3 stride-2 conv-BN-ReLU (64 ch), then ResNet's first bottleneck stage
//!    (3 blocks, 256 ch, stride 4 overall); 1x1 conv-BN-ReLU to the Swin width `C`;
//! 2. the four Swin stages (window 7, shift on odd blocks, maps padded to the window as in
//!    mmpose), each output LayerNorm-ed;
//! 3. the waterfall module: stages 1..3 upsampled bilinearly (align corners) to stride 4,
//!    concatenated, 1x1 conv-BN-ReLU to 128; 4 cascaded blocks, each a dilated (2, 4, 6, 8)
//!    then an undilated neighbourhood-attention layer (kernel 7, 8 heads, pre-LN, MLP ratio 4,
//!    layer scale); a global-average-pool branch (1x1 conv-BN-ReLU, broadcast); the four block
//!    outputs and the pool branch concatenated, 1x1 conv-BN-ReLU to 128; the stride-4 ResNet
//!    features 1x1 conv-BN-ReLU to 32 and concatenated; two 3x3 conv-BN-ReLU;
//! 4. head: 1x1 conv to 17 heatmaps at stride 4.
//!
//! Every linear and conv is a quantizable site; the neighbourhood-attention matmuls are
//! `matmul_qk`/`matmul_av` sites. [`WtPose::fold_batch_norm`] merges every BatchNorm into its
//! conv for inference.

use std::cell::RefCell;
use std::path::Path;

use burn::module::{Module, Param, RunningState};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::activation;
use burn::tensor::{Device, Tensor, TensorData};
use mixq_core::{Error, Result, SiteId, SiteInfo};
use serde::{Deserialize, Serialize};

use crate::hooks::{NoHook, SiteHook};
use crate::layers::{Conv2d, Conv2dConfig, LayerNorm, Linear, Mlp, SiteBuilder};
use crate::neighborhood::NeighborhoodAttention;
use crate::network::{Boundary, Network, OutputKind};
use crate::swin::{SwinStage, SwinStageDims};

/// Which multiply-accumulates [`WtPoseConfig::macs`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacCount {
    /// Convs and linears only.
    Weights,
    /// The paper's convention: mmpose/mmengine `get_flops` traces the model with fvcore-style
    /// op handles and reports MACs as "FLOPs": convs, linears and the Swin window-attention
    /// matmuls (`q @ k^T`, `attn @ v`) are counted, NATTEN's custom neighbourhood-attention ops
    /// are invisible to the tracer and are not. (Norms, activations and resizes, which the
    /// tracer also counts, add about 0.1 G and are left out here.)
    Paper,
    /// Every site, the neighbourhood-attention matmuls included.
    All,
}

/// Architecture of a WTPose model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WtPoseConfig {
    /// Input `[height, width]`; both multiples of 32.
    pub input_size: [usize; 2],
    #[serde(default = "crate::layers::rgb")]
    /// Input channels.
    pub in_chans: usize,
    /// Stem width (64).
    pub stem_channels: usize,
    /// Bottleneck blocks in the ResNet stage (3).
    pub res_blocks: usize,
    /// Bottleneck inner width (64; output is 4x).
    pub res_planes: usize,
    /// Swin width of stage 0 (`C`).
    pub embed_dim: usize,
    /// Swin blocks per stage.
    pub depths: Vec<usize>,
    /// Attention heads per Swin stage.
    pub num_heads: Vec<usize>,
    /// Side of the Swin attention windows.
    pub window_size: usize,
    #[serde(default = "crate::layers::mlp_ratio_4")]
    /// Hidden width of the MLPs as a multiple of their input width.
    pub mlp_ratio: f64,
    /// Waterfall width (128).
    pub wtm_dim: usize,
    /// Waterfall output width (128).
    pub wtm_out_dim: usize,
    /// Heads of the waterfall's neighbourhood attention.
    pub wtm_heads: usize,
    /// Side of its neighbourhoods.
    pub wtm_kernel: usize,
    /// Dilation of the first layer of each cascaded block (the second is undilated).
    pub wtm_dilations: Vec<usize>,
    /// Width of the low-level branch (32).
    pub wtm_low_dim: usize,
    /// Initial layer-scale value of the NA layers (`None`: no layer scale).
    pub layer_scale: Option<f64>,
    /// Heatmaps (keypoints) the head predicts.
    pub num_keypoints: usize,
    #[serde(default = "ln_eps")]
    /// Epsilon of every LayerNorm.
    pub norm_eps: f64,
}

fn ln_eps() -> f64 {
    1e-5
}

/// The variants: name, then the paper's (params M, GFLOPs) where it reports them.
pub const WTPOSE_VARIANTS: [(&str, Option<(f64, f64)>); 7] = [
    ("wtpose-tiny", None),
    ("wtpose-t", Some((30.0, 12.8))),
    ("wtpose-b", Some((89.3, 25.6))),
    ("wtpose-l", None),
    ("wtpose-t-384x288", None),
    ("wtpose-b-384x288", None),
    ("wtpose-l-384x288", None),
];

impl WtPoseConfig {
    /// A named variant, from its model card (models/wtpose-*.toml): `wtpose-tiny`,
    /// `wtpose-{t,b,l}` (256x192) and `wtpose-{t,b,l}-384x288`. T/B/L follow the authors'
    /// configs: Swin-T/B/L widths and depths with heads (4, 8, 16, 32) and window 7, waterfall
    /// 128 wide with 8 heads, kernel 7, dilations (2, 4, 6, 8).
    pub fn variant(name: &str) -> Result<Self> {
        crate::ModelCard::find(name)?.pose_config().cloned()
    }

    /// A small WTPose for CPU training on the synthetic set: 128x96 input, every stage of
    /// the architecture present but narrow (stem 16, one bottleneck, Swin 32 wide with one
    /// block per stage (two in stage 0) and window 4, MLP ratio 2, waterfall 32 wide with 2 heads,
    /// NA kernel 3, dilations 2 and 4).
    pub fn tiny() -> Self {
        WtPoseConfig {
            input_size: [128, 96],
            in_chans: 3,
            stem_channels: 16,
            res_blocks: 1,
            res_planes: 16,
            embed_dim: 32,
            depths: vec![2, 1, 1, 1],
            num_heads: vec![2, 2, 4, 8],
            window_size: 4,
            mlp_ratio: 2.0,
            wtm_dim: 32,
            wtm_out_dim: 32,
            wtm_heads: 2,
            wtm_kernel: 3,
            wtm_dilations: vec![2, 4],
            wtm_low_dim: 16,
            layer_scale: Some(0.1),
            num_keypoints: 17,
            norm_eps: 1e-5,
        }
    }

    /// Checks the configuration; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let [h, w] = self.input_size;
        if h == 0 || w == 0 || !h.is_multiple_of(32) || !w.is_multiple_of(32) {
            return Err(Error::invalid(
                "input_size",
                format!("{h}x{w}"),
                "height and width must be positive multiples of 32 (stride 4, then 3 patch merges)",
            ));
        }
        if self.depths.len() != 4 || self.num_heads.len() != 4 || self.depths.contains(&0) {
            return Err(Error::invalid(
                "depths",
                format!("{:?} / {:?}", self.depths, self.num_heads),
                "WTPose has four Swin stages of at least one block: depths and num_heads need \
                 four entries",
            ));
        }
        for s in 0..4 {
            if !self.stage_dim(s).is_multiple_of(self.num_heads[s]) {
                return Err(Error::invalid(
                    "num_heads",
                    self.num_heads[s],
                    format!("must divide stage {s} width {}", self.stage_dim(s)),
                ));
            }
        }
        if !self.wtm_dim.is_multiple_of(self.wtm_heads) || self.wtm_kernel.is_multiple_of(2) {
            return Err(Error::invalid(
                "wtm_heads",
                self.wtm_heads,
                format!(
                    "must divide wtm_dim {} (and wtm_kernel {} must be odd)",
                    self.wtm_dim, self.wtm_kernel
                ),
            ));
        }
        if self.wtm_dilations.is_empty() || self.wtm_dilations.contains(&0) {
            return Err(Error::invalid(
                "wtm_dilations",
                format!("{:?}", self.wtm_dilations),
                "needs at least one block, dilations >= 1",
            ));
        }
        Ok(())
    }

    /// Channels of Swin stage `s`.
    pub fn stage_dim(&self, s: usize) -> usize {
        self.embed_dim << s
    }

    /// `[h, w]` of Swin stage `s` (stride `4 * 2^s`).
    pub fn stage_resolution(&self, s: usize) -> [usize; 2] {
        self.input_size.map(|l| (l / 4) >> s)
    }

    /// `[h, w]` of the heatmaps (stride 4).
    pub fn heatmap_size(&self) -> [usize; 2] {
        self.stage_resolution(0)
    }

    /// The crop and heatmap geometry of this model, targets of Gaussian `sigma`.
    pub fn topdown(&self, sigma: f64) -> mixq_datasets::TopDownConfig {
        let [h, w] = self.input_size;
        let [hh, hw] = self.heatmap_size();
        mixq_datasets::TopDownConfig {
            input_w: w,
            input_h: h,
            heatmap_w: hw,
            heatmap_h: hh,
            sigma,
            ..mixq_datasets::TopDownConfig::default()
        }
    }

    /// Output channels of the ResNet stage (`4 * res_planes`).
    pub fn res_out(&self) -> usize {
        4 * self.res_planes
    }

    fn geometry(&self, s: usize) -> Vec<(usize, usize)> {
        (0..self.depths[s])
            .map(|b| {
                let shift = if b % 2 == 1 { self.window_size / 2 } else { 0 };
                (self.window_size, shift)
            })
            .collect()
    }

    /// `(kernel dilation)` of every NA layer in order: dilated, undilated per block.
    pub fn wtm_layer_dilations(&self) -> Vec<usize> {
        self.wtm_dilations.iter().flat_map(|&d| [d, 1]).collect()
    }

    /// A model with random init (BatchNorm gamma 1, except the last BN of each bottleneck,
    /// which starts at 0 as in mmpose's `zero_init_residual`).
    pub fn init(&self, device: &Device) -> Result<WtPose> {
        self.validate()?;
        // Built in forward order: the sites are recorded as they are made, each conv with its
        // output pixels, each attention with the padded map it computes on.
        let sites = RefCell::new(Vec::new());
        let b = SiteBuilder::new(&sites, device);
        let [h, w] = self.input_size;
        let half = b.rows(h.div_ceil(2) * w.div_ceil(2));
        let [rh, rw] = self.stage_resolution(0);
        let r0 = b.rows(rh * rw);
        let st = self.stem_channels;
        let stem = vec![
            ConvBn::build(
                &half.pp("resnet.stem.0.conv"),
                self.in_chans,
                st,
                3,
                2,
                true,
            ),
            ConvBn::build(&r0.pp("resnet.stem.1.conv"), st, st, 3, 2, true),
        ];
        let (planes, out) = (self.res_planes, self.res_out());
        let layer1 = (0..self.res_blocks)
            .map(|i| {
                let p = r0.pp(&format!("resnet.layer1.{i}"));
                let cin = if i == 0 { st } else { out };
                let conv1 = ConvBn::build(&p.pp("conv1"), cin, planes, 1, 1, true);
                let conv2 = ConvBn::build(&p.pp("conv2"), planes, planes, 3, 1, true);
                let mut conv3 = ConvBn::build(&p.pp("conv3"), planes, out, 1, 1, false);
                if let Some(bn) = &mut conv3.bn {
                    bn.gamma = Initializer::Zeros.init([out], device);
                }
                Bottleneck {
                    conv1,
                    conv2,
                    conv3,
                    downsample: (cin != out)
                        .then(|| ConvBn::build(&p.pp("downsample.0"), cin, out, 1, 1, false)),
                }
            })
            .collect();
        let conv3 = ConvBn::build(&r0.pp("conv3"), out, self.embed_dim, 1, 1, true);
        let layers = (0..4)
            .map(|s| {
                SwinStage::build(
                    &b.pp(&format!("layers.{s}")),
                    SwinStageDims {
                        dim: self.stage_dim(s),
                        heads: self.num_heads[s],
                        resolution: self.stage_resolution(s),
                        downsample: s > 0,
                        mlp_ratio: self.mlp_ratio,
                        norm_eps: self.norm_eps,
                    },
                    &self.geometry(s),
                )
            })
            .collect();
        let norms = (0..4)
            .map(|s| LayerNorm::new(self.stage_dim(s), self.norm_eps, device))
            .collect();
        let d = self.wtm_dim;
        let wtm = r0.pp("wtm");
        let in_dim: usize = (0..4).map(|s| self.stage_dim(s)).sum();
        let conv1 = ConvBn::build(&wtm.pp("conv1"), in_dim, d, 1, 1, true);
        let blocks = self
            .wtm_layer_dilations()
            .iter()
            .enumerate()
            .map(|(i, &dil)| NatLayer::build(&wtm.pp(&format!("blocks.{i}")), self, dil))
            .collect();
        let cascades = self.wtm_dilations.len();
        let waterfall = Waterfall {
            conv1,
            blocks,
            // Global pooling: one pixel per image.
            pool: ConvBn::build(&wtm.pp("global_avg_pool.1").rows(1), d, d, 1, 1, true),
            conv2: ConvBn::build(&wtm.pp("conv2"), (cascades + 1) * d, d, 1, 1, true),
            low: ConvBn::build(&wtm.pp("low"), out, self.wtm_low_dim, 1, 1, true),
            last: vec![
                ConvBn::build(&wtm.pp("last_conv.0"), d + self.wtm_low_dim, d, 3, 1, true),
                ConvBn::build(&wtm.pp("last_conv.3"), d, self.wtm_out_dim, 3, 1, true),
            ],
        };
        let head = r0.pp("head.final_layer").conv(&Conv2dConfig::new(
            self.wtm_out_dim,
            self.num_keypoints,
            1,
            1,
        ));
        Ok(WtPose {
            stem,
            layer1,
            conv3,
            layers,
            norms,
            waterfall,
            head,
            config: self.clone(),
            sites: sites.into_inner(),
        })
    }

    /// Every quantizable site in forward order, with parameters and MACs per image: those the
    /// model records as it is built (token counts include the padding the Swin windows and the
    /// NA layers compute on; parameters are drawn lazily, so nothing large is allocated).
    /// Empty for a configuration [`Self::validate`] rejects.
    pub fn sites(&self) -> Vec<SiteInfo> {
        self.init(&Device::flex())
            .map(|m| m.sites)
            .unwrap_or_default()
    }

    /// Multiply-accumulates per image, counted as `count` says.
    pub fn macs(&self, count: MacCount) -> u64 {
        self.sites()
            .iter()
            .filter(|s| match count {
                MacCount::Weights => s.kind.has_weights(),
                MacCount::Paper => s.kind.has_weights() || s.id.as_str().starts_with("layers."),
                MacCount::All => true,
            })
            .map(|s| s.macs)
            .sum()
    }

    /// GFLOPs as the paper reports them: `macs(MacCount::Paper) / 1e9`.
    pub fn gflops(&self) -> f64 {
        self.macs(MacCount::Paper) as f64 / 1e9
    }

    /// Learnable parameters (weights, biases, norm affines, bias tables, layer scales; not
    /// BatchNorm running statistics), counted from the config.
    pub fn num_params(&self) -> u64 {
        let mut n = 0u64;
        let conv_bn = |cin: usize, cout: usize, k: usize| (cin * cout * k * k + 2 * cout) as u64;
        let st = self.stem_channels;
        n += conv_bn(self.in_chans, st, 3) + conv_bn(st, st, 3);
        let (planes, out) = (self.res_planes, self.res_out());
        for i in 0..self.res_blocks {
            let cin = if i == 0 { st } else { out };
            n += conv_bn(cin, planes, 1) + conv_bn(planes, planes, 3) + conv_bn(planes, out, 1);
            if cin != out {
                n += conv_bn(cin, out, 1);
            }
        }
        n += conv_bn(out, self.embed_dim, 1);
        let linear = |i: usize, o: usize| (i * o + o) as u64;
        for s in 0..4 {
            let dim = self.stage_dim(s);
            if s > 0 {
                n += (2 * dim * dim + 2 * 2 * dim) as u64; // reduction (no bias) + its norm
            }
            let hidden = (dim as f64 * self.mlp_ratio) as usize;
            let table = (2 * self.window_size - 1).pow(2) * self.num_heads[s];
            let block = 4 * dim
                + table
                + (linear(dim, 3 * dim)
                    + linear(dim, dim)
                    + linear(dim, hidden)
                    + linear(hidden, dim)) as usize;
            n += (self.depths[s] * block + 2 * dim) as u64; // blocks + output norm
        }
        let d = self.wtm_dim;
        let in_dim: usize = (0..4).map(|s| self.stage_dim(s)).sum();
        let hidden = (d as f64 * self.mlp_ratio) as usize;
        let table = (2 * self.wtm_kernel - 1).pow(2) * self.wtm_heads;
        let scale = if self.layer_scale.is_some() { 2 * d } else { 0 };
        let layer = (4 * d + table + scale) as u64
            + linear(d, 3 * d)
            + linear(d, d)
            + linear(d, hidden)
            + linear(hidden, d);
        n += 2 * self.wtm_dilations.len() as u64 * layer;
        n += conv_bn(in_dim, d, 1) + conv_bn(d, d, 1);
        n += conv_bn((self.wtm_dilations.len() + 1) * d, d, 1);
        n += conv_bn(out, self.wtm_low_dim, 1);
        n += conv_bn(d + self.wtm_low_dim, d, 3) + conv_bn(d, self.wtm_out_dim, 3);
        n += (self.wtm_out_dim * self.num_keypoints + self.num_keypoints) as u64;
        n
    }
}

/// A conv site followed by an optional BatchNorm (absent once folded) and ReLU.
#[derive(Module, Debug)]
pub struct ConvBn {
    /// The convolution.
    pub conv: Conv2d,
    /// BatchNorm after it (folded into the conv for inference).
    pub bn: Option<BatchNorm>,
    #[module(skip)]
    /// Whether a ReLU follows.
    pub relu: bool,
}

impl ConvBn {
    /// `k x k` conv with padding `k / 2`, no bias, at `b`'s path (its output has `b`'s rows
    /// of pixels per image), then BatchNorm (and ReLU if `relu`).
    pub fn build(
        b: &SiteBuilder,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        relu: bool,
    ) -> Self {
        ConvBn {
            conv: b.conv(
                &Conv2dConfig::new(cin, cout, k, stride)
                    .with_padding(k / 2)
                    .with_bias(false),
            ),
            bn: Some(BatchNormConfig::new(cout).init(b.device())),
            relu,
        }
    }

    /// Conv, then BatchNorm and ReLU where present.
    pub fn forward(&self, x: Tensor<4>, hook: &dyn SiteHook) -> Tensor<4> {
        let mut y = self.conv.forward(x, hook);
        if let Some(bn) = &self.bn {
            y = bn.forward(y);
        }
        if self.relu { activation::relu(y) } else { y }
    }

    /// Merges the BatchNorm's inference transform into the conv (and drops it):
    /// `w' = w * g / sqrt(var + eps)`, `b' = (b - mean) * g / sqrt(var + eps) + beta`.
    pub fn fold(&mut self) {
        let Some(bn) = self.bn.take() else { return };
        let conv = &mut self.conv;
        let scale = bn.gamma.val() / (bn.running_var.value() + bn.epsilon).sqrt();
        let [o, ..] = conv.weight.dims();
        let bias = match &conv.bias {
            Some(b) => b.val(),
            None => Tensor::zeros([o], &scale.device()),
        };
        let bias = (bias - bn.running_mean.value()) * scale.clone() + bn.beta.val();
        let weight = conv.weight.val() * scale.reshape([o, 1, 1, 1]);
        conv.weight = Param::from_tensor(weight);
        conv.bias = Some(Param::from_tensor(bias));
    }
}

/// ResNet's bottleneck (mmpose `style='pytorch'`: the 3x3 conv carries the stride).
#[derive(Module, Debug)]
pub struct Bottleneck {
    /// 1x1 reduction.
    pub conv1: ConvBn,
    /// 3x3 conv.
    pub conv2: ConvBn,
    /// 1x1 expansion.
    pub conv3: ConvBn,
    /// Matches the shortcut's shape when needed.
    pub downsample: Option<ConvBn>,
}

impl Bottleneck {
    /// ResNet bottleneck: three convs and a shortcut.
    pub fn forward(&self, x: Tensor<4>, hook: &dyn SiteHook) -> Tensor<4> {
        let y = self.conv1.forward(x.clone(), hook);
        let y = self.conv3.forward(self.conv2.forward(y, hook), hook);
        let identity = match &self.downsample {
            Some(d) => d.forward(x, hook),
            None => x,
        };
        activation::relu(y + identity)
    }
}

/// NATTEN's `NATLayer`: pre-LN neighbourhood attention and MLP, each residual branch scaled
/// by a learned per-channel layer scale.
#[derive(Module, Debug)]
pub struct NatLayer {
    /// Before attention.
    pub norm1: LayerNorm,
    /// Dilated neighbourhood attention.
    pub attn: NeighborhoodAttention,
    /// Before the MLP.
    pub norm2: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
    /// Layer scale of the attention branch, when present.
    pub gamma1: Option<Param<Tensor<1>>>,
    /// Layer scale of the MLP branch, when present.
    pub gamma2: Option<Param<Tensor<1>>>,
    /// The `[h, w]` map the layer was built for.
    #[module(skip)]
    pub resolution: [usize; 2],
}

impl NatLayer {
    /// A layer at `b`'s path over `b`'s rows (the stride-4 map's tokens); its attention's
    /// `qkv` and matmuls run on the map padded to at least `kernel * dilation` each way.
    fn build(b: &SiteBuilder, cfg: &WtPoseConfig, dilation: usize) -> Self {
        let (d, device) = (cfg.wtm_dim, b.device());
        let scale = || {
            cfg.layer_scale
                .map(|v| Initializer::Constant { value: v }.init([d], device))
        };
        let [h, w] = cfg.stage_resolution(0);
        let span = cfg.wtm_kernel * dilation;
        NatLayer {
            norm1: LayerNorm::new(d, cfg.norm_eps, device),
            attn: NeighborhoodAttention::build(
                &b.pp("attn"),
                h.max(span) * w.max(span),
                d,
                cfg.wtm_heads,
                cfg.wtm_kernel,
                dilation,
            ),
            norm2: LayerNorm::new(d, cfg.norm_eps, device),
            mlp: Mlp::build(&b.pp("mlp"), d, (d as f64 * cfg.mlp_ratio) as usize),
            gamma1: scale(),
            gamma2: scale(),
            resolution: [h, w],
        }
    }

    /// Its sites in forward order (attention, then MLP).
    pub fn site_ids(&self) -> Vec<SiteId> {
        let a = &self.attn;
        let mut ids = vec![
            a.qkv.site.clone(),
            a.matmul_qk.clone(),
            a.matmul_av.clone(),
            a.proj.site.clone(),
        ];
        ids.extend(self.mlp.site_ids());
        ids
    }

    /// Its linear sites in forward order.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        vec![
            &mut self.attn.qkv,
            &mut self.attn.proj,
            &mut self.mlp.fc1,
            &mut self.mlp.fc2,
        ]
    }

    /// Whether attention pads the normed map up to `kernel * dilation` (the zero rows enter
    /// `qkv` as real keys, so a post-LN fold would shift them).
    pub fn pads_normed_tokens(&self) -> bool {
        let [h, w] = self.resolution;
        self.attn.padded(h, w) != (h, w)
    }

    /// `norm1` -> `qkv` (unless attention pads, see [`NatLayer::pads_normed_tokens`]),
    /// `norm2` -> `fc1`.
    pub fn post_norm_pairs_mut(&mut self) -> Vec<(&mut LayerNorm, &mut Linear)> {
        let pads = self.pads_normed_tokens();
        let mut out = Vec::with_capacity(2);
        if !pads {
            out.push((&mut self.norm1, &mut self.attn.qkv));
        }
        out.push((&mut self.norm2, &mut self.mlp.fc1));
        out
    }

    /// NHWC in and out.
    pub fn forward(&self, x: Tensor<4>, hook: &dyn SiteHook) -> Tensor<4> {
        let scaled = |g: &Option<Param<Tensor<1>>>, y: Tensor<4>| match g {
            Some(g) => y * g.val().reshape([1, 1, 1, g.val().dims()[0]]),
            None => y,
        };
        let y = self.attn.forward(self.norm1.forward(x.clone(), hook), hook);
        let x = x + scaled(&self.gamma1, y);
        let y = self.mlp.forward(self.norm2.forward(x.clone(), hook), hook);
        x + scaled(&self.gamma2, y)
    }
}

/// The waterfall transformer module (`WTM_A`).
#[derive(Module, Debug)]
pub struct Waterfall {
    /// The conv before the cascaded blocks.
    pub conv1: ConvBn,
    /// Two NA layers per cascaded block: dilated, undilated.
    pub blocks: Vec<NatLayer>,
    /// Global branch: average pool, then this 1x1 conv-BN-ReLU, broadcast back.
    pub pool: ConvBn,
    /// The conv after them, on the concatenated branches.
    pub conv2: ConvBn,
    /// Projection of the low-level (first-stage) features.
    pub low: ConvBn,
    /// The convs fusing everything into the output features.
    pub last: Vec<ConvBn>,
}

/// Bilinear resize with aligned corners (`F.interpolate(..., align_corners=True)`).
///
/// Written as two matmuls with interpolation matrices (rows, then columns) rather than burn's
/// `interpolate`: the GPU (cubecl) backends have no bilinear backward, and this form trains on
/// every backend with the same result (`resize_matches_burn_interpolate` checks it).
pub fn resize_bilinear(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let [oh, ow] = size;
    if [h, w] == size {
        return x;
    }
    let device = x.device();
    // [n, c, h, w] -> [n, c, h, ow]: resize along the last axis.
    let x = x
        .reshape([n * c * h, w])
        .matmul(interpolation_matrix(w, ow, &device))
        .reshape([n, c, h, ow]);
    // Then along the rows, as the last axis of the transposed map.
    x.swap_dims(2, 3)
        .reshape([n * c * ow, h])
        .matmul(interpolation_matrix(h, oh, &device))
        .reshape([n, c, ow, oh])
        .swap_dims(2, 3)
}

/// `[len_in, len_out]` weights of 1-D linear interpolation with aligned corners: output `i`
/// samples input position `i * (len_in - 1) / (len_out - 1)`.
fn interpolation_matrix(len_in: usize, len_out: usize, device: &Device) -> Tensor<2> {
    let mut m = vec![0f32; len_in * len_out];
    for i in 0..len_out {
        let src = if len_out > 1 {
            i as f64 * (len_in - 1) as f64 / (len_out - 1) as f64
        } else {
            0.0
        };
        let lo = (src.floor() as usize).min(len_in - 1);
        let hi = (lo + 1).min(len_in - 1);
        let frac = (src - lo as f64) as f32;
        m[lo * len_out + i] += 1.0 - frac;
        m[hi * len_out + i] += frac;
    }
    Tensor::from_data(TensorData::new(m, [len_in, len_out]), device)
}

impl Waterfall {
    /// The four normed Swin stage outputs (NCHW) upsampled to the first one's size,
    /// concatenated and through `conv1`: the cascade's input (NCHW).
    pub fn fuse(&self, stages: Vec<Tensor<4>>, hook: &dyn SiteHook) -> Tensor<4> {
        let [_, _, h, w] = stages[0].dims();
        let ups: Vec<Tensor<4>> = stages
            .into_iter()
            .map(|x| resize_bilinear(x, [h, w]))
            .collect();
        self.conv1.forward(Tensor::cat(ups, 1), hook)
    }

    /// After the cascade: the global branch (`x`, the cascade's input, average-pooled, through
    /// `pool` and broadcast) joins the cascade's block outputs `feats` (NHWC) through `conv2`;
    /// the stride-4 ResNet features `low` through their 1x1 conv join that; then `last`.
    pub fn finish(
        &self,
        x: Tensor<4>,
        mut feats: Vec<Tensor<4>>,
        low: Tensor<4>,
        hook: &dyn SiteHook,
    ) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let pooled = x.mean_dim(3).mean_dim(2);
        let g = self.pool.forward(pooled, hook).expand([n, c, h, w]);
        feats.push(g.permute([0, 2, 3, 1]));
        let x = self
            .conv2
            .forward(Tensor::cat(feats, 3).permute([0, 3, 1, 2]), hook);
        let low = self.low.forward(low, hook);
        let mut x = Tensor::cat(vec![x, low], 1);
        for conv in &self.last {
            x = conv.forward(x, hook);
        }
        x
    }
}

/// WTPose: images `[n, 3, H, W]` to heatmaps `[n, K, H/4, W/4]`.
#[derive(Module, Debug)]
pub struct WtPose {
    /// The stem convs.
    pub stem: Vec<ConvBn>,
    /// The first ResNet stage.
    pub layer1: Vec<Bottleneck>,
    /// The conv between the ResNet stage and the Swin stages.
    pub conv3: ConvBn,
    /// The Swin stages.
    pub layers: Vec<SwinStage>,
    /// LayerNorm of each stage's output.
    pub norms: Vec<LayerNorm>,
    /// The waterfall transformer module.
    pub waterfall: Waterfall,
    /// The heatmap head.
    pub head: Conv2d,
    #[module(skip)]
    /// The configuration the model was built from.
    pub config: WtPoseConfig,
    #[module(skip)]
    /// Its sites, recorded while it was built.
    pub sites: Vec<SiteInfo>,
}

impl WtPose {
    /// Heatmaps `[n, K, H/4, W/4]` for normalized images, every site through `hook` (what
    /// [`Network::forward_with`] returns flattened).
    pub fn heatmaps_with(&self, images: Tensor<4>, hook: &dyn SiteHook) -> Tensor<4> {
        self.heatmaps_with_boundaries(images, hook, &mut |b| b)
    }

    /// The forward, block by block (see the [`Network`] implementation), the state at every
    /// boundary through `boundary`.
    fn heatmaps_with_boundaries(
        &self,
        images: Tensor<4>,
        hook: &dyn SiteHook,
        boundary: &mut dyn FnMut(Boundary) -> Boundary,
    ) -> Tensor<4> {
        let mut x = self.embed(images, hook);
        for piece in self.pieces() {
            x = self.run_block(piece, boundary(x), hook);
        }
        self.finish(boundary(x), hook)
    }

    /// The blocks in forward order: every Swin block over the stages, then every
    /// neighbourhood-attention layer of the waterfall.
    fn pieces(&self) -> Vec<Piece> {
        let mut out: Vec<Piece> = self
            .layers
            .iter()
            .enumerate()
            .flat_map(|(stage, l)| {
                (0..l.blocks.len()).map(move |block| Piece::Swin { stage, block })
            })
            .collect();
        out.extend((0..self.waterfall.blocks.len()).map(Piece::Na));
        out
    }

    /// Boundary 0: the stem, the ResNet stage and `conv3`; the stream is `conv3`'s map as
    /// tokens, and the ResNet features are carried for the waterfall.
    fn embed(&self, images: Tensor<4>, hook: &dyn SiteHook) -> Boundary {
        let mut x = images;
        for conv in &self.stem {
            x = conv.forward(x, hook);
        }
        for block in &self.layer1 {
            x = block.forward(x, hook);
        }
        let low = flat_nchw(x.clone());
        let t = self.conv3.forward(x, hook).permute([0, 2, 3, 1]);
        Boundary {
            stream: tokens(t),
            carried: vec![low],
        }
    }

    /// One block (see the [`Network`] implementation for what each carries).
    fn run_block(&self, piece: Piece, x: Boundary, hook: &dyn SiteHook) -> Boundary {
        let Boundary {
            stream,
            mut carried,
        } = x;
        match piece {
            Piece::Swin { stage, block } => {
                let layer = &self.layers[stage];
                // The first block of a stage reads the previous stage's map, before merging.
                let input = if block == 0 {
                    stage.saturating_sub(1)
                } else {
                    stage
                };
                let mut t = token_map(stream, self.config.stage_resolution(input));
                if block == 0
                    && let Some(down) = &layer.downsample
                {
                    t = down.forward(t, hook);
                }
                t = layer.blocks[block].forward(t, hook);
                if block + 1 == layer.blocks.len() {
                    let normed = self.norms[stage].forward(t.clone(), hook);
                    carried.push(flat_nchw(normed.permute([0, 3, 1, 2])));
                }
                Boundary {
                    stream: tokens(t),
                    carried,
                }
            }
            Piece::Na(j) => {
                let size = self.config.stage_resolution(0);
                let y = if j == 0 {
                    // [low, four stage outputs] -> [low, the cascade's input].
                    let stages = carried
                        .split_off(1)
                        .into_iter()
                        .enumerate()
                        .map(|(s, t)| nchw_map(t, self.config.stage_resolution(s)))
                        .collect();
                    let x = self.waterfall.fuse(stages, hook);
                    let y = x.clone().permute([0, 2, 3, 1]);
                    carried.push(flat_nchw(x));
                    y
                } else {
                    token_map(stream, size)
                };
                let y = self.waterfall.blocks[j].forward(y, hook);
                // Each cascaded block (a dilated and an undilated layer) hands on its output.
                if j % 2 == 1 {
                    carried.push(tokens(y.clone()));
                }
                Boundary {
                    stream: tokens(y),
                    carried,
                }
            }
        }
    }

    /// After the last block: the rest of the waterfall and the heatmap head.
    fn finish(&self, x: Boundary, hook: &dyn SiteHook) -> Tensor<4> {
        let size = self.config.stage_resolution(0);
        let mut carried = x.carried.into_iter();
        let (Some(low), Some(input)) = (carried.next(), carried.next()) else {
            unreachable!("the waterfall's first layer carries the ResNet features and its input")
        };
        let feats = carried.map(|t| token_map(t, size)).collect();
        let out = self
            .waterfall
            .finish(nchw_map(input, size), feats, nchw_map(low, size), hook);
        self.head.forward(out, hook)
    }

    /// The plain heatmaps.
    pub fn heatmaps(&self, images: Tensor<4>) -> Tensor<4> {
        self.heatmaps_with(images, &NoHook)
    }

    /// GFLOPs as the paper counts them (see [`MacCount::Paper`]).
    pub fn gflops(&self) -> f64 {
        self.config.gflops()
    }

    /// The inference model: every conv + BatchNorm merged into one conv with bias (uses the
    /// running statistics, i.e. the eval-mode BatchNorm).
    pub fn fold_batch_norm(mut self) -> Self {
        for unit in self.conv_bns_mut() {
            unit.fold();
        }
        self
    }

    /// Every conv + BatchNorm unit in forward order (stem, ResNet stage, `conv3`, the
    /// waterfall's convs): the one walk over them that folding, setting statistics and PTQ
    /// ([`Network::convs_mut`]) share.
    pub fn conv_bns_mut(&mut self) -> Vec<&mut ConvBn> {
        conv_bn_units(
            &mut self.stem,
            &mut self.layer1,
            &mut self.conv3,
            &mut self.waterfall,
        )
    }

    /// Saves every parameter and BatchNorm statistic (burn's names, e.g.
    /// `waterfall.blocks.0.attn.qkv.weight`) as safetensors, atomically.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut store = crate::weights::safetensors_writer();
        self.save_into(&mut store)
            .map_err(|e| Error::invalid("model", "<state dict>", e.to_string()))?;
        let bytes = store
            .get_bytes()
            .map_err(|e| Error::invalid("model", "<state dict>", e.to_string()))?;
        mixq_core::write_atomic(path, &bytes)
    }

    /// Loads a checkpoint written by [`Self::save_safetensors`] for the same config; every
    /// tensor must be present with the right shape.
    pub fn load_safetensors(mut self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut store = SafetensorsStore::from_file(path);
        let result = self.load_from(&mut store).map_err(|e| Error::Weights {
            path: path.into(),
            problems: vec![e.to_string()],
        })?;
        let mut problems: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
        problems.extend(
            result
                .missing
                .iter()
                .map(|(k, _)| format!("missing key '{k}'")),
        );
        problems.extend(
            result
                .unused
                .iter()
                .filter(|k| !k.ends_with("relative_position_index") && !k.ends_with("attn_mask"))
                .map(|k| format!("unexpected key '{k}'")),
        );
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(Error::Weights {
                path: path.into(),
                problems,
            })
        }
    }

    /// Sets every BatchNorm's running statistics (tests, and checkpoints trained elsewhere).
    pub fn map_batch_norms(mut self, f: &mut dyn FnMut(BatchNorm) -> BatchNorm) -> Self {
        for unit in self.conv_bns_mut() {
            unit.bn = unit.bn.take().map(&mut *f);
        }
        self
    }
}

/// A block of WTPose: a Swin block, or a neighbourhood-attention layer of the waterfall.
#[derive(Clone, Copy, Debug)]
enum Piece {
    Swin { stage: usize, block: usize },
    Na(usize),
}

/// NHWC map `[b, h, w, c]` as tokens `[b, h*w, c]`.
fn tokens(t: Tensor<4>) -> Tensor<3> {
    let [b, h, w, c] = t.dims();
    t.reshape([b, h * w, c])
}

/// Tokens `[b, h*w, c]` as the NHWC map.
fn token_map(t: Tensor<3>, [h, w]: [usize; 2]) -> Tensor<4> {
    let [b, _, c] = t.dims();
    t.reshape([b, h, w, c])
}

/// NCHW map `[b, c, h, w]` as `[b, c, h*w]`.
fn flat_nchw(t: Tensor<4>) -> Tensor<3> {
    let [b, c, h, w] = t.dims();
    t.reshape([b, c, h * w])
}

/// `[b, c, h*w]` as the NCHW map.
fn nchw_map(t: Tensor<3>, [h, w]: [usize; 2]) -> Tensor<4> {
    let [b, c, _] = t.dims();
    t.reshape([b, c, h, w])
}

/// WTPose's blocks are its Swin blocks over the four stages (a stage's patch merging runs at the
/// start of its first block, its output norm at the end of its last) and then the waterfall's
/// neighbourhood-attention layers (the first one starts with the fusion conv `wtm.conv1`). The
/// stream is the current token map (`[b, h*w, c]`); carried along are the stride-4 ResNet
/// features and each finished stage's normed output (`[b, c, h*w]`), then, in the waterfall,
/// the ResNet features, the cascade's input and each cascaded block's output, which the
/// global branch, `conv2` and the last convs read after the last block. The stem, the ResNet
/// stage and `conv3` come before boundary 0. The output is the heatmaps, flattened.
impl Network for WtPose {
    fn sites(&self) -> Vec<SiteInfo> {
        self.sites.clone()
    }

    fn output_kind(&self) -> OutputKind {
        let [height, width] = self.config.heatmap_size();
        OutputKind::Heatmaps {
            keypoints: self.config.num_keypoints,
            height,
            width,
        }
    }

    /// The heatmaps flattened to `[n, K * H/4 * W/4]`.
    fn forward_with_boundaries(
        &self,
        images: Tensor<4>,
        hook: &dyn SiteHook,
        boundary: &mut dyn FnMut(Boundary) -> Boundary,
    ) -> Tensor<2> {
        flat_heatmaps(self.heatmaps_with_boundaries(images, hook, boundary))
    }

    fn block_sites(&self) -> Vec<Vec<SiteId>> {
        self.pieces()
            .into_iter()
            .map(|piece| match piece {
                Piece::Swin { stage, block } => {
                    let layer = &self.layers[stage];
                    let mut ids = Vec::new();
                    if block == 0
                        && let Some(down) = &layer.downsample
                    {
                        ids.push(down.reduction.site.clone());
                    }
                    ids.extend(layer.blocks[block].site_ids());
                    ids
                }
                Piece::Na(j) => {
                    let mut ids = Vec::new();
                    if j == 0 {
                        ids.push(self.waterfall.conv1.conv.site.clone());
                    }
                    ids.extend(self.waterfall.blocks[j].site_ids());
                    ids
                }
            })
            .collect()
    }

    fn forward_block(&self, i: usize, x: Boundary, hook: &dyn SiteHook) -> Boundary {
        self.run_block(self.pieces()[i], x, hook)
    }

    fn forward_from(&self, point: usize, x: Boundary, hook: &dyn SiteHook) -> Tensor<2> {
        let x = self.pieces()[point..]
            .iter()
            .fold(x, |x, &piece| self.run_block(piece, x, hook));
        flat_heatmaps(self.finish(x, hook))
    }

    /// Every conv + BatchNorm unit's conv ([`WtPose::conv_bns_mut`]), then the head.
    fn convs_mut(&mut self) -> Vec<&mut Conv2d> {
        let mut out: Vec<&mut Conv2d> = conv_bn_units(
            &mut self.stem,
            &mut self.layer1,
            &mut self.conv3,
            &mut self.waterfall,
        )
        .into_iter()
        .map(|unit| &mut unit.conv)
        .collect();
        out.push(&mut self.head);
        out
    }

    /// The Swin stages' linears, then the waterfall's neighbourhood-attention layers'.
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out: Vec<&mut Linear> = self
            .layers
            .iter_mut()
            .flat_map(SwinStage::linears_mut)
            .collect();
        out.extend(
            self.waterfall
                .blocks
                .iter_mut()
                .flat_map(NatLayer::linears_mut),
        );
        out
    }

    /// The Swin stages' pairs and each neighbourhood-attention layer's. The stage output norms
    /// feed the waterfall's convs through a resize, so they are no pair.
    fn post_norm_pairs_mut(&mut self) -> Vec<(&mut LayerNorm, &mut Linear)> {
        let mut out: Vec<(&mut LayerNorm, &mut Linear)> = self
            .layers
            .iter_mut()
            .flat_map(SwinStage::post_norm_pairs_mut)
            .collect();
        out.extend(
            self.waterfall
                .blocks
                .iter_mut()
                .flat_map(NatLayer::post_norm_pairs_mut),
        );
        out
    }
}

/// Heatmaps `[n, k, h, w]` as `[n, k*h*w]`.
fn flat_heatmaps(heatmaps: Tensor<4>) -> Tensor<2> {
    let [n, k, h, w] = heatmaps.dims();
    heatmaps.reshape([n, k * h * w])
}

/// The conv + BatchNorm units of WTPose's parts in forward order (the fields it takes, so that
/// the head can be borrowed beside them).
fn conv_bn_units<'a>(
    stem: &'a mut [ConvBn],
    layer1: &'a mut [Bottleneck],
    conv3: &'a mut ConvBn,
    waterfall: &'a mut Waterfall,
) -> Vec<&'a mut ConvBn> {
    let mut out: Vec<&mut ConvBn> = stem.iter_mut().collect();
    for b in layer1 {
        out.extend([&mut b.conv1, &mut b.conv2, &mut b.conv3]);
        out.extend(b.downsample.as_mut());
    }
    out.push(conv3);
    let wf = waterfall;
    out.extend([&mut wf.conv1, &mut wf.pool, &mut wf.conv2, &mut wf.low]);
    out.extend(wf.last.iter_mut());
    out
}

/// Replaces a BatchNorm's running statistics.
pub fn with_running_stats(mut bn: BatchNorm, mean: Tensor<1>, var: Tensor<1>) -> BatchNorm {
    bn.running_mean = RunningState::new(mean);
    bn.running_var = RunningState::new(var);
    bn
}
