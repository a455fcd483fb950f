//! `cellgate tenant …` and other administrative commands. Each is a thin
//! client of an administrative tool: it builds the instance in-process and
//! calls the tool through the pipeline as the local operator of the operator
//! tenant, so the action is authorized and audited like any other call.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use cellgate_config::Config;
use cellgate_kernel::{Call, CallContext, Principal, Request};
use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::app::{self, Instance};

#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Create a tenant and print its id.
    Create {
        /// Display name; the id is derived from it unless --id is given.
        name: String,
        /// The id (1-64 of a-z 0-9 _ -).
        #[arg(long)]
        id: Option<String>,
        /// Rate-limit plan.
        #[arg(long)]
        plan: Option<String>,
    },
    /// List tenants.
    List,
    /// Refuse every call into a tenant; its data stays.
    Suspend { id: String },
    /// Serve a suspended tenant again.
    Resume { id: String },
    /// Delete a tenant and all of its data.
    Delete {
        id: String,
        /// Required: deletion cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

/// `cellgate admin TOOL key=value…`: any administrative tool, for what has
/// no dedicated command (members, roles, rules, permission checks).
#[derive(clap::Args, Debug)]
pub struct AdminCall {
    /// The tool: add_tenant_user, create_role, set_permission_rule,
    /// check_tenant_permission, list_tenant_users, … (`cellgate admin list`).
    pub tool: String,
    /// Arguments as key=value; a value that parses as JSON is taken as JSON
    /// (`roles='["developer"]'`, `level=30`, `deny=true`), else as a string.
    pub args: Vec<String>,
}

/// Builds the arguments object of an [`AdminCall`].
pub fn parse_args(pairs: &[String]) -> anyhow::Result<Value> {
    let mut out = Map::new();
    for pair in pairs {
        let Some((key, raw)) = pair.split_once('=') else {
            bail!("argument {pair:?} is not key=value");
        };
        if key.is_empty() {
            bail!("argument {pair:?} has no key");
        }
        let value =
            serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
        out.insert(key.to_owned(), value);
    }
    Ok(Value::Object(out))
}

pub async fn call(config: Config, call: AdminCall) -> anyhow::Result<ExitCode> {
    let instance = app::build(&config).await?;
    let result = if call.tool == "list" {
        let mut names: Vec<&str> = cellgate_admin::ADMIN_TOOLS.to_vec();
        names.extend([
            "create_api_key",
            "revoke_api_key",
            "list_api_keys",
            "create_audit_log",
            "verify_audit_chain",
        ]);
        println!("{}", names.join("\n"));
        Ok(())
    } else {
        match parse_args(&call.args) {
            Ok(args) => run_tool(&instance, &config, &call.tool, args)
                .await
                .map(|v| println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())),
            Err(e) => Err(e),
        }
    };
    instance.shutdown().await;
    result.map(|()| ExitCode::SUCCESS)
}

/// An id from a display name: lower case, runs of other characters as `-`.
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_matches('-');
    trimmed
        .chars()
        .take(64)
        .collect::<String>()
        .trim_end_matches('-')
        .to_owned()
}

/// Runs one tool as the local operator of the operator tenant; returns the
/// whole `CallToolResult` (a protocol error is an `Err`).
pub async fn run_tool_raw(
    instance: &Instance,
    config: &Config,
    tool: &str,
    args: Value,
) -> anyhow::Result<Value> {
    let mut ctx = CallContext::detached(&config.policy.operator_tenant);
    ctx.principal = Principal::local_operator();
    let arguments: Map<String, Value> = match args {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    instance
        .server
        .pipeline()
        .call(Call {
            ctx,
            request: Request::CallTool {
                name: tool.to_owned(),
                arguments,
            },
        })
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))
}

/// Runs one administrative tool as the local operator; returns its
/// structured result, or an error with the tool's message.
pub async fn run_tool(
    instance: &Instance,
    config: &Config,
    tool: &str,
    args: Value,
) -> anyhow::Result<Value> {
    let result = run_tool_raw(instance, config, tool, args).await?;
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        let text = result["content"][0]["text"]
            .as_str()
            .unwrap_or("the action failed");
        bail!("{text}");
    }
    Ok(result
        .get("structuredContent")
        .cloned()
        .unwrap_or(Value::Null))
}

pub async fn tenant(config: Config, command: TenantCommand) -> anyhow::Result<ExitCode> {
    let instance = app::build(&config).await?;
    let instance = Arc::new(instance);
    let out = match command {
        TenantCommand::Create { name, id, plan } => {
            let id = id.unwrap_or_else(|| slug(&name));
            if id.is_empty() {
                bail!("cannot derive an id from {name:?}; pass --id");
            }
            let mut args = json!({ "id": id, "name": name });
            if let Some(plan) = plan {
                args["plan"] = json!(plan);
            }
            let t = run_tool(&instance, &config, "create_tenant", args).await?;
            println!("{}", t["id"].as_str().unwrap_or_default());
            None
        }
        TenantCommand::List => {
            let all = run_tool(&instance, &config, "list_tenants", json!({})).await?;
            println!("{:<24} {:<10} {:<10} name", "id", "status", "plan");
            for t in all["tenants"].as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<10} {:<10} {}",
                    t["id"].as_str().unwrap_or_default(),
                    t["status"].as_str().unwrap_or_default(),
                    t["plan"].as_str().unwrap_or_default(),
                    t["name"].as_str().unwrap_or_default()
                );
            }
            None
        }
        TenantCommand::Suspend { id } => Some(
            run_tool(
                &instance,
                &config,
                "suspend_tenant",
                json!({ "tenant": id }),
            )
            .await?,
        ),
        TenantCommand::Resume { id } => {
            Some(run_tool(&instance, &config, "resume_tenant", json!({ "tenant": id })).await?)
        }
        TenantCommand::Delete { id, yes } => {
            if !yes {
                bail!("deleting tenant `{id}` removes all of its data; repeat with --yes");
            }
            Some(
                run_tool(
                    &instance,
                    &config,
                    "delete_tenant",
                    json!({ "tenant": id, "confirm": id }),
                )
                .await?,
            )
        }
    };
    if let Some(v) = out {
        println!(
            "{}",
            serde_json::to_string_pretty(&v).context("printing the result")?
        );
    }
    Arc::into_inner(instance)
        .expect("no other owner of the instance")
        .shutdown()
        .await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::{parse_args, slug};
    use serde_json::json;

    #[test]
    fn admin_args() {
        let v = parse_args(&[
            "tenant=acme".into(),
            "roles=[\"developer\"]".into(),
            "level=30".into(),
            "name=a=b".into(),
        ])
        .unwrap();
        assert_eq!(
            v,
            json!({"tenant": "acme", "roles": ["developer"], "level": 30, "name": "a=b"})
        );
        assert!(parse_args(&["novalue".into()]).is_err());
        assert!(parse_args(&["=x".into()]).is_err());
    }

    #[test]
    fn slugs() {
        assert_eq!(slug("Acme Corp"), "acme-corp");
        assert_eq!(slug("  --Team 7!! "), "team-7");
        assert_eq!(slug("ÉÉ"), "");
        assert_eq!(slug(&"a".repeat(80)).len(), 64);
    }
}
