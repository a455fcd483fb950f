//! The stateless revision (2026-07-28): no `initialize`, no session. Each
//! request names its revision, client info and capabilities in `_meta`, and
//! `server/discover` tells a probing client what this server speaks.

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::response::Response;
use cellgate_kernel::{LogLevel, McpError};
use serde_json::{Map, Value, json};

use crate::jsonrpc::{self, Message};
use crate::protocol;
use crate::server::McpServer;
use crate::session::{Outbound, Session, TransportKind};

pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
/// The error for a revision this server does not speak; `data.supported` lists ours.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// The revision a request declares in its `_meta`, if any.
pub fn declared_version(params: Option<&Map<String, Value>>) -> Option<&str> {
    params?.get("_meta")?.get(META_PROTOCOL_VERSION)?.as_str()
}

/// Whether a message is spoken in the stateless revision.
pub fn is_stateless(msg: &Message) -> bool {
    match msg {
        Message::Request { method, params, .. } => {
            method == "server/discover" || declared_version(params.as_ref()).is_some()
        }
        _ => false,
    }
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

/// Prepares a throwaway session carrying what the request's `_meta`
/// declares, or the error to answer with.
pub fn ephemeral_session(
    server: &McpServer,
    transport: TransportKind,
    params: Option<&Map<String, Value>>,
) -> Result<Arc<Session>, McpError> {
    let meta = params
        .and_then(|p| p.get("_meta"))
        .and_then(Value::as_object);
    let version = match meta.and_then(|m| m.get(META_PROTOCOL_VERSION)) {
        None => protocol::STATELESS_VERSION,
        Some(Value::String(v)) if v == protocol::STATELESS_VERSION => protocol::STATELESS_VERSION,
        Some(other) => {
            return Err(McpError::new(
                UNSUPPORTED_PROTOCOL_VERSION,
                format!("params._meta[\"{META_PROTOCOL_VERSION}\"] {other} is not a stateless revision this server speaks"),
            )
            .with_data(json!({ "supported": protocol::ALL_VERSIONS })));
        }
    };
    let caps = meta
        .and_then(|m| m.get(META_CLIENT_CAPABILITIES))
        .cloned()
        .unwrap_or_else(|| json!({}));
    if !caps.is_object() {
        return Err(McpError::invalid_params(format!(
            "params._meta[\"{META_CLIENT_CAPABILITIES}\"] must be an object"
        )));
    }
    let info = meta
        .and_then(|m| m.get(META_CLIENT_INFO))
        .cloned()
        .unwrap_or_else(|| json!({ "name": "unknown", "version": "unknown" }));
    let session = Session::new(transport, server.config.sse_history);
    session.set_handshake(version, caps, info);
    session.mark_initialized();
    if let Some(level) = meta.and_then(|m| m.get(META_LOG_LEVEL)) {
        let level = level.as_str().and_then(LogLevel::parse).ok_or_else(|| {
            McpError::invalid_params(format!(
                "params._meta[\"{META_LOG_LEVEL}\"] must be a log level such as \"info\""
            ))
        })?;
        session.set_log_level(level);
    } else {
        // Without a requested level a stateless client gets no log messages.
        session.set_log_level(LogLevel::Emergency);
    }
    Ok(session)
}

/// Adds `resultType: "complete"` to a successful stateless response.
pub fn mark_complete(mut response: Value) -> Value {
    if let Some(r) = response.get_mut("result").and_then(Value::as_object_mut) {
        r.entry("resultType").or_insert(json!("complete"));
    }
    response
}

/// Handles a stateless request over Streamable HTTP; `None` when the message
/// is not stateless (or carries a session id), so the session path applies.
pub async fn try_handle(
    server: &Arc<McpServer>,
    headers: &HeaderMap,
    header_version: Option<&str>,
    msg: &Message,
) -> Option<Response> {
    if headers.contains_key(crate::http::SESSION_HEADER) || !is_stateless(msg) {
        return None;
    }
    let Message::Request { id, method, params } = msg else {
        return None;
    };
    if method == "server/discover" {
        let body = mark_complete(jsonrpc::response(id, Ok(discover(server))));
        return Some(crate::http::json_ok(&body));
    }
    if let (Some(h), Some(m)) = (header_version, declared_version(params.as_ref()))
        && h != m
    {
        return Some(crate::http::bad_request(
            id.clone(),
            McpError::invalid_request(format!(
                "MCP-Protocol-Version header {h:?} does not match params._meta protocol version {m:?}"
            )),
        ));
    }
    let session = match ephemeral_session(server, TransportKind::StreamableHttp, params.as_ref()) {
        Ok(s) => s,
        Err(e) => return Some(crate::http::json_ok(&jsonrpc::response(id, Err(e)))),
    };
    Some(crate::http::stateless_request(server.clone(), session, msg.clone()).await)
}

/// Handles a request read on stdio: stateless when it says so, otherwise in
/// the stdio session.
pub async fn handle_stdio(
    server: &Arc<McpServer>,
    session: &Arc<Session>,
    msg: Message,
    out: Arc<dyn Outbound>,
) -> Option<Value> {
    if !is_stateless(&msg) {
        return server.handle_message(session, msg, out).await;
    }
    let Message::Request { id, method, params } = &msg else {
        return None;
    };
    if method == "server/discover" {
        return Some(mark_complete(jsonrpc::response(id, Ok(discover(server)))));
    }
    let eph = match ephemeral_session(server, TransportKind::Stdio, params.as_ref()) {
        Ok(s) => s,
        Err(e) => return Some(jsonrpc::response(id, Err(e))),
    };
    // Answers to server requests arrive on the shared stdio session.
    eph.set_direct(out.clone());
    server
        .handle_message(&eph, msg, out)
        .await
        .map(mark_complete)
}
