//! timm's eval transform of a real photo (scikit-learn's china.jpg), written by
//! tools/make_fixtures.py with torchvision + Pillow, reproduced here within 2/255 max and
//! 0.5/255 mean absolute difference (on the [0, 1] scale, i.e. before mean/std).

use mixq_datasets::{EvalTransform, eval_transform_image, load_image};
use mixq_vit_models::testing::{fixtures_dir, read_f32};

fn check(key: &str, t: EvalTransform) {
    let img = load_image(fixtures_dir().join("china.jpg")).unwrap();
    let ours = eval_transform_image(&img, &t);
    let (theirs, shape) = read_f32("china_eval.safetensors", key);
    assert_eq!(shape, vec![3, t.img_size, t.img_size]);
    assert_eq!(ours.len(), theirs.len());
    let hw = t.img_size * t.img_size;
    let (mut max, mut sum) = (0f32, 0f64);
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        // Back to the [0, 1] pixel scale so the tolerance reads in 1/255 steps.
        let d = (a - b).abs() * t.std[i / hw];
        max = max.max(d);
        sum += d as f64;
    }
    let mean = sum / ours.len() as f64;
    println!(
        "{key}: max |ours - timm| = {:.3}/255, mean {:.4}/255",
        max * 255.0,
        mean * 255.0
    );
    assert!(
        max <= 2.0 / 255.0 + 1e-6,
        "{key}: max diff {}/255",
        max * 255.0
    );
    assert!(mean <= 0.5 / 255.0, "{key}: mean diff {}/255", mean * 255.0);
}

#[test]
fn deit_eval_transform_matches_timm() {
    check(
        "deit_160",
        EvalTransform {
            img_size: 160,
            crop_pct: 0.9,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            channels: 3,
        },
    );
}

#[test]
fn vit_eval_transform_matches_timm() {
    check(
        "vit_96",
        EvalTransform {
            img_size: 96,
            crop_pct: 0.9,
            mean: [0.5; 3],
            std: [0.5; 3],
            channels: 3,
        },
    );
}
