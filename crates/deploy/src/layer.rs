//! The engine's linear layer on its own, for models that are not mixq's: build one per
//! `mixq_vit_models::layers::Linear` of your model from the quantizers
//! [`mixq_ptq::quantize_hooked`] calibrated, and write the forward between them yourself.

use mixq_core::{Error, Result, SiteId};
use mixq_ptq::HookQuantizers;
use mixq_quant_kernels::IntGemm;
use mixq_vit_models::layers::Linear;

use crate::IntSites;
use crate::ops::{LinearKind, LinearOp};

/// One linear site on the integer kernels: `u8` activations (quantized by the site's calibrated
/// input quantizer) × bit-packed weights with exact `i32` accumulation, bias added in `f32` — the
/// same function as the fake-quant forward through the [`HookQuantizers`] it was built from.
/// A site the plan leaves out runs in `f32`.
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use mixq_core::{SiteId, SiteInfo, SiteKind};
/// use mixq_deploy::IntLinear;
/// use mixq_ptq::{PtqConfig, host_logits, quantize_hooked, uniform_plan};
/// use mixq_quant_kernels::host_values;
/// use mixq_vit_models::layers::LinearConfig;
///
/// let device = Device::flex();
/// let fc = LinearConfig::new(16, 4).init(SiteId::new("fc"), &device);
/// let sites = [SiteInfo { id: fc.site.clone(), kind: SiteKind::Linear, params: 64, macs: 64 }];
/// let x = Tensor::<2>::random([8, 16], Distribution::Normal(0.0, 1.0), &device);
/// let plan = uniform_plan(&sites, 4, 8, 8)?;
/// let q = quantize_hooked(&sites, &plan, &PtqConfig::default(), false, |h| {
///     let _ = fc.forward(x.clone(), h);
/// })?;
///
/// let int = IntLinear::new(&fc, &q)?;
/// assert_eq!(int.weight_bits(), Some(4));
/// let y = int.forward(&host_values(&x)?, 8)?;
/// let fake_quant = host_logits(fc.forward(x, &q));
/// let worst = y.iter().zip(&fake_quant).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
/// assert!(worst < 1e-4, "{worst}");
/// # Ok::<(), mixq_core::Error>(())
/// ```
pub struct IntLinear {
    pub(crate) op: LinearOp,
    gemm: IntGemm,
}

impl std::fmt::Debug for IntLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntLinear")
            .field("site", &self.op.site)
            .field("in_features", &self.op.in_features)
            .field("out_features", &self.op.out_features)
            .field("weight_bits", &self.weight_bits())
            .finish()
    }
}

impl IntLinear {
    /// `layer` as `q` quantized it: integer when `q`'s plan has its site (its weight must lie on
    /// the weight quantizer's grid, its input quantizer must be uniform), else `f32`.
    pub fn new(layer: &Linear, q: &HookQuantizers) -> Result<Self> {
        let mut sites = IntSites::from_layers([layer], q)?;
        Ok(sites.layers.pop().expect("one layer given"))
    }

    pub(crate) fn from_op(op: LinearOp, gemm: IntGemm) -> Self {
        Self { op, gemm }
    }

    /// `y = x W + b` for `rows` rows of `x` (`[rows, in]`, row-major), as `[rows, out]`.
    pub fn forward(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        if x.len() != rows * self.op.in_features {
            return Err(Error::invalid(
                "input",
                self.op.site.as_str(),
                format!(
                    "{} values are not {rows} rows of {}",
                    x.len(),
                    self.op.in_features
                ),
            ));
        }
        self.op.forward(&self.gemm, x, rows)
    }

    /// The weights' bit-width, `None` for a site that runs in `f32`.
    pub fn weight_bits(&self) -> Option<u8> {
        match &self.op.kind {
            LinearKind::Int { w, .. } => Some(w.packed().bits().get()),
            LinearKind::F32 { .. } => None,
        }
    }

    /// The site this layer computes.
    pub fn site(&self) -> &SiteId {
        &self.op.site
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tensor};
    use mixq_core::{SiteInfo, SiteKind};
    use mixq_ptq::{PtqConfig, quantize_hooked, uniform_plan};
    use mixq_quant_kernels::host_values;
    use mixq_vit_models::layers::LinearConfig;

    #[test]
    fn bad_weights_and_inputs_are_errors_naming_the_site() {
        let device = Device::flex();
        let fc = LinearConfig::new(8, 3).init(SiteId::new("fc"), &device);
        let sites = [SiteInfo {
            id: fc.site.clone(),
            kind: SiteKind::Linear,
            params: 24,
            macs: 24,
        }];
        let x = Tensor::<2>::random([4, 8], Distribution::Normal(0.0, 1.0), &device);
        let plan = uniform_plan(&sites, 3, 8, 8).unwrap();
        let mut q = quantize_hooked(&sites, &plan, &PtqConfig::default(), false, |h| {
            let _ = fc.forward(x.clone(), h);
        })
        .unwrap();
        let int = IntLinear::new(&fc, &q).unwrap();
        let err = int.forward(&[0.0; 7], 1).unwrap_err().to_string();
        assert!(err.contains("fc") && err.contains("7 values"), "{err}");
        // Weights that are not the calibrated ones are off the quantizer's grid.
        q.weights.insert(fc.site.clone(), fc.weight.val());
        let err = IntLinear::new(&fc, &q).unwrap_err().to_string();
        assert!(
            err.contains("fc") && err.contains("not on the quantizer grid"),
            "{err}"
        );
        // Without its site in the plan the layer runs in f32, equal to the plain forward.
        q.plan.sites.clear();
        let float = IntLinear::new(&fc, &q).unwrap();
        assert_eq!(float.weight_bits(), None);
        let y = float.forward(&host_values(&x).unwrap(), 4).unwrap();
        let reference = host_values(&fc.forward(x, &mixq_vit_models::NoHook)).unwrap();
        let worst = y
            .iter()
            .zip(&reference)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst < 1e-5, "{worst}");
    }
}
