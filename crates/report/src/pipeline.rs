//! The pictures of the pipeline's own results: LRP contribution per site, the sensitivity heat
//! map, and the weight bits per site of several plans.

use std::path::Path;

use mixq_core::{BitPlan, ContributionScores, Result, SensitivityTable, SiteBits, SiteId};

use crate::{Bar, BarChart, HeatMap, LineChart, Series, bar_chart, heat_map, line_chart};

/// Contribution scores as bars, one per site of `order` (a site without a score gets 0).
pub fn contribution_chart(
    path: impl AsRef<Path>,
    scores: &ContributionScores,
    order: &[SiteId],
    title: &str,
) -> Result<()> {
    let bars = order
        .iter()
        .map(|s| Bar::site(s.as_str(), scores.scores.get(s).copied().unwrap_or(0.0)))
        .collect();
    bar_chart(
        path,
        &BarChart {
            title: title.into(),
            y_label: "share of |relevance|".into(),
            bars,
            ..Default::default()
        },
    )
}

/// Each post-LayerNorm activation's largest channel over its median channel (max |x|), one bar
/// per site in the order given: where channel-wise post-LN quantization has something to do.
pub fn channel_outlier_chart(
    path: impl AsRef<Path>,
    ratios: &[(SiteId, f64)],
    title: &str,
) -> Result<()> {
    bar_chart(
        path,
        &BarChart {
            title: title.into(),
            y_label: "largest / median channel max |x|".into(),
            bars: ratios
                .iter()
                .map(|(site, ratio)| Bar::site(site.as_str(), *ratio))
                .collect(),
            ..Default::default()
        },
    )
}

/// The sensitivity heat map: the sites of `order` that the table has (rows, in that order) x
/// the candidates of the first of them, damage on a log colour scale. Writes nothing when the
/// table has none of the sites.
pub fn sensitivity_heat_map(
    path: impl AsRef<Path>,
    table: &SensitivityTable,
    order: &[SiteId],
    title: &str,
) -> Result<()> {
    let rows: Vec<&SiteId> = order
        .iter()
        .filter(|s| table.sites.contains_key(*s))
        .collect();
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let cols: Vec<SiteBits> = table.sites[*first].iter().map(|p| p.bits).collect();
    let values = rows
        .iter()
        .map(|s| {
            cols.iter()
                .map(|b| {
                    table.sites[*s]
                        .iter()
                        .find(|p| p.bits == *b)
                        .map(|p| p.damage.max(0.0))
                        .unwrap_or(0.0)
                })
                .collect()
        })
        .collect();
    heat_map(
        path,
        &HeatMap {
            title: title.into(),
            row_labels: rows.iter().map(|s| s.to_string()).collect(),
            col_labels: cols
                .iter()
                .map(|b| format!("W{}A{}", b.w_bits, b.a_bits))
                .collect(),
            values,
            colour_label: format!("damage ({})", table.metric),
            log_scale: true,
            ..Default::default()
        },
    )
}

/// Weight bits per site along `order`, one step line per `(name, plan)`.
pub fn bits_chart(
    path: impl AsRef<Path>,
    plans: &[(&str, &BitPlan)],
    order: &[SiteId],
    title: &str,
) -> Result<()> {
    let series = plans
        .iter()
        .map(|(name, plan)| {
            Series::step(
                name.to_string(),
                order
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| Some((i as f64, plan.sites.get(s)?.w_bits.get() as f64)))
                    .collect(),
            )
        })
        .collect();
    line_chart(
        path,
        &LineChart {
            title: title.into(),
            x_label: "site (forward order)".into(),
            y_label: "weight bits".into(),
            series,
            ..Default::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixq_core::{BitWidth, SensitivityPoint};

    fn bits(w: u8) -> SiteBits {
        SiteBits {
            w_bits: BitWidth::new(w).unwrap(),
            a_bits: BitWidth::new(w).unwrap(),
        }
    }

    #[test]
    fn the_pipeline_pictures_are_written_and_a_table_without_the_sites_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let order: Vec<SiteId> = ["blocks.0.attn.qkv", "blocks.0.mlp.fc1"]
            .map(SiteId::new)
            .to_vec();
        let mut table = SensitivityTable {
            metric: "kl".into(),
            ..Default::default()
        };
        for (i, s) in order.iter().enumerate() {
            table.sites.insert(
                s.clone(),
                [2, 4, 8]
                    .map(|b| SensitivityPoint {
                        bits: bits(b),
                        damage: (i + 1) as f64 / b as f64,
                    })
                    .to_vec(),
            );
        }
        let heat = dir.path().join("sensitivity.png");
        sensitivity_heat_map(&heat, &table, &order, "t").unwrap();
        assert!(image::open(&heat).is_ok());
        let none = dir.path().join("none.png");
        sensitivity_heat_map(&none, &table, &[SiteId::new("head")], "t").unwrap();
        assert!(!none.exists());

        let mut scores = ContributionScores::default();
        scores.scores.insert(order[0].clone(), 0.7);
        let bars = dir.path().join("relevance.png");
        contribution_chart(&bars, &scores, &order, "t").unwrap();
        assert!(image::open(&bars).is_ok());

        let mut plan = BitPlan::default();
        for (s, b) in order.iter().zip([2, 8]) {
            plan.sites.insert(s.clone(), bits(b));
        }
        let steps = dir.path().join("bits.png");
        bits_chart(&steps, &[("mixed", &plan)], &order, "t").unwrap();
        assert!(image::open(&steps).is_ok());
    }
}
