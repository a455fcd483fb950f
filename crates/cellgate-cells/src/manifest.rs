//! The cell manifest: what a cell is, what it offers, what it may touch and
//! how much it may use. Parsed from JSON or TOML, validated field by field,
//! and serialised canonically for signing.

use std::collections::HashSet;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest cell name; with `__` and a tool name it stays within MCP's 128.
pub const CELL_NAME_MAX: usize = 48;
/// Longest tool name inside a cell.
pub const TOOL_NAME_MAX: usize = 64;
/// Most tools one cell may offer.
pub const TOOLS_MAX: usize = 64;
/// Most directory grants, network grants and environment variables.
pub const GRANTS_MAX: usize = 32;
/// Longest description or author, in bytes.
pub const TEXT_MAX: usize = 4096;

/// Hard ceilings on what any manifest may ask for; a deployment's own
/// ceilings ([`crate::CellsConfig`]) may be lower.
pub const MEMORY_BYTES_MAX: u64 = 4 << 30;
pub const MEMORY_BYTES_MIN: u64 = 64 << 10;
pub const FUEL_MAX: u64 = 1_000_000_000_000;
pub const FUEL_MIN: u64 = 1_000;
pub const TIMEOUT_MS_MAX: u64 = 300_000;
pub const OUTPUT_BYTES_MAX: u64 = 64 << 20;

/// Prefix of the signed message, so a manifest signature can never be
/// mistaken for (or replayed as) a signature over anything else.
pub const SIGNING_DOMAIN: &[u8] = b"cellgate-cell-manifest/v1\0";

/// A cell's manifest.
///
/// Every field is part of the signed canonical form, including defaulted
/// ones: what is signed is exactly what runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "cellgate cell manifest")]
pub struct Manifest {
    /// Cell name: 1-48 of `a-z 0-9 -`, starting with a letter. Tools are
    /// published as `<name>__<tool>`.
    pub name: String,
    /// Version, `MAJOR.MINOR.PATCH` with an optional `-pre` or `+build` suffix.
    pub version: String,
    /// Who wrote the cell (free text, e.g. `Jane Doe <jane@example.com>`).
    pub author: String,
    /// What the cell is for.
    #[serde(default)]
    pub description: String,
    /// The tools the cell offers (at least one).
    pub tools: Vec<ToolSpec>,
    /// What the cell may touch; nothing unless granted.
    #[serde(default)]
    pub permissions: Permissions,
    /// How much one call may use.
    #[serde(default)]
    pub limits: Limits,
    /// How the cell behaves, for clients and retries.
    #[serde(default)]
    pub behaviour: Behaviour,
    /// The WebAssembly module this manifest pins.
    pub module: ModuleSpec,
}

/// One tool of a cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToolSpec {
    /// 1-64 of `A-Z a-z 0-9 _ -`, without `__`.
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments (`"type": "object"`).
    pub input_schema: Map<String, Value>,
    /// JSON Schema of the result (`"type": "object"`), when structured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<ToolAnnotations>,
}

/// MCP tool annotations (hints for clients, never trusted for security).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToolAnnotations {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_hint: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destructive_hint: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent_hint: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_world_hint: Option<bool>,
}

/// Capabilities granted to the cell. The static analysis refuses a module
/// that imports a capability not granted here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Permissions {
    /// Directories the cell sees, by guest path. Where they live on the host
    /// is decided at install, not by the publisher.
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
    /// An empty directory at `/tmp`, new for every call and deleted after
    /// it; only when no `dirs` are granted.
    #[serde(default)]
    pub scratch: bool,
    /// Outbound hosts and ports (components only; command modules get no
    /// sockets).
    #[serde(default)]
    pub network: Vec<NetworkGrant>,
    /// Names of environment variables the cell may receive; their values
    /// are given at install.
    #[serde(default)]
    pub env: Vec<String>,
    /// The real wall and monotonic clocks (otherwise no clock imports).
    #[serde(default)]
    pub clock: bool,
    /// Random numbers (otherwise no `random_get`).
    #[serde(default)]
    pub random: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirGrant {
    /// Absolute guest path such as `/data`.
    pub path: String,
    pub access: Access,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    Read,
    ReadWrite,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::ReadWrite => "read-write",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkGrant {
    /// A DNS name or an IP address.
    pub host: String,
    pub port: u16,
}

/// Per-call resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Linear memory ceiling in bytes (64 KiB to 4 GiB).
    #[serde(default = "default_memory_bytes")]
    pub memory_bytes: u64,
    /// Fuel (roughly, WebAssembly instructions) one call may burn.
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// Wall-clock deadline of one call, in milliseconds (1 to 300000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Largest accepted standard output of one call, in bytes.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: u64,
}

fn default_memory_bytes() -> u64 {
    16 << 20
}
fn default_fuel() -> u64 {
    100_000_000
}
fn default_timeout_ms() -> u64 {
    2_000
}
fn default_max_output_bytes() -> u64 {
    1 << 20
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: default_memory_bytes(),
            fuel: default_fuel(),
            timeout_ms: default_timeout_ms(),
            max_output_bytes: default_max_output_bytes(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Behaviour {
    /// Same arguments, same result.
    #[serde(default)]
    pub deterministic: bool,
    /// Repeating a call changes nothing more.
    #[serde(default)]
    pub idempotent: bool,
    #[serde(default)]
    pub retry: RetryPolicy,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Extra attempts a client may make after a failure (0 to 10).
    #[serde(default)]
    pub max_attempts: u32,
    /// Pause before each retry, in milliseconds (at most 60000).
    #[serde(default)]
    pub backoff_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModuleSpec {
    /// SHA-256 of the module bytes, 64 lowercase hex digits.
    pub sha256: String,
    #[serde(default)]
    pub kind: ModuleKind,
}

/// How the cell is called.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ModuleKind {
    /// A WASI preview 1 command module: `_start`, JSON request on stdin,
    /// JSON result on stdout.
    #[default]
    Command,
    /// A component of the `cellgate:cell/tool` world.
    Component,
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Path of the field, e.g. `tools[1].name`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestErrors(pub Vec<FieldError>);

impl std::error::Error for ManifestErrors {}

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "{}", parts.join("; "))
    }
}

impl ManifestErrors {
    fn one(field: impl Into<String>, message: impl Into<String>) -> Self {
        ManifestErrors(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }
}

impl Manifest {
    /// Parses and validates a JSON manifest.
    pub fn from_json_str(text: &str) -> Result<Manifest, ManifestErrors> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let manifest: Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ManifestErrors::one(
                if path == "." { "manifest".into() } else { path },
                e.inner().to_string(),
            )
        })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Parses and validates a TOML manifest (same fields as JSON).
    pub fn from_toml_str(text: &str) -> Result<Manifest, ManifestErrors> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| ManifestErrors::one("manifest", e.to_string()))?;
        let manifest: Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ManifestErrors::one(
                if path == "." { "manifest".into() } else { path },
                e.inner().to_string(),
            )
        })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Validates a manifest given as a JSON value (as admin tools receive it).
    pub fn from_value(value: Value) -> Result<Manifest, ManifestErrors> {
        let manifest: Manifest = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ManifestErrors::one(
                if path == "." { "manifest".into() } else { path },
                e.inner().to_string(),
            )
        })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks every field; reports every problem, not just the first.
    pub fn validate(&self) -> Result<(), ManifestErrors> {
        let mut errors = Vec::new();
        let mut err = |field: String, message: String| errors.push(FieldError { field, message });

        if let Err(m) = check_cell_name(&self.name) {
            err("name".into(), m);
        }
        if !is_version(&self.version) {
            err(
                "version".into(),
                format!(
                    "must look like MAJOR.MINOR.PATCH (optionally -pre or +build), got `{}`",
                    self.version
                ),
            );
        }
        if self.author.trim().is_empty() {
            err("author".into(), "must not be empty".into());
        }
        check_text(&mut err, "author", &self.author);
        check_text(&mut err, "description", &self.description);

        if self.tools.is_empty() {
            err("tools".into(), "a cell must offer at least one tool".into());
        }
        if self.tools.len() > TOOLS_MAX {
            err(
                "tools".into(),
                format!("at most {TOOLS_MAX} tools, got {}", self.tools.len()),
            );
        }
        let mut names = HashSet::new();
        for (i, tool) in self.tools.iter().enumerate() {
            let at = |f: &str| format!("tools[{i}].{f}");
            if let Err(m) = check_tool_name(&tool.name) {
                err(at("name"), m);
            } else if !names.insert(tool.name.as_str()) {
                err(at("name"), format!("duplicate tool name `{}`", tool.name));
            }
            if tool.description.trim().is_empty() {
                err(at("description"), "must not be empty".into());
            }
            check_text(&mut err, &at("description"), &tool.description);
            if tool.input_schema.get("type") != Some(&Value::String("object".into())) {
                err(
                    at("inputSchema"),
                    "must be a JSON Schema with \"type\": \"object\"".into(),
                );
            }
            if let Some(out) = &tool.output_schema
                && out.get("type") != Some(&Value::String("object".into()))
            {
                err(
                    at("outputSchema"),
                    "must be a JSON Schema with \"type\": \"object\"".into(),
                );
            }
            if let Some(a) = &tool.annotations
                && let Some(t) = &a.title
            {
                check_text(&mut err, &at("annotations.title"), t);
            }
        }

        let p = &self.permissions;
        if p.dirs.len() > GRANTS_MAX {
            err(
                "permissions.dirs".into(),
                format!("at most {GRANTS_MAX} grants"),
            );
        }
        let mut seen = HashSet::new();
        for (i, d) in p.dirs.iter().enumerate() {
            let field = format!("permissions.dirs[{i}].path");
            if let Err(m) = check_guest_path(&d.path) {
                err(field, m);
            } else if !seen.insert(d.path.as_str()) {
                err(field, format!("`{}` is granted twice", d.path));
            }
        }
        if p.scratch && !p.dirs.is_empty() {
            err(
                "permissions.scratch".into(),
                "a scratch directory is only given to cells without directory grants".into(),
            );
        }
        if p.network.len() > GRANTS_MAX {
            err(
                "permissions.network".into(),
                format!("at most {GRANTS_MAX} grants"),
            );
        }
        if !p.network.is_empty() && self.module.kind == ModuleKind::Command {
            err(
                "permissions.network".into(),
                "a WASI preview 1 command module cannot open sockets; network grants need a component (module.kind \"component\")".into(),
            );
        }
        for (i, n) in p.network.iter().enumerate() {
            if !is_host(&n.host) {
                err(
                    format!("permissions.network[{i}].host"),
                    format!("`{}` is not a DNS name or IP address", n.host),
                );
            }
            if n.port == 0 {
                err(
                    format!("permissions.network[{i}].port"),
                    "must be 1-65535".into(),
                );
            }
        }
        if p.env.len() > GRANTS_MAX {
            err(
                "permissions.env".into(),
                format!("at most {GRANTS_MAX} variables"),
            );
        }
        let mut seen = HashSet::new();
        for (i, v) in p.env.iter().enumerate() {
            let field = format!("permissions.env[{i}]");
            if !is_env_name(v) {
                err(
                    field,
                    format!(
                        "`{v}` is not a variable name (A-Z a-z 0-9 _, not starting with a digit)"
                    ),
                );
            } else if !seen.insert(v.as_str()) {
                err(field, format!("`{v}` is listed twice"));
            }
        }

        let l = &self.limits;
        if !(MEMORY_BYTES_MIN..=MEMORY_BYTES_MAX).contains(&l.memory_bytes) {
            err(
                "limits.memoryBytes".into(),
                format!(
                    "must be {MEMORY_BYTES_MIN}-{MEMORY_BYTES_MAX}, got {}",
                    l.memory_bytes
                ),
            );
        }
        if !(FUEL_MIN..=FUEL_MAX).contains(&l.fuel) {
            err(
                "limits.fuel".into(),
                format!("must be {FUEL_MIN}-{FUEL_MAX}, got {}", l.fuel),
            );
        }
        if !(1..=TIMEOUT_MS_MAX).contains(&l.timeout_ms) {
            err(
                "limits.timeoutMs".into(),
                format!("must be 1-{TIMEOUT_MS_MAX}, got {}", l.timeout_ms),
            );
        }
        if !(1..=OUTPUT_BYTES_MAX).contains(&l.max_output_bytes) {
            err(
                "limits.maxOutputBytes".into(),
                format!("must be 1-{OUTPUT_BYTES_MAX}, got {}", l.max_output_bytes),
            );
        }
        let r = &self.behaviour.retry;
        if r.max_attempts > 10 {
            err(
                "behaviour.retry.maxAttempts".into(),
                format!("must be 0-10, got {}", r.max_attempts),
            );
        }
        if r.backoff_ms > 60_000 {
            err(
                "behaviour.retry.backoffMs".into(),
                format!("must be 0-60000, got {}", r.backoff_ms),
            );
        }
        if !is_sha256_hex(&self.module.sha256) {
            err(
                "module.sha256".into(),
                "must be 64 lowercase hexadecimal digits".into(),
            );
        }

        if errors.is_empty() {
            Ok(())
        } else {
            Err(ManifestErrors(errors))
        }
    }

    /// The tool of this name.
    pub fn tool(&self, name: &str) -> Option<&ToolSpec> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// The bytes a signature covers: [`SIGNING_DOMAIN`] followed by the
    /// canonical JSON of the manifest (object keys sorted by byte order, no
    /// insignificant whitespace, every defaulted field present).
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = SIGNING_DOMAIN.to_vec();
        // A manifest always serialises: every field is plain data.
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        write_canonical(&value, &mut out);
        out
    }
}

/// The JSON Schema of [`Manifest`], from the types' doc comments.
pub fn manifest_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(Manifest)).unwrap_or(Value::Null)
}

/// Canonical JSON: sorted keys, compact. Numbers as serde_json prints them.
pub(crate) fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String((*k).clone()).to_string().as_bytes());
                out.push(b':');
                write_canonical(&map[*k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

fn check_text(err: &mut impl FnMut(String, String), field: &str, text: &str) {
    if text.len() > TEXT_MAX {
        err(
            field.into(),
            format!("at most {TEXT_MAX} bytes, got {}", text.len()),
        );
    }
}

/// Cell names: `[a-z][a-z0-9-]{0,47}`.
pub fn check_cell_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= CELL_NAME_MAX
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be 1-{CELL_NAME_MAX} of a-z 0-9 -, starting with a letter, got `{name}`"
        ))
    }
}

fn check_tool_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= TOOL_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !name.contains("__");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be 1-{TOOL_NAME_MAX} of A-Z a-z 0-9 _ - without `__`, got `{name}`"
        ))
    }
}

/// Guest directory paths: absolute, normalised, not `/` itself.
fn check_guest_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.len() < 2 {
        return Err(format!("must be an absolute path below `/`, got `{path}`"));
    }
    if path.len() > 255 || path.ends_with('/') {
        return Err(format!(
            "must be at most 255 bytes and not end in `/`, got `{path}`"
        ));
    }
    for part in path[1..].split('/') {
        if part.is_empty() || part == "." || part == ".." || part.contains('\0') {
            return Err(format!(
                "must be normalised (no empty, `.` or `..` parts), got `{path}`"
            ));
        }
    }
    Ok(())
}

fn is_version(v: &str) -> bool {
    let core_end = v.find(['-', '+']).unwrap_or(v.len());
    let (core, rest) = v.split_at(core_end);
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
        && v.len() <= 64
        && (rest.is_empty()
            || (rest.len() > 1
                && rest[1..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'+')))
}

fn is_host(h: &str) -> bool {
    if h.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn is_env_name(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && !v.starts_with(|c: char| c.is_ascii_digit())
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "name": "text-stats",
            "version": "1.0.0",
            "author": "cellgate",
            "tools": [{ "name": "count", "description": "Count words", "inputSchema": { "type": "object" } }],
            "module": { "sha256": "a".repeat(64) }
        })
    }

    #[test]
    fn a_minimal_manifest_gets_defaults() {
        let m = Manifest::from_value(sample()).unwrap();
        assert_eq!(m.limits, Limits::default());
        assert_eq!(m.module.kind, ModuleKind::Command);
        assert!(m.permissions.dirs.is_empty());
    }

    #[test]
    fn every_bad_field_is_reported_by_path() {
        let mut v = sample();
        v["name"] = json!("Bad_Name");
        v["version"] = json!("1.0");
        v["tools"][0]["name"] = json!("a__b");
        v["permissions"] =
            json!({ "dirs": [{ "path": "/data/../etc", "access": "read" }], "env": ["1X"] });
        v["limits"] = json!({ "timeoutMs": 0 });
        v["module"]["sha256"] = json!("XYZ");
        let errs = Manifest::from_value(v).unwrap_err().0;
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "name",
                "version",
                "tools[0].name",
                "permissions.dirs[0].path",
                "permissions.env[0]",
                "limits.timeoutMs",
                "module.sha256"
            ]
        );
    }

    #[test]
    fn unknown_fields_name_their_path() {
        let mut v = sample();
        v["limits"] = json!({ "fuell": 5 });
        let errs = Manifest::from_value(v).unwrap_err().0;
        assert_eq!(errs[0].field, "limits.fuell");
        assert!(errs[0].message.contains("fuell"), "{}", errs[0].message);
    }

    #[test]
    fn toml_and_json_agree_and_signing_bytes_are_canonical() {
        let toml_text = format!(
            "name = \"text-stats\"\nversion = \"1.0.0\"\nauthor = \"cellgate\"\n\
             [[tools]]\nname = \"count\"\ndescription = \"Count words\"\ninputSchema = {{ type = \"object\" }}\n\
             [module]\nsha256 = \"{}\"\n",
            "a".repeat(64)
        );
        let from_toml = Manifest::from_toml_str(&toml_text).unwrap();
        let from_json = Manifest::from_value(sample()).unwrap();
        assert_eq!(from_toml, from_json);
        assert_eq!(from_toml.signing_bytes(), from_json.signing_bytes());
        let text =
            String::from_utf8(from_json.signing_bytes()[SIGNING_DOMAIN.len()..].to_vec()).unwrap();
        assert!(
            text.starts_with("{\"author\":\"cellgate\",\"behaviour\":"),
            "{text}"
        );
    }

    #[test]
    fn schema_describes_the_fields() {
        let schema = manifest_schema();
        let props = &schema["properties"];
        for key in [
            "name",
            "tools",
            "permissions",
            "limits",
            "behaviour",
            "module",
        ] {
            assert!(props.get(key).is_some(), "schema lacks {key}");
        }
    }
}
