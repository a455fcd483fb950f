use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::{BoxFuture, DecisionTrail, McpError};

/// Who makes a call, as established by authentication. The tenant a call
/// runs in is [`CallContext::tenant`], set from the same credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub id: Arc<str>,
    pub kind: PrincipalKind,
    /// Role names, resolved to levels and permissions by the authorize layer.
    pub roles: Arc<[String]>,
    /// OAuth scopes the credential carries (empty for API keys and local callers).
    pub scopes: Arc<[String]>,
    /// How the principal was authenticated.
    pub auth: AuthMethod,
    /// The verified token claims, for policy conditions (`claims.*` in CEL).
    pub claims: Option<Arc<Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    User,
    Agent,
    Service,
    Anonymous,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Agent => "agent",
            PrincipalKind::Service => "service",
            PrincipalKind::Anonymous => "anonymous",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::User, Self::Agent, Self::Service, Self::Anonymous]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// Nobody: authentication is off (single local tenant).
    None,
    /// A JWT bearer token (from a configured issuer or the instance's own).
    Jwt,
    /// An API key issued by cellgate.
    ApiKey,
    /// The operator of this machine: stdio and CLI administration, which
    /// act with the rights of whoever can read the data directory.
    Local,
}

impl Principal {
    /// The caller of an instance without authentication.
    pub fn anonymous() -> Self {
        Self {
            id: Arc::from("anonymous"),
            kind: PrincipalKind::Anonymous,
            roles: Arc::from(Vec::new()),
            scopes: Arc::from(Vec::new()),
            auth: AuthMethod::None,
            claims: None,
        }
    }

    /// The local operator (stdio, CLI): an administrator of its tenant.
    pub fn local_operator() -> Self {
        Self {
            id: Arc::from("local-operator"),
            kind: PrincipalKind::User,
            roles: Arc::from(vec!["admin".to_owned()]),
            scopes: Arc::from(Vec::new()),
            auth: AuthMethod::Local,
            claims: None,
        }
    }

    pub fn is_authenticated(&self) -> bool {
        self.auth != AuthMethod::None
    }
}

/// The tenant a request runs in and the principal making it, as the
/// transport's authentication established it (HTTP puts one into every
/// request's extensions).
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub tenant: String,
    pub principal: Principal,
}

impl Identity {
    /// Nobody, in `tenant`.
    pub fn anonymous(tenant: &str) -> Identity {
        Identity {
            tenant: tenant.to_owned(),
            principal: Principal::anonymous(),
        }
    }

    /// The local operator (stdio, CLI) in `tenant`.
    pub fn local_operator(tenant: &str) -> Identity {
        Identity {
            tenant: tenant.to_owned(),
            principal: Principal::local_operator(),
        }
    }

    /// The tenant as [`CallContext::tenant`] wants it.
    pub fn tenant_arc(&self) -> Arc<str> {
        Arc::from(self.tenant.as_str())
    }

    /// Whether the credential carries the OAuth scope.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.principal.scopes.iter().any(|s| s == scope)
    }

    /// Whether the principal holds the role.
    pub fn has_role(&self, role: &str) -> bool {
        self.principal.roles.iter().any(|r| r == role)
    }
}

/// Severity of `notifications/message`, ordered as RFC 5424 (debug lowest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
    Alert,
    Emergency,
}

impl LogLevel {
    pub const ALL: [LogLevel; 8] = [
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Notice,
        LogLevel::Warning,
        LogLevel::Error,
        LogLevel::Critical,
        LogLevel::Alert,
        LogLevel::Emergency,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Notice => "notice",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
            LogLevel::Alert => "alert",
            LogLevel::Emergency => "emergency",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

/// The client side of a connection, as seen from inside a call: the edge
/// implements it for each transport so that providers can stream
/// notifications and ask the client things without knowing how bytes move.
pub trait ClientPeer: Send + Sync {
    /// Sends a notification related to the current request.
    fn notify(&self, method: &str, params: Value);
    /// Sends a server-to-client request (sampling, elicitation, roots) and
    /// waits for the client's answer.
    fn request(&self, method: &str, params: Value) -> BoxFuture<'static, Result<Value, McpError>>;
    /// Like [`ClientPeer::request`], under a name the provider chose. In the
    /// stateless revision (2026-07-28) a request is not sent but returned to
    /// the client in an input-required result keyed by this name, and the
    /// answer comes back under it when the client retries; transports with a
    /// live connection ignore the name.
    fn request_named(
        &self,
        _key: &str,
        method: &str,
        params: Value,
    ) -> BoxFuture<'static, Result<Value, McpError>> {
        self.request(method, params)
    }
    /// Offers to finish the call in the background as a task (the tasks
    /// extension). Returns true when the client has been answered with a task
    /// and the call now runs detached; false when the call goes on in the
    /// foreground as before (no tasks support, or already detached).
    fn continue_in_background(&self) -> bool {
        false
    }
    /// Whether a log message of `level` passes the client's `logging/setLevel`.
    fn log_enabled(&self, _level: LogLevel) -> bool {
        true
    }
    /// Closes the transport stream carrying this request, if it has one that
    /// the client can resume (Streamable HTTP with `Last-Event-ID`). The call
    /// goes on; its later messages are kept for the client to fetch.
    fn close_stream(&self) {}
}

/// A peer for calls that have no client to talk back to (benchmarks, CLI).
pub struct DetachedPeer;

impl ClientPeer for DetachedPeer {
    fn notify(&self, _method: &str, _params: Value) {}
    fn request(&self, method: &str, _params: Value) -> BoxFuture<'static, Result<Value, McpError>> {
        let msg = format!("{method}: this call has no client connection to ask");
        Box::pin(async move { Err(McpError::new(crate::codes::SERVER_ERROR, msg)) })
    }
}

/// Everything a layer or provider may know about the call in flight.
#[derive(Clone)]
pub struct CallContext {
    pub tenant: Arc<str>,
    pub principal: Principal,
    pub session_id: Option<Arc<str>>,
    /// The protocol revision this request is spoken in.
    pub protocol_version: Arc<str>,
    /// What the client declared it can do (`sampling`, `elicitation`, `roots`).
    pub client_capabilities: Arc<Value>,
    /// The request's `_meta`, minus nothing: layers may read any key.
    pub meta: Option<Arc<Map<String, Value>>>,
    pub cancel: CancellationToken,
    pub peer: Arc<dyn ClientPeer>,
    /// What each pipeline layer decided about this call, for the audit log.
    pub trail: Arc<DecisionTrail>,
}

impl std::fmt::Debug for CallContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallContext")
            .field("tenant", &self.tenant)
            .field("principal", &self.principal.id)
            .field("session_id", &self.session_id)
            .field("protocol_version", &self.protocol_version)
            .finish_non_exhaustive()
    }
}

impl CallContext {
    /// A context for a caller with no connection (tests, benchmarks, CLI).
    pub fn detached(tenant: &str) -> Self {
        Self {
            tenant: Arc::from(tenant),
            principal: Principal::anonymous(),
            session_id: None,
            protocol_version: Arc::from("2025-11-25"),
            client_capabilities: Arc::new(json!({})),
            meta: None,
            cancel: CancellationToken::new(),
            peer: Arc::new(DetachedPeer),
            trail: Arc::default(),
        }
    }

    pub fn progress_token(&self) -> Option<&Value> {
        self.meta.as_ref()?.get("progressToken")
    }

    /// Reports progress if the client asked for it (sent a `progressToken`).
    pub fn progress(&self, progress: f64, total: Option<f64>, message: Option<&str>) {
        let Some(token) = self.progress_token() else {
            return;
        };
        let mut params = json!({ "progressToken": token, "progress": progress });
        if let Some(total) = total {
            params["total"] = json!(total);
        }
        if let Some(message) = message {
            params["message"] = json!(message);
        }
        self.peer.notify("notifications/progress", params);
    }

    /// Sends `notifications/message` if the client's level lets it through.
    pub fn log(&self, level: LogLevel, logger: Option<&str>, data: Value) {
        if !self.peer.log_enabled(level) {
            return;
        }
        let mut params = json!({ "level": level.as_str(), "data": data });
        if let Some(logger) = logger {
            params["logger"] = json!(logger);
        }
        self.peer.notify("notifications/message", params);
    }

    pub fn client_supports(&self, capability: &str) -> bool {
        self.client_capabilities.get(capability).is_some()
    }

    /// Asks the client's model for a completion (`sampling/createMessage`).
    pub async fn sample(&self, params: Value) -> Result<Value, McpError> {
        self.ask(None, "sampling", "sampling/createMessage", params)
            .await
    }

    /// Asks the user for input (`elicitation/create`).
    pub async fn elicit(&self, params: Value) -> Result<Value, McpError> {
        self.ask(None, "elicitation", "elicitation/create", params)
            .await
    }

    /// Asks the client for its roots (`roots/list`).
    pub async fn list_roots(&self) -> Result<Value, McpError> {
        self.ask(None, "roots", "roots/list", json!({})).await
    }

    /// [`CallContext::sample`] under a name of the provider's choosing (see
    /// [`ClientPeer::request_named`]); asks made concurrently with distinct
    /// names reach a stateless client together, in one round.
    pub async fn sample_named(&self, key: &str, params: Value) -> Result<Value, McpError> {
        self.ask(Some(key), "sampling", "sampling/createMessage", params)
            .await
    }

    /// [`CallContext::elicit`] under a name of the provider's choosing.
    pub async fn elicit_named(&self, key: &str, params: Value) -> Result<Value, McpError> {
        self.ask(Some(key), "elicitation", "elicitation/create", params)
            .await
    }

    /// [`CallContext::list_roots`] under a name of the provider's choosing.
    pub async fn list_roots_named(&self, key: &str) -> Result<Value, McpError> {
        self.ask(Some(key), "roots", "roots/list", json!({})).await
    }

    /// Offers to finish this call in the background (see
    /// [`ClientPeer::continue_in_background`]). A provider calls it before
    /// slow work; whether or not a task was created, it simply carries on.
    pub fn continue_in_background(&self) -> bool {
        self.peer.continue_in_background()
    }

    async fn ask(
        &self,
        key: Option<&str>,
        capability: &str,
        method: &str,
        params: Value,
    ) -> Result<Value, McpError> {
        if !self.client_supports(capability) {
            return Err(McpError::missing_capability(
                format!(
                    "the client did not declare the `{capability}` capability, so `{method}` cannot be sent"
                ),
                json!({ capability: {} }),
            ));
        }
        let answer = match key {
            Some(key) => self.peer.request_named(key, method, params),
            None => self.peer.request(method, params),
        };
        tokio::select! {
            r = answer => r,
            _ = self.cancel.cancelled() => Err(McpError::cancelled(format!("{method}: the call was cancelled"))),
        }
    }
}
