//! The files that carry per-site measurements from the explain and measure stages to the
//! allocator: LRP contribution scores and the sensitivity table.
//!
//! Both are plain serde types, stored as TOML (for people) or JSON (for scripts): the allocator
//! reads them without depending on any tensor library.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result, SiteBits, SiteId};

/// How much each site contributes to the prediction, from LRP: the mean over images of the
/// summed |relevance| at the site, normalised so the scores sum to 1 over sites.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContributionScores {
    /// Provenance: model, preset, images, seed, where relevance was read (output/input).
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Each site's share of the absolute relevance (they sum to 1).
    pub scores: BTreeMap<SiteId, f64>,
}

/// One measured point of a sensitivity sweep: the damage when `site` alone runs at `bits`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SensitivityPoint {
    /// The candidate measured.
    pub bits: SiteBits,
    /// The damage metric named in [`SensitivityTable::metric`] (KL by default); >= 0 is
    /// expected but a quantized site can also help by chance, so small negatives are kept.
    pub damage: f64,
}

/// Damage per site and candidate bit-width, measured with every other site at the baseline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SensitivityTable {
    /// Provenance: model, weights hash, probe images, baseline, seed.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// `kl` (KL(FP ‖ quantized) in nats per image), `ce` (loss increase) or `top1` (drop in
    /// percentage points).
    pub metric: String,
    /// Every site's points, in candidate order.
    pub sites: BTreeMap<SiteId, Vec<SensitivityPoint>>,
}

/// TOML for `.toml` paths, JSON otherwise.
fn save_as<T: Serialize>(value: &T, path: &Path) -> Result<()> {
    let text = if is_toml(path) {
        toml::to_string_pretty(value)
            .map_err(|e| Error::serialize(path.display().to_string(), "TOML", e))?
    } else {
        crate::to_json(value, &path.display().to_string())?
    };
    crate::write_atomic(path, text.as_bytes())
}

fn load_from<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    if is_toml(path) {
        toml::from_str(&text).map_err(|e| Error::parse(path, e.message()))
    } else {
        serde_json::from_str(&text).map_err(|e| Error::parse(path, e))
    }
}

fn is_toml(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
}

impl ContributionScores {
    /// The sites from the largest score down (ties in site order).
    pub fn ranked(&self) -> Vec<(&SiteId, f64)> {
        let mut ranked: Vec<(&SiteId, f64)> = self.scores.iter().map(|(s, v)| (s, *v)).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        ranked
    }

    /// Writes TOML when the path ends in `.toml`, JSON otherwise (atomically).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        save_as(self, path.as_ref())
    }

    /// Reads a file written by [`ContributionScores::save`]; scores must be finite and >= 0.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let scores: Self = load_from(path)?;
        for (site, s) in &scores.scores {
            if !s.is_finite() || *s < 0.0 {
                return Err(Error::parse(
                    path,
                    format!("score of {site} is {s}; expected a finite value >= 0"),
                ));
            }
        }
        Ok(scores)
    }
}

impl SensitivityTable {
    /// Writes TOML when the path ends in `.toml`, JSON otherwise (atomically).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        save_as(self, path.as_ref())
    }

    /// Reads a file written by [`SensitivityTable::save`]; damages must be finite.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let table: Self = load_from(path)?;
        for (site, points) in &table.sites {
            if let Some(p) = points.iter().find(|p| !p.damage.is_finite()) {
                return Err(Error::parse(
                    path,
                    format!(
                        "damage of {site} at W{}A{} is {}",
                        p.bits.w_bits, p.bits.a_bits, p.damage
                    ),
                ));
            }
        }
        Ok(table)
    }

    /// Do LRP and this table rank the sites alike? Spearman's rank correlation between each
    /// site's contribution score and its damage at `bits`, over the sites both name; `None`
    /// when fewer than three sites are shared or either side is constant.
    pub fn rank_agreement(&self, scores: &ContributionScores, bits: SiteBits) -> Option<f64> {
        let (relevance, damage): (Vec<f64>, Vec<f64>) = self
            .sites
            .iter()
            .filter_map(|(site, points)| {
                let point = points.iter().find(|p| p.bits == bits)?;
                Some((*scores.scores.get(site)?, point.damage))
            })
            .unzip();
        (relevance.len() >= 3)
            .then(|| spearman(&relevance, &damage))
            .filter(|r| r.is_finite())
    }
}

/// Spearman's rank correlation of paired values: Pearson's correlation of their ranks, tied
/// values sharing their mean rank (as `scipy.stats.spearmanr`). Written here because it is a
/// dozen lines and the statistics crates that have it bring far more than this needs. NaN when
/// either side is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    fn ranks(v: &[f64]) -> Vec<f64> {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut ranks = vec![0.0; v.len()];
        let mut start = 0;
        while start < order.len() {
            let mut end = start + 1;
            while end < order.len() && v[order[end]] == v[order[start]] {
                end += 1;
            }
            // Ranks start at 1; ties get the mean of the ranks they span.
            let mean = (start + end + 1) as f64 / 2.0;
            for &i in &order[start..end] {
                ranks[i] = mean;
            }
            start = end;
        }
        ranks
    }
    assert_eq!(a.len(), b.len(), "spearman needs paired values");
    let (ra, rb) = (ranks(a), ranks(b));
    let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;
    let (ma, mb) = (mean(&ra), mean(&rb));
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - ma) * (y - mb);
        va += (x - ma).powi(2);
        vb += (y - mb).powi(2);
    }
    cov / (va * vb).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(w: u8, a: u8) -> SiteBits {
        SiteBits::new(w, a).unwrap()
    }

    #[test]
    fn round_trips_in_both_formats_and_rejects_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = SensitivityTable {
            metric: "kl".into(),
            ..Default::default()
        };
        table.sites.insert(
            SiteId::new("blocks.0.attn.qkv"),
            vec![
                SensitivityPoint {
                    bits: bits(2, 2),
                    damage: 0.5,
                },
                SensitivityPoint {
                    bits: bits(8, 8),
                    damage: 0.001,
                },
            ],
        );
        let mut scores = ContributionScores::default();
        scores.scores.insert(SiteId::new("head"), 0.25);
        for name in ["t.toml", "t.json"] {
            let p = dir.path().join(name);
            table.save(&p).unwrap();
            assert_eq!(SensitivityTable::load(&p).unwrap(), table);
            scores.save(&p).unwrap();
            assert_eq!(ContributionScores::load(&p).unwrap(), scores);
        }
        let p = dir.path().join("bad.json");
        std::fs::write(&p, r#"{"scores": {"head": -1.0}}"#).unwrap();
        let err = ContributionScores::load(&p).unwrap_err().to_string();
        assert!(err.contains("bad.json") && err.contains("head"), "{err}");
    }

    #[test]
    fn spearman_matches_scipy_with_and_without_ties() {
        // scipy.stats.spearmanr(a, b).statistic
        let r = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]);
        assert!((r - 0.8207826816681233).abs() < 1e-12, "{r}");
        let a = [0.3, 0.1, 0.2, 0.25, 0.05, 0.1];
        let b = [2.0, 0.5, 1.5, 1.0, 0.1, 0.7];
        assert!((spearman(&a, &b) - 0.9276336570439174).abs() < 1e-12);
        assert!((spearman(&a, &b.map(|v| -v)) + 0.9276336570439174).abs() < 1e-12);
        assert!(spearman(&a, &[1.0; 6]).is_nan());
    }

    #[test]
    fn rank_agreement_pairs_sites_by_id_at_the_asked_bits() {
        let mut table = SensitivityTable::default();
        let mut scores = ContributionScores::default();
        // Damage at W2A2 grows with relevance; at W8A8 it falls.
        for (i, site) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let i = i as f64;
            table.sites.insert(
                SiteId::new(site),
                vec![
                    SensitivityPoint {
                        bits: bits(2, 2),
                        damage: i,
                    },
                    SensitivityPoint {
                        bits: bits(8, 8),
                        damage: -i,
                    },
                ],
            );
            scores.scores.insert(SiteId::new(site), 0.1 * i);
        }
        scores.scores.insert(SiteId::new("not-in-table"), 1.0);
        assert_eq!(table.rank_agreement(&scores, bits(2, 2)), Some(1.0));
        assert_eq!(table.rank_agreement(&scores, bits(8, 8)), Some(-1.0));
        assert_eq!(table.rank_agreement(&scores, bits(4, 4)), None);
    }
}
