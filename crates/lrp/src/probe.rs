//! Reading relevance out of a backward pass.

use std::collections::BTreeMap;

use burn::tensor::{Gradients, Tensor};
use mixq_core::{ContributionScores, Error, Result, SiteId};

/// A zero leaf added to an activation: after backward, `grad(leaf) * activation` is the
/// relevance of that activation (the leaf's gradient is the gradient arriving there).
#[derive(Clone, Debug)]
pub struct RelevanceTap<const D: usize> {
    leaf: Tensor<D>,
    value: Tensor<D>,
}

impl<const D: usize> RelevanceTap<D> {
    /// Returns `x + 0` (continue the forward with it) and the probe reading it.
    pub fn attach(x: Tensor<D>) -> (Tensor<D>, Self) {
        let leaf = x.zeros_like().detach().autodiff().require_grad();
        let probe = RelevanceTap {
            leaf: leaf.clone(),
            value: x.clone().detach(),
        };
        (x + leaf, probe)
    }

    /// Relevance of the probed activation (zeros when no relevance reached it).
    pub fn relevance(&self, grads: &Gradients) -> Tensor<D> {
        let value = self.value.clone().without_autodiff();
        match self.leaf.grad(grads) {
            Some(g) => g * value,
            None => value.zeros_like(),
        }
    }

    /// The probed activation's shape.
    pub fn dims(&self) -> [usize; D] {
        self.value.dims()
    }
}

/// Sums of `|relevance|` and of signed relevance per image: `rel` has the batch as its
/// leading axis.
pub fn per_image_sums<const D: usize>(rel: Tensor<D>) -> (Vec<f32>, Vec<f32>) {
    let batch = rel.dims()[0];
    let flat = rel.reshape([batch as i64, -1]);
    let abs = flat
        .clone()
        .abs()
        .sum_dim(1)
        .into_data()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    let signed = flat
        .sum_dim(1)
        .into_data()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    (abs, signed)
}

/// Accumulates per-site `|relevance|` over images into [`ContributionScores`].
#[derive(Clone, Debug, Default)]
pub struct ContributionAccumulator {
    sums: BTreeMap<SiteId, f64>,
    images: usize,
}

impl ContributionAccumulator {
    /// Adds one batch: for each site, the per-image sums of `|relevance|`.
    pub fn add_batch<'a>(
        &mut self,
        images: usize,
        sites: impl IntoIterator<Item = (&'a SiteId, &'a [f32])>,
    ) {
        self.images += images;
        for (site, per_image) in sites {
            *self.sums.entry(site.clone()).or_default() +=
                per_image.iter().map(|&v| v as f64).sum::<f64>();
        }
    }

    /// Images accumulated so far.
    pub fn images(&self) -> usize {
        self.images
    }

    /// Mean over images, normalised so the scores sum to 1 over sites.
    pub fn finish(self, meta: BTreeMap<String, String>) -> Result<ContributionScores> {
        let total: f64 = self.sums.values().sum();
        if self.images == 0 || total.is_nan() || total <= 0.0 || !total.is_finite() {
            return Err(Error::invalid(
                "relevance",
                total,
                format!(
                    "no usable relevance reached the sites over {} image(s); scores cannot be normalised",
                    self.images
                ),
            ));
        }
        Ok(ContributionScores {
            meta,
            scores: self.sums.into_iter().map(|(s, v)| (s, v / total)).collect(),
        })
    }
}
