//! Running workflows: the driver that executes phases by their strategy,
//! checkpoints after every step and phase, follows transitions, and rolls
//! back with compensations; and the public operations on runs.

use std::collections::BTreeMap;
use std::time::Duration;

use cellgate_kernel::{CancellationToken, Identity};
use cellgate_store::{
    CheckpointKind, CheckpointRecord, HistoryEntry, HistoryRecord, NewWorkflow, TenantId,
    TenantWorkflows, WorkflowRecord, WorkflowStatus,
};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::definition::{
    Compiled, END, StepDefinition, Strategy, ValidationError, ValidationErrors,
};
use super::template::render;
use super::{parse_definition, validate};
use crate::OrchestrationError;
use crate::engine::{Engine, ms, tenant_of};
use crate::runner::{
    ToolCall, is_tool_error, principal_from_json, principal_to_json, result_text, step_output,
};

/// Where a run is and what it has produced: what every checkpoint stores.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Completed phases' outputs: `{ "<id>": { "output": … } }`.
    #[serde(default)]
    pub phases: Map<String, Value>,
    /// Completed steps' outputs: `{ "<id>": { "output": … } }`.
    #[serde(default)]
    pub steps: Map<String, Value>,
    /// Phase executions in the order they completed (a phase may repeat).
    #[serde(default)]
    pub completed: Vec<String>,
    /// The phase to run next and how far it got; `None` when done.
    #[serde(default)]
    pub cursor: Option<Cursor>,
    /// Phase executions started, against `max_phase_runs`.
    #[serde(default)]
    pub phase_runs: u32,
}

/// Progress inside the current phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub phase: String,
    /// ITERATIVE: the iteration in progress, from 1.
    #[serde(default = "one")]
    pub iteration: u32,
    /// Steps of the current phase (and iteration) already done.
    #[serde(default)]
    pub done: Vec<String>,
}

fn one() -> u32 {
    1
}

impl Cursor {
    fn at(phase: &str) -> Cursor {
        Cursor {
            phase: phase.to_owned(),
            iteration: 1,
            done: Vec::new(),
        }
    }
}

/// A run as `get_workflow` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkflowView {
    #[serde(flatten)]
    pub run: WorkflowRecord,
    pub history: Vec<HistoryRecord>,
    /// Checkpoints without their state (ids to pass to rollback).
    pub checkpoints: Vec<Value>,
}

/// Why a phase did not complete.
enum Halt {
    /// The driver must stop without touching the run: it was paused or
    /// cancelled, the lease was lost, or the engine is stopping.
    Stop,
    Failed(String),
}

/// One run being driven by this engine.
struct Driver<'a> {
    engine: &'a Engine,
    repo: TenantWorkflows,
    id: String,
    compiled: Compiled,
    identity: Identity,
    input: Value,
    cancel: CancellationToken,
}

fn entry(
    event: &str,
    phase: Option<&str>,
    step: Option<&str>,
    started: i64,
    finished: i64,
) -> HistoryEntry {
    HistoryEntry {
        event: event.to_owned(),
        phase: phase.map(str::to_owned),
        step: step.map(str::to_owned),
        iteration: None,
        output: None,
        error: None,
        started_at_ms: started,
        finished_at_ms: finished,
    }
}

impl Driver<'_> {
    fn scope(&self, state: &RunState, extra: &[(&str, Value)]) -> Value {
        let mut scope = Map::new();
        scope.insert("input".into(), self.input.clone());
        scope.insert("phases".into(), Value::Object(state.phases.clone()));
        scope.insert("steps".into(), Value::Object(state.steps.clone()));
        for (k, v) in extra {
            scope.insert((*k).to_owned(), v.clone());
        }
        Value::Object(scope)
    }

    async fn record(&self, e: HistoryEntry) {
        if let Err(err) = self.repo.record(&self.id, &e).await {
            tracing::warn!(workflow = %self.id, error = %err, "recording workflow history failed");
        }
    }

    /// Saves the state (with a checkpoint); `Halt::Stop` when the run is no
    /// longer ours to drive or no longer running.
    async fn save(
        &self,
        state: &RunState,
        kind: CheckpointKind,
        phase: &str,
        step: Option<&str>,
    ) -> Result<(), Halt> {
        let value = serde_json::to_value(state).map_err(|e| Halt::Failed(e.to_string()))?;
        let saved = self
            .repo
            .save_state(
                &self.id,
                self.engine.owner(),
                &value,
                Some((kind, phase, step)),
                self.engine.now(),
            )
            .await;
        match saved {
            Ok(Some(WorkflowStatus::Running)) => Ok(()),
            Ok(Some(_)) => {
                // Paused or cancelled meanwhile: hand the run back.
                let _ = self.repo.release(&self.id, self.engine.owner()).await;
                Err(Halt::Stop)
            }
            Ok(None) => Err(Halt::Stop),
            Err(e) => {
                tracing::warn!(workflow = %self.id, error = %e, "checkpointing failed; stopping the driver");
                Err(Halt::Stop)
            }
        }
    }

    /// Runs one step: renders its arguments against `scope`, calls the tool
    /// as the workflow's owner, and returns its output.
    async fn step(
        &self,
        phase: &str,
        step: &StepDefinition,
        scope: &Value,
        event: &str,
    ) -> Result<Value, Halt> {
        let started = self.engine.now();
        let args = render(&Value::Object(step.arguments.clone()), scope);
        let result = match args {
            Err(e) => Err(format!("arguments: {e}")),
            Ok(args) => {
                let mut meta = Map::new();
                meta.insert(
                    "cellgate/workflow".into(),
                    json!({ "id": self.id, "phase": phase, "step": step.id }),
                );
                let call = ToolCall {
                    identity: self.identity.clone(),
                    tool: step.tool.clone(),
                    arguments: match args {
                        Value::Object(m) => m,
                        _ => Map::new(),
                    },
                    meta,
                    cancel: self.cancel.child_token(),
                    progress: None,
                };
                match self.engine.inner.runner.run(call).await {
                    Ok(v) if !is_tool_error(&v) => Ok(step_output(&v)),
                    Ok(v) => Err(result_text(&v)),
                    Err(e) => Err(e.message),
                }
            }
        };
        if self.cancel.is_cancelled() {
            return Err(Halt::Stop);
        }
        let mut e = entry(
            event,
            Some(phase),
            Some(&step.id),
            started,
            self.engine.now(),
        );
        match result {
            Ok(output) => {
                e.event = format!("{event}_completed");
                e.output = Some(output.clone());
                self.record(e).await;
                Ok(output)
            }
            Err(message) => {
                e.event = format!("{event}_failed");
                e.error = Some(message.clone());
                self.record(e).await;
                Err(Halt::Failed(format!(
                    "step `{}` ({}): {message}",
                    step.id, step.tool
                )))
            }
        }
    }

    fn done_step(state: &mut RunState, step: &str, output: Value) {
        state
            .steps
            .insert(step.to_owned(), json!({ "output": output }));
        if let Some(c) = state.cursor.as_mut() {
            c.done.push(step.to_owned());
        }
    }

    fn output_of(state: &RunState, step: &str) -> Value {
        state
            .steps
            .get(step)
            .and_then(|s| s.get("output"))
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Runs `steps` in order, skipping those the cursor says are done;
    /// returns the last step's output.
    async fn sequence(
        &self,
        pi: usize,
        state: &mut RunState,
        iteration: Option<u32>,
    ) -> Result<Value, Halt> {
        let phase = &self.compiled.def.phases[pi];
        let mut prev = Value::Null;
        for step in &phase.steps {
            let done = state
                .cursor
                .as_ref()
                .is_some_and(|c| c.done.contains(&step.id));
            if done {
                prev = Self::output_of(state, &step.id);
                continue;
            }
            let mut extra = vec![("prev", json!({ "output": prev }))];
            if let Some(i) = iteration {
                extra.push(("iteration", json!(i)));
            }
            let scope = self.scope(state, &extra);
            let output = self.step(&phase.id, step, &scope, "step").await?;
            Self::done_step(state, &step.id, output.clone());
            self.save(state, CheckpointKind::Step, &phase.id, Some(&step.id))
                .await?;
            prev = output;
        }
        Ok(prev)
    }

    async fn parallel(&self, pi: usize, state: &mut RunState) -> Result<Value, Halt> {
        let phase = &self.compiled.def.phases[pi];
        let scope = self.scope(state, &[]);
        let mut pending: FuturesUnordered<_> = phase
            .steps
            .iter()
            .filter(|s| {
                !state
                    .cursor
                    .as_ref()
                    .is_some_and(|c| c.done.contains(&s.id))
            })
            .map(|s| {
                let scope = &scope;
                async move { (s, self.step(&phase.id, s, scope, "step").await) }
            })
            .collect();
        while let Some((step, result)) = pending.next().await {
            // A failure drops the other calls in flight (cancelling them).
            let output = result?;
            Self::done_step(state, &step.id, output);
            self.save(state, CheckpointKind::Step, &phase.id, Some(&step.id))
                .await?;
        }
        let merged: Map<String, Value> = phase
            .steps
            .iter()
            .map(|s| (s.id.clone(), Self::output_of(state, &s.id)))
            .collect();
        Ok(Value::Object(merged))
    }

    async fn conditional(&self, pi: usize, state: &mut RunState) -> Result<Value, Halt> {
        let phase = &self.compiled.def.phases[pi];
        if let Some(done) = state.cursor.as_ref().and_then(|c| c.done.first()) {
            return Ok(Self::output_of(state, done));
        }
        let scope = self.scope(state, &[]);
        for (si, step) in phase.steps.iter().enumerate() {
            let chosen = match &self.compiled.step_when[pi][si] {
                None => true,
                Some(expr) => expr
                    .eval_bool(&scope)
                    .map_err(|e| Halt::Failed(format!("phases[{pi}].steps[{si}].when: {e}")))?,
            };
            if chosen {
                let now = self.engine.now();
                self.record(HistoryEntry {
                    output: Some(json!({ "branch": step.id })),
                    ..entry("branch_chosen", Some(&phase.id), Some(&step.id), now, now)
                })
                .await;
                let output = self.step(&phase.id, step, &scope, "step").await?;
                Self::done_step(state, &step.id, output.clone());
                self.save(state, CheckpointKind::Step, &phase.id, Some(&step.id))
                    .await?;
                return Ok(output);
            }
        }
        let now = self.engine.now();
        self.record(entry("no_branch_chosen", Some(&phase.id), None, now, now))
            .await;
        Ok(Value::Null)
    }

    async fn iterative(&self, pi: usize, state: &mut RunState) -> Result<Value, Halt> {
        let phase = &self.compiled.def.phases[pi];
        let max = phase.max_iterations.unwrap_or(1);
        loop {
            let iteration = state.cursor.as_ref().map_or(1, |c| c.iteration);
            let started = self.engine.now();
            let output = self.sequence(pi, state, Some(iteration)).await?;
            let converged = match &self.compiled.until[pi] {
                None => false,
                Some(expr) => {
                    let scope = self.scope(
                        state,
                        &[("output", output.clone()), ("iteration", json!(iteration))],
                    );
                    expr.eval_bool(&scope)
                        .map_err(|e| Halt::Failed(format!("phases[{pi}].until: {e}")))?
                }
            };
            self.record(HistoryEntry {
                iteration: Some(i64::from(iteration)),
                output: Some(json!({ "output": output, "converged": converged })),
                ..entry(
                    "iteration_completed",
                    Some(&phase.id),
                    None,
                    started,
                    self.engine.now(),
                )
            })
            .await;
            if converged || iteration >= max {
                return Ok(output);
            }
            if let Some(c) = state.cursor.as_mut() {
                c.iteration = iteration + 1;
                c.done.clear();
            }
            self.save(state, CheckpointKind::Step, &phase.id, None)
                .await?;
        }
    }

    async fn phase(&self, pi: usize, state: &mut RunState) -> Result<Value, Halt> {
        let phase = &self.compiled.def.phases[pi];
        let output = match phase.strategy {
            Strategy::Sequential => self.sequence(pi, state, None).await?,
            Strategy::Parallel => self.parallel(pi, state).await?,
            Strategy::Conditional => self.conditional(pi, state).await?,
            Strategy::Iterative => self.iterative(pi, state).await?,
        };
        match &phase.output {
            None => Ok(output),
            Some(tpl) => render(tpl, &self.scope(state, &[("output", output)]))
                .map_err(|e| Halt::Failed(format!("phases[{pi}].output: {e}"))),
        }
    }

    /// The phase after `pi`: the first transition that holds, else the next
    /// in the list; `None` for the end.
    fn next(&self, pi: usize, state: &RunState, output: &Value) -> Result<Option<String>, String> {
        let phase = &self.compiled.def.phases[pi];
        let scope = self.scope(state, &[("output", output.clone())]);
        for (ti, t) in phase.transitions.iter().enumerate() {
            let holds = match &self.compiled.transitions[pi][ti] {
                None => true,
                Some(expr) => expr
                    .eval_bool(&scope)
                    .map_err(|e| format!("phases[{pi}].transitions[{ti}].when: {e}"))?,
            };
            if holds {
                return Ok((t.to != END).then(|| t.to.clone()));
            }
        }
        Ok(self.compiled.def.phases.get(pi + 1).map(|p| p.id.clone()))
    }

    /// Runs the compensation steps of `phases` (latest first), recording
    /// each; failures are recorded and the others still run. Returns the
    /// failures.
    async fn compensate(&self, state: &RunState, phases: &[String]) -> Vec<String> {
        let mut failures = Vec::new();
        for id in phases.iter().rev() {
            let Some((_, phase)) = self.compiled.phase(id) else {
                continue;
            };
            let scope = self.scope(state, &[]);
            for step in &phase.compensation {
                if let Err(Halt::Failed(e)) =
                    self.step(&phase.id, step, &scope, "compensation").await
                {
                    failures.push(e);
                }
            }
        }
        failures
    }

    async fn finish(&self, status: WorkflowStatus, error: Option<&str>) -> WorkflowStatus {
        let now = self.engine.now();
        self.record(HistoryEntry {
            error: error.map(str::to_owned),
            ..entry(
                &format!("workflow_{}", status.as_str()),
                None,
                None,
                now,
                now,
            )
        })
        .await;
        match self
            .repo
            .finish(&self.id, self.engine.owner(), status, error, now)
            .await
        {
            Ok(true) => status,
            Ok(false) => self.current_status().await,
            Err(e) => {
                tracing::warn!(workflow = %self.id, error = %e, "finishing a workflow failed");
                WorkflowStatus::Running
            }
        }
    }

    async fn current_status(&self) -> WorkflowStatus {
        match self.repo.get(&self.id).await {
            Ok(Some(r)) => r.status,
            _ => WorkflowStatus::Running,
        }
    }

    /// Drives the run from its state until it ends or must stop.
    async fn drive(&self, mut state: RunState) -> WorkflowStatus {
        loop {
            let Some(cursor) = state.cursor.clone() else {
                return self.finish(WorkflowStatus::Succeeded, None).await;
            };
            let Some((pi, phase)) = self.compiled.phase(&cursor.phase) else {
                let msg = format!("the state names an unknown phase `{}`", cursor.phase);
                return self.finish(WorkflowStatus::Failed, Some(&msg)).await;
            };
            let started = self.engine.now();
            let run = self.phase(pi, &mut state);
            let result = match phase.timeout_ms {
                None => run.await,
                Some(t) => match tokio::time::timeout(Duration::from_millis(t), run).await {
                    Ok(r) => r,
                    Err(_) => Err(Halt::Failed(format!(
                        "phase `{}` timed out after {t} ms",
                        phase.id
                    ))),
                },
            };
            let output = match result {
                Ok(output) => output,
                Err(Halt::Stop) => return self.current_status().await,
                Err(Halt::Failed(message)) => {
                    self.record(HistoryEntry {
                        error: Some(message.clone()),
                        ..entry(
                            "phase_failed",
                            Some(&phase.id),
                            None,
                            started,
                            self.engine.now(),
                        )
                    })
                    .await;
                    if !phase.rollback {
                        return self.finish(WorkflowStatus::Failed, Some(&message)).await;
                    }
                    // Undo this phase (if it got anywhere) and everything before it.
                    let mut undo = state.completed.clone();
                    if state
                        .cursor
                        .as_ref()
                        .is_some_and(|c| !c.done.is_empty() || c.iteration > 1)
                    {
                        undo.push(phase.id.clone());
                    }
                    let failures = self.compensate(&state, &undo).await;
                    let mut msg = message;
                    if !failures.is_empty() {
                        msg.push_str(&format!("; compensation failures: {}", failures.join("; ")));
                    }
                    return self.finish(WorkflowStatus::RolledBack, Some(&msg)).await;
                }
            };
            state
                .phases
                .insert(phase.id.clone(), json!({ "output": output }));
            state.completed.push(phase.id.clone());
            let next = match self.next(pi, &state, &output) {
                Ok(n) => n,
                Err(e) => return self.finish(WorkflowStatus::Failed, Some(&e)).await,
            };
            self.record(HistoryEntry {
                output: Some(output),
                ..entry(
                    "phase_completed",
                    Some(&phase.id),
                    None,
                    started,
                    self.engine.now(),
                )
            })
            .await;
            state.cursor = next.as_deref().map(Cursor::at);
            if next.is_some() {
                state.phase_runs += 1;
                if state.phase_runs > self.engine.config().max_phase_runs {
                    let msg = format!(
                        "more than {} phase executions: the transitions keep looping",
                        self.engine.config().max_phase_runs
                    );
                    return self.finish(WorkflowStatus::Failed, Some(&msg)).await;
                }
            }
            if self
                .save(&state, CheckpointKind::Phase, &phase.id, None)
                .await
                .is_err()
            {
                return self.current_status().await;
            }
        }
    }
}

fn workflow_lease(engine: &Engine) -> i64 {
    ms(engine.config().visibility_timeout)
}

impl Engine {
    fn workflows(&self, identity: &Identity) -> Result<TenantWorkflows, OrchestrationError> {
        Ok(self.inner.store.scope(&tenant_of(identity)?).workflows())
    }

    /// Parses and validates a definition as `identity` would run it:
    /// structure, templates, expressions, cycles, and that every tool
    /// exists. Every problem is reported with its location.
    pub async fn check_definition(
        &self,
        identity: &Identity,
        definition: &Value,
    ) -> Result<super::WorkflowDefinition, OrchestrationError> {
        let def = parse_definition(definition).map_err(OrchestrationError::Definition)?;
        let (_, tools) = validate(&def).map_err(OrchestrationError::Definition)?;
        let mut errors = Vec::new();
        let mut known: BTreeMap<String, bool> = BTreeMap::new();
        for (location, tool) in tools {
            let exists = match known.get(&tool) {
                Some(&e) => e,
                None => {
                    let e = self
                        .inner
                        .runner
                        .tool_exists(identity, &tool)
                        .await
                        .map_err(|e| OrchestrationError::invalid("tool", e.message))?;
                    known.insert(tool.clone(), e);
                    e
                }
            };
            if !exists {
                errors.push(ValidationError {
                    location,
                    message: format!("unknown tool `{tool}`"),
                });
            }
        }
        if errors.is_empty() {
            Ok(def)
        } else {
            Err(OrchestrationError::Definition(ValidationErrors(errors)))
        }
    }

    /// Validates and stores a run of `definition` with `input`, in status
    /// `created`.
    pub async fn create_workflow(
        &self,
        identity: &Identity,
        definition: &Value,
        input: Value,
    ) -> Result<WorkflowRecord, OrchestrationError> {
        let def = self.check_definition(identity, definition).await?;
        let state = RunState {
            cursor: Some(Cursor::at(&def.phases[0].id)),
            phase_runs: 1,
            ..RunState::default()
        };
        let record = self
            .workflows(identity)?
            .create(
                &NewWorkflow {
                    name: def.name.clone(),
                    definition: serde_json::to_value(&def)
                        .map_err(|e| OrchestrationError::invalid("definition", e.to_string()))?,
                    input,
                    principal_id: identity.principal.id.to_string(),
                    principal: principal_to_json(&identity.principal),
                    state: serde_json::to_value(&state)
                        .map_err(|e| OrchestrationError::invalid("state", e.to_string()))?,
                },
                self.now(),
            )
            .await?;
        Ok(record)
    }

    async fn transition(
        &self,
        identity: &Identity,
        id: &str,
        from: &[WorkflowStatus],
        to: WorkflowStatus,
        release: bool,
    ) -> Result<WorkflowRecord, OrchestrationError> {
        let repo = self.workflows(identity)?;
        match repo.transition(id, from, to, release, self.now()).await? {
            Some(r) => Ok(r),
            None => match repo.get(id).await? {
                None => Err(OrchestrationError::NotFound {
                    kind: "workflow",
                    id: id.to_owned(),
                }),
                Some(r) => Err(OrchestrationError::Conflict(format!(
                    "workflow {id} is {}; this needs it {}",
                    r.status.as_str(),
                    from.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ))),
            },
        }
    }

    /// Starts a created run; it is driven in the background.
    pub async fn execute_workflow(
        &self,
        identity: &Identity,
        id: &str,
    ) -> Result<WorkflowRecord, OrchestrationError> {
        let record = self
            .transition(
                identity,
                id,
                &[WorkflowStatus::Created],
                WorkflowStatus::Running,
                false,
            )
            .await?;
        self.spawn_driver(record.tenant.clone(), id.to_owned());
        Ok(record)
    }

    /// Starts a created run and drives it in the calling task until it ends
    /// or stops (for the CLI's `workflow run` and tests).
    pub async fn run_workflow(
        &self,
        identity: &Identity,
        id: &str,
    ) -> Result<WorkflowRecord, OrchestrationError> {
        let record = self
            .transition(
                identity,
                id,
                &[WorkflowStatus::Created],
                WorkflowStatus::Running,
                false,
            )
            .await?;
        self.drive(&record.tenant, id).await?;
        self.get_run(identity, id).await
    }

    /// Drives a running run if nobody else does, in the calling task, until
    /// it ends or stops. `Ok(None)` when another engine holds it.
    pub async fn drive(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<WorkflowStatus>, OrchestrationError> {
        let repo = self.inner.store.scope(tenant).workflows();
        let claimed = repo
            .claim(
                id,
                WorkflowStatus::Running,
                self.owner(),
                self.now(),
                workflow_lease(self),
            )
            .await?;
        match claimed {
            None => Ok(None),
            Some(record) => Ok(Some(self.drive_claimed(record).await)),
        }
    }

    /// Marks the run as driven by this process; `None` if it already is
    /// (a second driver in the same process would run steps twice).
    fn register_driver(&self, id: &str) -> Option<CancellationToken> {
        let mut drivers = self.inner.drivers.lock().unwrap_or_else(|e| e.into_inner());
        if drivers.contains_key(id) {
            return None;
        }
        let token = self.inner.stop.child_token();
        drivers.insert(id.to_owned(), token.clone());
        Some(token)
    }

    async fn drive_claimed(&self, record: WorkflowRecord) -> WorkflowStatus {
        let Some(cancel) = self.register_driver(&record.id) else {
            return record.status;
        };
        self.drive_registered(record, cancel).await
    }

    async fn drive_registered(
        &self,
        record: WorkflowRecord,
        cancel: CancellationToken,
    ) -> WorkflowStatus {
        let id = record.id.clone();
        let status = self.drive_inner(record, cancel).await;
        self.inner
            .drivers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        status
    }

    async fn drive_inner(
        &self,
        record: WorkflowRecord,
        cancel: CancellationToken,
    ) -> WorkflowStatus {
        let repo = self.inner.store.scope(&record.tenant).workflows();
        let prepared = (|| {
            let def = parse_definition(&record.definition).map_err(|e| e.to_string())?;
            let (compiled, _) = validate(&def).map_err(|e| e.to_string())?;
            let principal = principal_from_json(&record.principal)?;
            let state: RunState = serde_json::from_value(record.state.clone())
                .map_err(|e| format!("stored state: {e}"))?;
            Ok::<_, String>((compiled, principal, state))
        })();
        let (compiled, principal, state) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = repo
                    .finish(
                        &record.id,
                        self.owner(),
                        WorkflowStatus::Failed,
                        Some(&e),
                        self.now(),
                    )
                    .await;
                return WorkflowStatus::Failed;
            }
        };
        let driver = Driver {
            engine: self,
            repo,
            id: record.id.clone(),
            compiled,
            identity: Identity {
                tenant: record.tenant.to_string(),
                principal,
            },
            input: record.input.clone(),
            cancel,
        };
        driver.drive(state).await
    }

    fn spawn_driver(&self, tenant: TenantId, id: String) {
        let engine = self.clone();
        tokio::spawn(async move {
            if let Err(e) = engine.drive(&tenant, &id).await {
                tracing::warn!(workflow = %id, error = %e, "driving a workflow failed");
            }
        });
    }

    /// Takes over running workflows nobody drives and drives each in a task
    /// of its own; returns how many.
    pub(crate) async fn resume_orphans(
        &self,
        include_own: bool,
    ) -> Result<usize, OrchestrationError> {
        let claimed = self
            .inner
            .leases
            .claim_orphan_workflows(
                self.owner(),
                include_own,
                100,
                self.now(),
                workflow_lease(self),
            )
            .await?;
        let mut n = 0;
        for record in claimed {
            let Some(cancel) = self.register_driver(&record.id) else {
                continue;
            };
            n += 1;
            tracing::info!(workflow = %record.id, "resuming a workflow from its last checkpoint");
            let engine = self.clone();
            tokio::spawn(async move { engine.drive_registered(record, cancel).await });
        }
        Ok(n)
    }

    /// Pauses a running run after the step in progress.
    pub async fn pause_workflow(
        &self,
        identity: &Identity,
        id: &str,
    ) -> Result<WorkflowRecord, OrchestrationError> {
        self.transition(
            identity,
            id,
            &[WorkflowStatus::Running],
            WorkflowStatus::Paused,
            false,
        )
        .await
    }

    /// Resumes a paused run from its last checkpoint.
    pub async fn resume_workflow(
        &self,
        identity: &Identity,
        id: &str,
    ) -> Result<WorkflowRecord, OrchestrationError> {
        let record = self
            .transition(
                identity,
                id,
                &[WorkflowStatus::Paused],
                WorkflowStatus::Running,
                true,
            )
            .await?;
        self.spawn_driver(record.tenant.clone(), id.to_owned());
        Ok(record)
    }

    /// Cancels a run that has not ended; its step in flight on this
    /// instance is interrupted.
    pub async fn cancel_workflow(
        &self,
        identity: &Identity,
        id: &str,
    ) -> Result<WorkflowRecord, OrchestrationError> {
        let record = self
            .transition(
                identity,
                id,
                &[
                    WorkflowStatus::Created,
                    WorkflowStatus::Running,
                    WorkflowStatus::Paused,
                ],
                WorkflowStatus::Cancelled,
                true,
            )
            .await?;
        if let Some(token) = self
            .inner
            .drivers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            token.cancel();
        }
        Ok(record)
    }

    /// Rolls a run that is not running (paused, failed, ended) back to a
    /// checkpoint: runs the compensations of the phases completed after it
    /// (latest first), restores its state and resumes from there in the
    /// background.
    pub async fn rollback_workflow(
        &self,
        identity: &Identity,
        id: &str,
        checkpoint_id: i64,
    ) -> Result<WorkflowRecord, OrchestrationError> {
        let repo = self.workflows(identity)?;
        let record = repo
            .get(id)
            .await?
            .ok_or_else(|| OrchestrationError::NotFound {
                kind: "workflow",
                id: id.to_owned(),
            })?;
        if matches!(
            record.status,
            WorkflowStatus::Running | WorkflowStatus::Created
        ) {
            return Err(OrchestrationError::Conflict(format!(
                "workflow {id} is {}; pause it (or let it end) before rolling back",
                record.status.as_str()
            )));
        }
        let checkpoint = repo.checkpoint(id, checkpoint_id).await?.ok_or_else(|| {
            OrchestrationError::NotFound {
                kind: "checkpoint",
                id: checkpoint_id.to_string(),
            }
        })?;
        let claimed = repo
            .claim(
                id,
                record.status,
                self.owner(),
                self.now(),
                workflow_lease(self),
            )
            .await?
            .ok_or_else(|| {
                OrchestrationError::Conflict(format!("workflow {id} is held by another engine"))
            })?;
        let current: RunState = serde_json::from_value(claimed.state.clone())
            .map_err(|e| OrchestrationError::invalid("state", e.to_string()))?;
        let target: RunState = serde_json::from_value(checkpoint.state.clone())
            .map_err(|e| OrchestrationError::invalid("checkpoint", e.to_string()))?;
        let common = current
            .completed
            .iter()
            .zip(&target.completed)
            .take_while(|(a, b)| a == b)
            .count();
        let mut undo: Vec<String> = current.completed[common..].to_vec();
        // The phase the run stopped in had started doing things too.
        if let Some(c) = &current.cursor
            && (!c.done.is_empty() || c.iteration > 1)
            && target.cursor.as_ref().is_none_or(|t| t != c)
        {
            undo.push(c.phase.clone());
        }
        let def = parse_definition(&claimed.definition).map_err(OrchestrationError::Definition)?;
        let (compiled, _) = validate(&def).map_err(OrchestrationError::Definition)?;
        let principal = principal_from_json(&claimed.principal)
            .map_err(|e| OrchestrationError::invalid("principal", e))?;
        let driver = Driver {
            engine: self,
            repo: repo.clone(),
            id: id.to_owned(),
            compiled,
            identity: Identity {
                tenant: claimed.tenant.to_string(),
                principal,
            },
            input: claimed.input.clone(),
            cancel: self.inner.stop.child_token(),
        };
        let started = self.now();
        let failures = driver.compensate(&current, &undo).await;
        driver
            .record(HistoryEntry {
                output: Some(json!({ "checkpoint": checkpoint_id, "compensated": undo })),
                error: (!failures.is_empty()).then(|| failures.join("; ")),
                ..entry(
                    "rolled_back_to_checkpoint",
                    Some(&checkpoint.phase),
                    checkpoint.step.as_deref(),
                    started,
                    self.now(),
                )
            })
            .await;
        if !repo
            .restore(
                id,
                self.owner(),
                &checkpoint.state,
                &checkpoint.phase,
                self.now(),
            )
            .await?
        {
            return Err(OrchestrationError::Conflict(format!(
                "workflow {id} was taken by another engine during the rollback"
            )));
        }
        let restored = repo
            .get(id)
            .await?
            .ok_or_else(|| OrchestrationError::NotFound {
                kind: "workflow",
                id: id.to_owned(),
            })?;
        let engine = self.clone();
        let resumed = restored.clone();
        tokio::spawn(async move { engine.drive_claimed(resumed).await });
        Ok(restored)
    }

    async fn get_run(
        &self,
        identity: &Identity,
        id: &str,
    ) -> Result<WorkflowRecord, OrchestrationError> {
        self.workflows(identity)?
            .get(id)
            .await?
            .ok_or_else(|| OrchestrationError::NotFound {
                kind: "workflow",
                id: id.to_owned(),
            })
    }

    /// A run with its history and checkpoints.
    pub async fn get_workflow(
        &self,
        identity: &Identity,
        id: &str,
    ) -> Result<WorkflowView, OrchestrationError> {
        let run = self.get_run(identity, id).await?;
        let repo = self.workflows(identity)?;
        let history = repo.history(id, 10_000).await?;
        let checkpoints = repo
            .checkpoints(id, 10_000)
            .await?
            .into_iter()
            .map(|c: CheckpointRecord| {
                json!({ "id": c.id, "kind": c.kind, "phase": c.phase, "step": c.step, "created_at_ms": c.created_at_ms })
            })
            .collect();
        Ok(WorkflowView {
            run,
            history,
            checkpoints,
        })
    }

    /// The caller's runs, newest first.
    pub async fn list_workflows(
        &self,
        identity: &Identity,
        status: Option<WorkflowStatus>,
        limit: u32,
    ) -> Result<Vec<WorkflowRecord>, OrchestrationError> {
        Ok(self.workflows(identity)?.list(status, limit).await?)
    }

    /// The checkpoints of a run, with their state.
    pub async fn workflow_checkpoints(
        &self,
        identity: &Identity,
        id: &str,
    ) -> Result<Vec<CheckpointRecord>, OrchestrationError> {
        self.get_run(identity, id).await?;
        Ok(self.workflows(identity)?.checkpoints(id, 10_000).await?)
    }
}
