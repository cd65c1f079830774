//! Post-training quantization on the timm parity fixtures.

use burn::tensor::{Device, Tensor};
use mixq_core::{BitPlan, BitWidth, SiteBits, SiteId};
use mixq_ptq::{
    Metrics, PostLnMode, PtqConfig, SoftmaxMode, Variant, compare, compare_variants, quantize,
    reparameterize, uniform_plan,
};
use mixq_vit_models::Network;
use mixq_vit_models::testing::{FIXTURES, fixture, max_abs_diff};

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn reparameterization_is_exact_in_full_precision() {
    let device = Device::flex();
    for name in FIXTURES {
        for mode in [PostLnMode::ChannelReparam, PostLnMode::ClippedChannel] {
            let (model, input, _) = fixture(name, &device);
            let plan = uniform_plan(&model.sites(), 4, 4, 8).unwrap();
            let reference = model.forward(input.clone());
            let rep = reparameterize(model, input.clone(), &plan, mode).unwrap();
            let err = max_abs_diff(rep.forward(input), reference.clone());
            let scale = reference.abs().max().into_scalar::<f32>();
            println!(
                "{name} {mode}: max |reparam - original| = {err:.2e} (logits up to {scale:.2})"
            );
            assert!(err <= 1e-5 * scale.max(1.0), "{name} {mode}: {err}");
        }
    }
}

#[test]
fn reparameterization_changes_the_model_parameters() {
    // Guards the exactness test against a fold that silently does nothing.
    let device = Device::flex();
    let (model, input, _) = fixture("vit_tiny", &device);
    let plan = uniform_plan(&model.sites(), 4, 4, 8).unwrap();
    let before = match &model {
        mixq_vit_models::Model::Vit(m) => m.blocks[0].norm1.gamma.val(),
        _ => unreachable!(),
    };
    let rep = reparameterize(model, input, &plan, PostLnMode::ChannelReparam).unwrap();
    let after = match &rep {
        mixq_vit_models::Model::Vit(m) => m.blocks[0].norm1.gamma.val(),
        _ => unreachable!(),
    };
    assert!(max_abs_diff(before, after) > 1e-3);
}

#[test]
fn eight_bit_everything_stays_close_to_full_precision() {
    // W8A8 (image 8 bits) on the fixtures' two images, calibrated on the same images. The
    // fixtures' wide-spread random weights make activations with a large dynamic range, so this
    // is a harsh case: measured max |dlogit| 2-6% of the largest logit, KL 2e-4..5e-3. Bounds:
    // 10% and KL < 0.01.
    let device = Device::flex();
    for name in FIXTURES {
        for post_ln in [PostLnMode::Uniform, PostLnMode::ClippedChannel] {
            let (model, input, _) = fixture(name, &device);
            let plan = uniform_plan(&model.sites(), 8, 8, 8).unwrap();
            let fp = model.forward(input.clone());
            let config = PtqConfig {
                post_ln,
                ..PtqConfig::default()
            };
            let q = quantize(model, input.clone(), &plan, &config).unwrap();
            let ql = q.forward(input);
            let err = max_abs_diff(ql.clone(), fp.clone());
            let range = fp.clone().abs().max().into_scalar::<f32>();
            let mut m = Metrics::default();
            m.add(&host(ql), &[0, 0], Some(&host(fp)));
            println!(
                "{name} {post_ln} W8A8: max |dlogit| {err:.4} of {range:.2}, KL {:.2e}",
                m.kl()
            );
            assert!(err <= 0.1 * range, "{name}: {err} vs {range}");
            assert!(m.kl() < 0.01, "{name}: KL {}", m.kl());
        }
    }
}

#[test]
fn one_pass_comparison_equals_each_model_alone() {
    // The fixture's two images as batches of one (and an empty batch, skipped): every variant
    // keeps its place and scores as it does alone on the whole input; KL is against FP.
    let device = Device::flex();
    let (model, input, _) = fixture("vit_tiny", &device);
    let labels = vec![3, 7];
    let variants: Vec<_> = [8, 2]
        .map(|bits| {
            let plan = uniform_plan(&model.sites(), bits, bits, 8).unwrap();
            quantize(model.clone(), input.clone(), &plan, &PtqConfig::default()).unwrap()
        })
        .into();
    let batches = vec![
        (input.clone().slice(0..1), vec![labels[0]]),
        (input.clone().slice(0..0), vec![]),
        (input.clone().slice(1..2), vec![labels[1]]),
    ];
    let mut done = Vec::new();
    let got = compare(&model, &variants, batches.clone(), |n| done.push(n));
    assert_eq!(done, [1, 1]);
    // The variants run on rayon's threads: one thread gives the same figures, bit for bit.
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| compare(&model, &variants, batches, |_| {}));
    assert_eq!(one_thread, got);

    let fp = host(model.forward(input.clone()));
    let mut alone = Metrics::default();
    alone.add(&fp, &labels, None);
    let close = |a: &Metrics, b: &Metrics| {
        assert_eq!((a.images, a.top1, a.top5), (b.images, b.top1, b.top5));
        assert!(
            (a.loss() - b.loss()).abs() < 1e-4,
            "{} vs {}",
            a.loss(),
            b.loss()
        );
        assert!((a.kl() - b.kl()).abs() < 1e-4, "{} vs {}", a.kl(), b.kl());
    };
    close(&got.fp, &alone);
    assert_eq!(got.quantized.len(), 2);
    for (q, m) in variants.iter().zip(&got.quantized) {
        let mut alone = Metrics::default();
        alone.add(&host(q.forward(input.clone())), &labels, Some(&fp));
        close(m, &alone);
    }
    assert!(got.quantized[0].kl() < got.quantized[1].kl());
}

#[test]
fn every_variant_and_seed_scores_as_it_does_alone() {
    // Two calibration sets (the fixture's images, and the same at half scale) x two variants:
    // each (variant, seed) cell equals quantizing with that calibration alone, and the spread
    // is over the cells of one variant.
    let device = Device::flex();
    let (model, input, _) = fixture("vit_tiny", &device);
    let labels = vec![3, 7];
    let variants: Vec<Variant> = [(8, PostLnMode::ClippedChannel), (3, PostLnMode::Uniform)]
        .into_iter()
        .map(|(bits, post_ln)| Variant {
            label: format!("W{bits}A{bits}"),
            plan: uniform_plan(&model.sites(), bits, bits, 8).unwrap(),
            config: PtqConfig {
                post_ln,
                ..PtqConfig::default()
            },
        })
        .collect();
    let calibrations = vec![(10, input.clone()), (11, input.clone() * 0.5)];
    let mut calibrated = 0;
    let table = compare_variants(
        &model,
        &variants,
        &calibrations,
        [(input.clone(), labels.clone())],
        |n| calibrated = n,
        |_| {},
    )
    .unwrap();
    assert_eq!(calibrated, 4);
    let fp = host(model.forward(input.clone()));
    assert_eq!(table.variants.len(), 2);
    for (v, result) in variants.iter().zip(&table.variants) {
        assert_eq!(result.label, v.label);
        let mut top1 = Vec::new();
        for ((seed, calib), cell) in calibrations.iter().zip(&result.seeds) {
            assert_eq!(cell.seed, Some(*seed));
            let q = quantize(model.clone(), calib.clone(), &v.plan, &v.config).unwrap();
            let mut alone = Metrics::default();
            alone.add(&host(q.forward(input.clone())), &labels, Some(&fp));
            assert_eq!(cell.metrics, alone, "{} seed {seed}", v.label);
            top1.push(alone.top1_pct());
        }
        assert_eq!(result.top1.mean, (top1[0] + top1[1]) / 2.0);
    }
    let kl = |v: usize, i: usize| table.variants[v].seeds[i].metrics.kl();
    assert!(
        kl(1, 0) != kl(1, 1),
        "the two calibrations give different 3-bit models"
    );
}

#[test]
fn fewer_bits_hurt_more() {
    let device = Device::flex();
    let (model, input, _) = fixture("vit_tiny", &device);
    let fp = host(model.forward(input.clone()));
    let kl = |bits: u8| {
        let (model, _, _) = fixture("vit_tiny", &device);
        let plan = uniform_plan(&model.sites(), bits, bits, 8).unwrap();
        let q = quantize(model, input.clone(), &plan, &PtqConfig::default()).unwrap();
        let mut m = Metrics::default();
        m.add(&host(q.forward(input.clone())), &[0, 0], Some(&fp));
        m.kl()
    };
    let (k8, k4, k2) = (kl(8), kl(4), kl(2));
    println!("vit_tiny KL: W8A8 {k8:.2e}, W4A4 {k4:.2e}, W2A2 {k2:.2e}");
    assert!(k8 < k4 && k4 < k2);
}

#[test]
fn plan_with_an_unknown_site_is_an_error_naming_it() {
    let device = Device::flex();
    let (model, input, _) = fixture("swin_tiny", &device);
    let mut plan = BitPlan::default();
    let bits = BitWidth::new(4).unwrap();
    plan.sites.insert(
        SiteId::new("blocks.99.attn.qkv"),
        SiteBits {
            w_bits: bits,
            a_bits: bits,
        },
    );
    let err = quantize(model, input, &plan, &PtqConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("blocks.99.attn.qkv"), "{err}");
}

#[test]
fn log_softmax_quantizers_are_used_for_attention_probabilities() {
    let device = Device::flex();
    let (model, input, _) = fixture("vit_tiny", &device);
    let plan = uniform_plan(&model.sites(), 4, 4, 8).unwrap();
    let config = PtqConfig {
        softmax: SoftmaxMode::LogSqrt2,
        ..PtqConfig::default()
    };
    let q = quantize(model, input, &plan, &config).unwrap();
    let av = q
        .state
        .get(
            &SiteId::new("blocks.0.attn.matmul_av"),
            mixq_vit_models::Slot::OperandA,
        )
        .unwrap();
    assert!(matches!(av, mixq_ptq::ActQuantizer::Log(_)));
    let qkv = q
        .state
        .get(
            &SiteId::new("blocks.0.attn.qkv"),
            mixq_vit_models::Slot::Input,
        )
        .unwrap();
    assert_eq!(qkv.bits(), 4);
    let img = q
        .state
        .get(
            &SiteId::new("patch_embed.proj"),
            mixq_vit_models::Slot::Input,
        )
        .unwrap();
    assert_eq!(img.bits(), 8, "the image input stays at 8 bits");
}

/// The hook-only PTQ (what WTPose and users' own models get) reproduces the model-specific
/// path on the timm fixtures: same weight codes, same activation quantizers, same logits
/// (post-LN inputs per tensor on both sides, since the hook path cannot fold LayerNorms).
#[test]
fn hooked_quantization_equals_the_model_path() {
    use mixq_ptq::{quantize_hooked, quantize_isolated};
    let device = Device::flex();
    for name in FIXTURES {
        let (model, input, _) = fixture(name, &device);
        let sites = model.sites();
        let plan = uniform_plan(&sites, 3, 4, 8).unwrap();
        let config = PtqConfig {
            post_ln: PostLnMode::Uniform,
            ..PtqConfig::default()
        };
        let reference = quantize(model.clone(), input.clone(), &plan, &config).unwrap();
        let forward = |hook: &dyn mixq_vit_models::SiteHook| {
            let _ = model.forward_with(input.clone(), hook);
        };
        let hooked = quantize_hooked(&sites, &plan, &config, false, forward).unwrap();
        assert_eq!(hooked.weight_quantizers, reference.weights, "{name}");
        assert_eq!(hooked.state, reference.state, "{name}");
        let err = max_abs_diff(
            model.forward_with(input.clone(), &hooked),
            reference.forward(input.clone()),
        );
        assert!(err < 1e-5, "{name}: max |hooked - model path| = {err}");
        // Sanity: the quantized model is not the full-precision one.
        assert!(
            max_abs_diff(
                model.forward(input.clone()),
                reference.forward(input.clone())
            ) > 1e-3
        );

        let isolated = quantize_hooked(&sites, &plan, &config, true, forward).unwrap();
        let iso_ref = quantize_isolated(model.clone(), input.clone(), &plan, &config).unwrap();
        assert_eq!(isolated.state, iso_ref.state, "{name} (isolated)");
        for (site, w) in &iso_ref.weights {
            let err = max_abs_diff(isolated.weights[site].clone(), w.clone());
            assert_eq!(err, 0.0, "{name} {site}");
        }
    }
}

#[test]
fn hooked_quantization_names_a_weight_that_never_passed() {
    use mixq_ptq::quantize_hooked;
    let device = Device::flex();
    let (model, _, _) = fixture("vit_tiny", &device);
    let sites = model.sites();
    let plan = uniform_plan(&sites, 4, 4, 8).unwrap();
    // A "forward" that runs nothing: no weight is seen.
    let err = quantize_hooked(&sites, &plan, &PtqConfig::default(), false, |_| {}).unwrap_err();
    assert!(err.to_string().contains(sites[0].id.as_str()), "{err}");
}

#[test]
fn ptq_table_has_the_fp_row_then_every_plan_and_quantizer_over_the_seeds() {
    use mixq_datasets::EvalData;
    use mixq_ptq::{PtqStage, PtqTableConfig, ablation_grid, ptq_table};
    use mixq_vit_models::{ModelCard, WeightsChoice};

    let device = Device::flex();
    let card = ModelCard::find("digits-deit").unwrap();
    let model = card.load(&WeightsChoice::default(), 0, &device).unwrap();
    let sites = model.sites();
    let config = PtqTableConfig {
        plans: vec![
            ("W8A8".into(), uniform_plan(&sites, 8, 8, 8).unwrap()),
            ("W3A3".into(), uniform_plan(&sites, 3, 3, 8).unwrap()),
        ],
        grid: ablation_grid()[..2].to_vec(),
        seeds: vec![0, 1],
        calib: 8,
        calib_data: None,
    };
    let data = EvalData::open(&card.data_spec(), None, Some(40), 16).unwrap();
    let mut stages = Vec::new();
    let results = ptq_table(
        &model,
        &card,
        &config,
        &mixq_ptq::Calibrate,
        data,
        &device,
        |stage, done, total| {
            if done == total {
                stages.push((stage, total));
            }
        },
    )
    .unwrap();
    // 2 plans x 2 quantizer pairs x 2 seeds = 8 calibrations; 40 images in one pass.
    assert_eq!(stages, [(PtqStage::Calibrate, 8), (PtqStage::Evaluate, 40)]);
    assert_eq!(
        (results.model.as_str(), results.calib_images),
        ("digits-deit", 8)
    );
    assert_eq!(results.eval_images, 40);
    let names: Vec<&str> = results.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names[0], "digits-deit FP32");
    assert_eq!(names[1..3], ["digits-deit W8A8"; 2]);
    assert_eq!(names[3..], ["digits-deit W3A3"; 2]);
    assert!(results.rows[0].kl.is_none() && results.rows[0].post_ln.is_none());
    for row in &results.rows[1..] {
        assert_eq!(row.seeds.len(), 2);
        assert_eq!(row.top1.n, 2);
        let mean = row.seeds.iter().map(|s| s.metrics.top1_pct()).sum::<f64>() / 2.0;
        assert!((row.top1.mean - mean).abs() < 1e-12);
    }
    // A plan for another model's sites is refused before any calibration.
    let mut wrong = config.clone();
    wrong.plans[0].1.sites.insert(
        SiteId::new("blocks.99.attn.qkv"),
        SiteBits {
            w_bits: BitWidth::new(4).unwrap(),
            a_bits: BitWidth::new(4).unwrap(),
        },
    );
    let data = EvalData::open(&card.data_spec(), None, Some(4), 4).unwrap();
    assert!(
        ptq_table(
            &model,
            &card,
            &wrong,
            &mixq_ptq::Calibrate,
            data,
            &device,
            |_, _, _| {}
        )
        .is_err()
    );
}

/// The label-free comparison backbones get: full precision against itself scores 1, and the
/// tokens of a quantized model drift further from full precision's the fewer the bits, on
/// every fixture (ViT, distilled DeiT, Swin, layer-scale).
#[test]
fn feature_cosine_falls_with_the_bits() {
    let device = Device::flex();
    for name in FIXTURES {
        let (model, input, _) = fixture(name, &device);
        let reference = model.features_with(input.clone(), &mixq_vit_models::NoHook);
        let [_, tokens, dim] = reference.dims();
        let host3 = |t: Tensor<3>| t.into_data().try_into_vec::<f32>().unwrap();
        let reference = host3(reference);
        let mut same = mixq_ptq::FeatureAgreement::default();
        same.add(&reference, &reference, tokens, dim);
        assert!(
            (same.mean() - 1.0).abs() < 1e-12 && same.images == 2,
            "{name}"
        );
        let mut means = Vec::new();
        for bits in [8, 4, 2] {
            let plan = uniform_plan(&model.sites(), bits, bits, 8).unwrap();
            let q = quantize(model.clone(), input.clone(), &plan, &PtqConfig::default()).unwrap();
            let mut a = mixq_ptq::FeatureAgreement::default();
            a.add(&reference, &host3(q.features(input.clone())), tokens, dim);
            assert!(
                a.cosine_min <= a.mean() && a.mean() < 1.0,
                "{name} W{bits}: {a:?}"
            );
            means.push(a.mean());
        }
        println!(
            "{name}: mean token cosine W8 {:.4}, W4 {:.4}, W2 {:.4}",
            means[0], means[1], means[2]
        );
        assert!(
            means[0] > 0.95 && means[0] > means[1] && means[1] > means[2],
            "{name}: {means:?}"
        );
    }
}

/// A backbone (no head) is compared by its tokens: the PTQ table gives each configuration's
/// token cosine to full precision instead of accuracy, the full-precision row 1; with a saliency
/// decoder also the maps' agreement (full precision: Pearson 1, IoU 1, MAE 0).
#[test]
fn a_backbone_gets_the_token_cosine_table() {
    let device = Device::flex();
    device.seed(5);
    let config = mixq_vit_models::VitConfig {
        img_size: 32,
        patch_size: 8,
        in_chans: 3,
        num_classes: 0,
        embed_dim: 48,
        depth: 2,
        num_heads: 3,
        mlp_ratio: 2.0,
        distilled: false,
        norm_eps: 1e-6,
        layer_scale: Some(0.5),
        saliency_decoder: Some(mixq_vit_models::SaliencyDecoderConfig {
            channels: [8, 8, 4],
            bn_eps: 1e-5,
        }),
    };
    let model = mixq_vit_models::Model::Vit(config.init(&device).unwrap());
    assert!(model.is_backbone());
    let images = Tensor::<4>::random([6, 3, 32, 32], burn::tensor::Distribution::Default, &device);
    let variants: Vec<Variant> = [8, 3]
        .into_iter()
        .map(|b| Variant {
            label: format!("W{b}A{b}"),
            plan: uniform_plan(&model.sites(), b, b, 8).unwrap(),
            config: PtqConfig::default(),
        })
        .collect();
    let table = compare_variants(
        &model,
        &variants,
        &[(0, images.clone())],
        [(images, vec![0; 6])],
        |_| {},
        |_| {},
    )
    .unwrap();
    let fp = table.fp.features.unwrap();
    assert_eq!((fp.images, fp.mean()), (6, 1.0));
    let cos: Vec<f64> = table
        .variants
        .iter()
        .map(|v| v.label_free.unwrap().cosine.mean)
        .collect();
    assert!(cos[0] > 0.99 && cos[0] > cos[1], "{cos:?}");
    let fp_map = table.fp.saliency.unwrap();
    assert_eq!(
        (fp_map.images, fp_map.pearson(), fp_map.iou(), fp_map.mae()),
        (6, 1.0, 1.0, 0.0)
    );
    let maps: Vec<mixq_ptq::SaliencySpread> = table
        .variants
        .iter()
        .map(|v| v.label_free.unwrap().saliency.unwrap())
        .collect();
    assert!(
        maps[0].pearson.mean > maps[1].pearson.mean && maps[1].pearson.mean < 1.0,
        "{maps:?}"
    );
    assert!(
        maps[1].mae.mean > 0.0 && maps[1].iou.mean <= 1.0,
        "{maps:?}"
    );
    let rows = vec![
        mixq_ptq::PtqRow::full_precision("b FP32".into(), table.fp.clone()),
        mixq_ptq::PtqRow::quantized(
            "b W8A8".into(),
            (PostLnMode::ClippedChannel, SoftmaxMode::LogSqrt2),
            table.variants[0].clone(),
        ),
    ];
    let results = mixq_ptq::PtqResults {
        model: "b".into(),
        seeds: vec![0],
        calib_images: 6,
        eval_images: 6,
        data: "random".into(),
        rows,
    };
    let md = results.markdown();
    assert!(
        md.contains("token cosine")
            && md.contains("saliency Pearson")
            && md.contains("| b FP32 | - | - | 1.0000 | 1.0000 | 1.0000 | 1.000 | 0.0000 |"),
        "{md}"
    );
    let json = serde_json::to_string(&results).unwrap();
    assert!(
        json.contains("\"cosine\"") && json.contains("\"saliency\":{\"pearson\""),
        "{json}"
    );
}

/// Per-channel magnitudes of the post-LayerNorm activations: one entry per LayerNorm → linear
/// pair, each channel's max |x| as a direct computation from the LayerNorm's output gives it,
/// and a planted outlier channel found as the largest.
#[test]
fn post_ln_channels_find_a_planted_outlier() {
    let device = Device::flex();
    let (mut model, input, _) = fixture("vit_tiny", &device);
    // Plant an outlier: channel 7 of block 1's norm2 output scaled 40x.
    if let mixq_vit_models::Model::Vit(m) = &mut model {
        let g = m.blocks[1].norm2.gamma.val();
        let mut factors = vec![1.0f32; 48];
        factors[7] = 40.0;
        let scale = Tensor::<1>::from_data(burn::tensor::TensorData::new(factors, [48]), &device);
        m.blocks[1].norm2.gamma = burn::module::Param::from_tensor(g * scale);
    }
    let stats = mixq_ptq::post_ln_channels(&model, input.clone()).unwrap();
    let sites: Vec<&str> = stats.iter().map(|s| s.site.as_str()).collect();
    assert_eq!(
        sites,
        [
            "blocks.0.attn.qkv",
            "blocks.0.mlp.fc1",
            "blocks.1.attn.qkv",
            "blocks.1.mlp.fc1"
        ]
    );
    let fc1 = &stats[3];
    assert_eq!(fc1.abs_max.len(), 48);
    assert_eq!(fc1.outliers(10.0).first().map(|o| o.0), Some(7), "{fc1:?}");
    assert!(fc1.max() > 10.0 * fc1.median());
    // The statistic is the max |x| of the LayerNorm output: check one block directly.
    let mixq_vit_models::Model::Vit(m) = &model else {
        unreachable!()
    };
    let x = m.embed(input, &mixq_vit_models::NoHook);
    let normed = m.blocks[0].norm1.forward(x, &mixq_vit_models::NoHook);
    let direct: Vec<f32> = normed
        .abs()
        .max_dim(1)
        .max_dim(0)
        .reshape([48])
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    let err = direct
        .iter()
        .zip(&stats[0].abs_max)
        .fold(0f32, |e, (a, b)| e.max((a - b).abs()));
    assert!(err < 1e-5, "{err}");
}

/// Mixed precision on a backbone: LRP has no class to explain and KL/CE/top-1 mean nothing
/// without classes, so `lrp`/`mix` and any metric but cosine are refused by name before any
/// data is read.
#[test]
fn mixed_precision_on_a_backbone_takes_the_sweep_alone_with_cosine_damage() {
    use mixq_allocator::Criterion;
    use mixq_ptq::mixed::{BudgetConfig, CalibrationConfig, MixedConfig, SweepConfig, make_plans};
    let device = Device::flex();
    let card = mixq_vit_models::ModelCard::find("dinov2-s-focus").unwrap();
    let mut arch = card.arch.clone();
    // The card's architecture at a small width, random weights: what is checked is the refusal.
    if let mixq_vit_models::ArchConfig::Vit(c) = &mut arch {
        (c.embed_dim, c.depth, c.num_heads, c.img_size) = (48, 1, 3, 28);
        c.saliency_decoder = None;
    }
    let model = arch.init(&device).unwrap();
    let config = |criterion, metric| MixedConfig {
        sweep: SweepConfig {
            probe: 4,
            candidates: "4,8".into(),
            baseline: "fp".into(),
            metric,
            block_cache: true,
            cache_dir: "/nonexistent".into(),
            batch: 4,
        },
        budget: BudgetConfig {
            avg_bits: vec![6.0],
            avg_a_bits: None,
            model_bytes: None,
            bit_ops: None,
            criteria: vec![Criterion::Sensitivity, criterion],
            lambda: 1.0,
        },
        lrp_preset: mixq_lrp::Preset::Attnlrp,
    };
    let calibration = CalibrationConfig {
        images: 4,
        data: Some("/nonexistent/photos".into()),
        image_bits: 8,
    };
    let run = |c: &MixedConfig| {
        make_plans(&model, &card, 0, c, &calibration, &device, |_, _, _| {})
            .err()
            .expect("refused")
            .to_string()
    };
    use mixq_sensitivity::Metric;
    let err = run(&config(Criterion::Mix, Metric::Cosine));
    assert!(
        err.contains("--criterion") && err.contains("mix") && err.contains("sensitivity"),
        "{err}"
    );
    let err = run(&config(Criterion::Sensitivity, Metric::Kl));
    assert!(
        err.contains("--metric") && err.contains("kl") && err.contains("cosine"),
        "{err}"
    );
    // With both right it goes on to the data, and fails there naming the folder.
    let err = run(&config(Criterion::Sensitivity, Metric::Cosine));
    assert!(err.contains("/nonexistent/photos"), "{err}");
}

/// Records one site's input.
struct InputOf(SiteId, std::sync::Mutex<Vec<f32>>);

impl mixq_vit_models::SiteHook for InputOf {
    fn apply(&self, site: &SiteId, slot: mixq_vit_models::Slot, x: Tensor<2>) -> Tensor<2> {
        if *site == self.0 && slot == mixq_vit_models::Slot::Input {
            *self.1.lock().unwrap() = host(x.clone());
        }
        x
    }
}

/// Each channel's (min, max) at `site`'s input when `model` runs `images` (`channels` wide).
fn input_extremes(
    model: &dyn Network,
    images: &Tensor<4>,
    site: &SiteId,
    channels: usize,
) -> Vec<(f32, f32)> {
    let hook = InputOf(site.clone(), Default::default());
    let _ = model.forward_with(images.clone(), &hook);
    let x = hook.1.into_inner().unwrap();
    (0..channels)
        .map(|c| {
            let column = x.iter().skip(c).step_by(channels);
            let max = column.clone().fold(f32::MIN, |m, &v| m.max(v));
            (column.fold(f32::MAX, |m, &v| m.min(v)), max)
        })
        .collect()
}

/// RepQ's reparameterization takes any `Network`: on a model of one's own (not one of mixq's
/// families) it keeps the function and gives every post-LN input channel the same range.
#[test]
fn an_own_network_is_reparameterized() {
    let device = Device::flex();
    device.seed(3);
    let mut model = mixq_vit_models::testing::RowMlp::new(&device);
    // Uneven channels after block 0's norm, as trained models have.
    let gamma: Vec<f32> = (0..8).map(|c| 0.25 * (c + 1) as f32).collect();
    model.blocks[0].norm.gamma = burn::module::Param::from_tensor(Tensor::from_data(
        burn::tensor::TensorData::new(gamma, [8]),
        &device,
    ));
    let images = Tensor::<4>::random(
        [16, 1, 8, 8],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let plan = uniform_plan(&model.sites(), 4, 4, 8).unwrap();
    let site = SiteId::new("blocks.0.fc1");
    let ranges = |model: &dyn Network| {
        input_extremes(model, &images, &site, 8)
            .into_iter()
            .map(|(lo, hi)| hi - lo)
            .collect::<Vec<f32>>()
    };
    let spread = |r: &[f32]| {
        let (lo, hi) = r
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        hi / lo
    };
    let before = ranges(&model);
    let reference = model.forward(images.clone());
    let rep = reparameterize(model, images.clone(), &plan, PostLnMode::ChannelReparam).unwrap();
    let after = ranges(&rep);
    println!("channel ranges before {before:?}, after {after:?}");
    assert!(spread(&before) > 3.0, "{before:?}");
    assert!(spread(&after) < 1.001, "{after:?}");
    let err = max_abs_diff(rep.forward(images), reference);
    assert!(err < 1e-4, "{err}");
}

/// WTPose's post-LN pairs (Swin blocks, patch mergings, the waterfall's neighbourhood-attention
/// layers) fold like the classifiers': function kept, uneven channels of one NA layer's MLP
/// input evened out.
#[test]
fn wtpose_is_reparameterized() {
    let device = Device::flex();
    device.seed(5);
    let cfg = mixq_vit_models::WtPoseConfig::tiny();
    let mut model = cfg.init(&device).unwrap().fold_batch_norm();
    let d = cfg.wtm_dim;
    let gamma: Vec<f32> = (0..d).map(|c| 0.1 + 0.05 * (c % 16) as f32).collect();
    model.waterfall.blocks[1].norm2.gamma = burn::module::Param::from_tensor(Tensor::from_data(
        burn::tensor::TensorData::new(gamma, [d]),
        &device,
    ));
    let images = Tensor::<4>::random(
        [2, 3, 128, 96],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let plan = uniform_plan(&model.sites(), 8, 8, 8).unwrap();
    let site = SiteId::new("wtm.blocks.1.mlp.fc1");
    let extremes = |model: &dyn Network| input_extremes(model, &images, &site, d);
    let before = extremes(&model);
    let reference = model.forward(images.clone());
    let scale = reference.clone().abs().max().into_scalar::<f32>();
    let rep = reparameterize(model, images.clone(), &plan, PostLnMode::ChannelReparam).unwrap();
    let after = extremes(&rep);
    // The fold evens out the quantizer's ranges, which hold zero: the channels whose values
    // straddle zero end with equal ranges (the others lie inside theirs).
    let straddling: Vec<usize> = (0..d)
        .filter(|&c| before[c].0 < 0.0 && before[c].1 > 0.0)
        .collect();
    assert!(straddling.len() > d / 2, "{before:?}");
    let spread = |r: &[(f32, f32)]| {
        let (lo, hi) = straddling
            .iter()
            .map(|&c| r[c].1 - r[c].0)
            .fold((f32::MAX, f32::MIN), |(a, b), v| (a.min(v), b.max(v)));
        hi / lo
    };
    assert!(spread(&before) > 3.0, "{before:?}");
    assert!(spread(&after) < 1.001, "{after:?}");
    let err = max_abs_diff(rep.forward(images), reference);
    assert!(err < 1e-4 * scale.max(1.0), "{err} (outputs up to {scale})");
}
