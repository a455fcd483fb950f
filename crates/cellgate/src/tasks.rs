//! `cellgate task …` and `cellgate workflow …`: the task queue and workflow
//! engine from the command line, as the local operator of the operator
//! tenant. Task commands are thin clients of the orchestration tools;
//! `workflow run` drives a run in this process and shows its phases live.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use cellgate_config::Config;
use cellgate_kernel::Identity;
use serde_json::{Value, json};

use crate::admin::{parse_args, run_tool};
use crate::app;

#[derive(clap::Subcommand, Debug)]
pub enum TaskCommand {
    /// Queue a tool call: `cellgate task submit echo message=hi --queue default`.
    Submit {
        tool: String,
        /// Arguments as key=value (values that parse as JSON are JSON).
        args: Vec<String>,
        #[arg(long, default_value = "default")]
        queue: String,
        /// Higher runs first.
        #[arg(long, default_value_t = 0)]
        priority: i32,
        /// A repeated submission with the same key returns the first task.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show one task: status, attempts, result or error.
    Get { id: String },
    /// List recent tasks.
    List {
        #[arg(long)]
        status: Option<String>,
    },
    /// Cancel a queued or running task.
    Cancel { id: String },
}

#[derive(clap::Subcommand, Debug)]
pub enum WorkflowCommand {
    /// Check a workflow definition and report every problem with its location.
    Check { file: PathBuf },
    /// Run a workflow to its end in this process, showing each phase.
    Run {
        file: PathBuf,
        /// The workflow's input, as JSON.
        #[arg(long, default_value = "{}")]
        input: String,
    },
    /// Show a run: status, history, checkpoints.
    Get { id: String },
    /// Print the JSON Schema of workflow definitions.
    Schema,
}

pub async fn task(config: Config, command: TaskCommand) -> anyhow::Result<ExitCode> {
    let (tool, args) = match command {
        TaskCommand::Submit {
            tool,
            args,
            queue,
            priority,
            idempotency_key,
        } => {
            let mut a = json!({
                "tool": tool,
                "arguments": parse_args(&args)?,
                "queue": queue,
                "priority": priority,
            });
            if let Some(k) = idempotency_key {
                a["idempotency_key"] = Value::String(k);
            }
            ("submit_task", a)
        }
        TaskCommand::Get { id } => ("get_task", json!({"id": id})),
        TaskCommand::List { status } => (
            "list_tasks",
            match status {
                Some(s) => json!({"status": s}),
                None => json!({}),
            },
        ),
        TaskCommand::Cancel { id } => ("cancel_task", json!({"id": id})),
    };
    let instance = app::build(&config).await?;
    let out = run_tool(&instance, &config, tool, args).await;
    instance.shutdown().await;
    println!("{}", serde_json::to_string_pretty(&out?)?);
    Ok(ExitCode::SUCCESS)
}

fn definition(file: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    if file.extension().is_some_and(|e| e == "toml") {
        toml::from_str::<Value>(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
    } else {
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
    }
}

pub async fn workflow(config: Config, command: WorkflowCommand) -> anyhow::Result<ExitCode> {
    if let WorkflowCommand::Schema = command {
        let schema = cellgate_orchestration::workflow::definition_schema();
        println!("{}", serde_json::to_string_pretty(&schema)?);
        return Ok(ExitCode::SUCCESS);
    }
    let instance = app::build(&config).await?;
    let outcome = workflow_on(&instance, &config, command).await;
    instance.shutdown().await;
    outcome
}

async fn workflow_on(
    instance: &app::Instance,
    config: &Config,
    command: WorkflowCommand,
) -> anyhow::Result<ExitCode> {
    let Some(engine) = &instance.orchestration else {
        bail!("orchestration is disabled ([orchestration] enabled = false)");
    };
    let identity = Identity::local_operator(&config.policy.operator_tenant);
    match command {
        WorkflowCommand::Schema => unreachable!("handled before building an instance"),
        WorkflowCommand::Check { file } => {
            engine
                .check_definition(&identity, &definition(&file)?)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!("{}: valid", file.display());
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::Get { id } => {
            let view = engine
                .get_workflow(&identity, &id)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", serde_json::to_string_pretty(&view)?);
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::Run { file, input } => {
            let input: Value = serde_json::from_str(&input)
                .map_err(|e| anyhow::anyhow!("--input is not JSON: {e}"))?;
            let created = engine
                .create_workflow(&identity, &definition(&file)?, input)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            eprintln!("workflow {} ({}) started", created.id, created.name);
            let run = engine
                .execute_workflow(&identity, &created.id)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            follow(engine, &identity, &run.id).await
        }
    }
}

/// Prints each history event as it happens, with a spinner line on a
/// terminal, until the run ends; exits non-zero unless it succeeded.
async fn follow(
    engine: &cellgate_orchestration::Engine,
    identity: &Identity,
    id: &str,
) -> anyhow::Result<ExitCode> {
    let tty = std::io::stderr().is_terminal();
    let mut shown = 0usize;
    let mut spin = 0usize;
    loop {
        let view = engine
            .get_workflow(identity, id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for h in view.history.iter().skip(shown) {
            let e = &h.entry;
            let what = match (&e.phase, &e.step) {
                (Some(p), Some(s)) => format!("{p}/{s}"),
                (Some(p), None) => p.clone(),
                _ => String::new(),
            };
            let iteration = e.iteration.map(|i| format!(" #{i}")).unwrap_or_default();
            let took = e.finished_at_ms.saturating_sub(e.started_at_ms);
            let error = e
                .error
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            if tty {
                eprint!("\r\x1b[K");
            }
            eprintln!("  {:<22} {what}{iteration} ({took} ms){error}", e.event);
        }
        shown = view.history.len();
        let status = view.run.status;
        use cellgate_store::WorkflowStatus as S;
        // A paused run waits for `resume_workflow`; following it further
        // would hang the command.
        if matches!(
            status,
            S::Succeeded | S::Failed | S::Cancelled | S::RolledBack | S::Paused
        ) {
            if tty {
                eprint!("\r\x1b[K");
            }
            eprintln!("workflow {id}: {}", status.as_str());
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "id": id,
                    "status": status.as_str(),
                    "error": view.run.error,
                    "state": view.run.state,
                }))?
            );
            return Ok(if status == S::Succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        if tty {
            const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
            eprint!("\r{} {}", FRAMES[spin % 4], status.as_str());
            let _ = std::io::stderr().flush();
            spin += 1;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}
