//! WTPose: neighbourhood attention against naive loops over NATTEN's window definition,
//! shapes of every variant, parameter/GFLOP counts against the paper, BatchNorm folding, and
//! the site list against what a forward pass actually routes through the hook.

use std::sync::Mutex;

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor};
use mixq_vit_models::neighborhood::{NeighborhoodAttention, axis_windows};
use mixq_vit_models::wtpose::with_running_stats;
use mixq_vit_models::{
    MacCount, Network, SiteHook, SiteId, SiteKind, Slot, WTPOSE_VARIANTS, WtPoseConfig,
};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

/// NATTEN's `get_window_start` (CPU kernels), transcribed as a reference.
fn natten_window_start(i: i64, len: i64, k: i64, d: i64) -> i64 {
    let ns = k / 2;
    if d <= 1 {
        return (i - ns).max(0) + if i + ns >= len { len - i - ns - 1 } else { 0 };
    }
    if i - ns * d < 0 {
        return i % d;
    }
    if i + ns * d >= len {
        let imodd = i % d;
        let a = (len / d) * d;
        let b = len - a;
        return if imodd < b {
            len - b + imodd - 2 * ns * d
        } else {
            a + imodd - k * d
        };
    }
    i - ns * d
}

/// NATTEN's `get_pb_start`.
fn natten_pb_start(i: i64, len: i64, k: i64, d: i64) -> i64 {
    let ns = k / 2;
    if d <= 1 {
        return ns
            + if i < ns { ns - i } else { 0 }
            + if i + ns >= len { len - i - 1 - ns } else { 0 };
    }
    if i - ns * d < 0 {
        return k - 1 - i / d;
    }
    if i + ns * d >= len {
        return (len - i - 1) / d;
    }
    ns
}

#[test]
fn natten_window_formula() {
    // Hand-checked: length 10, kernel 3, dilation 2. Position 0 (group 0,2,4,6,8) is shifted
    // right to keys 0,2,4; position 9 (group 1,3,5,7,9) is shifted left to keys 5,7,9; the bias
    // offset of key j is (key rank - query rank) + k - 1.
    let w = axis_windows(10, 3, 2);
    assert_eq!(w[0], (0, 2));
    assert_eq!(w[9], (5, 0));
    assert_eq!(w[4], (2, 1), "interior: centred");
    let mut checked = 0;
    for k in [3usize, 5, 7] {
        for d in 1..=5usize {
            for len in k * d..k * d + 13 {
                for (i, &(start, pb)) in axis_windows(len, k, d).iter().enumerate() {
                    let (i, l, kk, dd) = (i as i64, len as i64, k as i64, d as i64);
                    assert_eq!(
                        (start as i64, pb as i64),
                        (
                            natten_window_start(i, l, kk, dd),
                            natten_pb_start(i, l, kk, dd)
                        ),
                        "len {len} kernel {k} dilation {d} index {i}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 1000);
}

/// Host-side reference of NATTEN's `NeighborhoodAttention2D` forward, loop by loop.
#[allow(clippy::too_many_arguments)]
fn naive_na(
    x: &[f32],
    [b, h, w, c]: [usize; 4],
    heads: usize,
    k: usize,
    dil: usize,
    qkv_w: &[f32],
    qkv_b: &[f32],
    proj_w: &[f32],
    proj_b: &[f32],
    rpb: &[f32],
) -> Vec<f32> {
    let span = k * dil;
    let (hp, wp) = (h.max(span), w.max(span));
    let hd = c / heads;
    let t = 2 * k - 1;
    // qkv on the zero-padded map: [b, hp, wp, 3c], padded rows get the bias only.
    let mut qkv = vec![0f32; b * hp * wp * 3 * c];
    for n in 0..b {
        for y in 0..hp {
            for xx in 0..wp {
                let row = &mut qkv[((n * hp + y) * wp + xx) * 3 * c..][..3 * c];
                for o in 0..3 * c {
                    let mut acc = qkv_b[o];
                    if y < h && xx < w {
                        for i in 0..c {
                            acc += x[((n * h + y) * w + xx) * c + i] * qkv_w[i * 3 * c + o];
                        }
                    }
                    row[o] = acc;
                }
            }
        }
    }
    let at = |n: usize, y: usize, xx: usize, part: usize, head: usize, j: usize| {
        qkv[((n * hp + y) * wp + xx) * 3 * c + part * c + head * hd + j]
    };
    let scale = (hd as f32).powf(-0.5);
    let mut attn_out = vec![0f32; b * h * w * c];
    for n in 0..b {
        for head in 0..heads {
            for y in 0..h {
                for xx in 0..w {
                    let (ys, yb) = (
                        natten_window_start(y as i64, hp as i64, k as i64, dil as i64) as usize,
                        natten_pb_start(y as i64, hp as i64, k as i64, dil as i64) as usize,
                    );
                    let (xs, xb) = (
                        natten_window_start(xx as i64, wp as i64, k as i64, dil as i64) as usize,
                        natten_pb_start(xx as i64, wp as i64, k as i64, dil as i64) as usize,
                    );
                    let mut scores = Vec::with_capacity(k * k);
                    for a in 0..k {
                        for bb in 0..k {
                            let (ky, kx) = (ys + a * dil, xs + bb * dil);
                            let mut s = 0f32;
                            for j in 0..hd {
                                s += at(n, y, xx, 0, head, j) * scale * at(n, ky, kx, 1, head, j);
                            }
                            s += rpb[(head * t + yb + a) * t + xb + bb];
                            scores.push((s, ky, kx));
                        }
                    }
                    let max = scores.iter().map(|s| s.0).fold(f32::MIN, f32::max);
                    let sum: f32 = scores.iter().map(|s| (s.0 - max).exp()).sum();
                    for j in 0..hd {
                        let mut acc = 0f32;
                        for &(s, ky, kx) in &scores {
                            acc += (s - max).exp() / sum * at(n, ky, kx, 2, head, j);
                        }
                        attn_out[((n * h + y) * w + xx) * c + head * hd + j] = acc;
                    }
                }
            }
        }
    }
    let mut out = vec![0f32; b * h * w * c];
    for r in 0..b * h * w {
        for o in 0..c {
            let mut acc = proj_b[o];
            for i in 0..c {
                acc += attn_out[r * c + i] * proj_w[i * c + o];
            }
            out[r * c + o] = acc;
        }
    }
    out
}

#[test]
fn neighbourhood_attention_matches_naive_loops() {
    let device = Device::flex();
    device.seed(7);
    let normal = |std: f64| Distribution::Normal(0.0, std);
    // (batch, h, w, channels, heads, kernel, dilation): odd sizes, maps smaller than
    // kernel * dilation on one or both sides (padded), exactly kernel * dilation, and sizes
    // leaving dilation groups of unequal length.
    let mut cases = vec![
        (2, 9, 11, 8, 2, 3, 2),
        (1, 5, 13, 6, 3, 3, 3),
        (1, 7, 7, 4, 1, 7, 1),
        (2, 4, 3, 4, 2, 5, 1),
        (1, 14, 10, 8, 2, 5, 2),
        (1, 17, 16, 4, 1, 3, 4),
        (1, 6, 20, 4, 2, 7, 2),
    ];
    // A few more drawn at random (xorshift, fixed seed).
    let mut s = 0x9e3779b97f4a7c15u64;
    let mut next = |m: usize| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % m as u64) as usize
    };
    for _ in 0..6 {
        let k = [3, 5, 7][next(3)];
        let d = 1 + next(4);
        let heads = 1 + next(3);
        cases.push((1, 2 + next(24), 2 + next(24), 2 * heads, heads, k, d));
    }
    for (b, h, w, c, heads, k, d) in cases {
        let mut na = NeighborhoodAttention::new(&SiteId::new("na"), c, heads, k, d, &device);
        na.qkv.weight = Param::from_tensor(Tensor::random([c, 3 * c], normal(0.5), &device));
        na.qkv.bias = Some(Param::from_tensor(Tensor::random(
            [3 * c],
            normal(0.5),
            &device,
        )));
        na.proj.weight = Param::from_tensor(Tensor::random([c, c], normal(0.5), &device));
        na.proj.bias = Some(Param::from_tensor(Tensor::random(
            [c],
            normal(0.5),
            &device,
        )));
        na.rpb = Param::from_tensor(Tensor::random(
            [heads, 2 * k - 1, 2 * k - 1],
            normal(1.0),
            &device,
        ));
        let x = Tensor::<4>::random([b, h, w, c], normal(1.0), &device);
        let got = values(na.forward(x.clone(), &mixq_vit_models::NoHook));
        let want = naive_na(
            &values(x),
            [b, h, w, c],
            heads,
            k,
            d,
            &values(na.qkv.weight.val()),
            &values(na.qkv.bias.as_ref().unwrap().val()),
            &values(na.proj.weight.val()),
            &values(na.proj.bias.as_ref().unwrap().val()),
            &values(na.rpb.val()),
        );
        assert_eq!(got.len(), want.len());
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            err < 1e-4,
            "b{b} {h}x{w} c{c} heads{heads} k{k} d{d}: max error {err}"
        );
    }
}

#[test]
fn parameters_and_gflops_against_the_paper() {
    // The paper (256x192): WTPose-T 30.0 M / 12.8 GFLOPs, WTPose-B 89.3 M / 25.6 G. Its
    // GFLOPs are mmengine get_flops figures (MACs; see MacCount::Paper), which also count
    // norms, activations and resizes (~0.1 G) that we leave out: hence 2% on GFLOPs, while the
    // parameter counts agree to the paper's rounding.
    for (name, paper) in WTPOSE_VARIANTS {
        let cfg = WtPoseConfig::variant(name).unwrap();
        let params = cfg.num_params() as f64 / 1e6;
        let gflops = cfg.gflops();
        let all = cfg.macs(MacCount::All) as f64 / 1e9;
        let weights = cfg.macs(MacCount::Weights) as f64 / 1e9;
        println!(
            "{name}: {params:.3} M params, {gflops:.3} GFLOPs (convs+linears {weights:.3}, \
             with NA matmuls {all:.3}); paper {paper:?}"
        );
        assert!(weights < gflops && gflops < all, "{name}");
        if let Some((p_params, p_gflops)) = paper {
            assert!(
                (params - p_params).abs() < 0.05,
                "{name}: {params:.3} M vs paper {p_params} M"
            );
            assert!(
                (gflops - p_gflops).abs() / p_gflops < 0.02,
                "{name}: {gflops:.3} GFLOPs vs paper {p_gflops}"
            );
        }
    }
    // The analytic count is the module's count. burn's num_params also visits BatchNorm's
    // running mean and variance (buffers, not parameters, in PyTorch's count): add them.
    let device = Device::flex();
    for name in ["wtpose-tiny", "wtpose-t"] {
        let cfg = WtPoseConfig::variant(name).unwrap();
        let mut running = 0u64;
        let model = cfg.init(&device).unwrap().map_batch_norms(&mut |bn| {
            running += 2 * bn.gamma.dims()[0] as u64;
            bn
        });
        assert!(running > 0);
        assert_eq!(
            model.num_params() as u64,
            cfg.num_params() + running,
            "{name}"
        );
    }
}

#[test]
fn every_variant_gives_stride_4_heatmaps() {
    let device = Device::flex();
    for (name, _) in WTPOSE_VARIANTS {
        let cfg = WtPoseConfig::variant(name).unwrap();
        let [h, w] = cfg.input_size;
        assert_eq!(cfg.heatmap_size(), [h / 4, w / 4], "{name}");
    }
    assert_eq!(
        WtPoseConfig::variant("wtpose-t-384x288")
            .unwrap()
            .input_size,
        [384, 288]
    );
    assert!(WtPoseConfig::variant("wtpose-xl").is_err());
    // A real forward of the tiny model and of WTPose-T at 256x192.
    for (name, batch) in [("wtpose-tiny", 2), ("wtpose-t", 1)] {
        let cfg = WtPoseConfig::variant(name).unwrap();
        let model = cfg.init(&device).unwrap();
        let [h, w] = cfg.input_size;
        let x = Tensor::<4>::random([batch, 3, h, w], Distribution::Normal(0.0, 1.0), &device);
        let y = model.heatmaps(x);
        assert_eq!(y.dims(), [batch, 17, h / 4, w / 4], "{name}");
        assert!(values(y).iter().all(|v| v.is_finite()), "{name}");
    }
}

#[test]
fn folded_batch_norm_equals_eval_forward() {
    let device = Device::flex();
    device.seed(3);
    let cfg = WtPoseConfig::tiny();
    let mut draws = 0;
    let model = cfg.init(&device).unwrap().map_batch_norms(&mut |mut bn| {
        let [c] = bn.gamma.dims();
        draws += 1;
        bn.gamma = Param::from_tensor(Tensor::random(
            [c],
            Distribution::Uniform(0.5, 1.5),
            &device,
        ));
        bn.beta = Param::from_tensor(Tensor::random([c], Distribution::Normal(0.0, 0.3), &device));
        with_running_stats(
            bn,
            Tensor::random([c], Distribution::Normal(0.0, 0.3), &device),
            Tensor::random([c], Distribution::Uniform(0.5, 2.0), &device),
        )
    });
    assert!(draws > 10);
    let x = Tensor::<4>::random([2, 3, 128, 96], Distribution::Normal(0.0, 1.0), &device);
    // A plain (non-autodiff) device: BatchNorm uses its running statistics.
    let want = model.heatmaps(x.clone());
    let folded = model.fold_batch_norm();
    assert!(
        folded
            .stem
            .iter()
            .all(|c| c.bn.is_none() && c.conv.bias.is_some())
    );
    assert!(folded.waterfall.last.iter().all(|c| c.bn.is_none()));
    let got = folded.heatmaps(x);
    let scale = want.clone().abs().max().into_scalar::<f32>().max(1.0);
    let err = (got - want).abs().max().into_scalar::<f32>();
    assert!(
        err <= 1e-5 * scale,
        "max error {err} (output scale {scale})"
    );
}

#[test]
fn folding_changes_nothing_but_running_stats_matter() {
    // Guards the test above: with non-trivial statistics the model output does depend on
    // them (so equality after folding is not vacuous).
    let device = Device::flex();
    device.seed(4);
    let model = WtPoseConfig::tiny().init(&device).unwrap();
    let x = Tensor::<4>::random([1, 3, 128, 96], Distribution::Normal(0.0, 1.0), &device);
    let before = model.heatmaps(x.clone());
    let shifted = model.map_batch_norms(&mut |bn| {
        let [c] = bn.gamma.dims();
        with_running_stats(
            bn,
            Tensor::full([c], 0.5, &device),
            Tensor::full([c], 2.0, &device),
        )
    });
    let after = shifted.heatmaps(x);
    let diff = (before - after).abs().max().into_scalar::<f32>();
    assert!(diff > 1e-3, "running statistics had no effect ({diff})");
}

/// Records, per site, the dims each slot was seen with.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(SiteId, Slot, [usize; 2])>>,
}

impl SiteHook for Recorder {
    fn apply(&self, site: &SiteId, slot: Slot, x: Tensor<2>) -> Tensor<2> {
        self.seen
            .lock()
            .unwrap()
            .push((site.clone(), slot, x.dims()));
        x
    }
}

#[test]
fn every_linear_and_conv_is_a_listed_site() {
    let device = Device::flex();
    let cfg = WtPoseConfig::tiny();
    let model = cfg.init(&device).unwrap();
    let x = Tensor::<4>::random([2, 3, 128, 96], Distribution::Normal(0.0, 1.0), &device);
    let rec = Recorder::default();
    let plain = model.heatmaps(x.clone());
    let hooked = model.heatmaps_with(x.clone(), &rec);
    assert!((plain - hooked).abs().max().into_scalar::<f32>() < 1e-5);
    // Order, parameters and MACs per image against what the forward passes through the hook.
    mixq_vit_models::testing::check_sites(&model, x).unwrap();
    let sites = model.sites();
    let count = |k: SiteKind| sites.iter().filter(|s| s.kind == k).count();
    // stem 2 + bottleneck 4 + conv3 + waterfall 6 + head; Swin and NA linears per block.
    assert_eq!(count(SiteKind::Conv), 2 + 4 * cfg.res_blocks + 1 + 6 + 1);
    let blocks: usize = cfg.depths.iter().sum::<usize>() + 2 * cfg.wtm_dilations.len();
    assert_eq!(count(SiteKind::Linear), 4 * blocks + 3);
    assert_eq!(count(SiteKind::MatMulQk), blocks);
}

/// WTPose through the model interface: its output is the heatmaps flattened, declared as such;
/// the linears and norm -> linear pairs it hands to PTQ are its Linear sites in forward order;
/// its blocks (Swin blocks, then the waterfall's NA layers, carrying the stage outputs along)
/// step exactly from boundary to boundary, and every site after the stem resumes from one.
#[test]
fn wtpose_is_a_network_with_heatmap_output() {
    let device = Device::flex();
    let cfg = WtPoseConfig::tiny();
    // Every BatchNorm scale 1: the init zeroes each bottleneck's last one (mmpose's
    // zero_init_residual), which would hide the ResNet stage from the output.
    let mut model = cfg.init(&device).unwrap().map_batch_norms(&mut |mut bn| {
        let c = bn.gamma.dims()[0];
        bn.gamma = Param::from_tensor(Tensor::ones([c], &device));
        bn
    });
    let x = Tensor::<4>::random([2, 3, 128, 96], Distribution::Normal(0.0, 1.0), &device);
    let heatmaps = model.heatmaps(x.clone());
    let [n, k, h, w] = heatmaps.dims();
    assert_eq!([n, k, h, w], [2, cfg.num_keypoints, 32, 24]);
    assert_eq!(
        model.output_kind(),
        mixq_vit_models::OutputKind::Heatmaps {
            keypoints: k,
            height: h,
            width: w
        }
    );
    let (bounds, flat) = model.boundaries(x.clone(), &mixq_vit_models::NoHook);
    let blocks = cfg.depths.iter().sum::<usize>() + 2 * cfg.wtm_dilations.len();
    assert_eq!(model.num_blocks(), blocks);
    assert_eq!(bounds.len(), blocks + 1);
    assert_eq!(values(flat), values(heatmaps));
    // Before the waterfall: the ResNet features and the four normed stage outputs.
    assert_eq!(bounds[cfg.depths.iter().sum::<usize>()].carried.len(), 5);
    let resumed = mixq_vit_models::testing::check_blocks(&model, x).unwrap();

    let sites = model.sites();
    // All but the stem, the ResNet stage's convs and conv3.
    assert_eq!(resumed, sites.len() - (2 + 4 * cfg.res_blocks + 1));
    let linear_sites: Vec<SiteId> = sites
        .iter()
        .filter(|s| s.kind == SiteKind::Linear)
        .map(|s| s.id.clone())
        .collect();
    let linears: Vec<SiteId> = model.linears_mut().iter().map(|l| l.site.clone()).collect();
    assert_eq!(linears, linear_sites);
    let pairs: Vec<String> = model
        .post_norm_pairs_mut()
        .iter()
        .map(|(_, l)| l.site.to_string())
        .collect();
    // Every block's norm2 -> fc1 and the 3 patch mergings; norm1 -> qkv only where attention
    // does not pad the normed map (a fold would shift the zero rows): window 4 pads stage 2's
    // 8x6 and stage 3's 4x3 maps; the NA layers' 32x24 map covers kernel 3 x dilation 4.
    assert_eq!(pairs.len(), 2 * blocks + 3 - 2, "{pairs:?}");
    for padded in ["layers.2.blocks.0.attn.qkv", "layers.3.blocks.0.attn.qkv"] {
        assert!(!pairs.iter().any(|p| p == padded), "{padded}: {pairs:?}");
    }
    for end in [".attn.qkv", ".mlp.fc1", ".downsample.reduction"] {
        assert!(pairs.iter().any(|p| p.ends_with(end)), "{end}: {pairs:?}");
    }
    assert!(
        pairs.iter().all(|p| p.ends_with(".attn.qkv")
            || p.ends_with(".mlp.fc1")
            || p.ends_with(".reduction")),
        "{pairs:?}"
    );
}

#[test]
fn checkpoint_round_trips_with_batch_norm_statistics() {
    let device = Device::flex();
    device.seed(5);
    let model = WtPoseConfig::tiny()
        .init(&device)
        .unwrap()
        .map_batch_norms(&mut |bn| {
            let [c] = bn.gamma.dims();
            with_running_stats(
                bn,
                Tensor::random([c], Distribution::Normal(0.0, 0.3), &device),
                Tensor::random([c], Distribution::Uniform(0.5, 2.0), &device),
            )
        });
    let dir = std::env::temp_dir().join(format!("wtpose-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.safetensors");
    model.save_safetensors(&path).unwrap();
    let loaded = WtPoseConfig::tiny()
        .init(&device)
        .unwrap()
        .load_safetensors(&path)
        .unwrap();
    let x = Tensor::<4>::random([1, 3, 128, 96], Distribution::Normal(0.0, 1.0), &device);
    let err = (model.heatmaps(x.clone()) - loaded.heatmaps(x))
        .abs()
        .max()
        .into_scalar::<f32>();
    std::fs::remove_dir_all(&dir).ok();
    assert!(err < 1e-6, "reloaded model differs by {err}");
}

/// The matmul form of the waterfall's bilinear resize equals burn's own `interpolate`
/// (bilinear, aligned corners) for up- and down-sampling, odd sizes and a 1-pixel axis.
#[test]
fn resize_matches_burn_interpolate() {
    use burn::tensor::module::interpolate;
    use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
    use mixq_vit_models::wtpose::resize_bilinear;
    let device = Device::flex();
    for (from, to) in [
        ([4, 3], [16, 12]),
        ([5, 7], [32, 24]),
        ([8, 6], [3, 5]),
        ([1, 4], [4, 4]),
        ([7, 5], [7, 9]),
    ] {
        let x = Tensor::<4>::random([2, 3, from[0], from[1]], Distribution::Default, &device);
        let ours = values(resize_bilinear(x.clone(), to));
        let burn = values(interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Bilinear)
                .with_align_corners(true)
                .with_output_size(to),
        ));
        assert_eq!(ours.len(), 2 * 3 * to[0] * to[1]);
        let max = ours
            .iter()
            .zip(&burn)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-5, "{from:?} -> {to:?}: max |diff| {max}");
    }
    // Hand check: [0, 1] sampled at three points.
    let x = Tensor::<4>::from_floats([[[[0.0, 1.0]]]], &device);
    assert_eq!(values(resize_bilinear(x, [1, 3])), vec![0.0, 0.5, 1.0]);
}

#[test]
fn topdown_geometry_follows_the_model() {
    let td = WtPoseConfig::tiny().topdown(2.0);
    assert_eq!((td.input_w, td.input_h), (96, 128));
    assert_eq!((td.heatmap_w, td.heatmap_h), (24, 32));
    assert_eq!(td.sigma, 2.0);
}

/// LRP through WTPose (the shipped checkpoint, BatchNorm folded): the explainer's rules reach
/// every layer, the NHWC linears of the Swin and neighbourhood-attention blocks included (their
/// bias sits on the last axis; the rules once added it on axis 1 and failed on these shapes),
/// and relevance of the explained heatmap pixel reaches every site and the image pixels. The
/// folded BatchNorms' biases absorb part of it, so the pixel total is not the heatmap value as
/// it is through the classifiers.
#[test]
fn wtpose_is_explained_down_to_the_pixels() {
    let device = Device::flex();
    let model = mixq_vit_models::ModelCard::find("wtpose-tiny")
        .unwrap()
        .load_pose(None, &device)
        .unwrap()
        .fold_batch_norm();
    device.seed(5);
    let x = Tensor::<4>::random([2, 3, 128, 96], Distribution::Normal(0.0, 1.0), &device);
    let options = mixq_vit_models::ExplainOptions::new(
        mixq_lrp::Preset::Attnlrp,
        &[0.485, 0.456, 0.406],
        &[0.229, 0.224, 0.225],
    );
    let e = model
        .explain(x, &mixq_vit_models::Target::Predicted, &options)
        .unwrap();
    let totals = e.pixel_totals();
    println!(
        "targets {:?} values {:?} pixels {totals:?}",
        e.targets, e.target_logits
    );
    assert_eq!(e.pixel_shape, [2, 3, 128, 96]);
    assert!(e.pixels.iter().all(|r| r.is_finite()));
    assert_eq!(e.sites.len(), model.sites().len());
    for s in &e.sites {
        assert!(
            s.output_abs.iter().all(|&r| r.is_finite() && r > 0.0),
            "{}: {:?}",
            s.site,
            s.output_abs
        );
    }
    // Positive evidence for the brightest heatmap pixel reaches the image.
    for (t, p) in e.target_logits.iter().zip(&totals) {
        assert!(
            *p > 0.1 * t && *p < 1.5 * t,
            "pixels {p} vs heatmap value {t}"
        );
    }
}
