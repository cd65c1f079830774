//! COCO person-keypoint files: ground truth, person detections and keypoint
//! results.
//!
//! The files are walked as untyped JSON rather than derived with serde so that
//! a bad file gets one error naming the file *and* the offending key
//! (`annotations[3] (id 17).keypoints: expected 51 numbers, found 50`), which
//! is what a user needs to fix a hand-edited or converted annotation file.
//!
//! Only the fields the pose pipeline and pycocotools' keypoint evaluation read
//! are kept; segmentations are skipped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::DataError;

/// Number of COCO person keypoints.
pub const NUM_KEYPOINTS: usize = 17;

/// COCO's keypoint names, in annotation order.
pub const COCO_KEYPOINT_NAMES: [&str; NUM_KEYPOINTS] = [
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
];

/// COCO's person skeleton, 1-based keypoint indices as in the annotation file.
pub const COCO_SKELETON: [[usize; 2]; 19] = [
    [16, 14],
    [14, 12],
    [17, 15],
    [15, 13],
    [12, 13],
    [6, 12],
    [7, 13],
    [6, 7],
    [6, 8],
    [7, 9],
    [8, 10],
    [9, 11],
    [2, 3],
    [1, 2],
    [1, 3],
    [2, 4],
    [3, 5],
    [4, 6],
    [5, 7],
];

/// Left/right keypoint pairs (0-based) swapped by a horizontal flip.
pub const COCO_FLIP_PAIRS: [(usize, usize); 8] = [
    (1, 2),
    (3, 4),
    (5, 6),
    (7, 8),
    (9, 10),
    (11, 12),
    (13, 14),
    (15, 16),
];

/// pycocotools' per-keypoint OKS sigmas (`kpt_oks_sigmas`).
pub const COCO_SIGMAS: [f64; NUM_KEYPOINTS] = [
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
    0.087, 0.087, 0.089, 0.089,
];

/// One entry of `images`.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoImage {
    /// Image id, referenced by annotations and results.
    pub id: i64,
    /// File name relative to the image folder.
    pub file_name: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// One person annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoAnnotation {
    /// Annotation id (pycocotools treats id 0 as "unmatched"; see [`crate::cocoeval`]).
    pub id: i64,
    /// The image it belongs to.
    pub image_id: i64,
    /// Category (1 = person in COCO).
    pub category_id: i64,
    /// `[x, y, v] * 17`; `v` = 0 not labelled, 1 labelled but occluded, 2 visible.
    pub keypoints: Vec<f64>,
    /// `[x, y, w, h]` in pixels.
    pub bbox: [f64; 4],
    /// Segmentation area; OKS normalises distances by it.
    pub area: f64,
    /// Crowd region (never a training sample, matched many times in evaluation).
    pub iscrowd: bool,
    /// Number of labelled keypoints as written in the file (evaluation reads
    /// this field, not a count of `v > 0`).
    pub num_keypoints: usize,
}

impl CocoAnnotation {
    /// Keypoint `k` as `(x, y, v)`.
    ///
    /// # Panics
    ///
    /// If `k >= keypoints.len() / 3` (17 for a loaded file).
    pub fn keypoint(&self, k: usize) -> (f64, f64, f64) {
        (
            self.keypoints[3 * k],
            self.keypoints[3 * k + 1],
            self.keypoints[3 * k + 2],
        )
    }
}

/// One entry of `categories`.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoCategory {
    /// Category id.
    pub id: i64,
    /// Name (`person`).
    pub name: String,
    /// Keypoint names (empty if the file gives none).
    pub keypoints: Vec<String>,
    /// Skeleton, 1-based keypoint pairs (empty if the file gives none).
    pub skeleton: Vec<[usize; 2]>,
}

/// A COCO person-keypoints ground-truth file.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoKeypoints {
    /// The file it was read from (for error messages); empty when built in memory.
    pub source: PathBuf,
    /// `images`, in file order.
    pub images: Vec<CocoImage>,
    /// `annotations`, in file order.
    pub annotations: Vec<CocoAnnotation>,
    /// `categories`, in file order.
    pub categories: Vec<CocoCategory>,
}

/// A person box from a detector (`[{image_id, category_id, bbox, score}]`),
/// the input of top-down evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonDetection {
    /// The image it was detected in.
    pub image_id: i64,
    /// Category (1 = person).
    pub category_id: i64,
    /// `[x, y, w, h]`.
    pub bbox: [f64; 4],
    /// Detector confidence.
    pub score: f64,
}

/// A keypoint prediction in COCO results format, the input of [`crate::cocoeval`].
#[derive(Debug, Clone, PartialEq)]
pub struct KeypointResult {
    /// The image it belongs to.
    pub image_id: i64,
    /// Category (1 = person).
    pub category_id: i64,
    /// `[x, y, score] * 17`; only x and y enter OKS.
    pub keypoints: Vec<f64>,
    /// Instance score used to rank predictions.
    pub score: f64,
    /// Optional box. pycocotools takes a result's area from the box when the
    /// *first* result has a non-empty `bbox`, and from the keypoints' extent
    /// otherwise; [`crate::cocoeval`] follows the same rule.
    pub bbox: Option<[f64; 4]>,
}

/// Builds the crate's error for a malformed file: `cannot read FILE: KEY: problem`.
pub(crate) fn bad_file(file: &Path, key: &str, message: impl std::fmt::Display) -> DataError {
    let text = if key.is_empty() {
        message.to_string()
    } else {
        format!("{key}: {message}")
    };
    DataError::Io {
        path: file.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, text),
    }
}

/// Reads and parses a JSON file.
fn read_json(path: &Path) -> Result<Value, DataError> {
    if !path.is_file() {
        return Err(DataError::NotFound(path.to_path_buf()));
    }
    let text = fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| bad_file(path, "", format!("invalid JSON: {e}")))
}

/// Typed access to untyped JSON that remembers where it is, for errors.
struct Walker<'a> {
    file: &'a Path,
}

impl Walker<'_> {
    fn err(&self, key: &str, message: impl std::fmt::Display) -> DataError {
        bad_file(self.file, key, message)
    }

    fn object<'v>(&self, v: &'v Value, key: &str) -> Result<&'v Map<String, Value>, DataError> {
        v.as_object()
            .ok_or_else(|| self.err(key, format!("expected an object, found {}", kind(v))))
    }

    fn array<'v>(&self, v: &'v Value, key: &str) -> Result<&'v Vec<Value>, DataError> {
        v.as_array()
            .ok_or_else(|| self.err(key, format!("expected an array, found {}", kind(v))))
    }

    fn field<'v>(
        &self,
        obj: &'v Map<String, Value>,
        name: &str,
        at: &str,
    ) -> Result<&'v Value, DataError> {
        obj.get(name)
            .ok_or_else(|| self.err(at, format!("missing key `{name}`")))
    }

    fn f64(&self, v: &Value, key: &str) -> Result<f64, DataError> {
        v.as_f64()
            .ok_or_else(|| self.err(key, format!("expected a number, found {}", kind(v))))
    }

    fn i64(&self, v: &Value, key: &str) -> Result<i64, DataError> {
        if let Some(i) = v.as_i64() {
            return Ok(i);
        }
        // Integral floats (`3.0`) are accepted, as Python would.
        match v.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
            _ => Err(self.err(key, format!("expected an integer, found {}", kind(v)))),
        }
    }

    fn nonneg(&self, v: &Value, key: &str) -> Result<u64, DataError> {
        let i = self.i64(v, key)?;
        u64::try_from(i)
            .map_err(|_| self.err(key, format!("expected a non-negative integer, found {i}")))
    }

    fn str<'v>(&self, v: &'v Value, key: &str) -> Result<&'v str, DataError> {
        v.as_str()
            .ok_or_else(|| self.err(key, format!("expected a string, found {}", kind(v))))
    }

    fn numbers(&self, v: &Value, key: &str) -> Result<Vec<f64>, DataError> {
        let arr = self.array(v, key)?;
        arr.iter()
            .enumerate()
            .map(|(i, x)| self.f64(x, &format!("{key}[{i}]")))
            .collect()
    }

    fn bbox(&self, v: &Value, key: &str) -> Result<[f64; 4], DataError> {
        let b = self.numbers(v, key)?;
        <[f64; 4]>::try_from(b.as_slice()).map_err(|_| {
            self.err(
                key,
                format!("expected [x, y, w, h], found {} numbers", b.len()),
            )
        })
    }

    fn keypoints(&self, v: &Value, key: &str) -> Result<Vec<f64>, DataError> {
        let k = self.numbers(v, key)?;
        if k.len() != 3 * NUM_KEYPOINTS {
            return Err(self.err(
                key,
                format!(
                    "expected {} numbers (17 x [x, y, v]), found {}",
                    3 * NUM_KEYPOINTS,
                    k.len()
                ),
            ));
        }
        Ok(k)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl CocoKeypoints {
    /// Reads a person-keypoints annotation file (`person_keypoints_val2017.json`
    /// or one written by [`crate::SyntheticPoses`]).
    ///
    /// Every annotation must carry `id, image_id, category_id, keypoints` (51
    /// numbers), `bbox, area, iscrowd, num_keypoints`; ids must be unique and
    /// refer to listed images and categories. Image files are not opened here
    /// (evaluation needs none); [`crate::TopDownDataset::from_gt`] and `from_detections` check them.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        let value = read_json(path)?;
        Self::from_value(&value, path)
    }

    /// Parses an already-read JSON document; `source` names it in errors.
    pub fn from_value(value: &Value, source: &Path) -> Result<Self, DataError> {
        let w = Walker { file: source };
        let root = w.object(value, "(top level)")?;

        let mut images = Vec::new();
        let mut image_ids = HashSet::new();
        for (i, v) in w
            .array(w.field(root, "images", "(top level)")?, "images")?
            .iter()
            .enumerate()
        {
            let at = format!("images[{i}]");
            let o = w.object(v, &at)?;
            let id = w.i64(w.field(o, "id", &at)?, &format!("{at}.id"))?;
            let at = format!("images[{i}] (id {id})");
            let file_name = w.str(w.field(o, "file_name", &at)?, &format!("{at}.file_name"))?;
            let width = w.nonneg(w.field(o, "width", &at)?, &format!("{at}.width"))?;
            let height = w.nonneg(w.field(o, "height", &at)?, &format!("{at}.height"))?;
            if !image_ids.insert(id) {
                return Err(w.err(&at, "duplicate image id"));
            }
            let dim = |d: u64, k: &str| {
                u32::try_from(d)
                    .map_err(|_| w.err(&format!("{at}.{k}"), format!("{d} is too large")))
            };
            images.push(CocoImage {
                id,
                file_name: file_name.to_string(),
                width: dim(width, "width")?,
                height: dim(height, "height")?,
            });
        }

        let mut categories = Vec::new();
        for (i, v) in w
            .array(w.field(root, "categories", "(top level)")?, "categories")?
            .iter()
            .enumerate()
        {
            let at = format!("categories[{i}]");
            let o = w.object(v, &at)?;
            let id = w.i64(w.field(o, "id", &at)?, &format!("{at}.id"))?;
            let name = w.str(w.field(o, "name", &at)?, &format!("{at}.name"))?;
            let mut keypoints = Vec::new();
            if let Some(k) = o.get("keypoints") {
                let key = format!("{at}.keypoints");
                for (j, n) in w.array(k, &key)?.iter().enumerate() {
                    keypoints.push(w.str(n, &format!("{key}[{j}]"))?.to_string());
                }
            }
            let mut skeleton = Vec::new();
            if let Some(s) = o.get("skeleton") {
                let key = format!("{at}.skeleton");
                for (j, pair) in w.array(s, &key)?.iter().enumerate() {
                    let pk = format!("{key}[{j}]");
                    let p = w.array(pair, &pk)?;
                    if p.len() != 2 {
                        return Err(w.err(&pk, format!("expected 2 indices, found {}", p.len())));
                    }
                    skeleton.push([
                        w.nonneg(&p[0], &pk)? as usize,
                        w.nonneg(&p[1], &pk)? as usize,
                    ]);
                }
            }
            categories.push(CocoCategory {
                id,
                name: name.to_string(),
                keypoints,
                skeleton,
            });
        }
        let cat_ids: HashSet<i64> = categories.iter().map(|c| c.id).collect();

        let mut annotations = Vec::new();
        let mut ann_ids = HashSet::new();
        for (i, v) in w
            .array(w.field(root, "annotations", "(top level)")?, "annotations")?
            .iter()
            .enumerate()
        {
            let at = format!("annotations[{i}]");
            let o = w.object(v, &at)?;
            let id = w.i64(w.field(o, "id", &at)?, &format!("{at}.id"))?;
            let at = format!("annotations[{i}] (id {id})");
            let key = |k: &str| format!("{at}.{k}");
            let image_id = w.i64(w.field(o, "image_id", &at)?, &key("image_id"))?;
            let category_id = w.i64(w.field(o, "category_id", &at)?, &key("category_id"))?;
            let keypoints = w.keypoints(w.field(o, "keypoints", &at)?, &key("keypoints"))?;
            let bbox = w.bbox(w.field(o, "bbox", &at)?, &key("bbox"))?;
            let area = w.f64(w.field(o, "area", &at)?, &key("area"))?;
            let crowd = w.field(o, "iscrowd", &at)?;
            let iscrowd = match crowd {
                Value::Bool(b) => *b,
                other => w.i64(other, &key("iscrowd"))? != 0,
            };
            let num_keypoints =
                w.nonneg(w.field(o, "num_keypoints", &at)?, &key("num_keypoints"))? as usize;
            if !ann_ids.insert(id) {
                return Err(w.err(&at, "duplicate annotation id"));
            }
            if !image_ids.contains(&image_id) {
                return Err(w.err(&key("image_id"), format!("no image with id {image_id}")));
            }
            if !cat_ids.contains(&category_id) {
                return Err(w.err(
                    &key("category_id"),
                    format!("no category with id {category_id}"),
                ));
            }
            annotations.push(CocoAnnotation {
                id,
                image_id,
                category_id,
                keypoints,
                bbox,
                area,
                iscrowd,
                num_keypoints,
            });
        }
        Ok(Self {
            source: source.to_path_buf(),
            images,
            annotations,
            categories,
        })
    }

    /// The image with this id.
    pub fn image(&self, id: i64) -> Option<&CocoImage> {
        self.images.iter().find(|im| im.id == id)
    }

    /// Image id -> index into `images`.
    pub fn image_index(&self) -> HashMap<i64, usize> {
        self.images
            .iter()
            .enumerate()
            .map(|(i, im)| (im.id, i))
            .collect()
    }

    /// The annotations of each image, in file order.
    pub fn annotations_by_image(&self) -> BTreeMap<i64, Vec<&CocoAnnotation>> {
        let mut map: BTreeMap<i64, Vec<&CocoAnnotation>> = BTreeMap::new();
        for a in &self.annotations {
            map.entry(a.image_id).or_default().push(a);
        }
        map
    }

    /// The document as COCO JSON (segmentations are written empty).
    pub fn to_value(&self) -> Value {
        let images: Vec<Value> = self
            .images
            .iter()
            .map(|im| {
                json!({"id": im.id, "file_name": im.file_name, "width": im.width, "height": im.height})
            })
            .collect();
        let annotations: Vec<Value> = self
            .annotations
            .iter()
            .map(|a| {
                json!({
                    "id": a.id,
                    "image_id": a.image_id,
                    "category_id": a.category_id,
                    "keypoints": a.keypoints.iter().map(|&x| number(x)).collect::<Vec<_>>(),
                    "num_keypoints": a.num_keypoints,
                    "bbox": a.bbox.iter().map(|&x| number(x)).collect::<Vec<_>>(),
                    "area": number(a.area),
                    "iscrowd": u8::from(a.iscrowd),
                    "segmentation": [],
                })
            })
            .collect();
        let categories: Vec<Value> = self
            .categories
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "name": c.name,
                    "supercategory": c.name,
                    "keypoints": c.keypoints,
                    "skeleton": c.skeleton,
                })
            })
            .collect();
        json!({"images": images, "annotations": annotations, "categories": categories})
    }

    /// Writes the document as COCO JSON (atomically: a crash leaves no half file).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), DataError> {
        write_json(path.as_ref(), &self.to_value())
    }

    /// The standard COCO `person` category with its keypoint names and skeleton.
    pub fn person_category() -> CocoCategory {
        CocoCategory {
            id: 1,
            name: "person".into(),
            keypoints: COCO_KEYPOINT_NAMES.iter().map(|s| s.to_string()).collect(),
            skeleton: COCO_SKELETON.to_vec(),
        }
    }
}

/// Integers are written without a fractional part so files stay small and
/// read like COCO's own.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

pub(crate) fn write_json(path: &Path, value: &Value) -> Result<(), DataError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| DataError::io(path, io::Error::other(e.to_string())))?;
    write_atomic(path, &bytes)
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    fs::write(&tmp, bytes).map_err(|e| DataError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        DataError::io(path, e)
    })
}

/// Reads a person-detection file: a non-empty JSON list of
/// `{image_id, category_id, bbox, score}` (e.g. HRNet's
/// `COCO_val2017_detections_AP_H_56_person.json`).
pub fn load_detections(path: impl AsRef<Path>) -> Result<Vec<PersonDetection>, DataError> {
    let path = path.as_ref();
    let value = read_json(path)?;
    let w = Walker { file: path };
    let list = w.array(&value, "(top level)")?;
    if list.is_empty() {
        return Err(w.err("(top level)", "the detection list is empty"));
    }
    let mut dets = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let at = format!("[{i}]");
        let o = w.object(v, &at)?;
        dets.push(PersonDetection {
            image_id: w.i64(w.field(o, "image_id", &at)?, &format!("{at}.image_id"))?,
            category_id: w.i64(
                w.field(o, "category_id", &at)?,
                &format!("{at}.category_id"),
            )?,
            bbox: w.bbox(w.field(o, "bbox", &at)?, &format!("{at}.bbox"))?,
            score: w.f64(w.field(o, "score", &at)?, &format!("{at}.score"))?,
        });
    }
    Ok(dets)
}

/// Reads a keypoint results file: a non-empty JSON list of
/// `{image_id, category_id, keypoints, score}` (optionally `bbox`), the
/// format COCO's evaluation server and pycocotools' `loadRes` accept.
pub fn load_keypoint_results(path: impl AsRef<Path>) -> Result<Vec<KeypointResult>, DataError> {
    let path = path.as_ref();
    let value = read_json(path)?;
    let w = Walker { file: path };
    let list = w.array(&value, "(top level)")?;
    if list.is_empty() {
        return Err(w.err("(top level)", "the results list is empty"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let at = format!("[{i}]");
        let o = w.object(v, &at)?;
        let bbox = match o.get("bbox") {
            None => None,
            Some(Value::Array(a)) if a.is_empty() => None,
            Some(b) => Some(w.bbox(b, &format!("{at}.bbox"))?),
        };
        out.push(KeypointResult {
            image_id: w.i64(w.field(o, "image_id", &at)?, &format!("{at}.image_id"))?,
            category_id: w.i64(
                w.field(o, "category_id", &at)?,
                &format!("{at}.category_id"),
            )?,
            keypoints: w.keypoints(w.field(o, "keypoints", &at)?, &format!("{at}.keypoints"))?,
            score: w.f64(w.field(o, "score", &at)?, &format!("{at}.score"))?,
            bbox,
        });
    }
    Ok(out)
}

/// Writes keypoint results in COCO results format (what `load_keypoint_results`
/// and pycocotools read).
pub fn save_keypoint_results(
    path: impl AsRef<Path>,
    results: &[KeypointResult],
) -> Result<(), DataError> {
    let list: Vec<Value> = results
        .iter()
        .map(|r| {
            let mut o = json!({
                "image_id": r.image_id,
                "category_id": r.category_id,
                "keypoints": r.keypoints,
                "score": r.score,
            });
            if let Some(b) = r.bbox {
                o["bbox"] = json!(b);
            }
            o
        })
        .collect();
    write_json(path.as_ref(), &Value::Array(list))
}
