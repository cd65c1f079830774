use mixq_quant_kernels::{LogBase, LogQuantizer, MIN_SCALE};

use crate::common::{all_bits, bits, rng};
use rand::Rng;

const BASES: [LogBase; 2] = [LogBase::Log2, LogBase::LogSqrt2];

fn per_octave(base: LogBase) -> f64 {
    match base {
        LogBase::Log2 => 1.0,
        LogBase::LogSqrt2 => 2.0,
    }
}

/// `s * 2^(-k/d)` in f64, the closed form of level `k`.
fn closed_form(s: f32, k: usize, base: LogBase) -> f64 {
    f64::from(s) * (-(k as f64) / per_octave(base)).exp2()
}

#[test]
fn levels_equal_the_closed_form() {
    for b in all_bits() {
        for base in BASES {
            let s = 0.8125f32;
            let q = LogQuantizer::new(b, base, s).unwrap();
            let levels = q.levels();
            assert_eq!(levels.len(), 1 << b.get());
            for (k, &l) in levels.iter().enumerate() {
                let want = closed_form(s, k, base);
                // Two roundings (unit level, product); denormal unit levels lose absolute
                // precision 2^-150 before scaling.
                let tol = want * 2f64.powi(-22) + f64::from(s) * 2f64.powi(-149);
                assert!(
                    (f64::from(l) - want).abs() <= tol,
                    "{b} bits {base:?} k={k}: {l} vs {want}"
                );
            }
            // Every level is its own fake-quant.
            assert_eq!(
                q.fake_quant_host(&levels[..levels.len().min(120)]),
                levels[..levels.len().min(120)]
            );
        }
    }
}

#[test]
fn log_sqrt2_matches_repq_vit_dequantization() {
    // RepQ-ViT writes level q as 2^(-ceil(q/2)) * (sqrt(2) if q odd else 1) * s.
    let s = 0.6f32;
    let q = LogQuantizer::new(bits(4), LogBase::LogSqrt2, s).unwrap();
    for (k, &l) in q.levels().iter().enumerate() {
        let odd = if k % 2 == 1 {
            std::f64::consts::SQRT_2
        } else {
            1.0
        };
        let want = (-((k as f64 / 2.0).ceil())).exp2() * odd * f64::from(s);
        assert!(
            (f64::from(l) - want).abs() <= want * 1e-6,
            "k={k}: {l} vs {want}"
        );
    }
}

#[test]
fn rounding_is_to_the_nearest_level_in_the_log_domain() {
    for b in [bits(2), bits(3), bits(5)] {
        for base in BASES {
            let s = 0.5f32;
            let q = LogQuantizer::new(b, base, s).unwrap();
            let levels = q.levels();
            let n = levels.len();
            let d = per_octave(base);
            for k in 0..n {
                // Geometric midpoint between level k and k + 1.
                let mid = f64::from(s) * (-(k as f64 + 0.5) / d).exp2();
                let above = (mid * (1.0 + 1e-4)) as f32;
                let below = (mid * (1.0 - 1e-4)) as f32;
                let got = q.fake_quant_host(&[above, below]);
                assert_eq!(got[0], levels[k], "{b} bits {base:?} k={k} above");
                let next = if k + 1 < n { levels[k + 1] } else { 0.0 };
                assert_eq!(got[1], next, "{b} bits {base:?} k={k} below");
            }
            // Zero, negatives and tiny values become 0; values above s become s.
            let got = q.fake_quant_host(&[0.0, -0.25, 1e-30, 3.0, s]);
            assert_eq!(got, vec![0.0, 0.0, 0.0, s, s]);
        }
    }
}

#[test]
fn codes_equal_round_of_minus_d_log2_computed_in_f64() {
    let mut r = rng(11);
    for b in all_bits() {
        for base in BASES {
            let s = 0.9f32;
            let q = LogQuantizer::new(b, base, s).unwrap();
            let n = 1u32 << b.get();
            let d = per_octave(base);
            let x: Vec<f32> = (0..4000)
                .map(|_| s * (-r.random_range(0.0f32..40.0)).exp2() * r.random_range(0.5f32..1.2))
                .collect();
            let codes = q.quantize_host(&x);
            for (&v, &c) in x.iter().zip(&codes) {
                let t = -d * f64::from(v / s).log2();
                if (t - t.floor() - 0.5).abs() < 1e-9 {
                    continue; // within f64 error of a rounding boundary
                }
                let want = t.round().max(0.0).min(f64::from(n)) as u32;
                assert_eq!(c, want, "{b} bits {base:?} x={v} -d*log2={t}");
            }
        }
    }
}

#[test]
fn all_zero_calibration_gives_zeros() {
    for base in BASES {
        let q = LogQuantizer::from_max(bits(4), base, 0.0).unwrap();
        assert_eq!(q.scale(), MIN_SCALE);
        assert_eq!(q.fake_quant_host(&[0.0, 0.0]), vec![0.0, 0.0]);
        assert!(LogQuantizer::from_max(bits(4), base, f32::NAN).is_err());
        assert!(LogQuantizer::new(bits(4), base, 0.0).is_err());
    }
}

#[test]
fn serde_round_trip_and_validation() {
    let q = LogQuantizer::new(bits(4), LogBase::LogSqrt2, 0.75).unwrap();
    let text = serde_json::to_string(&q).unwrap();
    assert_eq!(serde_json::from_str::<LogQuantizer>(&text).unwrap(), q);
    let bad = text.replace("0.75", "-0.75");
    assert!(serde_json::from_str::<LogQuantizer>(&bad).is_err());
}
