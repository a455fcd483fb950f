//! Errors of the audit log.

use cellgate_kernel::{McpError, codes};
use cellgate_store::StoreError;

/// Why the audit log would not take an entry. The call (or admin action)
/// that needed it is refused: audit fails closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The queue stayed full for the whole back-pressure wait (or at once,
    /// with the `refuse` policy).
    Full,
    /// The writer's last attempt to store a batch failed; it is retrying.
    Unavailable,
    /// The writer has stopped (shut down or crashed).
    Closed,
}

impl Refusal {
    /// The metric label: `full`, `unavailable` or `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Full => "full",
            Refusal::Unavailable => "unavailable",
            Refusal::Closed => "closed",
        }
    }

    /// The error a refused call gets: `-32000` (server error) naming the
    /// audit layer, so a client can tell it from a refusal by policy.
    pub fn to_mcp_error(self) -> McpError {
        let why = match self {
            Refusal::Full => "the audit log is saturated",
            Refusal::Unavailable => "the audit log cannot store entries right now",
            Refusal::Closed => "the audit log has stopped",
        };
        McpError::new(
            codes::SERVER_ERROR,
            format!("{why}; calls that cannot be audited are refused, try again later"),
        )
        .with_data(serde_json::json!({ "layer": "audit", "reason": self.as_str() }))
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the audit crate can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The audit log refused to take the entry.
    #[error("the audit log refused the entry ({0})")]
    Refused(Refusal),
    /// The writer stopped before confirming the entry.
    #[error("the audit writer stopped before the entry was confirmed")]
    WriterStopped,
    /// The chain head row holds something that is not a hash.
    #[error("the audit chain head is unusable: {0}")]
    BadHead(String),
    /// Writing an export failed.
    #[error("writing the audit export: {0}")]
    Io(#[from] std::io::Error),
    /// A time given for an export did not parse.
    #[error("invalid time {input:?}: {reason}")]
    InvalidTime { input: String, reason: String },
}
