//! Appends per second through the real writer (group commit), and how fast
//! verification reads the chain back. A plain timing loop, no thresholds:
//!
//! ```text
//! cargo bench -p cellgate-audit --bench append
//! CELLGATE_BENCH_ENTRIES=500000 cargo bench -p cellgate-audit --bench append
//! scripts/with-postgres cargo bench -p cellgate-audit --bench append   # PostgreSQL too
//! ```
//!
//! Producers take places in the queue and send entries the way the audit
//! layer does, so this measures the writer: chaining, hashing, signing
//! checkpoints and one transaction per batch.

use std::time::{Duration, Instant};

use cellgate_audit::{
    AuditEvent, AuditMetrics, DecisionRecord, EntryKind, Outcome, SigningKey, WriterConfig,
    args_digest, spawn_writer, verify,
};
use cellgate_store::{Store, StoreConfig};
use serde_json::json;
use sqlx::Connection as _;

const PRODUCERS: usize = 8;

fn event(n: usize) -> AuditEvent {
    AuditEvent {
        at_ms: 1_700_000_000_000 + n as i64,
        tenant: format!("tenant-{}", n % 16),
        kind: EntryKind::Call,
        principal_id: format!("agent-{}", n % 100),
        principal_kind: "agent".into(),
        method: "tools/call".into(),
        target: Some("search_documents".into()),
        args_digest: Some(args_digest(&json!({ "query": "quarterly report", "n": n }))),
        outcome: Outcome::Ok,
        error_code: None,
        latency_us: 850,
        decisions: vec![
            DecisionRecord {
                layer: "auth".into(),
                verdict: "allow".into(),
                detail: None,
            },
            DecisionRecord {
                layer: "authorize".into(),
                verdict: "allow".into(),
                detail: None,
            },
            DecisionRecord {
                layer: "inspect".into(),
                verdict: "flag".into(),
                detail: Some("score 35: url-in-arguments".into()),
            },
        ],
        category: None,
        message: None,
    }
}

async fn run(label: &str, config: StoreConfig, entries: usize) {
    let store = Store::open(&config).await.expect("opening the store");
    let key = SigningKey::from_bytes(&[7; 32]);
    let metrics = AuditMetrics::new();
    let (sink, writer) = spawn_writer(
        store.audit(),
        key.clone(),
        WriterConfig::default(),
        metrics.clone(),
    );

    let started = Instant::now();
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let sink = sink.clone();
        producers.push(tokio::spawn(async move {
            let mut n = p;
            while n < entries {
                sink.reserve().await.expect("a place").send(event(n));
                n += PRODUCERS;
            }
        }));
    }
    for p in producers {
        p.await.expect("producer");
    }
    sink.flush().await.expect("flush");
    let elapsed = started.elapsed();
    writer.shutdown(Duration::from_secs(30)).await;

    let batches = metrics.batches_written.get().max(1);
    let chained = entries as f64 / elapsed.as_secs_f64();
    println!(
        "{label}: {entries} appends in {:.2} s = {:.0} appends/s ({} batches, {:.0} entries per batch, {} checkpoints)",
        elapsed.as_secs_f64(),
        chained,
        batches,
        metrics.entries_written.get() as f64 / batches as f64,
        metrics.checkpoints_written.get(),
    );

    // Baseline, same run and store: the same number of rows written as the
    // plain call log writes them (512-row batches, no hashing, no chain).
    let tenant = cellgate_store::TenantId::parse("bench").expect("tenant id");
    store
        .tenants()
        .ensure(&tenant, "bench")
        .await
        .expect("tenant");
    let log = store.scope(&tenant).call_log();
    let rows: Vec<cellgate_store::CallRecord> = (0..512)
        .map(|n| cellgate_store::CallRecord {
            principal: format!("agent-{}", n % 100),
            method: "tools/call".into(),
            target: Some("search_documents".into()),
            outcome: "ok".into(),
            error_code: None,
            latency_us: 850,
            at_ms: 1_700_000_000_000 + n,
        })
        .collect();
    let started = Instant::now();
    let mut written = 0;
    while written < entries {
        log.append_batch(&rows).await.expect("baseline batch");
        written += rows.len();
    }
    let plain = written as f64 / started.elapsed().as_secs_f64();
    println!(
        "{label}: baseline, plain call-log rows in 512-row batches: {plain:.0} rows/s; audit chain / baseline = {:.2}",
        chained / plain
    );

    let started = Instant::now();
    let report = verify(&store.audit(), &[key.verifying_key()])
        .await
        .expect("verify");
    let elapsed = started.elapsed();
    assert!(report.is_intact(), "{report:?}");
    println!(
        "{label}: verified {} entries and {} checkpoints in {:.2} s = {:.0} entries/s",
        report.entries,
        report.checkpoints,
        elapsed.as_secs_f64(),
        report.entries as f64 / elapsed.as_secs_f64(),
    );
    store.close().await;
}

#[tokio::main]
async fn main() {
    let entries: usize = std::env::var("CELLGATE_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);

    let dir = std::env::temp_dir().join(format!(
        "cellgate-audit-bench-{}",
        uuid::Uuid::new_v4().simple()
    ));
    run(
        "sqlite",
        StoreConfig::Sqlite {
            path: dir.join("bench.db"),
        },
        entries,
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);

    if let Ok(admin_url) = std::env::var("CELLGATE_TEST_POSTGRES_URL")
        && !admin_url.is_empty()
    {
        let db = format!("bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connecting to PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut admin)
            .await
            .expect("creating the bench database");
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{db}"),
            None => admin_url.clone(),
        };
        run(
            "postgres",
            StoreConfig::Postgres {
                url,
                max_connections: 4,
            },
            entries,
        )
        .await;
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
        let _ = admin.close().await;
    }
}
