//! LRP over a sample of images: the per-site contribution scores (the allocator's input) and,
//! image by image, the class explained, its logit, the total pixel relevance and how much of it
//! lies on the object, plus the first few input maps for pictures. `cargo xtask lrp` is this
//! call and its report.

use std::str::FromStr;

use burn::tensor::Device;
use mixq_core::{ContributionScores, Error, Result, SiteId};
use mixq_datasets::Batch;
use mixq_lrp::Preset;
use serde::{Deserialize, Serialize};

use crate::object_shares;
use crate::{ExplainOptions, Model, ModelCard, Target, batch_tensor, contribution_scores_with};

/// Which class each image's relevance starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetRule {
    /// The model's top-1 class.
    #[default]
    Predicted,
    /// The image's label (data sets only, not loose files).
    Label,
    /// The same class for every image.
    Class(usize),
}

impl FromStr for TargetRule {
    type Err = Error;

    /// `predicted`, `label` or a class index.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "predicted" => Ok(Self::Predicted),
            "label" => Ok(Self::Label),
            _ => s.parse().map(Self::Class).map_err(|_| {
                Error::invalid("--target", s, "expected predicted, label or a class index")
            }),
        }
    }
}

/// How [`explain_data`] explains a sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExplainDataConfig {
    /// LRP rules.
    pub preset: Preset,
    /// The class explained.
    pub target: TargetRule,
    /// Read site relevance at each site's input instead of its output.
    pub at_inputs: bool,
    /// Images per forward/backward pass.
    pub batch: usize,
    /// Grayscale data sets: the intensity (0..1) from which a pixel counts as the object (ink).
    pub ink_threshold: f32,
    /// How many images keep their input map (for pictures).
    pub heatmaps: usize,
}

impl Default for ExplainDataConfig {
    fn default() -> Self {
        Self {
            preset: Preset::Attnlrp,
            target: TargetRule::Predicted,
            at_inputs: false,
            batch: 16,
            ink_threshold: 0.5,
            heatmaps: 8,
        }
    }
}

/// One explained image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImageRelevance {
    /// Its file, or `#<index>` in its data set.
    pub source: String,
    /// Its label, where it has one.
    pub label: Option<usize>,
    /// The class explained.
    pub target: usize,
    /// That class's logit.
    pub target_logit: f32,
    /// Relevance summed over the input pixels.
    pub pixel_relevance: f32,
    /// Grayscale data sets only: share of |pixel relevance| on ink pixels...
    pub ink_relevance_share: Option<f64>,
    /// ...and the share of the image those pixels cover.
    pub ink_area_share: Option<f64>,
}

/// One image's input relevance beside its intensities, for a heatmap picture.
#[derive(Clone, Debug, PartialEq)]
pub struct InputMap {
    /// Intensities in 0..1, `[h * w]` (see [`crate::Preprocess::intensities`]).
    pub intensities: Vec<f32>,
    /// Pixel relevance, `[h * w]`.
    pub relevance: Vec<f32>,
    /// The class explained.
    pub target: usize,
    /// The image's label, where it has one.
    pub label: Option<usize>,
}

/// What [`explain_data`] found.
#[derive(Clone, Debug)]
pub struct DataExplanation {
    /// Contribution scores over the sample (meta: preset, images, read_at, model).
    pub scores: ContributionScores,
    /// The sites in forward order.
    pub site_order: Vec<SiteId>,
    /// Every image's figures.
    pub images: Vec<ImageRelevance>,
    /// The first [`ExplainDataConfig::heatmaps`] images' input maps.
    pub maps: Vec<InputMap>,
}

impl DataExplanation {
    /// Mean ink relevance share and mean ink area share (grayscale data sets only).
    pub fn mean_ink_shares(&self) -> (Option<f64>, Option<f64>) {
        let mean = |f: &dyn Fn(&ImageRelevance) -> Option<f64>| {
            let v: Vec<f64> = self.images.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        (
            mean(&|r| r.ink_relevance_share),
            mean(&|r| r.ink_area_share),
        )
    }

    /// The `n` sites with the largest contribution, as a markdown table.
    pub fn top_sites_markdown(&self, n: usize) -> String {
        let mut table = String::from("| rank | site | contribution |\n|---:|---|---:|\n");
        for (i, (site, v)) in self.scores.ranked().iter().take(n).enumerate() {
            table += &format!("| {} | {site} | {:.4} |\n", i + 1, v);
        }
        table
    }
}

/// Explains every image of `data` (already through the model's eval transform) with `config`,
/// `config.batch` images at a time; `progress` gets the images done.
pub fn explain_data(
    model: &Model,
    card: &ModelCard,
    data: &Batch,
    config: &ExplainDataConfig,
    device: &Device,
    mut progress: impl FnMut(usize),
) -> Result<DataExplanation> {
    if config.batch == 0 {
        return Err(Error::invalid("--batch", 0, "must be at least 1"));
    }
    let classes = card.arch.num_classes();
    if let TargetRule::Class(c) = config.target
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
    if config.target == TargetRule::Label && data.labels.is_empty() {
        return Err(Error::invalid(
            "--target",
            "label",
            "image files given with --image have no labels; use predicted or a class index",
        ));
    }
    let pre = &card.preprocess;
    let mut options = ExplainOptions::new(config.preset, &pre.mean, &pre.std);
    options.read_inputs = config.at_inputs;
    let n = data.len();
    let per_image = data.images.len() / n.max(1);
    let channels = card.arch.in_chans();
    let grayscale_data_set = card.dataset.is_some() && channels == 1;
    let mut site_order: Vec<SiteId> = Vec::new();
    let mut images = Vec::new();
    let mut maps = Vec::new();
    let batches = (0..n).step_by(config.batch).map(|start| {
        let chunk = data.select(start..(start + config.batch).min(n));
        let target = match config.target {
            TargetRule::Predicted => Target::Predicted,
            TargetRule::Label => Target::Labels(chunk.labels.clone()),
            TargetRule::Class(c) => Target::Class(c),
        };
        (batch_tensor(&chunk, device), target)
    });
    let mut scores =
        contribution_scores_with(model, batches, &options, config.at_inputs, |e, first| {
            if site_order.is_empty() {
                site_order = e.sites.iter().map(|s| s.site.clone()).collect();
            }
            let totals = e.pixel_totals();
            for (i, relevance) in e.pixel_maps().into_iter().enumerate() {
                let image = first + i;
                let intensities = pre.intensities(
                    &data.images[image * per_image..(image + 1) * per_image],
                    channels,
                );
                let (ink_rel, ink_area) = if grayscale_data_set {
                    let (r, a) = object_shares(&relevance, &intensities, config.ink_threshold);
                    (Some(r), Some(a))
                } else {
                    (None, None)
                };
                let label = data.labels.get(image).copied();
                images.push(ImageRelevance {
                    source: data.source_name(image),
                    label,
                    target: e.targets[i],
                    target_logit: e.target_logits[i],
                    pixel_relevance: totals[i],
                    ink_relevance_share: ink_rel,
                    ink_area_share: ink_area,
                });
                if maps.len() < config.heatmaps {
                    maps.push(InputMap {
                        intensities,
                        relevance,
                        target: e.targets[i],
                        label,
                    });
                }
            }
            progress(first + e.targets.len());
        })?;
    scores.meta.insert("model".into(), card.name.clone());
    Ok(DataExplanation {
        scores,
        site_order,
        images,
        maps,
    })
}
