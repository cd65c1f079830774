use mixq_quant_kernels::{
    Granularity, MIN_SCALE, RangeMethod, UniformQuantizer, calibrate_uniform,
};

use crate::common::{SHAPE, all_bits, bits, granularities, varied_data};

/// Parameter of flat index `i` of a `SHAPE` tensor, from the multi-index.
fn param_of(g: Granularity, i: usize) -> usize {
    let [_, b, c] = SHAPE;
    let idx = [i / (b * c), (i / c) % b, i % c];
    match g {
        Granularity::PerTensor => 0,
        Granularity::PerChannel { axis } => idx[axis],
        Granularity::PerGroup { group_size } => i / group_size,
    }
}

#[test]
fn round_trip_error_is_at_most_half_a_step_for_every_setting() {
    let x = varied_data(1);
    for b in all_bits() {
        for g in granularities() {
            for symmetric in [false, true] {
                let q =
                    calibrate_uniform(&x, &SHAPE, g, &RangeMethod::MinMax, b, symmetric).unwrap();
                let codes = q.quantize_host(&x, &SHAPE).unwrap();
                let back = q.dequantize_host(&codes, &SHAPE).unwrap();
                assert_eq!(back, q.fake_quant_host(&x, &SHAPE).unwrap());
                let n = q.num_params();
                let mut lo = vec![0.0f32; n];
                let mut hi = vec![0.0f32; n];
                for (i, &v) in x.iter().enumerate() {
                    lo[param_of(g, i)] = lo[param_of(g, i)].min(v);
                    hi[param_of(g, i)] = hi[param_of(g, i)].max(v);
                }
                let b = b.get();
                for p in 0..n {
                    let want = if symmetric {
                        lo[p].abs().max(hi[p]) / ((1 << (b - 1)) - 1) as f32
                    } else {
                        (hi[p] - lo[p]) / ((1 << b) - 1) as f32
                    };
                    assert_eq!(q.step(p), want, "{b} bits {g:?} sym={symmetric} param {p}");
                }
                for (i, (&v, &h)) in x.iter().zip(&back).enumerate() {
                    let s = q.step(param_of(g, i));
                    assert!(codes[i] >= q.qmin() && codes[i] <= q.qmax());
                    assert!(
                        (h - v).abs() <= 0.5 * s * (1.0 + 1e-5) + 1e-6 * v.abs(),
                        "{b} bits {g:?} sym={symmetric}: x={v} x_hat={h} step={s}"
                    );
                }
            }
        }
    }
}

#[test]
fn fake_quant_is_idempotent() {
    let x = varied_data(2);
    for b in all_bits() {
        for g in granularities() {
            for symmetric in [false, true] {
                let q =
                    calibrate_uniform(&x, &SHAPE, g, &RangeMethod::repq(), b, symmetric).unwrap();
                let once = q.fake_quant_host(&x, &SHAPE).unwrap();
                let twice = q.fake_quant_host(&once, &SHAPE).unwrap();
                assert_eq!(once, twice, "{b} bits {g:?} sym={symmetric}");
            }
        }
    }
}

#[test]
fn values_outside_the_range_clamp_to_the_end_levels() {
    for b in all_bits() {
        for symmetric in [false, true] {
            let q = UniformQuantizer::from_range(
                b,
                symmetric,
                Granularity::PerChannel { axis: 1 },
                &[-1.0, -0.5],
                &[2.0, 0.25],
            )
            .unwrap();
            let x = [1e6, 1e6, -1e6, -1e6, 3.0, 0.5, -2.0, -1.0];
            let shape = [4, 2];
            let codes = q.quantize_host(&x, &shape).unwrap();
            let got = q.fake_quant_host(&x, &shape).unwrap();
            for (i, &v) in x.iter().enumerate() {
                let (lo, hi) = q.representable_range(i % 2);
                let (want, want_code) = if v > 0.0 {
                    (hi, q.qmax())
                } else {
                    (lo, q.qmin())
                };
                assert_eq!(got[i], want, "{b} bits sym={symmetric} x={v}");
                assert_eq!(codes[i], want_code);
            }
        }
    }
}

#[test]
fn zero_ranges_give_finite_exact_zeros() {
    // Row 1 is all zero; the per-tensor quantizer sees an all-zero tensor.
    let x = [0.5, -0.25, 1.0, 0.0, 0.0, 0.0];
    for b in all_bits() {
        for symmetric in [false, true] {
            let per_row = calibrate_uniform(
                &x,
                &[2, 3],
                Granularity::PerChannel { axis: 0 },
                &RangeMethod::MinMax,
                b,
                symmetric,
            )
            .unwrap();
            assert_eq!(per_row.step(1), MIN_SCALE);
            let got = per_row.fake_quant_host(&x, &[2, 3]).unwrap();
            assert_eq!(&got[3..], &[0.0, 0.0, 0.0]);
            assert!(got.iter().all(|v| v.is_finite()));

            let zeros = [0.0f32; 6];
            let per_tensor = calibrate_uniform(
                &zeros,
                &[6],
                Granularity::PerTensor,
                &RangeMethod::repq(),
                b,
                symmetric,
            )
            .unwrap();
            assert!(per_tensor.step(0) > 0.0);
            assert_eq!(per_tensor.fake_quant_host(&zeros, &[6]).unwrap(), zeros);
            // Even huge inputs stay finite with the tiny step.
            let big = per_tensor
                .fake_quant_host(&[f32::MAX, -f32::MAX, 1.0], &[3])
                .unwrap();
            assert!(big.iter().all(|v| v.is_finite()), "{big:?}");
        }
    }
}

#[test]
fn hand_computed_levels_and_ties_to_even() {
    // Asymmetric 2 bits on [-1, 2]: s = 1, z = 1, levels {-1, 0, 1, 2}.
    let q = UniformQuantizer::from_range(bits(2), false, Granularity::PerTensor, &[-1.0], &[2.0])
        .unwrap();
    assert_eq!((q.step(0), q.zero_points()[0]), (1.0, 1.0));
    let x = [0.5, 1.5, -0.5, 2.5, -1.5, 0.49];
    assert_eq!(q.quantize_host(&x, &[6]).unwrap(), vec![1, 3, 1, 3, 0, 1]);
    assert_eq!(
        q.fake_quant_host(&x, &[6]).unwrap(),
        vec![0.0, 2.0, 0.0, 2.0, -1.0, 0.0]
    );

    // Symmetric 3 bits, max |x| = 3: s = 1, codes -3..=3, z = 0.
    let q = UniformQuantizer::from_range(bits(3), true, Granularity::PerTensor, &[-1.0], &[3.0])
        .unwrap();
    assert_eq!((q.qmin(), q.qmax(), q.step(0)), (-3, 3, 1.0));
    let x = [2.5, -2.5, 3.5, -3.7, 0.5, 1.5];
    assert_eq!(
        q.fake_quant_host(&x, &[6]).unwrap(),
        vec![2.0, -2.0, 3.0, -3.0, 0.0, 2.0]
    );
}

#[test]
fn ranges_are_widened_to_include_zero() {
    let q = UniformQuantizer::from_range(bits(8), false, Granularity::PerTensor, &[1.0], &[3.0])
        .unwrap();
    assert_eq!(q.step(0), 3.0 / 255.0);
    assert_eq!(q.zero_points()[0], 0.0);
    assert_eq!(q.fake_quant_host(&[0.0], &[1]).unwrap(), vec![0.0]);

    let q = UniformQuantizer::from_range(bits(4), false, Granularity::PerTensor, &[-3.0], &[-1.0])
        .unwrap();
    assert_eq!(q.step(0), 3.0 / 15.0);
    assert_eq!(q.zero_points()[0], 15.0);
    assert_eq!(q.representable_range(0).1, 0.0);
}

#[test]
fn per_group_uses_one_step_per_run_of_the_last_dimension() {
    // Two rows of 4, groups of 2: group maxima 1, 4, 0.5, 8.
    let x = [1.0, -0.5, 4.0, 2.0, 0.5, 0.25, -8.0, 1.0];
    let q = calibrate_uniform(
        &x,
        &[2, 4],
        Granularity::PerGroup { group_size: 2 },
        &RangeMethod::MinMax,
        bits(8),
        true,
    )
    .unwrap();
    let steps: Vec<f32> = [1.0f32, 4.0, 0.5, 8.0].iter().map(|m| m / 127.0).collect();
    assert_eq!(q.scales(), steps.as_slice());
}

#[test]
fn invalid_arguments_are_errors() {
    let pt = Granularity::PerTensor;
    let err = |r: mixq_core::Result<UniformQuantizer>| r.unwrap_err().to_string();
    assert!(
        err(UniformQuantizer::from_range(
            bits(4),
            false,
            pt,
            &[0.0, 0.0],
            &[1.0, 1.0]
        ))
        .contains("exactly one")
    );
    let ch = Granularity::PerChannel { axis: 0 };
    assert!(
        err(UniformQuantizer::from_range(
            bits(4),
            false,
            ch,
            &[0.0, 0.0],
            &[1.0]
        ))
        .contains("lower")
    );
    assert!(
        err(UniformQuantizer::from_range(
            bits(4),
            false,
            pt,
            &[f32::NAN],
            &[1.0]
        ))
        .contains("finite")
    );
    assert!(
        err(UniformQuantizer::from_range(
            bits(4),
            false,
            pt,
            &[2.0],
            &[1.0]
        ))
        .contains("above")
    );
    assert!(
        err(UniformQuantizer::from_parts(
            bits(4),
            true,
            pt,
            vec![0.1],
            vec![3.0]
        ))
        .contains("zero_point")
    );
    assert!(
        err(UniformQuantizer::from_parts(
            bits(4),
            false,
            pt,
            vec![0.0],
            vec![3.0]
        ))
        .contains("scale")
    );

    let q = UniformQuantizer::from_range(bits(4), false, ch, &[0.0, 0.0], &[1.0, 1.0]).unwrap();
    assert!(q.fake_quant_host(&[0.0; 6], &[3, 2]).is_err()); // 3 channels, not 2
    assert!(q.fake_quant_host(&[0.0; 5], &[2, 3]).is_err()); // length mismatch
    assert!(q.check_shape(&[2, 3]).is_ok());
    let axis = Granularity::PerChannel { axis: 2 };
    assert!(
        axis.num_params(&[2, 3])
            .unwrap_err()
            .to_string()
            .contains("axis")
    );
    let group = Granularity::PerGroup { group_size: 4 };
    assert!(
        group
            .num_params(&[2, 6])
            .unwrap_err()
            .to_string()
            .contains("group_size")
    );
    assert!(Granularity::PerTensor.num_params(&[2, 0]).is_err());
}

#[test]
fn serde_round_trip_and_validation() {
    let x = varied_data(3);
    let q = calibrate_uniform(
        &x,
        &SHAPE,
        Granularity::PerChannel { axis: 1 },
        &RangeMethod::repq(),
        bits(6),
        false,
    )
    .unwrap();
    let text = serde_json::to_string(&q).unwrap();
    let back: UniformQuantizer = serde_json::from_str(&text).unwrap();
    assert_eq!(back, q);

    let bad = text.replacen(&format!("{}", q.scales()[0]), "-1.0", 1);
    assert_ne!(bad, text);
    let err = serde_json::from_str::<UniformQuantizer>(&bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("scale"), "{err}");
}
