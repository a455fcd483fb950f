//! What each layer decided about a call. Layers append; the audit layer
//! writes the whole trail into the call's audit entry, so a reviewer can see
//! why a call was allowed, changed or refused.

use std::sync::Mutex;

use serde::Serialize;

/// The outcome of one layer for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Let the call through unchanged.
    Allow,
    /// Refused the call.
    Deny,
    /// Let it through and noted something (a low threat score, a concept tag).
    Flag,
    /// Changed the call or its result (redaction).
    Modify,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub layer: &'static str,
    pub verdict: Verdict,
    /// A short reason; never secrets or argument values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The decisions of one call, in the order the layers made them.
#[derive(Debug, Default)]
pub struct DecisionTrail {
    entries: Mutex<Vec<Decision>>,
}

impl DecisionTrail {
    pub fn record(&self, layer: &'static str, verdict: Verdict, detail: Option<String>) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Decision {
                layer,
                verdict,
                detail,
            });
    }

    pub fn allow(&self, layer: &'static str) {
        self.record(layer, Verdict::Allow, None);
    }

    pub fn deny(&self, layer: &'static str, detail: impl Into<String>) {
        self.record(layer, Verdict::Deny, Some(detail.into()));
    }

    pub fn snapshot(&self) -> Vec<Decision> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
