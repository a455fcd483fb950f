//! Memory at scale: insert rate, search latency (p50/p99), recall@5 and
//! process memory at growing sizes, on SQLite and (when
//! `CELLGATE_TEST_POSTGRES_URL` is set, e.g. under `scripts/with-postgres`)
//! PostgreSQL.
//!
//! ```text
//! cargo bench -p cellgate-memory --bench scale
//! CELLGATE_BENCH_SIZES=10000,100000,1000000@128 cargo bench -p cellgate-memory --bench scale
//! scripts/with-postgres cargo bench -p cellgate-memory --bench scale
//! ```
//!
//! Environment:
//! - `CELLGATE_BENCH_SIZES`: comma-separated item counts, each optionally
//!   `@dims` for the hashed embedder's dimension (default
//!   `10000,100000`, dimension `CELLGATE_BENCH_DIMS`, default 1024).
//! - `CELLGATE_BENCH_QUERIES`: queries per search mode (default 300, at
//!   least 3).
//! - `CELLGATE_BENCH_BACKENDS`: `sqlite`, `postgres` or both (default:
//!   SQLite, plus PostgreSQL when its URL is set).
//! - `CELLGATE_BENCH_FUSIONS=1`: also report recall@5 of several hybrid
//!   fusions at each size.
//!
//! Each (backend, size) runs in a child process of this binary, so its
//! peak resident memory (VmHWM) is its own. The parent prints Markdown.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellgate_kernel::{CallContext, Provider as _};
use cellgate_memory::dataset;
use cellgate_memory::{
    Anonymizer, Fusion, HashedEmbedder, MemoryConfig, MemoryProvider, SearchMode,
};
use cellgate_store::{ItemKind, NewMemory, Space, Store, StoreConfig, TenantId, View};
use serde_json::{Value, json};
use sqlx::Connection as _;

const CHILD: &str = "CELLGATE_BENCH_CHILD";
/// Memories written one `store_memory` call at a time before the bulk load.
const TOOL_WRITES: usize = 1000;

fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        let result = run_child(&spec);
        println!("RESULT {result}");
        return;
    }
    let sizes = std::env::var("CELLGATE_BENCH_SIZES").unwrap_or_else(|_| "10000,100000".into());
    let default_dims: usize = env_number("CELLGATE_BENCH_DIMS", 1024);
    let postgres = std::env::var("CELLGATE_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let backends: Vec<String> = match std::env::var("CELLGATE_BENCH_BACKENDS") {
        Ok(list) => list.split(',').map(|s| s.trim().to_owned()).collect(),
        Err(_) => {
            let mut b = vec!["sqlite".to_owned()];
            if postgres.is_some() {
                b.push("postgres".into());
            }
            b
        }
    };
    let mut results = Vec::new();
    for backend in &backends {
        for size in sizes.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (n, dims) = match size.split_once('@') {
                Some((n, d)) => (n.to_owned(), d.parse().expect("dims after @")),
                None => (size.to_owned(), default_dims),
            };
            let spec = format!("{backend}:{n}:{dims}");
            eprintln!("scale: running {spec}");
            let output = Command::new(std::env::current_exe().expect("current exe"))
                .env(CHILD, &spec)
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("running a child");
            let stdout = String::from_utf8_lossy(&output.stdout);
            match stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) {
                Some(line) if output.status.success() => {
                    let r: Value = serde_json::from_str(line).expect("child result");
                    eprintln!("scale: {r}");
                    results.push(r);
                }
                _ => eprintln!("scale: {spec} failed ({})", output.status),
            }
        }
    }
    print_markdown(&results);
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

/// VmRSS and VmHWM of this process, in MiB.
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

fn run_child(spec: &str) -> Value {
    let mut parts = spec.split(':');
    let backend = parts.next().expect("backend").to_owned();
    let n: usize = parts.next().and_then(|s| s.parse().ok()).expect("size");
    let dims: usize = parts.next().and_then(|s| s.parse().ok()).expect("dims");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        match backend.as_str() {
            "sqlite" => {
                let dir = std::env::temp_dir().join(format!(
                    "cellgate-memory-bench-{}",
                    uuid::Uuid::new_v4().simple()
                ));
                let path = dir.join("bench.db");
                let store = Store::open(&StoreConfig::Sqlite { path: path.clone() })
                    .await
                    .expect("opening SQLite");
                let mut r = measure(store.clone(), n, dims).await;
                store.close().await;
                let bytes: u64 = std::fs::read_dir(&dir)
                    .map(|d| {
                        d.flatten()
                            .filter_map(|e| e.metadata().ok())
                            .map(|m| m.len())
                            .sum()
                    })
                    .unwrap_or(0);
                r["db_mib"] = json!(bytes as f64 / 1048576.0);
                let _ = std::fs::remove_dir_all(&dir);
                r["backend"] = json!("sqlite");
                r
            }
            "postgres" => {
                let admin_url = std::env::var("CELLGATE_TEST_POSTGRES_URL")
                    .expect("CELLGATE_TEST_POSTGRES_URL for the postgres backend");
                let db = format!("bench_{}", uuid::Uuid::new_v4().simple());
                let mut admin = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .expect("connecting to PostgreSQL");
                sqlx::query(&format!("CREATE DATABASE {db}"))
                    .execute(&mut admin)
                    .await
                    .expect("creating the bench database");
                let store = Store::open(&StoreConfig::Postgres {
                    url: with_database(&admin_url, &db),
                    max_connections: 4,
                })
                .await
                .expect("opening PostgreSQL");
                let mut r = measure(store.clone(), n, dims).await;
                store.close().await;
                let size: Option<i64> = sqlx::query_scalar("SELECT pg_database_size($1)")
                    .bind(&db)
                    .fetch_one(&mut admin)
                    .await
                    .ok();
                r["db_mib"] = json!(size.map(|b| b as f64 / 1048576.0));
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await;
                r["backend"] = json!("postgres");
                r
            }
            other => panic!("unknown backend {other:?}"),
        }
    })
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

async fn measure(store: Store, n: usize, dims: usize) -> Value {
    let tenant = TenantId::parse("bench").expect("tenant id");
    store
        .tenants()
        .ensure(&tenant, "Bench")
        .await
        .expect("tenant");
    let provider = MemoryProvider::new(
        store.clone(),
        Arc::new(HashedEmbedder::new(dims).expect("dims")),
        Anonymizer::builtin(),
        MemoryConfig::default(),
    );
    let per_kind = env_number("CELLGATE_BENCH_QUERIES", 300).max(3) / 3;
    let started = Instant::now();
    let facts = dataset::facts(n, 42);
    let queries = dataset::queries(&facts, per_kind, 7);
    eprintln!(
        "  generated {n} facts, {} queries in {:.1}s",
        queries.len(),
        started.elapsed().as_secs_f64()
    );
    let new = |f: &dataset::Fact| NewMemory {
        key: f.key.clone(),
        category: f.category.clone(),
        tags: Vec::new(),
        value: json!(f.text),
        expires_at_ms: None,
        source: None,
        provenance: None,
    };
    let mut key_of: HashMap<i64, usize> = HashMap::with_capacity(n);
    let fact_index: HashMap<&str, usize> = facts
        .iter()
        .enumerate()
        .map(|(i, f)| (f.key.as_str(), i))
        .collect();

    // One store_memory call per item, as an agent writes.
    let ctx = CallContext::detached(tenant.as_str());
    let tool_n = TOOL_WRITES.min(n / 10);
    let started = Instant::now();
    for f in &facts[..tool_n] {
        let args = json!({ "key": f.key, "category": f.category, "value": f.text });
        let Value::Object(args) = args else {
            unreachable!()
        };
        let result = provider
            .call_tool(&ctx, "store_memory", args)
            .await
            .expect("store_memory");
        assert!(
            result.get("isError").is_none(),
            "store_memory failed: {result}"
        );
    }
    let tool_rate = tool_n as f64 / started.elapsed().as_secs_f64();

    // The rest in bulk, as an import does.
    let started = Instant::now();
    let rows: Vec<NewMemory> = facts[tool_n..].iter().map(new).collect();
    let mut done = tool_n;
    for chunk in rows.chunks(20_000) {
        provider
            .store_memories(&tenant, &Space::Shared, chunk)
            .await
            .expect("store_memories");
        done += chunk.len();
        if n >= 200_000 {
            eprintln!(
                "  loaded {done}/{n} ({:.0}/s)",
                (done - tool_n) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let bulk_rate = (n - tool_n) as f64 / started.elapsed().as_secs_f64();
    // Row ids for recall: read back by key.
    let memory = store.scope(&tenant).memory();
    let view = View::only(&Space::Shared);
    for q in &queries {
        if let Some(m) = memory.get_memory(&view, &q.relevant).await.expect("get") {
            key_of.insert(m.id, fact_index[q.relevant.as_str()]);
        }
    }
    let (rss_loaded, _) = memory_mib();

    // First search: loads every vector from the store and starts building
    // the graph in the background; searches scan exactly until it is in.
    let started = Instant::now();
    provider
        .search(
            &tenant,
            ItemKind::Memory,
            &view,
            "warm up",
            5,
            SearchMode::Vector,
        )
        .await
        .expect("first search");
    let load_s = started.elapsed().as_secs_f64();
    let mut exact_times = Vec::new();
    for q in queries.iter().take(50) {
        let state = provider.index_state(&tenant, ItemKind::Memory).await;
        if !state.building() {
            break;
        }
        let t = Instant::now();
        provider
            .search(
                &tenant,
                ItemKind::Memory,
                &view,
                &q.text,
                5,
                SearchMode::Vector,
            )
            .await
            .expect("search while building");
        exact_times.push(t.elapsed());
    }
    exact_times.sort();
    let state = provider.wait_for_index(&tenant, ItemKind::Memory).await;
    let index_s = started.elapsed().as_secs_f64();
    let (rss_indexed, _) = memory_mib();
    eprintln!(
        "  index loaded in {load_s:.1}s, graph ready at {index_s:.1}s ({state:?}); {} exact searches meanwhile, p50 {:.1} ms",
        exact_times.len(),
        percentile(&exact_times, 0.5)
    );

    let mut modes = serde_json::Map::new();
    for (name, mode) in [
        ("text", Some(SearchMode::Text)),
        ("vector", Some(SearchMode::Vector)),
        ("hybrid", Some(SearchMode::Hybrid)),
        ("retrieve_memory", None),
    ] {
        // A few unmeasured queries first: caches, connections, allocator.
        for q in queries.iter().take(10) {
            let _ = provider
                .search(
                    &tenant,
                    ItemKind::Memory,
                    &view,
                    &q.text,
                    5,
                    SearchMode::Text,
                )
                .await;
        }
        let mut times = Vec::with_capacity(queries.len());
        let mut hits = 0usize;
        for q in &queries {
            let started = Instant::now();
            let found: Vec<String> = match mode {
                Some(mode) => provider
                    .search(&tenant, ItemKind::Memory, &view, &q.text, 5, mode)
                    .await
                    .expect("search")
                    .into_iter()
                    .filter_map(|(id, _)| key_of.get(&id).map(|i| facts[*i].key.clone()))
                    .collect(),
                None => {
                    let Value::Object(args) = json!({ "query": q.text, "limit": 5 }) else {
                        unreachable!()
                    };
                    let r = provider
                        .call_tool(&ctx, "retrieve_memory", args)
                        .await
                        .expect("retrieve_memory");
                    r["structuredContent"]["memories"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|m| m["key"].as_str().map(str::to_owned))
                        .collect()
                }
            };
            times.push(started.elapsed());
            if found.contains(&q.relevant) {
                hits += 1;
            }
        }
        times.sort();
        modes.insert(
            name.into(),
            json!({
                "p50_ms": percentile(&times, 0.50),
                "p99_ms": percentile(&times, 0.99),
                "max_ms": percentile(&times, 1.0),
                "recall_at_5": hits as f64 / queries.len() as f64,
            }),
        );
        eprintln!("  {name}: {}", modes[name]);
    }
    if std::env::var("CELLGATE_BENCH_FUSIONS").is_ok_and(|v| v == "1") {
        // recall@5 of fusion variants at this size (each search recomputes
        // both rankings; latency is not measured here).
        let rrf = |k: f64, text_weight: f64, vector_weight: f64| Fusion::ReciprocalRank {
            k,
            text_weight,
            vector_weight,
        };
        for (name, fusion) in [
            ("rrf k0.5 1/2 (default)", Fusion::DEFAULT),
            ("rrf k0.5 1/1", rrf(0.5, 1.0, 1.0)),
            ("rrf k1 1/1.5", rrf(1.0, 1.0, 1.5)),
            ("rrf k1 1/1", rrf(1.0, 1.0, 1.0)),
            ("rrf k0.5 1.5/1", rrf(0.5, 1.5, 1.0)),
            ("rrf k5 1/1", rrf(5.0, 1.0, 1.0)),
            ("rrf k60 1/1", rrf(60.0, 1.0, 1.0)),
            ("zscore", Fusion::Standardised),
        ] {
            let mut hits = 0usize;
            for q in &queries {
                let found = provider
                    .search(
                        &tenant,
                        ItemKind::Memory,
                        &view,
                        &q.text,
                        5,
                        SearchMode::Fused(fusion),
                    )
                    .await
                    .expect("search");
                if found
                    .iter()
                    .any(|(id, _)| key_of.get(id).is_some_and(|i| facts[*i].key == q.relevant))
                {
                    hits += 1;
                }
            }
            eprintln!(
                "  fusion {name}: recall@5 {:.3}",
                hits as f64 / queries.len() as f64
            );
        }
    }
    let (rss_end, hwm) = memory_mib();
    json!({
        "items": n,
        "dims": dims,
        "queries": queries.len(),
        "tool_insert_per_s": tool_rate,
        "tool_inserts": tool_n,
        "bulk_insert_per_s": bulk_rate,
        "index_load_s": load_s,
        "index_build_s": index_s,
        "exact_while_building_p50_ms": percentile(&exact_times, 0.5),
        "rss_loaded_mib": rss_loaded,
        "rss_indexed_mib": rss_indexed,
        "rss_end_mib": rss_end,
        "hwm_mib": hwm,
        "modes": modes,
    })
}

fn print_markdown(results: &[Value]) {
    let f = |v: &Value, d: usize| v.as_f64().map_or("–".into(), |x| format!("{x:.d$}"));
    println!("\n### Inserts and memory\n");
    println!(
        "| backend | items | dims | store_memory calls/s | bulk items/s | first search s | graph ready s | exact while building p50 ms | RSS loaded MiB | RSS indexed MiB | peak RSS MiB | DB MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r["backend"].as_str().unwrap_or("?"),
            r["items"],
            r["dims"],
            f(&r["tool_insert_per_s"], 0),
            f(&r["bulk_insert_per_s"], 0),
            f(&r["index_load_s"], 1),
            f(&r["index_build_s"], 1),
            f(&r["exact_while_building_p50_ms"], 1),
            f(&r["rss_loaded_mib"], 0),
            f(&r["rss_indexed_mib"], 0),
            f(&r["hwm_mib"], 0),
            f(&r["db_mib"], 0),
        );
    }
    println!("\n### Search (limit 5)\n");
    println!(
        "| backend | items | dims | mode | p50 ms | p99 ms | max ms | recall@5 | p99 vs text |"
    );
    println!("|---|---:|---:|---|---:|---:|---:|---:|---:|");
    for r in results {
        let text_p99 = r["modes"]["text"]["p99_ms"].as_f64();
        for mode in ["text", "vector", "hybrid", "retrieve_memory"] {
            let m = &r["modes"][mode];
            let ratio = match (m["p99_ms"].as_f64(), text_p99) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                _ => "–".into(),
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r["backend"].as_str().unwrap_or("?"),
                r["items"],
                r["dims"],
                mode,
                f(&m["p50_ms"], 2),
                f(&m["p99_ms"], 2),
                f(&m["max_ms"], 2),
                f(&m["recall_at_5"], 3),
                ratio,
            );
        }
    }
}
