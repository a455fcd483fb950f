//! Federation state kept in the store: pinned tool fingerprints (so a
//! restart does not forget what was approved, and a changed tool stays
//! blocked) and incidents (crashes, hangs, repairs, pin changes), both as
//! documents of the operator tenant.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cellgate_federation::{Incident, IncidentSink, PinStore, PinStoreError};
use cellgate_kernel::BoxFuture;
use cellgate_store::{Documents, Store, TenantId};
use serde_json::json;
use sha2::{Digest, Sha256};

const PINS: &str = "federation.pins";
const INCIDENTS: &str = "federation.incidents";

/// Pins in the store; several replicas share them.
pub struct StorePins {
    docs: Documents,
}

impl StorePins {
    pub fn new(store: &Store, operator: &TenantId) -> Self {
        Self {
            docs: store.scope(operator).documents(),
        }
    }
}

/// Upstream names are `[A-Za-z0-9_-]`, so `:` separates; the tool name is
/// hashed so any name (of any length) fits a document key.
fn pin_key(upstream: &str, tool: &str) -> String {
    let digest = Sha256::digest(tool.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{upstream}:{hex}")
}

impl PinStore for StorePins {
    fn get<'a>(
        &'a self,
        upstream: &'a str,
        tool: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, PinStoreError>> {
        Box::pin(async move {
            let doc = self
                .docs
                .get(PINS, &pin_key(upstream, tool))
                .await
                .map_err(|e| PinStoreError(e.to_string()))?;
            Ok(doc.and_then(|d| {
                // A stored pin for another tool with a colliding key prefix
                // would be a 64-bit hash collision; still, check the name.
                (d.value["tool"] == tool)
                    .then(|| d.value["fingerprint"].as_str().map(str::to_owned))
                    .flatten()
            }))
        })
    }

    fn set<'a>(
        &'a self,
        upstream: &'a str,
        tool: &'a str,
        fingerprint: &'a str,
    ) -> BoxFuture<'a, Result<(), PinStoreError>> {
        Box::pin(async move {
            self.docs
                .put(
                    PINS,
                    &pin_key(upstream, tool),
                    &json!({ "upstream": upstream, "tool": tool, "fingerprint": fingerprint }),
                )
                .await
                .map(|_| ())
                .map_err(|e| PinStoreError(e.to_string()))
        })
    }
}

/// Incidents in the store, keyed by process start and incident id so that
/// later updates of one incident replace its document.
pub struct StoreIncidents {
    docs: Documents,
    boot: u128,
}

impl StoreIncidents {
    pub fn new(store: &Store, operator: &TenantId) -> Arc<Self> {
        Arc::new(Self {
            docs: store.scope(operator).documents(),
            boot: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
        })
    }
}

impl IncidentSink for StoreIncidents {
    fn record(&self, incident: &Incident) {
        // Must not block the federation: the write is queued on the runtime.
        let docs = self.docs.clone();
        let key = format!("{}-{:010}", self.boot, incident.id);
        let value = serde_json::to_value(incident)
            .unwrap_or_else(|e| json!({ "unserializable": e.to_string() }));
        tokio::spawn(async move {
            if let Err(e) = docs.put(INCIDENTS, &key, &value).await {
                tracing::error!(error = %e, "recording an upstream incident in the store failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellgate_store::StoreConfig;

    #[tokio::test]
    async fn pins_survive_a_new_instance_and_keys_fit_any_tool_name() {
        let dir = std::env::temp_dir().join(format!("cellgate-pins-{}", std::process::id()));
        let config = StoreConfig::Sqlite {
            path: dir.join("t.db"),
        };
        let operator = TenantId::parse("local").unwrap();
        {
            let store = Store::open(&config).await.unwrap();
            store.tenants().ensure(&operator, "Local").await.unwrap();
            let pins = StorePins::new(&store, &operator);
            assert_eq!(pins.get("gh", "create_issue").await.unwrap(), None);
            pins.set("gh", "create_issue", "abc").await.unwrap();
            let long = "t".repeat(1000);
            pins.set("gh", &long, "def").await.unwrap();
            assert_eq!(pins.get("gh", &long).await.unwrap().as_deref(), Some("def"));
            store.close().await;
        }
        let store = Store::open(&config).await.unwrap();
        let pins = StorePins::new(&store, &operator);
        assert_eq!(
            pins.get("gh", "create_issue").await.unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(pins.get("other", "create_issue").await.unwrap(), None);
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
