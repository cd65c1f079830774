//! The OKS evaluator against pycocotools' own numbers (tests/fixtures/coco,
//! made by tools/make_coco_fixtures.py) and against OKS values worked by hand.

use std::path::PathBuf;

use mixq_datasets::coco::{COCO_SIGMAS, CocoAnnotation, CocoImage, CocoKeypoints};
use mixq_datasets::cocoeval::oks;
use mixq_datasets::{KeypointResult, OksStats, evaluate_keypoints, load_keypoint_results};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/coco")
}

#[test]
fn every_stat_matches_pycocotools() {
    let dir = fixtures();
    let text = std::fs::read_to_string(dir.join("expected_stats.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = expected["cases"].as_object().unwrap();
    assert!(cases.len() >= 8, "fixture cases missing");
    let mut max_diff = 0.0f64;
    let mut saw_minus_one = false;
    for (name, case) in cases {
        let want: Vec<f64> = case["stats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let gt = CocoKeypoints::load(dir.join(format!("{name}_gt.json"))).unwrap();
        let dt = load_keypoint_results(dir.join(format!("{name}_dt.json"))).unwrap();
        let got = evaluate_keypoints(&gt, &dt).unwrap().to_array();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let d = (g - w).abs();
            max_diff = max_diff.max(d);
            saw_minus_one |= *w == -1.0;
            assert!(
                d <= 1e-6,
                "{name} {}: mixq {g} vs pycocotools {w}",
                OksStats::NAMES[i]
            );
        }
    }
    assert!(
        saw_minus_one,
        "no case exercises the -1 (no ground truth) path"
    );
    eprintln!("max |mixq - pycocotools| over all fixture stats: {max_diff:e}");
}

fn kpts(points: &[(f64, f64, f64)]) -> Vec<f64> {
    let mut v = vec![0.0; 51];
    for (k, &(x, y, vis)) in points.iter().enumerate() {
        v[3 * k] = x;
        v[3 * k + 1] = y;
        v[3 * k + 2] = vis;
    }
    v
}

#[test]
fn oks_of_one_pair_by_hand() {
    // Nose off by (3, 4) -> d² = 25; sigma .026 -> var = .052²; area 10000:
    // e = 25 / .002704 / 10000 / 2 = 0.46227810650887574, exp(-e) = 0.6298471509901603.
    let gt = kpts(&[(10.0, 10.0, 2.0)]);
    let dt = kpts(&[(13.0, 14.0, 1.0)]);
    let o = oks(&gt, [0.0, 0.0, 100.0, 100.0], 10000.0, &dt, &COCO_SIGMAS);
    assert!((o - 0.6298471509901603).abs() < 1e-12, "{o}");
    // A second visible keypoint predicted exactly: mean of the two.
    let gt = kpts(&[(10.0, 10.0, 2.0), (20.0, 20.0, 1.0)]);
    let dt = kpts(&[(13.0, 14.0, 0.0), (20.0, 20.0, 0.0)]);
    let o = oks(&gt, [0.0, 0.0, 100.0, 100.0], 10000.0, &dt, &COCO_SIGMAS);
    assert!((o - 0.8149235754950801).abs() < 1e-12, "{o}");
}

#[test]
fn oks_without_visible_keypoints_uses_the_enlarged_box() {
    // Box [0, 0, 10, 20] -> x in [-10, 20], y in [-20, 40]. Every predicted
    // keypoint at (25, 0) is 5 px right of it: mean over the 17 sigmas of
    // exp(-25 / (2 sigma)² / 400 / 2) = 0.22057473912809686.
    let gt = vec![0.0; 51];
    let dt: Vec<f64> = (0..17).flat_map(|_| [25.0, 0.0, 1.0]).collect();
    let o = oks(&gt, [0.0, 0.0, 10.0, 20.0], 400.0, &dt, &COCO_SIGMAS);
    assert!((o - 0.22057473912809686).abs() < 1e-12, "{o}");
    // Inside the enlarged box the distance is zero.
    let dt: Vec<f64> = (0..17).flat_map(|_| [19.0, -19.0, 1.0]).collect();
    assert_eq!(
        oks(&gt, [0.0, 0.0, 10.0, 20.0], 400.0, &dt, &COCO_SIGMAS),
        1.0
    );
}

fn one_person(id: i64, area: f64, num_keypoints: usize, crowd: bool) -> CocoKeypoints {
    let k: Vec<f64> = (0..17)
        .flat_map(|i| [50.0 + 3.0 * i as f64, 40.0 + 6.0 * i as f64, 2.0])
        .collect();
    CocoKeypoints {
        source: "mem.json".into(),
        images: vec![CocoImage {
            id: 1,
            file_name: "a.png".into(),
            width: 200,
            height: 200,
        }],
        annotations: vec![CocoAnnotation {
            id,
            image_id: 1,
            category_id: 1,
            keypoints: k,
            bbox: [50.0, 40.0, 48.0, 96.0],
            area,
            iscrowd: crowd,
            num_keypoints,
        }],
        categories: vec![CocoKeypoints::person_category()],
    }
}

fn as_result(gt: &CocoKeypoints, score: f64) -> KeypointResult {
    KeypointResult {
        image_id: 1,
        category_id: 1,
        keypoints: gt.annotations[0].keypoints.clone(),
        score,
        bbox: None,
    }
}

#[test]
fn quirks_of_pycocotools_are_kept() {
    // A perfect prediction of a medium person.
    let gt = one_person(7, 3000.0, 17, false);
    // (A single match has precision 1 / (1 + eps), as in pycocotools.)
    let s = evaluate_keypoints(&gt, &[as_result(&gt, 0.9)]).unwrap();
    let near = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(
        near(s.ap, 1.0) && near(s.ap_medium, 1.0) && near(s.ar, 1.0),
        "{s:?}"
    );
    assert_eq!(s.ap_large, -1.0);
    // A duplicate with a lower score is a false positive after the match,
    // so precision stays 1 up to full recall: AP unchanged.
    let s = evaluate_keypoints(&gt, &[as_result(&gt, 0.9), as_result(&gt, 0.5)]).unwrap();
    assert!(near(s.ap, 1.0), "{}", s.ap);
    // ... but ranked first it lowers precision at every recall point to 1/2.
    let mut worse = as_result(&gt, 0.95);
    worse.keypoints[0] += 500.0;
    for k in 1..17 {
        worse.keypoints[3 * k] += 500.0;
    }
    let s = evaluate_keypoints(&gt, &[worse.clone(), as_result(&gt, 0.9)]).unwrap();
    assert!((s.ap - 0.5).abs() < 1e-12, "{}", s.ap);
    // A ground truth whose id is 0 never counts as matched (dtm stores ids).
    let gt0 = one_person(0, 3000.0, 17, false);
    let s = evaluate_keypoints(&gt0, &[as_result(&gt0, 0.9)]).unwrap();
    assert_eq!((s.ap, s.ar), (0.0, 0.0));
    // num_keypoints == 0 (the field) or crowd: ignored, nothing left -> -1.
    for gt in [
        one_person(3, 3000.0, 0, false),
        one_person(3, 3000.0, 17, true),
    ] {
        let s = evaluate_keypoints(&gt, &[as_result(&gt, 0.9)]).unwrap();
        assert_eq!(s.to_array(), [-1.0; 10]);
    }
    // An unknown image in the results is an error naming it.
    let mut bad = as_result(&gt, 0.9);
    bad.image_id = 42;
    let err = evaluate_keypoints(&gt, &[bad]).unwrap_err().to_string();
    assert!(
        err.contains("image 42") && err.contains("mem.json"),
        "{err}"
    );
}
