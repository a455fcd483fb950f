//! Statistics of the content filter, per stage: items handled and time
//! spent, findings per category, actions taken. Every counter is created up
//! front so that counting costs one atomic add.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::Action;
use super::detect::Category;

/// The four stages of the filter, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterStage {
    /// Concept extraction: strings scanned for candidates.
    Extract,
    /// Classification: candidates confirmed or dropped.
    Classify,
    /// Policy enforcement: findings given their category's action.
    Enforce,
    /// Tagging: concept tags recorded.
    Tag,
}

impl FilterStage {
    pub const ALL: [FilterStage; 4] = [
        FilterStage::Extract,
        FilterStage::Classify,
        FilterStage::Enforce,
        FilterStage::Tag,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FilterStage::Extract => "extract",
            FilterStage::Classify => "classify",
            FilterStage::Enforce => "enforce",
            FilterStage::Tag => "tag",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabel {
    category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: &'static str,
}

type Seconds = Counter<f64, AtomicU64>;

/// The filter's counters. Shared by the stage (`ContentFilterStage::stats`).
#[derive(Debug)]
pub struct FilterStats {
    items: Family<StageLabel, Counter>,
    seconds: Family<StageLabel, Seconds>,
    findings: Family<CategoryLabel, Counter>,
    actions: Family<ActionLabel, Counter>,
    items_c: [Counter; 4],
    seconds_c: [Seconds; 4],
    findings_c: [Counter; 7],
    actions_c: [Counter; 4],
}

/// One stage in a [`FilterStatsSnapshot`].
#[derive(Debug, Clone, PartialEq)]
pub struct StageStats {
    pub stage: &'static str,
    /// Strings scanned (extract), candidates examined (classify), findings
    /// enforced (enforce), tags recorded (tag).
    pub items: u64,
    pub time: Duration,
}

/// The counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterStatsSnapshot {
    pub stages: Vec<StageStats>,
    /// Findings per category (`email`, `card`, …), every category listed.
    pub findings: Vec<(&'static str, u64)>,
    /// Findings handled per action (`allow`, `tag`, `redact`, `block`).
    pub actions: Vec<(&'static str, u64)>,
}

impl FilterStatsSnapshot {
    pub fn stage(&self, stage: FilterStage) -> &StageStats {
        &self.stages[stage as usize]
    }
    pub fn findings_of(&self, category: &str) -> u64 {
        self.findings
            .iter()
            .find(|(c, _)| *c == category)
            .map_or(0, |(_, n)| *n)
    }
    pub fn actions_of(&self, action: &str) -> u64 {
        self.actions
            .iter()
            .find(|(a, _)| *a == action)
            .map_or(0, |(_, n)| *n)
    }
}

impl Default for FilterStats {
    fn default() -> Self {
        Self::new()
    }
}

impl FilterStats {
    pub fn new() -> Self {
        let items = Family::<StageLabel, Counter>::default();
        let seconds = Family::<StageLabel, Seconds>::default();
        let findings = Family::<CategoryLabel, Counter>::default();
        let actions = Family::<ActionLabel, Counter>::default();
        let items_c = FilterStage::ALL.map(|s| {
            items
                .get_or_create(&StageLabel { stage: s.as_str() })
                .clone()
        });
        let seconds_c = FilterStage::ALL.map(|s| {
            seconds
                .get_or_create(&StageLabel { stage: s.as_str() })
                .clone()
        });
        let findings_c = Category::ALL.map(|c| {
            findings
                .get_or_create(&CategoryLabel {
                    category: c.as_str(),
                })
                .clone()
        });
        let actions_c = Action::ALL.map(|a| {
            actions
                .get_or_create(&ActionLabel { action: a.as_str() })
                .clone()
        });
        Self {
            items,
            seconds,
            findings,
            actions,
            items_c,
            seconds_c,
            findings_c,
            actions_c,
        }
    }

    /// Registers the counters (names get the registry's prefix, such as
    /// `cellgate_`): `filter_stage_items_total{stage}`,
    /// `filter_stage_seconds_total{stage}`, `filter_findings_total{category}`,
    /// `filter_actions_total{action}`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "filter_stage_items",
            "Items handled by each content-filter stage (strings, candidates, findings, tags)",
            self.items.clone(),
        );
        registry.register(
            "filter_stage_seconds",
            "Time spent in each content-filter stage",
            self.seconds.clone(),
        );
        registry.register(
            "filter_findings",
            "Content-filter findings by detector category",
            self.findings.clone(),
        );
        registry.register(
            "filter_actions",
            "Content-filter findings by the action taken",
            self.actions.clone(),
        );
    }

    pub fn snapshot(&self) -> FilterStatsSnapshot {
        FilterStatsSnapshot {
            stages: FilterStage::ALL
                .iter()
                .map(|&s| StageStats {
                    stage: s.as_str(),
                    items: self.items_c[s as usize].get(),
                    time: Duration::from_secs_f64(self.seconds_c[s as usize].get().max(0.0)),
                })
                .collect(),
            findings: Category::ALL
                .iter()
                .map(|&c| (c.as_str(), self.findings_c[c.index()].get()))
                .collect(),
            actions: Action::ALL
                .iter()
                .map(|&a| (a.as_str(), self.actions_c[a as usize].get()))
                .collect(),
        }
    }

    pub(crate) fn stage(&self, stage: FilterStage, items: u64, time: Duration) {
        if items > 0 {
            self.items_c[stage as usize].inc_by(items);
        }
        self.seconds_c[stage as usize].inc_by(time.as_secs_f64());
    }

    pub(crate) fn finding(&self, category: Category, action: Action) {
        self.findings_c[category.index()].inc();
        self.actions_c[action as usize].inc();
    }
}
