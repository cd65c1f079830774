//! The sensitivity sweep on the shipped digits models: caching changes nothing, more bits do
//! less damage, a crash resumes, shards join.

use burn::tensor::{Device, Tensor, TensorData};
use mixq_core::{BitWidth, SiteBits, SiteId};
use mixq_datasets::Digits;
use mixq_ptq::{Baseline, PtqConfig, SweepOptions, sensitivity_sweep, sweep_fingerprint};
use mixq_sensitivity::{Metric, Probe, Record, Shard, SweepCache, merge_tables, to_table};
use mixq_vit_models::Network;
use mixq_vit_models::{Model, ModelCard, WeightsSource};

fn bits(b: u8) -> SiteBits {
    let b = BitWidth::new(b).unwrap();
    SiteBits {
        w_bits: b,
        a_bits: b,
    }
}

/// The shipped model, 16 calibration images (train split) and 16 probe images (test split).
fn setup(name: &str) -> (Model, Tensor<4>, Probe) {
    let device = Device::flex();
    let card = ModelCard::find(name).unwrap();
    let model = card
        .arch
        .init(&device)
        .unwrap()
        .load_weights(&WeightsSource::Safetensors(card.shipped_path().unwrap()))
        .unwrap();
    let (train, test) = Digits::split(0);
    let tensor = |split: &mixq_datasets::LabelledImages, n: usize| {
        let batch = split
            .batches(n, card.preprocess.mean[0], card.preprocess.std[0])
            .unwrap()
            .next()
            .unwrap();
        (
            Tensor::<4>::from_data(TensorData::new(batch.images, batch.shape), &device),
            batch.labels,
        )
    };
    let (calib, _) = tensor(&train, 16);
    let (images, labels) = tensor(&test, 16);
    (model, calib, Probe::new(images, labels, 8).unwrap())
}

fn options(candidates: &[u8], use_cache: bool) -> SweepOptions {
    SweepOptions {
        candidates: candidates.iter().map(|&b| bits(b)).collect(),
        baseline: Baseline::FullPrecision,
        image_bits: 8,
        use_cache,
        shard: Shard::WHOLE,
    }
}

fn run(model: &Model, calib: &Tensor<4>, probe: &Probe, options: &SweepOptions) -> Vec<Record> {
    let mut cache = SweepCache::in_memory();
    sensitivity_sweep(
        model,
        calib,
        probe,
        &PtqConfig::default(),
        options,
        &mut cache,
        |_, _| {},
    )
    .unwrap()
}

#[test]
fn cached_sweep_equals_uncached_bit_for_bit() {
    for name in ["digits-deit", "digits-swin"] {
        let (model, calib, probe) = setup(name);
        let cached = run(&model, &calib, &probe, &options(&[3], true));
        let plain = run(&model, &calib, &probe, &options(&[3], false));
        assert_eq!(cached.len(), model.sites().len());
        assert_eq!(cached, plain, "{name}");
        // Not vacuous: 3-bit quantization does damage at every site with weights.
        assert!(
            cached.iter().filter(|r| r.damage.kl > 0.0).count() > cached.len() / 2,
            "{name}"
        );
    }
}

/// Sites are measured on rayon's threads: one thread and three give the same records, in the
/// same order.
#[test]
fn sweep_is_the_same_on_one_thread_and_on_three() {
    let (model, calib, probe) = setup("digits-deit");
    let on = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| run(&model, &calib, &probe, &options(&[3], true)))
    };
    let one = on(1);
    assert_eq!(one.len(), model.sites().len());
    assert_eq!(one, on(3));
}

#[test]
fn eight_bits_do_less_damage_than_two_bits() {
    let (model, calib, probe) = setup("digits-deit");
    let records = run(&model, &calib, &probe, &options(&[2, 8], true));
    let kl = |site: &str, b: u8| {
        records
            .iter()
            .find(|r| r.site.as_str() == site && r.bits == bits(b))
            .unwrap()
            .damage
            .kl
    };
    for site in [
        "blocks.0.attn.qkv",
        "blocks.2.mlp.fc1",
        "head",
        "patch_embed.proj",
    ] {
        assert!(
            kl(site, 8) < kl(site, 2),
            "{site}: {} vs {}",
            kl(site, 8),
            kl(site, 2)
        );
    }
    let total = |b: u8| {
        records
            .iter()
            .filter(|r| r.bits == bits(b))
            .map(|r| r.damage.kl)
            .sum::<f64>()
    };
    assert!(
        total(8) * 20.0 < total(2),
        "8-bit {} vs 2-bit {}",
        total(8),
        total(2)
    );
}

#[test]
fn a_crashed_sweep_resumes_and_shards_merge() {
    let (model, calib, probe) = setup("digits-deit");
    let opts = options(&[4], true);
    let key = sweep_fingerprint(&model, &calib, &probe, &PtqConfig::default(), &opts);
    let dir = tempfile::tempdir().unwrap();
    let whole = {
        let mut cache = SweepCache::open(dir.path(), &key).unwrap();
        sensitivity_sweep(
            &model,
            &calib,
            &probe,
            &PtqConfig::default(),
            &opts,
            &mut cache,
            |_, _| {},
        )
        .unwrap()
    };
    // Keep half the lines plus a torn one, as a crash would.
    let path = dir.path().join(format!("{key}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut cut = lines[..lines.len() / 2].join("\n");
    cut.push('\n');
    cut.push_str(&lines[lines.len() / 2][..10]);
    std::fs::write(&path, cut).unwrap();
    let mut cache = SweepCache::open(dir.path(), &key).unwrap();
    assert_eq!(cache.len(), lines.len() / 2);
    let mut first_progress = None;
    let resumed = sensitivity_sweep(
        &model,
        &calib,
        &probe,
        &PtqConfig::default(),
        &opts,
        &mut cache,
        |done, _| {
            first_progress.get_or_insert(done);
        },
    )
    .unwrap();
    assert_eq!(
        first_progress,
        Some(lines.len() / 2),
        "the resumed run starts where the cache ends"
    );
    assert_eq!(resumed, whole);

    // Two shards, merged, equal the whole table; a table with another fingerprint is refused.
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("fingerprint".to_string(), key.clone());
    let shard = |k: usize| {
        let mut o = opts.clone();
        o.shard = Shard { index: k, count: 2 };
        let recs = run(&model, &calib, &probe, &o);
        (
            format!("shard{k}.json"),
            to_table(&recs, Metric::Kl, meta.clone()),
        )
    };
    let (a, b) = (shard(1), shard(2));
    assert!(!a.1.sites.is_empty() && !b.1.sites.is_empty());
    let merged = merge_tables(&[a.clone(), b]).unwrap();
    assert_eq!(merged, to_table(&whole, Metric::Kl, meta.clone()));
    let mut other = a.1.clone();
    other.meta.insert("fingerprint".into(), "0000".into());
    let err = merge_tables(&[a, ("other.json".to_string(), other)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("other.json") && err.contains("different weights"),
        "{err}"
    );
    let _ = SiteId::new("x");
}
