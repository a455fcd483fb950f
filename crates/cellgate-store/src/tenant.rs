//! Tenant identifiers and the tenant registry.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::StoreError;
use crate::backend::{Backend, now_ms, on_backend, tenant_from_row};

/// Longest accepted tenant id, in bytes (ids are ASCII, so also characters).
pub const TENANT_ID_MAX_LEN: usize = 64;

/// A validated tenant identifier: 1 to 64 characters from `[a-z0-9_-]`,
/// starting with a letter or digit.
///
/// The narrow alphabet lets ids appear in paths, metric labels and log lines
/// without escaping, and makes two spellings of one tenant impossible.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Validates `s` as a tenant id.
    pub fn parse(s: &str) -> Result<TenantId, StoreError> {
        validate_tenant_id(s)?;
        Ok(TenantId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate_tenant_id(s: &str) -> Result<(), StoreError> {
    let invalid = |message: String| Err(StoreError::invalid("tenant id", message));
    if s.is_empty() {
        return invalid("must not be empty".into());
    }
    if s.len() > TENANT_ID_MAX_LEN {
        return invalid(format!(
            "must be at most {TENANT_ID_MAX_LEN} characters, got {}",
            s.len()
        ));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if let Some(c) = s.chars().find(|&c| !allowed(c)) {
        return invalid(format!(
            "{c:?} is not allowed; use lowercase letters, digits, `_` and `-`"
        ));
    }
    if s.starts_with(['_', '-']) {
        return invalid("must start with a lowercase letter or a digit".into());
    }
    Ok(())
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantId {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TenantId::parse(s)
    }
}

impl Serialize for TenantId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    // Validates, so a deserialized id is as trustworthy as a parsed one.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        TenantId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A registered tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub created_at_ms: i64,
    pub status: TenantStatus,
    /// The plan that selects the tenant's rate limits.
    pub plan: String,
}

/// Whether a tenant's calls are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    Active,
    /// Every call is refused; the data stays.
    Suspended,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "suspended" => Some(Self::Suspended),
            _ => None,
        }
    }
}

/// Longest accepted plan name, in bytes.
const PLAN_MAX_BYTES: usize = 64;

/// Longest accepted tenant display name, in bytes.
const TENANT_NAME_MAX_BYTES: usize = 255;

fn validate_tenant_name(name: &str) -> Result<(), StoreError> {
    if name.trim().is_empty() {
        return Err(StoreError::invalid("tenant name", "must not be blank"));
    }
    if name.len() > TENANT_NAME_MAX_BYTES {
        return Err(StoreError::invalid(
            "tenant name",
            format!(
                "must be at most {TENANT_NAME_MAX_BYTES} bytes, got {}",
                name.len()
            ),
        ));
    }
    if name.contains('\0') {
        return Err(StoreError::invalid("tenant name", "must not contain NUL"));
    }
    Ok(())
}

/// The tenant registry: the only repository that is not tenant-scoped.
#[derive(Clone)]
pub struct Tenants {
    pub(crate) backend: Backend,
}

const INSERT_IF_ABSENT: &str = "INSERT INTO tenants (id, name, created_at_ms) VALUES ($1, $2, $3) \
     ON CONFLICT (id) DO NOTHING";

// On conflict DO NOTHING makes RETURNING yield no row, which is how create
// detects an existing tenant without a second query.
const INSERT_NEW: &str = "INSERT INTO tenants (id, name, created_at_ms) VALUES ($1, $2, $3) \
     ON CONFLICT (id) DO NOTHING RETURNING id, name, created_at_ms, status, plan";

const SELECT_ONE: &str = "SELECT id, name, created_at_ms, status, plan FROM tenants WHERE id = $1";

const SELECT_ALL: &str = "SELECT id, name, created_at_ms, status, plan FROM tenants ORDER BY id";

const UPDATE_STATUS: &str = "UPDATE tenants SET status = $2 WHERE id = $1";

const UPDATE_PLAN: &str = "UPDATE tenants SET plan = $2 WHERE id = $1";

/// Tables whose rows belong to a tenant, deleted with it, children first.
/// A test checks this list against the schema, so a new tenant table cannot
/// be forgotten here.
pub(crate) const TENANT_TABLES: &[&str] = &["documents", "call_log"];

impl Tenants {
    /// Creates the tenant unless it exists; returns the stored tenant either
    /// way. An existing tenant keeps its name.
    pub async fn ensure(&self, id: &TenantId, name: &str) -> Result<Tenant, StoreError> {
        validate_tenant_name(name)?;
        let backend = self.backend.name();
        on_backend!(&self.backend, |pool| {
            sqlx::query(INSERT_IF_ABSENT)
                .bind(id.as_str())
                .bind(name)
                .bind(now_ms())
                .execute(pool)
                .await
                .map_err(|error| StoreError::Database {
                    backend,
                    operation: "ensuring a tenant",
                    error,
                })?;
        });
        // Read back: on conflict the insert returns nothing to reuse.
        match self.get(id).await? {
            Some(t) => Ok(t),
            // Only reachable if someone deleted it in between; say so plainly.
            None => Err(StoreError::Conflict {
                message: format!("tenant `{id}` vanished while being ensured"),
            }),
        }
    }

    /// Creates the tenant; [`StoreError::Conflict`] if it already exists.
    pub async fn create(&self, id: &TenantId, name: &str) -> Result<Tenant, StoreError> {
        validate_tenant_name(name)?;
        let backend = self.backend.name();
        let created = on_backend!(&self.backend, |pool| {
            sqlx::query(INSERT_NEW)
                .bind(id.as_str())
                .bind(name)
                .bind(now_ms())
                .fetch_optional(pool)
                .await
                .and_then(|row| row.as_ref().map(tenant_from_row).transpose())
        });
        match created.map_err(|error| StoreError::Database {
            backend,
            operation: "creating a tenant",
            error,
        })? {
            Some(t) => Ok(t),
            None => Err(StoreError::Conflict {
                message: format!("tenant `{id}` already exists"),
            }),
        }
    }

    pub async fn get(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let backend = self.backend.name();
        let found = on_backend!(&self.backend, |pool| {
            sqlx::query(SELECT_ONE)
                .bind(id.as_str())
                .fetch_optional(pool)
                .await
                .and_then(|row| row.as_ref().map(tenant_from_row).transpose())
        });
        found.map_err(|error| StoreError::Database {
            backend,
            operation: "reading a tenant",
            error,
        })
    }

    /// Suspends or resumes a tenant. [`StoreError::UnknownTenant`] if absent.
    pub async fn set_status(
        &self,
        id: &TenantId,
        status: TenantStatus,
    ) -> Result<Tenant, StoreError> {
        self.update(
            id,
            UPDATE_STATUS,
            status.as_str(),
            "changing a tenant's status",
        )
        .await
    }

    /// Moves a tenant to another plan.
    pub async fn set_plan(&self, id: &TenantId, plan: &str) -> Result<Tenant, StoreError> {
        if plan.is_empty() || plan.len() > PLAN_MAX_BYTES || plan.contains('\0') {
            return Err(StoreError::invalid(
                "plan",
                format!("must be 1 to {PLAN_MAX_BYTES} bytes without NUL"),
            ));
        }
        self.update(id, UPDATE_PLAN, plan, "changing a tenant's plan")
            .await
    }

    async fn update(
        &self,
        id: &TenantId,
        sql: &'static str,
        value: &str,
        operation: &'static str,
    ) -> Result<Tenant, StoreError> {
        let backend = self.backend.name();
        let done = on_backend!(&self.backend, |pool| sqlx::query(sql)
            .bind(id.as_str())
            .bind(value)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()));
        let changed = done.map_err(|error| StoreError::Database {
            backend,
            operation,
            error,
        })?;
        if changed == 0 {
            return Err(StoreError::UnknownTenant { tenant: id.clone() });
        }
        self.get(id)
            .await?
            .ok_or_else(|| StoreError::UnknownTenant { tenant: id.clone() })
    }

    /// Deletes a tenant and every row it owns, in one transaction: either all
    /// of it is gone or nothing is. Returns the number of rows deleted
    /// besides the tenant itself; [`StoreError::UnknownTenant`] if absent.
    pub async fn delete(&self, id: &TenantId) -> Result<u64, StoreError> {
        let backend = self.backend.name();
        let err = |error| StoreError::Database {
            backend,
            operation: "deleting a tenant",
            error,
        };
        on_backend!(&self.backend, |pool| {
            let mut tx = pool.begin().await.map_err(err)?;
            let mut rows = 0;
            for table in crate::all_tenant_tables() {
                rows += sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1"))
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?
                    .rows_affected();
            }
            let gone = sqlx::query("DELETE FROM tenants WHERE id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(err)?
                .rows_affected();
            if gone == 0 {
                // Nothing to roll back in practice, but keep it explicit.
                tx.rollback().await.map_err(err)?;
                return Err(StoreError::UnknownTenant { tenant: id.clone() });
            }
            tx.commit().await.map_err(err)?;
            Ok(rows)
        })
    }

    /// All tenants, ordered by id.
    pub async fn list(&self) -> Result<Vec<Tenant>, StoreError> {
        let backend = self.backend.name();
        let all = on_backend!(&self.backend, |pool| {
            sqlx::query(SELECT_ALL)
                .fetch_all(pool)
                .await
                .and_then(|rows| {
                    rows.iter()
                        .map(tenant_from_row)
                        .collect::<Result<Vec<_>, _>>()
                })
        });
        all.map_err(|error| StoreError::Database {
            backend,
            operation: "listing tenants",
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for ok in [
            "a",
            "0",
            "local",
            "acme-corp",
            "team_7",
            "9lives",
            &"x".repeat(64),
        ] {
            assert_eq!(
                TenantId::parse(ok)
                    .map(|t| t.as_str().to_owned())
                    .ok()
                    .as_deref(),
                Some(ok),
                "{ok}"
            );
        }
    }

    #[test]
    fn rejects_invalid_ids() {
        for bad in [
            "",
            "-a",
            "_a",
            "Acme",
            "a b",
            "a.b",
            "a/b",
            "é",
            "a\0",
            &"x".repeat(65),
        ] {
            assert!(
                matches!(
                    TenantId::parse(bad),
                    Err(StoreError::Invalid {
                        field: "tenant id",
                        ..
                    })
                ),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn serde_round_trips_and_validates() {
        let id = TenantId::parse("acme").ok();
        assert_eq!(serde_json::to_string(&id).ok().as_deref(), Some("\"acme\""));
        assert_eq!(serde_json::from_str::<TenantId>("\"acme\"").ok(), id);
        assert!(serde_json::from_str::<TenantId>("\"ACME\"").is_err());
        assert!(serde_json::from_str::<TenantId>("7").is_err());
    }

    #[test]
    fn tenant_names_are_checked() {
        assert!(validate_tenant_name("Acme Corp").is_ok());
        assert!(validate_tenant_name("  ").is_err());
        assert!(validate_tenant_name(&"n".repeat(256)).is_err());
        assert!(validate_tenant_name("a\0b").is_err());
    }
}
