//! The (site, candidate) grid, its shards, and the table the allocator reads.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use mixq_core::{Error, Result, SensitivityPoint, SensitivityTable, SiteBits, SiteId};

use crate::{Metric, Record};

/// The whole grid in a fixed order: candidate-major, sites in forward order.
pub fn grid(sites: &[SiteId], candidates: &[SiteBits]) -> Vec<(SiteId, SiteBits)> {
    candidates
        .iter()
        .flat_map(|&b| sites.iter().map(move |s| (s.clone(), b)))
        .collect()
}

/// Slice `k` of `n` (1-based) of a grid: every n-th point, so slices take similar time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 1-based: which slice.
    pub index: usize,
    /// How many slices the grid is cut into.
    pub count: usize,
}

impl Shard {
    /// The whole grid.
    pub const WHOLE: Shard = Shard { index: 1, count: 1 };

    /// This slice's items: every `count`-th, starting at `index - 1`.
    pub fn select<T: Clone>(&self, items: &[T]) -> Vec<T> {
        items
            .iter()
            .enumerate()
            .filter(|(i, _)| i % self.count == self.index - 1)
            .map(|(_, t)| t.clone())
            .collect()
    }
}

impl FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::invalid("--shard", s, "expected k/n with 1 <= k <= n, e.g. 2/4");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The allocator's input from measured records, points in candidate order per site.
pub fn to_table<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    metric: Metric,
    meta: BTreeMap<String, String>,
) -> SensitivityTable {
    let mut sites: BTreeMap<SiteId, Vec<SensitivityPoint>> = BTreeMap::new();
    for r in records {
        sites
            .entry(r.site.clone())
            .or_default()
            .push(SensitivityPoint {
                bits: r.bits,
                damage: metric.of(&r.damage),
            });
    }
    for points in sites.values_mut() {
        points.sort_by_key(|p| (p.bits.w_bits, p.bits.a_bits));
    }
    SensitivityTable {
        meta,
        metric: metric.name().into(),
        sites,
    }
}

/// Joins shard tables into one. Every table must carry the same `fingerprint` (weights, data,
/// options) and metric; a point measured twice must agree.
pub fn merge_tables(tables: &[(impl AsRef<Path>, SensitivityTable)]) -> Result<SensitivityTable> {
    let Some((first_path, first)) = tables.first() else {
        return Err(Error::invalid(
            "--merge",
            "(none)",
            "give at least one table",
        ));
    };
    let key = |t: &SensitivityTable| t.meta.get("fingerprint").cloned().unwrap_or_default();
    let mut merged = SensitivityTable {
        meta: first.meta.clone(),
        metric: first.metric.clone(),
        sites: BTreeMap::new(),
    };
    merged.meta.remove("shard");
    for (path, table) in tables {
        let path = path.as_ref();
        if key(table).is_empty() || key(table) != key(first) || table.metric != first.metric {
            return Err(Error::parse(
                path,
                format!(
                    "made with different weights, data or options than {} (fingerprint {} / metric {} vs {} / {})",
                    first_path.as_ref().display(),
                    key(table),
                    table.metric,
                    key(first),
                    first.metric
                ),
            ));
        }
        for (site, points) in &table.sites {
            let into = merged.sites.entry(site.clone()).or_default();
            for p in points {
                match into.iter().find(|q| q.bits == p.bits) {
                    Some(q) if q.damage != p.damage => {
                        return Err(Error::parse(
                            path,
                            format!(
                                "{site} W{}A{} disagrees with an earlier shard",
                                p.bits.w_bits, p.bits.a_bits
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => into.push(*p),
                }
            }
            into.sort_by_key(|p| (p.bits.w_bits, p.bits.a_bits));
        }
    }
    Ok(merged)
}
