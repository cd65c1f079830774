//! Building blocks shared by every model family: the quantizable sites (linear, conv) and the
//! parameter-free pieces around them, named like their timm counterparts so that state dicts
//! load by path.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::module::linear;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor};
use std::cell::RefCell;

use mixq_core::{SiteId, SiteInfo, SiteKind};

use crate::hooks::{SiteHook, Slot, hook_nd};

/// Serde default of `in_chans`: RGB.
pub(crate) fn rgb() -> usize {
    3
}

/// Serde default of `mlp_ratio`, as in timm.
pub(crate) fn mlp_ratio_4() -> f64 {
    4.0
}

/// Builds a model's layers under module paths (`pp`, as candle's `VarBuilder`) and records each
/// site, with its parameters and MACs per image, as it is built. A family that builds its layers
/// in forward order gets its [`Network::sites`](crate::Network::sites) from the code that makes
/// them: the structure is spelled once.
///
/// ```
/// use std::cell::RefCell;
/// use burn::tensor::Device;
/// use mixq_vit_models::layers::{LinearConfig, SiteBuilder};
///
/// let device = Device::flex();
/// let sites = RefCell::new(Vec::new());
/// let b = SiteBuilder::new(&sites, &device);
/// // 16 tokens per image through a 32 -> 64 linear at `blocks.0.mlp.fc1`.
/// let fc1 = b.pp("blocks.0").rows(16).pp("mlp.fc1").linear(&LinearConfig::new(32, 64));
/// assert_eq!(fc1.site.as_str(), "blocks.0.mlp.fc1");
/// let site = &sites.borrow()[0];
/// assert_eq!((site.params, site.macs), (32 * 64, 16 * 32 * 64));
/// ```
#[derive(Clone)]
pub struct SiteBuilder<'a> {
    path: SiteId,
    rows: usize,
    sites: &'a RefCell<Vec<SiteInfo>>,
    device: &'a Device,
}

impl<'a> SiteBuilder<'a> {
    /// A builder at the model's root that records into `sites`; one row per image until
    /// [`SiteBuilder::rows`] says otherwise.
    pub fn new(sites: &'a RefCell<Vec<SiteInfo>>, device: &'a Device) -> Self {
        SiteBuilder {
            path: SiteId::new(""),
            rows: 1,
            sites,
            device,
        }
    }

    /// The builder of a child module (`pp("attn")` under `blocks.0` builds `blocks.0.attn`).
    pub fn pp(&self, name: &str) -> Self {
        SiteBuilder {
            path: self.path.join(name),
            ..self.clone()
        }
    }

    /// The same path, for layers that see `rows` rows (tokens, pixels) per image.
    pub fn rows(&self, rows: usize) -> Self {
        SiteBuilder {
            rows,
            ..self.clone()
        }
    }

    /// This module's path.
    pub fn path(&self) -> &SiteId {
        &self.path
    }

    /// Rows per image of the layers built here.
    pub fn rows_per_image(&self) -> usize {
        self.rows
    }

    /// The device parameters are made on.
    pub fn device(&self) -> &'a Device {
        self.device
    }

    fn record(&self, kind: SiteKind, params: usize, macs: usize) {
        self.sites.borrow_mut().push(SiteInfo {
            id: self.path.clone(),
            kind,
            params: params as u64,
            macs: macs as u64,
        });
    }

    /// The linear site at this path.
    pub fn linear(&self, config: &LinearConfig) -> Linear {
        let weights = config.d_input * config.d_output;
        self.record(SiteKind::Linear, weights, self.rows * weights);
        config.init(self.path.clone(), self.device)
    }

    /// The convolution site at this path, whose output has [`SiteBuilder::rows`] pixels per
    /// image.
    pub fn conv(&self, config: &Conv2dConfig) -> Conv2d {
        let weights = config.out_channels * config.in_channels * config.kernel * config.kernel;
        self.record(SiteKind::Conv, weights, self.rows * weights);
        config.init(self.path.clone(), self.device)
    }

    /// The matmul site at this path (`MatMulQk` or `MatMulAv`), `macs` per image.
    pub fn matmul(&self, kind: SiteKind, macs: usize) -> SiteId {
        self.record(kind, 0, macs);
        self.path.clone()
    }
}

/// A linear site: `y = x W + b`, with `W` stored `[in, out]` (burn's layout; timm's `[out, in]`
/// files are transposed on load by burn-store's PyTorch adapter, which keys on this type's
/// name).
#[derive(Module, Debug)]
pub struct Linear {
    /// `[in, out]` (timm's `[out, in]` transposed on load).
    pub weight: Param<Tensor<2>>,
    /// Added to the output when present.
    pub bias: Option<Param<Tensor<1>>>,
    /// The site's timm path, e.g. `blocks.0.attn.qkv`.
    #[module(skip)]
    pub site: SiteId,
}

/// Configuration of a [`Linear`] site.
#[derive(Config, Debug)]
pub struct LinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    #[config(default = true)]
    /// Whether the layer has a bias.
    pub bias: bool,
}

impl LinearConfig {
    /// Normal init (std 0.02) as timm's ViT uses; biases start at zero.
    pub fn init(&self, site: SiteId, device: &Device) -> Linear {
        Linear {
            site,
            weight: Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init_with(
                [self.d_input, self.d_output],
                Some(self.d_input),
                Some(self.d_output),
                device,
            ),
            bias: self
                .bias
                .then(|| Initializer::Zeros.init([self.d_output], device)),
        }
    }
}

impl Linear {
    /// `x W + b`, with the input and the weight passed through the site hook first.
    pub fn forward<const D: usize>(&self, x: Tensor<D>, hook: &dyn SiteHook) -> Tensor<D> {
        let bias = self.bias.as_ref().map(|b| b.val());
        if !hook.active() {
            return linear(x, self.weight.val(), bias);
        }
        let x = hook_nd(hook, &self.site, Slot::Input, x);
        let w = hook.apply(&self.site, Slot::Weight, self.weight.val());
        let y = hook.ops().linear(x, w, bias);
        hook_nd(hook, &self.site, Slot::Output, y)
    }

    /// `(in, out)` features.
    pub fn dims(&self) -> (usize, usize) {
        let [i, o] = self.weight.dims();
        (i, o)
    }
}

/// A 2-D convolution site (a patch embedding, a CNN layer), weight `[out, in, kh, kw]` as in PyTorch.
#[derive(Module, Debug)]
pub struct Conv2d {
    /// `[out, in, k, k]`.
    pub weight: Param<Tensor<4>>,
    /// Added per output channel when present.
    pub bias: Option<Param<Tensor<1>>>,
    #[module(skip)]
    /// Step of the kernel, in pixels.
    pub stride: usize,
    #[module(skip)]
    /// Zero padding on each side, in pixels.
    pub padding: usize,
    #[module(skip)]
    /// The site this conv is (its module path).
    pub site: SiteId,
}

/// Configuration of a [`Conv2d`] site.
#[derive(Config, Debug)]
pub struct Conv2dConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Side of the square kernel.
    pub kernel: usize,
    /// Step of the kernel, in pixels.
    pub stride: usize,
    #[config(default = 0)]
    /// Zero padding on each side, in pixels.
    pub padding: usize,
    /// Whether the conv has a bias (convs followed by a BatchNorm have none).
    #[config(default = true)]
    pub bias: bool,
}

impl Conv2dConfig {
    /// A conv with random weights at site `site`.
    pub fn init(&self, site: SiteId, device: &Device) -> Conv2d {
        let fan_in = self.in_channels * self.kernel * self.kernel;
        Conv2d {
            weight: Initializer::KaimingUniform {
                gain: 1.0 / 3f64.sqrt(),
                fan_out_only: false,
            }
            .init_with(
                [
                    self.out_channels,
                    self.in_channels,
                    self.kernel,
                    self.kernel,
                ],
                Some(fan_in),
                None,
                device,
            ),
            bias: self
                .bias
                .then(|| Initializer::Zeros.init([self.out_channels], device)),
            stride: self.stride,
            padding: self.padding,
            site,
        }
    }
}

impl Conv2d {
    /// The convolution, with the input and the weight passed through the site hook first.
    pub fn forward(&self, x: Tensor<4>, hook: &dyn SiteHook) -> Tensor<4> {
        let mut weight = self.weight.val();
        let x = hook_nd(hook, &self.site, Slot::Input, x);
        if hook.active() {
            let [o, i, kh, kw] = weight.dims();
            weight = hook
                .apply(&self.site, Slot::Weight, weight.reshape([o, i * kh * kw]))
                .reshape([o, i, kh, kw]);
        }
        let options = ConvOptions::new(
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        );
        let bias = self.bias.as_ref().map(|b| b.val());
        let y = hook.ops().conv2d(&self.site, x, weight, bias, options);
        hook_nd(hook, &self.site, Slot::Output, y)
    }

    /// `(in, out, kernel)`.
    pub fn dims(&self) -> (usize, usize, usize) {
        let [o, i, k, _] = self.weight.dims();
        (i, o, k)
    }
}

/// LayerNorm over the last axis. `gamma`/`beta` are burn's names; timm's `weight`/`bias` map to
/// them on load.
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// Scale per channel.
    pub gamma: Param<Tensor<1>>,
    /// Shift per channel.
    pub beta: Param<Tensor<1>>,
    #[module(skip)]
    /// Added to the variance before the square root.
    pub eps: f64,
}

impl LayerNorm {
    /// A LayerNorm over `dim` features (gamma 1, beta 0).
    pub fn new(dim: usize, eps: f64, device: &Device) -> Self {
        LayerNorm {
            gamma: Initializer::Ones.init([dim], device),
            beta: Initializer::Zeros.init([dim], device),
            eps,
        }
    }

    /// LayerNorm, or its LRP rule when `hook` is in LRP mode.
    pub fn forward<const D: usize>(&self, x: Tensor<D>, hook: &dyn SiteHook) -> Tensor<D> {
        hook.ops()
            .layer_norm(x, self.gamma.val(), self.beta.val(), self.eps)
    }
}

/// timm's `LayerScale`: a learned per-channel scale on a residual branch, `x * gamma` (CaiT,
/// DeiT-III, DINOv2). A plain elementwise product, so LRP passes relevance through it as is.
#[derive(Module, Debug)]
pub struct LayerScale {
    /// Scale per channel.
    pub gamma: Param<Tensor<1>>,
}

impl LayerScale {
    /// Every channel scaled by `init` (timm's `init_values`).
    pub fn new(dim: usize, init: f64, device: &Device) -> Self {
        LayerScale {
            gamma: Initializer::Constant { value: init }.init([dim], device),
        }
    }

    /// `x * gamma` over the last axis of `[b, n, dim]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        x * self.gamma.val().unsqueeze::<3>()
    }
}

/// The transformer MLP: `fc2(gelu(fc1(x)))` with the exact (erf) GELU, as timm's `Mlp`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// The expanding linear.
    pub fc1: Linear,
    /// The contracting linear.
    pub fc2: Linear,
}

impl Mlp {
    /// Its sites in forward order: `fc1`, `fc2`.
    pub fn site_ids(&self) -> [SiteId; 2] {
        [self.fc1.site.clone(), self.fc2.site.clone()]
    }

    /// `path` is the MLP's module path (`blocks.0.mlp`).
    pub fn new(path: &SiteId, dim: usize, hidden: usize, device: &Device) -> Self {
        let unrecorded = RefCell::default();
        Self::build(
            &SiteBuilder::new(&unrecorded, device).pp(path.as_str()),
            dim,
            hidden,
        )
    }

    /// The MLP at `b`'s path, its two sites recorded.
    pub fn build(b: &SiteBuilder, dim: usize, hidden: usize) -> Self {
        Mlp {
            fc1: b.pp("fc1").linear(&LinearConfig::new(dim, hidden)),
            fc2: b.pp("fc2").linear(&LinearConfig::new(hidden, dim)),
        }
    }

    /// `fc2(gelu(fc1(x)))`, every linear through the site hook.
    pub fn forward<const D: usize>(&self, x: Tensor<D>, hook: &dyn SiteHook) -> Tensor<D> {
        let h = self.fc1.forward(x, hook);
        let h = hook.ops().gelu(h);
        self.fc2.forward(h, hook)
    }
}

/// Splits a fused `qkv` projection `[b, n, 3*h*d]` into `q, k, v`, each `[b, h, n, d]`,
/// exactly as timm's `reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)`.
pub fn split_qkv(qkv: Tensor<3>, heads: usize) -> [Tensor<4>; 3] {
    let [b, n, c3] = qkv.dims();
    let d = c3 / (3 * heads);
    let qkv = qkv.reshape([b, n, 3, heads, d]).permute([2, 0, 3, 1, 4]);
    let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([b, heads, n, d]);
    [part(0), part(1), part(2)]
}

/// Merges heads back: `[b, h, n, d]` -> `[b, n, h*d]`.
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [b, h, n, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, n, h * d])
}
