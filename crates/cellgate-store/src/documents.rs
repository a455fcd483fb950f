//! Tenant-scoped JSON documents.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;

use crate::backend::{Backend, document_from_row, is_foreign_key_violation, now_ms, on_backend};
use crate::{StoreError, TenantId};

/// Longest accepted collection name or key, in bytes. Keeps keys usable in
/// indexes on both backends.
pub const NAME_MAX_BYTES: usize = 255;
/// Largest page [`Documents::list`] returns; larger limits are clamped.
pub const LIST_MAX_LIMIT: u32 = 1000;

/// One stored document. `version` starts at 1 and grows by one per write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub collection: String,
    pub key: String,
    pub value: Value,
    pub version: i64,
    pub updated_at_ms: i64,
}

/// JSON documents addressed by `(collection, key)` within one tenant, with
/// optimistic versioning: the general store later services build on.
///
/// Obtainable only through [`crate::TenantScope::documents`], so every query
/// is bound to the scope's tenant:
///
/// ```no_run
/// # async fn demo(store: cellgate_store::Store) -> Result<(), cellgate_store::StoreError> {
/// let tenant = cellgate_store::TenantId::parse("acme")?;
/// let docs = store.scope(&tenant).documents();
/// docs.put("notes", "first", &serde_json::json!({ "text": "hi" })).await?;
/// # Ok(()) }
/// ```
///
/// There is no way around the scope. There is no constructor:
///
/// ```compile_fail,E0599
/// let docs = cellgate_store::Documents::new();
/// ```
///
/// and the fields are private, so a repository cannot be pointed at another
/// tenant either:
///
/// ```compile_fail,E0451
/// use cellgate_store::{Documents, TenantId};
/// fn retarget(docs: &Documents, other: TenantId) -> Documents {
///     Documents { tenant: other, ..docs.clone() }
/// }
/// ```
#[derive(Clone)]
pub struct Documents {
    pub(crate) backend: Backend,
    pub(crate) tenant: TenantId,
}

const INSERT_OR_BUMP: &str = "INSERT INTO documents (tenant_id, collection, key, value, version, updated_at_ms) \
     VALUES ($1, $2, $3, $4, 1, $5) \
     ON CONFLICT (tenant_id, collection, key) DO UPDATE \
     SET value = excluded.value, version = documents.version + 1, updated_at_ms = excluded.updated_at_ms \
     RETURNING collection, key, value, version, updated_at_ms";

const INSERT_NEW: &str = "INSERT INTO documents (tenant_id, collection, key, value, version, updated_at_ms) \
     VALUES ($1, $2, $3, $4, 1, $5) \
     ON CONFLICT (tenant_id, collection, key) DO NOTHING \
     RETURNING collection, key, value, version, updated_at_ms";

const UPDATE_IF_VERSION: &str = "UPDATE documents SET value = $4, version = version + 1, updated_at_ms = $5 \
     WHERE tenant_id = $1 AND collection = $2 AND key = $3 AND version = $6 \
     RETURNING collection, key, value, version, updated_at_ms";

const SELECT_ONE: &str = "SELECT collection, key, value, version, updated_at_ms FROM documents \
     WHERE tenant_id = $1 AND collection = $2 AND key = $3";

const SELECT_VERSION: &str =
    "SELECT version FROM documents WHERE tenant_id = $1 AND collection = $2 AND key = $3";

const TENANT_EXISTS: &str = "SELECT COUNT(*) FROM tenants WHERE id = $1";

const DELETE_ONE: &str =
    "DELETE FROM documents WHERE tenant_id = $1 AND collection = $2 AND key = $3";

// Two statements rather than `$3 IS NULL OR key > $3`, so each has a plan
// that walks the primary key.
const LIST_FIRST: &str = "SELECT collection, key, value, version, updated_at_ms FROM documents \
     WHERE tenant_id = $1 AND collection = $2 ORDER BY key LIMIT $3";

const LIST_AFTER: &str = "SELECT collection, key, value, version, updated_at_ms FROM documents \
     WHERE tenant_id = $1 AND collection = $2 AND key > $3 ORDER BY key LIMIT $4";

impl Documents {
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Inserts or replaces the document; the version becomes 1 on insert and
    /// grows by one on replace.
    pub async fn put(
        &self,
        collection: &str,
        key: &str,
        value: &Value,
    ) -> Result<Document, StoreError> {
        validate_name("collection", collection)?;
        validate_name("key", key)?;
        let written = on_backend!(&self.backend, |pool| {
            sqlx::query(INSERT_OR_BUMP)
                .bind(self.tenant.as_str())
                .bind(collection)
                .bind(key)
                .bind(Json(value))
                .bind(now_ms())
                .fetch_one(pool)
                .await
                .and_then(|row| document_from_row(&row))
        });
        written.map_err(|e| self.write_error("writing a document", e))
    }

    /// Writes the document only if its current version is
    /// `expected_version`, where 0 means "must not exist yet"; otherwise
    /// [`StoreError::Conflict`] and nothing is written.
    pub async fn put_if_version(
        &self,
        collection: &str,
        key: &str,
        value: &Value,
        expected_version: i64,
    ) -> Result<Document, StoreError> {
        validate_name("collection", collection)?;
        validate_name("key", key)?;
        if expected_version < 0 {
            return Err(StoreError::invalid(
                "expected_version",
                format!(
                    "must be 0 (document must not exist) or a version ≥ 1, got {expected_version}"
                ),
            ));
        }
        let tenant = self.tenant.as_str();
        let now = now_ms();
        let written = on_backend!(&self.backend, |pool| {
            let query = if expected_version == 0 {
                sqlx::query(INSERT_NEW)
                    .bind(tenant)
                    .bind(collection)
                    .bind(key)
                    .bind(Json(value))
                    .bind(now)
            } else {
                sqlx::query(UPDATE_IF_VERSION)
                    .bind(tenant)
                    .bind(collection)
                    .bind(key)
                    .bind(Json(value))
                    .bind(now)
                    .bind(expected_version)
            };
            query
                .fetch_optional(pool)
                .await
                .and_then(|row| row.as_ref().map(document_from_row).transpose())
        });
        match written.map_err(|e| self.write_error("writing a document", e))? {
            Some(doc) => Ok(doc),
            None => Err(self
                .explain_version_mismatch(collection, key, expected_version)
                .await),
        }
    }

    /// Builds the error for a conditional write that matched nothing. Runs
    /// only on that failure path, so the extra reads cost nothing normally.
    async fn explain_version_mismatch(
        &self,
        collection: &str,
        key: &str,
        expected: i64,
    ) -> StoreError {
        let tenant = self.tenant.as_str();
        let backend = self.backend.name();
        let operation = "checking a document version";
        let found = on_backend!(&self.backend, |pool| {
            sqlx::query_scalar::<_, i64>(SELECT_VERSION)
                .bind(tenant)
                .bind(collection)
                .bind(key)
                .fetch_optional(pool)
                .await
        });
        let current = match found {
            Ok(v) => v,
            Err(error) => {
                return StoreError::Database {
                    backend,
                    operation,
                    error,
                };
            }
        };
        if current.is_none() {
            // An update under an unknown tenant matches no row rather than
            // violating the foreign key; report the real cause.
            let exists = on_backend!(&self.backend, |pool| {
                sqlx::query_scalar::<_, i64>(TENANT_EXISTS)
                    .bind(tenant)
                    .fetch_one(pool)
                    .await
            });
            match exists {
                Ok(0) => {
                    return StoreError::UnknownTenant {
                        tenant: self.tenant.clone(),
                    };
                }
                Ok(_) => {}
                Err(error) => {
                    return StoreError::Database {
                        backend,
                        operation,
                        error,
                    };
                }
            }
        }
        let found = match current {
            Some(v) => format!("version {v}"),
            None => "no document".to_owned(),
        };
        let wanted = match expected {
            0 => "no document".to_owned(),
            v => format!("version {v}"),
        };
        StoreError::Conflict {
            message: format!("document {collection}/{key}: expected {wanted}, found {found}"),
        }
    }

    pub async fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, StoreError> {
        validate_name("collection", collection)?;
        validate_name("key", key)?;
        let backend = self.backend.name();
        let found = on_backend!(&self.backend, |pool| {
            sqlx::query(SELECT_ONE)
                .bind(self.tenant.as_str())
                .bind(collection)
                .bind(key)
                .fetch_optional(pool)
                .await
                .and_then(|row| row.as_ref().map(document_from_row).transpose())
        });
        found.map_err(|error| StoreError::Database {
            backend,
            operation: "reading a document",
            error,
        })
    }

    /// Removes the document; `false` if there was none.
    pub async fn delete(&self, collection: &str, key: &str) -> Result<bool, StoreError> {
        validate_name("collection", collection)?;
        validate_name("key", key)?;
        let backend = self.backend.name();
        let deleted = on_backend!(&self.backend, |pool| {
            sqlx::query(DELETE_ONE)
                .bind(self.tenant.as_str())
                .bind(collection)
                .bind(key)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() > 0)
        });
        deleted.map_err(|error| StoreError::Database {
            backend,
            operation: "deleting a document",
            error,
        })
    }

    /// One page of a collection ordered by key (byte order). Pass the last
    /// key of the previous page as `after_key` to get the next one; `limit`
    /// is clamped to `1..=1000`.
    pub async fn list(
        &self,
        collection: &str,
        after_key: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Document>, StoreError> {
        validate_name("collection", collection)?;
        if let Some(after) = after_key {
            validate_name("after_key", after)?;
        }
        let limit = i64::from(clamp_limit(limit));
        let backend = self.backend.name();
        let tenant = self.tenant.as_str();
        let page = on_backend!(&self.backend, |pool| {
            let query = match after_key {
                None => sqlx::query(LIST_FIRST)
                    .bind(tenant)
                    .bind(collection)
                    .bind(limit),
                Some(after) => sqlx::query(LIST_AFTER)
                    .bind(tenant)
                    .bind(collection)
                    .bind(after)
                    .bind(limit),
            };
            query.fetch_all(pool).await.and_then(|rows| {
                rows.iter()
                    .map(document_from_row)
                    .collect::<Result<Vec<_>, _>>()
            })
        });
        page.map_err(|error| StoreError::Database {
            backend,
            operation: "listing documents",
            error,
        })
    }

    fn write_error(&self, operation: &'static str, error: sqlx::Error) -> StoreError {
        // tenant_id is the only foreign key on documents.
        if is_foreign_key_violation(&error) {
            StoreError::UnknownTenant {
                tenant: self.tenant.clone(),
            }
        } else {
            StoreError::Database {
                backend: self.backend.name(),
                operation,
                error,
            }
        }
    }
}

/// Clamps a page size into `1..=LIST_MAX_LIMIT`.
pub(crate) fn clamp_limit(limit: u32) -> u32 {
    limit.clamp(1, LIST_MAX_LIMIT)
}

/// Collections and keys: non-empty, at most [`NAME_MAX_BYTES`], and no NUL
/// (PostgreSQL text cannot hold it, so SQLite must refuse it too).
pub(crate) fn validate_name(field: &'static str, value: &str) -> Result<(), StoreError> {
    if value.is_empty() {
        return Err(StoreError::invalid(field, "must not be empty"));
    }
    if value.len() > NAME_MAX_BYTES {
        return Err(StoreError::invalid(
            field,
            format!(
                "must be at most {NAME_MAX_BYTES} bytes, got {}",
                value.len()
            ),
        ));
    }
    if value.contains('\0') {
        return Err(StoreError::invalid(field, "must not contain NUL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_clamped() {
        assert_eq!(clamp_limit(0), 1);
        assert_eq!(clamp_limit(1), 1);
        assert_eq!(clamp_limit(50), 50);
        assert_eq!(clamp_limit(1000), 1000);
        assert_eq!(clamp_limit(u32::MAX), 1000);
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("key", "k").is_ok());
        assert!(validate_name("key", &"k".repeat(255)).is_ok());
        // The bound is in bytes: 128 two-byte characters are 256 bytes.
        assert!(validate_name("key", &"é".repeat(128)).is_err());
        assert!(matches!(
            validate_name("key", ""),
            Err(StoreError::Invalid { field: "key", .. })
        ));
        assert!(validate_name("collection", &"c".repeat(256)).is_err());
        assert!(validate_name("key", "a\0b").is_err());
    }
}
