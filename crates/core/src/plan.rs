use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result, SiteId};

/// A quantizer bit-width, 2 to 8 bits inclusive.
///
/// One bit cannot hold an asymmetric range with a zero point and more than 8 bits buys nothing
/// for the int8 kernels mixq targets, so both are rejected where the value enters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct BitWidth(u8);

impl BitWidth {
    /// The fewest bits a site may have.
    pub const MIN: u8 = 2;
    /// The most bits a site may have.
    pub const MAX: u8 = 8;

    /// A bit-width, or an error naming the value when it is outside 2..=8.
    pub fn new(bits: u8) -> Result<Self> {
        if (Self::MIN..=Self::MAX).contains(&bits) {
            Ok(BitWidth(bits))
        } else {
            Err(Error::invalid(
                "bits",
                bits,
                format!("must be between {} and {}", Self::MIN, Self::MAX),
            ))
        }
    }

    /// The number of bits.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for BitWidth {
    type Error = Error;
    fn try_from(v: u8) -> Result<Self> {
        BitWidth::new(v)
    }
}

impl From<BitWidth> for u8 {
    fn from(b: BitWidth) -> u8 {
        b.0
    }
}

impl std::fmt::Display for BitWidth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Weight and activation bits of one site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SiteBits {
    /// Weight bits.
    pub w_bits: BitWidth,
    /// Activation bits (both operands of a matmul site).
    pub a_bits: BitWidth,
}

impl SiteBits {
    /// `w_bits` and `a_bits`, each checked as a [`BitWidth`].
    pub fn new(w_bits: u8, a_bits: u8) -> Result<Self> {
        Ok(Self {
            w_bits: BitWidth::new(w_bits)?,
            a_bits: BitWidth::new(a_bits)?,
        })
    }
}

/// The hand-off between allocator, PTQ, QAT and the integer engine: bits per site.
///
/// Stored as TOML so a user can read and edit it; sites are kept sorted so the same plan is
/// always the same file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BitPlan {
    /// Free-form provenance (model, command, seed).
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Bits of every site.
    pub sites: BTreeMap<SiteId, SiteBits>,
}

impl BitPlan {
    /// The plan as TOML (the format of `plan.toml`).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::serialize("bit plan", "TOML", e))
    }

    /// Parses a plan; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: impl AsRef<Path>) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::parse(origin.as_ref(), e.message()))
    }

    /// Reads a plan file; errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text, path)
    }

    /// Writes the plan atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::write_atomic(path, self.to_toml()?.as_bytes())
    }

    /// Checks that every site of the plan exists in `known` (the model's sites).
    pub fn check_sites<'a>(
        &self,
        known: impl IntoIterator<Item = &'a SiteId> + Clone,
    ) -> Result<()> {
        for site in self.sites.keys() {
            if !known.clone().into_iter().any(|k| k == site) {
                let count = known.clone().into_iter().count();
                let example = known
                    .clone()
                    .into_iter()
                    .next()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                return Err(Error::UnknownSite {
                    site: site.to_string(),
                    count,
                    example,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_width_range() {
        for b in 2..=8 {
            assert_eq!(BitWidth::new(b).unwrap().get(), b);
        }
        for b in [0, 1, 9, 16, 255] {
            let err = BitWidth::new(b).unwrap_err().to_string();
            assert!(err.contains(&format!("bits = {b}")), "{err}");
        }
    }

    #[test]
    fn plan_rejects_out_of_range_bits_naming_the_file() {
        let text = "[sites.head]\nw_bits = 9\na_bits = 8\n";
        let err = BitPlan::from_toml(text, "my-plan.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("my-plan.toml") && err.contains('9'), "{err}");
    }

    #[test]
    fn plan_round_trips_and_checks_sites() {
        let mut plan = BitPlan::default();
        plan.meta.insert("model".into(), "deit-s".into());
        let bits = SiteBits {
            w_bits: BitWidth::new(4).unwrap(),
            a_bits: BitWidth::new(6).unwrap(),
        };
        plan.sites.insert(SiteId::new("blocks.0.mlp.fc1"), bits);
        let text = plan.to_toml().unwrap();
        assert!(text.contains("[sites.\"blocks.0.mlp.fc1\"]"), "{text}");
        assert_eq!(BitPlan::from_toml(&text, "x").unwrap(), plan);

        let known = [SiteId::new("blocks.0.mlp.fc1"), SiteId::new("head")];
        plan.check_sites(known.iter()).unwrap();
        let err = plan.check_sites(known[1..].iter()).unwrap_err().to_string();
        assert!(err.contains("blocks.0.mlp.fc1"), "{err}");
    }
}
