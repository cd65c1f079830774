use serde::{Deserialize, Serialize};

/// Stable name of one quantizable place in a model: its timm module path
/// (`blocks.3.attn.qkv`, `layers.1.downsample.reduction`, `blocks.3.attn.matmul_qk`).
///
/// Using timm's paths means a plan written for a model can be read next to timm's
/// `model.named_modules()` and the state dict without a translation table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SiteId(String);

impl SiteId {
    /// Site id from a timm module path.
    pub fn new(path: impl Into<String>) -> Self {
        SiteId(path.into())
    }

    /// The timm module path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A child path: `SiteId::new("blocks.0").join("attn")` is `blocks.0.attn`.
    pub fn join(&self, child: &str) -> SiteId {
        if self.0.is_empty() {
            SiteId::new(child)
        } else {
            SiteId(format!("{}.{child}", self.0))
        }
    }
}

impl std::fmt::Display for SiteId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of computation a site is; it decides which quantizers the site owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteKind {
    /// A linear layer: a weight quantizer and an input-activation quantizer.
    Linear,
    /// A convolution (the patch embedding): weight and input quantizers.
    Conv,
    /// `q @ k^T` in attention: one quantizer per operand.
    MatMulQk,
    /// `softmax(..) @ v` in attention: the probability operand uses a log quantizer.
    MatMulAv,
}

impl SiteKind {
    /// Whether the site has a weight tensor (and so counts towards model size).
    pub fn has_weights(self) -> bool {
        matches!(self, SiteKind::Linear | SiteKind::Conv)
    }
}

/// A site with the figures budgets are computed from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteInfo {
    /// The site's module path.
    pub id: SiteId,
    /// Linear, conv or attention matmul.
    pub kind: SiteKind,
    /// Weight elements quantized at this site (bias excluded; 0 for matmuls).
    pub params: u64,
    /// Multiply-accumulates per image.
    pub macs: u64,
}

/// Totals over a model's sites.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteTotals {
    /// Sites counted.
    pub sites: usize,
    /// Quantized weight elements of all sites.
    pub params: u64,
    /// Multiply-accumulates per image of all sites.
    pub macs: u64,
}

/// The ids of `sites`, in their order (forward order for a model's sites).
pub fn site_ids(sites: &[SiteInfo]) -> Vec<SiteId> {
    sites.iter().map(|s| s.id.clone()).collect()
}

/// Adds up parameters and MACs over sites.
pub fn summarize_sites(sites: &[SiteInfo]) -> SiteTotals {
    sites.iter().fold(SiteTotals::default(), |t, s| SiteTotals {
        sites: t.sites + 1,
        params: t.params + s.params,
        macs: t.macs + s.macs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_builds_timm_paths() {
        assert_eq!(SiteId::new("").join("head").as_str(), "head");
        assert_eq!(
            SiteId::new("blocks.1").join("attn").join("qkv").as_str(),
            "blocks.1.attn.qkv"
        );
    }

    #[test]
    fn totals_add_up() {
        let s = |id: &str, params, macs| SiteInfo {
            id: SiteId::new(id),
            kind: SiteKind::Linear,
            params,
            macs,
        };
        let t = summarize_sites(&[s("a", 3, 10), s("b", 4, 20)]);
        assert_eq!(
            t,
            SiteTotals {
                sites: 2,
                params: 7,
                macs: 30
            }
        );
    }
}
