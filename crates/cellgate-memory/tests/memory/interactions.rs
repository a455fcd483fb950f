//! Learning from interactions: call records become observations on `tool`
//! entities in the caller's tenant's shared space.

use std::sync::Arc;
use std::time::Duration;

use cellgate_kernel::CallRecord;
use cellgate_memory::{
    Anonymizer, HashedEmbedder, MemoryConfig, MemoryProvider, RecordedCalls, TOOL_ENTITY_TYPE,
};
use cellgate_store::{Space, Store, StoreConfig, View};
use serde_json::json;

use crate::{as_user, call, tenant};

fn record(tenant: &str, principal: &str, method: &'static str, tool: &str, i: i64) -> CallRecord {
    CallRecord {
        tenant: tenant.into(),
        principal: principal.into(),
        method,
        target: Some(tool.to_owned()),
        outcome: if i % 2 == 0 { "ok" } else { "error" },
        error_code: (i % 2 == 1).then_some(-32603),
        latency_us: 1500 + i as u64,
        at_ms: 1_740_821_412_000 + i * 1000,
    }
}

fn provider(store: &Store, enabled: bool, kept: usize) -> Arc<MemoryProvider> {
    MemoryProvider::new(
        store.clone(),
        Arc::new(HashedEmbedder::new(64).expect("dims")),
        Anonymizer::builtin(),
        MemoryConfig {
            record_interactions: enabled,
            interactions_kept: kept,
            ..MemoryConfig::default()
        },
    )
}

pub async fn tool_calls_become_observations(store: Store, _: StoreConfig) {
    let acme = tenant(&store, "acme").await;
    let other = tenant(&store, "other").await;
    let p = provider(&store, true, 3);
    let records = vec![
        record("acme", "alice", "tools/call", "github__create_issue", 0),
        record("acme", "bob", "tools/call", "github__create_issue", 1),
        record("acme", "alice", "tools/list", "ignored", 2),
        // The memory tools' own calls are not recorded.
        record("acme", "alice", "tools/call", "read_graph", 3),
        record("other", "carol", "tools/call", "search", 4),
        record("not a tenant!", "x", "tools/call", "search", 5),
    ];
    let done = p.record_calls(&records).await.expect("records");
    assert_eq!(
        done,
        RecordedCalls {
            recorded: 3,
            skipped: 3,
            pruned: 0
        }
    );

    let graph = call(&p, &as_user(&acme, "alice"), "read_graph", json!({})).await;
    assert_eq!(
        graph["entities"],
        json!([{
            "name": "github__create_issue",
            "entityType": TOOL_ENTITY_TYPE,
            "observations": [
                "called by alice at 2025-03-01T09:30:12Z: ok (1.5 ms)",
                "called by bob at 2025-03-01T09:30:13Z: error -32603 (1.5 ms)",
            ],
        }]),
        "{graph}"
    );
    // Only the shared space, and only the caller's tenant.
    let private = call(
        &p,
        &as_user(&acme, "alice"),
        "read_graph",
        json!({ "scope": "private" }),
    )
    .await;
    assert_eq!(private["entities"], json!([]));
    let theirs = call(&p, &as_user(&other, "carol"), "read_graph", json!({})).await;
    assert_eq!(theirs["entities"][0]["name"], "search");
    assert_eq!(theirs["entities"].as_array().map(Vec::len), Some(1));

    // Observations an agent wrote stay; recorded ones keep the newest 3.
    call(
        &p,
        &as_user(&acme, "alice"),
        "add_observations",
        json!({ "observations": [{ "entityName": "github__create_issue", "contents": ["needs a repo scope"] }] }),
    )
    .await;
    let more: Vec<CallRecord> = (10..14)
        .map(|i| record("acme", "alice", "tools/call", "github__create_issue", i))
        .collect();
    let done = p.record_calls(&more).await.expect("records");
    assert_eq!((done.recorded, done.pruned), (4, 3));
    let e = store
        .scope(&acme)
        .memory()
        .entity(&Space::Shared, "github__create_issue")
        .await
        .expect("entity")
        .expect("exists");
    assert_eq!(e.observations.len(), 4, "{:?}", e.observations);
    assert!(e.observations.contains(&"needs a repo scope".to_owned()));
    assert!(e.observations.iter().any(|o| o.contains("09:30:25Z")));
    assert!(!e.observations.iter().any(|o| o.contains("09:30:12Z")));

    // The entity is searchable by what happened to it.
    let found = call(
        &p,
        &as_user(&acme, "alice"),
        "query_concepts",
        json!({ "text": "create issue tool", "top_k": 1, "depth": 0 }),
    )
    .await;
    assert_eq!(found["results"][0]["name"], "github__create_issue");
}

pub async fn the_recorder_task_writes_offered_records(store: Store, _: StoreConfig) {
    let acme = tenant(&store, "acme").await;
    assert!(
        provider(&store, false, 10)
            .interaction_recorder(16)
            .is_none()
    );
    let p = provider(&store, true, 10);
    let recorder = p.interaction_recorder(16).expect("enabled");
    for i in 0..4 {
        assert!(recorder.offer(&record("acme", "dave", "tools/call", "fetch", i)));
    }
    // The task writes in the background: wait (bounded) for it.
    let memory = store.scope(&acme).memory();
    let mut seen = 0;
    for _ in 0..200 {
        seen = memory
            .entities_by_names(&View::only(&Space::Shared), &["fetch".to_owned()])
            .await
            .expect("read")
            .first()
            .map_or(0, |e| e.observations.len());
        if seen == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, 4);
}
