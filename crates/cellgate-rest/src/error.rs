//! Errors as HTTP answers: the mapping from [`McpError`] codes to statuses,
//! and the refusals of bad input that never become a call.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cellgate_kernel::{McpError, codes};
use serde_json::{Value, json};

/// The HTTP status of a pipeline error.
///
/// `-32800` (cancelled) becomes 408: when the client itself went away
/// nobody reads the answer, so a client that does read one saw a call
/// cancelled or timed out on the server's side, which 408 (retryable,
/// understood by every client) says better than nginx's non-standard 499
/// ("client closed request").
pub(crate) fn status_for(code: i64) -> StatusCode {
    match code {
        codes::PARSE_ERROR | codes::INVALID_REQUEST | codes::INVALID_PARAMS => {
            StatusCode::BAD_REQUEST
        }
        codes::METHOD_NOT_FOUND | codes::RESOURCE_NOT_FOUND => StatusCode::NOT_FOUND,
        codes::UNAUTHENTICATED => StatusCode::UNAUTHORIZED,
        codes::FORBIDDEN => StatusCode::FORBIDDEN,
        codes::RATE_LIMITED => StatusCode::TOO_MANY_REQUESTS,
        codes::BLOCKED => StatusCode::UNPROCESSABLE_ENTITY,
        codes::REQUEST_CANCELLED => StatusCode::REQUEST_TIMEOUT,
        // The tool asks its client something (sampling, elicitation), which
        // a REST caller has no way to answer.
        codes::MISSING_REQUIRED_CLIENT_CAPABILITY => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A JSON answer; REST answers may hold tenant data or secrets (a new API
/// key), so none of them is cached.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Everything a handler can answer other than success: an error of the
/// pipeline, or input refused before any call was made.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    error: McpError,
}

impl ApiError {
    /// Input refused at the edge: `status` with a JSON-RPC-style `code` so
    /// that every error body has the same shape.
    pub(crate) fn refuse(status: StatusCode, code: i64, message: impl Into<String>) -> Self {
        Self {
            status,
            error: McpError::new(code, message),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::refuse(StatusCode::BAD_REQUEST, codes::INVALID_PARAMS, message)
    }
}

impl From<McpError> for ApiError {
    fn from(error: McpError) -> Self {
        Self {
            status: status_for(error.code),
            error,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "code": self.error.code, "message": self.error.message });
        if let Some(data) = &self.error.data {
            body["data"] = data.clone();
        }
        let mut response = json_response(self.status, &json!({ "error": body }));
        if self.status == StatusCode::TOO_MANY_REQUESTS
            && let Some(ms) = self
                .error
                .data
                .as_ref()
                .and_then(|d| d.get("retryAfterMs"))
                .and_then(Value::as_u64)
        {
            // Retry-After counts whole seconds; rounded up so that a client
            // obeying it is not refused again.
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(ms.div_ceil(1000).max(1)),
            );
        }
        response
    }
}
