use mixq_quant_kernels::igemm::{ActQuant, Backend, IntGemm, RhsLayout, reference};
use mixq_quant_kernels::packing::{MAX_IN_FEATURES, PackedWeights};
use mixq_quant_kernels::{Granularity, UniformQuantizer};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::{bits, random_dim, random_weights, rng};

fn engines() -> [IntGemm; 3] {
    [
        IntGemm::new(),
        IntGemm::with_backend(Backend::Rten),
        IntGemm::with_backend(Backend::Portable),
    ]
}

fn random_act(r: &mut ChaCha8Rng) -> ActQuant {
    let b = r.random_range(2..=8u8);
    let zp = r.random_range(0..(1 << b));
    ActQuant::new(r.random_range(0.001f32..0.1), zp, bits(b)).unwrap()
}

fn random_codes(r: &mut ChaCha8Rng, len: usize, q: ActQuant) -> Vec<u8> {
    let (lo, hi) = q.code_range();
    (0..len).map(|_| r.random_range(lo..=hi) as u8).collect()
}

#[test]
fn kernel_is_reported() {
    let name = IntGemm::new().kernel_name();
    assert!(!name.is_empty());
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw") {
        assert_eq!(name, "mixq-vnni-6x64, rten x86_64-u8i8i32-avx512");
        assert!(!IntGemm::new().may_saturate());
        let own = |b: Backend, w: u8| IntGemm::with_backend(b).uses_own_vnni(bits(w));
        assert!(own(Backend::Auto, 4) && own(Backend::Auto, 3) && own(Backend::Auto, 8));
        assert!(own(Backend::Auto, 5) && own(Backend::Auto, 2));
        assert!(!own(Backend::Rten, 4) && !own(Backend::Rten, 8) && !own(Backend::Portable, 4));
    }
}

#[test]
fn i32_accumulators_equal_the_reference_on_random_odd_shapes() {
    let mut r = rng(10);
    for b in 2..=8u8 {
        for case in 0..25 {
            let (m, n, k) = (random_dim(&mut r), random_dim(&mut r), random_dim(&mut r));
            let w = random_weights(&mut r, n, k, b);
            let aq = random_act(&mut r);
            let a = random_codes(&mut r, m * k, aq);
            let want = reference::gemm_i32(&a, m, aq.zero_point(), &w);
            for g in engines() {
                let p = g.prepare(w.clone()).unwrap();
                let mut got = vec![0i32; m * n];
                g.gemm_i32(&a, m, aq.zero_point(), &p, &mut got).unwrap();
                assert_eq!(
                    got,
                    want,
                    "{:?} {b} bits, M {m} N {n} K {k}, case {case}",
                    g.backend()
                );
            }
        }
    }
}

#[test]
fn epilogues_equal_the_reference_bit_for_bit() {
    let mut r = rng(11);
    for b in 2..=8u8 {
        for _ in 0..10 {
            let (m, n, k) = (random_dim(&mut r), random_dim(&mut r), random_dim(&mut r));
            let w = random_weights(&mut r, n, k, b);
            let aq = random_act(&mut r);
            let a = random_codes(&mut r, m * k, aq);
            let bias: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
            let oq = ActQuant::new(
                r.random_range(0.01f32..0.5),
                r.random_range(0..256),
                bits(8),
            )
            .unwrap();
            for g in engines() {
                let p = g.prepare(w.clone()).unwrap();
                for bias in [None, Some(bias.as_slice())] {
                    let mut y = vec![0f32; m * n];
                    g.gemm_f32(&a, m, aq, &p, bias, &mut y).unwrap();
                    let want = reference::gemm_f32(&a, m, aq, &w, bias);
                    assert_eq!(
                        y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                    );
                    let mut q = vec![0u8; m * n];
                    g.gemm_u8(&a, m, aq, &p, bias, oq, &mut q).unwrap();
                    assert_eq!(q, reference::gemm_u8(&a, m, aq, &w, bias, oq));
                }
            }
        }
    }
}

/// Shapes spanning several of the own kernel's tasks (48-row × 256-channel blocks), with
/// ragged last row tiles, panels and `K` groups.
#[test]
fn large_ragged_shapes_equal_the_reference() {
    let mut r = rng(12);
    for (m, k, n) in [(100, 261, 300), (197, 72, 520), (49, 130, 1000)] {
        for b in [8u8, 6, 4, 3, 2] {
            let w = random_weights(&mut r, n, k, b);
            let aq = random_act(&mut r);
            let a = random_codes(&mut r, m * k, aq);
            let bias: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
            let oq = ActQuant::new(0.05, 100, bits(8)).unwrap();
            let want = reference::gemm_f32(&a, m, aq, &w, Some(&bias));
            let want_u8 = reference::gemm_u8(&a, m, aq, &w, Some(&bias), oq);
            for g in engines() {
                let p = g.prepare(w.clone()).unwrap();
                let mut y = vec![0f32; m * n];
                g.gemm_f32(&a, m, aq, &p, Some(&bias), &mut y).unwrap();
                let same = y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{:?} {b} bits, {m}x{k}x{n}", g.backend());
                let mut q = vec![0u8; m * n];
                g.gemm_u8(&a, m, aq, &p, Some(&bias), oq, &mut q).unwrap();
                assert_eq!(q, want_u8, "{:?} {b} bits, {m}x{k}x{n}", g.backend());
            }
        }
    }
}

/// The fused MLP epilogue: GELU of the dequantized value, requantized. The own kernel's
/// polynomial GELU may put a value at a rounding boundary on the neighbouring code; never
/// further, and rarely.
#[test]
fn gelu_epilogue_matches_the_scalar_gelu_within_one_code() {
    let mut r = rng(13);
    for (m, k, n) in [(97, 261, 300), (13, 64, 1000)] {
        for b in [8u8, 4] {
            let w = random_weights(&mut r, n, k, b);
            let aq = random_act(&mut r);
            let a = random_codes(&mut r, m * k, aq);
            let bias: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
            let y = reference::gemm_f32(&a, m, aq, &w, Some(&bias));
            // An output step fine enough that GELU's curvature is visible in the codes.
            let max = y.iter().fold(0f32, |m, v| m.max(v.abs()));
            let oq = ActQuant::from_range(-0.2 * max, max, bits(8)).unwrap();
            let want: Vec<u8> = y
                .iter()
                .map(|&v| oq.quantize_one(mixq_quant_kernels::vmath::gelu(v)))
                .collect();
            for g in engines() {
                let p = g.prepare(w.clone()).unwrap();
                let mut got = vec![0u8; m * n];
                g.gemm_gelu_u8(&a, m, aq, &p, Some(&bias), oq, &mut got)
                    .unwrap();
                let off = got.iter().zip(&want).filter(|(a, b)| a != b).count();
                let far = got.iter().zip(&want).any(|(&a, &b)| a.abs_diff(b) > 1);
                assert!(
                    !far && off * 200 <= got.len(),
                    "{:?} {b} bits: {off} of {} codes differ",
                    g.backend(),
                    got.len()
                );
            }
        }
    }
}

/// Extreme operands: `255 · ±128`-sized products everywhere, which saturate `vpmaddubsw`'s
/// `i16` pair sums if 8-bit weights ever reached AVX2's kernel uncentred or unguarded.
#[test]
fn extreme_codes_do_not_saturate() {
    for b in 2..=8u8 {
        let qmax = (1i32 << b) - 1;
        for (m, n, k) in [(8, 32, 64), (13, 37, 67), (1, 5, 131), (70, 65, 256)] {
            for (code, a_val, za, zw) in [
                (qmax, 255u8, 0, 0),
                (0, 255, 0, qmax),
                (qmax, 0, 255, 0),
                (0, 0, 255, qmax),
                (qmax, 255, 255, qmax),
            ] {
                let w = PackedWeights::from_codes(
                    n,
                    k,
                    bits(b),
                    &vec![code; n * k],
                    vec![1.0; n],
                    vec![zw; n],
                )
                .unwrap();
                let a = vec![a_val; m * k];
                let want = reference::gemm_i32(&a, m, za, &w);
                for g in engines() {
                    let p = g.prepare(w.clone()).unwrap();
                    let mut got = vec![0; m * n];
                    g.gemm_i32(&a, m, za, &p, &mut got).unwrap();
                    assert_eq!(
                        got,
                        want,
                        "{:?} {b} bits code {code} a {a_val} za {za} zw {zw}",
                        g.backend()
                    );
                }
            }
        }
    }
}

/// The largest reduction length: `K · 255 · 255` is just below `i32::MAX`.
#[test]
fn the_largest_k_is_exact() {
    let k = MAX_IN_FEATURES;
    for (code, zw, a_val, za) in [(255, 0, 255u8, 0), (0, 255, 0, 255), (255, 0, 0, 255)] {
        let w =
            PackedWeights::from_codes(3, k, bits(8), &vec![code; 3 * k], vec![1.0; 3], vec![zw; 3])
                .unwrap();
        let a = vec![a_val; 2 * k];
        let want = reference::gemm_i32(&a, 2, za, &w);
        assert_eq!(want[0].unsigned_abs(), (k * 255 * 255) as u32);
        for g in engines() {
            let p = g.prepare(w.clone()).unwrap();
            let mut got = vec![0; 6];
            g.gemm_i32(&a, 2, za, &p, &mut got).unwrap();
            assert_eq!(got, want);
        }
    }
    let too_long =
        PackedWeights::from_codes(1, k + 1, bits(8), &vec![0; k + 1], vec![1.0], vec![0]);
    assert!(too_long.unwrap_err().to_string().contains("in_features"));
}

#[test]
fn prepared_weights_work_on_the_other_backend_and_other_threads() {
    let mut r = rng(12);
    let w = random_weights(&mut r, 40, 50, 8);
    let a: Vec<u8> = (0..9 * 50).map(|_| r.random()).collect();
    let want = reference::gemm_i32(&a, 9, 7, &w);
    let p = IntGemm::new().prepare(w.clone()).unwrap();
    let mut got = vec![0; 9 * 40];
    IntGemm::with_backend(Backend::Portable)
        .gemm_i32(&a, 9, 7, &p, &mut got)
        .unwrap();
    assert_eq!(got, want);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut got = vec![0; 9 * 40];
            IntGemm::new().gemm_i32(&a, 9, 7, &p, &mut got).unwrap();
            assert_eq!(got, want);
        });
    });
}

#[test]
fn attention_products_equal_the_reference() {
    let mut r = rng(13);
    for _ in 0..40 {
        let (m, n, k) = (random_dim(&mut r), random_dim(&mut r), random_dim(&mut r));
        let (qa, qb) = (random_act(&mut r), random_act(&mut r));
        let a = random_codes(&mut r, m * k, qa);
        let b = random_codes(&mut r, n * k, qb);
        for layout in [RhsLayout::NK, RhsLayout::KN] {
            let want = reference::gemm_u8u8_f32(&a, m, qa, &b, n, qb, layout);
            for g in engines() {
                let mut got = vec![0f32; m * n];
                g.gemm_u8u8_f32(&a, m, qa, &b, n, qb, layout, &mut got)
                    .unwrap();
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{layout:?} M {m} N {n} K {k}"
                );
            }
        }
    }
}

#[test]
fn activation_quantization_matches_the_uniform_quantizer() {
    let mut r = rng(14);
    let x: Vec<f32> = (0..40_000).map(|_| r.random_range(-3.0f32..5.0)).collect();
    for b in 2..=8u8 {
        for symmetric in [false, true] {
            let q = UniformQuantizer::from_range(
                bits(b),
                symmetric,
                Granularity::PerTensor,
                &[-2.0],
                &[4.0],
            )
            .unwrap();
            let aq = ActQuant::from_quantizer(&q).unwrap();
            let shift = if symmetric { 1 << (b - 1) } else { 0 };
            let want: Vec<u8> = q
                .quantize_host(&x, &[x.len()])
                .unwrap()
                .iter()
                .map(|&c| (c + shift) as u8)
                .collect();
            assert_eq!(aq.quantize_vec(&x), want, "{b} bits sym {symmetric}");
            let fq = q.fake_quant_host(&x[..100], &[100]).unwrap();
            let back: Vec<f32> = want[..100].iter().map(|&c| aq.dequantize(c)).collect();
            assert_eq!(back, fq);
        }
    }
    let per_channel = UniformQuantizer::from_range(
        bits(8),
        false,
        Granularity::PerChannel { axis: 0 },
        &[-1.0; 2],
        &[1.0; 2],
    )
    .unwrap();
    assert!(
        ActQuant::from_quantizer(&per_channel)
            .unwrap_err()
            .to_string()
            .contains("granularity")
    );
}

#[test]
fn mismatched_shapes_are_errors() {
    let mut r = rng(15);
    let g = IntGemm::new();
    let w = g.prepare(random_weights(&mut r, 4, 6, 4)).unwrap();
    let aq = ActQuant::new(0.1, 3, bits(8)).unwrap();
    let mut out = vec![0f32; 8];
    let e = g
        .gemm_f32(&[0; 11], 2, aq, &w, None, &mut out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("activations"), "{e}");
    let e = g
        .gemm_f32(&[0; 12], 2, aq, &w, None, &mut out[..7])
        .unwrap_err()
        .to_string();
    assert!(e.contains("out"), "{e}");
    let e = g
        .gemm_f32(&[0; 12], 2, aq, &w, Some(&[0.0; 3]), &mut out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bias"), "{e}");
    let e = g
        .gemm_u8u8_f32(&[0; 12], 2, aq, &[0; 7], 2, aq, RhsLayout::NK, &mut out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("b ="), "{e}");
    assert!(ActQuant::new(0.0, 0, bits(8)).is_err());
    assert!(ActQuant::new(1.0, 16, bits(4)).is_err());
    // M = 0 is an empty product.
    g.gemm_f32(&[], 0, aq, &w, None, &mut []).unwrap();
}
