//! Records of the API keys cellgate issued (for `cellgate-auth`).
//!
//! The store never sees a key: it keeps the public key id, the key's owner
//! and an Argon2id hash of the secret part, which `cellgate-auth` computes
//! and checks. Managing keys is tenant-scoped ([`ApiKeys`], through
//! [`crate::TenantScope::api_keys`]); the one cross-tenant operation is the
//! lookup by key id that authentication needs before it knows the tenant
//! ([`ApiKeyDirectory`], through [`crate::Store::api_keys`]).

use std::fmt;

use sqlx::types::Json;
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::backend::{Backend, is_foreign_key_violation, now_ms, on_backend};
use crate::{StoreError, TenantId};

/// Longest accepted key id, in bytes.
pub const API_KEY_ID_MAX_BYTES: usize = 64;
/// Longest accepted principal, key name or role name, in bytes.
pub const API_KEY_TEXT_MAX_BYTES: usize = 255;
/// Most roles one key may carry.
pub const API_KEY_MAX_ROLES: usize = 64;
/// Longest accepted secret hash (a PHC string), in bytes.
const SECRET_HASH_MAX_BYTES: usize = 1024;

/// One stored API key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// The public id: the part of the key between `cgk_` and the secret.
    pub key_id: String,
    pub tenant: TenantId,
    /// Who acts when the key is used.
    pub principal: String,
    /// A label for people (may be empty).
    pub name: String,
    pub roles: Vec<String>,
    /// The Argon2id PHC string of the secret part.
    pub secret_hash: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub last_used_at_ms: Option<i64>,
}

// Hand-written: the hash is not printed (it is offline-attackable material).
impl fmt::Debug for ApiKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyRecord")
            .field("key_id", &self.key_id)
            .field("tenant", &self.tenant)
            .field("principal", &self.principal)
            .field("name", &self.name)
            .field("roles", &self.roles)
            .field("secret_hash", &"<redacted>")
            .field("created_at_ms", &self.created_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("revoked_at_ms", &self.revoked_at_ms)
            .field("last_used_at_ms", &self.last_used_at_ms)
            .finish()
    }
}

impl ApiKeyRecord {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at_ms.is_some()
    }

    /// Whether the key has expired at `now_ms` (an expiry equal to now counts
    /// as expired).
    pub fn is_expired_at(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }
}

/// What [`ApiKeys::insert`] stores. `created_at_ms` is set by the store.
#[derive(Clone, PartialEq, Eq)]
pub struct NewApiKey {
    pub key_id: String,
    pub principal: String,
    pub name: String,
    pub roles: Vec<String>,
    pub secret_hash: String,
    pub expires_at_ms: Option<i64>,
}

impl fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewApiKey")
            .field("key_id", &self.key_id)
            .field("principal", &self.principal)
            .field("name", &self.name)
            .field("roles", &self.roles)
            .field("secret_hash", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// The API keys of one tenant. Obtainable only through
/// [`crate::TenantScope::api_keys`].
#[derive(Clone)]
pub struct ApiKeys {
    pub(crate) backend: Backend,
    pub(crate) tenant: TenantId,
}

/// Lookup of keys by id across tenants, for authentication. Obtainable only
/// through [`crate::Store::api_keys`].
#[derive(Clone)]
pub struct ApiKeyDirectory {
    pub(crate) backend: Backend,
}

const COLUMNS: &str = "key_id, tenant_id, principal, name, roles, secret_hash, created_at_ms, \
     expires_at_ms, revoked_at_ms, last_used_at_ms";

fn insert_sql() -> String {
    format!(
        "INSERT INTO api_keys (key_id, tenant_id, principal, name, roles, secret_hash, created_at_ms, expires_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (key_id) DO NOTHING RETURNING {COLUMNS}"
    )
}

fn select_scoped_sql() -> String {
    format!("SELECT {COLUMNS} FROM api_keys WHERE tenant_id = $1 AND key_id = $2")
}

fn list_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at_ms, key_id LIMIT $2"
    )
}

fn revoke_sql() -> String {
    format!(
        "UPDATE api_keys SET revoked_at_ms = COALESCE(revoked_at_ms, $3) \
         WHERE tenant_id = $1 AND key_id = $2 RETURNING {COLUMNS}"
    )
}

fn find_sql() -> String {
    format!("SELECT {COLUMNS} FROM api_keys WHERE key_id = $1")
}

const TOUCH: &str = "UPDATE api_keys SET last_used_at_ms = $2 \
     WHERE key_id = $1 AND (last_used_at_ms IS NULL OR last_used_at_ms < $2)";

const DELETE_ONE: &str = "DELETE FROM api_keys WHERE tenant_id = $1 AND key_id = $2";

/// Tables of this module with a `tenant_id` column, children first; deleting
/// a tenant deletes its keys and the device grants approved for it.
pub(crate) const TENANT_TABLES: &[&str] = &["api_keys", "device_codes"];

/// Most keys [`ApiKeys::list`] returns.
pub const API_KEY_LIST_MAX: u32 = 10_000;

impl ApiKeys {
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Stores a new key; [`StoreError::Conflict`] if the id is taken (by any
    /// tenant), [`StoreError::UnknownTenant`] if the tenant is not registered.
    pub async fn insert(&self, key: &NewApiKey) -> Result<ApiKeyRecord, StoreError> {
        validate_key_id(&key.key_id)?;
        validate_text("api key principal", &key.principal, false)?;
        validate_text("api key name", &key.name, true)?;
        validate_roles(&key.roles)?;
        if key.secret_hash.is_empty() || key.secret_hash.len() > SECRET_HASH_MAX_BYTES {
            return Err(StoreError::invalid(
                "api key secret hash",
                format!("must be 1 to {SECRET_HASH_MAX_BYTES} bytes"),
            ));
        }
        let now = now_ms();
        if let Some(at) = key.expires_at_ms
            && at <= now
        {
            return Err(StoreError::invalid(
                "api key expiry",
                "must be in the future",
            ));
        }
        let sql = insert_sql();
        let inserted = on_backend!(&self.backend, |pool| {
            sqlx::query(&sql)
                .bind(key.key_id.as_str())
                .bind(self.tenant.as_str())
                .bind(key.principal.as_str())
                .bind(key.name.as_str())
                .bind(Json(&key.roles))
                .bind(key.secret_hash.as_str())
                .bind(now)
                .bind(key.expires_at_ms)
                .fetch_optional(pool)
                .await
                .and_then(|row| row.as_ref().map(api_key_from_row).transpose())
        });
        match inserted {
            Ok(Some(record)) => Ok(record),
            Ok(None) => Err(StoreError::Conflict {
                message: format!("an API key with id `{}` already exists", key.key_id),
            }),
            Err(error) if is_foreign_key_violation(&error) => Err(StoreError::UnknownTenant {
                tenant: self.tenant.clone(),
            }),
            Err(error) => Err(StoreError::Database {
                backend: self.backend.name(),
                operation: "creating an API key",
                error,
            }),
        }
    }

    /// The key with this id, if it belongs to this tenant.
    pub async fn get(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        validate_key_id(key_id)?;
        let sql = select_scoped_sql();
        let found = on_backend!(&self.backend, |pool| {
            sqlx::query(&sql)
                .bind(self.tenant.as_str())
                .bind(key_id)
                .fetch_optional(pool)
                .await
                .and_then(|row| row.as_ref().map(api_key_from_row).transpose())
        });
        found.map_err(|error| StoreError::Database {
            backend: self.backend.name(),
            operation: "reading an API key",
            error,
        })
    }

    /// The tenant's keys, oldest first (revoked and expired ones included),
    /// at most [`API_KEY_LIST_MAX`].
    pub async fn list(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let sql = list_sql();
        let all = on_backend!(&self.backend, |pool| {
            sqlx::query(&sql)
                .bind(self.tenant.as_str())
                .bind(i64::from(API_KEY_LIST_MAX))
                .fetch_all(pool)
                .await
                .and_then(|rows| {
                    rows.iter()
                        .map(api_key_from_row)
                        .collect::<Result<Vec<_>, _>>()
                })
        });
        all.map_err(|error| StoreError::Database {
            backend: self.backend.name(),
            operation: "listing API keys",
            error,
        })
    }

    /// Marks the key revoked (keeping the first revocation time if it was
    /// revoked before). `None` if this tenant has no key with that id.
    pub async fn revoke(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        validate_key_id(key_id)?;
        let sql = revoke_sql();
        let revoked = on_backend!(&self.backend, |pool| {
            sqlx::query(&sql)
                .bind(self.tenant.as_str())
                .bind(key_id)
                .bind(now_ms())
                .fetch_optional(pool)
                .await
                .and_then(|row| row.as_ref().map(api_key_from_row).transpose())
        });
        revoked.map_err(|error| StoreError::Database {
            backend: self.backend.name(),
            operation: "revoking an API key",
            error,
        })
    }

    /// Removes the key's record; `false` if this tenant had none with that id.
    pub async fn delete(&self, key_id: &str) -> Result<bool, StoreError> {
        validate_key_id(key_id)?;
        let deleted = on_backend!(&self.backend, |pool| {
            sqlx::query(DELETE_ONE)
                .bind(self.tenant.as_str())
                .bind(key_id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() > 0)
        });
        deleted.map_err(|error| StoreError::Database {
            backend: self.backend.name(),
            operation: "deleting an API key",
            error,
        })
    }
}

impl ApiKeyDirectory {
    /// The key with this id, whichever tenant owns it. A malformed id finds
    /// nothing rather than failing, since it comes from an untrusted caller.
    pub async fn find(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        if validate_key_id(key_id).is_err() {
            return Ok(None);
        }
        let sql = find_sql();
        let found = on_backend!(&self.backend, |pool| {
            sqlx::query(&sql)
                .bind(key_id)
                .fetch_optional(pool)
                .await
                .and_then(|row| row.as_ref().map(api_key_from_row).transpose())
        });
        found.map_err(|error| StoreError::Database {
            backend: self.backend.name(),
            operation: "looking up an API key",
            error,
        })
    }

    /// Records when keys were last used, in one transaction. A time never
    /// moves backwards; unknown ids are ignored.
    pub async fn record_last_used(&self, uses: &[(String, i64)]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let stored = on_backend!(&self.backend, |pool| {
            async {
                let mut tx = pool.begin().await?;
                for (key_id, at_ms) in uses {
                    sqlx::query(TOUCH)
                        .bind(key_id.as_str())
                        .bind(*at_ms)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            }
            .await
        });
        stored.map_err(|error| StoreError::Database {
            backend: self.backend.name(),
            operation: "recording API key use",
            error,
        })
    }
}

fn api_key_from_row<'r, R>(row: &'r R) -> Result<ApiKeyRecord, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    Json<Vec<String>>: Decode<'r, R::Database> + Type<R::Database>,
{
    let tenant: String = row.try_get("tenant_id")?;
    let Json(roles) = row.try_get::<Json<Vec<String>>, _>("roles")?;
    Ok(ApiKeyRecord {
        key_id: row.try_get("key_id")?,
        tenant: TenantId::parse(&tenant).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        principal: row.try_get("principal")?,
        name: row.try_get("name")?,
        roles,
        secret_hash: row.try_get("secret_hash")?,
        created_at_ms: row.try_get("created_at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        revoked_at_ms: row.try_get("revoked_at_ms")?,
        last_used_at_ms: row.try_get("last_used_at_ms")?,
    })
}

/// Key ids: 1 to 64 ASCII letters, digits, `-` or `_`.
fn validate_key_id(key_id: &str) -> Result<(), StoreError> {
    if key_id.is_empty() || key_id.len() > API_KEY_ID_MAX_BYTES {
        return Err(StoreError::invalid(
            "api key id",
            format!("must be 1 to {API_KEY_ID_MAX_BYTES} characters"),
        ));
    }
    if !key_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(StoreError::invalid(
            "api key id",
            "may contain only ASCII letters, digits, `-` and `_`",
        ));
    }
    Ok(())
}

pub(crate) fn validate_text(
    field: &'static str,
    value: &str,
    may_be_empty: bool,
) -> Result<(), StoreError> {
    if !may_be_empty && value.trim().is_empty() {
        return Err(StoreError::invalid(field, "must not be blank"));
    }
    if value.len() > API_KEY_TEXT_MAX_BYTES {
        return Err(StoreError::invalid(
            field,
            format!(
                "must be at most {API_KEY_TEXT_MAX_BYTES} bytes, got {}",
                value.len()
            ),
        ));
    }
    if value.contains('\0') {
        return Err(StoreError::invalid(field, "must not contain NUL"));
    }
    Ok(())
}

pub(crate) fn validate_roles(roles: &[String]) -> Result<(), StoreError> {
    if roles.len() > API_KEY_MAX_ROLES {
        return Err(StoreError::invalid(
            "roles",
            format!("at most {API_KEY_MAX_ROLES} roles, got {}", roles.len()),
        ));
    }
    for role in roles {
        validate_text("role", role, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_checked() {
        assert!(validate_key_id("abc-DEF_123").is_ok());
        assert!(validate_key_id(&"a".repeat(64)).is_ok());
        for bad in ["", "a b", "a.b", "ä", &"a".repeat(65)] {
            assert!(validate_key_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_hides_the_hash() {
        let key = NewApiKey {
            key_id: "k".into(),
            principal: "p".into(),
            name: String::new(),
            roles: vec![],
            secret_hash: "$argon2id$v=19$secret-material".into(),
            expires_at_ms: None,
        };
        let shown = format!("{key:?}");
        assert!(!shown.contains("secret-material"), "{shown}");
    }
}
