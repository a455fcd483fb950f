use cellgate_store::{SealError, StoreError};

use crate::analysis::AnalysisReport;
use crate::manifest::ManifestErrors;
use crate::registry::CellState;
use crate::sandbox::RunError;
use crate::signing::TrustError;

/// Why a cell operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CellError {
    #[error("invalid manifest: {0}")]
    Manifest(#[from] ManifestErrors),
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("refused: {0}")]
    Trust(#[from] TrustError),
    #[error("module refused by static analysis: {0}")]
    Analysis(Box<AnalysisReport>),
    #[error("cell `{0}` is not installed")]
    NotInstalled(String),
    #[error("cell `{0}` is already installed (uninstall it first, or install with replace)")]
    AlreadyInstalled(String),
    #[error("cell `{name}` is {state}: cannot {action}")]
    WrongState {
        name: String,
        state: CellState,
        action: &'static str,
    },
    #[error("cell `{cell}` has no tool `{tool}`")]
    UnknownTool { cell: String, tool: String },
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("sealed values: {0}")]
    Seal(#[from] SealError),
    #[error("{action} {path}: {error}")]
    Io {
        action: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error("cannot run the module: {0}")]
    Compile(String),
}

impl CellError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        CellError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(action: &'static str, path: &std::path::Path, error: std::io::Error) -> Self {
        CellError::Io {
            action,
            path: path.display().to_string(),
            error,
        }
    }
}
