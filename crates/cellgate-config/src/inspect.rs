//! `[inspect]` and `[filter]`: what calls may contain. Owned by cellgate-inspect.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diagnostic::Problem;

/// Inspection of tool arguments and outputs: schema validation, size and
/// depth limits, scored threat rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct InspectConfig {
    /// Inspect calls at all.
    pub enabled: bool,
}

impl Default for InspectConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl InspectConfig {
    pub(crate) fn validate(&self, _p: &mut Vec<Problem>) {}
}

/// The content filter (concept extraction, classification, policy, tagging)
/// applied to inputs and outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// Filter calls at all.
    pub enabled: bool,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl FilterConfig {
    pub(crate) fn validate(&self, _p: &mut Vec<Problem>) {}
}
