//! The store suite. Every test in `both_backends!` runs once on a fresh
//! SQLite file and once on a fresh PostgreSQL database.
//!
//! PostgreSQL runs when `CELLGATE_TEST_POSTGRES_URL` points at a server
//! whose user may create databases (`scripts/with-postgres` provides one);
//! otherwise that half is skipped with a notice, or fails when
//! `CELLGATE_REQUIRE_POSTGRES=1`.

use cellgate_store::{
    AuditBatch, AuditCheckpoint, AuditQuery, AuditRecord, CallRecord, ChainHead, Store,
    StoreConfig, StoreError, TenantId,
};
use serde_json::json;

// ---- harness: cellgate-testkit ----------------------------------------------

use cellgate_testkit::{TempDir, on_postgres, on_sqlite, with_database};
use sqlx::Connection as _;

/// Declares `mod <name> { sqlite, postgres }` running `<name>` on each backend.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                crate::on_sqlite(super::$name).await
            }

            #[tokio::test]
            async fn postgres() {
                crate::on_postgres(super::$name).await
            }
        }
    )*};
}

both_backends!(
    migrations_are_idempotent,
    tenants_ensure_and_create,
    documents_crud_and_versioning,
    documents_pagination,
    documents_concurrent_puts_bump_versions,
    tenant_isolation,
    call_log_batches,
    unknown_tenant_writes_fail,
    invalid_inputs_are_rejected,
    tenants_suspend_plan_and_delete_with_data,
    audit_append_and_read,
    audit_batches_must_continue_the_head,
    audit_checkpoints_and_paging,
    audit_tenant_scope_reads_only_its_own,
    audit_concurrent_appenders_stay_linear,
);

async fn tenants_suspend_plan_and_delete_with_data(store: Store, _: StoreConfig) {
    use cellgate_store::TenantStatus;
    let tenants = store.tenants();
    let acme = tenant(&store, "acme").await;
    let beta = tenant(&store, "beta").await;
    let fresh = tenants.get(&acme).await.expect("get").expect("exists");
    assert_eq!(
        (fresh.status, fresh.plan.as_str()),
        (TenantStatus::Active, "default")
    );

    let s = tenants
        .set_status(&acme, TenantStatus::Suspended)
        .await
        .expect("suspend");
    assert_eq!(s.status, TenantStatus::Suspended);
    let p = tenants.set_plan(&acme, "pro").await.expect("plan");
    assert_eq!(
        (p.status, p.plan.as_str()),
        (TenantStatus::Suspended, "pro")
    );
    assert_invalid(tenants.set_plan(&acme, "").await, "plan");
    assert!(matches!(
        tenants
            .set_status(&tid("ghost"), TenantStatus::Active)
            .await,
        Err(StoreError::UnknownTenant { .. })
    ));

    // Data in every tenant table, for both tenants.
    for t in [&acme, &beta] {
        let scope = store.scope(t);
        scope
            .documents()
            .put("c", "k", &json!({"v": 1}))
            .await
            .expect("put");
        scope
            .call_log()
            .append_batch(&[record(1, 1000)])
            .await
            .expect("log");
    }
    let deleted = tenants.delete(&acme).await.expect("delete");
    assert!(deleted >= 2, "rows deleted: {deleted}");
    assert_eq!(tenants.get(&acme).await.expect("get"), None);
    assert!(matches!(
        tenants.delete(&acme).await,
        Err(StoreError::UnknownTenant { .. })
    ));
    // The other tenant keeps everything.
    let beta_scope = store.scope(&beta);
    assert!(
        beta_scope
            .documents()
            .get("c", "k")
            .await
            .expect("get")
            .is_some()
    );
    assert_eq!(
        beta_scope
            .call_log()
            .recent(10)
            .await
            .expect("recent")
            .len(),
        1
    );
    // Nothing of acme is left anywhere; recreating it starts empty.
    let again = tenant(&store, "acme").await;
    assert!(
        store
            .scope(&again)
            .documents()
            .get("c", "k")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        store
            .scope(&again)
            .call_log()
            .recent(10)
            .await
            .expect("recent")
            .is_empty()
    );

    // Every table with a tenant column is deleted with its tenant.
    let mut listed: Vec<String> = cellgate_store::all_tenant_tables()
        .map(str::to_owned)
        .collect();
    listed.sort();
    assert_eq!(
        store.tables_with_tenant_column().await.expect("catalog"),
        listed
    );
}

// ---- helpers ---------------------------------------------------------------

fn tid(s: &str) -> TenantId {
    TenantId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

async fn tenant(store: &Store, id: &str) -> TenantId {
    let id = tid(id);
    store
        .tenants()
        .ensure(&id, &format!("Tenant {id}"))
        .await
        .expect("ensuring a tenant");
    id
}

fn record(n: i64, at_ms: i64) -> CallRecord {
    CallRecord {
        principal: format!("user-{n}"),
        method: "tools/call".into(),
        target: (n % 2 == 0).then(|| format!("tool-{n}")),
        outcome: if n % 3 == 0 {
            "error".into()
        } else {
            "ok".into()
        },
        error_code: (n % 3 == 0).then_some(-32000 - n),
        latency_us: n * 10,
        at_ms,
    }
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, StoreError>, expected_field: &str) {
    match result {
        Err(StoreError::Invalid { field, .. }) => assert_eq!(field, expected_field),
        other => panic!("expected Invalid {{ field: {expected_field:?} }}, got {other:?}"),
    }
}

fn assert_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>) -> String {
    match result {
        Err(e @ StoreError::Conflict { .. }) => e.to_string(),
        other => panic!("expected Conflict, got {other:?}"),
    }
}

// ---- backend-independent tests -------------------------------------------

#[test]
fn tenant_ids_parse() {
    for ok in ["local", "a", "7", "acme-corp_2", &"z".repeat(64)] {
        let id = TenantId::parse(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        assert_eq!(id.as_str(), ok);
        assert_eq!(id.to_string(), ok);
    }
    for bad in [
        "",
        "-x",
        "_x",
        "Local",
        "a b",
        "a.b",
        "a/b",
        "ü",
        &"z".repeat(65),
    ] {
        assert!(
            matches!(TenantId::parse(bad), Err(StoreError::Invalid { .. })),
            "{bad:?} accepted"
        );
    }
    assert_eq!(
        serde_json::from_value::<TenantId>(json!("acme")).ok(),
        Some(tid("acme"))
    );
    assert!(serde_json::from_value::<TenantId>(json!("Not Valid")).is_err());
}

#[test]
fn with_database_replaces_the_path() {
    assert_eq!(
        with_database("postgres://u@h:5/postgres", "t_1"),
        "postgres://u@h:5/t_1"
    );
    assert_eq!(
        with_database("postgres://u@h:5", "t_1"),
        "postgres://u@h:5/t_1"
    );
    assert_eq!(
        with_database("postgres://u@h/p?sslmode=disable", "t_1"),
        "postgres://u@h/t_1?sslmode=disable"
    );
}

// ---- SQLite-only tests -----------------------------------------------------

#[tokio::test]
async fn sqlite_file_is_in_wal_mode() {
    let dir = TempDir::new("store-test");
    let path = dir.path().join("wal.db");
    let store = Store::open(&StoreConfig::Sqlite { path: path.clone() })
        .await
        .expect("opening");
    assert_eq!(store.backend_name(), "sqlite");
    assert!(path.is_file(), "the database file was not created");

    // A separate plain connection reads what is persisted in the file.
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("connecting");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .expect("pragma");
    assert_eq!(mode, "wal");
    let _ = conn.close().await;
    store.close().await;
}

#[tokio::test]
async fn sqlite_open_error_names_the_path() {
    let dir = TempDir::new("store-test");
    // A regular file where a directory is needed.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").expect("writing");
    let path = blocker.join("sub").join("x.db");
    let err = Store::open(&StoreConfig::Sqlite { path })
        .await
        .expect_err("must fail");
    let message = err.to_string();
    assert!(message.contains("not-a-dir"), "{message}");
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
}

#[tokio::test]
async fn postgres_connect_error_hides_the_password() {
    // Port 1 on loopback refuses at once; no server needed.
    let config = StoreConfig::Postgres {
        url: "postgres://app:hunter2@127.0.0.1:1/db".into(),
        max_connections: 1,
    };
    let err = Store::open(&config).await.expect_err("must fail");
    let message = err.to_string();
    assert!(
        message.contains("postgres://app:***@127.0.0.1:1/db"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    // The actual cause, not just a pool timeout.
    assert!(message.contains("refused"), "{message}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");

    let zero = StoreConfig::Postgres {
        url: "postgres://127.0.0.1:1/db".into(),
        max_connections: 0,
    };
    assert_invalid(Store::open(&zero).await, "max_connections");
}

// ---- both backends ---------------------------------------------------------

async fn migrations_are_idempotent(store: Store, config: StoreConfig) {
    let expected = match config {
        StoreConfig::Sqlite { .. } => "sqlite",
        StoreConfig::Postgres { .. } => "postgres",
    };
    assert_eq!(store.backend_name(), expected);
    store.ping().await.expect("ping");
    let id = tenant(&store, "keep").await;
    store
        .scope(&id)
        .documents()
        .put("c", "k", &json!(1))
        .await
        .expect("put");

    // Opening an up-to-date store twice more applies nothing and loses nothing.
    for _ in 0..2 {
        let again = Store::open(&config).await.expect("reopening");
        again.ping().await.expect("ping after reopen");
        assert_eq!(
            again.tenants().get(&id).await.expect("get").map(|t| t.name),
            Some("Tenant keep".to_owned())
        );
        let doc = again
            .scope(&id)
            .documents()
            .get("c", "k")
            .await
            .expect("get doc");
        assert_eq!(doc.map(|d| d.value), Some(json!(1)));
        again.close().await;
    }
}

async fn tenants_ensure_and_create(store: Store, _: StoreConfig) {
    let tenants = store.tenants();
    let acme = tid("acme");
    assert_eq!(tenants.get(&acme).await.expect("get"), None);

    let first = tenants.ensure(&acme, "Acme").await.expect("ensure");
    assert_eq!((first.id.as_str(), first.name.as_str()), ("acme", "Acme"));
    assert!(first.created_at_ms > 0);
    // Idempotent: the second call returns the stored tenant unchanged.
    let second = tenants
        .ensure(&acme, "Another name")
        .await
        .expect("ensure again");
    assert_eq!(second, first);

    let message = assert_conflict(tenants.create(&acme, "Acme").await);
    assert!(message.contains("acme"), "{message}");

    let beta = tenants.create(&tid("beta"), "Beta").await.expect("create");
    assert_eq!(beta.name, "Beta");
    assert_eq!(
        tenants.get(&tid("beta")).await.expect("get"),
        Some(beta.clone())
    );
    tenants
        .create(&tid("00-first"), "Digits first")
        .await
        .expect("create");

    let ids: Vec<String> = tenants
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.id.to_string())
        .collect();
    assert_eq!(ids, ["00-first", "acme", "beta"]);

    assert_invalid(tenants.create(&tid("gamma"), "  ").await, "tenant name");
    assert_invalid(
        tenants.ensure(&tid("gamma"), &"n".repeat(256)).await,
        "tenant name",
    );
    assert_eq!(tenants.get(&tid("gamma")).await.expect("get"), None);
}

async fn documents_crud_and_versioning(store: Store, _: StoreConfig) {
    let docs = store.scope(&tenant(&store, "acme").await).documents();
    let value = json!({ "text": "héllo ✓", "n": 42, "f": 1.5, "list": [1, null, true], "nested": { "a": { "b": [] } } });

    let v1 = docs.put("notes", "one", &value).await.expect("put");
    assert_eq!(
        (v1.collection.as_str(), v1.key.as_str(), v1.version),
        ("notes", "one", 1)
    );
    assert_eq!(v1.value, value);
    assert!(v1.updated_at_ms > 0);

    let v2 = docs
        .put("notes", "one", &json!("replaced"))
        .await
        .expect("put again");
    assert_eq!(v2.version, 2);
    assert_eq!(
        docs.get("notes", "one").await.expect("get"),
        Some(v2.clone())
    );
    assert_eq!(docs.get("notes", "missing").await.expect("get"), None);
    assert_eq!(docs.get("other", "one").await.expect("get"), None);

    // Conditional writes.
    let message = assert_conflict(docs.put_if_version("notes", "one", &json!(0), 0).await);
    assert!(message.contains("found version 2"), "{message}");
    let v3 = docs
        .put_if_version("notes", "one", &json!(3), 2)
        .await
        .expect("matching version");
    assert_eq!((v3.version, &v3.value), (3, &json!(3)));
    let message = assert_conflict(
        docs.put_if_version("notes", "one", &json!("stale"), 2)
            .await,
    );
    assert!(
        message.contains("expected version 2") && message.contains("found version 3"),
        "{message}"
    );
    assert_eq!(
        docs.get("notes", "one")
            .await
            .expect("get")
            .map(|d| d.value),
        Some(json!(3))
    );

    let fresh = docs
        .put_if_version("notes", "two", &json!({}), 0)
        .await
        .expect("create-only");
    assert_eq!(fresh.version, 1);
    let message = assert_conflict(docs.put_if_version("notes", "three", &json!({}), 5).await);
    assert!(message.contains("found no document"), "{message}");
    assert_invalid(
        docs.put_if_version("notes", "one", &json!(1), -1).await,
        "expected_version",
    );

    // Delete.
    assert!(docs.delete("notes", "one").await.expect("delete"));
    assert!(!docs.delete("notes", "one").await.expect("delete again"));
    assert_eq!(docs.get("notes", "one").await.expect("get"), None);
    // A deleted document starts over at version 1.
    assert_eq!(
        docs.put("notes", "one", &json!(null))
            .await
            .expect("put")
            .version,
        1
    );
}

async fn documents_pagination(store: Store, _: StoreConfig) {
    let docs = store.scope(&tenant(&store, "acme").await).documents();
    // Mixed case and digits: the order must be byte order on both backends.
    let mut keys: Vec<String> = (0..23).map(|i| format!("k{:02}", (i * 7) % 23)).collect();
    keys.extend(["B".into(), "a".into(), "_".into(), "Z9".into(), "é".into()]);
    for k in &keys {
        docs.put("items", k, &json!({ "key": k }))
            .await
            .expect("put");
    }
    docs.put("elsewhere", "k00", &json!(0)).await.expect("put");

    let mut expected = keys.clone();
    expected.sort();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = docs
            .list("items", after.as_deref(), 10)
            .await
            .expect("list");
        assert!(page.len() <= 10);
        if page.is_empty() {
            break;
        }
        assert!(
            page.iter()
                .all(|d| d.collection == "items" && d.value == json!({ "key": d.key }))
        );
        after = page.last().map(|d| d.key.clone());
        seen.extend(page.into_iter().map(|d| d.key));
    }
    assert_eq!(seen, expected);

    // Limits clamp rather than fail.
    assert_eq!(docs.list("items", None, 0).await.expect("list").len(), 1);
    assert_eq!(
        docs.list("items", None, 1_000_000)
            .await
            .expect("list")
            .len(),
        keys.len()
    );
    assert_eq!(
        docs.list("items", Some("k21"), 100)
            .await
            .expect("list")
            .len(),
        2
    ); // k22 and é
    assert!(
        docs.list("nothing", None, 10)
            .await
            .expect("list")
            .is_empty()
    );
}

async fn documents_concurrent_puts_bump_versions(store: Store, _: StoreConfig) {
    let docs = store.scope(&tenant(&store, "acme").await).documents();
    let mut tasks = Vec::new();
    for writer in 0..4 {
        let docs = docs.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                docs.put("counters", "shared", &json!({ "writer": writer, "i": i }))
                    .await
                    .expect("concurrent put");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    // Every upsert bumped the version exactly once.
    assert_eq!(
        docs.get("counters", "shared")
            .await
            .expect("get")
            .map(|d| d.version),
        Some(40)
    );
}

async fn tenant_isolation(store: Store, _: StoreConfig) {
    let a = store.scope(&tenant(&store, "tenant-a").await);
    let b = store.scope(&tenant(&store, "tenant-b").await);
    assert_eq!(a.tenant().as_str(), "tenant-a");

    a.documents()
        .put("shared", "same-key", &json!("a1"))
        .await
        .expect("put a");
    a.documents()
        .put("shared", "same-key", &json!("a2"))
        .await
        .expect("put a");
    a.documents()
        .put("shared", "only-a", &json!("a"))
        .await
        .expect("put a");
    let b_doc = b
        .documents()
        .put("shared", "same-key", &json!("b1"))
        .await
        .expect("put b");
    // B's first write is version 1, not A's 2 + 1.
    assert_eq!(b_doc.version, 1);

    assert_eq!(
        a.documents()
            .get("shared", "same-key")
            .await
            .expect("get")
            .map(|d| d.value),
        Some(json!("a2"))
    );
    assert_eq!(
        b.documents()
            .get("shared", "same-key")
            .await
            .expect("get")
            .map(|d| d.value),
        Some(json!("b1"))
    );
    assert_eq!(
        b.documents().get("shared", "only-a").await.expect("get"),
        None
    );
    let b_keys: Vec<String> = b
        .documents()
        .list("shared", None, 100)
        .await
        .expect("list")
        .into_iter()
        .map(|d| d.key)
        .collect();
    assert_eq!(b_keys, ["same-key"]);

    // Versions and deletes do not cross either.
    assert_conflict(
        b.documents()
            .put_if_version("shared", "same-key", &json!("x"), 2)
            .await,
    );
    assert!(
        !b.documents()
            .delete("shared", "only-a")
            .await
            .expect("delete")
    );
    assert!(
        b.documents()
            .delete("shared", "same-key")
            .await
            .expect("delete")
    );
    assert_eq!(
        a.documents()
            .get("shared", "same-key")
            .await
            .expect("get")
            .map(|d| d.version),
        Some(2)
    );

    a.call_log()
        .append_batch(&[record(1, 10), record(2, 20)])
        .await
        .expect("append a");
    b.call_log()
        .append_batch(&[record(3, 30)])
        .await
        .expect("append b");
    assert_eq!(a.call_log().count().await.expect("count"), 2);
    assert_eq!(b.call_log().count().await.expect("count"), 1);
    assert_eq!(
        b.call_log().recent(10).await.expect("recent"),
        [record(3, 30)]
    );
}

async fn call_log_batches(store: Store, _: StoreConfig) {
    let log = store.scope(&tenant(&store, "acme").await).call_log();
    assert_eq!(log.count().await.expect("count"), 0);
    assert!(log.recent(10).await.expect("recent").is_empty());
    log.append_batch(&[]).await.expect("empty batch");

    let batch = [record(1, 1_000), record(2, 3_000), record(3, 2_000)];
    log.append_batch(&batch).await.expect("append");
    assert_eq!(log.count().await.expect("count"), 3);
    // Newest first, by at_ms, with every field round-tripped.
    assert_eq!(
        log.recent(10).await.expect("recent"),
        [record(2, 3_000), record(3, 2_000), record(1, 1_000)]
    );
    assert_eq!(log.recent(0).await.expect("recent"), [record(2, 3_000)]);

    // Equal timestamps: the later insert counts as newer.
    log.append_batch(&[record(4, 5_000), record(5, 5_000)])
        .await
        .expect("append");
    assert_eq!(
        log.recent(2).await.expect("recent"),
        [record(5, 5_000), record(4, 5_000)]
    );

    // Larger than one INSERT statement's worth of rows.
    let big: Vec<CallRecord> = (0..600).map(|i| record(i, 10_000 + i)).collect();
    log.append_batch(&big).await.expect("big batch");
    assert_eq!(log.count().await.expect("count"), 605);
    assert_eq!(log.recent(1).await.expect("recent"), [record(599, 10_599)]);
    assert_eq!(log.recent(5_000).await.expect("recent").len(), 605);

    // A bad record rejects the whole batch, not just itself.
    let mut poisoned: Vec<CallRecord> = (0..5).map(|i| record(i, 20_000 + i)).collect();
    poisoned[3].principal = "nul\0byte".into();
    match log.append_batch(&poisoned).await {
        Err(StoreError::Invalid { field, message }) => {
            assert_eq!(field, "call record principal");
            assert!(message.contains("record 3"), "{message}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(log.count().await.expect("count"), 605);
}

async fn unknown_tenant_writes_fail(store: Store, _: StoreConfig) {
    let ghost = tid("ghost");
    let scope = store.scope(&ghost);
    let docs = scope.documents();

    let is_unknown = |r: &Result<_, StoreError>| matches!(r, Err(StoreError::UnknownTenant { tenant }) if tenant.as_str() == "ghost");
    let put = docs.put("c", "k", &json!(1)).await;
    assert!(is_unknown(&put), "{put:?}");
    let message = put.map(|_| ()).expect_err("checked").to_string();
    assert!(
        message.contains("ghost") && message.contains("does not exist"),
        "{message}"
    );
    let create_only = docs.put_if_version("c", "k", &json!(1), 0).await;
    assert!(is_unknown(&create_only), "{create_only:?}");
    let update = docs.put_if_version("c", "k", &json!(1), 3).await;
    assert!(is_unknown(&update), "{update:?}");
    let append = scope.call_log().append_batch(&[record(1, 1)]).await;
    assert!(
        matches!(&append, Err(StoreError::UnknownTenant { .. })),
        "{append:?}"
    );

    // Nothing was created on the way.
    assert_eq!(store.tenants().get(&ghost).await.expect("get"), None);
    assert!(store.tenants().list().await.expect("list").is_empty());
    assert_eq!(docs.get("c", "k").await.expect("get"), None);
    assert!(docs.list("c", None, 10).await.expect("list").is_empty());
    assert_eq!(scope.call_log().count().await.expect("count"), 0);

    // Once registered, the same scope works.
    store
        .tenants()
        .create(&ghost, "Ghost")
        .await
        .expect("create");
    assert_eq!(docs.put("c", "k", &json!(1)).await.expect("put").version, 1);
}

async fn invalid_inputs_are_rejected(store: Store, _: StoreConfig) {
    let docs = store.scope(&tenant(&store, "acme").await).documents();
    let v = json!(true);
    let long = "x".repeat(256);

    assert_invalid(docs.put("", "k", &v).await, "collection");
    assert_invalid(docs.put("c", "", &v).await, "key");
    assert_invalid(docs.put(&long, "k", &v).await, "collection");
    assert_invalid(docs.put("c", &long, &v).await, "key");
    assert_invalid(docs.put("c", "nul\0", &v).await, "key");
    assert_invalid(docs.put_if_version("c", "", &v, 0).await, "key");
    assert_invalid(docs.get("", "k").await, "collection");
    assert_invalid(docs.delete("c", &long).await, "key");
    assert_invalid(docs.list("", None, 10).await, "collection");
    assert_invalid(docs.list("c", Some(""), 10).await, "after_key");

    // The 255-byte boundary itself is fine.
    let max = "y".repeat(255);
    assert_eq!(
        docs.put(&max, &max, &v)
            .await
            .expect("max-length names")
            .key,
        max
    );
    assert_eq!(docs.list(&max, None, 10).await.expect("list").len(), 1);
    // Nothing invalid reached the table.
    assert!(docs.list("c", None, 10).await.expect("list").is_empty());
}

// ---- audit chain -------------------------------------------------------------

/// A fake 64-hex-digit hash: the store checks shape and linkage, not SHA-256.
fn fake_hash(writer: u32, seq: i64) -> String {
    format!("{writer:08x}{seq:056x}")
}

fn audit_record(seq: i64, tenant: &str, prev_hash: String, hash: String) -> AuditRecord {
    AuditRecord {
        seq,
        at_ms: 1_000 * seq,
        tenant: tenant.into(),
        kind: if seq % 5 == 0 { "admin" } else { "call" }.into(),
        principal: format!("user-{seq}"),
        principal_kind: "user".into(),
        method: "tools/call".into(),
        target: (seq % 2 == 0).then(|| format!("tool-{seq}")),
        args_digest: (seq % 3 != 0).then(|| fake_hash(7, seq)),
        outcome: if seq % 4 == 0 { "error" } else { "ok" }.into(),
        error_code: (seq % 4 == 0).then_some(-32003),
        latency_us: seq * 3,
        decisions: r#"[{"detail":"é \"q\"","layer":"auth","verdict":"deny"}]"#.into(),
        category: (seq % 5 == 0).then(|| "security".into()),
        message: (seq % 5 == 0).then(|| format!("note ✓ {seq}")),
        prev_hash,
        hash,
    }
}

/// `n` records continuing `head`, linked with fake hashes of `writer`.
fn continue_chain(head: &ChainHead, n: i64, tenant: &str, writer: u32) -> Vec<AuditRecord> {
    let mut prev = head.hash.clone().unwrap_or_else(|| "0".repeat(64));
    (1..=n)
        .map(|i| {
            let seq = head.seq + i;
            let hash = fake_hash(writer, seq);
            let r = audit_record(seq, tenant, prev.clone(), hash.clone());
            prev = hash;
            r
        })
        .collect()
}

fn checkpoint_of(head: &ChainHead, at_ms: i64) -> AuditCheckpoint {
    AuditCheckpoint {
        seq: head.seq,
        hash: head.hash.clone().unwrap_or_default(),
        at_ms,
        key: "ab".repeat(32),
        signature: "cd".repeat(64),
    }
}

/// Runs one statement on its own connection, beside the store's pool.
async fn raw_execute(config: &StoreConfig, sql: &str) {
    match config {
        StoreConfig::Sqlite { path } => {
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .expect("raw sqlite connection");
            sqlx::query(sql).execute(&mut c).await.expect(sql);
            let _ = c.close().await;
        }
        StoreConfig::Postgres { url, .. } => {
            let mut c = sqlx::PgConnection::connect(url)
                .await
                .expect("raw postgres connection");
            sqlx::query(sql).execute(&mut c).await.expect(sql);
            let _ = c.close().await;
        }
    }
}

async fn audit_append_and_read(store: Store, _: StoreConfig) {
    let audit = store.audit();
    assert_eq!(audit.head().await.expect("head"), Some(ChainHead::empty()));
    assert_eq!(audit.count().await.expect("count"), 0);
    assert_eq!(audit.max_seq().await.expect("max"), None);
    assert_eq!(audit.latest_checkpoint().await.expect("latest"), None);
    assert_eq!(audit.max_checkpoint_id().await.expect("max id"), None);

    let mut built = Vec::new();
    let appended = audit
        .append(|head| {
            assert_eq!(*head, ChainHead::empty());
            built = continue_chain(head, 3, "acme", 1);
            AuditBatch {
                entries: built.clone(),
                checkpoint: None,
            }
        })
        .await
        .expect("first batch");
    assert_eq!(appended.previous, ChainHead::empty());
    assert_eq!(
        appended.head,
        ChainHead {
            seq: 3,
            hash: Some(fake_hash(1, 3))
        }
    );
    assert!(!appended.checkpointed);
    // Every field round-trips, absent ones included.
    assert_eq!(
        audit
            .entries(&AuditQuery::default(), 10)
            .await
            .expect("entries"),
        built
    );

    // Larger than one INSERT statement's worth of rows, under other tenants.
    let second = audit
        .append(|head| AuditBatch {
            entries: continue_chain(head, 600, "beta", 1),
            checkpoint: None,
        })
        .await
        .expect("big batch");
    assert_eq!(second.previous.seq, 3);
    assert_eq!(second.head.seq, 603);
    assert_eq!(audit.count().await.expect("count"), 603);
    assert_eq!(audit.max_seq().await.expect("max"), Some(603));
    assert_eq!(audit.head().await.expect("head"), Some(second.head.clone()));

    // An empty batch without a checkpoint changes nothing.
    let idle = audit
        .append(|_| AuditBatch::default())
        .await
        .expect("empty");
    assert_eq!(idle.head, second.head);

    // Paging in seq order, and the filters.
    let mut seen = Vec::new();
    let mut query = AuditQuery::default();
    loop {
        let page = audit.entries(&query, 250).await.expect("page");
        let Some(last) = page.last() else { break };
        query.after_seq = last.seq;
        seen.extend(page.iter().map(|r| r.seq));
    }
    assert_eq!(seen, (1..=603).collect::<Vec<i64>>());
    let window = audit
        .entries(
            &AuditQuery {
                after_seq: 10,
                through_seq: Some(20),
                since_ms: Some(15_000),
                tenant: None,
            },
            100,
        )
        .await
        .expect("window");
    assert_eq!(
        window.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (15..=20).collect::<Vec<i64>>()
    );
    let acme_only = audit
        .entries(
            &AuditQuery {
                tenant: Some(tid("acme")),
                ..AuditQuery::default()
            },
            1000,
        )
        .await
        .expect("tenant filter");
    assert_eq!(acme_only, built);
    assert_eq!(
        audit.first_seq_since(42_500).await.expect("since"),
        Some(43)
    );
    assert_eq!(
        audit.first_seq_since(1_000_000_000).await.expect("since"),
        None
    );
    // Limits clamp rather than fail.
    assert_eq!(
        audit
            .entries(&AuditQuery::default(), 0)
            .await
            .expect("clamped")
            .len(),
        1
    );
}

async fn audit_batches_must_continue_the_head(store: Store, config: StoreConfig) {
    let audit = store.audit();
    audit
        .append(|head| AuditBatch {
            entries: continue_chain(head, 2, "acme", 1),
            checkpoint: None,
        })
        .await
        .expect("seed");
    let head = audit.head().await.expect("head").expect("head row");

    let skip = audit
        .append(|h| {
            let mut entries = continue_chain(h, 2, "acme", 1);
            entries.remove(0);
            AuditBatch {
                entries,
                checkpoint: None,
            }
        })
        .await;
    assert_invalid(skip, "audit entry seq");
    let unlinked = audit
        .append(|h| {
            let mut entries = continue_chain(h, 2, "acme", 1);
            entries[0].prev_hash = fake_hash(9, 9);
            AuditBatch {
                entries,
                checkpoint: None,
            }
        })
        .await;
    assert_invalid(unlinked, "audit entry prev_hash");
    let bad_hash = audit
        .append(|h| {
            let mut entries = continue_chain(h, 1, "acme", 1);
            entries[0].hash = "XYZ".into();
            AuditBatch {
                entries,
                checkpoint: None,
            }
        })
        .await;
    assert_invalid(bad_hash, "audit entry hash");
    let nul = audit
        .append(|h| {
            let mut entries = continue_chain(h, 1, "acme", 1);
            entries[0].message = Some("a\0b".into());
            AuditBatch {
                entries,
                checkpoint: None,
            }
        })
        .await;
    assert_invalid(nul, "audit entry message");
    let stale_checkpoint = audit
        .append(|h| AuditBatch {
            entries: continue_chain(h, 1, "acme", 1),
            checkpoint: Some(checkpoint_of(h, 5)),
        })
        .await;
    assert_invalid(stale_checkpoint, "audit checkpoint");

    // Nothing of the refused batches was stored.
    assert_eq!(audit.count().await.expect("count"), 2);
    assert_eq!(audit.head().await.expect("head"), Some(head));
    assert_eq!(audit.latest_checkpoint().await.expect("latest"), None);

    // Without the head row there is no chain to append to.
    raw_execute(&config, "DELETE FROM audit_head").await;
    assert_eq!(audit.head().await.expect("head"), None);
    let headless = audit
        .append(|h| AuditBatch {
            entries: continue_chain(h, 1, "acme", 1),
            checkpoint: None,
        })
        .await;
    assert!(
        matches!(&headless, Err(StoreError::Conflict { message }) if message.contains("head row")),
        "{headless:?}"
    );
    assert_eq!(audit.count().await.expect("count"), 2);
}

async fn audit_checkpoints_and_paging(store: Store, _: StoreConfig) {
    let audit = store.audit();
    // A checkpoint in the same transaction as its batch.
    let first = audit
        .append(|h| {
            let entries = continue_chain(h, 10, "acme", 1);
            let head = ChainHead {
                seq: 10,
                hash: Some(entries[9].hash.clone()),
            };
            AuditBatch {
                entries,
                checkpoint: Some(checkpoint_of(&head, 111)),
            }
        })
        .await
        .expect("batch with checkpoint");
    assert!(first.checkpointed);
    // A checkpoint on its own, of the current head.
    let alone = audit
        .append(|h| AuditBatch {
            entries: Vec::new(),
            checkpoint: Some(checkpoint_of(h, 222)),
        })
        .await
        .expect("checkpoint only");
    assert!(alone.checkpointed);
    assert_eq!(alone.head, first.head);
    audit
        .append(|h| {
            let entries = continue_chain(h, 5, "acme", 1);
            let head = ChainHead {
                seq: 15,
                hash: Some(entries[4].hash.clone()),
            };
            AuditBatch {
                entries,
                checkpoint: Some(checkpoint_of(&head, 333)),
            }
        })
        .await
        .expect("third");

    let latest = audit
        .latest_checkpoint()
        .await
        .expect("latest")
        .expect("some");
    assert_eq!((latest.checkpoint.seq, latest.checkpoint.at_ms), (15, 333));
    assert_eq!(
        latest.checkpoint.hash,
        audit
            .head()
            .await
            .expect("head")
            .and_then(|h| h.hash)
            .unwrap_or_default()
    );
    let max_id = audit.max_checkpoint_id().await.expect("max").expect("some");
    let all = audit.checkpoints(None, max_id, 100).await.expect("all");
    assert_eq!(
        all.iter()
            .map(|c| (c.checkpoint.seq, c.checkpoint.at_ms))
            .collect::<Vec<_>>(),
        [(10, 111), (10, 222), (15, 333)]
    );
    // One at a time by (seq, id).
    let mut after = None;
    let mut paged = Vec::new();
    loop {
        let page = audit.checkpoints(after, max_id, 1).await.expect("page");
        let Some(c) = page.first() else { break };
        after = Some((c.checkpoint.seq, c.id));
        paged.push(c.clone());
    }
    assert_eq!(paged, all);
    // Pinned to the checkpoints that existed at some id.
    let pinned = audit
        .checkpoints(None, all[1].id, 100)
        .await
        .expect("pinned");
    assert_eq!(pinned, all[..2]);
}

async fn audit_tenant_scope_reads_only_its_own(store: Store, _: StoreConfig) {
    let a = tenant(&store, "tenant-a").await;
    let b = tenant(&store, "tenant-b").await;
    let audit = store.audit();
    // Interleaved tenants, and one that is not registered: audit entries
    // are system records, refused calls of unknown tenants included.
    for (n, who) in [
        "tenant-a", "tenant-b", "tenant-a", "ghost", "tenant-a", "tenant-b",
    ]
    .into_iter()
    .enumerate()
    {
        audit
            .append(|h| AuditBatch {
                entries: continue_chain(h, 1, who, n as u32),
                checkpoint: None,
            })
            .await
            .expect("append");
    }
    let a_log = store.scope(&a).audit();
    assert_eq!(a_log.tenant(), &a);
    assert_eq!(a_log.count().await.expect("count"), 3);
    let listed = a_log.list(0, 100).await.expect("list");
    assert_eq!(listed.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 3, 5]);
    assert!(listed.iter().all(|r| r.tenant == "tenant-a"));
    assert_eq!(
        a_log
            .list(1, 1)
            .await
            .expect("page")
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        [3]
    );
    assert_eq!(
        a_log
            .recent(2)
            .await
            .expect("recent")
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        [5, 3]
    );
    let b_seqs: Vec<i64> = store
        .scope(&b)
        .audit()
        .list(0, 100)
        .await
        .expect("list b")
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(b_seqs, [2, 6]);
    assert_eq!(
        store
            .scope(&tid("nobody"))
            .audit()
            .count()
            .await
            .expect("count"),
        0
    );

    // Deleting a tenant leaves its audit entries: removing them would break
    // the chain, and the record of what the tenant did must outlive it.
    store.tenants().delete(&a).await.expect("delete tenant");
    assert_eq!(a_log.count().await.expect("count"), 3);
    assert_eq!(audit.count().await.expect("count"), 6);
}

async fn audit_concurrent_appenders_stay_linear(store: Store, config: StoreConfig) {
    // Separate pools stand in for separate processes (replicas).
    const WRITERS: u32 = 4;
    const BATCHES: usize = 15;
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            let replica = Store::open(&config).await.expect("opening a replica");
            let audit = replica.audit();
            for _ in 0..BATCHES {
                audit
                    .append(|h| AuditBatch {
                        // Hashes name the writer: two writers building on
                        // the same head would collide on seq.
                        entries: continue_chain(h, 3, "acme", writer + 1),
                        checkpoint: None,
                    })
                    .await
                    .expect("concurrent append");
            }
            replica.close().await;
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    let audit = store.audit();
    let all = audit
        .entries(&AuditQuery::default(), 10_000)
        .await
        .expect("all");
    let total = i64::from(WRITERS) * BATCHES as i64 * 3;
    assert_eq!(all.len() as i64, total);
    let mut prev = "0".repeat(64);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.seq, i as i64 + 1);
        assert_eq!(r.prev_hash, prev, "seq {}", r.seq);
        prev = r.hash.clone();
    }
    assert_eq!(
        audit.head().await.expect("head"),
        Some(ChainHead {
            seq: total,
            hash: Some(prev)
        })
    );
}

// ---- API keys and device codes (cellgate-auth) ------------------------------

both_backends!(
    api_keys_create_list_revoke,
    api_keys_lookup_and_last_used,
    api_keys_invalid_and_conflicting,
    device_codes_lifecycle,
    device_codes_poll_pacing,
);

fn new_key(id: &str, principal: &str, roles: &[&str]) -> cellgate_store::NewApiKey {
    cellgate_store::NewApiKey {
        key_id: id.into(),
        principal: principal.into(),
        name: format!("key {id}"),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        secret_hash: format!("$argon2id$v=19$m=64,t=1,p=1$c2FsdA${id}"),
        expires_at_ms: None,
    }
}

fn wall_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("fits")
}

async fn api_keys_create_list_revoke(store: Store, _: StoreConfig) {
    let acme = store.scope(&tenant(&store, "acme").await).api_keys();
    let beta = store.scope(&tenant(&store, "beta").await).api_keys();
    let later = wall_ms() + 3_600_000;
    let k1 = acme
        .insert(&cellgate_store::NewApiKey {
            expires_at_ms: Some(later),
            ..new_key("k1", "ci-bot", &["deployer", "reader"])
        })
        .await
        .expect("insert k1");
    assert_eq!(
        (
            k1.key_id.as_str(),
            k1.tenant.as_str(),
            k1.principal.as_str(),
            k1.name.as_str()
        ),
        ("k1", "acme", "ci-bot", "key k1")
    );
    assert_eq!(k1.roles, ["deployer", "reader"]);
    assert_eq!(k1.expires_at_ms, Some(later));
    assert_eq!((k1.revoked_at_ms, k1.last_used_at_ms), (None, None));
    assert!(k1.created_at_ms > 0 && !k1.is_revoked() && !k1.is_expired_at(wall_ms()));
    assert!(k1.is_expired_at(later));
    assert!(
        !format!("{k1:?}").contains("c2FsdA"),
        "the hash leaks in Debug"
    );
    acme.insert(&new_key("k2", "ada", &[]))
        .await
        .expect("insert k2");
    beta.insert(&new_key("k3", "bob", &["admin"]))
        .await
        .expect("insert k3");

    let ids = |list: Vec<cellgate_store::ApiKeyRecord>| {
        list.into_iter().map(|k| k.key_id).collect::<Vec<_>>()
    };
    assert_eq!(ids(acme.list().await.expect("list")), ["k1", "k2"]);
    assert_eq!(ids(beta.list().await.expect("list")), ["k3"]);
    assert_eq!(acme.get("k1").await.expect("get"), Some(k1.clone()));
    // Another tenant's scope neither sees nor revokes nor deletes the key.
    assert_eq!(beta.get("k1").await.expect("get"), None);
    assert_eq!(beta.revoke("k1").await.expect("revoke"), None);
    assert!(!beta.delete("k1").await.expect("delete"));
    assert!(!acme.get("k1").await.expect("get").expect("k1").is_revoked());

    let revoked = acme.revoke("k1").await.expect("revoke").expect("found");
    let first_time = revoked.revoked_at_ms.expect("revoked");
    let again = acme.revoke("k1").await.expect("revoke").expect("found");
    assert_eq!(
        again.revoked_at_ms,
        Some(first_time),
        "the first revocation time stays"
    );
    assert_eq!(acme.revoke("nope").await.expect("revoke"), None);

    assert!(acme.delete("k2").await.expect("delete"));
    assert!(!acme.delete("k2").await.expect("delete"));
    assert_eq!(ids(acme.list().await.expect("list")), ["k1"]);
}

async fn api_keys_lookup_and_last_used(store: Store, _: StoreConfig) {
    let beta_id = tenant(&store, "beta").await;
    let beta = store.scope(&beta_id).api_keys();
    beta.insert(&new_key("k3", "bob", &["admin"]))
        .await
        .expect("insert");
    let directory = store.api_keys();
    let found = directory.find("k3").await.expect("find").expect("exists");
    assert_eq!(
        (found.tenant.as_str(), found.principal.as_str()),
        ("beta", "bob")
    );
    // Untrusted ids find nothing rather than failing.
    for id in ["missing", "bad id!", "", &"x".repeat(65)] {
        assert_eq!(directory.find(id).await.expect("find"), None, "{id:?}");
    }

    directory.record_last_used(&[]).await.expect("empty batch");
    directory
        .record_last_used(&[("k3".into(), 5_000), ("ghost".into(), 1)])
        .await
        .expect("record");
    let last = |r: Option<cellgate_store::ApiKeyRecord>| r.and_then(|r| r.last_used_at_ms);
    assert_eq!(last(directory.find("k3").await.expect("find")), Some(5_000));
    // Never backwards.
    directory
        .record_last_used(&[("k3".into(), 4_000)])
        .await
        .expect("record");
    assert_eq!(last(directory.find("k3").await.expect("find")), Some(5_000));
    directory
        .record_last_used(&[("k3".into(), 6_000)])
        .await
        .expect("record");
    assert_eq!(last(beta.get("k3").await.expect("get")), Some(6_000));

    // Deleting the tenant deletes its keys.
    store
        .tenants()
        .delete(&beta_id)
        .await
        .expect("delete tenant");
    assert_eq!(directory.find("k3").await.expect("find"), None);
}

async fn api_keys_invalid_and_conflicting(store: Store, _: StoreConfig) {
    let acme = store.scope(&tenant(&store, "acme").await).api_keys();
    let beta = store.scope(&tenant(&store, "beta").await).api_keys();
    acme.insert(&new_key("dup", "a", &[]))
        .await
        .expect("insert");
    // Key ids are unique across tenants.
    let message = assert_conflict(beta.insert(&new_key("dup", "b", &[])).await);
    assert!(message.contains("dup"), "{message}");
    let ghost = store.scope(&tid("ghost")).api_keys();
    let unknown = ghost.insert(&new_key("g1", "a", &[])).await;
    assert!(
        matches!(&unknown, Err(StoreError::UnknownTenant { tenant }) if tenant.as_str() == "ghost"),
        "{unknown:?}"
    );

    assert_invalid(
        acme.insert(&new_key("bad id", "a", &[])).await,
        "api key id",
    );
    assert_invalid(acme.insert(&new_key("", "a", &[])).await, "api key id");
    assert_invalid(
        acme.insert(&new_key("k", " ", &[])).await,
        "api key principal",
    );
    assert_invalid(acme.insert(&new_key("k", "a", &[""])).await, "role");
    let many: Vec<String> = (0..65).map(|i| format!("r{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_invalid(acme.insert(&new_key("k", "a", &many)).await, "roles");
    assert_invalid(
        acme.insert(&cellgate_store::NewApiKey {
            secret_hash: String::new(),
            ..new_key("k", "a", &[])
        })
        .await,
        "api key secret hash",
    );
    assert_invalid(
        acme.insert(&cellgate_store::NewApiKey {
            expires_at_ms: Some(wall_ms() - 1),
            ..new_key("k", "a", &[])
        })
        .await,
        "api key expiry",
    );
    assert_invalid(acme.get("no spaces please").await, "api key id");
    assert_eq!(
        acme.list()
            .await
            .expect("list")
            .into_iter()
            .map(|k| k.key_id)
            .collect::<Vec<_>>(),
        ["dup"]
    );
}

fn grant(hash: &str, user_code: &str, now: i64, ttl_ms: i64) -> cellgate_store::NewDeviceCode {
    cellgate_store::NewDeviceCode {
        device_code_hash: hash.into(),
        user_code: user_code.into(),
        client_id: Some("cellgate-cli".into()),
        scope: Some("mcp:tools".into()),
        interval_secs: 5,
        created_at_ms: now,
        expires_at_ms: now + ttl_ms,
    }
}

async fn device_codes_lifecycle(store: Store, _: StoreConfig) {
    use cellgate_store::{DeviceApproval, DeviceCodeStatus};
    let acme = tenant(&store, "acme").await;
    let devices = store.device_codes();
    let now = wall_ms();
    devices
        .create(&grant("h1", "BCDF-GHJK", now, 600_000))
        .await
        .expect("create");
    assert_conflict(
        devices
            .create(&grant("h2", "BCDF-GHJK", now, 600_000))
            .await,
    );
    assert_conflict(
        devices
            .create(&grant("h1", "ZZZZ-ZZZZ", now, 600_000))
            .await,
    );
    assert_invalid(
        devices.create(&grant("h3", "", now, 600_000)).await,
        "user code",
    );
    assert_invalid(
        devices.create(&grant("h3", "XXXX-XXXX", now, 0)).await,
        "device code expiry",
    );

    let pending = devices
        .find_by_user_code("BCDF-GHJK")
        .await
        .expect("find")
        .expect("exists");
    assert_eq!(pending.status, DeviceCodeStatus::Pending);
    assert_eq!(
        (
            pending.tenant.as_ref(),
            pending.principal.as_ref(),
            pending.roles.len()
        ),
        (None, None, 0)
    );
    assert_eq!(pending.client_id.as_deref(), Some("cellgate-cli"));
    assert_eq!(pending.scope.as_deref(), Some("mcp:tools"));
    assert_eq!(pending.interval_secs, 5);

    let approval = |tenant: &TenantId| DeviceApproval {
        tenant: tenant.clone(),
        principal: "ada".into(),
        roles: vec!["dev".into(), "tester".into()],
        approved_by: "acme-admin".into(),
    };
    let unknown = devices
        .approve("BCDF-GHJK", &approval(&tid("ghost")), now)
        .await;
    assert!(
        matches!(unknown, Err(StoreError::UnknownTenant { .. })),
        "{unknown:?}"
    );
    assert!(
        devices
            .approve("BCDF-GHJK", &approval(&acme), now)
            .await
            .expect("approve")
    );
    let approved = devices
        .find_by_user_code("BCDF-GHJK")
        .await
        .expect("find")
        .expect("exists");
    assert_eq!(approved.status, DeviceCodeStatus::Approved);
    assert_eq!(approved.tenant.as_ref(), Some(&acme));
    assert_eq!(approved.roles, ["dev", "tester"]);
    assert_eq!(approved.approved_by.as_deref(), Some("acme-admin"));
    // Decided once only.
    assert!(
        !devices
            .approve("BCDF-GHJK", &approval(&acme), now)
            .await
            .expect("approve")
    );
    assert!(!devices.deny("BCDF-GHJK", "x", now).await.expect("deny"));

    // Taken exactly once, and gone afterwards.
    let taken = devices
        .take_approved("h1", now)
        .await
        .expect("take")
        .expect("approved");
    assert_eq!(taken.principal.as_deref(), Some("ada"));
    assert_eq!(devices.take_approved("h1", now).await.expect("take"), None);
    assert_eq!(
        devices.find_by_user_code("BCDF-GHJK").await.expect("find"),
        None
    );

    devices
        .create(&grant("h4", "CDFG-HJKL", now, 600_000))
        .await
        .expect("create");
    assert!(
        devices
            .deny("CDFG-HJKL", "acme-admin", now)
            .await
            .expect("deny")
    );
    let denied = devices
        .find_by_user_code("CDFG-HJKL")
        .await
        .expect("find")
        .expect("exists");
    assert_eq!(denied.status, DeviceCodeStatus::Denied);
    assert_eq!(devices.take_approved("h4", now).await.expect("take"), None);

    // Expired grants can be neither approved nor taken, and are purged.
    devices
        .create(&grant("h5", "DFGH-JKLM", now, 1_000))
        .await
        .expect("create");
    assert!(
        !devices
            .approve("DFGH-JKLM", &approval(&acme), now + 1_000)
            .await
            .expect("approve")
    );
    assert!(
        devices
            .find_by_user_code("DFGH-JKLM")
            .await
            .expect("find")
            .expect("exists")
            .is_expired_at(now + 1_000)
    );
    let purged = devices.purge_expired(now + 2_000).await.expect("purge");
    assert_eq!(purged, 1);
    assert_eq!(
        devices.find_by_user_code("DFGH-JKLM").await.expect("find"),
        None
    );
    assert!(
        devices
            .find_by_user_code("CDFG-HJKL")
            .await
            .expect("find")
            .is_some()
    );
}

async fn device_codes_poll_pacing(store: Store, _: StoreConfig) {
    use cellgate_store::DeviceApproval;
    let acme = tenant(&store, "acme").await;
    let devices = store.device_codes();
    let t0 = wall_ms();
    devices
        .create(&grant("p1", "FGHJ-KLMN", t0, 600_000))
        .await
        .expect("create");
    let poll = |at: i64| {
        let devices = devices.clone();
        async move {
            let p = devices
                .poll("p1", at, 5)
                .await
                .expect("poll")
                .expect("exists");
            (p.too_fast, p.record.interval_secs, p.record.last_poll_at_ms)
        }
    };
    // The first poll is never too fast.
    assert_eq!(poll(t0).await, (false, 5, Some(t0)));
    // Too early: slow_down, and the interval grows by 5 seconds.
    assert_eq!(poll(t0 + 1_000).await, (true, 10, Some(t0 + 1_000)));
    // Measured against the grown interval and the latest poll.
    assert_eq!(poll(t0 + 10_999).await, (true, 15, Some(t0 + 10_999)));
    assert_eq!(poll(t0 + 25_999).await, (false, 15, Some(t0 + 25_999)));
    assert_eq!(devices.poll("unknown", t0, 5).await.expect("poll"), None);

    // Once approved, pace no longer matters: the token is ready.
    devices
        .approve(
            "FGHJ-KLMN",
            &DeviceApproval {
                tenant: acme,
                principal: "ada".into(),
                roles: vec![],
                approved_by: "admin".into(),
            },
            t0,
        )
        .await
        .expect("approve");
    assert_eq!(poll(t0 + 26_000).await, (false, 15, Some(t0 + 26_000)));
}
