//! API keys and the audit log as administrative tools.

use std::time::Duration;

use cellgate_audit::AuditEvent;
use cellgate_auth::NewKey;
use cellgate_kernel::{CallContext, McpError, Tool};
use serde_json::{Map, Value, json};

use crate::tools::{def, operator_only, required, string, strings, tenant_id};
use crate::{AdminProvider, failed, ok};

const KEY_TOOLS: &[&str] = &["create_api_key", "revoke_api_key", "list_api_keys"];
const AUDIT_TOOLS: &[&str] = &["create_audit_log", "verify_audit_chain"];

pub(crate) fn handles(name: &str) -> bool {
    KEY_TOOLS.contains(&name) || AUDIT_TOOLS.contains(&name)
}

const TENANT_ARG: &str = "Tenant to act on; default: the caller's own.";

pub(crate) fn definitions() -> Vec<Tool> {
    let tenant = json!({ "type": "string", "description": TENANT_ARG });
    vec![
        def(
            "create_api_key",
            "Create an API key for a principal. The key is in this result only; it is stored as a hash and cannot be shown again. Granting roles needs `delegate` and cannot exceed the caller's own level.",
            json!({
                "tenant": tenant,
                "principal": { "type": "string", "description": "Who acts when the key is used" },
                "name": { "type": "string", "description": "A label for people" },
                "roles": { "type": "array", "items": { "type": "string" } },
                "ttl_secs": { "type": "integer", "minimum": 1, "description": "Lifetime; default: no expiry" }
            }),
            &["principal"],
            false,
            false,
        ),
        def(
            "revoke_api_key",
            "Revoke an API key by its public id (the part between `cgk_` and the secret).",
            json!({ "tenant": tenant, "id": { "type": "string" } }),
            &["id"],
            false,
            true,
        ),
        def(
            "list_api_keys",
            "List a tenant's API keys (never the keys themselves).",
            json!({ "tenant": tenant }),
            &[],
            true,
            false,
        ),
    ]
}

pub(crate) fn audit_definitions() -> Vec<Tool> {
    vec![
        def(
            "create_audit_log",
            "Append an explicit entry to the tamper-evident audit log (for events outside cellgate: a deployment, an approval).",
            json!({
                "category": { "type": "string", "description": "A short kind, e.g. deployment" },
                "message": { "type": "string" }
            }),
            &["category", "message"],
            false,
            false,
        ),
        def(
            "verify_audit_chain",
            "Recompute the whole audit chain and its signed checkpoints; reports the first broken link (operator tenant administrators only).",
            json!({}),
            &[],
            true,
            false,
        ),
    ]
}

fn key_err(e: cellgate_auth::ApiKeyError) -> McpError {
    McpError::invalid_params(e.to_string())
}

pub(crate) async fn call(
    p: &AdminProvider,
    ctx: &CallContext,
    name: &str,
    args: Map<String, Value>,
) -> Result<Value, McpError> {
    let unavailable =
        || McpError::invalid_params(format!("`{name}` is not available on this instance"));
    match name {
        "create_api_key" | "revoke_api_key" | "list_api_keys" => {
            let keys = p.services().api_keys.clone().ok_or_else(unavailable)?;
            let target = p.target_tenant(ctx, &args)?;
            let tenant = tenant_id(&target)?;
            match name {
                "create_api_key" => {
                    let roles = strings(&args, "roles")?;
                    let policy = p
                        .directory()
                        .policy(&target)
                        .await
                        .map_err(|e| McpError::internal(e.to_string()))?
                        .ok_or_else(|| {
                            McpError::invalid_params(format!("tenant `{target}` does not exist"))
                        })?;
                    p.check_grant(ctx, &policy.roles, &roles).await?;
                    let ttl = match args.get("ttl_secs") {
                        None | Some(Value::Null) => None,
                        Some(v) => Some(Duration::from_secs(
                            v.as_u64().filter(|s| *s > 0).ok_or_else(|| {
                                McpError::invalid_params("`ttl_secs` must be a positive integer")
                            })?,
                        )),
                    };
                    let issued = keys
                        .create(&NewKey {
                            tenant,
                            principal: required(&args, "principal")?,
                            name: string(&args, "name")?.unwrap_or_default(),
                            roles,
                            ttl,
                        })
                        .await
                        .map_err(key_err)?;
                    Ok(ok(json!({
                        "key": issued.key.expose(),
                        "id": issued.record.key_id,
                        "tenant": target,
                        "principal": issued.record.principal,
                        "roles": issued.record.roles,
                        "expires_at_ms": issued.record.expires_at_ms,
                        "note": "store the key now: it cannot be shown again",
                    })))
                }
                "revoke_api_key" => {
                    let id = required(&args, "id")?;
                    match keys.revoke(&tenant, &id).await {
                        Ok(Some(_)) => {
                            Ok(ok(json!({ "tenant": target, "id": id, "revoked": true })))
                        }
                        Ok(None) => Ok(failed(format!("tenant `{target}` has no API key `{id}`"))),
                        Err(e) => Ok(failed(e.to_string())),
                    }
                }
                _ => {
                    let list = keys.list(&tenant).await.map_err(key_err)?;
                    let items: Vec<Value> = list
                        .iter()
                        .map(|k| {
                            json!({
                                "id": k.key_id, "principal": k.principal, "name": k.name, "roles": k.roles,
                                "created_at_ms": k.created_at_ms, "expires_at_ms": k.expires_at_ms,
                                "revoked_at_ms": k.revoked_at_ms, "last_used_at_ms": k.last_used_at_ms,
                            })
                        })
                        .collect();
                    Ok(ok(json!({ "tenant": target, "keys": items })))
                }
            }
        }
        "create_audit_log" => {
            let audit = p.services().audit.clone().ok_or_else(unavailable)?;
            let event = AuditEvent::admin(
                &ctx.tenant,
                &ctx.principal,
                required(&args, "category")?,
                required(&args, "message")?,
            );
            match audit.sink.append(event).await {
                Ok(receipt) => Ok(ok(json!({ "seq": receipt.seq, "hash": receipt.hash }))),
                Err(e) => Ok(failed(format!("the audit log did not take the entry: {e}"))),
            }
        }
        "verify_audit_chain" => {
            operator_only(p, ctx, "verifying the instance-wide audit chain")?;
            let audit = p.services().audit.clone().ok_or_else(unavailable)?;
            // Entries accepted so far are in the chain before it is read.
            let _ = audit.sink.flush().await;
            match cellgate_audit::verify(&audit.store.audit(), &audit.trusted).await {
                Ok(report) => Ok(ok(serde_json::to_value(&report).unwrap_or(Value::Null))),
                Err(e) => Ok(failed(format!("verification could not run: {e}"))),
            }
        }
        other => Err(McpError::invalid_params(format!("unknown tool: {other}"))),
    }
}
