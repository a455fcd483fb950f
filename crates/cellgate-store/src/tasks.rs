//! Rows of the orchestration engine (`cellgate-orchestration`): the durable
//! task queue, workflow runs with their checkpoints and history, and
//! external worker nodes.
//!
//! Submitting, reading and cancelling tasks, everything about workflows and
//! nodes, and the leases external nodes take are tenant-scoped
//! ([`TenantTasks`], [`TenantWorkflows`], [`TenantNodes`], through
//! [`crate::TenantScope`]): every query binds the scope's tenant. The one
//! cross-tenant repository is [`CrossTenantLeases`] (through
//! [`crate::Store::cross_tenant_leases`]): the engine's in-process workers
//! take the next ready task of a queue whatever its tenant, renew and
//! complete their leases, expire the leases of dead workers and pick up
//! workflows whose driver died. It never reads a task it has not leased.
//!
//! Every function that depends on time takes the time (`now_ms`) as an
//! argument, so the engine decides with its own (injectable) clock.
//!
//! The store only keeps and fences rows; it knows nothing of tools,
//! templates or backoff policies.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::backend::{Backend, is_foreign_key_violation, on_backend};
use crate::documents::validate_name;
use crate::{StoreError, TenantId};

/// Tables of this module with a `tenant_id` column, children first.
pub(crate) const TENANT_TABLES: &[&str] = &[
    "workflow_history",
    "workflow_checkpoints",
    "workflows",
    "tasks",
    "worker_nodes",
];

/// Largest page the list functions return; larger limits are clamped.
pub const TASK_LIST_MAX: u32 = 1000;
/// Most tasks one lease call hands out.
pub const LEASE_BATCH_MAX: u32 = 1000;
/// How many more deliveries than `max_retries + 1` a task gets when its
/// leases keep expiring (its worker died): enough to survive a crash or two,
/// not so many that a task which kills its worker loops forever.
pub const LOST_LEASE_ALLOWANCE: i64 = 3;
/// Largest accepted JSON document (arguments, results, state), in bytes.
pub const TASK_JSON_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Most labels a node or a requirement may carry.
pub const LABELS_MAX: usize = 64;

// ---- types -------------------------------------------------------------------

/// Resources and labels: what a node offers, or what a task requires.
/// CPU is in thousandths of a core.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    #[serde(default)]
    pub cpu_millis: i64,
    #[serde(default)]
    pub memory_mb: i64,
    #[serde(default)]
    pub gpus: i64,
    /// Every required label must be offered with the same value.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Resources {
    /// Whether these resources (offered) satisfy `required`.
    pub fn satisfies(&self, required: &Resources) -> bool {
        self.cpu_millis >= required.cpu_millis
            && self.memory_mb >= required.memory_mb
            && self.gpus >= required.gpus
            && required
                .labels
                .iter()
                .all(|(k, v)| self.labels.get(k) == Some(v))
    }

    fn validate(&self, field: &'static str) -> Result<(), StoreError> {
        if self.cpu_millis < 0 || self.memory_mb < 0 || self.gpus < 0 {
            return Err(StoreError::invalid(
                field,
                "cpu_millis, memory_mb and gpus must not be negative",
            ));
        }
        if self.labels.len() > LABELS_MAX {
            return Err(StoreError::invalid(
                field,
                format!("at most {LABELS_MAX} labels, got {}", self.labels.len()),
            ));
        }
        for (k, v) in &self.labels {
            validate_name(field, k)?;
            if v.len() > 255 || v.contains('\0') {
                return Err(StoreError::invalid(
                    field,
                    format!("label `{k}`: values are at most 255 bytes without NUL"),
                ));
            }
        }
        Ok(())
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
    /// Succeeded, failed or cancelled: nothing will change any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

/// What [`TenantTasks::submit`] stores.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub queue: String,
    pub tool: String,
    /// A JSON object: the tool's arguments.
    pub arguments: Value,
    /// Who submitted it, and as whom it runs (`principal` is opaque JSON the
    /// orchestration crate writes and reads back).
    pub principal_id: String,
    pub principal: Value,
    /// Higher runs first.
    pub priority: i64,
    /// Not before this time.
    pub eta_ms: i64,
    pub time_limit_ms: i64,
    pub max_retries: i64,
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    /// At most one task per tenant and key; submitting again returns the first.
    pub idempotency_key: Option<String>,
    /// How long the result is kept after the task ends; `None`: forever.
    pub result_ttl_ms: Option<i64>,
    /// `Some`: the task runs only on an external node that satisfies these.
    pub requirements: Option<Resources>,
}

/// A stored task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRecord {
    pub id: String,
    pub tenant: TenantId,
    pub queue: String,
    pub tool: String,
    pub arguments: Value,
    pub principal_id: String,
    #[serde(skip)]
    pub principal: Value,
    pub priority: i64,
    pub eta_ms: i64,
    pub time_limit_ms: i64,
    pub max_retries: i64,
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    pub idempotency_key: Option<String>,
    pub result_ttl_ms: Option<i64>,
    pub requirements: Option<Resources>,
    pub status: TaskStatus,
    /// How many times it was leased (delivered).
    pub attempts: i64,
    pub lease_owner: Option<String>,
    pub lease_node: Option<String>,
    pub lease_expires_at_ms: Option<i64>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// When the ended task (and its result) will be deleted.
    pub expires_at_ms: Option<i64>,
    /// The last progress the current (or last) attempt reported:
    /// `{"progress", "total", "message", "at_ms"}`.
    pub progress: Option<Value>,
}

impl TaskRecord {
    /// The lease this record was handed out under, if it is running.
    pub fn lease(&self) -> Option<TaskLease> {
        match (&self.status, &self.lease_owner) {
            (TaskStatus::Running, Some(owner)) => Some(TaskLease {
                tenant: self.tenant.clone(),
                task_id: self.id.clone(),
                owner: owner.clone(),
                attempt: self.attempts,
            }),
            _ => None,
        }
    }
}

/// Proof of holding a task: only the holder of the current lease can
/// complete it, and every new lease increments `attempt`, so a worker whose
/// lease expired (and was given to another) is fenced off.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskLease {
    pub tenant: TenantId,
    pub task_id: String,
    pub owner: String,
    pub attempt: i64,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    Succeeded {
        result: Value,
    },
    /// Failed, to be tried again not before `at_ms`.
    Retry {
        error: String,
        at_ms: i64,
    },
    /// Failed for good.
    Failed {
        error: String,
    },
}

/// What [`TenantTasks::submit`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub task: TaskRecord,
    /// False when a task with the same idempotency key existed: `task` is it.
    pub created: bool,
}

/// What [`CrossTenantLeases::expire_leases`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpiredLeases {
    /// Task ids put back in their queue.
    pub requeued: Vec<String>,
    /// Task ids that had been delivered too often and now failed.
    pub failed: Vec<String>,
}

/// Which tasks [`TenantTasks::list`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub queue: Option<String>,
    pub limit: u32,
}

// ---- workflows ---------------------------------------------------------------

/// Where a workflow run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    /// Defined, not started.
    Created,
    Running,
    Paused,
    Succeeded,
    Failed,
    Cancelled,
    /// Failed, and its compensations ran.
    RolledBack,
}

impl WorkflowStatus {
    pub const ALL: [WorkflowStatus; 7] = [
        Self::Created,
        Self::Running,
        Self::Paused,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::RolledBack,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::RolledBack => "rolled_back",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// What [`TenantWorkflows::create`] stores.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWorkflow {
    pub name: String,
    pub definition: Value,
    pub input: Value,
    pub principal_id: String,
    pub principal: Value,
    /// The initial run state.
    pub state: Value,
}

/// A stored workflow run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowRecord {
    pub id: String,
    pub tenant: TenantId,
    pub name: String,
    pub definition: Value,
    pub input: Value,
    pub principal_id: String,
    #[serde(skip)]
    pub principal: Value,
    pub status: WorkflowStatus,
    pub state: Value,
    pub lease_owner: Option<String>,
    pub lease_expires_at_ms: Option<i64>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

/// Why a checkpoint was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointKind {
    /// After a phase completed.
    Phase,
    /// After a step of a phase completed.
    Step,
    /// The state a rollback restored.
    Rollback,
}

impl CheckpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Phase => "phase",
            Self::Step => "step",
            Self::Rollback => "rollback",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Phase, Self::Step, Self::Rollback]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A snapshot of a workflow's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointRecord {
    pub id: i64,
    pub kind: CheckpointKind,
    pub phase: String,
    pub step: Option<String>,
    pub state: Value,
    pub created_at_ms: i64,
}

/// One event of a run's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// e.g. `phase_completed`, `step_failed`, `compensation_completed`.
    pub event: String,
    pub phase: Option<String>,
    pub step: Option<String>,
    pub iteration: Option<i64>,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
}

/// A stored history event; `id` orders them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryRecord {
    pub id: i64,
    #[serde(flatten)]
    pub entry: HistoryEntry,
}

// ---- nodes ---------------------------------------------------------------------

/// What [`TenantNodes::register`] stores.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNode {
    pub id: String,
    pub capacity: Resources,
    /// Queues the node takes tasks from.
    pub queues: Vec<String>,
    pub registered_by: String,
}

/// A registered external worker node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRecord {
    pub tenant: TenantId,
    pub id: String,
    pub capacity: Resources,
    pub queues: Vec<String>,
    pub registered_by: String,
    pub registered_at_ms: i64,
    pub last_heartbeat_ms: i64,
}

// ---- SQL -------------------------------------------------------------------------

const TASK_COLUMNS: &str = "id, tenant_id, queue, tool, arguments, principal_id, principal, priority, \
     eta_ms, time_limit_ms, max_retries, backoff_base_ms, backoff_max_ms, idempotency_key, \
     result_ttl_ms, requires_node, req_cpu_millis, req_memory_mb, req_gpus, req_labels, status, \
     attempts, lease_owner, lease_node, lease_expires_at_ms, result, error, created_at_ms, \
     updated_at_ms, started_at_ms, finished_at_ms, expires_at_ms, progress";

const WORKFLOW_COLUMNS: &str = "id, tenant_id, name, definition, input, principal_id, principal, \
     status, state, lease_owner, lease_expires_at_ms, error, created_at_ms, updated_at_ms, \
     started_at_ms, finished_at_ms";

const NODE_COLUMNS: &str = "tenant_id, id, cpu_millis, memory_mb, gpus, labels, queues, \
     registered_by, registered_at_ms, last_heartbeat_ms";

/// Most tasks one INSERT statement carries (21 parameters each, well under
/// both backends' limits).
pub const SUBMIT_ROWS_PER_STATEMENT: usize = 256;

const INSERT_TASK_COLUMNS: &str = "id, tenant_id, queue, tool, arguments, principal_id, principal, \
     priority, eta_ms, time_limit_ms, max_retries, backoff_base_ms, backoff_max_ms, \
     idempotency_key, result_ttl_ms, requires_node, req_cpu_millis, req_memory_mb, req_gpus, \
     req_labels, status, attempts, created_at_ms, updated_at_ms";

/// What `req_labels` holds for a task without requirements.
static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// Parameters per inserted task row (the time is bound twice).
const INSERT_TASK_PARAMS: usize = 22;

/// Writes the placeholders of statements with many parameters: `?` on
/// SQLite, where sqlx resolves every named or numbered placeholder through
/// `sqlite3_bind_parameter_name`, a linear search per parameter (quadratic
/// for a statement with thousands), and `$n` on PostgreSQL. Parameters
/// are bound in the order they appear in the text.
struct Placeholders {
    postgres: bool,
    next: usize,
}

impl Placeholders {
    fn new(backend: &Backend) -> Self {
        Self {
            postgres: matches!(backend, Backend::Postgres(_)),
            next: 1,
        }
    }

    fn push(&mut self, sql: &mut String) {
        use std::fmt::Write as _;
        if self.postgres {
            let _ = write!(sql, "${}", self.next);
        } else {
            sql.push('?');
        }
        self.next += 1;
    }

    /// `(p, p, …)` with `n` placeholders.
    fn push_row(&mut self, sql: &mut String, n: usize) {
        sql.push('(');
        for i in 0..n {
            if i > 0 {
                sql.push_str(", ");
            }
            self.push(sql);
        }
        sql.push(')');
    }
}

/// A multi-row INSERT of `rows` tasks, 22 parameters per row (the last
/// two: the time). With `keyed`, it returns the ids of the rows actually
/// inserted (a taken idempotency key inserts nothing).
fn insert_tasks_sql(backend: &Backend, rows: usize, keyed: bool) -> String {
    let mut p = Placeholders::new(backend);
    let mut sql = String::with_capacity(400 + rows * INSERT_TASK_PARAMS * 6);
    sql.push_str("INSERT INTO tasks (");
    sql.push_str(INSERT_TASK_COLUMNS);
    sql.push_str(") VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for _ in 0..INSERT_TASK_PARAMS - 2 {
            p.push(&mut sql);
            sql.push_str(", ");
        }
        sql.push_str("'queued', 0, ");
        p.push(&mut sql);
        sql.push_str(", ");
        p.push(&mut sql);
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT (tenant_id, idempotency_key) DO NOTHING");
    if keyed {
        sql.push_str(" RETURNING id");
    }
    sql
}

/// The tenant's (first parameter) tasks with any of `keys` idempotency
/// keys (the others).
fn select_tasks_by_keys_sql(backend: &Backend, keys: usize) -> String {
    let mut p = Placeholders::new(backend);
    let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE tenant_id = ");
    p.push(&mut sql);
    sql.push_str(" AND idempotency_key IN ");
    p.push_row(&mut sql, keys.max(1));
    sql
}

/// The record of a task just inserted, built from what was written instead
/// of read back (the hot path of submission).
fn queued_record(id: String, tenant: &TenantId, task: &NewTask, now_ms: i64) -> TaskRecord {
    TaskRecord {
        id,
        tenant: tenant.clone(),
        queue: task.queue.clone(),
        tool: task.tool.clone(),
        arguments: task.arguments.clone(),
        principal_id: task.principal_id.clone(),
        principal: task.principal.clone(),
        priority: task.priority,
        eta_ms: task.eta_ms,
        time_limit_ms: task.time_limit_ms,
        max_retries: task.max_retries,
        backoff_base_ms: task.backoff_base_ms,
        backoff_max_ms: task.backoff_max_ms,
        idempotency_key: task.idempotency_key.clone(),
        result_ttl_ms: task.result_ttl_ms,
        requirements: task.requirements.clone(),
        status: TaskStatus::Queued,
        attempts: 0,
        lease_owner: None,
        lease_node: None,
        lease_expires_at_ms: None,
        result: None,
        error: None,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        started_at_ms: None,
        finished_at_ms: None,
        expires_at_ms: None,
        progress: None,
    }
}

static SELECT_TASK: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {TASK_COLUMNS} FROM tasks WHERE tenant_id = $1 AND id = $2"));

static LIST_TASKS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE tenant_id = $1 \
         AND (CAST($2 AS TEXT) IS NULL OR status = $2) AND (CAST($3 AS TEXT) IS NULL OR queue = $3) \
         ORDER BY created_at_ms DESC, id DESC LIMIT $4"
    )
});

static CANCEL_TASK: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE tasks SET status = 'cancelled', error = $4, lease_owner = NULL, lease_node = NULL, \
         lease_expires_at_ms = NULL, finished_at_ms = $3, updated_at_ms = $3, \
         expires_at_ms = CASE WHEN result_ttl_ms IS NULL THEN NULL ELSE $3 + result_ttl_ms END \
         WHERE tenant_id = $1 AND id = $2 AND status IN ('queued', 'running') \
         RETURNING {TASK_COLUMNS}"
    )
});

/// The lease columns every lease statement sets; `$1` owner, `$2` now,
/// `$3` visibility timeout.
const LEASE_SET: &str = "status = 'running', attempts = attempts + 1, lease_owner = $1, \
     lease_expires_at_ms = $2 + $3, started_at_ms = $2, updated_at_ms = $2, progress = NULL";

// SQLite has one writer, so a single UPDATE over the sub-select is atomic.
static LEASE_SQLITE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE tasks SET {LEASE_SET}, lease_node = NULL WHERE id IN (\
         SELECT id FROM tasks WHERE status = 'queued' AND queue = $4 AND requires_node = 0 \
         AND eta_ms <= $2 ORDER BY priority DESC, eta_ms, id LIMIT $5) \
         RETURNING {TASK_COLUMNS}"
    )
});

// PostgreSQL: rows another replica is leasing right now are skipped, not
// waited for, and never handed out twice.
static LEASE_POSTGRES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE tasks SET {LEASE_SET}, lease_node = NULL WHERE id IN (\
         SELECT id FROM tasks WHERE status = 'queued' AND queue = $4 AND requires_node = 0 \
         AND eta_ms <= $2 ORDER BY priority DESC, eta_ms, id LIMIT $5 FOR UPDATE SKIP LOCKED) \
         RETURNING {TASK_COLUMNS}"
    )
});

const NODE_CANDIDATES: &str = "SELECT id, req_cpu_millis, req_memory_mb, req_gpus, req_labels FROM tasks \
     WHERE tenant_id = $1 AND queue = $2 AND status = 'queued' AND eta_ms <= $3 \
     AND req_cpu_millis <= $4 AND req_memory_mb <= $5 AND req_gpus <= $6 \
     ORDER BY priority DESC, eta_ms, id LIMIT $7";

// PostgreSQL sums bigints as numeric, hence the casts.
const NODE_HELD: &str = "SELECT CAST(COALESCE(SUM(req_cpu_millis), 0) AS BIGINT), \
     CAST(COALESCE(SUM(req_memory_mb), 0) AS BIGINT), CAST(COALESCE(SUM(req_gpus), 0) AS BIGINT) FROM tasks \
     WHERE tenant_id = $1 AND lease_node = $2 AND status = 'running'";

// `$1` owner, `$2` now, `$3` visibility, `$4` tenant, `$5` id, `$6` node.
static NODE_CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE tasks SET {LEASE_SET}, lease_node = $6 \
         WHERE tenant_id = $4 AND id = $5 AND status = 'queued' RETURNING {TASK_COLUMNS}"
    )
});

/// Most outcomes one finishing statement carries.
pub const FINISH_ROWS_PER_STATEMENT: usize = 256;

/// Ends many attempts in one statement: the time (three times), then per
/// row (tenant, id, owner, attempt, status, result, error, retry eta). A
/// row applies only while its lease (owner + attempt) is current and the
/// task running; it returns the ids it wrote. `succeeded` stores the
/// result; `queued` (a retry) sets the new eta and keeps the task's expiry;
/// `succeeded` and `failed` end the task and start its result TTL. Both
/// backends name the columns of a VALUES list `column1`, `column2`, ….
/// Statements are built for powers of two rows (padded with rows that
/// match nothing), so few distinct texts reach the statement cache.
fn finish_rows(n: usize) -> usize {
    n.max(1).next_power_of_two()
}

fn finish_tasks_sql(backend: &Backend, rows: usize) -> String {
    let mut p = Placeholders::new(backend);
    let mut sql = String::with_capacity(1000 + rows * 60);
    sql.push_str(
        "UPDATE tasks SET status = v.column5, \
         result = CASE WHEN v.column5 = 'succeeded' THEN v.column6 ELSE tasks.result END, \
         error = v.column7, eta_ms = COALESCE(v.column8, tasks.eta_ms), \
         lease_owner = NULL, lease_node = NULL, lease_expires_at_ms = NULL, \
         finished_at_ms = CASE WHEN v.column5 = 'queued' THEN tasks.finished_at_ms ELSE ",
    );
    p.push(&mut sql);
    sql.push_str(" END, updated_at_ms = ");
    p.push(&mut sql);
    sql.push_str(
        ", expires_at_ms = CASE WHEN v.column5 = 'queued' THEN tasks.expires_at_ms \
         WHEN tasks.result_ttl_ms IS NULL THEN NULL ELSE tasks.result_ttl_ms + ",
    );
    p.push(&mut sql);
    sql.push_str(" END FROM (VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        p.push_row(&mut sql, 8);
    }
    sql.push_str(
        ") AS v WHERE tasks.id = v.column2 AND tasks.tenant_id = v.column1 \
         AND tasks.lease_owner = v.column3 AND tasks.attempts = v.column4 \
         AND tasks.status = 'running' RETURNING tasks.id",
    );
    sql
}

// `$1` tenant, `$2` id, `$3` owner, `$4` attempt, `$5` progress, `$6` now.
const REPORT_PROGRESS: &str = "UPDATE tasks SET progress = $5, updated_at_ms = $6 \
     WHERE tenant_id = $1 AND id = $2 AND lease_owner = $3 AND attempts = $4 AND status = 'running'";

const RENEW_OWNER: &str = "UPDATE tasks SET lease_expires_at_ms = $2 \
     WHERE status = 'running' AND lease_owner = $1";

const RUNNING_FOR_OWNER: &str =
    "SELECT id, attempts FROM tasks WHERE status = 'running' AND lease_owner = $1";

// `$1` now, `$2` message, `$3` allowance: the lease that expires is
// delivery number `attempts`, and `max_retries + 1 + allowance` are allowed.
const EXPIRE_FAIL: &str = "UPDATE tasks SET status = 'failed', error = $2, lease_owner = NULL, \
     lease_node = NULL, lease_expires_at_ms = NULL, finished_at_ms = $1, updated_at_ms = $1, \
     expires_at_ms = CASE WHEN result_ttl_ms IS NULL THEN NULL ELSE $1 + result_ttl_ms END \
     WHERE status = 'running' AND lease_expires_at_ms < $1 AND attempts > max_retries + $3 \
     RETURNING id";

const EXPIRE_REQUEUE: &str = "UPDATE tasks SET status = 'queued', error = $2, lease_owner = NULL, \
     lease_node = NULL, lease_expires_at_ms = NULL, eta_ms = $1, updated_at_ms = $1 \
     WHERE status = 'running' AND lease_expires_at_ms < $1 RETURNING id";

const RELEASE_OWNER: &str = "UPDATE tasks SET status = 'queued', lease_owner = NULL, lease_node = NULL, \
     lease_expires_at_ms = NULL, eta_ms = $2, updated_at_ms = $2, \
     attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END \
     WHERE status = 'running' AND lease_owner = $1 RETURNING id";

const PURGE_EXPIRED: &str = "DELETE FROM tasks WHERE expires_at_ms IS NOT NULL AND expires_at_ms < $1 \
     AND status IN ('succeeded', 'failed', 'cancelled')";

static INSERT_WORKFLOW: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO workflows (id, tenant_id, name, definition, input, principal_id, principal, \
         status, state, created_at_ms, updated_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'created', $8, $9, $9) RETURNING {WORKFLOW_COLUMNS}"
    )
});

static SELECT_WORKFLOW: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE tenant_id = $1 AND id = $2")
});

static LIST_WORKFLOWS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE tenant_id = $1 \
         AND (CAST($2 AS TEXT) IS NULL OR status = $2) \
         ORDER BY created_at_ms DESC, id DESC LIMIT $3"
    )
});

// `$1` tenant, `$2` id, `$3` owner, `$4` now, `$5` lease length.
static CLAIM_WORKFLOW: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE workflows SET lease_owner = $3, lease_expires_at_ms = $4 + $5, updated_at_ms = $4 \
         WHERE tenant_id = $1 AND id = $2 AND status = $6 \
         AND (lease_owner IS NULL OR lease_expires_at_ms < $4 OR lease_owner = $3) \
         RETURNING {WORKFLOW_COLUMNS}"
    )
});

const SAVE_STATE: &str = "UPDATE workflows SET state = $4, updated_at_ms = $5 \
     WHERE tenant_id = $1 AND id = $2 AND lease_owner = $3 RETURNING status";

const INSERT_CHECKPOINT: &str = "INSERT INTO workflow_checkpoints \
     (tenant_id, workflow_id, kind, phase, step, state, created_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id";

const INSERT_HISTORY: &str = "INSERT INTO workflow_history (tenant_id, workflow_id, event, phase, \
     step, iteration, output, error, started_at_ms, finished_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

const SELECT_HISTORY: &str = "SELECT id, event, phase, step, iteration, output, error, \
     started_at_ms, finished_at_ms FROM workflow_history \
     WHERE tenant_id = $1 AND workflow_id = $2 ORDER BY id LIMIT $3";

const SELECT_CHECKPOINTS: &str = "SELECT id, kind, phase, step, state, created_at_ms \
     FROM workflow_checkpoints WHERE tenant_id = $1 AND workflow_id = $2 ORDER BY id LIMIT $3";

const SELECT_CHECKPOINT: &str = "SELECT id, kind, phase, step, state, created_at_ms \
     FROM workflow_checkpoints WHERE tenant_id = $1 AND workflow_id = $2 AND id = $3";

// `$1` tenant, `$2` id, `$3` owner, `$4` status, `$5` error, `$6` now.
const FINISH_WORKFLOW: &str = "UPDATE workflows SET status = $4, error = $5, finished_at_ms = $6, \
     updated_at_ms = $6, lease_owner = NULL, lease_expires_at_ms = NULL \
     WHERE tenant_id = $1 AND id = $2 AND lease_owner = $3 AND status = 'running'";

const RELEASE_WORKFLOW: &str = "UPDATE workflows SET lease_owner = NULL, lease_expires_at_ms = NULL \
     WHERE tenant_id = $1 AND id = $2 AND lease_owner = $3";

// `$1` tenant, `$2` id, `$3` owner, `$4` state, `$5` now.
const RESTORE_WORKFLOW: &str = "UPDATE workflows SET state = $4, status = 'running', error = NULL, \
     finished_at_ms = NULL, updated_at_ms = $5 WHERE tenant_id = $1 AND id = $2 AND lease_owner = $3";

const RENEW_WORKFLOWS: &str = "UPDATE workflows SET lease_expires_at_ms = $2 \
     WHERE lease_owner = $1 AND status = 'running'";

// `$5` = 1 also takes back runs leased to `$1` itself (a restarted
// instance with a stable owner id resumes without waiting for expiry).
static ORPHANS_SQLITE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE workflows SET lease_owner = $1, lease_expires_at_ms = $2 + $3 WHERE id IN (\
         SELECT id FROM workflows WHERE status = 'running' \
         AND (lease_owner IS NULL OR lease_expires_at_ms < $2 OR ($5 = 1 AND lease_owner = $1)) \
         ORDER BY created_at_ms, id LIMIT $4) \
         RETURNING {WORKFLOW_COLUMNS}"
    )
});

static ORPHANS_POSTGRES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE workflows SET lease_owner = $1, lease_expires_at_ms = $2 + $3 WHERE id IN (\
         SELECT id FROM workflows WHERE status = 'running' \
         AND (lease_owner IS NULL OR lease_expires_at_ms < $2 OR ($5 = 1 AND lease_owner = $1)) \
         ORDER BY created_at_ms, id LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING {WORKFLOW_COLUMNS}"
    )
});

static UPSERT_NODE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO worker_nodes ({NODE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
         ON CONFLICT (tenant_id, id) DO UPDATE SET cpu_millis = excluded.cpu_millis, \
         memory_mb = excluded.memory_mb, gpus = excluded.gpus, labels = excluded.labels, \
         queues = excluded.queues, registered_by = excluded.registered_by, \
         last_heartbeat_ms = excluded.last_heartbeat_ms RETURNING {NODE_COLUMNS}"
    )
});

static SELECT_NODE: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {NODE_COLUMNS} FROM worker_nodes WHERE tenant_id = $1 AND id = $2")
});

static LIST_NODES: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {NODE_COLUMNS} FROM worker_nodes WHERE tenant_id = $1 ORDER BY id LIMIT $2")
});

static HEARTBEAT_NODE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE worker_nodes SET last_heartbeat_ms = $3 WHERE tenant_id = $1 AND id = $2 \
         RETURNING {NODE_COLUMNS}"
    )
});

const RENEW_NODE_LEASES: &str = "UPDATE tasks SET lease_expires_at_ms = $3 \
     WHERE tenant_id = $1 AND lease_node = $2 AND status = 'running'";

const DELETE_NODE: &str = "DELETE FROM worker_nodes WHERE tenant_id = $1 AND id = $2";

// ---- helpers ---------------------------------------------------------------------

fn db(backend: &Backend, operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    let backend = backend.name();
    move |error| StoreError::Database {
        backend,
        operation,
        error,
    }
}

fn write_err(
    backend: &Backend,
    tenant: &TenantId,
    operation: &'static str,
) -> impl FnOnce(sqlx::Error) -> StoreError {
    let backend = backend.name();
    let tenant = tenant.clone();
    move |error| {
        if is_foreign_key_violation(&error) {
            StoreError::UnknownTenant { tenant }
        } else {
            StoreError::Database {
                backend,
                operation,
                error,
            }
        }
    }
}

fn validate_json(field: &'static str, value: &Value) -> Result<(), StoreError> {
    // Serialising to measure is the honest size; these are not hot paths
    // except submit, where the arguments are small.
    let len = serde_json::to_vec(value).map(|v| v.len()).unwrap_or(0);
    if len > TASK_JSON_MAX_BYTES {
        return Err(StoreError::invalid(
            field,
            format!("must be at most {TASK_JSON_MAX_BYTES} bytes of JSON, got {len}"),
        ));
    }
    Ok(())
}

fn validate_id(field: &'static str, id: &str) -> Result<(), StoreError> {
    if id.is_empty() || id.len() > 64 {
        return Err(StoreError::invalid(field, "must be 1 to 64 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return Err(StoreError::invalid(
            field,
            "may contain only ASCII letters, digits, `-`, `_`, `.` and `:`",
        ));
    }
    Ok(())
}

fn validate_new_task(task: &NewTask) -> Result<(), StoreError> {
    validate_id("queue", &task.queue)?;
    validate_name("tool", &task.tool)?;
    if !task.arguments.is_object() {
        return Err(StoreError::invalid("arguments", "must be a JSON object"));
    }
    validate_json("arguments", &task.arguments)?;
    validate_name("principal_id", &task.principal_id)?;
    if task.time_limit_ms < 1 {
        return Err(StoreError::invalid(
            "time_limit_ms",
            "must be at least 1 ms",
        ));
    }
    if task.max_retries < 0 {
        return Err(StoreError::invalid("max_retries", "must not be negative"));
    }
    if task.backoff_base_ms < 0 || task.backoff_max_ms < task.backoff_base_ms {
        return Err(StoreError::invalid(
            "backoff",
            "need 0 <= backoff_base_ms <= backoff_max_ms",
        ));
    }
    if let Some(key) = &task.idempotency_key {
        validate_name("idempotency_key", key)?;
    }
    if task.result_ttl_ms.is_some_and(|t| t < 0) {
        return Err(StoreError::invalid("result_ttl_ms", "must not be negative"));
    }
    if let Some(req) = &task.requirements {
        req.validate("requirements")?;
    }
    Ok(())
}

fn clamp(limit: u32, max: u32) -> i64 {
    i64::from(limit.clamp(1, max))
}

fn decode_err(what: String) -> sqlx::Error {
    sqlx::Error::Decode(what.into())
}

fn tenant_of(s: &str) -> Result<TenantId, sqlx::Error> {
    TenantId::parse(s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn task_from_row<'r, R>(row: &'r R) -> Result<TaskRecord, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    Json<Value>: Decode<'r, R::Database> + Type<R::Database>,
    Option<Json<Value>>: Decode<'r, R::Database> + Type<R::Database>,
    Json<BTreeMap<String, String>>: Decode<'r, R::Database> + Type<R::Database>,
{
    let status: String = row.try_get("status")?;
    let requires_node: i64 = row.try_get("requires_node")?;
    let requirements = if requires_node != 0 {
        let Json(labels) = row.try_get::<Json<BTreeMap<String, String>>, _>("req_labels")?;
        Some(Resources {
            cpu_millis: row.try_get("req_cpu_millis")?,
            memory_mb: row.try_get("req_memory_mb")?,
            gpus: row.try_get("req_gpus")?,
            labels,
        })
    } else {
        None
    };
    Ok(TaskRecord {
        id: row.try_get("id")?,
        tenant: tenant_of(&row.try_get::<String, _>("tenant_id")?)?,
        queue: row.try_get("queue")?,
        tool: row.try_get("tool")?,
        arguments: row.try_get::<Json<Value>, _>("arguments")?.0,
        principal_id: row.try_get("principal_id")?,
        principal: row.try_get::<Json<Value>, _>("principal")?.0,
        priority: row.try_get("priority")?,
        eta_ms: row.try_get("eta_ms")?,
        time_limit_ms: row.try_get("time_limit_ms")?,
        max_retries: row.try_get("max_retries")?,
        backoff_base_ms: row.try_get("backoff_base_ms")?,
        backoff_max_ms: row.try_get("backoff_max_ms")?,
        idempotency_key: row.try_get("idempotency_key")?,
        result_ttl_ms: row.try_get("result_ttl_ms")?,
        requirements,
        status: TaskStatus::parse(&status)
            .ok_or_else(|| decode_err(format!("unknown task status {status:?}")))?,
        attempts: row.try_get("attempts")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_node: row.try_get("lease_node")?,
        lease_expires_at_ms: row.try_get("lease_expires_at_ms")?,
        result: row
            .try_get::<Option<Json<Value>>, _>("result")?
            .map(|j| j.0),
        error: row.try_get("error")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        started_at_ms: row.try_get("started_at_ms")?,
        finished_at_ms: row.try_get("finished_at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        progress: row
            .try_get::<Option<Json<Value>>, _>("progress")?
            .map(|j| j.0),
    })
}

fn workflow_from_row<'r, R>(row: &'r R) -> Result<WorkflowRecord, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    Json<Value>: Decode<'r, R::Database> + Type<R::Database>,
{
    let status: String = row.try_get("status")?;
    Ok(WorkflowRecord {
        id: row.try_get("id")?,
        tenant: tenant_of(&row.try_get::<String, _>("tenant_id")?)?,
        name: row.try_get("name")?,
        definition: row.try_get::<Json<Value>, _>("definition")?.0,
        input: row.try_get::<Json<Value>, _>("input")?.0,
        principal_id: row.try_get("principal_id")?,
        principal: row.try_get::<Json<Value>, _>("principal")?.0,
        status: WorkflowStatus::parse(&status)
            .ok_or_else(|| decode_err(format!("unknown workflow status {status:?}")))?,
        state: row.try_get::<Json<Value>, _>("state")?.0,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at_ms: row.try_get("lease_expires_at_ms")?,
        error: row.try_get("error")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        started_at_ms: row.try_get("started_at_ms")?,
        finished_at_ms: row.try_get("finished_at_ms")?,
    })
}

fn checkpoint_from_row<'r, R>(row: &'r R) -> Result<CheckpointRecord, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    Json<Value>: Decode<'r, R::Database> + Type<R::Database>,
{
    let kind: String = row.try_get("kind")?;
    Ok(CheckpointRecord {
        id: row.try_get("id")?,
        kind: CheckpointKind::parse(&kind)
            .ok_or_else(|| decode_err(format!("unknown checkpoint kind {kind:?}")))?,
        phase: row.try_get("phase")?,
        step: row.try_get("step")?,
        state: row.try_get::<Json<Value>, _>("state")?.0,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

fn history_from_row<'r, R>(row: &'r R) -> Result<HistoryRecord, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    Option<Json<Value>>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(HistoryRecord {
        id: row.try_get("id")?,
        entry: HistoryEntry {
            event: row.try_get("event")?,
            phase: row.try_get("phase")?,
            step: row.try_get("step")?,
            iteration: row.try_get("iteration")?,
            output: row
                .try_get::<Option<Json<Value>>, _>("output")?
                .map(|j| j.0),
            error: row.try_get("error")?,
            started_at_ms: row.try_get("started_at_ms")?,
            finished_at_ms: row.try_get("finished_at_ms")?,
        },
    })
}

fn node_from_row<'r, R>(row: &'r R) -> Result<NodeRecord, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Json<BTreeMap<String, String>>: Decode<'r, R::Database> + Type<R::Database>,
    Json<Vec<String>>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(NodeRecord {
        tenant: tenant_of(&row.try_get::<String, _>("tenant_id")?)?,
        id: row.try_get("id")?,
        capacity: Resources {
            cpu_millis: row.try_get("cpu_millis")?,
            memory_mb: row.try_get("memory_mb")?,
            gpus: row.try_get("gpus")?,
            labels: row
                .try_get::<Json<BTreeMap<String, String>>, _>("labels")?
                .0,
        },
        queues: row.try_get::<Json<Vec<String>>, _>("queues")?.0,
        registered_by: row.try_get("registered_by")?,
        registered_at_ms: row.try_get("registered_at_ms")?,
        last_heartbeat_ms: row.try_get("last_heartbeat_ms")?,
    })
}

// ---- tenant tasks ------------------------------------------------------------------

/// One tenant's tasks: submit, read, list, cancel, and the leases its
/// external nodes take. Obtainable only through
/// [`crate::TenantScope::tasks`]; every query binds the scope's tenant.
#[derive(Clone)]
pub struct TenantTasks {
    pub(crate) backend: Backend,
    pub(crate) tenant: TenantId,
}

impl TenantTasks {
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Enqueues a task. With an idempotency key that this tenant already
    /// used, nothing is written and the existing task is returned
    /// (`created: false`), whatever its status.
    pub async fn submit(&self, task: &NewTask, now_ms: i64) -> Result<Submitted, StoreError> {
        let mut done = self.submit_many(std::slice::from_ref(task), now_ms).await?;
        done.pop().ok_or_else(|| StoreError::Conflict {
            message: "the submitted task vanished".into(),
        })
    }

    /// Enqueues several tasks atomically (all or none), in order: one
    /// multi-row INSERT per [`SUBMIT_ROWS_PER_STATEMENT`] tasks, and one
    /// look-up for the idempotency keys that were already taken. A key used
    /// twice in one call creates the task once; the second gets the first.
    pub async fn submit_many(
        &self,
        tasks: &[NewTask],
        now_ms: i64,
    ) -> Result<Vec<Submitted>, StoreError> {
        for task in tasks {
            validate_new_task(task)?;
        }
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = tasks
            .iter()
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect();
        let tenant = self.tenant.as_str();
        let chunks = tasks.len().div_ceil(SUBMIT_ROWS_PER_STATEMENT);
        let err = write_err(&self.backend, &self.tenant, "submitting tasks");
        // Ids of the keyed tasks that were inserted, and the rows of the
        // keys that already existed.
        let done: Result<(Vec<String>, Vec<TaskRecord>), sqlx::Error> =
            on_backend!(&self.backend, |pool| {
                async {
                    // One statement is atomic by itself; several need a
                    // transaction.
                    let mut tx = if chunks > 1 {
                        Some(pool.begin().await?)
                    } else {
                        None
                    };
                    let mut inserted = Vec::new();
                    for (chunk, chunk_ids) in tasks
                        .chunks(SUBMIT_ROWS_PER_STATEMENT)
                        .zip(ids.chunks(SUBMIT_ROWS_PER_STATEMENT))
                    {
                        let keyed = chunk.iter().any(|t| t.idempotency_key.is_some());
                        let sql = insert_tasks_sql(&self.backend, chunk.len(), keyed);
                        let mut q = sqlx::query(&sql);
                        for (task, id) in chunk.iter().zip(chunk_ids) {
                            let req = task.requirements.as_ref();
                            q = q
                                .bind(id.as_str())
                                .bind(tenant)
                                .bind(task.queue.as_str())
                                .bind(task.tool.as_str())
                                .bind(Json(&task.arguments))
                                .bind(task.principal_id.as_str())
                                .bind(Json(&task.principal))
                                .bind(task.priority)
                                .bind(task.eta_ms)
                                .bind(task.time_limit_ms)
                                .bind(task.max_retries)
                                .bind(task.backoff_base_ms)
                                .bind(task.backoff_max_ms)
                                .bind(task.idempotency_key.as_deref())
                                .bind(task.result_ttl_ms)
                                .bind(i64::from(req.is_some()))
                                .bind(req.map_or(0, |r| r.cpu_millis))
                                .bind(req.map_or(0, |r| r.memory_mb))
                                .bind(req.map_or(0, |r| r.gpus))
                                .bind(Json(req.map_or(&NO_LABELS, |r| &r.labels)))
                                .bind(now_ms)
                                .bind(now_ms);
                        }
                        if keyed {
                            let rows = match tx.as_mut() {
                                Some(tx) => q.fetch_all(&mut **tx).await?,
                                None => q.fetch_all(pool).await?,
                            };
                            for row in rows {
                                inserted.push(row.try_get::<String, _>(0)?);
                            }
                        } else {
                            let n = match tx.as_mut() {
                                Some(tx) => q.execute(&mut **tx).await?,
                                None => q.execute(pool).await?,
                            }
                            .rows_affected();
                            if n != chunk.len() as u64 {
                                return Err(decode_err(format!(
                                    "inserted {n} of {} tasks without idempotency keys",
                                    chunk.len()
                                )));
                            }
                        }
                    }
                    if let Some(tx) = tx {
                        tx.commit().await?;
                    }
                    // Keys that did not insert belong to earlier tasks
                    // (committed, so this read after the commit sees them).
                    let inserted_set: std::collections::HashSet<&str> =
                        inserted.iter().map(String::as_str).collect();
                    let taken: Vec<&str> = tasks
                        .iter()
                        .zip(&ids)
                        .filter(|(_, id)| !inserted_set.contains(id.as_str()))
                        .filter_map(|(t, _)| t.idempotency_key.as_deref())
                        .collect();
                    let mut existing = Vec::new();
                    for keys in taken.chunks(SUBMIT_ROWS_PER_STATEMENT) {
                        let sql = select_tasks_by_keys_sql(&self.backend, keys.len());
                        let mut q = sqlx::query(&sql).bind(tenant);
                        for key in keys {
                            q = q.bind(*key);
                        }
                        for row in q.fetch_all(pool).await? {
                            existing.push(task_from_row(&row)?);
                        }
                    }
                    Ok((inserted, existing))
                }
                .await
            });
        let (inserted, existing) = done.map_err(err)?;
        let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
        let by_key: std::collections::HashMap<String, TaskRecord> = existing
            .into_iter()
            .filter_map(|t| t.idempotency_key.clone().map(|k| (k, t)))
            .collect();
        tasks
            .iter()
            .zip(ids)
            .map(|(task, id)| {
                let key = match &task.idempotency_key {
                    Some(key) if !inserted.contains(&id) => key,
                    _ => {
                        return Ok(Submitted {
                            task: queued_record(id, &self.tenant, task, now_ms),
                            created: true,
                        });
                    }
                };
                match by_key.get(key) {
                    Some(first) => Ok(Submitted {
                        task: first.clone(),
                        created: false,
                    }),
                    // Purged between the insert and the look-up.
                    None => Err(StoreError::Conflict {
                        message: format!(
                            "idempotency key `{key}` belonged to a task that was just deleted; submit again"
                        ),
                    }),
                }
            })
            .collect()
    }

    pub async fn get(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        validate_name("task id", id)?;
        let found = on_backend!(&self.backend, |pool| sqlx::query(&SELECT_TASK)
            .bind(self.tenant.as_str())
            .bind(id)
            .fetch_optional(pool)
            .await
            .and_then(|row| row.as_ref().map(task_from_row).transpose()));
        found.map_err(db(&self.backend, "reading a task"))
    }

    /// The tenant's tasks, newest first; `limit` is clamped to
    /// `1..=TASK_LIST_MAX`.
    pub async fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StoreError> {
        if let Some(queue) = &filter.queue {
            validate_id("queue", queue)?;
        }
        let status = filter.status.map(TaskStatus::as_str);
        let page = on_backend!(&self.backend, |pool| sqlx::query(&LIST_TASKS)
            .bind(self.tenant.as_str())
            .bind(status)
            .bind(filter.queue.as_deref())
            .bind(clamp(filter.limit, TASK_LIST_MAX))
            .fetch_all(pool)
            .await
            .and_then(|rows| rows.iter().map(task_from_row).collect()));
        page.map_err(db(&self.backend, "listing tasks"))
    }

    /// Cancels a queued or running task (a running one loses its lease, so
    /// its worker cannot complete it). `Ok(None)` if there is no such task;
    /// [`StoreError::Conflict`] if it has already ended.
    pub async fn cancel(
        &self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Option<TaskRecord>, StoreError> {
        validate_name("task id", id)?;
        let updated = on_backend!(&self.backend, |pool| sqlx::query(&CANCEL_TASK)
            .bind(self.tenant.as_str())
            .bind(id)
            .bind(now_ms)
            .bind(reason)
            .fetch_optional(pool)
            .await
            .and_then(|row| row.as_ref().map(task_from_row).transpose()));
        match updated.map_err(db(&self.backend, "cancelling a task"))? {
            Some(task) => Ok(Some(task)),
            None => match self.get(id).await? {
                None => Ok(None),
                Some(task) => Err(StoreError::Conflict {
                    message: format!("task {id} has already ended ({})", task.status.as_str()),
                }),
            },
        }
    }

    /// Leases up to `max` ready tasks of `queue` that the registered node
    /// `node_id` can take: tasks whose requirements its capacity, minus what
    /// the tasks it already holds require, satisfies (tasks without
    /// requirements fit any node). The lease owner is `node:<node_id>`.
    /// [`StoreError::Invalid`] if the node is not registered or does not
    /// serve the queue.
    pub async fn lease_for_node(
        &self,
        node_id: &str,
        queue: &str,
        max: u32,
        now_ms: i64,
        visibility_ms: i64,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        validate_id("queue", queue)?;
        if visibility_ms < 1 {
            return Err(StoreError::invalid("visibility_ms", "must be at least 1"));
        }
        let node = self.nodes().get(node_id).await?.ok_or_else(|| {
            StoreError::invalid("node_id", format!("no node `{node_id}` is registered"))
        })?;
        if !node.queues.iter().any(|q| q == queue) {
            return Err(StoreError::invalid(
                "queue",
                format!("node `{node_id}` does not serve queue `{queue}`"),
            ));
        }
        let tenant = self.tenant.as_str();
        let owner = format!("node:{node_id}");
        let max = clamp(max, LEASE_BATCH_MAX);
        let leased: Result<Vec<TaskRecord>, sqlx::Error> = on_backend!(&self.backend, |pool| {
            async {
                let (cpu, mem, gpu): (i64, i64, i64) = sqlx::query_as(NODE_HELD)
                    .bind(tenant)
                    .bind(node_id)
                    .fetch_one(pool)
                    .await?;
                let mut free = Resources {
                    cpu_millis: node.capacity.cpu_millis - cpu,
                    memory_mb: node.capacity.memory_mb - mem,
                    gpus: node.capacity.gpus - gpu,
                    labels: node.capacity.labels.clone(),
                };
                // A window of candidates, filtered by labels here (JSON
                // containment differs between the backends), then claimed
                // one by one with a conditional update so a concurrent
                // leaser can never take the same task.
                let rows = sqlx::query(NODE_CANDIDATES)
                    .bind(tenant)
                    .bind(queue)
                    .bind(now_ms)
                    .bind(free.cpu_millis)
                    .bind(free.memory_mb)
                    .bind(free.gpus)
                    .bind(max * 4)
                    .fetch_all(pool)
                    .await?;
                let mut out = Vec::new();
                for row in rows {
                    if out.len() as i64 >= max {
                        break;
                    }
                    let id: String = row.try_get("id")?;
                    let need = Resources {
                        cpu_millis: row.try_get("req_cpu_millis")?,
                        memory_mb: row.try_get("req_memory_mb")?,
                        gpus: row.try_get("req_gpus")?,
                        labels: row
                            .try_get::<Json<BTreeMap<String, String>>, _>("req_labels")?
                            .0,
                    };
                    if !free.satisfies(&need) {
                        continue;
                    }
                    let claimed = sqlx::query(&NODE_CLAIM)
                        .bind(owner.as_str())
                        .bind(now_ms)
                        .bind(visibility_ms)
                        .bind(tenant)
                        .bind(id.as_str())
                        .bind(node_id)
                        .fetch_optional(pool)
                        .await?;
                    if let Some(row) = claimed {
                        free.cpu_millis -= need.cpu_millis;
                        free.memory_mb -= need.memory_mb;
                        free.gpus -= need.gpus;
                        out.push(task_from_row(&row)?);
                    }
                }
                Ok(out)
            }
            .await
        });
        leased.map_err(db(&self.backend, "leasing tasks for a node"))
    }

    /// Ends an attempt a node held; `false` if the lease is no longer
    /// current (expired and handed on, or the task was cancelled).
    pub async fn finish_for_node(
        &self,
        lease: &TaskLease,
        outcome: &TaskOutcome,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        if lease.tenant != self.tenant {
            return Ok(false);
        }
        finish_one(&self.backend, lease, outcome, now_ms).await
    }

    fn nodes(&self) -> TenantNodes {
        TenantNodes {
            backend: self.backend.clone(),
            tenant: self.tenant.clone(),
        }
    }
}

async fn finish_one(
    backend: &Backend,
    lease: &TaskLease,
    outcome: &TaskOutcome,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let mut done = finish_many(
        backend,
        std::slice::from_ref(&(lease.clone(), outcome.clone())),
        now_ms,
    )
    .await?;
    Ok(done.pop().unwrap_or(false))
}

async fn finish_many(
    backend: &Backend,
    items: &[(TaskLease, TaskOutcome)],
    now_ms: i64,
) -> Result<Vec<bool>, StoreError> {
    for (_, outcome) in items {
        if let TaskOutcome::Succeeded { result } = outcome {
            validate_json("result", result)?;
        }
    }
    if items.is_empty() {
        return Ok(Vec::new());
    }
    // Each statement joins the outcomes by task id, so one statement must
    // not carry the same task twice (it would be matched once, and the
    // answer for the other would be a guess): duplicates go to a later
    // round. There is normally one round.
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut round_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, (lease, _)) in items.iter().enumerate() {
        let r = round_of
            .entry(lease.task_id.as_str())
            .and_modify(|r| *r += 1)
            .or_insert(0);
        if rounds.len() <= *r {
            rounds.push(Vec::new());
        }
        rounds[*r].push(i);
    }
    let statements: Vec<&[usize]> = rounds
        .iter()
        .flat_map(|round| round.chunks(FINISH_ROWS_PER_STATEMENT))
        .collect();
    let done: Result<Vec<bool>, sqlx::Error> = on_backend!(backend, |pool| {
        async {
            let mut tx = if statements.len() > 1 {
                Some(pool.begin().await?)
            } else {
                None
            };
            let mut out = vec![false; items.len()];
            for chunk in &statements {
                let sql = finish_tasks_sql(backend, finish_rows(chunk.len()));
                let mut q = sqlx::query(&sql).bind(now_ms).bind(now_ms).bind(now_ms);
                for &i in chunk.iter() {
                    let (lease, outcome) = &items[i];
                    let (status, result, error, eta) = match outcome {
                        TaskOutcome::Succeeded { result } => {
                            ("succeeded", Some(result), None, None)
                        }
                        TaskOutcome::Retry { error, at_ms } => {
                            ("queued", None, Some(error.as_str()), Some(*at_ms))
                        }
                        TaskOutcome::Failed { error } => {
                            ("failed", None, Some(error.as_str()), None)
                        }
                    };
                    q = q
                        .bind(Some(lease.tenant.as_str()))
                        .bind(Some(lease.task_id.as_str()))
                        .bind(Some(lease.owner.as_str()))
                        .bind(Some(lease.attempt))
                        .bind(Some(status))
                        .bind(result.map(Json))
                        .bind(error)
                        .bind(eta);
                }
                // Padding rows (all NULL) match nothing; they keep the
                // number of distinct statements small for the statement
                // cache.
                for _ in chunk.len()..finish_rows(chunk.len()) {
                    q = q
                        .bind(None::<&str>)
                        .bind(None::<&str>)
                        .bind(None::<&str>)
                        .bind(None::<i64>)
                        .bind(None::<&str>)
                        .bind(None::<Json<&Value>>)
                        .bind(None::<&str>)
                        .bind(None::<i64>);
                }
                let rows = match tx.as_mut() {
                    Some(tx) => q.fetch_all(&mut **tx).await?,
                    None => q.fetch_all(pool).await?,
                };
                let mut written = std::collections::HashSet::with_capacity(rows.len());
                for row in &rows {
                    written.insert(row.try_get::<String, _>(0)?);
                }
                for &i in chunk.iter() {
                    out[i] = written.contains(&items[i].0.task_id);
                }
            }
            if let Some(tx) = tx {
                tx.commit().await?;
            }
            Ok(out)
        }
        .await
    });
    done.map_err(db(backend, "finishing tasks"))
}

// ---- cross-tenant leases -------------------------------------------------------------

/// The engine's view across tenants: leasing the next ready tasks of a
/// queue, renewing and completing leases, expiring the leases of dead
/// workers, purging expired results, and picking up workflows whose driver
/// died. Obtainable only through [`crate::Store::cross_tenant_leases`], for
/// the orchestration engine's workers; everything a tenant asks for goes
/// through the tenant-scoped repositories.
#[derive(Clone)]
pub struct CrossTenantLeases {
    pub(crate) backend: Backend,
}

impl CrossTenantLeases {
    /// Leases up to `max` ready tasks of `queue` (status queued, `eta_ms`
    /// reached, no node requirements), best first (priority descending, then
    /// eta, then id), to `owner` for `visibility_ms`. Several engines sharing
    /// a PostgreSQL store never receive the same task.
    pub async fn lease_tasks(
        &self,
        queue: &str,
        owner: &str,
        max: u32,
        now_ms: i64,
        visibility_ms: i64,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        validate_id("queue", queue)?;
        validate_name("owner", owner)?;
        if visibility_ms < 1 {
            return Err(StoreError::invalid("visibility_ms", "must be at least 1"));
        }
        let max = clamp(max, LEASE_BATCH_MAX);
        let sql: &str = match self.backend {
            Backend::Sqlite(_) => &LEASE_SQLITE,
            Backend::Postgres(_) => &LEASE_POSTGRES,
        };
        let leased = on_backend!(&self.backend, |pool| {
            sqlx::query(sql)
                .bind(owner)
                .bind(now_ms)
                .bind(visibility_ms)
                .bind(queue)
                .bind(max)
                .fetch_all(pool)
                .await
                .and_then(|rows| {
                    rows.iter()
                        .map(task_from_row)
                        .collect::<Result<Vec<_>, _>>()
                })
        });
        let mut tasks = leased.map_err(db(&self.backend, "leasing tasks"))?;
        // RETURNING does not keep the sub-select's order.
        tasks.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.eta_ms.cmp(&b.eta_ms))
                .then(a.id.cmp(&b.id))
        });
        Ok(tasks)
    }

    /// Extends every task and workflow lease `owner` holds to `until_ms`
    /// (the heartbeat). Returns the number of task leases renewed.
    pub async fn renew(&self, owner: &str, until_ms: i64) -> Result<u64, StoreError> {
        let renewed: Result<u64, sqlx::Error> = on_backend!(&self.backend, |pool| {
            async {
                let n = sqlx::query(RENEW_OWNER)
                    .bind(owner)
                    .bind(until_ms)
                    .execute(pool)
                    .await?
                    .rows_affected();
                sqlx::query(RENEW_WORKFLOWS)
                    .bind(owner)
                    .bind(until_ms)
                    .execute(pool)
                    .await?;
                Ok(n)
            }
            .await
        });
        renewed.map_err(db(&self.backend, "renewing leases"))
    }

    /// The tasks `owner` currently holds, as (id, attempt): a worker
    /// compares it with what it is running to stop work that was cancelled
    /// or whose lease was lost.
    pub async fn held_by(&self, owner: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let held = on_backend!(&self.backend, |pool| sqlx::query_as::<_, (String, i64)>(
            RUNNING_FOR_OWNER
        )
        .bind(owner)
        .fetch_all(pool)
        .await);
        held.map_err(db(&self.backend, "reading held leases"))
    }

    /// Ends an attempt; `false` if the lease is no longer current.
    pub async fn finish(
        &self,
        lease: &TaskLease,
        outcome: &TaskOutcome,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        finish_one(&self.backend, lease, outcome, now_ms).await
    }

    /// Records the progress the attempt holding `lease` reported; `false`
    /// (nothing written) if the lease is no longer current, so a late
    /// report can never touch a task that ended or moved on.
    pub async fn report_progress(
        &self,
        lease: &TaskLease,
        progress: &Value,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        validate_json("progress", progress)?;
        let done = on_backend!(&self.backend, |pool| sqlx::query(REPORT_PROGRESS)
            .bind(lease.tenant.as_str())
            .bind(lease.task_id.as_str())
            .bind(lease.owner.as_str())
            .bind(lease.attempt)
            .bind(Json(progress))
            .bind(now_ms)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1));
        done.map_err(db(&self.backend, "recording task progress"))
    }

    /// Ends several attempts in one transaction; for each, whether its lease
    /// was still current.
    pub async fn finish_many(
        &self,
        items: &[(TaskLease, TaskOutcome)],
        now_ms: i64,
    ) -> Result<Vec<bool>, StoreError> {
        finish_many(&self.backend, items, now_ms).await
    }

    /// Puts tasks whose lease expired before `now_ms` back in their queue
    /// (ready at once), or fails them when they have been delivered more
    /// than `max_retries + 1 +` [`LOST_LEASE_ALLOWANCE`] times.
    pub async fn expire_leases(&self, now_ms: i64) -> Result<ExpiredLeases, StoreError> {
        let done: Result<ExpiredLeases, sqlx::Error> = on_backend!(&self.backend, |pool| {
            async {
                let mut tx = pool.begin().await?;
                let failed: Vec<String> = sqlx::query_scalar(EXPIRE_FAIL)
                    .bind(now_ms)
                    .bind("the worker's lease expired too many times (was it killed by this task?)")
                    .bind(LOST_LEASE_ALLOWANCE)
                    .fetch_all(&mut *tx)
                    .await?;
                let requeued: Vec<String> = sqlx::query_scalar(EXPIRE_REQUEUE)
                    .bind(now_ms)
                    .bind("the worker's lease expired; delivered again")
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(ExpiredLeases { requeued, failed })
            }
            .await
        });
        done.map_err(db(&self.backend, "expiring leases"))
    }

    /// Puts every task still leased to `owner` back in its queue, ready at
    /// `now_ms`, without counting the attempt as lost: at start-up, for an
    /// instance with a stable owner id, those leases belong to the process
    /// that died. Returns the task ids.
    pub async fn release_owner(&self, owner: &str, now_ms: i64) -> Result<Vec<String>, StoreError> {
        validate_name("owner", owner)?;
        let done = on_backend!(&self.backend, |pool| sqlx::query_scalar::<_, String>(
            RELEASE_OWNER
        )
        .bind(owner)
        .bind(now_ms)
        .fetch_all(pool)
        .await);
        done.map_err(db(&self.backend, "releasing an owner's leases"))
    }

    /// Deletes ended tasks whose result TTL has passed; returns how many.
    pub async fn purge_expired(&self, now_ms: i64) -> Result<u64, StoreError> {
        let done = on_backend!(&self.backend, |pool| sqlx::query(PURGE_EXPIRED)
            .bind(now_ms)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()));
        done.map_err(db(&self.backend, "purging expired tasks"))
    }

    /// Takes over up to `max` running workflows that no live engine drives
    /// (no lease, or an expired one), leasing them to `owner`; with
    /// `include_own`, also those still leased to `owner` (at start-up, when
    /// `owner` is a stable instance id, they are the previous process's).
    pub async fn claim_orphan_workflows(
        &self,
        owner: &str,
        include_own: bool,
        max: u32,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Vec<WorkflowRecord>, StoreError> {
        validate_name("owner", owner)?;
        let max = clamp(max, TASK_LIST_MAX);
        let sql: &str = match self.backend {
            Backend::Sqlite(_) => &ORPHANS_SQLITE,
            Backend::Postgres(_) => &ORPHANS_POSTGRES,
        };
        let claimed = on_backend!(&self.backend, |pool| {
            sqlx::query(sql)
                .bind(owner)
                .bind(now_ms)
                .bind(lease_ms)
                .bind(max)
                .bind(i64::from(include_own))
                .fetch_all(pool)
                .await
                .and_then(|rows| {
                    rows.iter()
                        .map(workflow_from_row)
                        .collect::<Result<Vec<_>, _>>()
                })
        });
        claimed.map_err(db(&self.backend, "claiming orphaned workflows"))
    }
}

// ---- workflows -----------------------------------------------------------------------

/// One tenant's workflow runs, their checkpoints and history. Obtainable
/// only through [`crate::TenantScope::workflows`].
///
/// Writes of a running workflow's state are fenced by its lease: only the
/// engine that holds it (`owner`) can checkpoint, finish or restore.
#[derive(Clone)]
pub struct TenantWorkflows {
    pub(crate) backend: Backend,
    pub(crate) tenant: TenantId,
}

impl TenantWorkflows {
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Stores a new run in status `created`.
    pub async fn create(
        &self,
        workflow: &NewWorkflow,
        now_ms: i64,
    ) -> Result<WorkflowRecord, StoreError> {
        validate_name("workflow name", &workflow.name)?;
        validate_name("principal_id", &workflow.principal_id)?;
        validate_json("definition", &workflow.definition)?;
        validate_json("input", &workflow.input)?;
        validate_json("state", &workflow.state)?;
        let created = on_backend!(&self.backend, |pool| sqlx::query(&INSERT_WORKFLOW)
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(self.tenant.as_str())
            .bind(workflow.name.as_str())
            .bind(Json(&workflow.definition))
            .bind(Json(&workflow.input))
            .bind(workflow.principal_id.as_str())
            .bind(Json(&workflow.principal))
            .bind(Json(&workflow.state))
            .bind(now_ms)
            .fetch_one(pool)
            .await
            .and_then(|row| workflow_from_row(&row)));
        created.map_err(write_err(
            &self.backend,
            &self.tenant,
            "creating a workflow",
        ))
    }

    pub async fn get(&self, id: &str) -> Result<Option<WorkflowRecord>, StoreError> {
        validate_name("workflow id", id)?;
        let found = on_backend!(&self.backend, |pool| sqlx::query(&SELECT_WORKFLOW)
            .bind(self.tenant.as_str())
            .bind(id)
            .fetch_optional(pool)
            .await
            .and_then(|row| row.as_ref().map(workflow_from_row).transpose()));
        found.map_err(db(&self.backend, "reading a workflow"))
    }

    /// Newest first; `limit` is clamped to `1..=TASK_LIST_MAX`.
    pub async fn list(
        &self,
        status: Option<WorkflowStatus>,
        limit: u32,
    ) -> Result<Vec<WorkflowRecord>, StoreError> {
        let page = on_backend!(&self.backend, |pool| sqlx::query(&LIST_WORKFLOWS)
            .bind(self.tenant.as_str())
            .bind(status.map(WorkflowStatus::as_str))
            .bind(clamp(limit, TASK_LIST_MAX))
            .fetch_all(pool)
            .await
            .and_then(|rows| rows.iter().map(workflow_from_row).collect()));
        page.map_err(db(&self.backend, "listing workflows"))
    }

    /// Moves the run from one of `from` to `to`. `release` also clears the
    /// lease, so any engine may claim it next. `Ok(None)` when the run does
    /// not exist or is in none of `from`.
    pub async fn transition(
        &self,
        id: &str,
        from: &[WorkflowStatus],
        to: WorkflowStatus,
        release: bool,
        now_ms: i64,
    ) -> Result<Option<WorkflowRecord>, StoreError> {
        validate_name("workflow id", id)?;
        if from.is_empty() {
            return Err(StoreError::invalid("from", "name at least one status"));
        }
        let list: Vec<String> = from.iter().map(|s| format!("'{}'", s.as_str())).collect();
        let mut set = String::from("status = $3, updated_at_ms = $4");
        if release {
            set.push_str(", lease_owner = NULL, lease_expires_at_ms = NULL");
        }
        if to == WorkflowStatus::Running {
            set.push_str(", started_at_ms = COALESCE(started_at_ms, $4), finished_at_ms = NULL");
        }
        if matches!(
            to,
            WorkflowStatus::Cancelled | WorkflowStatus::Succeeded | WorkflowStatus::Failed
        ) {
            set.push_str(", finished_at_ms = $4");
        }
        // The statuses come from the enum, never from input.
        let sql = format!(
            "UPDATE workflows SET {set} WHERE tenant_id = $1 AND id = $2 AND status IN ({}) \
             RETURNING {WORKFLOW_COLUMNS}",
            list.join(", ")
        );
        let moved = on_backend!(&self.backend, |pool| sqlx::query(&sql)
            .bind(self.tenant.as_str())
            .bind(id)
            .bind(to.as_str())
            .bind(now_ms)
            .fetch_optional(pool)
            .await
            .and_then(|row| row.as_ref().map(workflow_from_row).transpose()));
        moved.map_err(db(&self.backend, "changing a workflow's status"))
    }

    /// Leases the run to `owner` if it is in `status` and nobody else holds
    /// a live lease on it.
    pub async fn claim(
        &self,
        id: &str,
        status: WorkflowStatus,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<WorkflowRecord>, StoreError> {
        validate_name("workflow id", id)?;
        validate_name("owner", owner)?;
        let claimed = on_backend!(&self.backend, |pool| sqlx::query(&CLAIM_WORKFLOW)
            .bind(self.tenant.as_str())
            .bind(id)
            .bind(owner)
            .bind(now_ms)
            .bind(lease_ms)
            .bind(status.as_str())
            .fetch_optional(pool)
            .await
            .and_then(|row| row.as_ref().map(workflow_from_row).transpose()));
        claimed.map_err(db(&self.backend, "claiming a workflow"))
    }

    /// Saves the run's state and, with `checkpoint`, a snapshot of it, in
    /// one transaction, if `owner` still holds the lease. Returns the run's
    /// status (which a user may have changed to paused or cancelled in the
    /// meantime), or `None` when the lease was lost and nothing was written.
    pub async fn save_state(
        &self,
        id: &str,
        owner: &str,
        state: &Value,
        checkpoint: Option<(CheckpointKind, &str, Option<&str>)>,
        now_ms: i64,
    ) -> Result<Option<WorkflowStatus>, StoreError> {
        validate_json("state", state)?;
        let tenant = self.tenant.as_str();
        let saved: Result<Option<String>, sqlx::Error> = on_backend!(&self.backend, |pool| {
            async {
                let mut tx = pool.begin().await?;
                let status: Option<String> = sqlx::query_scalar(SAVE_STATE)
                    .bind(tenant)
                    .bind(id)
                    .bind(owner)
                    .bind(Json(state))
                    .bind(now_ms)
                    .fetch_optional(&mut *tx)
                    .await?;
                if status.is_some()
                    && let Some((kind, phase, step)) = checkpoint
                {
                    sqlx::query_scalar::<_, i64>(INSERT_CHECKPOINT)
                        .bind(tenant)
                        .bind(id)
                        .bind(kind.as_str())
                        .bind(phase)
                        .bind(step)
                        .bind(Json(state))
                        .bind(now_ms)
                        .fetch_one(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(status)
            }
            .await
        });
        let status = saved.map_err(db(&self.backend, "checkpointing a workflow"))?;
        status
            .map(|s| {
                WorkflowStatus::parse(&s).ok_or_else(|| StoreError::Conflict {
                    message: format!("workflow {id} has an unknown status {s:?}"),
                })
            })
            .transpose()
    }

    /// Replaces the state with a restored one, sets the run running again
    /// and records a rollback checkpoint, if `owner` holds the lease.
    pub async fn restore(
        &self,
        id: &str,
        owner: &str,
        state: &Value,
        phase: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        validate_json("state", state)?;
        let tenant = self.tenant.as_str();
        let done: Result<bool, sqlx::Error> = on_backend!(&self.backend, |pool| {
            async {
                let mut tx = pool.begin().await?;
                let n = sqlx::query(RESTORE_WORKFLOW)
                    .bind(tenant)
                    .bind(id)
                    .bind(owner)
                    .bind(Json(state))
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n == 1 {
                    sqlx::query_scalar::<_, i64>(INSERT_CHECKPOINT)
                        .bind(tenant)
                        .bind(id)
                        .bind(CheckpointKind::Rollback.as_str())
                        .bind(phase)
                        .bind(None::<&str>)
                        .bind(Json(state))
                        .bind(now_ms)
                        .fetch_one(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(n == 1)
            }
            .await
        });
        done.map_err(db(&self.backend, "restoring a workflow"))
    }

    /// Ends a running run as `status` with `error`, if `owner` holds it.
    pub async fn finish(
        &self,
        id: &str,
        owner: &str,
        status: WorkflowStatus,
        error: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = on_backend!(&self.backend, |pool| sqlx::query(FINISH_WORKFLOW)
            .bind(self.tenant.as_str())
            .bind(id)
            .bind(owner)
            .bind(status.as_str())
            .bind(error)
            .bind(now_ms)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1));
        done.map_err(db(&self.backend, "finishing a workflow"))
    }

    /// Gives up `owner`'s lease (the driver stopped: paused or cancelled).
    pub async fn release(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        let done = on_backend!(&self.backend, |pool| sqlx::query(RELEASE_WORKFLOW)
            .bind(self.tenant.as_str())
            .bind(id)
            .bind(owner)
            .execute(pool)
            .await
            .map(|_| ()));
        done.map_err(db(&self.backend, "releasing a workflow"))
    }

    /// Appends an event to the run's history.
    pub async fn record(&self, id: &str, entry: &HistoryEntry) -> Result<(), StoreError> {
        validate_name("history event", &entry.event)?;
        if let Some(output) = &entry.output {
            validate_json("output", output)?;
        }
        let done = on_backend!(&self.backend, |pool| sqlx::query(INSERT_HISTORY)
            .bind(self.tenant.as_str())
            .bind(id)
            .bind(entry.event.as_str())
            .bind(entry.phase.as_deref())
            .bind(entry.step.as_deref())
            .bind(entry.iteration)
            .bind(entry.output.as_ref().map(Json))
            .bind(entry.error.as_deref())
            .bind(entry.started_at_ms)
            .bind(entry.finished_at_ms)
            .execute(pool)
            .await
            .map(|_| ()));
        done.map_err(write_err(
            &self.backend,
            &self.tenant,
            "recording workflow history",
        ))
    }

    /// The run's history, oldest first, at most `limit` (clamped to
    /// `1..=10000`).
    pub async fn history(&self, id: &str, limit: u32) -> Result<Vec<HistoryRecord>, StoreError> {
        let rows = on_backend!(&self.backend, |pool| sqlx::query(SELECT_HISTORY)
            .bind(self.tenant.as_str())
            .bind(id)
            .bind(clamp(limit, 10_000))
            .fetch_all(pool)
            .await
            .and_then(|rows| rows.iter().map(history_from_row).collect()));
        rows.map_err(db(&self.backend, "reading workflow history"))
    }

    /// The run's checkpoints, oldest first, at most `limit` (clamped to
    /// `1..=10000`).
    pub async fn checkpoints(
        &self,
        id: &str,
        limit: u32,
    ) -> Result<Vec<CheckpointRecord>, StoreError> {
        let rows = on_backend!(&self.backend, |pool| sqlx::query(SELECT_CHECKPOINTS)
            .bind(self.tenant.as_str())
            .bind(id)
            .bind(clamp(limit, 10_000))
            .fetch_all(pool)
            .await
            .and_then(|rows| rows.iter().map(checkpoint_from_row).collect()));
        rows.map_err(db(&self.backend, "reading workflow checkpoints"))
    }

    pub async fn checkpoint(
        &self,
        id: &str,
        checkpoint_id: i64,
    ) -> Result<Option<CheckpointRecord>, StoreError> {
        let row = on_backend!(&self.backend, |pool| sqlx::query(SELECT_CHECKPOINT)
            .bind(self.tenant.as_str())
            .bind(id)
            .bind(checkpoint_id)
            .fetch_optional(pool)
            .await
            .and_then(|row| row.as_ref().map(checkpoint_from_row).transpose()));
        row.map_err(db(&self.backend, "reading a workflow checkpoint"))
    }
}

// ---- nodes -------------------------------------------------------------------------------

/// One tenant's external worker nodes. Obtainable only through
/// [`crate::TenantScope::nodes`].
#[derive(Clone)]
pub struct TenantNodes {
    pub(crate) backend: Backend,
    pub(crate) tenant: TenantId,
}

impl TenantNodes {
    /// Registers the node, or updates its capacity and queues if it exists
    /// (a node re-registers after a restart). Counts as a heartbeat.
    pub async fn register(&self, node: &NewNode, now_ms: i64) -> Result<NodeRecord, StoreError> {
        validate_id("node id", &node.id)?;
        node.capacity.validate("capacity")?;
        if node.queues.is_empty() || node.queues.len() > LABELS_MAX {
            return Err(StoreError::invalid(
                "queues",
                format!("name 1 to {LABELS_MAX} queues"),
            ));
        }
        for q in &node.queues {
            validate_id("queues", q)?;
        }
        validate_name("registered_by", &node.registered_by)?;
        let done = on_backend!(&self.backend, |pool| sqlx::query(&UPSERT_NODE)
            .bind(self.tenant.as_str())
            .bind(node.id.as_str())
            .bind(node.capacity.cpu_millis)
            .bind(node.capacity.memory_mb)
            .bind(node.capacity.gpus)
            .bind(Json(&node.capacity.labels))
            .bind(Json(&node.queues))
            .bind(node.registered_by.as_str())
            .bind(now_ms)
            .fetch_one(pool)
            .await
            .and_then(|row| node_from_row(&row)));
        done.map_err(write_err(&self.backend, &self.tenant, "registering a node"))
    }

    /// Records that the node is alive and extends the leases of the tasks it
    /// holds to `lease_until_ms`. `None` if the node is not registered.
    pub async fn heartbeat(
        &self,
        id: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Option<(NodeRecord, u64)>, StoreError> {
        validate_id("node id", id)?;
        let tenant = self.tenant.as_str();
        let done: Result<Option<(NodeRecord, u64)>, sqlx::Error> =
            on_backend!(&self.backend, |pool| {
                async {
                    let Some(row) = sqlx::query(&HEARTBEAT_NODE)
                        .bind(tenant)
                        .bind(id)
                        .bind(now_ms)
                        .fetch_optional(pool)
                        .await?
                    else {
                        return Ok(None);
                    };
                    let node = node_from_row(&row)?;
                    let renewed = sqlx::query(RENEW_NODE_LEASES)
                        .bind(tenant)
                        .bind(id)
                        .bind(lease_until_ms)
                        .execute(pool)
                        .await?
                        .rows_affected();
                    Ok(Some((node, renewed)))
                }
                .await
            });
        done.map_err(db(&self.backend, "recording a node heartbeat"))
    }

    pub async fn get(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        validate_id("node id", id)?;
        let found = on_backend!(&self.backend, |pool| sqlx::query(&SELECT_NODE)
            .bind(self.tenant.as_str())
            .bind(id)
            .fetch_optional(pool)
            .await
            .and_then(|row| row.as_ref().map(node_from_row).transpose()));
        found.map_err(db(&self.backend, "reading a node"))
    }

    /// The tenant's nodes by id; `limit` clamped to `1..=TASK_LIST_MAX`.
    pub async fn list(&self, limit: u32) -> Result<Vec<NodeRecord>, StoreError> {
        let all = on_backend!(&self.backend, |pool| sqlx::query(&LIST_NODES)
            .bind(self.tenant.as_str())
            .bind(clamp(limit, TASK_LIST_MAX))
            .fetch_all(pool)
            .await
            .and_then(|rows| rows.iter().map(node_from_row).collect()));
        all.map_err(db(&self.backend, "listing nodes"))
    }

    /// Forgets the node; its leases then expire like a silent node's.
    pub async fn remove(&self, id: &str) -> Result<bool, StoreError> {
        validate_id("node id", id)?;
        let done = on_backend!(&self.backend, |pool| sqlx::query(DELETE_NODE)
            .bind(self.tenant.as_str())
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1));
        done.map_err(db(&self.backend, "removing a node"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_match_capacity_and_labels() {
        let node = Resources {
            cpu_millis: 4000,
            memory_mb: 8192,
            gpus: 1,
            labels: BTreeMap::from([("zone".into(), "eu".into()), ("arch".into(), "arm".into())]),
        };
        let fits = Resources {
            cpu_millis: 2000,
            memory_mb: 8192,
            gpus: 1,
            labels: BTreeMap::from([("zone".into(), "eu".into())]),
        };
        assert!(node.satisfies(&fits));
        assert!(node.satisfies(&Resources::default()));
        let too_big = Resources {
            gpus: 2,
            ..fits.clone()
        };
        assert!(!node.satisfies(&too_big));
        let wrong_zone = Resources {
            labels: BTreeMap::from([("zone".into(), "us".into())]),
            ..fits
        };
        assert!(!node.satisfies(&wrong_zone));
    }

    #[test]
    fn statuses_round_trip() {
        for s in WorkflowStatus::ALL {
            assert_eq!(WorkflowStatus::parse(s.as_str()), Some(s));
        }
        for s in ["queued", "running", "succeeded", "failed", "cancelled"] {
            assert_eq!(TaskStatus::parse(s).map(TaskStatus::as_str), Some(s));
        }
        assert!(TaskStatus::parse("done").is_none());
    }
}
