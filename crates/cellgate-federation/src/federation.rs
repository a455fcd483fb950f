//! [`Federation`]: every upstream behind one [`Provider`]. Each upstream has
//! one or more replicas, each with a supervisor that connects it, watches
//! its health, restarts it with backoff (escalating incidents that repairs
//! do not fix), and keeps the upstream's tool and prompt lists (pinned) up
//! to date. Calls go to the replica with the fewest outstanding requests
//! and fail over to another replica when that is safe.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cellgate_config::{
    EscalationConfig, FederationConfig, HealthConfig, PinMode, RestartPolicy, UpstreamConfig,
    UpstreamTransport, check_federation, is_valid_upstream_name,
};
use cellgate_kernel::{
    BoxFuture, CallContext, McpError, Prompt, Provider, ProviderEvent, Resource, ResourceTemplate,
    Tool, codes,
};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::breaker::{Admission, Breaker, BreakerState, backoff_delay, retry_delay};
use crate::cache::{Lookup, ResultCache, cache_key};
use crate::escalation::{Escalation, post_webhook};
use crate::incidents::{Incident, IncidentKind, IncidentOutcome, IncidentSink, Incidents};
use crate::metrics::FederationMetrics;
use crate::namespace::{
    Collision, Index, Namespace, Route, unwrap_uri, wrap_prompt_result, wrap_read_result,
    wrap_tool_result, wrap_uri,
};
use crate::pins::{MemoryPinStore, PinStore, PinStoreError, tool_fingerprint};
use crate::session::{CallError, CloseReason, Notice, Session, human, lock};

/// Most pages read from one upstream list.
const MAX_PAGES: usize = 1000;

/// Why a federation could not be built, or an operation refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FederationError {
    #[error("upstream {0}")]
    InvalidConfig(String),
    /// A configuration given at run time ([`Federation::reconcile`]) failed
    /// its checks; each entry reads `key: problem`.
    #[error("invalid federation configuration: {}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error(
        "`{}` is offered by both upstream `{}` and upstream `{}`; rename one, or set federation.namespace = \"always\"",
        .0.exposed, .0.kept, .0.hidden
    )]
    Collision(Collision),
    #[error("there is no upstream named `{0}`")]
    UnknownUpstream(String),
    #[error("tool `{tool}` of upstream `{upstream}` has no changed definition awaiting approval")]
    NothingToApprove { upstream: String, tool: String },
    #[error(transparent)]
    PinStore(#[from] PinStoreError),
}

/// Where an upstream's (or replica's) connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamState {
    /// Starting or connecting (first time or after a failure).
    Connecting,
    Up,
    /// Down after a failure; a restart is scheduled.
    Restarting,
    /// Down for good (restart policy `never`, or attempts exhausted).
    Down,
    /// The federation was shut down (or the upstream removed).
    Stopped,
}

/// What an operator needs to know about one upstream. With several
/// replicas the top-level fields sum them up (state `up` when any replica
/// is up, the best breaker state, restarts summed); `replicas` has each.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub state: UpstreamState,
    /// Why it is down or restarting.
    pub last_error: Option<String>,
    /// The process id of a stdio upstream that is up (its first replica up).
    pub pid: Option<u32>,
    pub protocol_version: Option<String>,
    pub server_info: Option<Value>,
    pub breaker: BreakerState,
    pub consecutive_failures: u32,
    /// Restarts (or reconnections) since the federation started.
    pub restarts: u32,
    /// Tools offered (blocked ones excluded).
    pub tools: usize,
    /// Tools held back because their definition changed (original names).
    pub blocked_tools: Vec<String>,
    /// Results in the result cache, and their size in bytes.
    pub cached_results: usize,
    pub cached_bytes: usize,
    pub replicas: Vec<ReplicaStatus>,
}

/// One replica of an upstream.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaStatus {
    /// 0-based, in configuration order.
    pub index: usize,
    /// The URL (without credentials) or `process N`.
    pub endpoint: String,
    pub state: UpstreamState,
    pub last_error: Option<String>,
    pub pid: Option<u32>,
    pub breaker: BreakerState,
    pub consecutive_failures: u32,
    pub restarts: u32,
    /// Requests in flight now.
    pub outstanding: usize,
    /// Requests sent since the federation started.
    pub calls: u64,
    /// Health checks failed in a row (0 when the last one passed).
    pub failed_health_checks: u32,
}

/// A changed tool definition waiting for [`Federation::approve_pin`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingApproval {
    pub upstream: String,
    /// The name the upstream gives the tool.
    pub tool: String,
    /// The name clients would see.
    pub exposed: String,
    pub pinned_fingerprint: String,
    pub new_fingerprint: String,
    pub incident_id: u64,
}

/// What [`Federation::reconcile`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileSummary {
    /// Upstreams started (new, or newly enabled).
    pub added: Vec<String>,
    /// Upstreams stopped (gone from the configuration, or disabled).
    pub removed: Vec<String>,
    /// Upstreams whose entry changed: stopped and started again.
    pub restarted: Vec<String>,
    /// Upstreams left as they were, connections and calls in flight included.
    pub unchanged: Vec<String>,
    /// Settings that changed but only take effect when cellgate restarts
    /// (dotted keys).
    pub needs_restart: Vec<String>,
}

impl ReconcileSummary {
    /// Whether anything was applied.
    pub fn changed(&self) -> bool {
        !(self.added.is_empty() && self.removed.is_empty() && self.restarted.is_empty())
    }
}

#[derive(Clone)]
enum Conn {
    Connecting,
    Up(Arc<Session>),
    Down {
        reason: String,
        retry_at: Option<Instant>,
    },
    Stopped,
}

#[derive(Clone)]
struct BlockedTool {
    pinned: String,
    observed: String,
    incident: Incident,
}

#[derive(Default, Clone)]
struct Lists {
    tools_fetched: bool,
    prompts_fetched: bool,
    /// Everything the upstream lists, blocked tools included.
    tools: Vec<Tool>,
    prompts: Vec<Prompt>,
    /// Original name → why it is held back.
    blocked: BTreeMap<String, BlockedTool>,
}

/// One copy of an upstream server: its own connection, breaker, restarts.
struct Replica {
    index: usize,
    /// The upstream's configuration with this replica's endpoint.
    cfg: UpstreamConfig,
    endpoint: String,
    conn: watch::Sender<Conn>,
    ready: watch::Sender<bool>,
    breaker: Mutex<Breaker>,
    /// The open availability incident (exit, hang, failed start).
    incident: Mutex<Option<Incident>>,
    breaker_incident: Mutex<Option<Incident>>,
    /// Whether the open availability incident has escalated.
    escalated: AtomicBool,
    restarts: AtomicU32,
    outstanding: AtomicUsize,
    calls: AtomicU64,
    ping_failures: AtomicU32,
}

struct Upstream {
    name: Arc<str>,
    cfg: UpstreamConfig,
    replicas: Vec<Replica>,
    /// Bumped whenever a replica's connection changes, so that a call can
    /// wait for *any* replica to come up.
    changed: watch::Sender<u64>,
    lists: Mutex<Lists>,
    refreshing: tokio::sync::Mutex<()>,
    cache: Option<ResultCache>,
    /// Stops this upstream's supervisors (a child of the federation's).
    stop: CancellationToken,
    /// Breaks ties between equally loaded replicas in turn.
    rotation: AtomicUsize,
}

impl Upstream {
    fn new(cfg: UpstreamConfig, parent: &CancellationToken, lists: Lists) -> Self {
        let n = cfg.replica_count();
        let replicas = (0..n)
            .map(|i| {
                let rcfg = cfg.replica(i);
                let endpoint = match &rcfg.transport {
                    UpstreamTransport::Http(h) | UpstreamTransport::Sse(h) => {
                        without_credentials(&h.url)
                    }
                    UpstreamTransport::Stdio(_) => format!("process {}", i + 1),
                };
                Replica {
                    index: i,
                    breaker: Mutex::new(Breaker::new(
                        cfg.breaker.failure_threshold,
                        Duration::from_secs(cfg.breaker.open_secs),
                    )),
                    cfg: rcfg,
                    endpoint,
                    conn: watch::Sender::new(Conn::Connecting),
                    ready: watch::Sender::new(false),
                    incident: Mutex::default(),
                    breaker_incident: Mutex::default(),
                    escalated: AtomicBool::new(false),
                    restarts: AtomicU32::new(0),
                    outstanding: AtomicUsize::new(0),
                    calls: AtomicU64::new(0),
                    ping_failures: AtomicU32::new(0),
                }
            })
            .collect();
        Self {
            name: Arc::from(cfg.name.as_str()),
            cache: ResultCache::new(&cfg.cache),
            cfg,
            replicas,
            changed: watch::Sender::new(0),
            lists: Mutex::new(lists),
            refreshing: tokio::sync::Mutex::new(()),
            stop: parent.child_token(),
            rotation: AtomicUsize::new(0),
        }
    }

    fn set_conn(&self, r: usize, conn: Conn) {
        self.replicas[r].conn.send_replace(conn);
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// "replica 2 of 3 (http://b/mcp): " with several replicas, else nothing.
    fn replica_prefix(&self, r: usize) -> String {
        if self.replicas.len() > 1 {
            format!(
                "replica {} of {} ({}): ",
                r + 1,
                self.replicas.len(),
                self.replicas[r].endpoint
            )
        } else {
            String::new()
        }
    }

    /// What the upstream's annotations promise about `tool`:
    /// (`readOnlyHint`, `idempotentHint`).
    fn hints(&self, tool: &str) -> (bool, bool) {
        let lists = lock(&self.lists);
        let Some(t) = lists.tools.iter().find(|t| t.name == tool) else {
            return (false, false);
        };
        let hint = |k: &str| {
            t.extra
                .get("annotations")
                .and_then(|a| a.get(k))
                .and_then(Value::as_bool)
                == Some(true)
        };
        (hint("readOnlyHint"), hint("idempotentHint"))
    }

    fn connected(&self) -> Option<Arc<Session>> {
        self.replicas.iter().find_map(|r| match &*r.conn.borrow() {
            Conn::Up(s) if !s.is_closed() => Some(s.clone()),
            _ => None,
        })
    }
}

/// `url` with any `user:password@` removed, for logs and status.
pub(crate) fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// The upstreams in configuration order and what is derived from them
/// together; replaced as a whole by a reconcile, the indexes rebuilt on
/// every list change.
struct Table {
    ns: Namespace,
    pin_mode: PinMode,
    escalation: EscalationConfig,
    upstreams: Vec<Arc<Upstream>>,
    tools: Index,
    prompts: Index,
}

struct Inner {
    table: RwLock<Table>,
    events: broadcast::Sender<ProviderEvent>,
    pins: Arc<dyn PinStore>,
    incidents: Incidents,
    incident_history: u32,
    stop: CancellationToken,
    reported_collisions: Mutex<HashSet<(String, String)>>,
    metrics: Arc<FederationMetrics>,
    webhooks: reqwest::Client,
    /// One reconcile at a time.
    reconciling: tokio::sync::Mutex<()>,
}

/// Many upstream MCP servers as one [`Provider`].
///
/// Build it with [`Federation::builder`]; it starts every enabled upstream
/// and supervises it until the federation is dropped or
/// [`Federation::shutdown`] is called. Keep an `Arc<Federation>` to use the
/// operator API ([`Federation::status`], [`Federation::approve_pin`],
/// [`Federation::reconcile`], …) and hand a clone to the catalog as
/// `Arc<dyn Provider>`.
pub struct Federation {
    inner: Arc<Inner>,
}

/// Sets up a [`Federation`].
pub struct FederationBuilder {
    config: FederationConfig,
    upstreams: Vec<UpstreamConfig>,
    pins: Option<Arc<dyn PinStore>>,
    sinks: Vec<Arc<dyn IncidentSink>>,
    metrics: Option<Arc<FederationMetrics>>,
}

impl FederationBuilder {
    /// Where tool pins are kept (default: in memory).
    pub fn pin_store(mut self, store: Arc<dyn PinStore>) -> Self {
        self.pins = Some(store);
        self
    }

    /// Also sends incidents to `sink` (they are always kept in memory too,
    /// see [`Federation::incidents`]).
    pub fn incident_sink(mut self, sink: Arc<dyn IncidentSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Counts into `metrics` (default: a fresh set, see
    /// [`Federation::metrics`]).
    pub fn metrics(mut self, metrics: Arc<FederationMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Starts every enabled upstream and waits until each replica has
    /// either come up or failed its first attempt (failed ones keep being
    /// retried in the background). Fails on a configuration that does not
    /// pass the checks of `cellgate check` (names invalid or not unique, …),
    /// and when two upstreams offer a tool or prompt under the same exposed
    /// name.
    pub async fn start(self) -> Result<Federation, FederationError> {
        let enabled: Vec<UpstreamConfig> = self
            .upstreams
            .iter()
            .filter(|u| u.enabled)
            .cloned()
            .collect();
        let mut seen = HashSet::new();
        for u in &enabled {
            if !is_valid_upstream_name(&u.name) {
                return Err(FederationError::InvalidConfig(format!(
                    "name {:?} may contain only letters, digits, `_` and `-`",
                    u.name
                )));
            }
            if !seen.insert(u.name.to_ascii_lowercase()) {
                return Err(FederationError::InvalidConfig(format!(
                    "name {:?} is used twice (names are unique regardless of case)",
                    u.name
                )));
            }
        }
        check_federation(&self.config, &self.upstreams).map_err(FederationError::Invalid)?;
        let webhooks = reqwest::Client::builder()
            .build()
            .map_err(|e| FederationError::InvalidConfig(format!("webhook client: {e}")))?;
        let (events, _) = broadcast::channel(256);
        let inner = Arc::new(Inner {
            table: RwLock::new(Table {
                ns: Namespace::new(self.config.namespace, &self.config.separator, 0),
                pin_mode: self.config.tool_pinning,
                escalation: self.config.escalation.clone(),
                upstreams: Vec::new(),
                tools: Index::default(),
                prompts: Index::default(),
            }),
            events,
            pins: self.pins.unwrap_or_else(|| Arc::new(MemoryPinStore::new())),
            incidents: Incidents::new(
                usize::try_from(self.config.incident_history).unwrap_or(1000),
                self.sinks,
            ),
            incident_history: self.config.incident_history,
            stop: CancellationToken::new(),
            reported_collisions: Mutex::default(),
            metrics: self.metrics.unwrap_or_default(),
            webhooks,
            reconciling: tokio::sync::Mutex::new(()),
        });
        let federation = Federation { inner };
        federation.install(&self.config, enabled).await;
        let first = {
            let t = federation.inner.read_table();
            t.tools
                .collisions
                .first()
                .or(t.prompts.collisions.first())
                .cloned()
        };
        if let Some(c) = first {
            federation.shutdown();
            return Err(FederationError::Collision(c));
        }
        Ok(federation)
    }
}

impl Federation {
    pub fn builder(config: FederationConfig, upstreams: Vec<UpstreamConfig>) -> FederationBuilder {
        FederationBuilder {
            config,
            upstreams,
            pins: None,
            sinks: Vec::new(),
            metrics: None,
        }
    }

    /// Stops every upstream (stdio processes are killed with their process
    /// group). Also done when the federation is dropped.
    pub fn shutdown(&self) {
        self.inner.stop.cancel();
    }

    /// The federation's counters (failovers, cache, escalations); register
    /// them with [`FederationMetrics::register`].
    pub fn metrics(&self) -> Arc<FederationMetrics> {
        self.inner.metrics.clone()
    }

    /// Announcements for connected clients: `ToolsChanged`,
    /// `PromptsChanged`, `ResourcesChanged` when the federated lists change
    /// (an upstream's `list_changed`, a restart, an approval, a reconcile)
    /// and `ResourceUpdated`. The same channel as [`Provider::events`]; the
    /// MCP edge turns each into the `notifications/…` of its clients.
    pub fn subscribe(&self) -> broadcast::Receiver<ProviderEvent> {
        self.inner.events.subscribe()
    }

    /// One entry per enabled upstream, in configuration order.
    pub fn status(&self) -> Vec<UpstreamStatus> {
        let now = Instant::now();
        self.inner
            .upstreams()
            .iter()
            .map(|up| upstream_status(up, now))
            .collect()
    }

    /// Incidents kept in memory, oldest first.
    pub fn incidents(&self) -> Vec<Incident> {
        self.inner.incidents.memory().list()
    }

    /// Changed tool definitions waiting for approval.
    pub fn pending_approvals(&self) -> Vec<PendingApproval> {
        let ns = self.inner.read_table().ns.clone();
        let mut out = Vec::new();
        for up in self.inner.upstreams() {
            for (tool, b) in &lock(&up.lists).blocked {
                out.push(PendingApproval {
                    upstream: up.name.to_string(),
                    tool: tool.clone(),
                    exposed: ns.expose(&up.name, tool),
                    pinned_fingerprint: b.pinned.clone(),
                    new_fingerprint: b.observed.clone(),
                    incident_id: b.incident.id,
                });
            }
        }
        out
    }

    /// Accepts the changed definition of `tool` (the name the upstream gives
    /// it) as its new pin: the tool is offered and callable again.
    pub async fn approve_pin(&self, upstream: &str, tool: &str) -> Result<(), FederationError> {
        let inner = &self.inner;
        let up = inner
            .find_upstream(upstream)
            .ok_or_else(|| FederationError::UnknownUpstream(upstream.to_owned()))?;
        let nothing = || FederationError::NothingToApprove {
            upstream: upstream.to_owned(),
            tool: tool.to_owned(),
        };
        let entry = lock(&up.lists)
            .blocked
            .get(tool)
            .cloned()
            .ok_or_else(nothing)?;
        inner.pins.set(&up.name, tool, &entry.observed).await?;
        let before = inner.visible_tools();
        let removed = {
            let mut lists = lock(&up.lists);
            match lists.blocked.get(tool) {
                Some(b) if b.observed == entry.observed => lists.blocked.remove(tool),
                _ => None,
            }
        };
        let Some(mut removed) = removed else {
            return Err(nothing());
        };
        removed.incident.outcome = IncidentOutcome::Approved;
        inner.incidents.update(&mut removed.incident);
        tracing::info!(upstream = %up.name, tool, "changed tool definition approved");
        inner.rebuild_indexes();
        if inner.visible_tools() != before {
            let _ = inner.events.send(ProviderEvent::ToolsChanged);
        }
        Ok(())
    }

    /// Applies a new configuration (a reload of `cellgate.toml`, SIGHUP, the
    /// admin API) without disturbing what did not change:
    ///
    /// - upstreams whose entry is identical (compared as a whole) keep
    ///   running untouched: their connections, sessions, calls in flight,
    ///   breakers and caches;
    /// - new (or newly enabled) upstreams are started, removed (or
    ///   disabled) ones stopped;
    /// - upstreams whose entry changed in any way are stopped and started
    ///   again with the new entry (their calls in flight fail as at a
    ///   shutdown; their last known tool list stays routable meanwhile, so
    ///   new calls wait for the restart within their timeout);
    /// - `namespace`, `separator`, `tool_pinning` and `escalation` apply at
    ///   once; `incident_history` needs a restart of cellgate.
    ///
    /// A configuration that fails the checks of `cellgate check` is refused
    /// as a whole and nothing changes. Returns once the started upstreams
    /// have come up or failed their first attempt. A name collision that
    /// the new set causes hides the later upstream's item and records an
    /// incident (as when it appears at run time) rather than failing.
    pub async fn reconcile(
        &self,
        config: FederationConfig,
        upstreams: Vec<UpstreamConfig>,
    ) -> Result<ReconcileSummary, FederationError> {
        check_federation(&config, &upstreams).map_err(FederationError::Invalid)?;
        let enabled: Vec<UpstreamConfig> = upstreams.into_iter().filter(|u| u.enabled).collect();
        let mut summary = self.install(&config, enabled).await;
        if config.incident_history != self.inner.incident_history {
            summary
                .needs_restart
                .push("federation.incident_history".into());
        }
        tracing::info!(
            added = ?summary.added,
            removed = ?summary.removed,
            restarted = ?summary.restarted,
            unchanged = summary.unchanged.len(),
            "upstream configuration applied"
        );
        Ok(summary)
    }

    /// Replaces the table with `enabled` (already checked), starting,
    /// stopping and keeping upstreams as [`Federation::reconcile`] says.
    async fn install(
        &self,
        config: &FederationConfig,
        enabled: Vec<UpstreamConfig>,
    ) -> ReconcileSummary {
        let inner = &self.inner;
        let _one_at_a_time = inner.reconciling.lock().await;
        let tools_before = inner.visible_tools();
        let prompts_before = inner.visible_prompts();
        let old = inner.upstreams();
        let mut summary = ReconcileSummary::default();
        let mut next = Vec::with_capacity(enabled.len());
        let mut started = Vec::new();
        let mut stopped = Vec::new();
        for cfg in enabled {
            match old.iter().find(|u| *u.name == *cfg.name) {
                Some(u) if u.cfg == cfg => {
                    summary.unchanged.push(cfg.name.clone());
                    next.push(u.clone());
                }
                Some(u) => {
                    summary.restarted.push(cfg.name.clone());
                    let lists = lock(&u.lists).clone();
                    let fresh = Arc::new(Upstream::new(cfg, &inner.stop, lists));
                    stopped.push(u.clone());
                    started.push(fresh.clone());
                    next.push(fresh);
                }
                None => {
                    summary.added.push(cfg.name.clone());
                    let fresh = Arc::new(Upstream::new(cfg, &inner.stop, Lists::default()));
                    started.push(fresh.clone());
                    next.push(fresh);
                }
            }
        }
        for u in &old {
            if !next.iter().any(|n| n.name == u.name) {
                summary.removed.push(u.name.to_string());
                stopped.push(u.clone());
            }
        }
        {
            let mut t = inner.write_table();
            t.ns = Namespace::new(config.namespace, &config.separator, next.len());
            t.pin_mode = config.tool_pinning;
            t.escalation = config.escalation.clone();
            t.upstreams = next;
            inner.rebuild_indexes_in(&mut t);
        }
        for u in &stopped {
            u.stop.cancel();
            if let Some(cache) = &u.cache {
                cache.clear();
            }
        }
        for up in &started {
            for r in 0..up.replicas.len() {
                tokio::spawn(inner.clone().supervise(up.clone(), r));
            }
        }
        let waits = started.iter().flat_map(|up| {
            up.replicas.iter().map(|rep| {
                let limit =
                    Duration::from_secs(up.cfg.connect_timeout_secs) + Duration::from_secs(5);
                let mut rx = rep.ready.subscribe();
                async move {
                    let _ = tokio::time::timeout(limit, rx.wait_for(|r| *r)).await;
                }
            })
        });
        futures_util::future::join_all(waits).await;
        inner.rebuild_indexes();
        if inner.visible_tools() != tools_before {
            let _ = inner.events.send(ProviderEvent::ToolsChanged);
        }
        if inner.visible_prompts() != prompts_before {
            let _ = inner.events.send(ProviderEvent::PromptsChanged);
        }
        if !summary.added.is_empty() || !summary.removed.is_empty() || !summary.restarted.is_empty()
        {
            let _ = inner.events.send(ProviderEvent::ResourcesChanged);
        }
        summary
    }
}

fn upstream_status(up: &Upstream, now: Instant) -> UpstreamStatus {
    let replicas: Vec<(ReplicaStatus, Option<Arc<Session>>)> = up
        .replicas
        .iter()
        .map(|r| {
            let conn = r.conn.borrow().clone();
            let (state, last_error, session) = match conn {
                Conn::Connecting => (UpstreamState::Connecting, None, None),
                Conn::Up(s) => (UpstreamState::Up, None, Some(s)),
                Conn::Down {
                    reason,
                    retry_at: Some(_),
                } => (UpstreamState::Restarting, Some(reason), None),
                Conn::Down { reason, .. } => (UpstreamState::Down, Some(reason), None),
                Conn::Stopped => (UpstreamState::Stopped, None, None),
            };
            let breaker = lock(&r.breaker);
            (
                ReplicaStatus {
                    index: r.index,
                    endpoint: r.endpoint.clone(),
                    state,
                    last_error,
                    pid: session.as_ref().and_then(|s| s.pid),
                    breaker: breaker.state(now),
                    consecutive_failures: breaker.consecutive_failures(),
                    restarts: r.restarts.load(Ordering::Relaxed),
                    outstanding: r.outstanding.load(Ordering::Relaxed),
                    calls: r.calls.load(Ordering::Relaxed),
                    failed_health_checks: r.ping_failures.load(Ordering::Relaxed),
                },
                session,
            )
        })
        .collect();
    // The replica that speaks for the upstream: the first one up, else the
    // first one.
    let lead = replicas
        .iter()
        .position(|(r, _)| r.state == UpstreamState::Up)
        .unwrap_or(0);
    let (first, session) = &replicas[lead];
    let rank = |b: BreakerState| match b {
        BreakerState::Closed => 0,
        BreakerState::HalfOpen => 1,
        BreakerState::Open => 2,
    };
    let lists = lock(&up.lists);
    let (cached_results, cached_bytes) = up.cache.as_ref().map_or((0, 0), ResultCache::size);
    UpstreamStatus {
        name: up.name.to_string(),
        state: first.state,
        last_error: first.last_error.clone(),
        pid: first.pid,
        protocol_version: session.as_ref().map(|s| s.protocol_version.clone()),
        server_info: session.as_ref().map(|s| s.server_info.clone()),
        breaker: replicas
            .iter()
            .map(|(r, _)| r.breaker)
            .min_by_key(|b| rank(*b))
            .unwrap_or(BreakerState::Closed),
        consecutive_failures: replicas
            .iter()
            .map(|(r, _)| r.consecutive_failures)
            .min()
            .unwrap_or(0),
        restarts: replicas.iter().map(|(r, _)| r.restarts).sum(),
        tools: lists
            .tools
            .iter()
            .filter(|t| !lists.blocked.contains_key(&t.name))
            .count(),
        blocked_tools: lists.blocked.keys().cloned().collect(),
        cached_results,
        cached_bytes,
        replicas: replicas.into_iter().map(|(r, _)| r).collect(),
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        self.inner.stop.cancel();
    }
}

/// Where a call goes: the replica picked, or why none.
enum Pick {
    Go {
        r: usize,
        session: Arc<Session>,
        probe: bool,
    },
    /// Every replica that could take the call has its circuit open.
    Rejected(McpError),
    /// No replica is up (or none that was not tried yet).
    NoneUp,
}

/// How one attempt of a call ended.
enum Attempt {
    Done(Result<Value, McpError>),
    /// The replica failed (timeout, crash, lost connection): another one
    /// may be tried if the call is safe to repeat.
    Failed(McpError),
    /// No untried replica could take a retry.
    NoReplica,
}

/// Counts a request in flight on a replica for as long as it lives.
struct Outstanding<'a>(&'a AtomicUsize);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Inner {
    fn read_table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_table(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.read_table().upstreams.clone()
    }

    /// Every upstream's resources (or templates) from `method`, with the URI
    /// field that `uri` picks rewritten to the one clients see.
    async fn gather_exposed<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        key: &str,
        uri: fn(&mut T) -> &mut String,
    ) -> Vec<T> {
        let verbatim = self.verbatim_uris();
        let mut out = Vec::new();
        for (up, items) in self.gather("resources", method, key).await {
            for mut item in parse_items::<T>(&up.name, items) {
                let field = uri(&mut item);
                if !verbatim {
                    *field = wrap_uri(&up.name, field);
                }
                out.push(item);
            }
        }
        out
    }

    /// With one upstream and unprefixed names, URIs pass through verbatim:
    /// the gateway is then transparent, and there is nobody to tell apart.
    fn verbatim_uris(&self) -> bool {
        let t = self.read_table();
        t.upstreams.len() == 1 && !t.ns.is_prefixed()
    }

    /// The URI clients see for `uri` of upstream `name`.
    fn expose_uri(&self, name: &str, uri: &str) -> String {
        if self.verbatim_uris() {
            uri.to_owned()
        } else {
            wrap_uri(name, uri)
        }
    }

    /// The upstream and original URI a client's URI stands for.
    fn resolve_uri<'u>(&self, uri: &'u str) -> Option<(Arc<Upstream>, &'u str)> {
        {
            let t = self.read_table();
            if t.upstreams.len() == 1 && !t.ns.is_prefixed() {
                return Some((t.upstreams[0].clone(), uri));
            }
        }
        let (name, original) = unwrap_uri(uri)?;
        Some((self.find_upstream(name)?, original))
    }

    fn find_upstream(&self, name: &str) -> Option<Arc<Upstream>> {
        let t = self.read_table();
        t.upstreams
            .iter()
            .find(|u| &*u.name == name)
            .or_else(|| {
                t.upstreams
                    .iter()
                    .find(|u| u.name.eq_ignore_ascii_case(name))
            })
            .cloned()
    }

    // ---- supervision -------------------------------------------------

    async fn supervise(self: Arc<Self>, up: Arc<Upstream>, r: usize) {
        let rep = &up.replicas[r];
        let name = up.name.clone();
        // Consecutive failures; the n-th failure is followed by repair attempt n.
        let mut failures: u32 = 0;
        loop {
            if up.stop.is_cancelled() {
                break;
            }
            up.set_conn(r, Conn::Connecting);
            let (notice_tx, mut notices) = mpsc::unbounded_channel();
            let connected = tokio::select! {
                c = Session::connect(&rep.cfg, notice_tx) => c,
                _ = up.stop.cancelled() => break,
            };
            let (kind, detail) = match connected {
                Err(e) => (IncidentKind::ConnectFailed, e),
                Ok(session) => {
                    let since = Instant::now();
                    if failures > 0 {
                        rep.restarts.fetch_add(1, Ordering::Relaxed);
                    }
                    rep.ping_failures.store(0, Ordering::Relaxed);
                    // Calls may go in while the lists are read (a slow
                    // listing must not hold them up).
                    up.set_conn(r, Conn::Up(session.clone()));
                    self.repaired(&up, r, failures);
                    if let Err(e) = self.refresh(&up, &session, true, true).await {
                        tracing::warn!(upstream = %name, replica = r, "cannot list the upstream's tools and prompts: {e}");
                    }
                    rep.ready.send_replace(true);
                    let mut health = Box::pin(health_watch(
                        session.clone(),
                        up.cfg.health.clone(),
                        &rep.ping_failures,
                    ));
                    let ended = loop {
                        tokio::select! {
                            reason = session.closed() => break match reason {
                                CloseReason::Protocol(_) => (IncidentKind::ProtocolViolation, reason.describe(&name)),
                                other => (IncidentKind::Exited, other.describe(&name)),
                            },
                            why = &mut health => break (IncidentKind::Hung, why),
                            Some(n) = notices.recv() => self.clone().on_notice(&up, &session, n),
                            _ = up.stop.cancelled() => {
                                session.shutdown();
                                up.set_conn(r, Conn::Stopped);
                                return;
                            }
                        }
                    };
                    session.shutdown();
                    if since.elapsed() >= Duration::from_secs(up.cfg.restart.stable_secs) {
                        failures = 0;
                    }
                    ended
                }
            };
            if up.stop.is_cancelled() {
                break;
            }
            failures = failures.saturating_add(1);
            let detail = format!("{}{detail}", up.replica_prefix(r));
            let incident = self.failed(&up, r, kind, &detail, failures);
            let policy = &up.cfg.restart;
            let failed_repairs = failures - 1;
            if policy.policy == RestartPolicy::Never
                || (policy.max_attempts > 0 && failed_repairs >= policy.max_attempts)
            {
                tracing::error!(upstream = %name, replica = r, failed_repairs, "giving up on the upstream: {detail}");
                if !rep.escalated.swap(true, Ordering::Relaxed) {
                    self.escalate(&up, r, incident.clone(), failed_repairs, true, &detail);
                }
                if let Some(mut i) = incident {
                    i.outcome = IncidentOutcome::GaveUp;
                    self.incidents.update(&mut i);
                    *lock(&rep.incident) = None;
                }
                up.set_conn(
                    r,
                    Conn::Down {
                        reason: detail,
                        retry_at: None,
                    },
                );
                rep.ready.send_replace(true);
                return;
            }
            let delay = backoff_delay(policy, failures);
            if failed_repairs >= policy.alert_after {
                if !rep.escalated.swap(true, Ordering::Relaxed) {
                    self.escalate(&up, r, incident.clone(), failed_repairs, false, &detail);
                }
                tracing::error!(upstream = %name, replica = r, failed_repairs, "upstream still failing, next attempt in {}: {detail}", human(delay));
            } else {
                tracing::warn!(upstream = %name, replica = r, "upstream failed, restarting in {}: {detail}", human(delay));
            }
            up.set_conn(
                r,
                Conn::Down {
                    reason: detail,
                    retry_at: Some(Instant::now() + delay),
                },
            );
            rep.ready.send_replace(true);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = up.stop.cancelled() => break,
            }
        }
        up.set_conn(r, Conn::Stopped);
    }

    /// An incident that repairs did not fix: error log, counter, webhook.
    fn escalate(
        &self,
        up: &Arc<Upstream>,
        r: usize,
        incident: Option<Incident>,
        failed_repairs: u32,
        gave_up: bool,
        detail: &str,
    ) {
        tracing::error!(
            upstream = %up.name,
            replica = r,
            failed_repairs,
            incident = incident.as_ref().map(|i| i.id),
            "incident escalated: {detail}"
        );
        FederationMetrics::count(&self.metrics.escalations, &up.name);
        let cfg = up
            .cfg
            .escalation
            .clone()
            .unwrap_or_else(|| self.read_table().escalation.clone());
        if cfg.webhook_url.is_none() {
            return;
        }
        let escalation = Escalation {
            upstream: up.name.to_string(),
            replica: r,
            replicas: up.replicas.len(),
            endpoint: up.replicas[r].endpoint.clone(),
            failed_repairs,
            gave_up,
            detail: detail.to_owned(),
            incident,
        };
        let client = self.webhooks.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let body = escalation.body();
            match post_webhook(&client, &cfg, &body).await {
                Ok(()) => {
                    tracing::info!(upstream = %escalation.upstream, "escalation webhook delivered")
                }
                Err(e) => {
                    FederationMetrics::count(&metrics.webhook_failures, &escalation.upstream);
                    tracing::error!(upstream = %escalation.upstream, "escalation webhook failed: {e}");
                }
            }
        });
    }

    /// Opens (or updates) the availability incident after a failure.
    fn failed(
        &self,
        up: &Upstream,
        r: usize,
        kind: IncidentKind,
        detail: &str,
        failures: u32,
    ) -> Option<Incident> {
        let mut slot = lock(&up.replicas[r].incident);
        match slot.as_mut() {
            Some(i) => {
                i.repair_attempts = failures - 1;
                self.incidents.update(i);
            }
            None => {
                *slot = Some(self.incidents.open(
                    &up.name,
                    kind,
                    None,
                    detail.to_owned(),
                    IncidentOutcome::Open,
                ));
            }
        }
        slot.clone()
    }

    /// The replica is up again: closes its open incident.
    fn repaired(&self, up: &Upstream, r: usize, failures: u32) {
        let rep = &up.replicas[r];
        rep.escalated.store(false, Ordering::Relaxed);
        if let Some(mut i) = lock(&rep.incident).take() {
            i.repair_attempts = failures;
            i.outcome = IncidentOutcome::Repaired;
            self.incidents.update(&mut i);
            tracing::info!(upstream = %up.name, replica = r, attempts = failures, "upstream repaired");
        }
    }

    fn on_notice(self: Arc<Self>, up: &Arc<Upstream>, session: &Arc<Session>, notice: Notice) {
        match notice {
            Notice::ToolsChanged | Notice::PromptsChanged => {
                let session = session.clone();
                let up = up.clone();
                let tools = notice == Notice::ToolsChanged;
                tokio::spawn(async move {
                    if let Err(e) = self.refresh(&up, &session, tools, !tools).await {
                        tracing::warn!(upstream = %up.name, "cannot re-list after a change: {e}");
                    }
                });
            }
            Notice::ResourcesChanged => {
                let _ = self.events.send(ProviderEvent::ResourcesChanged);
            }
            Notice::ResourceUpdated(uri) => {
                let _ = self.events.send(ProviderEvent::ResourceUpdated {
                    uri: self.expose_uri(&up.name, &uri),
                });
            }
        }
    }

    // ---- lists, pins, indexes ------------------------------------------

    /// Re-reads the upstream's tools and/or prompts, applies pins, rebuilds
    /// the indexes and announces what changed.
    async fn refresh(
        &self,
        up: &Arc<Upstream>,
        session: &Arc<Session>,
        tools: bool,
        prompts: bool,
    ) -> Result<(), String> {
        let _one_at_a_time = up.refreshing.lock().await;
        let timeout = Duration::from_secs(up.cfg.timeout_secs);
        let tools_before = self.visible_tools();
        let prompts_before = self.visible_prompts();
        let mut result = Ok(());
        if tools {
            let listed = if session.has_capability("tools") {
                fetch_all(session, &up.name, "tools/list", "tools", timeout).await
            } else {
                Ok(Vec::new())
            };
            match listed {
                Ok(items) => {
                    let parsed = parse_items::<Tool>(&up.name, items);
                    self.apply_tools(up, parsed).await;
                }
                Err(e) => result = Err(e),
            }
        }
        if prompts {
            let listed = if session.has_capability("prompts") {
                fetch_all(session, &up.name, "prompts/list", "prompts", timeout).await
            } else {
                Ok(Vec::new())
            };
            match listed {
                Ok(items) => {
                    let parsed = parse_items::<Prompt>(&up.name, items);
                    let mut lists = lock(&up.lists);
                    lists.prompts = parsed;
                    lists.prompts_fetched = true;
                }
                Err(e) => result = Err(e),
            }
        }
        self.rebuild_indexes();
        if self.visible_tools() != tools_before {
            let _ = self.events.send(ProviderEvent::ToolsChanged);
        }
        if self.visible_prompts() != prompts_before {
            let _ = self.events.send(ProviderEvent::PromptsChanged);
        }
        result
    }

    async fn apply_tools(&self, up: &Upstream, tools: Vec<Tool>) {
        let pin_mode = self.read_table().pin_mode;
        let previous = lock(&up.lists).blocked.clone();
        let mut blocked = BTreeMap::new();
        if pin_mode != PinMode::Off {
            for t in &tools {
                let observed = tool_fingerprint(t);
                let pinned = match self.pins.get(&up.name, &t.name).await {
                    Ok(None) => match self.pins.set(&up.name, &t.name, &observed).await {
                        Ok(()) => continue,
                        Err(e) => format!("unknown ({e})"),
                    },
                    Ok(Some(p)) if p == observed => continue,
                    Ok(Some(p)) => p,
                    Err(e) => format!("unknown ({e})"),
                };
                if pin_mode == PinMode::Warn {
                    tracing::warn!(upstream = %up.name, tool = %t.name, "tool definition changed since it was pinned; offering it anyway (tool_pinning = \"warn\")");
                    self.incidents.open(
                        &up.name,
                        IncidentKind::ToolDefinitionChanged,
                        Some(&t.name),
                        format!("definition changed from {pinned} to {observed}; offered anyway (warn mode)"),
                        IncidentOutcome::Noted,
                    );
                    if let Err(e) = self.pins.set(&up.name, &t.name, &observed).await {
                        tracing::warn!(upstream = %up.name, "cannot re-pin: {e}");
                    }
                    continue;
                }
                let entry = match previous.get(&t.name) {
                    Some(b) if b.observed == observed => b.clone(),
                    _ => {
                        tracing::error!(upstream = %up.name, tool = %t.name, pinned = %pinned, observed = %observed, "tool definition changed since it was pinned; blocked until approved");
                        let incident = self.incidents.open(
                            &up.name,
                            IncidentKind::ToolDefinitionChanged,
                            Some(&t.name),
                            format!(
                                "definition changed from {pinned} to {observed}; the tool is blocked until approved"
                            ),
                            IncidentOutcome::Open,
                        );
                        BlockedTool {
                            pinned,
                            observed,
                            incident,
                        }
                    }
                };
                blocked.insert(t.name.clone(), entry);
            }
        }
        // A tool that went back to its pinned definition is no longer blocked.
        for (name, mut b) in previous {
            if !blocked.contains_key(&name) && b.incident.outcome == IncidentOutcome::Open {
                b.incident.outcome = IncidentOutcome::Repaired;
                self.incidents.update(&mut b.incident);
            }
        }
        let mut lists = lock(&up.lists);
        // Cached results were produced under the old definitions.
        if lists.tools_fetched
            && lists.tools != tools
            && let Some(cache) = &up.cache
        {
            cache.clear();
        }
        lists.tools = tools;
        lists.blocked = blocked;
        lists.tools_fetched = true;
    }

    fn rebuild_indexes(&self) {
        let mut t = self.write_table();
        self.rebuild_indexes_in(&mut t);
    }

    fn rebuild_indexes_in(&self, t: &mut Table) {
        let names: Vec<&str> = t.upstreams.iter().map(|u| &*u.name).collect();
        let (tool_names, prompt_names): (Vec<Vec<String>>, Vec<Vec<String>>) = t
            .upstreams
            .iter()
            .map(|u| {
                let l = lock(&u.lists);
                (
                    l.tools.iter().map(|t| t.name.clone()).collect(),
                    l.prompts.iter().map(|p| p.name.clone()).collect(),
                )
            })
            .unzip();
        let tools = Index::build(&t.ns, &names, &tool_names);
        let prompts = Index::build(&t.ns, &names, &prompt_names);
        for c in tools.collisions.iter().chain(&prompts.collisions) {
            let key = (c.exposed.clone(), c.hidden.clone());
            if lock(&self.reported_collisions).insert(key) {
                tracing::error!(name = %c.exposed, kept = %c.kept, hidden = %c.hidden, "two upstreams offer the same name; the second is hidden");
                self.incidents.open(
                    &c.hidden,
                    IncidentKind::NameCollision,
                    Some(&c.exposed),
                    format!(
                        "`{}` is offered by both upstream `{}` and upstream `{}`; the one of `{}` is hidden",
                        c.exposed, c.kept, c.hidden, c.hidden
                    ),
                    IncidentOutcome::Noted,
                );
            }
        }
        t.tools = tools;
        t.prompts = prompts;
    }

    fn visible_tools(&self) -> Vec<Tool> {
        let t = self.read_table();
        let mut out = Vec::new();
        for (i, up) in t.upstreams.iter().enumerate() {
            let lists = lock(&up.lists);
            for tool in &lists.tools {
                if lists.blocked.contains_key(&tool.name) {
                    continue;
                }
                let exposed = t.ns.expose(&up.name, &tool.name);
                if owns(&t.tools, &exposed, i, &tool.name) {
                    let mut tool = tool.clone();
                    tool.name = exposed;
                    out.push(tool);
                }
            }
        }
        out
    }

    fn visible_prompts(&self) -> Vec<Prompt> {
        let t = self.read_table();
        let mut out = Vec::new();
        for (i, up) in t.upstreams.iter().enumerate() {
            for p in &lock(&up.lists).prompts {
                let exposed = t.ns.expose(&up.name, &p.name);
                if owns(&t.prompts, &exposed, i, &p.name) {
                    let mut p = p.clone();
                    p.name = exposed;
                    out.push(p);
                }
            }
        }
        out
    }

    /// Where a tool or prompt name goes: the index of listed names, else a
    /// reading of the name by the known upstream names, for an upstream
    /// whose list is not known yet (so the caller hears why it is down
    /// rather than "unknown tool").
    fn route(&self, exposed: &str, tools: bool) -> Option<(Arc<Upstream>, String)> {
        let t = self.read_table();
        let index = if tools { &t.tools } else { &t.prompts };
        if let Some(Route { upstream, original }) = index.routes.get(exposed)
            && let Some(up) = t.upstreams.get(*upstream)
        {
            return Some((up.clone(), original.clone()));
        }
        let names = t.upstreams.iter().map(|u| &*u.name);
        t.ns.candidates(exposed, names)
            .into_iter()
            .find_map(|(name, original)| {
                let up = t.upstreams.iter().find(|u| &*u.name == name)?;
                let lists = lock(&up.lists);
                let fetched = if tools {
                    lists.tools_fetched
                } else {
                    lists.prompts_fetched
                };
                (!fetched).then(|| (up.clone(), original.to_owned()))
            })
    }

    // ---- calls ----------------------------------------------------------

    /// Sends one request to upstream `up`: to the replica with the fewest
    /// outstanding requests, through its circuit breaker, waiting (within
    /// the upstream's timeout) for a replica to come up if none is. When
    /// `repeatable` (the request is safe to send twice) and the replica
    /// fails, the request is tried again on another replica, up to
    /// `retry.max_attempts` attempts in all, after a jittered backoff.
    async fn call(
        &self,
        up: &Upstream,
        ctx: Option<&CallContext>,
        method: &str,
        mut params: Value,
        repeatable: bool,
    ) -> Result<Value, McpError> {
        let max_attempts = if repeatable {
            usize::try_from(up.cfg.retry.max_attempts)
                .unwrap_or(1)
                .clamp(1, up.replicas.len())
        } else {
            1
        };
        let never = CancellationToken::new();
        let cancel = ctx.map_or(&never, |c| &c.cancel);
        let mut tried = vec![false; up.replicas.len()];
        let mut last_error: Option<McpError> = None;
        for attempt in 1..=max_attempts {
            if let Some(e) = &last_error {
                if cancel.is_cancelled() || tried.iter().all(|t| *t) {
                    break;
                }
                let retry = u32::try_from(attempt - 1).unwrap_or(u32::MAX);
                let delay = retry_delay(&up.cfg.retry, retry, rand::random::<f64>());
                tracing::info!(upstream = %up.name, method, attempt, "trying another replica in {}: {}", human(delay), e.message);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => break,
                }
            }
            let p = if attempt == max_attempts {
                std::mem::take(&mut params)
            } else {
                params.clone()
            };
            match self.attempt(up, ctx, method, p, &mut tried, attempt).await {
                Attempt::Done(result) => return result,
                Attempt::Failed(e) => last_error = Some(e),
                Attempt::NoReplica => break,
            }
        }
        Err(last_error
            .unwrap_or_else(|| McpError::internal(format!("upstream `{}`: no attempt", up.name))))
    }

    /// One attempt of [`Inner::call`]. The first attempt waits for a
    /// replica; later ones take an untried replica that is up now, or none.
    async fn attempt(
        &self,
        up: &Upstream,
        ctx: Option<&CallContext>,
        method: &str,
        params: Value,
        tried: &mut [bool],
        attempt: usize,
    ) -> Attempt {
        let name = &*up.name;
        let timeout = Duration::from_secs(up.cfg.timeout_secs);
        let deadline = Instant::now() + timeout;
        let mut changes = up.changed.subscribe();
        let (r, session, probe) = loop {
            changes.borrow_and_update();
            match self.pick(up, tried) {
                Pick::Go { r, session, probe } => break (r, session, probe),
                Pick::Rejected(e) => {
                    return if attempt == 1 {
                        Attempt::Done(Err(e))
                    } else {
                        Attempt::NoReplica
                    };
                }
                Pick::NoneUp if attempt > 1 => return Attempt::NoReplica,
                Pick::NoneUp => {}
            }
            let (waiting_because, for_good) = why_none_up(up, tried);
            let unavailable = |what: String| {
                McpError::new(codes::SERVER_ERROR, format!("upstream `{name}` {what}"))
                    .with_data(json!({ "upstream": name, "kind": "unavailable" }))
            };
            if for_good {
                return Attempt::Done(Err(unavailable(waiting_because)));
            }
            if tokio::time::timeout_at(deadline.into(), changes.changed())
                .await
                .is_err()
            {
                let e = unavailable(format!(
                    "{waiting_because}, and did not come up within its timeout"
                ));
                let first = tried.iter().position(|t| !*t).unwrap_or(0);
                self.record_failure(up, first, &e.message);
                return Attempt::Done(Err(e));
            }
        };
        tried[r] = true;
        if attempt > 1 {
            FederationMetrics::count(&self.metrics.retries, name);
        }
        let rep = &up.replicas[r];
        rep.outstanding.fetch_add(1, Ordering::Relaxed);
        rep.calls.fetch_add(1, Ordering::Relaxed);
        let _outstanding = Outstanding(&rep.outstanding);
        let mut guard = ProbeGuard {
            breaker: &rep.breaker,
            armed: probe,
        };
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let outcome = match session.request(method, params, ctx, remaining).await {
            // Report the configured limit, not what was left of it.
            Err(CallError::Timeout { method, .. }) => Err(CallError::Timeout {
                method,
                after: timeout,
            }),
            other => other,
        };
        guard.armed = false;
        match outcome {
            Ok(v) => {
                self.record_success(up, r);
                Attempt::Done(Ok(v))
            }
            Err(CallError::Rpc(e)) => {
                self.record_success(up, r);
                Attempt::Done(Err(e))
            }
            Err(e) if !e.is_upstream_failure() => {
                if probe {
                    lock(&rep.breaker).on_abandoned();
                }
                Attempt::Done(Err(e.to_mcp(name)))
            }
            Err(e) => {
                let summary = format!("{}{}", up.replica_prefix(r), e.summary(name));
                self.record_failure(up, r, &summary);
                Attempt::Failed(e.to_mcp(name))
            }
        }
    }

    /// Chooses a replica not tried yet for a call: among those whose
    /// connection is up, the one whose last health check passed with the
    /// fewest outstanding requests (ties taken in turn) whose breaker lets
    /// the call through.
    fn pick(&self, up: &Upstream, tried: &[bool]) -> Pick {
        let n = up.replicas.len();
        let turn = up.rotation.fetch_add(1, Ordering::Relaxed) % n;
        let mut ranked: Vec<(bool, usize, usize, usize, Arc<Session>)> = up
            .replicas
            .iter()
            .enumerate()
            .filter(|(i, _)| !tried[*i])
            .filter_map(|(i, rep)| match &*rep.conn.borrow() {
                Conn::Up(s) if !s.is_closed() => Some((
                    rep.ping_failures.load(Ordering::Relaxed) > 0,
                    rep.outstanding.load(Ordering::Relaxed),
                    (i + n - turn) % n,
                    i,
                    s.clone(),
                )),
                _ => None,
            })
            .collect();
        ranked.sort_by_key(|(degraded, load, order, ..)| (*degraded, *load, *order));
        let now = Instant::now();
        let mut rejected = None;
        for (_, _, _, r, session) in ranked {
            match lock(&up.replicas[r].breaker).admit(now) {
                Admission::Allowed => {
                    return Pick::Go {
                        r,
                        session,
                        probe: false,
                    };
                }
                Admission::Probe => {
                    return Pick::Go {
                        r,
                        session,
                        probe: true,
                    };
                }
                rejection => {
                    rejected.get_or_insert((r, rejection));
                }
            }
        }
        // No replica up can take the call. Waiting for one to come up is
        // pointless when every other breaker is open too: fail fast then.
        let mut waitable = false;
        for (i, rep) in up.replicas.iter().enumerate() {
            if tried[i] || matches!(&*rep.conn.borrow(), Conn::Up(s) if !s.is_closed()) {
                continue;
            }
            let mut breaker = lock(&rep.breaker);
            match breaker.admit(now) {
                Admission::Allowed => waitable = true,
                Admission::Probe => {
                    // Not the trial yet: it is taken once the replica is up.
                    breaker.on_abandoned();
                    waitable = true;
                }
                rejection => {
                    rejected.get_or_insert((i, rejection));
                }
            }
        }
        match rejected {
            Some((
                r,
                Admission::Rejected {
                    retry_in,
                    failures,
                    last_failure,
                },
            )) if !waitable => {
                let name = &*up.name;
                let when = if retry_in.is_zero() {
                    "a trial call is in flight".to_owned()
                } else {
                    format!("next trial in {}", human(round_up(retry_in)))
                };
                let which = if n > 1 {
                    format!(
                        "every replica's circuit breaker is open (replica {}: after {failures} consecutive failures, last: {last_failure}); {when}",
                        r + 1
                    )
                } else {
                    format!(
                        "its circuit breaker is open after {failures} consecutive failures (last: {last_failure}); {when}"
                    )
                };
                Pick::Rejected(
                    McpError::new(
                        codes::SERVER_ERROR,
                        format!("upstream `{name}` is unavailable: {which}"),
                    )
                    .with_data(json!({ "upstream": name, "kind": "circuit_open" })),
                )
            }
            _ => Pick::NoneUp,
        }
    }

    fn record_failure(&self, up: &Upstream, r: usize, why: &str) {
        let rep = &up.replicas[r];
        let opened = lock(&rep.breaker).on_failure(Instant::now(), why);
        if opened {
            tracing::warn!(upstream = %up.name, replica = r, "circuit breaker opened: {why}");
            let incident = self.incidents.open(
                &up.name,
                IncidentKind::CircuitOpened,
                None,
                format!(
                    "{}circuit opened after {} consecutive failures (last: {why})",
                    up.replica_prefix(r),
                    up.cfg.breaker.failure_threshold
                ),
                IncidentOutcome::Open,
            );
            *lock(&rep.breaker_incident) = Some(incident);
        }
    }

    fn record_success(&self, up: &Upstream, r: usize) {
        let rep = &up.replicas[r];
        if lock(&rep.breaker).on_success() {
            tracing::info!(upstream = %up.name, replica = r, "circuit breaker closed");
            if let Some(mut i) = lock(&rep.breaker_incident).take() {
                i.outcome = IncidentOutcome::Repaired;
                self.incidents.update(&mut i);
            }
        }
    }

    /// Every item of a paginated list of upstream `up`, through its breaker.
    async fn list_paged(
        &self,
        up: &Upstream,
        method: &str,
        key: &str,
    ) -> Result<Vec<Value>, McpError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let params = match &cursor {
                Some(c) => json!({ "cursor": c }),
                None => json!({}),
            };
            let page = self.call(up, None, method, params, true).await?;
            if let Some(Value::Array(items)) = page.get(key) {
                out.extend(items.iter().cloned());
            }
            match page.get("nextCursor").and_then(Value::as_str) {
                Some(c) if !c.is_empty() => cursor = Some(c.to_owned()),
                _ => return Ok(out),
            }
        }
        Ok(out)
    }

    /// `list_paged` of every connected upstream offering `capability`, side
    /// by side; an upstream that fails is left out (and logged).
    async fn gather(
        &self,
        capability: &str,
        method: &str,
        key: &str,
    ) -> Vec<(Arc<Upstream>, Vec<Value>)> {
        let wanted: Vec<Arc<Upstream>> = self
            .upstreams()
            .into_iter()
            .filter(|u| u.connected().is_some_and(|s| s.has_capability(capability)))
            .collect();
        let lists =
            futures_util::future::join_all(wanted.iter().map(|u| self.list_paged(u, method, key)))
                .await;
        let mut out = Vec::new();
        for (u, r) in wanted.into_iter().zip(lists) {
            match r {
                Ok(items) => out.push((u, items)),
                Err(e) => {
                    tracing::warn!(upstream = %u.name, method, "left out of the list: {}", e.message);
                }
            }
        }
        out
    }
}

/// Why no replica of `up` (among those not tried) is up, in the words of
/// the first one, and whether none will ever be (all down for good).
fn why_none_up(up: &Upstream, tried: &[bool]) -> (String, bool) {
    let mut first: Option<String> = None;
    let mut for_good = true;
    for (i, rep) in up.replicas.iter().enumerate() {
        if tried[i] {
            continue;
        }
        let (what, final_) = match &*rep.conn.borrow() {
            Conn::Up(_) => ("lost its connection".to_owned(), false),
            Conn::Connecting => ("is starting".to_owned(), false),
            Conn::Down {
                reason,
                retry_at: Some(_),
            } => (format!("is restarting after: {reason}"), false),
            Conn::Down {
                reason,
                retry_at: None,
            } => (format!("is down for good: {reason}"), true),
            Conn::Stopped => ("has been shut down".to_owned(), true),
        };
        for_good &= final_;
        first.get_or_insert(what);
    }
    (
        first.unwrap_or_else(|| "has no replica left to try".into()),
        for_good,
    )
}

fn round_up(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

fn owns(index: &Index, exposed: &str, upstream: usize, original: &str) -> bool {
    index
        .routes
        .get(exposed)
        .is_some_and(|r| r.upstream == upstream && r.original == original)
}

fn parse_items<T: serde::de::DeserializeOwned>(upstream: &str, items: Vec<Value>) -> Vec<T> {
    items
        .into_iter()
        .filter_map(|v| match serde_json::from_value::<T>(v) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(upstream, "ignoring a malformed list item: {e}");
                None
            }
        })
        .collect()
}

async fn fetch_all(
    session: &Session,
    upstream: &str,
    method: &str,
    key: &str,
    timeout: Duration,
) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let params = match &cursor {
            Some(c) => json!({ "cursor": c }),
            None => json!({}),
        };
        let page = session
            .request(method, params, None, timeout)
            .await
            .map_err(|e| e.summary(upstream))?;
        if let Some(Value::Array(items)) = page.get(key) {
            out.extend(items.iter().cloned());
        }
        match page.get("nextCursor").and_then(Value::as_str) {
            Some(c) if !c.is_empty() => cursor = Some(c.to_owned()),
            _ => return Ok(out),
        }
    }
    Ok(out)
}

/// Pings on an interval; returns (with the reason) once the upstream has
/// failed `unhealthy_after` pings in a row. Never returns when health
/// checks are off.
async fn health_watch(session: Arc<Session>, cfg: HealthConfig, failing: &AtomicU32) -> String {
    if cfg.interval_secs == 0 {
        return std::future::pending().await;
    }
    let upstream = session.shared.upstream.clone();
    let period = Duration::from_secs(cfg.interval_secs);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed = 0u32;
    loop {
        tick.tick().await;
        let ping = session
            .request(
                "ping",
                json!({}),
                None,
                Duration::from_secs(cfg.timeout_secs),
            )
            .await;
        match ping {
            // An error answer still proves the upstream is alive.
            Ok(_) | Err(CallError::Rpc(_)) => {
                failed = 0;
                failing.store(0, Ordering::Relaxed);
            }
            Err(e) => {
                failed += 1;
                failing.store(failed, Ordering::Relaxed);
                tracing::warn!(upstream = %upstream, failed, "health check failed: {}", e.summary(&upstream));
                if failed >= cfg.unhealthy_after {
                    return format!(
                        "upstream `{upstream}` failed {failed} health checks in a row (last: {})",
                        e.summary(&upstream)
                    );
                }
            }
        }
    }
}

/// Frees the half-open trial slot if the call ends without an outcome.
struct ProbeGuard<'a> {
    breaker: &'a Mutex<Breaker>,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(self.breaker).on_abandoned();
        }
    }
}

fn unknown(kind: &str, name: &str) -> McpError {
    McpError::invalid_params(format!("unknown {kind}: {name}")).with_data(json!({ "name": name }))
}

impl Provider for Federation {
    fn id(&self) -> &str {
        "federation"
    }

    fn claims(&self, name: &str, tool: bool) -> bool {
        self.inner.route(name, tool).is_some()
    }

    fn fronts_others(&self) -> bool {
        true
    }

    fn list_tools<'a>(
        &'a self,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<Tool>, McpError>> {
        Box::pin(async move { Ok(self.inner.visible_tools()) })
    }

    fn call_tool<'a>(
        &'a self,
        ctx: &'a CallContext,
        name: &'a str,
        arguments: Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let (up, original) = inner
                .route(name, true)
                .ok_or_else(|| unknown("tool", name))?;
            if let Some(b) = lock(&up.lists).blocked.get(&original) {
                return Err(McpError::blocked(
                    "federation",
                    format!(
                        "tool `{name}` of upstream `{}` changed its definition since it was pinned and is blocked until an operator approves the new definition (incident {})",
                        up.name, b.incident.id
                    ),
                    json!({
                        "upstream": &*up.name,
                        "tool": original,
                        "pinnedFingerprint": b.pinned,
                        "newFingerprint": b.observed,
                        "incident": b.incident.id,
                    }),
                ));
            }
            let (read_only, idempotent) = up.hints(&original);
            // Results are cached raw (URIs as the upstream wrote them) and
            // rewritten on the way out, like fresh ones.
            let cache = up
                .cache
                .as_ref()
                .filter(|c| read_only && idempotent && c.covers(&original))
                .map(|c| (c, cache_key(&ctx.tenant, &original, &arguments)));
            let mut result = match &cache {
                Some((c, key)) => match c.get(key, Instant::now()) {
                    Lookup::Hit(v) => {
                        FederationMetrics::count(&inner.metrics.cache_hits, &up.name);
                        Some(v)
                    }
                    Lookup::Miss => {
                        FederationMetrics::count(&inner.metrics.cache_misses, &up.name);
                        None
                    }
                },
                None => None,
            };
            if result.is_none() {
                let params = json!({ "name": original, "arguments": arguments });
                let fresh = inner
                    .call(
                        &up,
                        Some(ctx),
                        "tools/call",
                        params,
                        read_only || idempotent,
                    )
                    .await?;
                if let Some((c, key)) = cache {
                    c.put(key, &fresh, Instant::now());
                }
                result = Some(fresh);
            }
            let mut result = result.unwrap_or_default();
            if !inner.verbatim_uris() {
                wrap_tool_result(&up.name, &mut result);
            }
            Ok(result)
        })
    }

    fn list_prompts<'a>(
        &'a self,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<Prompt>, McpError>> {
        Box::pin(async move { Ok(self.inner.visible_prompts()) })
    }

    fn get_prompt<'a>(
        &'a self,
        ctx: &'a CallContext,
        name: &'a str,
        arguments: Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let (up, original) = inner
                .route(name, false)
                .ok_or_else(|| unknown("prompt", name))?;
            let params = json!({ "name": original, "arguments": arguments });
            let mut result = inner
                .call(&up, Some(ctx), "prompts/get", params, true)
                .await?;
            if !inner.verbatim_uris() {
                wrap_prompt_result(&up.name, &mut result);
            }
            Ok(result)
        })
    }

    fn list_resources<'a>(
        &'a self,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<Resource>, McpError>> {
        Box::pin(async move {
            Ok(self
                .inner
                .gather_exposed("resources/list", "resources", |r: &mut Resource| &mut r.uri)
                .await)
        })
    }

    fn list_resource_templates<'a>(
        &'a self,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<ResourceTemplate>, McpError>> {
        Box::pin(async move {
            Ok(self
                .inner
                .gather_exposed(
                    "resources/templates/list",
                    "resourceTemplates",
                    |t: &mut ResourceTemplate| &mut t.uri_template,
                )
                .await)
        })
    }

    fn read_resource<'a>(
        &'a self,
        ctx: &'a CallContext,
        uri: &'a str,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let Some((up, original)) = inner.resolve_uri(uri) else {
                return Err(McpError::resource_not_found(uri));
            };
            let mut result = inner
                .call(
                    &up,
                    Some(ctx),
                    "resources/read",
                    json!({ "uri": original }),
                    true,
                )
                .await?;
            if !inner.verbatim_uris() {
                wrap_read_result(&up.name, &mut result);
            }
            Ok(result)
        })
    }

    fn complete<'a>(
        &'a self,
        ctx: &'a CallContext,
        params: &'a Value,
    ) -> BoxFuture<'a, Result<Option<Value>, McpError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let reference = params.get("ref").cloned().unwrap_or(Value::Null);
            let mut forwarded = params.clone();
            let up = match reference.get("type").and_then(Value::as_str) {
                Some("ref/prompt") => {
                    let Some(name) = reference.get("name").and_then(Value::as_str) else {
                        return Ok(None);
                    };
                    let Some((up, original)) = inner.route(name, false) else {
                        return Ok(None);
                    };
                    forwarded["ref"]["name"] = Value::String(original);
                    up
                }
                Some("ref/resource") => {
                    let Some(uri) = reference.get("uri").and_then(Value::as_str) else {
                        return Ok(None);
                    };
                    let Some((up, original)) = inner.resolve_uri(uri) else {
                        return Ok(None);
                    };
                    forwarded["ref"]["uri"] = Value::String(original.to_owned());
                    up
                }
                _ => return Ok(None),
            };
            match inner
                .call(&up, Some(ctx), "completion/complete", forwarded, true)
                .await
            {
                Ok(v) => Ok(Some(v)),
                Err(e) if e.code == codes::METHOD_NOT_FOUND => Ok(Some(
                    json!({ "completion": { "values": [], "total": 0, "hasMore": false } }),
                )),
                Err(e) => Err(e),
            }
        })
    }

    fn events(&self) -> Option<broadcast::Receiver<ProviderEvent>> {
        Some(self.inner.events.subscribe())
    }
}
