//! `[[upstreams]]` and `[federation]`: the MCP servers cellgate federates
//! behind its one endpoint. Owned by cellgate-federation.

use std::collections::{BTreeMap, HashMap};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diagnostic::Problem;

/// One upstream MCP server. Its tools, prompts and resources are offered
/// under its name (see `federation.namespace`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Unique name (letters, digits, `_` and `-`; at most 64 characters,
    /// unique regardless of case). It prefixes the upstream's tool and prompt
    /// names and is the authority of its rewritten resource URIs.
    pub name: String,
    /// How to reach the server: `{ type = "stdio", command = "…" }`,
    /// `{ type = "http", url = "…" }` (Streamable HTTP) or
    /// `{ type = "sse", url = "…" }` (the legacy HTTP+SSE transport).
    pub transport: UpstreamTransport,
    /// Offer this upstream at all. A disabled upstream is not started.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Seconds one request to the upstream may take before it is cancelled
    /// and the caller gets a timeout error naming the upstream.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Seconds to start (or connect to) the server and finish the
    /// `initialize` handshake.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// Largest single message accepted from the upstream, in bytes. A stdio
    /// server that writes a longer line is restarted (the answer it was
    /// writing is lost, so the call fails).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u64,
    /// Declare the `roots` capability to this upstream and answer its
    /// `roots/list` with the roots of the client whose call is in flight.
    /// Off by default: an upstream connection is shared by every client of
    /// the gateway, and servers tend to cache roots per connection.
    #[serde(default)]
    pub forward_roots: bool,
    /// Liveness checks with `ping`.
    #[serde(default)]
    pub health: HealthConfig,
    /// What happens when the server exits, hangs or cannot be reached.
    #[serde(default)]
    pub restart: RestartConfig,
    /// The circuit breaker: after repeated failures, calls fail at once
    /// instead of waiting for a timeout.
    #[serde(default)]
    pub breaker: BreakerConfig,
}

fn yes() -> bool {
    true
}
fn default_timeout_secs() -> u64 {
    60
}
fn default_connect_timeout_secs() -> u64 {
    30
}
fn default_max_message_bytes() -> u64 {
    16 * 1024 * 1024
}

impl UpstreamConfig {
    /// An upstream with default settings.
    pub fn new(name: impl Into<String>, transport: UpstreamTransport) -> Self {
        Self {
            name: name.into(),
            transport,
            enabled: true,
            timeout_secs: default_timeout_secs(),
            connect_timeout_secs: default_connect_timeout_secs(),
            max_message_bytes: default_max_message_bytes(),
            forward_roots: false,
            health: HealthConfig::default(),
            restart: RestartConfig::default(),
            breaker: BreakerConfig::default(),
        }
    }
}

/// How cellgate reaches an upstream server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum UpstreamTransport {
    /// A local process speaking newline-delimited JSON-RPC on stdin/stdout;
    /// its stderr goes to cellgate's log.
    Stdio(StdioTransport),
    /// Streamable HTTP (MCP 2025-03-26 and later).
    Http(HttpTransport),
    /// The legacy HTTP+SSE transport (MCP 2024-11-05): a `GET` event stream
    /// plus `POST`s to the endpoint it announces.
    Sse(HttpTransport),
}

/// A server started as a child process.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StdioTransport {
    /// The program: a path, or a name looked up in `PATH` (cellgate's own,
    /// or the `PATH` given in `env`).
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables set for it, on top of cellgate's environment.
    pub env: BTreeMap<String, String>,
    /// Working directory. Default: cellgate's.
    pub cwd: Option<String>,
}

/// A server reached over HTTP.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HttpTransport {
    /// The endpoint, such as `https://mcp.example.com/mcp` (`http` or `https`).
    pub url: String,
    /// Headers sent with every request, such as `Authorization`.
    pub headers: BTreeMap<String, String>,
}

/// Liveness checks with `ping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Seconds between pings; 0 turns health checks off.
    pub interval_secs: u64,
    /// Seconds a ping may take before it counts as failed.
    pub timeout_secs: u64,
    /// Consecutive failed pings after which the upstream is unhealthy and is
    /// restarted (stdio) or reconnected (HTTP).
    pub unhealthy_after: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval_secs: 30,
            timeout_secs: 10,
            unhealthy_after: 3,
        }
    }
}

/// Whether an upstream that exited, hung or lost its connection is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Restart (reconnect) with exponential backoff, whatever the exit code.
    #[default]
    Always,
    /// Leave it down; calls fail until cellgate restarts.
    Never,
}

/// Restarts with exponential backoff: the first after
/// `initial_backoff_ms`, each following one twice as late, at most
/// `max_backoff_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RestartConfig {
    /// `always` or `never`.
    pub policy: RestartPolicy,
    /// Milliseconds before the first restart attempt.
    pub initial_backoff_ms: u64,
    /// Longest wait between two attempts, in milliseconds.
    pub max_backoff_ms: u64,
    /// Seconds an upstream must stay up for its backoff to start again from
    /// `initial_backoff_ms`.
    pub stable_secs: u64,
    /// Consecutive failed repairs after which each further failure is
    /// logged at error level.
    pub alert_after: u32,
    /// Consecutive failed repairs after which cellgate gives up and leaves
    /// the upstream down; 0 never gives up.
    pub max_attempts: u32,
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            policy: RestartPolicy::Always,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            stable_secs: 60,
            alert_after: 5,
            max_attempts: 0,
        }
    }
}

/// The circuit breaker of one upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failed calls (timeouts, lost connections, crashes) that
    /// open the circuit; 0 turns the breaker off. Errors the upstream itself
    /// answers with do not count.
    pub failure_threshold: u32,
    /// Seconds the circuit stays open (calls fail at once) before one trial
    /// call is let through (half-open); its success closes the circuit.
    pub open_secs: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_secs: 30,
        }
    }
}

/// How the names of upstream tools and prompts are made unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NamespaceMode {
    /// Always `<upstream><separator><name>`.
    #[default]
    Always,
    /// Prefixed only when more than one upstream is configured.
    Conditional,
    /// Never prefixed; two upstreams offering the same name is an error
    /// naming both.
    Never,
}

/// What happens when an upstream changes a tool's definition after it was
/// first seen (a "rug pull").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PinMode {
    /// Hide the tool and refuse calls to it until an operator approves the
    /// new definition; an incident is recorded.
    #[default]
    Block,
    /// Record an incident and log a warning, but offer the new definition.
    Warn,
    /// Do not pin tool definitions.
    Off,
}

/// Federation of upstream servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FederationConfig {
    /// `always` (default), `conditional` (prefix only with more than one
    /// upstream) or `never`.
    pub namespace: NamespaceMode,
    /// Put between an upstream's name and a tool or prompt name. Letters,
    /// digits, `_`, `-` and `.` only (what tool names may contain).
    pub separator: String,
    /// Tool-definition pinning: `block` (default), `warn` or `off`.
    pub tool_pinning: PinMode,
    /// Incidents (crashes, hangs, changed tool definitions, …) kept in memory.
    pub incident_history: u32,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            namespace: NamespaceMode::Always,
            separator: "__".into(),
            tool_pinning: PinMode::Block,
            incident_history: 1000,
        }
    }
}

/// Whether `name` is a valid upstream name (see [`UpstreamConfig::name`]).
pub fn is_valid_upstream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl FederationConfig {
    pub(crate) fn validate(&self, p: &mut Vec<Problem>) {
        let sep = &self.separator;
        if sep.is_empty() || sep.len() > 8 {
            p.push(Problem::new(
                "federation.separator",
                format!("{sep:?} must be 1 to 8 characters long"),
            ));
        } else if !sep
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            p.push(Problem::new(
                "federation.separator",
                format!("{sep:?} may contain only letters, digits, `_`, `-` and `.`, the characters of tool names"),
            ));
        }
        if !(1..=1_000_000).contains(&self.incident_history) {
            p.push(Problem::new(
                "federation.incident_history",
                format!("{} is outside 1..=1000000", self.incident_history),
            ));
        }
    }
}

/// Checks every upstream, and that names are unique.
pub(crate) fn validate_upstreams(upstreams: &[UpstreamConfig], p: &mut Vec<Problem>) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, u) in upstreams.iter().enumerate() {
        let key = |k: &str| format!("upstreams[{i}].{k}");
        if u.name.is_empty() {
            p.push(Problem::new(key("name"), "must not be empty"));
        } else if !is_valid_upstream_name(&u.name) {
            p.push(Problem::new(
                key("name"),
                format!(
                    "{:?} may contain only letters, digits, `_` and `-` (at most 64 characters)",
                    u.name
                ),
            ));
        } else if let Some(first) = seen.insert(u.name.to_ascii_lowercase(), i) {
            p.push(Problem::new(
                key("name"),
                format!(
                    "{:?} is already the name of upstreams[{first}] ({:?}); names must be unique regardless of case",
                    u.name, upstreams[first].name
                ),
            ));
        }
        u.validate_at(i, p);
    }
}

impl UpstreamConfig {
    fn validate_at(&self, i: usize, p: &mut Vec<Problem>) {
        let key = |k: &str| format!("upstreams[{i}].{k}");
        match &self.transport {
            UpstreamTransport::Stdio(s) => {
                if s.command.trim().is_empty() {
                    p.push(Problem::new(key("transport.command"), "must not be empty"));
                } else if s.command.trim() != s.command {
                    p.push(Problem::new(
                        key("transport.command"),
                        format!("{:?} has leading or trailing spaces", s.command),
                    ));
                } else if s.command.contains(char::is_whitespace)
                    && s.args.is_empty()
                    && !s.command.contains('/')
                {
                    p.push(Problem::new(
                        key("transport.command"),
                        format!(
                            "{:?} looks like a command line: put the program in `command` and its arguments in `args`",
                            s.command
                        ),
                    ));
                }
                for name in s.env.keys() {
                    if name.is_empty() || name.contains(['=', '\0']) {
                        p.push(Problem::new(
                            key("transport.env"),
                            format!("{name:?} is not an environment variable name"),
                        ));
                    }
                }
                if s.cwd.as_deref() == Some("") {
                    p.push(Problem::new(key("transport.cwd"), "must not be empty"));
                }
            }
            UpstreamTransport::Http(h) | UpstreamTransport::Sse(h) => {
                if let Err(why) = check_http_url(&h.url) {
                    p.push(Problem::new(key("transport.url"), why));
                }
                for name in h.headers.keys() {
                    if name.is_empty()
                        || !name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                    {
                        p.push(Problem::new(
                            key("transport.headers"),
                            format!("{name:?} is not an HTTP header name"),
                        ));
                    }
                }
                for (name, value) in &h.headers {
                    if value.contains(['\r', '\n', '\0']) {
                        p.push(Problem::new(
                            key("transport.headers"),
                            format!("the value of {name:?} contains a line break"),
                        ));
                    }
                }
            }
        }
        let mut range = |k: &str, value: u64, min: u64, max: u64| {
            if !(min..=max).contains(&value) {
                p.push(Problem::new(
                    key(k),
                    format!("{value} is outside {min}..={max}"),
                ));
            }
        };
        range("timeout_secs", self.timeout_secs, 1, 24 * 3600);
        range("connect_timeout_secs", self.connect_timeout_secs, 1, 3600);
        range("max_message_bytes", self.max_message_bytes, 1024, 1 << 30);
        range(
            "health.interval_secs",
            self.health.interval_secs,
            0,
            24 * 3600,
        );
        range("health.timeout_secs", self.health.timeout_secs, 1, 3600);
        range(
            "health.unhealthy_after",
            u64::from(self.health.unhealthy_after),
            1,
            1000,
        );
        range(
            "restart.initial_backoff_ms",
            self.restart.initial_backoff_ms,
            1,
            3_600_000,
        );
        range(
            "restart.max_backoff_ms",
            self.restart.max_backoff_ms,
            self.restart.initial_backoff_ms.max(1),
            24 * 3_600_000,
        );
        range(
            "restart.stable_secs",
            self.restart.stable_secs,
            1,
            24 * 3600,
        );
        range(
            "restart.alert_after",
            u64::from(self.restart.alert_after),
            1,
            1_000_000,
        );
        range(
            "breaker.failure_threshold",
            u64::from(self.breaker.failure_threshold),
            0,
            1_000_000,
        );
        range("breaker.open_secs", self.breaker.open_secs, 1, 24 * 3600);
    }
}

/// Checks that `url` is an absolute `http` or `https` URL with a host.
pub fn check_http_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "{url:?} is not an absolute URL such as https://mcp.example.com/mcp"
        ));
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return Err(format!("{url:?}: the scheme must be http or https"));
    }
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("{url:?} has no host"));
    }
    if url.contains(char::is_whitespace) {
        return Err(format!("{url:?} contains spaces"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(ups: &[UpstreamConfig]) -> Vec<String> {
        let mut p = Vec::new();
        validate_upstreams(ups, &mut p);
        p.into_iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect()
    }

    fn stdio(name: &str, command: &str) -> UpstreamConfig {
        UpstreamConfig::new(
            name,
            UpstreamTransport::Stdio(StdioTransport {
                command: command.into(),
                ..Default::default()
            }),
        )
    }

    #[test]
    fn names_must_be_unique_safe_and_non_empty() {
        let ups = [
            stdio("a", "x"),
            stdio("A", "x"),
            stdio("", "x"),
            stdio("b c", "x"),
            stdio("ok_name-2", "x"),
        ];
        let p = problems(&ups);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("upstreams[1].name") && p[0].contains("upstreams[0]"));
        assert!(p[1].starts_with("upstreams[2].name: must not be empty"));
        assert!(p[2].starts_with("upstreams[3].name"));
    }

    #[test]
    fn commands_and_urls_are_checked() {
        let http = |url: &str| {
            UpstreamConfig::new(
                "h",
                UpstreamTransport::Http(HttpTransport {
                    url: url.into(),
                    headers: BTreeMap::new(),
                }),
            )
        };
        assert!(problems(&[http("https://x.example/mcp")]).is_empty());
        assert!(problems(&[http("http://127.0.0.1:3001/mcp")]).is_empty());
        for bad in [
            "",
            "x.example/mcp",
            "ftp://x/",
            "http:///mcp",
            "http://a b/",
        ] {
            let p = problems(&[http(bad)]);
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
            assert!(p[0].starts_with("upstreams[0].transport.url"), "{p:?}");
        }
        assert_eq!(problems(&[stdio("s", "")]).len(), 1);
        assert_eq!(problems(&[stdio("s", "npx -y server")]).len(), 1);
        assert!(problems(&[stdio("s", "/opt/my tools/server")]).is_empty());
    }

    #[test]
    fn parses_from_toml_with_defaults_and_line_numbers() {
        let text = r#"
[federation]
namespace = "conditional"

[[upstreams]]
name = "memory"
transport = { type = "stdio", command = "mcp-server-memory", env = { MEMORY_FILE_PATH = "/tmp/m.json" } }

[[upstreams]]
name = "remote"
timeout_secs = 5
transport = { type = "http", url = "https://mcp.example.com/mcp", headers = { Authorization = "Bearer x" } }
breaker = { failure_threshold = 2 }
"#;
        let c = crate::check_text(text).unwrap();
        assert_eq!(c.federation.namespace, NamespaceMode::Conditional);
        assert_eq!(c.federation.separator, "__");
        assert_eq!(c.upstreams.len(), 2);
        let UpstreamTransport::Stdio(s) = &c.upstreams[0].transport else {
            panic!("{:?}", c.upstreams[0].transport)
        };
        assert_eq!(s.env["MEMORY_FILE_PATH"], "/tmp/m.json");
        assert_eq!(c.upstreams[0].timeout_secs, 60);
        assert_eq!(c.upstreams[1].timeout_secs, 5);
        assert_eq!(c.upstreams[1].breaker.failure_threshold, 2);
        assert_eq!(c.upstreams[1].breaker.open_secs, 30);

        let bad = "[[upstreams]]\nname = \"x\"\ntransport = { type = \"stdio\", command = \"a\", bogus = 1 }\n";
        assert!(crate::check_text(bad).is_err(), "unknown transport key");
        let dup = "[[upstreams]]\nname = \"x\"\ntransport = { type = \"stdio\", command = \"a\" }\n[[upstreams]]\nname = \"X\"\ntransport = { type = \"http\", url = \"http://h/\" }\n";
        let d = crate::check_text(dup).unwrap_err();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].key.as_deref(), Some("upstreams[1].name"));
        assert_eq!(d[0].line, Some(5), "{d:?}");
    }

    #[test]
    fn separator_is_checked() {
        for (sep, ok) in [("__", true), (".", true), ("", false), ("/", false)] {
            let mut p = Vec::new();
            FederationConfig {
                separator: sep.into(),
                ..Default::default()
            }
            .validate(&mut p);
            assert_eq!(p.is_empty(), ok, "{sep:?}");
        }
    }
}
