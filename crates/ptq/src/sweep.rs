//! The sensitivity sweep with mixq's quantizers: one isolated calibration per candidate
//! bit-width, then mixq-sensitivity measures each site alone on the probe set.

use mixq_vit_models::Network;
use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use mixq_core::{BitWidth, Result, SiteBits, SiteId};
use mixq_sensitivity::{
    Probe, Record, Shard, SweepCache, fingerprint, grid, measure_candidate, reference_logits,
};
use mixq_vit_models::NoHook;

use crate::calibrate::{IsolatedQuantizers, quantize_isolated};
use crate::config::{PostLnMode, PtqConfig, uniform_plan};

/// What every other site runs at while one site is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    /// Full precision (Mix-QViT's setting, the default).
    FullPrecision,
    /// Every other site quantized at these bits. The site under test then uses quantizers
    /// calibrated on the baseline's reparameterized model with per-tensor post-LN ranges
    /// (re-folding the LayerNorms per candidate would change the baseline sites too).
    Bits(BitWidth),
}

/// Options of a sweep; everything here is part of the cache fingerprint.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// The bits each site is measured at.
    pub candidates: Vec<SiteBits>,
    /// What every other site runs at meanwhile.
    pub baseline: Baseline,
    /// Bits of the image input (the patch embedding's activation) in every candidate.
    pub image_bits: u8,
    /// Rerun each site from its block with cached block inputs (same numbers, faster).
    pub use_cache: bool,
    /// The slice of the (site, candidate) grid this run measures.
    pub shard: Shard,
}

/// Hashes every float parameter of a model.
struct WeightBytes(Vec<Vec<u8>>);

impl ModuleVisitor for WeightBytes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().into_data().as_bytes().to_vec());
    }
}

/// The sweep's cache key: weights, calibration and probe data, and the options.
pub fn sweep_fingerprint<M: Module>(
    model: &M,
    calib: &Tensor<4>,
    probe: &Probe,
    config: &PtqConfig,
    options: &SweepOptions,
) -> String {
    let mut weights = WeightBytes(Vec::new());
    model.visit(&mut weights);
    let data = |t: &Tensor<4>| t.clone().into_data().as_bytes().to_vec();
    let labels: Vec<u8> = probe
        .labels
        .iter()
        .flat_map(|l| (*l as u64).to_le_bytes())
        .collect();
    let text = format!(
        "{:?}|{:?}|{}|{:?}|batch {}",
        options.candidates, options.baseline, options.image_bits, config, probe.batch
    );
    let mut parts = weights.0;
    parts.extend([data(calib), data(&probe.images), labels, text.into_bytes()]);
    fingerprint(parts.iter().map(Vec::as_slice))
}

/// Runs (or resumes, from `cache`) the shard's part of the (site, candidate) grid and returns
/// its records. `progress(done, total)` is called after every point.
pub fn sensitivity_sweep<N: Network + Module>(
    model: &N,
    calib: &Tensor<4>,
    probe: &Probe,
    config: &PtqConfig,
    options: &SweepOptions,
    cache: &mut SweepCache,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Record>> {
    let infos = model.sites();
    let sites = mixq_core::site_ids(&infos);
    let points = options.shard.select(&grid(&sites, &options.candidates));
    let total = points.len();
    let done_already = |c: &SweepCache| {
        points
            .iter()
            .filter(|(s, b)| c.get(s, *b).is_some())
            .count()
    };
    progress(done_already(cache), total);
    let mut by_candidate: BTreeMap<(BitWidth, BitWidth), Vec<SiteId>> = BTreeMap::new();
    for (site, bits) in &points {
        if cache.get(site, *bits).is_none() {
            by_candidate
                .entry((bits.w_bits, bits.a_bits))
                .or_default()
                .push(site.clone());
        }
    }
    if !by_candidate.is_empty() {
        let reference = reference_logits(model, probe);
        let base: Option<IsolatedQuantizers<N>> = match options.baseline {
            Baseline::FullPrecision => None,
            Baseline::Bits(b) => {
                let plan = uniform_plan(&infos, b.get(), b.get(), options.image_bits)?;
                Some(quantize_isolated(
                    model.clone(),
                    calib.clone(),
                    &plan,
                    config,
                )?)
            }
        };
        for ((w, a), pending) in by_candidate {
            let bits = SiteBits {
                w_bits: w,
                a_bits: a,
            };
            let plan = uniform_plan(&infos, w.get(), a.get(), options.image_bits)?;
            let (run_model, candidate) = match &base {
                None => {
                    let iso = quantize_isolated(model.clone(), calib.clone(), &plan, config)?;
                    (iso.model.clone(), iso)
                }
                Some(base) => {
                    let per_tensor = PtqConfig {
                        post_ln: PostLnMode::Uniform,
                        ..config.clone()
                    };
                    let iso =
                        quantize_isolated(base.model.clone(), calib.clone(), &plan, &per_tensor)?;
                    (base.model.clone(), iso)
                }
            };
            let measure_start = std::time::Instant::now();
            let baseline: &dyn mixq_vit_models::SiteHook = match &base {
                None => &NoHook,
                Some(b) => b,
            };
            measure_candidate(
                &run_model,
                &candidate,
                baseline,
                probe,
                &reference,
                &pending,
                bits,
                options.use_cache,
                |record| {
                    cache.add(record)?;
                    progress(done_already(cache), total);
                    Ok(())
                },
            )?;
            tracing::info!(
                bits = %format!("W{w}A{a}"),
                sites = pending.len(),
                seconds = measure_start.elapsed().as_secs_f64(),
                cached = options.use_cache,
                "measured"
            );
        }
    }
    Ok(points
        .iter()
        .filter_map(|(s, b)| cache.get(s, *b).cloned())
        .collect())
}
