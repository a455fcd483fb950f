//! `cellgate bench`: N concurrent MCP sessions over Streamable HTTP calling
//! a trivial built-in tool, against a bare hyper server answering the same
//! requests with a canned body in the same run (the ceiling).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Concurrent sessions (one connection each).
    #[arg(long, default_value_t = 32)]
    pub sessions: usize,
    /// Seconds of load per target.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Load only the full trust pipeline (no ceiling, no bare edge): for
    /// profiling it, e.g. under `perf record`. Ratios are not printed.
    #[arg(long)]
    pub only_full: bool,
}

#[derive(Debug, Clone)]
struct Outcome {
    name: &'static str,
    calls: usize,
    errors: usize,
    seconds: f64,
    p50_us: u64,
    p99_us: u64,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.seconds
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn post(
    url: &str,
    body: &Value,
    session: Option<&str>,
    bearer: Option<&str>,
) -> Request<Full<Bytes>> {
    let mut b = Request::post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25");
    if let Some(s) = session {
        b = b.header("mcp-session-id", s);
    }
    if let Some(t) = bearer {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Full::new(Bytes::from(body.to_string())))
        .expect("static request parts are valid")
}

async fn open_session(
    client: &HttpClient,
    url: &str,
    bearer: Option<&str>,
) -> anyhow::Result<Option<String>> {
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"cellgate-bench","version":"1"}}});
    let resp = client.request(post(url, &init, None, bearer)).await?;
    let session = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = resp.status();
    resp.into_body().collect().await?;
    if !status.is_success() {
        bail!("initialize answered {status}");
    }
    if let Some(s) = &session {
        let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
        let r = client.request(post(url, &note, Some(s), bearer)).await?;
        r.into_body().collect().await?;
    }
    Ok(session)
}

async fn load(
    name: &'static str,
    url: String,
    bearer: Option<String>,
    args: &BenchArgs,
) -> anyhow::Result<Outcome> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.sessions)
        .build(connector);
    let warm_until = Instant::now() + Duration::from_secs(args.warmup);
    let stop = warm_until + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for worker in 0..args.sessions {
        let client = client.clone();
        let url = url.clone();
        let bearer = bearer.clone();
        tasks.push(tokio::spawn(async move {
            let session = open_session(&client, &url, bearer.as_deref()).await?;
            let mut lat = Vec::with_capacity(1 << 16);
            let mut errors = 0usize;
            let mut i = 0u64;
            loop {
                let now = Instant::now();
                if now >= stop {
                    break;
                }
                i += 1;
                let call = json!({"jsonrpc":"2.0","id":i,"method":"tools/call",
                    "params":{"name":"echo","arguments":{"text":format!("w{worker}-{i}")}}});
                let t = Instant::now();
                let ok = match client
                    .request(post(&url, &call, session.as_deref(), bearer.as_deref()))
                    .await
                {
                    Ok(r) => {
                        let good = r.status().is_success();
                        match r.into_body().collect().await {
                            Ok(b) => good && memchr_result(&b.to_bytes()),
                            Err(_) => false,
                        }
                    }
                    Err(_) => false,
                };
                if t >= warm_until {
                    if ok {
                        lat.push(t.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            anyhow::Ok((lat, errors))
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.context("bench worker panicked")??;
        all.extend(lat);
        errors += e;
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Ok(Outcome {
        name,
        calls: all.len(),
        errors,
        seconds: args.seconds as f64,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    })
}

fn memchr_result(b: &[u8]) -> bool {
    b.windows(9).any(|w| w == b"\"result\":")
}

/// The ceiling: a hyper server that answers every POST with a fixed
/// JSON-RPC result, doing no MCP work at all.
async fn start_baseline() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let canned = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"x"}],"structuredContent":{"text":"x","length":1}}}"#);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let canned = canned.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let canned = canned.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .header("mcp-session-id", "baseline")
                                .body(Full::new(canned))
                                .expect("static response parts are valid"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Serves `app` on a free loopback port.
async fn serve_on_loopback(app: axum::Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// The bare edge: the MCP edge and the demo provider, no trust layers.
fn bare_edge() -> axum::Router {
    use cellgate_kernel::{Catalog, Metrics, Pipeline};
    let metrics = Metrics::new();
    let catalog = Catalog::new(vec![cellgate_mcp::conformance::ConformanceProvider::new(
        Duration::from_secs(5),
    )]);
    let server = cellgate_mcp::McpServer::new(
        Pipeline::builder(catalog).build(),
        cellgate_mcp::EdgeConfig::default(),
        metrics,
    );
    cellgate_mcp::http::router(server)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.sessions == 0 || args.seconds == 0 {
        bail!("--sessions and --seconds must be at least 1");
    }
    let dir = std::env::temp_dir().join(format!("cellgate-bench-{}", std::process::id()));
    // The full pipeline: authentication required (a JWT per request,
    // verified once and cached), tenant, rate limit (a plan high enough not
    // to refuse), authorization, inspection, content filter, and audit
    // persisted to SQLite with group commit.
    // CELLGATE_* variables apply (e.g. CELLGATE_AUDIT_ENABLED=false to see
    // what one layer costs); the data directory is always a fresh one.
    let mut config = cellgate_config::Config::load(None, std::env::vars())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    config.data_dir = Some(dir.display().to_string());
    config.demo.enabled = true;
    config.auth.required = true;
    if let Some(plan) = config.rate_limit.plans.get_mut("default") {
        plan.tenant_per_second = 1_000_000;
        plan.tenant_burst = 1_000_000;
        plan.principal_per_second = 1_000_000;
        plan.principal_burst = 1_000_000;
    }
    let instance = crate::app::build(&config).await?;
    let full_addr = serve_on_loopback(crate::app::http_app(&instance, true)).await?;
    // The token's audience is the configured resource URL, which the
    // instance checks whatever port the bench happens to serve it on.
    let token = cellgate_auth::issue_dev_token(
        &config,
        &cellgate_auth::TokenRequest::new("local", "bench", &["developer"]),
    )
    .map_err(|e| anyhow::anyhow!("issuing the bench token: {e}"))?;
    let bare_addr = serve_on_loopback(bare_edge()).await?;
    let baseline = start_baseline().await?;

    eprintln!(
        "cellgate bench: {} sessions, {}s warm-up + {}s per target, {} cores",
        args.sessions,
        args.warmup,
        args.seconds,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    if args.only_full {
        let full = load(
            "full trust pipeline",
            format!("http://{full_addr}/mcp"),
            Some(token.token.expose().to_owned()),
            &args,
        )
        .await?;
        instance.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "{}: {:.0} calls/s, p50 {} µs, p99 {} µs, {} errors",
            full.name,
            full.rate(),
            full.p50_us,
            full.p99_us,
            full.errors
        );
        if full.errors > 0 {
            bail!("{} calls failed during the benchmark", full.errors);
        }
        return Ok(());
    }
    let base = load(
        "bare hyper (ceiling)",
        format!("http://{baseline}/mcp"),
        None,
        &args,
    )
    .await?;
    let bare = load(
        "bare edge (no trust layers)",
        format!("http://{bare_addr}/mcp"),
        None,
        &args,
    )
    .await?;
    let full = load(
        "full trust pipeline",
        format!("http://{full_addr}/mcp"),
        Some(token.token.expose().to_owned()),
        &args,
    )
    .await?;
    instance.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let results = [&base, &bare, &full];
    if args.json {
        let row = |o: &Outcome| json!({"target": o.name, "calls": o.calls, "errors": o.errors, "calls_per_sec": o.rate().round(), "p50_us": o.p50_us, "p99_us": o.p99_us});
        println!(
            "{}",
            json!({
                "sessions": args.sessions,
                "seconds": args.seconds,
                "results": results.iter().map(|o| row(o)).collect::<Vec<_>>(),
                "bare_edge_to_ceiling": bare.rate() / base.rate().max(1.0),
                "full_to_bare_edge": full.rate() / bare.rate().max(1.0),
            })
        );
    } else {
        println!(
            "{:<30} {:>12} {:>10} {:>10} {:>8}",
            "target", "calls/s", "p50 µs", "p99 µs", "errors"
        );
        for o in results {
            println!(
                "{:<30} {:>12.0} {:>10} {:>10} {:>8}",
                o.name,
                o.rate(),
                o.p50_us,
                o.p99_us,
                o.errors
            );
        }
        println!(
            "bare edge / ceiling:      {:.2}",
            bare.rate() / base.rate().max(1.0)
        );
        println!(
            "full pipeline / bare edge: {:.2}",
            full.rate() / bare.rate().max(1.0)
        );
    }
    let failed: usize = [&bare, &full].iter().map(|o| o.errors).sum();
    if failed > 0 {
        bail!("{failed} calls failed during the benchmark");
    }
    Ok(())
}
