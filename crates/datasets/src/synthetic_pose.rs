//! Synthetic multi-person pose images with COCO-format annotations.
//!
//! COCO cannot be downloaded on a machine without network access, yet the
//! pose pipeline (loading, crops, targets, training, OKS evaluation) needs
//! data a small network can actually learn. These images are that data:
//! 1-4 articulated figures per image with COCO's 17 keypoints, human-like
//! limb proportions and random joint angles, drawn as thick limbs and an
//! elliptic head over a noisy, textured background.
//!
//! Left and right limbs have fixed, distinct colours (left arm red, right arm
//! blue, left leg yellow, right leg green, with small per-person jitter) so
//! that a network can tell the sides apart, as it can from a real body.
//!
//! Labels follow COCO's rules:
//! - `v = 2` visible; `v = 1` inside the image but covered by a person drawn
//!   later (nearer) or by a random occluding rectangle; `v = 0` with `x = y =
//!   0` outside the image;
//! - `bbox` is the tight box of the figure's silhouette inside the image;
//! - `area` is the silhouette's pixel count inside the image (the figure drawn
//!   alone, i.e. not reduced by occluders) — the analogue of COCO's
//!   segmentation area, which OKS uses as the object scale;
//! - `num_keypoints` counts `v > 0`.
//!
//! Output is deterministic given the seed (per-image generator streams, so
//! parallel rendering does not change a byte).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use image::{ImageEncoder, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::DataError;
use crate::coco::{CocoAnnotation, CocoImage, CocoKeypoints, NUM_KEYPOINTS, write_atomic};

/// File name of the annotation file written into the output folder.
pub const SYNTHETIC_JSON: &str = "person_keypoints.json";
/// Sub-folder holding the PNG images.
pub const SYNTHETIC_IMAGES: &str = "images";

/// Generator settings; [`SyntheticPoses::default`] gives 320x240 images.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticPoses {
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// Fewest persons per image (1).
    pub min_persons: usize,
    /// Most persons per image (4).
    pub max_persons: usize,
    /// Person height range as a fraction of the image height.
    pub person_height: (f64, f64),
    /// Probability of an occluding rectangle (0.4).
    pub occluder_prob: f64,
}

impl Default for SyntheticPoses {
    fn default() -> Self {
        Self {
            width: 320,
            height: 240,
            min_persons: 1,
            max_persons: 4,
            person_height: (0.35, 0.95),
            occluder_prob: 0.4,
        }
    }
}

/// One rendered image with its annotations (ids left 0, image id 0).
#[derive(Debug, Clone)]
pub struct RenderedImage {
    /// The picture.
    pub image: RgbImage,
    /// One annotation per person.
    pub annotations: Vec<CocoAnnotation>,
}

impl SyntheticPoses {
    /// Writes `n_images` PNGs of `width x height` with default settings into
    /// `out_dir/images/` and their annotations into
    /// `out_dir/person_keypoints.json`, whose path is returned. Image file
    /// names are relative to `out_dir`.
    ///
    /// # Examples
    ///
    /// ```rust
    /// use mixq_datasets::{CocoKeypoints, SyntheticPoses, TopDownConfig, TopDownDataset};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let json = SyntheticPoses::generate(dir.path(), 2, 320, 240, 7)?;
    /// let coco = CocoKeypoints::load(&json)?;
    /// let persons = TopDownDataset::from_gt(&coco, dir.path(), TopDownConfig::default())?;
    /// let batch = persons.batch(&[0], None, 0)?;
    /// assert_eq!(batch.image_shape, [1, 3, 256, 192]);
    /// assert_eq!(batch.target_shape, [1, 17, 64, 48]);
    /// # Ok::<(), mixq_datasets::DataError>(())
    /// ```
    pub fn generate(
        out_dir: impl AsRef<Path>,
        n_images: usize,
        width: u32,
        height: u32,
        seed: u64,
    ) -> Result<PathBuf, DataError> {
        Self {
            width,
            height,
            ..Self::default()
        }
        .write(out_dir, n_images, seed)
    }

    fn validate(&self) -> Result<(), DataError> {
        let bad = |m: String| Err(DataError::InvalidArgument(m));
        if self.width < 32 || self.height < 32 {
            return bad(format!(
                "synthetic image size {}x{} is too small (at least 32x32)",
                self.width, self.height
            ));
        }
        if self.min_persons == 0 || self.min_persons > self.max_persons || self.max_persons > 200 {
            return bad(format!(
                "persons per image {}..={} must satisfy 1 <= min <= max <= 200",
                self.min_persons, self.max_persons
            ));
        }
        let (lo, hi) = self.person_height;
        if !(lo > 0.0 && lo <= hi && hi <= 4.0) {
            return bad(format!("person height range {lo}..{hi} is invalid"));
        }
        Ok(())
    }

    /// Writes the data set (see [`SyntheticPoses::generate`]) with these settings.
    pub fn write(
        &self,
        out_dir: impl AsRef<Path>,
        n_images: usize,
        seed: u64,
    ) -> Result<PathBuf, DataError> {
        self.validate()?;
        if n_images == 0 {
            return Err(DataError::InvalidArgument(
                "n_images must be at least 1".into(),
            ));
        }
        let out = out_dir.as_ref();
        let img_dir = out.join(SYNTHETIC_IMAGES);
        fs::create_dir_all(&img_dir).map_err(|e| DataError::io(&img_dir, e))?;
        let rendered: Vec<Vec<CocoAnnotation>> = (0..n_images)
            .into_par_iter()
            .map(|i| {
                let r = self.render(i as u64, seed)?;
                let path = img_dir.join(file_name(i));
                let mut png = Vec::new();
                image::codecs::png::PngEncoder::new(&mut png)
                    .write_image(
                        r.image.as_raw(),
                        self.width,
                        self.height,
                        image::ExtendedColorType::Rgb8,
                    )
                    .map_err(|e| DataError::io(&path, io::Error::other(e.to_string())))?;
                write_atomic(&path, &png)?;
                Ok(r.annotations)
            })
            .collect::<Result<_, DataError>>()?;
        let mut coco = CocoKeypoints {
            source: out.join(SYNTHETIC_JSON),
            images: Vec::with_capacity(n_images),
            annotations: Vec::new(),
            categories: vec![CocoKeypoints::person_category()],
        };
        for (i, anns) in rendered.into_iter().enumerate() {
            let image_id = i as i64 + 1;
            coco.images.push(CocoImage {
                id: image_id,
                file_name: format!("{SYNTHETIC_IMAGES}/{}", file_name(i)),
                width: self.width,
                height: self.height,
            });
            for mut a in anns {
                a.id = coco.annotations.len() as i64 + 1;
                a.image_id = image_id;
                coco.annotations.push(a);
            }
        }
        let json = out.join(SYNTHETIC_JSON);
        coco.save(&json)?;
        Ok(json)
    }

    /// Renders image number `index` of the set seeded by `seed` (what
    /// [`SyntheticPoses::write`] saves), without touching the disk.
    pub fn render(&self, index: u64, seed: u64) -> Result<RenderedImage, DataError> {
        self.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(index);
        let (w, h) = (self.width as usize, self.height as usize);
        let mut canvas = background(&mut rng, w, h);
        let mut owner = vec![0u8; w * h];
        let n = rng.random_range(self.min_persons..=self.max_persons);
        let mut figures: Vec<Figure> = (0..n).map(|_| Figure::random(&mut rng, self)).collect();
        // Far (higher feet) first, so nearer persons occlude them.
        figures.sort_by(|a, b| a.feet_y().total_cmp(&b.feet_y()));
        let mut masks = Vec::with_capacity(n);
        for (p, f) in figures.iter().enumerate() {
            let mut mask = vec![false; w * h];
            for (shape, colour) in f.shapes() {
                shape.fill(w, h, |x, y| {
                    let i = y * w + x;
                    mask[i] = true;
                    owner[i] = p as u8 + 1;
                    let jitter = rng.random_range(-12i32..=12);
                    for c in 0..3 {
                        canvas[i * 3 + c] = (colour[c] as i32 + jitter).clamp(0, 255) as u8;
                    }
                });
            }
            masks.push(mask);
        }
        if rng.random::<f64>() < self.occluder_prob {
            let ow = rng.random_range(w as f64 * 0.1..w as f64 * 0.35);
            let oh = rng.random_range(h as f64 * 0.1..h as f64 * 0.35);
            let ox = rng.random_range(0.0..w as f64 - ow);
            let oy = rng.random_range(0.0..h as f64 - oh);
            let base: [u8; 3] = [rng.random(), rng.random(), rng.random()];
            let stripe = rng.random_range(3..9usize);
            for y in oy as usize..((oy + oh) as usize).min(h) {
                for x in ox as usize..((ox + ow) as usize).min(w) {
                    let i = y * w + x;
                    owner[i] = u8::MAX;
                    let dark = ((x + y) / stripe) % 2 == 0;
                    for c in 0..3 {
                        let v = base[c] as i32 - if dark { 40 } else { 0 };
                        canvas[i * 3 + c] = v.clamp(0, 255) as u8;
                    }
                }
            }
        }
        let mut annotations = Vec::with_capacity(n);
        for (p, f) in figures.iter().enumerate() {
            let mask = &masks[p];
            let area = mask.iter().filter(|&&m| m).count();
            if area == 0 {
                continue;
            }
            let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
            for (i, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
                let (x, y) = (i % w, i / w);
                x0 = x0.min(x);
                y0 = y0.min(y);
                x1 = x1.max(x);
                y1 = y1.max(y);
            }
            let mut keypoints = Vec::with_capacity(3 * NUM_KEYPOINTS);
            let mut labelled = 0;
            for &(x, y) in &f.joints {
                let (px, py) = (x.floor(), y.floor());
                if px < 0.0 || py < 0.0 || px >= w as f64 || py >= h as f64 {
                    keypoints.extend([0.0, 0.0, 0.0]);
                    continue;
                }
                let v = if owner[py as usize * w + px as usize] == p as u8 + 1 {
                    2.0
                } else {
                    1.0
                };
                labelled += 1;
                keypoints.extend([round2(x), round2(y), v]);
            }
            if labelled == 0 {
                continue;
            }
            annotations.push(CocoAnnotation {
                id: 0,
                image_id: 0,
                category_id: 1,
                keypoints,
                bbox: [
                    x0 as f64,
                    y0 as f64,
                    (x1 - x0 + 1) as f64,
                    (y1 - y0 + 1) as f64,
                ],
                area: area as f64,
                iscrowd: false,
                num_keypoints: labelled,
            });
        }
        let image = RgbImage::from_raw(self.width, self.height, canvas)
            .ok_or_else(|| DataError::InvalidArgument("image buffer size mismatch".into()))?;
        Ok(RenderedImage { image, annotations })
    }
}

fn file_name(i: usize) -> String {
    format!("{i:06}.png")
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Noise over a smooth random texture (a few sinusoids and a colour ramp),
/// so a network cannot find persons by colour contrast alone.
fn background(rng: &mut ChaCha8Rng, w: usize, h: usize) -> Vec<u8> {
    let base: [f64; 3] = [
        rng.random_range(40.0..200.0),
        rng.random_range(40.0..200.0),
        rng.random_range(40.0..200.0),
    ];
    let waves: Vec<(f64, f64, f64, [f64; 3])> = (0..3)
        .map(|_| {
            (
                rng.random_range(-0.12..0.12),
                rng.random_range(-0.12..0.12),
                rng.random_range(0.0..std::f64::consts::TAU),
                [
                    rng.random_range(-30.0..30.0),
                    rng.random_range(-30.0..30.0),
                    rng.random_range(-30.0..30.0),
                ],
            )
        })
        .collect();
    let mut px = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let noise = rng.random_range(-25.0..25.0);
            for c in 0..3 {
                let mut v = base[c] + noise;
                for (fx, fy, ph, amp) in &waves {
                    v += amp[c] * (fx * x as f64 + fy * y as f64 + ph).sin();
                }
                px[(y * w + x) * 3 + c] = v.clamp(0.0, 255.0) as u8;
            }
        }
    }
    px
}

/// A filled primitive in image pixels.
enum Shape {
    /// Segment with a radius (a limb).
    Capsule {
        a: (f64, f64),
        b: (f64, f64),
        r: f64,
    },
    /// Rotated ellipse.
    Ellipse {
        c: (f64, f64),
        rx: f64,
        ry: f64,
        angle: f64,
    },
    /// Polygon (the torso).
    Polygon(Vec<(f64, f64)>),
}

impl Shape {
    fn bounds(&self) -> (f64, f64, f64, f64) {
        match self {
            Shape::Capsule { a, b, r } => (
                a.0.min(b.0) - r,
                a.1.min(b.1) - r,
                a.0.max(b.0) + r,
                a.1.max(b.1) + r,
            ),
            Shape::Ellipse { c, rx, ry, .. } => {
                let m = rx.max(*ry);
                (c.0 - m, c.1 - m, c.0 + m, c.1 + m)
            }
            Shape::Polygon(p) => p.iter().fold(
                (
                    f64::INFINITY,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    f64::NEG_INFINITY,
                ),
                |(x0, y0, x1, y1), &(x, y)| (x0.min(x), y0.min(y), x1.max(x), y1.max(y)),
            ),
        }
    }

    fn contains(&self, x: f64, y: f64) -> bool {
        match self {
            Shape::Capsule { a, b, r } => {
                let (dx, dy) = (b.0 - a.0, b.1 - a.1);
                let len2 = dx * dx + dy * dy;
                let t = if len2 > 0.0 {
                    (((x - a.0) * dx + (y - a.1) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (qx, qy) = (a.0 + t * dx - x, a.1 + t * dy - y);
                qx * qx + qy * qy <= r * r
            }
            Shape::Ellipse { c, rx, ry, angle } => {
                let (s, co) = angle.sin_cos();
                let (dx, dy) = (x - c.0, y - c.1);
                let (u, v) = (dx * co + dy * s, -dx * s + dy * co);
                (u / rx).powi(2) + (v / ry).powi(2) <= 1.0
            }
            Shape::Polygon(p) => {
                let mut inside = false;
                let mut j = p.len() - 1;
                for i in 0..p.len() {
                    let (xi, yi) = p[i];
                    let (xj, yj) = p[j];
                    if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                        inside = !inside;
                    }
                    j = i;
                }
                inside
            }
        }
    }

    /// Calls `f(x, y)` for every pixel whose centre lies inside, clipped to the image.
    fn fill(&self, w: usize, h: usize, mut f: impl FnMut(usize, usize)) {
        let (x0, y0, x1, y1) = self.bounds();
        let xs = x0.floor().max(0.0) as usize;
        let ys = y0.floor().max(0.0) as usize;
        let xe = (x1.ceil().min(w as f64 - 1.0)).max(-1.0);
        let ye = (y1.ceil().min(h as f64 - 1.0)).max(-1.0);
        if xe < 0.0 || ye < 0.0 {
            return;
        }
        for y in ys..=ye as usize {
            for x in xs..=xe as usize {
                if self.contains(x as f64 + 0.5, y as f64 + 0.5) {
                    f(x, y);
                }
            }
        }
    }
}

/// One articulated figure: joint positions plus what is needed to draw it.
struct Figure {
    /// COCO keypoints in image pixels (sub-pixel).
    joints: [(f64, f64); NUM_KEYPOINTS],
    height: f64,
    head: (f64, f64),
    head_angle: f64,
    colours: [[u8; 3]; 6],
}

/// Unit vector at `deg` degrees from straight down, positive towards +x.
fn down(deg: f64) -> (f64, f64) {
    let r = deg.to_radians();
    (r.sin(), r.cos())
}

fn jitter_colour(rng: &mut ChaCha8Rng, c: [u8; 3]) -> [u8; 3] {
    c.map(|v| (v as i32 + rng.random_range(-25..=25)).clamp(0, 255) as u8)
}

impl Figure {
    fn random(rng: &mut ChaCha8Rng, cfg: &SyntheticPoses) -> Self {
        let (w, h) = (cfg.width as f64, cfg.height as f64);
        let ph = rng.random_range(cfg.person_height.0..=cfg.person_height.1) * h;
        // Hip centre; the figure may reach out of the picture.
        let hip = (
            rng.random_range(0.08 * w..0.92 * w),
            rng.random_range(0.3 * h..0.8 * h),
        );
        let lean: f64 = rng.random_range(-15.0..15.0);
        let up = {
            let d = down(lean);
            (-d.0, -d.1)
        };
        // Perpendicular pointing to the image right, i.e. the person's left
        // (the figure faces the camera).
        let right = (-up.1, up.0);
        let add = |p: (f64, f64), d: (f64, f64), s: f64| (p.0 + d.0 * s, p.1 + d.1 * s);
        let torso = 0.30 * ph;
        let neck = add(hip, up, torso);
        let l_sh = add(neck, right, 0.12 * ph);
        let r_sh = add(neck, right, -0.12 * ph);
        let l_hip = add(hip, right, 0.085 * ph);
        let r_hip = add(hip, right, -0.085 * ph);
        // Arms: angle from down, outward positive; elbow bends either way.
        let limb = |rng: &mut ChaCha8Rng,
                    root: (f64, f64),
                    side: f64,
                    up_range: (f64, f64),
                    bend: (f64, f64),
                    l1: f64,
                    l2: f64| {
            let a1 = rng.random_range(up_range.0..up_range.1);
            let b =
                rng.random_range(bend.0..bend.1) * if rng.random::<bool>() { 1.0 } else { -1.0 };
            let mid = add(root, down(lean + side * a1), l1 * ph);
            let end = add(mid, down(lean + side * (a1 + b)), l2 * ph);
            (mid, end)
        };
        let (l_el, l_wr) = limb(rng, l_sh, 1.0, (-20.0, 160.0), (0.0, 140.0), 0.17, 0.15);
        let (r_el, r_wr) = limb(rng, r_sh, -1.0, (-20.0, 160.0), (0.0, 140.0), 0.17, 0.15);
        let (l_kn, l_an) = limb(rng, l_hip, 1.0, (-15.0, 50.0), (0.0, 70.0), 0.24, 0.23);
        let (r_kn, r_an) = limb(rng, r_hip, -1.0, (-15.0, 50.0), (0.0, 70.0), 0.24, 0.23);
        // Head: tilted and turned a little.
        let tilt: f64 = lean + rng.random_range(-20.0..20.0);
        let hup = {
            let d = down(tilt);
            (-d.0, -d.1)
        };
        let hright = (-hup.1, hup.0);
        let head = add(neck, hup, 0.11 * ph);
        let turn = rng.random_range(-0.02..0.02) * ph;
        let nose = add(add(head, hup, -0.01 * ph), hright, turn);
        let eye_up = add(nose, hup, 0.025 * ph);
        let l_eye = add(eye_up, hright, 0.025 * ph);
        let r_eye = add(eye_up, hright, -0.025 * ph);
        let ear_c = add(add(head, hup, 0.01 * ph), hright, turn * 0.5);
        let l_ear = add(ear_c, hright, 0.06 * ph);
        let r_ear = add(ear_c, hright, -0.06 * ph);
        let colours = [
            jitter_colour(rng, [220, 40, 40]),          // left arm
            jitter_colour(rng, [40, 70, 220]),          // right arm
            jitter_colour(rng, [230, 210, 40]),         // left leg
            jitter_colour(rng, [40, 190, 70]),          // right leg
            [rng.random(), rng.random(), rng.random()], // torso
            jitter_colour(rng, [235, 190, 150]),        // skin
        ];
        Self {
            joints: [
                nose, l_eye, r_eye, l_ear, r_ear, l_sh, r_sh, l_el, r_el, l_wr, r_wr, l_hip, r_hip,
                l_kn, r_kn, l_an, r_an,
            ],
            height: ph,
            head,
            head_angle: tilt.to_radians(),
            colours,
        }
    }

    fn feet_y(&self) -> f64 {
        self.joints[15].1.max(self.joints[16].1)
    }

    /// Shapes back to front with their colours.
    fn shapes(&self) -> Vec<(Shape, [u8; 3])> {
        let j = &self.joints;
        let ph = self.height;
        let limb_r = (0.035 * ph).max(1.5);
        let leg_r = (0.045 * ph).max(1.5);
        let cap = |a: usize, b: usize, r: f64| Shape::Capsule {
            a: j[a],
            b: j[b],
            r,
        };
        let [la, ra, ll, rl, torso, skin] = self.colours;
        let dark = [20, 20, 20];
        let dot = (0.012 * ph).max(1.0);
        vec![
            (cap(11, 13, leg_r), ll),
            (cap(13, 15, leg_r * 0.85), ll),
            (cap(12, 14, leg_r), rl),
            (cap(14, 16, leg_r * 0.85), rl),
            (Shape::Polygon(vec![j[5], j[6], j[12], j[11]]), torso),
            (cap(5, 6, limb_r), torso),
            (cap(11, 12, limb_r), torso),
            (cap(5, 7, limb_r), la),
            (cap(7, 9, limb_r * 0.85), la),
            (cap(6, 8, limb_r), ra),
            (cap(8, 10, limb_r * 0.85), ra),
            (
                Shape::Ellipse {
                    c: self.head,
                    rx: 0.06 * ph,
                    ry: 0.075 * ph,
                    angle: self.head_angle,
                },
                skin,
            ),
            (
                Shape::Capsule {
                    a: j[3],
                    b: j[3],
                    r: dot * 1.6,
                },
                la,
            ),
            (
                Shape::Capsule {
                    a: j[4],
                    b: j[4],
                    r: dot * 1.6,
                },
                ra,
            ),
            (
                Shape::Capsule {
                    a: j[1],
                    b: j[1],
                    r: dot,
                },
                dark,
            ),
            (
                Shape::Capsule {
                    a: j[2],
                    b: j[2],
                    r: dot,
                },
                dark,
            ),
            (
                Shape::Capsule {
                    a: j[0],
                    b: j[0],
                    r: dot,
                },
                [200, 60, 60],
            ),
        ]
    }
}
