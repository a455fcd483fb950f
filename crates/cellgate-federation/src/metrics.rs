//! Prometheus counters of the federation: failovers, cache use and
//! escalations, per upstream.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The upstream a count is about (upstream names are bounded by the
/// configuration, so the label set is too).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub upstream: String,
}

impl UpstreamLabel {
    pub fn new(upstream: &str) -> Self {
        Self {
            upstream: upstream.to_owned(),
        }
    }
}

/// Counters of one [`crate::Federation`] ([`crate::Federation::metrics`]).
/// Register them with [`FederationMetrics::register`], for example inside
/// `cellgate_kernel::Metrics::with_registry`. They can also be read
/// directly (`metrics.escalations.get_or_create(&label).get()`).
#[derive(Debug, Default)]
pub struct FederationMetrics {
    /// Calls tried again on another replica after a failure.
    pub retries: Family<UpstreamLabel, Counter>,
    /// Tool calls answered from the result cache.
    pub cache_hits: Family<UpstreamLabel, Counter>,
    /// Cacheable tool calls that went to the upstream.
    pub cache_misses: Family<UpstreamLabel, Counter>,
    /// Incidents that escalated (reached `restart.alert_after` failed repairs).
    pub escalations: Family<UpstreamLabel, Counter>,
    /// Escalation webhooks that could not be delivered.
    pub webhook_failures: Family<UpstreamLabel, Counter>,
}

impl FederationMetrics {
    /// Registers every counter under `federation_…` (so
    /// `cellgate_federation_…` in a registry with the `cellgate` prefix).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("federation");
        r.register(
            "retries",
            "Upstream calls tried again on another replica, by upstream",
            self.retries.clone(),
        );
        r.register(
            "cache_hits",
            "Tool calls answered from the result cache, by upstream",
            self.cache_hits.clone(),
        );
        r.register(
            "cache_misses",
            "Cacheable tool calls that went to the upstream, by upstream",
            self.cache_misses.clone(),
        );
        r.register(
            "escalations",
            "Upstream incidents escalated after repeated failed repairs, by upstream",
            self.escalations.clone(),
        );
        r.register(
            "webhook_failures",
            "Escalation webhooks that could not be delivered, by upstream",
            self.webhook_failures.clone(),
        );
    }

    pub(crate) fn count(family: &Family<UpstreamLabel, Counter>, upstream: &str) {
        family.get_or_create(&UpstreamLabel::new(upstream)).inc();
    }
}

/// How many `upstream` has in `family` (for tests and status pages).
pub fn counted(family: &Family<UpstreamLabel, Counter>, upstream: &str) -> u64 {
    family.get_or_create(&UpstreamLabel::new(upstream)).get()
}
