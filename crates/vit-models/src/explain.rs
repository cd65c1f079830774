//! LRP explanations: every model family in "LRP mode" (mixq-lrp's rules through the site
//! hook), relevance read at every site, at block boundaries and at the pixels.

use crate::network::Network;
use std::collections::BTreeMap;
use std::sync::Mutex;

use burn::tensor::{Tensor, TensorData};
use mixq_core::{ContributionScores, Error, Result, SiteId};
use mixq_lrp::{
    AttentionRule, ContributionAccumulator, LinearRule, PixelBounds, Preset, RelevanceTap, Rules,
    per_image_sums,
};

use crate::hooks::{Ops, SiteHook, Slot};

/// Which class relevance starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Each image's top-1 class.
    Predicted,
    /// One class per image (the labels).
    Labels(Vec<usize>),
    /// The same class for every image.
    Class(usize),
}

/// How to explain.
#[derive(Clone, Debug)]
pub struct ExplainOptions {
    /// The rule preset (AttnLRP or Chefer).
    pub preset: Preset,
    /// Overrides the preset's epsilon (attnlrp) — `Some(0.0)` gives the plain z-rule.
    pub epsilon: Option<f64>,
    /// The rule of the attention matmuls and softmax.
    pub attention: AttentionRule,
    /// Also read relevance at each site's input (for matmuls: both operands together).
    pub read_inputs: bool,
    /// Normalised pixel range per channel for the z^B rule: `(0 - mean) / std` and
    /// `(1 - mean) / std` of the model's preprocessing.
    pub pixel_low: Vec<f32>,
    /// The highest normalised pixel value per channel (z^B's upper bound).
    pub pixel_high: Vec<f32>,
}

impl ExplainOptions {
    /// Options for a model whose inputs were normalised with `mean` / `std` per channel.
    pub fn new(preset: Preset, mean: &[f32], std: &[f32]) -> Self {
        ExplainOptions {
            preset,
            epsilon: None,
            attention: AttentionRule::Uniform,
            read_inputs: false,
            pixel_low: mean.iter().zip(std).map(|(m, s)| (0.0 - m) / s).collect(),
            pixel_high: mean.iter().zip(std).map(|(m, s)| (1.0 - m) / s).collect(),
        }
    }

    fn rules(&self) -> Rules {
        let mut rules = Rules::new(self.preset);
        if let (Some(eps), LinearRule::Epsilon(_)) = (self.epsilon, rules.linear) {
            rules.linear = LinearRule::Epsilon(eps);
        }
        rules.attention = self.attention;
        rules
    }
}

/// Relevance summed per image at one site.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteRelevance {
    /// The site.
    pub site: SiteId,
    /// Per image: sum of relevance at the site's output, and of its absolute value.
    pub output: Vec<f32>,
    /// Summed |relevance| at the site's output, per image.
    pub output_abs: Vec<f32>,
    /// Per image, when asked for: the same at the site's input(s).
    pub input: Option<Vec<f32>>,
    /// Summed |relevance| at the site's input, per image, when asked for.
    pub input_abs: Option<Vec<f32>>,
}

/// The result of [`Network::explain`] for one batch.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// Classes of the explained logits.
    pub num_classes: usize,
    /// `[b, classes]`, row-major.
    pub logits: Vec<f32>,
    /// The class explained, per image.
    pub targets: Vec<usize>,
    /// The relevance each image starts with (its target logit).
    pub target_logits: Vec<f32>,
    /// Pixel relevance `[b, c, h, w]`, row-major (z^B rule, bounds included).
    pub pixels: Vec<f32>,
    /// `[b, c, h, w]` of the pixel relevance.
    pub pixel_shape: [usize; 4],
    /// Sites in forward order.
    pub sites: Vec<SiteRelevance>,
    /// Per boundary (input of each block, then of the final norm), per image: summed
    /// relevance of the residual stream.
    pub boundaries: Vec<Vec<f32>>,
}

impl Explanation {
    /// Per image: relevance summed over pixels (and channels).
    pub fn pixel_totals(&self) -> Vec<f32> {
        let per = self.pixels.len() / self.pixel_shape[0].max(1);
        self.pixels
            .chunks(per.max(1))
            .map(|c| c.iter().sum())
            .collect()
    }

    /// Per image: the pixel map summed over channels, `[h * w]` each.
    pub fn pixel_maps(&self) -> Vec<Vec<f32>> {
        let [b, c, h, w] = self.pixel_shape;
        (0..b)
            .map(|i| {
                (0..h * w)
                    .map(|p| (0..c).map(|ch| self.pixels[(i * c + ch) * h * w + p]).sum())
                    .collect()
            })
            .collect()
    }
}

/// The LRP-mode hook: hands the rules to every layer and attaches a probe where relevance is
/// read.
struct LrpHook {
    rules: Rules,
    read_inputs: bool,
    probes: Mutex<Vec<(SiteId, Slot, RelevanceTap<2>)>>,
}

impl SiteHook for LrpHook {
    fn apply(&self, site: &SiteId, slot: Slot, x: Tensor<2>) -> Tensor<2> {
        let wanted = match slot {
            Slot::Output => true,
            Slot::Input | Slot::OperandA | Slot::OperandB => self.read_inputs,
            Slot::Weight => false,
        };
        if !wanted {
            return x;
        }
        let (x, probe) = RelevanceTap::attach(x);
        self.probes
            .lock()
            .expect("probe list poisoned")
            .push((site.clone(), slot, probe));
        x
    }

    fn ops(&self) -> Ops<'_> {
        Ops::Lrp(&self.rules)
    }
}

fn host(t: Tensor<1>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap_or_default()
}

/// [`Network::explain`]: one forward in LRP mode and one backward from the target logits.
pub(crate) fn explain<N: Network + ?Sized>(
    model: &N,
    images: Tensor<4>,
    target: &Target,
    options: &ExplainOptions,
) -> Result<Explanation> {
    let [b, c, h, w] = images.dims();
    if options.pixel_low.len() != c || options.pixel_high.len() != c {
        return Err(Error::invalid(
            "pixel range",
            options.pixel_low.len(),
            format!("need one bound per input channel ({c})"),
        ));
    }
    let device = images.device();
    let bound = |v: &[f32]| {
        Tensor::<1>::from_data(TensorData::new(v.to_vec(), [c]), &device)
            .reshape([1, c, 1, 1])
            .expand([b, c, h, w])
            .detach()
            .autodiff()
            .require_grad()
    };
    let (low, high) = (bound(&options.pixel_low), bound(&options.pixel_high));
    let mut rules = options.rules();
    // The pixel rule (z^B) belongs to the first site, the one that sees the pixels (the
    // patch embedding of mixq's families).
    let first = model.sites().into_iter().next().map(|s| s.id);
    rules.pixels = Some(PixelBounds {
        site: first.unwrap_or_else(|| SiteId::new("patch_embed.proj")),
        low: low.clone(),
        high: high.clone(),
    });
    let hook = LrpHook {
        rules,
        read_inputs: options.read_inputs,
        probes: Mutex::new(Vec::new()),
    };
    let x = images.detach().autodiff().require_grad();
    let mut boundaries = Vec::new();
    // Relevance is read on the residual stream (tensors a model carries along besides it,
    // such as WTPose's stage outputs, are not tapped).
    let logits = model.forward_with_boundaries(x.clone(), &hook, &mut |mut b| {
        let (t, probe) = RelevanceTap::attach(b.stream);
        boundaries.push(probe);
        b.stream = t;
        b
    });

    let num_classes = logits.dims()[1];
    let logits_host = logits
        .clone()
        .without_autodiff()
        .into_data()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    let targets = resolve_targets(target, &logits_host, b, num_classes)?;
    let mut onehot = vec![0f32; b * num_classes];
    for (i, &t) in targets.iter().enumerate() {
        onehot[i * num_classes + t] = 1.0;
    }
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [b, num_classes]), &device);
    let grads = (logits * onehot).sum().backward();

    let zeros = || Tensor::<4>::zeros([b, c, h, w], &device);
    let term = |leaf: &Tensor<4>| match leaf.grad(&grads) {
        Some(g) => g * leaf.clone().without_autodiff().detach(),
        None => zeros(),
    };
    let pixels = term(&x) + term(&low) + term(&high);
    let pixels = pixels.into_data().try_into_vec::<f32>().unwrap_or_default();

    let mut by_site: BTreeMap<SiteId, SiteRelevance> = BTreeMap::new();
    let probes = hook.probes.into_inner().expect("probe list poisoned");
    let mut order = Vec::new();
    for (site, slot, probe) in probes {
        let rel = probe.relevance(&grads);
        let [rows, last] = rel.dims();
        let (abs, signed) = per_image_sums(rel.reshape([b, rows * last / b]));
        let entry = by_site.entry(site.clone()).or_insert_with(|| {
            order.push(site.clone());
            SiteRelevance {
                site,
                output: vec![0.0; b],
                output_abs: vec![0.0; b],
                input: None,
                input_abs: None,
            }
        });
        if slot == Slot::Output {
            entry.output = signed;
            entry.output_abs = abs;
        } else {
            let add = |acc: &mut Option<Vec<f32>>, v: &[f32]| {
                let acc = acc.get_or_insert_with(|| vec![0.0; b]);
                acc.iter_mut().zip(v).for_each(|(a, v)| *a += v);
            };
            add(&mut entry.input, &signed);
            add(&mut entry.input_abs, &abs);
        }
    }
    let sites = order.iter().filter_map(|s| by_site.remove(s)).collect();
    let boundaries = boundaries
        .iter()
        .map(|p| {
            let rel = p.relevance(&grads);
            host(rel.reshape([b as i64, -1]).sum_dim(1).reshape([b]))
        })
        .collect();
    let target_logits = targets
        .iter()
        .enumerate()
        .map(|(i, &t)| logits_host[i * num_classes + t])
        .collect();
    Ok(Explanation {
        num_classes,
        logits: logits_host,
        targets,
        target_logits,
        pixels,
        pixel_shape: [b, c, h, w],
        sites,
        boundaries,
    })
}

fn resolve_targets(
    target: &Target,
    logits: &[f32],
    b: usize,
    classes: usize,
) -> Result<Vec<usize>> {
    let check = |t: usize| {
        if t < classes {
            Ok(t)
        } else {
            Err(Error::invalid(
                "target class",
                t,
                format!("the model has {classes} classes (0..={})", classes - 1),
            ))
        }
    };
    match target {
        Target::Predicted => Ok(logits
            .chunks(classes)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                        if v > best.1 { (i, v) } else { best }
                    })
                    .0
            })
            .collect()),
        Target::Class(t) => Ok(vec![check(*t)?; b]),
        Target::Labels(labels) => {
            if labels.len() != b {
                return Err(Error::invalid(
                    "labels",
                    labels.len(),
                    format!("need one label per image ({b})"),
                ));
            }
            labels.iter().map(|&t| check(t)).collect()
        }
    }
}

/// How much of a relevance map lies on the object: (share of `|relevance|` on pixels whose
/// intensity is at least `threshold`, share of the image those pixels cover). `map` and
/// `intensities` are one image's `[h * w]` (see [`crate::Preprocess::intensities`]); on a dark
/// background (digits, Fashion-MNIST) the bright pixels are the object.
pub fn object_shares(map: &[f32], intensities: &[f32], threshold: f32) -> (f64, f64) {
    let on: Vec<bool> = intensities
        .iter()
        .map(|&v| v >= threshold.max(1e-6))
        .collect();
    let total: f64 = map.iter().map(|v| v.abs() as f64).sum();
    let on_object: f64 = map
        .iter()
        .zip(&on)
        .filter(|(_, o)| **o)
        .map(|(v, _)| v.abs() as f64)
        .sum();
    let area = on.iter().filter(|o| **o).count() as f64 / on.len().max(1) as f64;
    (if total > 0.0 { on_object / total } else { 0.0 }, area)
}

/// Contribution scores (LRP-QViT): per site, `|relevance|` summed at the site's output (or
/// input), averaged over every image of `batches`, normalised to sum to 1 over sites.
///
/// `progress` is called once per batch with the number of images done.
pub fn contribution_scores(
    model: &dyn Network,
    batches: impl IntoIterator<Item = (Tensor<4>, Target)>,
    options: &ExplainOptions,
    at_inputs: bool,
    mut progress: impl FnMut(usize),
) -> Result<ContributionScores> {
    contribution_scores_with(model, batches, options, at_inputs, |e, first| {
        progress(first + e.targets.len())
    })
}

/// [`contribution_scores`], handing each batch's [`Explanation`] to `each` (with the index of
/// its first image) before it is summed: for per-image maps and figures.
pub fn contribution_scores_with(
    model: &dyn Network,
    batches: impl IntoIterator<Item = (Tensor<4>, Target)>,
    options: &ExplainOptions,
    at_inputs: bool,
    mut each: impl FnMut(&Explanation, usize),
) -> Result<ContributionScores> {
    let mut options = options.clone();
    options.read_inputs |= at_inputs;
    let mut acc = ContributionAccumulator::default();
    for (images, target) in batches {
        let n = images.dims()[0];
        let e = model.explain(images, &target, &options)?;
        each(&e, acc.images());
        let sums: Vec<(SiteId, Vec<f32>)> = e
            .sites
            .into_iter()
            .map(|s| {
                let v = if at_inputs {
                    s.input_abs.unwrap_or_default()
                } else {
                    s.output_abs
                };
                (s.site, v)
            })
            .collect();
        acc.add_batch(n, sums.iter().map(|(s, v)| (s, v.as_slice())));
    }
    let mut meta = BTreeMap::new();
    meta.insert("preset".into(), options.preset.to_string());
    meta.insert("images".into(), acc.images().to_string());
    meta.insert(
        "read_at".into(),
        if at_inputs { "input" } else { "output" }.into(),
    );
    acc.finish(meta)
}
