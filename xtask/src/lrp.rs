//! `cargo xtask lrp`: LRP relevance of a model over N images — per-site contribution scores
//! (the allocator's input) as TOML/JSON and a bar chart, and input heatmaps.

use std::path::PathBuf;

use clap::Args;
use image::GrayImage;
use mixq_core::{Error, Result, RunDir};
use mixq_datasets::{Batch, sample_batch};
use mixq_lrp::Preset;
use mixq_report::{contribution_chart, image_grid, overlay_heatmap_gray, save_png};
use mixq_vit_models::{ExplainDataConfig, ImageRelevance, TargetRule, explain_data};
use serde::Serialize;

use crate::common::{ModelArgs, progress};

#[derive(Args, Debug)]
pub struct LrpArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images to explain (a seeded sample of the training split, or of --data).
    #[arg(long, default_value_t = 32)]
    pub images: usize,
    /// Explain these image files instead (repeatable).
    #[arg(long = "image", conflicts_with = "data")]
    pub files: Vec<PathBuf>,
    /// An ImageNet-style folder to sample from; digits models default to their train split.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Rule preset.
    #[arg(long, default_value = "attnlrp")]
    pub preset: Preset,
    /// Start from the `predicted` class, the `label`, or a class index.
    #[arg(long, default_value = "predicted")]
    pub target: TargetRule,
    /// Read site relevance at the site's input instead of its output.
    #[arg(long)]
    pub at_inputs: bool,
    /// Grayscale data sets (digits, Fashion-MNIST, MNIST): intensity (0..1) from which a pixel
    /// counts as ink (foreground) in the ink-share figure.
    #[arg(long, default_value_t = 0.5)]
    pub ink_threshold: f32,
    /// How many images get a heatmap.
    #[arg(long, default_value_t = 8)]
    pub heatmaps: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
}

#[derive(Serialize)]
struct Results<'a> {
    model: &'a str,
    preset: String,
    seed: u64,
    images: usize,
    read_at: &'a str,
    mean_ink_relevance_share: Option<f64>,
    mean_ink_area_share: Option<f64>,
    per_image: &'a [ImageRelevance],
}

pub fn run(args: LrpArgs) -> Result<()> {
    let card = args.model.card()?;
    let device = args.model.device.device()?;
    if args.images == 0 {
        return Err(Error::invalid("--images", 0, "must be at least 1"));
    }
    let config = ExplainDataConfig {
        preset: args.preset,
        target: args.target,
        at_inputs: args.at_inputs,
        batch: args.batch,
        ink_threshold: args.ink_threshold,
        heatmaps: args.heatmaps,
    };
    let data = if args.files.is_empty() {
        sample_batch(
            &card.data_spec(),
            args.data.as_deref(),
            args.images,
            args.model.seed,
            "--images",
        )?
    } else {
        Batch::from_files(&args.files, &card.data_spec().transform)?
    };
    let model = args.model.load(&card, &device)?;
    let n = data.len();
    let bar = progress(n, "explain");
    let mut explained = explain_data(&model, &card, &data, &config, &device, |done| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    explained
        .scores
        .meta
        .insert("seed".into(), args.model.seed.to_string());
    let (ink_rel, ink_area) = explained.mean_ink_shares();
    let table = explained.top_sites_markdown(10);
    let mut summary = format!(
        "{} images of {}, preset {}, relevance read at site {}s; {} sites.\n",
        n,
        card.aliases[0],
        args.preset,
        if args.at_inputs { "input" } else { "output" },
        explained.scores.scores.len()
    );
    if let (Some(r), Some(a)) = (ink_rel, ink_area) {
        summary += &format!(
            "Input relevance on ink pixels (intensity >= {}): {:.1} % of |relevance| on {:.1} % of the area.\n",
            args.ink_threshold,
            100.0 * r,
            100.0 * a
        );
    }
    print!("\n{summary}\n{table}");

    let run = RunDir::create(&args.runs, "lrp")?;
    explained.scores.save(run.file("scores.toml"))?;
    explained.scores.save(run.file("scores.json"))?;
    contribution_chart(
        run.file("contribution.png"),
        &explained.scores,
        &explained.site_order,
        &format!(
            "LRP contribution per site — {} ({}, {} images)",
            card.aliases[0], args.preset, n
        ),
    )?;
    if !explained.maps.is_empty() {
        let [_, _, h, w] = data.shape;
        let scale = (160 / w.max(h)).max(1) as u32;
        let mut tiles = Vec::new();
        let mut captions = Vec::new();
        for m in &explained.maps {
            let gray = to_gray(&m.intensities, w, h, scale);
            tiles.push(overlay_heatmap_gray(
                &gray,
                &m.relevance,
                w as u32,
                h as u32,
            )?);
            let target = m.target;
            captions.push(match m.label {
                Some(l) => format!("label {l}, target {target}"),
                None => format!("target {target}"),
            });
        }
        save_png(
            run.file("heatmaps.png"),
            &image_grid(&tiles, tiles.len().min(4), &captions)?,
        )?;
    }
    let json = mixq_core::to_json(
        &Results {
            model: &card.name,
            preset: args.preset.to_string(),
            seed: args.model.seed,
            images: n,
            read_at: if args.at_inputs { "input" } else { "output" },
            mean_ink_relevance_share: ink_rel,
            mean_ink_area_share: ink_area,
            per_image: &explained.images,
        },
        "results",
    )?;
    run.write("results.json", json.as_bytes())?;
    let report = format!(
        "# LRP: {}\n\n{summary}\n{table}\n![contribution per site](contribution.png)\n\n\
         ![input relevance (red positive, blue negative)](heatmaps.png)\n\nReproduce:\n\n```\ncargo xtask lrp {}\n```\n",
        card.aliases[0],
        crate::common::command_line(),
    );
    run.write("report.md", report.as_bytes())?;
    let path = run.finish()?;
    println!("\nwrote {}", path.display());
    Ok(())
}

fn to_gray(raw: &[f32], w: usize, h: usize, scale: u32) -> GrayImage {
    GrayImage::from_fn(w as u32 * scale, h as u32 * scale, |x, y| {
        let v = raw[(y / scale) as usize * w + (x / scale) as usize];
        image::Luma([(v * 255.0).round() as u8])
    })
}
