//! `ImageFolder` and `Loader` on real files in temporary directories.

use std::fs;
use std::path::{Path, PathBuf};

use image::{DynamicImage, GrayImage, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use mixq_datasets::{DataError, EvalTransform, ImageFolder, Loader, eval_transform_image};

fn write_png(path: &Path, seed: u8) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = RgbImage::from_fn(12, 9, |x, y| {
        Rgb([
            seed.wrapping_mul(31).wrapping_add(x as u8 * 9),
            (y as u8) * 20,
            seed,
        ])
    });
    // Encode as PNG whatever the extension says: the loader sniffs content.
    img.save_with_format(path, image::ImageFormat::Png).unwrap();
}

fn touch(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap()
        .to_string_lossy()
        .replace('\\', "/")
}

fn tiny() -> EvalTransform {
    EvalTransform {
        img_size: 8,
        crop_pct: 0.875,
        mean: [0.5; 3],
        std: [0.5; 3],
        channels: 3,
    }
}

#[test]
fn order_follows_torchvision() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Classes sort by bytes: uppercase before lowercase.
    write_png(&root.join("b/2.png"), 1);
    write_png(&root.join("b/10.png"), 2);
    write_png(&root.join("B/z.JPG"), 3);
    write_png(&root.join("a/x.jpeg"), 4);
    // Recursive: `sorted(os.walk(...))` orders directories by path string:
    // `a/s` < `a/s-t` < `a/s/deep` ('-' = 0x2d < '/' = 0x2f), which is not
    // depth-first order (that would visit `a/s/deep` before `a/s-t`).
    write_png(&root.join("a/s/deep/q.png"), 5);
    write_png(&root.join("a/s-t/p.png"), 6);
    write_png(&root.join("a/s/r.png"), 7);
    // Skipped: wrong extensions (counted), plus a stray file at the root.
    touch(&root.join("a/notes.txt"), b"hello");
    touch(&root.join("b/x.png.bak"), b"junk");
    touch(&root.join("README"), b"not a class");

    let ds = ImageFolder::new(root).unwrap();
    assert_eq!(ds.classes(), ["B", "a", "b"]);
    let got: Vec<(String, usize)> = ds
        .samples()
        .iter()
        .map(|(p, l)| (rel(root, p), *l))
        .collect();
    let want = [
        ("B/z.JPG", 0),
        ("a/x.jpeg", 1),
        ("a/s/r.png", 1),
        ("a/s-t/p.png", 1),
        ("a/s/deep/q.png", 1),
        ("b/10.png", 2),
        ("b/2.png", 2),
    ];
    let want: Vec<(String, usize)> = want.iter().map(|(p, l)| (p.to_string(), *l)).collect();
    assert_eq!(got, want);
    assert_eq!(ds.len(), 7);
    assert_eq!(ds.num_classes(), 3);
    assert_eq!(ds.skipped_non_images(), 2);
    assert_eq!(ds.sample(5), (root.join("b/10.png"), 2));
}

#[test]
fn missing_empty_and_file_roots_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = ImageFolder::new(&missing).unwrap_err();
    assert!(matches!(err, DataError::NotFound(ref p) if *p == missing));
    assert!(err.to_string().contains("nope"), "{err}");

    let file = dir.path().join("file.txt");
    touch(&file, b"x");
    assert!(matches!(
        ImageFolder::new(&file),
        Err(DataError::NotADirectory(_))
    ));

    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let err = ImageFolder::new(&empty).unwrap_err();
    assert!(matches!(err, DataError::EmptyFolder(_)));
    assert!(err.to_string().contains("empty data folder"), "{err}");

    // Images directly in the root are not classes.
    write_png(&empty.join("loose.png"), 0);
    assert!(matches!(
        ImageFolder::new(&empty),
        Err(DataError::EmptyFolder(_))
    ));

    // A class folder without images would shift later labels: error.
    let root = dir.path().join("classes");
    write_png(&root.join("cat/1.png"), 0);
    touch(&root.join("dog/readme.md"), b"no images");
    let err = ImageFolder::new(&root).unwrap_err();
    assert!(matches!(err, DataError::EmptyClass(ref p) if p.ends_with("dog")));
}

#[test]
fn loader_skips_corrupt_files_and_keeps_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for i in 0..5 {
        write_png(&root.join(format!("c0/{i}.png")), i);
    }
    touch(
        &root.join("c0/2bad.jpg"),
        b"\xff\xd8\xff\xe0 this is not a jpeg",
    );
    touch(&root.join("c1/empty.jpg"), b"");
    write_png(&root.join("c1/ok.png"), 9);

    let ds = ImageFolder::new(root).unwrap();
    assert_eq!(ds.len(), 8);
    let mut loader = Loader::new(ds.clone(), tiny(), 3, None).unwrap();
    assert_eq!(loader.num_batches(), 3);
    let batches: Vec<_> = loader.by_ref().collect();
    assert_eq!(loader.skipped(), 2);
    let names: Vec<String> = loader
        .skipped_files()
        .iter()
        .map(|(p, _)| rel(root, p))
        .collect();
    assert_eq!(names, ["c0/2bad.jpg", "c1/empty.jpg"]);

    // Order of the dataset, minus the two bad files; batches are chunks of
    // the dataset, so a chunk with a bad file comes out short.
    let sizes: Vec<usize> = batches.iter().map(|b| b.len()).collect();
    assert_eq!(sizes, [3, 2, 1]);
    let paths: Vec<String> = batches
        .iter()
        .flat_map(|b| b.paths.iter().map(|p| rel(root, p)))
        .collect();
    assert_eq!(
        paths,
        [
            "c0/0.png",
            "c0/1.png",
            "c0/2.png",
            "c0/3.png",
            "c0/4.png",
            "c1/ok.png"
        ]
    );
    let labels: Vec<usize> = batches.iter().flat_map(|b| b.labels.clone()).collect();
    assert_eq!(labels, [0, 0, 0, 0, 0, 1]);
    let indices: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    // Data set order: 0.png 1.png 2.png 2bad.jpg 3.png 4.png | empty.jpg ok.png
    // ('.' sorts before 'b').
    assert_eq!(indices, [0, 1, 2, 4, 5, 7]);
    for b in &batches {
        assert_eq!(b.shape, [b.len(), 3, 8, 8]);
        assert_eq!(b.images.len(), b.len() * 3 * 64);
    }

    // The loader's tensor equals the single-image transform of the decoded file.
    let img = image::open(root.join("c0/3.png")).unwrap();
    assert_eq!(
        batches[1].image(0),
        &eval_transform_image(&img, &tiny())[..]
    );
}

#[test]
fn loader_rejects_zero_batch_and_limit_and_honours_limit() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..5 {
        write_png(&dir.path().join(format!("k/{i}.png")), i);
    }
    let ds = ImageFolder::new(dir.path()).unwrap();
    let err = Loader::new(ds.clone(), tiny(), 0, None).unwrap_err();
    assert!(matches!(err, DataError::InvalidArgument(_)), "{err}");
    let err = Loader::new(ds.clone(), tiny(), 2, Some(0)).unwrap_err();
    assert!(matches!(err, DataError::InvalidArgument(_)), "{err}");
    let bad_t = EvalTransform {
        channels: 2,
        ..tiny()
    };
    assert!(Loader::new(ds.clone(), bad_t, 2, None).is_err());

    let loader = Loader::new(ds.clone(), tiny(), 2, Some(3)).unwrap();
    assert_eq!(loader.num_samples(), 3);
    let sizes: Vec<usize> = loader.map(|b| b.len()).collect();
    assert_eq!(sizes, [2, 1]);
    // A limit beyond the data set is just the data set.
    let loader = Loader::new(ds, tiny(), 4, Some(100)).unwrap();
    assert_eq!(loader.map(|b| b.len()).sum::<usize>(), 5);
}

#[test]
fn limit_and_seeded_subset() {
    let dir = tempfile::tempdir().unwrap();
    for c in 0..4 {
        for i in 0..10 {
            write_png(&dir.path().join(format!("c{c}/{i}.png")), i);
        }
    }
    let ds = ImageFolder::new(dir.path()).unwrap();
    assert_eq!(ds.clone().limit(7).samples(), &ds.samples()[..7]);

    let a = ds.clone().subset(12, 3);
    let b = ds.clone().subset(12, 3);
    let c = ds.clone().subset(12, 4);
    assert_eq!(a.len(), 12);
    assert_eq!(a.samples(), b.samples());
    assert_ne!(a.samples(), c.samples());
    // Kept in data set order.
    let pos: Vec<usize> = a
        .samples()
        .iter()
        .map(|s| ds.samples().iter().position(|t| t == s).unwrap())
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(ds.clone().subset(100, 0).len(), 40);
    assert_eq!(a.classes(), ds.classes());
}

#[test]
fn flat_layout_with_labels_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("val");
    write_png(&root.join("img 1.png"), 1);
    write_png(&root.join("sub/img2.JPEG"), 2);
    write_png(&root.join("img3.png"), 3);
    let labels = dir.path().join("labels.txt");
    fs::write(
        &labels,
        "# path label\n\nimg3.png 7\nimg 1.png,2\n  sub/img2.JPEG\t0  \n",
    )
    .unwrap();
    let ds = ImageFolder::flat(&root, &labels).unwrap();
    let got: Vec<(String, usize)> = ds
        .samples()
        .iter()
        .map(|(p, l)| (rel(&root, p), *l))
        .collect();
    assert_eq!(
        got,
        [
            ("img3.png".to_string(), 7),
            ("img 1.png".to_string(), 2),
            ("sub/img2.JPEG".to_string(), 0)
        ]
    );
    assert_eq!(ds.num_classes(), 8);
    let batches: Vec<_> = Loader::new(ds, tiny(), 8, None).unwrap().collect();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].labels, [7, 2, 0]);

    // A missing file names the file and the line.
    fs::write(&labels, "img3.png 7\n\n# ok\nghost.png 1\n").unwrap();
    let err = ImageFolder::flat(&root, &labels).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::Labels { line: 4, .. }), "{msg}");
    assert!(
        msg.contains("ghost.png") && msg.contains("labels.txt:4"),
        "{msg}"
    );

    // A bad label is an error too.
    fs::write(&labels, "img3.png seven\n").unwrap();
    assert!(matches!(
        ImageFolder::flat(&root, &labels),
        Err(DataError::Labels { line: 1, .. })
    ));
    // A missing labels file.
    assert!(matches!(
        ImageFolder::flat(&root, dir.path().join("none.txt")),
        Err(DataError::NotFound(_))
    ));
    // Only comments: nothing to evaluate.
    fs::write(&labels, "# nothing\n").unwrap();
    assert!(matches!(
        ImageFolder::flat(&root, &labels),
        Err(DataError::EmptyFolder(_))
    ));
}

#[test]
fn gray_and_alpha_files_become_rgb_like_pillow() {
    let dir = tempfile::tempdir().unwrap();
    let gray: PathBuf = dir.path().join("g/gray.png");
    let rgba: PathBuf = dir.path().join("r/rgba.png");
    fs::create_dir_all(gray.parent().unwrap()).unwrap();
    fs::create_dir_all(rgba.parent().unwrap()).unwrap();
    GrayImage::from_fn(8, 8, |x, y| Luma([(x * 30 + y) as u8]))
        .save(&gray)
        .unwrap();
    RgbaImage::from_pixel(8, 8, Rgba([10, 20, 30, 0]))
        .save(&rgba)
        .unwrap();
    let t = EvalTransform {
        crop_pct: 1.0,
        ..tiny()
    };
    let ds = ImageFolder::new(dir.path()).unwrap();
    let batch = Loader::new(ds, t, 2, None).unwrap().next().unwrap();
    let g = batch.image(0);
    assert_eq!(g[..64], g[64..128]);
    assert_eq!(g[..64], g[128..]);
    let r = batch.image(1);
    // Alpha 0 is dropped, not composited onto black or white.
    assert_eq!(r[0], (10.0f32 / 255.0 - 0.5) / 0.5);
    assert_eq!(r[64], (20.0f32 / 255.0 - 0.5) / 0.5);
    assert_eq!(r[128], (30.0f32 / 255.0 - 0.5) / 0.5);

    // One-channel transform: Pillow's `convert('L')` of RGB (ITU-R 601-2).
    let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(8, 8, Rgb([255, 0, 0])));
    let t1 = EvalTransform {
        channels: 1,
        crop_pct: 1.0,
        mean: [0.0; 3],
        std: [1.0; 3],
        ..tiny()
    };
    let out = eval_transform_image(&img, &t1);
    assert_eq!(out.len(), 64);
    assert!(out.iter().all(|&v| v == 76.0 / 255.0));
}
