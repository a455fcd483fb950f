//! Hot reload: when `cellgate.toml` changes on disk, or on SIGHUP, the
//! configuration is read again the way `serve` read it at start, and what
//! can change while running is applied: the upstreams and federation
//! settings (through `Federation::reconcile`, which leaves unchanged
//! upstreams and their sessions alone). Changes to any other section are
//! reported as needing a restart, never half-applied.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cellgate_config::Config;

use crate::runtime_upstreams::UpstreamSources;

/// How often the file is looked at: cheap (one `stat`), and quick enough
/// that an edit shows within a second or two.
const POLL: Duration = Duration::from_secs(1);

/// Re-reads the configuration as at start (file, environment, command-line
/// overrides).
pub type Loader = Arc<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

/// What identifies a version of the file without reading it each second.
fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Watches `path` (if any) and SIGHUP; applies each new configuration.
pub fn spawn(path: Option<PathBuf>, running: Config, load: Loader, sources: Arc<UpstreamSources>) {
    tokio::spawn(async move {
        let mut current = running;
        let mut seen = path.as_ref().and_then(stamp);
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            #[cfg(unix)]
            let sighup = async {
                match hangup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let sighup = std::future::pending::<()>();
            let why = tokio::select! {
                _ = sighup => "SIGHUP",
                _ = tick.tick() => {
                    let now = path.as_ref().and_then(stamp);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    "the configuration file changed"
                }
            };
            if let Some(next) = apply(why, &current, &load, &sources).await {
                current = next;
            }
        }
    });
}

/// One reload. Returns the configuration now in force, or `None` when the
/// new one was refused (the old one stays).
async fn apply(
    why: &str,
    current: &Config,
    load: &Loader,
    sources: &UpstreamSources,
) -> Option<Config> {
    let next = match load() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(reason = why, error = %format!("{e:#}"), "reload refused: the configuration does not load; the running one stays");
            return None;
        }
    };
    match sources
        .set_file(next.federation.clone(), next.upstreams.clone())
        .await
    {
        Ok(summary) => {
            tracing::info!(
                reason = why,
                added = ?summary.added,
                removed = ?summary.removed,
                restarted = ?summary.restarted,
                unchanged = summary.unchanged.len(),
                "configuration reloaded"
            );
            for key in &summary.needs_restart {
                tracing::warn!(key, "changed, but takes effect only when cellgate restarts");
            }
        }
        Err(e) => {
            tracing::error!(reason = why, error = %e, "reload refused: the upstreams were left as they were");
            return None;
        }
    }
    for section in sections_needing_restart(current, &next) {
        tracing::warn!(
            section,
            "changed, but takes effect only when cellgate restarts"
        );
    }
    Some(next)
}

/// The top-level sections other than upstreams and federation that differ.
fn sections_needing_restart(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    a.keys()
        .chain(b.keys().filter(|k| !a.contains_key(*k)))
        .filter(|k| !matches!(k.as_str(), "upstreams" | "federation"))
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sections_other_than_upstreams_need_a_restart() {
        let old = Config::default();
        let mut new = old.clone();
        new.federation.separator = "::".into();
        new.upstreams.push(cellgate_config::UpstreamConfig::new(
            "x",
            cellgate_config::UpstreamTransport::Http(cellgate_config::HttpTransport {
                url: "http://127.0.0.1:1/mcp".into(),
                ..Default::default()
            }),
        ));
        assert!(sections_needing_restart(&old, &new).is_empty());
        new.server.listen = "127.0.0.1:9".into();
        new.demo.enabled = !old.demo.enabled;
        assert_eq!(sections_needing_restart(&old, &new), ["server", "demo"]);
    }
}
