//! Resource-style aliases of the administrative tools (`cellgate-admin`).
//! Each route is one `tools/call` of one tool: path parameters and the body
//! become its arguments, its `structuredContent` becomes the answer, and a
//! tool error (`isError`) becomes 404 or 409. The tools decide everything
//! else: who may act on which tenant, what is valid, what exists.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use cellgate_kernel::{BoxFuture, Request};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::Rest;
use crate::error::{ApiError, json_response};
use crate::extract::{Caller, JsonObject, NoQuery, PathParams, QueryParams, kind};
use crate::handlers::{is_tool_error, mark_tool_error};

impl Rest {
    /// Calls administrative `tool` with `arguments`; `success` is the status
    /// of a result that is not an error.
    async fn admin(
        &self,
        Caller(caller): Caller,
        tool: &str,
        arguments: Map<String, Value>,
        success: StatusCode,
    ) -> Result<Response, ApiError> {
        let request = Request::CallTool {
            name: tool.to_owned(),
            arguments,
        };
        let result = self.call(caller, request).await?;
        if is_tool_error(&result) {
            let message =
                text_of(&result).unwrap_or_else(|| format!("`{tool}` failed without saying why"));
            // The administrative tools word a missing thing as "tenant `x`
            // does not exist" or "tenant `x` has no API key `y`".
            let status = if message.contains("does not exist") || message.contains("has no") {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::CONFLICT
            };
            let mut response = json_response(status, &json!({ "error": { "message": message } }));
            mark_tool_error(&mut response);
            return Ok(response);
        }
        // A result without structured content (not one of ours) as it came.
        let body = result.get("structuredContent").unwrap_or(&result);
        Ok(json_response(success, body))
    }
}

/// The text of a result's text content items, joined by newlines.
fn text_of(result: &Value) -> Option<String> {
    let texts: Vec<&str> = result
        .get("content")?
        .as_array()?
        .iter()
        .filter_map(|c| c.get("text").and_then(Value::as_str))
        .collect();
    (!texts.is_empty()).then(|| texts.join("\n"))
}

/// `args` with the path's parameters added; the body may repeat one, but
/// not contradict it.
fn with_path(
    mut args: Map<String, Value>,
    path: &[(&str, &str)],
) -> Result<Map<String, Value>, ApiError> {
    for (key, value) in path {
        match args.get(*key) {
            None => {}
            Some(Value::String(s)) if s == value => {}
            Some(other) => {
                let shown = match other {
                    Value::String(s) => format!("{s:?}"),
                    v => kind(v).to_owned(),
                };
                return Err(ApiError::bad_request(format!(
                    "`{key}` in the body ({shown}) contradicts the path ({value:?}); leave it out"
                )));
            }
        }
        args.insert((*key).to_owned(), Value::String((*value).to_owned()));
    }
    Ok(args)
}

fn args(path: &[(&str, &str)]) -> Map<String, Value> {
    path.iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect()
}

/// `?confirm=` of `DELETE /api/v1/tenants/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfirmQuery {
    confirm: Option<String>,
}

type Answer = Result<Response, ApiError>;

/// `{id}` and the second path parameter.
type TenantAndKey = PathParams<(String, String)>;

// Most aliases have one of three shapes, so each shape is written once and
// the router names the tool (and, for the third, the path's second key).

/// `…/tenants/{id}[/…]` without a body: `tool` with `tenant` = the id.
pub(crate) fn of_tenant(
    tool: &'static str,
) -> impl Fn(State<Rest>, Caller, PathParams<String>, QueryParams<NoQuery>) -> BoxFuture<'static, Answer>
+ Clone
+ Send
+ Sync
+ 'static {
    move |State(rest), caller, PathParams(id), _: QueryParams<NoQuery>| {
        Box::pin(async move {
            let a = args(&[("tenant", &id)]);
            rest.admin(caller, tool, a, StatusCode::OK).await
        })
    }
}

/// `…/tenants/{id}/…` with a JSON body: the body's arguments plus `tenant`.
pub(crate) fn into_tenant(
    tool: &'static str,
    success: StatusCode,
) -> impl Fn(
    State<Rest>,
    Caller,
    PathParams<String>,
    QueryParams<NoQuery>,
    JsonObject,
) -> BoxFuture<'static, Answer>
+ Clone
+ Send
+ Sync
+ 'static {
    move |State(rest), caller, PathParams(id), _: QueryParams<NoQuery>, JsonObject(body)| {
        Box::pin(async move {
            let a = with_path(body, &[("tenant", &id)])?;
            rest.admin(caller, tool, a, success).await
        })
    }
}

/// `…/tenants/{id}/…/{x}` without a body: `tenant` and `key` = x.
pub(crate) fn in_tenant(
    tool: &'static str,
    key: &'static str,
) -> impl Fn(State<Rest>, Caller, TenantAndKey, QueryParams<NoQuery>) -> BoxFuture<'static, Answer>
+ Clone
+ Send
+ Sync
+ 'static {
    move |State(rest), caller, PathParams((id, x)), _: QueryParams<NoQuery>| {
        Box::pin(async move {
            let a = args(&[("tenant", &id), (key, &x)]);
            rest.admin(caller, tool, a, StatusCode::OK).await
        })
    }
}

pub(crate) async fn list_tenants(
    State(rest): State<Rest>,
    caller: Caller,
    QueryParams(NoQuery {}): QueryParams<NoQuery>,
) -> Answer {
    rest.admin(caller, "list_tenants", Map::new(), StatusCode::OK)
        .await
}

pub(crate) async fn create_tenant(
    State(rest): State<Rest>,
    caller: Caller,
    QueryParams(NoQuery {}): QueryParams<NoQuery>,
    JsonObject(body): JsonObject,
) -> Answer {
    rest.admin(caller, "create_tenant", body, StatusCode::CREATED)
        .await
}

/// `confirm` is passed on only when given: the tool says what is missing.
pub(crate) async fn delete_tenant(
    State(rest): State<Rest>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    QueryParams(q): QueryParams<ConfirmQuery>,
) -> Answer {
    let mut a = args(&[("tenant", &id)]);
    if let Some(confirm) = q.confirm {
        a.insert("confirm".into(), Value::String(confirm));
    }
    rest.admin(caller, "delete_tenant", a, StatusCode::OK).await
}

pub(crate) async fn create_audit_event(
    State(rest): State<Rest>,
    caller: Caller,
    QueryParams(NoQuery {}): QueryParams<NoQuery>,
    JsonObject(body): JsonObject,
) -> Answer {
    rest.admin(caller, "create_audit_log", body, StatusCode::CREATED)
        .await
}

pub(crate) async fn verify_audit(
    State(rest): State<Rest>,
    caller: Caller,
    QueryParams(NoQuery {}): QueryParams<NoQuery>,
) -> Answer {
    rest.admin(caller, "verify_audit_chain", Map::new(), StatusCode::OK)
        .await
}
