//! # mixq-lrp
//!
//! Layer-wise Relevance Propagation for burn models, in the gradient × input form of AttnLRP:
//! each rule ([`rules`]) keeps a layer's forward value and rewrites its gradient with
//! `detach`, so one autodiff backward pass from the target logit gives every tensor's
//! relevance as `activation * gradient`. A [`RelevanceTap`] reads it at any activation; a
//! [`ContributionAccumulator`] turns per-site relevance into the contribution scores the
//! mixed-precision allocator takes. [`Rules`] bundles the rules of a [`Preset`]
//! (`attnlrp`, the default, or `chefer`) for a model to call in place of its plain layers.
//!
//! A bias-free 2-layer ReLU network; relevance is conserved from the logit to the input:
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use mixq_lrp::{RelevanceTap, rules};
//!
//! let device = Device::flex();
//! let w1 = Tensor::<2>::from_floats([[1.0, -0.5], [0.25, 2.0], [-1.0, 0.5]], &device);
//! let w2 = Tensor::<2>::from_floats([[1.5], [-0.75]], &device);
//! let x = Tensor::<2>::from_floats([[0.5, 1.0, -0.25]], &device)
//!     .autodiff()
//!     .require_grad();
//!
//! // LRP mode: the epsilon rule on both linears; ReLU is piecewise linear and needs none.
//! let hidden = rules::epsilon(x.clone().matmul(w1), 1e-9).clamp_min(0.0);
//! let (hidden, probe) = RelevanceTap::attach(hidden);
//! let logit = rules::epsilon(hidden.matmul(w2), 1e-9);
//!
//! let grads = logit.clone().sum().backward();
//! let input_relevance = x.grad(&grads).unwrap() * x.clone().without_autodiff().detach();
//! let logit = logit.without_autodiff().into_scalar::<f32>();
//! let at_input = input_relevance.sum().into_scalar::<f32>();
//! let at_hidden = probe.relevance(&grads).sum().into_scalar::<f32>();
//! assert!((at_input - logit).abs() < 1e-5 && (at_hidden - logit).abs() < 1e-5);
//! ```

#![warn(missing_docs)]

mod preset;
mod probe;
pub mod rules;

pub use preset::{AttentionRule, DEFAULT_EPSILON, LinearRule, PixelBounds, Preset, Rules};
pub use probe::{ContributionAccumulator, RelevanceTap, per_image_sums};
