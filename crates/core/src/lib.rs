//! # mixq-core
//!
//! The vocabulary every mixq crate speaks: where a model can be quantized ([`SiteId`],
//! [`SiteKind`], [`SiteInfo`]), with how many bits ([`BitWidth`], [`SiteBits`], [`BitPlan`]),
//! and what went wrong ([`Error`]). It has no tensor library dependency so that tools which only
//! read or write plans (the allocator, a notebook, a CI check) stay light.
//!
//! ```
//! use mixq_core::{BitPlan, BitWidth, SiteBits, SiteId};
//!
//! let mut plan = BitPlan::default();
//! plan.sites.insert(
//!     SiteId::new("blocks.0.attn.qkv"),
//!     SiteBits { w_bits: BitWidth::new(4)?, a_bits: BitWidth::new(8)? },
//! );
//! let text = plan.to_toml()?;
//! assert_eq!(BitPlan::from_toml(&text, "plan.toml")?, plan);
//! # Ok::<(), mixq_core::Error>(())
//! ```

#![warn(missing_docs)]

mod error;
mod fsutil;
mod plan;
mod scores;
mod site;

pub use error::{Error, Result};

/// `value` as pretty-printed JSON; `what` names it in the error.
pub fn to_json<T: serde::Serialize + ?Sized>(value: &T, what: &str) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::serialize(what, "JSON", e))
}
pub use fsutil::{RunDir, utc_stamp, write_atomic};
pub use plan::{BitPlan, BitWidth, SiteBits};
pub use scores::{ContributionScores, SensitivityPoint, SensitivityTable, spearman};
pub use site::{SiteId, SiteInfo, SiteKind, SiteTotals, site_ids, summarize_sites};

#[cfg(test)]
mod tests {
    #[test]
    fn a_value_json_cannot_hold_is_a_serialization_error_naming_it() {
        let map = std::collections::BTreeMap::from([((1u8, 2u8), 3u8)]);
        let err = super::to_json(&map, "results").unwrap_err();
        assert!(matches!(err, super::Error::Serialize { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.starts_with("cannot write results as JSON: "), "{text}");
        assert_eq!(super::to_json(&[1, 2], "x").unwrap(), "[\n  1,\n  2\n]");
    }
}
