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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BitWidth;

    fn bits(w: u8, a: u8) -> SiteBits {
        SiteBits {
            w_bits: BitWidth::new(w).unwrap(),
            a_bits: BitWidth::new(a).unwrap(),
        }
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
}
