//! External worker nodes: they register what they offer, heartbeat, lease
//! the tasks they can run and report how each ended.

use std::collections::BTreeMap;

use cellgate_kernel::Identity;
use cellgate_store::{NewNode, NodeRecord, Resources, TaskLease, TaskOutcome, TaskRecord};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::OrchestrationError;
use crate::engine::{Engine, ms, tenant_of};

/// What a node registers (the `register_node` tool's arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeRegistration {
    /// Stable id of the node in the tenant (1-64 of letters, digits, `-_.:`).
    pub id: String,
    /// CPU cores offered (fractions allowed).
    #[serde(default)]
    pub cpu: f64,
    #[serde(default)]
    pub memory_mb: i64,
    #[serde(default)]
    pub gpus: i64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Queues it takes tasks from (default: the engine's default queue).
    #[serde(default)]
    pub queues: Vec<String>,
}

/// A node as listed, with whether it is alive.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub node: NodeRecord,
    pub online: bool,
}

/// How a node's attempt ended (the `complete_node_task` tool's arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskReport {
    pub node_id: String,
    pub task_id: String,
    /// The attempt the lease was handed out with.
    pub attempt: i64,
    /// The result (a `CallToolResult` or any JSON) when it succeeded.
    #[serde(default)]
    pub result: Option<Value>,
    /// Why it failed; retried while retries remain.
    #[serde(default)]
    pub error: Option<String>,
}

impl Engine {
    pub async fn register_node(
        &self,
        identity: &Identity,
        reg: &NodeRegistration,
    ) -> Result<NodeRecord, OrchestrationError> {
        if !reg.cpu.is_finite() || reg.cpu < 0.0 || reg.cpu > 1.0e6 {
            return Err(OrchestrationError::invalid(
                "cpu",
                "must be a number of cores, 0 or more",
            ));
        }
        let queues = if reg.queues.is_empty() {
            vec![self.config().defaults.queue.clone()]
        } else {
            reg.queues.clone()
        };
        let node = NewNode {
            id: reg.id.clone(),
            capacity: Resources {
                cpu_millis: (reg.cpu * 1000.0).round() as i64,
                memory_mb: reg.memory_mb,
                gpus: reg.gpus,
                labels: reg.labels.clone(),
            },
            queues,
            registered_by: identity.principal.id.to_string(),
        };
        Ok(self
            .store()
            .scope(&tenant_of(identity)?)
            .nodes()
            .register(&node, self.now())
            .await?)
    }

    /// Records that the node is alive and renews the leases of its tasks.
    pub async fn heartbeat_node(
        &self,
        identity: &Identity,
        node_id: &str,
    ) -> Result<(NodeRecord, u64), OrchestrationError> {
        let now = self.now();
        let until = now.saturating_add(ms(self.config().visibility_timeout));
        self.store()
            .scope(&tenant_of(identity)?)
            .nodes()
            .heartbeat(node_id, now, until)
            .await?
            .ok_or_else(|| OrchestrationError::NotFound {
                kind: "node",
                id: node_id.to_owned(),
            })
    }

    /// Leases up to `max` tasks of `queue` that fit the node (its capacity
    /// minus what it already runs, and its labels). The node must heartbeat
    /// within the visibility timeout to keep them.
    pub async fn lease_node_tasks(
        &self,
        identity: &Identity,
        node_id: &str,
        queue: Option<&str>,
        max: u32,
    ) -> Result<Vec<TaskRecord>, OrchestrationError> {
        let queue = queue.unwrap_or(&self.config().defaults.queue).to_owned();
        Ok(self
            .store()
            .scope(&tenant_of(identity)?)
            .tasks()
            .lease_for_node(
                node_id,
                &queue,
                max,
                self.now(),
                ms(self.config().visibility_timeout),
            )
            .await?)
    }

    /// Records how a node's attempt ended; `false` if its lease was no
    /// longer current (expired and handed on, or cancelled).
    pub async fn complete_node_task(
        &self,
        identity: &Identity,
        report: &TaskReport,
    ) -> Result<bool, OrchestrationError> {
        let tenant = tenant_of(identity)?;
        let tasks = self.store().scope(&tenant).tasks();
        let task =
            tasks
                .get(&report.task_id)
                .await?
                .ok_or_else(|| OrchestrationError::NotFound {
                    kind: "task",
                    id: report.task_id.clone(),
                })?;
        let outcome = match (&report.result, &report.error) {
            (Some(result), None) => TaskOutcome::Succeeded {
                result: result.clone(),
            },
            (None, Some(error)) => {
                // Judge retries by the attempt being reported.
                let mut at = task.clone();
                at.attempts = report.attempt;
                self.failure(&at, error.clone(), false)
            }
            _ => {
                return Err(OrchestrationError::invalid(
                    "result",
                    "give exactly one of result and error",
                ));
            }
        };
        let lease = TaskLease {
            tenant,
            task_id: report.task_id.clone(),
            owner: format!("node:{}", report.node_id),
            attempt: report.attempt,
        };
        Ok(tasks.finish_for_node(&lease, &outcome, self.now()).await?)
    }

    /// The tenant's nodes; with `requirements`, only the online ones whose
    /// capacity satisfies them (discovery for placement).
    pub async fn list_nodes(
        &self,
        identity: &Identity,
        requirements: Option<&Resources>,
    ) -> Result<Vec<NodeView>, OrchestrationError> {
        let stale = ms(self.config().node_stale_after);
        let now = self.now();
        let nodes = self
            .store()
            .scope(&tenant_of(identity)?)
            .nodes()
            .list(1000)
            .await?;
        Ok(nodes
            .into_iter()
            .map(|node| NodeView {
                online: now.saturating_sub(node.last_heartbeat_ms) <= stale,
                node,
            })
            .filter(|v| requirements.is_none_or(|r| v.online && v.node.capacity.satisfies(r)))
            .collect())
    }
}
