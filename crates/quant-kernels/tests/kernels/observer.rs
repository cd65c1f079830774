use mixq_quant_kernels::{
    Granularity, LogBase, LogQuantizer, RangeMethod, UniformQuantizer, calibrate_log,
    calibrate_uniform, observe_ranges, quantile,
};
use rand::Rng;

use crate::common::{bits, random_vec, rng};

#[test]
fn quantile_matches_numpy_linear_interpolation() {
    // numpy.quantile([3, 1, 4, 1, 5, 9, 2, 6], p): sorted [1, 1, 2, 3, 4, 5, 6, 9],
    // position p * 7: 0.3 -> 2.1 -> 2 + 0.1 * (3 - 2); 0.9 -> 6.3 -> 6 + 0.3 * (9 - 6).
    let v = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
    let cases = [(0.0, 1.0), (0.3, 2.1), (0.5, 3.5), (0.9, 6.9), (1.0, 9.0)];
    for (p, want) in cases {
        let got = quantile(&v, p).unwrap();
        assert!((got - want).abs() < 1e-6, "p={p}: {got} vs {want}");
    }
    assert_eq!(quantile(&[7.0], 0.42).unwrap(), 7.0);
    assert!(quantile(&[], 0.5).is_err());
    assert!(quantile(&v, 1.5).is_err());
    assert!(quantile(&[1.0, f32::NAN], 0.5).is_err());
}

#[test]
fn min_max_and_quantile_ranges_per_channel() {
    // [2, 3] with per-column ranges.
    let x = [1.0, -2.0, 0.5, 3.0, 4.0, -0.5];
    let (lo, hi) = observe_ranges(
        &x,
        &[2, 3],
        Granularity::PerChannel { axis: 1 },
        &RangeMethod::MinMax,
        bits(8),
        false,
    )
    .unwrap();
    assert_eq!((lo, hi), (vec![1.0, -2.0, -0.5], vec![3.0, 4.0, 0.5]));

    let x: Vec<f32> = (1..=101).map(|v| v as f32).collect();
    let (lo, hi) = observe_ranges(
        &x,
        &[101],
        Granularity::PerTensor,
        &RangeMethod::Quantile(0.99),
        bits(8),
        false,
    )
    .unwrap();
    assert_eq!((lo[0], hi[0]), (2.0, 100.0));
}

/// Squared error of quantizing `values` with the range of quantile `p`, via the public API.
fn candidate_error(values: &[f32], p: f64, b: u8, symmetric: bool) -> (f64, (f32, f32)) {
    let range = (
        quantile(values, 1.0 - p).unwrap(),
        quantile(values, p).unwrap(),
    );
    let q = UniformQuantizer::from_range(
        bits(b),
        symmetric,
        Granularity::PerTensor,
        &[range.0],
        &[range.1],
    )
    .unwrap();
    let fq = q.fake_quant_host(values, &[values.len()]).unwrap();
    let err = fq
        .iter()
        .zip(values)
        .map(|(&a, &v)| (f64::from(a) - f64::from(v)).powi(2))
        .sum();
    (err, range)
}

#[test]
fn search_picks_the_candidate_with_the_lowest_error_per_channel() {
    // 12 rows of heavy-tailed values with a row-dependent number of outliers.
    let mut r = rng(5);
    let (rows, cols) = (12, 200);
    let mut x = Vec::with_capacity(rows * cols);
    for row in 0..rows {
        for c in 0..cols {
            let base: f32 = r.random_range(-1.0..1.0);
            let v = if c < row {
                base * 20.0
            } else {
                base * base * base
            };
            x.push(v);
        }
    }
    let candidates = vec![0.9, 0.95, 0.99, 0.995, 1.0];
    let mut picked = std::collections::BTreeSet::new();
    for (b, symmetric) in [(3, false), (4, true), (8, false)] {
        let (lo, hi) = observe_ranges(
            &x,
            &[rows, cols],
            Granularity::PerChannel { axis: 0 },
            &RangeMethod::Search(candidates.clone()),
            bits(b),
            symmetric,
        )
        .unwrap();
        for row in 0..rows {
            let values = &x[row * cols..(row + 1) * cols];
            let mut best = candidate_error(values, candidates[0], b, symmetric);
            let mut best_i = 0;
            for (i, &p) in candidates.iter().enumerate().skip(1) {
                let e = candidate_error(values, p, b, symmetric);
                if e.0 < best.0 {
                    (best, best_i) = (e, i);
                }
            }
            assert_eq!(
                (lo[row], hi[row]),
                best.1,
                "{b} bits sym={symmetric} row {row}"
            );
            picked.insert(best_i);
        }
    }
    // The data must make the choice non-trivial.
    assert!(
        picked.len() >= 2,
        "every row picked the same candidate: {picked:?}"
    );
}

#[test]
fn search_clips_a_single_outlier() {
    // The outlier's own clipping error (19^2) is far below what its step costs the bulk.
    let mut x = random_vec(9, 50_000, -1.0, 1.0);
    x[1234] = 20.0;
    let shape = [x.len()];
    let sq_err = |q: &UniformQuantizer| -> f64 {
        let fq = q.fake_quant_host(&x, &shape).unwrap();
        fq.iter()
            .zip(&x)
            .map(|(&a, &v)| (f64::from(a) - f64::from(v)).powi(2))
            .sum()
    };
    for symmetric in [false, true] {
        let pt = Granularity::PerTensor;
        let searched =
            calibrate_uniform(&x, &shape, pt, &RangeMethod::repq(), bits(4), symmetric).unwrap();
        let minmax =
            calibrate_uniform(&x, &shape, pt, &RangeMethod::MinMax, bits(4), symmetric).unwrap();
        let (_, hi) = searched.representable_range(0);
        assert!(
            hi < 2.0,
            "sym={symmetric}: searched range not clipped (hi = {hi})"
        );
        assert!(sq_err(&searched) < sq_err(&minmax), "sym={symmetric}");
    }
}

#[test]
fn log_search_picks_the_candidate_with_the_lowest_error() {
    let mut r = rng(13);
    let mut x: Vec<f32> = (0..5000)
        .map(|_| (-r.random_range(0.0f32..12.0)).exp2() * 0.1)
        .collect();
    x[17] = 1.0;
    x[99] = 0.0;
    let candidates = vec![0.99, 0.999, 0.9999, 1.0];
    for base in [LogBase::Log2, LogBase::LogSqrt2] {
        let q = calibrate_log(&x, bits(4), base, &RangeMethod::Search(candidates.clone())).unwrap();
        let errors: Vec<f64> = candidates
            .iter()
            .map(|&p| {
                let c = LogQuantizer::from_max(bits(4), base, quantile(&x, p).unwrap()).unwrap();
                c.fake_quant_host(&x)
                    .iter()
                    .zip(&x)
                    .map(|(&a, &v)| (f64::from(a) - f64::from(v)).powi(2))
                    .sum()
            })
            .collect();
        let best = (1..errors.len()).fold(0, |b, i| if errors[i] < errors[b] { i } else { b });
        let want = quantile(&x, candidates[best]).unwrap();
        assert_eq!(q.scale(), want, "{base:?}: errors {errors:?}");
        assert_eq!(
            calibrate_log(&x, bits(4), base, &RangeMethod::MinMax)
                .unwrap()
                .scale(),
            1.0
        );
    }
}

#[test]
fn invalid_observer_arguments_are_errors() {
    let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let b = bits(4);
    let mm = RangeMethod::MinMax;
    let obs = |x: &[f32], shape: &[usize], g: Granularity, m: &RangeMethod| {
        observe_ranges(x, shape, g, m, b, false)
            .unwrap_err()
            .to_string()
    };
    assert!(obs(&[], &[0], Granularity::PerTensor, &mm).contains("no elements"));
    assert!(obs(&x, &[2, 2], Granularity::PerTensor, &mm).contains("elements"));
    assert!(obs(&x, &[2, 3], Granularity::PerChannel { axis: 2 }, &mm).contains("axis"));
    assert!(obs(&x, &[2, 3], Granularity::PerGroup { group_size: 2 }, &mm).contains("group_size"));
    for bad in [0.5, 0.2, 1.01, f64::NAN] {
        let msg = obs(
            &x,
            &[6],
            Granularity::PerTensor,
            &RangeMethod::Quantile(bad),
        );
        assert!(msg.contains("quantile"), "{bad}: {msg}");
        assert!(
            obs(
                &x,
                &[6],
                Granularity::PerTensor,
                &RangeMethod::Search(vec![0.99, bad])
            )
            .contains("quantile")
        );
    }
    assert!(
        obs(
            &x,
            &[6],
            Granularity::PerTensor,
            &RangeMethod::Search(vec![])
        )
        .contains("candidates")
    );
    assert!(obs(&[1.0, f32::INFINITY], &[2], Granularity::PerTensor, &mm).contains("non-finite"));
    assert!(calibrate_log(&[], b, LogBase::Log2, &mm).is_err());
}

#[test]
fn range_method_serde_and_repq_defaults() {
    assert_eq!(
        RangeMethod::repq(),
        RangeMethod::Search(vec![0.999, 0.9999, 0.99999])
    );
    for m in [
        RangeMethod::MinMax,
        RangeMethod::Quantile(0.999),
        RangeMethod::repq(),
    ] {
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<RangeMethod>(&text).unwrap(), m);
    }
}
