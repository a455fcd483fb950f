//! The orchestration engine of cellgate: a durable task queue, phased
//! workflows with checkpoints and rollback, and external worker nodes that
//! receive work by the resources they offer. Every task and every workflow
//! step is a tool call made through a [`ToolRunner`] — in cellgate the trust
//! pipeline itself — as the principal that submitted it.
//!
//! State lives in the tenant-scoped store (`cellgate-store`: tasks,
//! workflows, checkpoints, history, nodes), on SQLite or PostgreSQL. Tasks
//! are delivered at least once: a worker leases them with a visibility
//! timeout and heartbeats; a lease that is not renewed expires and the task
//! is delivered again, while the lease (owner + attempt) fences the old
//! worker's completion off. Idempotency keys make resubmission safe, and
//! every call carries the task id and attempt in `_meta` (`cellgate/task`).
//!
//! Not here: authorization of who may submit what (the pipeline decides
//! when the tool runs), transports, the CLI and the REST routes (the binary
//! and `cellgate-rest` reach the engine through [`OrchestrationProvider`]).

mod clock;
mod engine;
mod error;
mod nodes;
mod provider;
mod runner;
pub mod workflow;

pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{
    BackgroundWorkers, Engine, EngineConfig, MaintenanceReport, TaskDefaults, TaskRequest,
    WorkReport, backoff_ms,
};
pub use error::OrchestrationError;
pub use nodes::{NodeRegistration, NodeView, TaskReport};
pub use provider::{ORCHESTRATION_TOOLS, OrchestrationProvider};
pub use runner::{DeferredPipeline, ProgressSink, TaskProgress, ToolCall, ToolRunner, step_output};

/// The five-phase template (planning → validation → execution →
/// verification → completion), as shipped in `workflows/five-phase.json`.
pub const FIVE_PHASE_TEMPLATE: &str = include_str!("../workflows/five-phase.json");
