//! Device authorization grants in flight (RFC 8628), for `cellgate-auth`.
//!
//! Kept in the store rather than in memory so that the replica a device
//! polls need not be the one that issued the code or the one the approver
//! used. A grant has no tenant until it is approved, so this repository is
//! reachable from [`crate::Store::device_codes`], not from a tenant scope.
//! The protocol (codes, intervals, answers) is `cellgate-auth`'s; this
//! module stores state and makes each transition one atomic statement.

use std::fmt;

use sqlx::types::Json;
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::api_keys::{validate_roles, validate_text};
use crate::backend::{Backend, is_foreign_key_violation, on_backend};
use crate::{StoreError, TenantId};

/// Longest accepted user code, device-code hash, client id or scope, in bytes.
const FIELD_MAX_BYTES: usize = 1024;

/// Where a grant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceCodeStatus {
    /// Waiting for someone to approve or deny the user code.
    Pending,
    Approved,
    Denied,
}

impl DeviceCodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceCodeStatus::Pending => "pending",
            DeviceCodeStatus::Approved => "approved",
            DeviceCodeStatus::Denied => "denied",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Approved, Self::Denied]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One stored grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCodeRecord {
    pub user_code: String,
    pub client_id: Option<String>,
    pub scope: Option<String>,
    pub status: DeviceCodeStatus,
    /// Set on approval: the tenant, principal and roles the token is for.
    pub tenant: Option<TenantId>,
    pub principal: Option<String>,
    pub roles: Vec<String>,
    /// The principal who approved or denied.
    pub approved_by: Option<String>,
    /// Seconds the device must wait between polls; grows on `slow_down`.
    pub interval_secs: i64,
    pub last_poll_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

impl DeviceCodeRecord {
    pub fn is_expired_at(&self, now_ms: i64) -> bool {
        self.expires_at_ms <= now_ms
    }
}

/// A grant to store. The device code itself never reaches the store: pass
/// its SHA-256 (hex) as `device_code_hash`.
#[derive(Clone, PartialEq, Eq)]
pub struct NewDeviceCode {
    pub device_code_hash: String,
    pub user_code: String,
    pub client_id: Option<String>,
    pub scope: Option<String>,
    pub interval_secs: i64,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

impl fmt::Debug for NewDeviceCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewDeviceCode")
            .field("device_code_hash", &"<redacted>")
            .field("user_code", &self.user_code)
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .field("interval_secs", &self.interval_secs)
            .field("created_at_ms", &self.created_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// Who a grant is approved for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceApproval {
    pub tenant: TenantId,
    pub principal: String,
    pub roles: Vec<String>,
    pub approved_by: String,
}

/// The grant as a poll found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePoll {
    /// The grant after the poll was recorded (with the grown interval if
    /// the poll came too early).
    pub record: DeviceCodeRecord,
    /// The grant was pending and the previous poll was less than the
    /// interval ago: the answer is `slow_down`.
    pub too_fast: bool,
}

/// Device grants of every tenant. Obtainable only through
/// [`crate::Store::device_codes`].
#[derive(Clone)]
pub struct DeviceCodes {
    pub(crate) backend: Backend,
}

const COLUMNS: &str = "user_code, client_id, scope, status, tenant_id, principal, roles, approved_by, \
     interval_secs, too_fast, last_poll_at_ms, created_at_ms, expires_at_ms";

const INSERT: &str = "INSERT INTO device_codes (device_code_hash, user_code, client_id, scope, status, \
     interval_secs, created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7) \
     ON CONFLICT DO NOTHING";

const APPROVE: &str = "UPDATE device_codes SET status = 'approved', tenant_id = $2, principal = $3, \
     roles = $4, approved_by = $5 WHERE user_code = $1 AND status = 'pending' AND expires_at_ms > $6";

const DENY: &str = "UPDATE device_codes SET status = 'denied', approved_by = $2 \
     WHERE user_code = $1 AND status = 'pending' AND expires_at_ms > $3";

const PURGE: &str = "DELETE FROM device_codes WHERE expires_at_ms <= $1";

fn find_sql() -> String {
    format!("SELECT {COLUMNS} FROM device_codes WHERE user_code = $1")
}

// SET expressions read the row as it was before the update (on both
// backends), so `too_fast` and the grown interval are judged against the
// previous poll, and the whole transition is one statement.
fn poll_sql() -> String {
    format!(
        "UPDATE device_codes SET \
           too_fast = CASE WHEN status = 'pending' AND last_poll_at_ms IS NOT NULL \
                AND $2 - last_poll_at_ms < interval_secs * 1000 THEN 1 ELSE 0 END, \
           interval_secs = CASE WHEN status = 'pending' AND last_poll_at_ms IS NOT NULL \
                AND $2 - last_poll_at_ms < interval_secs * 1000 THEN interval_secs + $3 ELSE interval_secs END, \
           last_poll_at_ms = $2 \
         WHERE device_code_hash = $1 RETURNING {COLUMNS}"
    )
}

fn take_sql() -> String {
    format!(
        "DELETE FROM device_codes WHERE device_code_hash = $1 AND status = 'approved' \
         AND expires_at_ms > $2 RETURNING {COLUMNS}"
    )
}

impl DeviceCodes {
    /// Stores a new pending grant; [`StoreError::Conflict`] if the user code
    /// or the device code is already in use (draw new codes and retry).
    pub async fn create(&self, grant: &NewDeviceCode) -> Result<(), StoreError> {
        validate_field("device code hash", &grant.device_code_hash)?;
        validate_field("user code", &grant.user_code)?;
        if let Some(client) = &grant.client_id {
            validate_field("client id", client)?;
        }
        if let Some(scope) = &grant.scope {
            validate_field("scope", scope)?;
        }
        if grant.interval_secs < 1 {
            return Err(StoreError::invalid("interval", "must be at least 1 second"));
        }
        if grant.expires_at_ms <= grant.created_at_ms {
            return Err(StoreError::invalid(
                "device code expiry",
                "must be after its creation",
            ));
        }
        let inserted = on_backend!(&self.backend, |pool| {
            sqlx::query(INSERT)
                .bind(grant.device_code_hash.as_str())
                .bind(grant.user_code.as_str())
                .bind(grant.client_id.as_deref())
                .bind(grant.scope.as_deref())
                .bind(grant.interval_secs)
                .bind(grant.created_at_ms)
                .bind(grant.expires_at_ms)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        });
        match inserted {
            Ok(1) => Ok(()),
            Ok(_) => Err(StoreError::Conflict {
                message: "the user code or device code is already in use".into(),
            }),
            Err(error) => Err(self.error("creating a device code", error)),
        }
    }

    /// The grant with this user code (expired ones included, until purged).
    pub async fn find_by_user_code(
        &self,
        user_code: &str,
    ) -> Result<Option<DeviceCodeRecord>, StoreError> {
        validate_field("user code", user_code)?;
        let sql = find_sql();
        let found = on_backend!(&self.backend, |pool| {
            sqlx::query(&sql)
                .bind(user_code)
                .fetch_optional(pool)
                .await
                .and_then(|row| row.as_ref().map(device_code_from_row).transpose())
        });
        found.map_err(|e| self.error("reading a device code", e))
    }

    /// Approves a pending, unexpired grant. `false` if there is none with
    /// that user code (or it was already decided, or has expired);
    /// [`StoreError::UnknownTenant`] if the tenant is not registered.
    pub async fn approve(
        &self,
        user_code: &str,
        approval: &DeviceApproval,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        validate_field("user code", user_code)?;
        validate_text("principal", &approval.principal, false)?;
        validate_text("approved by", &approval.approved_by, false)?;
        validate_roles(&approval.roles)?;
        let done = on_backend!(&self.backend, |pool| {
            sqlx::query(APPROVE)
                .bind(user_code)
                .bind(approval.tenant.as_str())
                .bind(approval.principal.as_str())
                .bind(Json(&approval.roles))
                .bind(approval.approved_by.as_str())
                .bind(now_ms)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() > 0)
        });
        match done {
            Err(error) if is_foreign_key_violation(&error) => Err(StoreError::UnknownTenant {
                tenant: approval.tenant.clone(),
            }),
            other => other.map_err(|e| self.error("approving a device code", e)),
        }
    }

    /// Denies a pending, unexpired grant; `false` if there is none.
    pub async fn deny(
        &self,
        user_code: &str,
        denied_by: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        validate_field("user code", user_code)?;
        validate_text("denied by", denied_by, false)?;
        let done = on_backend!(&self.backend, |pool| {
            sqlx::query(DENY)
                .bind(user_code)
                .bind(denied_by)
                .bind(now_ms)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() > 0)
        });
        done.map_err(|e| self.error("denying a device code", e))
    }

    /// Records a poll of the grant at `now_ms`. A poll of a pending grant
    /// less than `interval_secs` after the previous one is `too_fast`, and
    /// grows the interval by `slow_down_secs` (RFC 8628 §3.5). `None` if no
    /// grant has that device code.
    pub async fn poll(
        &self,
        device_code_hash: &str,
        now_ms: i64,
        slow_down_secs: i64,
    ) -> Result<Option<DevicePoll>, StoreError> {
        validate_field("device code hash", device_code_hash)?;
        let sql = poll_sql();
        let polled = on_backend!(&self.backend, |pool| {
            sqlx::query(&sql)
                .bind(device_code_hash)
                .bind(now_ms)
                .bind(slow_down_secs)
                .fetch_optional(pool)
                .await
                .and_then(|row| {
                    row.as_ref()
                        .map(|row| {
                            let too_fast: i64 = row.try_get("too_fast")?;
                            Ok(DevicePoll {
                                record: device_code_from_row(row)?,
                                too_fast: too_fast != 0,
                            })
                        })
                        .transpose()
                })
        });
        polled.map_err(|e| self.error("polling a device code", e))
    }

    /// Removes an approved, unexpired grant and returns it: the token for it
    /// is handed out once, even if two polls race.
    pub async fn take_approved(
        &self,
        device_code_hash: &str,
        now_ms: i64,
    ) -> Result<Option<DeviceCodeRecord>, StoreError> {
        validate_field("device code hash", device_code_hash)?;
        let sql = take_sql();
        let taken = on_backend!(&self.backend, |pool| {
            sqlx::query(&sql)
                .bind(device_code_hash)
                .bind(now_ms)
                .fetch_optional(pool)
                .await
                .and_then(|row| row.as_ref().map(device_code_from_row).transpose())
        });
        taken.map_err(|e| self.error("taking an approved device code", e))
    }

    /// Deletes grants that expired at or before `now_ms`; returns how many.
    pub async fn purge_expired(&self, now_ms: i64) -> Result<u64, StoreError> {
        let purged = on_backend!(&self.backend, |pool| {
            sqlx::query(PURGE)
                .bind(now_ms)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        });
        purged.map_err(|e| self.error("purging expired device codes", e))
    }

    fn error(&self, operation: &'static str, error: sqlx::Error) -> StoreError {
        StoreError::Database {
            backend: self.backend.name(),
            operation,
            error,
        }
    }
}

fn device_code_from_row<'r, R>(row: &'r R) -> Result<DeviceCodeRecord, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    Option<Json<Vec<String>>>: Decode<'r, R::Database> + Type<R::Database>,
{
    let decode_error = |message: String| {
        sqlx::Error::Decode(Box::new(StoreError::Invalid {
            field: "device code row",
            message,
        }))
    };
    let status: String = row.try_get("status")?;
    let status = DeviceCodeStatus::parse(&status)
        .ok_or_else(|| decode_error(format!("unknown status {status:?}")))?;
    let tenant: Option<String> = row.try_get("tenant_id")?;
    let tenant = tenant
        .map(|t| TenantId::parse(&t))
        .transpose()
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let roles = row
        .try_get::<Option<Json<Vec<String>>>, _>("roles")?
        .map(|Json(r)| r)
        .unwrap_or_default();
    Ok(DeviceCodeRecord {
        user_code: row.try_get("user_code")?,
        client_id: row.try_get("client_id")?,
        scope: row.try_get("scope")?,
        status,
        tenant,
        principal: row.try_get("principal")?,
        roles,
        approved_by: row.try_get("approved_by")?,
        interval_secs: row.try_get("interval_secs")?,
        last_poll_at_ms: row.try_get("last_poll_at_ms")?,
        created_at_ms: row.try_get("created_at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
    })
}

fn validate_field(field: &'static str, value: &str) -> Result<(), StoreError> {
    if value.is_empty() || value.len() > FIELD_MAX_BYTES {
        return Err(StoreError::invalid(
            field,
            format!("must be 1 to {FIELD_MAX_BYTES} bytes"),
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
    fn statuses_round_trip() {
        for s in [
            DeviceCodeStatus::Pending,
            DeviceCodeStatus::Approved,
            DeviceCodeStatus::Denied,
        ] {
            assert_eq!(DeviceCodeStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(DeviceCodeStatus::parse("other"), None);
    }

    #[test]
    fn debug_hides_the_device_code_hash() {
        let grant = NewDeviceCode {
            device_code_hash: "deadbeefcafe".into(),
            user_code: "BCDF-GHJK".into(),
            client_id: None,
            scope: None,
            interval_secs: 5,
            created_at_ms: 1,
            expires_at_ms: 2,
        };
        assert!(!format!("{grant:?}").contains("deadbeef"));
    }
}
