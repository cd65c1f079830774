//! # mixq-sensitivity
//!
//! Mix-QViT's second criterion: how much the model's output changes when one site alone is
//! quantized at a candidate bit-width while every other site stays at the baseline. The sweep
//! runs the probe images once per candidate up to every block boundary, caches those tensors,
//! and reruns only from the site's block onward ([`Network::resume_point`]); results go to an
//! append-only [`SweepCache`] so a rerun or a crash resumes, and a [`Shard`] of the grid can run
//! in another process.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use mixq_sensitivity::{NoHook, Probe, measure_candidate, reference_logits};
//! use mixq_core::{BitWidth, SiteBits};
//!
//! let card = mixq_vit_models::ModelCard::find("digits-deit")?;
//! let device = Device::flex();
//! let model = card.arch.init(&device)?;
//! let probe = Probe::new(Tensor::ones([4, 1, 8, 8], &device), vec![0, 1, 2, 3], 4)?;
//! let reference = reference_logits(&model, &probe);
//! let bits = SiteBits { w_bits: BitWidth::new(4)?, a_bits: BitWidth::new(4)? };
//! let sites = vec![mixq_core::SiteId::new("head")];
//! // With a hook that changes nothing the damage is zero.
//! let mut records = Vec::new();
//! measure_candidate(&model, &NoHook, &NoHook, &probe, &reference, &sites, bits, true, |r| {
//!     records.push(r);
//!     Ok(())
//! })?;
//! assert_eq!(records[0].damage.kl, 0.0);
//! # Ok::<(), mixq_core::Error>(())
//! ```

#![warn(missing_docs)]

mod cache;
mod grid;
mod metric;

use burn::tensor::Tensor;
use mixq_core::{Error, Result, SiteBits, SiteId};
pub use mixq_vit_models::NoHook;
use mixq_vit_models::{Network, SiteHook, Slot};
use rayon::prelude::*;

pub use cache::{SweepCache, fingerprint};
pub use grid::{Shard, grid, merge_tables, to_table};
pub use metric::{Damage, Metric, argmax, damage, relative_mse};

/// One measured (site, bits) point.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The site measured.
    pub site: SiteId,
    /// The bits it ran at.
    pub bits: SiteBits,
    /// What it cost, in every metric.
    pub damage: Damage,
}

/// The probe set: images, their labels and the batch size they are run in.
#[derive(Clone, Debug)]
pub struct Probe {
    /// `[n, c, h, w]` normalised images.
    pub images: Tensor<4>,
    /// Their classes.
    pub labels: Vec<usize>,
    /// Images per forward pass.
    pub batch: usize,
}

impl Probe {
    /// Checks that there are images, one label per image and a batch of at least 1.
    pub fn new(images: Tensor<4>, labels: Vec<usize>, batch: usize) -> Result<Self> {
        let n = images.dims()[0];
        if n == 0 {
            return Err(Error::invalid("probe images", 0, "need at least one image"));
        }
        if labels.len() != n {
            return Err(Error::invalid(
                "probe labels",
                labels.len(),
                format!("need one label per probe image ({n})"),
            ));
        }
        if batch == 0 {
            return Err(Error::invalid("batch", 0, "must be at least 1"));
        }
        Ok(Probe {
            images,
            labels,
            batch,
        })
    }

    /// Probe images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn batches(&self) -> impl Iterator<Item = Tensor<4>> + '_ {
        (0..self.len()).step_by(self.batch).map(|start| {
            let n = self.batch.min(self.len() - start);
            self.images.clone().narrow(0, start, n)
        })
    }
}

/// Quantizes one site through `quantized`; every other site goes through `baseline`.
pub struct OnlySite<'a> {
    /// The site that is quantized.
    pub site: &'a SiteId,
    /// The hook that quantizes it.
    pub quantized: &'a dyn SiteHook,
    /// What every other site runs through (full precision or a fixed bit-width).
    pub baseline: &'a dyn SiteHook,
}

impl SiteHook for OnlySite<'_> {
    fn apply(&self, site: &SiteId, slot: Slot, x: Tensor<2>) -> Tensor<2> {
        if site == self.site {
            self.quantized.apply(site, slot, x)
        } else {
            self.baseline.apply(site, slot, x)
        }
    }
}

/// Full-precision logits of the probe set, row-major `[n, classes]`.
pub fn reference_logits(model: &dyn Network, probe: &Probe) -> Vec<f32> {
    probe
        .batches()
        .flat_map(|x| host(model.forward(x)))
        .collect()
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap_or_default()
}

/// Measures every site of `sites` at `bits` on one calibrated candidate: `model` (any
/// [`Network`]: mixq's families or a model of one's own) with
/// `quantized` (a hook that quantizes every site at `bits`, e.g. mixq-ptq's isolated
/// quantizers) applied to one site at a time and `baseline` to the others.
///
/// With `use_cache`, the tensors at every block boundary are computed once per probe batch
/// and each site reruns only from its block; the results equal the uncached ones bit for bit
/// on a deterministic backend.
#[allow(clippy::too_many_arguments)]
pub fn measure_candidate(
    model: &dyn Network,
    quantized: &dyn SiteHook,
    baseline: &dyn SiteHook,
    probe: &Probe,
    reference: &[f32],
    sites: &[SiteId],
    bits: SiteBits,
    use_cache: bool,
    mut on_record: impl FnMut(Record) -> Result<()>,
) -> Result<()> {
    if sites.is_empty() {
        return Ok(());
    }
    let batches: Vec<Tensor<4>> = probe.batches().collect();
    let cache: Vec<Vec<mixq_vit_models::Boundary>> = if use_cache {
        batches
            .iter()
            .map(|x| model.boundaries(x.clone(), baseline).0)
            .collect()
    } else {
        Vec::new()
    };
    let measure = |site: &SiteId| -> Result<Record> {
        let hook = OnlySite {
            site,
            quantized,
            baseline,
        };
        let point = model.resume_point(site);
        let mut logits = Vec::with_capacity(reference.len());
        for (i, x) in batches.iter().enumerate() {
            let out = match (point, cache.get(i)) {
                (Some(k), Some(bounds)) => model.forward_from(k, bounds[k].clone(), &hook),
                _ => model.forward_with(x.clone(), &hook),
            };
            logits.extend(host(out));
        }
        Ok(Record {
            site: site.clone(),
            bits,
            damage: damage(reference, &logits, &probe.labels)?,
        })
    };
    // Sites are measured independently, one per rayon thread (one small-model forward keeps
    // about one core busy); records are handed over in site order, a chunk at a time, so a
    // cache written by `on_record` loses at most one chunk when the run is stopped.
    for chunk in sites.chunks(rayon::current_num_threads().max(1)) {
        let records: Vec<Result<Record>> = chunk.par_iter().map(measure).collect();
        for record in records {
            on_record(record?)?;
        }
    }
    Ok(())
}
