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
    /// instead of waiting for a timeout. Each replica has its own.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Several copies of this server, load-balanced (least outstanding
    /// requests) with failover: `replicas = 3` starts three processes of a
    /// stdio command; `replicas = [{ url = "…" }, { url = "…" }]` lists the
    /// endpoints of an http or sse upstream (then leave `transport.url`
    /// out; `transport.headers` apply to every endpoint, an endpoint's own
    /// `headers` are added on top). Default: one.
    #[serde(default)]
    pub replicas: Replicas,
    /// Failover of failed calls to another replica. Only calls that are safe
    /// to repeat are retried: tools annotated `readOnlyHint` or
    /// `idempotentHint`, and reads (`resources/read`, `prompts/get`, lists,
    /// completions).
    #[serde(default)]
    pub retry: RetryConfig,
    /// Caching of tool results. Off unless `cache.tools` names tools.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Where this upstream's escalated incidents are sent, instead of
    /// `federation.escalation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<EscalationConfig>,
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
            replicas: Replicas::default(),
            retry: RetryConfig::default(),
            cache: CacheConfig::default(),
            escalation: None,
        }
    }

    /// How many replicas this upstream runs.
    pub fn replica_count(&self) -> usize {
        match &self.replicas {
            Replicas::Count(n) => usize::try_from(*n).unwrap_or(1).max(1),
            Replicas::Endpoints(list) => list.len().max(1),
        }
    }

    /// The configuration of replica `index` (`0..replica_count()`): this
    /// upstream with the replica's endpoint in its transport, and
    /// `replicas` set to one.
    pub fn replica(&self, index: usize) -> UpstreamConfig {
        let mut one = self.clone();
        one.replicas = Replicas::Count(1);
        if let (Replicas::Endpoints(list), UpstreamTransport::Http(h) | UpstreamTransport::Sse(h)) =
            (&self.replicas, &mut one.transport)
            && let Some(e) = list.get(index)
        {
            h.url = e.url.clone();
            h.headers
                .extend(e.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        one
    }
}

/// The copies of one upstream server.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Replicas {
    /// This many processes of a stdio command (1 to 64).
    Count(u32),
    /// These endpoints of an http or sse upstream (1 to 64).
    Endpoints(Vec<ReplicaEndpoint>),
}

impl Default for Replicas {
    fn default() -> Self {
        Replicas::Count(1)
    }
}

impl<'de> Deserialize<'de> for Replicas {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Replicas;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a number of copies (stdio: `replicas = 3`) or a list of endpoints (http, sse: `replicas = [{ url = \"…\" }, …]`)",
                )
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Replicas, E> {
                u32::try_from(v)
                    .map(Replicas::Count)
                    .map_err(|_| E::custom(format!("{v} replicas is far too many (at most 64)")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Replicas, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v} is not a number of replicas")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Replicas, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = seq.next_element::<ReplicaEndpoint>()? {
                    out.push(e);
                }
                Ok(Replicas::Endpoints(out))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// One endpoint of an http or sse upstream with replicas.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicaEndpoint {
    /// The endpoint, such as `https://mcp-2.example.com/mcp`.
    pub url: String,
    /// Headers for this endpoint only, added to `transport.headers`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Failover: a failed call that is safe to repeat is tried again on
/// another replica, after a jittered exponential backoff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts of one call in all, the first included, each on a different
    /// replica (so at most the number of replicas); 1 turns failover off.
    pub max_attempts: u32,
    /// Milliseconds before the first retry; each further retry waits twice
    /// as long, at most `max_backoff_ms`, then a random 50–100 % of that.
    pub initial_backoff_ms: u64,
    /// Longest wait before a retry, in milliseconds.
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff_ms: 20,
            max_backoff_ms: 1000,
        }
    }
}

/// The result cache of one upstream. A result is cached only for tools
/// matched by `tools` *and* annotated both `readOnlyHint` and
/// `idempotentHint`; results with `isError` are never cached. Entries are
/// per tenant: the key is tenant + tool + arguments (canonical JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Tool names as the upstream gives them (not prefixed); `*` matches
    /// any run of characters, `?` one character. Empty (default): nothing
    /// is cached.
    pub tools: Vec<String>,
    /// Seconds a cached result is served.
    pub ttl_secs: u64,
    /// Most results kept; the least recently used go first.
    pub max_entries: u32,
    /// Most bytes of results (and keys) kept; the least recently used go
    /// first. A result larger than a quarter of this is not cached.
    pub max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            tools: Vec::new(),
            ttl_secs: 60,
            max_entries: 1000,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Where escalated incidents are announced. An incident escalates once,
/// when it reaches `restart.alert_after` failed repairs: it is logged at
/// error level, counted (metric `federation_escalations`) and, with a
/// `webhook_url`, POSTed there as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EscalationConfig {
    /// `http` or `https` URL that receives a `POST` with a JSON body
    /// (`{"event": "incident_escalated", "incident": {…}, …}`). Unset: no
    /// webhook. A failed delivery is logged, not retried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Headers sent with the webhook, such as `Authorization`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Seconds the webhook may take.
    pub timeout_secs: u64,
}

impl Default for EscalationConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            headers: BTreeMap::new(),
            timeout_secs: 5,
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
    /// Consecutive failed repairs after which the incident escalates (see
    /// `federation.escalation`) and each further failure is logged at error
    /// level.
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
    /// Where escalated incidents are announced (an upstream's own
    /// `escalation` takes precedence).
    pub escalation: EscalationConfig,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            namespace: NamespaceMode::Always,
            separator: "__".into(),
            tool_pinning: PinMode::Block,
            incident_history: 1000,
            escalation: EscalationConfig::default(),
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
        self.escalation.validate_at("federation.escalation", p);
    }
}

impl EscalationConfig {
    fn validate_at(&self, at: &str, p: &mut Vec<Problem>) {
        if let Some(url) = &self.webhook_url
            && let Err(why) = check_http_url(url)
        {
            p.push(Problem::new(format!("{at}.webhook_url"), why));
        }
        check_headers(&self.headers, &format!("{at}.headers"), p);
        if !(1..=300).contains(&self.timeout_secs) {
            p.push(Problem::new(
                format!("{at}.timeout_secs"),
                format!("{} is outside 1..=300", self.timeout_secs),
            ));
        }
    }
}

/// Checks the federation settings and every upstream as the config file
/// check does (for configurations that arrive at run time: a reload, the
/// admin API). Each problem reads `key: message`.
pub fn check_federation(
    federation: &FederationConfig,
    upstreams: &[UpstreamConfig],
) -> Result<(), Vec<String>> {
    let mut p = Vec::new();
    federation.validate(&mut p);
    validate_upstreams(upstreams, &mut p);
    if p.is_empty() {
        Ok(())
    } else {
        Err(p
            .into_iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect())
    }
}

fn check_headers(headers: &BTreeMap<String, String>, at: &str, p: &mut Vec<Problem>) {
    for name in headers.keys() {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            p.push(Problem::new(
                at,
                format!("{name:?} is not an HTTP header name"),
            ));
        }
    }
    for (name, value) in headers {
        if value.contains(['\r', '\n', '\0']) {
            p.push(Problem::new(
                at,
                format!("the value of {name:?} contains a line break"),
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
                match &self.replicas {
                    Replicas::Endpoints(_) if !h.url.is_empty() => p.push(Problem::new(
                        key("transport.url"),
                        "set either transport.url or a list of replicas, not both (the list names every endpoint)",
                    )),
                    Replicas::Endpoints(_) => {}
                    Replicas::Count(_) => {
                        if let Err(why) = check_http_url(&h.url) {
                            p.push(Problem::new(key("transport.url"), why));
                        }
                    }
                }
                check_headers(&h.headers, &key("transport.headers"), p);
            }
        }
        self.validate_replicas(i, p);
        if let Some(e) = &self.escalation {
            e.validate_at(&key("escalation"), p);
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
        range(
            "retry.max_attempts",
            u64::from(self.retry.max_attempts),
            1,
            10,
        );
        range(
            "retry.initial_backoff_ms",
            self.retry.initial_backoff_ms,
            1,
            60_000,
        );
        range(
            "retry.max_backoff_ms",
            self.retry.max_backoff_ms,
            self.retry.initial_backoff_ms.max(1),
            600_000,
        );
        range("cache.ttl_secs", self.cache.ttl_secs, 1, 7 * 24 * 3600);
        range(
            "cache.max_entries",
            u64::from(self.cache.max_entries),
            1,
            10_000_000,
        );
        range("cache.max_bytes", self.cache.max_bytes, 1024, 1 << 36);
        for (j, pattern) in self.cache.tools.iter().enumerate() {
            if pattern.is_empty() || pattern.contains(char::is_whitespace) {
                p.push(Problem::new(
                    key(&format!("cache.tools[{j}]")),
                    format!("{pattern:?} is not a tool name or glob (no spaces, not empty)"),
                ));
            }
        }
    }

    fn validate_replicas(&self, i: usize, p: &mut Vec<Problem>) {
        let at = format!("upstreams[{i}].replicas");
        let stdio = matches!(self.transport, UpstreamTransport::Stdio(_));
        match &self.replicas {
            Replicas::Count(n) if !(1..=64).contains(n) => {
                p.push(Problem::new(at, format!("{n} is outside 1..=64")));
            }
            Replicas::Count(n) if *n > 1 && !stdio => p.push(Problem::new(
                at,
                "a number of copies applies to stdio upstreams; list the endpoints of an http or sse upstream instead: replicas = [{ url = \"…\" }, { url = \"…\" }]",
            )),
            Replicas::Count(_) => {}
            Replicas::Endpoints(_) if stdio => p.push(Problem::new(
                at,
                "a list of endpoints applies to http and sse upstreams; give a stdio upstream a number of copies instead: replicas = 3",
            )),
            Replicas::Endpoints(list) if list.is_empty() || list.len() > 64 => p.push(
                Problem::new(at, format!("lists {} endpoints; give 1 to 64", list.len())),
            ),
            Replicas::Endpoints(list) => {
                let mut seen: HashMap<&str, usize> = HashMap::new();
                for (j, e) in list.iter().enumerate() {
                    if let Err(why) = check_http_url(&e.url) {
                        p.push(Problem::new(format!("{at}[{j}].url"), why));
                    } else if let Some(first) = seen.insert(e.url.as_str(), j) {
                        p.push(Problem::new(
                            format!("{at}[{j}].url"),
                            format!("{:?} is already replica {first}", e.url),
                        ));
                    }
                    check_headers(&e.headers, &format!("{at}[{j}].headers"), p);
                }
            }
        }
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
    fn replicas_cache_retry_and_escalation_parse_and_are_checked() {
        let text = r#"
[federation.escalation]
webhook_url = "http://127.0.0.1:9/hook"

[[upstreams]]
name = "files"
replicas = 3
transport = { type = "stdio", command = "server" }
cache = { tools = ["read_*", "stat"], ttl_secs = 5 }

[[upstreams]]
name = "web"
transport = { type = "http", headers = { Authorization = "Bearer x" } }
replicas = [{ url = "http://a.example/mcp" }, { url = "http://b.example/mcp", headers = { X-Zone = "b" } }]
retry = { max_attempts = 2 }
escalation = { webhook_url = "https://hooks.example/x", timeout_secs = 2 }
"#;
        let c = crate::check_text(text).unwrap();
        assert_eq!(
            c.federation.escalation.webhook_url.as_deref(),
            Some("http://127.0.0.1:9/hook")
        );
        let files = &c.upstreams[0];
        assert_eq!(files.replicas, Replicas::Count(3));
        assert_eq!(files.replica_count(), 3);
        assert_eq!(files.replica(2).replica_count(), 1);
        assert_eq!(files.cache.tools, ["read_*", "stat"]);
        assert_eq!(files.cache.max_entries, 1000);
        let web = &c.upstreams[1];
        assert_eq!(web.replica_count(), 2);
        assert_eq!(web.retry.max_attempts, 2);
        assert_eq!(web.retry.initial_backoff_ms, 20);
        let UpstreamTransport::Http(b) = web.replica(1).transport else {
            panic!()
        };
        assert_eq!(b.url, "http://b.example/mcp");
        assert_eq!(b.headers["Authorization"], "Bearer x");
        assert_eq!(b.headers["X-Zone"], "b");
        assert_eq!(web.escalation.as_ref().unwrap().timeout_secs, 2);

        let bad = |text: &str| -> Vec<(Option<String>, String)> {
            crate::check_text(text)
                .unwrap_err()
                .into_iter()
                .map(|d| (d.key.clone(), d.to_string()))
                .collect()
        };
        let stdio_list = "[[upstreams]]\nname = \"s\"\nreplicas = [{ url = \"http://a/\" }]\ntransport = { type = \"stdio\", command = \"x\" }\n";
        let d = bad(stdio_list);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].0.as_deref(), Some("upstreams[0].replicas"));
        assert!(d[0].1.contains("replicas = 3"), "{d:?}");
        let http_count = "[[upstreams]]\nname = \"h\"\nreplicas = 2\ntransport = { type = \"http\", url = \"http://a/\" }\n";
        let d = bad(http_count);
        assert_eq!(d[0].0.as_deref(), Some("upstreams[0].replicas"), "{d:?}");
        assert!(d[0].1.contains("list the endpoints"), "{d:?}");
        let both = "[[upstreams]]\nname = \"h\"\nreplicas = [{ url = \"http://a/\" }, { url = \"http://a/\" }, { url = \"nope\" }]\ntransport = { type = \"http\", url = \"http://a/\" }\n";
        let d = bad(both);
        let keys: Vec<_> = d.iter().map(|(k, _)| k.clone().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "upstreams[0].transport.url",
                "upstreams[0].replicas[1].url",
                "upstreams[0].replicas[2].url"
            ],
            "{d:?}"
        );
        let zero = "[[upstreams]]\nname = \"s\"\nreplicas = 0\ntransport = { type = \"stdio\", command = \"x\" }\n";
        assert_eq!(bad(zero)[0].0.as_deref(), Some("upstreams[0].replicas"));
        let word = "[[upstreams]]\nname = \"s\"\nreplicas = \"two\"\ntransport = { type = \"stdio\", command = \"x\" }\n";
        assert!(
            bad(word)[0].1.contains("a number of copies"),
            "{:?}",
            bad(word)
        );
        let hook = "[federation.escalation]\nwebhook_url = \"ftp://x/\"\ntimeout_secs = 0\n";
        let d = bad(hook);
        let keys: Vec<_> = d.iter().map(|(k, _)| k.clone().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "federation.escalation.webhook_url",
                "federation.escalation.timeout_secs"
            ],
            "{d:?}"
        );
        let cache = "[[upstreams]]\nname = \"s\"\ntransport = { type = \"stdio\", command = \"x\" }\ncache = { tools = [\"\"], max_bytes = 1 }\nretry = { max_attempts = 0 }\n";
        let d = bad(cache);
        let keys: Vec<_> = d.iter().map(|(k, _)| k.clone().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "upstreams[0].retry.max_attempts",
                "upstreams[0].cache.max_bytes",
                "upstreams[0].cache.tools[0]"
            ],
            "{d:?}"
        );
        assert!(check_federation(&c.federation, &c.upstreams).is_ok());
        let mut dup = c.upstreams.clone();
        dup[1].name = "FILES".into();
        let e = check_federation(&c.federation, &dup).unwrap_err();
        assert!(e[0].starts_with("upstreams[1].name: "), "{e:?}");
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
