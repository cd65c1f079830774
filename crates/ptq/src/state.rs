//! The calibrated activation quantizers of a model, applied through the site hook.

use std::collections::BTreeMap;

use burn::tensor::Tensor;
use mixq_core::SiteId;
use mixq_quant_kernels::{LogQuantizer, UniformQuantizer};
use mixq_vit_models::{SiteHook, Slot};
use serde::{Deserialize, Serialize};

/// One activation quantizer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActQuantizer {
    /// Uniform (asymmetric, per tensor).
    Uniform(UniformQuantizer),
    /// Logarithmic (attention probabilities).
    Log(LogQuantizer),
}

impl ActQuantizer {
    /// Quantizes and dequantizes `x`.
    pub fn fake_quant<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            ActQuantizer::Uniform(q) => q.fake_quant(x),
            ActQuantizer::Log(q) => q.fake_quant(x),
        }
    }

    /// Bits per code.
    pub fn bits(&self) -> u8 {
        match self {
            ActQuantizer::Uniform(q) => q.bits().get(),
            ActQuantizer::Log(q) => q.bits().get(),
        }
    }
}

/// Activation quantizers by site and slot. As a [`SiteHook`] it fake-quantizes every tensor it
/// has a quantizer for and passes the rest through (weights are quantized once, in place).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuantState {
    /// The quantizer of every quantized tensor, by site and slot.
    pub sites: BTreeMap<SiteId, BTreeMap<Slot, ActQuantizer>>,
}

impl QuantState {
    /// Sets (or replaces) the quantizer of `(site, slot)`.
    pub fn insert(&mut self, site: SiteId, slot: Slot, q: ActQuantizer) {
        self.sites.entry(site).or_default().insert(slot, q);
    }

    /// The quantizer of `(site, slot)`, if any.
    pub fn get(&self, site: &SiteId, slot: Slot) -> Option<&ActQuantizer> {
        self.sites.get(site).and_then(|m| m.get(&slot))
    }

    /// Number of activation quantizers.
    pub fn len(&self) -> usize {
        self.sites.values().map(BTreeMap::len).sum()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SiteHook for QuantState {
    fn apply(&self, site: &SiteId, slot: Slot, x: Tensor<2>) -> Tensor<2> {
        match self.get(site, slot) {
            Some(q) => q.fake_quant(x),
            None => x,
        }
    }
}
