//! IDX files (the format of MNIST and Fashion-MNIST), raw or gzip-compressed, and the
//! four-file data sets made of them.
//!
//! An IDX file is a 4-byte magic number (`0x00 0x00`, the element type, the number of
//! dimensions), one big-endian `u32` per dimension, then the elements. Images are `u8` with 3
//! dimensions (count, rows, columns), labels `u8` with 1. Every declared size is checked
//! against the bytes actually present before anything is allocated, so a corrupt or hostile
//! header is an error naming the file, never a huge allocation.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::{DataError, LabelledImages};

/// Element type code of unsigned bytes, the only one MNIST-style files use.
const TYPE_U8: u8 = 0x08;

/// The gzip magic bytes; a file starting with them is decompressed on the fly.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// One IDX array of bytes with its dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Size of each dimension, outermost first.
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

fn format_error(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads exactly `buf.len()` bytes, naming the file and what was being read if it ends early.
fn read_exact(r: &mut impl Read, buf: &mut [u8], path: &Path, what: &str) -> Result<(), DataError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            format_error(path, format!("truncated: the file ends inside its {what}"))
        }
        _ => DataError::io(path, e),
    })
}

/// Reads an IDX file of bytes with `expect_dims` dimensions (raw or gzip).
pub fn read_idx(path: impl AsRef<Path>, expect_dims: usize) -> Result<IdxArray, DataError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::NotFound(path.to_path_buf()),
        _ => DataError::io(path, e),
    })?;
    let file_len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    let mut file = BufReader::new(file);
    let mut head = [0u8; 4];
    read_exact(&mut file, &mut head, path, "magic number")?;
    // Chain the 4 bytes back in front of the rest, then decompress if they were gzip's.
    let rest = std::io::Cursor::new(head).chain(file);
    let gzip = head[..2] == GZIP_MAGIC;
    let mut reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(rest))
    } else {
        Box::new(rest)
    };
    let mut magic = [0u8; 4];
    read_exact(&mut reader, &mut magic, path, "magic number")?;
    if magic[0] != 0 || magic[1] != 0 || magic[2] != TYPE_U8 || magic[3] as usize != expect_dims {
        return Err(format_error(
            path,
            format!(
                "wrong magic number 0x{:08x}: expected 0x{:08x} (an IDX file of unsigned bytes \
                 with {expect_dims} dimension{})",
                u32::from_be_bytes(magic),
                u32::from_be_bytes([0, 0, TYPE_U8, expect_dims as u8]),
                if expect_dims == 1 { "" } else { "s" }
            ),
        ));
    }
    let mut dims = Vec::with_capacity(expect_dims);
    for _ in 0..expect_dims {
        let mut d = [0u8; 4];
        read_exact(&mut reader, &mut d, path, "header")?;
        dims.push(u32::from_be_bytes(d) as usize);
    }
    let header = 4 + 4 * expect_dims as u64;
    let declared = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| format_error(path, format!("declared dimensions {dims:?} overflow")))?;
    // A raw file must hold exactly the declared bytes. A gzip stream cannot be sized up front,
    // but deflate compresses at most ~1032:1, which bounds what its length can honestly hold.
    let bound = if gzip {
        file_len.saturating_mul(1032)
    } else {
        file_len.saturating_sub(header)
    };
    if declared > bound {
        return Err(format_error(
            path,
            format!(
                "truncated: the header declares {dims:?} = {declared} bytes of data, but the \
                 file ({file_len} bytes) cannot hold them"
            ),
        ));
    }
    let mut data = Vec::with_capacity(declared as usize);
    reader
        .by_ref()
        .take(declared)
        .read_to_end(&mut data)
        .map_err(|e| {
            if gzip {
                format_error(path, format!("corrupt gzip stream: {e}"))
            } else {
                DataError::io(path, e)
            }
        })?;
    if (data.len() as u64) < declared {
        return Err(format_error(
            path,
            format!(
                "truncated: the header declares {dims:?} = {declared} bytes of data, the file \
                 holds {}",
                data.len()
            ),
        ));
    }
    let mut extra = [0u8; 1];
    if !gzip && reader.read(&mut extra).unwrap_or(0) > 0 {
        return Err(format_error(
            path,
            format!("{declared} bytes of data declared, but more follow"),
        ));
    }
    Ok(IdxArray { dims, data })
}

/// The file names of the four files of an MNIST-style data set, without `.gz`.
pub const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Images and labels read from an IDX pair, checked against each other.
pub fn read_idx_pair(
    images: impl AsRef<Path>,
    labels: impl AsRef<Path>,
    num_classes: usize,
) -> Result<LabelledImages, DataError> {
    let (images, labels) = (images.as_ref(), labels.as_ref());
    let img = read_idx(images, 3)?;
    let lab = read_idx(labels, 1)?;
    let [n, h, w] = [img.dims[0], img.dims[1], img.dims[2]];
    if n != lab.dims[0] {
        return Err(format_error(
            labels,
            format!(
                "holds {} labels, but {} holds {n} images",
                lab.dims[0],
                images.display()
            ),
        ));
    }
    if n == 0 || h == 0 || w == 0 {
        return Err(format_error(
            images,
            format!("holds no image ({n} of {h}x{w})"),
        ));
    }
    if let Some((i, &l)) = lab
        .data
        .iter()
        .enumerate()
        .find(|(_, l)| **l as usize >= num_classes)
    {
        return Err(format_error(
            labels,
            format!(
                "label {l} of image {i} is out of range (the data set has {num_classes} classes)"
            ),
        ));
    }
    let pixels = img.data.iter().map(|&v| f32::from(v)).collect();
    let labels = lab.data.iter().map(|&l| usize::from(l)).collect();
    LabelledImages::new(pixels, [1, h, w], 255.0, labels, num_classes)
        .map_err(|e| format_error(images, e.to_string()))
}

/// An MNIST-style data set: the official train and test sets.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxDataset {
    /// The folder the four files were read from.
    pub dir: PathBuf,
    /// The training set (60,000 images for MNIST and Fashion-MNIST).
    pub train: LabelledImages,
    /// The test set (10,000 images), for final figures only.
    pub test: LabelledImages,
}

/// The path of `name` (raw, or with `.gz`) in `dir`, if either exists.
fn idx_file(dir: &Path, name: &str) -> Option<PathBuf> {
    [name.to_string(), format!("{name}.gz")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

impl IdxDataset {
    /// Whether `dir` holds all four files (raw or gzip).
    pub fn is_idx_dir(dir: &Path) -> bool {
        IDX_FILES.iter().all(|n| idx_file(dir, n).is_some())
    }

    /// Reads the four files from `dir`; a missing one is an error naming it.
    pub fn open(dir: impl AsRef<Path>, num_classes: usize) -> Result<Self, DataError> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(DataError::NotFound(dir.to_path_buf()));
        }
        let mut files = Vec::with_capacity(4);
        for name in IDX_FILES {
            files.push(idx_file(dir, name).ok_or_else(|| {
                format_error(
                    dir,
                    format!(
                        "{name} (or {name}.gz) is missing; an IDX data set needs {IDX_FILES:?}"
                    ),
                )
            })?);
        }
        Ok(IdxDataset {
            dir: dir.to_path_buf(),
            train: read_idx_pair(&files[0], &files[1], num_classes)?,
            test: read_idx_pair(&files[2], &files[3], num_classes)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, TYPE_U8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn reads_raw_and_gzip_alike() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = idx_bytes(&[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        std::fs::write(dir.path().join("a"), &bytes).unwrap();
        std::fs::write(dir.path().join("a.gz"), gzip(&bytes)).unwrap();
        let raw = read_idx(dir.path().join("a"), 3).unwrap();
        assert_eq!(raw.dims, [2, 2, 3]);
        assert_eq!(raw.data[11], 12);
        assert_eq!(read_idx(dir.path().join("a.gz"), 3).unwrap(), raw);
    }

    #[test]
    fn huge_declared_sizes_fail_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("huge");
        std::fs::write(&p, idx_bytes(&[u32::MAX, u32::MAX, u32::MAX], &[0; 10])).unwrap();
        let e = read_idx(&p, 3).unwrap_err().to_string();
        assert!(
            e.contains("cannot hold them") || e.contains("overflow"),
            "{e}"
        );
        std::fs::write(&p, gzip(&idx_bytes(&[60000, 28, 28], &[0; 10]))).unwrap();
        let e = read_idx(&p, 3).unwrap_err().to_string();
        assert!(e.contains("cannot hold them"), "{e}");
    }

    /// A folder with the four files of a tiny data set: `n` 2x2 train and test images.
    fn write_set(dir: &Path, n: u32, labels: &[u8]) {
        for (images, labels_name) in [(IDX_FILES[0], IDX_FILES[1]), (IDX_FILES[2], IDX_FILES[3])] {
            let pixels: Vec<u8> = (0..n * 4).map(|v| v as u8).collect();
            std::fs::write(dir.join(images), idx_bytes(&[n, 2, 2], &pixels)).unwrap();
            std::fs::write(dir.join(labels_name), {
                let mut v = vec![0, 0, TYPE_U8, 1];
                v.extend_from_slice(&(labels.len() as u32).to_be_bytes());
                v.extend_from_slice(labels);
                v
            })
            .unwrap();
        }
    }

    #[test]
    fn wrong_magic_names_the_file_and_both_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("labels");
        std::fs::write(&p, [0, 0, 8, 3, 0, 0, 0, 0]).unwrap();
        let e = read_idx(&p, 1).unwrap_err().to_string();
        assert!(
            e.contains("labels") && e.contains("0x00000803") && e.contains("0x00000801"),
            "{e}"
        );
        std::fs::write(&p, b"PK\x03\x04 not idx").unwrap();
        assert!(
            read_idx(&p, 1)
                .unwrap_err()
                .to_string()
                .contains("wrong magic")
        );
    }

    #[test]
    fn truncated_files_are_errors_raw_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let full = idx_bytes(&[3, 2, 2], &[7; 12]);
        std::fs::write(&p, &full[..full.len() - 1]).unwrap();
        let e = read_idx(&p, 3).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("cannot hold"), "{e}");
        std::fs::write(&p, gzip(&full[..full.len() - 1])).unwrap();
        let e = read_idx(&p, 3).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("holds 11"), "{e}");
        std::fs::write(&p, &full[..6]).unwrap();
        let e = read_idx(&p, 3).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("header"), "{e}");
        let mut long = full.clone();
        long.push(0);
        std::fs::write(&p, long).unwrap();
        assert!(
            read_idx(&p, 3)
                .unwrap_err()
                .to_string()
                .contains("more follow")
        );
    }

    #[test]
    fn count_mismatch_and_bad_labels_name_the_label_file() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), 3, &[0, 1]);
        let e = IdxDataset::open(dir.path(), 10).unwrap_err().to_string();
        assert!(
            e.contains("train-labels-idx1-ubyte")
                && e.contains("holds 2 labels")
                && e.contains("3 images"),
            "{e}"
        );
        write_set(dir.path(), 3, &[0, 10, 1]);
        let e = IdxDataset::open(dir.path(), 10).unwrap_err().to_string();
        assert!(e.contains("label 10 of image 1 is out of range"), "{e}");
        write_set(dir.path(), 3, &[0, 9, 1]);
        let set = IdxDataset::open(dir.path(), 10).unwrap();
        assert_eq!(set.train.labels, [0, 9, 1]);
        assert_eq!(set.test.image(2), [8.0, 9.0, 10.0, 11.0]);
        assert_eq!(set.train.max_value, 255.0);
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), 2, &[0, 1]);
        std::fs::remove_file(dir.path().join(IDX_FILES[2])).unwrap();
        assert!(!IdxDataset::is_idx_dir(dir.path()));
        let e = IdxDataset::open(dir.path(), 10).unwrap_err().to_string();
        assert!(
            e.contains("t10k-images-idx3-ubyte (or t10k-images-idx3-ubyte.gz) is missing"),
            "{e}"
        );
    }

    /// The real Fashion-MNIST files of Debian's `dataset-fashion-mnist` (CI installs the
    /// package and sets `MIXQ_REQUIRE_DATA=1`; elsewhere the test says SKIPPED without them).
    #[test]
    fn debian_fashion_mnist_has_the_published_sizes_and_balance() {
        let dir = Path::new(crate::known::DEBIAN_FASHION_MNIST);
        if !IdxDataset::is_idx_dir(dir) {
            assert!(
                std::env::var_os("MIXQ_REQUIRE_DATA").is_none(),
                "MIXQ_REQUIRE_DATA is set but {} is missing: apt-get install dataset-fashion-mnist",
                dir.display()
            );
            eprintln!("SKIPPED: {} is not installed", dir.display());
            return;
        }
        let set = IdxDataset::open(dir, 10).unwrap();
        assert_eq!((set.train.len(), set.test.len()), (60_000, 10_000));
        assert_eq!(set.train.image_shape, [1, 28, 28]);
        assert_eq!(set.train.class_counts(), vec![6_000; 10]);
        assert_eq!(set.test.class_counts(), vec![1_000; 10]);
        // The first training image is an ankle boot (class 9) and the first test image too,
        // as in Zalando's published files.
        assert_eq!((set.train.labels[0], set.test.labels[0]), (9, 9));
        let (train, val) = set.train.stratified_split(5_000, 0);
        assert_eq!((train.len(), val.len()), (55_000, 5_000));
        assert_eq!(val.class_counts(), vec![500; 10]);
    }
}
