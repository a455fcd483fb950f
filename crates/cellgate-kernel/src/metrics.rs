use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodOutcome {
    pub method: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

/// One metered call, handed to whoever persists call records (the store's
/// call log) through a bounded channel so metering never waits on I/O.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRecord {
    pub tenant: Arc<str>,
    pub principal: Arc<str>,
    pub method: &'static str,
    pub target: Option<String>,
    pub outcome: &'static str,
    pub error_code: Option<i64>,
    pub latency_us: u64,
    pub at_ms: i64,
}

/// The process's metrics. One registry, rendered as Prometheus text at `/metrics`.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub requests: Family<MethodOutcome, Counter>,
    pub latency: Family<MethodLabel, Histogram>,
    pub active_sessions: Gauge,
    /// Call records dropped because the persisting side fell behind.
    pub records_dropped: Counter,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("cellgate");
        let requests = Family::<MethodOutcome, Counter>::default();
        let latency = Family::<MethodLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ])
        });
        let active_sessions = Gauge::default();
        let records_dropped = Counter::default();
        registry.register(
            "requests",
            "MCP requests by method and outcome",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "MCP request latency by method",
            latency.clone(),
        );
        registry.register(
            "active_sessions",
            "Open MCP sessions",
            active_sessions.clone(),
        );
        registry.register(
            "call_records_dropped",
            "Call records not persisted because the writer fell behind",
            records_dropped.clone(),
        );
        Arc::new(Self {
            registry: Mutex::new(registry),
            requests,
            latency,
            active_sessions,
            records_dropped,
        })
    }

    /// Lets other subsystems register their own metrics in the same registry.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.registry.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}
