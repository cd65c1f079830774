//! What a PTQ run records in its folder (`results.json` beside `plan.toml`), and reading a run
//! back, which is how `export` calibrates exactly as the run did.

use std::path::Path;

use mixq_core::{BitPlan, Error, Result};
use serde::{Deserialize, Serialize};

use crate::{
    LabelFreeSpread, Metrics, PostLnMode, SeedMetrics, SoftmaxMode, Spread, VariantResult,
};

/// One row of a PTQ table: a configuration over every calibration seed.
#[derive(Clone, Debug, Serialize)]
pub struct PtqRow {
    /// `<model> FP32` or `<model> <plan label>`.
    pub name: String,
    /// Post-LN quantizer (`None`: full precision).
    pub post_ln: Option<PostLnMode>,
    /// Softmax quantizer (`None`: full precision).
    pub softmax: Option<SoftmaxMode>,
    /// Every seed's figures.
    pub seeds: Vec<SeedMetrics>,
    /// Top-1 % over the seeds.
    pub top1: Spread,
    /// Top-5 % over the seeds.
    pub top5: Spread,
    /// Cross-entropy over the seeds.
    pub loss: Spread,
    /// Mean KL(FP || quantized); none for the full-precision row.
    pub kl: Option<Spread>,
    /// A backbone's token cosine and saliency agreement (none for classifiers).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub label_free: Option<LabelFreeSpread>,
}

impl PtqRow {
    /// The full-precision row: one evaluation, no seed, no quantizers.
    pub fn full_precision(name: String, metrics: Metrics) -> Self {
        let one = |v: f64| Spread::of([v]);
        Self {
            name,
            post_ln: None,
            softmax: None,
            top1: one(metrics.top1_pct()),
            top5: one(metrics.top5_pct()),
            loss: one(metrics.loss()),
            kl: None,
            label_free: LabelFreeSpread::of([&metrics]),
            seeds: vec![SeedMetrics {
                seed: None,
                metrics,
            }],
        }
    }

    /// A quantized configuration's row from its figures over the seeds.
    pub fn quantized(
        name: String,
        modes: (PostLnMode, SoftmaxMode),
        result: VariantResult,
    ) -> Self {
        Self {
            name,
            post_ln: Some(modes.0),
            softmax: Some(modes.1),
            top1: result.top1,
            top5: result.top5,
            loss: result.loss,
            kl: Some(result.kl),
            label_free: result.label_free,
            seeds: result.seeds,
        }
    }
}

/// A PTQ run's `results.json`.
#[derive(Clone, Debug, Serialize)]
pub struct PtqResults {
    /// The model card's name.
    pub model: String,
    /// Calibration seeds, one calibration each.
    pub seeds: Vec<u64>,
    /// Calibration images per seed.
    pub calib_images: usize,
    /// Images evaluated.
    pub eval_images: usize,
    /// Where they came from.
    pub data: String,
    /// Full precision first, then every configuration.
    pub rows: Vec<PtqRow>,
}

impl PtqResults {
    /// The rows as a markdown table (mean ± std where there are several seeds).
    pub fn markdown(&self) -> String {
        if self.rows.iter().any(|r| r.label_free.is_some()) {
            return self.feature_markdown();
        }
        let mut s = String::from(
            "| model | post-LN | softmax | top-1 % | top-5 % | CE loss | KL to FP |\n|---|---|---|---:|---:|---:|---:|\n",
        );
        let opt = |o: Option<String>| o.unwrap_or_else(|| "-".into());
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                r.name,
                opt(r.post_ln.map(|m| m.to_string())),
                opt(r.softmax.map(|m| m.to_string())),
                r.top1.format(2),
                r.top5.format(2),
                r.loss.format(4),
                opt(r.kl.map(|k| k.format(4))),
            ));
        }
        s
    }
}

impl PtqResults {
    /// A backbone's table: token cosine to full precision instead of accuracy, and with a
    /// saliency decoder its maps' agreement with full precision's.
    fn feature_markdown(&self) -> String {
        let saliency = self
            .rows
            .iter()
            .any(|r| r.label_free.is_some_and(|l| l.saliency.is_some()));
        let header = LabelFreeSpread::header(saliency);
        let rule = "---:|".repeat(header.matches('|').count() + 1);
        let mut s = format!("| model | post-LN | softmax | {header} |\n|---|---|---|{rule}\n");
        let opt = |o: Option<String>| o.unwrap_or_else(|| "-".into());
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                r.name,
                opt(r.post_ln.map(|m| m.to_string())),
                opt(r.softmax.map(|m| m.to_string())),
                LabelFreeSpread::cells(r.label_free.as_ref(), saliency),
            ));
        }
        s
    }
}

/// The post-LN x softmax quantizer grid of an ablation, in table order.
pub fn ablation_grid() -> Vec<(PostLnMode, SoftmaxMode)> {
    let post = [
        PostLnMode::Uniform,
        PostLnMode::ChannelReparam,
        PostLnMode::ClippedChannel,
    ];
    let soft = [
        SoftmaxMode::Uniform,
        SoftmaxMode::Log2,
        SoftmaxMode::LogSqrt2,
    ];
    post.iter()
        .flat_map(|&p| soft.iter().map(move |&s| (p, s)))
        .collect()
}

/// What [`PtqRun::read`] needs of `results.json` (runs before `--seeds` wrote one `seed`).
#[derive(Deserialize)]
struct StoredResults {
    model: String,
    #[serde(default)]
    seeds: Vec<u64>,
    #[serde(default)]
    seed: Option<u64>,
    calib_images: usize,
    #[serde(default)]
    rows: Vec<StoredRow>,
}

#[derive(Deserialize)]
struct StoredRow {
    post_ln: Option<PostLnMode>,
    softmax: Option<SoftmaxMode>,
}

/// A finished PTQ run of one plan and one calibration seed, read back from its folder.
#[derive(Clone, Debug, PartialEq)]
pub struct PtqRun {
    /// Its `plan.toml`.
    pub plan: BitPlan,
    /// The model card's name.
    pub model: String,
    /// The calibration seed.
    pub seed: u64,
    /// Calibration images.
    pub calib_images: usize,
    /// The quantizers of its one quantized row (`None` when it has several, as an ablation).
    pub modes: Option<(PostLnMode, SoftmaxMode)>,
}

impl PtqRun {
    /// Reads the run folder `dir` written by `cargo xtask ptq`; a run of several calibration
    /// seeds is an error, since it has no one calibration to repeat.
    pub fn read(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::invalid(
                "--run",
                dir.display(),
                "not a run folder (written by `cargo xtask ptq`)",
            ));
        }
        let plan = BitPlan::load(dir.join("plan.toml"))?;
        let path = dir.join("results.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let stored: StoredResults =
            serde_json::from_str(&text).map_err(|e| Error::parse(&path, e))?;
        let seed = match (stored.seeds.as_slice(), stored.seed.as_ref()) {
            ([seed], _) | ([], Some(seed)) => *seed,
            (seeds, _) => {
                return Err(Error::invalid(
                    "--run",
                    dir.display(),
                    format!(
                        "the run calibrated with {} seeds ({seeds:?}); export calibrates once: \
                         pass a run of one seed",
                        seeds.len()
                    ),
                ));
            }
        };
        let quantized: Vec<&StoredRow> =
            stored.rows.iter().filter(|r| r.post_ln.is_some()).collect();
        let modes = match quantized.as_slice() {
            [row] => row.post_ln.zip(row.softmax),
            _ => None,
        };
        Ok(Self {
            plan,
            model: stored.model,
            seed,
            calib_images: stored.calib_images,
            modes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uniform_plan;
    use mixq_vit_models::ModelCard;

    fn write_run(dir: &Path, results: &str) {
        let sites = ModelCard::find("digits-deit").unwrap().arch.sites();
        let plan = uniform_plan(&sites, 4, 4, 8).unwrap();
        std::fs::write(dir.join("plan.toml"), plan.to_toml().unwrap()).unwrap();
        std::fs::write(dir.join("results.json"), results).unwrap();
    }

    #[test]
    fn a_run_is_read_back_with_its_seed_and_quantizers() {
        let dir = tempfile::tempdir().unwrap();
        write_run(
            dir.path(),
            r#"{"model": "digits-deit", "seeds": [3], "calib_images": 32, "rows": [
                {"post_ln": null, "softmax": null},
                {"post_ln": "channel-reparam", "softmax": "log2"}]}"#,
        );
        let run = PtqRun::read(dir.path()).unwrap();
        assert_eq!(run.model, "digits-deit");
        assert_eq!(run.seed, 3);
        assert_eq!(run.calib_images, 32);
        assert_eq!(
            run.modes,
            Some((PostLnMode::ChannelReparam, SoftmaxMode::Log2))
        );
        // An older record: one `seed`, no rows.
        write_run(
            dir.path(),
            r#"{"model": "digits-deit", "seed": 5, "calib_images": 8}"#,
        );
        let run = PtqRun::read(dir.path()).unwrap();
        assert_eq!((run.seed, run.modes), (5, None));
    }

    #[test]
    fn a_run_of_several_seeds_or_no_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write_run(
            dir.path(),
            r#"{"model": "digits-deit", "seeds": [0, 1], "calib_images": 32}"#,
        );
        let e = PtqRun::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("2 seeds"), "{e}");
        let e = PtqRun::read(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a run folder"), "{e}");
    }

    #[test]
    fn the_ablation_grid_is_three_by_three_in_table_order() {
        let grid = ablation_grid();
        assert_eq!(grid.len(), 9);
        assert_eq!(grid[0], (PostLnMode::Uniform, SoftmaxMode::Uniform));
        assert_eq!(grid[8], (PostLnMode::ClippedChannel, SoftmaxMode::LogSqrt2));
    }
}
