//! `cargo xtask lrp`: LRP relevance of a model over N images — per-site contribution scores
//! (the allocator's input) as TOML/JSON and a bar chart, and input heatmaps.

use std::path::PathBuf;
use std::str::FromStr;

use clap::Args;
use image::GrayImage;
use mixq_core::{Error, Result, RunDir, SiteId};
use mixq_datasets::{Batch, eval_transform_image, load_image};
use mixq_lrp::Preset;
use mixq_report::{contribution_chart, image_grid, overlay_heatmap_gray, save_png};
use mixq_vit_models::{ExplainOptions, ModelCard, Target, contribution_scores_with, object_shares};
use serde::Serialize;

use crate::common::{ModelArgs, progress};
use mixq_datasets::sample_batch;
use mixq_vit_models::batch_tensor;

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
    pub target: TargetArg,
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

/// `--target`.
#[derive(Clone, Copy, Debug)]
pub enum TargetArg {
    Predicted,
    Label,
    Class(usize),
}

impl FromStr for TargetArg {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "predicted" => Ok(TargetArg::Predicted),
            "label" => Ok(TargetArg::Label),
            _ => s.parse().map(TargetArg::Class).map_err(|_| {
                Error::invalid("--target", s, "expected predicted, label or a class index")
            }),
        }
    }
}

/// One explained image in `results.json`.
#[derive(Serialize)]
struct ImageResult {
    source: String,
    label: Option<usize>,
    target: usize,
    target_logit: f32,
    pixel_relevance: f32,
    /// Grayscale data sets only: share of |pixel relevance| on ink pixels, and their area share.
    ink_relevance_share: Option<f64>,
    ink_area_share: Option<f64>,
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
    per_image: Vec<ImageResult>,
}

pub fn run(args: LrpArgs) -> Result<()> {
    let card = args.model.card()?;
    let device = args.model.device.device()?;
    if args.images == 0 {
        return Err(Error::invalid("--images", 0, "must be at least 1"));
    }
    if args.batch == 0 {
        return Err(Error::invalid("--batch", 0, "must be at least 1"));
    }
    let classes = card.arch.num_classes();
    if let TargetArg::Class(c) = args.target
        && c >= classes
    {
        return Err(Error::invalid(
            "--target",
            c,
            format!(
                "model '{}' has {classes} classes (0..={})",
                card.aliases[0],
                classes - 1
            ),
        ));
    }
    let data = if args.files.is_empty() {
        sample_batch(
            &card.data_spec(),
            args.data.as_deref(),
            args.images,
            args.model.seed,
            "--images",
        )?
    } else {
        load_files(&card, &args.files)?
    };
    if matches!(args.target, TargetArg::Label) && data.labels.is_empty() {
        return Err(Error::invalid(
            "--target",
            "label",
            "image files given with --image have no labels; use predicted or a class index",
        ));
    }
    let model = args.model.load(&card, &device)?;
    let pre = &card.preprocess;
    let mut options = ExplainOptions::new(args.preset, &pre.mean, &pre.std);
    options.read_inputs = args.at_inputs;

    let n = data.shape[0];
    let per_image = data.images.len() / n;
    let bar = progress(n, "explain");
    let mut site_order: Vec<SiteId> = Vec::new();
    let mut results = Vec::new();
    let mut maps = Vec::new();
    let batches = (0..n).step_by(args.batch).map(|start| {
        let chunk = data.select(start..(start + args.batch).min(n));
        let target = match args.target {
            TargetArg::Predicted => Target::Predicted,
            TargetArg::Label => Target::Labels(chunk.labels.clone()),
            TargetArg::Class(c) => Target::Class(c),
        };
        (batch_tensor(&chunk, &device), target)
    });
    let mut scores =
        contribution_scores_with(&model, batches, &options, args.at_inputs, |e, first| {
            if site_order.is_empty() {
                site_order = e.sites.iter().map(|s| s.site.clone()).collect();
            }
            let totals = e.pixel_totals();
            for (i, map) in e.pixel_maps().into_iter().enumerate() {
                let image = first + i;
                let raw = card.preprocess.intensities(
                    &data.images[image * per_image..(image + 1) * per_image],
                    card.arch.in_chans(),
                );
                let (ink_rel, ink_area) = if card.dataset.is_some() && card.arch.in_chans() == 1 {
                    let (r, a) = object_shares(&map, &raw, args.ink_threshold);
                    (Some(r), Some(a))
                } else {
                    (None, None)
                };
                let label = data.labels.get(image).copied();
                results.push(ImageResult {
                    source: source_name(&data, image),
                    label,
                    target: e.targets[i],
                    target_logit: e.target_logits[i],
                    pixel_relevance: totals[i],
                    ink_relevance_share: ink_rel,
                    ink_area_share: ink_area,
                });
                if maps.len() < args.heatmaps {
                    maps.push((raw, map, e.targets[i], label));
                }
            }
            bar.set_position((first + e.targets.len()) as u64);
        })?;
    bar.finish_and_clear();
    scores.meta.insert("model".into(), card.name.clone());
    scores
        .meta
        .insert("seed".into(), args.model.seed.to_string());

    let mean = |f: &dyn Fn(&ImageResult) -> Option<f64>| {
        let v: Vec<f64> = results.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let ink_rel = mean(&|r| r.ink_relevance_share);
    let ink_area = mean(&|r| r.ink_area_share);

    // The table: the sites with the largest scores.
    let mut ranked: Vec<(&SiteId, f64)> = scores.scores.iter().map(|(s, v)| (s, *v)).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    let mut table = String::from("| rank | site | contribution |\n|---:|---|---:|\n");
    for (i, (site, v)) in ranked.iter().take(10).enumerate() {
        table += &format!("| {} | {site} | {:.4} |\n", i + 1, v);
    }
    let mut summary = format!(
        "{} images of {}, preset {}, relevance read at site {}s; {} sites.\n",
        n,
        card.aliases[0],
        args.preset,
        if args.at_inputs { "input" } else { "output" },
        scores.scores.len()
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
    scores.save(run.file("scores.toml"))?;
    scores.save(run.file("scores.json"))?;
    contribution_chart(
        run.file("contribution.png"),
        &scores,
        &site_order,
        &format!(
            "LRP contribution per site — {} ({}, {} images)",
            card.aliases[0], args.preset, n
        ),
    )?;
    if !maps.is_empty() {
        let [_, _, h, w] = data.shape;
        let scale = (160 / w.max(h)).max(1) as u32;
        let mut tiles = Vec::new();
        let mut captions = Vec::new();
        for (raw, map, target, label) in &maps {
            let gray = to_gray(raw, w, h, scale);
            tiles.push(overlay_heatmap_gray(&gray, map, w as u32, h as u32)?);
            captions.push(match label {
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
            per_image: results,
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

/// The given files through the model's eval transform; a file that does not decode is an
/// error naming it.
fn load_files(card: &ModelCard, files: &[PathBuf]) -> Result<Batch> {
    let transform = card.data_spec().transform;
    let mut images = Vec::new();
    for path in files {
        let img = load_image(path).map_err(|e| Error::parse(path, e))?;
        images.extend(eval_transform_image(&img, &transform));
    }
    let size = card.preprocess.img_size;
    Ok(Batch {
        images,
        shape: [files.len(), card.arch.in_chans(), size, size],
        labels: Vec::new(),
        paths: files.to_vec(),
        indices: (0..files.len()).collect(),
    })
}

fn source_name(batch: &Batch, i: usize) -> String {
    match batch.paths.get(i) {
        Some(p) => p.display().to_string(),
        None => format!("#{}", batch.indices.get(i).copied().unwrap_or(i)),
    }
}

fn to_gray(raw: &[f32], w: usize, h: usize, scale: u32) -> GrayImage {
    GrayImage::from_fn(w as u32 * scale, h as u32 * scale, |x, y| {
        let v = raw[(y / scale) as usize * w + (x / scale) as usize];
        image::Luma([(v * 255.0).round() as u8])
    })
}
