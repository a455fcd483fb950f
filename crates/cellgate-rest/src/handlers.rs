//! The MCP primitives over REST (tools, prompts, resources), the one place
//! where a request becomes a pipeline call, and the answers for paths and
//! methods that do not exist.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use cellgate_kernel::{Call, CallContext, CancellationToken, Identity, McpError, Request, codes};
use serde::Deserialize;
use serde_json::Value;

use crate::Rest;
use crate::error::{ApiError, json_response};
use crate::extract::{Caller, JsonObject, NoQuery, PathParams, QueryParams};

/// The protocol revision REST calls are made in, for layers that look.
const PROTOCOL_VERSION: &str = "2025-11-25";

/// Set on a 200 answer of `POST /api/v1/tools/{name}` whose result has
/// `isError: true`, and on the 404/409 of an administrative tool's error.
pub(crate) const TOOL_ERROR_HEADER: &str = "x-cellgate-tool-error";

impl Rest {
    /// Makes `request` one pipeline call as `identity`. The call runs as a
    /// task of its own with a fresh context; if the client goes away (this
    /// future is dropped) its token is cancelled, so the call ends as
    /// cancelled and every layer still sees that end (the audit records it).
    pub(crate) async fn call(
        &self,
        identity: Identity,
        request: Request,
    ) -> Result<Value, McpError> {
        let cancel = CancellationToken::new();
        let mut ctx = CallContext::detached(&identity.tenant);
        ctx.principal = identity.principal;
        ctx.protocol_version = Arc::from(PROTOCOL_VERSION);
        ctx.session_id = None;
        ctx.cancel = cancel.clone();
        let guard = cancel.drop_guard();
        let pipeline = self.pipeline.clone();
        let joined = tokio::spawn(async move { pipeline.call(Call { ctx, request }).await }).await;
        guard.disarm();
        joined.unwrap_or_else(|e| {
            tracing::error!(error = %e, "a REST call's task failed");
            Err(McpError::internal(
                "the call failed unexpectedly; see the server log",
            ))
        })
    }
}

/// `?cursor=` of the list endpoints: the `nextCursor` of the previous page.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CursorQuery {
    cursor: Option<String>,
}

/// `?uri=` of `GET /api/v1/resources/read`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UriQuery {
    uri: Option<String>,
}

fn ok(value: &Value) -> Response {
    json_response(StatusCode::OK, value)
}

pub(crate) fn is_tool_error(result: &Value) -> bool {
    result.get("isError").and_then(Value::as_bool) == Some(true)
}

pub(crate) fn mark_tool_error(response: &mut Response) {
    response
        .headers_mut()
        .insert(TOOL_ERROR_HEADER, HeaderValue::from_static("true"));
}

pub(crate) async fn list_tools(
    State(rest): State<Rest>,
    Caller(caller): Caller,
    QueryParams(q): QueryParams<CursorQuery>,
) -> Result<Response, ApiError> {
    let page = rest
        .call(caller, Request::ListTools { cursor: q.cursor })
        .await?;
    Ok(ok(&page))
}

/// The `CallToolResult` as it came, 200 even when the tool failed: that is
/// the tool's answer, not the gateway's; the header tells it apart.
pub(crate) async fn call_tool(
    State(rest): State<Rest>,
    Caller(caller): Caller,
    PathParams(name): PathParams<String>,
    QueryParams(NoQuery {}): QueryParams<NoQuery>,
    JsonObject(arguments): JsonObject,
) -> Result<Response, ApiError> {
    let result = rest
        .call(caller, Request::CallTool { name, arguments })
        .await?;
    let mut response = ok(&result);
    if is_tool_error(&result) {
        mark_tool_error(&mut response);
    }
    Ok(response)
}

pub(crate) async fn list_prompts(
    State(rest): State<Rest>,
    Caller(caller): Caller,
    QueryParams(q): QueryParams<CursorQuery>,
) -> Result<Response, ApiError> {
    let page = rest
        .call(caller, Request::ListPrompts { cursor: q.cursor })
        .await?;
    Ok(ok(&page))
}

pub(crate) async fn get_prompt(
    State(rest): State<Rest>,
    Caller(caller): Caller,
    PathParams(name): PathParams<String>,
    QueryParams(NoQuery {}): QueryParams<NoQuery>,
    JsonObject(arguments): JsonObject,
) -> Result<Response, ApiError> {
    let result = rest
        .call(caller, Request::GetPrompt { name, arguments })
        .await?;
    Ok(ok(&result))
}

pub(crate) async fn list_resources(
    State(rest): State<Rest>,
    Caller(caller): Caller,
    QueryParams(q): QueryParams<CursorQuery>,
) -> Result<Response, ApiError> {
    let page = rest
        .call(caller, Request::ListResources { cursor: q.cursor })
        .await?;
    Ok(ok(&page))
}

pub(crate) async fn list_resource_templates(
    State(rest): State<Rest>,
    Caller(caller): Caller,
    QueryParams(q): QueryParams<CursorQuery>,
) -> Result<Response, ApiError> {
    let page = rest
        .call(caller, Request::ListResourceTemplates { cursor: q.cursor })
        .await?;
    Ok(ok(&page))
}

pub(crate) async fn read_resource(
    State(rest): State<Rest>,
    Caller(caller): Caller,
    QueryParams(q): QueryParams<UriQuery>,
) -> Result<Response, ApiError> {
    let uri = q.uri.ok_or_else(|| {
        ApiError::bad_request(
            "the query parameter `uri` is required: GET /api/v1/resources/read?uri=<resource URI>",
        )
    })?;
    let result = rest.call(caller, Request::ReadResource { uri }).await?;
    Ok(ok(&result))
}

/// Any path under `/api/v1` that no route serves.
pub(crate) async fn no_such_endpoint(method: Method, uri: Uri) -> ApiError {
    ApiError::refuse(
        StatusCode::NOT_FOUND,
        codes::METHOD_NOT_FOUND,
        format!("there is no endpoint {method} {}", uri.path()),
    )
}

/// A route that exists, asked with a method it does not serve; axum adds
/// the `Allow` header.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::refuse(
        StatusCode::METHOD_NOT_ALLOWED,
        codes::INVALID_REQUEST,
        format!(
            "{method} is not allowed on {}; the Allow header lists the methods that are",
            uri.path()
        ),
    )
}
