//! The allocation problem as the user states it: sites, candidates, scores, budgets, limits.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use mixq_core::{
    BitWidth, ContributionScores, Error, Result, SensitivityTable, SiteBits, SiteId, SiteInfo,
};
use serde::{Deserialize, Serialize};

/// What the objective rewards. See the crate docs for the exact cost of each criterion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// LRP-QViT: importance only (no sensitivity sweep needed).
    Lrp,
    /// Measured damage only (no LRP scores needed).
    Sensitivity,
    /// The default: measured damage weighted up by LRP importance.
    #[default]
    Mix,
}

impl Criterion {
    /// The name the CLI and plan files use (`lrp`, `sensitivity`, `mix`).
    pub fn name(self) -> &'static str {
        match self {
            Criterion::Lrp => "lrp",
            Criterion::Sensitivity => "sensitivity",
            Criterion::Mix => "mix",
        }
    }

    /// Whether it reads LRP contribution scores (`lrp` and `mix` do).
    pub fn needs_scores(self) -> bool {
        self != Criterion::Sensitivity
    }
}

impl std::fmt::Display for Criterion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Criterion {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "lrp" => Ok(Criterion::Lrp),
            "sensitivity" => Ok(Criterion::Sensitivity),
            "mix" => Ok(Criterion::Mix),
            _ => Err(Error::invalid(
                "preset",
                s,
                "expected one of lrp, sensitivity, mix",
            )),
        }
    }
}

/// Which resource a [`Budget`] caps. Each is an integer-valued sum over sites, so every solver
/// can check it exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BudgetKind {
    /// `sum_s params_s * w_s / sum_s params_s` (sites without weights do not count).
    AvgWeightBits,
    /// `sum_s macs_s * a_s / sum_s macs_s`: MAC-weighted, so an operand's bits count as often
    /// as the multipliers read it (consistent with [`BudgetKind::BitOps`]).
    AvgActBits,
    /// `sum_s params_s * w_s / 8` bytes of quantized weights (scales, zero points, biases and
    /// unquantized tensors such as LayerNorm are not counted).
    ModelBytes,
    /// `sum_s macs_s * w_s * a_s` bit-operations per image (for matmul sites `w_s` is the bits
    /// of the operand in the weight slot).
    BitOps,
}

impl BudgetKind {
    /// Every kind, in the order results report them.
    pub const ALL: [BudgetKind; 4] = [
        BudgetKind::AvgWeightBits,
        BudgetKind::AvgActBits,
        BudgetKind::ModelBytes,
        BudgetKind::BitOps,
    ];

    /// The option name: `avg-w-bits`, `avg-a-bits`, `model-bytes`, `bit-ops`.
    pub fn name(self) -> &'static str {
        match self {
            BudgetKind::AvgWeightBits => "avg-w-bits",
            BudgetKind::AvgActBits => "avg-a-bits",
            BudgetKind::ModelBytes => "model-bytes",
            BudgetKind::BitOps => "bit-ops",
        }
    }

    /// Words for messages.
    pub fn describe(self) -> &'static str {
        match self {
            BudgetKind::AvgWeightBits => "average weight bits",
            BudgetKind::AvgActBits => "MAC-weighted average activation bits",
            BudgetKind::ModelBytes => "model bytes",
            BudgetKind::BitOps => "bit-operations",
        }
    }
}

impl std::fmt::Display for BudgetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BudgetKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        BudgetKind::ALL
            .into_iter()
            .find(|k| k.name() == norm)
            .ok_or_else(|| {
                Error::invalid(
                    "budget kind",
                    s,
                    "expected one of avg-w-bits, avg-a-bits, model-bytes, bit-ops",
                )
            })
    }
}

/// An upper bound on one resource: `used(kind) <= value`, compared in f64 exactly as
/// [`crate::BudgetUse::used`] reports it, so a plan that is reported within budget is.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// The resource bounded.
    pub kind: BudgetKind,
    /// The upper bound, in the kind's unit.
    pub value: f64,
}

impl Budget {
    /// `used(kind) <= value`.
    pub fn new(kind: BudgetKind, value: f64) -> Self {
        Budget { kind, value }
    }
    /// Parameter-weighted average weight bits at most `value`.
    pub fn avg_w_bits(value: f64) -> Self {
        Self::new(BudgetKind::AvgWeightBits, value)
    }
    /// MAC-weighted average activation bits at most `value`.
    pub fn avg_a_bits(value: f64) -> Self {
        Self::new(BudgetKind::AvgActBits, value)
    }
    /// Weights of at most `value` bytes.
    pub fn model_bytes(value: f64) -> Self {
        Self::new(BudgetKind::ModelBytes, value)
    }
    /// At most `value` bit operations (MACs x w bits x a bits) per image.
    pub fn bit_ops(value: f64) -> Self {
        Self::new(BudgetKind::BitOps, value)
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} <= {}", self.kind, self.value)
    }
}

/// Per-site bounds on the bits a candidate may use (e.g. keep `head` at >= 8 bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitLimits {
    /// Fewest weight bits allowed.
    pub min_w_bits: Option<BitWidth>,
    /// Most weight bits allowed.
    pub max_w_bits: Option<BitWidth>,
    /// Fewest activation bits allowed.
    pub min_a_bits: Option<BitWidth>,
    /// Most activation bits allowed.
    pub max_a_bits: Option<BitWidth>,
}

impl BitLimits {
    /// Weights and activations at least `bits`.
    pub fn at_least(bits: BitWidth) -> Self {
        BitLimits {
            min_w_bits: Some(bits),
            min_a_bits: Some(bits),
            ..Default::default()
        }
    }

    /// Weights and activations at most `bits`.
    pub fn at_most(bits: BitWidth) -> Self {
        BitLimits {
            max_w_bits: Some(bits),
            max_a_bits: Some(bits),
            ..Default::default()
        }
    }

    /// Whether `bits` is within every bound.
    pub fn allows(&self, bits: SiteBits) -> bool {
        self.min_w_bits.is_none_or(|m| bits.w_bits >= m)
            && self.max_w_bits.is_none_or(|m| bits.w_bits <= m)
            && self.min_a_bits.is_none_or(|m| bits.a_bits >= m)
            && self.max_a_bits.is_none_or(|m| bits.a_bits <= m)
    }

    /// Both limits at once: the tighter bound of each.
    fn merge(self, other: BitLimits) -> BitLimits {
        BitLimits {
            min_w_bits: self.min_w_bits.max(other.min_w_bits),
            max_w_bits: min_opt(self.max_w_bits, other.max_w_bits),
            min_a_bits: self.min_a_bits.max(other.min_a_bits),
            max_a_bits: min_opt(self.max_a_bits, other.max_a_bits),
        }
    }
}

fn min_opt(a: Option<BitWidth>, b: Option<BitWidth>) -> Option<BitWidth> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `W4A8`-style label used in messages and plan metadata.
pub(crate) fn label(bits: SiteBits) -> String {
    format!("W{}A{}", bits.w_bits, bits.a_bits)
}

/// The default candidate set {(2,2), (3,3), (4,4), (6,6), (8,8)}.
pub fn default_candidates() -> Vec<SiteBits> {
    [2, 3, 4, 6, 8]
        .into_iter()
        .map(|b| {
            let b = BitWidth::new(b).expect("2..=8 are valid bit-widths");
            SiteBits {
                w_bits: b,
                a_bits: b,
            }
        })
        .collect()
}

/// Parses a candidate list such as `2,3,4,6,8` (each `b` means `(b, b)`), `4/8` or `w4a8`
/// (weights 4, activations 8). The result is sorted and deduplicated so that the same set
/// always gives the same plan.
pub fn parse_candidates(text: &str) -> Result<Vec<SiteBits>> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        out.push(parse_one(item).ok_or_else(|| {
            Error::invalid(
                "candidate",
                item,
                "expected bits `b` (weights and activations) or `W/A` such as `4/8` or `w4a8`, \
                 with bits between 2 and 8",
            )
        })??);
    }
    if out.is_empty() {
        return Err(Error::invalid(
            "candidates",
            format!("'{text}'"),
            "no candidate given",
        ));
    }
    out.sort_by_key(|b| (b.w_bits, b.a_bits));
    out.dedup();
    Ok(out)
}

fn parse_one(item: &str) -> Option<Result<SiteBits>> {
    let lower = item.to_ascii_lowercase();
    let (w, a) = if let Some((w, a)) = lower.split_once('/') {
        (w.trim().to_string(), a.trim().to_string())
    } else if let Some(rest) = lower.strip_prefix('w') {
        let (w, a) = rest.split_once('a')?;
        (w.to_string(), a.to_string())
    } else {
        (lower.clone(), lower)
    };
    let (w, a) = (w.parse::<u8>().ok()?, a.parse::<u8>().ok()?);
    Some(BitWidth::new(w).and_then(|w| {
        Ok(SiteBits {
            w_bits: w,
            a_bits: BitWidth::new(a)?,
        })
    }))
}

/// Everything the solvers need. Build it with [`Problem::from_tables`] (or
/// [`Problem::from_files`]), then set criterion, budgets and limits with the `with_*` methods.
#[derive(Clone, Debug)]
pub struct Problem {
    pub(crate) sites: Vec<SiteInfo>,
    pub(crate) candidates: Vec<SiteBits>,
    /// Raw contribution scores aligned with `sites`.
    pub(crate) scores: Option<Vec<f64>>,
    /// Damage per site and candidate (None: not measured; an error only if it is needed).
    pub(crate) damage: Option<Vec<Vec<Option<f64>>>>,
    pub(crate) metric: Option<String>,
    pub(crate) criterion: Criterion,
    pub(crate) lambda: f64,
    pub(crate) budgets: Vec<Budget>,
    pub(crate) limits: Vec<BitLimits>,
    pub(crate) time_limit: Option<Duration>,
}

impl Problem {
    /// Default MILP time limit: far above the DeiT-S solve time, low enough that a pathological
    /// instance still returns its best plan.
    pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(60);

    /// Checks that scores and sensitivity table cover exactly the given sites (each is only
    /// needed by the criteria that use it, so either may be `None`). A sensitivity point missing
    /// for a candidate is reported by [`crate::allocate`] only if a site could use it.
    pub fn from_tables(
        sites: &[SiteInfo],
        scores: Option<&ContributionScores>,
        sensitivity: Option<&SensitivityTable>,
        candidates: &[SiteBits],
    ) -> Result<Self> {
        if sites.is_empty() {
            return Err(Error::invalid("sites", "[]", "no site to allocate bits to"));
        }
        let mut index = BTreeMap::new();
        for (i, s) in sites.iter().enumerate() {
            if index.insert(&s.id, i).is_some() {
                return Err(Error::invalid(
                    "site",
                    &s.id,
                    "listed twice in the site list",
                ));
            }
        }
        let mut cands = candidates.to_vec();
        if cands.is_empty() {
            return Err(Error::invalid("candidates", "[]", "no candidate given"));
        }
        cands.sort_by_key(|b| (b.w_bits, b.a_bits));
        cands.dedup();

        let unknown = |site: &SiteId| Error::UnknownSite {
            site: site.to_string(),
            count: sites.len(),
            example: sites[0].id.to_string(),
        };

        let scores = match scores {
            None => None,
            Some(table) => {
                if let Some(extra) = table.scores.keys().find(|k| !index.contains_key(k)) {
                    return Err(unknown(extra));
                }
                let mut out = Vec::with_capacity(sites.len());
                for s in sites {
                    let v = *table.scores.get(&s.id).ok_or_else(|| {
                        Error::invalid(
                            "contribution scores",
                            &s.id,
                            "no score for this site; the scores must cover every site",
                        )
                    })?;
                    if !v.is_finite() || v < 0.0 {
                        return Err(Error::invalid(
                            format!("contribution score of {}", s.id),
                            v,
                            "expected a finite value >= 0",
                        ));
                    }
                    out.push(v);
                }
                Some(out)
            }
        };

        let damage = match sensitivity {
            None => None,
            Some(table) => {
                if let Some(extra) = table.sites.keys().find(|k| !index.contains_key(k)) {
                    return Err(unknown(extra));
                }
                let mut out = Vec::with_capacity(sites.len());
                for s in sites {
                    let points = table.sites.get(&s.id).ok_or_else(|| {
                        Error::invalid(
                            "sensitivity table",
                            &s.id,
                            "no measurement for this site; the table must cover every site",
                        )
                    })?;
                    let mut row = vec![None; cands.len()];
                    for p in points {
                        if !p.damage.is_finite() {
                            return Err(Error::invalid(
                                format!("damage of {} at {}", s.id, label(p.bits)),
                                p.damage,
                                "expected a finite value",
                            ));
                        }
                        let Some(c) = cands.iter().position(|c| *c == p.bits) else {
                            continue;
                        };
                        match row[c] {
                            Some(old) if old != p.damage => {
                                return Err(Error::invalid(
                                    format!("damage of {} at {}", s.id, label(p.bits)),
                                    p.damage,
                                    format!("measured twice with different values ({old})"),
                                ));
                            }
                            _ => row[c] = Some(p.damage),
                        }
                    }
                    out.push(row);
                }
                Some(out)
            }
        };

        Ok(Problem {
            sites: sites.to_vec(),
            candidates: cands,
            scores,
            damage,
            metric: sensitivity.map(|t| t.metric.clone()),
            criterion: Criterion::default(),
            lambda: 1.0,
            budgets: Vec::new(),
            limits: vec![BitLimits::default(); sites.len()],
            time_limit: Some(Self::DEFAULT_TIME_LIMIT),
        })
    }

    /// [`Problem::from_tables`] with the score files read from disk (TOML or JSON by extension).
    pub fn from_files(
        sites: &[SiteInfo],
        scores: Option<&Path>,
        sensitivity: Option<&Path>,
        candidates: &[SiteBits],
    ) -> Result<Self> {
        let scores = scores.map(ContributionScores::load).transpose()?;
        let sensitivity = sensitivity.map(SensitivityTable::load).transpose()?;
        Self::from_tables(sites, scores.as_ref(), sensitivity.as_ref(), candidates)
    }

    /// Objective criterion (default [`Criterion::Mix`]).
    pub fn with_criterion(mut self, criterion: Criterion) -> Self {
        self.criterion = criterion;
        self
    }

    /// Importance weight of the `mix` criterion (default 1; must be finite and >= 0).
    pub fn with_lambda(mut self, lambda: f64) -> Self {
        self.lambda = lambda;
        self
    }

    /// Adds a budget; a second budget of the same kind replaces the first.
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budgets.retain(|b| b.kind != budget.kind);
        self.budgets.push(budget);
        self.budgets.sort_by_key(|b| b.kind);
        self
    }

    /// Restricts one site's bits; limits given twice for a site are intersected.
    pub fn with_limit(mut self, site: &str, limits: BitLimits) -> Result<Self> {
        let i = self
            .sites
            .iter()
            .position(|s| s.id.as_str() == site)
            .ok_or_else(|| Error::UnknownSite {
                site: site.to_string(),
                count: self.sites.len(),
                example: self.sites[0].id.to_string(),
            })?;
        self.limits[i] = self.limits[i].merge(limits);
        Ok(self)
    }

    /// MILP wall-clock limit (`None`: unlimited). When it fires, the best plan found so far is
    /// returned with [`crate::SolveStatus::TimeLimit`].
    pub fn with_time_limit(mut self, limit: Option<Duration>) -> Self {
        self.time_limit = limit;
        self
    }

    /// The sites to allocate, in forward order.
    pub fn sites(&self) -> &[SiteInfo] {
        &self.sites
    }
    /// The (weight, activation) bits every site may take.
    pub fn candidates(&self) -> &[SiteBits] {
        &self.candidates
    }
    /// The bounds the plan must meet.
    pub fn budgets(&self) -> &[Budget] {
        &self.budgets
    }
    /// What the objective rewards.
    pub fn criterion(&self) -> Criterion {
        self.criterion
    }
    /// Weight of importance in the `mix` cost.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }
}
