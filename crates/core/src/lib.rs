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

mod error;
mod fsutil;
mod plan;
mod scores;
mod site;

pub use error::{Error, Result};
pub use fsutil::{RunDir, utc_stamp, write_atomic};
pub use plan::{BitPlan, BitWidth, SiteBits};
pub use scores::{ContributionScores, SensitivityPoint, SensitivityTable};
pub use site::{SiteId, SiteInfo, SiteKind, SiteTotals, summarize_sites};
