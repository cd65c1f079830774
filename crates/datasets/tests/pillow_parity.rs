//! Parity with Pillow 13.0.0 + the timm/torchvision eval pipeline.
//!
//! The expected values are FNV-1a hashes of outputs produced in Python on the
//! same synthetic images (the generator is `synth` below, mirrored in
//! Python): `Image.fromarray(a).resize(size, Image.BICUBIC)` for the resize
//! cases, and resize + centre crop (`int(round(...))`) + `float32 / 255` +
//! `(x - mean) / std` in float32 for the eval cases. A hash match means every
//! byte (every f32 bit) is identical.

use image::{DynamicImage, RgbImage};
use mixq_datasets::preprocess::{
    EvalTransform, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PassOrder, eval_transform_image,
    resize_bicubic, resize_bicubic_with_order,
};

fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// A deterministic RGB test image with smooth and noisy parts (HWC).
fn synth(w: u64, h: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3u64 {
                let v = x * x * 7
                    + y * 13
                    + c * 59
                    + x * y * 3
                    + ((x * 2654435761 + y * 40503 + c) >> 7);
                out.push((v % 256) as u8);
            }
        }
    }
    out
}

fn synth_image(w: u32, h: u32) -> DynamicImage {
    let raw = synth(w as u64, h as u64);
    DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, raw).unwrap())
}

#[test]
fn resize_matches_pillow() {
    let src = synth(53, 37);
    let cases: [((usize, usize), u64, [u8; 6]); 6] = [
        ((27, 19), 0x6b9e89a26678b4d5, [94, 106, 140, 76, 128, 152]),
        ((120, 80), 0x82b2c81b708068dc, [0, 53, 112, 26, 51, 110]),
        ((53, 20), 0x5dc20d16746f4116, [34, 104, 146, 161, 99, 142]),
        ((20, 37), 0xcf4522b526703cfd, [99, 55, 114, 47, 109, 165]),
        ((7, 200), 0x782d9d17eab4ad5c, [101, 101, 138, 155, 141, 133]),
        ((1, 1), 0x2fba361ae17d478c, [128, 129, 126, 0, 0, 0]),
    ];
    for ((w, h), hash, head) in cases {
        let out = resize_bicubic(&src, 53, 37, 3, w, h);
        assert_eq!(out.len(), w * h * 3);
        let n = head.len().min(out.len());
        assert_eq!(out[..n], head[..n], "first pixels of {w}x{h}");
        assert_eq!(fnv1a(out.iter().copied()), hash, "hash of {w}x{h}");
    }
}

#[test]
fn pass_order_matches_pillow_13_and_12() {
    // Height shrinks by more than twice the width's pixels: Pillow 13 runs the
    // vertical pass first. The Pillow 12 hashes were made by resizing the width
    // and then the height in two `resize` calls (= horizontal first).
    let src = synth(53, 37);
    let cases = [
        ((50, 20), 0x11d64270b2dd6b19, 0x5a998a657b90e46d),
        ((45, 10), 0x26179c8ef5f94b76, 0x4969ee1feaaa1638),
    ];
    for ((w, h), pillow13, pillow12) in cases {
        assert!(PassOrder::Pillow13.vertical_first(53, 37, w, h));
        let out = resize_bicubic(&src, 53, 37, 3, w, h);
        assert_eq!(fnv1a(out.iter().copied()), pillow13, "{w}x{h}");
        let out = resize_bicubic_with_order(&src, 53, 37, 3, w, h, PassOrder::HorizontalFirst);
        assert_eq!(fnv1a(out.iter().copied()), pillow12, "{w}x{h}");
    }
}

fn f32_hash(v: &[f32]) -> u64 {
    fnv1a(v.iter().flat_map(|x| x.to_le_bytes()))
}

#[test]
fn eval_transform_matches_timm_imagenet_default() {
    // 500x375 -> Resize(256) = 341x256 -> CenterCrop(224): left = round(58.5) = 58.
    let img = synth_image(500, 375);
    let t = EvalTransform::imagenet(224);
    let out = eval_transform_image(&img, &t);
    assert_eq!(out.len(), 3 * 224 * 224);
    assert_eq!(out[..3], [-0.405_428_6, -0.765_048_4, -0.679_424_64]);
    assert_eq!(f32_hash(&out), 0xd8442ff02d97bb24);
}

#[test]
fn eval_transform_matches_timm_vit_augreg() {
    let img = synth_image(500, 375);
    let t = EvalTransform {
        img_size: 224,
        crop_pct: 0.9,
        mean: [0.5; 3],
        std: [0.5; 3],
        channels: 3,
    };
    assert_eq!(
        f32_hash(&eval_transform_image(&img, &t)),
        0xa349f390987c39ab
    );
}

#[test]
fn eval_transform_matches_timm_upscale_384() {
    let img = synth_image(500, 375);
    let t = EvalTransform {
        img_size: 384,
        crop_pct: 1.0,
        mean: [0.5; 3],
        std: [0.5; 3],
        channels: 3,
    };
    assert_eq!(
        f32_hash(&eval_transform_image(&img, &t)),
        0x75cb0b1b711a96de
    );
}

#[test]
fn eval_transform_matches_timm_portrait() {
    let img = synth_image(37, 53);
    let t = EvalTransform {
        img_size: 16,
        crop_pct: 0.875,
        mean: IMAGENET_DEFAULT_MEAN,
        std: IMAGENET_DEFAULT_STD,
        channels: 3,
    };
    assert_eq!(
        f32_hash(&eval_transform_image(&img, &t)),
        0x5e8f9ffad206fd39
    );
}
