//! Incidents: what went wrong with an upstream, what was done about it, and
//! how it ended.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// The process exited, or the connection was lost.
    Exited,
    /// Health checks failed: the upstream stopped answering `ping`.
    Hung,
    /// Starting or connecting (including the `initialize` handshake) failed.
    ConnectFailed,
    /// The upstream broke the protocol (a message over the size limit, …).
    ProtocolViolation,
    /// The circuit breaker opened after repeated failed calls.
    CircuitOpened,
    /// A tool's definition differs from its pinned one.
    ToolDefinitionChanged,
    /// Two upstreams offer an item under the same exposed name.
    NameCollision,
}

/// How an incident stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentOutcome {
    /// Still going on: repairs are being attempted, or approval is awaited.
    Open,
    /// The upstream works again (restarted, reconnected, circuit closed).
    Repaired,
    /// Repairs were given up (restart policy `never`, or `max_attempts` reached).
    GaveUp,
    /// An operator approved the changed tool definition.
    Approved,
    /// Nothing to repair: recorded for the record (a warning-mode pin
    /// change, a name collision).
    Noted,
}

/// One incident. It is recorded when it opens and recorded again, under the
/// same `id`, each time it changes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    /// Unique within this process, increasing.
    pub id: u64,
    pub upstream: String,
    pub kind: IncidentKind,
    /// What was observed, for a human.
    pub detail: String,
    /// The tool concerned, for pin changes and collisions.
    pub tool: Option<String>,
    pub started_at: SystemTime,
    pub updated_at: SystemTime,
    /// Restart or reconnect attempts made so far.
    pub repair_attempts: u32,
    pub outcome: IncidentOutcome,
}

/// Where incidents go. [`IncidentSink::record`] is called when an incident
/// opens and again (same id) on every change, so an implementation upserts
/// by id. It must not block: a store-backed sink queues the write.
pub trait IncidentSink: Send + Sync + 'static {
    fn record(&self, incident: &Incident);
}

/// The most recent incidents, in memory.
#[derive(Debug)]
pub struct MemoryIncidents {
    capacity: usize,
    items: Mutex<VecDeque<Incident>>,
}

impl MemoryIncidents {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            items: Mutex::new(VecDeque::new()),
        }
    }

    /// Oldest first.
    pub fn list(&self) -> Vec<Incident> {
        self.items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

impl IncidentSink for MemoryIncidents {
    fn record(&self, incident: &Incident) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = items.iter_mut().find(|i| i.id == incident.id) {
            *existing = incident.clone();
            return;
        }
        if items.len() == self.capacity {
            items.pop_front();
        }
        items.push_back(incident.clone());
    }
}

/// Opens and updates incidents, sending each version to every sink.
pub(crate) struct Incidents {
    next_id: AtomicU64,
    memory: Arc<MemoryIncidents>,
    sinks: Vec<Arc<dyn IncidentSink>>,
}

impl Incidents {
    pub(crate) fn new(capacity: usize, sinks: Vec<Arc<dyn IncidentSink>>) -> Self {
        Self {
            next_id: AtomicU64::new(1),
            memory: Arc::new(MemoryIncidents::new(capacity)),
            sinks,
        }
    }

    pub(crate) fn memory(&self) -> &MemoryIncidents {
        &self.memory
    }

    pub(crate) fn open(
        &self,
        upstream: &str,
        kind: IncidentKind,
        tool: Option<&str>,
        detail: String,
        outcome: IncidentOutcome,
    ) -> Incident {
        let now = SystemTime::now();
        let incident = Incident {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            upstream: upstream.to_owned(),
            kind,
            detail,
            tool: tool.map(str::to_owned),
            started_at: now,
            updated_at: now,
            repair_attempts: 0,
            outcome,
        };
        self.emit(&incident);
        incident
    }

    /// Records a changed incident (stamping `updated_at`).
    pub(crate) fn update(&self, incident: &mut Incident) {
        incident.updated_at = SystemTime::now();
        self.emit(incident);
    }

    fn emit(&self, incident: &Incident) {
        self.memory.record(incident);
        for s in &self.sinks {
            s.record(incident);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_upserts_by_id_and_keeps_the_latest() {
        let inc = Incidents::new(2, Vec::new());
        let mut a = inc.open(
            "u",
            IncidentKind::Exited,
            None,
            "x".into(),
            IncidentOutcome::Open,
        );
        a.repair_attempts = 2;
        a.outcome = IncidentOutcome::Repaired;
        inc.update(&mut a);
        let list = inc.memory().list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].repair_attempts, 2);
        assert_eq!(list[0].outcome, IncidentOutcome::Repaired);
        inc.open(
            "u",
            IncidentKind::Hung,
            None,
            "y".into(),
            IncidentOutcome::Open,
        );
        inc.open(
            "v",
            IncidentKind::Hung,
            None,
            "z".into(),
            IncidentOutcome::Open,
        );
        let list = inc.memory().list();
        assert_eq!(
            list.iter().map(|i| i.detail.as_str()).collect::<Vec<_>>(),
            ["y", "z"]
        );
        assert!(list[0].id < list[1].id);
    }
}
