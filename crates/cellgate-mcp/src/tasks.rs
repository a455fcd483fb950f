//! The tasks extension (SEP-2663, `io.modelcontextprotocol/tasks`) for the
//! stateless revision: a `tools/call` the server decides to finish in the
//! background answers with a task; the client polls `tasks/get`, answers the
//! task's questions with `tasks/update` and may `tasks/cancel` it.
//!
//! A task belongs to the caller that created it (tenant and principal, plus
//! the session when there is one). Its id is 128 random bits, and a task of
//! another caller is reported exactly like one that does not exist.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cellgate_kernel::{BoxFuture, CancellationToken, ClientPeer, LogLevel, McpError, Tool, codes};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

pub const TASKS_EXTENSION: &str = "io.modelcontextprotocol/tasks";
/// How long a task stays readable after its last change.
pub const TASK_TTL: Duration = Duration::from_secs(60 * 60);
/// The polling interval suggested to clients.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Tasks one caller may hold at once; beyond it new calls run in the foreground.
pub const MAX_TASKS_PER_OWNER: usize = 1000;

/// What a tool declares in `execution.taskSupport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskSupport {
    Forbidden,
    Optional,
    Required,
}

impl TaskSupport {
    pub fn of(tool: &Tool) -> Self {
        match tool
            .extra
            .get("execution")
            .and_then(|e| e.get("taskSupport"))
            .and_then(Value::as_str)
        {
            Some("optional") => TaskSupport::Optional,
            Some("required") => TaskSupport::Required,
            _ => TaskSupport::Forbidden,
        }
    }
}

/// Whether a client's capabilities declare the tasks extension.
pub fn client_declares_tasks(capabilities: &Value) -> bool {
    capabilities
        .get("extensions")
        .and_then(|e| e.get(TASKS_EXTENSION))
        .is_some()
}

pub fn missing_tasks_capability(what: &str) -> McpError {
    McpError::missing_capability(
        format!("{what} needs the {TASKS_EXTENSION} extension, which the client did not declare"),
        json!({ "extensions": { TASKS_EXTENSION: {} } }),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Working,
    InputRequired,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Working => "working",
            TaskStatus::InputRequired => "input_required",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

/// A question the task waits on, and where its answer goes.
struct PendingInput {
    request: Value,
    answer: oneshot::Sender<Value>,
}

struct TaskState {
    status: TaskStatus,
    updated: SystemTime,
    touched: Instant,
    result: Option<Value>,
    error: Option<McpError>,
    inputs: BTreeMap<String, PendingInput>,
}

pub struct Task {
    pub id: String,
    owner: String,
    created: SystemTime,
    /// Cancels the running call.
    pub cancel: CancellationToken,
    next_input: AtomicU64,
    state: Mutex<TaskState>,
}

impl Task {
    fn lock(&self) -> std::sync::MutexGuard<'_, TaskState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_status(state: &mut TaskState, status: TaskStatus) {
        state.status = status;
        state.updated = SystemTime::now();
        state.touched = Instant::now();
    }

    pub fn status(&self) -> TaskStatus {
        self.lock().status
    }

    /// Common fields of `CreateTaskResult` and `tasks/get`.
    fn envelope(&self, state: &TaskState) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("taskId".into(), json!(self.id));
        m.insert("status".into(), json!(state.status.as_str()));
        m.insert("createdAt".into(), json!(iso8601(self.created)));
        m.insert("lastUpdatedAt".into(), json!(iso8601(state.updated)));
        m.insert("ttlMs".into(), json!(TASK_TTL.as_millis() as u64));
        m.insert(
            "pollIntervalMs".into(),
            json!(POLL_INTERVAL.as_millis() as u64),
        );
        m
    }

    /// The `tools/call` answer that hands the call over to this task.
    pub fn create_result(&self) -> Value {
        let mut m = self.envelope(&self.lock());
        m.insert("resultType".into(), json!("task"));
        Value::Object(m)
    }

    /// The `tasks/get` answer: the envelope plus what the status implies.
    pub fn detailed(&self) -> Value {
        let state = self.lock();
        let mut m = self.envelope(&state);
        m.insert("resultType".into(), json!("complete"));
        match state.status {
            TaskStatus::Completed => {
                if let Some(r) = &state.result {
                    m.insert("result".into(), r.clone());
                }
            }
            TaskStatus::Failed => {
                if let Some(e) = &state.error {
                    m.insert("error".into(), json!(e));
                }
            }
            TaskStatus::InputRequired => {
                let requests: Map<String, Value> = state
                    .inputs
                    .iter()
                    .map(|(k, p)| (k.clone(), p.request.clone()))
                    .collect();
                m.insert("inputRequests".into(), Value::Object(requests));
            }
            TaskStatus::Working | TaskStatus::Cancelled => {}
        }
        Value::Object(m)
    }

    /// Records how the call ended. A cancelled task stays cancelled.
    pub fn finish(&self, outcome: Result<Value, McpError>) {
        let mut state = self.lock();
        if state.status.is_terminal() {
            return;
        }
        state.inputs.clear();
        match outcome {
            Ok(mut result) => {
                if let Some(o) = result.as_object_mut() {
                    // The task id is at the root of tasks/get; no v1 related-task meta.
                    o.remove("resultType");
                }
                state.result = Some(result);
                Self::set_status(&mut state, TaskStatus::Completed);
            }
            Err(e) if e.code == codes::REQUEST_CANCELLED && self.cancel.is_cancelled() => {
                Self::set_status(&mut state, TaskStatus::Cancelled);
            }
            Err(e) => {
                state.error = Some(e);
                Self::set_status(&mut state, TaskStatus::Failed);
            }
        }
    }

    /// `tasks/cancel`: idempotent; a terminal task is left as it is.
    pub fn request_cancel(&self) {
        let mut state = self.lock();
        if !state.status.is_terminal() {
            state.inputs.clear();
            Self::set_status(&mut state, TaskStatus::Cancelled);
        }
        drop(state);
        self.cancel.cancel();
    }

    /// Parks a question for the client; resolves with its answer.
    fn ask(&self, key: Option<&str>, method: &str, params: Value) -> oneshot::Receiver<Value> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.lock();
        if state.status.is_terminal() {
            return rx; // dropped sender: the ask fails at once
        }
        let mut key = key.map_or_else(
            || format!("input-{}", self.next_input.fetch_add(1, Ordering::Relaxed)),
            str::to_owned,
        );
        while state.inputs.contains_key(&key) {
            key = format!("{key}-{}", self.next_input.fetch_add(1, Ordering::Relaxed));
        }
        state.inputs.insert(
            key,
            PendingInput {
                request: json!({ "method": method, "params": params }),
                answer: tx,
            },
        );
        Self::set_status(&mut state, TaskStatus::InputRequired);
        rx
    }

    /// `tasks/update`: delivers the answers whose keys the task waits on and
    /// ignores the rest. The task works again once nothing is pending.
    pub fn deliver(&self, responses: &Map<String, Value>) {
        let mut state = self.lock();
        for (key, answer) in responses {
            if let Some(p) = state.inputs.remove(key) {
                let _ = p.answer.send(answer.clone());
            }
        }
        if state.status == TaskStatus::InputRequired && state.inputs.is_empty() {
            Self::set_status(&mut state, TaskStatus::Working);
        }
    }
}

/// All tasks of one edge.
pub struct TaskRegistry {
    tasks: Mutex<HashMap<String, Arc<Task>>>,
}

impl Default for TaskRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskRegistry {
    pub fn new() -> Self {
        Self {
            tasks: Mutex::new(HashMap::new()),
        }
    }

    /// Creates a task, registered before it is returned so that a `tasks/get`
    /// right after the `CreateTaskResult` finds it. `None` when the owner
    /// already holds [`MAX_TASKS_PER_OWNER`] tasks.
    pub fn create(&self, owner: &str, cancel: CancellationToken) -> Option<Arc<Task>> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        Self::expire(&mut tasks);
        if tasks.values().filter(|t| t.owner == owner).count() >= MAX_TASKS_PER_OWNER {
            return None;
        }
        let id: [u8; 16] = rand::random();
        let now = SystemTime::now();
        let task = Arc::new(Task {
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            owner: owner.to_owned(),
            created: now,
            cancel,
            next_input: AtomicU64::new(1),
            state: Mutex::new(TaskState {
                status: TaskStatus::Working,
                updated: now,
                touched: Instant::now(),
                result: None,
                error: None,
                inputs: BTreeMap::new(),
            }),
        });
        tasks.insert(task.id.clone(), task.clone());
        Some(task)
    }

    /// Drops tasks untouched for longer than their TTL, cancelling any still running.
    fn expire(tasks: &mut HashMap<String, Arc<Task>>) {
        tasks.retain(|_, t| {
            let keep = t.lock().touched.elapsed() <= TASK_TTL;
            if !keep {
                t.cancel.cancel();
            }
            keep
        });
    }

    /// The task `id` if `owner` created it; otherwise the same -32602 as for
    /// an id that never existed.
    pub fn get(&self, owner: &str, id: &str) -> Result<Arc<Task>, McpError> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        Self::expire(&mut tasks);
        match tasks.get(id) {
            Some(t) if t.owner == owner => Ok(t.clone()),
            _ => Err(McpError::invalid_params(format!("unknown task: {id}"))
                .with_data(json!({ "taskId": id }))),
        }
    }

    pub fn len(&self) -> usize {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Hands a running call over to a task, once.
pub struct Handoff {
    pub registry: Arc<TaskRegistry>,
    pub owner: String,
    pub cancel: CancellationToken,
    pub signal: oneshot::Sender<Arc<Task>>,
}

/// The peer of a call that may move to the background: before the handoff
/// it behaves like `foreground` (input-required rounds), after it the
/// call's questions wait in the task for `tasks/update`.
pub struct TaskCapablePeer {
    foreground: Arc<dyn ClientPeer>,
    handoff: Mutex<Option<Handoff>>,
    task: std::sync::OnceLock<Arc<Task>>,
}

impl TaskCapablePeer {
    pub fn new(foreground: Arc<dyn ClientPeer>, handoff: Handoff) -> Self {
        Self {
            foreground,
            handoff: Mutex::new(Some(handoff)),
            task: std::sync::OnceLock::new(),
        }
    }

    fn task_ask(
        task: &Arc<Task>,
        key: Option<&str>,
        method: &str,
        params: Value,
    ) -> BoxFuture<'static, Result<Value, McpError>> {
        let rx = task.ask(key, method, params);
        let method = method.to_owned();
        Box::pin(async move {
            rx.await.map_err(|_| {
                McpError::cancelled(format!(
                    "{method}: the task ended before the client answered"
                ))
            })
        })
    }
}

impl ClientPeer for TaskCapablePeer {
    fn notify(&self, method: &str, params: Value) {
        // A detached task has no stream to carry notifications.
        if self.task.get().is_none() {
            self.foreground.notify(method, params);
        }
    }
    fn request(&self, method: &str, params: Value) -> BoxFuture<'static, Result<Value, McpError>> {
        match self.task.get() {
            Some(task) => Self::task_ask(task, None, method, params),
            None => self.foreground.request(method, params),
        }
    }
    fn request_named(
        &self,
        key: &str,
        method: &str,
        params: Value,
    ) -> BoxFuture<'static, Result<Value, McpError>> {
        match self.task.get() {
            Some(task) => Self::task_ask(task, Some(key), method, params),
            None => self.foreground.request_named(key, method, params),
        }
    }
    fn log_enabled(&self, level: LogLevel) -> bool {
        self.task.get().is_none() && self.foreground.log_enabled(level)
    }
    fn continue_in_background(&self) -> bool {
        let Some(h) = self
            .handoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return false;
        };
        let Some(task) = h.registry.create(&h.owner, h.cancel) else {
            return false;
        };
        let _ = self.task.set(task.clone());
        h.signal.send(task).is_ok()
    }
}

/// Formats a time as RFC 3339 UTC with milliseconds.
pub fn iso8601(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123);
        assert_eq!(iso8601(t), "2024-02-29T23:59:59.123Z");
    }

    #[test]
    fn tasks_are_scoped_to_their_owner() {
        let reg = TaskRegistry::new();
        let t = reg.create("alice", CancellationToken::new()).unwrap();
        assert_eq!(t.id.len(), 32);
        assert!(reg.get("alice", &t.id).is_ok());
        let e = reg.get("bob", &t.id).err().unwrap();
        assert_eq!(e.code, codes::INVALID_PARAMS);
        assert_eq!(
            reg.get("alice", "nope").err().unwrap().message,
            "unknown task: nope"
        );
        let other = reg.create("alice", CancellationToken::new()).unwrap();
        assert_ne!(t.id, other.id);
    }

    #[tokio::test]
    async fn questions_park_until_answered_and_cancel_is_idempotent() {
        let reg = TaskRegistry::new();
        let t = reg.create("o", CancellationToken::new()).unwrap();
        let a = t.ask(Some("a"), "elicitation/create", json!({}));
        let b = t.ask(Some("b"), "elicitation/create", json!({}));
        assert_eq!(t.status(), TaskStatus::InputRequired);
        let mut part = Map::new();
        part.insert("a".into(), json!({"action": "accept"}));
        part.insert("zzz".into(), json!({}));
        t.deliver(&part);
        assert_eq!(a.await.unwrap(), json!({"action": "accept"}));
        let d = t.detailed();
        assert_eq!(d["status"], "input_required");
        assert!(d["inputRequests"].get("a").is_none() && d["inputRequests"].get("b").is_some());
        let mut rest = Map::new();
        rest.insert("b".into(), json!({"action": "decline"}));
        t.deliver(&rest);
        assert!(b.await.is_ok());
        assert_eq!(t.status(), TaskStatus::Working);
        t.finish(Ok(json!({"content": [], "resultType": "complete"})));
        let d = t.detailed();
        assert_eq!(d["status"], "completed");
        assert!(d["result"].get("resultType").is_none());
        t.request_cancel();
        assert_eq!(t.status(), TaskStatus::Completed, "terminal stays terminal");
        let c = reg.create("o", CancellationToken::new()).unwrap();
        c.request_cancel();
        c.finish(Ok(json!({})));
        assert_eq!(c.status(), TaskStatus::Cancelled);
        assert!(c.cancel.is_cancelled());
    }
}
