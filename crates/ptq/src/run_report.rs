//! What a PTQ run leaves in its run folder, so that a library user gets the same files as
//! `cargo xtask ptq`: `results.json`, the plans, `report.md` and, for mixed precision, the
//! scores, the sensitivity tables and the pictures.

use mixq_core::{BitPlan, Result, RunDir, SiteBits, site_ids};
use mixq_report::{
    bits_chart, contribution_chart, gray_image, image_grid, overlay_heatmap_gray, save_png,
    sensitivity_heat_map,
};
use mixq_vit_models::ModelCard;
use serde::Serialize;

use crate::mixed::{MixedConfig, MixedPlans, MixedRow};
use crate::{PtqResults, Spread};

impl PtqResults {
    /// Writes `results.json`, each plan (`plan.toml` for one, else `plan-<label>.toml`, with the
    /// model and the seeds in its meta) and `report.md`, whose reproduce line is `command`
    /// (the `cargo xtask ptq` arguments).
    pub fn write_run(
        &self,
        run: &RunDir,
        card: &ModelCard,
        plans: &[(String, BitPlan)],
        command: &str,
    ) -> Result<()> {
        run.write(
            "results.json",
            mixq_core::to_json(self, "results")?.as_bytes(),
        )?;
        let seed_list = join(&self.seeds, ",");
        for (label, plan) in plans {
            let mut plan = plan.clone();
            plan.meta.insert("model".into(), card.name.clone());
            plan.meta.insert("seed".into(), seed_list.clone());
            let file = if plans.len() == 1 {
                "plan.toml".to_string()
            } else {
                format!("plan-{label}.toml")
            };
            run.write(&file, plan.to_toml()?.as_bytes())?;
        }
        let spread_note = if self.seeds.len() > 1 {
            format!(
                " Figures are mean ± std (sample standard deviation) over the {} calibration seeds.",
                self.seeds.len()
            )
        } else {
            String::new()
        };
        let label = plans
            .iter()
            .map(|(l, _)| l.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let report = format!(
            "# PTQ: {} ({label})\n\nCalibration: {} images per seed (seeds {seed_list}). \
             Evaluation: {}.{spread_note}\n\n{}\n\
             KL is the mean KL(FP || quantized) over the evaluation images. Reproduce:\n\n```\ncargo xtask ptq {command}\n```\n",
            card.aliases[0],
            self.calib_images,
            self.data,
            self.markdown(),
        );
        run.write("report.md", report.as_bytes())
    }
}

/// Spearman's ρ between LRP contribution and sensitivity over the sites, for one seed and one
/// square candidate (`W4A4`); `None` where either is constant.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RankAgreement {
    /// The calibration seed.
    pub seed: u64,
    /// The candidate the damage was measured at (`W4A4`).
    pub bits: String,
    /// Spearman's ρ.
    pub spearman: Option<f64>,
}

impl RankAgreement {
    /// Every seed's ρ at every candidate (nothing for plans made without LRP scores).
    pub fn of(seeded: &[(u64, MixedPlans)], candidates: &[SiteBits]) -> Vec<Self> {
        seeded
            .iter()
            .filter_map(|(seed, plans)| Some((seed, &plans.table, plans.scores.as_ref()?)))
            .flat_map(|(seed, table, scores)| {
                candidates.iter().map(|&bits| Self {
                    seed: *seed,
                    bits: bits_label(bits),
                    spearman: table.rank_agreement(scores, bits),
                })
            })
            .collect()
    }

    /// One row per candidate: ρ as mean ± std over the seeds (empty without any ρ).
    pub fn markdown(agreement: &[Self], candidates: &[SiteBits]) -> String {
        if agreement.is_empty() {
            return String::new();
        }
        let mut s = String::from(
            "| sensitivity at | Spearman ρ (LRP contribution vs damage, over sites) |\n|---|---:|\n",
        );
        for &bits in candidates {
            let label = bits_label(bits);
            let values: Vec<f64> = agreement
                .iter()
                .filter(|a| a.bits == label)
                .filter_map(|a| a.spearman)
                .collect();
            let rho = if values.is_empty() {
                "-".to_string()
            } else {
                Spread::of(values).format(2)
            };
            s += &format!("| {label} | {rho} |\n");
        }
        s
    }
}

fn bits_label(bits: SiteBits) -> String {
    format!("W{}A{}", bits.w_bits, bits.a_bits)
}

fn join(values: &[u64], sep: &str) -> String {
    values
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

/// A `ptq --mixed` run: every seed's plans and the rows that evaluated them.
pub struct MixedReport<'a> {
    /// The model.
    pub card: &'a ModelCard,
    /// What [`crate::mixed::make_plans`] made for each seed.
    pub seeded: &'a [(u64, MixedPlans)],
    /// What [`crate::mixed::evaluate_plans`] measured.
    pub rows: &'a [MixedRow],
    /// The configuration the plans were made with.
    pub config: &'a MixedConfig,
    /// The evaluation data, in words.
    pub eval: &'a str,
}

impl MixedReport<'_> {
    /// The rows and the LRP-vs-sensitivity agreement as markdown tables.
    pub fn tables(&self) -> Result<(String, String)> {
        let candidates = mixq_allocator::parse_candidates(&self.config.sweep.candidates)?;
        let agreement = RankAgreement::of(self.seeded, &candidates);
        Ok((
            MixedRow::markdown(self.rows),
            RankAgreement::markdown(&agreement, &candidates),
        ))
    }

    /// Writes every seed's scores, sensitivity table and plans (with several seeds each file
    /// carries `-seed<s>`), the pictures of the first seed (relevance, sensitivity, bits per
    /// budget), `results.json` and `report.md`, whose reproduce line is `command`.
    pub fn write(&self, run: &RunDir, command: &str) -> Result<()> {
        let card = self.card;
        let seeds: Vec<u64> = self.seeded.iter().map(|(s, _)| *s).collect();
        let tag = |seed: u64| {
            if seeds.len() > 1 {
                format!("-seed{seed}")
            } else {
                String::new()
            }
        };
        for (seed, plans) in self.seeded {
            let tag = tag(*seed);
            if let Some(scores) = &plans.scores {
                scores.save(run.file(&format!("scores{tag}.toml")))?;
            }
            plans
                .table
                .save(run.file(&format!("sensitivity{tag}.toml")))?;
            for (name, budget, plan) in &plans.plans {
                let file = format!(
                    "plan-{}-{}{tag}.toml",
                    name.replace(' ', "-"),
                    budget.map(|b| b.to_string()).unwrap_or_default()
                );
                run.write(&file, plan.to_toml()?.as_bytes())?;
            }
        }
        let (seed, first) = &self.seeded[0];
        let n_calib = first.calib.dims()[0];
        let order = site_ids(&card.arch.sites());
        let name = &card.aliases[0];
        if let Some(scores) = &first.scores {
            contribution_chart(
                run.file("relevance.png"),
                scores,
                &order,
                &format!(
                    "LRP contribution per site — {name} ({})",
                    self.config.lrp_preset
                ),
            )?;
        }
        sensitivity_heat_map(
            run.file("sensitivity.png"),
            &first.table,
            &order,
            &format!(
                "Sensitivity — {name} ({}, {} probe images)",
                first.table.metric,
                first.probe.len()
            ),
        )?;
        let avg_bits = &self.config.budget.avg_bits;
        for &avg in avg_bits {
            let at_budget: Vec<(&str, &BitPlan)> = first
                .plans
                .iter()
                .filter(|(_, b, _)| *b == Some(avg))
                .map(|(name, _, plan)| (name.as_str(), plan))
                .collect();
            bits_chart(
                run.file(&format!("bits-{avg}.png")),
                &at_budget,
                &order,
                &format!("Weight bits per site along the depth — {name} at {avg} bits"),
            )?;
        }
        let candidates = mixq_allocator::parse_candidates(&self.config.sweep.candidates)?;
        let agreement = RankAgreement::of(self.seeded, &candidates);
        let json = mixq_core::to_json(
            &serde_json::json!({
                "model": card.name,
                "seed": seed,
                "seeds": seeds,
                "calib_images": n_calib,
                "probe_images": first.probe.len(),
                "eval": self.eval,
                "candidates": self.config.sweep.candidates,
                "lambda": self.config.budget.lambda,
                "rows": self.rows,
                "rank_agreement": agreement,
            }),
            "results",
        )?;
        run.write("results.json", json.as_bytes())?;
        let mut pictures = String::new();
        if first.scores.is_some() {
            pictures += "![relevance](relevance.png)\n\n";
        }
        pictures += "![sensitivity](sensitivity.png)\n\n";
        for &avg in avg_bits {
            pictures += &format!("![bits at {avg}](bits-{avg}.png)\n\n");
        }
        let table_md = MixedRow::markdown(self.rows);
        let agreement_md = RankAgreement::markdown(&agreement, &candidates);
        let report = format!(
            "# Mixed-precision PTQ: {name}\n\nCalibration {n_calib} images, probe {} images (disjoint), seeds {} (mean ± std over them; pictures: seed {seed}). Evaluation: {}.\n\
             Budgets cap the parameter-weighted average weight bits and the MAC-weighted average activation bits.\n\n{table_md}\n{agreement_md}\n{pictures}Reproduce:\n\n```\ncargo xtask ptq {command}\n```\n",
            first.probe.len(),
            join(&seeds, ", "),
            self.eval,
        );
        run.write("report.md", report.as_bytes())
    }
}

impl crate::pose::PosePtq {
    /// Spearman's ρ between the LRP contribution scores and the measured heatmap damage over
    /// the sites, at every candidate the sweep measured (nothing without scores); `seed` labels
    /// the rows. With [`RankAgreement::markdown`] the table the classifiers' mixed runs print.
    pub fn rank_agreement(&self, seed: u64) -> (Vec<RankAgreement>, Vec<SiteBits>) {
        let (Some(table), Some(scores)) = (&self.table, &self.scores) else {
            return (Vec::new(), Vec::new());
        };
        let mut candidates: Vec<SiteBits> = table
            .sites
            .values()
            .flat_map(|points| points.iter().map(|p| p.bits))
            .collect();
        candidates.sort();
        candidates.dedup();
        let rows = candidates
            .iter()
            .map(|&bits| RankAgreement {
                seed,
                bits: bits_label(bits),
                spearman: table.rank_agreement(scores, bits),
            })
            .collect();
        (rows, candidates)
    }
}

impl crate::pose::PosePtq {
    /// Writes every plan, the sensitivity table and heat map (mixed plans), each row's skeleton
    /// pictures, `results.json` and `report.md` (reproduce line: `command`) of a pose PTQ run
    /// on `data` with the checkpoint `weights`.
    pub fn write_run(
        &self,
        run: &RunDir,
        config: &crate::pose::PosePtqConfig,
        data: &mixq_datasets::PoseData,
        weights: &std::path::Path,
        command: &str,
    ) -> Result<()> {
        let (model, seed, n_probe) = (&config.model, config.seed, self.probe_crops);
        let agreement = match self.rank_agreement(seed) {
            (rows, _) if rows.is_empty() => String::new(),
            (rows, candidates) => format!("\n{}", RankAgreement::markdown(&rows, &candidates)),
        };
        for (i, (name, budget, plan)) in self.plans.iter().enumerate() {
            let file = format!(
                "plan-{i}-{}{}.toml",
                name.replace([' ', '/'], "-"),
                budget.map(|b| format!("-{b}")).unwrap_or_default()
            );
            run.write(&file, plan.to_toml()?.as_bytes())?;
        }
        let mut pictures = String::new();
        if let Some(scores) = &self.scores {
            scores.save(run.file("scores.toml"))?;
        }
        if let Some(table) = &self.table {
            table.save(run.file("sensitivity.toml"))?;
            sensitivity_heat_map(
                run.file("sensitivity.png"),
                table,
                &site_ids(&self.sites),
                &format!("Sensitivity — {model} (relative heatmap MSE, {n_probe} probe crops)"),
            )?;
            pictures += "![sensitivity](sensitivity.png)\n\n";
        }
        for (i, (row, pred)) in self.rows.iter().zip(&self.predictions).enumerate() {
            let file = format!("skeletons-{i}.png");
            crate::pose::skeleton_pictures(&data.val, pred, 8, &run.file(&file))?;
            pictures += &format!("{}: ![{}]({file})\n\n", row.name, row.name);
        }
        let json = mixq_core::to_json(
            &serde_json::json!({
                "model": model,
                "weights": weights,
                "seed": seed,
                "data": data.description,
                "calib_crops": config.calib,
                "probe_crops": n_probe,
                "flip_test": config.flip,
                "stats_order": mixq_datasets::OksStats::NAMES,
                "rows": self.rows,
            }),
            "results",
        )?;
        run.write("results.json", json.as_bytes())?;
        let report = format!(
            "# PTQ: {model} (pose)\n\n{}; checkpoint {} (BatchNorm folded); calibration {} crops, \
             probe {n_probe} crops (disjoint, seed {seed}); held-out {} persons, flip test {}.\n\n\
             {}\n{pictures}Reproduce:\n\n```\ncargo xtask ptq {command}\n```\n",
            data.description,
            weights.display(),
            config.calib,
            self.held_out,
            if config.flip { "on" } else { "off" },
            crate::pose::PosePtqRow::markdown(&self.rows) + &agreement,
        );
        run.write("report.md", report.as_bytes())
    }
}

/// What an LRP run over a sample leaves in its run folder (`cargo xtask lrp`): the explanation
/// and what it was made with.
pub struct LrpRun<'a> {
    /// The explained model's card.
    pub card: &'a ModelCard,
    /// What `mixq_vit_models::explain_data` found.
    pub explained: &'a mixq_vit_models::DataExplanation,
    /// `[n, c, h, w]` of the explained images.
    pub image_shape: [usize; 4],
    /// The rules.
    pub preset: mixq_lrp::Preset,
    /// The sample's seed (recorded in the scores).
    pub seed: u64,
    /// Whether relevance was read at the sites' inputs.
    pub at_inputs: bool,
    /// Intensity from which a pixel counts as ink (the ink-share figure).
    pub ink_threshold: f32,
}

#[derive(Serialize)]
struct LrpResults<'a> {
    model: &'a str,
    preset: String,
    seed: u64,
    images: usize,
    read_at: &'a str,
    mean_ink_relevance_share: Option<f64>,
    mean_ink_area_share: Option<f64>,
    per_image: &'a [mixq_vit_models::ImageRelevance],
}

impl LrpRun<'_> {
    fn read_at(&self) -> &'static str {
        if self.at_inputs { "input" } else { "output" }
    }

    /// The run's summary lines: sample, rules, where relevance is read and (grey data sets)
    /// the share of input relevance on ink pixels.
    pub fn summary(&self) -> String {
        let n = self.image_shape[0];
        let mut summary = format!(
            "{} images of {}, preset {}, relevance read at site {}s; {} sites.\n",
            n,
            self.card.aliases[0],
            self.preset,
            self.read_at(),
            self.explained.scores.scores.len()
        );
        if let (Some(r), Some(a)) = self.explained.mean_ink_shares() {
            summary += &format!(
                "Input relevance on ink pixels (intensity >= {}): {:.1} % of |relevance| on {:.1} % of the area.\n",
                self.ink_threshold,
                100.0 * r,
                100.0 * a
            );
        }
        summary
    }

    /// Writes `scores.toml/json` (the seed in their meta), the contribution chart, the input
    /// heatmaps, `results.json` and `report.md` (reproduce line: `command`, the
    /// `cargo xtask lrp` arguments).
    pub fn write(&self, run: &RunDir, command: &str) -> Result<()> {
        let (card, n) = (self.card, self.image_shape[0]);
        let mut scores = self.explained.scores.clone();
        scores.meta.insert("seed".into(), self.seed.to_string());
        scores.save(run.file("scores.toml"))?;
        scores.save(run.file("scores.json"))?;
        contribution_chart(
            run.file("contribution.png"),
            &scores,
            &self.explained.site_order,
            &format!(
                "LRP contribution per site — {} ({}, {} images)",
                card.aliases[0], self.preset, n
            ),
        )?;
        if !self.explained.maps.is_empty() {
            let [_, _, h, w] = self.image_shape;
            let scale = (160 / w.max(h)).max(1) as u32;
            let mut tiles = Vec::new();
            let mut captions = Vec::new();
            for m in &self.explained.maps {
                let gray = gray_image(&m.intensities, w, h, scale);
                tiles.push(overlay_heatmap_gray(
                    &gray,
                    &m.relevance,
                    w as u32,
                    h as u32,
                )?);
                let target = m.target;
                captions.push(match m.label {
                    Some(l) => format!("label {l}, target {target}"),
                    None => format!("target {target}"),
                });
            }
            save_png(
                run.file("heatmaps.png"),
                &image_grid(&tiles, tiles.len().min(4), &captions)?,
            )?;
        }
        let (ink_rel, ink_area) = self.explained.mean_ink_shares();
        let json = mixq_core::to_json(
            &LrpResults {
                model: &card.name,
                preset: self.preset.to_string(),
                seed: self.seed,
                images: n,
                read_at: self.read_at(),
                mean_ink_relevance_share: ink_rel,
                mean_ink_area_share: ink_area,
                per_image: &self.explained.images,
            },
            "results",
        )?;
        run.write("results.json", json.as_bytes())?;
        let report = format!(
            "# LRP: {}\n\n{}\n{}\n![contribution per site](contribution.png)\n\n\
             ![input relevance (red positive, blue negative)](heatmaps.png)\n\nReproduce:\n\n```\ncargo xtask lrp {command}\n```\n",
            card.aliases[0],
            self.summary(),
            self.explained.top_sites_markdown(10),
        );
        run.write("report.md", report.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(w: u8, a: u8) -> SiteBits {
        SiteBits::new(w, a).unwrap()
    }

    #[test]
    fn rank_agreement_rows_are_mean_and_sample_std_over_the_seeds() {
        let rho = |seed, b: &str, v| RankAgreement {
            seed,
            bits: b.into(),
            spearman: v,
        };
        let agreement = [
            rho(0, "W4A4", Some(0.5)),
            rho(1, "W4A4", Some(0.7)),
            rho(0, "W8A8", None),
            rho(1, "W8A8", None),
        ];
        let md = RankAgreement::markdown(&agreement, &[bits(4, 4), bits(8, 8)]);
        let rows: Vec<&str> = md.lines().skip(2).collect();
        // mean 0.6, sample std sqrt(0.02) = 0.141
        assert_eq!(rows, ["| W4A4 | 0.60 ± 0.14 |", "| W8A8 | - |"]);
        assert_eq!(RankAgreement::markdown(&[], &[bits(4, 4)]), "");
    }
}
