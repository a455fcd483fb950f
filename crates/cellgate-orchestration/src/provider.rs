//! The engine as MCP tools: tasks, workflows and nodes, each acting in the
//! caller's own tenant as the caller.

use cellgate_kernel::{BoxFuture, CallContext, Identity, McpError, Provider, Tool};
use cellgate_store::{Resources, TaskFilter, WorkflowStatus};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::engine::status_filter;
use crate::nodes::{NodeRegistration, TaskReport};
use crate::workflow::definition_schema;
use crate::{Engine, OrchestrationError, TaskRequest};

/// Names of every tool the provider offers.
pub const ORCHESTRATION_TOOLS: &[&str] = &[
    "submit_task",
    "get_task",
    "cancel_task",
    "list_tasks",
    "create_workflow",
    "execute_workflow",
    "get_workflow",
    "list_workflows",
    "pause_workflow",
    "resume_workflow",
    "cancel_workflow",
    "rollback_workflow",
    "register_node",
    "heartbeat_node",
    "lease_node_tasks",
    "complete_node_task",
    "list_nodes",
];

/// The orchestration tools.
pub struct OrchestrationProvider {
    engine: Engine,
    tools: Vec<Tool>,
}

fn def(
    name: &str,
    description: &str,
    properties: Value,
    required: &[&str],
    read_only: bool,
) -> Tool {
    // A property's own schema (e.g. the workflow definition's) refers to
    // `#/$defs/…`, which must sit at the root of the tool's inputSchema for
    // validators to resolve it.
    let mut properties = properties;
    let mut defs = serde_json::Map::new();
    if let Value::Object(props) = &mut properties {
        for schema in props.values_mut() {
            if let Value::Object(o) = schema {
                o.remove("$schema");
                if let Some(Value::Object(d)) = o.remove("$defs") {
                    defs.extend(d);
                }
            }
        }
    }
    let mut input = json!({ "type": "object", "properties": properties, "required": required, "additionalProperties": false });
    if !defs.is_empty() {
        input["$defs"] = Value::Object(defs);
    }
    Tool::new(name, description, input).with(
        "annotations",
        json!({ "readOnlyHint": read_only, "destructiveHint": false, "openWorldHint": false }),
    )
}

fn schema_of<T: schemars::JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or_else(|_| json!({ "type": "object" }))
}

fn definitions() -> Vec<Tool> {
    let id = json!({ "type": "string" });
    let resources = json!({
        "type": "object",
        "properties": {
            "cpu_millis": { "type": "integer", "minimum": 0 },
            "memory_mb": { "type": "integer", "minimum": 0 },
            "gpus": { "type": "integer", "minimum": 0 },
            "labels": { "type": "object", "additionalProperties": { "type": "string" } }
        },
        "additionalProperties": false
    });
    let mut submit = schema_of::<TaskRequest>();
    if let Some(props) = submit.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert("requirements".into(), resources.clone());
    }
    let mut node = schema_of::<NodeRegistration>();
    node.as_object_mut().map(|o| o.remove("$schema"));
    submit.as_object_mut().map(|o| o.remove("$schema"));
    if let Some(props) = submit.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert(
            "wait".into(),
            json!({ "type": "boolean", "description": "Answer only when the task has ended, relaying its progress as notifications/progress (send a progressToken) meanwhile" }),
        );
    }
    let mut report = schema_of::<TaskReport>();
    report.as_object_mut().map(|o| o.remove("$schema"));
    vec![
        Tool::new(
            "submit_task",
            "Queue a tool call to run later as you: queue, priority, eta/countdown, time limit, retries with exponential backoff, idempotency key, result TTL, node requirements. Returns the task.",
            submit,
        ),
        def(
            "get_task",
            "A task: status, attempts, result or error.",
            json!({ "id": id }),
            &["id"],
            true,
        ),
        def(
            "cancel_task",
            "Cancel a queued or running task.",
            json!({ "id": id }),
            &["id"],
            false,
        ),
        def(
            "list_tasks",
            "Your tenant's tasks, newest first.",
            json!({
                "status": { "type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"] },
                "queue": { "type": "string" },
                "limit": { "type": "integer", "minimum": 1, "maximum": 1000 }
            }),
            &[],
            true,
        ),
        def(
            "create_workflow",
            "Validate a workflow definition (phases of tool-call steps; SEQUENTIAL, PARALLEL, CONDITIONAL, ITERATIVE; templates {{input.x}}, {{phases.<id>.output}}; CEL conditions) and create a run. Problems are reported with their location. With execute=true it starts at once.",
            json!({
                "definition": definition_schema(),
                "input": { "description": "The run's input, {{input.…}} in templates" },
                "execute": { "type": "boolean" }
            }),
            &["definition"],
            false,
        ),
        def(
            "execute_workflow",
            "Start a created workflow run.",
            json!({ "id": id }),
            &["id"],
            false,
        ),
        def(
            "get_workflow",
            "A run: status, state (outputs so far), history of phase and step executions, checkpoints.",
            json!({ "id": id }),
            &["id"],
            true,
        ),
        def(
            "list_workflows",
            "Your tenant's workflow runs, newest first.",
            json!({
                "status": { "type": "string", "enum": WorkflowStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>() },
                "limit": { "type": "integer", "minimum": 1, "maximum": 1000 }
            }),
            &[],
            true,
        ),
        def(
            "pause_workflow",
            "Pause a running workflow after its current step.",
            json!({ "id": id }),
            &["id"],
            false,
        ),
        def(
            "resume_workflow",
            "Resume a paused workflow from its last checkpoint.",
            json!({ "id": id }),
            &["id"],
            false,
        ),
        def(
            "cancel_workflow",
            "Cancel a workflow run.",
            json!({ "id": id }),
            &["id"],
            false,
        ),
        def(
            "rollback_workflow",
            "Roll a paused or ended run back to a checkpoint (see get_workflow): run the compensations of later phases, restore the state, resume.",
            json!({ "id": id, "checkpoint": { "type": "integer" } }),
            &["id", "checkpoint"],
            false,
        ),
        Tool::new(
            "register_node",
            "Register (or update) an external worker node with what it offers: cpu cores, memory, gpus, labels, queues.",
            node,
        ),
        def(
            "heartbeat_node",
            "Tell cellgate the node is alive; renews the leases of its tasks (a node that stops heartbeating loses them).",
            json!({ "id": id }),
            &["id"],
            false,
        ),
        def(
            "lease_node_tasks",
            "Take up to `max` ready tasks that fit the node's free capacity and labels. Report each with complete_node_task.",
            json!({ "node_id": id, "queue": { "type": "string" }, "max": { "type": "integer", "minimum": 1, "maximum": 1000 } }),
            &["node_id"],
            false,
        ),
        Tool::new(
            "complete_node_task",
            "Report how a leased task ended on a node: `result`, or `error` (retried while retries remain).",
            report,
        ),
        def(
            "list_nodes",
            "Your tenant's worker nodes with capacity and liveness; with `requirements`, only live nodes that satisfy them.",
            json!({ "requirements": resources }),
            &[],
            true,
        ),
    ]
}

/// A successful result with `value` as structured content and as text.
fn ok(value: Value) -> Value {
    json!({
        "content": [{ "type": "text", "text": value.to_string() }],
        "structuredContent": value,
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, McpError> {
    serde_json::to_value(v).map_err(|e| McpError::internal(e.to_string()))
}

fn parse<T: DeserializeOwned>(args: Map<String, Value>) -> Result<T, McpError> {
    serde_path_to_error::deserialize(Value::Object(args)).map_err(|e| {
        let path = e.path().to_string();
        McpError::invalid_params(if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        })
    })
}

fn string<'a>(args: &'a Map<String, Value>, key: &str) -> Result<&'a str, McpError> {
    args.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| McpError::invalid_params(format!("`{key}` must be a string")))
}

fn limit(args: &Map<String, Value>) -> Result<u32, McpError> {
    match args.get("limit") {
        None | Some(Value::Null) => Ok(100),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| McpError::invalid_params("`limit` must be an integer from 1 to 1000")),
    }
}

impl OrchestrationProvider {
    pub fn new(engine: Engine) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            engine,
            tools: definitions(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    async fn call(
        &self,
        ctx: &CallContext,
        name: &str,
        args: Map<String, Value>,
    ) -> Result<Value, McpError> {
        let me = Identity {
            tenant: ctx.tenant.to_string(),
            principal: ctx.principal.clone(),
        };
        let e = &self.engine;
        let m = |err: OrchestrationError| err.to_mcp();
        let value = match name {
            "submit_task" => {
                let mut args = args;
                let wait = match args.remove("wait") {
                    None => false,
                    Some(Value::Bool(b)) => b,
                    Some(_) => return Err(McpError::invalid_params("`wait` must be a boolean")),
                };
                let req: TaskRequest = parse(args)?;
                let done = e.submit(&me, &req).await.map_err(m)?;
                let task = if wait {
                    wait_for_task(e, &me, ctx, done.task).await?
                } else {
                    done.task
                };
                json!({ "task": to_json(&task)?, "created": done.created })
            }
            "get_task" => to_json(&e.get_task(&me, string(&args, "id")?).await.map_err(m)?)?,
            "cancel_task" => to_json(&e.cancel_task(&me, string(&args, "id")?).await.map_err(m)?)?,
            "list_tasks" => {
                let filter = TaskFilter {
                    status: status_filter(args.get("status").and_then(Value::as_str)).map_err(m)?,
                    queue: args.get("queue").and_then(Value::as_str).map(str::to_owned),
                    limit: limit(&args)?,
                };
                json!({ "tasks": to_json(&e.list_tasks(&me, &filter).await.map_err(m)?)? })
            }
            "create_workflow" => {
                let definition = args
                    .get("definition")
                    .ok_or_else(|| McpError::invalid_params("`definition` is required"))?;
                let input = args.get("input").cloned().unwrap_or(json!({}));
                let run = e.create_workflow(&me, definition, input).await.map_err(m)?;
                let run = if args.get("execute").and_then(Value::as_bool) == Some(true) {
                    e.execute_workflow(&me, &run.id).await.map_err(m)?
                } else {
                    run
                };
                to_json(&run)?
            }
            "execute_workflow" => to_json(
                &e.execute_workflow(&me, string(&args, "id")?)
                    .await
                    .map_err(m)?,
            )?,
            "get_workflow" => {
                to_json(&e.get_workflow(&me, string(&args, "id")?).await.map_err(m)?)?
            }
            "list_workflows" => {
                let status = match args.get("status").and_then(Value::as_str) {
                    None => None,
                    Some(s) => Some(WorkflowStatus::parse(s).ok_or_else(|| {
                        McpError::invalid_params(format!("`status`: unknown workflow status {s:?}"))
                    })?),
                };
                json!({ "workflows": to_json(&e.list_workflows(&me, status, limit(&args)?).await.map_err(m)?)? })
            }
            "pause_workflow" => to_json(
                &e.pause_workflow(&me, string(&args, "id")?)
                    .await
                    .map_err(m)?,
            )?,
            "resume_workflow" => to_json(
                &e.resume_workflow(&me, string(&args, "id")?)
                    .await
                    .map_err(m)?,
            )?,
            "cancel_workflow" => to_json(
                &e.cancel_workflow(&me, string(&args, "id")?)
                    .await
                    .map_err(m)?,
            )?,
            "rollback_workflow" => {
                let checkpoint =
                    args.get("checkpoint")
                        .and_then(Value::as_i64)
                        .ok_or_else(|| {
                            McpError::invalid_params(
                                "`checkpoint` must be an integer (a checkpoint id)",
                            )
                        })?;
                to_json(
                    &e.rollback_workflow(&me, string(&args, "id")?, checkpoint)
                        .await
                        .map_err(m)?,
                )?
            }
            "register_node" => {
                let reg: NodeRegistration = parse(args)?;
                to_json(&e.register_node(&me, &reg).await.map_err(m)?)?
            }
            "heartbeat_node" => {
                let (node, renewed) = e
                    .heartbeat_node(&me, string(&args, "id")?)
                    .await
                    .map_err(m)?;
                json!({ "node": to_json(&node)?, "leases_renewed": renewed })
            }
            "lease_node_tasks" => {
                let max = match args.get("max") {
                    None => 1,
                    Some(v) => v
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| {
                            McpError::invalid_params("`max` must be an integer from 1 to 1000")
                        })?,
                };
                let tasks = e
                    .lease_node_tasks(
                        &me,
                        string(&args, "node_id")?,
                        args.get("queue").and_then(Value::as_str),
                        max,
                    )
                    .await
                    .map_err(m)?;
                json!({ "tasks": to_json(&tasks)? })
            }
            "complete_node_task" => {
                let report: TaskReport = parse(args)?;
                json!({ "recorded": e.complete_node_task(&me, &report).await.map_err(m)? })
            }
            "list_nodes" => {
                let req: Option<Resources> =
                    match args.get("requirements") {
                        None | Some(Value::Null) => None,
                        Some(v) => Some(serde_json::from_value(v.clone()).map_err(|err| {
                            McpError::invalid_params(format!("requirements: {err}"))
                        })?),
                    };
                json!({ "nodes": to_json(&e.list_nodes(&me, req.as_ref()).await.map_err(m)?)? })
            }
            other => return Err(McpError::invalid_params(format!("unknown tool: {other}"))),
        };
        Ok(ok(value))
    }
}

impl Provider for OrchestrationProvider {
    fn id(&self) -> &str {
        "orchestration"
    }

    fn list_tools<'a>(
        &'a self,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<Tool>, McpError>> {
        Box::pin(async move { Ok(self.tools.clone()) })
    }

    fn call_tool<'a>(
        &'a self,
        ctx: &'a CallContext,
        name: &'a str,
        arguments: Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async move { self.call(ctx, name, arguments).await })
    }
}

/// How often a waiting `submit_task` looks at its task.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Follows a task until it ends, relaying each new progress report of its
/// tool to the caller as `notifications/progress`; the caller's
/// cancellation stops the waiting (not the task).
async fn wait_for_task(
    engine: &Engine,
    me: &Identity,
    ctx: &CallContext,
    mut task: cellgate_store::TaskRecord,
) -> Result<cellgate_store::TaskRecord, McpError> {
    let mut relayed: Option<Value> = None;
    loop {
        if task.status.is_final() {
            return Ok(task);
        }
        if let Some(p) = &task.progress
            && relayed.as_ref() != Some(p)
        {
            if let Some(progress) = p.get("progress").and_then(Value::as_f64) {
                ctx.progress(
                    progress,
                    p.get("total").and_then(Value::as_f64),
                    p.get("message").and_then(Value::as_str),
                );
            }
            relayed = Some(p.clone());
        }
        tokio::select! {
            _ = tokio::time::sleep(WAIT_POLL) => {}
            _ = ctx.cancel.cancelled() => {
                return Err(McpError::cancelled(format!(
                    "stopped waiting for task {}; it goes on (get_task)",
                    task.id
                )));
            }
        }
        task = engine
            .get_task(me, &task.id)
            .await
            .map_err(|e| e.to_mcp())?;
    }
}
