//! The stateless revision (2026-07-28): no `initialize`, no session. Each
//! request names its revision and client capabilities in `_meta`, and
//! `server/discover` tells a probing client what this server speaks.
//!
//! This module reads and checks that envelope (the same on every transport),
//! runs the HTTP-only header checks, and finishes results with the fields
//! the revision adds (`resultType`, caching hints, the server's identity).

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use cellgate_kernel::{Identity, LogLevel, McpError, codes};
use serde_json::{Map, Value, json};

use crate::jsonrpc::{self, Message};
use crate::protocol;
use crate::server::McpServer;
use crate::session::{Outbound, Session, TransportKind};

pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
pub const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
/// The error for a revision this server does not speak; `data.supported` lists ours.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = codes::UNSUPPORTED_PROTOCOL_VERSION;

/// Methods of the session revisions that 2026-07-28 removed.
pub const REMOVED_METHODS: [&str; 5] = [
    "initialize",
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
];

/// The revision a request declares in its `_meta`, if any.
pub fn declared_version(params: Option<&Map<String, Value>>) -> Option<&Value> {
    params?.get("_meta")?.get(META_PROTOCOL_VERSION)
}

/// Whether a request (without a session) is spoken in the stateless revision:
/// it probes with `server/discover`, declares a revision in `_meta`, or
/// names the stateless revision in the `MCP-Protocol-Version` header.
pub fn is_stateless(msg: &Message, header_version: Option<&str>) -> bool {
    match msg {
        Message::Request { method, params, .. } => {
            method == "server/discover"
                || declared_version(params.as_ref()).is_some()
                || header_version == Some(protocol::STATELESS_VERSION)
        }
        _ => false,
    }
}

/// What a stateless request declares about itself in `_meta`.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub version: Value,
    pub capabilities: Value,
    pub client_info: Value,
    pub log_level: Option<LogLevel>,
}

impl Envelope {
    /// Reads the envelope; a missing or malformed field is -32602.
    pub fn parse(params: Option<&Map<String, Value>>) -> Result<Self, McpError> {
        let Some(meta) = params
            .and_then(|p| p.get("_meta"))
            .and_then(Value::as_object)
        else {
            return Err(McpError::invalid_params(format!(
                "params._meta must be an object carrying \"{META_PROTOCOL_VERSION}\" and \"{META_CLIENT_CAPABILITIES}\""
            )));
        };
        let missing: Vec<&str> = [META_PROTOCOL_VERSION, META_CLIENT_CAPABILITIES]
            .into_iter()
            .filter(|k| !meta.contains_key(*k))
            .collect();
        if !missing.is_empty() {
            return Err(McpError::invalid_params(format!(
                "params._meta is missing {}",
                missing.join(" and ")
            )));
        }
        let capabilities = meta[META_CLIENT_CAPABILITIES].clone();
        if !capabilities.is_object() {
            return Err(McpError::invalid_params(format!(
                "params._meta[\"{META_CLIENT_CAPABILITIES}\"] must be an object"
            )));
        }
        let log_level = match meta.get(META_LOG_LEVEL) {
            None => None,
            Some(level) => Some(level.as_str().and_then(LogLevel::parse).ok_or_else(|| {
                McpError::invalid_params(format!(
                    "params._meta[\"{META_LOG_LEVEL}\"] must be a log level such as \"info\""
                ))
            })?),
        };
        Ok(Self {
            version: meta[META_PROTOCOL_VERSION].clone(),
            capabilities,
            client_info: meta
                .get(META_CLIENT_INFO)
                .cloned()
                .unwrap_or_else(|| json!({ "name": "unknown", "version": "unknown" })),
            log_level,
        })
    }

    /// The declared revision, if it is the one this server serves statelessly.
    pub fn check_version(&self) -> Result<(), McpError> {
        match &self.version {
            Value::String(v) if v == protocol::STATELESS_VERSION => Ok(()),
            Value::String(v) => Err(McpError::new(
                UNSUPPORTED_PROTOCOL_VERSION,
                format!(
                    "protocol version {v:?} is not supported; supported: {}",
                    protocol::ALL_VERSIONS.join(", ")
                ),
            )
            .with_data(json!({ "supported": protocol::ALL_VERSIONS, "requested": v }))),
            other => Err(McpError::invalid_params(format!(
                "params._meta[\"{META_PROTOCOL_VERSION}\"] must be a string, got {other}"
            ))),
        }
    }

    /// A throwaway session carrying what the envelope declares; it is never
    /// registered and is gone when the response is.
    pub fn session(&self, server: &McpServer, transport: TransportKind) -> Arc<Session> {
        let session = Session::new(transport, server.config.sse_history);
        session.set_handshake(
            protocol::STATELESS_VERSION,
            self.capabilities.clone(),
            self.client_info.clone(),
        );
        session.mark_initialized();
        match self.log_level {
            Some(level) => session.set_log_level(level),
            // Without a requested level a stateless client gets no log messages.
            None => session.mute_logs(),
        }
        session
    }
}

/// Reads and checks a stateless request's envelope, in the order the spec
/// gives for HTTP: envelope shape (-32602), then headers (-32020), then the
/// revision (-32022). `headers` is `None` on transports without headers.
pub fn admit(
    server: &McpServer,
    transport: TransportKind,
    headers: Option<&HeaderMap>,
    method: &str,
    params: Option<&Map<String, Value>>,
) -> Result<Arc<Session>, McpError> {
    let envelope = Envelope::parse(params)?;
    if let Some(headers) = headers {
        let header = headers
            .get(crate::http::VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        if header.map(|h| Value::String(h.to_owned())) != Some(envelope.version.clone()) {
            return Err(McpError::new(
                codes::HEADER_MISMATCH,
                format!(
                    "MCP-Protocol-Version header {header:?} does not match params._meta[\"{META_PROTOCOL_VERSION}\"] {}",
                    envelope.version
                ),
            ));
        }
        let empty = Map::new();
        crate::headers::check_routing(headers, method, params.unwrap_or(&empty))?;
    }
    envelope.check_version()?;
    Ok(envelope.session(server, transport))
}

/// The `server/discover` result.
pub fn discover(server: &McpServer) -> Value {
    let mut r = json!({
        "supportedVersions": protocol::ALL_VERSIONS,
        "capabilities": server.capabilities(),
        "serverInfo": server.server_info(),
    });
    if let Some(i) = &server.config.instructions {
        r["instructions"] = json!(i);
    }
    r
}

/// Caching hints (SEP-2549) by method: `(cacheScope, ttlMs)`.
///
/// Lists and reads are `private`: a gateway filters them per caller (tenant,
/// principal), so a shared cache could leak one caller's view to another.
/// Lists stay fresh for a minute (list-changed notifications tell listeners
/// sooner); resource contents may change at any time, so reads are stale at
/// once. Discovery describes the server, not the caller: `public`, 5 minutes.
pub fn cache_hints(method: &str) -> Option<(&'static str, u64)> {
    match method {
        "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list" => {
            Some(("private", 60_000))
        }
        "resources/read" => Some(("private", 0)),
        "server/discover" => Some(("public", 300_000)),
        _ => None,
    }
}

/// Finishes a successful stateless result: `resultType: "complete"` unless
/// the result is of another type, caching hints on cacheable complete
/// results (a provider's own hints win), and the server's identity in `_meta`.
pub fn finish_result(server: &McpServer, method: &str, mut result: Value) -> Value {
    let Some(r) = result.as_object_mut() else {
        return result;
    };
    let complete = r.entry("resultType").or_insert(json!("complete")).as_str() == Some("complete");
    if complete && let Some((scope, ttl)) = cache_hints(method) {
        r.entry("cacheScope").or_insert(json!(scope));
        r.entry("ttlMs").or_insert(json!(ttl));
    }
    let meta = r.entry("_meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        meta.entry(META_SERVER_INFO)
            .or_insert_with(|| server.server_info());
    }
    result
}

/// The HTTP status of a stateless error answer: the revision gives client
/// errors 400 and unknown methods 404; everything else stays 200.
pub fn http_status(error_code: i64) -> StatusCode {
    match error_code {
        codes::PARSE_ERROR
        | codes::INVALID_REQUEST
        | codes::INVALID_PARAMS
        | codes::HEADER_MISMATCH
        | codes::MISSING_REQUIRED_CLIENT_CAPABILITY
        | codes::UNSUPPORTED_PROTOCOL_VERSION => StatusCode::BAD_REQUEST,
        codes::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        codes::RATE_LIMITED => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::OK,
    }
}

/// Handles a stateless request over Streamable HTTP; `None` when the message
/// is not stateless (or carries a session id), so the session path applies.
pub async fn try_handle(
    server: &Arc<McpServer>,
    headers: &HeaderMap,
    header_version: Option<&str>,
    msg: &Message,
    prefer_sse: bool,
    identity: &Identity,
) -> Option<Response> {
    if headers.contains_key(crate::http::SESSION_HEADER) || !is_stateless(msg, header_version) {
        return None;
    }
    let Message::Request { id, method, params } = msg else {
        return None;
    };
    let reject = |e: McpError| {
        let status = http_status(e.code);
        crate::http::json_status(status, &jsonrpc::response(id, Err(e)))
    };
    let session = match admit(
        server,
        TransportKind::StreamableHttp,
        Some(headers),
        method,
        params.as_ref(),
    ) {
        Ok(s) => s,
        Err(e) => return Some(reject(e)),
    };
    session.set_identity(identity.clone());
    if method == "tools/call"
        && let Some(params) = params
        && let Some(name) = params.get("name").and_then(Value::as_str)
        && let Some(tool) = server.lookup_tool(name).await
    {
        let args = params
            .get("arguments")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if let Err(e) = crate::headers::check_params(headers, &tool, &args) {
            return Some(reject(e.into()));
        }
    }
    Some(crate::http::stateless_request(server.clone(), session, msg.clone(), prefer_sse).await)
}

/// Handles a request read on stdio: stateless when it says so, otherwise in
/// the stdio session.
pub async fn handle_stdio(
    server: &Arc<McpServer>,
    session: &Arc<Session>,
    msg: Message,
    out: Arc<dyn Outbound>,
) -> Option<Value> {
    if !is_stateless(&msg, None) {
        return server.handle_message(session, msg, out).await;
    }
    let Message::Request { id, method, params } = &msg else {
        return None;
    };
    let eph = match admit(server, TransportKind::Stdio, None, method, params.as_ref()) {
        Ok(s) => s,
        Err(e) => return Some(jsonrpc::response(id, Err(e))),
    };
    if method == "subscriptions/listen" {
        // A listen stream has no end of its own: it ends with stdin.
        let ended = session.input_ended();
        let eph_closed = eph.closed.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = ended.cancelled() => eph_closed.cancel(),
                _ = eph_closed.cancelled() => {}
            }
        });
    }
    eph.set_direct(out.clone());
    let r = server.handle_message(&eph, msg, out).await;
    eph.closed.cancel();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn envelope_ladder() {
        for bad in [
            json!({}),
            json!({"_meta": {}}),
            json!({"_meta": {META_PROTOCOL_VERSION: "2026-07-28"}}),
            json!({"_meta": {META_CLIENT_CAPABILITIES: {}}}),
            json!({"_meta": {META_PROTOCOL_VERSION: "2026-07-28", META_CLIENT_CAPABILITIES: []}}),
            json!({"_meta": {META_PROTOCOL_VERSION: "2026-07-28", META_CLIENT_CAPABILITIES: {}, META_LOG_LEVEL: "loud"}}),
        ] {
            let e = Envelope::parse(Some(&p(bad.clone()))).unwrap_err();
            assert_eq!(e.code, codes::INVALID_PARAMS, "{bad}");
        }
        assert_eq!(
            Envelope::parse(None).unwrap_err().code,
            codes::INVALID_PARAMS
        );
        let ok = Envelope::parse(Some(&p(
            json!({"_meta": {META_PROTOCOL_VERSION: "2026-07-28", META_CLIENT_CAPABILITIES: {}}}),
        )))
        .unwrap();
        assert_eq!(ok.check_version(), Ok(()));
        let old = Envelope::parse(Some(&p(
            json!({"_meta": {META_PROTOCOL_VERSION: "v9", META_CLIENT_CAPABILITIES: {}}}),
        )))
        .unwrap();
        let e = old.check_version().unwrap_err();
        assert_eq!(e.code, UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(e.data.unwrap()["requested"], "v9");
    }

    #[test]
    fn statuses_follow_the_revision() {
        assert_eq!(http_status(codes::METHOD_NOT_FOUND), StatusCode::NOT_FOUND);
        assert_eq!(http_status(codes::HEADER_MISMATCH), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(codes::INTERNAL_ERROR), StatusCode::OK);
        assert_eq!(cache_hints("tools/call"), None);
    }
}
