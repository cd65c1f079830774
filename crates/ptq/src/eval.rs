//! Classification metrics: top-1/top-5, cross-entropy, and KL divergence to reference logits;
//! full precision and quantized variants compared in one pass over the data.

use mixq_vit_models::Network;
use std::time::Instant;

use burn::tensor::Tensor;
use mixq_datasets::{Batch, EvalData};
use mixq_vit_models::{Model, NoHook};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::QuantizedModel;

/// Logits as host values, row-major `[batch, classes]` (this also waits for the device).
pub fn host_logits(logits: Tensor<2>) -> Vec<f32> {
    logits
        .into_data()
        .try_into_vec::<f32>()
        .expect("logits are f32")
}

/// Full precision and each quantized variant on the same images.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Comparison {
    /// The full-precision model's figures.
    pub fp: Metrics,
    /// One per variant, in the order given; KL is measured against the FP logits.
    pub quantized: Vec<Metrics>,
}

/// Evaluates `model` and every variant over `batches` (`[b, c, h, w]` images and their labels)
/// in one pass, so each batch is prepared once however many variants there are. `progress`
/// gets the size of each batch done.
pub fn compare(
    model: &Model,
    variants: &[QuantizedModel],
    batches: impl IntoIterator<Item = (Tensor<4>, Vec<usize>)>,
    mut progress: impl FnMut(usize),
) -> Comparison {
    let mut out = Comparison {
        fp: Metrics::default(),
        quantized: vec![Metrics::default(); variants.len()],
    };
    for (x, labels) in batches {
        if labels.is_empty() {
            continue;
        }
        if model.is_backbone() {
            // No classes: the outputs compared are the final-normed tokens.
            let tokens = |t: Tensor<3>| {
                let [_, n, d] = t.dims();
                (
                    t.into_data()
                        .try_into_vec::<f32>()
                        .expect("features are f32"),
                    n,
                    d,
                )
            };
            let [_, _, h, w] = x.dims();
            let saliency = |m: &Model, f: &Tensor<3>| {
                m.saliency(f.clone(), [h, w]).map(|s| {
                    s.into_data()
                        .try_into_vec::<f32>()
                        .expect("saliency maps are f32")
                })
            };
            let fp_tokens = model.features_with(x.clone(), &NoHook);
            let fp_map = saliency(model, &fp_tokens);
            let (fp, n, d) = tokens(fp_tokens);
            let class_token = |f: &[f32]| -> Vec<f32> {
                f.chunks_exact(n * d)
                    .flat_map(|image| image[..d].to_vec())
                    .collect()
            };
            out.fp.add(&class_token(&fp), &labels, None);
            let same = out.fp.features.get_or_insert_default();
            same.add(&fp, &fp, n, d);
            if let Some(map) = &fp_map {
                let same = out.fp.saliency.get_or_insert_default();
                same.add(map, map, h * w);
            }
            // The variants are independent: one per rayon thread (on these small models one
            // forward keeps about one core busy).
            let outputs: Vec<_> = variants
                .par_iter()
                .map(|q| {
                    let q_tokens = q.features(x.clone());
                    let q_map = saliency(&q.model, &q_tokens);
                    (tokens(q_tokens).0, q_map)
                })
                .collect();
            for ((qf, q_map), m) in outputs.into_iter().zip(&mut out.quantized) {
                m.add(&class_token(&qf), &labels, Some(&class_token(&fp)));
                m.features.get_or_insert_default().add(&fp, &qf, n, d);
                if let (Some(reference), Some(map)) = (&fp_map, &q_map) {
                    m.saliency
                        .get_or_insert_default()
                        .add(reference, map, h * w);
                }
            }
            progress(labels.len());
            continue;
        }
        let fp_logits = host_logits(model.forward(x.clone()));
        out.fp.add(&fp_logits, &labels, None);
        // One variant per rayon thread, as above; each variant's metrics are summed in batch
        // order, so the figures do not depend on the thread count.
        let logits: Vec<Vec<f32>> = variants
            .par_iter()
            .map(|q| host_logits(q.forward(x.clone())))
            .collect();
        for (q_logits, m) in logits.iter().zip(&mut out.quantized) {
            m.add(q_logits, &labels, Some(&fp_logits));
        }
        progress(labels.len());
    }
    out
}

/// Accumulated over batches of logits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Images evaluated.
    pub images: usize,
    /// Images whose label has the largest logit.
    pub top1: usize,
    /// Images whose label is among the five largest logits.
    pub top5: usize,
    /// Sum over images of the cross-entropy.
    pub loss_sum: f64,
    /// Sum over images of KL(reference || these logits), when a reference was given.
    pub kl_sum: f64,
    /// A backbone's label-free figure: token cosine to full precision (`None` for classifiers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<FeatureAgreement>,
    /// A backbone with a saliency decoder: its maps against full precision's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saliency: Option<SaliencyAgreement>,
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = row
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    row.iter().map(|&v| v as f64 - log_sum).collect()
}

impl Metrics {
    /// Adds a batch: `logits` row-major `[labels.len(), classes]`; `reference` (same shape) are
    /// the full-precision logits the KL divergence is measured against.
    pub fn add(&mut self, logits: &[f32], labels: &[usize], reference: Option<&[f32]>) {
        let classes = logits.len() / labels.len().max(1);
        for (i, (row, &label)) in logits.chunks_exact(classes).zip(labels).enumerate() {
            let logp = log_softmax(row);
            self.loss_sum -= logp[label];
            if let Some(reference) = reference {
                let logp_ref = log_softmax(&reference[i * classes..(i + 1) * classes]);
                self.kl_sum += logp_ref
                    .iter()
                    .zip(&logp)
                    .map(|(r, q)| r.exp() * (r - q))
                    .sum::<f64>();
            }
            let rank = row.iter().filter(|&&v| v > row[label]).count();
            self.top1 += (rank == 0) as usize;
            self.top5 += (rank < 5) as usize;
            self.images += 1;
        }
    }

    /// Top-1 accuracy in percent.
    pub fn top1_pct(&self) -> f64 {
        100.0 * self.top1 as f64 / self.images.max(1) as f64
    }

    /// Top-5 accuracy in percent.
    pub fn top5_pct(&self) -> f64 {
        100.0 * self.top5 as f64 / self.images.max(1) as f64
    }

    /// Mean cross-entropy.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.images.max(1) as f64
    }

    /// Mean KL(reference ‖ these logits) per image.
    pub fn kl(&self) -> f64 {
        self.kl_sum / self.images.max(1) as f64
    }
}

/// One figure over several calibration seeds: mean and sample standard deviation (n - 1 in
/// the denominator, as numpy's `std(ddof=1)`; 0 for a single seed). A difference between two
/// configurations counts only where it exceeds this spread.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Mean over the seeds.
    pub mean: f64,
    /// Sample standard deviation (0 for one seed).
    pub std: f64,
    /// Seeds.
    pub n: usize,
}

impl Spread {
    /// The spread of `values` (empty: mean and std are NaN, n = 0).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let values: Vec<f64> = values.into_iter().collect();
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else if n == 1 {
            0.0
        } else {
            f64::NAN
        };
        Self { mean, std, n }
    }

    /// `mean ± std` with `decimals` places; the mean alone for a single value.
    pub fn format(&self, decimals: usize) -> String {
        if self.n > 1 {
            format!("{:.decimals$} ± {:.decimals$}", self.mean, self.std)
        } else {
            format!("{:.decimals$}", self.mean)
        }
    }
}

/// How close a quantized model's features are to full precision's, image by image, without
/// labels (backbones such as DINOv2 have no classes): each image's score is the mean over its
/// tokens of the cosine similarity between the quantized and the full-precision token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FeatureAgreement {
    /// Images compared.
    pub images: usize,
    /// Sum over images of their mean token cosine.
    pub cosine_sum: f64,
    /// The worst image's mean token cosine (1 before any image).
    pub cosine_min: f64,
}

impl Default for FeatureAgreement {
    fn default() -> Self {
        Self {
            images: 0,
            cosine_sum: 0.0,
            cosine_min: 1.0,
        }
    }
}

impl FeatureAgreement {
    /// Adds a batch: `reference` and `features` row-major `[images, tokens, dim]`.
    pub fn add(&mut self, reference: &[f32], features: &[f32], tokens: usize, dim: usize) {
        let per_image = tokens * dim;
        for (r, f) in reference
            .chunks_exact(per_image)
            .zip(features.chunks_exact(per_image))
        {
            let mean_cosine = r
                .chunks_exact(dim)
                .zip(f.chunks_exact(dim))
                .map(|(a, b)| {
                    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
                    for (&x, &y) in a.iter().zip(b) {
                        ab += x as f64 * y as f64;
                        aa += x as f64 * x as f64;
                        bb += y as f64 * y as f64;
                    }
                    // Two zero tokens are the same token; one zero token shares nothing.
                    if aa == 0.0 && bb == 0.0 {
                        1.0
                    } else {
                        ab / (aa * bb).sqrt().max(f64::MIN_POSITIVE)
                    }
                })
                .sum::<f64>()
                / tokens as f64;
            self.cosine_sum += mean_cosine;
            self.cosine_min = self.cosine_min.min(mean_cosine);
            self.images += 1;
        }
    }

    /// Mean over images of the mean token cosine.
    pub fn mean(&self) -> f64 {
        self.cosine_sum / self.images.max(1) as f64
    }
}

/// How close a quantized model's saliency maps are to full precision's, image by image: the
/// Pearson correlation of the two maps, the IoU of their most salient tenth of the pixels
/// ([`Self::TOP_FRACTION`]) and the mean absolute difference, each averaged over images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SaliencyAgreement {
    /// Images compared.
    pub images: usize,
    /// Sum over images of the Pearson correlation.
    pub pearson_sum: f64,
    /// Sum over images of the top-pixel IoU.
    pub iou_sum: f64,
    /// Sum over images of the mean absolute difference.
    pub mae_sum: f64,
}

impl SaliencyAgreement {
    /// The share of each map's pixels that counts as its most salient (ties broken by the
    /// lower pixel index, so the set has exactly `ceil(TOP_FRACTION * pixels)` pixels).
    pub const TOP_FRACTION: f64 = 0.1;

    /// Adds a batch: `reference` and `maps` row-major `[images, pixels]`.
    pub fn add(&mut self, reference: &[f32], maps: &[f32], pixels: usize) {
        let k = ((Self::TOP_FRACTION * pixels as f64).ceil() as usize).clamp(1, pixels);
        for (r, m) in reference
            .chunks_exact(pixels)
            .zip(maps.chunks_exact(pixels))
        {
            self.pearson_sum += pearson(r, m);
            let (top_r, top_m) = (top_pixels(r, k), top_pixels(m, k));
            let both = top_r.iter().zip(&top_m).filter(|(a, b)| **a && **b).count();
            self.iou_sum += both as f64 / (2 * k - both) as f64;
            self.mae_sum += r
                .iter()
                .zip(m)
                .map(|(a, b)| (*a as f64 - *b as f64).abs())
                .sum::<f64>()
                / pixels as f64;
            self.images += 1;
        }
    }

    /// Mean Pearson correlation.
    pub fn pearson(&self) -> f64 {
        self.pearson_sum / self.images.max(1) as f64
    }

    /// Mean IoU of the top pixels.
    pub fn iou(&self) -> f64 {
        self.iou_sum / self.images.max(1) as f64
    }

    /// Mean absolute difference per pixel.
    pub fn mae(&self) -> f64 {
        self.mae_sum / self.images.max(1) as f64
    }
}

/// [`SaliencyAgreement`]'s figures over several calibration seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SaliencySpread {
    /// Mean Pearson correlation to full precision's maps.
    pub pearson: Spread,
    /// Mean IoU of the top tenth of the pixels.
    pub iou: Spread,
    /// Mean absolute difference per pixel.
    pub mae: Spread,
}

/// A backbone's label-free figures over several calibration seeds: token cosine to full
/// precision (mean over images, and the worst image) and, with a saliency decoder, the maps'
/// agreement. Serialized flat into the row that holds it (`cosine`, `cosine_min`, `saliency`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LabelFreeSpread {
    /// Mean token cosine to full precision.
    pub cosine: Spread,
    /// The worst image's token cosine.
    pub cosine_min: Spread,
    /// The saliency maps against full precision's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saliency: Option<SaliencySpread>,
}

impl LabelFreeSpread {
    /// The spread over every seed's metrics; `None` for classifiers (no feature agreement).
    pub fn of<'a>(metrics: impl IntoIterator<Item = &'a Metrics>) -> Option<Self> {
        let metrics: Vec<&Metrics> = metrics.into_iter().collect();
        let features: Vec<&FeatureAgreement> = metrics
            .iter()
            .map(|m| m.features.as_ref())
            .collect::<Option<_>>()?;
        if features.is_empty() {
            return None;
        }
        let saliency: Option<Vec<&SaliencyAgreement>> =
            metrics.iter().map(|m| m.saliency.as_ref()).collect();
        let saliency = saliency.filter(|s| !s.is_empty()).map(|s| {
            let spread = |f: fn(&SaliencyAgreement) -> f64| Spread::of(s.iter().map(|a| f(a)));
            SaliencySpread {
                pearson: spread(SaliencyAgreement::pearson),
                iou: spread(SaliencyAgreement::iou),
                mae: spread(SaliencyAgreement::mae),
            }
        });
        Some(Self {
            cosine: Spread::of(features.iter().map(|f| f.mean())),
            cosine_min: Spread::of(features.iter().map(|f| f.cosine_min)),
            saliency,
        })
    }

    /// The table columns [`Self::cells`] fills: with or without the saliency ones.
    pub fn header(saliency: bool) -> &'static str {
        if saliency {
            "token cosine to FP (mean over images) | worst image | saliency Pearson | top-10 % IoU | saliency MAE"
        } else {
            "token cosine to FP (mean over images) | worst image"
        }
    }

    /// This row's cells under [`Self::header`] (`-` where a figure is missing).
    pub fn cells(this: Option<&Self>, saliency: bool) -> String {
        let opt = |o: Option<String>| o.unwrap_or_else(|| "-".into());
        let mut cells = format!(
            "{} | {}",
            opt(this.map(|l| l.cosine.format(4))),
            opt(this.map(|l| l.cosine_min.format(4)))
        );
        if saliency {
            let s = this.and_then(|l| l.saliency);
            cells += &format!(
                " | {} | {} | {}",
                opt(s.map(|a| a.pearson.format(4))),
                opt(s.map(|a| a.iou.format(3))),
                opt(s.map(|a| a.mae.format(4)))
            );
        }
        cells
    }
}

/// Pearson correlation of two maps; a constant map correlates 1 with an identical map and 0
/// with any other (the coefficient itself is undefined there).
fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (ma, mb) = (mean(a), mean(b));
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64 - ma, y as f64 - mb);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return if a == b { 1.0 } else { 0.0 };
    }
    ab / (aa * bb).sqrt()
}

/// Which of `map`'s pixels are among its `k` largest (ties: the lower index first).
fn top_pixels(map: &[f32], k: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..map.len()).collect();
    order.sort_by(|&i, &j| map[j].total_cmp(&map[i]).then(i.cmp(&j)));
    let mut top = vec![false; map.len()];
    for &i in &order[..k] {
        top[i] = true;
    }
    top
}

/// The error of an evaluation in which no image of `source` could be read.
pub fn no_image_evaluated(source: Option<std::path::PathBuf>) -> mixq_core::Error {
    mixq_core::Error::Data {
        path: source.unwrap_or_default(),
        message: "no image could be evaluated".into(),
    }
}

/// One model's figures on an evaluation set, and what [`evaluate_data`] kept of its outputs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    /// Top-1/top-5 and cross-entropy.
    pub metrics: Metrics,
    /// Seconds spent in `forward` alone (not in loading the data).
    pub forward_seconds: f64,
    /// Every image's logits, row-major `[images, classes]` (when asked for).
    pub logits: Vec<f32>,
    /// Every image's label (when logits are kept).
    pub labels: Vec<usize>,
}

impl Evaluation {
    /// Writes the kept logits and labels as safetensors (`logits` F32 `[images, classes]`,
    /// `labels` I64 `[images]`), the layout peer checks such as `tools/timm_peer_check.py` read.
    pub fn save_logits(&self, path: &std::path::Path) -> mixq_core::Result<()> {
        use safetensors::tensor::{Dtype, TensorView};
        let images = self.labels.len();
        let classes = self.logits.len() / images.max(1);
        let logits: Vec<u8> = self.logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        let labels: Vec<u8> = self
            .labels
            .iter()
            .flat_map(|&l| (l as i64).to_le_bytes())
            .collect();
        let bad = |e: safetensors::SafeTensorError| mixq_core::Error::parse(path, e.to_string());
        let views = vec![
            (
                "logits",
                TensorView::new(Dtype::F32, vec![images, classes], &logits).map_err(bad)?,
            ),
            (
                "labels",
                TensorView::new(Dtype::I64, vec![images], &labels).map_err(bad)?,
            ),
        ];
        let bytes = safetensors::serialize(views, None).map_err(bad)?;
        mixq_core::write_atomic(path, &bytes)
    }

    /// Images per second of `forward`.
    pub fn images_per_second(&self) -> f64 {
        self.metrics.images as f64 / self.forward_seconds.max(1e-9)
    }
}

/// Runs `forward` (a batch to its row-major logits) over every batch of `data` and scores it;
/// `keep_logits` keeps every image's logits and label. `progress` gets (images done, images
/// in all, the metrics so far). An evaluation in which no image could be read is an error
/// naming `data`'s source.
pub fn evaluate_data(
    data: EvalData,
    keep_logits: bool,
    mut forward: impl FnMut(&Batch) -> mixq_core::Result<Vec<f32>>,
    mut progress: impl FnMut(usize, usize, &Metrics),
) -> mixq_core::Result<Evaluation> {
    let mut out = Evaluation::default();
    let mut done = 0;
    for batch in data.batches {
        if batch.is_empty() {
            continue;
        }
        let start = Instant::now();
        let logits = forward(&batch)?;
        out.forward_seconds += start.elapsed().as_secs_f64();
        out.metrics.add(&logits, &batch.labels, None);
        if keep_logits {
            out.logits.extend_from_slice(&logits);
            out.labels.extend_from_slice(&batch.labels);
        }
        done += batch.len();
        progress(done, data.len, &out.metrics);
    }
    if out.metrics.images == 0 {
        return Err(no_image_evaluated(data.source));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_logits_are_written_as_the_peer_checks_read_them() {
        let eval = Evaluation {
            logits: vec![0.5, -1.0, 2.0, 3.25, 0.0, -7.5],
            labels: vec![2, 0],
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logits.safetensors");
        eval.save_logits(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let logits = file.tensor("logits").unwrap();
        assert_eq!(
            (logits.dtype(), logits.shape()),
            (safetensors::Dtype::F32, &[2, 3][..])
        );
        let values: Vec<f32> = logits
            .data()
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(values, eval.logits);
        let labels = file.tensor("labels").unwrap();
        assert_eq!(
            (labels.dtype(), labels.shape()),
            (safetensors::Dtype::I64, &[2][..])
        );
        let labels: Vec<i64> = labels
            .data()
            .chunks(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(labels, [2, 0]);
    }

    #[test]
    fn feature_agreement_is_the_mean_token_cosine_and_keeps_the_worst_image() {
        let mut a = FeatureAgreement::default();
        // Two images of two 2-d tokens. Image 0: the same tokens, one scaled (cosine 1, 1).
        // Image 1: one token orthogonal (0), one opposite (-1).
        let reference = [1.0, 0.0, 0.0, 2.0, 1.0, 0.0, 0.0, 1.0];
        let features = [3.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -2.0];
        a.add(&reference, &features, 2, 2);
        assert_eq!(a.images, 2);
        assert_eq!(a.cosine_min, -0.5);
        assert_eq!(a.mean(), 0.25);
    }

    #[test]
    fn saliency_agreement_matches_numpy_by_hand() {
        // Two 10-pixel maps per batch: the top tenth is one pixel.
        let reference = [0.1, 0.9, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.0];
        let mut a = SaliencyAgreement::default();
        a.add(&reference, &reference, 10);
        assert_eq!(
            (a.images, a.pearson(), a.iou(), a.mae()),
            (1, 1.0, 1.0, 0.0)
        );
        // Reversed order: numpy.corrcoef(r, 1 - r)[0, 1] = -1; the top pixel moves from 1 to 9
        // (IoU 0); mean |r - (1 - r)| = mean |2r - 1| = 0.5.
        let flipped: Vec<f32> = reference.iter().map(|v| 1.0 - v).collect();
        let mut b = SaliencyAgreement::default();
        b.add(&reference, &flipped, 10);
        assert!((b.pearson() + 1.0).abs() < 1e-6, "{}", b.pearson());
        assert_eq!(b.iou(), 0.0);
        assert!((b.mae() - 0.5).abs() < 1e-6, "{}", b.mae());
        // 20 pixels, top two: {1, 8} vs {1, 5} share one of three -> IoU 1/3; constant map
        // against a non-constant one: Pearson 0.
        let mut r20 = vec![0.0f32; 20];
        r20[1] = 1.0;
        r20[8] = 0.9;
        let mut m20 = r20.clone();
        m20[8] = 0.0;
        m20[5] = 0.95;
        let mut c = SaliencyAgreement::default();
        c.add(&r20, &m20, 20);
        assert!((c.iou() - 1.0 / 3.0).abs() < 1e-12, "{}", c.iou());
        let mut d = SaliencyAgreement::default();
        d.add(&r20, &[0.5; 20], 20);
        assert_eq!(d.pearson(), 0.0);
    }

    #[test]
    fn evaluate_data_scores_every_batch_and_keeps_logits_when_asked() {
        use mixq_datasets::Batch;
        let batch = |labels: Vec<usize>| Batch {
            images: vec![0.0; labels.len()],
            shape: [labels.len(), 1, 1, 1],
            labels,
            paths: Vec::new(),
            indices: Vec::new(),
        };
        let data = |batches: Vec<Batch>| EvalData {
            len: batches.iter().map(Batch::len).sum(),
            batches: Box::new(batches.into_iter()),
            describe: "test".into(),
            source: Some("where".into()),
        };
        // Two classes; the model always says class 1.
        let forward = |b: &Batch| Ok(b.labels.iter().flat_map(|_| [0.0, 1.0]).collect());
        let mut seen = Vec::new();
        let e = evaluate_data(
            data(vec![batch(vec![1, 0]), batch(vec![]), batch(vec![1])]),
            true,
            forward,
            |done, total, _| seen.push((done, total)),
        )
        .unwrap();
        assert_eq!(seen, [(2, 3), (3, 3)]);
        assert_eq!(e.metrics.images, 3);
        assert!((e.metrics.top1_pct() - 200.0 / 3.0).abs() < 1e-9);
        assert_eq!((e.logits.len(), e.labels), (6, vec![1, 0, 1]));
        let e = evaluate_data(data(vec![batch(vec![1])]), false, forward, |_, _, _| {}).unwrap();
        assert!(e.logits.is_empty() && e.labels.is_empty());
        // Nothing to evaluate: an error naming the source.
        let err = evaluate_data(data(vec![]), false, forward, |_, _, _| {}).unwrap_err();
        assert!(err.to_string().contains("where"), "{err}");
    }

    #[test]
    fn spread_is_numpys_mean_and_std_with_ddof_1() {
        // numpy: np.mean([88.5, 88.9, 88.1]) = 88.5, np.std([88.5, 88.9, 88.1], ddof=1) = 0.4
        let s = Spread::of([88.5, 88.9, 88.1]);
        assert_eq!(s.n, 3);
        assert!((s.mean - 88.5).abs() < 1e-12);
        assert!((s.std - 0.4).abs() < 1e-12, "{}", s.std);
        assert_eq!(s.format(2), "88.50 ± 0.40");
        assert_eq!(Spread::of([91.25]).format(2), "91.25");
        assert_eq!(Spread::of([91.25]).std, 0.0);
        assert!(Spread::of([]).mean.is_nan());
    }

    #[test]
    fn ranks_cross_entropy_and_kl_by_hand() {
        let mut m = Metrics::default();
        // Row 0: label 2 is the largest -> top-1. Row 1: label 0 ranks 3rd of 6 -> top-5 only.
        let logits = [0.0, 1.0, 3.0, 0.0, 0.0, 0.0, 1.0, 3.0, 2.0, 0.0, 0.0, 0.0];
        m.add(&logits, &[2, 0], Some(&logits));
        assert_eq!((m.images, m.top1, m.top5), (2, 1, 2));
        let e = std::f64::consts::E;
        let ce0 = (4.0 + e + 3f64.exp()).ln() - 3.0;
        let ce1 = (3.0 + e + 3f64.exp() + 2f64.exp()).ln() - 1.0;
        assert!((m.loss() - (ce0 + ce1) / 2.0).abs() < 1e-9);
        assert!(m.kl().abs() < 1e-12, "KL of identical logits is 0");

        // KL([ln 1, ln 3] || [0, 0]) = 1/4 ln(1/2) + 3/4 ln(3/2).
        let mut k = Metrics::default();
        k.add(&[0.0, 0.0], &[0], Some(&[0.0, 3f32.ln()]));
        let expected = 0.25 * 0.5f64.ln() + 0.75 * 1.5f64.ln();
        assert!((k.kl() - expected).abs() < 1e-6, "{}", k.kl());
    }
}
