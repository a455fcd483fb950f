//! The memory provider's suite. Tests in `both_backends!` run once on a
//! fresh SQLite file and once on a fresh PostgreSQL database
//! (`CELLGATE_TEST_POSTGRES_URL`, as the store suite; skipped with a notice
//! unless `CELLGATE_REQUIRE_POSTGRES=1`). The comparison with the official
//! memory server needs Node and `@modelcontextprotocol/server-memory` from
//! `$CELLGATE_TOOLS_DIR` (default `~/.cache/cellgate-tools`); it is skipped
//! with a notice unless `CELLGATE_REQUIRE_INTEROP=1`.

mod memory {
    pub mod cases;
    pub mod index;
    pub mod interactions;
    pub mod official;
    pub mod quality;
}

// ---- harness: cellgate-testkit ---------------------------------------------

use cellgate_store::Store;
use cellgate_testkit::{TempDir, on_postgres, on_sqlite};

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
    memory::index::searches_answer_while_the_graph_builds,
    memory::index::a_saved_graph_is_loaded_and_a_stale_one_rebuilt,
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
