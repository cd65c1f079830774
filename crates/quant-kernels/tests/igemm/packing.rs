use mixq_core::BitWidth;
use mixq_quant_kernels::igemm::{unpack_codes_offset, unpack_codes_scalar};
use mixq_quant_kernels::packing::{PackedWeights, container_bits};
use mixq_quant_kernels::{Granularity, UniformQuantizer};
use rand::Rng;

use crate::{bits, random_dim, rng};

#[test]
fn containers_follow_the_bit_width() {
    let want = [(2, 2), (3, 4), (4, 4), (5, 8), (6, 8), (7, 8), (8, 8)];
    for (b, c) in want {
        assert_eq!(container_bits(bits(b)), c, "{b} bits");
    }
}

#[test]
fn codes_round_trip_for_every_bit_width_and_odd_shape() {
    let mut r = rng(1);
    for b in 2..=8u8 {
        for _ in 0..20 {
            let (n, k) = (random_dim(&mut r), random_dim(&mut r));
            let qmax = (1i32 << b) - 1;
            let codes: Vec<i32> = (0..n * k).map(|_| r.random_range(0..=qmax)).collect();
            let w =
                PackedWeights::from_codes(n, k, bits(b), &codes, vec![1.0; n], vec![0; n]).unwrap();
            let c = container_bits(bits(b)) as usize;
            assert_eq!(w.row_bytes(), (k * c).div_ceil(8));
            assert_eq!(w.data().len(), n * w.row_bytes());
            let back: Vec<i32> = w.unpack_codes().iter().map(|&q| i32::from(q)).collect();
            assert_eq!(back, codes, "{b} bits, [{n}, {k}]");
            for (i, &q) in codes.iter().enumerate() {
                assert_eq!(i32::from(w.code(i / k, i % k)), q);
            }
            // The bytes re-adopted through the validating constructor are the same weights.
            let again = PackedWeights::from_parts(
                n,
                k,
                bits(b),
                w.data().to_vec(),
                w.scales().to_vec(),
                w.zero_points().to_vec(),
            )
            .unwrap();
            assert_eq!(again, w);
        }
    }
}

#[test]
fn layout_is_little_end_first_within_each_row() {
    let w4 = PackedWeights::from_codes(1, 3, bits(4), &[1, 2, 15], vec![1.0], vec![0]).unwrap();
    assert_eq!(w4.data(), &[0x21, 0x0F]);
    let w2 = PackedWeights::from_codes(
        2,
        5,
        bits(2),
        &[1, 2, 3, 0, 3, 0, 0, 0, 1, 2],
        vec![1.0; 2],
        vec![0; 2],
    )
    .unwrap();
    assert_eq!(w2.data(), &[0b00_11_10_01, 0b11, 0b01_00_00_00, 0b10]);
    let w3 = PackedWeights::from_codes(1, 2, bits(3), &[7, 5], vec![1.0], vec![0]).unwrap();
    assert_eq!(w3.data(), &[0x57]);
}

#[test]
fn simd_unpack_equals_scalar_for_all_lengths_and_offsets() {
    let mut r = rng(2);
    for container in [2u32, 4, 8] {
        let per = 8 / container as usize;
        for len in (0..300usize).chain([1000, 1023, 4096 + 17]) {
            let src: Vec<u8> = (0..len.div_ceil(per)).map(|_| r.random()).collect();
            for offset in [0u8, 1, 2, 8, 64, 128] {
                let mut simd = vec![0u8; len];
                let mut scalar = vec![0u8; len];
                unpack_codes_offset(&src, container, offset, &mut simd);
                unpack_codes_scalar(&src, container, offset, &mut scalar);
                assert_eq!(
                    simd, scalar,
                    "container {container}, len {len}, offset {offset}"
                );
            }
        }
    }
}

#[test]
fn quantize_matches_the_uniform_quantizer() {
    let mut r = rng(3);
    for b in 2..=8u8 {
        for symmetric in [false, true] {
            for per_tensor in [false, true] {
                let (n, k) = (random_dim(&mut r), random_dim(&mut r));
                let w: Vec<f32> = (0..n * k)
                    .map(|i| r.random_range(-1.0f32..1.0) * (1 + i % 5) as f32 + 0.1)
                    .collect();
                let (g, count) = if per_tensor {
                    (Granularity::PerTensor, 1)
                } else {
                    (Granularity::PerChannel { axis: 0 }, n)
                };
                let lo: Vec<f32> = (0..count).map(|_| r.random_range(-3.0f32..0.0)).collect();
                let hi: Vec<f32> = (0..count).map(|_| r.random_range(0.0f32..3.0)).collect();
                let q = UniformQuantizer::from_range(bits(b), symmetric, g, &lo, &hi).unwrap();
                let p = PackedWeights::quantize(&w, n, k, &q).unwrap();
                // Same real values as the quantizer's own fake-quant.
                assert_eq!(
                    p.dequantize(),
                    q.fake_quant_host(&w, &[n, k]).unwrap(),
                    "{b} bits sym {symmetric}"
                );
                let shift = if symmetric { 1 << (b - 1) } else { 0 };
                let codes: Vec<i32> = p
                    .unpack_codes()
                    .iter()
                    .map(|&c| i32::from(c) - shift)
                    .collect();
                assert_eq!(codes, q.quantize_host(&w, &[n, k]).unwrap());
            }
        }
    }
}

#[test]
fn minmax_packing_error_is_at_most_half_a_step() {
    let mut r = rng(4);
    let (n, k) = (7, 33);
    let w: Vec<f32> = (0..n * k).map(|_| r.random_range(-2.0f32..1.0)).collect();
    for b in 2..=8u8 {
        let p = PackedWeights::quantize_minmax(&w, n, k, bits(b)).unwrap();
        for (i, (x, y)) in w.iter().zip(p.dequantize()).enumerate() {
            let s = p.scales()[i / k];
            assert!((x - y).abs() <= 0.5 * s * 1.0001, "{b} bits: {x} vs {y}");
        }
    }
}

#[test]
fn bad_inputs_are_errors_naming_the_value() {
    let b4 = bits(4);
    let err = |r: mixq_core::Result<PackedWeights>| r.unwrap_err().to_string();
    assert!(
        err(PackedWeights::from_codes(
            2,
            3,
            b4,
            &[0; 5],
            vec![1.0; 2],
            vec![0; 2]
        ))
        .contains("codes")
    );
    assert!(
        err(PackedWeights::from_codes(
            1,
            2,
            b4,
            &[0, 16],
            vec![1.0],
            vec![0]
        ))
        .contains("code = 16")
    );
    assert!(
        err(PackedWeights::from_codes(
            1,
            2,
            b4,
            &[0, 1],
            vec![1.0, 2.0],
            vec![0]
        ))
        .contains("scales")
    );
    assert!(
        err(PackedWeights::from_codes(
            1,
            2,
            b4,
            &[0, 1],
            vec![0.0],
            vec![0]
        ))
        .contains("scale")
    );
    assert!(
        err(PackedWeights::from_codes(
            1,
            2,
            b4,
            &[0, 1],
            vec![1.0],
            vec![16]
        ))
        .contains("zero_point = 16")
    );
    assert!(err(PackedWeights::from_codes(0, 2, b4, &[], vec![], vec![])).contains("out_features"));
    assert!(
        err(PackedWeights::from_codes(1, 0, b4, &[], vec![1.0], vec![0])).contains("in_features")
    );
    // from_parts: wrong byte count, a 3-bit code above 7, non-zero padding.
    assert!(
        err(PackedWeights::from_parts(
            2,
            3,
            b4,
            vec![0; 3],
            vec![1.0; 2],
            vec![0; 2]
        ))
        .contains("data")
    );
    assert!(
        err(PackedWeights::from_parts(
            1,
            2,
            bits(3),
            vec![0x80],
            vec![1.0],
            vec![0]
        ))
        .contains("code = 8")
    );
    assert!(
        err(PackedWeights::from_parts(
            1,
            3,
            b4,
            vec![0, 0x10],
            vec![1.0],
            vec![0]
        ))
        .contains("padding")
    );
    assert!(
        err(PackedWeights::from_parts(
            1,
            1,
            bits(6),
            vec![64],
            vec![1.0],
            vec![0]
        ))
        .contains("code = 64")
    );
    // A per-group quantizer does not fit packed per-channel weights.
    let q = UniformQuantizer::from_range(
        b4,
        false,
        Granularity::PerGroup { group_size: 2 },
        &[-1.0, -1.0],
        &[1.0, 1.0],
    )
    .unwrap();
    assert!(err(PackedWeights::quantize(&[0.0; 4], 1, 4, &q)).contains("granularity"));
    let _ = BitWidth::MAX;
}
