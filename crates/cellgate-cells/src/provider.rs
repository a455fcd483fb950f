//! The cells as an MCP provider: every ACTIVE cell's tools, named
//! `<cell>__<tool>`, for the calling tenant, and the management tools
//! (`cell_install`, …), which declare the `admin` permission so the
//! pipeline's authorization admits only administrators.
//!
//! Management tools act on the caller's own tenant only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cellgate_kernel::{BoxFuture, CallContext, McpError, Provider, ProviderEvent, Tool};
use cellgate_store::TenantId;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::error::CellError;
use crate::manifest::{Manifest, manifest_schema};
use crate::registry::{CellPolicy, CellRecord, CellRegistry, InstallRequest};
use crate::signing::CellSignature;

/// The `_meta` key through which a tool declares the permission it needs;
/// the same key as `cellgate_policy::TOOL_REQUIREMENT_META`.
pub const TOOL_REQUIREMENT_META: &str = "io.cellgate/requires";
/// The `_meta` key describing which cell a tool comes from.
pub const CELL_META: &str = "io.cellgate/cell";
/// Separates the cell name from the tool name in published tool names.
pub const SEPARATOR: &str = "__";

/// Names of the management tools.
pub const CELL_ADMIN_TOOLS: &[&str] = &[
    "cell_install",
    "cell_list",
    "cell_inspect",
    "cell_activate",
    "cell_suspend",
    "cell_resume",
    "cell_revoke",
    "cell_uninstall",
    "cell_reverify",
    "cell_trust_publisher",
    "cell_untrust_publisher",
    "cell_list_publishers",
    "cell_set_policy",
    "cell_manifest_schema",
];

/// The provider of cell tools and cell management tools.
pub struct CellProvider {
    registry: Arc<CellRegistry>,
    admin: Vec<Tool>,
}

impl CellProvider {
    pub fn new(registry: Arc<CellRegistry>) -> Arc<Self> {
        Arc::new(Self {
            registry,
            admin: admin_definitions(),
        })
    }

    pub fn registry(&self) -> &Arc<CellRegistry> {
        &self.registry
    }
}

fn admin_tool(
    name: &str,
    description: &str,
    properties: Value,
    required: &[&str],
    read_only: bool,
    destructive: bool,
) -> Tool {
    Tool::new(
        name,
        description,
        json!({ "type": "object", "properties": properties, "required": required, "additionalProperties": false }),
    )
    .with(
        "annotations",
        json!({ "readOnlyHint": read_only, "destructiveHint": destructive, "idempotentHint": read_only, "openWorldHint": false }),
    )
    .with("_meta", json!({ TOOL_REQUIREMENT_META: "admin" }))
}

fn admin_definitions() -> Vec<Tool> {
    let name = json!({ "type": "string", "description": "Cell name" });
    let reason = json!({ "type": "string", "description": "Why (recorded in the audit log)" });
    vec![
        admin_tool(
            "cell_install",
            "Install a cell: verifies digest, signature (against the tenant's trusted publishers) and imports, then stores it. Refusals list every reason.",
            json!({
                "manifest": { "type": "object", "description": "The cell manifest (see cell_manifest_schema)" },
                "module": { "type": "string", "description": "The WebAssembly module, base64" },
                "signature": { "type": "object", "description": "Detached signature: { algorithm, keyId, signature }" },
                "mounts": { "type": "object", "additionalProperties": { "type": "string" }, "description": "Granted guest directory → host directory under a configured mount root" },
                "env": { "type": "object", "additionalProperties": { "type": "string" }, "description": "Values of granted environment variables" },
                "activate": { "type": "boolean", "description": "Serve at once (default true); else stays VERIFIED" },
                "replace": { "type": "boolean", "description": "Replace an installed cell of the same name" }
            }),
            &["manifest", "module"],
            false,
            false,
        ),
        admin_tool(
            "cell_list",
            "List the tenant's cells with their state.",
            json!({}),
            &[],
            true,
            false,
        ),
        admin_tool(
            "cell_inspect",
            "Show a cell: manifest, state and reason, publisher, imports, bindings, behaviour profile.",
            json!({ "name": name }),
            &["name"],
            true,
            false,
        ),
        admin_tool(
            "cell_activate",
            "Start serving a VERIFIED cell (digest and signature are checked again).",
            json!({ "name": name }),
            &["name"],
            false,
            false,
        ),
        admin_tool(
            "cell_suspend",
            "Stop serving a cell until it is resumed.",
            json!({ "name": name, "reason": reason }),
            &["name"],
            false,
            false,
        ),
        admin_tool(
            "cell_resume",
            "Serve a SUSPENDED cell again (digest and signature are checked again).",
            json!({ "name": name }),
            &["name"],
            false,
            false,
        ),
        admin_tool(
            "cell_revoke",
            "Revoke a cell for good: it never serves again and can only be uninstalled.",
            json!({ "name": name, "reason": reason }),
            &["name"],
            false,
            true,
        ),
        admin_tool(
            "cell_uninstall",
            "Remove a cell and its module (its data directories are kept). `confirm` must repeat the name.",
            json!({ "name": name, "confirm": { "type": "string" } }),
            &["name", "confirm"],
            false,
            true,
        ),
        admin_tool(
            "cell_reverify",
            "Check every cell's module digest and signature now; revokes cells that fail.",
            json!({}),
            &[],
            false,
            false,
        ),
        admin_tool(
            "cell_trust_publisher",
            "Trust an Ed25519 publisher key for this tenant. Returns its key id.",
            json!({
                "name": { "type": "string", "description": "Who the key belongs to" },
                "publicKey": { "type": "string", "description": "Base64 of the 32-byte public key" }
            }),
            &["name", "publicKey"],
            false,
            false,
        ),
        admin_tool(
            "cell_untrust_publisher",
            "Stop trusting a publisher key; cells it signed are revoked at the next re-verification.",
            json!({ "keyId": { "type": "string" } }),
            &["keyId"],
            false,
            true,
        ),
        admin_tool(
            "cell_list_publishers",
            "List the tenant's trusted publisher keys.",
            json!({}),
            &[],
            true,
            false,
        ),
        admin_tool(
            "cell_set_policy",
            "Set the tenant's cell policy. allowUnsigned admits unsigned cells (development only).",
            json!({ "allowUnsigned": { "type": "boolean" } }),
            &["allowUnsigned"],
            false,
            false,
        ),
        admin_tool(
            "cell_manifest_schema",
            "The JSON Schema of cell manifests.",
            json!({}),
            &[],
            true,
            false,
        ),
    ]
}

/// The published definition of one cell tool.
pub fn cell_tool(manifest: &Manifest, spec: &crate::manifest::ToolSpec) -> Tool {
    let mut tool = Tool::new(
        format!("{}{SEPARATOR}{}", manifest.name, spec.name),
        spec.description.clone(),
        Value::Object(spec.input_schema.clone()),
    );
    if let Some(out) = &spec.output_schema {
        tool = tool.with("outputSchema", Value::Object(out.clone()));
    }
    if let Some(a) = &spec.annotations {
        tool = tool.with(
            "annotations",
            serde_json::to_value(a).unwrap_or(Value::Null),
        );
    }
    tool.with(
        "_meta",
        json!({ CELL_META: {
            "cell": manifest.name,
            "version": manifest.version,
            "sha256": manifest.module.sha256,
        }}),
    )
}

fn ok(value: Value) -> Value {
    json!({
        "content": [{ "type": "text", "text": value.to_string() }],
        "structuredContent": value,
    })
}

fn failed(message: impl Into<String>) -> Value {
    json!({ "content": [{ "type": "text", "text": message.into() }], "isError": true })
}

/// A cell's answer as a `CallToolResult`: objects are also structured
/// content; anything else is text only.
fn tool_result(value: Value) -> Value {
    let text = match &value {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let mut result = json!({ "content": [{ "type": "text", "text": text }] });
    if value.is_object() {
        result["structuredContent"] = value;
    }
    result
}

fn summary(r: &CellRecord) -> Value {
    json!({
        "name": r.manifest.name,
        "version": r.manifest.version,
        "state": r.state,
        "stateReason": r.state_reason,
        "sha256": r.manifest.module.sha256,
        "publisher": r.publisher.as_ref().map(|p| json!({ "keyId": p.key_id, "name": p.name })),
        "tools": r.manifest.tools.iter().map(|t| format!("{}{SEPARATOR}{}", r.manifest.name, t.name)).collect::<Vec<_>>(),
    })
}

fn str_arg<'a>(args: &'a Map<String, Value>, key: &str) -> Result<&'a str, McpError> {
    match args.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(McpError::invalid_params(format!(
            "`{key}` must be a string"
        ))),
        None => Err(McpError::invalid_params(format!("`{key}` is required"))),
    }
}

fn opt_str(args: &Map<String, Value>, key: &str) -> Result<Option<String>, McpError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(McpError::invalid_params(format!(
            "`{key}` must be a string"
        ))),
    }
}

fn opt_bool(args: &Map<String, Value>, key: &str, default: bool) -> Result<bool, McpError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(McpError::invalid_params(format!(
            "`{key}` must be a boolean"
        ))),
    }
}

fn string_map(args: &Map<String, Value>, key: &str) -> Result<BTreeMap<String, String>, McpError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(McpError::invalid_params(format!(
                    "`{key}.{k}` must be a string"
                ))),
            })
            .collect(),
        Some(_) => Err(McpError::invalid_params(format!(
            "`{key}` must be an object"
        ))),
    }
}

/// Errors of the caller's making become tool errors (the call was valid,
/// the action was refused); store failures are internal errors.
fn refusal(e: CellError) -> Result<Value, McpError> {
    match e {
        CellError::Store(e) => Err(McpError::internal(format!("store: {e}"))),
        e => Ok(failed(e.to_string())),
    }
}

fn tenant_of(ctx: &CallContext) -> Result<TenantId, McpError> {
    TenantId::parse(&ctx.tenant).map_err(|e| McpError::internal(format!("tenant of the call: {e}")))
}

impl CellProvider {
    async fn admin_call(
        &self,
        ctx: &CallContext,
        name: &str,
        args: Map<String, Value>,
    ) -> Result<Value, McpError> {
        let tenant = tenant_of(ctx)?;
        let r = &self.registry;
        let actor = &ctx.principal;
        let outcome: Result<Value, CellError> = match name {
            "cell_install" => {
                let manifest = match Manifest::from_value(
                    args.get("manifest").cloned().unwrap_or(Value::Null),
                ) {
                    Ok(m) => m,
                    Err(e) => return Ok(failed(format!("invalid manifest: {e}"))),
                };
                let module = B64.decode(str_arg(&args, "module")?).map_err(|e| {
                    McpError::invalid_params(format!("`module` must be base64: {e}"))
                })?;
                let signature = match args.get("signature") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(
                        serde_json::from_value::<CellSignature>(v.clone())
                            .map_err(|e| McpError::invalid_params(format!("`signature`: {e}")))?,
                    ),
                };
                let mut request = InstallRequest::new(manifest, module, signature);
                request.mounts = string_map(&args, "mounts")?
                    .into_iter()
                    .map(|(k, v)| (k, PathBuf::from(v)))
                    .collect();
                request.env = string_map(&args, "env")?;
                request.activate = opt_bool(&args, "activate", true)?;
                request.replace = opt_bool(&args, "replace", false)?;
                match r.install(&tenant, actor, request).await {
                    Ok(record) => Ok(summary(&record)),
                    Err(CellError::Analysis(report)) => {
                        return Ok(json!({
                            "content": [{ "type": "text", "text": format!("module refused by static analysis: {report}") }],
                            "structuredContent": { "violations": report.violations, "imports": report.imports },
                            "isError": true,
                        }));
                    }
                    Err(e) => Err(e),
                }
            }
            "cell_list" => r
                .records(&tenant)
                .await
                .map(|records| json!({ "cells": records.iter().map(summary).collect::<Vec<_>>() })),
            "cell_inspect" => {
                r.inspect(&tenant, str_arg(&args, "name")?)
                    .await
                    .map(|(record, profile)| {
                        let mut v = serde_json::to_value(&record).unwrap_or(Value::Null);
                        v["profile"] = profile;
                        v
                    })
            }
            "cell_activate" | "cell_resume" => r
                .activate(&tenant, actor, str_arg(&args, "name")?)
                .await
                .map(|c| summary(&c)),
            "cell_suspend" => r
                .suspend(
                    &tenant,
                    actor,
                    str_arg(&args, "name")?,
                    opt_str(&args, "reason")?,
                )
                .await
                .map(|c| summary(&c)),
            "cell_revoke" => r
                .revoke(
                    &tenant,
                    actor,
                    str_arg(&args, "name")?,
                    opt_str(&args, "reason")?,
                )
                .await
                .map(|c| summary(&c)),
            "cell_uninstall" => {
                let cell = str_arg(&args, "name")?;
                if str_arg(&args, "confirm")? != cell {
                    return Ok(failed("`confirm` must repeat the cell name"));
                }
                r.uninstall(&tenant, actor, cell)
                    .await
                    .map(|()| json!({ "uninstalled": cell }))
            }
            "cell_reverify" => r
                .reverify(&tenant)
                .await
                .map(|list| json!({ "cells": list })),
            "cell_trust_publisher" => r
                .trust_publisher(
                    &tenant,
                    actor,
                    str_arg(&args, "name")?,
                    str_arg(&args, "publicKey")?,
                )
                .await
                .map(|p| serde_json::to_value(p).unwrap_or(Value::Null)),
            "cell_untrust_publisher" => {
                let key = str_arg(&args, "keyId")?;
                r.untrust_publisher(&tenant, actor, key)
                    .await
                    .map(|removed| json!({ "keyId": key, "removed": removed }))
            }
            "cell_list_publishers" => r
                .publishers(&tenant)
                .await
                .map(|p| json!({ "publishers": p })),
            "cell_set_policy" => {
                let policy = CellPolicy {
                    allow_unsigned: opt_bool(&args, "allowUnsigned", false)?,
                };
                r.set_policy(&tenant, actor, &policy)
                    .await
                    .map(|()| serde_json::to_value(&policy).unwrap_or(Value::Null))
            }
            "cell_manifest_schema" => Ok(manifest_schema()),
            other => return Err(McpError::invalid_params(format!("unknown tool: {other}"))),
        };
        match outcome {
            Ok(v) => Ok(ok(v)),
            Err(e) => refusal(e),
        }
    }

    async fn cell_call(
        &self,
        ctx: &CallContext,
        name: &str,
        args: Map<String, Value>,
    ) -> Result<Value, McpError> {
        let Some((cell, tool)) = name.split_once(SEPARATOR) else {
            return Err(McpError::invalid_params(format!("unknown tool: {name}")));
        };
        let tenant = tenant_of(ctx)?;
        match self
            .registry
            .call(&tenant, &ctx.principal, cell, tool, args)
            .await
        {
            Ok(report) => match report.result {
                Ok(value) => Ok(tool_result(value)),
                Err(e) => Ok(failed(format!("cell `{cell}`: {e}"))),
            },
            Err(CellError::NotInstalled(_) | CellError::UnknownTool { .. }) => {
                Err(McpError::invalid_params(format!("unknown tool: {name}")))
            }
            Err(e) => refusal(e),
        }
    }
}

impl Provider for CellProvider {
    fn id(&self) -> &str {
        "cells"
    }

    fn list_tools<'a>(
        &'a self,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<Tool>, McpError>> {
        Box::pin(async move {
            let tenant = tenant_of(ctx)?;
            let mut tools = self.admin.clone();
            let manifests = self
                .registry
                .active_manifests(&tenant)
                .await
                .map_err(|e| McpError::internal(e.to_string()))?;
            for m in &manifests {
                tools.extend(m.tools.iter().map(|t| cell_tool(m, t)));
            }
            Ok(tools)
        })
    }

    fn call_tool<'a>(
        &'a self,
        ctx: &'a CallContext,
        name: &'a str,
        arguments: Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async move {
            if CELL_ADMIN_TOOLS.contains(&name) {
                self.admin_call(ctx, name, arguments).await
            } else {
                self.cell_call(ctx, name, arguments).await
            }
        })
    }

    fn events(&self) -> Option<broadcast::Receiver<ProviderEvent>> {
        Some(self.registry.subscribe())
    }
}
