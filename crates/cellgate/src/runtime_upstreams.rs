//! Upstreams added at run time (`add_upstream`, `remove_upstream`, REST
//! `/api/v1/tools/add_upstream`): kept in the store as documents of the
//! operator tenant, sealed with the instance key (`cellgate_store::sealed`,
//! ChaCha20-Poly1305) because their headers and environment carry
//! credentials, and served together with the upstreams
//! of `cellgate.toml`. The file stays the source of truth for what it
//! declares: a run-time upstream cannot take a declared name, and removing a
//! declared upstream is done in the file.

use std::sync::{Arc, Mutex, OnceLock};

use cellgate_admin::RuntimeUpstreams;
use cellgate_config::{FederationConfig, UpstreamConfig, check_federation};
use cellgate_federation::Federation;
use cellgate_kernel::BoxFuture;
use cellgate_store::{Documents, SecretSeal, Store, TenantId};
use serde_json::{Value, json};

const COLLECTION: &str = "federation.upstreams";
/// Most run-time upstreams; a listing reads them in one page.
const MAX_STORED: u32 = 500;

/// Where the federation's upstreams come from: the configuration file and
/// the store. Every change goes through [`UpstreamSources::apply`], one at
/// a time.
pub struct UpstreamSources {
    docs: Documents,
    seal: SecretSeal,
    file: Mutex<(FederationConfig, Vec<UpstreamConfig>)>,
    federation: OnceLock<Arc<Federation>>,
    apply_lock: tokio::sync::Mutex<()>,
}

impl UpstreamSources {
    pub fn new(
        store: &Store,
        operator: &TenantId,
        seal: SecretSeal,
        federation: FederationConfig,
        file: Vec<UpstreamConfig>,
    ) -> Arc<Self> {
        Arc::new(UpstreamSources {
            docs: store.scope(operator).documents(),
            seal,
            file: Mutex::new((federation, file)),
            federation: OnceLock::new(),
            apply_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn attach(&self, federation: Arc<Federation>) {
        let _ = self.federation.set(federation);
    }

    fn file(&self) -> (FederationConfig, Vec<UpstreamConfig>) {
        self.file.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The stored upstreams. An entry that does not open is skipped with an
    /// error in the log, so one bad entry cannot keep the others down.
    pub async fn stored(&self) -> Result<Vec<UpstreamConfig>, String> {
        let docs = self
            .docs
            .list(COLLECTION, None, MAX_STORED)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for d in docs {
            let opened = d.value["sealed"]
                .as_str()
                .ok_or_else(|| "no sealed field".to_owned())
                .and_then(|s| self.seal.open(&d.key, s).map_err(|e| e.to_string()))
                .and_then(|plain| {
                    serde_json::from_slice::<UpstreamConfig>(&plain).map_err(|e| e.to_string())
                });
            match opened {
                Ok(u) => out.push(u),
                Err(e) => {
                    tracing::error!(upstream = %d.key, error = %e, "a stored upstream cannot be read; it is not served")
                }
            }
        }
        Ok(out)
    }

    /// The file's upstreams then the stored ones, with the loop guard.
    pub async fn merged(&self) -> Result<(FederationConfig, Vec<UpstreamConfig>), String> {
        let (federation, mut all) = self.file();
        let declared: Vec<String> = all.iter().map(|u| u.name.to_ascii_lowercase()).collect();
        for u in self.stored().await? {
            if declared.contains(&u.name.to_ascii_lowercase()) {
                tracing::warn!(upstream = %u.name, "a stored upstream has the name of one in cellgate.toml; the file's wins");
            } else {
                all.push(u);
            }
        }
        let all = crate::app::with_loop_guard(all).map_err(|e| format!("{e:#}"))?;
        Ok((federation, all))
    }

    /// Reconciles the federation with the merged sources.
    pub async fn apply(&self) -> Result<cellgate_federation::ReconcileSummary, String> {
        let Some(federation) = self.federation.get() else {
            return Err("the federation is not running".into());
        };
        let _one_at_a_time = self.apply_lock.lock().await;
        let (config, upstreams) = self.merged().await?;
        federation
            .reconcile(config, upstreams)
            .await
            .map_err(|e| e.to_string())
    }

    /// A reload of the configuration file: new file upstreams, then apply.
    pub async fn set_file(
        &self,
        federation: FederationConfig,
        upstreams: Vec<UpstreamConfig>,
    ) -> Result<cellgate_federation::ReconcileSummary, String> {
        let previous = std::mem::replace(
            &mut *self.file.lock().unwrap_or_else(|e| e.into_inner()),
            (federation, upstreams),
        );
        let applied = self.apply().await;
        if applied.is_err() {
            // Refused as a whole: the running file configuration stays.
            *self.file.lock().unwrap_or_else(|e| e.into_inner()) = previous;
        }
        applied
    }

    async fn add(&self, entry: Value, replace: bool) -> Result<Value, String> {
        let upstream: UpstreamConfig = serde_path_to_error::deserialize(entry)
            .map_err(|e| format!("upstream.{}: {}", e.path(), e.inner()))?;
        let name = upstream.name.clone();
        let (federation, file) = self.file();
        if file.iter().any(|u| u.name.eq_ignore_ascii_case(&name)) {
            return Err(format!(
                "upstream {name:?} is declared in cellgate.toml; change it there"
            ));
        }
        let mut stored = self.stored().await?;
        let existing = stored
            .iter()
            .position(|u| u.name.eq_ignore_ascii_case(&name));
        match (existing, replace) {
            (Some(_), false) => {
                return Err(format!(
                    "upstream {name:?} exists; pass replace=true to change it"
                ));
            }
            (Some(i), true) => {
                stored.remove(i);
            }
            (None, _) => {}
        }
        let mut candidate = file;
        candidate.extend(stored);
        candidate.push(upstream.clone());
        check_federation(&federation, &candidate).map_err(|problems| problems.join("; "))?;
        let plain = serde_json::to_vec(&upstream).map_err(|e| e.to_string())?;
        let previous = self
            .docs
            .get(COLLECTION, &name)
            .await
            .map_err(|e| e.to_string())?;
        self.docs
            .put(
                COLLECTION,
                &name,
                &json!({ "sealed": self.seal.seal(&name, &plain).map_err(|e| e.to_string())? }),
            )
            .await
            .map_err(|e| e.to_string())?;
        match self.apply().await {
            Ok(summary) => Ok(json!({ "upstream": name, "applied": summary })),
            Err(e) => {
                // Nothing half-done: the store goes back to what it held.
                let restored = match previous {
                    Some(d) => self.docs.put(COLLECTION, &name, &d.value).await.map(|_| ()),
                    None => self.docs.delete(COLLECTION, &name).await.map(|_| ()),
                };
                if let Err(r) = restored {
                    tracing::error!(upstream = %name, error = %r, "undoing a refused upstream failed");
                }
                Err(e)
            }
        }
    }

    async fn remove(&self, name: &str) -> Result<Value, String> {
        let (_, file) = self.file();
        if file.iter().any(|u| u.name.eq_ignore_ascii_case(name)) {
            return Err(format!(
                "upstream {name:?} is declared in cellgate.toml; remove it there"
            ));
        }
        let removed = self
            .docs
            .delete(COLLECTION, name)
            .await
            .map_err(|e| e.to_string())?;
        if !removed {
            return Err(format!("no upstream named {name:?} was added at run time"));
        }
        let summary = self.apply().await?;
        Ok(json!({ "upstream": name, "applied": summary }))
    }
}

impl RuntimeUpstreams for UpstreamSources {
    fn add(&self, entry: Value, replace: bool) -> BoxFuture<'_, Result<Value, String>> {
        Box::pin(UpstreamSources::add(self, entry, replace))
    }

    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Value, String>> {
        Box::pin(UpstreamSources::remove(self, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;

    #[test]
    fn sealed_entries_open_only_under_their_name_and_key() {
        let dir = std::env::temp_dir().join(format!("cellgate-seal-{}", std::process::id()));
        let seal = SecretSeal::load_or_create(&dir).unwrap();
        let sealed = seal.seal("gh", b"Authorization: Bearer s3cret").unwrap();
        assert!(!sealed.contains("s3cret"));
        assert_eq!(
            seal.open("gh", &sealed).unwrap(),
            b"Authorization: Bearer s3cret"
        );
        assert!(
            seal.open("other", &sealed).is_err(),
            "moved to another name"
        );
        let mut tampered = B64.decode(&sealed).unwrap();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(seal.open("gh", &B64.encode(tampered)).is_err());
        // The same file gives the same key; another directory another key.
        let again = SecretSeal::load_or_create(&dir).unwrap();
        assert!(again.open("gh", &sealed).is_ok());
        let other_dir = dir.join("other");
        let other = SecretSeal::load_or_create(&other_dir).unwrap();
        assert!(other.open("gh", &sealed).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join("upstream-secrets.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
