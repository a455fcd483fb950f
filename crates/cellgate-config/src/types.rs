//! The sections of `cellgate.toml`. Doc comments here are user documentation:
//! they become the descriptions in `cellgate config schema`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Configuration of one cellgate instance. Every key is optional; every key
/// can be overridden by an environment variable named `CELLGATE_` followed by
/// its dotted path in upper case with `_` for `.` (for example
/// `CELLGATE_SERVER_LISTEN` for `server.listen`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory for the embedded database and the instance's keys. Default:
    /// `$XDG_DATA_HOME/cellgate`, else `~/.local/share/cellgate`.
    pub data_dir: Option<String>,
    /// HTTP listener and the MCP edge's limits.
    pub server: ServerConfig,
    /// Where state is kept.
    pub store: StoreSection,
    /// Diagnostic logging (to stderr).
    pub log: LogConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// The built-in provider that serves the official conformance suite's tools.
    pub demo: DemoConfig,
    /// Authentication of callers.
    pub auth: crate::AuthConfig,
    /// Inspection of arguments and outputs.
    pub inspect: crate::InspectConfig,
    /// The content filter.
    pub filter: crate::FilterConfig,
    /// The tamper-evident audit log.
    pub audit: crate::AuditConfig,
    /// Roles, the permission matrix and tenant rules.
    pub policy: crate::PolicyConfig,
    /// Rate limits per tenant, principal and tool.
    pub rate_limit: crate::RateLimitConfig,
    /// Upstream MCP servers federated behind this gateway (`[[upstreams]]`).
    pub upstreams: Vec<crate::UpstreamConfig>,
    /// How upstreams' tools, prompts and resources are combined.
    pub federation: crate::FederationConfig,
    /// Virtual servers (`[[servers]]`): named subsets of the tools, prompts
    /// and resources above, each served at `/servers/{name}/mcp`.
    pub servers: Vec<crate::VirtualServerConfig>,
    /// Signed WebAssembly tools run in a sandbox.
    pub cells: crate::CellsConfig,
    /// Durable memory and the knowledge graph.
    pub memory: crate::MemoryConfig,
    /// The task queue and workflow engine.
    pub orchestration: crate::OrchestrationConfig,
}

/// HTTP listener and the MCP edge's limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Loopback by default: serving beyond it is a
    /// decision to make explicitly.
    pub listen: String,
    /// Browser origins (`scheme://host[:port]`) allowed besides loopback ones.
    /// Requests with any other `Origin` get 403 (DNS-rebinding protection).
    pub allowed_origins: Vec<String>,
    /// `Host` names allowed besides loopback ones (and the listen address).
    pub allowed_hosts: Vec<String>,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: u64,
    /// Deepest JSON nesting accepted; deeper bodies are refused before parsing.
    pub max_json_depth: u32,
    /// Seconds without traffic after which an MCP session expires.
    pub session_idle_secs: u64,
    /// Milliseconds a client should wait before reconnecting an SSE stream
    /// (the `retry` field of priming events).
    pub sse_retry_ms: u64,
    /// Events kept per SSE stream for resumption with `Last-Event-ID`.
    pub sse_history: u32,
    /// Seconds a server-to-client request (sampling, elicitation, roots)
    /// waits for the client's answer.
    pub request_timeout_secs: u64,
    /// PEM certificate chain: with `tls_key`, serve HTTPS (rustls) instead
    /// of plain HTTP.
    pub tls_cert: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `tls_cert`.
    pub tls_key: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
            max_json_depth: 64,
            session_idle_secs: 1800,
            sse_retry_ms: 1000,
            sse_history: 256,
            request_timeout_secs: 300,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Which database holds state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// One file under the data directory; no server needed.
    #[default]
    Sqlite,
    /// A PostgreSQL server shared by several cellgate replicas.
    Postgres,
}

impl StoreBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreBackend::Sqlite => "sqlite",
            StoreBackend::Postgres => "postgres",
        }
    }
}

/// Where state is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// `sqlite` (embedded, the default) or `postgres`.
    pub backend: StoreBackend,
    /// SQLite only: the database file. Default: `cellgate.db` in the data directory.
    pub path: Option<String>,
    /// PostgreSQL only: `postgres://user:password@host:5432/database`.
    /// Prefer setting it through `CELLGATE_STORE_URL` so the password stays
    /// out of files.
    pub url: Option<String>,
    /// PostgreSQL only: connections in the pool.
    pub max_connections: u32,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Sqlite,
            path: None,
            url: None,
            max_connections: 10,
        }
    }
}

/// Output format of diagnostic logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Diagnostic logging (to stderr).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `info,cellgate_mcp=debug`.
    /// `CELLGATE_LOG` overrides it too.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `GET /metrics`.
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// The built-in provider that serves the official conformance suite's tools,
/// resources and prompts (`test_simple_text`, `test://static-text`, …).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Serve the demo provider (same as `--demo`).
    pub enabled: bool,
}
