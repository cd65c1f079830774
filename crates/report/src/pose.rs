//! Pose skeletons drawn over pictures, for keypoint models' qualitative figures.

use image::RgbImage;
use mixq_core::{Error, Result};

use crate::Colour;
use crate::canvas::Canvas;

/// COCO's 19 limb connections between its 17 keypoints (nose, eyes, ears, shoulders, elbows,
/// wrists, hips, knees, ankles), zero-based.
pub const COCO_SKELETON: [(usize, usize); 19] = [
    (15, 13),
    (13, 11),
    (16, 14),
    (14, 12),
    (11, 12),
    (5, 11),
    (6, 12),
    (5, 6),
    (5, 7),
    (6, 8),
    (7, 9),
    (8, 10),
    (1, 2),
    (0, 1),
    (0, 2),
    (1, 3),
    (2, 4),
    (3, 5),
    (4, 6),
];

/// Draws `edges` between keypoints `(x, y, score)` whose score is ≥ `threshold`, as thick
/// anti-aliased lines with a filled circle on every shown keypoint. Line width scales with the
/// image (1/100 of the shorter side, at least 2 px) so the skeleton reads at any resolution.
/// Points with non-finite coordinates are skipped; an edge naming a missing keypoint is an error.
pub fn draw_skeleton(
    img: &mut RgbImage,
    keypoints: &[(f32, f32, f32)],
    edges: &[(usize, usize)],
    colour: Colour,
    threshold: f32,
) -> Result<()> {
    if !threshold.is_finite() {
        return Err(Error::invalid(
            "skeleton threshold",
            threshold,
            "must be a finite number",
        ));
    }
    for &(a, b) in edges {
        if a >= keypoints.len() || b >= keypoints.len() {
            return Err(Error::invalid(
                "skeleton edge",
                format!("({a}, {b})"),
                format!("refers to a keypoint beyond the {} given", keypoints.len()),
            ));
        }
    }
    let shown = |i: usize| {
        let (x, y, s) = keypoints[i];
        x.is_finite() && y.is_finite() && s >= threshold
    };
    let width = (img.width().min(img.height()) as f32 / 100.0).max(2.0);
    let mut c = Canvas {
        img: std::mem::take(img),
    };
    for &(a, b) in edges {
        if shown(a) && shown(b) {
            c.line(
                (keypoints[a].0, keypoints[a].1),
                (keypoints[b].0, keypoints[b].1),
                width,
                colour,
            );
        }
    }
    for (i, &(x, y, _)) in keypoints.iter().enumerate() {
        if shown(i) {
            c.disc((x, y), width * 1.25, [255, 255, 255]);
            c.disc((x, y), width * 0.9, colour);
        }
    }
    *img = c.img;
    Ok(())
}
