//! # mixq-quant-kernels
//!
//! The quantizer math of mixq, independent of any model: uniform (affine) quantizers per
//! tensor, channel or group, log2 / log√2 quantizers for attention probabilities, and the range
//! observers (min/max, quantile, RepQ-ViT's quantile search) that calibrate them. It exists so
//! that every burn model, PTQ pass, bit allocator and test uses one definition of "quantize to
//! `b` bits", with a host reference that the tensor path matches bit for bit (for `f32`
//! tensors on IEEE-754 backends; tested on `Device::flex()` and `Device::ndarray()`).
//!
//! Calibration statistics run on the host on `f32` slices (sorting, searching); the fake-quant
//! forward ([`UniformQuantizer::fake_quant`], [`LogQuantizer::fake_quant`]) runs on burn
//! tensors on any device.
//!
//! Rounding is round half to even everywhere (burn's `Tensor::round`, `f32::round_ties_even`).
//!
//! ```
//! use burn::tensor::{Device, Tensor, TensorData};
//! use mixq_core::BitWidth;
//! use mixq_quant_kernels::{Granularity, RangeMethod, calibrate_uniform, host_values};
//!
//! let device = Device::flex();
//! let w = Tensor::<2>::from_data(
//!     TensorData::new(vec![0.5f32, -1.0, 0.25, 2.0, 0.1, 0.2, -0.3, 0.05], [2, 4]),
//!     &device,
//! );
//!
//! // A 4-bit symmetric quantizer with one step per output row.
//! let q = calibrate_uniform(
//!     &host_values(&w)?,
//!     &w.dims(),
//!     Granularity::PerChannel { axis: 0 },
//!     &RangeMethod::MinMax,
//!     BitWidth::new(4)?,
//!     true,
//! )?;
//! assert_eq!(q.step(0), 2.0 / 7.0); // max |w| of row 0 over 2^3 - 1 levels
//!
//! let w_hat = q.fake_quant(w);
//! let got = host_values(&w_hat)?;
//! assert_eq!(got[3], 2.0); // the row maximum is a level
//! assert_eq!(got, q.fake_quant_host(&[0.5, -1.0, 0.25, 2.0, 0.1, 0.2, -0.3, 0.05], &[2, 4])?);
//! # Ok::<(), mixq_core::Error>(())
//! ```

#![warn(missing_docs)]

pub mod igemm;
pub mod log;
pub mod observer;
pub mod packing;
pub mod uniform;
pub mod vmath;

pub use igemm::{ActQuant, Backend, IntGemm, PreparedWeights, RhsLayout};
pub use log::{LogBase, LogQuantizer};
pub use observer::{RangeMethod, calibrate_log, calibrate_uniform, observe_ranges, quantile};
pub use packing::PackedWeights;
pub use uniform::{Granularity, MIN_SCALE, UniformQuantizer, round_ties_even_for_codes};

use burn::tensor::{DType, Device, Tensor, TensorData};
use mixq_core::{Error, Result};

/// Whether `x` is a plain burn-flex `f32` tensor (the PTQ forward on the CPU), whose fake-quant
/// runs as one host pass ([`host_pass`]). A fake-quant is 5 (uniform) to 17 (log) tensor ops,
/// each a full pass over the activation into a new buffer; the host twins compute the same
/// values bit for bit in one pass (tests compare them), where the tensor ops were most of a
/// small model's fake-quant forward. Autodiff tensors and other devices keep the tensor ops.
pub(crate) fn takes_host_pass<const D: usize>(x: &Tensor<D>) -> bool {
    let device = x.device();
    x.dtype() == DType::F32 && !device.is_autodiff() && device == Device::flex()
}

/// `fake` applied to the values of `x` (see [`takes_host_pass`]), in `x`'s shape and device.
pub(crate) fn host_pass<const D: usize>(
    x: Tensor<D>,
    fake: impl FnOnce(&[f32]) -> Vec<f32>,
) -> Tensor<D> {
    let (device, dims) = (x.device(), x.dims());
    let values = x
        .into_data()
        .try_into_vec::<f32>()
        .expect("an f32 tensor holds f32 values");
    Tensor::from_data(TensorData::new(fake(&values), dims), &device)
}

/// Copies a float tensor's values to the host as `f32` (row-major), whatever its float dtype,
/// for calibration.
pub fn host_values<const D: usize>(x: &Tensor<D>) -> Result<Vec<f32>> {
    x.to_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::invalid("tensor", format!("{:?}", x.dims()), e.to_string()))
}
