//! Whole-model timings measured side by side in one process (`cargo xtask bench`): the plain
//! forward, LRP against the forward, calibration and fake-quant against the forward. Random
//! weights and images do: the time of a forward does not depend on the values. Repetitions of
//! the two sides of a ratio are interleaved so that the noise of a shared machine hits both
//! alike, and the median is reported.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use mixq_core::{Error, Result};
use mixq_lrp::Preset;
use mixq_vit_models::{ExplainOptions, ModelCard, Network, NoHook, SiteHook, Target};

use crate::{PtqConfig, SoftmaxMode, quantize, uniform_plan};

/// The median of timings (the upper one of an even count); `v` must not be empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// How much of the work each measurement does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchConfig {
    /// Images per measurement.
    pub images: usize,
    /// Measurements; the median is reported.
    pub repeat: usize,
}

impl BenchConfig {
    /// Both counts at least 1.
    pub fn validate(&self) -> Result<()> {
        if self.repeat == 0 || self.images == 0 {
            return Err(Error::invalid("--repeat/--images", 0, "must be at least 1"));
        }
        Ok(())
    }
}

/// `n` standard-normal images of `card`'s input shape.
pub fn random_images(card: &ModelCard, n: usize, device: &Device) -> Tensor<4> {
    let s = card.arch.img_size();
    Tensor::random(
        [n, card.arch.in_chans(), s, s],
        Distribution::Normal(0.0, 1.0),
        device,
    )
}

/// Seconds to run `images` images (the first ones of `input`, repeated) through `model` in
/// batches of `batch`, waiting for each batch's output.
pub fn time_forward<N: Network>(
    model: &N,
    hook: &dyn SiteHook,
    input: &Tensor<4>,
    images: usize,
    batch: usize,
) -> f64 {
    let start = Instant::now();
    let mut done = 0;
    while done < images {
        let b = batch.min(images - done);
        let x = input.clone().narrow(0, 0, b);
        let _ = model.forward_with(x, hook).into_data();
        done += b;
    }
    start.elapsed().as_secs_f64()
}

/// The plain forward's median seconds for `config.images` images at each batch size (after a
/// warm-up batch), on random images.
pub fn bench_forward<N: Network>(
    model: &N,
    card: &ModelCard,
    batches: &[usize],
    config: &BenchConfig,
    device: &Device,
) -> Result<Vec<(usize, f64)>> {
    config.validate()?;
    let Some(&largest) = batches.iter().max() else {
        return Err(Error::invalid("--batches", "(none)", "give a batch size"));
    };
    if batches.contains(&0) {
        return Err(Error::invalid("--batches", 0, "must be at least 1"));
    }
    let input = random_images(card, largest, device);
    Ok(batches
        .iter()
        .map(|&batch| {
            time_forward(model, &NoHook, &input, batch, batch); // warm-up
            let times = (0..config.repeat)
                .map(|_| time_forward(model, &NoHook, &input, config.images, batch))
                .collect();
            (batch, median(times))
        })
        .collect())
}

/// LRP's time against the plain forward's on the same images.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrpTiming {
    /// Median seconds of the plain forwards.
    pub forward_seconds: f64,
    /// Median seconds of the explanations (forward in LRP mode and one backward).
    pub lrp_seconds: f64,
}

/// Explains `config.images` random images (relevance from the predicted class, rules of
/// `preset`) in batches of `batch`, against plain forwards of the same images.
pub fn bench_lrp<N: Network>(
    model: &N,
    card: &ModelCard,
    preset: Preset,
    batch: usize,
    config: &BenchConfig,
    device: &Device,
) -> Result<LrpTiming> {
    config.validate()?;
    if batch == 0 {
        return Err(Error::invalid("--batches", 0, "must be at least 1"));
    }
    let input = random_images(card, batch, device);
    let pre = &card.preprocess;
    let options = ExplainOptions::new(preset, &pre.mean, &pre.std);
    let explain = |images: usize| -> Result<f64> {
        let start = Instant::now();
        let mut done = 0;
        while done < images {
            let b = batch.min(images - done);
            model.explain(input.clone().narrow(0, 0, b), &Target::Predicted, &options)?;
            done += b;
        }
        Ok(start.elapsed().as_secs_f64())
    };
    explain(batch)?; // warm-up
    let (mut fp, mut lrp) = (Vec::new(), Vec::new());
    for _ in 0..config.repeat {
        fp.push(time_forward(model, &NoHook, &input, config.images, batch));
        lrp.push(explain(config.images)?);
    }
    Ok(LrpTiming {
        forward_seconds: median(fp),
        lrp_seconds: median(lrp),
    })
}

/// Calibration's time, and fake-quant evaluation's against the plain forward's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PtqTiming {
    /// Seconds of calibrating on the random calibration images.
    pub calibration_seconds: f64,
    /// Median seconds of the plain forwards.
    pub forward_seconds: f64,
    /// Median seconds of the fake-quant forwards of the same images.
    pub quantized_seconds: f64,
}

/// Calibrates `model` at uniform W`bits`A`bits` (8-bit image input) on `calib` random images,
/// then times `config.images` random images through the fake-quant model and the plain one in
/// batches of 8.
pub fn bench_ptq<N: Network + Clone>(
    model: &N,
    card: &ModelCard,
    bits: u8,
    softmax: SoftmaxMode,
    calib: usize,
    config: &BenchConfig,
    device: &Device,
) -> Result<PtqTiming> {
    config.validate()?;
    if calib == 0 {
        return Err(Error::invalid("--calib", 0, "must be at least 1"));
    }
    let calib = random_images(card, calib, device);
    let input = random_images(card, 8, device);
    let plan = uniform_plan(&model.sites(), bits, bits, 8)?;
    let start = Instant::now();
    let ptq = PtqConfig {
        softmax,
        ..PtqConfig::default()
    };
    let q = quantize(model.clone(), calib, &plan, &ptq)?;
    let calibration_seconds = start.elapsed().as_secs_f64();
    let (mut fp, mut fq) = (Vec::new(), Vec::new());
    for _ in 0..config.repeat {
        fp.push(time_forward(model, &NoHook, &input, config.images, 8));
        fq.push(time_forward(&q.model, &q.state, &input, config.images, 8));
    }
    Ok(PtqTiming {
        calibration_seconds,
        forward_seconds: median(fp),
        quantized_seconds: median(fq),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_timing() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0, 4.0]), 3.0);
    }

    #[test]
    fn every_suite_times_what_it_is_asked_for_and_refuses_empty_work() {
        let card = ModelCard::find("digits-deit").unwrap();
        let device = Device::flex();
        let model = card.arch.init(&device).unwrap();
        let config = BenchConfig {
            images: 4,
            repeat: 2,
        };
        let forward = bench_forward(&model, &card, &[1, 4], &config, &device).unwrap();
        assert_eq!(forward.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 4]);
        assert!(forward.iter().all(|r| r.1 > 0.0));
        let lrp = bench_lrp(&model, &card, Preset::Attnlrp, 2, &config, &device).unwrap();
        assert!(lrp.forward_seconds > 0.0 && lrp.lrp_seconds > 0.0);
        let ptq = bench_ptq(&model, &card, 4, SoftmaxMode::Log2, 4, &config, &device).unwrap();
        assert!(ptq.calibration_seconds > 0.0 && ptq.quantized_seconds > 0.0);

        let none = BenchConfig {
            images: 0,
            repeat: 1,
        };
        let e = bench_forward(&model, &card, &[1], &none, &device).unwrap_err();
        assert!(e.to_string().contains("--repeat/--images"), "{e}");
        for batches in [&[][..], &[0]] {
            let e = bench_forward(&model, &card, batches, &config, &device).unwrap_err();
            assert!(e.to_string().contains("--batches"), "{e}");
        }
        let e = bench_ptq(&model, &card, 4, SoftmaxMode::Log2, 0, &config, &device).unwrap_err();
        assert!(e.to_string().contains("--calib"), "{e}");
    }
}
