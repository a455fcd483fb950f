use serde::{Deserialize, Serialize};
use serde_json::Value;

/// JSON-RPC and MCP error codes.
pub mod codes {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// MCP: the resource named by a URI does not exist.
    pub const RESOURCE_NOT_FOUND: i64 = -32002;
    /// Implementation-defined: the request was cancelled or timed out.
    pub const REQUEST_CANCELLED: i64 = -32800;
    /// Implementation-defined: the server refused the request in its current state.
    pub const SERVER_ERROR: i64 = -32000;
    /// MCP 2026-07-28: serving the request needs a client capability the
    /// client did not declare; `data.requiredCapabilities` names it.
    pub const MISSING_REQUIRED_CLIENT_CAPABILITY: i64 = -32021;
    /// MCP 2026-07-28: HTTP headers disagree with the request body.
    pub const HEADER_MISMATCH: i64 = -32020;
    /// MCP 2026-07-28: the request's protocol revision is not one we speak.
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
    /// cellgate: no valid credential (HTTP 401 where the transport has statuses).
    pub const UNAUTHENTICATED: i64 = -32001;
    /// cellgate: authenticated, but not allowed (HTTP 403).
    pub const FORBIDDEN: i64 = -32003;
    /// cellgate: a rate limit was hit; `data.retryAfterMs` says when to retry (HTTP 429).
    pub const RATE_LIMITED: i64 = -32005;
    /// cellgate: inspection or the content filter blocked the call; `data`
    /// names the layer and the findings.
    pub const BLOCKED: i64 = -32006;
}

/// A JSON-RPC error object, as it goes on the wire.
///
/// Every failure that reaches a client is one of these, with a message that
/// names what was wrong (the field, the value, the limit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct McpError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl McpError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
    pub fn parse_error(message: impl Into<String>) -> Self {
        Self::new(codes::PARSE_ERROR, message)
    }
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_REQUEST, message)
    }
    pub fn method_not_found(method: &str) -> Self {
        Self::new(
            codes::METHOD_NOT_FOUND,
            format!("method not found: {method}"),
        )
    }
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_PARAMS, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(codes::INTERNAL_ERROR, message)
    }
    pub fn resource_not_found(uri: &str) -> Self {
        Self::new(
            codes::RESOURCE_NOT_FOUND,
            format!("resource not found: {uri}"),
        )
        .with_data(serde_json::json!({ "uri": uri }))
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(codes::UNAUTHENTICATED, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(codes::FORBIDDEN, message)
    }
    pub fn rate_limited(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        let ms = u64::try_from(retry_after.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Self::new(codes::RATE_LIMITED, message).with_data(serde_json::json!({ "retryAfterMs": ms }))
    }
    pub fn blocked(layer: &str, message: impl Into<String>, findings: Value) -> Self {
        Self::new(codes::BLOCKED, message)
            .with_data(serde_json::json!({ "layer": layer, "findings": findings }))
    }
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(codes::REQUEST_CANCELLED, message)
    }
    /// The client did not declare what serving the request needs;
    /// `required` is a `ClientCapabilities` object such as `{"sampling": {}}`.
    pub fn missing_capability(message: impl Into<String>, required: serde_json::Value) -> Self {
        Self::new(codes::MISSING_REQUIRED_CLIENT_CAPABILITY, message)
            .with_data(serde_json::json!({ "requiredCapabilities": required }))
    }
}
