//! Renders one picture of every kind with realistic shapes (74 ViT sites, 5 candidates, a
//! learning curve, a relevance overlay, a pose) so their looks can be checked by eye:
//! `cargo run -p mixq-report --example gallery -- /tmp/report-examples`.

use image::{Rgb, RgbImage};
use mixq_report::*;

fn sites() -> Vec<String> {
    let mut s = vec!["patch_embed.proj".to_string()];
    for b in 0..12 {
        for part in [
            "attn.qkv",
            "attn.matmul1",
            "attn.matmul2",
            "attn.proj",
            "mlp.fc1",
            "mlp.fc2",
        ] {
            s.push(format!("blocks.{b}.{part}"));
        }
    }
    s.push("head".into());
    s
}

fn main() -> mixq_core::Result<()> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/tmp/report-examples".into()),
    );
    let sites = sites();
    let rel = |i: usize| 0.05 + ((i as f64 * 0.7).sin().abs() * 0.6) / (1.0 + i as f64 / 30.0);

    bar_chart(
        dir.join("bar.png"),
        &BarChart {
            title: "Per-site relevance (ViT-S/16)".into(),
            y_label: "mean |R|".into(),
            bars: sites
                .iter()
                .enumerate()
                .map(|(i, s)| Bar::site(s, rel(i)))
                .collect(),
            ..Default::default()
        },
    )?;
    bar_chart(
        dir.join("bar_small.png"),
        &BarChart {
            title: "Accuracy by plan".into(),
            y_label: "top-1 (%)".into(),
            bars: vec![
                Bar::new("fp32", 81.4),
                Bar::new("W8A8", 81.1),
                Bar::new("W4A8", 78.9),
                Bar::new("mixed 4.5", 80.2),
            ],
            ..Default::default()
        },
    )?;

    let cands = ["W2", "W3", "W4", "W6", "W8"];
    heat_map(
        dir.join("heat.png"),
        &HeatMap {
            title: "Quantization damage per site".into(),
            row_labels: sites.clone(),
            col_labels: cands.iter().map(|s| s.to_string()).collect(),
            values: (0..sites.len())
                .map(|i| (0..5).map(|c| rel(i) * 10f64.powi(-c) * 3.0).collect())
                .collect(),
            colour_label: "Δ loss".into(),
            log_scale: true,
            cell_text: None,
        },
    )?;
    heat_map(
        dir.join("heat_small.png"),
        &HeatMap {
            title: "Δ top-1 by block and bits".into(),
            row_labels: (0..6).map(|b| format!("blocks.{b}")).collect(),
            col_labels: cands.iter().map(|s| s.to_string()).collect(),
            values: (0..6)
                .map(|b| {
                    (0..5)
                        .map(|c| (5 - c) as f64 * 1.3 + b as f64 * 0.2)
                        .collect()
                })
                .collect(),
            colour_label: "Δ top-1 (pp)".into(),
            ..Default::default()
        },
    )?;

    let epochs = 1..=20;
    line_chart(
        dir.join("curves.png"),
        &LineChart {
            title: "QAT learning curves".into(),
            x_label: "epoch".into(),
            y_label: "loss".into(),
            y2_label: "top-1 accuracy (%)".into(),
            series: vec![
                Series::line(
                    "train loss",
                    epochs
                        .clone()
                        .map(|e| (e as f64, 2.5 / (1.0 + e as f64 * 0.3)))
                        .collect(),
                ),
                Series::line(
                    "val loss",
                    epochs
                        .clone()
                        .map(|e| (e as f64, 2.6 / (1.0 + e as f64 * 0.25) + 0.1))
                        .collect(),
                ),
                Series {
                    style: SeriesStyle::LineMarkers,
                    ..Series::line(
                        "val top-1",
                        epochs
                            .map(|e| (e as f64, 60.0 + 20.0 * (1.0 - (-(e as f64) / 5.0).exp())))
                            .collect(),
                    )
                    .on_right()
                },
            ],
            ..Default::default()
        },
    )?;
    line_chart(
        dir.join("bits.png"),
        &LineChart {
            title: "Chosen bits along depth".into(),
            x_label: "site index".into(),
            y_label: "bits".into(),
            series: vec![
                Series::step(
                    "weights",
                    (0..74)
                        .map(|i| (i as f64, [8.0, 4.0, 6.0, 4.0, 3.0][(i * 7 / 13) % 5]))
                        .collect(),
                ),
                Series::step(
                    "activations",
                    (0..74)
                        .map(|i| (i as f64, if i % 6 == 1 { 6.0 } else { 8.0 }))
                        .collect(),
                ),
            ],
            ..Default::default()
        },
    )?;

    // A synthetic "photo": a lit disc on a gradient.
    let photo = RgbImage::from_fn(224, 224, |x, y| {
        let d = ((x as f32 - 112.0).powi(2) + (y as f32 - 100.0).powi(2)).sqrt();
        let v = if d < 60.0 {
            220 - d as u8
        } else {
            (x / 4 + y / 3) as u8
        };
        Rgb([v, (v as f32 * 0.8) as u8, 90])
    });
    let relevance: Vec<f32> = (0..14 * 14)
        .map(|i| {
            let (x, y) = ((i % 14) as f32 - 7.0, (i / 14) as f32 - 6.0);
            (-(x * x + y * y) / 8.0).exp()
                - 0.5 * (-((x - 5.0).powi(2) + (y - 5.0).powi(2)) / 3.0).exp()
        })
        .collect();
    write_overlay(dir.join("overlay.png"), &photo, &relevance, 14, 14)?;
    let raw = relevance_image(&relevance, 14, 14, 16)?;
    save_png(dir.join("relevance.png"), &raw)?;
    let over = overlay_heatmap(&photo, &relevance, 14, 14)?;
    let grid = image_grid(
        &[photo.clone(), raw, over.clone(), over],
        2,
        &[
            "input".into(),
            "relevance (raw)".into(),
            "overlay fp32".into(),
            "overlay W4A8 with a long caption".into(),
        ],
    )?;
    save_png(dir.join("grid.png"), &grid)?;

    let mut pose = photo;
    let kps: Vec<(f32, f32, f32)> = vec![
        (112.0, 40.0, 0.9),
        (104.0, 34.0, 0.9),
        (120.0, 34.0, 0.9),
        (96.0, 38.0, 0.8),
        (128.0, 38.0, 0.8),
        (90.0, 70.0, 0.9),
        (134.0, 70.0, 0.9),
        (80.0, 105.0, 0.9),
        (145.0, 105.0, 0.9),
        (74.0, 140.0, 0.9),
        (150.0, 140.0, 0.1),
        (100.0, 140.0, 0.9),
        (124.0, 140.0, 0.9),
        (98.0, 180.0, 0.9),
        (126.0, 180.0, 0.9),
        (96.0, 215.0, 0.9),
        (128.0, 215.0, 0.9),
    ];
    draw_skeleton(&mut pose, &kps, &COCO_SKELETON, [0, 200, 255], 0.3)?;
    save_png(dir.join("pose.png"), &pose)?;
    println!("wrote examples to {}", dir.display());
    Ok(())
}
