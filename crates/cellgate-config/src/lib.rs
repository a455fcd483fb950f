//! The `cellgate.toml` format: one typed [`Config`] whose doc comments are
//! the documentation, the JSON Schema ([`json_schema`]) and the list of
//! `CELLGATE_*` environment overrides, all at once.
//!
//! Loading goes defaults ← file ← environment; [`check_file`] reports every
//! problem it can find with its line, column and dotted key, so a user can
//! fix a file in one pass.
//!
//! It is *not* where a section is interpreted: the crates that own a concern
//! (store, edge, …) receive plain values from the binary, which maps this
//! crate's types onto theirs. Nothing here does I/O beyond reading the file.

mod audit;
mod auth;
mod cells;
mod diagnostic;
mod env;
mod inspect;
mod policy;
mod servers;
mod services;
mod types;
mod upstreams;
mod validate;

use std::path::{Path, PathBuf};

pub use audit::{AuditBackpressure, AuditConfig};
pub use auth::{
    ApiKeysConfig, AuthConfig, IssuerConfig, JwtAlgorithm, LocalIssuerConfig, PrincipalKindConfig,
};
pub use cells::CellsConfig;
pub use diagnostic::{ConfigError, Diagnostic};
pub use inspect::{
    FilterAction, FilterActionOverrides, FilterActions, FilterConfig, FilterTenantConfig,
    InspectConfig, InspectTenantConfig, NationalIdPattern,
};
pub use policy::{
    PermissionRuleConfig, PolicyConfig, RateLimitBackend, RateLimitConfig, RatePlan, RoleSet,
    RuleKind,
};
pub use servers::{ItemSelection, VirtualServerConfig};
pub use services::{
    EmbeddingBackend, EmbeddingConfig, FusionConfig, FusionMethod, MemoryConfig,
    OrchestrationConfig,
};
pub use types::*;
pub use upstreams::*;

/// The file read when no `--config` is given: `./cellgate.toml`, if present.
pub fn default_config_path() -> Option<PathBuf> {
    let path = PathBuf::from("cellgate.toml");
    path.is_file().then_some(path)
}

/// The JSON Schema (draft 2020-12) of `cellgate.toml`, generated from the
/// types' doc comments.
pub fn json_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(Config).to_value();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("title".into(), "cellgate.toml".into());
    }
    schema
}

/// Every environment variable that overrides a key, with the key it sets,
/// in schema order (for `--help` texts and docs).
pub fn env_overrides() -> Vec<(String, String)> {
    env::leaves(&json_schema())
        .into_iter()
        .map(|leaf| (leaf.var, leaf.path.join(".")))
        .collect()
}

/// Checks a file on its own (no environment): syntax, types, unknown keys and
/// value rules. Returns the parsed configuration or every problem found.
pub fn check_file(path: &Path) -> Result<Config, Vec<Diagnostic>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic::whole_file(format!(
            "cannot read {}: {e}",
            path.display()
        ))]
    })?;
    check_text(&text)
}

/// Like [`check_file`], for text already in memory.
pub fn check_text(text: &str) -> Result<Config, Vec<Diagnostic>> {
    let config = diagnostic::parse_with_positions(text)?;
    let problems = validate::validate(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems.into_iter().map(|p| p.locate(text)).collect())
    }
}

impl Config {
    /// Defaults, then the file at `path` (if any), then `CELLGATE_*`
    /// variables from `env` (pass `std::env::vars()`). Variables that name no
    /// key are ignored; a variable whose value does not fit its key is an
    /// error naming the variable.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        let origin = path.map(|p| p.display().to_string());
        // The file alone first, so its mistakes are reported with lines.
        diagnostic::parse_with_positions(&text).map_err(|diagnostics| ConfigError::Invalid {
            origin: origin.clone(),
            diagnostics,
        })?;
        let mut table: toml::Table = toml::from_str(&text).unwrap_or_default();
        let applied = env::apply(&mut table, env).map_err(|diagnostics| ConfigError::Invalid {
            origin: Some("environment".into()),
            diagnostics,
        })?;
        let config: Config = diagnostic::from_table(table).map_err(|d| ConfigError::Invalid {
            origin: Some(if applied.is_empty() {
                origin.clone().unwrap_or_else(|| "defaults".into())
            } else {
                format!(
                    "{} with {}",
                    origin.clone().unwrap_or_else(|| "defaults".into()),
                    applied.join(", ")
                )
            }),
            diagnostics: vec![d],
        })?;
        let problems = validate::validate(&config);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                origin,
                diagnostics: problems.into_iter().map(|p| p.locate(&text)).collect(),
            })
        }
    }

    /// Where data lives: `data_dir`, else `$XDG_DATA_HOME/cellgate`, else
    /// `~/.local/share/cellgate`, else `./cellgate-data`.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(dir) = &self.data_dir {
            return PathBuf::from(dir);
        }
        if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(xdg).join("cellgate");
        }
        if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(home).join(".local/share/cellgate");
        }
        PathBuf::from("cellgate-data")
    }

    /// The SQLite file (for the `sqlite` backend).
    pub fn sqlite_path(&self) -> PathBuf {
        match &self.store.path {
            Some(p) => PathBuf::from(p),
            None => self.data_dir().join("cellgate.db"),
        }
    }

    /// Where the state lives, fit for printing (no password).
    pub fn redacted_store_location(&self) -> String {
        match self.store.backend {
            StoreBackend::Sqlite => format!("sqlite {}", self.sqlite_path().display()),
            StoreBackend::Postgres => format!(
                "postgres {}",
                redact_url_password(self.store.url.as_deref().unwrap_or(""))
            ),
        }
    }
}

/// Replaces the password of `scheme://user:password@host/...` with `***`.
pub fn redact_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests;
