//! The engine's speed against burn-flex's `f32` forward, measured side by side in one process
//! (what `cargo xtask bench-int` prints), and the integer GEMM's throughput on DeiT-S's linear
//! shapes. Wall-clock timings of whole batches; a criterion bench (`benches/int_forward.rs`)
//! covers the kernels.

use mixq_vit_models::Network;
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use mixq_core::{BitPlan, BitWidth, Error, Result, SiteBits, SiteId};
use mixq_ptq::bench::median;
use mixq_ptq::mixed::plan_averages;
use mixq_ptq::{PtqConfig, SoftmaxMode, host_logits, quantize, uniform_plan};
use mixq_vit_models::Model;
use serde::Serialize;

use crate::IntModel;

/// What [`bench_engine`] measures.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineBenchConfig {
    /// Batch sizes.
    pub batches: Vec<usize>,
    /// Images per measurement (at least one batch).
    pub images: usize,
    /// Random calibration images.
    pub calib: usize,
    /// Repetitions; the median is reported.
    pub repeat: usize,
    /// Attention-probability quantizer of the integer configurations.
    pub softmax: SoftmaxMode,
}

impl EngineBenchConfig {
    /// Every count at least 1.
    pub fn validate(&self) -> Result<()> {
        if self.repeat == 0 || self.images == 0 || self.calib == 0 || self.batches.contains(&0) {
            return Err(Error::invalid(
                "--repeat/--images/--calib/--batches",
                0,
                "must be at least 1",
            ));
        }
        if self.batches.is_empty() {
            return Err(Error::invalid("--batches", "(none)", "give a batch size"));
        }
        Ok(())
    }
}

/// One configuration's speed at every batch size.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EngineBenchRow {
    /// `FP32 burn-flex`, `W8A8`, `W4A8` or `mixed 2/4/8 A8`.
    pub config: String,
    /// Parameter-weighted average weight bits (32 for FP32).
    pub avg_weight_bits: f64,
    /// Bytes of the weights (FP32) or of the exported file.
    pub model_bytes: usize,
    /// (batch, images/s, ms per batch)
    pub speeds: Vec<(usize, f64, f64)>,
}

impl EngineBenchRow {
    /// `rows` as a markdown table, each speed also as a ratio to the first row (FP32).
    pub fn markdown(rows: &[Self], model: &str) -> String {
        let Some(fp) = rows.first() else {
            return String::new();
        };
        let mut s = format!("| {model} | config | avg w bits | model MB |");
        for &(b, _, _) in &fp.speeds {
            s += &format!(" b{b} images/s | b{b} ms/batch | b{b} vs FP32 |");
        }
        s += "\n|---|---|---:|---:|";
        s += &"---:|---:|---:|".repeat(fp.speeds.len());
        s += "\n";
        for r in rows {
            s += &format!(
                "| | {} | {:.2} | {:.1} |",
                r.config,
                r.avg_weight_bits,
                r.model_bytes as f64 / 1e6
            );
            for ((_, ips, ms), (_, fp_ips, _)) in r.speeds.iter().zip(&fp.speeds) {
                s += &format!(" {ips:.1} | {ms:.1} | {:.2}x |", ips / fp_ips);
            }
            s += "\n";
        }
        s
    }
}

/// Seconds per image of `run(batch)` over `images` images (median of `repeat`, after a warm-up).
pub fn seconds_per_image(
    images: usize,
    batch: usize,
    repeat: usize,
    run: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<f64> {
    run(batch)?;
    let mut times = Vec::new();
    for _ in 0..repeat {
        let start = Instant::now();
        let mut done = 0;
        while done < images {
            run(batch)?;
            done += batch;
        }
        times.push(start.elapsed().as_secs_f64() / done as f64);
    }
    Ok(median(times))
}

/// `model`'s `f32` forward, then the engine at W8A8, W4A8 and [`mixed_248_plan`] (calibrated
/// on random images), each timed at every batch size on the same random input.
pub fn bench_engine(
    model: &Model,
    config: &EngineBenchConfig,
    device: &Device,
) -> Result<Vec<EngineBenchRow>> {
    config.validate()?;
    let max_batch = config.batches.iter().copied().max().unwrap_or(1);
    let sites = model.sites();
    let arch = model.arch();
    let (s, c) = (arch.img_size(), arch.in_chans());
    let input = Tensor::<4>::random([max_batch, c, s, s], Distribution::Normal(0.0, 1.0), device);
    let host = mixq_quant_kernels::host_values(&input)?;
    let calib = Tensor::<4>::random(
        [config.calib, c, s, s],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let mut speeds = Vec::new();
    for &b in &config.batches {
        let x = input.clone().narrow(0, 0, b);
        let spi = seconds_per_image(config.images, b, config.repeat, &mut |_| {
            let _ = host_logits(model.forward(x.clone()));
            Ok(())
        })?;
        speeds.push((b, 1.0 / spi, spi * b as f64 * 1e3));
    }
    let mut rows = vec![EngineBenchRow {
        config: "FP32 burn-flex".into(),
        avg_weight_bits: 32.0,
        model_bytes: model.num_params() * 4,
        speeds,
    }];
    let plans: Vec<(&str, BitPlan)> = vec![
        ("W8A8", uniform_plan(&sites, 8, 8, 8)?),
        ("W4A8", uniform_plan(&sites, 4, 8, 8)?),
        ("mixed 2/4/8 A8", mixed_248_plan(model)?),
    ];
    let ptq = PtqConfig {
        softmax: config.softmax,
        ..PtqConfig::default()
    };
    for (name, plan) in plans {
        let q = quantize(model.clone(), calib.clone(), &plan, &ptq)?;
        let engine = IntModel::from_quantized(&q)?;
        drop(q);
        let model_bytes = engine.to_bytes()?.len();
        let mut speeds = Vec::new();
        for &b in &config.batches {
            let x = &host[..b * c * s * s];
            let spi = seconds_per_image(config.images, b, config.repeat, &mut |b| {
                engine.forward(x, b).map(|_| ())
            })?;
            speeds.push((b, 1.0 / spi, spi * b as f64 * 1e3));
        }
        rows.push(EngineBenchRow {
            config: name.into(),
            avg_weight_bits: plan_averages(&plan, &sites).0,
            model_bytes,
            speeds,
        });
    }
    Ok(rows)
}

/// The mixed plan of [`bench_engine`]: activations at 8 bits; in even blocks the weighted sites
/// (a ViT's qkv, proj, fc1, fc2) at 4, 8, 2, 4 weight bits, in odd blocks at 8, 4, 4, 2 — a
/// 2/4/8 mix whose parameter-weighted average over a ViT's blocks is exactly 4 bits; the sites
/// outside the blocks (patch embedding, head) at 8.
pub fn mixed_248_plan<N: Network>(model: &N) -> Result<BitPlan> {
    let sites = model.sites();
    let mut plan = uniform_plan(&sites, 8, 8, 8)?;
    let weighted: std::collections::HashSet<&SiteId> = sites
        .iter()
        .filter(|s| s.kind.has_weights())
        .map(|s| &s.id)
        .collect();
    for (i, block) in model.block_sites().iter().enumerate() {
        let pattern = if i % 2 == 0 {
            [4, 8, 2, 4]
        } else {
            [8, 4, 4, 2]
        };
        let block = block.iter().filter(|id| weighted.contains(id));
        for (id, w) in block.zip(pattern) {
            plan.sites.insert(id.clone(), SiteBits::new(w, 8)?);
        }
    }
    plan.meta.insert("name".into(), "mixed-2/4/8".into());
    Ok(plan)
}

/// One GEMM shape's throughput.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GemmSpeed {
    /// `(M, K, N)`: M tokens, K inputs, N outputs.
    pub shape: (usize, usize, usize),
    /// Integer GEMM, 8-bit weights, GOP/s (2 ops per multiply-accumulate).
    pub int8_gops: f64,
    /// Integer GEMM, 4-bit weights, GOP/s.
    pub int4_gops: f64,
    /// burn-flex's `f32` matmul, GOP/s.
    pub f32_gops: f64,
}

/// GOP/s of the integer GEMM (int8 and int4 weights, `f32` output with the fused epilogue) and
/// of burn-flex's `f32` matmul on DeiT-S's linear shapes, one image (197 tokens) and a batch of
/// 8; each the best of at least `repeat` calls spread over at least 0.3 s.
pub fn gemm_speeds(device: &Device, repeat: usize) -> Result<Vec<GemmSpeed>> {
    use mixq_quant_kernels::igemm::{ActQuant, IntGemm};

    use mixq_quant_kernels::packing::PackedWeights;
    let gemm = IntGemm::new();
    let aq = ActQuant::new(0.02, 128, BitWidth::new(8)?)?;
    let mut out = Vec::new();
    for (m, k, n) in mixq_quant_kernels::igemm::DEIT_S_SHAPES {
        let ops = 2.0 * (m * n * k) as f64;
        let a: Vec<u8> = (0..m * k).map(|i| (i * 7 % 251) as u8).collect();
        // Best of several calls: a single call is ~1 ms, and a shared machine's interruptions
        // last longer than a few of them.
        let best = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
            let (mut best, start, mut calls) = (f64::MAX, Instant::now(), 0);
            while calls < repeat.max(5) || start.elapsed().as_secs_f64() < 0.3 {
                let t = Instant::now();
                f()?;
                best = best.min(t.elapsed().as_secs_f64());
                calls += 1;
            }
            Ok(ops / best / 1e9)
        };
        let mut int = Vec::new();
        for bits in [8u8, 4] {
            let qmax = (1i32 << bits) - 1;
            let codes: Vec<i32> = (0..n * k)
                .map(|i| (i * 13 % 97) as i32 % (qmax + 1))
                .collect();
            let w = PackedWeights::from_codes(
                n,
                k,
                BitWidth::new(bits)?,
                &codes,
                vec![0.01; n],
                vec![(qmax + 1) / 2; n],
            )?;
            let p = gemm.prepare(w)?;
            let mut y = vec![0f32; m * n];
            int.push(best(&mut || gemm.gemm_f32(&a, m, aq, &p, None, &mut y))?);
        }
        let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), device);
        let w = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), device);
        let f32_gops = best(&mut || {
            let _ = x.clone().matmul(w.clone()).into_data();
            Ok(())
        })?;
        out.push(GemmSpeed {
            shape: (m, k, n),
            int8_gops: int[0],
            int4_gops: int[1],
            f32_gops,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixq_core::SiteInfo;
    use mixq_vit_models::ModelCard;

    #[test]
    fn the_mixed_plan_averages_exactly_four_weight_bits_over_the_blocks() {
        let card = ModelCard::find("deit-s").unwrap();
        let model = card.arch.init(&Device::flex()).unwrap();
        let plan = mixed_248_plan(&model).unwrap();
        let sites = card.arch.sites();
        let in_blocks: std::collections::HashSet<SiteId> =
            model.block_sites().into_iter().flatten().collect();
        let (blocks, outside): (Vec<SiteInfo>, Vec<SiteInfo>) =
            sites.into_iter().partition(|s| in_blocks.contains(&s.id));
        let (w, a) = plan_averages(&plan, &blocks);
        assert!((w - 4.0).abs() < 1e-12, "{w}");
        assert_eq!(a, 8.0);
        // Block 1's qkv is at 8 bits, its fc2 at 2; the patch embedding and head stay at 8.
        let bits = |id: &str| plan.sites[&SiteId::new(id)].w_bits.get();
        assert_eq!(
            (bits("blocks.1.attn.qkv"), bits("blocks.1.mlp.fc2")),
            (8, 2)
        );
        assert!(
            outside
                .iter()
                .filter(|s| s.kind.has_weights())
                .all(|s| bits(s.id.as_str()) == 8)
        );
    }
}
