//! Warm call overhead and throughput of a trivial cell through the
//! registry (fresh instance, call, teardown, profile), against a native
//! Rust closure doing the same JSON echo through the same `spawn_blocking`
//! hop. A plain timing loop, no thresholds:
//!
//! ```text
//! cargo bench -p cellgate-cells --bench warm_call
//! CELLGATE_BENCH_CALLS=50000 cargo bench -p cellgate-cells --bench warm_call
//! ```
//!
//! Cells: the shipped `echo` command module (WASI preview 1, request on
//! stdin, answer on stdout) and an echo component of the
//! `cellgate:cell/tool` world, both from WebAssembly text.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cellgate_cells::manifest::ModuleKind;
use cellgate_cells::{CellRegistry, CellsConfig, InstallRequest, Manifest, PublisherKey};
use cellgate_kernel::Principal;
use cellgate_store::{Store, StoreConfig, TenantId};
use serde_json::{Map, Value, json};

const ECHO_COMPONENT: &str = r#"(component
  (core module $m
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (global.get $bump))
      (global.set $bump (i32.add (global.get $bump) (local.get 3)))
      (local.get $p))
    (func (export "call") (param i32 i32 i32 i32) (result i32)
      (i32.store (i32.const 0) (i32.const 0))
      (i32.store (i32.const 4) (local.get 2))
      (i32.store (i32.const 8) (local.get 3))
      (i32.const 0)))
  (core instance $i (instantiate $m))
  (func (export "call") (param "name" string) (param "args" string) (result (result string (error string)))
    (canon lift (core func $i "call") (memory (core memory $i "memory")) (realloc (core func $i "realloc")))))"#;

fn manifest(name: &str, module: &[u8], kind: ModuleKind) -> Manifest {
    let mut m = Manifest::from_value(json!({
        "name": name,
        "version": "1.0.0",
        "author": "bench",
        "tools": [{ "name": "echo", "description": "Echo", "inputSchema": { "type": "object" } }],
        "limits": { "memoryBytes": 1048576, "fuel": 10000000, "timeoutMs": 1000, "maxOutputBytes": 65536 },
        "module": { "sha256": cellgate_cells::signing::sha256_hex(module) }
    }))
    .expect("bench manifest");
    m.module.kind = kind;
    m
}

fn arguments() -> Map<String, Value> {
    match json!({ "text": "hello, cell", "n": 42, "tags": ["a", "b"] }) {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// What a native tool doing the same work costs: the request serialised
/// and parsed back, on a blocking thread like a cell call.
async fn native_echo(tool: &str, arguments: Map<String, Value>) -> Value {
    let tool = tool.to_owned();
    tokio::task::spawn_blocking(move || {
        let text = json!({ "tool": tool, "arguments": arguments }).to_string();
        serde_json::from_str::<Value>(&text).expect("json")
    })
    .await
    .expect("join")
}

struct Stats {
    calls: usize,
    elapsed: Duration,
    p50_us: f64,
    p99_us: f64,
}

impl Stats {
    fn from(mut samples: Vec<Duration>, elapsed: Duration) -> Stats {
        samples.sort();
        let at = |q: f64| {
            samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].as_secs_f64()
                * 1e6
        };
        Stats {
            calls: samples.len(),
            elapsed,
            p50_us: at(0.50),
            p99_us: at(0.99),
        }
    }
    fn mean_us(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e6 / self.calls as f64
    }
    fn per_sec(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
}

/// `callers` tasks, `calls` calls in all; per-call latencies and wall time.
async fn run<F, Fut>(callers: usize, calls: usize, call: F) -> Stats
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let call = call.clone();
        let n = calls / callers;
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                call().await;
                samples.push(t.elapsed());
            }
            samples
        }));
    }
    let mut samples = Vec::with_capacity(calls);
    for t in tasks {
        samples.extend(t.await.expect("caller"));
    }
    Stats::from(samples, started.elapsed())
}

fn main() {
    let calls: usize = std::env::var("CELLGATE_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(calls));
}

async fn bench(calls: usize) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&StoreConfig::Sqlite {
        path: tmp.path().join("cellgate.db"),
    })
    .await
    .expect("store");
    let tenant = TenantId::parse("bench").expect("tenant");
    store
        .tenants()
        .create(&tenant, "Bench")
        .await
        .expect("tenant");
    let mut config = CellsConfig::new(tmp.path().join("data"));
    config.sandbox.max_concurrent_calls = 64;
    // No re-reads of the store during the run.
    config.refresh = Duration::from_secs(3600);
    let registry = CellRegistry::new(store, config, None).expect("registry");
    let actor = Principal::local_operator();
    let key = PublisherKey::generate();
    registry
        .trust_publisher(&tenant, &actor, "bench", &key.public_key_b64())
        .await
        .expect("trust");

    let command = wat::parse_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../cells/echo/echo.wat"
    ))
    .expect("echo.wat");
    let component = wat::parse_str(ECHO_COMPONENT).expect("component");
    for (name, module, kind) in [
        ("echo-command", command, ModuleKind::Command),
        ("echo-component", component, ModuleKind::Component),
    ] {
        let m = manifest(name, &module, kind);
        let sig = key.sign(&m);
        registry
            .install(&tenant, &actor, InstallRequest::new(m, module, Some(sig)))
            .await
            .expect("install");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("# cellgate-cells warm_call: {calls} calls per row, {cores} cores\n");
    println!("| what | callers | mean µs/call | p50 µs | p99 µs | calls/s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for callers in [1usize, 2, 8, 32] {
        let native = run(callers, calls, || async {
            let out = native_echo("echo", arguments()).await;
            assert_eq!(out["arguments"]["n"], 42);
        })
        .await;
        row("native closure (baseline)", callers, &native);
        for cell in ["echo-command", "echo-component"] {
            let registry = registry.clone();
            let tenant = tenant.clone();
            let caller = actor.clone();
            // Warm-up: compile caches, pool slots, profile warm-up.
            for _ in 0..200 {
                registry
                    .call(&tenant, &caller, cell, "echo", arguments())
                    .await
                    .expect("warm-up call");
            }
            let stats = run(callers, calls, move || {
                let registry = registry.clone();
                let tenant = tenant.clone();
                let caller = caller.clone();
                async move {
                    let report = registry
                        .call(&tenant, &caller, cell, "echo", arguments())
                        .await
                        .expect("call");
                    assert!(report.result.is_ok(), "{:?}", report.result);
                }
            })
            .await;
            row(cell, callers, &stats);
        }
    }
}

fn row(what: &str, callers: usize, s: &Stats) {
    println!(
        "| {what} | {callers} | {:.1} | {:.1} | {:.1} | {:.0} |",
        s.mean_us(),
        s.p50_us,
        s.p99_us,
        s.per_sec()
    );
}
