//! The one error type of the crate.

use sqlx::migrate::MigrateError;

use crate::TenantId;

/// Everything the store can fail with.
///
/// Variants that wrap a lower-level error put its text into the message
/// rather than exposing it as [`std::error::Error::source`]: callers log
/// these with `%e` and readiness probes show `to_string()`, so the cause must
/// be in the top-level message; not repeating it as a source keeps `{:#}`
/// chains from printing it twice. The wrapped error stays reachable through
/// the public field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An argument was rejected before touching the database.
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },

    /// A uniqueness or optimistic-version expectation did not hold.
    #[error("conflict: {message}")]
    Conflict { message: String },

    /// A write named a tenant that is not in the registry.
    #[error("tenant `{tenant}` does not exist")]
    UnknownTenant { tenant: TenantId },

    /// Filesystem work around opening the store failed.
    #[error("{action} {location}: {error}")]
    Io {
        action: &'static str,
        location: String,
        error: std::io::Error,
    },

    /// Connecting to the database failed. `location` is a path or a URL with
    /// the password hidden.
    #[error("{action} {location}: {error}")]
    Connect {
        action: &'static str,
        location: String,
        error: sqlx::Error,
    },

    /// Applying the embedded schema migrations failed.
    #[error("migrating the {backend} store at {location}: {error}")]
    Migrate {
        backend: &'static str,
        location: String,
        error: MigrateError,
    },

    /// A query failed.
    #[error("{backend} store: {operation}: {error}")]
    Database {
        backend: &'static str,
        operation: &'static str,
        error: sqlx::Error,
    },
}

impl StoreError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        StoreError::Invalid {
            field,
            message: message.into(),
        }
    }
}
