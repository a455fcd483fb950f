//! Durable, tenant-scoped state for cellgate, on SQLite (embedded, the
//! default) or PostgreSQL (shared by several replicas), through sqlx.
//!
//! [`Store::open`] connects and applies the embedded migrations. The tenant
//! registry ([`Tenants`]) and the two lookups authentication needs before it
//! knows a tenant ([`ApiKeyDirectory`], [`DeviceCodes`]) and the audit chain
//! ([`AuditLog`]) are the only cross-tenant repositories; everything
//! else ([`Documents`], [`CallLog`]) is reachable only through
//! [`Store::scope`], and every query it issues binds that scope's tenant.
//! Writes under a tenant that is not registered fail with
//! [`StoreError::UnknownTenant`] instead of creating orphan rows.
//!
//! It is not a cache, a rate-limit counter store or a message bus, and not
//! the audit chain's guardian: [`CallLog`] is plain metering data without
//! integrity guarantees, and the tamper-evident audit log keeps its rows
//! here ([`Store::audit`], cross-tenant like the registry, with a read-only
//! [`TenantScope::audit`] view) but is hashed, signed and verified by
//! `cellgate-audit`. It also knows nothing of authorization; callers decide
//! who may open which scope.

mod api_keys;
mod audit;
mod backend;
mod call_log;
mod device_codes;
mod documents;
mod error;
mod memory;
pub mod sealed;
mod tasks;
mod tenant;

use std::fmt;
use std::path::PathBuf;

use backend::{Backend, on_backend, redact_url};

pub use api_keys::{
    API_KEY_ID_MAX_BYTES, API_KEY_LIST_MAX, API_KEY_MAX_ROLES, API_KEY_TEXT_MAX_BYTES,
    ApiKeyDirectory, ApiKeyRecord, ApiKeys, NewApiKey,
};
pub use audit::{
    AUDIT_DECISIONS_MAX_BYTES, AUDIT_MESSAGE_MAX_BYTES, AUDIT_PAGE_MAX, AUDIT_TEXT_MAX_BYTES,
    Appended, AuditBatch, AuditCheckpoint, AuditLog, AuditQuery, AuditRecord, ChainHead,
    StoredCheckpoint, TenantAuditLog,
};
pub use call_log::{CALL_TEXT_MAX_BYTES, CallLog, CallRecord};
pub use device_codes::{
    DeviceApproval, DeviceCodeRecord, DeviceCodeStatus, DeviceCodes, DevicePoll, NewDeviceCode,
};
pub use documents::{Document, Documents, LIST_MAX_LIMIT, NAME_MAX_BYTES};
pub use error::StoreError;
pub use memory::{
    EntityChange, EntityRecord, GraphRecords, ItemKind, MEMORY_BATCH_MAX, MEMORY_LIST_MAX,
    MEMORY_NAME_MAX_BYTES, MEMORY_VALUE_MAX_BYTES, Memory, MemoryRecord, MemoryVersion, NewEntity,
    NewMemory, NewRelation, ObservationsAdded, RelationRecord, Space, StoredVector, Unembedded,
    View, entity_search_text, memory_search_text,
};
pub use sealed::{SealError, SecretSeal};
pub use tasks::{
    CheckpointKind, CheckpointRecord, CrossTenantLeases, ExpiredLeases, HistoryEntry,
    HistoryRecord, LEASE_BATCH_MAX, LOST_LEASE_ALLOWANCE, NewNode, NewTask, NewWorkflow,
    NodeRecord, Resources, Submitted, TASK_LIST_MAX, TaskFilter, TaskLease, TaskOutcome,
    TaskRecord, TaskStatus, TenantNodes, TenantTasks, TenantWorkflows, WorkflowRecord,
    WorkflowStatus,
};
pub use tenant::{TENANT_ID_MAX_LEN, Tenant, TenantId, TenantStatus, Tenants};

/// Every table with a `tenant_id` column, children before parents, so
/// deleting a tenant can remove its rows in order. Modules that add tenant
/// tables list them in their own constant and add it here.
pub fn all_tenant_tables() -> impl Iterator<Item = &'static str> {
    tenant::TENANT_TABLES
        .iter()
        .chain(api_keys::TENANT_TABLES)
        .chain(memory::TENANT_TABLES)
        .chain(tasks::TENANT_TABLES)
        .copied()
}

/// Where the state lives.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// One database file; its directory is created if missing.
    Sqlite { path: PathBuf },
    /// A PostgreSQL URL such as `postgres://user:password@host:5432/db`.
    Postgres { url: String, max_connections: u32 },
}

// Hand-written so a password in the URL never reaches a log line.
impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Sqlite { path } => f.debug_struct("Sqlite").field("path", path).finish(),
            StoreConfig::Postgres {
                url,
                max_connections,
            } => f
                .debug_struct("Postgres")
                .field("url", &redact_url(url))
                .field("max_connections", max_connections)
                .finish(),
        }
    }
}

/// An open store. Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend_name())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the store.
    ///
    /// SQLite: creates the parent directory and the file, and sets WAL
    /// journaling, `synchronous=NORMAL`, a busy timeout and foreign keys on
    /// every connection. PostgreSQL: connects with at most
    /// `max_connections`. Both then apply any pending migrations; opening an
    /// up-to-date store again changes nothing.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let backend = match config {
            StoreConfig::Sqlite { path } => backend::open_sqlite(path).await?,
            StoreConfig::Postgres {
                url,
                max_connections,
            } => backend::open_postgres(url, *max_connections).await?,
        };
        Ok(Store { backend })
    }

    /// Round-trips a trivial query; for readiness probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let backend = self.backend_name();
        let done = on_backend!(&self.backend, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(|_| ()));
        done.map_err(|error| StoreError::Database {
            backend,
            operation: "pinging",
            error,
        })
    }

    /// Closes the pool, waiting for connections in use to be returned. Later
    /// calls on any clone fail.
    pub async fn close(&self) {
        on_backend!(&self.backend, |pool| pool.close().await)
    }

    /// The tables that actually have a `tenant_id` column, read from the
    /// database's catalog; tests compare it with [`all_tenant_tables`] so that
    /// deleting a tenant cannot miss a table.
    pub async fn tables_with_tenant_column(&self) -> Result<Vec<String>, StoreError> {
        let backend = self.backend_name();
        let sql = match self.backend {
            Backend::Sqlite(_) => {
                "SELECT m.name FROM sqlite_master m JOIN pragma_table_info(m.name) p \
                 WHERE m.type = 'table' AND p.name = 'tenant_id' ORDER BY m.name"
            }
            Backend::Postgres(_) => {
                "SELECT table_name::text FROM information_schema.columns \
                 WHERE column_name = 'tenant_id' AND table_schema = current_schema() ORDER BY 1"
            }
        };
        let names = on_backend!(&self.backend, |pool| sqlx::query_scalar::<_, String>(sql)
            .fetch_all(pool)
            .await);
        names.map_err(|error| StoreError::Database {
            backend,
            operation: "listing tenant tables",
            error,
        })
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// API keys of every tenant, by key id: for authentication, which must
    /// find a key before it knows the tenant. Managing keys goes through
    /// [`TenantScope::api_keys`].
    pub fn api_keys(&self) -> ApiKeyDirectory {
        ApiKeyDirectory {
            backend: self.backend.clone(),
        }
    }

    /// Device authorization grants in flight; not tenant-scoped because a
    /// grant has no tenant until it is approved.
    pub fn device_codes(&self) -> DeviceCodes {
        DeviceCodes {
            backend: self.backend.clone(),
        }
    }

    /// The audit chain across all tenants: appending (the audit writer),
    /// verification and export (administrators). Tenants read their own
    /// entries through [`TenantScope::audit`].
    pub fn audit(&self) -> AuditLog {
        AuditLog {
            backend: self.backend.clone(),
        }
    }

    /// Task and workflow leases across all tenants, for the orchestration
    /// engine's own workers only (see [`CrossTenantLeases`]); tenants reach
    /// their tasks through [`TenantScope::tasks`].
    pub fn cross_tenant_leases(&self) -> CrossTenantLeases {
        CrossTenantLeases {
            backend: self.backend.clone(),
        }
    }

    /// The tenant registry.
    pub fn tenants(&self) -> Tenants {
        Tenants {
            backend: self.backend.clone(),
        }
    }

    /// The state of one tenant. Does not check that the tenant exists;
    /// writes through the scope do (see [`StoreError::UnknownTenant`]).
    pub fn scope(&self, tenant: &TenantId) -> TenantScope {
        TenantScope {
            backend: self.backend.clone(),
            tenant: tenant.clone(),
        }
    }
}

/// Access to one tenant's state; the only way to get tenant-scoped
/// repositories.
#[derive(Clone)]
pub struct TenantScope {
    backend: Backend,
    tenant: TenantId,
}

impl fmt::Debug for TenantScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantScope")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl TenantScope {
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    pub fn documents(&self) -> Documents {
        Documents {
            backend: self.backend.clone(),
            tenant: self.tenant.clone(),
        }
    }

    /// The tenant's API keys (create, list, revoke).
    pub fn api_keys(&self) -> ApiKeys {
        ApiKeys {
            backend: self.backend.clone(),
            tenant: self.tenant.clone(),
        }
    }

    pub fn call_log(&self) -> CallLog {
        CallLog {
            backend: self.backend.clone(),
            tenant: self.tenant.clone(),
        }
    }

    /// The tenant's memories and knowledge graph (cellgate-memory).
    pub fn memory(&self) -> Memory {
        Memory {
            backend: self.backend.clone(),
            tenant: self.tenant.clone(),
        }
    }

    /// The tenant's queued tasks (cellgate-orchestration).
    pub fn tasks(&self) -> TenantTasks {
        TenantTasks {
            backend: self.backend.clone(),
            tenant: self.tenant.clone(),
        }
    }

    /// The tenant's workflow runs, checkpoints and history.
    pub fn workflows(&self) -> TenantWorkflows {
        TenantWorkflows {
            backend: self.backend.clone(),
            tenant: self.tenant.clone(),
        }
    }

    /// The tenant's external worker nodes.
    pub fn nodes(&self) -> TenantNodes {
        TenantNodes {
            backend: self.backend.clone(),
            tenant: self.tenant.clone(),
        }
    }

    /// The tenant's own audit entries, read-only.
    pub fn audit(&self) -> TenantAuditLog {
        TenantAuditLog {
            backend: self.backend.clone(),
            tenant: self.tenant.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_hides_the_password() {
        let config = StoreConfig::Postgres {
            url: "postgres://app:hunter2@db/cellgate".into(),
            max_connections: 5,
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("app:***@db"), "{shown}");
    }
}
