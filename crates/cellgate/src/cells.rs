//! `cellgate cell …`: make and sign cells locally (`keygen`, `sign`), and
//! manage the installed ones through the `cell_*` administrative tools, as
//! the local operator of the operator tenant.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use cellgate_cells::{CellSignature, Manifest, PublisherKey};
use cellgate_config::Config;
use serde_json::{Map, Value, json};

use crate::admin::{parse_args, run_tool};
use crate::app;

#[derive(clap::Subcommand, Debug)]
pub enum CellCommand {
    /// Create an Ed25519 publisher key; prints its public key for `cell trust`.
    Keygen {
        /// Where to write the key file (JSON, secret: keep it private).
        #[arg(long, default_value = "cell-publisher.key.json")]
        out: PathBuf,
    },
    /// Sign MANIFEST (JSON or TOML) after checking that it pins MODULE's digest.
    Sign {
        manifest: PathBuf,
        module: PathBuf,
        /// The publisher key file from `cell keygen`.
        #[arg(long)]
        key: PathBuf,
        /// Where to write the detached signature (default: MANIFEST with `.sig.json`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Trust a publisher's key for this tenant's installs.
    Trust {
        /// A name for the publisher.
        name: String,
        /// The base64 public key, or a key file from `cell keygen`.
        key: String,
    },
    /// Verify and install a cell (signature, digest, imports), then activate it.
    Install {
        manifest: PathBuf,
        module: PathBuf,
        /// The detached signature from `cell sign` (required unless the
        /// tenant allows unsigned cells: `cellgate admin cell_set_policy allowUnsigned=true`).
        #[arg(long)]
        signature: Option<PathBuf>,
        /// Bind a granted guest directory to a host directory (GUEST=HOST; the
        /// host directory must lie under a `[cells] mount_roots` entry).
        #[arg(long = "mount", value_name = "GUEST=HOST")]
        mounts: Vec<String>,
        /// The value of a granted environment variable (NAME=VALUE).
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Replace an installed cell of the same name.
        #[arg(long)]
        replace: bool,
        /// Install without serving it yet (state VERIFIED; `cell resume` serves it).
        #[arg(long)]
        inactive: bool,
    },
    /// List installed cells and their states.
    List,
    /// Show one cell: manifest, state, signature, behaviour profile.
    Inspect { name: String },
    /// Stop serving a cell's tools (reversible with `resume`).
    Suspend { name: String },
    /// Serve a suspended or verified cell again.
    Resume { name: String },
    /// Revoke a cell for good (it cannot be resumed).
    Revoke { name: String },
    /// Remove a cell and its module.
    Uninstall { name: String },
    /// Call one of a cell's tools: `cellgate cell run text-stats stats text='hello world'`.
    Run {
        cell: String,
        tool: String,
        /// Arguments as key=value (values that parse as JSON are JSON).
        args: Vec<String>,
    },
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn manifest_of(path: &Path) -> anyhow::Result<Manifest> {
    let text = read(path)?;
    let parsed = if path.extension().is_some_and(|e| e == "toml") {
        Manifest::from_toml_str(&text)
    } else {
        Manifest::from_json_str(&text)
    };
    parsed.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Local commands that need no instance.
fn keygen(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        bail!("{} exists; refusing to overwrite a key", out.display());
    }
    let key = PublisherKey::generate();
    let text = serde_json::to_string_pretty(&key.key_file())?;
    crate::ops::write_private(out, &text)?;
    println!("wrote {} (secret; keep it private)", out.display());
    println!("key id:     {}", key.key_id());
    println!("public key: {}", key.public_key_b64());
    println!(
        "trust it with: cellgate cell trust NAME {}",
        key.public_key_b64()
    );
    Ok(())
}

fn sign(manifest: &Path, module: &Path, key: &Path, out: Option<PathBuf>) -> anyhow::Result<()> {
    let m = manifest_of(manifest)?;
    let bytes = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    cellgate_cells::signing::check_digest(&m, &bytes).map_err(|e| {
        anyhow::anyhow!(
            "{e} (set module.sha256 in {} to {})",
            manifest.display(),
            cellgate_cells::signing::sha256_hex(&bytes)
        )
    })?;
    let key = PublisherKey::from_key_file_json(&read(key)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    let signature = key.sign(&m);
    let out = out.unwrap_or_else(|| manifest.with_extension("sig.json"));
    std::fs::write(&out, serde_json::to_string_pretty(&signature)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "signed {} {} ({}): {}",
        m.name,
        m.version,
        key.key_id(),
        out.display()
    );
    Ok(())
}

fn pairs(flag: &str, items: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut out = Map::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            bail!("{flag} {item:?} is not KEY=VALUE");
        };
        out.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    Ok(out)
}

/// The public key of a `trust` argument: a key file, or the key itself.
fn public_key(arg: &str) -> anyhow::Result<String> {
    let path = Path::new(arg);
    if path.is_file() {
        let file: Value = serde_json::from_str(&read(path)?)
            .with_context(|| format!("{} is not a key file", path.display()))?;
        return file["publicKey"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("{} has no publicKey", path.display()));
    }
    Ok(arg.to_owned())
}

pub async fn run(config: Config, command: CellCommand) -> anyhow::Result<ExitCode> {
    let (tool, args) = match command {
        CellCommand::Keygen { out } => return keygen(&out).map(|()| ExitCode::SUCCESS),
        CellCommand::Sign {
            manifest,
            module,
            key,
            out,
        } => return sign(&manifest, &module, &key, out).map(|()| ExitCode::SUCCESS),
        CellCommand::Trust { name, key } => (
            "cell_trust_publisher",
            json!({"name": name, "publicKey": public_key(&key)?}),
        ),
        CellCommand::Install {
            manifest,
            module,
            signature,
            mounts,
            env,
            replace,
            inactive,
        } => {
            let m = manifest_of(&manifest)?;
            let bytes =
                std::fs::read(&module).with_context(|| format!("reading {}", module.display()))?;
            let mut args = json!({
                "manifest": serde_json::to_value(&m)?,
                "module": base64::engine::general_purpose::STANDARD.encode(&bytes),
                "mounts": pairs("--mount", &mounts)?,
                "env": pairs("--env", &env)?,
                "replace": replace,
                "activate": !inactive,
            });
            if let Some(sig) = signature {
                let s: CellSignature = serde_json::from_str(&read(&sig)?)
                    .with_context(|| format!("{} is not a signature file", sig.display()))?;
                args["signature"] = serde_json::to_value(s)?;
            }
            ("cell_install", args)
        }
        CellCommand::List => ("cell_list", json!({})),
        CellCommand::Inspect { name } => ("cell_inspect", json!({"name": name})),
        CellCommand::Suspend { name } => ("cell_suspend", json!({"name": name})),
        CellCommand::Resume { name } => ("cell_resume", json!({"name": name})),
        CellCommand::Revoke { name } => ("cell_revoke", json!({"name": name})),
        CellCommand::Uninstall { name } => {
            ("cell_uninstall", json!({"name": name, "confirm": name}))
        }
        CellCommand::Run { cell, tool, args } => {
            let name = format!("{cell}{}{tool}", cellgate_cells::SEPARATOR);
            let instance = app::build(&config).await?;
            let out = match parse_args(&args) {
                Ok(a) => crate::admin::run_tool_raw(&instance, &config, &name, a).await,
                Err(e) => Err(e),
            };
            instance.shutdown().await;
            let result = out?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            let failed = result.get("isError").and_then(Value::as_bool) == Some(true);
            return Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
    };
    let instance = app::build(&config).await?;
    let out = run_tool(&instance, &config, tool, args).await;
    instance.shutdown().await;
    println!("{}", serde_json::to_string_pretty(&out?)?);
    Ok(ExitCode::SUCCESS)
}
