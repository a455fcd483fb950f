//! The memory provider's suite. Tests in `both_backends!` run once on a
//! fresh SQLite file and once on a fresh PostgreSQL database
//! (`CELLGATE_TEST_POSTGRES_URL`, as the store suite; skipped with a notice
//! unless `CELLGATE_REQUIRE_POSTGRES=1`). The comparison with the official
//! memory server needs Node and `@modelcontextprotocol/server-memory` from
//! `$CELLGATE_TOOLS_DIR` (default `~/.cache/cellgate-tools`); it is skipped
//! with a notice unless `CELLGATE_REQUIRE_INTEROP=1`.

mod memory {
    pub mod cases;
    pub mod interactions;
    pub mod official;
    pub mod quality;
}

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;

use cellgate_store::{Store, StoreConfig};
use sqlx::Connection as _;

// ---- harness (as in cellgate-store/tests/store.rs) ---------------------------

/// A directory under the system temp dir, removed on drop (also when a test
/// panics).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "cellgate-memory-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Opens the store and runs the body in its own task, so a panicking body
/// still lets the caller clean up before the panic is passed on.
async fn run_isolated<F, Fut>(config: StoreConfig, body: F) -> Result<(), tokio::task::JoinError>
where
    F: FnOnce(Store, StoreConfig) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let store = Store::open(&config)
            .await
            .unwrap_or_else(|e| panic!("opening {config:?}: {e}"));
        body(store.clone(), config).await;
        store.close().await;
    })
    .await
}

fn rethrow(outcome: Result<(), tokio::task::JoinError>) {
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task failed: {e}"),
        }
    }
}

async fn on_sqlite<F, Fut>(body: F)
where
    F: FnOnce(Store, StoreConfig) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = TempDir::new();
    // A nested path checks that open creates missing parent directories.
    let config = StoreConfig::Sqlite {
        path: dir.path().join("data").join("cellgate.db"),
    };
    let outcome = run_isolated(config, body).await;
    drop(dir);
    rethrow(outcome);
}

/// The admin URL, or `None` (after a one-time notice) when PostgreSQL tests
/// are not configured.
fn postgres_admin_url() -> Option<String> {
    match std::env::var("CELLGATE_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CELLGATE_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "CELLGATE_REQUIRE_POSTGRES=1 but CELLGATE_TEST_POSTGRES_URL is not set; \
                 run under scripts/with-postgres"
            );
            static NOTICE: Once = Once::new();
            NOTICE.call_once(|| {
                // Straight to stderr: libtest captures `eprintln!` of passing tests.
                let _ = writeln!(
                    std::io::stderr(),
                    "note: CELLGATE_TEST_POSTGRES_URL is not set; skipping the PostgreSQL half of the store tests"
                );
            });
            None
        }
    }
}

/// `url` with its database name replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (main, query) = match url.split_once('?') {
        Some((main, query)) => (main, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_start = main.find("://").map_or(0, |i| i + 3);
    let path_start = main[authority_start..]
        .find('/')
        .map_or(main.len(), |i| i + authority_start);
    format!("{}/{db}{query}", &main[..path_start])
}

async fn on_postgres<F, Fut>(body: F)
where
    F: FnOnce(Store, StoreConfig) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(admin_url) = postgres_admin_url() else {
        return;
    };
    // A database per test keeps tests independent and parallel-safe.
    let db = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connecting with CELLGATE_TEST_POSTGRES_URL");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .expect("creating a test database");
    let config = StoreConfig::Postgres {
        url: with_database(&admin_url, &db),
        max_connections: 4,
    };
    let outcome = run_isolated(config, body).await;
    // FORCE ends connections a panicking body may have left behind.
    let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
    let _ = admin.close().await;
    rethrow(outcome);
    dropped.expect("dropping the test database");
}

/// Declares `mod <name> { sqlite, postgres }` running `<name>` on each backend.
macro_rules! both_backends {
    ($($module:ident :: $group:ident :: $name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                crate::on_sqlite(crate::$module::$group::$name).await
            }

            #[tokio::test]
            async fn postgres() {
                crate::on_postgres(crate::$module::$group::$name).await
            }
        }
    )*};
}

both_backends!(
    memory::cases::kv_versions_ttl_and_categories,
    memory::cases::graph_follows_official_semantics,
    memory::cases::tenants_and_private_scopes_are_isolated,
    memory::cases::concepts_update_discovery_and_subgraph,
    memory::cases::consolidation_merges_prunes_and_expires,
    memory::cases::elevation_redacts_and_drops_identity,
    memory::cases::export_import_round_trips,
    memory::cases::bulk_writes_are_searchable,
    memory::interactions::tool_calls_become_observations,
    memory::interactions::the_recorder_task_writes_offered_records,
    memory::official::same_results_as_the_official_server,
    memory::quality::hybrid_beats_text_and_vector,
);

// ---- helpers -------------------------------------------------------------------

use std::sync::Arc;

use cellgate_kernel::{AuthMethod, CallContext, Principal, PrincipalKind, Provider as _};
use cellgate_memory::MemoryProvider;
use cellgate_store::TenantId;
use serde_json::{Map, Value};

/// Registers tenant `id`.
pub(crate) async fn tenant(store: &Store, id: &str) -> TenantId {
    let id = TenantId::parse(id).expect("tenant id");
    store
        .tenants()
        .ensure(&id, &format!("Tenant {id}"))
        .await
        .expect("ensuring a tenant");
    id
}

/// A call context in `tenant` for an authenticated user `principal`.
pub(crate) fn as_user(tenant: &TenantId, principal: &str) -> CallContext {
    let mut ctx = CallContext::detached(tenant.as_str());
    ctx.principal = Principal {
        id: Arc::from(principal),
        kind: PrincipalKind::User,
        roles: Arc::from(Vec::new()),
        scopes: Arc::from(Vec::new()),
        auth: AuthMethod::Jwt,
        claims: None,
    };
    ctx
}

/// Calls a tool and returns the whole `CallToolResult`.
pub(crate) async fn call_raw(
    p: &MemoryProvider,
    ctx: &CallContext,
    tool: &str,
    args: Value,
) -> Value {
    let args: Map<String, Value> = match args {
        Value::Object(m) => m,
        other => panic!("arguments must be an object, got {other}"),
    };
    p.call_tool(ctx, tool, args)
        .await
        .unwrap_or_else(|e| panic!("{tool}: {e:?}"))
}

/// Calls a tool that must succeed and returns its structured content.
pub(crate) async fn call(p: &MemoryProvider, ctx: &CallContext, tool: &str, args: Value) -> Value {
    let result = call_raw(p, ctx, tool, args).await;
    assert_ne!(
        result.get("isError"),
        Some(&Value::Bool(true)),
        "{tool}: {result}"
    );
    result["structuredContent"].clone()
}
