//! The administrative tools: definitions and implementations.

use cellgate_config::{PermissionRuleConfig, RuleKind};
use cellgate_kernel::{CallContext, McpError, PrincipalKind, Tool};
use cellgate_policy::{
    Member, Permission, Permissions, Role, StoredRule, TOOL_REQUIREMENT_META, Target,
};
use cellgate_store::{StoreError, TenantId, TenantStatus};
use serde_json::{Map, Value, json};

use crate::{AdminProvider, failed, ok};

/// Names of every administrative tool.
pub const ADMIN_TOOLS: &[&str] = &[
    "create_tenant",
    "list_tenants",
    "get_tenant",
    "suspend_tenant",
    "resume_tenant",
    "delete_tenant",
    "set_tenant_plan",
    "add_tenant_user",
    "remove_tenant_user",
    "list_tenant_users",
    "create_role",
    "list_roles",
    "set_permission_rule",
    "delete_permission_rule",
    "list_permission_rules",
    "check_tenant_permission",
];

const TENANT_ARG: &str = "Tenant to act on; default: the caller's own. Other tenants need an administrator of the operator tenant.";

pub(crate) fn def(
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

pub(crate) fn definitions() -> Vec<Tool> {
    let tenant = json!({ "type": "string", "description": TENANT_ARG });
    let roles =
        json!({ "type": "array", "items": { "type": "string" }, "description": "Role names" });
    vec![
        def(
            "create_tenant",
            "Create a tenant (operator tenant administrators only). Returns its id.",
            json!({
                "id": { "type": "string", "description": "1-64 of a-z 0-9 _ -, starting with a letter or digit" },
                "name": { "type": "string", "description": "Display name (default: the id)" },
                "plan": { "type": "string", "description": "Rate-limit plan (default: default)" }
            }),
            &["id"],
            false,
            false,
        ),
        def(
            "list_tenants",
            "List tenants: all of them for the operator tenant's administrators, else the caller's own.",
            json!({}),
            &[],
            true,
            false,
        ),
        def(
            "get_tenant",
            "Show a tenant: status, plan, creation time.",
            json!({ "tenant": tenant }),
            &[],
            true,
            false,
        ),
        def(
            "suspend_tenant",
            "Suspend a tenant: every call into it is refused; its data stays.",
            json!({ "tenant": tenant }),
            &["tenant"],
            false,
            false,
        ),
        def(
            "resume_tenant",
            "Resume a suspended tenant.",
            json!({ "tenant": tenant }),
            &["tenant"],
            false,
            false,
        ),
        def(
            "delete_tenant",
            "Delete a tenant and all of its data. Irreversible; `confirm` must repeat the tenant id.",
            json!({ "tenant": tenant, "confirm": { "type": "string", "description": "The tenant id again" } }),
            &["tenant", "confirm"],
            false,
            true,
        ),
        def(
            "set_tenant_plan",
            "Move a tenant to another rate-limit plan (operator tenant administrators only).",
            json!({ "tenant": tenant, "plan": { "type": "string" } }),
            &["plan"],
            false,
            false,
        ),
        def(
            "add_tenant_user",
            "Register a principal (user, agent, service) in a tenant with roles, or update it. Granting roles needs `delegate` and cannot exceed the caller's own level.",
            json!({
                "tenant": tenant,
                "principal": { "type": "string", "description": "Principal id (the `sub` of its tokens, or an API key's principal)" },
                "kind": { "type": "string", "enum": ["user", "agent", "service"], "default": "user" },
                "name": { "type": "string" },
                "roles": roles,
                "disabled": { "type": "boolean", "default": false, "description": "Refuse this principal whatever its credential says" }
            }),
            &["principal"],
            false,
            false,
        ),
        def(
            "remove_tenant_user",
            "Remove a principal's registration (and assigned roles) from a tenant.",
            json!({ "tenant": tenant, "principal": { "type": "string" } }),
            &["principal"],
            false,
            true,
        ),
        def(
            "list_tenant_users",
            "List the principals registered in a tenant.",
            json!({ "tenant": tenant }),
            &[],
            true,
            false,
        ),
        def(
            "create_role",
            "Define (or redefine) a role in a tenant. Its level cannot exceed the caller's own.",
            json!({
                "tenant": tenant,
                "name": { "type": "string" },
                "level": { "type": "integer", "minimum": 0, "maximum": 1000000 },
                "permissions": { "type": "array", "items": { "type": "string", "enum": ["read", "write", "execute", "admin", "delegate"] } }
            }),
            &["name", "level", "permissions"],
            false,
            false,
        ),
        def(
            "list_roles",
            "List the roles of a tenant (built-in and its own) with levels and permissions.",
            json!({ "tenant": tenant }),
            &[],
            true,
            false,
        ),
        def(
            "set_permission_rule",
            "Add or replace a rule of a tenant's permission matrix. Tenant rules are tried before the instance's, in `order`.",
            json!({
                "tenant": tenant,
                "id": { "type": "string", "description": "Rule id, unique in the tenant" },
                "order": { "type": "integer", "default": 0 },
                "pattern": { "type": "string", "description": "Glob over tool/prompt names or resource URIs" },
                "kind": { "type": "string", "enum": ["tool", "prompt", "resource"], "default": "tool" },
                "min_role": { "type": "string", "description": "A role name or level number" },
                "permission": { "type": "string", "enum": ["read", "write", "execute", "admin", "delegate"] },
                "deny": { "type": "boolean", "default": false },
                "audit": { "type": "boolean", "default": false },
                "approval": { "type": "boolean", "default": false },
                "condition": { "type": "string", "description": "CEL over principal, tenant, tool, args, claims" }
            }),
            &["id", "pattern"],
            false,
            false,
        ),
        def(
            "delete_permission_rule",
            "Delete a rule of a tenant's permission matrix.",
            json!({ "tenant": tenant, "id": { "type": "string" } }),
            &["id"],
            false,
            true,
        ),
        def(
            "list_permission_rules",
            "List a tenant's own permission rules in the order they are tried.",
            json!({ "tenant": tenant }),
            &[],
            true,
            false,
        ),
        def(
            "check_tenant_permission",
            "Explain whether a principal (or a set of roles) may call a tool, get a prompt or read a resource in a tenant, and why.",
            json!({
                "tenant": tenant,
                "principal": { "type": "string", "description": "Registered principal whose assigned roles count" },
                "roles": roles,
                "tool": { "type": "string" },
                "prompt": { "type": "string" },
                "resource": { "type": "string" },
                "arguments": { "type": "object", "description": "Arguments for rules with conditions" }
            }),
            &[],
            true,
            false,
        ),
    ]
}

pub(crate) fn string(args: &Map<String, Value>, key: &str) -> Result<Option<String>, McpError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(McpError::invalid_params(format!(
            "`{key}` must be a string"
        ))),
    }
}

pub(crate) fn required(args: &Map<String, Value>, key: &str) -> Result<String, McpError> {
    string(args, key)?.ok_or_else(|| McpError::invalid_params(format!("`{key}` is required")))
}

pub(crate) fn strings(args: &Map<String, Value>, key: &str) -> Result<Vec<String>, McpError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    McpError::invalid_params(format!("`{key}` must be an array of strings"))
                })
            })
            .collect(),
        Some(_) => Err(McpError::invalid_params(format!(
            "`{key}` must be an array of strings"
        ))),
    }
}

fn boolean(args: &Map<String, Value>, key: &str) -> Result<bool, McpError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(McpError::invalid_params(format!(
            "`{key}` must be a boolean"
        ))),
    }
}

pub(crate) fn tenant_id(s: &str) -> Result<TenantId, McpError> {
    TenantId::parse(s).map_err(|e| McpError::invalid_params(e.to_string()))
}

pub(crate) fn store_err(e: StoreError) -> McpError {
    match e {
        StoreError::Invalid { .. } => McpError::invalid_params(e.to_string()),
        other => {
            tracing::error!(error = %other, "admin action failed in the store");
            McpError::internal("the store failed; see the server log")
        }
    }
}

fn policy_err(e: cellgate_policy::PolicyError) -> McpError {
    use cellgate_policy::PolicyError;
    match e {
        PolicyError::Store(s) => store_err(s),
        PolicyError::UnknownTenant(t) => {
            McpError::invalid_params(format!("tenant `{t}` does not exist"))
        }
        other => McpError::invalid_params(other.to_string()),
    }
}

fn tenant_json(t: &cellgate_store::Tenant) -> Value {
    json!({ "id": t.id.as_str(), "name": t.name, "status": t.status.as_str(), "plan": t.plan, "created_at_ms": t.created_at_ms })
}

pub(crate) fn operator_only(
    p: &AdminProvider,
    ctx: &CallContext,
    what: &str,
) -> Result<(), McpError> {
    if p.is_operator(ctx) {
        Ok(())
    } else {
        Err(McpError::forbidden(format!(
            "{what} is reserved to administrators of the operator tenant"
        )))
    }
}

pub(crate) async fn call(
    p: &AdminProvider,
    ctx: &CallContext,
    name: &str,
    args: Map<String, Value>,
) -> Result<Value, McpError> {
    let tenants = p.directory().store().tenants();
    match name {
        "create_tenant" => {
            operator_only(p, ctx, "creating tenants")?;
            let id = tenant_id(&required(&args, "id")?)?;
            let name = string(&args, "name")?.unwrap_or_else(|| id.to_string());
            let t = match tenants.create(&id, &name).await {
                Ok(t) => t,
                Err(StoreError::Conflict { .. }) => {
                    return Ok(failed(format!("tenant `{id}` already exists")));
                }
                Err(e) => return Err(store_err(e)),
            };
            let t = match string(&args, "plan")? {
                Some(plan) => tenants.set_plan(&id, &plan).await.map_err(store_err)?,
                None => t,
            };
            Ok(ok(tenant_json(&t)))
        }
        "list_tenants" => {
            let list = if p.is_operator(ctx) {
                tenants.list().await.map_err(store_err)?
            } else {
                tenants
                    .get(&tenant_id(&ctx.tenant)?)
                    .await
                    .map_err(store_err)?
                    .into_iter()
                    .collect()
            };
            Ok(ok(
                json!({ "tenants": list.iter().map(tenant_json).collect::<Vec<_>>() }),
            ))
        }
        "get_tenant" => {
            let target = p.target_tenant(ctx, &args)?;
            match tenants.get(&tenant_id(&target)?).await.map_err(store_err)? {
                Some(t) => Ok(ok(tenant_json(&t))),
                None => Ok(failed(format!("tenant `{target}` does not exist"))),
            }
        }
        "suspend_tenant" | "resume_tenant" => {
            operator_only(p, ctx, "suspending and resuming tenants")?;
            let target = p.target_tenant(ctx, &args)?;
            let (status, verb) = if name == "suspend_tenant" {
                if target == *ctx.tenant {
                    return Ok(failed(
                        "the operator tenant cannot suspend itself (that would lock every administrator out)",
                    ));
                }
                (TenantStatus::Suspended, "suspended")
            } else {
                (TenantStatus::Active, "resumed")
            };
            match tenants.set_status(&tenant_id(&target)?, status).await {
                Ok(t) => {
                    p.directory().invalidate(&target);
                    tracing::info!(tenant = %target, by = %ctx.principal.id, "tenant {verb}");
                    Ok(ok(tenant_json(&t)))
                }
                Err(StoreError::UnknownTenant { .. }) => {
                    Ok(failed(format!("tenant `{target}` does not exist")))
                }
                Err(e) => Err(store_err(e)),
            }
        }
        "delete_tenant" => {
            operator_only(p, ctx, "deleting tenants")?;
            let target = p.target_tenant(ctx, &args)?;
            if required(&args, "confirm")? != target {
                return Err(McpError::invalid_params(
                    "`confirm` must repeat the tenant id exactly",
                ));
            }
            if target == *ctx.tenant {
                return Ok(failed("the operator tenant cannot delete itself"));
            }
            match tenants.delete(&tenant_id(&target)?).await {
                Ok(rows) => {
                    p.directory().invalidate(&target);
                    tracing::warn!(tenant = %target, rows, by = %ctx.principal.id, "tenant deleted with its data");
                    Ok(ok(json!({ "deleted": target, "rows": rows })))
                }
                Err(StoreError::UnknownTenant { .. }) => {
                    Ok(failed(format!("tenant `{target}` does not exist")))
                }
                Err(e) => Err(store_err(e)),
            }
        }
        "set_tenant_plan" => {
            operator_only(p, ctx, "changing plans")?;
            let target = p.target_tenant(ctx, &args)?;
            match tenants
                .set_plan(&tenant_id(&target)?, &required(&args, "plan")?)
                .await
            {
                Ok(t) => {
                    p.directory().invalidate(&target);
                    Ok(ok(tenant_json(&t)))
                }
                Err(StoreError::UnknownTenant { .. }) => {
                    Ok(failed(format!("tenant `{target}` does not exist")))
                }
                Err(e) => Err(store_err(e)),
            }
        }
        "add_tenant_user" => {
            let target = p.target_tenant(ctx, &args)?;
            let kind = match string(&args, "kind")?.as_deref() {
                None => PrincipalKind::User,
                Some(k) => match PrincipalKind::parse(k) {
                    Some(PrincipalKind::Anonymous) | None => {
                        return Err(McpError::invalid_params(
                            "`kind` must be user, agent or service",
                        ));
                    }
                    Some(k) => k,
                },
            };
            let roles = strings(&args, "roles")?;
            let policy = p
                .directory()
                .policy(&target)
                .await
                .map_err(policy_err)?
                .ok_or_else(|| {
                    McpError::invalid_params(format!("tenant `{target}` does not exist"))
                })?;
            p.check_grant(ctx, &policy.roles, &roles).await?;
            let member = Member {
                id: required(&args, "principal")?,
                kind,
                name: string(&args, "name")?.unwrap_or_default(),
                roles,
                disabled: boolean(&args, "disabled")?,
            };
            p.directory()
                .put_member(&target, &member)
                .await
                .map_err(policy_err)?;
            Ok(ok(json!({ "tenant": target, "member": member })))
        }
        "remove_tenant_user" => {
            let target = p.target_tenant(ctx, &args)?;
            let principal = required(&args, "principal")?;
            let removed = p
                .directory()
                .remove_member(&target, &principal)
                .await
                .map_err(policy_err)?;
            Ok(ok(
                json!({ "tenant": target, "principal": principal, "removed": removed }),
            ))
        }
        "list_tenant_users" => {
            let target = p.target_tenant(ctx, &args)?;
            let (members, _, _) = p.directory().describe(&target).await.map_err(policy_err)?;
            Ok(ok(json!({ "tenant": target, "members": members })))
        }
        "create_role" => {
            let target = p.target_tenant(ctx, &args)?;
            let name = required(&args, "name")?;
            let level = args
                .get("level")
                .and_then(Value::as_u64)
                .filter(|l| *l <= 1_000_000)
                .ok_or_else(|| {
                    McpError::invalid_params("`level` must be an integer from 0 to 1000000")
                })? as u32;
            let perms = strings(&args, "permissions")?
                .iter()
                .map(|s| {
                    Permission::parse(s).ok_or_else(|| {
                        McpError::invalid_params(format!(
                            "`permissions`: {s:?} is not read, write, execute, admin or delegate"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (own_level, own_perms, _) = p.caller_rights(ctx).await?;
            if level > own_level {
                return Err(McpError::forbidden(format!(
                    "level {level} is above the caller's own level {own_level}"
                )));
            }
            if let Some(extra) = perms.iter().find(|x| !own_perms.contains(**x)) {
                return Err(McpError::forbidden(format!(
                    "the caller does not hold the `{}` permission it would grant",
                    extra.as_str()
                )));
            }
            let role = Role {
                name,
                level,
                permissions: Permissions::of(&perms),
            };
            p.directory()
                .put_role(&target, &role)
                .await
                .map_err(policy_err)?;
            Ok(ok(json!({ "tenant": target, "role": role })))
        }
        "list_roles" => {
            let target = p.target_tenant(ctx, &args)?;
            let (_, roles, _) = p.directory().describe(&target).await.map_err(policy_err)?;
            Ok(ok(json!({ "tenant": target, "roles": roles })))
        }
        "set_permission_rule" => {
            let target = p.target_tenant(ctx, &args)?;
            let kind = match string(&args, "kind")?.as_deref() {
                None | Some("tool") => RuleKind::Tool,
                Some("prompt") => RuleKind::Prompt,
                Some("resource") => RuleKind::Resource,
                Some(other) => {
                    return Err(McpError::invalid_params(format!(
                        "`kind`: {other:?} is not tool, prompt or resource"
                    )));
                }
            };
            let order = match args.get("order") {
                None | Some(Value::Null) => 0,
                Some(v) => v
                    .as_i64()
                    .ok_or_else(|| McpError::invalid_params("`order` must be an integer"))?,
            };
            let rule = StoredRule {
                id: required(&args, "id")?,
                order,
                rule: PermissionRuleConfig {
                    pattern: required(&args, "pattern")?,
                    kind,
                    min_role: string(&args, "min_role")?,
                    permission: string(&args, "permission")?,
                    deny: boolean(&args, "deny")?,
                    audit: boolean(&args, "audit")?,
                    approval: boolean(&args, "approval")?,
                    condition: string(&args, "condition")?,
                },
            };
            p.directory()
                .put_rule(&target, &rule)
                .await
                .map_err(policy_err)?;
            Ok(ok(json!({ "tenant": target, "rule": rule })))
        }
        "delete_permission_rule" => {
            let target = p.target_tenant(ctx, &args)?;
            let id = required(&args, "id")?;
            let deleted = p
                .directory()
                .delete_rule(&target, &id)
                .await
                .map_err(policy_err)?;
            Ok(ok(
                json!({ "tenant": target, "id": id, "deleted": deleted }),
            ))
        }
        "list_permission_rules" => {
            let target = p.target_tenant(ctx, &args)?;
            let (_, _, rules) = p.directory().describe(&target).await.map_err(policy_err)?;
            Ok(ok(json!({ "tenant": target, "rules": rules })))
        }
        "check_tenant_permission" => check_permission(p, ctx, &args).await,
        other if crate::keys::handles(other) => crate::keys::call(p, ctx, other, args).await,
        other if crate::upstreams::handles(other) => {
            crate::upstreams::call(p, ctx, other, args).await
        }
        other => Err(McpError::invalid_params(format!("unknown tool: {other}"))),
    }
}

async fn check_permission(
    p: &AdminProvider,
    ctx: &CallContext,
    args: &Map<String, Value>,
) -> Result<Value, McpError> {
    let target_tenant = p.target_tenant(ctx, args)?;
    let policy = p
        .directory()
        .policy(&target_tenant)
        .await
        .map_err(policy_err)?
        .ok_or_else(|| {
            McpError::invalid_params(format!("tenant `{target_tenant}` does not exist"))
        })?;
    let (tool, prompt, resource) = (
        string(args, "tool")?,
        string(args, "prompt")?,
        string(args, "resource")?,
    );
    let target = match (&tool, &prompt, &resource) {
        (Some(t), None, None) => Target::Tool(t),
        (None, Some(t), None) => Target::Prompt(t),
        (None, None, Some(r)) => Target::Resource(r),
        _ => {
            return Err(McpError::invalid_params(
                "name exactly one of `tool`, `prompt` or `resource`",
            ));
        }
    };
    let principal = string(args, "principal")?.unwrap_or_default();
    let roles = match policy.roles_of(&principal, &strings(args, "roles")?) {
        Some(r) => r,
        None => {
            return Ok(ok(
                json!({ "allowed": false, "reason": format!("principal `{principal}` is disabled") }),
            ));
        }
    };
    let arguments = match args.get("arguments") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return Err(McpError::invalid_params("`arguments` must be an object")),
    };
    let declared = match (&target, p.catalog()) {
        (Target::Tool(name), Some(catalog)) => {
            let def = catalog.tool(ctx, name).await?;
            cellgate_policy::declared_requirement(def.as_ref().map(|t| &t.extra))
        }
        _ => None,
    };
    let req = policy.matrix.requirement(&target, declared);
    let caller = cellgate_policy::Caller {
        id: &principal,
        kind: "user",
        roles: &roles,
        tenant: &target_tenant,
        claims: &Value::Null,
    };
    let access = cellgate_policy::check(&req, &policy.roles, &caller, &target, Some(&arguments));
    let (level, perms) = policy.roles.effective(&roles);
    Ok(ok(json!({
        "tenant": target_tenant,
        "allowed": access.allowed,
        "reason": access.reason,
        "audit": access.audit,
        "approval": access.approval,
        "roles": roles,
        "level": level,
        "permissions": perms,
    })))
}
