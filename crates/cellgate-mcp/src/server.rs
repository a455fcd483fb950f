//! The transport-independent core of the edge: one JSON-RPC message in, at
//! most one response out, with the session's state kept in between.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use cellgate_kernel::{
    BoxFuture, Call, CallContext, CancellationToken, ClientPeer, Identity, LogLevel, McpError,
    Metrics, Pipeline, ProviderEvent, Request, Tool, codes,
};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use crate::jsonrpc::{self, Message};
use crate::mrtr::{INPUT_METHODS, InputRound, RequestBinding, StateSealer, StatelessPeer};
use crate::protocol;
use crate::session::{Outbound, Session, SessionRegistry, TransportKind};
use crate::stateless;
use crate::subscriptions::{Listener, SubscriptionFilter};
use crate::tasks::{
    Handoff, TASKS_EXTENSION, TaskCapablePeer, TaskRegistry, TaskSupport, client_declares_tasks,
    missing_tasks_capability,
};

/// Limits and identity of the edge; the binary fills it from `cellgate.toml`.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub server_name: String,
    pub server_version: String,
    pub instructions: Option<String>,
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub session_idle: Duration,
    pub sse_retry: Duration,
    pub sse_history: usize,
    pub request_timeout: Duration,
    /// Origins allowed besides loopback ones (`scheme://host[:port]`).
    pub allowed_origins: Vec<String>,
    /// Host names allowed besides loopback ones.
    pub allowed_hosts: Vec<String>,
    /// The tenant every call belongs to until authentication assigns one.
    pub default_tenant: String,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            server_name: "cellgate".into(),
            server_version: env!("CARGO_PKG_VERSION").into(),
            instructions: None,
            max_body_bytes: 4 * 1024 * 1024,
            max_json_depth: 64,
            session_idle: Duration::from_secs(1800),
            sse_retry: Duration::from_millis(1000),
            sse_history: 256,
            request_timeout: Duration::from_secs(300),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            default_tenant: "local".into(),
        }
    }
}

/// The MCP server side of cellgate, shared by every transport.
pub struct McpServer {
    pipeline: Pipeline,
    pub config: EdgeConfig,
    pub sessions: Arc<SessionRegistry>,
    pub metrics: Arc<Metrics>,
    tenant: Arc<str>,
    /// Seals `requestState` of input-required rounds (key lives with the process).
    sealer: StateSealer,
    pub tasks: Arc<TaskRegistry>,
    /// Open `subscriptions/listen` streams of stateless clients.
    listeners: Mutex<HashMap<u64, Listener>>,
    next_listener: AtomicU64,
}

/// Sends request-related messages through a transport's [`Outbound`] and
/// waits for answers to server-to-client requests.
struct RequestPeer {
    session: Arc<Session>,
    out: Arc<dyn Outbound>,
    timeout: Duration,
}

impl ClientPeer for RequestPeer {
    fn notify(&self, method: &str, params: Value) {
        self.out.send(&jsonrpc::notification(method, params), false);
    }

    fn request(&self, method: &str, params: Value) -> BoxFuture<'static, Result<Value, McpError>> {
        let (id, rx) = self.session.expect_response();
        self.out.send(&jsonrpc::request(&id, method, params), false);
        // If the waiting future is dropped (the call was cancelled), the
        // entry must not stay behind in the session's pending map.
        let guard = ForgetOnDrop {
            session: self.session.clone(),
            id,
        };
        let timeout = self.timeout;
        let method = method.to_owned();
        Box::pin(async move {
            let guard = guard;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Err(McpError::new(
                    codes::SERVER_ERROR,
                    format!("{method}: the session closed before the client answered"),
                )),
                Err(_) => {
                    drop(guard);
                    Err(McpError::new(
                        codes::SERVER_ERROR,
                        format!(
                            "{method}: the client did not answer within {}s",
                            timeout.as_secs()
                        ),
                    ))
                }
            }
        })
    }

    fn log_enabled(&self, level: LogLevel) -> bool {
        self.session.log_enabled(level)
    }

    fn close_stream(&self) {
        self.out.close();
    }
}

/// Removes a server-to-client request's pending entry when the future
/// waiting for its answer goes away, answered or not.
struct ForgetOnDrop {
    session: Arc<Session>,
    id: Value,
}

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        self.session.forget_response(&self.id);
    }
}

fn param_str<'a>(params: &'a Map<String, Value>, name: &str) -> Result<&'a str, McpError> {
    match params.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(McpError::invalid_params(format!(
            "params.{name} must be a string, got {}",
            kind(other)
        ))),
        None => Err(McpError::invalid_params(format!(
            "params.{name} is required"
        ))),
    }
}

fn param_opt_str(params: &Map<String, Value>, name: &str) -> Result<Option<String>, McpError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(McpError::invalid_params(format!(
            "params.{name} must be a string, got {}",
            kind(other)
        ))),
    }
}

fn param_object(params: &Map<String, Value>, name: &str) -> Result<Map<String, Value>, McpError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(other) => Err(McpError::invalid_params(format!(
            "params.{name} must be an object, got {}",
            kind(other)
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Turns a method and its params into a pipeline [`Request`]; `Ok(None)` for
/// a method that is not a provider request.
pub fn pipeline_request(
    method: &str,
    params: &Map<String, Value>,
) -> Result<Option<Request>, McpError> {
    Ok(Some(match method {
        "tools/list" => Request::ListTools {
            cursor: param_opt_str(params, "cursor")?,
        },
        "tools/call" => Request::CallTool {
            name: param_str(params, "name")?.to_owned(),
            arguments: param_object(params, "arguments")?,
        },
        "resources/list" => Request::ListResources {
            cursor: param_opt_str(params, "cursor")?,
        },
        "resources/templates/list" => Request::ListResourceTemplates {
            cursor: param_opt_str(params, "cursor")?,
        },
        "resources/read" => Request::ReadResource {
            uri: param_str(params, "uri")?.to_owned(),
        },
        "prompts/list" => Request::ListPrompts {
            cursor: param_opt_str(params, "cursor")?,
        },
        "prompts/get" => {
            let arguments = param_object(params, "arguments")?;
            if let Some((k, _)) = arguments.iter().find(|(_, v)| !v.is_string()) {
                return Err(McpError::invalid_params(format!(
                    "params.arguments.{k} must be a string"
                )));
            }
            Request::GetPrompt {
                name: param_str(params, "name")?.to_owned(),
                arguments,
            }
        }
        "completion/complete" => {
            let r = param_object(params, "ref")?;
            match r.get("type").and_then(Value::as_str) {
                Some("ref/prompt") => {
                    param_str(&r, "name").map_err(|_| {
                        McpError::invalid_params("params.ref.name is required for ref/prompt")
                    })?;
                }
                Some("ref/resource") => {
                    param_str(&r, "uri").map_err(|_| {
                        McpError::invalid_params("params.ref.uri is required for ref/resource")
                    })?;
                }
                _ => {
                    return Err(McpError::invalid_params(
                        "params.ref.type must be \"ref/prompt\" or \"ref/resource\"",
                    ));
                }
            }
            let arg = param_object(params, "argument")?;
            param_str(&arg, "name")
                .map_err(|_| McpError::invalid_params("params.argument.name is required"))?;
            param_str(&arg, "value")
                .map_err(|_| McpError::invalid_params("params.argument.value is required"))?;
            Request::Complete {
                params: Value::Object(params.clone()),
            }
        }
        _ => return Ok(None),
    }))
}

impl McpServer {
    pub fn new(pipeline: Pipeline, config: EdgeConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        let gauge = metrics.active_sessions.clone();
        let sessions = SessionRegistry::new(config.session_idle, move |n| {
            gauge.set(n);
        });
        let server = Arc::new(Self {
            tenant: Arc::from(config.default_tenant.as_str()),
            pipeline,
            config,
            sessions,
            metrics,
            sealer: StateSealer::random(),
            tasks: Arc::new(TaskRegistry::new()),
            listeners: Mutex::new(HashMap::new()),
            next_listener: AtomicU64::new(1),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            server.spawn_background();
        }
        server
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    fn spawn_background(self: &Arc<Self>) {
        // Forward provider change events to the sessions that should hear them.
        for p in self.pipeline.catalog().providers() {
            if let Some(mut rx) = p.events() {
                let weak: Weak<Self> = Arc::downgrade(self);
                tokio::spawn(async move {
                    loop {
                        let ev = match rx.recv().await {
                            Ok(ev) => ev,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(_) => break,
                        };
                        let Some(server) = weak.upgrade() else { break };
                        server.broadcast(&ev);
                    }
                });
            }
        }
        // Expire idle sessions.
        let weak: Weak<Self> = Arc::downgrade(self);
        let every = (self.config.session_idle / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(30));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(server) = weak.upgrade() else { break };
                let n = server.sessions.expire_idle();
                if n > 0 {
                    tracing::debug!(expired = n, "idle sessions expired");
                }
            }
        });
    }

    fn broadcast(&self, ev: &ProviderEvent) {
        let (method, params, uri) = match ev {
            ProviderEvent::ToolsChanged => ("notifications/tools/list_changed", json!({}), None),
            ProviderEvent::ResourcesChanged => {
                ("notifications/resources/list_changed", json!({}), None)
            }
            ProviderEvent::PromptsChanged => {
                ("notifications/prompts/list_changed", json!({}), None)
            }
            ProviderEvent::ResourceUpdated { uri } => (
                "notifications/resources/updated",
                json!({ "uri": uri }),
                Some(uri),
            ),
        };
        for l in self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            if l.filter.wants(ev) {
                l.send(method, params.clone());
            }
        }
        let msg = jsonrpc::notification(method, params);
        for s in self.sessions.all() {
            if !s.is_initialized() {
                continue;
            }
            if let Some(uri) = uri
                && !s.is_subscribed(uri)
            {
                continue;
            }
            s.send_unrelated(&msg);
        }
    }

    /// What this server declares in `initialize` and `server/discover`.
    pub fn capabilities(&self) -> Value {
        json!({
            "tools": { "listChanged": true },
            "resources": { "subscribe": true, "listChanged": true },
            "prompts": { "listChanged": true },
            "logging": {},
            "completions": {}
        })
    }

    /// Capabilities of the stateless revision: the session ones plus the
    /// extensions it serves.
    pub fn stateless_capabilities(&self) -> Value {
        let mut caps = self.capabilities();
        caps["extensions"] = json!({ TASKS_EXTENSION: {} });
        caps
    }

    /// A tool's definition, for checks made before a call runs.
    pub async fn lookup_tool(&self, name: &str) -> Option<Tool> {
        let ctx = CallContext::detached(&self.tenant);
        self.pipeline
            .catalog()
            .tool(&ctx, name)
            .await
            .ok()
            .flatten()
            .map(|t| (*t).clone())
    }

    pub fn server_info(&self) -> Value {
        json!({ "name": self.config.server_name, "title": "cellgate MCP gateway", "version": self.config.server_version })
    }

    /// Handles one message of a session. Returns the JSON-RPC response for a
    /// request, `None` for notifications, responses and cancelled requests.
    pub async fn handle_message(
        &self,
        session: &Arc<Session>,
        msg: Message,
        out: Arc<dyn Outbound>,
    ) -> Option<Value> {
        session.touch();
        match msg {
            Message::Notification { method, params } => {
                self.handle_notification(session, &method, params.unwrap_or_default());
                None
            }
            Message::Response { id, outcome } => {
                if !session.deliver_response(&id, outcome) {
                    tracing::debug!(%id, "response to an unknown or expired server request ignored");
                }
                None
            }
            Message::Request { id, method, params } => {
                let Some(token) = session.begin_request(&id) else {
                    return Some(jsonrpc::response(
                        &id,
                        Err(McpError::invalid_request(format!(
                            "request id {id} is already in use by a request in flight"
                        ))),
                    ));
                };
                let fut = self.handle_request(
                    session,
                    &id,
                    &method,
                    params.unwrap_or_default(),
                    token.clone(),
                    out,
                );
                let outcome = match tokio::time::timeout(self.config.request_timeout, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(McpError::cancelled(format!(
                        "{method}: no answer within the request timeout of {}s",
                        self.config.request_timeout.as_secs()
                    ))),
                };
                session.end_request(&id);
                if token.is_cancelled() && !session.closed.is_cancelled() {
                    // The client cancelled: the spec says not to answer.
                    return None;
                }
                Some(jsonrpc::response(&id, outcome))
            }
        }
    }

    fn handle_notification(
        &self,
        session: &Arc<Session>,
        method: &str,
        params: Map<String, Value>,
    ) {
        match method {
            "notifications/initialized" => session.mark_initialized(),
            "notifications/cancelled" => {
                if let Some(id) = params.get("requestId") {
                    let found = session.cancel_request(id);
                    tracing::debug!(%id, found, reason = ?params.get("reason"), "cancellation");
                }
            }
            "notifications/roots/list_changed" | "notifications/progress" => {}
            other => tracing::debug!(method = other, "notification ignored"),
        }
    }

    async fn handle_request(
        &self,
        session: &Arc<Session>,
        id: &Value,
        method: &str,
        params: Map<String, Value>,
        token: CancellationToken,
        out: Arc<dyn Outbound>,
    ) -> Result<Value, McpError> {
        if *session.version() == *protocol::STATELESS_VERSION {
            return self
                .handle_stateless(session, id, method, params, token, out)
                .await
                .map(|r| stateless::finish_result(self, method, r));
        }
        match method {
            "initialize" => return self.initialize(session, &params),
            "ping" => return Ok(json!({})),
            _ => {}
        }
        if !session.is_initialized() && session.client_info().is_null() {
            return Err(McpError::invalid_request(format!(
                "{method}: the session is not initialized; send `initialize` first"
            )));
        }
        match method {
            "logging/setLevel" => {
                let level = param_str(&params, "level")?;
                let level = LogLevel::parse(level).ok_or_else(|| {
                    McpError::invalid_params(format!(
                        "params.level {level:?} is not one of debug, info, notice, warning, error, critical, alert, emergency"
                    ))
                })?;
                session.set_log_level(level);
                Ok(json!({}))
            }
            "resources/subscribe" => {
                session.subscribe(param_str(&params, "uri")?);
                Ok(json!({}))
            }
            "resources/unsubscribe" => {
                session.unsubscribe(param_str(&params, "uri")?);
                Ok(json!({}))
            }
            _ => {
                let Some(request) = pipeline_request(method, &params)? else {
                    return Err(McpError::method_not_found(method));
                };
                let ctx = self.context(session, &params, token, out);
                self.pipeline.call(Call { ctx, request }).await
            }
        }
    }

    fn initialize(
        &self,
        session: &Arc<Session>,
        params: &Map<String, Value>,
    ) -> Result<Value, McpError> {
        if !session.client_info().is_null() {
            return Err(McpError::invalid_request(
                "initialize: this session is already initialized",
            ));
        }
        let requested = param_str(params, "protocolVersion")?;
        let capabilities = match params.get("capabilities") {
            None | Some(Value::Null) => json!({}),
            Some(Value::Object(c)) => Value::Object(c.clone()),
            Some(other) => {
                return Err(McpError::invalid_params(format!(
                    "params.capabilities must be an object, got {}",
                    kind(other)
                )));
            }
        };
        let info = match params.get("clientInfo") {
            Some(Value::Object(i)) => Value::Object(i.clone()),
            _ => json!({ "name": "unknown", "version": "unknown" }),
        };
        let version = protocol::negotiate_initialize(requested);
        session.set_handshake(version, capabilities, info);
        let mut result = json!({
            "protocolVersion": version,
            "capabilities": self.capabilities(),
            "serverInfo": self.server_info(),
        });
        if let Some(i) = &self.config.instructions {
            result["instructions"] = json!(i);
        }
        Ok(result)
    }

    /// Who owns what a call leaves behind (tasks, request states).
    fn owner(&self, identity: &Identity) -> String {
        format!("{}\u{0}{}", identity.tenant, identity.principal.id)
    }

    /// The session's identity. Without one: on stdio the local operator
    /// (whoever can start the process can read its data directory), else the
    /// anonymous caller of the default tenant (no authentication layer).
    fn identity_of(&self, session: &Session) -> Identity {
        session
            .identity()
            .unwrap_or_else(|| match session.transport {
                TransportKind::Stdio => Identity::local_operator(&self.tenant),
                _ => Identity::anonymous(&self.tenant),
            })
    }

    /// A request of the stateless revision (the session is the request's own).
    async fn handle_stateless(
        &self,
        session: &Arc<Session>,
        id: &Value,
        method: &str,
        params: Map<String, Value>,
        token: CancellationToken,
        out: Arc<dyn Outbound>,
    ) -> Result<Value, McpError> {
        match method {
            "server/discover" => {
                let mut r = stateless::discover(self);
                r["capabilities"] = self.stateless_capabilities();
                return Ok(r);
            }
            m if stateless::REMOVED_METHODS.contains(&m) => {
                return Err(McpError::new(
                    codes::METHOD_NOT_FOUND,
                    format!(
                        "method not found: {m} (removed in protocol {})",
                        protocol::STATELESS_VERSION
                    ),
                ));
            }
            "subscriptions/listen" => return self.listen(id, &params, token, out).await,
            "tasks/get" | "tasks/update" | "tasks/cancel" => {
                return self.task_method(session, method, &params);
            }
            _ => {}
        }
        let Some(request) = pipeline_request(method, &params)? else {
            return Err(McpError::method_not_found(method));
        };
        let mut ctx = self.context(session, &params, token.clone(), out);
        let owner = self.owner(&self.identity_of(session));
        let round = if INPUT_METHODS.contains(&method) {
            let binding = RequestBinding::new(&owner, method, &params);
            Some(Arc::new(InputRound::from_params(
                &self.sealer,
                binding,
                &params,
            )?))
        } else {
            None
        };
        let stateless_peer: Arc<dyn ClientPeer> = Arc::new(StatelessPeer {
            inner: ctx.peer.clone(),
            round: round.clone(),
            method: method.to_owned(),
        });
        ctx.peer = stateless_peer.clone();
        let finish = |outcome| match &round {
            Some(r) => r.finish(&self.sealer, outcome),
            None => outcome,
        };
        if let Request::CallTool { name, .. } = &request {
            let support = self
                .pipeline
                .catalog()
                .tool(&ctx, name)
                .await?
                .map_or(TaskSupport::Forbidden, |t| TaskSupport::of(&t));
            let declared = client_declares_tasks(&ctx.client_capabilities);
            if support == TaskSupport::Required && !declared {
                return Err(missing_tasks_capability(&format!("tool {name:?}")));
            }
            if support != TaskSupport::Forbidden && declared {
                return self
                    .call_task_capable(ctx, request, owner, stateless_peer, token, finish)
                    .await;
            }
        }
        finish(self.pipeline.call(Call { ctx, request }).await)
    }

    /// Runs a call that may move to the background. It answers like any call
    /// unless the provider hands it over (`continue_in_background`), in which
    /// case the client gets a `CreateTaskResult` and the call runs on.
    async fn call_task_capable(
        &self,
        mut ctx: CallContext,
        request: Request,
        owner: String,
        foreground: Arc<dyn ClientPeer>,
        token: CancellationToken,
        finish: impl FnOnce(Result<Value, McpError>) -> Result<Value, McpError>,
    ) -> Result<Value, McpError> {
        // The call's own token: the request's cancels it only until handoff.
        let call_token = CancellationToken::new();
        let (signal, mut handed_off) = oneshot::channel();
        ctx.cancel = call_token.clone();
        ctx.peer = Arc::new(TaskCapablePeer::new(
            foreground,
            Handoff {
                registry: self.tasks.clone(),
                owner,
                cancel: call_token.clone(),
                signal,
            },
        ));
        // Dropping this future (timeout, disconnect) before handoff cancels the call.
        let guard = call_token.clone().drop_guard();
        let pipeline = self.pipeline.clone();
        let mut running = tokio::spawn(async move { pipeline.call(Call { ctx, request }).await });
        let joined = |r: Result<Result<Value, McpError>, tokio::task::JoinError>| {
            r.unwrap_or_else(|e| Err(McpError::internal(format!("the call failed: {e}"))))
        };
        // A handoff wins over an outcome that is already there: the provider
        // asked to go to the background, so the client gets the task.
        let outcome = tokio::select! {
            biased;
            task = &mut handed_off => match task {
                Ok(task) => {
                    guard.disarm();
                    let t = task.clone();
                    tokio::spawn(async move { t.finish(joined(running.await)) });
                    return Ok(task.create_result());
                }
                Err(_) => joined((&mut running).await),
            },
            r = &mut running => joined(r),
            _ = token.cancelled() => {
                call_token.cancel();
                joined((&mut running).await)
            }
        };
        // A handoff that raced the end of the call: the task gets the outcome too.
        if let Ok(task) = handed_off.try_recv() {
            task.finish(outcome.clone());
        }
        finish(outcome)
    }

    /// `tasks/get`, `tasks/update`, `tasks/cancel`.
    fn task_method(
        &self,
        session: &Arc<Session>,
        method: &str,
        params: &Map<String, Value>,
    ) -> Result<Value, McpError> {
        if !client_declares_tasks(&session.client_capabilities()) {
            return Err(missing_tasks_capability(method));
        }
        let id = param_str(params, "taskId")?;
        let task = self
            .tasks
            .get(&self.owner(&self.identity_of(session)), id)?;
        match method {
            "tasks/get" => Ok(task.detailed()),
            "tasks/update" => {
                let responses = match params.get("inputResponses") {
                    Some(Value::Object(r)) => r,
                    _ => {
                        return Err(McpError::invalid_params(
                            "params.inputResponses must be an object mapping input keys to results",
                        ));
                    }
                };
                task.deliver(responses);
                Ok(json!({}))
            }
            _ => {
                task.request_cancel();
                Ok(json!({}))
            }
        }
    }

    /// `subscriptions/listen`: acknowledges, then streams the notifications
    /// the client opted in to until the client goes away.
    async fn listen(
        &self,
        id: &Value,
        params: &Map<String, Value>,
        token: CancellationToken,
        out: Arc<dyn Outbound>,
    ) -> Result<Value, McpError> {
        let filter = SubscriptionFilter::parse(params.get("notifications"))?;
        let listener = Listener::new(id.clone(), filter, out);
        listener.acknowledge();
        let key = self.next_listener.fetch_add(1, Ordering::Relaxed);
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, listener);
        token.cancelled().await;
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        Err(McpError::cancelled(
            "subscriptions/listen: the client went away",
        ))
    }

    fn context(
        &self,
        session: &Arc<Session>,
        params: &Map<String, Value>,
        cancel: CancellationToken,
        out: Arc<dyn Outbound>,
    ) -> CallContext {
        let identity = self.identity_of(session);
        CallContext {
            tenant: identity.tenant_arc(),
            principal: identity.principal,
            session_id: Some(session.id.clone()),
            protocol_version: session.version(),
            client_capabilities: session.client_capabilities(),
            meta: match params.get("_meta") {
                Some(Value::Object(m)) => Some(Arc::new(m.clone())),
                _ => None,
            },
            cancel,
            peer: Arc::new(RequestPeer {
                session: session.clone(),
                out,
                timeout: self.config.request_timeout,
            }),
            trail: Arc::default(),
        }
    }
}
