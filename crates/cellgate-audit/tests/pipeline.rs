//! The audit layer in a real `cellgate_kernel::Pipeline`, the writer's
//! back-pressure and failure behaviour, administrative entries and export.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cellgate_audit::{
    AuditError, AuditEvent, AuditMetrics, AuditSink, AuditStage, Backpressure, ExportFilter,
    GENESIS, Refusal, WriterConfig, args_digest, entry_json, export_jsonl, export_jsonl_async,
    format_rfc3339, spawn_writer, to_hex, verify,
};
use cellgate_kernel::{
    AuthMethod, BoxFuture, Call, CallContext, Catalog, McpError, Metrics, Pipeline, Principal,
    PrincipalKind, Provider, Request, Stage, StageLayer, Tool, codes,
};
use cellgate_store::{AuditQuery, AuditRecord, Store, StoreConfig, TenantId};
use common::{signing_key, sql};
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

both_backends!(
    calls_are_audited_with_every_decision,
    an_abandoned_call_is_recorded_as_cancelled,
    a_full_queue_refuses_calls_before_they_run,
    admin_entries_share_the_chain_and_tenants_see_their_own,
    export_streams_json_lines,
    idle_chains_get_timed_checkpoints,
    a_stopped_writer_refuses_calls,
);

// ---- a provider and a security layer to audit ------------------------------

/// Tools `echo`, `fail` (a tool error) and `slow` (waits for a permit).
struct Tools {
    ran: AtomicUsize,
    release: Semaphore,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            ran: AtomicUsize::new(0),
            release: Semaphore::new(0),
        }
    }
}

impl Provider for Tools {
    fn id(&self) -> &str {
        "tools"
    }

    fn list_tools<'a>(&'a self, _: &'a CallContext) -> BoxFuture<'a, Result<Vec<Tool>, McpError>> {
        Box::pin(async {
            Ok(["echo", "fail", "slow", "forbidden"]
                .into_iter()
                .map(|n| Tool::new(n, n, json!({ "type": "object" })))
                .collect())
        })
    }

    fn call_tool<'a>(
        &'a self,
        _: &'a CallContext,
        name: &'a str,
        _arguments: Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async move {
            self.ran.fetch_add(1, Ordering::SeqCst);
            match name {
                "fail" => {
                    Ok(json!({ "content": [{ "type": "text", "text": "no" }], "isError": true }))
                }
                "slow" => {
                    let permit = self.release.acquire().await;
                    drop(permit);
                    Ok(json!({ "content": [] }))
                }
                _ => Ok(json!({ "content": [{ "type": "text", "text": "ok" }] })),
            }
        })
    }
}

/// Stands in for the security layers: refuses the tool `forbidden` (and
/// records why), allows and flags the rest.
struct Gate;

impl Stage for Gate {
    type State = ();

    fn before<'a>(&'a self, call: &'a mut Call) -> BoxFuture<'a, Result<(), McpError>> {
        Box::pin(async move {
            if call.request.target() == Some("forbidden") {
                call.ctx
                    .trail
                    .deny("authorize", "role `viewer` lacks tools:call on forbidden");
                return Err(McpError::forbidden("not allowed"));
            }
            call.ctx.trail.allow("authorize");
            Ok(())
        })
    }
}

/// Runs inside the gate: flags every call it sees.
struct Inspect;

impl Stage for Inspect {
    type State = ();

    fn before<'a>(&'a self, call: &'a mut Call) -> BoxFuture<'a, Result<(), McpError>> {
        Box::pin(async move {
            call.ctx.trail.record(
                "inspect",
                cellgate_kernel::Verdict::Flag,
                Some("score 0.1".into()),
            );
            Ok(())
        })
    }
}

/// The pipeline with the audit layer outside the gate, as the binary wires it.
fn pipeline(sink: &AuditSink, tools: &Arc<Tools>) -> Pipeline {
    let providers: Vec<Arc<dyn Provider>> = vec![tools.clone()];
    Pipeline::builder(Catalog::new(providers))
        .layer(StageLayer::new(Inspect))
        .layer(StageLayer::new(Gate))
        .layer(AuditStage::layer(sink.clone()))
        .build()
}

fn alice() -> Principal {
    Principal {
        id: Arc::from("alice"),
        kind: PrincipalKind::Agent,
        roles: Arc::from(vec!["viewer".to_owned()]),
        scopes: Arc::from(Vec::new()),
        auth: AuthMethod::ApiKey,
        claims: None,
    }
}

fn call(tenant: &str, request: Request) -> Call {
    let mut ctx = CallContext::detached(tenant);
    ctx.principal = alice();
    Call { ctx, request }
}

fn tool(name: &str, arguments: Value) -> Request {
    Request::CallTool {
        name: name.into(),
        arguments: match arguments {
            Value::Object(map) => map,
            _ => Map::new(),
        },
    }
}

fn writer_config(backpressure: Backpressure, capacity: usize) -> WriterConfig {
    WriterConfig {
        batch_size: 32,
        channel_capacity: capacity,
        checkpoint_every_entries: 1000,
        checkpoint_every: None,
        backpressure,
    }
}

async fn all_entries(store: &Store) -> Vec<AuditRecord> {
    store
        .audit()
        .entries(&AuditQuery::default(), 10_000)
        .await
        .expect("entries")
}

/// Polls `check` every 10 ms for up to `limit`.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn decisions(r: &AuditRecord) -> Value {
    serde_json::from_str(&r.decisions).unwrap_or(Value::Null)
}

// ---- tests -------------------------------------------------------------------

async fn calls_are_audited_with_every_decision(store: Store, _: StoreConfig) {
    let key = signing_key();
    let metrics = AuditMetrics::new();
    let (sink, writer) = spawn_writer(
        store.audit(),
        key.clone(),
        writer_config(Backpressure::Wait(Duration::from_secs(1)), 64),
        metrics.clone(),
    );
    let tools = Arc::new(Tools::default());
    let p = pipeline(&sink, &tools);

    let secret_args = json!({ "b": 1, "a": "top-secret-value" });
    p.call(call("acme", tool("echo", secret_args.clone())))
        .await
        .expect("echo");
    let refused = p
        .call(call("acme", tool("forbidden", json!({ "x": 1 }))))
        .await
        .expect_err("refused by the gate");
    assert_eq!(refused.code, codes::FORBIDDEN);
    let failed = p
        .call(call("acme", tool("fail", json!({}))))
        .await
        .expect("a tool error is a result");
    assert_eq!(failed["isError"], json!(true));
    let unknown = p
        .call(call("beta", tool("nope", json!({}))))
        .await
        .expect_err("unknown tool");
    assert_eq!(unknown.code, codes::INVALID_PARAMS);
    p.call(call("acme", Request::ListTools { cursor: None }))
        .await
        .expect("list");
    // The refused call never reached the provider.
    assert_eq!(tools.ran.load(Ordering::SeqCst), 2);

    sink.flush().await.expect("flush");
    let entries = all_entries(&store).await;
    assert_eq!(entries.len(), 5);
    let allow_flag = json!([
        { "detail": null, "layer": "authorize", "verdict": "allow" },
        { "detail": "score 0.1", "layer": "inspect", "verdict": "flag" },
    ]);

    let echo = &entries[0];
    assert_eq!(
        (
            echo.seq,
            echo.kind.as_str(),
            echo.tenant.as_str(),
            echo.principal.as_str(),
            echo.principal_kind.as_str(),
            echo.method.as_str(),
            echo.target.as_deref(),
            echo.outcome.as_str(),
            echo.error_code,
        ),
        (
            1,
            "call",
            "acme",
            "alice",
            "agent",
            "tools/call",
            Some("echo"),
            "ok",
            None
        )
    );
    assert_eq!(
        echo.args_digest.as_deref(),
        Some(to_hex(&args_digest(&secret_args)).as_str())
    );
    assert_eq!(decisions(echo), allow_flag);
    assert!(echo.latency_us >= 0);

    // The refusal is recorded with the gate's deny decision; the inner
    // layer never saw the call.
    let denied = &entries[1];
    assert_eq!(
        (
            denied.target.as_deref(),
            denied.outcome.as_str(),
            denied.error_code
        ),
        (Some("forbidden"), "error", Some(codes::FORBIDDEN))
    );
    assert_eq!(
        decisions(denied),
        json!([{
            "detail": "role `viewer` lacks tools:call on forbidden",
            "layer": "authorize",
            "verdict": "deny"
        }])
    );
    assert_eq!(
        (entries[2].outcome.as_str(), entries[2].error_code),
        ("tool_error", None)
    );
    assert_eq!(
        (
            entries[3].tenant.as_str(),
            entries[3].outcome.as_str(),
            entries[3].error_code
        ),
        ("beta", "error", Some(codes::INVALID_PARAMS))
    );
    let list = &entries[4];
    assert_eq!(
        (
            list.method.as_str(),
            list.target.as_deref(),
            list.args_digest.as_deref()
        ),
        ("tools/list", None, None)
    );

    // Arguments are never stored, only their digest.
    let mut exported = Vec::new();
    export_jsonl(&store.audit(), &ExportFilter::default(), &mut exported)
        .await
        .expect("export");
    let text = String::from_utf8(exported).expect("utf-8");
    assert!(!text.contains("top-secret-value"), "{text}");

    assert!(writer.shutdown(Duration::from_secs(5)).await);
    let report = verify(&store.audit(), &[key.verifying_key()])
        .await
        .expect("verify");
    assert!(report.is_intact(), "{report:?}");
    assert_eq!((report.entries, report.last_checkpoint_seq), (5, Some(5)));
    assert_eq!(metrics.entries_written.get(), 5);
    assert_eq!(metrics.calls_abandoned.get(), 0);
}

async fn an_abandoned_call_is_recorded_as_cancelled(store: Store, _: StoreConfig) {
    let metrics = AuditMetrics::new();
    let (sink, writer) = spawn_writer(
        store.audit(),
        signing_key(),
        writer_config(Backpressure::Wait(Duration::from_secs(1)), 64),
        metrics.clone(),
    );
    let tools = Arc::new(Tools::default());
    let p = pipeline(&sink, &tools);
    // The client goes away: the call's future is dropped mid-flight.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        p.call(call("acme", tool("slow", json!({ "k": "v" })))),
    )
    .await;
    assert!(gave_up.is_err(), "the slow tool should not have finished");
    sink.flush().await.expect("flush");
    let entries = all_entries(&store).await;
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(
        (
            e.target.as_deref(),
            e.outcome.as_str(),
            e.error_code,
            e.args_digest.is_some()
        ),
        (Some("slow"), "error", Some(codes::REQUEST_CANCELLED), true)
    );
    // The decisions made before it was dropped are there.
    assert_eq!(decisions(e)[0]["layer"], json!("authorize"));
    assert_eq!(metrics.calls_abandoned.get(), 1);
    assert!(writer.shutdown(Duration::from_secs(5)).await);
}

async fn a_full_queue_refuses_calls_before_they_run(store: Store, _: StoreConfig) {
    for backpressure in [
        Backpressure::Refuse,
        Backpressure::Wait(Duration::from_millis(500)),
    ] {
        let metrics = AuditMetrics::new();
        // One place: a call in flight holds it until it is recorded.
        let (sink, writer) = spawn_writer(
            store.audit(),
            signing_key(),
            writer_config(backpressure, 1),
            metrics.clone(),
        );
        let tools = Arc::new(Tools::default());
        let p = pipeline(&sink, &tools);
        let before = all_entries(&store).await.len();

        let slow = tokio::spawn({
            let p = p.clone();
            async move { p.call(call("acme", tool("slow", json!({})))).await }
        });
        eventually(Duration::from_secs(5), "the slow call to start", || {
            tools.ran.load(Ordering::SeqCst) == 1
        })
        .await;

        let started = Instant::now();
        let refused = p
            .call(call("acme", tool("echo", json!({}))))
            .await
            .expect_err("no room for its entry");
        let waited = started.elapsed();
        assert_eq!(refused.code, codes::SERVER_ERROR);
        assert_eq!(
            refused.data,
            Some(json!({ "layer": "audit", "reason": "full" }))
        );
        if let Backpressure::Wait(limit) = backpressure {
            assert!(waited >= limit, "refused after {waited:?}");
        }
        // Refused before it ran, and counted.
        assert_eq!(tools.ran.load(Ordering::SeqCst), 1);
        assert_eq!(metrics.refused_count("full"), 1);

        // A waiting call gets the place as soon as it frees up.
        let waiting = tokio::spawn({
            let p = p.clone();
            async move { p.call(call("acme", tool("echo", json!({ "w": 1 })))).await }
        });
        tools.release.add_permits(1);
        slow.await.expect("task").expect("slow call");
        let waited_ok = waiting.await.expect("task");
        match backpressure {
            Backpressure::Wait(_) => {
                waited_ok.expect("the waiting call got a place");
            }
            Backpressure::Refuse => {
                // It may have come before or after the place freed up; either
                // it ran and is recorded or it was refused and counted.
                if waited_ok.is_err() {
                    assert_eq!(metrics.refused_count("full"), 2);
                }
            }
        }
        sink.flush().await.expect("flush");
        let recorded = all_entries(&store).await.len() - before;
        let ran = tools.ran.load(Ordering::SeqCst);
        // Exactly the calls that ran are recorded: none dropped, no refused
        // call recorded.
        assert_eq!(recorded, ran);
        assert!(writer.shutdown(Duration::from_secs(5)).await);
    }
}

async fn admin_entries_share_the_chain_and_tenants_see_their_own(store: Store, _: StoreConfig) {
    let key = signing_key();
    let (sink, writer) = spawn_writer(
        store.audit(),
        key.clone(),
        writer_config(Backpressure::Wait(Duration::from_secs(1)), 64),
        AuditMetrics::new(),
    );
    let tools = Arc::new(Tools::default());
    let p = pipeline(&sink, &tools);
    p.call(call("acme", tool("echo", json!({}))))
        .await
        .expect("echo");
    p.call(call("beta", tool("echo", json!({}))))
        .await
        .expect("echo");
    let operator = Principal::local_operator();
    let receipt = sink
        .append(AuditEvent::admin(
            "acme",
            &operator,
            "key-rotation",
            "rotated the signing key ✓",
        ))
        .await
        .expect("admin entry");
    assert_eq!(receipt.seq, 3);
    p.call(call("acme", tool("fail", json!({}))))
        .await
        .expect("fail");
    sink.flush().await.expect("flush");
    let entries = all_entries(&store).await;
    assert_eq!(receipt.hash, entries[2].hash);

    let admin = &entries[2];
    assert_eq!(
        (
            admin.kind.as_str(),
            admin.method.as_str(),
            admin.principal.as_str(),
            admin.category.as_deref(),
            admin.message.as_deref(),
        ),
        (
            "admin",
            "admin",
            "local-operator",
            Some("key-rotation"),
            Some("rotated the signing key ✓")
        )
    );
    let shown = entry_json(admin);
    assert_eq!(shown["category"], json!("key-rotation"));
    assert_eq!(
        shown["principal"],
        json!({ "id": "local-operator", "kind": "user" })
    );
    assert!(shown.get("target").is_none());
    assert_eq!(shown["decisions"], json!([]));

    // A tenant sees its own entries, admin ones included, and no others.
    let acme = TenantId::parse("acme").expect("id");
    let own = store.scope(&acme).audit().list(0, 100).await.expect("list");
    assert_eq!(own.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 3, 4]);
    let beta = TenantId::parse("beta").expect("id");
    let theirs = store.scope(&beta).audit().list(0, 100).await.expect("list");
    assert_eq!(theirs.iter().map(|r| r.seq).collect::<Vec<_>>(), [2]);

    assert!(writer.shutdown(Duration::from_secs(5)).await);
    let report = verify(&store.audit(), &[key.verifying_key()])
        .await
        .expect("verify");
    assert!(report.is_intact(), "{report:?}");
    // Appending after shutdown is refused, not lost.
    assert!(matches!(
        sink.append(AuditEvent::admin("acme", &operator, "x", "y"))
            .await,
        Err(AuditError::Refused(Refusal::Closed))
    ));
}

async fn export_streams_json_lines(store: Store, _: StoreConfig) {
    let key = signing_key();
    let (sink, writer) = spawn_writer(
        store.audit(),
        key,
        writer_config(Backpressure::Wait(Duration::from_secs(1)), 64),
        AuditMetrics::new(),
    );
    let tools = Arc::new(Tools::default());
    let p = pipeline(&sink, &tools);
    for i in 0..30 {
        let tenant = if i % 3 == 0 { "beta" } else { "acme" };
        p.call(call(tenant, tool("echo", json!({ "i": i }))))
            .await
            .expect("echo");
        if i == 14 {
            // A visible step in time in the middle of the chain.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    sink.flush().await.expect("flush");
    assert!(writer.shutdown(Duration::from_secs(5)).await);
    let entries = all_entries(&store).await;

    let export = |filter: ExportFilter| {
        let store = store.clone();
        async move {
            let mut out = Vec::new();
            let summary = export_jsonl(&store.audit(), &filter, &mut out)
                .await
                .expect("export");
            let lines: Vec<Value> = String::from_utf8(out)
                .expect("utf-8")
                .lines()
                .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
                .collect();
            assert_eq!(summary.entries, lines.len() as u64);
            assert_eq!(
                summary.last_seq,
                lines.last().and_then(|l| l["seq"].as_i64())
            );
            lines
        }
    };

    let all = export(ExportFilter::default()).await;
    assert_eq!(all.len(), 30);
    // Lines carry the chain: each links to the one before, from genesis.
    let mut prev = to_hex(&GENESIS);
    for (line, r) in all.iter().zip(&entries) {
        assert_eq!(line["prev_hash"], json!(prev));
        assert_eq!(line["hash"], json!(r.hash));
        assert_eq!(line["time"], json!(format_rfc3339(r.at_ms)));
        assert_eq!(line, &entry_json(r));
        prev = r.hash.clone();
    }

    let after = export(ExportFilter {
        after_seq: Some(25),
        ..ExportFilter::default()
    })
    .await;
    assert_eq!(
        after
            .iter()
            .filter_map(|l| l["seq"].as_i64())
            .collect::<Vec<_>>(),
        [26, 27, 28, 29, 30]
    );
    let beta = export(ExportFilter {
        tenant: Some(TenantId::parse("beta").expect("id")),
        ..ExportFilter::default()
    })
    .await;
    assert_eq!(beta.len(), 10);
    assert!(beta.iter().all(|l| l["tenant"] == json!("beta")));

    let cut = entries[15].at_ms;
    let since = export(
        ExportFilter::default()
            .since_rfc3339(&format_rfc3339(cut))
            .expect("time"),
    )
    .await;
    let expected: Vec<i64> = entries
        .iter()
        .filter(|r| r.at_ms >= cut)
        .map(|r| r.seq)
        .collect();
    assert_eq!(
        since
            .iter()
            .filter_map(|l| l["seq"].as_i64())
            .collect::<Vec<_>>(),
        expected
    );
    assert!(expected.len() < 30 && expected.contains(&16));
    let future = export(
        ExportFilter::default()
            .since_rfc3339("2999-01-01T00:00:00Z")
            .expect("time"),
    )
    .await;
    assert!(future.is_empty());
    assert!(matches!(
        ExportFilter::default().since_rfc3339("last tuesday"),
        Err(AuditError::InvalidTime { .. })
    ));

    // The async variant writes the same bytes.
    let mut sync_out = Vec::new();
    export_jsonl(&store.audit(), &ExportFilter::default(), &mut sync_out)
        .await
        .expect("sync");
    let mut async_out: Vec<u8> = Vec::new();
    export_jsonl_async(&store.audit(), &ExportFilter::default(), &mut async_out)
        .await
        .expect("async");
    assert_eq!(sync_out, async_out);
}

async fn idle_chains_get_timed_checkpoints(store: Store, _: StoreConfig) {
    let key = signing_key();
    let metrics = AuditMetrics::new();
    let config = WriterConfig {
        checkpoint_every_entries: 0,
        checkpoint_every: Some(Duration::from_millis(100)),
        ..writer_config(Backpressure::Wait(Duration::from_secs(1)), 64)
    };
    let (sink, writer) = spawn_writer(store.audit(), key.clone(), config, metrics.clone());
    let operator = Principal::local_operator();
    for i in 0..3 {
        sink.append(AuditEvent::admin("acme", &operator, "c", format!("{i}")))
            .await
            .expect("append");
    }
    // No count-based checkpoint; the timer signs the head once it moved.
    let latest = || async {
        store
            .audit()
            .latest_checkpoint()
            .await
            .expect("latest")
            .map(|c| c.checkpoint.seq)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while latest().await != Some(3) {
        assert!(Instant::now() < deadline, "no timed checkpoint");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While nothing moves, no more checkpoints are signed.
    let signed = metrics.checkpoints_written.get();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(metrics.checkpoints_written.get(), signed);
    assert!(writer.shutdown(Duration::from_secs(5)).await);
    assert_eq!(metrics.checkpoints_written.get(), signed);
    let report = verify(&store.audit(), &[key.verifying_key()])
        .await
        .expect("verify");
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.last_checkpoint_seq, Some(3));
}

async fn a_stopped_writer_refuses_calls(store: Store, _: StoreConfig) {
    let metrics = AuditMetrics::new();
    let (sink, writer) = spawn_writer(
        store.audit(),
        signing_key(),
        writer_config(Backpressure::Wait(Duration::from_secs(1)), 64),
        metrics.clone(),
    );
    let tools = Arc::new(Tools::default());
    let p = pipeline(&sink, &tools);
    p.call(call("acme", tool("echo", json!({}))))
        .await
        .expect("echo");
    assert!(writer.shutdown(Duration::from_secs(5)).await);
    assert!(!sink.status().running);
    let refused = p
        .call(call("acme", tool("echo", json!({}))))
        .await
        .expect_err("no writer, no calls");
    assert_eq!(
        refused.data,
        Some(json!({ "layer": "audit", "reason": "closed" }))
    );
    assert_eq!(tools.ran.load(Ordering::SeqCst), 1);
    assert_eq!(metrics.refused_count("closed"), 1);
    // The call before the shutdown was stored.
    assert_eq!(all_entries(&store).await.len(), 1);
}

// ---- SQLite only: failing storage --------------------------------------------

/// While the store cannot take entries, calls are refused (fail closed);
/// the entry of a call accepted before that is stored once the store is
/// back: nothing is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_fails_closed_and_loses_nothing() {
    common::on_sqlite(|store: Store, config: StoreConfig| async move {
        let key = signing_key();
        let metrics = AuditMetrics::new();
        let (sink, writer) = spawn_writer(
            store.audit(),
            key.clone(),
            writer_config(Backpressure::Wait(Duration::from_secs(1)), 64),
            metrics.clone(),
        );
        let tools = Arc::new(Tools::default());
        let p = pipeline(&sink, &tools);
        p.call(call("acme", tool("echo", json!({}))))
            .await
            .expect("echo");
        sink.flush().await.expect("flush");

        sql(
            &config,
            "ALTER TABLE audit_entries RENAME TO audit_entries_away",
        )
        .await;
        // Accepted while the writer still looked healthy.
        p.call(call("acme", tool("echo", json!({ "during": "outage" }))))
            .await
            .expect("accepted");
        eventually(Duration::from_secs(5), "the writer to notice", || {
            !sink.status().healthy
        })
        .await;
        assert!(sink.status().last_error.is_some());
        let refused = p
            .call(call("acme", tool("echo", json!({}))))
            .await
            .expect_err("fail closed");
        assert_eq!(
            refused.data,
            Some(json!({ "layer": "audit", "reason": "unavailable" }))
        );
        assert_eq!(tools.ran.load(Ordering::SeqCst), 2);

        sql(
            &config,
            "ALTER TABLE audit_entries_away RENAME TO audit_entries",
        )
        .await;
        eventually(Duration::from_secs(15), "the writer to recover", || {
            sink.status().healthy
        })
        .await;
        sink.flush().await.expect("flush");
        let entries = all_entries(&store).await;
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[1].args_digest,
            Some(to_hex(&args_digest(&json!({ "during": "outage" }))))
        );
        assert!(metrics.write_failures.get() >= 1);
        assert_eq!(metrics.refused_count("unavailable"), 1);
        assert_eq!(metrics.entries_lost.get(), 0);
        assert!(writer.shutdown(Duration::from_secs(5)).await);
        let report = verify(&store.audit(), &[key.verifying_key()])
            .await
            .expect("verify");
        assert!(report.is_intact(), "{report:?}");
    })
    .await;
}

/// A writer stopped while the store is down gives up after the grace
/// period and counts what it could not store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_that_cannot_store_counts_the_loss() {
    common::on_sqlite(|store: Store, config: StoreConfig| async move {
        let metrics = AuditMetrics::new();
        let (sink, writer) = spawn_writer(
            store.audit(),
            signing_key(),
            writer_config(Backpressure::Wait(Duration::from_secs(1)), 64),
            metrics.clone(),
        );
        sql(&config, "DROP TABLE audit_entries").await;
        for n in 0..3 {
            sink.reserve()
                .await
                .expect("slot")
                .send(common::call_event(n, "acme"));
        }
        eventually(Duration::from_secs(5), "the failure", || {
            !sink.status().healthy
        })
        .await;
        assert!(!writer.shutdown(Duration::from_millis(300)).await);
        assert_eq!(metrics.entries_lost.get(), 3);
        assert_eq!(metrics.entries_written.get(), 0);
    })
    .await;
}

#[test]
fn metrics_render_in_the_instance_registry() {
    let instance = Metrics::new();
    let audit = AuditMetrics::new();
    instance.with_registry(|r| audit.register(r));
    audit.entries_written.inc_by(3);
    assert_eq!(audit.refused_count("full"), 0);
    let text = instance.render();
    assert!(
        text.contains("cellgate_audit_entries_written_total 3"),
        "{text}"
    );
    assert!(
        text.contains(r#"cellgate_audit_calls_refused_total{reason="full"} 0"#),
        "{text}"
    );
    assert!(text.contains("cellgate_audit_sink_down 0"), "{text}");
}

#[test]
fn refusals_name_the_audit_layer() {
    for (refusal, reason) in [
        (Refusal::Full, "full"),
        (Refusal::Unavailable, "unavailable"),
        (Refusal::Closed, "closed"),
    ] {
        let e = refusal.to_mcp_error();
        assert_eq!(e.code, codes::SERVER_ERROR);
        assert!(e.message.contains("refused"), "{}", e.message);
        assert_eq!(e.data, Some(json!({ "layer": "audit", "reason": reason })));
    }
}
