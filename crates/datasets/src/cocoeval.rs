//! COCO keypoint evaluation (OKS AP/AR), step for step as pycocotools'
//! `COCOeval(iouType="keypoints")`.
//!
//! Published pose numbers are pycocotools numbers, so every quirk that moves
//! them is kept:
//!
//! - ground truths are ignored when crowd or when their `num_keypoints` field
//!   is 0 (the field, not a count of visible keypoints);
//! - per image, predictions are ranked by score (stable sort) and only the top
//!   `max_dets` (20) are kept before OKS is computed;
//! - a ground truth without any labelled keypoint is compared with the box
//!   enlarged by its width/height on each side (distance 0 inside it);
//! - matching visits ground truths with ignored ones last, a prediction keeps
//!   the best OKS >= threshold (a later tie wins), crowd ground truths can be
//!   matched many times, and a prediction matched to an ignored ground truth or
//!   unmatched and outside the area range is ignored;
//! - a match is stored as the ground-truth *id*, so a ground truth with id 0
//!   counts as unmatched (pycocotools' behaviour, kept on purpose);
//! - the precision curve is made monotone from the right and sampled at 101
//!   recall points with a left-sided search; recall points past the reached
//!   recall read 0;
//! - settings without any non-ignored ground truth hold -1 and are left out of
//!   the means; a statistic with nothing left is -1.

use std::collections::HashMap;

use crate::DataError;
use crate::coco::{COCO_SIGMAS, CocoKeypoints, KeypointResult};

/// `np.spacing(1)`: pycocotools adds it to areas and to precision denominators.
const EPS: f64 = f64::EPSILON;

/// `np.linspace(start, stop, num)`, computed the way numpy does so that the
/// thresholds compare equal bit for bit (`0.75` must be found by `==`).
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// Evaluation settings; [`OksParams::default`] is pycocotools' keypoint setting.
#[derive(Debug, Clone, PartialEq)]
pub struct OksParams {
    /// Per-keypoint sigmas (COCO's 17 by default).
    pub sigmas: Vec<f64>,
    /// Predictions kept per image, best score first (20).
    pub max_dets: usize,
    /// OKS thresholds (.50:.05:.95).
    pub iou_thrs: Vec<f64>,
    /// Recall sample points (0:.01:1).
    pub rec_thrs: Vec<f64>,
    /// `(label, min area, max area)`, bounds inclusive: all, medium, large.
    pub area_ranges: Vec<(String, f64, f64)>,
}

impl Default for OksParams {
    fn default() -> Self {
        Self {
            sigmas: COCO_SIGMAS.to_vec(),
            max_dets: 20,
            iou_thrs: linspace(0.5, 0.95, 10),
            rec_thrs: linspace(0.0, 1.0, 101),
            area_ranges: vec![
                ("all".into(), 0.0, 1e10),
                ("medium".into(), 1024.0, 9216.0),
                ("large".into(), 9216.0, 1e10),
            ],
        }
    }
}

/// The ten numbers pycocotools prints for keypoints (`COCOeval.stats`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OksStats {
    /// AP @ OKS .50:.95, all areas.
    pub ap: f64,
    /// AP @ OKS .50.
    pub ap50: f64,
    /// AP @ OKS .75.
    pub ap75: f64,
    /// AP, medium persons (32² to 96²).
    pub ap_medium: f64,
    /// AP, large persons (over 96²).
    pub ap_large: f64,
    /// AR @ OKS .50:.95.
    pub ar: f64,
    /// AR @ OKS .50.
    pub ar50: f64,
    /// AR @ OKS .75.
    pub ar75: f64,
    /// AR, medium persons.
    pub ar_medium: f64,
    /// AR, large persons.
    pub ar_large: f64,
}

impl OksStats {
    /// Names in `stats` order, as mmpose reports them.
    pub const NAMES: [&'static str; 10] = [
        "AP", "AP .5", "AP .75", "AP (M)", "AP (L)", "AR", "AR .5", "AR .75", "AR (M)", "AR (L)",
    ];

    /// The statistics in pycocotools' `stats` order.
    pub fn to_array(&self) -> [f64; 10] {
        [
            self.ap,
            self.ap50,
            self.ap75,
            self.ap_medium,
            self.ap_large,
            self.ar,
            self.ar50,
            self.ar75,
            self.ar_medium,
            self.ar_large,
        ]
    }

    /// Builds the statistics from pycocotools' `stats` order.
    pub fn from_array(s: [f64; 10]) -> Self {
        Self {
            ap: s[0],
            ap50: s[1],
            ap75: s[2],
            ap_medium: s[3],
            ap_large: s[4],
            ar: s[5],
            ar50: s[6],
            ar75: s[7],
            ar_medium: s[8],
            ar_large: s[9],
        }
    }
}

/// Full accumulated results, for plots or per-threshold tables.
#[derive(Debug, Clone, PartialEq)]
pub struct KeypointEvaluation {
    /// The settings used.
    pub params: OksParams,
    /// Sorted category ids (the `K` axis).
    pub cat_ids: Vec<i64>,
    /// Precision `[T][R][K][A]` flattened row-major; -1 where no ground truth.
    pub precision: Vec<f64>,
    /// Recall `[T][K][A]` flattened row-major; -1 where no ground truth.
    pub recall: Vec<f64>,
    /// The ten summary numbers.
    pub stats: OksStats,
}

/// Object keypoint similarity of one prediction with one ground truth, as
/// pycocotools' `computeOks` (without the `max_dets` cut).
///
/// `gt_keypoints` and `dt_keypoints` are `[x, y, v] * K` with `K =
/// sigmas.len()`. Only keypoints with `v > 0` count; without any, the
/// distance is measured to the box enlarged by its size on each side.
/// Arrays shorter than `3 * K` (or no sigmas) give 0.
pub fn oks(
    gt_keypoints: &[f64],
    gt_bbox: [f64; 4],
    gt_area: f64,
    dt_keypoints: &[f64],
    sigmas: &[f64],
) -> f64 {
    let k = sigmas.len();
    if k == 0 || gt_keypoints.len() < 3 * k || dt_keypoints.len() < 3 * k {
        return 0.0;
    }
    let visible = (0..k).filter(|&i| gt_keypoints[3 * i + 2] > 0.0).count();
    let [bx, by, bw, bh] = gt_bbox;
    let (x0, x1, y0, y1) = (bx - bw, bx + bw * 2.0, by - bh, by + bh * 2.0);
    let mut sum = 0.0;
    let mut n = 0usize;
    for i in 0..k {
        let (xg, yg, vg) = (
            gt_keypoints[3 * i],
            gt_keypoints[3 * i + 1],
            gt_keypoints[3 * i + 2],
        );
        let (xd, yd) = (dt_keypoints[3 * i], dt_keypoints[3 * i + 1]);
        let (dx, dy) = if visible > 0 {
            if vg <= 0.0 {
                continue;
            }
            (xd - xg, yd - yg)
        } else {
            (
                (x0 - xd).max(0.0) + (xd - x1).max(0.0),
                (y0 - yd).max(0.0) + (yd - y1).max(0.0),
            )
        };
        let var = (sigmas[i] * 2.0).powi(2);
        let e = (dx * dx + dy * dy) / var / (gt_area + EPS) / 2.0;
        sum += (-e).exp();
        n += 1;
    }
    sum / n as f64
}

struct Gt<'a> {
    id: i64,
    area: f64,
    ignore: bool,
    iscrowd: bool,
    keypoints: &'a [f64],
    bbox: [f64; 4],
}

struct Dt<'a> {
    id: i64,
    area: f64,
    score: f64,
    keypoints: &'a [f64],
}

/// Per image and area range: what `evaluateImg` returns.
struct ImgEval {
    /// Scores of the kept predictions, best first.
    scores: Vec<f64>,
    /// `[T][D]`: matched ground-truth id, 0 = none.
    dt_matches: Vec<Vec<i64>>,
    /// `[T][D]`.
    dt_ignore: Vec<Vec<bool>>,
    /// `[G]`.
    gt_ignore: Vec<bool>,
}

/// Indices of `scores` sorted high to low, ties kept in input order
/// (numpy's `argsort(-s, kind="mergesort")`).
fn argsort_desc(scores: impl Iterator<Item = f64>) -> Vec<usize> {
    let s: Vec<f64> = scores.collect();
    let mut idx: Vec<usize> = (0..s.len()).collect();
    idx.sort_by(|&a, &b| (-s[a]).total_cmp(&(-s[b])));
    idx
}

/// Evaluates keypoint predictions against a ground-truth file with
/// pycocotools' keypoint settings and returns its ten statistics.
///
/// # Examples
///
/// ```rust
/// use mixq_datasets::coco::{CocoAnnotation, CocoImage, CocoKeypoints, KeypointResult};
/// use mixq_datasets::cocoeval::evaluate_keypoints;
///
/// let keypoints: Vec<f64> = (0..17)
///     .flat_map(|k| [100.0 + 5.0 * k as f64, 80.0 + 10.0 * k as f64, 2.0])
///     .collect();
/// let gt = CocoKeypoints {
///     source: "in-memory".into(),
///     images: vec![CocoImage { id: 1, file_name: "a.png".into(), width: 320, height: 320 }],
///     annotations: vec![CocoAnnotation {
///         id: 1, image_id: 1, category_id: 1, keypoints: keypoints.clone(),
///         bbox: [100.0, 80.0, 80.0, 160.0], area: 8000.0, iscrowd: false, num_keypoints: 17,
///     }],
///     categories: vec![CocoKeypoints::person_category()],
/// };
/// let prediction = KeypointResult {
///     image_id: 1, category_id: 1, keypoints, score: 0.9, bbox: None,
/// };
/// let stats = evaluate_keypoints(&gt, &[prediction])?;
/// // One match has precision 1 / (1 + eps) in pycocotools, hence not exactly 1.
/// assert!((stats.ap - 1.0).abs() < 1e-12);
/// assert_eq!(stats.ap_large, -1.0); // no large person: pycocotools prints -1
/// # Ok::<(), mixq_datasets::DataError>(())
/// ```
pub fn evaluate_keypoints(
    gt: &CocoKeypoints,
    results: &[KeypointResult],
) -> Result<OksStats, DataError> {
    Ok(evaluate_keypoints_with(gt, results, &OksParams::default())?.stats)
}

/// [`evaluate_keypoints`] with explicit settings, returning the accumulated
/// precision and recall too.
pub fn evaluate_keypoints_with(
    gt: &CocoKeypoints,
    results: &[KeypointResult],
    params: &OksParams,
) -> Result<KeypointEvaluation, DataError> {
    let bad = |msg: String| DataError::InvalidArgument(msg);
    let k = params.sigmas.len();
    if k == 0 || params.max_dets == 0 || params.iou_thrs.is_empty() || params.rec_thrs.is_empty() {
        return Err(bad(
            "OKS parameters need sigmas, max_dets > 0, thresholds and recall points".into(),
        ));
    }
    let src = gt.source.display();
    let mut img_ids: Vec<i64> = gt.images.iter().map(|im| im.id).collect();
    img_ids.sort_unstable();
    img_ids.dedup();
    let mut cat_ids: Vec<i64> = gt.categories.iter().map(|c| c.id).collect();
    cat_ids.sort_unstable();
    cat_ids.dedup();

    let mut gts: HashMap<(i64, i64), Vec<Gt>> = HashMap::new();
    for (i, a) in gt.annotations.iter().enumerate() {
        if a.keypoints.len() != 3 * k {
            return Err(bad(format!(
                "{src}: annotations[{i}] (id {}).keypoints: expected {} numbers, found {}",
                a.id,
                3 * k,
                a.keypoints.len()
            )));
        }
        gts.entry((a.image_id, a.category_id))
            .or_default()
            .push(Gt {
                id: a.id,
                area: a.area,
                ignore: a.iscrowd || a.num_keypoints == 0,
                iscrowd: a.iscrowd,
                keypoints: &a.keypoints,
                bbox: a.bbox,
            });
    }

    // `loadRes` takes every result's area from its box when the first result has one.
    let area_from_box = results.first().is_some_and(|r| r.bbox.is_some());
    let known_images: std::collections::HashSet<i64> = img_ids.iter().copied().collect();
    let mut dts: HashMap<(i64, i64), Vec<Dt>> = HashMap::new();
    for (i, r) in results.iter().enumerate() {
        if !known_images.contains(&r.image_id) {
            return Err(bad(format!(
                "results[{i}].image_id: image {} is not in the ground truth {src}",
                r.image_id
            )));
        }
        if r.keypoints.len() != 3 * k {
            return Err(bad(format!(
                "results[{i}].keypoints: expected {} numbers, found {}",
                3 * k,
                r.keypoints.len()
            )));
        }
        let area = if area_from_box {
            let b = r.bbox.ok_or_else(|| {
                bad(format!(
                    "results[{i}]: missing bbox (the first result has one, so all need one)"
                ))
            })?;
            b[2] * b[3]
        } else {
            let xs = r.keypoints.iter().step_by(3);
            let ys = r.keypoints.iter().skip(1).step_by(3);
            let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
            let (y0, y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &y| {
                (lo.min(y), hi.max(y))
            });
            (x1 - x0) * (y1 - y0)
        };
        dts.entry((r.image_id, r.category_id))
            .or_default()
            .push(Dt {
                id: i as i64 + 1,
                area,
                score: r.score,
                keypoints: &r.keypoints,
            });
    }
    // Predictions ranked best first and cut to max_dets, as computeOks and evaluateImg do.
    for list in dts.values_mut() {
        let order = argsort_desc(list.iter().map(|d| d.score));
        let mut sorted: Vec<Dt> = Vec::with_capacity(list.len().min(params.max_dets));
        for &i in order.iter().take(params.max_dets) {
            let d = &list[i];
            sorted.push(Dt {
                id: d.id,
                area: d.area,
                score: d.score,
                keypoints: d.keypoints,
            });
        }
        *list = sorted;
    }

    let empty_g: Vec<Gt> = Vec::new();
    let empty_d: Vec<Dt> = Vec::new();
    let t_n = params.iou_thrs.len();
    let r_n = params.rec_thrs.len();
    let k_n = cat_ids.len();
    let a_n = params.area_ranges.len();
    let mut precision = vec![-1.0; t_n * r_n * k_n * a_n];
    let mut recall = vec![-1.0; t_n * k_n * a_n];

    for (ki, &cat) in cat_ids.iter().enumerate() {
        // OKS matrices [D][G] per image, G in file order.
        let mut ious: HashMap<i64, Vec<Vec<f64>>> = HashMap::new();
        for &img in &img_ids {
            let g = gts.get(&(img, cat)).unwrap_or(&empty_g);
            let d = dts.get(&(img, cat)).unwrap_or(&empty_d);
            if g.is_empty() || d.is_empty() {
                continue;
            }
            let m = d
                .iter()
                .map(|dt| {
                    g.iter()
                        .map(|gt| oks(gt.keypoints, gt.bbox, gt.area, dt.keypoints, &params.sigmas))
                        .collect()
                })
                .collect();
            ious.insert(img, m);
        }
        for (ai, (_, lo, hi)) in params.area_ranges.iter().enumerate() {
            let (lo, hi) = (*lo, *hi);
            let mut evals: Vec<ImgEval> = Vec::new();
            for &img in &img_ids {
                let g = gts.get(&(img, cat)).unwrap_or(&empty_g);
                let d = dts.get(&(img, cat)).unwrap_or(&empty_d);
                if g.is_empty() && d.is_empty() {
                    continue;
                }
                evals.push(evaluate_img(g, d, ious.get(&img), lo, hi, params));
            }
            if evals.is_empty() {
                continue;
            }
            accumulate(
                &evals,
                params,
                |t, r, p| {
                    precision[((t * r_n + r) * k_n + ki) * a_n + ai] = p;
                },
                |t, rc| {
                    recall[(t * k_n + ki) * a_n + ai] = rc;
                },
            );
        }
    }

    let summarize = |ap: bool, iou_thr: Option<f64>, area: &str| -> f64 {
        let Some(ai) = params.area_ranges.iter().position(|(l, _, _)| l == area) else {
            return -1.0;
        };
        let ts: Vec<usize> = match iou_thr {
            None => (0..t_n).collect(),
            // pycocotools looks the threshold up with `==`.
            Some(thr) => (0..t_n).filter(|&t| params.iou_thrs[t] == thr).collect(),
        };
        let mut sum = 0.0;
        let mut n = 0usize;
        for &t in &ts {
            for ki in 0..k_n {
                if ap {
                    for r in 0..r_n {
                        let v = precision[((t * r_n + r) * k_n + ki) * a_n + ai];
                        if v > -1.0 {
                            sum += v;
                            n += 1;
                        }
                    }
                } else {
                    let v = recall[(t * k_n + ki) * a_n + ai];
                    if v > -1.0 {
                        sum += v;
                        n += 1;
                    }
                }
            }
        }
        if n == 0 { -1.0 } else { sum / n as f64 }
    };
    let stats = OksStats {
        ap: summarize(true, None, "all"),
        ap50: summarize(true, Some(0.5), "all"),
        ap75: summarize(true, Some(0.75), "all"),
        ap_medium: summarize(true, None, "medium"),
        ap_large: summarize(true, None, "large"),
        ar: summarize(false, None, "all"),
        ar50: summarize(false, Some(0.5), "all"),
        ar75: summarize(false, Some(0.75), "all"),
        ar_medium: summarize(false, None, "medium"),
        ar_large: summarize(false, None, "large"),
    };
    Ok(KeypointEvaluation {
        params: params.clone(),
        cat_ids,
        precision,
        recall,
        stats,
    })
}

/// pycocotools' `evaluateImg` for one image, category and area range.
/// `d` is already ranked and cut; `ious` is `[D][G]` in `g`'s file order.
fn evaluate_img(
    g: &[Gt],
    d: &[Dt],
    ious: Option<&Vec<Vec<f64>>>,
    lo: f64,
    hi: f64,
    params: &OksParams,
) -> ImgEval {
    let outside = |a: f64| a < lo || a > hi;
    let g_ignore: Vec<bool> = g.iter().map(|x| x.ignore || outside(x.area)).collect();
    // Ignored ground truths last, stable.
    let mut gt_order: Vec<usize> = (0..g.len()).collect();
    gt_order.sort_by_key(|&i| g_ignore[i]);
    let gt_ig: Vec<bool> = gt_order.iter().map(|&i| g_ignore[i]).collect();
    let crowd: Vec<bool> = gt_order.iter().map(|&i| g[i].iscrowd).collect();

    let t_n = params.iou_thrs.len();
    let mut gtm = vec![vec![0i64; g.len()]; t_n];
    let mut dtm = vec![vec![0i64; d.len()]; t_n];
    let mut dt_ig = vec![vec![false; d.len()]; t_n];
    if let Some(ious) = ious {
        for (ti, &t) in params.iou_thrs.iter().enumerate() {
            for (di, dt) in d.iter().enumerate() {
                let mut best = t.min(1.0 - 1e-10);
                let mut m: Option<usize> = None;
                for (gi, &orig) in gt_order.iter().enumerate() {
                    if gtm[ti][gi] > 0 && !crowd[gi] {
                        continue;
                    }
                    if let Some(mm) = m
                        && !gt_ig[mm]
                        && gt_ig[gi]
                    {
                        break;
                    }
                    let v = ious[di][orig];
                    if v < best {
                        continue;
                    }
                    best = v;
                    m = Some(gi);
                }
                if let Some(mm) = m {
                    dt_ig[ti][di] = gt_ig[mm];
                    dtm[ti][di] = g[gt_order[mm]].id;
                    gtm[ti][mm] = dt.id;
                }
            }
        }
    }
    for ti in 0..t_n {
        for (di, dt) in d.iter().enumerate() {
            if dtm[ti][di] == 0 && outside(dt.area) {
                dt_ig[ti][di] = true;
            }
        }
    }
    ImgEval {
        scores: d.iter().map(|x| x.score).collect(),
        dt_matches: dtm,
        dt_ignore: dt_ig,
        gt_ignore: gt_ig,
    }
}

/// pycocotools' `accumulate` for one category and area range.
fn accumulate(
    evals: &[ImgEval],
    params: &OksParams,
    mut set_precision: impl FnMut(usize, usize, f64),
    mut set_recall: impl FnMut(usize, f64),
) {
    let npig = evals
        .iter()
        .flat_map(|e| e.gt_ignore.iter())
        .filter(|&&ig| !ig)
        .count();
    if npig == 0 {
        return;
    }
    let scores = evals.iter().flat_map(|e| e.scores.iter().copied());
    let order = argsort_desc(scores);
    let nd = order.len();
    for ti in 0..params.iou_thrs.len() {
        let matched: Vec<i64> = evals
            .iter()
            .flat_map(|e| e.dt_matches[ti].iter().copied())
            .collect();
        let ignored: Vec<bool> = evals
            .iter()
            .flat_map(|e| e.dt_ignore[ti].iter().copied())
            .collect();
        let (mut tp, mut fp) = (0.0f64, 0.0f64);
        let mut rc = Vec::with_capacity(nd);
        let mut pr = Vec::with_capacity(nd);
        for &i in &order {
            if !ignored[i] {
                if matched[i] != 0 {
                    tp += 1.0;
                } else {
                    fp += 1.0;
                }
            }
            rc.push(tp / npig as f64);
            pr.push(tp / (fp + tp + EPS));
        }
        set_recall(ti, if nd > 0 { rc[nd - 1] } else { 0.0 });
        for i in (1..nd).rev() {
            if pr[i] > pr[i - 1] {
                pr[i - 1] = pr[i];
            }
        }
        for (ri, &r) in params.rec_thrs.iter().enumerate() {
            let pi = rc.partition_point(|&x| x < r);
            set_precision(ti, ri, if pi < nd { pr[pi] } else { 0.0 });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_match_numpy_bits() {
        let p = OksParams::default();
        // np.linspace(.5, .95, 10)[5] == 0.75 exactly; [1] is 0.55 (printed by numpy).
        assert_eq!(p.iou_thrs[5], 0.75);
        assert_eq!(p.iou_thrs[0], 0.5);
        assert_eq!(p.iou_thrs[9], 0.95);
        assert_eq!(p.rec_thrs.len(), 101);
        assert_eq!(p.rec_thrs[100], 1.0);
    }
}
