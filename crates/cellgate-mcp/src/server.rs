//! The transport-independent core of the edge: one JSON-RPC message in, at
//! most one response out, with the session's state kept in between.

use std::sync::{Arc, Weak};
use std::time::Duration;

use cellgate_kernel::{
    BoxFuture, Call, CallContext, CancellationToken, ClientPeer, LogLevel, McpError, Metrics,
    Pipeline, Principal, ProviderEvent, Request, codes,
};
use serde_json::{Map, Value, json};

use crate::jsonrpc::{self, Message};
use crate::protocol;
use crate::session::{Outbound, Session, SessionRegistry};

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
        let session = self.session.clone();
        let timeout = self.timeout;
        let method = method.to_owned();
        Box::pin(async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Err(McpError::new(
                    codes::SERVER_ERROR,
                    format!("{method}: the session closed before the client answered"),
                )),
                Err(_) => {
                    session.forget_response(&id);
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
        method: &str,
        params: Map<String, Value>,
        token: CancellationToken,
        out: Arc<dyn Outbound>,
    ) -> Result<Value, McpError> {
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

    fn context(
        &self,
        session: &Arc<Session>,
        params: &Map<String, Value>,
        cancel: CancellationToken,
        out: Arc<dyn Outbound>,
    ) -> CallContext {
        CallContext {
            tenant: self.tenant.clone(),
            principal: Principal::anonymous(),
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
