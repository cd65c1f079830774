//! (Dilated) neighbourhood attention as NATTEN's `NeighborhoodAttention2D`, vectorised in burn.
//!
//! Each query at `(y, x)` attends to a `kernel x kernel` set of keys taken with stride
//! `dilation` along each axis, plus a learned relative-position bias of `(2k-1)^2` entries per
//! head (`rpb`, `[heads, 2k-1, 2k-1]`).
//!
//! # Edge semantics (NATTEN's `get_window_start` / `get_pb_start`)
//!
//! Along one axis of length `L`, positions split into `dilation` groups by `i % dilation`
//! (group `g` holds `g, g+d, g+2d, ...`: `n_g = ceil((L-g)/d)` members). A query that is
//! member `m` of its group attends to the `kernel` consecutive members
//! `s, s+1, ..., s+k-1` with `s = clamp(m - k/2, 0, n_g - k)`: centred where possible, and
//! *shifted* to stay inside the map at the edges (never zero-padded). The key is therefore
//! always in the query's own dilation group. The bias entry for a (query, key) pair is indexed by
//! the group-unit offset `(s + j) - m + (k - 1)` per axis, so a shifted window reads the bias of
//! its true relative position. This is exactly NATTEN's piecewise definition (the test
//! `natten_window_formula` in `tests/wtpose.rs` checks it against NATTEN's formula).
//!
//! The clamp needs `n_g >= k` for every group, i.e. `L >= k * d`. Like NATTEN's module, a map
//! smaller than `k * d` along an axis is zero-padded at the bottom/right to `k * d` *before*
//! `qkv` (so padded positions are real keys whose `q/k/v` equal the `qkv` bias), and the output
//! is cropped back.

use std::cell::RefCell;

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::ops::PadMode;
use burn::tensor::{Device, Int, Tensor, TensorData};
use mixq_core::{SiteId, SiteKind};

use crate::hooks::{SiteHook, Slot, hook_nd};
use crate::layers::{Linear, LinearConfig, SiteBuilder, merge_heads, split_qkv};

/// NATTEN's window along one axis: for each position `i < len`, the first key position and the
/// first bias offset (both for neighbour `j = 0`; neighbour `j` is at `start + j * dilation`
/// with bias offset `bias + j`). Requires `len >= kernel * dilation`.
pub fn axis_windows(len: usize, kernel: usize, dilation: usize) -> Vec<(usize, usize)> {
    assert!(
        kernel % 2 == 1 && dilation >= 1 && len >= kernel * dilation,
        "neighbourhood needs an odd kernel and len {len} >= kernel {kernel} * dilation {dilation}"
    );
    (0..len)
        .map(|i| {
            let (g, m) = (i % dilation, i / dilation);
            let members = (len - g).div_ceil(dilation);
            let s = m.saturating_sub(kernel / 2).min(members - kernel);
            (s * dilation + g, s + kernel - 1 - m)
        })
        .collect()
}

/// Flat key index (into `h * w`) and bias index (into `(2k-1)^2`) of every (query, neighbour)
/// pair, query-major, neighbours row-major: two vectors of `h * w * k * k`.
pub fn neighbourhood_indices(
    h: usize,
    w: usize,
    kernel: usize,
    dilation: usize,
) -> (Vec<i64>, Vec<i64>) {
    let (rows, cols) = (
        axis_windows(h, kernel, dilation),
        axis_windows(w, kernel, dilation),
    );
    let t = 2 * kernel - 1;
    let n = h * w * kernel * kernel;
    let (mut keys, mut bias) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for &(ys, yb) in &rows {
        for &(xs, xb) in &cols {
            for a in 0..kernel {
                for b in 0..kernel {
                    keys.push(((ys + a * dilation) * w + xs + b * dilation) as i64);
                    bias.push(((yb + a) * t + xb + b) as i64);
                }
            }
        }
    }
    (keys, bias)
}

/// The `matmul_qk` site of neighbourhood attention: `q` `[b, n, 1, d]` against each query's own
/// keys `[b, n, k*k, d]`, giving `[b, n, 1, k*k]`. A broadcast product and a sum (one tiny
/// matmul per query is far slower on CPU, forward and backward); LRP's rules take the matmul.
pub fn neighbour_scores(
    q: Tensor<4>,
    k: Tensor<4>,
    site: &SiteId,
    hook: &dyn SiteHook,
) -> Tensor<4> {
    let q = hook_nd(hook, site, Slot::OperandA, q);
    let k = hook_nd(hook, site, Slot::OperandB, k);
    let scores = hook.ops().neighbour_scores(q, k);
    hook_nd(hook, site, Slot::Output, scores)
}

/// The `matmul_av` site: probabilities `[b, n, 1, k*k]` times each query's values
/// `[b, n, k*k, d]`, giving `[b, n, 1, d]`.
pub fn neighbour_values(
    p: Tensor<4>,
    v: Tensor<4>,
    site: &SiteId,
    hook: &dyn SiteHook,
) -> Tensor<4> {
    let p = hook_nd(hook, site, Slot::OperandA, p);
    let v = hook_nd(hook, site, Slot::OperandB, v);
    let out = hook.ops().neighbour_values(p, v);
    hook_nd(hook, site, Slot::Output, out)
}

/// NATTEN's `NeighborhoodAttention2D`: `qkv`, neighbourhood attention with relative-position
/// bias, `proj`. Input and output are NHWC.
#[derive(Module, Debug)]
pub struct NeighborhoodAttention {
    /// Query, key and value projection.
    pub qkv: Linear,
    /// Output projection.
    pub proj: Linear,
    /// Relative-position bias, `[heads, 2k-1, 2k-1]` (NATTEN's `rpb`).
    pub rpb: Param<Tensor<3>>,
    #[module(skip)]
    /// Attention heads.
    pub num_heads: usize,
    #[module(skip)]
    /// Side of the square neighbourhood.
    pub kernel: usize,
    #[module(skip)]
    /// Spacing between the neighbourhood's pixels.
    pub dilation: usize,
    #[module(skip)]
    /// The `q kᵀ` site.
    pub matmul_qk: SiteId,
    #[module(skip)]
    /// The `attn v` site.
    pub matmul_av: SiteId,
}

impl NeighborhoodAttention {
    /// `path` is the module path (`wtm.blocks.0.attn`); sites `qkv`, `proj`, `matmul_qk`,
    /// `matmul_av` below it.
    pub fn new(
        path: &SiteId,
        dim: usize,
        heads: usize,
        kernel: usize,
        dilation: usize,
        device: &Device,
    ) -> Self {
        let unrecorded = RefCell::default();
        let b = SiteBuilder::new(&unrecorded, device).pp(path.as_str());
        Self::build(&b, 1, dim, heads, kernel, dilation)
    }

    /// The attention at `b`'s path, its sites recorded: `qkv` and the matmuls on `padded` rows
    /// per image (the map padded to the neighbourhood span), `proj` on `b`'s rows.
    pub fn build(
        b: &SiteBuilder,
        padded: usize,
        dim: usize,
        heads: usize,
        kernel: usize,
        dilation: usize,
    ) -> Self {
        assert!(
            dim.is_multiple_of(heads),
            "heads {heads} must divide dim {dim}"
        );
        let t = 2 * kernel - 1;
        let wide = b.rows(padded);
        // Each query against its k x k keys: heads x k*k x head_dim = k*k x dim.
        let matmul_macs = padded * kernel * kernel * dim;
        let qkv = wide.pp("qkv").linear(&LinearConfig::new(dim, 3 * dim));
        let matmul_qk = wide.pp("matmul_qk").matmul(SiteKind::MatMulQk, matmul_macs);
        let matmul_av = wide.pp("matmul_av").matmul(SiteKind::MatMulAv, matmul_macs);
        NeighborhoodAttention {
            qkv,
            proj: b.pp("proj").linear(&LinearConfig::new(dim, dim)),
            rpb: Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([heads, t, t], b.device()),
            num_heads: heads,
            kernel,
            dilation,
            matmul_qk,
            matmul_av,
        }
    }

    /// The side lengths attention runs at: each side padded up to `kernel * dilation`.
    pub fn padded(&self, h: usize, w: usize) -> (usize, usize) {
        let span = self.kernel * self.dilation;
        (h.max(span), w.max(span))
    }

    /// `x`: `[b, h, w, c]` -> `[b, h, w, c]`.
    pub fn forward(&self, x: Tensor<4>, hook: &dyn SiteHook) -> Tensor<4> {
        let [b, h, w, c] = x.dims();
        let (hp, wp) = self.padded(h, w);
        let x = if (hp, wp) != (h, w) {
            x.pad([(0, hp - h), (0, wp - w), (0, 0)], PadMode::Constant(0.0))
        } else {
            x
        };
        let n = hp * wp;
        let heads = self.num_heads;
        let kk = self.kernel * self.kernel;
        let device = x.device();
        let [q, k, v] = split_qkv(self.qkv.forward(x.reshape([b, n, c]), hook), heads);
        let d = c / heads;
        let q = q
            .mul_scalar((d as f64).powf(-0.5))
            .reshape([b * heads, n, 1, d]);
        let (keys, bias) = neighbourhood_indices(hp, wp, self.kernel, self.dilation);
        let keys = Tensor::<1, Int>::from_data(TensorData::new(keys, [n * kk]), &device);
        let bias = Tensor::<1, Int>::from_data(TensorData::new(bias, [n * kk]), &device);
        let gather = |t: Tensor<4>| {
            t.reshape([b * heads, n, d])
                .select(1, keys.clone())
                .reshape([b * heads, n, kk, d])
        };
        let scores = neighbour_scores(q, gather(k), &self.matmul_qk, hook);
        let t = 2 * self.kernel - 1;
        let rpb = self
            .rpb
            .val()
            .reshape([heads, t * t])
            .select(1, bias)
            .reshape([1, heads, n, kk]);
        let scores = scores.reshape([b, heads, n, kk]) + rpb;
        let probs = hook.ops().softmax(scores, 3).reshape([b * heads, n, 1, kk]);
        let out = neighbour_values(probs, gather(v), &self.matmul_av, hook);
        let out = merge_heads(out.reshape([b, heads, n, d])).reshape([b, hp, wp, c]);
        let out = if (hp, wp) != (h, w) {
            out.slice([0..b, 0..h, 0..w, 0..c])
        } else {
            out
        };
        self.proj.forward(out, hook)
    }
}
