//! Upstream MCP servers as administrative tools: their state, their
//! incidents, and approving a changed tool definition (pinning). Reserved to
//! administrators of the operator tenant: upstreams serve every tenant.

use cellgate_kernel::{CallContext, McpError, Tool};
use serde_json::{Map, Value, json};

use crate::tools::{def, operator_only, required};
use crate::{AdminProvider, failed, ok};

const TOOLS: &[&str] = &[
    "list_upstreams",
    "list_upstream_incidents",
    "approve_tool_pin",
    "add_upstream",
    "remove_upstream",
];

pub(crate) fn handles(name: &str) -> bool {
    TOOLS.contains(&name)
}

pub(crate) fn definitions() -> Vec<Tool> {
    vec![
        def(
            "list_upstreams",
            "The upstream MCP servers: state, breaker, restarts, tools offered, and tools blocked because their definition changed since it was pinned.",
            json!({}),
            &[],
            true,
            false,
        ),
        def(
            "list_upstream_incidents",
            "Upstream incidents since this instance started (crashes, hangs, restarts, changed tool definitions) and the changed tools waiting for approval.",
            json!({}),
            &[],
            true,
            false,
        ),
        def(
            "approve_tool_pin",
            "Accept the changed definition of an upstream's tool as its new pin, so it is offered and callable again.",
            json!({
                "upstream": { "type": "string" },
                "tool": { "type": "string", "description": "The name the upstream gives the tool (without the namespace prefix)" }
            }),
            &["upstream", "tool"],
            false,
            false,
        ),
        def(
            "add_upstream",
            "Add (or with replace=true change) an upstream MCP server while running. The entry has the shape of one [[upstreams]] table of cellgate.toml; it is stored with its headers and environment encrypted, and survives restarts.",
            json!({
                "upstream": { "type": "object", "description": "name, transport ({type = stdio|http|sse, …}), and optional settings as in cellgate.toml" },
                "replace": { "type": "boolean", "description": "Change an upstream added earlier (default false)" }
            }),
            &["upstream"],
            false,
            false,
        ),
        def(
            "remove_upstream",
            "Stop and forget an upstream that was added at run time (those of cellgate.toml are removed in the file).",
            json!({ "name": { "type": "string" } }),
            &["name"],
            false,
            true,
        ),
    ]
}

pub(crate) async fn call(
    p: &AdminProvider,
    ctx: &CallContext,
    name: &str,
    args: Map<String, Value>,
) -> Result<Value, McpError> {
    operator_only(p, ctx, "managing upstream servers")?;
    let federation = p
        .services()
        .federation
        .clone()
        .ok_or_else(|| McpError::invalid_params("no upstream servers are configured"))?;
    match name {
        "add_upstream" | "remove_upstream" => {
            let Some(runtime) = p.services().runtime_upstreams.clone() else {
                return Err(McpError::invalid_params(
                    "upstreams cannot be added at run time on this instance",
                ));
            };
            let outcome = if name == "add_upstream" {
                let entry = args
                    .get("upstream")
                    .cloned()
                    .filter(Value::is_object)
                    .ok_or_else(|| McpError::invalid_params("upstream: an object is required"))?;
                let replace = args
                    .get("replace")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                runtime.add(entry, replace).await
            } else {
                runtime.remove(&required(&args, "name")?).await
            };
            Ok(match outcome {
                Ok(v) => {
                    tracing::warn!(tool = name, by = %ctx.principal.id, "upstreams changed at run time");
                    ok(v)
                }
                Err(e) => failed(e),
            })
        }
        "list_upstreams" => Ok(ok(json!({ "upstreams": json_of(&federation.status()) }))),
        "list_upstream_incidents" => Ok(ok(json!({
            "incidents": json_of(&federation.incidents()),
            "pending_approvals": json_of(&federation.pending_approvals()),
        }))),
        _ => {
            let (upstream, tool) = (required(&args, "upstream")?, required(&args, "tool")?);
            match federation.approve_pin(&upstream, &tool).await {
                Ok(()) => {
                    tracing::warn!(%upstream, %tool, by = %ctx.principal.id, "changed tool definition approved");
                    Ok(ok(
                        json!({ "upstream": upstream, "tool": tool, "approved": true }),
                    ))
                }
                Err(e) => Ok(failed(e.to_string())),
            }
        }
    }
}

/// The federation's reports are plain `Serialize` data.
fn json_of<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}
