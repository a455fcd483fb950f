//! `cellgate pins list|approve`: tool-definition pins of a *running*
//! instance. An approval must reach the process that holds the blocked
//! definition, so these commands talk to its REST API (as `cellgate login`
//! left you, or with `--token`), never to the database behind its back.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use cellgate_config::Config;
use serde_json::{Value, json};

#[derive(clap::Args, Debug)]
pub struct Target {
    /// The instance's base URL (default: http://<server.listen>).
    #[arg(long)]
    url: Option<String>,
    /// A bearer token (default: CELLGATE_TOKEN, else the one `cellgate login` saved).
    #[arg(long, env = "CELLGATE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum PinsCommand {
    /// Tools whose definition changed since it was pinned, waiting for approval.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Accept a changed definition as the new pin: the tool is offered again.
    Approve {
        /// The upstream's name.
        upstream: String,
        /// The tool as the upstream names it (no namespace prefix).
        tool: String,
        #[command(flatten)]
        target: Target,
    },
}

async fn call(config: &Config, target: &Target, tool: &str, body: Value) -> anyhow::Result<Value> {
    let base = target.url.clone().unwrap_or_else(|| {
        let scheme = if config.server.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", config.server.listen)
    });
    let url = format!("{}/api/v1/tools/{tool}", base.trim_end_matches('/'));
    let token = target.token.clone().or_else(|| {
        std::fs::read_to_string(crate::ops::token_path())
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    });
    let mut request = reqwest::Client::new().post(&url).json(&body);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.with_context(|| {
        format!("reaching the running cellgate at {base} (is it serving? --url)")
    })?;
    let status = response.status();
    let value: Value = response
        .json()
        .await
        .with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() || value.get("isError").and_then(Value::as_bool) == Some(true) {
        let message = value["error"]["message"]
            .as_str()
            .or_else(|| value["content"][0]["text"].as_str())
            .unwrap_or("refused");
        bail!("{tool}: {message} (HTTP {status})");
    }
    Ok(value["structuredContent"].clone())
}

pub async fn run(config: Config, command: PinsCommand) -> anyhow::Result<ExitCode> {
    match command {
        PinsCommand::List { target } => {
            let out = call(&config, &target, "list_upstream_incidents", json!({})).await?;
            let pending = out["pending_approvals"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if pending.is_empty() {
                eprintln!("no changed tool definitions are waiting for approval");
            }
            println!("{}", serde_json::to_string_pretty(&pending)?);
        }
        PinsCommand::Approve {
            upstream,
            tool,
            target,
        } => {
            let out = call(
                &config,
                &target,
                "approve_tool_pin",
                json!({ "upstream": upstream, "tool": tool }),
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
