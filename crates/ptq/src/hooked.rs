//! Mixed precision for any model whose forward passes its tensors through a [`SiteHook`]: a
//! user's own burn model built from mixq's layers, or WTPose. The model is seen only through
//! two closures, one that runs the calibration images and one that returns the outputs on the
//! probe images, so nothing here depends on its type.

use mixq_core::{Result, SensitivityPoint, SensitivityTable, SiteBits, SiteInfo};
use mixq_sensitivity::{OnlySite, relative_mse};
use mixq_vit_models::{NoHook, SiteHook};

use crate::{PtqConfig, quantize_hooked, uniform_plan};

/// Every site alone at every candidate, the others in full precision; damage
/// [`relative_mse`] of `outputs` (the model on the probe images, flattened) against its
/// full-precision values. `calibrate` runs the model on the calibration images through the
/// hook it is given; `metric` names the damage in the table. `progress` gets (points done,
/// points in all).
pub fn sensitivity_hooked(
    sites: &[SiteInfo],
    candidates: &[SiteBits],
    image_bits: u8,
    metric: &str,
    calibrate: impl Fn(&dyn SiteHook),
    outputs: impl Fn(&dyn SiteHook) -> Vec<f32>,
    mut progress: impl FnMut(usize, usize),
) -> Result<SensitivityTable> {
    let reference = outputs(&NoHook);
    let mut table = SensitivityTable {
        metric: metric.into(),
        ..Default::default()
    };
    let total = candidates.len() * sites.len();
    let mut done = 0;
    for bits in candidates {
        let plan = uniform_plan(sites, bits.w_bits.get(), bits.a_bits.get(), image_bits)?;
        let isolated = quantize_hooked(sites, &plan, &PtqConfig::default(), true, &calibrate)?;
        for site in sites {
            let hook = OnlySite {
                site: &site.id,
                quantized: &isolated,
                baseline: &NoHook,
            };
            let damage = relative_mse(&reference, &outputs(&hook))?;
            table
                .sites
                .entry(site.id.clone())
                .or_default()
                .push(SensitivityPoint {
                    bits: *bits,
                    damage,
                });
            done += 1;
            progress(done, total);
        }
    }
    Ok(table)
}
