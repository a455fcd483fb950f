//! How the engine runs a tool: as the principal that asked for it, through
//! whatever the embedder provides — normally the full trust pipeline, so a
//! queued call is authorized, inspected, audited and metered like a direct
//! one.

use std::sync::{Arc, OnceLock};

use cellgate_kernel::{
    AuthMethod, BoxFuture, Call, CallContext, CancellationToken, ClientPeer, DetachedPeer,
    Identity, LogLevel, McpError, Pipeline, Principal, PrincipalKind, Request,
};
use serde_json::{Map, Value, json};

/// One tool call the engine wants made.
#[derive(Debug, Clone)]
pub struct ToolCall {
    /// Who the call runs as: the principal that submitted the task or the
    /// workflow, in its tenant.
    pub identity: Identity,
    pub tool: String,
    pub arguments: Map<String, Value>,
    /// Goes into the request's `_meta` (`cellgate/task`: task id, attempt,
    /// idempotency key), so a tool can recognise a redelivery.
    pub meta: Map<String, Value>,
    /// Cancelled when the task is cancelled, times out or loses its lease.
    pub cancel: CancellationToken,
    /// Where the tool's `notifications/progress` go while it runs (a
    /// queued task's record); `None`: nowhere. With a sink, `meta` carries
    /// a `progressToken`, so the tool (or the upstream server behind it)
    /// reports progress as it would to a client.
    pub progress: Option<ProgressSink>,
}

/// One progress report of a running call, as `notifications/progress`
/// carries it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TaskProgress {
    pub progress: f64,
    pub total: Option<f64>,
    pub message: Option<String>,
}

impl TaskProgress {
    /// Reads the params of a `notifications/progress`; `None` without a
    /// numeric `progress`.
    pub fn from_notification(params: &Value) -> Option<TaskProgress> {
        Some(TaskProgress {
            progress: params.get("progress")?.as_f64()?,
            total: params.get("total").and_then(Value::as_f64),
            message: params
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }
}

/// Receives the progress a call reports. Reporting must not block: the
/// engine's sink only notes the latest report and writes it in the
/// background.
#[derive(Clone)]
pub struct ProgressSink(Arc<dyn Fn(TaskProgress) + Send + Sync>);

impl ProgressSink {
    pub fn new(f: impl Fn(TaskProgress) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub fn report(&self, progress: TaskProgress) {
        (self.0)(progress)
    }
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressSink")
    }
}

/// The client side of a queued call: nobody to ask, but progress goes to
/// the task's sink.
struct ProgressPeer(ProgressSink);

impl ClientPeer for ProgressPeer {
    fn notify(&self, method: &str, params: Value) {
        if method == "notifications/progress"
            && let Some(p) = TaskProgress::from_notification(&params)
        {
            self.0.report(p);
        }
    }

    fn request(&self, method: &str, params: Value) -> BoxFuture<'static, Result<Value, McpError>> {
        DetachedPeer.request(method, params)
    }

    fn log_enabled(&self, _level: LogLevel) -> bool {
        false
    }
}

/// Runs tool calls for the engine. A `CallToolResult` with `isError: true`
/// is a failed attempt (retried); an `Err` with a client-side code (invalid
/// params, forbidden, blocked, unauthenticated) fails the task for good.
pub trait ToolRunner: Send + Sync + 'static {
    fn run(&self, call: ToolCall) -> BoxFuture<'static, Result<Value, McpError>>;

    /// Whether `tool` exists for `identity`; workflow definitions are
    /// checked with it when they are created.
    fn tool_exists<'a>(
        &'a self,
        identity: &'a Identity,
        tool: &'a str,
    ) -> BoxFuture<'a, Result<bool, McpError>>;
}

fn context(
    identity: &Identity,
    meta: Map<String, Value>,
    cancel: CancellationToken,
    progress: Option<ProgressSink>,
) -> CallContext {
    let mut ctx = CallContext::detached(&identity.tenant);
    ctx.principal = identity.principal.clone();
    ctx.meta = (!meta.is_empty()).then(|| Arc::new(meta));
    ctx.cancel = cancel;
    if let Some(sink) = progress {
        ctx.peer = Arc::new(ProgressPeer(sink));
    }
    ctx
}

impl ToolRunner for Pipeline {
    fn run(&self, call: ToolCall) -> BoxFuture<'static, Result<Value, McpError>> {
        let pipeline = self.clone();
        Box::pin(async move {
            let ctx = context(&call.identity, call.meta, call.cancel, call.progress);
            pipeline
                .call(Call {
                    ctx,
                    request: Request::CallTool {
                        name: call.tool,
                        arguments: call.arguments,
                    },
                })
                .await
        })
    }

    fn tool_exists<'a>(
        &'a self,
        identity: &'a Identity,
        tool: &'a str,
    ) -> BoxFuture<'a, Result<bool, McpError>> {
        Box::pin(async move {
            let ctx = context(identity, Map::new(), CancellationToken::new(), None);
            Ok(self.catalog().tool(&ctx, tool).await?.is_some())
        })
    }
}

/// A [`ToolRunner`] whose pipeline is attached after it is built: the
/// orchestration provider sits in the catalog the pipeline wraps, so the
/// engine exists before the pipeline does.
#[derive(Default)]
pub struct DeferredPipeline(OnceLock<Pipeline>);

impl DeferredPipeline {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Attaches the pipeline; later calls are ignored.
    pub fn attach(&self, pipeline: Pipeline) {
        let _ = self.0.set(pipeline);
    }

    fn get(&self) -> Result<&Pipeline, McpError> {
        self.0
            .get()
            .ok_or_else(|| McpError::internal("the orchestration engine has no pipeline yet"))
    }
}

impl ToolRunner for DeferredPipeline {
    fn run(&self, call: ToolCall) -> BoxFuture<'static, Result<Value, McpError>> {
        match self.get() {
            Ok(p) => p.run(call),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn tool_exists<'a>(
        &'a self,
        identity: &'a Identity,
        tool: &'a str,
    ) -> BoxFuture<'a, Result<bool, McpError>> {
        match self.get() {
            Ok(p) => p.tool_exists(identity, tool),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
}

// ---- results ---------------------------------------------------------------------

/// Whether a protocol error means the same call can never succeed.
pub(crate) fn is_permanent(e: &McpError) -> bool {
    use cellgate_kernel::codes::*;
    matches!(
        e.code,
        INVALID_PARAMS | METHOD_NOT_FOUND | INVALID_REQUEST | FORBIDDEN | UNAUTHENTICATED | BLOCKED
    )
}

/// The text of a `CallToolResult`'s content, joined.
pub(crate) fn result_text(result: &Value) -> String {
    result
        .get("content")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|c| c.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

pub(crate) fn is_tool_error(result: &Value) -> bool {
    result.get("isError").and_then(Value::as_bool) == Some(true)
}

/// What a workflow step's output is: the result's `structuredContent`; else
/// its text, parsed as JSON when it is JSON; else the whole result.
pub fn step_output(result: &Value) -> Value {
    if let Some(structured) = result.get("structuredContent") {
        return structured.clone();
    }
    if result.get("content").is_some() {
        let text = result_text(result);
        return serde_json::from_str(&text).unwrap_or(Value::String(text));
    }
    result.clone()
}

// ---- principals ---------------------------------------------------------------------

/// The principal as stored with a task, to run it later as the same caller.
pub(crate) fn principal_to_json(p: &Principal) -> Value {
    json!({
        "id": &*p.id,
        "kind": p.kind.as_str(),
        "roles": &*p.roles,
        "scopes": &*p.scopes,
        "auth": p.auth,
        "claims": p.claims.as_deref(),
    })
}

pub(crate) fn principal_from_json(v: &Value) -> Result<Principal, String> {
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .ok_or("stored principal has no id")?;
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .and_then(PrincipalKind::parse)
        .ok_or("stored principal has no valid kind")?;
    let strings = |key: &str| -> Vec<String> {
        v.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let auth: AuthMethod = v
        .get("auth")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| format!("stored principal auth: {e}"))?
        .unwrap_or(AuthMethod::None);
    Ok(Principal {
        id: Arc::from(id),
        kind,
        roles: Arc::from(strings("roles")),
        scopes: Arc::from(strings("scopes")),
        auth,
        claims: v
            .get("claims")
            .filter(|c| !c.is_null())
            .map(|c| Arc::new(c.clone())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_round_trip() {
        let mut p = Principal::local_operator();
        p.claims = Some(Arc::new(json!({"dept": "eng"})));
        let back = principal_from_json(&principal_to_json(&p)).unwrap();
        assert_eq!(back, p);
        assert!(principal_from_json(&json!({"kind": "user"})).is_err());
    }

    #[test]
    fn outputs_prefer_structured_then_json_text() {
        assert_eq!(
            step_output(&json!({"content": [], "structuredContent": {"a": 1}})),
            json!({"a": 1})
        );
        assert_eq!(
            step_output(&json!({"content": [{"type": "text", "text": "[1,2]"}]})),
            json!([1, 2])
        );
        assert_eq!(
            step_output(&json!({"content": [{"type": "text", "text": "hello"}]})),
            json!("hello")
        );
    }
}
