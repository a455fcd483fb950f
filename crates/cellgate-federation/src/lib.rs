//! Federation: many upstream MCP servers behind cellgate's one endpoint.
//!
//! [`Federation`] is a [`cellgate_kernel::Provider`] that speaks MCP as a
//! *client* to each configured upstream (a child process over stdio, a
//! Streamable HTTP endpoint, or a legacy HTTP+SSE endpoint) and offers their
//! tools, prompts, resources and resource templates as one set:
//!
//! - names are namespaced (`<upstream>__<tool>`) and resource URIs rewritten
//!   reversibly (`cellgate+upstream://<upstream>/<original uri>`), so items of
//!   different upstreams never collide and every call finds its way back;
//! - what an upstream asks during a call (sampling, elicitation, roots) and
//!   what it reports (progress, log messages) reaches the client of that
//!   call; a client's cancellation reaches the upstream;
//! - each upstream has a timeout, a circuit breaker, health checks and a
//!   supervisor that restarts it with exponential backoff, recording
//!   [`Incident`]s and escalating those that repairs do not fix (log,
//!   counter, webhook);
//! - an upstream may run several replicas: calls go to the one with the
//!   fewest outstanding requests, and a failed call that is safe to repeat
//!   (read-only or idempotent) is retried on another replica;
//! - results of read-only, idempotent tools can be cached per tenant
//!   ([`ResultCache`], opt-in per tool);
//! - [`Federation::reconcile`] applies a new configuration (hot reload),
//!   restarting only the upstreams whose entry changed;
//! - tool definitions are pinned by fingerprint: a definition that changes
//!   after it was first seen is held back until an operator approves it
//!   ([`Federation::approve_pin`]).
//!
//! It also reads other clients' server lists ([`import_mcp_servers`]) and
//! appends them to a `cellgate.toml` ([`render_upstreams_toml`]).
//!
//! It is *not* an MCP server edge (that is `cellgate-mcp`), nor where
//! policy is decided (pipeline layers see federated tools like any other);
//! it does not persist anything itself: pins and incidents go through the
//! [`PinStore`] and [`IncidentSink`] traits, whose store-backed
//! implementations live elsewhere. The decisions behind it are written down
//! in this crate's README.

mod breaker;
mod cache;
mod escalation;
mod federation;
mod http;
mod import;
mod incidents;
mod metrics;
mod namespace;
mod pins;
mod session;
mod stdio;

pub use breaker::{Admission, Breaker, BreakerState, backoff_delay, retry_delay};
pub use cache::{Lookup, ResultCache, cache_key};
pub use escalation::Escalation;
pub use federation::{
    Federation, FederationBuilder, FederationError, PendingApproval, ReconcileSummary,
    ReplicaStatus, UpstreamState, UpstreamStatus,
};
pub use import::{ImportError, import_mcp_servers, render_upstreams_toml};
pub use incidents::{Incident, IncidentKind, IncidentOutcome, IncidentSink, MemoryIncidents};
pub use metrics::{FederationMetrics, UpstreamLabel, counted};
pub use namespace::{
    Collision, Index, Namespace, Route, URI_SCHEME, unwrap_uri, wrap_content_uris, wrap_uri,
};
pub use pins::{
    MemoryPinStore, PINNED_FIELDS, PinStore, PinStoreError, canonical_json, tool_fingerprint,
};
pub use session::{KNOWN_VERSIONS, OFFERED_VERSION};
