//! The cellgate binary: command line, configuration, and the wiring of the
//! edge, pipeline, providers and store into one process.

mod admin;
mod app;
mod bench;
mod cells;
mod ops;
mod pins;
mod reload;
mod runtime_upstreams;
mod tasks;
mod upstream_state;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

// Measured: glibc malloc took ~16% of CPU on the full-pipeline bench, part of
// it contended arena locks; mimalloc's thread-local heaps avoid both.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cellgate",
    version,
    about = "A secure, multi-tenant MCP gateway and tool runtime: many MCP servers, one endpoint, one trust pipeline.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone, Debug, Default)]
pub struct InstanceArgs {
    /// Configuration file (default: ./cellgate.toml when it exists).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Directory for the embedded database and instance keys
    /// (default: $CELLGATE_DATA_DIR, $XDG_DATA_HOME/cellgate or ~/.local/share/cellgate).
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MCP over HTTP: Streamable HTTP at http://ADDR/mcp, legacy SSE at /sse,
    /// health at /healthz and /readyz, Prometheus metrics at /metrics.
    Serve {
        #[command(flatten)]
        instance: InstanceArgs,
        /// Address to listen on (default 127.0.0.1:8080; loopback unless you say otherwise).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Also serve the conformance demo tools, resources and prompts.
        #[arg(long)]
        demo: bool,
    },
    /// Serve MCP over stdin/stdout for one client (Claude Desktop, VS Code, Inspector).
    Stdio {
        #[command(flatten)]
        instance: InstanceArgs,
        /// Also serve the conformance demo tools, resources and prompts.
        #[arg(long)]
        demo: bool,
    },
    /// Inspect the configuration file format.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage tenants (runs the administrative tools as the local operator).
    Tenant {
        #[command(flatten)]
        instance: InstanceArgs,
        #[command(subcommand)]
        command: admin::TenantCommand,
    },
    /// Run any administrative tool as the local operator (`cellgate admin list`).
    Admin {
        #[command(flatten)]
        instance: InstanceArgs,
        #[command(flatten)]
        call: admin::AdminCall,
    },
    /// Manage API keys (runs the administrative tools as the local operator).
    Key {
        #[command(flatten)]
        instance: InstanceArgs,
        #[command(subcommand)]
        command: ops::KeyCommand,
    },
    /// Issue development tokens signed with this instance's key.
    Token {
        #[command(flatten)]
        instance: InstanceArgs,
        #[command(subcommand)]
        command: ops::TokenCommand,
    },
    /// Make, sign, install and manage WebAssembly cells (sandboxed tools).
    Cell {
        #[command(flatten)]
        instance: InstanceArgs,
        #[command(subcommand)]
        command: cells::CellCommand,
    },
    /// Queue tool calls as durable tasks and inspect them.
    Task {
        #[command(flatten)]
        instance: InstanceArgs,
        #[command(subcommand)]
        command: tasks::TaskCommand,
    },
    /// Check and run phased workflows.
    Workflow {
        #[command(flatten)]
        instance: InstanceArgs,
        #[command(subcommand)]
        command: tasks::WorkflowCommand,
    },
    /// List and approve changed upstream tool definitions on a running instance.
    Pins {
        #[command(flatten)]
        instance: InstanceArgs,
        #[command(subcommand)]
        command: pins::PinsCommand,
    },
    /// Verify or export the tamper-evident audit log.
    Audit {
        #[command(flatten)]
        instance: InstanceArgs,
        #[command(subcommand)]
        command: ops::AuditCommand,
    },
    /// Sign in to a cellgate instance with the device flow; the token is kept
    /// in ~/.config/cellgate/token.
    Login {
        /// The instance's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
    },
    /// Add the servers of a Claude Desktop / Cursor / VS Code MCP config
    /// (`mcpServers` or `servers` JSON) as upstreams to a cellgate.toml.
    Import {
        /// claude_desktop_config.json, .cursor/mcp.json or .vscode/mcp.json.
        file: PathBuf,
        /// The cellgate.toml to add them to (created if missing).
        #[arg(long, default_value = "cellgate.toml")]
        config: PathBuf,
    },
    /// Measure calls/s and latency over Streamable HTTP against a bare HTTP baseline.
    Bench(bench::BenchArgs),
    /// Print the version and the protocol revisions this build speaks.
    Version,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the JSON Schema of cellgate.toml (generated from the config types).
    Schema,
    /// Check a configuration file; reports every error with its line and key.
    Check {
        /// The file to check (default: ./cellgate.toml).
        file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // A CLI whose output is piped into `head` should end quietly when the
    // pipe closes, as other Unix tools do, not panic in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any
    // thread starts has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Version => {
            println!("cellgate {}", env!("CARGO_PKG_VERSION"));
            println!(
                "MCP protocol revisions: {}",
                cellgate_mcp::protocol::ALL_VERSIONS.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Schema,
        } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&cellgate_config::json_schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let path = file.unwrap_or_else(|| PathBuf::from("cellgate.toml"));
            match cellgate_config::check_file(&path) {
                Ok(_) => {
                    println!("{}: ok", path.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(diagnostics) => {
                    for d in &diagnostics {
                        eprintln!("{}: {d}", path.display());
                    }
                    eprintln!("{}: {} error(s)", path.display(), diagnostics.len());
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Admin { instance, call } => {
            let config = app::load_config(&instance)?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(admin::call(config, call))
        }
        Command::Key { instance, command } => {
            let config = app::load_config(&instance)?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(ops::key(config, command))
        }
        Command::Token { instance, command } => ops::token(app::load_config(&instance)?, command),
        Command::Cell { instance, command } => {
            let config = app::load_config(&instance)?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(cells::run(config, command))
        }
        Command::Task { instance, command } => {
            let config = app::load_config(&instance)?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(tasks::task(config, command))
        }
        Command::Workflow { instance, command } => {
            let config = app::load_config(&instance)?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(tasks::workflow(config, command))
        }
        Command::Pins { instance, command } => {
            let config = app::load_config(&instance)?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(pins::run(config, command))
        }
        Command::Audit { instance, command } => {
            let config = app::load_config(&instance)?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(ops::audit(config, command))
        }
        Command::Login { url } => {
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(ops::login(&url))
        }
        Command::Import { file, config } => ops::import(&file, &config),
        Command::Tenant { instance, command } => {
            let config = app::load_config(&instance)?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(admin::tenant(config, command))
        }
        Command::Serve {
            instance,
            listen,
            demo,
        } => {
            // The same steps again on every reload, so the command line
            // keeps overriding the file.
            let path = instance
                .config
                .clone()
                .or_else(cellgate_config::default_config_path);
            let load: reload::Loader = Arc::new(move || {
                let mut config = app::load_config(&instance)?;
                if let Some(l) = &listen {
                    config.server.listen = l.clone();
                }
                config.demo.enabled |= demo;
                Ok(config)
            });
            let config = load()?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(app::serve(config, Some((path, load))))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stdio { instance, demo } => {
            let mut config = app::load_config(&instance)?;
            config.demo.enabled |= demo;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(app::stdio(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(bench::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
