//! The tensor path must equal the host reference bit for bit on every CPU backend.

use burn::tensor::{Device, Tensor, TensorData};
use mixq_quant_kernels::{
    Granularity, LogBase, LogQuantizer, RangeMethod, UniformQuantizer, calibrate_uniform,
    host_values,
};
use rand::Rng;

use crate::common::{SHAPE, bits, granularities, rng, varied_data};

/// burn-flex's plain tensors take the host twins (one pass); its autodiff tensors and
/// burn-ndarray's run the tensor ops, which must give the same bits.
fn devices() -> Vec<(&'static str, Device)> {
    #[allow(deprecated)]
    let ndarray = Device::ndarray();
    vec![
        ("flex (host pass)", Device::flex()),
        ("flex autodiff (tensor ops)", Device::flex().autodiff()),
        ("ndarray (tensor ops)", ndarray),
    ]
}

fn tensor3(x: &[f32], device: &Device) -> Tensor<3> {
    Tensor::from_data(TensorData::new(x.to_vec(), SHAPE), device)
}

fn assert_bitwise_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}: element {i}: device {g} host {w}"
        );
    }
}

#[test]
fn uniform_device_equals_host_for_every_granularity() {
    // Calibrate on a clipping quantile so that some values clamp, and add exact ties.
    let mut x = varied_data(21);
    for b in [2, 4, 8] {
        for g in granularities() {
            for symmetric in [false, true] {
                let q = calibrate_uniform(
                    &x,
                    &SHAPE,
                    g,
                    &RangeMethod::Quantile(0.9),
                    bits(b),
                    symmetric,
                )
                .unwrap();
                // Half-way points of parameter 0's grid exercise ties to even.
                x[0] = 2.5 * q.step(0);
                x[1] = -3.5 * q.step(0);
                let want = q.fake_quant_host(&x, &SHAPE).unwrap();
                for (name, device) in devices() {
                    let got = host_values(&q.fake_quant(tensor3(&x, &device))).unwrap();
                    let what = format!("{name} {b} bits {g:?} sym={symmetric}");
                    assert_bitwise_eq(&got, &want, &what);
                    // Idempotent on the device too.
                    let again = host_values(&q.fake_quant(tensor3(&got, &device))).unwrap();
                    assert_bitwise_eq(&again, &got, &what);
                }
            }
        }
    }
}

#[test]
fn uniform_device_handles_zero_channels() {
    let x = [0.5, -0.25, 1.0, 0.0, 0.0, 0.0];
    let q = calibrate_uniform(
        &x,
        &[2, 3],
        Granularity::PerChannel { axis: 0 },
        &RangeMethod::MinMax,
        bits(4),
        false,
    )
    .unwrap();
    for (name, device) in devices() {
        let t = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [2, 3]), &device);
        let got = host_values(&q.fake_quant(t)).unwrap();
        assert_eq!(&got[3..], &[0.0, 0.0, 0.0], "{name}");
        assert_bitwise_eq(&got, &q.fake_quant_host(&x, &[2, 3]).unwrap(), name);
    }
}

#[test]
#[should_panic(expected = "needs 3 step sizes")]
fn uniform_device_rejects_a_mismatched_shape() {
    let q = UniformQuantizer::from_range(
        bits(4),
        true,
        Granularity::PerChannel { axis: 1 },
        &[-1.0, -1.0],
        &[1.0, 1.0],
    )
    .unwrap();
    let t = Tensor::<2>::from_data(TensorData::new(vec![0.0f32; 6], [2, 3]), &Device::flex());
    let _ = q.fake_quant(t);
}

/// Attention-like values: mostly tiny, some exact zeros, a few above the scale, and the exact
/// geometric midpoints nearest to the rounding thresholds.
fn attention_like(seed: u64, s: f32) -> Vec<f32> {
    let mut r = rng(seed);
    let mut x: Vec<f32> = (0..3000)
        .map(|i| match i % 10 {
            0 => 0.0,
            1 => s * r.random_range(1.0f32..1.5),
            _ => s * (-r.random_range(0.0f32..30.0)).exp2(),
        })
        .collect();
    for k in 0..40 {
        let mid = f64::from(s) * (-(k as f64 + 0.5) / 2.0).exp2();
        x.push(mid as f32);
        x.push((mid as f32).next_up());
        x.push((mid as f32).next_down());
    }
    x
}

#[test]
fn log_device_equals_host_for_both_bases() {
    for b in [2, 4, 8] {
        for base in [LogBase::Log2, LogBase::LogSqrt2] {
            let s = 0.73f32;
            let q = LogQuantizer::new(bits(b), base, s).unwrap();
            let x = attention_like(u64::from(b), s);
            let want = q.fake_quant_host(&x);
            let n = x.len();
            for (name, device) in devices() {
                let t = Tensor::<2>::from_data(TensorData::new(x.clone(), [3, n / 3]), &device);
                let got = host_values(&q.fake_quant(t)).unwrap();
                assert!(
                    got.iter().all(|v| v.is_finite()),
                    "{name}: non-finite output"
                );
                assert_eq!(got[0], 0.0);
                assert_bitwise_eq(&got, &want, &format!("{name} {b} bits {base:?}"));
            }
        }
    }
}
