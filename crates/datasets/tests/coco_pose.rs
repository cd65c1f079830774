//! COCO loading, the synthetic pose generator and the top-down pipeline.

use std::fs;
use std::path::Path;

use mixq_datasets::coco::NUM_KEYPOINTS;
use mixq_datasets::pose_transform::{decode_heatmaps, gaussian_targets};
use mixq_datasets::synthetic_pose::SYNTHETIC_JSON;
use mixq_datasets::{
    CocoKeypoints, KeypointResult, PoseAugment, SyntheticPoses, TopDownConfig, TopDownDataset,
    evaluate_keypoints, keypoint_results, load_detections, load_keypoint_results,
    save_keypoint_results,
};

fn generate(dir: &Path, n: usize, seed: u64) -> CocoKeypoints {
    let json = SyntheticPoses::generate(dir, n, 320, 240, seed).unwrap();
    assert_eq!(json, dir.join(SYNTHETIC_JSON));
    CocoKeypoints::load(&json).unwrap()
}

#[test]
fn generator_is_deterministic_and_seed_dependent() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    generate(a.path(), 6, 11);
    generate(b.path(), 6, 11);
    generate(c.path(), 6, 12);
    let read = |d: &Path, f: &str| fs::read(d.join(f)).unwrap();
    assert_eq!(
        read(a.path(), SYNTHETIC_JSON),
        read(b.path(), SYNTHETIC_JSON)
    );
    assert_eq!(
        read(a.path(), "images/000005.png"),
        read(b.path(), "images/000005.png")
    );
    assert_ne!(
        read(a.path(), SYNTHETIC_JSON),
        read(c.path(), SYNTHETIC_JSON)
    );
}

#[test]
fn generated_annotations_follow_coco_rules() {
    let dir = tempfile::tempdir().unwrap();
    let t = std::time::Instant::now();
    let coco = generate(dir.path(), 40, 3);
    eprintln!("40 synthetic 320x240 images in {:?}", t.elapsed());
    assert_eq!(coco.images.len(), 40);
    assert_eq!(coco.categories[0].keypoints.len(), 17);
    let by_image = coco.annotations_by_image();
    let (mut occluded, mut outside, mut visible) = (0, 0, 0);
    for im in &coco.images {
        let n = by_image.get(&im.id).map_or(0, |v| v.len());
        assert!((1..=4).contains(&n), "image {} has {n} persons", im.id);
        let img = image::open(dir.path().join(&im.file_name)).unwrap();
        assert_eq!((img.width(), img.height()), (320, 240));
    }
    for a in &coco.annotations {
        let [x, y, w, h] = a.bbox;
        assert!(
            x >= 0.0 && y >= 0.0 && x + w <= 320.0 && y + h <= 240.0,
            "{:?}",
            a.bbox
        );
        assert!(
            a.area > 0.0 && a.area <= w * h,
            "area {} bbox {:?}",
            a.area,
            a.bbox
        );
        let mut labelled = 0;
        for k in 0..NUM_KEYPOINTS {
            let (kx, ky, v) = a.keypoint(k);
            match v as u8 {
                0 => {
                    assert_eq!((kx, ky), (0.0, 0.0));
                    outside += 1;
                }
                1 | 2 => {
                    assert!((0.0..320.0).contains(&kx) && (0.0..240.0).contains(&ky));
                    labelled += 1;
                    if v == 1.0 {
                        occluded += 1;
                    } else {
                        visible += 1;
                    }
                }
                _ => panic!("visibility {v}"),
            }
        }
        assert_eq!(a.num_keypoints, labelled);
    }
    assert!(
        occluded > 0 && outside > 0 && visible > occluded,
        "{occluded} {outside} {visible}"
    );
}

#[test]
fn ground_truth_as_predictions_scores_one() {
    let dir = tempfile::tempdir().unwrap();
    let coco = generate(dir.path(), 20, 5);
    let results: Vec<KeypointResult> = coco
        .annotations
        .iter()
        .map(|a| KeypointResult {
            image_id: a.image_id,
            category_id: 1,
            keypoints: a.keypoints.clone(),
            score: 1.0,
            bbox: None,
        })
        .collect();
    // Through a results file, as `xtask pose eval` would write it.
    let path = dir.path().join("results.json");
    save_keypoint_results(&path, &results).unwrap();
    let results = load_keypoint_results(&path).unwrap();
    let s = evaluate_keypoints(&coco, &results).unwrap();
    for (name, v) in ["AP", "AP .5", "AP .75", "AR", "AR .5", "AR .75"]
        .iter()
        .zip([s.ap, s.ap50, s.ap75, s.ar, s.ar50, s.ar75])
    {
        assert!((v - 1.0).abs() < 1e-12, "{name} = {v}");
    }
    assert!(s.ap_medium == 1.0 || s.ap_medium == -1.0);
    assert!(s.ap_large == 1.0 || s.ap_large == -1.0);
    // Moving every prediction by 8 px must cost AP: the test can fail.
    let moved: Vec<KeypointResult> = results
        .iter()
        .map(|r| {
            let mut r = r.clone();
            for k in 0..NUM_KEYPOINTS {
                r.keypoints[3 * k] += 8.0;
            }
            r
        })
        .collect();
    assert!(evaluate_keypoints(&coco, &moved).unwrap().ap < 0.9);
}

#[test]
fn heatmap_peak_sits_at_the_rounded_keypoint() {
    let mut joints = [[0.0; 3]; NUM_KEYPOINTS];
    joints[5] = [100.3, 61.9, 2.0]; // -> (25.075, 15.475) at stride 4 -> pixel (25, 15)
    joints[6] = [10.0, 10.0, 0.0]; // unlabelled
    joints[7] = [-80.0, 10.0, 1.0]; // window wholly outside
    let (t, w) = gaussian_targets(&joints, (192, 256), (48, 64), 2.0);
    assert_eq!(t.len(), 17 * 64 * 48);
    let plane = &t[5 * 3072..6 * 3072];
    let argmax = plane
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert_eq!((argmax % 48, argmax / 48), (25, 15));
    assert_eq!(plane[15 * 48 + 25], 1.0);
    assert!((plane[15 * 48 + 26] - (-1.0f32 / 8.0).exp()).abs() < 1e-7);
    assert_eq!(plane[15 * 48 + 25 + 7], 0.0, "cut at 3 sigma");
    assert_eq!((w[5], w[6], w[7], w[0]), (1.0, 0.0, 0.0, 0.0));
    assert!(t[6 * 3072..8 * 3072].iter().all(|&v| v == 0.0));
}

#[test]
fn crop_targets_decode_back_to_the_keypoints() {
    let dir = tempfile::tempdir().unwrap();
    let coco = generate(dir.path(), 4, 9);
    let ds = TopDownDataset::from_gt(&coco, dir.path(), TopDownConfig::default()).unwrap();
    assert!(!ds.is_empty());
    let batch = ds
        .batch(&(0..ds.len()).collect::<Vec<_>>(), None, 0)
        .unwrap();
    assert_eq!(batch.image_shape, [ds.len(), 3, 256, 192]);
    assert_eq!(batch.target_shape, [ds.len(), 17, 64, 48]);
    let mut checked = 0;
    for (i, meta) in batch.metas.iter().enumerate() {
        let hm = &batch.targets[i * 17 * 3072..(i + 1) * 17 * 3072];
        let decoded = decode_heatmaps(hm, 17, (48, 64), meta.center, meta.scale);
        let s = &ds.samples()[meta.index];
        // one heatmap pixel in image pixels
        let px = meta.scale[0] / 48.0;
        for (k, d) in decoded.iter().enumerate() {
            if batch.target_weights[i * 17 + k] == 0.0 || d[2] < 1.0 {
                continue;
            }
            let (dx, dy) = (d[0] - s.joints[k][0], d[1] - s.joints[k][1]);
            assert!(
                dx.abs() <= 0.76 * px && dy.abs() <= 0.76 * px,
                "sample {i} kpt {k}: off by ({dx}, {dy}), pixel {px}"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "{checked}");
}

#[test]
fn flipped_crop_mirrors_the_plain_crop() {
    let dir = tempfile::tempdir().unwrap();
    let coco = generate(dir.path(), 2, 21);
    let ds = TopDownDataset::from_gt(&coco, dir.path(), TopDownConfig::default()).unwrap();
    let flip_only = PoseAugment {
        flip_prob: 1.0,
        scale_factor: 0.0,
        rotation_factor: 0.0,
        rotation_prob: 0.0,
    };
    let plain = ds.item(0, None, 0).unwrap();
    let flipped = ds.item(0, Some(&flip_only), 0).unwrap();
    assert!(flipped.meta.flipped && !plain.meta.flipped);
    let (w, h) = (192, 256);
    for c in 0..3 {
        for v in (0..h).step_by(7) {
            for u in 1..w {
                let a = flipped.image[c * w * h + v * w + u];
                let b = plain.image[c * w * h + v * w + (w - u)];
                assert!((a - b).abs() < 1e-3, "c{c} v{v} u{u}: {a} vs {b}");
            }
        }
    }
    // Left and right swap: the flipped left shoulder's target weight is the
    // plain right shoulder's.
    assert_eq!(flipped.target_weight[5], plain.target_weight[6]);
    // Same seed, same augmentation.
    let aug = PoseAugment::default();
    let a = ds.batch(&[0, 1], Some(&aug), 77).unwrap();
    let b = ds.batch(&[0, 1], Some(&aug), 77).unwrap();
    assert_eq!(a, b);
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

const CATS: &str = r#""categories":[{"id":1,"name":"person"}]"#;

fn ann(extra: &str, keypoints: usize) -> String {
    let k = vec!["1"; keypoints].join(",");
    format!(
        r#"{{"id":5,"image_id":1,"category_id":1,"keypoints":[{k}],"area":10,"iscrowd":0,"num_keypoints":1{extra}}}"#
    )
}

fn gt_file(dir: &Path, anns: &str) -> std::path::PathBuf {
    write(
        dir,
        "gt.json",
        &format!(
            r#"{{"images":[{{"id":1,"file_name":"missing.png","width":64,"height":64}}],"annotations":[{anns}],{CATS}}}"#
        ),
    )
}

#[test]
fn bad_files_get_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // missing bbox
    let p = gt_file(d, &ann("", 51));
    let e = CocoKeypoints::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("gt.json") && e.contains("annotations[0] (id 5)") && e.contains("`bbox`"),
        "{e}"
    );
    // keypoints of the wrong length
    let p = gt_file(d, &ann(r#","bbox":[0,0,4,4]"#, 50));
    let e = CocoKeypoints::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("annotations[0] (id 5).keypoints")
            && e.contains("expected 51")
            && e.contains("found 50"),
        "{e}"
    );
    // a well-formed file whose image does not exist
    let p = gt_file(d, &ann(r#","bbox":[0,0,4,4]"#, 51));
    let coco = CocoKeypoints::load(&p).unwrap();
    let e = TopDownDataset::from_gt(&coco, d, TopDownConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gt.json")
            && e.contains("images[0] (id 1).file_name")
            && e.contains("missing.png"),
        "{e}"
    );
    // missing top-level key, invalid JSON, missing file
    let p = write(d, "noimg.json", r#"{"annotations":[],"categories":[]}"#);
    let e = CocoKeypoints::load(&p).unwrap_err().to_string();
    assert!(e.contains("noimg.json") && e.contains("`images`"), "{e}");
    let p = write(d, "broken.json", "{\"images\": [");
    assert!(
        CocoKeypoints::load(&p)
            .unwrap_err()
            .to_string()
            .contains("invalid JSON")
    );
    assert!(
        CocoKeypoints::load(d.join("nope.json"))
            .unwrap_err()
            .to_string()
            .contains("nope.json")
    );
    // detections: empty, and a bad score
    let p = write(d, "dets.json", "[]");
    let e = load_detections(&p).unwrap_err().to_string();
    assert!(e.contains("dets.json") && e.contains("empty"), "{e}");
    let p = write(
        d,
        "dets2.json",
        r#"[{"image_id":1,"category_id":1,"bbox":[0,0,4,4],"score":"high"}]"#,
    );
    let e = load_detections(&p).unwrap_err().to_string();
    assert!(
        e.contains("[0].score") && e.contains("expected a number"),
        "{e}"
    );
    // annotation pointing at an unknown image
    let p = gt_file(
        d,
        &ann(r#","bbox":[0,0,4,4]"#, 51).replace(r#""image_id":1"#, r#""image_id":9"#),
    );
    let e = CocoKeypoints::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("image_id") && e.contains("no image with id 9"),
        "{e}"
    );
}

#[test]
fn detections_become_samples_above_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let coco = generate(dir.path(), 2, 4);
    let dets = format!(
        r#"[{{"image_id":1,"category_id":1,"bbox":[10,20,60,120],"score":0.9}},
            {{"image_id":1,"category_id":1,"bbox":[100,20,60,120],"score":0.1}},
            {{"image_id":2,"category_id":2,"bbox":[10,20,60,120],"score":0.95}},
            {{"image_id":{},"category_id":1,"bbox":[1,2,30,40],"score":0.5}}]"#,
        2
    );
    let p = write(dir.path(), "dets.json", &dets);
    let dets = load_detections(&p).unwrap();
    let ds =
        TopDownDataset::from_detections(&coco, dir.path(), &dets, 0.2, TopDownConfig::default())
            .unwrap();
    assert_eq!(ds.len(), 2);
    let s = &ds.samples()[0];
    // 60x120 box: aspect 0.5 < 0.75, so width grows to 90, then x1.25.
    assert_eq!(s.center, [40.0, 80.0]);
    assert_eq!(s.scale, [112.5, 150.0]);
    assert_eq!(s.score, 0.9);
    let mut unknown = dets.clone();
    unknown[0].image_id = 99;
    let e =
        TopDownDataset::from_detections(&coco, dir.path(), &unknown, 0.0, TopDownConfig::default())
            .unwrap_err()
            .to_string();
    assert!(
        e.contains("detections[0].image_id") && e.contains("99"),
        "{e}"
    );
}

#[test]
fn decoded_perfect_heatmaps_evaluate_high_and_nms_drops_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let coco = generate(dir.path(), 8, 31);
    let ds = TopDownDataset::from_gt(&coco, dir.path(), TopDownConfig::default()).unwrap();
    let all: Vec<usize> = (0..ds.len()).collect();
    let batch = ds.batch(&all, None, 0).unwrap();
    let mut preds = Vec::new();
    for (i, meta) in batch.metas.iter().enumerate() {
        let hm = &batch.targets[i * 17 * 3072..(i + 1) * 17 * 3072];
        preds.push((
            meta.clone(),
            decode_heatmaps(hm, 17, (48, 64), meta.center, meta.scale),
        ));
    }
    let results = keypoint_results(&preds, 0.2, Some(0.9));
    assert_eq!(results.len(), ds.len());
    let stats = evaluate_keypoints(&coco, &results).unwrap();
    eprintln!("AP of decoded perfect targets: {:?}", stats);
    assert!(stats.ap > 0.95, "AP of decoded targets {}", stats.ap);
    // Every prediction twice: OKS-NMS keeps one of each pair.
    let doubled: Vec<_> = preds.iter().chain(preds.iter()).cloned().collect();
    assert_eq!(keypoint_results(&doubled, 0.2, Some(0.9)).len(), ds.len());
    assert_eq!(keypoint_results(&doubled, 0.2, None).len(), 2 * ds.len());
}
