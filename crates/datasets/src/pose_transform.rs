//! Top-down pose geometry: person box to crop, affine warps, Gaussian heatmap
//! targets, and heatmaps back to image coordinates.
//!
//! The conventions are those of HRNet / mmpose's classic `TopDown` pipeline,
//! because WTPose and the numbers it is compared with use them:
//!
//! - a box becomes a centre and a *scale*, the box grown to the input's aspect
//!   ratio and padded by 1.25 (kept in pixels here, not in HRNet's units of
//!   200 px);
//! - the crop is the similarity transform that maps the centre to the middle
//!   of the input and the scale's width to the input width, rotated by `rot`
//!   degrees; pixels are sampled bilinearly with a black border, as
//!   `cv2.warpAffine` does;
//! - targets are unnormalised Gaussians (peak 1, sigma 2) at the keypoint
//!   rounded to the nearest heatmap pixel, cut at 3 sigma;
//! - predictions are the heatmap arg-max moved a quarter pixel towards the
//!   higher neighbour, mapped back through the inverse crop.

use crate::coco::COCO_FLIP_PAIRS;

/// A 2x3 affine map `(x, y) -> (m00 x + m01 y + m02, m10 x + m11 y + m12)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    /// Row-major 2x3 matrix.
    pub m: [[f64; 3]; 2],
}

impl Affine {
    /// The identity.
    pub const IDENTITY: Self = Self {
        m: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
    };

    /// Maps a point.
    pub fn apply(&self, x: f64, y: f64) -> (f64, f64) {
        let m = &self.m;
        (
            m[0][0] * x + m[0][1] * y + m[0][2],
            m[1][0] * x + m[1][1] * y + m[1][2],
        )
    }

    /// The inverse map, or `None` if the matrix is singular.
    pub fn inverse(&self) -> Option<Self> {
        let [[a, b, c], [d, e, f]] = self.m;
        let det = a * e - b * d;
        if det == 0.0 || !det.is_finite() {
            return None;
        }
        let (ia, ib, id, ie) = (e / det, -b / det, -d / det, a / det);
        Some(Self {
            m: [[ia, ib, -(ia * c + ib * f)], [id, ie, -(id * c + ie * f)]],
        })
    }

    /// `self` followed by `next` (`next(self(p))`).
    pub fn then(&self, next: &Self) -> Self {
        let [[a, b, c], [d, e, f]] = self.m;
        let [[p, q, r], [s, t, u]] = next.m;
        Self {
            m: [
                [p * a + q * d, p * b + q * e, p * c + q * f + r],
                [s * a + t * d, s * b + t * e, s * c + t * f + u],
            ],
        }
    }

    /// Horizontal flip of an image `width` pixels wide: `x -> width - 1 - x`
    /// (HRNet's `fliplr_joints` convention, pixel centres at integers).
    pub fn hflip(width: f64) -> Self {
        Self {
            m: [[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0]],
        }
    }
}

/// Centre and scale (in pixels) of the region a person box is cropped from.
///
/// The box is widened or heightened to `aspect_ratio = input_w / input_h`
/// around its centre, then multiplied by `padding` (1.25 in HRNet/mmpose), so
/// the crop is never stretched and keeps some context.
pub fn box_to_center_scale(
    bbox: [f64; 4],
    aspect_ratio: f64,
    padding: f64,
) -> ([f64; 2], [f64; 2]) {
    let [x, y, mut w, mut h] = bbox;
    let center = [x + w * 0.5, y + h * 0.5];
    if w > aspect_ratio * h {
        h = w / aspect_ratio;
    } else if w < aspect_ratio * h {
        w = h * aspect_ratio;
    }
    (center, [w * padding, h * padding])
}

/// HRNet's clean-up of a ground-truth box: clipped to the image and its
/// width/height reduced by one pixel (`x2 = x1 + w - 1`). `None` for boxes
/// with no area inside the image.
pub fn clean_gt_box(bbox: [f64; 4], width: u32, height: u32, area: f64) -> Option<[f64; 4]> {
    let [x, y, w, h] = bbox;
    let x1 = x.max(0.0);
    let y1 = y.max(0.0);
    let x2 = (width as f64 - 1.0).min(x1 + (w - 1.0).max(0.0));
    let y2 = (height as f64 - 1.0).min(y1 + (h - 1.0).max(0.0));
    (area > 0.0 && x2 >= x1 && y2 >= y1).then_some([x1, y1, x2 - x1, y2 - y1])
}

/// HRNet's `get_affine_transform`: maps image pixels into an `out_w x out_h`
/// crop so that `center` lands in the middle, `scale[0]` pixels span the
/// width, and the content turns `rot_deg` degrees counter-clockwise on screen
/// (a point right of the centre moves up), HRNet's sign convention.
pub fn crop_transform(
    center: [f64; 2],
    scale: [f64; 2],
    rot_deg: f64,
    out_w: f64,
    out_h: f64,
) -> Affine {
    let k = out_w / scale[0];
    let (sn, cs) = rot_deg.to_radians().sin_cos();
    // k * R(-rot) * (p - c) + out/2
    let (a, b, d, e) = (k * cs, k * sn, -k * sn, k * cs);
    Affine {
        m: [
            [a, b, out_w * 0.5 - (a * center[0] + b * center[1])],
            [d, e, out_h * 0.5 - (d * center[0] + e * center[1])],
        ],
    }
}

/// Per-channel normalisation of the crop (ImageNet's by default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    /// Mean of each RGB channel, on a 0..1 scale.
    pub mean: [f32; 3],
    /// Standard deviation of each channel.
    pub std: [f32; 3],
}

impl Default for Normalize {
    fn default() -> Self {
        Self {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

/// Warps an RGB image (`width x height`, HWC bytes) into an `out_w x out_h`
/// crop, `[3, out_h, out_w]` normalised `f32`.
///
/// `to_crop` maps image coordinates to crop coordinates; every crop pixel is
/// sampled bilinearly at its preimage, zero (black before normalisation)
/// outside the image. Returns `None` for a singular transform or an `rgb`
/// buffer shorter than `width * height * 3`.
pub fn warp_rgb(
    rgb: &[u8],
    width: usize,
    height: usize,
    to_crop: &Affine,
    out_w: usize,
    out_h: usize,
    norm: &Normalize,
) -> Option<Vec<f32>> {
    let inv = to_crop.inverse()?;
    if rgb.len() < width * height * 3 {
        return None;
    }
    let plane = out_w * out_h;
    let mut out = vec![0.0f32; 3 * plane];
    let px = |x: i64, y: i64, c: usize| -> f64 {
        if x < 0 || y < 0 || x >= width as i64 || y >= height as i64 {
            0.0
        } else {
            rgb[(y as usize * width + x as usize) * 3 + c] as f64
        }
    };
    for v in 0..out_h {
        for u in 0..out_w {
            let (sx, sy) = inv.apply(u as f64, v as f64);
            let (fx, fy) = (sx.floor(), sy.floor());
            let (ax, ay) = (sx - fx, sy - fy);
            let (x0, y0) = (fx as i64, fy as i64);
            for c in 0..3 {
                let val = (1.0 - ay) * ((1.0 - ax) * px(x0, y0, c) + ax * px(x0 + 1, y0, c))
                    + ay * ((1.0 - ax) * px(x0, y0 + 1, c) + ax * px(x0 + 1, y0 + 1, c));
                out[c * plane + v * out_w + u] =
                    ((val / 255.0) as f32 - norm.mean[c]) / norm.std[c];
            }
        }
    }
    Some(out)
}

/// Gaussian heatmap targets for keypoints given in *input-crop* pixels.
///
/// `joints[k] = [x, y, v]`. Returns `(targets, weights)`: `targets` is
/// `[K, hm_h, hm_w]`, `weights[k]` is 1 for labelled keypoints (`v > 0`) and 0
/// for unlabelled ones or ones whose 3-sigma window lies wholly outside the
/// heatmap (HRNet's `generate_target`). The peak, value 1, sits at
/// `trunc(x / stride + 0.5)`.
pub fn gaussian_targets(
    joints: &[[f64; 3]],
    input_size: (usize, usize),
    heatmap_size: (usize, usize),
    sigma: f64,
) -> (Vec<f32>, Vec<f32>) {
    let (hw, hh) = heatmap_size;
    let stride_x = input_size.0 as f64 / hw as f64;
    let stride_y = input_size.1 as f64 / hh as f64;
    let radius = (sigma * 3.0).floor() as i64;
    let tmp = sigma * 3.0;
    let mut target = vec![0.0f32; joints.len() * hw * hh];
    let mut weight = vec![0.0f32; joints.len()];
    for (k, j) in joints.iter().enumerate() {
        if j[2] <= 0.0 || !j[0].is_finite() || !j[1].is_finite() {
            continue;
        }
        // Python's int(): truncation toward zero.
        let mu_x = (j[0] / stride_x + 0.5) as i64;
        let mu_y = (j[1] / stride_y + 0.5) as i64;
        let ul = ((mu_x as f64 - tmp) as i64, (mu_y as f64 - tmp) as i64);
        let br = (
            (mu_x as f64 + tmp + 1.0) as i64,
            (mu_y as f64 + tmp + 1.0) as i64,
        );
        if ul.0 >= hw as i64 || ul.1 >= hh as i64 || br.0 < 0 || br.1 < 0 {
            continue;
        }
        weight[k] = 1.0;
        let plane = &mut target[k * hw * hh..(k + 1) * hw * hh];
        for dy in -radius..=radius {
            let y = mu_y + dy;
            if y < 0 || y >= hh as i64 {
                continue;
            }
            for dx in -radius..=radius {
                let x = mu_x + dx;
                if x < 0 || x >= hw as i64 {
                    continue;
                }
                let g = (-((dx * dx + dy * dy) as f64) / (2.0 * sigma * sigma)).exp();
                plane[y as usize * hw + x as usize] = g as f32;
            }
        }
    }
    (target, weight)
}

/// Decodes `[K, hm_h, hm_w]` heatmaps of one person into image coordinates.
///
/// Per keypoint: the first arg-max, moved by 0.25 px towards the higher
/// neighbour in x and y (when not on the border), then mapped back through the
/// inverse of the crop (`center`, `scale`, no rotation) at heatmap
/// resolution. Returns `[x, y, maxval]` per keypoint (a non-positive maximum
/// gives position (0, 0) mapped back, as HRNet's mask does).
///
/// # Panics
///
/// If `heatmaps` holds fewer than `num_keypoints * hm_w * hm_h` values.
pub fn decode_heatmaps(
    heatmaps: &[f32],
    num_keypoints: usize,
    heatmap_size: (usize, usize),
    center: [f64; 2],
    scale: [f64; 2],
) -> Vec<[f64; 3]> {
    let (hw, hh) = heatmap_size;
    let back = crop_transform(center, scale, 0.0, hw as f64, hh as f64)
        .inverse()
        .unwrap_or(Affine::IDENTITY);
    (0..num_keypoints)
        .map(|k| {
            let plane = &heatmaps[k * hw * hh..(k + 1) * hw * hh];
            let (mut best, mut idx) = (f32::NEG_INFINITY, 0usize);
            for (i, &v) in plane.iter().enumerate() {
                if v > best {
                    best = v;
                    idx = i;
                }
            }
            let mut x = (idx % hw) as f64;
            let mut y = (idx / hw) as f64;
            if best <= 0.0 {
                x = 0.0;
                y = 0.0;
            }
            let (px, py) = ((x + 0.5).floor() as i64, (y + 0.5).floor() as i64);
            if 1 < px && px < hw as i64 - 1 && 1 < py && py < hh as i64 - 1 {
                let at = |xx: i64, yy: i64| plane[yy as usize * hw + xx as usize];
                let dx = at(px + 1, py) - at(px - 1, py);
                let dy = at(px, py + 1) - at(px, py - 1);
                x += 0.25 * sign(dx);
                y += 0.25 * sign(dy);
            }
            let (ix, iy) = back.apply(x, y);
            [ix, iy, best as f64]
        })
        .collect()
}

fn sign(v: f32) -> f64 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Flips `[K, h, w]` heatmaps predicted on a horizontally flipped crop back
/// to the original orientation: mirror each map, swap left/right keypoints,
/// and (HRNet's `SHIFT_HEATMAP`) shift one pixel right to undo the
/// `w - 1 - x` versus `w - x` offset of flipping at stride 4.
///
/// # Panics
///
/// If `heatmaps` holds fewer than `num_keypoints * w * h` values.
pub fn flip_heatmaps_back(
    heatmaps: &[f32],
    num_keypoints: usize,
    heatmap_size: (usize, usize),
    shift: bool,
) -> Vec<f32> {
    let (w, h) = heatmap_size;
    let plane = w * h;
    let mut perm: Vec<usize> = (0..num_keypoints).collect();
    for &(a, b) in &COCO_FLIP_PAIRS {
        if a < num_keypoints && b < num_keypoints {
            perm.swap(a, b);
        }
    }
    let mut out = vec![0.0f32; num_keypoints * plane];
    for (k, &src) in perm.iter().enumerate() {
        for y in 0..h {
            for x in 0..w {
                let fx = w - 1 - x;
                out[k * plane + y * w + x] = heatmaps[src * plane + y * w + fx];
            }
            if shift && w > 1 {
                let row = &mut out[k * plane + y * w..k * plane + (y + 1) * w];
                row.copy_within(0..w - 1, 1);
            }
        }
    }
    out
}

/// HRNet's instance rescoring: box score times the mean of the keypoint
/// maxima above `threshold` (0.2), or times 0 if none is.
pub fn rescore(box_score: f64, keypoints: &[[f64; 3]], threshold: f64) -> f64 {
    let (sum, n) = keypoints
        .iter()
        .filter(|k| k[2] > threshold)
        .fold((0.0, 0usize), |(s, n), k| (s + k[2], n + 1));
    if n == 0 {
        0.0
    } else {
        box_score * sum / n as f64
    }
}

/// OKS non-maximum suppression among one image's poses (HRNet's `oks_nms`).
///
/// `poses[i] = (keypoints [x, y, score] per keypoint, instance score, area)`,
/// area being the padded crop area. Returns the indices kept, best first: a
/// pose is dropped when its OKS with a kept one exceeds `threshold` (0.9).
/// Keypoints whose *predicted* score is not above `vis_threshold` are left
/// out of the OKS (what HRNet's `list(vg > t) and list(vd > t)` amounts to).
pub fn oks_nms(
    poses: &[(Vec<[f64; 3]>, f64, f64)],
    threshold: f64,
    sigmas: &[f64],
    vis_threshold: f64,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..poses.len()).collect();
    order.sort_by(|&a, &b| poses[b].1.total_cmp(&poses[a].1));
    let mut keep = Vec::new();
    while let Some((&i, rest)) = order.split_first() {
        keep.push(i);
        let (gk, _, ga) = &poses[i];
        let next: Vec<usize> = rest
            .iter()
            .copied()
            .filter(|&j| {
                let (dk, _, da) = &poses[j];
                let (mut sum, mut n) = (0.0, 0usize);
                for (k, s) in sigmas.iter().enumerate().take(gk.len().min(dk.len())) {
                    if dk[k][2] <= vis_threshold {
                        continue;
                    }
                    let var = (s * 2.0).powi(2);
                    let (dx, dy) = (dk[k][0] - gk[k][0], dk[k][1] - gk[k][1]);
                    let e = (dx * dx + dy * dy) / var / ((ga + da) / 2.0 + f64::EPSILON) / 2.0;
                    sum += (-e).exp();
                    n += 1;
                }
                let o = if n == 0 { 0.0 } else { sum / n as f64 };
                o <= threshold
            })
            .collect();
        order = next;
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_padding_fixes_aspect_ratio() {
        // A wide box grows in height to 3:4 and is padded by 1.25.
        let (c, s) = box_to_center_scale([10.0, 20.0, 90.0, 60.0], 0.75, 1.25);
        assert_eq!(c, [55.0, 50.0]);
        assert_eq!(s, [112.5, 150.0]);
        // A tall box grows in width.
        let (_, s) = box_to_center_scale([0.0, 0.0, 30.0, 120.0], 0.75, 1.0);
        assert_eq!(s, [90.0, 120.0]);
    }

    #[test]
    fn affine_inverse_and_compose() {
        let t = crop_transform([50.0, 60.0], [96.0, 128.0], 30.0, 192.0, 256.0);
        let i = t.inverse().unwrap();
        let (x, y) = i.apply(t.apply(12.5, -3.0).0, t.apply(12.5, -3.0).1);
        assert!((x - 12.5).abs() < 1e-9 && (y + 3.0).abs() < 1e-9);
        let f = Affine::hflip(100.0).then(&t);
        let p = f.apply(10.0, 20.0);
        let q = t.apply(89.0, 20.0);
        assert!((p.0 - q.0).abs() < 1e-9 && (p.1 - q.1).abs() < 1e-9);
        // centre -> middle of the crop, scale width -> crop width
        let (cx, cy) = t.apply(50.0, 60.0);
        assert!((cx - 96.0).abs() < 1e-9 && (cy - 128.0).abs() < 1e-9);
    }

    #[test]
    fn rotation_is_a_rotation_about_the_centre() {
        let t = crop_transform([0.0, 0.0], [10.0, 10.0], 90.0, 10.0, 10.0);
        // 90 degrees: point (1, 0) relative to the centre moves to (0, -1).
        let (x, y) = t.apply(1.0, 0.0);
        assert!((x - 5.0).abs() < 1e-9 && (y - 4.0).abs() < 1e-9, "{x} {y}");
    }

    #[test]
    fn flip_back_swaps_pairs_and_mirrors() {
        let (w, h) = (4, 1);
        let mut hm = vec![0.0f32; 17 * w * h];
        hm[w] = 1.0; // left_eye (k=1), x=0
        let out = flip_heatmaps_back(&hm, 17, (w, h), false);
        assert_eq!(out[2 * w + 3], 1.0); // right_eye, x=3
        let out = flip_heatmaps_back(&hm, 17, (w, h), true);
        assert_eq!(out[2 * w + 3], 0.0);
        assert_eq!(out[2 * w + 2], 0.0);
    }

    #[test]
    fn rescore_and_nms() {
        let k = |s: f64| vec![[10.0, 10.0, s]; 17];
        assert!((rescore(0.5, &k(0.8), 0.2) - 0.4).abs() < 1e-12);
        assert_eq!(rescore(0.5, &k(0.1), 0.2), 0.0);
        let sig = crate::coco::COCO_SIGMAS;
        let far: Vec<[f64; 3]> = vec![[300.0, 300.0, 0.9]; 17];
        let poses = vec![
            (k(0.8), 0.5, 1000.0),
            (k(0.9), 0.9, 1000.0),
            (far, 0.1, 1000.0),
        ];
        assert_eq!(oks_nms(&poses, 0.9, &sig, 0.2), vec![1, 2]);
    }
}
