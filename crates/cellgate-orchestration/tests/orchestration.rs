//! The orchestration suite. Every test in `both_backends!` runs once on a
//! fresh SQLite file and once on a fresh PostgreSQL database (when
//! `CELLGATE_TEST_POSTGRES_URL` is set, as `scripts/with-postgres` does;
//! required with `CELLGATE_REQUIRE_POSTGRES=1`).
//!
//! Tools are real `ToolRunner` implementations in this file (the engine's
//! contract); time is a `ManualClock` wherever a decision depends on it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cellgate_kernel::{BoxFuture, CallContext, Identity, McpError, Provider};
use cellgate_orchestration::{
    Engine, EngineConfig, ManualClock, NodeRegistration, OrchestrationError, OrchestrationProvider,
    TaskReport, TaskRequest, ToolCall, ToolRunner,
};
use cellgate_store::{Resources, Store, TaskOutcome, TaskStatus, TenantId, WorkflowStatus};
use serde_json::{Value, json};

// ---- harness: cellgate-testkit ---------------------------------------------------

async fn on_sqlite<F, Fut>(body: F)
where
    F: FnOnce(Store) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    cellgate_testkit::on_sqlite(|store, _| body(store)).await
}

async fn on_postgres<F, Fut>(body: F)
where
    F: FnOnce(Store) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    cellgate_testkit::on_postgres(|store, _| body(store)).await
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                crate::on_sqlite(super::$name).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                crate::on_postgres(super::$name).await
            }
        }
    )*};
}

both_backends!(
    priorities_eta_and_idempotency,
    bulk_submission_and_completion,
    progress_reaches_the_task_record,
    retries_back_off_and_give_up,
    time_limits_and_permanent_errors,
    expired_leases_are_delivered_again,
    cancelled_tasks_do_not_run,
    tenants_see_only_their_tasks,
    all_four_strategies_and_transitions,
    conditional_transitions_loop_until_done,
    failing_phase_rolls_back_with_compensation,
    rollback_to_a_checkpoint_and_resume,
    pause_resume_and_cancel,
    bad_definitions_are_rejected_with_locations,
    a_new_engine_resumes_from_the_checkpoint,
    nodes_get_only_fitting_tasks_and_lose_them_when_silent,
    the_provider_serves_the_tools,
    two_engines_share_one_queue,
    the_five_phase_template_runs,
);

// ---- tools -------------------------------------------------------------------------

/// A set of tools with observable effects.
#[derive(Default)]
struct Tools {
    /// Every call made, as (tool, arguments).
    calls: Mutex<Vec<(String, Value)>>,
    /// Per-key counters for `flaky` and `count`.
    counters: Mutex<HashMap<String, i64>>,
    /// Tasks running right now, to catch a task run twice at once.
    running: Mutex<HashSet<String>>,
    overlaps: AtomicUsize,
    runs: Mutex<HashMap<String, usize>>,
}

fn text_result(v: Value) -> Value {
    json!({ "content": [{ "type": "text", "text": v.to_string() }], "structuredContent": v })
}

fn tool_error(msg: &str) -> Value {
    json!({ "content": [{ "type": "text", "text": msg }], "isError": true })
}

const TOOLS: &[&str] = &[
    "echo", "flaky", "hang", "count", "fail", "track", "slow", "reject",
];

impl Tools {
    fn calls_of(&self, tool: &str) -> Vec<Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == tool)
            .map(|(_, a)| a.clone())
            .collect()
    }

    fn bump(&self, key: &str) -> i64 {
        let mut c = self.counters.lock().unwrap();
        let n = c.entry(key.to_owned()).or_insert(0);
        *n += 1;
        *n
    }
}

struct Runner(Arc<Tools>);

impl ToolRunner for Runner {
    fn run(&self, call: ToolCall) -> BoxFuture<'static, Result<Value, McpError>> {
        let tools = self.0.clone();
        Box::pin(async move {
            let args = Value::Object(call.arguments.clone());
            tools
                .calls
                .lock()
                .unwrap()
                .push((call.tool.clone(), args.clone()));
            let key = args["key"].as_str().unwrap_or("k").to_owned();
            match call.tool.as_str() {
                "echo" => Ok(text_result(args)),
                // Fails (as a tool) until called `times` times for `key`.
                "flaky" => {
                    let n = tools.bump(&key);
                    if n <= args["fail_times"].as_i64().unwrap_or(0) {
                        Ok(tool_error(&format!("flaky failure {n}")))
                    } else {
                        Ok(text_result(json!({ "after": n })))
                    }
                }
                "hang" => {
                    call.cancel.cancelled().await;
                    Err(McpError::cancelled("hang was cancelled"))
                }
                "count" => Ok(text_result(json!({ "n": tools.bump(&key) }))),
                "fail" => Ok(tool_error("this tool always fails")),
                "reject" => Err(McpError::invalid_params(
                    "bad argument: nothing is ever right",
                )),
                "slow" => {
                    tokio::time::sleep(Duration::from_millis(args["ms"].as_u64().unwrap_or(1)))
                        .await;
                    Ok(text_result(args))
                }
                // Records that the task runs, and whether it already was.
                "track" => {
                    let id = call.meta["cellgate/task"]["id"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned();
                    if !tools.running.lock().unwrap().insert(id.clone()) {
                        tools.overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    *tools.runs.lock().unwrap().entry(id.clone()).or_insert(0) += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    tools.running.lock().unwrap().remove(&id);
                    Ok(text_result(json!({ "ok": true })))
                }
                other => Err(McpError::invalid_params(format!("unknown tool: {other}"))),
            }
        })
    }

    fn tool_exists<'a>(
        &'a self,
        _identity: &'a Identity,
        tool: &'a str,
    ) -> BoxFuture<'a, Result<bool, McpError>> {
        Box::pin(async move { Ok(TOOLS.contains(&tool)) })
    }
}

const T0: i64 = 1_800_000_000_000;

struct Fixture {
    store: Store,
    tools: Arc<Tools>,
    clock: Arc<ManualClock>,
    engine: Engine,
    me: Identity,
}

async fn fixture(store: Store) -> Fixture {
    for t in ["acme", "beta"] {
        store
            .tenants()
            .ensure(&TenantId::parse(t).unwrap(), t)
            .await
            .expect("tenant");
    }
    let tools = Arc::new(Tools::default());
    let clock = Arc::new(ManualClock::new(T0));
    let engine = engine_for(&store, &tools, &clock, None);
    Fixture {
        store,
        tools,
        clock,
        engine,
        me: Identity::local_operator("acme"),
    }
}

fn engine_for(
    store: &Store,
    tools: &Arc<Tools>,
    clock: &Arc<ManualClock>,
    instance: Option<&str>,
) -> Engine {
    let config = EngineConfig {
        instance_id: instance.map(str::to_owned),
        ..EngineConfig::default()
    };
    Engine::with_clock(
        store.clone(),
        Arc::new(Runner(tools.clone())),
        config,
        clock.clone(),
    )
}

fn task(tool: &str, args: Value) -> TaskRequest {
    TaskRequest {
        tool: tool.into(),
        arguments: args.as_object().cloned().unwrap_or_default(),
        ..TaskRequest::default()
    }
}

async fn submit(f: &Fixture, req: TaskRequest) -> String {
    f.engine.submit(&f.me, &req).await.expect("submit").task.id
}

async fn status(f: &Fixture, id: &str) -> cellgate_store::TaskRecord {
    f.engine.get_task(&f.me, id).await.expect("get task")
}

// ---- the queue -----------------------------------------------------------------------

async fn priorities_eta_and_idempotency(store: Store) {
    let f = fixture(store).await;
    for (p, name) in [(1, "low"), (5, "high"), (3, "mid")] {
        submit(
            &f,
            TaskRequest {
                priority: Some(p),
                ..task("echo", json!({ "name": name }))
            },
        )
        .await;
    }
    let later = submit(
        &f,
        TaskRequest {
            priority: Some(100),
            countdown_ms: Some(60_000),
            ..task("echo", json!({ "name": "later" }))
        },
    )
    .await;
    // One at a time, so the order of execution is the order of leasing.
    for _ in 0..4 {
        f.engine.work_once("default", 1).await.expect("work");
    }
    let names: Vec<Value> = f
        .tools
        .calls_of("echo")
        .iter()
        .map(|a| a["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("high"), json!("mid"), json!("low")]);
    assert_eq!(status(&f, &later).await.status, TaskStatus::Queued);
    f.clock.advance(60_000);
    assert_eq!(
        f.engine.work_once("default", 10).await.unwrap().succeeded,
        1
    );
    let done = status(&f, &later).await;
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(
        done.result.unwrap()["structuredContent"]["name"],
        json!("later")
    );

    // Idempotency: the same key gives back the same task, which runs once.
    let keyed = || TaskRequest {
        idempotency_key: Some("order-42".into()),
        ..task("count", json!({ "key": "order" }))
    };
    let first = f.engine.submit(&f.me, &keyed()).await.unwrap();
    let again = f.engine.submit(&f.me, &keyed()).await.unwrap();
    assert!(first.created && !again.created);
    assert_eq!(first.task.id, again.task.id);
    f.engine.work_once("default", 10).await.unwrap();
    let after = f.engine.submit(&f.me, &keyed()).await.unwrap();
    assert_eq!(
        (after.created, after.task.status),
        (false, TaskStatus::Succeeded)
    );
    assert_eq!(f.tools.calls_of("count").len(), 1);
    // Batched submission is all or nothing.
    let bad = f
        .engine
        .submit_many(
            &f.me,
            &[
                task("echo", json!({})),
                TaskRequest {
                    queue: Some("bad queue".into()),
                    ..task("echo", json!({}))
                },
            ],
        )
        .await;
    assert!(matches!(bad, Err(OrchestrationError::Store(_))), "{bad:?}");
    assert!(
        f.engine
            .submit(&f.me, &task("nope", json!({})))
            .await
            .is_err()
    );
}

/// Submission is one INSERT per 256 tasks and completion one UPDATE per
/// batch: the records the engine hands back equal what was stored, keys
/// repeated inside one batch create one task, and a batch of outcomes with
/// stale and repeated leases writes exactly the current ones.
async fn bulk_submission_and_completion(store: Store) {
    let f = fixture(store).await;
    let taken = f
        .engine
        .submit(
            &f.me,
            &TaskRequest {
                idempotency_key: Some("taken".into()),
                ..task("echo", json!({ "n": -1 }))
            },
        )
        .await
        .unwrap();
    // 600 tasks: three statements in one transaction.
    let mut reqs: Vec<TaskRequest> = (0..600)
        .map(|i| TaskRequest {
            priority: Some(i % 3),
            result_ttl_ms: (i % 2 == 0).then_some(1_000),
            requirements: (i == 7).then(|| Resources {
                cpu_millis: 500,
                labels: [("zone".to_owned(), "eu".to_owned())].into(),
                ..Resources::default()
            }),
            ..task("echo", json!({ "n": i, "nested": { "a": [1, 2.5, "x"] } }))
        })
        .collect();
    reqs[10].idempotency_key = Some("twice".into());
    reqs[300].idempotency_key = Some("twice".into());
    reqs[450].idempotency_key = Some("taken".into());
    let done = f.engine.submit_many(&f.me, &reqs).await.unwrap();
    assert_eq!(done.len(), 600);
    let created = done.iter().filter(|s| s.created).count();
    assert_eq!(created, 598);
    assert!(done[10].created && !done[300].created);
    assert_eq!(done[300].task.id, done[10].task.id);
    assert_eq!(done[450].task, taken.task);
    for i in [0, 7, 10, 599] {
        assert_eq!(
            done[i].task,
            status(&f, &done[i].task.id).await,
            "task {i} as returned and as stored"
        );
    }
    let ids: HashSet<&str> = done.iter().map(|s| s.task.id.as_str()).collect();
    assert_eq!(ids.len(), 599, "one id per created task, plus `taken`");

    // Lease three, then finish them in one batch together with a stale
    // lease (wrong attempt), a lease of another owner and a repeat.
    let leases = f.store.cross_tenant_leases();
    let leased = leases
        .lease_tasks("default", "me", 3, T0, 30_000)
        .await
        .unwrap();
    assert_eq!(leased.len(), 3);
    let lease = |i: usize| leased[i].lease().unwrap();
    let stale = cellgate_store::TaskLease {
        attempt: 7,
        ..lease(0)
    };
    let other = cellgate_store::TaskLease {
        owner: "someone-else".into(),
        ..lease(1)
    };
    let batch = vec![
        (
            stale,
            TaskOutcome::Failed {
                error: "old".into(),
            },
        ),
        (
            lease(0),
            TaskOutcome::Succeeded {
                result: json!({ "ok": 0 }),
            },
        ),
        (other, TaskOutcome::Failed { error: "no".into() }),
        (
            lease(1),
            TaskOutcome::Retry {
                error: "again".into(),
                at_ms: T0 + 5_000,
            },
        ),
        (
            lease(2),
            TaskOutcome::Failed {
                error: "broken".into(),
            },
        ),
        // Already written above in the same batch: fenced.
        (
            lease(2),
            TaskOutcome::Succeeded {
                result: json!("late"),
            },
        ),
    ];
    let written = leases.finish_many(&batch, T0 + 10).await.unwrap();
    assert_eq!(written, vec![false, true, false, true, true, false]);
    let [a, b, c] = [0, 1, 2].map(|i| leased[i].id.clone());
    let a = status(&f, &a).await;
    assert_eq!(
        (a.status, a.result, a.error, a.finished_at_ms, a.lease_owner),
        (
            TaskStatus::Succeeded,
            Some(json!({ "ok": 0 })),
            None,
            Some(T0 + 10),
            None
        )
    );
    assert_eq!(a.expires_at_ms, a.result_ttl_ms.map(|t| T0 + 10 + t));
    let b = status(&f, &b).await;
    assert_eq!(
        (b.status, b.error.as_deref(), b.eta_ms, b.finished_at_ms),
        (TaskStatus::Queued, Some("again"), T0 + 5_000, None)
    );
    assert_eq!(b.expires_at_ms, None);
    let c = status(&f, &c).await;
    assert_eq!(
        (c.status, c.error.as_deref(), c.result),
        (TaskStatus::Failed, Some("broken"), None)
    );
    assert_eq!(
        leases.finish_many(&[], T0).await.unwrap(),
        Vec::<bool>::new()
    );
}

/// A provider whose `long` tool reports progress through its call context
/// and then waits until the test lets it finish.
#[derive(Default)]
struct LongTool {
    release: tokio::sync::Notify,
    /// The `_meta` the call saw.
    meta: Mutex<Option<Value>>,
}

impl Provider for LongTool {
    fn id(&self) -> &str {
        "long"
    }

    fn list_tools<'a>(
        &'a self,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<cellgate_kernel::Tool>, McpError>> {
        Box::pin(async {
            Ok(vec![cellgate_kernel::Tool::new(
                "long",
                "reports progress, then waits",
                json!({ "type": "object" }),
            )])
        })
    }

    fn call_tool<'a>(
        &'a self,
        ctx: &'a CallContext,
        _name: &'a str,
        _arguments: serde_json::Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async move {
            *self.meta.lock().unwrap() = ctx.meta.as_ref().map(|m| Value::Object((**m).clone()));
            ctx.progress(1.0, Some(4.0), Some("planning"));
            ctx.progress(3.0, Some(4.0), Some("almost there"));
            self.release.notified().await;
            Ok(text_result(json!({ "done": true })))
        })
    }
}

/// A task's call goes through a real pipeline; what its tool reports with
/// `ctx.progress` shows in the task record while it runs, and stays after.
async fn progress_reaches_the_task_record(store: Store) {
    let f = fixture(store).await;
    let tool = Arc::new(LongTool::default());
    let providers: Vec<Arc<dyn Provider>> = vec![tool.clone()];
    let pipeline =
        cellgate_kernel::Pipeline::builder(cellgate_kernel::Catalog::new(providers)).build();
    let engine = Engine::with_clock(
        f.store.clone(),
        Arc::new(pipeline),
        EngineConfig::default(),
        f.clock.clone(),
    );
    let id = engine
        .submit(&f.me, &task("long", json!({})))
        .await
        .unwrap()
        .task
        .id;
    assert_eq!(engine.get_task(&f.me, &id).await.unwrap().progress, None);
    let worker = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.work_once("default", 1).await })
    };
    let mut seen = None;
    for _ in 0..500 {
        let t = engine.get_task(&f.me, &id).await.unwrap();
        if t.progress
            .as_ref()
            .is_some_and(|p| p["progress"] == json!(3.0))
        {
            seen = t.progress;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = seen.expect("the latest progress reaches the record while the task runs");
    assert_eq!(
        (&seen["total"], &seen["message"], &seen["at_ms"]),
        (&json!(4.0), &json!("almost there"), &json!(T0))
    );
    let meta = tool.meta.lock().unwrap().clone().unwrap();
    assert_eq!(meta["progressToken"], json!(format!("task:{id}")));
    tool.release.notify_one();
    assert_eq!(worker.await.unwrap().unwrap().succeeded, 1);
    let done = engine.get_task(&f.me, &id).await.unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(done.progress, Some(seen));
    // A report for an attempt that is over changes nothing.
    let lease = cellgate_store::TaskLease {
        tenant: done.tenant.clone(),
        task_id: id.clone(),
        owner: engine.owner().to_owned(),
        attempt: done.attempts,
    };
    assert!(
        !f.store
            .cross_tenant_leases()
            .report_progress(&lease, &json!({ "progress": 9 }), T0)
            .await
            .unwrap()
    );
}

async fn retries_back_off_and_give_up(store: Store) {
    let f = fixture(store).await;
    let id = submit(
        &f,
        TaskRequest {
            max_retries: Some(3),
            backoff_base_ms: Some(1000),
            backoff_max_ms: Some(60_000),
            ..task("flaky", json!({ "key": "a", "fail_times": 2 }))
        },
    )
    .await;
    let mut expected_delay = 1000;
    for attempt in 1..=2 {
        let report = f.engine.work_once("default", 10).await.unwrap();
        assert_eq!(report.retried, 1, "attempt {attempt}");
        let t = status(&f, &id).await;
        assert_eq!((t.status, t.attempts), (TaskStatus::Queued, attempt));
        let delay = t.eta_ms - f.clock.now_ms_for_test();
        assert!(
            (expected_delay / 2..=expected_delay).contains(&delay),
            "attempt {attempt}: delay {delay} outside [{}, {expected_delay}]",
            expected_delay / 2
        );
        assert!(t.error.unwrap().contains("flaky failure"));
        // Not before its time.
        f.clock.set(t.eta_ms - 1);
        assert_eq!(f.engine.work_once("default", 10).await.unwrap().leased, 0);
        f.clock.set(t.eta_ms);
        expected_delay *= 2;
    }
    assert_eq!(
        f.engine.work_once("default", 10).await.unwrap().succeeded,
        1
    );
    let t = status(&f, &id).await;
    assert_eq!((t.status, t.attempts), (TaskStatus::Succeeded, 3));

    // Out of retries: failed for good.
    let id = submit(
        &f,
        TaskRequest {
            max_retries: Some(1),
            backoff_base_ms: Some(10),
            ..task("fail", json!({}))
        },
    )
    .await;
    f.engine.work_once("default", 10).await.unwrap();
    f.clock.advance(1000);
    assert_eq!(f.engine.work_once("default", 10).await.unwrap().failed, 1);
    let t = status(&f, &id).await;
    assert_eq!((t.status, t.attempts), (TaskStatus::Failed, 2));
    assert!(t.finished_at_ms.is_some() && t.expires_at_ms.is_some());
    // Results are purged after their TTL.
    f.clock.advance(8 * 24 * 3600 * 1000);
    assert!(f.engine.maintain().await.unwrap().purged >= 2);
    assert!(f.engine.get_task(&f.me, &id).await.is_err());
}

trait NowForTest {
    fn now_ms_for_test(&self) -> i64;
}

impl NowForTest for ManualClock {
    fn now_ms_for_test(&self) -> i64 {
        cellgate_orchestration::Clock::now_ms(self)
    }
}

async fn time_limits_and_permanent_errors(store: Store) {
    let f = fixture(store).await;
    let id = submit(
        &f,
        TaskRequest {
            time_limit_ms: Some(20),
            max_retries: Some(0),
            ..task("hang", json!({}))
        },
    )
    .await;
    assert_eq!(f.engine.work_once("default", 10).await.unwrap().failed, 1);
    let t = status(&f, &id).await;
    assert_eq!(t.status, TaskStatus::Failed);
    assert!(
        t.error.unwrap().contains("time limit of 20 ms"),
        "time limit error"
    );
    // A protocol error with a client-side code (invalid params) is not retried.
    let id = submit(
        &f,
        TaskRequest {
            max_retries: Some(5),
            ..task("reject", json!({}))
        },
    )
    .await;
    assert_eq!(f.engine.work_once("default", 10).await.unwrap().failed, 1);
    let t = status(&f, &id).await;
    assert_eq!((t.status, t.attempts), (TaskStatus::Failed, 1));
    assert!(t.error.unwrap().contains("bad argument"));
}

async fn expired_leases_are_delivered_again(store: Store) {
    let f = fixture(store).await;
    let id = submit(&f, task("echo", json!({ "n": 1 }))).await;
    let leases = f.store.cross_tenant_leases();
    // A worker that leases the task and dies.
    let dead = leases
        .lease_tasks(
            "default",
            "dead-worker",
            10,
            f.clock.now_ms_for_test(),
            30_000,
        )
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    let dead_lease = dead[0].lease().unwrap();
    // Nobody else gets it while the lease lives.
    assert_eq!(f.engine.work_once("default", 10).await.unwrap().leased, 0);
    f.clock.advance(30_001);
    let m = f.engine.maintain().await.unwrap();
    assert_eq!(m.requeued, 1);
    assert_eq!(
        f.engine.work_once("default", 10).await.unwrap().succeeded,
        1
    );
    let t = status(&f, &id).await;
    assert_eq!((t.status, t.attempts), (TaskStatus::Succeeded, 2));
    // The dead worker's late completion is fenced off.
    let late = leases
        .finish(
            &dead_lease,
            &TaskOutcome::Failed {
                error: "late".into(),
            },
            f.clock.now_ms_for_test(),
        )
        .await
        .unwrap();
    assert!(!late);
    assert_eq!(status(&f, &id).await.status, TaskStatus::Succeeded);

    // A heartbeat keeps a lease alive past the visibility timeout.
    let id = submit(&f, task("echo", json!({}))).await;
    let held = leases
        .lease_tasks(
            "default",
            f.engine.owner(),
            10,
            f.clock.now_ms_for_test(),
            30_000,
        )
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    f.clock.advance(20_000);
    f.engine.heartbeat().await.unwrap();
    f.clock.advance(20_000);
    assert_eq!(f.engine.maintain().await.unwrap().requeued, 0);
    assert_eq!(status(&f, &id).await.status, TaskStatus::Running);
    // A task whose worker keeps dying fails after max_retries + 1 + allowance deliveries.
    let id = submit(
        &f,
        TaskRequest {
            max_retries: Some(0),
            ..task("echo", json!({}))
        },
    )
    .await;
    let _ = leases
        .finish(
            &held[0].lease().unwrap(),
            &TaskOutcome::Succeeded { result: json!({}) },
            f.clock.now_ms_for_test(),
        )
        .await;
    for _ in 0..=cellgate_store::LOST_LEASE_ALLOWANCE {
        let l = leases
            .lease_tasks("default", "crashy", 10, f.clock.now_ms_for_test(), 1000)
            .await
            .unwrap();
        assert_eq!(l.len(), 1);
        f.clock.advance(1001);
        f.engine.maintain().await.unwrap();
    }
    let t = status(&f, &id).await;
    assert_eq!(t.status, TaskStatus::Failed, "{t:?}");
    assert!(t.error.unwrap().contains("expired too many times"));
}

async fn cancelled_tasks_do_not_run(store: Store) {
    let f = fixture(store).await;
    let id = submit(&f, task("echo", json!({}))).await;
    let c = f.engine.cancel_task(&f.me, &id).await.unwrap();
    assert_eq!(c.status, TaskStatus::Cancelled);
    assert_eq!(f.engine.work_once("default", 10).await.unwrap().leased, 0);
    assert!(matches!(
        f.engine.cancel_task(&f.me, &id).await,
        Err(OrchestrationError::Conflict(_))
    ));
    assert!(matches!(
        f.engine.cancel_task(&f.me, "nope").await,
        Err(OrchestrationError::NotFound { .. })
    ));
    // A running task that is cancelled stops at the next heartbeat.
    let id = submit(&f, task("hang", json!({}))).await;
    let engine = f.engine.clone();
    let work = tokio::spawn(async move { engine.work_once("default", 10).await });
    while status(&f, &id).await.status != TaskStatus::Running {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Cancel through the store (as another replica would): this engine
    // learns it from its heartbeat.
    f.store
        .scope(&TenantId::parse("acme").unwrap())
        .tasks()
        .cancel(&id, "test", f.clock.now_ms_for_test())
        .await
        .unwrap();
    f.engine.heartbeat().await.unwrap();
    let report = work.await.unwrap().unwrap();
    assert_eq!(report.fenced, 1);
    assert_eq!(status(&f, &id).await.status, TaskStatus::Cancelled);
}

async fn tenants_see_only_their_tasks(store: Store) {
    let f = fixture(store).await;
    let id = submit(&f, task("echo", json!({}))).await;
    let beta = Identity::local_operator("beta");
    assert!(matches!(
        f.engine.get_task(&beta, &id).await,
        Err(OrchestrationError::NotFound { .. })
    ));
    assert!(matches!(
        f.engine.cancel_task(&beta, &id).await,
        Err(OrchestrationError::NotFound { .. })
    ));
    let listed = f
        .engine
        .list_tasks(
            &beta,
            &cellgate_store::TaskFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(listed.is_empty());
    // The same idempotency key in two tenants makes two tasks.
    let keyed = TaskRequest {
        idempotency_key: Some("k".into()),
        ..task("echo", json!({}))
    };
    let a = f.engine.submit(&f.me, &keyed).await.unwrap();
    let b = f.engine.submit(&beta, &keyed).await.unwrap();
    assert!(a.created && b.created && a.task.id != b.task.id);
    // Tasks run as their submitter, in its tenant.
    f.engine.work_once("default", 10).await.unwrap();
    assert_eq!(
        f.engine.get_task(&beta, &b.task.id).await.unwrap().status,
        TaskStatus::Succeeded
    );
    let mut tables: Vec<String> = cellgate_store::all_tenant_tables()
        .map(str::to_owned)
        .collect();
    tables.sort();
    assert_eq!(f.store.tables_with_tenant_column().await.unwrap(), tables);
    // Deleting a tenant deletes its tasks and workflows.
    let wf = f
        .engine
        .create_workflow(&beta, &simple_workflow(), json!({}))
        .await
        .unwrap();
    f.engine.run_workflow(&beta, &wf.id).await.unwrap();
    f.store
        .tenants()
        .delete(&TenantId::parse("beta").unwrap())
        .await
        .unwrap();
}

// ---- workflows --------------------------------------------------------------------------

fn simple_workflow() -> Value {
    json!({ "name": "simple", "phases": [ { "id": "only", "steps": [ { "id": "e", "tool": "echo", "arguments": { "x": 1 } } ] } ] })
}

async fn run(f: &Fixture, def: Value, input: Value) -> cellgate_store::WorkflowRecord {
    let wf = f
        .engine
        .create_workflow(&f.me, &def, input)
        .await
        .expect("create");
    f.engine.run_workflow(&f.me, &wf.id).await.expect("run")
}

async fn all_four_strategies_and_transitions(store: Store) {
    let f = fixture(store).await;
    let def = json!({
        "name": "strategies",
        "phases": [
            { "id": "seq", "strategy": "SEQUENTIAL", "steps": [
                { "id": "a", "tool": "echo", "arguments": { "items": "{{input.items}}" } },
                { "id": "b", "tool": "echo", "arguments": { "from_prev": "{{prev.output.items}}", "label": "got {{prev.output.items[0]}}" } }
            ] },
            { "id": "par", "strategy": "PARALLEL", "steps": [
                { "id": "p1", "tool": "echo", "arguments": { "v": "{{phases.seq.output.from_prev[1]}}" } },
                { "id": "p2", "tool": "echo", "arguments": { "v": "{{steps.a.output.items[2]}}" } }
            ] },
            { "id": "cond", "strategy": "CONDITIONAL", "steps": [
                { "id": "big", "tool": "echo", "when": "size(input.items) > 5", "arguments": { "branch": "big" } },
                { "id": "small", "tool": "echo", "when": "size(input.items) <= 5", "arguments": { "branch": "small" } },
                { "id": "never", "tool": "echo", "arguments": { "branch": "default" } }
            ],
              "transitions": [ { "when": "output.branch == 'big'", "to": "end" } ] },
            { "id": "loop", "strategy": "ITERATIVE", "max_iterations": 10, "until": "output.n >= 3",
              "steps": [ { "id": "c", "tool": "count", "arguments": { "key": "loop", "i": "{{iteration}}" } } ] }
        ]
    });
    let done = run(&f, def, json!({ "items": ["x", "y", "z"] })).await;
    assert_eq!(done.status, WorkflowStatus::Succeeded, "{:?}", done.error);
    let phases = &done.state["phases"];
    assert_eq!(phases["seq"]["output"]["label"], json!("got x"));
    assert_eq!(
        phases["par"]["output"],
        json!({ "p1": { "v": "y" }, "p2": { "v": "z" } })
    );
    assert_eq!(phases["cond"]["output"], json!({ "branch": "small" }));
    assert_eq!(phases["loop"]["output"], json!({ "n": 3 }));
    // Convergence: three iterations, each told its number.
    let iterations: Vec<Value> = f
        .tools
        .calls_of("count")
        .iter()
        .map(|a| a["i"].clone())
        .collect();
    assert_eq!(iterations, vec![json!(1), json!(2), json!(3)]);
    let view = f.engine.get_workflow(&f.me, &done.id).await.unwrap();
    let events: Vec<&str> = view
        .history
        .iter()
        .map(|h| h.entry.event.as_str())
        .collect();
    assert!(events.contains(&"branch_chosen") && events.contains(&"iteration_completed"));
    assert_eq!(events.last(), Some(&"workflow_succeeded"));
    // A checkpoint after every phase and every step.
    let kinds: Vec<&str> = view
        .checkpoints
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "phase").count(), 4);
    assert!(kinds.iter().filter(|k| **k == "step").count() >= 7);

    // The big branch ends the workflow through the conditional transition.
    let def2 = json!({
        "name": "early-end",
        "phases": [
            { "id": "cond", "strategy": "CONDITIONAL", "steps": [
                { "id": "big2", "tool": "echo", "when": "size(input.items) > 2", "arguments": { "branch": "big" } }
            ], "transitions": [ { "when": "output.branch == 'big'", "to": "end" } ] },
            { "id": "after", "steps": [ { "id": "never_runs", "tool": "fail" } ] }
        ]
    });
    let done = run(&f, def2, json!({ "items": [1, 2, 3] })).await;
    assert_eq!(done.status, WorkflowStatus::Succeeded, "{:?}", done.error);
    assert!(done.state["phases"].get("after").is_none());
    // An iterative phase that never converges stops at max_iterations.
    let def3 = json!({ "name": "bounded", "phases": [ { "id": "l", "strategy": "ITERATIVE", "max_iterations": 4, "until": "false",
        "steps": [ { "id": "c2", "tool": "count", "arguments": { "key": "bounded" } } ] } ] });
    let done = run(&f, def3, json!({})).await;
    assert_eq!(done.state["phases"]["l"]["output"], json!({ "n": 4 }));
}

async fn conditional_transitions_loop_until_done(store: Store) {
    let f = fixture(store).await;
    // `check` succeeds on its third call; until then the workflow goes back to `work`.
    let def = json!({
        "name": "loop-back",
        "phases": [
            { "id": "work", "steps": [ { "id": "w", "tool": "count", "arguments": { "key": "work" } } ] },
            { "id": "check", "steps": [ { "id": "c", "tool": "count", "arguments": { "key": "check" } } ],
              "transitions": [ { "when": "output.n < 3", "to": "work" } ] },
            { "id": "finish", "steps": [ { "id": "f", "tool": "echo", "arguments": { "work_runs": "{{phases.work.output.n}}" } } ] }
        ]
    });
    let done = run(&f, def, json!({})).await;
    assert_eq!(done.status, WorkflowStatus::Succeeded, "{:?}", done.error);
    assert_eq!(
        done.state["phases"]["finish"]["output"],
        json!({ "work_runs": 3 })
    );
    assert_eq!(
        done.state["completed"],
        json!(["work", "check", "work", "check", "work", "check", "finish"])
    );
    // Data that loops forever is stopped by the phase limit.
    let forever = json!({
        "name": "forever",
        "phases": [
            { "id": "x", "steps": [ { "id": "xs", "tool": "echo" } ],
              "transitions": [ { "when": "true", "to": "x" } ] },
            { "id": "y", "steps": [ { "id": "ys", "tool": "echo" } ] }
        ]
    });
    let mut config = EngineConfig {
        max_phase_runs: 20,
        ..EngineConfig::default()
    };
    config.queues.clear();
    let small = Engine::with_clock(
        f.store.clone(),
        Arc::new(Runner(f.tools.clone())),
        config,
        f.clock.clone(),
    );
    let wf = small
        .create_workflow(&f.me, &forever, json!({}))
        .await
        .unwrap();
    let done = small.run_workflow(&f.me, &wf.id).await.unwrap();
    assert_eq!(done.status, WorkflowStatus::Failed);
    assert!(
        done.error
            .unwrap()
            .contains("more than 20 phase executions")
    );
}

fn compensated_workflow(last_tool: &str, rollback: bool) -> Value {
    json!({
        "name": "with-compensation",
        "phases": [
            { "id": "reserve", "steps": [ { "id": "r", "tool": "echo", "arguments": { "reserved": "{{input.item}}" } } ],
              "compensation": [ { "id": "undo_reserve", "tool": "echo", "arguments": { "undo": "reserve", "what": "{{phases.reserve.output.reserved}}" } } ] },
            { "id": "charge", "steps": [ { "id": "c", "tool": "echo", "arguments": { "charged": 10 } } ],
              "compensation": [ { "id": "undo_charge", "tool": "echo", "arguments": { "undo": "charge" } } ] },
            { "id": "ship", "rollback": rollback, "steps": [ { "id": "s", "tool": last_tool, "arguments": { "key": "ship" } } ] }
        ]
    })
}

fn undo_calls(tools: &Tools) -> Vec<Value> {
    tools
        .calls_of("echo")
        .into_iter()
        .filter_map(|a| a.get("undo").cloned())
        .collect()
}

async fn failing_phase_rolls_back_with_compensation(store: Store) {
    let f = fixture(store).await;
    let done = run(
        &f,
        compensated_workflow("fail", true),
        json!({ "item": "book" }),
    )
    .await;
    assert_eq!(done.status, WorkflowStatus::RolledBack);
    assert!(done.error.unwrap().contains("always fails"));
    // Latest first, with the outputs of the phases they undo.
    assert_eq!(
        undo_calls(&f.tools),
        vec![json!("charge"), json!("reserve")]
    );
    assert!(
        f.tools
            .calls_of("echo")
            .iter()
            .any(|a| a["what"] == json!("book"))
    );
    // Without the rollback flag the run just fails.
    let done = run(
        &f,
        compensated_workflow("fail", false),
        json!({ "item": "pen" }),
    )
    .await;
    assert_eq!(done.status, WorkflowStatus::Failed);
    assert_eq!(undo_calls(&f.tools).len(), 2);
}

async fn wait_for(f: &Fixture, id: &str, want: WorkflowStatus) -> cellgate_store::WorkflowRecord {
    for _ in 0..2000 {
        let r = f.engine.get_workflow(&f.me, id).await.unwrap().run;
        if r.status == want {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("workflow {id} never became {want:?}");
}

async fn rollback_to_a_checkpoint_and_resume(store: Store) {
    let f = fixture(store).await;
    let done = run(
        &f,
        compensated_workflow("count", false),
        json!({ "item": "lamp" }),
    )
    .await;
    assert_eq!(done.status, WorkflowStatus::Succeeded);
    let view = f.engine.get_workflow(&f.me, &done.id).await.unwrap();
    let after_reserve = view
        .checkpoints
        .iter()
        .find(|c| c["kind"] == json!("phase") && c["phase"] == json!("reserve"))
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let restored = f
        .engine
        .rollback_workflow(&f.me, &done.id, after_reserve)
        .await
        .unwrap();
    assert_eq!(restored.state["completed"], json!(["reserve"]));
    // Compensations of the later phases ran (only `charge` declares one).
    assert_eq!(undo_calls(&f.tools), vec![json!("charge")]);
    let again = wait_for(&f, &done.id, WorkflowStatus::Succeeded).await;
    assert_eq!(
        again.state["completed"],
        json!(["reserve", "charge", "ship"])
    );
    // `ship` ran twice, `reserve` once.
    assert_eq!(f.tools.calls_of("count").len(), 2);
    assert_eq!(
        f.tools
            .calls_of("echo")
            .iter()
            .filter(|a| a.get("reserved").is_some())
            .count(),
        1
    );
    let events: Vec<String> = f
        .engine
        .get_workflow(&f.me, &done.id)
        .await
        .unwrap()
        .history
        .into_iter()
        .map(|h| h.entry.event)
        .collect();
    assert!(events.contains(&"rolled_back_to_checkpoint".to_owned()));
    assert!(matches!(
        f.engine.rollback_workflow(&f.me, &done.id, 999_999).await,
        Err(OrchestrationError::NotFound { .. })
    ));
}

async fn pause_resume_and_cancel(store: Store) {
    let f = fixture(store).await;
    let def = json!({ "name": "pausable", "phases": [
        { "id": "one", "steps": [ { "id": "s1", "tool": "slow", "arguments": { "ms": 50 } } ] },
        { "id": "two", "steps": [ { "id": "s2", "tool": "echo" } ] } ] });
    let wf = f
        .engine
        .create_workflow(&f.me, &def, json!({}))
        .await
        .unwrap();
    f.engine.execute_workflow(&f.me, &wf.id).await.unwrap();
    f.engine.pause_workflow(&f.me, &wf.id).await.unwrap();
    let paused = wait_for(&f, &wf.id, WorkflowStatus::Paused).await;
    // It stopped at a checkpoint: whatever ran is recorded, `two` did not run yet
    // unless the pause came after it (then the run would have ended).
    assert!(paused.state["phases"].get("two").is_none());
    // The driver let go of it.
    for _ in 0..200 {
        if f.engine
            .get_workflow(&f.me, &wf.id)
            .await
            .unwrap()
            .run
            .lease_owner
            .is_none()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f.engine.resume_workflow(&f.me, &wf.id).await.unwrap();
    let done = wait_for(&f, &wf.id, WorkflowStatus::Succeeded).await;
    assert!(done.state["phases"].get("two").is_some());
    assert_eq!(f.tools.calls_of("slow").len(), 1);
    assert!(matches!(
        f.engine.pause_workflow(&f.me, &wf.id).await,
        Err(OrchestrationError::Conflict(_))
    ));
    // Cancel a hanging one: its step is interrupted.
    let hang = json!({ "name": "hang", "phases": [ { "id": "h", "steps": [ { "id": "hs", "tool": "hang" } ] } ] });
    let wf = f
        .engine
        .create_workflow(&f.me, &hang, json!({}))
        .await
        .unwrap();
    f.engine.execute_workflow(&f.me, &wf.id).await.unwrap();
    while f.tools.calls_of("hang").is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f.engine.cancel_workflow(&f.me, &wf.id).await.unwrap();
    let c = wait_for(&f, &wf.id, WorkflowStatus::Cancelled).await;
    assert!(c.finished_at_ms.is_some());
}

async fn bad_definitions_are_rejected_with_locations(store: Store) {
    let f = fixture(store).await;
    let check = |def: Value| {
        let engine = f.engine.clone();
        let me = f.me.clone();
        async move {
            match engine.create_workflow(&me, &def, json!({})).await {
                Err(OrchestrationError::Definition(errors)) => errors.to_string(),
                other => panic!("expected a definition error, got {other:?}"),
            }
        }
    };
    let base = |phases: Value| json!({ "name": "bad", "phases": phases });
    let step = |id: &str| json!({ "id": id, "tool": "echo" });
    let cases: Vec<(Value, &str)> = vec![
        (
            base(
                json!([ { "id": "a", "steps": [step("s0")] }, { "id": "b", "steps": [step("s1")] },
                { "id": "c", "steps": [ { "id": "s2", "tool": "echo", "arguments": { "path": "{{phases.nope.output}}" } } ] } ]),
            ),
            "phases[2].steps[0].arguments.path: unknown reference phases.nope",
        ),
        (
            base(json!([ { "id": "a", "steps": [ { "id": "s", "tool": "no_such_tool" } ] } ])),
            "phases[0].steps[0].tool: unknown tool `no_such_tool`",
        ),
        (
            base(
                json!([ { "id": "a", "steps": [ { "id": "s", "tool": "echo", "arguments": { "x": ["ok", "{{input.a + 1}}"] } } ] } ]),
            ),
            "phases[0].steps[0].arguments.x[1]: bad reference",
        ),
        (
            base(
                json!([ { "id": "a", "steps": [ { "id": "s", "tool": "echo", "arguments": { "x": "{{steps.ghost.output}}" } } ] } ]),
            ),
            "phases[0].steps[0].arguments.x: unknown reference steps.ghost",
        ),
        (
            base(
                json!([ { "id": "a", "steps": [step("s")], "transitions": [ { "when": "output.(", "to": "end" } ] } ]),
            ),
            "phases[0].transitions[0].when: CEL expression",
        ),
        (
            base(
                json!([ { "id": "a", "steps": [step("s")], "transitions": [ { "when": "secret > 1", "to": "end" } ] } ]),
            ),
            "phases[0].transitions[0].when: unknown variable `secret`",
        ),
        (
            base(
                json!([ { "id": "a", "steps": [step("s")] }, { "id": "b", "steps": [step("t")], "transitions": [ { "to": "a" } ] } ]),
            ),
            "phases[0].transitions: phase `a` is in a cycle without exit",
        ),
        (
            base(
                json!([ { "id": "a", "strategy": "ITERATIVE", "until": "output.ok", "steps": [step("s")] } ]),
            ),
            "phases[0].max_iterations: ITERATIVE phases need max_iterations",
        ),
        (
            base(json!([ { "id": "a", "steps": [step("s"), step("s")] } ])),
            "phases[0].steps[1].id: duplicate step id `s`",
        ),
        (
            base(
                json!([ { "id": "a", "steps": [step("s")], "transitions": [ { "to": "nowhere" } ] } ]),
            ),
            "phases[0].transitions[0].to: unknown phase `nowhere`",
        ),
        (
            base(json!([ { "id": "a", "steps": [ { "id": "s" } ] } ])),
            "phases[0].steps[0]: missing field `tool`",
        ),
        (
            base(json!([ { "id": "a", "strategy": "RANDOM", "steps": [step("s")] } ])),
            "phases[0].strategy: unknown variant `RANDOM`",
        ),
        (
            base(
                json!([ { "id": "a", "steps": [ { "id": "s", "tool": "echo", "when": "true" } ] } ]),
            ),
            "phases[0].steps[0].when: `when` chooses a branch of a CONDITIONAL phase",
        ),
        (
            base(
                json!([ { "id": "a", "strategy": "CONDITIONAL", "steps": [ { "id": "s", "tool": "echo", "when": "phases.zzz.output.ok" } ] } ]),
            ),
            "phases[0].steps[0].when: unknown reference phases.zzz",
        ),
    ];
    for (def, expected) in cases {
        let message = check(def).await;
        assert!(
            message.contains(expected),
            "expected {expected:?} in {message:?}"
        );
    }
    // A conditional cycle with an exit is fine.
    let ok = base(
        json!([ { "id": "a", "steps": [step("s")] }, { "id": "b", "steps": [step("t")], "transitions": [ { "when": "output.x == 1", "to": "a" } ] } ]),
    );
    f.engine
        .create_workflow(&f.me, &ok, json!({}))
        .await
        .expect("a cycle with an exit");
    // The schema describes the definition.
    let schema = cellgate_orchestration::workflow::definition_schema();
    assert!(schema.to_string().contains("ITERATIVE"));
}

async fn a_new_engine_resumes_from_the_checkpoint(store: Store) {
    let f = fixture(store).await;
    let def = json!({ "name": "crashy", "phases": [
        { "id": "first", "steps": [ { "id": "f1", "tool": "count", "arguments": { "key": "first" } } ] },
        { "id": "second", "strategy": "SEQUENTIAL", "steps": [
            { "id": "s1", "tool": "count", "arguments": { "key": "s1" } },
            { "id": "s2", "tool": "hang_once", "arguments": {} },
            { "id": "s3", "tool": "echo", "arguments": { "first": "{{phases.first.output.n}}" } } ] } ] });
    // Engine A's tools hang on `hang_once` (its process "dies" there).
    let tools_a = Arc::new(Tools::default());
    let runner_a = Arc::new(HangOnce(Runner(tools_a.clone()), true));
    let a = Engine::with_clock(
        f.store.clone(),
        runner_a,
        EngineConfig::default(),
        f.clock.clone(),
    );
    let wf = a.create_workflow(&f.me, &def, json!({})).await.unwrap();
    let driving = {
        let (a, me, id) = (a.clone(), f.me.clone(), wf.id.clone());
        tokio::spawn(async move { a.run_workflow(&me, &id).await })
    };
    while tools_a.calls_of("hang_once").is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    driving.abort(); // kill -9 of the driver: the lease stays behind
    let _ = driving.await;
    // Engine B (another process) does not take it while A's lease lives…
    let runner_b = Arc::new(HangOnce(Runner(f.tools.clone()), false));
    let b = Engine::with_clock(
        f.store.clone(),
        runner_b,
        EngineConfig::default(),
        f.clock.clone(),
    );
    assert_eq!(b.maintain().await.unwrap().workflows_resumed, 0);
    // …but once it expired, resumes from the last checkpoint.
    f.clock.advance(31_000);
    assert_eq!(b.recover_on_startup().await.unwrap(), 1);
    let done = wait_for(
        &Fixture {
            engine: b.clone(),
            ..fixture_clone(&f)
        },
        &wf.id,
        WorkflowStatus::Succeeded,
    )
    .await;
    assert_eq!(
        done.state["phases"]["second"]["output"],
        json!({ "first": 1 })
    );
    // `first` and `s1` ran once (on A), never again on B.
    assert_eq!(tools_a.calls_of("count").len(), 2);
    assert!(f.tools.calls_of("count").is_empty());
    assert_eq!(f.tools.calls_of("hang_once").len(), 1);

    // A restarted instance with the same id takes its own leases back at once.
    let c1 = engine_for(&f.store, &f.tools, &f.clock, Some("node-a"));
    let t = c1
        .submit(&f.me, &task("echo", json!({})))
        .await
        .unwrap()
        .task
        .id;
    let held = f
        .store
        .cross_tenant_leases()
        .lease_tasks("default", "node-a", 10, f.clock.now_ms_for_test(), 30_000)
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    let c2 = engine_for(&f.store, &f.tools, &f.clock, Some("node-a"));
    c2.recover_on_startup().await.unwrap();
    assert_eq!(c2.work_once("default", 10).await.unwrap().succeeded, 1);
    let rec = c2.get_task(&f.me, &t).await.unwrap();
    assert_eq!((rec.status, rec.attempts), (TaskStatus::Succeeded, 1));
}

fn fixture_clone(f: &Fixture) -> Fixture {
    Fixture {
        store: f.store.clone(),
        tools: f.tools.clone(),
        clock: f.clock.clone(),
        engine: f.engine.clone(),
        me: f.me.clone(),
    }
}

/// Adds `hang_once`: on a runner that `hangs`, it never returns (the
/// process is about to die); elsewhere it succeeds.
struct HangOnce(Runner, bool);

impl ToolRunner for HangOnce {
    fn run(&self, call: ToolCall) -> BoxFuture<'static, Result<Value, McpError>> {
        if call.tool != "hang_once" {
            return self.0.run(call);
        }
        self.0
            .0
            .calls
            .lock()
            .unwrap()
            .push((call.tool.clone(), json!({})));
        let hangs = self.1;
        Box::pin(async move {
            if hangs {
                std::future::pending::<()>().await;
            }
            Ok(text_result(json!({ "ok": true })))
        })
    }

    fn tool_exists<'a>(
        &'a self,
        i: &'a Identity,
        tool: &'a str,
    ) -> BoxFuture<'a, Result<bool, McpError>> {
        if tool == "hang_once" {
            return Box::pin(async { Ok(true) });
        }
        self.0.tool_exists(i, tool)
    }
}

// ---- nodes ------------------------------------------------------------------------------

async fn nodes_get_only_fitting_tasks_and_lose_them_when_silent(store: Store) {
    let f = fixture(store).await;
    let reg = |id: &str, cpu: f64, gpus: i64, zone: &str| NodeRegistration {
        id: id.into(),
        cpu,
        memory_mb: 4096,
        gpus,
        labels: [("zone".to_owned(), zone.to_owned())].into(),
        queues: vec![],
    };
    f.engine
        .register_node(&f.me, &reg("cpu-box", 8.0, 0, "eu"))
        .await
        .unwrap();
    f.engine
        .register_node(&f.me, &reg("gpu-box", 2.0, 1, "eu"))
        .await
        .unwrap();
    let needs_gpu = TaskRequest {
        requirements: Some(Resources {
            gpus: 1,
            cpu_millis: 1500,
            ..Resources::default()
        }),
        ..task("train_model", json!({ "epochs": 3 }))
    };
    // Node tools need not exist in the gateway.
    let id = submit(&f, needs_gpu.clone()).await;
    let us_only = TaskRequest {
        requirements: Some(Resources {
            labels: [("zone".to_owned(), "us".to_owned())].into(),
            ..Resources::default()
        }),
        ..task("x", json!({}))
    };
    submit(&f, us_only).await;
    // In-process workers never take tasks with requirements.
    assert_eq!(f.engine.work_once("default", 10).await.unwrap().leased, 0);
    assert!(
        f.engine
            .lease_node_tasks(&f.me, "cpu-box", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let got = f
        .engine
        .lease_node_tasks(&f.me, "gpu-box", None, 10)
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec![id.as_str()]
    );
    // Its capacity is taken: a second GPU task waits.
    let second = submit(&f, needs_gpu.clone()).await;
    assert!(
        f.engine
            .lease_node_tasks(&f.me, "gpu-box", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Discovery by requirements.
    let fits = f
        .engine
        .list_nodes(
            &f.me,
            Some(&Resources {
                gpus: 1,
                ..Resources::default()
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        fits.iter().map(|n| n.node.id.as_str()).collect::<Vec<_>>(),
        vec!["gpu-box"]
    );
    // Heartbeats keep the lease; silence loses it.
    f.clock.advance(20_000);
    let (_, renewed) = f.engine.heartbeat_node(&f.me, "gpu-box").await.unwrap();
    assert_eq!(renewed, 1);
    f.clock.advance(20_000);
    assert_eq!(f.engine.maintain().await.unwrap().requeued, 0);
    f.clock.advance(20_000);
    assert_eq!(f.engine.maintain().await.unwrap().requeued, 1);
    let nodes = f.engine.list_nodes(&f.me, None).await.unwrap();
    assert!(nodes.iter().all(|n| !n.online));
    // The waiting task is older than the re-queued one, so it goes first.
    let again = f
        .engine
        .lease_node_tasks(&f.me, "gpu-box", None, 10)
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec![second.as_str()]
    );
    // The expired lease can no longer report; the current one can.
    let stale = TaskReport {
        node_id: "gpu-box".into(),
        task_id: id.clone(),
        attempt: 1,
        result: Some(json!({"late": true})),
        error: None,
    };
    assert!(!f.engine.complete_node_task(&f.me, &stale).await.unwrap());
    let report = TaskReport {
        task_id: second.clone(),
        attempt: again[0].attempts,
        result: Some(json!({ "accuracy": 0.9 })),
        ..stale.clone()
    };
    assert!(f.engine.complete_node_task(&f.me, &report).await.unwrap());
    assert_eq!(
        status(&f, &second).await.result,
        Some(json!({ "accuracy": 0.9 }))
    );
    // Capacity freed: the re-queued task is delivered again (attempt 2); a
    // failure is retried with backoff.
    let next = f
        .engine
        .lease_node_tasks(&f.me, "gpu-box", None, 10)
        .await
        .unwrap();
    assert_eq!((next[0].id.as_str(), next[0].attempts), (id.as_str(), 2));
    let failed = TaskReport {
        attempt: 2,
        result: None,
        error: Some("GPU fell off".into()),
        ..stale
    };
    assert!(f.engine.complete_node_task(&f.me, &failed).await.unwrap());
    let t = status(&f, &id).await;
    assert_eq!(t.status, TaskStatus::Queued);
    assert!(t.eta_ms > f.clock.now_ms_for_test() && t.error.as_deref() == Some("GPU fell off"));
    // Another tenant cannot use this tenant's node.
    let beta = Identity::local_operator("beta");
    assert!(
        f.engine
            .lease_node_tasks(&beta, "gpu-box", None, 10)
            .await
            .is_err()
    );
}

// ---- provider ---------------------------------------------------------------------------

async fn the_provider_serves_the_tools(store: Store) {
    let f = fixture(store).await;
    let provider = OrchestrationProvider::new(f.engine.clone());
    let mut ctx = CallContext::detached("acme");
    ctx.principal = f.me.principal.clone();
    let tools = provider.list_tools(&ctx).await.unwrap();
    for name in cellgate_orchestration::ORCHESTRATION_TOOLS {
        assert!(tools.iter().any(|t| t.name == *name), "{name} listed");
    }
    let call = |name: &'static str, args: Value| {
        let provider = provider.clone();
        let ctx = ctx.clone();
        async move {
            provider
                .call_tool(&ctx, name, args.as_object().cloned().unwrap_or_default())
                .await
        }
    };
    let submitted = call(
        "submit_task",
        json!({ "tool": "echo", "arguments": { "a": 1 }, "priority": 2 }),
    )
    .await
    .unwrap();
    let id = submitted["structuredContent"]["task"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    f.engine.work_once("default", 10).await.unwrap();
    let got = call("get_task", json!({ "id": id })).await.unwrap();
    assert_eq!(got["structuredContent"]["status"], json!("succeeded"));
    assert!(got["structuredContent"].get("principal").is_none());
    let bad = call("submit_task", json!({ "tool": "echo", "priority": "high" }))
        .await
        .unwrap_err();
    assert!(bad.message.contains("priority"), "{bad:?}");
    let bad = call("create_workflow", json!({ "definition": { "name": "x", "phases": [ { "id": "p", "steps": [ { "id": "s", "tool": "nope" } ] } ] } })).await.unwrap_err();
    assert_eq!(bad.code, cellgate_kernel::codes::INVALID_PARAMS);
    assert!(
        bad.message
            .contains("phases[0].steps[0].tool: unknown tool `nope`"),
        "{bad:?}"
    );
    let created = call(
        "create_workflow",
        json!({ "definition": simple_workflow(), "execute": true }),
    )
    .await
    .unwrap();
    let wf = created["structuredContent"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for(&f, &wf, WorkflowStatus::Succeeded).await;
    let view = call("get_workflow", json!({ "id": wf })).await.unwrap();
    assert!(
        !view["structuredContent"]["history"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let listed = call("list_tasks", json!({ "status": "succeeded" }))
        .await
        .unwrap();
    assert_eq!(
        listed["structuredContent"]["tasks"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(
        call("list_tasks", json!({ "status": "done" }))
            .await
            .is_err()
    );
    call("register_node", json!({ "id": "n1", "cpu": 1.5 }))
        .await
        .unwrap();
    let nodes = call("list_nodes", json!({})).await.unwrap();
    assert_eq!(
        nodes["structuredContent"]["nodes"][0]["capacity"]["cpu_millis"],
        json!(1500)
    );
}

// ---- two engines, one queue ---------------------------------------------------------------

async fn two_engines_share_one_queue(store: Store) {
    let f = fixture(store).await;
    let mk = || {
        let config = EngineConfig {
            queues: [("default".to_owned(), 8)].into(),
            poll_interval: Duration::from_millis(5),
            lease_batch: 4,
            ..EngineConfig::default()
        };
        Engine::new(f.store.clone(), Arc::new(Runner(f.tools.clone())), config)
    };
    let (a, b) = (mk(), mk());
    let workers = [a.start(), b.start()];
    let reqs: Vec<TaskRequest> = (0..200).map(|_| task("track", json!({}))).collect();
    let submitted = a.submit_many(&f.me, &reqs).await.unwrap();
    let ids: Vec<String> = submitted.into_iter().map(|s| s.task.id).collect();
    for _ in 0..4000 {
        let done = a
            .list_tasks(
                &f.me,
                &cellgate_store::TaskFilter {
                    status: Some(TaskStatus::Succeeded),
                    limit: 1000,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .len();
        if done == ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for w in workers {
        w.shutdown().await;
    }
    for id in &ids {
        assert_eq!(
            a.get_task(&f.me, id).await.unwrap().status,
            TaskStatus::Succeeded,
            "task {id} lost"
        );
    }
    assert_eq!(
        f.tools.overlaps.load(Ordering::SeqCst),
        0,
        "a task ran twice at once"
    );
    let runs = f.tools.runs.lock().unwrap();
    assert_eq!(runs.len(), ids.len());
    assert!(
        runs.values().all(|&n| n == 1),
        "every task ran exactly once"
    );
}

// ---- the shipped template ------------------------------------------------------------------

async fn the_five_phase_template_runs(store: Store) {
    let f = fixture(store).await;
    let def: Value = serde_json::from_str(cellgate_orchestration::FIVE_PHASE_TEMPLATE).unwrap();
    let runner = Arc::new(TemplateTools);
    let engine = Engine::with_clock(
        f.store.clone(),
        runner.clone(),
        EngineConfig::default(),
        f.clock.clone(),
    );
    let wf = engine
        .create_workflow(&f.me, &def, json!({ "goal": "ship it" }))
        .await
        .expect("the template validates");
    let done = engine.run_workflow(&f.me, &wf.id).await.unwrap();
    assert_eq!(done.status, WorkflowStatus::Succeeded, "{:?}", done.error);
    assert_eq!(
        done.state["completed"],
        json!([
            "planning",
            "validation",
            "execution",
            "verification",
            "completion"
        ])
    );
    // The execution loop converged on its second iteration.
    assert_eq!(
        done.state["phases"]["execution"]["output"],
        json!({ "done": true, "iteration": 2 })
    );
    assert_eq!(
        done.state["phases"]["completion"]["output"]["goal"],
        json!("ship it")
    );
}

/// The tools the five-phase template names.
#[derive(Default)]
struct TemplateTools;

impl ToolRunner for TemplateTools {
    fn run(&self, call: ToolCall) -> BoxFuture<'static, Result<Value, McpError>> {
        let a = Value::Object(call.arguments);
        let out = match call.tool.as_str() {
            "plan_work" => json!({ "items": ["a", "b"], "goal": a["goal"] }),
            "check_plan" => json!({ "ok": true, "aspect": a["aspect"] }),
            "execute_plan" => {
                json!({ "done": a["iteration"] == json!(2), "iteration": a["iteration"] })
            }
            "verify_result" => json!({ "ok": true, "depth": a["depth"] }),
            "report_result" => a,
            other => {
                return Box::pin(std::future::ready(Err(McpError::invalid_params(format!(
                    "unknown tool {other}"
                )))));
            }
        };
        Box::pin(std::future::ready(Ok(text_result(out))))
    }

    fn tool_exists<'a>(
        &'a self,
        _: &'a Identity,
        tool: &'a str,
    ) -> BoxFuture<'a, Result<bool, McpError>> {
        let known = [
            "plan_work",
            "check_plan",
            "execute_plan",
            "revert_plan",
            "verify_result",
            "report_result",
        ]
        .contains(&tool);
        Box::pin(std::future::ready(Ok(known)))
    }
}
