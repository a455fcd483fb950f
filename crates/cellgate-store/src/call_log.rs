//! The per-call log written by the metering layer.

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, call_record_from_row, is_foreign_key_violation, on_backend};
use crate::documents::clamp_limit;
use crate::{StoreError, TenantId};

/// Longest accepted text field of a [`CallRecord`], in bytes. Generous for
/// method and tool names; stops a runaway value from bloating the log.
pub const CALL_TEXT_MAX_BYTES: usize = 4096;

/// Rows per INSERT statement. 256 rows × 8 parameters stays well under the
/// bind-parameter limits of both backends (SQLite 32766, PostgreSQL 65535).
const ROWS_PER_STATEMENT: usize = 256;

/// One call through the pipeline, as the metering layer records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    pub principal: String,
    pub method: String,
    pub target: Option<String>,
    pub outcome: String,
    pub error_code: Option<i64>,
    pub latency_us: i64,
    pub at_ms: i64,
}

/// The call log of one tenant. Obtainable only through
/// [`crate::TenantScope::call_log`].
#[derive(Clone)]
pub struct CallLog {
    pub(crate) backend: Backend,
    pub(crate) tenant: TenantId,
}

const RECENT: &str = "SELECT principal, method, target, outcome, error_code, latency_us, at_ms FROM call_log \
     WHERE tenant_id = $1 ORDER BY at_ms DESC, id DESC LIMIT $2";

const COUNT: &str = "SELECT COUNT(*) FROM call_log WHERE tenant_id = $1";

impl CallLog {
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Appends all records in one transaction: either the whole batch is
    /// stored or none of it, and the commit cost is paid once per batch.
    pub async fn append_batch(&self, records: &[CallRecord]) -> Result<(), StoreError> {
        for (i, r) in records.iter().enumerate() {
            validate_record(i, r)?;
        }
        if records.is_empty() {
            return Ok(());
        }
        let tenant = self.tenant.as_str();
        let stored = on_backend!(&self.backend, |pool, Db| {
            async {
                let mut tx = pool.begin().await?;
                for chunk in crate::backend::statement_sized_chunks(records, ROWS_PER_STATEMENT) {
                    let mut insert = sqlx::QueryBuilder::<Db>::new(
                        "INSERT INTO call_log (tenant_id, principal, method, target, outcome, error_code, latency_us, at_ms) ",
                    );
                    insert.push_values(chunk, |mut row, r| {
                        row.push_bind(tenant)
                            .push_bind(r.principal.as_str())
                            .push_bind(r.method.as_str())
                            .push_bind(r.target.as_deref())
                            .push_bind(r.outcome.as_str())
                            .push_bind(r.error_code)
                            .push_bind(r.latency_us)
                            .push_bind(r.at_ms);
                    });
                    insert.build().execute(&mut *tx).await?;
                }
                tx.commit().await
            }
            .await
        });
        stored.map_err(|error| {
            // tenant_id is the only foreign key on call_log.
            if is_foreign_key_violation(&error) {
                StoreError::UnknownTenant {
                    tenant: self.tenant.clone(),
                }
            } else {
                StoreError::Database {
                    backend: self.backend.name(),
                    operation: "appending to the call log",
                    error,
                }
            }
        })
    }

    /// The latest records, newest first; `limit` is clamped to `1..=1000`.
    pub async fn recent(&self, limit: u32) -> Result<Vec<CallRecord>, StoreError> {
        let limit = i64::from(clamp_limit(limit));
        let backend = self.backend.name();
        let rows = on_backend!(&self.backend, |pool| {
            sqlx::query(RECENT)
                .bind(self.tenant.as_str())
                .bind(limit)
                .fetch_all(pool)
                .await
                .and_then(|rows| {
                    rows.iter()
                        .map(call_record_from_row)
                        .collect::<Result<Vec<_>, _>>()
                })
        });
        rows.map_err(|error| StoreError::Database {
            backend,
            operation: "reading the call log",
            error,
        })
    }

    /// Number of records stored for this tenant.
    pub async fn count(&self) -> Result<i64, StoreError> {
        let backend = self.backend.name();
        let n = on_backend!(&self.backend, |pool| {
            sqlx::query_scalar::<_, i64>(COUNT)
                .bind(self.tenant.as_str())
                .fetch_one(pool)
                .await
        });
        n.map_err(|error| StoreError::Database {
            backend,
            operation: "counting the call log",
            error,
        })
    }
}

/// Rejects text PostgreSQL could not store (NUL) or that is implausibly
/// long, naming the record so a caller can find it in its batch.
fn validate_record(index: usize, r: &CallRecord) -> Result<(), StoreError> {
    let fields = [
        ("call record principal", Some(r.principal.as_str())),
        ("call record method", Some(r.method.as_str())),
        ("call record target", r.target.as_deref()),
        ("call record outcome", Some(r.outcome.as_str())),
    ];
    for (field, value) in fields {
        let Some(value) = value else { continue };
        if value.len() > CALL_TEXT_MAX_BYTES {
            return Err(StoreError::invalid(
                field,
                format!(
                    "record {index}: must be at most {CALL_TEXT_MAX_BYTES} bytes, got {}",
                    value.len()
                ),
            ));
        }
        if value.contains('\0') {
            return Err(StoreError::invalid(
                field,
                format!("record {index}: must not contain NUL"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> CallRecord {
        CallRecord {
            principal: "alice".into(),
            method: "tools/call".into(),
            target: Some("echo".into()),
            outcome: "ok".into(),
            error_code: None,
            latency_us: 12,
            at_ms: 1,
        }
    }

    #[test]
    fn accepts_ordinary_records() {
        assert!(validate_record(0, &record()).is_ok());
        assert!(
            validate_record(
                0,
                &CallRecord {
                    target: None,
                    ..record()
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn rejects_nul_and_oversized_text() {
        let nul = CallRecord {
            method: "a\0".into(),
            ..record()
        };
        match validate_record(3, &nul) {
            Err(StoreError::Invalid { field, message }) => {
                assert_eq!(field, "call record method");
                assert!(message.contains("record 3"), "{message}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        let long = CallRecord {
            target: Some("t".repeat(CALL_TEXT_MAX_BYTES + 1)),
            ..record()
        };
        assert!(validate_record(0, &long).is_err());
    }
}
