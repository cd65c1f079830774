//! Mixed precision for any model whose forward passes its tensors through a [`SiteHook`]: a
//! user's own burn model built from mixq's layers, or WTPose. The model is seen only through
//! two closures, one that runs the calibration images and one that returns the outputs on the
//! probe images, so nothing here depends on its type.

use mixq_core::{Error, Result, SensitivityPoint, SensitivityTable, SiteBits, SiteInfo};
use mixq_sensitivity::OnlySite;
use mixq_vit_models::{NoHook, SiteHook};

use crate::{PtqConfig, quantize_hooked, uniform_plan};

/// `sum (q - r)^2 / sum r^2`: the quantized outputs' error relative to the full-precision
/// outputs' energy (scale-free, so budgets mean the same on any checkpoint).
pub fn relative_mse(reference: &[f32], quantized: &[f32]) -> Result<f64> {
    if reference.len() != quantized.len() || reference.is_empty() {
        return Err(Error::invalid(
            "outputs",
            quantized.len(),
            format!("expected {} values", reference.len()),
        ));
    }
    let (mut err, mut energy) = (0.0f64, 0.0f64);
    for (&r, &q) in reference.iter().zip(quantized) {
        err += ((q - r) as f64).powi(2);
        energy += (r as f64).powi(2);
    }
    Ok(err / energy.max(f64::MIN_POSITIVE))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_mse_is_scale_free_and_checks_lengths() {
        let r = [1.0, -2.0, 2.0];
        assert_eq!(relative_mse(&r, &r).unwrap(), 0.0);
        // error energy 1 over reference energy 9
        assert!((relative_mse(&r, &[2.0, -2.0, 2.0]).unwrap() - 1.0 / 9.0).abs() < 1e-12);
        let r10: Vec<f32> = r.iter().map(|v| v * 10.0).collect();
        assert!((relative_mse(&r10, &[20.0, -20.0, 20.0]).unwrap() - 1.0 / 9.0).abs() < 1e-12);
        assert!(relative_mse(&r, &[1.0]).is_err());
    }
}
