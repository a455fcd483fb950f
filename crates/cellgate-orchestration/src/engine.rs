//! The engine: submitting tasks, the worker pool that runs them, lease
//! renewal, and the maintenance that re-queues what dead workers held.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cellgate_kernel::{CancellationToken, Identity};
use cellgate_store::{
    CrossTenantLeases, NewTask, Resources, Store, Submitted, TaskFilter, TaskLease, TaskOutcome,
    TaskRecord, TaskStatus, TenantId,
};
use rand::Rng as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::runner::{
    ProgressSink, TaskProgress, ToolCall, ToolRunner, is_permanent, is_tool_error,
    principal_from_json, principal_to_json, result_text,
};
use crate::{Clock, OrchestrationError, SystemClock};

/// What a task gets when its submission does not say.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskDefaults {
    pub queue: String,
    pub time_limit: Duration,
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long results are kept; `None`: forever.
    pub result_ttl: Option<Duration>,
}

impl Default for TaskDefaults {
    fn default() -> Self {
        Self {
            queue: "default".into(),
            time_limit: Duration::from_secs(300),
            max_retries: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            result_ttl: Some(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

/// How the engine runs.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// The owner name of this engine's leases. Give each instance a stable
    /// one (e.g. from its data directory) so that after a crash
    /// [`Engine::recover_on_startup`] takes its leases back at once instead
    /// of waiting for them to expire; default: random per process.
    pub instance_id: Option<String>,
    /// Queues the in-process workers serve, with how many tasks of each run
    /// at once. Empty: no in-process workers (tasks wait for another
    /// instance or for nodes).
    pub queues: BTreeMap<String, usize>,
    /// How long a lease lasts without renewal.
    pub visibility_timeout: Duration,
    /// How often leases are renewed; well under the visibility timeout.
    pub heartbeat_interval: Duration,
    /// How long an idle worker waits before looking for work again (a
    /// submission to this instance wakes it at once).
    pub poll_interval: Duration,
    /// How often expired leases are re-queued, expired results purged and
    /// orphaned workflows taken over.
    pub maintenance_interval: Duration,
    /// Most tasks leased in one query.
    pub lease_batch: u32,
    /// Most phase executions of one run (a guard against transitions that
    /// keep looping on data).
    pub max_phase_runs: u32,
    /// A node whose last heartbeat is older is shown offline.
    pub node_stale_after: Duration,
    pub defaults: TaskDefaults,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            instance_id: None,
            queues: BTreeMap::from([("default".to_owned(), 16)]),
            visibility_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            poll_interval: Duration::from_millis(250),
            maintenance_interval: Duration::from_secs(2),
            lease_batch: 64,
            max_phase_runs: 1000,
            node_stale_after: Duration::from_secs(30),
            defaults: TaskDefaults::default(),
        }
    }
}

/// A task as a client submits it (the `submit_task` tool's arguments).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// The tool to call: any tool cellgate serves to the submitter.
    pub tool: String,
    #[serde(default)]
    pub arguments: Map<String, Value>,
    #[serde(default)]
    pub queue: Option<String>,
    /// Higher runs first (default 0).
    #[serde(default)]
    pub priority: Option<i64>,
    /// Not before this time (ms since the epoch).
    #[serde(default)]
    pub eta_ms: Option<i64>,
    /// Not before this many ms from now.
    #[serde(default)]
    pub countdown_ms: Option<i64>,
    #[serde(default)]
    pub time_limit_ms: Option<i64>,
    #[serde(default)]
    pub max_retries: Option<i64>,
    #[serde(default)]
    pub backoff_base_ms: Option<i64>,
    #[serde(default)]
    pub backoff_max_ms: Option<i64>,
    /// Submitting again with the same key returns the first task.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub result_ttl_ms: Option<i64>,
    /// Resources and labels a node must offer; such a task runs only on
    /// registered nodes.
    #[serde(default)]
    #[schemars(with = "Option<Value>")]
    pub requirements: Option<Resources>,
}

/// What one [`Engine::work_once`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkReport {
    pub leased: usize,
    pub succeeded: usize,
    pub retried: usize,
    pub failed: usize,
    /// Completions refused because the lease was no longer current.
    pub fenced: usize,
}

/// What one [`Engine::maintain`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    pub requeued: usize,
    pub failed: usize,
    pub purged: u64,
    pub workflows_resumed: usize,
}

/// The delay before retry number `attempt` (1 after the first failure):
/// exponential from `base`, capped at `max`, with "equal jitter" — half the
/// delay fixed, half random — so retries of many tasks spread out.
pub fn backoff_ms(base_ms: i64, max_ms: i64, attempt: i64) -> i64 {
    let shift = (attempt - 1).clamp(0, 40) as u32;
    let delay = base_ms.saturating_mul(1_i64 << shift).min(max_ms).max(0);
    let half = delay / 2;
    half + rand::rng().random_range(0..=delay - half)
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) leases: CrossTenantLeases,
    pub(crate) runner: Arc<dyn ToolRunner>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: EngineConfig,
    pub(crate) owner: String,
    /// Tasks this process is running: id → (attempt, cancel).
    running: Mutex<HashMap<String, (i64, CancellationToken)>>,
    /// Workflows this process drives: id → cancel.
    pub(crate) drivers: Mutex<HashMap<String, CancellationToken>>,
    wake: Notify,
    pub(crate) stop: CancellationToken,
}

/// The orchestration engine. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("owner", &self.inner.owner)
            .finish_non_exhaustive()
    }
}

pub(crate) fn tenant_of(identity: &Identity) -> Result<TenantId, OrchestrationError> {
    TenantId::parse(&identity.tenant).map_err(OrchestrationError::from)
}

pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Engine {
    pub fn new(store: Store, runner: Arc<dyn ToolRunner>, config: EngineConfig) -> Engine {
        Self::with_clock(store, runner, config, Arc::new(SystemClock))
    }

    pub fn with_clock(
        store: Store,
        runner: Arc<dyn ToolRunner>,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
    ) -> Engine {
        let owner = config
            .instance_id
            .clone()
            .unwrap_or_else(|| format!("engine-{}", uuid::Uuid::new_v4().simple()));
        Engine {
            inner: Arc::new(Inner {
                leases: store.cross_tenant_leases(),
                store,
                runner,
                clock,
                config,
                owner,
                running: Mutex::default(),
                drivers: Mutex::default(),
                wake: Notify::new(),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// The name this engine's leases carry.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn now(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    fn visibility(&self) -> i64 {
        ms(self.inner.config.visibility_timeout)
    }

    // ---- tasks --------------------------------------------------------------------

    fn new_task(
        &self,
        identity: &Identity,
        req: &TaskRequest,
    ) -> Result<NewTask, OrchestrationError> {
        let d = &self.inner.config.defaults;
        let now = self.now();
        if req.eta_ms.is_some() && req.countdown_ms.is_some() {
            return Err(OrchestrationError::invalid(
                "eta_ms",
                "give eta_ms or countdown_ms, not both",
            ));
        }
        if req.countdown_ms.is_some_and(|c| c < 0) {
            return Err(OrchestrationError::invalid(
                "countdown_ms",
                "must not be negative",
            ));
        }
        let eta_ms = match (req.eta_ms, req.countdown_ms) {
            (Some(eta), _) => eta,
            (None, Some(c)) => now.saturating_add(c),
            (None, None) => now,
        };
        let backoff_base_ms = req.backoff_base_ms.unwrap_or(ms(d.backoff_base));
        Ok(NewTask {
            queue: req.queue.clone().unwrap_or_else(|| d.queue.clone()),
            tool: req.tool.clone(),
            arguments: Value::Object(req.arguments.clone()),
            principal_id: identity.principal.id.to_string(),
            principal: principal_to_json(&identity.principal),
            priority: req.priority.unwrap_or(0),
            eta_ms,
            time_limit_ms: req.time_limit_ms.unwrap_or(ms(d.time_limit)),
            max_retries: req.max_retries.unwrap_or(i64::from(d.max_retries)),
            backoff_base_ms,
            backoff_max_ms: req
                .backoff_max_ms
                .unwrap_or(ms(d.backoff_max).max(backoff_base_ms)),
            idempotency_key: req.idempotency_key.clone(),
            result_ttl_ms: req.result_ttl_ms.or(d.result_ttl.map(ms)),
            requirements: req.requirements.clone(),
        })
    }

    /// Enqueues a task as `identity`. A tool that does not exist is refused
    /// now, unless the task has node requirements (nodes run tools of their
    /// own).
    pub async fn submit(
        &self,
        identity: &Identity,
        req: &TaskRequest,
    ) -> Result<Submitted, OrchestrationError> {
        let mut done = self
            .submit_many(identity, std::slice::from_ref(req))
            .await?;
        done.pop()
            .ok_or_else(|| OrchestrationError::Conflict("the submitted task vanished".into()))
    }

    /// Enqueues several tasks in one transaction.
    pub async fn submit_many(
        &self,
        identity: &Identity,
        reqs: &[TaskRequest],
    ) -> Result<Vec<Submitted>, OrchestrationError> {
        let tenant = tenant_of(identity)?;
        let mut checked = HashSet::new();
        let mut tasks = Vec::with_capacity(reqs.len());
        for req in reqs {
            if req.requirements.is_none() && checked.insert(req.tool.clone()) {
                let exists = self
                    .inner
                    .runner
                    .tool_exists(identity, &req.tool)
                    .await
                    .map_err(|e| OrchestrationError::invalid("tool", e.message))?;
                if !exists {
                    return Err(OrchestrationError::invalid(
                        "tool",
                        format!("unknown tool `{}`", req.tool),
                    ));
                }
            }
            tasks.push(self.new_task(identity, req)?);
        }
        let done = self
            .inner
            .store
            .scope(&tenant)
            .tasks()
            .submit_many(&tasks, self.now())
            .await?;
        self.inner.wake.notify_waiters();
        Ok(done)
    }

    pub async fn get_task(
        &self,
        identity: &Identity,
        id: &str,
    ) -> Result<TaskRecord, OrchestrationError> {
        let tenant = tenant_of(identity)?;
        self.inner
            .store
            .scope(&tenant)
            .tasks()
            .get(id)
            .await?
            .ok_or_else(|| OrchestrationError::NotFound {
                kind: "task",
                id: id.to_owned(),
            })
    }

    pub async fn list_tasks(
        &self,
        identity: &Identity,
        filter: &TaskFilter,
    ) -> Result<Vec<TaskRecord>, OrchestrationError> {
        let tenant = tenant_of(identity)?;
        Ok(self.inner.store.scope(&tenant).tasks().list(filter).await?)
    }

    /// Cancels a queued or running task; a running one is stopped here at
    /// once, on another instance at its next heartbeat.
    pub async fn cancel_task(
        &self,
        identity: &Identity,
        id: &str,
    ) -> Result<TaskRecord, OrchestrationError> {
        let tenant = tenant_of(identity)?;
        let reason = format!("cancelled by {}", identity.principal.id);
        let task = self
            .inner
            .store
            .scope(&tenant)
            .tasks()
            .cancel(id, &reason, self.now())
            .await
            .map_err(|e| match e {
                cellgate_store::StoreError::Conflict { message } => {
                    OrchestrationError::Conflict(message)
                }
                other => other.into(),
            })?
            .ok_or_else(|| OrchestrationError::NotFound {
                kind: "task",
                id: id.to_owned(),
            })?;
        if let Some((_, token)) = self.lock_running().get(id) {
            token.cancel();
        }
        Ok(task)
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, CancellationToken)>> {
        self.inner.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How an attempt that failed with `error` ends.
    pub(crate) fn failure(&self, task: &TaskRecord, error: String, permanent: bool) -> TaskOutcome {
        if !permanent && task.attempts <= task.max_retries {
            let delay = backoff_ms(task.backoff_base_ms, task.backoff_max_ms, task.attempts);
            TaskOutcome::Retry {
                error,
                at_ms: self.now().saturating_add(delay),
            }
        } else {
            TaskOutcome::Failed { error }
        }
    }

    /// Runs one leased task to an outcome (does not write it).
    async fn run_task(&self, task: TaskRecord) -> Option<(TaskLease, TaskOutcome)> {
        let lease = task.lease()?;
        let principal = match principal_from_json(&task.principal) {
            Ok(p) => p,
            Err(e) => return Some((lease, TaskOutcome::Failed { error: e })),
        };
        let identity = Identity {
            tenant: task.tenant.to_string(),
            principal,
        };
        let token = self.inner.stop.child_token();
        self.lock_running()
            .insert(task.id.clone(), (task.attempts, token.clone()));
        let mut meta = Map::new();
        meta.insert(
            "cellgate/task".into(),
            json!({ "id": task.id, "attempt": task.attempts, "idempotencyKey": task.idempotency_key }),
        );
        meta.insert("progressToken".into(), json!(format!("task:{}", task.id)));
        let progress = ProgressWriter::sink(self.clone(), lease.clone());
        let call = ToolCall {
            identity,
            tool: task.tool.clone(),
            arguments: match &task.arguments {
                Value::Object(m) => m.clone(),
                _ => Map::new(),
            },
            meta,
            cancel: token.clone(),
            progress: Some(progress),
        };
        let limit = Duration::from_millis(u64::try_from(task.time_limit_ms).unwrap_or(1));
        let run = self.inner.runner.run(call);
        let outcome = tokio::select! {
            r = tokio::time::timeout(limit, run) => match r {
                Ok(Ok(v)) if !is_tool_error(&v) => TaskOutcome::Succeeded { result: v },
                Ok(Ok(v)) => self.failure(&task, result_text(&v), false),
                Ok(Err(e)) => self.failure(&task, e.message.clone(), is_permanent(&e)),
                Err(_) => {
                    token.cancel();
                    self.failure(&task, format!("time limit of {} ms exceeded", task.time_limit_ms), false)
                }
            },
            // Cancelled by the user (the write is fenced off anyway), the
            // lease was lost, or the engine is stopping: back to the queue.
            _ = token.cancelled() => TaskOutcome::Retry {
                error: "interrupted: cancelled, lease lost or engine stopping".into(),
                at_ms: self.now(),
            },
        };
        self.lock_running().remove(&task.id);
        Some((lease, outcome))
    }

    /// Leases up to `max` ready tasks of `queue`, runs them concurrently and
    /// records their outcomes in one transaction. The building block of the
    /// workers, public for tests and tools that drain a queue.
    pub async fn work_once(&self, queue: &str, max: u32) -> Result<WorkReport, OrchestrationError> {
        let tasks = self
            .inner
            .leases
            .lease_tasks(queue, &self.inner.owner, max, self.now(), self.visibility())
            .await?;
        let mut report = WorkReport {
            leased: tasks.len(),
            ..WorkReport::default()
        };
        let outcomes: Vec<_> =
            futures_util::future::join_all(tasks.into_iter().map(|t| self.run_task(t)))
                .await
                .into_iter()
                .flatten()
                .collect();
        let written = self.inner.leases.finish_many(&outcomes, self.now()).await?;
        for ((_, outcome), ok) in outcomes.iter().zip(written) {
            match (ok, outcome) {
                (false, _) => report.fenced += 1,
                (true, TaskOutcome::Succeeded { .. }) => report.succeeded += 1,
                (true, TaskOutcome::Retry { .. }) => report.retried += 1,
                (true, TaskOutcome::Failed { .. }) => report.failed += 1,
            }
        }
        Ok(report)
    }

    /// Renews every lease this engine holds and stops tasks it no longer
    /// holds (cancelled, or their lease expired and went to another worker).
    pub async fn heartbeat(&self) -> Result<(), OrchestrationError> {
        let until = self.now().saturating_add(self.visibility());
        self.inner.leases.renew(&self.inner.owner, until).await?;
        let held: HashSet<(String, i64)> = self
            .inner
            .leases
            .held_by(&self.inner.owner)
            .await?
            .into_iter()
            .collect();
        for (id, (attempt, token)) in self.lock_running().iter() {
            if !held.contains(&(id.clone(), *attempt)) {
                token.cancel();
            }
        }
        Ok(())
    }

    /// Re-queues tasks whose lease expired, purges results past their TTL,
    /// and takes over running workflows that nobody drives.
    pub async fn maintain(&self) -> Result<MaintenanceReport, OrchestrationError> {
        let now = self.now();
        let expired = self.inner.leases.expire_leases(now).await?;
        let purged = self.inner.leases.purge_expired(now).await?;
        let resumed = self.resume_orphans(false).await?;
        Ok(MaintenanceReport {
            requeued: expired.requeued.len(),
            failed: expired.failed.len(),
            purged,
            workflows_resumed: resumed,
        })
    }

    /// Call once at start-up, before [`Engine::start`]: puts back the tasks
    /// a previous process with the same `instance_id` held, and resumes
    /// every running workflow that no live engine drives (including this
    /// instance's previous ones) from its last checkpoint, each in a task
    /// of its own. Returns how many workflows were resumed.
    pub async fn recover_on_startup(&self) -> Result<usize, OrchestrationError> {
        let released = self
            .inner
            .leases
            .release_owner(&self.inner.owner, self.now())
            .await?;
        if !released.is_empty() {
            tracing::info!(
                tasks = released.len(),
                "re-queued tasks held before a restart"
            );
        }
        let own = self.resume_orphans(true).await?;
        let others = self.maintain().await?.workflows_resumed;
        Ok(own + others)
    }

    // ---- workers ----------------------------------------------------------------

    /// Starts the worker pool (one loop per configured queue), the lease
    /// heartbeat and the maintenance loop. Stop them with
    /// [`BackgroundWorkers::shutdown`].
    pub fn start(&self) -> BackgroundWorkers {
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let mut loops = Vec::new();
        for (queue, &concurrency) in &self.inner.config.queues {
            let engine = self.clone();
            let queue = queue.clone();
            let tx = ack_tx.clone();
            loops.push(tokio::spawn(async move {
                engine.worker_loop(queue, concurrency.max(1), tx).await
            }));
        }
        drop(ack_tx);
        let engine = self.clone();
        let acks = tokio::spawn(async move { engine.ack_loop(ack_rx).await });
        let engine = self.clone();
        loops.push(tokio::spawn(async move {
            engine
                .every(engine.inner.config.heartbeat_interval, |e| async move {
                    if let Err(err) = e.heartbeat().await {
                        tracing::warn!(error = %err, "orchestration heartbeat failed");
                    }
                })
                .await
        }));
        let engine = self.clone();
        loops.push(tokio::spawn(async move {
            engine
                .every(engine.inner.config.maintenance_interval, |e| async move {
                    if let Err(err) = e.maintain().await {
                        tracing::warn!(error = %err, "orchestration maintenance failed");
                    }
                })
                .await
        }));
        BackgroundWorkers {
            stop: self.inner.stop.clone(),
            loops,
            acks: Some(acks),
        }
    }

    async fn every<F, Fut>(&self, period: Duration, f: F)
    where
        F: Fn(Engine) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        loop {
            tokio::select! {
                _ = self.inner.stop.cancelled() => return,
                _ = tokio::time::sleep(period) => f(self.clone()).await,
            }
        }
    }

    async fn worker_loop(
        &self,
        queue: String,
        concurrency: usize,
        acks: mpsc::UnboundedSender<(TaskLease, TaskOutcome)>,
    ) {
        let slots = Arc::new(Semaphore::new(concurrency));
        loop {
            if self.inner.stop.is_cancelled() {
                return;
            }
            // Wait for a free slot before leasing, so no lease waits in line.
            let first = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = self.inner.stop.cancelled() => return,
            };
            // Registered before looking for work, so a submission that
            // lands while the lease query runs still wakes this loop (a
            // `notify_waiters` reaches only registered waiters).
            let wake = self.inner.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let free = slots.available_permits() + 1;
            let want = u32::try_from(free)
                .unwrap_or(u32::MAX)
                .min(self.inner.config.lease_batch);
            let leased = self
                .inner
                .leases
                .lease_tasks(
                    &queue,
                    &self.inner.owner,
                    want,
                    self.now(),
                    self.visibility(),
                )
                .await;
            let tasks = match leased {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(queue, error = %e, "leasing tasks failed");
                    drop(first);
                    self.idle(wake).await;
                    continue;
                }
            };
            if tasks.is_empty() {
                drop(first);
                self.idle(wake).await;
                continue;
            }
            let mut permit = Some(first);
            for task in tasks {
                let p = match permit.take() {
                    Some(p) => p,
                    None => match slots.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                let engine = self.clone();
                let acks = acks.clone();
                tokio::spawn(async move {
                    if let Some(done) = engine.run_task(task).await {
                        let _ = acks.send(done);
                    }
                    drop(p);
                });
            }
        }
    }

    async fn idle(&self, wake: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) {
        tokio::select! {
            _ = self.inner.stop.cancelled() => {}
            _ = wake => {}
            _ = tokio::time::sleep(self.inner.config.poll_interval) => {}
        }
    }

    /// Writes outcomes in batches: whatever has arrived while the previous
    /// batch was being written goes into the next transaction.
    async fn ack_loop(&self, mut rx: mpsc::UnboundedReceiver<(TaskLease, TaskOutcome)>) {
        let mut batch = Vec::new();
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < 512 {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.inner.leases.finish_many(&batch, self.now()).await {
                // The leases expire and the tasks are delivered again.
                tracing::warn!(error = %e, tasks = batch.len(), "recording task outcomes failed");
            }
            batch.clear();
        }
    }
}

/// How often a task's progress is written at most: a tool may report
/// thousands of times; the record keeps the latest.
const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_millis(200);
/// Longest progress message kept, in bytes.
const PROGRESS_MESSAGE_MAX: usize = 1024;

/// Writes a running task's progress to its record: reports are coalesced
/// (the latest wins) and written by one background writer at a time,
/// fenced by the lease, so a report that arrives after the task ended
/// changes nothing.
struct ProgressWriter {
    engine: Engine,
    lease: TaskLease,
    /// The latest report not yet written, and whether a writer runs.
    pending: Mutex<(Option<TaskProgress>, bool)>,
}

impl ProgressWriter {
    fn sink(engine: Engine, lease: TaskLease) -> ProgressSink {
        let writer = Arc::new(ProgressWriter {
            engine,
            lease,
            pending: Mutex::new((None, false)),
        });
        ProgressSink::new(move |p| writer.report(p))
    }

    fn report(self: &Arc<Self>, mut p: TaskProgress) {
        if let Some(m) = &mut p.message
            && m.len() > PROGRESS_MESSAGE_MAX
        {
            let mut end = PROGRESS_MESSAGE_MAX;
            while !m.is_char_boundary(end) {
                end -= 1;
            }
            m.truncate(end);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.0 = Some(p);
        if pending.1 {
            return;
        }
        pending.1 = true;
        drop(pending);
        let writer = self.clone();
        runtime.spawn(async move { writer.write_pending().await });
    }

    async fn write_pending(&self) {
        loop {
            let next = {
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                match pending.0.take() {
                    Some(p) => p,
                    None => {
                        pending.1 = false;
                        return;
                    }
                }
            };
            let now = self.engine.now();
            let value = json!({
                "progress": next.progress,
                "total": next.total,
                "message": next.message,
                "at_ms": now,
            });
            match self
                .engine
                .inner
                .leases
                .report_progress(&self.lease, &value, now)
                .await
            {
                Ok(true) => {}
                // The attempt is over: later reports are moot.
                Ok(false) => {
                    let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                    pending.0 = None;
                }
                Err(e) => {
                    tracing::debug!(task = %self.lease.task_id, error = %e, "recording task progress failed")
                }
            }
            tokio::time::sleep(PROGRESS_WRITE_INTERVAL).await;
        }
    }
}

/// The running worker pool and loops of an [`Engine`].
pub struct BackgroundWorkers {
    stop: CancellationToken,
    loops: Vec<JoinHandle<()>>,
    acks: Option<JoinHandle<()>>,
}

impl BackgroundWorkers {
    /// Stops leasing, interrupts running tasks (they go back to the queue),
    /// records the outcomes in flight and waits for the loops to end.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        for l in self.loops.drain(..) {
            let _ = l.await;
        }
        if let Some(acks) = self.acks.take() {
            let _ = acks.await;
        }
    }
}

impl Drop for BackgroundWorkers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Tasks of a status, for tests and listings.
pub(crate) fn status_filter(
    status: Option<&str>,
) -> Result<Option<TaskStatus>, OrchestrationError> {
    status
        .map(|s| {
            TaskStatus::parse(s).ok_or_else(|| {
                OrchestrationError::invalid(
                    "status",
                    format!("{s:?}: use queued, running, succeeded, failed or cancelled"),
                )
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters_within_bounds() {
        for attempt in 1..=12 {
            let full = (1000_i64 << (attempt - 1)).min(60_000);
            for _ in 0..50 {
                let d = backoff_ms(1000, 60_000, attempt);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d}");
            }
        }
        assert_eq!(backoff_ms(0, 0, 3), 0);
        assert!(backoff_ms(1000, 60_000, 1000) <= 60_000);
    }
}
