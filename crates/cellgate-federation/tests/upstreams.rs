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
    FederationConfig, HttpTransport, NamespaceMode, StdioTransport, UpstreamConfig,
    UpstreamTransport,
};
use cellgate_federation::{
    BreakerState, Federation, FederationError, IncidentKind, IncidentOutcome, UpstreamState,
    unwrap_uri,
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
