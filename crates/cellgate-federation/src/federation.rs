//! [`Federation`]: every upstream behind one [`Provider`], each with a
//! supervisor that connects it, watches its health, restarts it with
//! backoff, and keeps its tool and prompt lists (pinned) up to date.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cellgate_config::{
    FederationConfig, HealthConfig, PinMode, RestartPolicy, UpstreamConfig, is_valid_upstream_name,
};
use cellgate_kernel::{
    BoxFuture, CallContext, McpError, Prompt, Provider, ProviderEvent, Resource, ResourceTemplate,
    Tool, codes,
};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::breaker::{Admission, Breaker, BreakerState, backoff_delay};
use crate::incidents::{Incident, IncidentKind, IncidentOutcome, IncidentSink, Incidents};
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

/// Where an upstream's connection stands.
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
    /// The federation was shut down.
    Stopped,
}

/// What an operator needs to know about one upstream.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub state: UpstreamState,
    /// Why it is down or restarting.
    pub last_error: Option<String>,
    /// The process id of a stdio upstream that is up.
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

#[derive(Default)]
struct Lists {
    tools_fetched: bool,
    prompts_fetched: bool,
    /// Everything the upstream lists, blocked tools included.
    tools: Vec<Tool>,
    prompts: Vec<Prompt>,
    /// Original name → why it is held back.
    blocked: BTreeMap<String, BlockedTool>,
}

struct Upstream {
    name: Arc<str>,
    cfg: UpstreamConfig,
    conn: watch::Sender<Conn>,
    ready: watch::Sender<bool>,
    breaker: Mutex<Breaker>,
    lists: Mutex<Lists>,
    /// The open availability incident (exit, hang, failed start).
    incident: Mutex<Option<Incident>>,
    breaker_incident: Mutex<Option<Incident>>,
    restarts: AtomicU32,
    refreshing: tokio::sync::Mutex<()>,
}

struct Inner {
    ns: Namespace,
    pin_mode: PinMode,
    upstreams: Vec<Upstream>,
    events: broadcast::Sender<ProviderEvent>,
    pins: Arc<dyn PinStore>,
    incidents: Incidents,
    stop: CancellationToken,
    tools: RwLock<Index>,
    prompts: RwLock<Index>,
    reported_collisions: Mutex<HashSet<(String, String)>>,
}

/// Many upstream MCP servers as one [`Provider`].
///
/// Build it with [`Federation::builder`]; it starts every enabled upstream
/// and supervises it until the federation is dropped or
/// [`Federation::shutdown`] is called. Keep an `Arc<Federation>` to use the
/// operator API ([`Federation::status`], [`Federation::approve_pin`], …)
/// and hand a clone to the catalog as `Arc<dyn Provider>`.
pub struct Federation {
    inner: Arc<Inner>,
}

/// Sets up a [`Federation`].
pub struct FederationBuilder {
    config: FederationConfig,
    upstreams: Vec<UpstreamConfig>,
    pins: Option<Arc<dyn PinStore>>,
    sinks: Vec<Arc<dyn IncidentSink>>,
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

    /// Starts every enabled upstream and waits until each has either come
    /// up or failed its first attempt (failed ones keep being retried in the
    /// background). Fails on names that are invalid or not unique, and when
    /// two upstreams offer a tool or prompt under the same exposed name.
    pub async fn start(self) -> Result<Federation, FederationError> {
        let enabled: Vec<UpstreamConfig> =
            self.upstreams.into_iter().filter(|u| u.enabled).collect();
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
        let (events, _) = broadcast::channel(256);
        let inner = Arc::new(Inner {
            ns: Namespace::new(self.config.namespace, &self.config.separator, enabled.len()),
            pin_mode: self.config.tool_pinning,
            upstreams: enabled
                .into_iter()
                .map(|cfg| Upstream {
                    name: Arc::from(cfg.name.as_str()),
                    breaker: Mutex::new(Breaker::new(
                        cfg.breaker.failure_threshold,
                        Duration::from_secs(cfg.breaker.open_secs),
                    )),
                    cfg,
                    conn: watch::Sender::new(Conn::Connecting),
                    ready: watch::Sender::new(false),
                    lists: Mutex::default(),
                    incident: Mutex::default(),
                    breaker_incident: Mutex::default(),
                    restarts: AtomicU32::new(0),
                    refreshing: tokio::sync::Mutex::new(()),
                })
                .collect(),
            events,
            pins: self.pins.unwrap_or_else(|| Arc::new(MemoryPinStore::new())),
            incidents: Incidents::new(
                usize::try_from(self.config.incident_history).unwrap_or(1000),
                self.sinks,
            ),
            stop: CancellationToken::new(),
            tools: RwLock::default(),
            prompts: RwLock::default(),
            reported_collisions: Mutex::default(),
        });
        for idx in 0..inner.upstreams.len() {
            tokio::spawn(inner.clone().supervise(idx));
        }
        for up in &inner.upstreams {
            let limit = Duration::from_secs(up.cfg.connect_timeout_secs) + Duration::from_secs(5);
            let mut rx = up.ready.subscribe();
            let _ = tokio::time::timeout(limit, rx.wait_for(|r| *r)).await;
        }
        let federation = Federation { inner };
        let first = {
            let t = federation
                .inner
                .tools
                .read()
                .unwrap_or_else(|e| e.into_inner());
            let p = federation
                .inner
                .prompts
                .read()
                .unwrap_or_else(|e| e.into_inner());
            t.collisions.first().or(p.collisions.first()).cloned()
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
        }
    }

    /// Stops every upstream (stdio processes are killed with their process
    /// group). Also done when the federation is dropped.
    pub fn shutdown(&self) {
        self.inner.stop.cancel();
    }

    /// One entry per enabled upstream, in configuration order.
    pub fn status(&self) -> Vec<UpstreamStatus> {
        let now = Instant::now();
        self.inner
            .upstreams
            .iter()
            .map(|up| {
                let conn = up.conn.borrow().clone();
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
                let breaker = lock(&up.breaker);
                let lists = lock(&up.lists);
                UpstreamStatus {
                    name: up.name.to_string(),
                    state,
                    last_error,
                    pid: session.as_ref().and_then(|s| s.pid),
                    protocol_version: session.as_ref().map(|s| s.protocol_version.clone()),
                    server_info: session.as_ref().map(|s| s.server_info.clone()),
                    breaker: breaker.state(now),
                    consecutive_failures: breaker.consecutive_failures(),
                    restarts: up.restarts.load(Ordering::Relaxed),
                    tools: lists
                        .tools
                        .iter()
                        .filter(|t| !lists.blocked.contains_key(&t.name))
                        .count(),
                    blocked_tools: lists.blocked.keys().cloned().collect(),
                }
            })
            .collect()
    }

    /// Incidents kept in memory, oldest first.
    pub fn incidents(&self) -> Vec<Incident> {
        self.inner.incidents.memory().list()
    }

    /// Changed tool definitions waiting for approval.
    pub fn pending_approvals(&self) -> Vec<PendingApproval> {
        let mut out = Vec::new();
        for up in &self.inner.upstreams {
            for (tool, b) in &lock(&up.lists).blocked {
                out.push(PendingApproval {
                    upstream: up.name.to_string(),
                    tool: tool.clone(),
                    exposed: self.inner.ns.expose(&up.name, tool),
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
        let idx = inner
            .find_upstream(upstream)
            .ok_or_else(|| FederationError::UnknownUpstream(upstream.to_owned()))?;
        let up = &inner.upstreams[idx];
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
}

impl Drop for Federation {
    fn drop(&mut self) {
        self.inner.stop.cancel();
    }
}

impl Inner {
    /// Every upstream's resources (or templates) from `method`, with the URI
    /// field that `uri` picks rewritten to the one clients see.
    async fn gather_exposed<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        key: &str,
        uri: fn(&mut T) -> &mut String,
    ) -> Vec<T> {
        let mut out = Vec::new();
        for (i, items) in self.gather("resources", method, key).await {
            let name = &self.upstreams[i].name;
            for mut item in parse_items::<T>(name, items) {
                let field = uri(&mut item);
                *field = self.expose_uri(name, field);
                out.push(item);
            }
        }
        out
    }

    /// With one upstream and unprefixed names, URIs pass through verbatim:
    /// the gateway is then transparent, and there is nobody to tell apart.
    fn verbatim_uris(&self) -> bool {
        self.upstreams.len() == 1 && !self.ns.is_prefixed()
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
    fn resolve_uri<'u>(&self, uri: &'u str) -> Option<(usize, &'u str)> {
        if self.verbatim_uris() {
            return Some((0, uri));
        }
        let (name, original) = unwrap_uri(uri)?;
        Some((self.find_upstream(name)?, original))
    }

    fn find_upstream(&self, name: &str) -> Option<usize> {
        self.upstreams
            .iter()
            .position(|u| &*u.name == name)
            .or_else(|| {
                self.upstreams
                    .iter()
                    .position(|u| u.name.eq_ignore_ascii_case(name))
            })
    }

    // ---- supervision -------------------------------------------------

    async fn supervise(self: Arc<Self>, idx: usize) {
        let up = &self.upstreams[idx];
        let name = up.name.clone();
        // Consecutive failures; the n-th failure is followed by repair attempt n.
        let mut failures: u32 = 0;
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            up.conn.send_replace(Conn::Connecting);
            let (notice_tx, mut notices) = mpsc::unbounded_channel();
            let connected = tokio::select! {
                c = Session::connect(&up.cfg, notice_tx) => c,
                _ = self.stop.cancelled() => break,
            };
            let (kind, detail) = match connected {
                Err(e) => (IncidentKind::ConnectFailed, e),
                Ok(session) => {
                    let since = Instant::now();
                    if failures > 0 {
                        up.restarts.fetch_add(1, Ordering::Relaxed);
                    }
                    // Calls may go in while the lists are read (a slow
                    // listing must not hold them up).
                    up.conn.send_replace(Conn::Up(session.clone()));
                    self.repaired(idx, failures);
                    if let Err(e) = self.refresh(idx, &session, true, true).await {
                        tracing::warn!(upstream = %name, "cannot list the upstream's tools and prompts: {e}");
                    }
                    up.ready.send_replace(true);
                    let mut health = Box::pin(health_watch(session.clone(), up.cfg.health.clone()));
                    let ended = loop {
                        tokio::select! {
                            reason = session.closed() => break match reason {
                                CloseReason::Protocol(_) => (IncidentKind::ProtocolViolation, reason.describe(&name)),
                                other => (IncidentKind::Exited, other.describe(&name)),
                            },
                            why = &mut health => break (IncidentKind::Hung, why),
                            Some(n) = notices.recv() => self.clone().on_notice(idx, &session, n),
                            _ = self.stop.cancelled() => {
                                session.shutdown();
                                up.conn.send_replace(Conn::Stopped);
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
            if self.stop.is_cancelled() {
                break;
            }
            failures = failures.saturating_add(1);
            let incident = self.failed(idx, kind, &detail, failures);
            let r = &up.cfg.restart;
            let failed_repairs = failures - 1;
            if r.policy == RestartPolicy::Never
                || (r.max_attempts > 0 && failed_repairs >= r.max_attempts)
            {
                tracing::error!(upstream = %name, failed_repairs, "giving up on the upstream: {detail}");
                if let Some(mut i) = incident {
                    i.outcome = IncidentOutcome::GaveUp;
                    self.incidents.update(&mut i);
                    *lock(&up.incident) = None;
                }
                up.conn.send_replace(Conn::Down {
                    reason: detail,
                    retry_at: None,
                });
                up.ready.send_replace(true);
                return;
            }
            let delay = backoff_delay(r, failures);
            if failed_repairs >= r.alert_after {
                tracing::error!(upstream = %name, failed_repairs, "upstream still failing, next attempt in {}: {detail}", human(delay));
            } else {
                tracing::warn!(upstream = %name, "upstream failed, restarting in {}: {detail}", human(delay));
            }
            up.conn.send_replace(Conn::Down {
                reason: detail,
                retry_at: Some(Instant::now() + delay),
            });
            up.ready.send_replace(true);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.cancelled() => break,
            }
        }
        up.conn.send_replace(Conn::Stopped);
    }

    /// Opens (or updates) the availability incident after a failure.
    fn failed(
        &self,
        idx: usize,
        kind: IncidentKind,
        detail: &str,
        failures: u32,
    ) -> Option<Incident> {
        let up = &self.upstreams[idx];
        let mut slot = lock(&up.incident);
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

    /// The upstream is up again: closes its open incident.
    fn repaired(&self, idx: usize, failures: u32) {
        let up = &self.upstreams[idx];
        if let Some(mut i) = lock(&up.incident).take() {
            i.repair_attempts = failures;
            i.outcome = IncidentOutcome::Repaired;
            self.incidents.update(&mut i);
            tracing::info!(upstream = %up.name, attempts = failures, "upstream repaired");
        }
    }

    fn on_notice(self: Arc<Self>, idx: usize, session: &Arc<Session>, notice: Notice) {
        let name = self.upstreams[idx].name.clone();
        match notice {
            Notice::ToolsChanged | Notice::PromptsChanged => {
                let session = session.clone();
                let tools = notice == Notice::ToolsChanged;
                tokio::spawn(async move {
                    if let Err(e) = self.refresh(idx, &session, tools, !tools).await {
                        tracing::warn!(upstream = %name, "cannot re-list after a change: {e}");
                    }
                });
            }
            Notice::ResourcesChanged => {
                let _ = self.events.send(ProviderEvent::ResourcesChanged);
            }
            Notice::ResourceUpdated(uri) => {
                let _ = self.events.send(ProviderEvent::ResourceUpdated {
                    uri: self.expose_uri(&name, &uri),
                });
            }
        }
    }

    // ---- lists, pins, indexes ------------------------------------------

    /// Re-reads the upstream's tools and/or prompts, applies pins, rebuilds
    /// the indexes and announces what changed.
    async fn refresh(
        &self,
        idx: usize,
        session: &Arc<Session>,
        tools: bool,
        prompts: bool,
    ) -> Result<(), String> {
        let up = &self.upstreams[idx];
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
                    self.apply_tools(idx, parsed).await;
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

    async fn apply_tools(&self, idx: usize, tools: Vec<Tool>) {
        let up = &self.upstreams[idx];
        let previous = lock(&up.lists).blocked.clone();
        let mut blocked = BTreeMap::new();
        if self.pin_mode != PinMode::Off {
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
                if self.pin_mode == PinMode::Warn {
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
        lists.tools = tools;
        lists.blocked = blocked;
        lists.tools_fetched = true;
    }

    fn rebuild_indexes(&self) {
        let names: Vec<&str> = self.upstreams.iter().map(|u| &*u.name).collect();
        let (tool_names, prompt_names): (Vec<Vec<String>>, Vec<Vec<String>>) = self
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
        let tools = Index::build(&self.ns, &names, &tool_names);
        let prompts = Index::build(&self.ns, &names, &prompt_names);
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
        *self.tools.write().unwrap_or_else(|e| e.into_inner()) = tools;
        *self.prompts.write().unwrap_or_else(|e| e.into_inner()) = prompts;
    }

    fn visible_tools(&self) -> Vec<Tool> {
        let index = self.tools.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (i, up) in self.upstreams.iter().enumerate() {
            let lists = lock(&up.lists);
            for t in &lists.tools {
                if lists.blocked.contains_key(&t.name) {
                    continue;
                }
                let exposed = self.ns.expose(&up.name, &t.name);
                if owns(&index, &exposed, i, &t.name) {
                    let mut t = t.clone();
                    t.name = exposed;
                    out.push(t);
                }
            }
        }
        out
    }

    fn visible_prompts(&self) -> Vec<Prompt> {
        let index = self.prompts.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (i, up) in self.upstreams.iter().enumerate() {
            for p in &lock(&up.lists).prompts {
                let exposed = self.ns.expose(&up.name, &p.name);
                if owns(&index, &exposed, i, &p.name) {
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
    fn route(&self, exposed: &str, tools: bool) -> Option<Route> {
        let index = if tools { &self.tools } else { &self.prompts };
        if let Some(r) = index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .routes
            .get(exposed)
        {
            return Some(r.clone());
        }
        let names = self.upstreams.iter().map(|u| &*u.name);
        self.ns
            .candidates(exposed, names)
            .into_iter()
            .find_map(|(name, original)| {
                let i = self.upstreams.iter().position(|u| &*u.name == name)?;
                let lists = lock(&self.upstreams[i].lists);
                let fetched = if tools {
                    lists.tools_fetched
                } else {
                    lists.prompts_fetched
                };
                (!fetched).then(|| Route {
                    upstream: i,
                    original: original.to_owned(),
                })
            })
    }

    // ---- calls ----------------------------------------------------------

    /// Sends one request to upstream `idx` through its circuit breaker,
    /// waiting (within the upstream's timeout) for it to come up if it is
    /// starting or restarting.
    async fn call(
        &self,
        idx: usize,
        ctx: Option<&CallContext>,
        method: &str,
        params: Value,
    ) -> Result<Value, McpError> {
        let up = &self.upstreams[idx];
        let name = &*up.name;
        let timeout = Duration::from_secs(up.cfg.timeout_secs);
        let admission = lock(&up.breaker).admit(Instant::now());
        let probe = match admission {
            Admission::Allowed => false,
            Admission::Probe => true,
            Admission::Rejected {
                retry_in,
                failures,
                last_failure,
            } => {
                let when = if retry_in.is_zero() {
                    "a trial call is in flight".to_owned()
                } else {
                    format!("next trial in {}", human(round_up(retry_in)))
                };
                return Err(McpError::new(
                    codes::SERVER_ERROR,
                    format!(
                        "upstream `{name}` is unavailable: its circuit breaker is open after {failures} consecutive failures (last: {last_failure}); {when}"
                    ),
                )
                .with_data(json!({ "upstream": name, "kind": "circuit_open" })));
            }
        };
        let mut guard = ProbeGuard {
            breaker: &up.breaker,
            armed: probe,
        };
        let deadline = Instant::now() + timeout;
        let session = match self.session_until(idx, deadline).await {
            Ok(s) => s,
            Err(e) => {
                guard.armed = false;
                self.record_failure(idx, &e.message);
                return Err(e);
            }
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
                self.record_success(idx);
                Ok(v)
            }
            Err(CallError::Rpc(e)) => {
                self.record_success(idx);
                Err(e)
            }
            Err(e) if !e.is_upstream_failure() => {
                if probe {
                    lock(&up.breaker).on_abandoned();
                }
                Err(e.to_mcp(name))
            }
            Err(e) => {
                self.record_failure(idx, &e.summary(name));
                Err(e.to_mcp(name))
            }
        }
    }

    async fn session_until(&self, idx: usize, deadline: Instant) -> Result<Arc<Session>, McpError> {
        let up = &self.upstreams[idx];
        let name = &*up.name;
        let unavailable = |what: String| {
            McpError::new(codes::SERVER_ERROR, format!("upstream `{name}` {what}"))
                .with_data(json!({ "upstream": name, "kind": "unavailable" }))
        };
        let mut rx = up.conn.subscribe();
        loop {
            let waiting_because = match &*rx.borrow_and_update() {
                Conn::Up(s) if !s.is_closed() => return Ok(s.clone()),
                Conn::Up(_) => "lost its connection".to_owned(),
                Conn::Connecting => "is starting".to_owned(),
                Conn::Down {
                    reason,
                    retry_at: Some(_),
                } => format!("is restarting after: {reason}"),
                Conn::Down {
                    reason,
                    retry_at: None,
                } => return Err(unavailable(format!("is down for good: {reason}"))),
                Conn::Stopped => return Err(unavailable("has been shut down".into())),
            };
            match tokio::time::timeout_at(deadline.into(), rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    return Err(unavailable(format!(
                        "{waiting_because}, and did not come up within its timeout"
                    )));
                }
            }
        }
    }

    fn record_failure(&self, idx: usize, why: &str) {
        let up = &self.upstreams[idx];
        let opened = lock(&up.breaker).on_failure(Instant::now(), why);
        if opened {
            tracing::warn!(upstream = %up.name, "circuit breaker opened: {why}");
            let incident = self.incidents.open(
                &up.name,
                IncidentKind::CircuitOpened,
                None,
                format!(
                    "circuit opened after {} consecutive failures (last: {why})",
                    up.cfg.breaker.failure_threshold
                ),
                IncidentOutcome::Open,
            );
            *lock(&up.breaker_incident) = Some(incident);
        }
    }

    fn record_success(&self, idx: usize) {
        let up = &self.upstreams[idx];
        if lock(&up.breaker).on_success() {
            tracing::info!(upstream = %up.name, "circuit breaker closed");
            if let Some(mut i) = lock(&up.breaker_incident).take() {
                i.outcome = IncidentOutcome::Repaired;
                self.incidents.update(&mut i);
            }
        }
    }

    fn connected(&self, idx: usize) -> Option<Arc<Session>> {
        match &*self.upstreams[idx].conn.borrow() {
            Conn::Up(s) if !s.is_closed() => Some(s.clone()),
            _ => None,
        }
    }

    /// Every item of a paginated list of upstream `idx`, through its breaker.
    async fn list_paged(
        &self,
        idx: usize,
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
            let page = self.call(idx, None, method, params).await?;
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
    async fn gather(&self, capability: &str, method: &str, key: &str) -> Vec<(usize, Vec<Value>)> {
        let wanted: Vec<usize> = (0..self.upstreams.len())
            .filter(|&i| {
                self.connected(i)
                    .is_some_and(|s| s.has_capability(capability))
            })
            .collect();
        let lists =
            futures_util::future::join_all(wanted.iter().map(|&i| self.list_paged(i, method, key)))
                .await;
        let mut out = Vec::new();
        for (i, r) in wanted.into_iter().zip(lists) {
            match r {
                Ok(items) => out.push((i, items)),
                Err(e) => {
                    tracing::warn!(upstream = %self.upstreams[i].name, method, "left out of the list: {}", e.message);
                }
            }
        }
        out
    }
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
async fn health_watch(session: Arc<Session>, cfg: HealthConfig) -> String {
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
            Ok(_) | Err(CallError::Rpc(_)) => failed = 0,
            Err(e) => {
                failed += 1;
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
            let route = inner
                .route(name, true)
                .ok_or_else(|| unknown("tool", name))?;
            let up = &inner.upstreams[route.upstream];
            if let Some(b) = lock(&up.lists).blocked.get(&route.original) {
                return Err(McpError::blocked(
                    "federation",
                    format!(
                        "tool `{name}` of upstream `{}` changed its definition since it was pinned and is blocked until an operator approves the new definition (incident {})",
                        up.name, b.incident.id
                    ),
                    json!({
                        "upstream": &*up.name,
                        "tool": route.original,
                        "pinnedFingerprint": b.pinned,
                        "newFingerprint": b.observed,
                        "incident": b.incident.id,
                    }),
                ));
            }
            let params = json!({ "name": route.original, "arguments": arguments });
            let mut result = inner
                .call(route.upstream, Some(ctx), "tools/call", params)
                .await?;
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
            let route = inner
                .route(name, false)
                .ok_or_else(|| unknown("prompt", name))?;
            let params = json!({ "name": route.original, "arguments": arguments });
            let mut result = inner
                .call(route.upstream, Some(ctx), "prompts/get", params)
                .await?;
            if !inner.verbatim_uris() {
                wrap_prompt_result(&inner.upstreams[route.upstream].name, &mut result);
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
            let Some((idx, original)) = inner.resolve_uri(uri) else {
                return Err(McpError::resource_not_found(uri));
            };
            let mut result = inner
                .call(idx, Some(ctx), "resources/read", json!({ "uri": original }))
                .await?;
            if !inner.verbatim_uris() {
                wrap_read_result(&inner.upstreams[idx].name, &mut result);
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
            let idx = match reference.get("type").and_then(Value::as_str) {
                Some("ref/prompt") => {
                    let Some(name) = reference.get("name").and_then(Value::as_str) else {
                        return Ok(None);
                    };
                    let Some(route) = inner.route(name, false) else {
                        return Ok(None);
                    };
                    forwarded["ref"]["name"] = Value::String(route.original);
                    route.upstream
                }
                Some("ref/resource") => {
                    let Some(uri) = reference.get("uri").and_then(Value::as_str) else {
                        return Ok(None);
                    };
                    let Some((idx, original)) = inner.resolve_uri(uri) else {
                        return Ok(None);
                    };
                    forwarded["ref"]["uri"] = Value::String(original.to_owned());
                    idx
                }
                _ => return Ok(None),
            };
            match inner
                .call(idx, Some(ctx), "completion/complete", forwarded)
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
