//! Federation against real upstream servers (started by the tests) and a
//! small fixture server (`tests/fixtures/fake_server.py`).
//!
//! The npm and PyPI servers are looked up under `CELLGATE_TOOLS_DIR`
//! (default `$HOME/.cache/cellgate-tools`); tests that need them are
//! skipped with a note when they are missing, unless
//! `CELLGATE_REQUIRE_INTEROP=1`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cellgate_config::{
    CacheConfig, EscalationConfig, FederationConfig, HttpTransport, NamespaceMode, ReplicaEndpoint,
    Replicas, StdioTransport, UpstreamConfig, UpstreamTransport,
};
use cellgate_federation::{
    BreakerState, Federation, FederationError, IncidentKind, IncidentOutcome, UpstreamState,
    counted, unwrap_uri,
};
use cellgate_kernel::{
    BoxFuture, CallContext, Catalog, ClientPeer, McpError, Provider, ProviderEvent, codes,
};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

// ---- helpers ------------------------------------------------------------

struct Tools {
    bin: PathBuf,
    time: PathBuf,
}

fn tools() -> Option<Tools> {
    let dir = std::env::var_os("CELLGATE_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cellgate-tools"))
        })
        .unwrap_or_default();
    let t = Tools {
        bin: dir.join("npm/node_modules/.bin"),
        time: dir.join("venv/bin/mcp-server-time"),
    };
    let present = ["mcp-server-everything", "mcp-server-memory", "node"]
        .iter()
        .all(|b| t.bin.join(b).exists())
        && t.time.exists();
    if present {
        return Some(t);
    }
    if std::env::var("CELLGATE_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!(
            "CELLGATE_REQUIRE_INTEROP=1 but the upstream servers are missing under {}",
            dir.display()
        );
    }
    eprintln!(
        "note: skipping: upstream servers not found under {} (set CELLGATE_TOOLS_DIR)",
        dir.display()
    );
    None
}

impl Tools {
    /// PATH with the npm servers' node first.
    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn node_server(&self, name: &str, bin: &str, args: &[&str]) -> UpstreamConfig {
        let mut u = stdio(name, &self.bin.join(bin).to_string_lossy(), args);
        if let UpstreamTransport::Stdio(s) = &mut u.transport {
            s.env.insert("PATH".into(), self.path());
        }
        u
    }
}

fn stdio(name: &str, command: &str, args: &[&str]) -> UpstreamConfig {
    let mut u = UpstreamConfig::new(
        name,
        UpstreamTransport::Stdio(StdioTransport {
            command: command.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: BTreeMap::new(),
            cwd: None,
        }),
    );
    u.connect_timeout_secs = 60;
    u.timeout_secs = 60;
    u.restart.initial_backoff_ms = 100;
    u
}

fn http(name: &str, url: &str, legacy: bool) -> UpstreamConfig {
    let t = HttpTransport {
        url: url.into(),
        headers: BTreeMap::new(),
    };
    let mut u = UpstreamConfig::new(
        name,
        if legacy {
            UpstreamTransport::Sse(t)
        } else {
            UpstreamTransport::Http(t)
        },
    );
    u.connect_timeout_secs = 30;
    u.timeout_secs = 60;
    u.restart.initial_backoff_ms = 100;
    u
}

fn fixture_path() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fake_server.py")
        .to_string_lossy()
        .into_owned()
}

fn fixture(name: &str, extra: &[&str]) -> UpstreamConfig {
    let script = fixture_path();
    let mut args = vec![script.as_str(), "--id", name];
    args.extend_from_slice(extra);
    let mut u = stdio(name, "python3", &args);
    u.connect_timeout_secs = 20;
    u.timeout_secs = 20;
    u
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "cellgate-federation-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(namespace: NamespaceMode) -> FederationConfig {
    FederationConfig {
        namespace,
        ..FederationConfig::default()
    }
}

async fn start(upstreams: Vec<UpstreamConfig>) -> Arc<Federation> {
    Arc::new(
        Federation::builder(config(NamespaceMode::Always), upstreams)
            .start()
            .await
            .expect("federation starts"),
    )
}

fn ctx() -> CallContext {
    CallContext::detached("t")
}

fn args(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn text_of(result: &Value) -> String {
    result["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

async fn tool_names(f: &Federation) -> Vec<String> {
    f.list_tools(&ctx())
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect()
}

/// Polls `check` until it holds; panics naming `what` after `limit`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status(f: &Federation, name: &str) -> cellgate_federation::UpstreamStatus {
    f.status().into_iter().find(|s| s.name == name).unwrap()
}

/// A client that records what it is sent and answers sampling requests.
#[derive(Default)]
struct TestPeer {
    notes: Mutex<Vec<(String, Value)>>,
    asks: Mutex<Vec<(String, Value)>>,
    tx: Mutex<Option<mpsc::UnboundedSender<(String, Value)>>>,
}

impl ClientPeer for TestPeer {
    fn notify(&self, method: &str, params: Value) {
        self.notes
            .lock()
            .unwrap()
            .push((method.to_owned(), params.clone()));
        if let Some(tx) = self.tx.lock().unwrap().as_ref() {
            let _ = tx.send((method.to_owned(), params));
        }
    }

    fn request(&self, method: &str, params: Value) -> BoxFuture<'static, Result<Value, McpError>> {
        self.asks
            .lock()
            .unwrap()
            .push((method.to_owned(), params.clone()));
        let answer = match method {
            "sampling/createMessage" => Ok(json!({
                "role": "assistant",
                "content": { "type": "text", "text": "sampled answer 42" },
                "model": "test-model",
                "stopReason": "endTurn"
            })),
            "elicitation/create" => Ok(json!({
                "action": "accept",
                "content": { "name": "Ada Lovelace" }
            })),
            other => Err(McpError::method_not_found(other)),
        };
        Box::pin(async move { answer })
    }
}

fn peer_ctx(peer: Arc<TestPeer>, progress_token: Option<&str>) -> CallContext {
    let mut meta = Map::new();
    if let Some(t) = progress_token {
        meta.insert("progressToken".into(), json!(t));
    }
    CallContext {
        meta: Some(Arc::new(meta)),
        client_capabilities: Arc::new(json!({ "sampling": {}, "elicitation": {} })),
        peer,
        ..CallContext::detached("t")
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `mcp-server-everything <mode>` on a free port; waits until it listens.
async fn everything_http(t: &Tools, mode: &str) -> (tokio::process::Child, u16) {
    let port = free_port();
    let child = tokio::process::Command::new(t.bin.join("mcp-server-everything"))
        .arg(mode)
        .env("PORT", port.to_string())
        .env("PATH", t.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(
        "server-everything listens",
        Duration::from_secs(60),
        || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        },
    )
    .await;
    (child, port)
}

// ---- real upstreams -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_everything_memory_and_time() {
    let Some(t) = tools() else { return };
    let dir = temp_dir("memory");
    let mut memory = t.node_server("memory", "mcp-server-memory", &[]);
    if let UpstreamTransport::Stdio(s) = &mut memory.transport {
        s.env.insert(
            "MEMORY_FILE_PATH".into(),
            dir.join("memory.jsonl").to_string_lossy().into_owned(),
        );
    }
    let time = stdio(
        "time",
        &t.time.to_string_lossy(),
        &["--local-timezone", "UTC"],
    );
    let f = start(vec![
        t.node_server("everything", "mcp-server-everything", &["stdio"]),
        memory,
        time,
    ])
    .await;
    for s in f.status() {
        assert_eq!(s.state, UpstreamState::Up, "{s:?}");
        eprintln!(
            "{}: protocol {:?}, server {:?}",
            s.name, s.protocol_version, s.server_info
        );
    }

    let names = tool_names(&f).await;
    for expected in [
        "everything__echo",
        "everything__get-sum",
        "memory__create_entities",
        "memory__read_graph",
        "time__get_current_time",
    ] {
        assert!(
            names.contains(&expected.to_owned()),
            "{expected} missing in {names:?}"
        );
    }
    assert!(names.iter().all(|n| {
        ["everything__", "memory__", "time__"]
            .iter()
            .any(|p| n.starts_with(p))
    }));

    let c = ctx();
    let echo = f
        .call_tool(
            &c,
            "everything__echo",
            args(json!({"message": "hello through cellgate"})),
        )
        .await
        .unwrap();
    assert!(text_of(&echo).contains("hello through cellgate"), "{echo}");

    let created = f
        .call_tool(
            &c,
            "memory__create_entities",
            args(json!({"entities": [{"name": "cellgate", "entityType": "gateway", "observations": ["federates"]}]})),
        )
        .await
        .unwrap();
    assert_ne!(created["isError"], json!(true), "{created}");
    let graph = f
        .call_tool(&c, "memory__read_graph", Map::new())
        .await
        .unwrap();
    assert!(graph.to_string().contains("federates"), "{graph}");

    let now = f
        .call_tool(
            &c,
            "time__get_current_time",
            args(json!({"timezone": "UTC"})),
        )
        .await
        .unwrap();
    assert_ne!(now["isError"], json!(true), "{now}");
    assert!(text_of(&now).contains("UTC"), "{now}");

    // Resources come back under rewritten URIs, and read through them.
    let resources = f.list_resources(&c).await.unwrap();
    assert!(!resources.is_empty());
    for r in &resources {
        let (up, original) = unwrap_uri(&r.uri).unwrap_or_else(|| panic!("{}", r.uri));
        assert!(up == "everything" || up == "memory", "{}", r.uri);
        assert!(!original.starts_with("cellgate+upstream"));
    }
    let first = resources
        .iter()
        .find(|r| r.uri.starts_with("cellgate+upstream://everything/"))
        .expect("a resource of server-everything");
    let read = f.read_resource(&c, &first.uri).await.unwrap();
    assert_eq!(read["contents"][0]["uri"], json!(first.uri), "{read}");
    let foreign = f.read_resource(&c, "file:///etc/passwd").await.unwrap_err();
    assert_eq!(foreign.code, codes::RESOURCE_NOT_FOUND);

    let templates = f.list_resource_templates(&c).await.unwrap();
    assert!(
        templates.iter().all(|t| t
            .uri_template
            .starts_with("cellgate+upstream://everything/")),
        "{templates:?}"
    );

    // Prompts are namespaced like tools.
    let prompts = f.list_prompts(&c).await.unwrap();
    assert!(
        prompts
            .iter()
            .any(|p| p.name == "everything__simple-prompt"),
        "{prompts:?}"
    );
    let prompt = f
        .get_prompt(&c, "everything__simple-prompt", Map::new())
        .await
        .unwrap();
    assert!(prompt.to_string().contains("simple prompt"), "{prompt}");

    // An upstream's own error comes back as it was sent.
    let unknown = f
        .call_tool(&c, "everything__no-such-tool", Map::new())
        .await
        .unwrap_err();
    assert_eq!(unknown.code, codes::INVALID_PARAMS, "{unknown:?}");
    f.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_over_streamable_http_and_legacy_sse() {
    let Some(t) = tools() else { return };
    let (_http_server, http_port) = everything_http(&t, "streamableHttp").await;
    let (_sse_server, sse_port) = everything_http(&t, "sse").await;
    let f = start(vec![
        http("web", &format!("http://127.0.0.1:{http_port}/mcp"), false),
        http("old", &format!("http://127.0.0.1:{sse_port}/sse"), true),
    ])
    .await;
    for s in f.status() {
        assert_eq!(s.state, UpstreamState::Up, "{s:?}");
    }
    let names = tool_names(&f).await;
    assert!(names.contains(&"web__echo".to_owned()), "{names:?}");
    assert!(names.contains(&"old__echo".to_owned()), "{names:?}");
    for tool in ["web__echo", "old__echo"] {
        let r = f
            .call_tool(&ctx(), tool, args(json!({"message": tool})))
            .await
            .unwrap();
        assert!(text_of(&r).contains(tool), "{r}");
    }

    // Progress and sampling over Streamable HTTP: the upstream's messages
    // arrive on the POST's event stream and reach the call's client.
    let peer = Arc::new(TestPeer::default());
    let c = peer_ctx(peer.clone(), Some("http-progress"));
    let r = f
        .call_tool(
            &c,
            "web__trigger-long-running-operation",
            args(json!({"duration": 1, "steps": 2})),
        )
        .await
        .unwrap();
    assert!(text_of(&r).contains("completed"), "{r}");
    let progress: Vec<Value> = peer
        .notes
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, _)| m == "notifications/progress")
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(progress.len(), 2, "{progress:?}");
    assert!(
        progress
            .iter()
            .all(|p| p["progressToken"] == json!("http-progress"))
    );
    let r = f
        .call_tool(
            &c,
            "web__trigger-sampling-request",
            args(json!({"prompt": "over http", "maxTokens": 5})),
        )
        .await
        .unwrap();
    assert!(text_of(&r).contains("sampled answer 42"), "{r}");

    let resources = f.list_resources(&ctx()).await.unwrap();
    let web = resources
        .iter()
        .find(|r| r.uri.starts_with("cellgate+upstream://web/"))
        .expect("resources of the HTTP upstream");
    let read = f.read_resource(&ctx(), &web.uri).await.unwrap();
    assert_eq!(read["contents"][0]["uri"], json!(web.uri));
    f.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_sampling_and_cancellation_pass_through() {
    let Some(t) = tools() else { return };
    let f = start(vec![t.node_server(
        "everything",
        "mcp-server-everything",
        &["stdio"],
    )])
    .await;
    let names = tool_names(&f).await;
    assert!(
        names.contains(&"everything__trigger-long-running-operation".to_owned())
            && names.contains(&"everything__trigger-sampling-request".to_owned()),
        "{names:?}"
    );

    let peer = Arc::new(TestPeer::default());
    let c = peer_ctx(peer.clone(), Some("client-token-1"));
    let r = f
        .call_tool(
            &c,
            "everything__trigger-long-running-operation",
            args(json!({"duration": 1, "steps": 3})),
        )
        .await
        .unwrap();
    assert!(text_of(&r).contains("Steps: 3"), "{r}");
    let progress: Vec<Value> = peer
        .notes
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, _)| m == "notifications/progress")
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(
        progress
            .iter()
            .map(|p| p["progress"].as_f64().unwrap())
            .collect::<Vec<_>>(),
        [1.0, 2.0, 3.0],
        "{progress:?}"
    );
    assert!(
        progress
            .iter()
            .all(|p| p["progressToken"] == json!("client-token-1") && p["total"] == json!(3.0)),
        "the client's own token comes back: {progress:?}"
    );

    let r = f
        .call_tool(
            &c,
            "everything__trigger-sampling-request",
            args(json!({"prompt": "what is six times seven", "maxTokens": 10})),
        )
        .await
        .unwrap();
    assert!(text_of(&r).contains("sampled answer 42"), "{r}");
    let asks = peer.asks.lock().unwrap().clone();
    assert_eq!(asks.len(), 1);
    assert_eq!(asks[0].0, "sampling/createMessage");
    assert!(
        asks[0].1.to_string().contains("what is six times seven"),
        "{asks:?}"
    );

    // Elicitation goes to the same client; its answer goes back upstream.
    let r = f
        .call_tool(&c, "everything__trigger-elicitation-request", Map::new())
        .await
        .unwrap();
    assert!(text_of(&r).contains("Ada Lovelace"), "{r}");
    let asks = peer.asks.lock().unwrap().clone();
    assert_eq!(asks.len(), 2);
    assert_eq!(asks[1].0, "elicitation/create");
    assert!(asks[1].1["requestedSchema"].is_object(), "{asks:?}");

    // A client without sampling: the upstream hears why, the call reports it.
    let r = f
        .call_tool(
            &ctx(),
            "everything__trigger-sampling-request",
            args(json!({"prompt": "x", "maxTokens": 5})),
        )
        .await;
    let shown = format!("{r:?}");
    assert!(
        shown.contains("did not declare the `sampling` capability"),
        "{shown}"
    );

    // Two clients of different tenants in flight on one stdio connection:
    // the upstream's sampling request cannot be attributed, so it is
    // refused rather than sent to either client.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let peer_a = Arc::new(TestPeer {
        tx: Mutex::new(Some(tx)),
        ..TestPeer::default()
    });
    let ctx_a = CallContext {
        tenant: Arc::from("tenant-a"),
        ..peer_ctx(peer_a.clone(), Some("a"))
    };
    let cancel_a = ctx_a.cancel.clone();
    let f_a = f.clone();
    let long_a = tokio::spawn(async move {
        f_a.call_tool(
            &ctx_a,
            "everything__trigger-long-running-operation",
            args(json!({"duration": 60, "steps": 60})),
        )
        .await
    });
    while let Some((m, _)) = rx.recv().await {
        if m == "notifications/progress" {
            break;
        }
    }
    let peer_b = Arc::new(TestPeer::default());
    let ctx_b = CallContext {
        tenant: Arc::from("tenant-b"),
        ..peer_ctx(peer_b.clone(), None)
    };
    let r = f
        .call_tool(
            &ctx_b,
            "everything__trigger-sampling-request",
            args(json!({"prompt": "secret of tenant b", "maxTokens": 5})),
        )
        .await;
    let shown = format!("{r:?}");
    assert!(shown.contains("cannot tell which one"), "{shown}");
    assert!(peer_a.asks.lock().unwrap().is_empty());
    assert!(peer_b.asks.lock().unwrap().is_empty());
    cancel_a.cancel();
    let a = long_a.await.unwrap().unwrap_err();
    assert_eq!(a.code, codes::REQUEST_CANCELLED);

    // Cancellation: the client's token cancels the call.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let peer = Arc::new(TestPeer {
        tx: Mutex::new(Some(tx)),
        ..TestPeer::default()
    });
    let c = peer_ctx(peer.clone(), Some("cancel-me"));
    let cancel = c.cancel.clone();
    tokio::spawn(async move {
        while let Some((m, _)) = rx.recv().await {
            if m == "notifications/progress" {
                cancel.cancel();
            }
        }
    });
    let e = f
        .call_tool(
            &c,
            "everything__trigger-long-running-operation",
            args(json!({"duration": 60, "steps": 60})),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::REQUEST_CANCELLED, "{e:?}");
    // The upstream is still fine.
    let echo = f
        .call_tool(
            &ctx(),
            "everything__echo",
            args(json!({"message": "after cancel"})),
        )
        .await
        .unwrap();
    assert!(text_of(&echo).contains("after cancel"));
    f.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_upstream_fails_the_call_and_is_restarted() {
    let Some(t) = tools() else { return };
    let f = start(vec![t.node_server(
        "everything",
        "mcp-server-everything",
        &["stdio"],
    )])
    .await;
    let before = status(&f, "everything");
    let pid = before.pid.expect("a stdio upstream has a pid");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let peer = Arc::new(TestPeer {
        tx: Mutex::new(Some(tx)),
        ..TestPeer::default()
    });
    let c = peer_ctx(peer, Some("p"));
    // Kill the process once the call is demonstrably running.
    tokio::spawn(async move {
        while let Some((m, _)) = rx.recv().await {
            if m == "notifications/progress" {
                std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status()
                    .unwrap();
                return;
            }
        }
    });
    let e = f
        .call_tool(
            &c,
            "everything__trigger-long-running-operation",
            args(json!({"duration": 60, "steps": 60})),
        )
        .await
        .unwrap_err();
    assert!(
        e.message
            .contains("upstream `everything` exited (signal 9) during the call"),
        "{e:?}"
    );
    assert_eq!(e.data.as_ref().unwrap()["kind"], json!("exited"));

    // The next call waits for the restart and succeeds.
    let r = f
        .call_tool(&ctx(), "everything__echo", args(json!({"message": "back"})))
        .await
        .unwrap();
    assert!(text_of(&r).contains("back"), "{r}");
    let after = status(&f, "everything");
    assert_eq!(after.state, UpstreamState::Up);
    assert_eq!(after.restarts, 1);
    assert_ne!(after.pid, Some(pid));

    let incidents = f.incidents();
    let exited = incidents
        .iter()
        .find(|i| i.kind == IncidentKind::Exited)
        .unwrap_or_else(|| panic!("{incidents:?}"));
    assert_eq!(exited.upstream, "everything");
    assert_eq!(exited.outcome, IncidentOutcome::Repaired);
    assert_eq!(exited.repair_attempts, 1);
    assert!(exited.detail.contains("signal 9"), "{exited:?}");
    f.shutdown();
}

// ---- fixtures -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_upstream_times_out_trips_the_breaker_and_recovers() {
    let dir = temp_dir("hang");
    let trigger = dir.join("answer");
    let log = dir.join("log");
    let mut hang = fixture(
        "hang",
        &[
            "--mode",
            "hang",
            "--answer-when",
            &trigger.to_string_lossy(),
            "--log",
            &log.to_string_lossy(),
        ],
    );
    hang.timeout_secs = 1;
    hang.health.interval_secs = 0;
    hang.breaker.failure_threshold = 2;
    hang.breaker.open_secs = 1;
    let f = start(vec![hang, fixture("ok", &[])]).await;
    assert_eq!(status(&f, "hang").state, UpstreamState::Up);

    for _ in 0..2 {
        let e = f
            .call_tool(&ctx(), "hang__echo", args(json!({"text": "x"})))
            .await
            .unwrap_err();
        assert!(
            e.message
                .contains("upstream `hang` did not answer tools/call within 1s"),
            "{e:?}"
        );
        assert_eq!(e.data.as_ref().unwrap()["kind"], json!("timeout"));
    }
    assert_eq!(status(&f, "hang").breaker, BreakerState::Open);
    let e = f
        .call_tool(&ctx(), "hang__echo", args(json!({"text": "x"})))
        .await
        .unwrap_err();
    assert!(
        e.message.contains("upstream `hang` is unavailable: its circuit breaker is open after 2 consecutive failures"),
        "{e:?}"
    );
    assert_eq!(e.data.as_ref().unwrap()["kind"], json!("circuit_open"));
    // Timed-out requests were cancelled upstream.
    let received = std::fs::read_to_string(&log).unwrap();
    assert!(received.contains("notifications/cancelled"), "{received}");
    // The other upstream is unaffected.
    let ok = f
        .call_tool(&ctx(), "ok__echo", args(json!({"text": "fine"})))
        .await
        .unwrap();
    assert_eq!(text_of(&ok), "ok: fine");

    // The upstream recovers: after the open period a trial call goes
    // through and closes the circuit.
    std::fs::write(&trigger, "").unwrap();
    let f2 = f.clone();
    eventually(
        "a trial call succeeds",
        Duration::from_secs(30),
        move || {
            let f = f2.clone();
            async move {
                f.call_tool(&ctx(), "hang__echo", args(json!({"text": "again"})))
                    .await
                    .is_ok_and(|r| text_of(&r) == "hang: again")
            }
        },
    )
    .await;
    let s = status(&f, "hang");
    assert_eq!(s.breaker, BreakerState::Closed);
    assert_eq!(s.consecutive_failures, 0);
    let opened = f
        .incidents()
        .into_iter()
        .find(|i| i.kind == IncidentKind::CircuitOpened)
        .unwrap();
    assert_eq!(opened.upstream, "hang");
    assert_eq!(opened.outcome, IncidentOutcome::Repaired);
    f.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_upstream_is_restarted_by_health_checks() {
    let mut hang = fixture("hung", &["--mode", "hang"]);
    hang.timeout_secs = 1;
    hang.health.interval_secs = 1;
    hang.health.timeout_secs = 1;
    hang.health.unhealthy_after = 2;
    let f = start(vec![hang]).await;
    let first_pid = status(&f, "hung").pid;
    let f2 = f.clone();
    eventually(
        "a hang incident, repaired by a restart",
        Duration::from_secs(60),
        move || {
            let f = f2.clone();
            async move {
                f.incidents()
                    .iter()
                    .any(|i| i.kind == IncidentKind::Hung && i.outcome == IncidentOutcome::Repaired)
            }
        },
    )
    .await;
    let hung = f
        .incidents()
        .into_iter()
        .find(|i| i.kind == IncidentKind::Hung)
        .unwrap();
    assert!(
        hung.detail.contains("failed 2 health checks in a row"),
        "{hung:?}"
    );
    assert!(hung.repair_attempts >= 1);
    let s = status(&f, "hung");
    assert!(s.restarts >= 1, "{s:?}");
    assert_ne!(s.pid, first_pid);
    f.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_tool_definition_is_blocked_until_approved() {
    let pins = Arc::new(cellgate_federation::MemoryPinStore::new());
    let f = Arc::new(
        Federation::builder(config(NamespaceMode::Always), vec![fixture("rug", &[])])
            .pin_store(pins.clone())
            .start()
            .await
            .unwrap(),
    );
    let mut events = f.events().unwrap();
    let listed = f.list_tools(&ctx()).await.unwrap();
    let fetch = listed.iter().find(|t| t.name == "rug__fetch").unwrap();
    assert_eq!(fetch.description.as_deref(), Some("Fetches a URL."));

    // The upstream changes the tool and announces it.
    f.call_tool(&ctx(), "rug__mutate", Map::new())
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("a change event")
        .unwrap();
    assert_eq!(ev, ProviderEvent::ToolsChanged);

    let names = tool_names(&f).await;
    assert!(!names.contains(&"rug__fetch".to_owned()), "{names:?}");
    assert!(names.contains(&"rug__echo".to_owned()));
    let e = f
        .call_tool(&ctx(), "rug__fetch", Map::new())
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::BLOCKED, "{e:?}");
    assert!(e.message.contains("changed its definition"), "{e:?}");
    let incident = f
        .incidents()
        .into_iter()
        .find(|i| i.kind == IncidentKind::ToolDefinitionChanged)
        .unwrap();
    assert_eq!(incident.tool.as_deref(), Some("fetch"));
    assert_eq!(incident.outcome, IncidentOutcome::Open);
    let pending = f.pending_approvals();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].exposed, "rug__fetch");
    assert_ne!(pending[0].pinned_fingerprint, pending[0].new_fingerprint);
    assert_eq!(status(&f, "rug").blocked_tools, ["fetch"]);

    // Approving accepts the new definition.
    assert!(matches!(
        f.approve_pin("rug", "echo").await,
        Err(FederationError::NothingToApprove { .. })
    ));
    assert!(matches!(
        f.approve_pin("nobody", "fetch").await,
        Err(FederationError::UnknownUpstream(_))
    ));
    f.approve_pin("rug", "fetch").await.unwrap();
    let listed = f.list_tools(&ctx()).await.unwrap();
    let fetch = listed.iter().find(|t| t.name == "rug__fetch").unwrap();
    assert!(
        fetch
            .description
            .as_deref()
            .unwrap()
            .contains("ignore previous instructions")
    );
    let r = f.call_tool(&ctx(), "rug__fetch", Map::new()).await.unwrap();
    assert_eq!(text_of(&r), "rug: fetched");
    let incident = f
        .incidents()
        .into_iter()
        .find(|i| i.kind == IncidentKind::ToolDefinitionChanged)
        .unwrap();
    assert_eq!(incident.outcome, IncidentOutcome::Approved);
    assert!(f.pending_approvals().is_empty());
    f.shutdown();
    drop(f);

    // The pins outlive the federation: a fresh process offers the original
    // definition, which now differs from the approved pin.
    let f = Federation::builder(config(NamespaceMode::Always), vec![fixture("rug", &[])])
        .pin_store(pins)
        .start()
        .await
        .unwrap();
    assert_eq!(status(&f, "rug").blocked_tools, ["fetch"]);
    assert!(!tool_names(&f).await.contains(&"rug__fetch".to_owned()));
    f.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upstreams_fail_alone() {
    let mut missing = stdio("missing", "/nonexistent/cellgate-no-such-server", &[]);
    missing.timeout_secs = 1;
    let mut garbage = fixture("garbage", &["--mode", "garbage"]);
    garbage.connect_timeout_secs = 2;
    garbage.timeout_secs = 1;
    let mut huge = fixture("huge", &[]);
    huge.max_message_bytes = 64 * 1024;
    let mut unreachable = http(
        "unreachable",
        &format!("http://127.0.0.1:{}/mcp", free_port()),
        false,
    );
    unreachable.timeout_secs = 1;
    let f = start(vec![
        fixture("good", &[]),
        missing,
        garbage,
        huge,
        unreachable,
    ])
    .await;

    assert_eq!(status(&f, "good").state, UpstreamState::Up);
    assert_eq!(status(&f, "huge").state, UpstreamState::Up);
    let why = |name: &str| {
        let s = status(&f, name);
        assert_ne!(s.state, UpstreamState::Up, "{s:?}");
        s.last_error.unwrap_or_default()
    };
    let m = why("missing");
    assert!(
        m.contains("upstream `missing`: cannot start `/nonexistent/cellgate-no-such-server`"),
        "{m}"
    );
    let g = why("garbage");
    assert!(g.contains("did not answer `initialize` within 2s"), "{g}");
    assert!(g.contains("not JSON-RPC"), "{g}");
    let u = why("unreachable");
    assert!(u.contains("cannot reach http://127.0.0.1:"), "{u}");

    // Good tools are offered, and work.
    let names = tool_names(&f).await;
    assert!(names.contains(&"good__echo".to_owned()));
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("good__") || n.starts_with("huge__")),
        "{names:?}"
    );
    let r = f
        .call_tool(&ctx(), "good__echo", args(json!({"text": "still here"})))
        .await
        .unwrap();
    assert_eq!(text_of(&r), "good: still here");

    // Calls to the broken ones fail with errors naming them.
    for (tool, needle) in [
        ("missing__anything", "upstream `missing`"),
        ("garbage__echo", "upstream `garbage`"),
        ("unreachable__echo", "upstream `unreachable`"),
    ] {
        let e = f.call_tool(&ctx(), tool, Map::new()).await.unwrap_err();
        assert!(e.message.contains(needle), "{tool}: {e:?}");
    }

    // An answer over the size limit: the upstream is restarted, the call
    // fails clearly, the next call works.
    let small = f
        .call_tool(&ctx(), "huge__huge", args(json!({"bytes": 1000})))
        .await
        .unwrap();
    assert_eq!(text_of(&small).len(), 1000);
    let e = f
        .call_tool(&ctx(), "huge__huge", args(json!({"bytes": 1_000_000})))
        .await
        .unwrap_err();
    assert!(
        e.message.contains("upstream `huge` broke the protocol: it wrote a message longer than the limit of 65536 bytes"),
        "{e:?}"
    );
    let r = f
        .call_tool(&ctx(), "huge__echo", args(json!({"text": "recovered"})))
        .await
        .unwrap();
    assert_eq!(text_of(&r), "huge: recovered");
    let r = f
        .call_tool(&ctx(), "good__echo", args(json!({"text": "unaffected"})))
        .await
        .unwrap();
    assert_eq!(text_of(&r), "good: unaffected");
    let kinds: Vec<(String, IncidentKind)> = f
        .incidents()
        .into_iter()
        .map(|i| (i.upstream, i.kind))
        .collect();
    for expected in [
        ("missing", IncidentKind::ConnectFailed),
        ("garbage", IncidentKind::ConnectFailed),
        ("unreachable", IncidentKind::ConnectFailed),
        ("huge", IncidentKind::ProtocolViolation),
    ] {
        assert!(
            kinds.contains(&(expected.0.to_owned(), expected.1)),
            "{expected:?} in {kinds:?}"
        );
    }
    f.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separator_inside_names_routes_by_known_upstreams() {
    let f = start(vec![fixture("fx", &[]), fixture("fx__two", &[])]).await;
    let names = tool_names(&f).await;
    for n in [
        "fx__echo",
        "fx__read__file",
        "fx__two__echo",
        "fx__two__read__file",
    ] {
        assert!(names.contains(&n.to_owned()), "{n} in {names:?}");
    }
    for (tool, answer) in [
        ("fx__two__echo", "fx__two: x"),
        ("fx__echo", "fx: x"),
        ("fx__read__file", "fx: read__file"),
        ("fx__two__read__file", "fx__two: read__file"),
    ] {
        let r = f
            .call_tool(&ctx(), tool, args(json!({"text": "x"})))
            .await
            .unwrap();
        assert_eq!(text_of(&r), answer, "{tool}");
    }
    let e = f
        .call_tool(&ctx(), "fx__two", Map::new())
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::INVALID_PARAMS);

    // The same through the kernel's catalog, as the gateway wires it.
    let catalog = Catalog::new(vec![f.clone() as Arc<dyn Provider>]);
    let listed = catalog.list_tools(&ctx(), None).await.unwrap();
    assert_eq!(listed["tools"].as_array().unwrap().len(), names.len());
    let r = catalog
        .call_tool(&ctx(), "fx__two__read__file", Map::new())
        .await
        .unwrap();
    assert_eq!(text_of(&r), "fx__two: read__file");
    f.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_modes() {
    // `never` with two upstreams offering the same tools: refused, naming both.
    let e = Federation::builder(
        config(NamespaceMode::Never),
        vec![fixture("left", &[]), fixture("right", &[])],
    )
    .start()
    .await
    .err()
    .expect("a collision is an error");
    let msg = e.to_string();
    assert!(
        msg.contains("upstream `left`") && msg.contains("upstream `right`"),
        "{msg}"
    );

    // `conditional` with one upstream: names as the upstream gives them.
    let f = Federation::builder(
        config(NamespaceMode::Conditional),
        vec![fixture("solo", &[])],
    )
    .start()
    .await
    .unwrap();
    let names = tool_names(&f).await;
    assert!(
        names.contains(&"echo".to_owned()) && names.contains(&"read__file".to_owned()),
        "{names:?}"
    );
    let r = f
        .call_tool(&ctx(), "echo", args(json!({"text": "plain"})))
        .await
        .unwrap();
    assert_eq!(text_of(&r), "solo: plain");
    f.shutdown();
}

// ---- replicas, cache, escalation, reconcile, list changes ------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_calls_fail_over_when_a_replica_is_killed_under_load() {
    let Some(t) = tools() else { return };
    let (mut first, port_a) = everything_http(&t, "streamableHttp").await;
    let (_second, port_b) = everything_http(&t, "streamableHttp").await;
    let mut web = http("web", "", false);
    if let UpstreamTransport::Http(h) = &mut web.transport {
        h.url.clear();
    }
    web.replicas = Replicas::Endpoints(
        [port_a, port_b]
            .iter()
            .map(|p| ReplicaEndpoint {
                url: format!("http://127.0.0.1:{p}/mcp"),
                headers: BTreeMap::new(),
            })
            .collect(),
    );
    web.timeout_secs = 20;
    web.breaker.failure_threshold = 3;
    web.health.interval_secs = 1;
    web.health.timeout_secs = 1;
    web.health.unhealthy_after = 2;
    let f = start(vec![web]).await;
    let s = status(&f, "web");
    assert_eq!(s.replicas.len(), 2);
    assert!(
        s.replicas.iter().all(|r| r.state == UpstreamState::Up),
        "{s:?}"
    );
    // `echo` is annotated readOnlyHint, so its calls may be repeated.
    let echo = f
        .list_tools(&ctx())
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name == "web__echo")
        .unwrap();
    assert_eq!(echo.extra["annotations"]["readOnlyHint"], json!(true));

    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..8 {
        let f = f.clone();
        let done = done.clone();
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..40 {
                let msg = format!("w{w} call {i}");
                match f
                    .call_tool(&ctx(), "web__echo", args(json!({ "message": msg })))
                    .await
                {
                    Ok(r) if text_of(&r).contains(&msg) => {}
                    other => failures.push(format!("{msg}: {other:?}")),
                }
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            failures
        }));
    }
    // Kill the first replica once calls are flowing to both.
    let d = done.clone();
    eventually("calls flow", Duration::from_secs(60), move || {
        let d = d.clone();
        async move { d.load(std::sync::atomic::Ordering::Relaxed) >= 60 }
    })
    .await;
    let before_kill = status(&f, "web");
    first.kill().await.unwrap();
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert_eq!(done.load(std::sync::atomic::Ordering::Relaxed), 320);
    // Both replicas served calls before the kill (least outstanding spreads
    // the load), and calls were retried on the survivor after it.
    assert!(
        before_kill.replicas.iter().all(|r| r.calls > 0),
        "{before_kill:?}"
    );
    assert!(counted(&f.metrics().retries, "web") >= 1);
    // The dead replica is taken out of rotation: its breaker opens or its
    // health checks take it down.
    let f2 = f.clone();
    eventually(
        "the killed replica is out",
        Duration::from_secs(30),
        move || {
            let f = f2.clone();
            async move {
                let r = &status(&f, "web").replicas[0];
                r.breaker != BreakerState::Closed || r.state != UpstreamState::Up
            }
        },
    )
    .await;
    assert_eq!(status(&f, "web").state, UpstreamState::Up);
    // A call of a tool that is neither read-only nor idempotent is never
    // repeated: it still succeeds here because it goes to the live replica.
    let r = f
        .call_tool(&ctx(), "web__get-sum", args(json!({"a": 2, "b": 3})))
        .await
        .unwrap();
    assert!(text_of(&r).contains('5'), "{r}");
    f.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_replicas_share_the_load_and_fail_over() {
    let mut u = fixture("pool", &[]);
    u.replicas = Replicas::Count(2);
    u.health.interval_secs = 0;
    let f = start(vec![u]).await;
    let s = status(&f, "pool");
    assert_eq!(s.replicas.len(), 2);
    let pids: Vec<u32> = s.replicas.iter().map(|r| r.pid.unwrap()).collect();
    assert_ne!(pids[0], pids[1]);
    // Sequential calls: equal load, so replicas take turns.
    for _ in 0..4 {
        f.call_tool(&ctx(), "pool__count", Map::new())
            .await
            .unwrap();
    }
    let calls: Vec<u64> = status(&f, "pool")
        .replicas
        .iter()
        .map(|r| r.calls)
        .collect();
    assert_eq!(calls, [2, 2]);
    // A busy replica is avoided: while one sleeps, the other takes the calls.
    let f2 = f.clone();
    let sleeper = tokio::spawn(async move {
        f2.call_tool(&ctx(), "pool__sleep", args(json!({"secs": 2})))
            .await
            .unwrap()
    });
    let f3 = f.clone();
    eventually("one call outstanding", Duration::from_secs(10), move || {
        let f = f3.clone();
        async move {
            status(&f, "pool")
                .replicas
                .iter()
                .any(|r| r.outstanding == 1)
        }
    })
    .await;
    let busy = status(&f, "pool")
        .replicas
        .iter()
        .position(|r| r.outstanding == 1)
        .unwrap();
    for _ in 0..3 {
        f.call_tool(&ctx(), "pool__count", Map::new())
            .await
            .unwrap();
    }
    let s = status(&f, "pool");
    assert_eq!(s.replicas[1 - busy].calls, 2 + 3, "{s:?}");
    assert_eq!(text_of(&sleeper.await.unwrap()), "pool: slept");

    // Kill the replica a call is in flight on: a read-only call is retried
    // on the other replica, any other call fails.
    for (tool, read_only) in [("pool__sleep_ro", true), ("pool__sleep", false)] {
        let f2 = f.clone();
        eventually("both replicas up", Duration::from_secs(30), move || {
            let f = f2.clone();
            async move {
                status(&f, "pool")
                    .replicas
                    .iter()
                    .all(|r| r.state == UpstreamState::Up)
            }
        })
        .await;
        let f4 = f.clone();
        let call =
            tokio::spawn(async move { f4.call_tool(&ctx(), tool, args(json!({"secs": 3}))).await });
        let f5 = f.clone();
        eventually(
            "the call is in flight",
            Duration::from_secs(10),
            move || {
                let f = f5.clone();
                async move {
                    status(&f, "pool")
                        .replicas
                        .iter()
                        .any(|r| r.outstanding == 1)
                }
            },
        )
        .await;
        let s = status(&f, "pool");
        let on = s.replicas.iter().position(|r| r.outstanding == 1).unwrap();
        let pid = s.replicas[on].pid.unwrap();
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        let outcome = call.await.unwrap();
        if read_only {
            let r = outcome.unwrap();
            assert_eq!(text_of(&r), "pool: slept");
            let s = status(&f, "pool");
            assert_eq!(s.replicas[1 - on].outstanding, 0);
        } else {
            let e = outcome.unwrap_err();
            assert!(
                e.message.contains("exited (signal 9) during the call"),
                "{e:?}"
            );
        }
    }
    assert_eq!(counted(&f.metrics().retries, "pool"), 1);
    f.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_idempotent_results_are_cached_per_tenant() {
    let mut u = fixture("c", &[]);
    u.cache = CacheConfig {
        tools: vec!["count*".into(), "fail_ro".into(), "echo".into()],
        ttl_secs: 3600,
        max_entries: 100,
        max_bytes: 1 << 20,
    };
    let f = start(vec![u, fixture("plain", &[])]).await;
    let call = |tenant: &'static str, tool: &'static str, a: Value| {
        let f = f.clone();
        async move {
            let r = f
                .call_tool(&CallContext::detached(tenant), tool, args(a))
                .await
                .unwrap();
            text_of(&r)
        }
    };
    assert_eq!(
        call("t", "c__count", json!({"a": 1, "b": [1, 2]})).await,
        "c: call 1"
    );
    // Same arguments in another order: served from the cache.
    assert_eq!(
        call("t", "c__count", json!({"b": [1, 2], "a": 1})).await,
        "c: call 1"
    );
    // Other arguments, another tenant: not.
    assert_eq!(call("t", "c__count", json!({"a": 2})).await, "c: call 2");
    assert_eq!(
        call("u", "c__count", json!({"a": 1, "b": [1, 2]})).await,
        "c: call 3"
    );
    assert_eq!(
        call("u", "c__count", json!({"a": 1, "b": [1, 2]})).await,
        "c: call 3"
    );
    // Matched by name but not idempotent: never cached.
    assert_eq!(call("t", "c__count_rw", json!({})).await, "c: call 4");
    assert_eq!(call("t", "c__count_rw", json!({})).await, "c: call 5");
    // Error results are not cached.
    assert_eq!(call("t", "c__fail_ro", json!({})).await, "c: call 6");
    assert_eq!(call("t", "c__fail_ro", json!({})).await, "c: call 7");
    // `echo` is matched but carries no annotations: not cached; and an
    // upstream without a cache configuration caches nothing.
    assert_eq!(call("t", "c__echo", json!({"text": "x"})).await, "c: x");
    assert_eq!(call("t", "plain__count", json!({})).await, "plain: call 1");
    assert_eq!(call("t", "plain__count", json!({})).await, "plain: call 2");

    let m = f.metrics();
    assert_eq!(counted(&m.cache_hits, "c"), 2);
    assert_eq!(counted(&m.cache_misses, "c"), 5);
    assert_eq!(counted(&m.cache_hits, "plain"), 0);
    let s = status(&f, "c");
    assert_eq!(s.cached_results, 3, "{s:?}");
    assert!(s.cached_bytes > 0);

    // A change of the upstream's tool list drops its cache.
    let mut events = f.subscribe();
    call("t", "c__grow", json!({})).await;
    let ev = tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("a change event")
        .unwrap();
    assert_eq!(ev, ProviderEvent::ToolsChanged);
    assert_eq!(status(&f, "c").cached_results, 0);
    assert_eq!(call("t", "c__count", json!({"a": 2})).await, "c: call 8");
    f.shutdown();
}

/// A one-shot-per-connection HTTP server that hands each request body to
/// the test and answers 200.
async fn webhook_receiver() -> (String, mpsc::UnboundedReceiver<Value>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    assert!(head.starts_with("post /hook "), "{head}");
                    assert!(head.contains("content-type: application/json"), "{head}");
                    assert!(head.contains("x-test: yes"), "{head}");
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break buf[end + 4..end + 4 + len].to_vec();
                    }
                };
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = tx.send(serde_json::from_slice(&body).unwrap());
            });
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_repairs_escalate_once_with_a_webhook() {
    let (url, mut hooks) = webhook_receiver().await;
    let broken = |name: &str| {
        let mut u = stdio(name, "/nonexistent/cellgate-no-such-server", &[]);
        u.timeout_secs = 1;
        u.restart.initial_backoff_ms = 20;
        u.restart.max_backoff_ms = 40;
        u.restart.alert_after = 2;
        u
    };
    let mut unreachable_hook = broken("muffled");
    unreachable_hook.escalation = Some(EscalationConfig {
        webhook_url: Some(format!("http://127.0.0.1:{}/hook", free_port())),
        timeout_secs: 1,
        ..EscalationConfig::default()
    });
    let mut cfg = config(NamespaceMode::Always);
    cfg.escalation = EscalationConfig {
        webhook_url: Some(url),
        headers: [("X-Test".to_owned(), "yes".to_owned())].into(),
        timeout_secs: 5,
    };
    let f = Arc::new(
        Federation::builder(
            cfg,
            vec![broken("broken"), unreachable_hook, fixture("fine", &[])],
        )
        .start()
        .await
        .unwrap(),
    );
    let body = tokio::time::timeout(Duration::from_secs(30), hooks.recv())
        .await
        .expect("a webhook")
        .unwrap();
    assert_eq!(body["event"], json!("incident_escalated"));
    assert_eq!(body["upstream"], json!("broken"));
    assert_eq!(body["failed_repairs"], json!(2));
    assert_eq!(body["gave_up"], json!(false));
    assert_eq!(body["incident"]["kind"], json!("connect_failed"));
    assert_eq!(body["incident"]["outcome"], json!("open"));
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/cellgate-no-such-server"),
        "{body}"
    );
    // Once per incident: later failed repairs do not escalate again.
    let f2 = f.clone();
    eventually("more failed repairs", Duration::from_secs(30), move || {
        let f = f2.clone();
        async move {
            f.incidents()
                .iter()
                .any(|i| i.upstream == "broken" && i.repair_attempts >= 5)
        }
    })
    .await;
    let m = f.metrics();
    assert_eq!(counted(&m.escalations, "broken"), 1);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), hooks.recv())
            .await
            .is_err(),
        "escalated twice"
    );
    // A webhook that cannot be delivered is counted and logged; nothing else
    // suffers.
    let m2 = m.clone();
    eventually(
        "the failed webhook is counted",
        Duration::from_secs(30),
        move || {
            let m = m2.clone();
            async move { counted(&m.webhook_failures, "muffled") == 1 }
        },
    )
    .await;
    assert_eq!(counted(&m.escalations, "muffled"), 1);
    let r = f
        .call_tool(&ctx(), "fine__echo", args(json!({"text": "ok"})))
        .await
        .unwrap();
    assert_eq!(text_of(&r), "fine: ok");
    f.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_changes_only_what_changed() {
    let f = start(vec![
        fixture("keep", &[]),
        fixture("change", &[]),
        fixture("drop", &[]),
    ])
    .await;
    let pid = |name: &str| status(&f, name).pid.unwrap();
    let (keep_pid, change_pid) = (pid("keep"), pid("change"));
    let mut events = f.subscribe();

    // A call in flight on an unchanged upstream survives the reconcile.
    let f2 = f.clone();
    let in_flight = tokio::spawn(async move {
        f2.call_tool(&ctx(), "keep__sleep", args(json!({"secs": 2})))
            .await
    });
    let f3 = f.clone();
    eventually(
        "the call is in flight",
        Duration::from_secs(10),
        move || {
            let f = f3.clone();
            async move { status(&f, "keep").replicas[0].outstanding == 1 }
        },
    )
    .await;

    let mut changed = fixture("change", &[]);
    changed.timeout_secs = 19;
    let next = vec![fixture("keep", &[]), changed.clone(), fixture("added", &[])];
    // Invalid: nothing changes.
    let mut bad = next.clone();
    bad.push(fixture("KEEP", &[]));
    let e = f
        .reconcile(config(NamespaceMode::Always), bad)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, FederationError::Invalid(p) if p[0].starts_with("upstreams[3].name")),
        "{e}"
    );
    let names: Vec<String> = f.status().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["keep", "change", "drop"]);
    assert_eq!(pid("change"), change_pid);

    let summary = f
        .reconcile(config(NamespaceMode::Always), next.clone())
        .await
        .unwrap();
    assert_eq!(summary.added, ["added"]);
    assert_eq!(summary.removed, ["drop"]);
    assert_eq!(summary.restarted, ["change"]);
    assert_eq!(summary.unchanged, ["keep"]);
    assert!(summary.needs_restart.is_empty());
    assert!(summary.changed());

    let names: Vec<String> = f.status().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["keep", "change", "added"]);
    assert_eq!(
        pid("keep"),
        keep_pid,
        "the unchanged upstream was not touched"
    );
    assert_ne!(
        pid("change"),
        change_pid,
        "the changed upstream was restarted"
    );
    assert_eq!(status(&f, "keep").restarts, 0);
    let tools = tool_names(&f).await;
    assert!(tools.contains(&"added__echo".to_owned()), "{tools:?}");
    assert!(!tools.iter().any(|t| t.starts_with("drop__")), "{tools:?}");
    let e = f
        .call_tool(&ctx(), "drop__echo", Map::new())
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::INVALID_PARAMS);
    for (tool, answer) in [("change__echo", "change: x"), ("added__echo", "added: x")] {
        let r = f
            .call_tool(&ctx(), tool, args(json!({"text": "x"})))
            .await
            .unwrap();
        assert_eq!(text_of(&r), answer);
    }
    assert_eq!(text_of(&in_flight.await.unwrap().unwrap()), "keep: slept");
    // Clients are told the list changed.
    let mut seen = Vec::new();
    while let Ok(ev) = events.try_recv() {
        seen.push(ev);
    }
    assert!(seen.contains(&ProviderEvent::ToolsChanged), "{seen:?}");

    // The same configuration again changes nothing.
    let again = f
        .reconcile(config(NamespaceMode::Always), next)
        .await
        .unwrap();
    assert!(!again.changed(), "{again:?}");
    assert_eq!(again.unchanged, ["keep", "change", "added"]);
    let mut history = config(NamespaceMode::Always);
    history.incident_history = 5;
    let s = f
        .reconcile(history, vec![fixture("keep", &[]), changed])
        .await
        .unwrap();
    assert_eq!(s.removed, ["added"]);
    assert_eq!(s.needs_restart, ["federation.incident_history"]);
    assert_eq!(pid("keep"), keep_pid);
    f.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_changed_reaches_the_catalog_and_subscribers() {
    let f = start(vec![fixture("dyn", &[]), fixture("other", &[])]).await;
    let catalog = Catalog::new(vec![f.clone() as Arc<dyn Provider>]);
    let names = |v: Value| -> Vec<String> {
        v["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let before = names(catalog.list_tools(&ctx(), None).await.unwrap());
    assert!(!before.contains(&"dyn__extra".to_owned()));
    // The catalog's routing index is built; `dyn__extra` is unknown.
    assert!(
        catalog
            .call_tool(&ctx(), "dyn__extra", Map::new())
            .await
            .is_err()
    );
    let mut events = f.subscribe();
    let mut via_provider = f.events().unwrap();
    f.call_tool(&ctx(), "dyn__grow", Map::new()).await.unwrap();
    for rx in [&mut events, &mut via_provider] {
        let ev = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("a change event")
            .unwrap();
        assert_eq!(ev, ProviderEvent::ToolsChanged);
    }
    // The federated list and the catalog (which rebuilds its index on the
    // event) both have the new tool, and it is callable by its new name.
    assert!(tool_names(&f).await.contains(&"dyn__extra".to_owned()));
    let c = catalog.clone();
    eventually(
        "the catalog lists the new tool",
        Duration::from_secs(10),
        move || {
            let c = c.clone();
            async move {
                names(c.list_tools(&ctx(), None).await.unwrap()).contains(&"dyn__extra".to_owned())
            }
        },
    )
    .await;
    let e = catalog
        .call_tool(&ctx(), "dyn__extra", Map::new())
        .await
        .unwrap_err();
    // The fixture has no handler for it: the upstream's own error, which
    // proves the call was routed there.
    assert!(e.message.contains("unknown tool extra"), "{e:?}");
    // The other upstream's list did not change.
    assert!(tool_names(&f).await.contains(&"other__echo".to_owned()));
    f.shutdown();
}
