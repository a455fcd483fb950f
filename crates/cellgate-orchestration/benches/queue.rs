//! The orchestration benchmark: `cargo bench -p cellgate-orchestration --bench queue`.
//!
//! On a real store (SQLite in a temporary directory; PostgreSQL too when
//! `CELLGATE_TEST_POSTGRES_URL` is set, as `scripts/with-postgres` does) it
//! measures, for each backend:
//!
//! - **baseline**: plain single-row INSERTs of the same number of rows in one
//!   transaction, through sqlx on the same database — what the machine and
//!   the database can do at all, so the other numbers can be read as ratios;
//! - **enqueue**: `Engine::submit_many` in batches, no workers;
//! - **end to end**: enqueue → a worker leases → a trivial tool returns at
//!   once → the result is stored, with the in-process worker pool running
//!   while the tasks are submitted; tasks/s until every result is stored;
//! - **scheduling latency**: one task at a time into an idle engine, from
//!   just before `submit` to the moment the tool starts (p50, p99);
//! - **workflows**: runs of the shipped five-phase template (seven tool
//!   calls, six checkpoints each) started together; workflows/s.
//!
//! Sizes: `BENCH_TASKS` (default 20000), `BENCH_LATENCY_TASKS` (1000),
//! `BENCH_WORKFLOWS` (200). Prints a Markdown table.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cellgate_kernel::{BoxFuture, Identity, McpError};
use cellgate_orchestration::{
    Engine, EngineConfig, FIVE_PHASE_TEMPLATE, TaskRequest, ToolCall, ToolRunner,
};
use cellgate_store::{Store, StoreConfig, TenantId};
use serde_json::{Map, Value, json};
use sqlx::Connection as _;

/// Answers every tool at once; optionally notes when each task started.
#[derive(Default)]
struct TrivialTools {
    started: Option<Mutex<HashMap<String, Instant>>>,
    calls: AtomicUsize,
}

fn ok(v: Value) -> Value {
    json!({ "content": [{ "type": "text", "text": v.to_string() }], "structuredContent": v })
}

impl ToolRunner for TrivialTools {
    fn run(&self, call: ToolCall) -> BoxFuture<'static, Result<Value, McpError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(started) = &self.started
            && let Some(id) = call.meta["cellgate/task"]["id"].as_str()
        {
            started
                .lock()
                .unwrap()
                .insert(id.to_owned(), Instant::now());
        }
        let a = Value::Object(call.arguments);
        // The five-phase template's tools, converging on iteration 2.
        let out = match call.tool.as_str() {
            "plan_work" => json!({ "items": ["a", "b"], "goal": a["goal"] }),
            "check_plan" => json!({ "ok": true }),
            "execute_plan" => json!({ "done": a["iteration"] == json!(2) }),
            "verify_result" => json!({ "ok": true }),
            _ => json!({ "ok": true }),
        };
        Box::pin(std::future::ready(Ok(ok(out))))
    }

    fn tool_exists<'a>(
        &'a self,
        _: &'a Identity,
        _: &'a str,
    ) -> BoxFuture<'a, Result<bool, McpError>> {
        Box::pin(std::future::ready(Ok(true)))
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A store for one backend, with a raw pool on the same database for the
/// baseline and for counting what is left.
enum Raw {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

struct Backend {
    name: &'static str,
    store: Store,
    raw: Raw,
    cleanup: Cleanup,
}

/// What to remove when a backend is done.
enum Cleanup {
    Dir(PathBuf),
    Database { admin_url: String, db: String },
}

async fn sqlite_backend() -> Backend {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("cellgate-bench-{}", uuid::Uuid::new_v4().simple()));
    let path = dir.join("cellgate.db");
    let store = Store::open(&StoreConfig::Sqlite { path: path.clone() })
        .await
        .expect("opening SQLite");
    // The same settings as the store's own pool.
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    let raw = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .expect("raw SQLite pool");
    Backend {
        name: "SQLite",
        store,
        raw: Raw::Sqlite(raw),
        cleanup: Cleanup::Dir(dir),
    }
}

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

async fn postgres_backend(admin_url: String) -> Backend {
    let db = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connecting with CELLGATE_TEST_POSTGRES_URL");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .expect("creating the bench database");
    let _ = admin.close().await;
    let url = with_database(&admin_url, &db);
    let store = Store::open(&StoreConfig::Postgres {
        url: url.clone(),
        max_connections: 8,
    })
    .await
    .expect("opening PostgreSQL");
    let raw = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("raw PostgreSQL pool");
    Backend {
        name: "PostgreSQL",
        store,
        raw: Raw::Postgres(raw),
        cleanup: Cleanup::Database { admin_url, db },
    }
}

impl Backend {
    /// Single-row INSERTs of `n` task-sized rows in one transaction.
    async fn baseline(&self, n: usize) -> Duration {
        let args = serde_json::to_string(&json!({ "x": 1 })).unwrap();
        let create = "CREATE TABLE bench_baseline (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, \
                      tool TEXT NOT NULL, arguments TEXT NOT NULL, created_at_ms BIGINT NOT NULL)";
        let insert = "INSERT INTO bench_baseline (id, tenant_id, tool, arguments, created_at_ms) \
                      VALUES ($1, $2, $3, $4, $5)";
        let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        macro_rules! run {
            ($pool:expr) => {{
                sqlx::query(create).execute($pool).await.unwrap();
                let started = Instant::now();
                let mut tx = $pool.begin().await.unwrap();
                for (i, id) in ids.iter().enumerate() {
                    sqlx::query(insert)
                        .bind(id.as_str())
                        .bind("acme")
                        .bind("noop")
                        .bind(args.as_str())
                        .bind(i as i64)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
                started.elapsed()
            }};
        }
        match &self.raw {
            Raw::Sqlite(pool) => run!(pool),
            Raw::Postgres(pool) => run!(pool),
        }
    }

    /// Tasks not yet ended, over all tenants.
    async fn unfinished(&self) -> i64 {
        self.count("SELECT COUNT(*) FROM tasks WHERE status IN ('queued', 'running')")
            .await
    }

    async fn count(&self, sql: &str) -> i64 {
        match &self.raw {
            Raw::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
            Raw::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        }
    }

    async fn count_succeeded(&self, queue: &str) -> i64 {
        let sql = "SELECT COUNT(*) FROM tasks WHERE status = 'succeeded' AND queue = $1";
        match &self.raw {
            Raw::Sqlite(pool) => sqlx::query_scalar(sql)
                .bind(queue)
                .fetch_one(pool)
                .await
                .unwrap(),
            Raw::Postgres(pool) => sqlx::query_scalar(sql)
                .bind(queue)
                .fetch_one(pool)
                .await
                .unwrap(),
        }
    }

    async fn close(self) {
        self.store.close().await;
        match self.raw {
            Raw::Sqlite(pool) => pool.close().await,
            Raw::Postgres(pool) => pool.close().await,
        }
        match self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Database { admin_url, db } => {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                    let _ = admin.close().await;
                }
            }
        }
    }
}

fn noop(queue: &str) -> TaskRequest {
    let mut arguments = Map::new();
    arguments.insert("x".into(), json!(1));
    TaskRequest {
        tool: "noop".into(),
        arguments,
        queue: Some(queue.into()),
        ..TaskRequest::default()
    }
}

fn engine(store: &Store, tools: Arc<TrivialTools>, queue: &str) -> Engine {
    Engine::new(
        store.clone(),
        tools,
        EngineConfig {
            queues: [(queue.to_owned(), 256)].into(),
            lease_batch: 256,
            ..EngineConfig::default()
        },
    )
}

const BATCH: usize = 500;

struct Row {
    backend: &'static str,
    measure: String,
    value: String,
    ratio: String,
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn bench(b: &Backend, n: usize, latency_n: usize, workflows: usize) -> Vec<Row> {
    let me = Identity::local_operator("acme");
    b.store
        .tenants()
        .ensure(&TenantId::parse("acme").unwrap(), "acme")
        .await
        .unwrap();
    let mut rows = Vec::new();
    let row = |measure: &str, value: String, ratio: String| Row {
        backend: b.name,
        measure: measure.to_owned(),
        value,
        ratio,
    };

    // Baseline.
    let base = per_sec(n, b.baseline(n).await);
    rows.push(row(
        &format!("baseline: {n} single-row INSERTs, one transaction"),
        format!("{base:.0} rows/s"),
        "1.00".into(),
    ));

    // Enqueue only: nobody serves this queue.
    let idle = engine(&b.store, Arc::default(), "unserved");
    let started = Instant::now();
    for _ in 0..n / BATCH {
        let reqs: Vec<TaskRequest> = (0..BATCH).map(|_| noop("unserved")).collect();
        idle.submit_many(&me, &reqs).await.unwrap();
    }
    let enqueue = per_sec(n / BATCH * BATCH, started.elapsed());
    rows.push(row(
        &format!("enqueue: `submit_many` in batches of {BATCH}"),
        format!("{enqueue:.0} tasks/s"),
        format!("{:.2}", enqueue / base),
    ));

    // End to end, workers running while tasks arrive.
    let tools = Arc::new(TrivialTools::default());
    let e2e = engine(&b.store, tools.clone(), "e2e");
    let workers = e2e.start();
    let started = Instant::now();
    for _ in 0..n / BATCH {
        let reqs: Vec<TaskRequest> = (0..BATCH).map(|_| noop("e2e")).collect();
        e2e.submit_many(&me, &reqs).await.unwrap();
    }
    let unserved = (n / BATCH * BATCH) as i64;
    while b.unfinished().await > unserved {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    workers.shutdown().await;
    let total = n / BATCH * BATCH;
    assert_eq!(b.count_succeeded("e2e").await, total as i64);
    assert_eq!(tools.calls.load(Ordering::Relaxed), total);
    let tps = per_sec(total, elapsed);
    rows.push(row(
        "end to end: enqueue → trivial tool → result stored",
        format!("{tps:.0} tasks/s"),
        format!("{:.2}", tps / base),
    ));

    // Scheduling latency into an idle engine.
    let tools = Arc::new(TrivialTools {
        started: Some(Mutex::default()),
        ..TrivialTools::default()
    });
    let lat = engine(&b.store, tools.clone(), "latency");
    let workers = lat.start();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut submitted = Vec::with_capacity(latency_n);
    for _ in 0..latency_n {
        let before = Instant::now();
        let id = lat.submit(&me, &noop("latency")).await.unwrap().task.id;
        submitted.push((id, before));
        // Let it run: latency, not queueing behind the previous task.
        while !tools
            .started
            .as_ref()
            .unwrap()
            .lock()
            .unwrap()
            .contains_key(&submitted.last().unwrap().0)
        {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    workers.shutdown().await;
    let started = tools.started.as_ref().unwrap().lock().unwrap().clone();
    let mut lats: Vec<Duration> = submitted
        .iter()
        .map(|(id, before)| started[id].duration_since(*before))
        .collect();
    lats.sort();
    rows.push(row(
        &format!("scheduling latency submit → start, p50 / p99 ({latency_n} tasks)"),
        format!(
            "{:.2} ms / {:.2} ms",
            percentile(&lats, 0.5).as_secs_f64() * 1e3,
            percentile(&lats, 0.99).as_secs_f64() * 1e3
        ),
        String::new(),
    ));

    // Five-phase workflows, all started at once.
    let def: Value = serde_json::from_str(FIVE_PHASE_TEMPLATE).unwrap();
    let wf_engine = engine(&b.store, Arc::default(), "workflows");
    let mut ids = Vec::with_capacity(workflows);
    for i in 0..workflows {
        let run = wf_engine
            .create_workflow(&me, &def, json!({ "goal": format!("goal {i}") }))
            .await
            .unwrap();
        ids.push(run.id);
    }
    let started = Instant::now();
    for id in &ids {
        wf_engine.execute_workflow(&me, id).await.unwrap();
    }
    while b
        .count("SELECT COUNT(*) FROM workflows WHERE status IN ('created', 'running')")
        .await
        > 0
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let succeeded = b
        .count("SELECT COUNT(*) FROM workflows WHERE status = 'succeeded'")
        .await;
    assert_eq!(succeeded, workflows as i64, "every workflow succeeds");
    let wps = per_sec(workflows, elapsed);
    rows.push(row(
        &format!("five-phase workflows ({workflows} started together)"),
        format!("{wps:.0} workflows/s"),
        String::new(),
    ));
    rows
}

fn main() {
    let n = env_usize("BENCH_TASKS", 20_000).max(BATCH);
    let latency_n = env_usize("BENCH_LATENCY_TASKS", 1000).max(1);
    let workflows = env_usize("BENCH_WORKFLOWS", 200).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rows = rt.block_on(async {
        let mut rows = Vec::new();
        let b = sqlite_backend().await;
        rows.extend(bench(&b, n, latency_n, workflows).await);
        b.close().await;
        match std::env::var("CELLGATE_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => {
                let b = postgres_backend(url).await;
                rows.extend(bench(&b, n, latency_n, workflows).await);
                b.close().await;
            }
            _ => eprintln!("note: CELLGATE_TEST_POSTGRES_URL is not set; SQLite only"),
        }
        rows
    });
    println!("| backend | measure | result | × baseline |");
    println!("| --- | --- | --- | --- |");
    for r in rows {
        println!(
            "| {} | {} | {} | {} |",
            r.backend, r.measure, r.value, r.ratio
        );
    }
}
