//! `cellgate key|token|audit|login|import`: the remaining operator commands.
//! Key management goes through the administrative tools (so it is audited);
//! token issuing, audit verification and export read the instance's data
//! directly, as only someone who can read the data directory can.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use cellgate_audit::ExportFilter;
use cellgate_auth::{InstanceKey, TokenRequest};
use cellgate_config::Config;
use clap::Subcommand;
use serde_json::json;

use crate::admin::run_tool;
use crate::app;

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create an API key and print it (shown once; stored only as a hash).
    Create {
        #[arg(long)]
        tenant: String,
        /// A role of the key (repeat for several).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Who acts when the key is used (default: key-<random>).
        #[arg(long)]
        principal: Option<String>,
        /// A label for people.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime such as 30d, 12h, 90m or seconds; default: no expiry.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// List a tenant's keys (never the keys themselves).
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a key by its id (the part between `cgk_` and the secret).
    Revoke {
        id: String,
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Print a JWT signed with this instance's key, which the instance accepts.
    Issue {
        #[arg(long)]
        tenant: String,
        /// A role of the token (repeat for several).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// The principal (`sub`); default: dev-<tenant>.
        #[arg(long)]
        principal: Option<String>,
        /// Lifetime such as 1h (default: [auth.local_issuer] token_ttl_secs).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Recompute the hash chain and signed checkpoints; exits 1 and names the
    /// first broken link if anything was changed.
    Verify,
    /// Write entries as JSON lines (for a SIEM) to stdout.
    Export {
        /// Only entries at or after this time (RFC 3339, e.g. 2026-11-25T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only entries after this sequence number (resume a previous export).
        #[arg(long)]
        after_seq: Option<i64>,
        /// Only this tenant's entries.
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// `30d`, `12h`, `90m`, `45s` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30d, 12h, 90m or 3600"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use s, m, h or d")),
    };
    if secs == 0 {
        return Err("a duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

pub async fn key(config: Config, command: KeyCommand) -> anyhow::Result<ExitCode> {
    let instance = app::build(&config).await?;
    let result =
        match command {
            KeyCommand::Create {
                tenant,
                roles,
                principal,
                name,
                ttl,
            } => {
                let principal = principal.unwrap_or_else(|| {
                    format!("key-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
                });
                let mut args = json!({ "tenant": tenant, "principal": principal, "roles": roles });
                if let Some(n) = name {
                    args["name"] = json!(n);
                }
                if let Some(t) = ttl {
                    args["ttl_secs"] = json!(t.as_secs());
                }
                run_tool(&instance, &config, "create_api_key", args).await.map(|v| {
                eprintln!(
                    "API key {} for principal `{}` in tenant `{}` (shown once; store it now):",
                    v["id"].as_str().unwrap_or_default(),
                    v["principal"].as_str().unwrap_or_default(),
                    v["tenant"].as_str().unwrap_or_default()
                );
                println!("{}", v["key"].as_str().unwrap_or_default());
            })
            }
            KeyCommand::List { tenant } => run_tool(
                &instance,
                &config,
                "list_api_keys",
                json!({ "tenant": tenant }),
            )
            .await
            .map(|v| {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v["keys"]).unwrap_or_default()
                )
            }),
            KeyCommand::Revoke { id, tenant } => run_tool(
                &instance,
                &config,
                "revoke_api_key",
                json!({ "tenant": tenant, "id": id }),
            )
            .await
            .map(|_| eprintln!("revoked {id}")),
        };
    instance.shutdown().await;
    result.map(|()| ExitCode::SUCCESS)
}

pub fn token(config: Config, command: TokenCommand) -> anyhow::Result<ExitCode> {
    let TokenCommand::Issue {
        tenant,
        roles,
        principal,
        ttl,
    } = command;
    let principal = principal.unwrap_or_else(|| format!("dev-{tenant}"));
    let role_refs: Vec<&str> = roles.iter().map(String::as_str).collect();
    let mut request = TokenRequest::new(&tenant, &principal, &role_refs);
    request.ttl = ttl;
    let issued =
        cellgate_auth::issue_dev_token(&config, &request).map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "token for `{principal}` in tenant `{tenant}`, roles {roles:?}, valid {} s:",
        issued.expires_in
    );
    println!("{}", issued.token.expose());
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(config: Config, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let store = cellgate_store::Store::open(&app::store_config(&config))
        .await
        .with_context(|| format!("opening the store ({})", config.redacted_store_location()))?;
    let code = match command {
        AuditCommand::Verify => {
            let key = InstanceKey::load_or_create(&config.data_dir())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let report = cellgate_audit::verify(&store.audit(), &[key.verifying_key()])
                .await
                .context("verifying the audit chain")?;
            match &report.first_problem {
                None => {
                    println!(
                        "audit chain intact: {} entries, {} signed checkpoints (signatures cover up to seq {})",
                        report.entries,
                        report.checkpoints,
                        report
                            .last_checkpoint_seq
                            .map_or("-".into(), |s| s.to_string())
                    );
                    ExitCode::SUCCESS
                }
                Some(p) => {
                    eprintln!("audit chain BROKEN at seq {}: {:?}", p.seq, p.kind);
                    eprintln!("  {}", p.detail);
                    eprintln!("  expected: {}", p.expected);
                    eprintln!("  found:    {}", p.found);
                    eprintln!("  {} entries before it verified", report.entries);
                    ExitCode::FAILURE
                }
            }
        }
        AuditCommand::Export {
            since,
            after_seq,
            tenant,
        } => {
            let mut filter = ExportFilter {
                after_seq,
                tenant: tenant
                    .map(|t| cellgate_store::TenantId::parse(&t))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--tenant: {e}"))?,
                ..Default::default()
            };
            if let Some(s) = since {
                filter = filter
                    .since_rfc3339(&s)
                    .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
            }
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let summary = cellgate_audit::export_jsonl(&store.audit(), &filter, &mut out)
                .await
                .context("exporting the audit log")?;
            drop(out);
            eprintln!("{summary:?}");
            ExitCode::SUCCESS
        }
    };
    store.close().await;
    Ok(code)
}

/// Where `cellgate login` keeps the token: `$XDG_CONFIG_HOME/cellgate/token`
/// or `~/.config/cellgate/token`, readable by the owner only.
pub(crate) fn token_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("cellgate").join("token")
}

pub async fn login(url: &str) -> anyhow::Result<ExitCode> {
    let options = cellgate_auth::login::LoginOptions::new(url);
    let token =
        cellgate_auth::login::device_login(&options, |auth| eprintln!("{}", auth.instructions()))
            .await
            .map_err(|e| anyhow::anyhow!("login failed: {e}"))?;
    let path = token_path();
    write_private(&path, token.access_token.expose())?;
    eprintln!("logged in; the token is in {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// Writes a secret file readable by its owner only (0600), creating its
/// directory.
pub(crate) fn write_private(path: &Path, bytes: impl AsRef<[u8]>) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    use std::io::Write as _;
    let mut f = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes.as_ref())?;
    Ok(())
}

pub fn import(file: &Path, target: &Path) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let upstreams = cellgate_federation::import_mcp_servers(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if upstreams.is_empty() {
        bail!(
            "{}: no servers found (expected an `mcpServers` or `servers` object)",
            file.display()
        );
    }
    let existing = match std::fs::read_to_string(target) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", target.display())),
    };
    let rendered = cellgate_federation::render_upstreams_toml(&existing, &upstreams)
        .map_err(|e| anyhow::anyhow!("{}: {e}", target.display()))?;
    // The result must still be a valid configuration before it replaces the file.
    if let Err(problems) = cellgate_config::check_text(&rendered) {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        bail!(
            "the imported configuration would be invalid:\n  {}",
            list.join("\n  ")
        );
    }
    let tmp = target.with_extension("toml.tmp");
    std::fs::write(&tmp, rendered).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, target).with_context(|| format!("replacing {}", target.display()))?;
    for u in &upstreams {
        eprintln!("imported upstream `{}`", u.name);
    }
    eprintln!(
        "{} upstream(s) added to {}",
        upstreams.len(),
        target.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("0h").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
