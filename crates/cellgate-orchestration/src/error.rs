//! The crate's error type.

use cellgate_kernel::McpError;
use cellgate_store::StoreError;

use crate::workflow::ValidationErrors;

/// Everything the engine can fail with. Each variant maps to one JSON-RPC
/// error (see [`OrchestrationError::to_mcp`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrchestrationError {
    /// An argument was rejected; `field` names it.
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },

    /// A workflow definition does not validate; every problem with its
    /// location.
    #[error("{0}")]
    Definition(ValidationErrors),

    /// No such task, workflow, checkpoint or node in the caller's tenant.
    #[error("{kind} `{id}` not found")]
    NotFound { kind: &'static str, id: String },

    /// The thing exists but is in a state that does not allow the action.
    #[error("{0}")]
    Conflict(String),

    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OrchestrationError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        OrchestrationError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The JSON-RPC error a client sees.
    pub fn to_mcp(&self) -> McpError {
        match self {
            OrchestrationError::Invalid { .. } | OrchestrationError::NotFound { .. } => {
                McpError::invalid_params(self.to_string())
            }
            OrchestrationError::Definition(errors) => McpError::invalid_params(self.to_string())
                .with_data(serde_json::json!({ "errors": errors.0 })),
            OrchestrationError::Conflict(_) => {
                McpError::new(cellgate_kernel::codes::SERVER_ERROR, self.to_string())
            }
            OrchestrationError::Store(StoreError::Invalid { .. }) => {
                McpError::invalid_params(self.to_string())
            }
            OrchestrationError::Store(StoreError::Conflict { .. }) => {
                McpError::new(cellgate_kernel::codes::SERVER_ERROR, self.to_string())
            }
            OrchestrationError::Store(e) => {
                tracing::error!(error = %e, "orchestration store failure");
                McpError::internal("the orchestration store failed; see the server log")
            }
        }
    }
}
