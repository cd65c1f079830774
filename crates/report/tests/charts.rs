//! End-to-end checks: every writer produces a decodable PNG of the expected size, the pixels
//! that carry meaning have the expected colours, and bad input is a clear error, never a panic.

use std::path::Path;

use image::{GrayImage, Luma, Rgb, RgbImage};
use mixq_report::*;

/// Decodes the file at `path`, insisting it really is a PNG.
fn read_png(path: &Path) -> RgbImage {
    let bytes = std::fs::read(path).expect("file written");
    assert_eq!(
        image::guess_format(&bytes).unwrap(),
        image::ImageFormat::Png
    );
    image::load_from_memory(&bytes)
        .expect("PNG decodes")
        .to_rgb8()
}

/// Top-left corners of `size × size` blocks entirely of `colour`, i.e. solid fills rather than
/// stray anti-aliased or gradient pixels.
fn solid_blocks(img: &RgbImage, colour: [u8; 3], size: u32) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for y in 0..img.height().saturating_sub(size) {
        for x in 0..img.width().saturating_sub(size) {
            let solid =
                (0..size).all(|dy| (0..size).all(|dx| img.get_pixel(x + dx, y + dy).0 == colour));
            if solid {
                out.push((x, y));
            }
        }
    }
    out
}

fn pixels_of(img: &RgbImage, colour: [u8; 3]) -> Vec<(u32, u32)> {
    img.enumerate_pixels()
        .filter(|(_, _, p)| p.0 == colour)
        .map(|(x, y, _)| (x, y))
        .collect()
}

fn err_text(r: mixq_core::Result<impl std::fmt::Debug>) -> String {
    r.expect_err("must be an error").to_string()
}

const RED: [u8; 3] = [200, 30, 30];
const GREEN: [u8; 3] = [30, 160, 30];
const BLUE: [u8; 3] = [30, 30, 200];

fn three_bars() -> BarChart {
    BarChart {
        title: "t".into(),
        y_label: "value".into(),
        bars: vec![
            Bar {
                colour: Some(RED),
                ..Bar::new("a", 1.0)
            },
            Bar {
                colour: Some(GREEN),
                ..Bar::new("b", 4.0)
            },
            Bar {
                colour: Some(BLUE),
                ..Bar::new("c", 2.0)
            },
        ],
        show_values: Some(false),
        ..Default::default()
    }
}

#[test]
fn bar_chart_writes_a_png_whose_bars_scale_with_their_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bars.png");
    let chart = three_bars();
    bar_chart(&path, &chart).unwrap();
    let img = read_png(&path);
    assert_eq!(
        img.dimensions(),
        render_bar_chart(&chart).unwrap().dimensions()
    );

    let extent = |c| {
        let px = pixels_of(&img, c);
        assert!(!px.is_empty(), "bar colour {c:?} missing");
        let top = px.iter().map(|p| p.1).min().unwrap();
        let bottom = px.iter().map(|p| p.1).max().unwrap();
        let left = px.iter().map(|p| p.0).min().unwrap();
        (top, bottom, left)
    };
    let (r, g, b) = (extent(RED), extent(GREEN), extent(BLUE));
    // Left to right in input order, on one baseline.
    assert!(r.2 < g.2 && g.2 < b.2);
    assert!(r.1.abs_diff(g.1) <= 1 && g.1.abs_diff(b.1) <= 1);
    // The tallest bar's top region is solid bar colour, and heights follow the values.
    assert!(g.0 < b.0 && b.0 < r.0);
    assert_eq!(img.get_pixel(g.2 + 3, g.0 + 2).0, GREEN);
    let h = |e: (u32, u32, u32)| (e.1 - e.0 + 1) as f64;
    assert!((h(g) / h(r) - 4.0).abs() < 0.1, "{} vs {}", h(g), h(r));
    assert!((h(g) / h(b) - 2.0).abs() < 0.05, "{} vs {}", h(g), h(b));
}

#[test]
fn bar_chart_grows_with_eighty_sites() {
    let sites: Vec<Bar> = (0..80)
        .map(|i| Bar::site(format!("blocks.{}.attn.qkv{}", i / 6, i % 6), i as f64))
        .collect();
    let chart = BarChart {
        bars: sites,
        ..Default::default()
    };
    let img = render_bar_chart(&chart).unwrap();
    assert!(img.width() >= 80 * 18, "{}", img.width());
    assert!(img.height() < 800);
}

#[test]
fn bar_chart_rejects_bad_input_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.png");
    let empty = BarChart {
        title: "rel".into(),
        ..Default::default()
    };
    assert!(err_text(bar_chart(&path, &empty)).contains("bars"));

    let mut nan = three_bars();
    nan.bars[1].value = f64::NAN;
    let e = err_text(bar_chart(&path, &nan));
    assert!(e.contains("'b'") && e.contains("NaN"), "{e}");

    let mut neg = three_bars();
    neg.bars[2].value = -1.0;
    let e = err_text(bar_chart(&path, &neg));
    assert!(e.contains("'c'") && e.contains("-1"), "{e}");

    let huge = BarChart {
        bars: (0..20_000).map(|i| Bar::new(i.to_string(), 1.0)).collect(),
        ..Default::default()
    };
    assert!(err_text(bar_chart(&path, &huge)).contains("size"));
    assert!(!path.exists());
}

#[test]
fn bar_chart_of_zeros_still_renders() {
    let chart = BarChart {
        bars: vec![Bar::new("a", 0.0)],
        ..Default::default()
    };
    render_bar_chart(&chart).unwrap();
}

const VIRIDIS_MAX: [u8; 3] = [253, 231, 37];
const VIRIDIS_MIN: [u8; 3] = [68, 1, 84];
const VIRIDIS_MID: [u8; 3] = [33, 144, 141];

fn small_heat(log: bool) -> HeatMap {
    HeatMap {
        title: "damage".into(),
        row_labels: vec!["r0".into(), "r1".into(), "r2".into()],
        col_labels: vec!["W2".into(), "W4".into(), "W8".into()],
        values: vec![
            vec![1e-4, 1e-2, 1e-3],
            vec![1e-3, 1e-3, 1e-3],
            vec![1e-3, 1e-3, 1.0],
        ],
        colour_label: "Δ loss".into(),
        log_scale: log,
        cell_text: Some(false),
    }
}

#[test]
fn heat_map_paints_max_and_min_cells_with_the_scale_ends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("heat.png");
    let map = small_heat(true);
    heat_map(&path, &map).unwrap();
    let img = read_png(&path);
    assert_eq!(
        img.dimensions(),
        render_heat_map(&map).unwrap().dimensions()
    );

    let max = solid_blocks(&img, VIRIDIS_MAX, 12);
    let min = solid_blocks(&img, VIRIDIS_MIN, 12);
    let mid = solid_blocks(&img, VIRIDIS_MID, 12);
    assert!(!max.is_empty() && !min.is_empty(), "scale ends missing");
    // The max sits bottom-right of the min, as in the matrix.
    assert!(max[0].0 > min[0].0 && max[0].1 > min[0].1);
    // Log scale: 1e-2 is halfway between 1e-4 and 1 and sits right of the min on its row.
    assert!(!mid.is_empty(), "log scale should put 1e-2 mid-map");
    assert!(mid[0].0 > min[0].0 && mid[0].1.abs_diff(min[0].1) < 3);

    // On a linear scale 1e-2 is close to the bottom colour instead.
    let lin = render_heat_map(&small_heat(false)).unwrap();
    assert!(solid_blocks(&lin, VIRIDIS_MID, 12).is_empty());
}

#[test]
fn heat_map_with_cell_text_and_many_rows_renders() {
    let mut map = HeatMap {
        row_labels: vec!["a".into(), "b".into()],
        col_labels: vec!["x".into(), "y".into()],
        values: vec![vec![0.0, 1.0], vec![2.0, 3.0]],
        cell_text: Some(true),
        ..Default::default()
    };
    let img = render_heat_map(&map).unwrap();
    map.cell_text = Some(false);
    let bare = render_heat_map(&map).unwrap();
    assert_eq!(img.dimensions(), bare.dimensions());
    // Text on the bright max cell is dark, on the dark min cell light.
    let on = |bg: [u8; 3], dark: bool| {
        img.enumerate_pixels().any(|(x, y, p)| {
            bare.get_pixel(x, y).0 == bg
                && if dark {
                    p.0.iter().all(|&c| c < 90)
                } else {
                    p.0.iter().all(|&c| c > 200)
                }
        })
    };
    assert!(on(VIRIDIS_MAX, true), "no dark text on the max cell");
    assert!(on(VIRIDIS_MIN, false), "no light text on the min cell");

    let rows = 74;
    let tall = HeatMap {
        row_labels: (0..rows)
            .map(|i| format!("blocks.{}.mlp.fc{}", i / 6, i % 6))
            .collect(),
        col_labels: (2..7).map(|b| format!("W{b}")).collect(),
        values: (0..rows)
            .map(|i| (0..5).map(|c| (i * c) as f64).collect())
            .collect(),
        ..Default::default()
    };
    let img = render_heat_map(&tall).unwrap();
    assert!(img.height() > rows as u32 * 12 && img.height() < 1300);
}

#[test]
fn heat_map_rejects_bad_input_by_name() {
    let mut m = small_heat(false);
    m.row_labels.pop();
    let e = err_text(render_heat_map(&m));
    assert!(e.contains("row_labels") && e.contains("= 2"), "{e}");

    let mut m = small_heat(false);
    m.values[1].push(3.0);
    let e = err_text(render_heat_map(&m));
    assert!(e.contains("row 1 'r1'"), "{e}");

    let mut m = small_heat(false);
    m.values[2][1] = f64::INFINITY;
    let e = err_text(render_heat_map(&m));
    assert!(
        e.contains("'r2'") && e.contains("'W4'") && e.contains("inf"),
        "{e}"
    );

    let mut m = small_heat(true);
    m.values = vec![vec![0.0; 3]; 3];
    assert!(err_text(render_heat_map(&m)).contains("log"));

    let empty = HeatMap::default();
    assert!(err_text(render_heat_map(&empty)).contains("values"));

    let mut close = small_heat(false);
    close.values = vec![vec![1e17, 1e17 + 64.0, 1e17]; 3];
    render_heat_map(&close).unwrap();
    close.values = vec![vec![-1e308, 1e308, 0.0]; 3];
    render_heat_map(&close).unwrap();

    let mut flat = small_heat(false);
    flat.values = vec![vec![2.0; 3]; 3];
    render_heat_map(&flat).unwrap();
}

#[test]
fn line_chart_draws_every_series_in_its_colour() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lines.png");
    let chart = LineChart {
        title: "curves".into(),
        x_label: "epoch".into(),
        y_label: "loss".into(),
        y2_label: "accuracy".into(),
        series: vec![
            Series {
                colour: Some(RED),
                ..Series::line("loss", vec![(1.0, 2.0), (2.0, 1.0), (3.0, 0.5)])
            },
            Series {
                colour: Some(BLUE),
                style: SeriesStyle::Markers,
                ..Series::line("acc", vec![(1.0, 60.0), (3.0, 80.0)]).on_right()
            },
            Series {
                colour: Some(GREEN),
                ..Series::step("bits", vec![(1.0, 1.5), (3.0, 1.5)])
            },
        ],
        width: 640,
        height: 400,
    };
    line_chart(&path, &chart).unwrap();
    let img = read_png(&path);
    assert_eq!(img.dimensions(), (640, 400));
    for c in [RED, BLUE] {
        assert!(pixels_of(&img, c).len() > 40, "colour {c:?} barely drawn");
    }
    // The flat step series is one long horizontal run across the plot.
    let green = pixels_of(&img, GREEN);
    let row = green
        .iter()
        .map(|p| p.1)
        .max_by_key(|&y| green.iter().filter(|p| p.1 == y).count());
    let run = green.iter().filter(|p| Some(p.1) == row).count();
    assert!(run > 300, "step run only {run} px");
}

#[test]
fn line_chart_rejects_bad_input_by_name() {
    let none = LineChart::default();
    assert!(err_text(render_line_chart(&none)).contains("series"));
    let empty = LineChart {
        series: vec![Series::line("val", vec![])],
        ..Default::default()
    };
    assert!(err_text(render_line_chart(&empty)).contains("'val'"));
    let nan = LineChart {
        series: vec![Series::line("val", vec![(0.0, 1.0), (1.0, f64::NAN)])],
        ..Default::default()
    };
    let e = err_text(render_line_chart(&nan));
    assert!(e.contains("'val' y of point 1") && e.contains("NaN"), "{e}");
    let tiny = LineChart {
        series: vec![Series::line("v", vec![(0.0, 1.0)])],
        width: 50,
        height: 40,
        ..Default::default()
    };
    assert!(err_text(render_line_chart(&tiny)).contains("too small"));
    let extreme = LineChart {
        series: vec![Series::line("v", vec![(0.0, 1e308), (1e-300, -1e308)])],
        ..Default::default()
    };
    render_line_chart(&extreme).unwrap();
    let single = LineChart {
        series: vec![Series::line("v", vec![(3.0, 3.0)])],
        ..Default::default()
    };
    render_line_chart(&single).unwrap();
}

fn photo() -> RgbImage {
    RgbImage::from_fn(20, 20, |x, y| Rgb([(x * 10) as u8, (y * 10) as u8, 120]))
}

#[test]
fn overlay_is_red_for_positive_blue_for_negative_and_grey_at_zero() {
    let img = photo();
    let grey = image::DynamicImage::ImageRgb8(img.clone()).to_luma8();
    // Top row: +1 | -1; bottom row: 0 | 0.
    let rel = [1.0, -1.0, 0.0, 0.0];
    let out = overlay_heatmap(&img, &rel, 2, 2).unwrap();
    assert_eq!(out.dimensions(), (20, 20));
    let [r, g, b] = out.get_pixel(0, 0).0;
    assert!(
        r > g.saturating_add(60) && r > b.saturating_add(60),
        "{r} {g} {b}"
    );
    let [r, g, b] = out.get_pixel(19, 0).0;
    assert!(
        b > r.saturating_add(60) && b > g.saturating_add(60),
        "{r} {g} {b}"
    );
    for x in 0..20 {
        let gv = grey.get_pixel(x, 19).0[0];
        assert_eq!(out.get_pixel(x, 19).0, [gv, gv, gv], "x={x}");
    }

    // An all-zero map is just the greyscale picture; a grey input works the same.
    let zero = overlay_heatmap(&img, &[0.0; 4], 2, 2).unwrap();
    assert!(zero.enumerate_pixels().all(|(x, y, p)| {
        let gv = grey.get_pixel(x, y).0[0];
        p.0 == [gv, gv, gv]
    }));
    let g = GrayImage::from_pixel(8, 8, Luma([90]));
    let out = overlay_heatmap_gray(&g, &[0.0, 0.0, 0.0, 5.0], 2, 2).unwrap();
    assert_eq!(out.get_pixel(0, 0).0, [90, 90, 90]);
    assert!(out.get_pixel(7, 7).0[0] > 200);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("overlay.png");
    write_overlay(&path, &img, &rel, 2, 2).unwrap();
    assert_eq!(read_png(&path), overlay_heatmap(&img, &rel, 2, 2).unwrap());
}

#[test]
fn relevance_image_uses_a_symmetric_bwr_scale() {
    let img = relevance_image(&[2.0, -1.0, 0.0, -2.0], 2, 2, 3).unwrap();
    assert_eq!(img.dimensions(), (6, 6));
    assert_eq!(img.get_pixel(0, 0).0, [255, 0, 0]);
    assert_eq!(img.get_pixel(5, 5).0, [0, 0, 255]);
    assert_eq!(img.get_pixel(0, 5).0, [255, 255, 255]);
    let half = img.get_pixel(4, 1).0;
    assert!(half[2] == 255 && half[0] > 100 && half[0] < 160, "{half:?}");
}

#[test]
fn relevance_errors_name_the_problem() {
    let img = photo();
    let e = err_text(overlay_heatmap(&img, &[0.0; 3], 2, 2));
    assert!(e.contains("relevance map length") && e.contains('3'), "{e}");
    let e = err_text(overlay_heatmap(&img, &[0.0, f32::NAN, 0.0, 0.0], 2, 2));
    assert!(e.contains("(1, 0)") && e.contains("NaN"), "{e}");
    assert!(err_text(relevance_image(&[1.0], 1, 1, 0)).contains("scale"));
    assert!(err_text(overlay_heatmap(&RgbImage::new(0, 0), &[1.0], 1, 1)).contains("size"));
}

#[test]
fn image_grid_tiles_images_in_reading_order_with_captions() {
    let solid = |c: [u8; 3]| RgbImage::from_pixel(40, 40, Rgb(c));
    let imgs = [solid(RED), solid(GREEN), solid(BLUE)];
    let caps: Vec<String> = vec!["red".into(), "green".into(), "blue".into()];
    let grid = image_grid(&imgs, 2, &caps).unwrap();
    assert_eq!(grid.width(), 8 + 2 * (40 + 8));
    let plain = image_grid(&imgs, 2, &[]).unwrap();
    assert_eq!(plain.dimensions(), (104, 8 + 2 * (40 + 8)));
    assert!(grid.height() > plain.height(), "captions take room");
    assert_eq!(plain.get_pixel(9, 9).0, RED);
    assert_eq!(plain.get_pixel(47, 47).0, RED);
    assert_eq!(plain.get_pixel(60, 20).0, GREEN);
    assert_eq!(plain.get_pixel(20, 60).0, BLUE);
    assert_eq!(
        plain.get_pixel(60, 60).0,
        [255, 255, 255],
        "no fourth image"
    );
    // Caption text is drawn under the first image.
    let under = (8..48).flat_map(|x| (49..grid.height() / 2).map(move |y| (x, y)));
    assert!(
        under
            .into_iter()
            .any(|(x, y)| grid.get_pixel(x, y).0[0] < 128)
    );

    assert!(err_text(image_grid(&[], 2, &[])).contains("at least one"));
    assert!(err_text(image_grid(&imgs, 0, &[])).contains("columns"));
    let e = err_text(image_grid(&imgs, 2, &caps[..2]));
    assert!(e.contains("captions count") && e.contains('2'), "{e}");
}

#[test]
fn skeleton_joins_confident_keypoints_only() {
    let mut img = RgbImage::new(100, 100);
    let kps = [(10.0, 50.0, 0.9), (90.0, 50.0, 0.8), (50.0, 10.0, 0.1)];
    draw_skeleton(&mut img, &kps, &[(0, 1), (0, 2)], GREEN, 0.5).unwrap();
    assert_eq!(img.get_pixel(50, 50).0, GREEN);
    assert_eq!(
        img.get_pixel(30, 30).0,
        [0, 0, 0],
        "edge to a low-score point drawn"
    );
    assert_eq!(img.get_pixel(50, 10).0, [0, 0, 0], "low-score point drawn");
    assert_ne!(img.get_pixel(10, 50).0, [0, 0, 0]);

    let e = err_text(draw_skeleton(&mut img, &kps, &[(0, 5)], GREEN, 0.5));
    assert!(e.contains("(0, 5)"), "{e}");
    assert!(draw_skeleton(&mut img, &kps, &[], GREEN, f32::NAN).is_err());

    let coco: Vec<(f32, f32, f32)> = (0..17)
        .map(|i| (5.0 * i as f32, 3.0 * i as f32, 1.0))
        .collect();
    let mut img = RgbImage::new(100, 100);
    draw_skeleton(&mut img, &coco, &COCO_SKELETON, RED, 0.5).unwrap();
    assert!(img.pixels().any(|p| p.0 == RED));
    // Non-finite coordinates are skipped, not drawn or panicked on.
    let odd = [(f32::NAN, 1.0, 1.0), (5.0, 5.0, 1.0)];
    draw_skeleton(&mut img, &odd, &[(0, 1)], RED, 0.5).unwrap();
}

#[test]
fn failed_encoding_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.png");
    let e = err_text(save_png(&path, &RgbImage::new(0, 0)));
    assert!(e.contains("empty.png") && e.contains("encode"), "{e}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no file, no temp file"
    );

    // A path that cannot be written names the file.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let e = err_text(save_png(blocker.join("a.png"), &photo()));
    assert!(e.contains("a.png") || e.contains("file"), "{e}");
}
