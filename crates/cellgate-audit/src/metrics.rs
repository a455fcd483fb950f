//! Prometheus metrics of the audit log.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why the audit layer refused a call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabel {
    /// `full`, `unavailable` or `closed` (see [`crate::Refusal`]).
    pub reason: String,
}

/// Counters of the audit writer and stage. Register them with
/// [`AuditMetrics::register`] (for example inside
/// `cellgate_kernel::Metrics::with_registry`).
#[derive(Debug, Default)]
pub struct AuditMetrics {
    /// Entries committed to the chain.
    pub entries_written: Counter,
    /// Transactions (batches) committed.
    pub batches_written: Counter,
    /// Batch transactions that failed and were retried.
    pub write_failures: Counter,
    /// Signed checkpoints stored.
    pub checkpoints_written: Counter,
    /// Calls refused because the audit log could not take their entry.
    pub calls_refused: Family<RefusalLabel, Counter>,
    /// Calls whose future was dropped before they finished; they are
    /// recorded as cancelled errors.
    pub calls_abandoned: Counter,
    /// Accepted entries that were never stored because the writer was
    /// stopped while the store was failing. Zero unless a shutdown timed out.
    pub entries_lost: Counter,
    /// 1 while the writer's last attempt to store a batch failed.
    pub sink_down: Gauge,
}

impl AuditMetrics {
    pub fn new() -> Arc<AuditMetrics> {
        Arc::new(AuditMetrics::default())
    }

    /// Registers every metric under `audit_…` (so `cellgate_audit_…` in a
    /// registry with the `cellgate` prefix).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("audit");
        r.register(
            "entries_written",
            "Audit entries committed to the chain",
            self.entries_written.clone(),
        );
        r.register(
            "batches_written",
            "Audit batches committed (one transaction each)",
            self.batches_written.clone(),
        );
        r.register(
            "write_failures",
            "Audit batch transactions that failed and were retried",
            self.write_failures.clone(),
        );
        r.register(
            "checkpoints_written",
            "Signed audit checkpoints stored",
            self.checkpoints_written.clone(),
        );
        r.register(
            "calls_refused",
            "Calls refused because the audit log could not take their entry, by reason",
            self.calls_refused.clone(),
        );
        r.register(
            "calls_abandoned",
            "Calls dropped before they finished, recorded as cancelled",
            self.calls_abandoned.clone(),
        );
        r.register(
            "entries_lost",
            "Accepted audit entries not stored because the writer was stopped while failing",
            self.entries_lost.clone(),
        );
        r.register(
            "sink_down",
            "1 while the audit writer cannot store entries",
            self.sink_down.clone(),
        );
    }

    pub(crate) fn refused(&self, reason: &str) {
        self.calls_refused
            .get_or_create(&RefusalLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// How many calls were refused for `reason` (`full`, `unavailable`,
    /// `closed`).
    pub fn refused_count(&self, reason: &str) -> u64 {
        self.calls_refused
            .get_or_create(&RefusalLabel {
                reason: reason.to_owned(),
            })
            .get()
    }
}
