//! One live connection to an upstream, whatever the transport: JSON-RPC
//! requests with timeouts and cancellation, the `initialize` handshake, and
//! the upstream's own traffic (server-to-client requests, progress, log
//! messages, list changes) routed to the call in flight.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cellgate_config::{UpstreamConfig, UpstreamTransport};
use cellgate_kernel::{CallContext, LogLevel, McpError, codes};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

/// The revision offered in `initialize`; the upstream's answer is accepted
/// as long as it is a revision (see the README on mixed versions).
pub const OFFERED_VERSION: &str = "2025-11-25";

/// Revisions with a handshake that this client knows of.
pub const KNOWN_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CloseReason {
    /// The process exited: `code 1`, `signal 9`.
    Exited(String),
    /// The upstream broke the protocol (message too large, …).
    Protocol(String),
    /// The HTTP server no longer knows our session (404).
    SessionExpired,
    /// The connection was lost.
    Transport(String),
    /// We closed it.
    Shutdown,
}

impl CloseReason {
    pub(crate) fn describe(&self, upstream: &str) -> String {
        match self {
            CloseReason::Exited(how) => format!("upstream `{upstream}` exited ({how})"),
            CloseReason::Protocol(what) => {
                format!("upstream `{upstream}` broke the protocol: {what}")
            }
            CloseReason::SessionExpired => {
                format!("upstream `{upstream}` ended the session (HTTP 404 on its session id)")
            }
            CloseReason::Transport(what) => {
                format!("upstream `{upstream}` lost its connection: {what}")
            }
            CloseReason::Shutdown => format!("upstream `{upstream}` was shut down"),
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            CloseReason::Exited(_) => "exited",
            CloseReason::Protocol(_) => "protocol",
            CloseReason::SessionExpired => "session_expired",
            CloseReason::Transport(_) => "transport",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// How one request failed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CallError {
    /// The upstream answered with a JSON-RPC error: it is alive.
    Rpc(McpError),
    Timeout {
        method: String,
        after: Duration,
    },
    Closed(CloseReason),
    /// Our caller cancelled.
    Cancelled,
    /// This one request could not be delivered or its answer not read.
    Transport(String),
}

impl CallError {
    /// Whether the failure says something about the upstream's health (and
    /// so counts for its circuit breaker).
    pub(crate) fn is_upstream_failure(&self) -> bool {
        !matches!(
            self,
            CallError::Rpc(_) | CallError::Cancelled | CallError::Closed(CloseReason::Shutdown)
        )
    }

    pub(crate) fn summary(&self, upstream: &str) -> String {
        match self {
            CallError::Rpc(e) => e.message.clone(),
            CallError::Timeout { method, after } => format!(
                "upstream `{upstream}` did not answer {method} within {}",
                human(*after)
            ),
            CallError::Closed(r) => r.describe(upstream),
            CallError::Cancelled => "the call was cancelled".into(),
            CallError::Transport(what) => format!("upstream `{upstream}`: {what}"),
        }
    }

    /// The error a client sees for a call that failed this way.
    pub(crate) fn to_mcp(&self, upstream: &str) -> McpError {
        let (kind, message) = match self {
            CallError::Rpc(e) => return e.clone(),
            CallError::Cancelled => return McpError::cancelled(self.summary(upstream)),
            CallError::Timeout { .. } => ("timeout", self.summary(upstream)),
            CallError::Closed(r) => (
                r.kind(),
                format!("{} during the call", r.describe(upstream)),
            ),
            CallError::Transport(_) => ("transport", self.summary(upstream)),
        };
        McpError::new(codes::SERVER_ERROR, message)
            .with_data(json!({ "upstream": upstream, "kind": kind }))
    }
}

pub(crate) fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Something an upstream announced that the federation reacts to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Notice {
    ToolsChanged,
    PromptsChanged,
    ResourcesChanged,
    ResourceUpdated(String),
}

/// A message for the transport to send.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub msg: Value,
    /// Set for requests, so the transport can fail them (and, on HTTP,
    /// attribute what arrives on their response stream).
    pub request_id: Option<i64>,
}

struct InFlight {
    ctx: CallContext,
}

/// State shared by a connection's transport tasks and its callers.
pub(crate) struct Shared {
    pub upstream: Arc<str>,
    out: mpsc::UnboundedSender<Outgoing>,
    next_id: AtomicI64,
    pending: Mutex<HashMap<i64, oneshot::Sender<Result<Value, CallError>>>>,
    calls: Mutex<HashMap<i64, InFlight>>,
    serving: Mutex<HashMap<String, AbortHandle>>,
    closed: CancellationToken,
    close_reason: Mutex<Option<CloseReason>>,
    notices: mpsc::UnboundedSender<Notice>,
    garbage: Mutex<(u64, Option<String>)>,
    stderr_tail: Mutex<VecDeque<String>>,
    /// The negotiated revision, once known (HTTP sends it as a header).
    pub protocol_version: Mutex<Option<String>>,
    forward_roots: bool,
}

const STDERR_TAIL: usize = 20;

impl Shared {
    pub(crate) fn new(
        upstream: Arc<str>,
        out: mpsc::UnboundedSender<Outgoing>,
        notices: mpsc::UnboundedSender<Notice>,
        forward_roots: bool,
    ) -> Self {
        Self {
            upstream,
            out,
            next_id: AtomicI64::new(1),
            pending: Mutex::default(),
            calls: Mutex::default(),
            serving: Mutex::default(),
            closed: CancellationToken::new(),
            close_reason: Mutex::default(),
            notices,
            garbage: Mutex::default(),
            stderr_tail: Mutex::default(),
            protocol_version: Mutex::default(),
            forward_roots,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    pub(crate) fn reason(&self) -> CloseReason {
        lock(&self.close_reason)
            .clone()
            .unwrap_or_else(|| CloseReason::Transport("the connection is closed".into()))
    }

    pub(crate) async fn closed(&self) -> CloseReason {
        self.closed.cancelled().await;
        self.reason()
    }

    /// Ends the connection for `reason` (the first reason wins) and fails
    /// every request still waiting.
    pub(crate) fn close(&self, reason: CloseReason) {
        {
            let mut r = lock(&self.close_reason);
            if r.is_some() {
                return;
            }
            *r = Some(reason.clone());
        }
        self.closed.cancel();
        let pending: Vec<_> = lock(&self.pending).drain().collect();
        for (_, tx) in pending {
            let _ = tx.send(Err(CallError::Closed(reason.clone())));
        }
        for (_, h) in lock(&self.serving).drain() {
            h.abort();
        }
    }

    /// Fails one request (if it is still waiting).
    pub(crate) fn fail_request(&self, id: i64, error: CallError) {
        if let Some(tx) = lock(&self.pending).remove(&id) {
            let _ = tx.send(Err(error));
        }
    }

    pub(crate) fn send(&self, msg: Value) {
        let _ = self.out.send(Outgoing {
            msg,
            request_id: None,
        });
    }

    pub(crate) fn note_garbage(&self, line: &str) {
        let mut g = lock(&self.garbage);
        g.0 += 1;
        if g.1.is_none() {
            g.1 = Some(line.chars().take(200).collect());
        }
        if g.0 <= 5 {
            tracing::warn!(upstream = %self.upstream, line = %line.chars().take(200).collect::<String>(), "upstream wrote a line that is not JSON-RPC");
        }
    }

    pub(crate) fn note_stderr(&self, line: String) {
        tracing::info!(target: "cellgate_federation::stderr", upstream = %self.upstream, "{line}");
        let mut t = lock(&self.stderr_tail);
        if t.len() == STDERR_TAIL {
            t.pop_front();
        }
        t.push_back(line);
    }

    /// What the upstream wrote that helps explain a failure to start.
    pub(crate) fn hints(&self) -> String {
        let mut out = String::new();
        let g = lock(&self.garbage);
        if g.0 > 0 {
            out.push_str(&format!(
                "; it wrote {} line(s) to stdout that are not JSON-RPC, the first: {:?}",
                g.0,
                g.1.as_deref().unwrap_or("")
            ));
        }
        let t = lock(&self.stderr_tail);
        if !t.is_empty() {
            let tail: Vec<&str> = t.iter().rev().take(5).rev().map(String::as_str).collect();
            out.push_str(&format!("; its last stderr lines: {}", tail.join(" | ")));
        }
        out
    }

    /// Sends a request and waits for its answer, at most `timeout`. With a
    /// `ctx`, the call's `_meta` goes along (its progress token replaced by
    /// ours), the upstream's requests and notifications about it reach the
    /// call's client, and cancelling the call cancels the request upstream.
    pub(crate) async fn request(
        self: &Arc<Self>,
        method: &str,
        mut params: Value,
        ctx: Option<&CallContext>,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        if self.is_closed() {
            return Err(CallError::Closed(self.reason()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(ctx) = ctx {
            if let (Some(meta), Some(p)) = (forwarded_meta(ctx, id), params.as_object_mut()) {
                p.insert("_meta".into(), meta);
            }
            lock(&self.calls).insert(id, InFlight { ctx: ctx.clone() });
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let mut guard = RequestGuard {
            shared: self,
            id,
            settled: method == "initialize",
            reason: "the caller went away",
        };
        let msg = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        if self
            .out
            .send(Outgoing {
                msg,
                request_id: Some(id),
            })
            .is_err()
            || self.is_closed()
        {
            guard.settled = true;
            return Err(CallError::Closed(self.reason()));
        }
        let never = CancellationToken::new();
        let cancel = ctx.map_or(&never, |c| &c.cancel);
        tokio::select! {
            answer = rx => {
                guard.settled = true;
                answer.unwrap_or_else(|_| Err(CallError::Closed(self.reason())))
            }
            _ = tokio::time::sleep(timeout) => {
                guard.reason = "timed out at the gateway";
                Err(CallError::Timeout { method: method.to_owned(), after: timeout })
            }
            _ = cancel.cancelled() => {
                guard.reason = "cancelled by the client";
                Err(CallError::Cancelled)
            }
        }
    }

    /// Handles one message from the upstream. `via` is the id of our
    /// request whose response stream carried it (Streamable HTTP), if any.
    pub(crate) fn deliver(self: &Arc<Self>, msg: Value, via: Option<i64>) {
        let mut obj = match msg {
            Value::Object(obj) => obj,
            Value::Array(items) => {
                for item in items {
                    self.deliver(item, via);
                }
                return;
            }
            other => {
                self.note_garbage(&other.to_string());
                return;
            }
        };
        let method = match obj.remove("method") {
            Some(Value::String(m)) => Some(m),
            _ => None,
        };
        let params = obj.remove("params").unwrap_or(Value::Null);
        match (method, obj.remove("id")) {
            (Some(method), Some(id)) => self.serve(id, method, params, via),
            (Some(method), None) => self.notification(&method, params, via),
            (None, Some(id)) => {
                let Some(id) = id.as_i64() else { return };
                let outcome = match (obj.remove("result"), obj.remove("error")) {
                    (Some(result), _) => Ok(result),
                    (None, Some(error)) => Err(CallError::Rpc(
                        serde_json::from_value::<McpError>(error.clone()).unwrap_or_else(|_| {
                            McpError::internal(format!("malformed error from upstream: {error}"))
                        }),
                    )),
                    (None, None) => Err(CallError::Transport(
                        "answered with neither `result` nor `error`".into(),
                    )),
                };
                if let Some(tx) = lock(&self.pending).remove(&id) {
                    let _ = tx.send(outcome);
                }
            }
            (None, None) => {}
        }
    }

    fn serve(self: &Arc<Self>, id: Value, method: String, params: Value, via: Option<i64>) {
        let key = id.to_string();
        let shared = self.clone();
        let task_key = key.clone();
        let mut serving = lock(&self.serving);
        let task = tokio::spawn(async move {
            let outcome = shared.answer(&method, params, via).await;
            lock(&shared.serving).remove(&task_key);
            shared.send(match outcome {
                Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
                Err(error) => json!({ "jsonrpc": "2.0", "id": id, "error": error }),
            });
        });
        serving.insert(key, task.abort_handle());
    }

    async fn answer(
        &self,
        method: &str,
        params: Value,
        via: Option<i64>,
    ) -> Result<Value, McpError> {
        match method {
            "ping" => Ok(json!({})),
            "roots/list" if !self.forward_roots => Err(McpError::new(
                codes::METHOD_NOT_FOUND,
                "roots are not forwarded to this upstream (forward_roots = false)",
            )),
            "sampling/createMessage" | "elicitation/create" | "roots/list" => {
                let ctx = self.attribute(via)?;
                match method {
                    "sampling/createMessage" => ctx.sample(params).await,
                    "elicitation/create" => ctx.elicit(params).await,
                    _ => ctx.list_roots().await,
                }
            }
            other => Err(McpError::method_not_found(other)),
        }
    }

    /// The call an upstream request or notification belongs to: the one
    /// whose stream carried it, else the only client with calls in flight.
    /// Never a guess between clients: that would leak one tenant's data to
    /// another.
    fn attribute(&self, via: Option<i64>) -> Result<CallContext, McpError> {
        let calls = lock(&self.calls);
        if let Some(c) = via.and_then(|id| calls.get(&id)) {
            return Ok(c.ctx.clone());
        }
        let Some((_, latest)) = calls.iter().max_by_key(|(id, _)| **id) else {
            return Err(McpError::new(
                codes::SERVER_ERROR,
                "no call is in flight on this gateway connection, so there is no client to ask",
            ));
        };
        let owner = |c: &CallContext| {
            (
                c.tenant.clone(),
                c.session_id.clone(),
                c.principal.id.clone(),
            )
        };
        let mine = owner(&latest.ctx);
        if calls.values().all(|c| owner(&c.ctx) == mine) {
            Ok(latest.ctx.clone())
        } else {
            Err(McpError::new(
                codes::SERVER_ERROR,
                format!(
                    "{} calls of different clients are in flight on this gateway connection; cellgate cannot tell which one this request belongs to",
                    calls.len()
                ),
            ))
        }
    }

    fn notification(&self, method: &str, params: Value, via: Option<i64>) {
        match method {
            "notifications/progress" => {
                let Some(id) = params
                    .get("progressToken")
                    .and_then(Value::as_str)
                    .and_then(|t| t.strip_prefix("cg-"))
                    .and_then(|n| n.parse::<i64>().ok())
                else {
                    return;
                };
                let ctx = lock(&self.calls).get(&id).map(|c| c.ctx.clone());
                if let (Some(ctx), Some(progress)) =
                    (ctx, params.get("progress").and_then(Value::as_f64))
                {
                    ctx.progress(
                        progress,
                        params.get("total").and_then(Value::as_f64),
                        params.get("message").and_then(Value::as_str),
                    );
                }
            }
            "notifications/message" => {
                let level = params
                    .get("level")
                    .and_then(Value::as_str)
                    .and_then(LogLevel::parse)
                    .unwrap_or(LogLevel::Info);
                let data = params.get("data").cloned().unwrap_or(Value::Null);
                let logger = match params.get("logger").and_then(Value::as_str) {
                    Some(l) => format!("{}/{l}", self.upstream),
                    None => self.upstream.to_string(),
                };
                tracing::debug!(upstream = %self.upstream, level = level.as_str(), %data, "upstream log message");
                if let Ok(ctx) = self.attribute(via) {
                    ctx.log(level, Some(&logger), data);
                }
            }
            "notifications/tools/list_changed" => {
                let _ = self.notices.send(Notice::ToolsChanged);
            }
            "notifications/prompts/list_changed" => {
                let _ = self.notices.send(Notice::PromptsChanged);
            }
            "notifications/resources/list_changed" => {
                let _ = self.notices.send(Notice::ResourcesChanged);
            }
            "notifications/resources/updated" => {
                if let Some(uri) = params.get("uri").and_then(Value::as_str) {
                    let _ = self.notices.send(Notice::ResourceUpdated(uri.to_owned()));
                }
            }
            "notifications/cancelled" => {
                if let Some(id) = params.get("requestId")
                    && let Some(h) = lock(&self.serving).remove(&id.to_string())
                {
                    h.abort();
                }
            }
            other => {
                tracing::trace!(upstream = %self.upstream, method = other, "notification ignored")
            }
        }
    }
}

/// The `_meta` sent upstream for a call: the client's keys, without the
/// protocol's own (`io.modelcontextprotocol/…`, which describe the client's
/// hop, not ours) and with our progress token for theirs.
fn forwarded_meta(ctx: &CallContext, id: i64) -> Option<Value> {
    let mut meta = Map::new();
    if let Some(m) = &ctx.meta {
        for (k, v) in m.iter() {
            if k == "progressToken" || k.starts_with("io.modelcontextprotocol/") {
                continue;
            }
            meta.insert(k.clone(), v.clone());
        }
    }
    if ctx.progress_token().is_some() {
        meta.insert("progressToken".into(), Value::String(format!("cg-{id}")));
    }
    (!meta.is_empty()).then_some(Value::Object(meta))
}

/// Cleans up after a request however it ended; one that ended without an
/// answer is cancelled upstream.
struct RequestGuard<'a> {
    shared: &'a Arc<Shared>,
    id: i64,
    settled: bool,
    reason: &'static str,
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).remove(&self.id);
        lock(&self.shared.calls).remove(&self.id);
        if !self.settled && !self.shared.is_closed() {
            self.shared.send(json!({
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": { "requestId": self.id, "reason": self.reason },
            }));
        }
    }
}

/// A connected, initialized upstream.
pub(crate) struct Session {
    pub shared: Arc<Shared>,
    pub protocol_version: String,
    pub server_info: Value,
    pub capabilities: Value,
    pub pid: Option<u32>,
    stop: CancellationToken,
}

impl Session {
    /// Starts the transport and performs the handshake. The error is a
    /// sentence naming the upstream and what went wrong.
    pub(crate) async fn connect(
        cfg: &UpstreamConfig,
        notices: mpsc::UnboundedSender<Notice>,
    ) -> Result<Arc<Session>, String> {
        let name: Arc<str> = Arc::from(cfg.name.as_str());
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(
            name.clone(),
            out_tx,
            notices,
            cfg.forward_roots,
        ));
        let stop = CancellationToken::new();
        let max = usize::try_from(cfg.max_message_bytes).unwrap_or(usize::MAX);
        let connect_timeout = Duration::from_secs(cfg.connect_timeout_secs);
        let started = match &cfg.transport {
            UpstreamTransport::Stdio(s) => {
                crate::stdio::start(s, max, shared.clone(), out_rx, stop.clone()).map(Some)
            }
            UpstreamTransport::Http(h) => crate::http::start(
                h,
                max,
                connect_timeout,
                shared.clone(),
                out_rx,
                stop.clone(),
            )
            .map(|()| None),
            UpstreamTransport::Sse(h) => crate::http::start_legacy_sse(
                h,
                max,
                connect_timeout,
                shared.clone(),
                out_rx,
                stop.clone(),
            )
            .map(|()| None),
        };
        let pid = started.map_err(|e| format!("upstream `{name}`: {e}"))?;
        match handshake(&shared, cfg, connect_timeout).await {
            Ok((protocol_version, result)) => Ok(Arc::new(Session {
                protocol_version,
                server_info: result.get("serverInfo").cloned().unwrap_or(Value::Null),
                capabilities: result.get("capabilities").cloned().unwrap_or(json!({})),
                shared,
                pid,
                stop,
            })),
            Err(e) => {
                let hints = shared.hints();
                shared.close(CloseReason::Shutdown);
                stop.cancel();
                Err(format!("{e}{hints}"))
            }
        }
    }

    pub(crate) fn has_capability(&self, name: &str) -> bool {
        self.capabilities.get(name).is_some_and(|v| !v.is_null())
    }

    pub(crate) async fn request(
        &self,
        method: &str,
        params: Value,
        ctx: Option<&CallContext>,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        self.shared.request(method, params, ctx, timeout).await
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    pub(crate) async fn closed(&self) -> CloseReason {
        self.shared.closed().await
    }

    /// Closes the connection and stops the process (if any).
    pub(crate) fn shutdown(&self) {
        self.shared.close(CloseReason::Shutdown);
        self.stop.cancel();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn handshake(
    shared: &Arc<Shared>,
    cfg: &UpstreamConfig,
    timeout: Duration,
) -> Result<(String, Value), String> {
    let name = &cfg.name;
    let mut capabilities = json!({ "sampling": {}, "elicitation": {} });
    if cfg.forward_roots {
        capabilities["roots"] = json!({ "listChanged": false });
    }
    let params = json!({
        "protocolVersion": OFFERED_VERSION,
        "capabilities": capabilities,
        "clientInfo": { "name": "cellgate", "version": env!("CARGO_PKG_VERSION") },
    });
    let result = shared
        .request("initialize", params, None, timeout)
        .await
        .map_err(|e| match e {
            CallError::Rpc(e) => format!("upstream `{name}` refused `initialize`: {}", e.message),
            CallError::Timeout { after, .. } => format!(
                "upstream `{name}` did not answer `initialize` within {}",
                human(after)
            ),
            CallError::Closed(r) => format!("{} before answering `initialize`", r.describe(name)),
            other => format!("{} (during `initialize`)", other.summary(name)),
        })?;
    let Some(version) = result.get("protocolVersion").and_then(Value::as_str) else {
        return Err(format!(
            "upstream `{name}` answered `initialize` without a protocolVersion"
        ));
    };
    if !KNOWN_VERSIONS.contains(&version) {
        tracing::warn!(upstream = %name, version, "upstream chose a protocol revision this client does not know; going on with it");
    }
    let version = version.to_owned();
    *lock(&shared.protocol_version) = Some(version.clone());
    shared.send(json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }));
    tracing::info!(upstream = %name, version = %version, server = %result.get("serverInfo").cloned().unwrap_or_default(), "upstream connected");
    Ok((version, result))
}
