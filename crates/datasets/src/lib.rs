//! Evaluation data for mixq: image folders, the embedded digits set, IDX data sets and
//! timm-exact preprocessing.
//!
//! Measuring what quantisation costs means comparing a quantised model with
//! its float original on the *same* inputs the float model was validated on.
//! This crate therefore reproduces timm's evaluation pipeline (torchvision
//! resize and centre crop with Pillow's bicubic filter, bit for bit) and
//! torchvision's `ImageFolder` ordering, and hands out batches as plain `f32`
//! buffers so that it stays independent of any tensor library.
//!
//! Two sources of batches:
//!
//! - [`ImageFolder`] + [`Loader`]: ImageNet-style folders (or a flat folder
//!   with a labels file), decoded and preprocessed in parallel;
//! - [`LabelledImages`]: labelled images in memory — the 8x8 digits set
//!   embedded in the crate ([`Digits`]), and MNIST-style IDX files
//!   ([`IdxDataset`], raw or gzip) such as Fashion-MNIST and MNIST, opened by
//!   name with their fixed, seeded, stratified splits ([`KnownDataset`]).
//!
//! Both yield [`Batch`]es laid out `[B, C, H, W]`.
//!
//! # Examples
//!
//! The digits set needs no files:
//!
//! ```rust
//! use mixq_datasets::Digits;
//!
//! let (train, test) = Digits::split(42);
//! assert_eq!((train.len(), test.len()), (1437, 360));
//! for batch in test.batches(64, 0.5, 0.5)? {
//!     assert_eq!(batch.shape[1..], [1, 8, 8]);
//!     assert_eq!(batch.images.len(), batch.len() * 64);
//! }
//! # Ok::<(), mixq_datasets::DataError>(())
//! ```
//!
//! Fashion-MNIST, from Debian's `dataset-fashion-mnist` or `$MIXQ_DATA/fashion-mnist`:
//!
//! ```rust,no_run
//! use mixq_datasets::KnownDataset;
//!
//! let data = KnownDataset::FashionMnist.open()?;
//! assert_eq!((data.train.len(), data.test.len()), (55_000, 10_000));
//! let calib = data.calibration_pool().sample(32, 0, 0); // from the 5,000 validation images
//! assert_eq!(calib.image_shape, [1, 28, 28]);
//! # Ok::<(), mixq_datasets::DataError>(())
//! ```
//!
//! An ImageNet validation folder, preprocessed like timm's
//! `vit_base_patch16_224.augreg_in21k_ft_in1k` (crop 0.9, mean/std 0.5):
//!
//! ```rust,no_run
//! use mixq_datasets::{EvalTransform, ImageFolder, Loader};
//!
//! let folder = ImageFolder::new("/data/imagenet/val")?.subset(5000, 0);
//! let transform = EvalTransform {
//!     img_size: 224,
//!     crop_pct: 0.9,
//!     mean: [0.5; 3],
//!     std: [0.5; 3],
//!     channels: 3,
//! };
//! let mut loader = Loader::new(folder, transform, 64, None)?;
//! for batch in &mut loader {
//!     let [b, c, h, w] = batch.shape;
//!     assert_eq!(batch.images.len(), b * c * h * w);
//!     // feed batch.images / batch.labels to the model
//! }
//! println!("skipped {} unreadable files", loader.skipped());
//! # Ok::<(), mixq_datasets::DataError>(())
//! ```

#![warn(missing_docs)]

mod batch;
pub mod coco;
pub mod cocoeval;
pub mod digits;
mod error;
pub mod idx;
pub mod image_folder;
pub mod known;
mod labelled;
pub mod pose_dataset;
pub mod pose_source;
pub mod pose_transform;
pub mod preprocess;
pub mod resolve;
pub mod synthetic_pose;

pub use batch::Batch;
pub use coco::{
    CocoAnnotation, CocoCategory, CocoImage, CocoKeypoints, KeypointResult, PersonDetection,
    load_detections, load_keypoint_results, save_keypoint_results,
};
pub use cocoeval::{OksParams, OksStats, evaluate_keypoints, evaluate_keypoints_with};
pub use digits::Digits;
pub use error::DataError;
pub use idx::{IdxArray, IdxDataset, read_idx, read_idx_pair};
pub use image_folder::{ImageFolder, Loader};
pub use known::{ClassificationData, KnownDataset};
pub use labelled::{LabelledBatches, LabelledImages};
pub use pose_dataset::{
    PoseAugment, PoseBatch, PoseItem, PoseMeta, TopDownConfig, TopDownDataset, keypoint_results,
};
pub use pose_source::{PoseData, PoseDataConfig, topdown_dataset};
pub use preprocess::{EvalTransform, PassOrder, eval_transform_image, load_image};
pub use resolve::{
    DataSource, DataSpec, EvalData, calibration_source, classification_data, data_error,
    is_in_memory, open_data, sample_batch,
};
pub use synthetic_pose::SyntheticPoses;
