//! The integer engine against the fake-quant model it was exported from, image by image, on a
//! whole data set: does the file compute what the PTQ tables report, and how fast is it next to
//! burn-flex's `f32` forward of the same model?

use mixq_vit_models::Network;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use mixq_core::Result;
use mixq_datasets::EvalData;
use mixq_ptq::{Metrics, QuantizedModel, host_logits};
use mixq_sensitivity::argmax;
use mixq_vit_models::Model;
use serde::Serialize;

use crate::IntModel;

/// One forward's figures over the data set.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Forward {
    /// Top-1/5, CE; KL against the fake-quant logits for the engine, against the FP logits for
    /// fake-quant, none for FP.
    pub metrics: Metrics,
    /// Seconds spent in this forward alone (batch preparation excluded).
    pub seconds: f64,
}

impl Forward {
    /// Images per second of the forward alone.
    pub fn images_per_second(&self) -> f64 {
        self.metrics.images as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }
}

/// What [`verify`] measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Agreement {
    /// The full-precision model (burn-flex `f32`).
    pub fp: Forward,
    /// The fake-quant model (burn-flex `f32` with quantizers).
    pub fake_quant: Forward,
    /// The integer engine.
    pub engine: Forward,
    /// Data-set indices of the images whose top-1 class differs between engine and fake-quant.
    pub disagreements: Vec<usize>,
    /// Max |logit difference| between engine and fake-quant over every image.
    pub max_abs_diff: f32,
    /// Each image's max |logit difference|, at the 50th, 90th and 99th percentile of the images:
    /// rounding-boundary flips touch a few images, a systematic difference all of them.
    pub diff_percentiles: [f32; 3],
}

impl Agreement {
    /// The figures as a markdown table (one row, `data` in its first cell), then the
    /// percentiles and the first 20 disagreeing images as text.
    pub fn markdown(&self, data: &str) -> String {
        let mut s = String::from(
            "| data | images | FP32 top-1 % | fake-quant top-1 % | engine top-1 % | top-1 disagreements | max |Δlogits| | FP32 images/s | fake-quant images/s | engine images/s | engine vs FP32 |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        s += &format!(
            "| {data} | {} | {:.2} | {:.2} | {:.2} | {} | {:.2e} | {:.0} | {:.0} | {:.0} | {:.2}x |\n",
            self.engine.metrics.images,
            self.fp.metrics.top1_pct(),
            self.fake_quant.metrics.top1_pct(),
            self.engine.metrics.top1_pct(),
            self.disagreements.len(),
            self.max_abs_diff,
            self.fp.images_per_second(),
            self.fake_quant.images_per_second(),
            self.engine.images_per_second(),
            self.engine.images_per_second() / self.fp.images_per_second(),
        );
        let [p50, p90, p99] = self.diff_percentiles;
        s += &format!(
            "per-image max |Δlogits| engine vs fake-quant: median {p50:.2e}, 90th percentile {p90:.2e}, 99th {p99:.2e}\n"
        );
        if !self.disagreements.is_empty() {
            let shown: Vec<String> = self
                .disagreements
                .iter()
                .take(20)
                .map(usize::to_string)
                .collect();
            s += &format!(
                "images whose top-1 differs (data-set index{}): {}\n",
                if self.disagreements.len() > 20 {
                    ", first 20"
                } else {
                    ""
                },
                shown.join(", ")
            );
        }
        s
    }
}

/// Runs `model`, its fake-quant version `quantized` and the integer `engine` built from it over
/// every batch of `data`, each batch through all three in turn (so all three see the same load
/// on a shared machine). `progress` gets (images done, images in all). An evaluation in which
/// no image could be read is an error naming `data`'s source.
pub fn verify(
    model: &Model,
    quantized: &QuantizedModel,
    engine: &IntModel,
    data: EvalData,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<Agreement> {
    let mut out = Agreement::default();
    let classes = engine.num_classes();
    let mut done = 0;
    let mut per_image = Vec::with_capacity(data.len);
    for batch in data.batches {
        if batch.is_empty() {
            continue;
        }
        let n = batch.len();
        let x = Tensor::<4>::from_data(TensorData::new(batch.images.clone(), batch.shape), device);
        let timed = |f: &mut dyn FnMut() -> Result<Vec<f32>>, seconds: &mut f64| {
            let start = Instant::now();
            let logits = f()?;
            *seconds += start.elapsed().as_secs_f64();
            Ok::<_, mixq_core::Error>(logits)
        };
        let fp = timed(
            &mut || Ok(host_logits(model.forward(x.clone()))),
            &mut out.fp.seconds,
        )?;
        let fq = timed(
            &mut || Ok(host_logits(quantized.forward(x.clone()))),
            &mut out.fake_quant.seconds,
        )?;
        let int = timed(
            &mut || engine.forward(&batch.images, n),
            &mut out.engine.seconds,
        )?;
        out.fp.metrics.add(&fp, &batch.labels, None);
        out.fake_quant.metrics.add(&fq, &batch.labels, Some(&fp));
        out.engine.metrics.add(&int, &batch.labels, Some(&fq));
        for (i, (f, e)) in fq
            .chunks_exact(classes)
            .zip(int.chunks_exact(classes))
            .enumerate()
        {
            let image_diff = f.iter().zip(e).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            out.max_abs_diff = out.max_abs_diff.max(image_diff);
            per_image.push(image_diff);
            if argmax(f) != argmax(e) {
                out.disagreements
                    .push(batch.indices.get(i).copied().unwrap_or(done + i));
            }
        }
        done += n;
        progress(done, data.len);
    }
    if done == 0 {
        return Err(mixq_ptq::no_image_evaluated(data.source));
    }
    per_image.sort_by(f32::total_cmp);
    let at = |q: f64| per_image[((per_image.len() - 1) as f64 * q).round() as usize];
    out.diff_percentiles = [at(0.5), at(0.9), at(0.99)];
    Ok(out)
}
