//! `[audit]`: the tamper-evident log. Owned by cellgate-audit.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diagnostic::Problem;

/// The hash-chained audit log every call is appended to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Append every call to the audit chain.
    pub enabled: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl AuditConfig {
    pub(crate) fn validate(&self, _p: &mut Vec<Problem>) {}
}
