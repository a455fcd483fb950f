//! Each tenant's installed cells: their records in the store, their
//! module bytes on disk (content-addressed), the lifecycle, calls and
//! behaviour profiles.
//!
//! Records live in the tenant's documents (collection `cells`, keyed by
//! cell name), trusted publishers in `cell_publishers` (keyed by key id),
//! the tenant's cell policy in `cell_policy/policy`, behaviour profiles in
//! `cell_profiles` (keyed by cell name, with the module digest they
//! describe). Module bytes live in
//! `<data_dir>/cells/<tenant>/modules/<sha256>.wasm`, compiled artefacts in
//! `<data_dir>/cells-cache/`; a granted directory that the installer does
//! not bind elsewhere is `<data_dir>/cells/<tenant>/dirs/<cell>/<guest path>`.
//!
//! Granted environment values are sealed at rest with the instance key
//! (`cellgate_store::sealed`), bound to tenant, cell and variable.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cellgate_audit::{AuditEvent, AuditSink, Outcome};
use cellgate_kernel::{Principal, PrincipalKind, ProviderEvent};
use cellgate_store::{Document, SecretSeal, Store, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::Digest as _;
use tokio::sync::broadcast;

use crate::analysis::analyse;
use crate::cache::CompiledCache;
use crate::error::CellError;
use crate::manifest::Manifest;
use crate::profile::{AnomalyAction, BehaviourProfile, ProfileConfig};
use crate::sandbox::{CallReport, Grants, HostDir, PreparedCell, Sandbox, SandboxConfig};
use crate::signing::{self, CellSignature, TrustError, TrustedPublisher};

const CELLS: &str = "cells";
const PUBLISHERS: &str = "cell_publishers";
const POLICY: &str = "cell_policy";
const POLICY_KEY: &str = "policy";
const PROFILES: &str = "cell_profiles";

/// Lifecycle of an installed cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CellState {
    /// Recorded, not yet checked (an install that did not finish).
    Pending,
    /// Signature, digest and analysis passed; not serving.
    Verified,
    /// Serving its tools.
    Active,
    /// Not serving until resumed (by an administrator or after an anomaly).
    Suspended,
    /// Never serving again; can only be uninstalled.
    Revoked,
}

impl fmt::Display for CellState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            CellState::Pending => "PENDING",
            CellState::Verified => "VERIFIED",
            CellState::Active => "ACTIVE",
            CellState::Suspended => "SUSPENDED",
            CellState::Revoked => "REVOKED",
        };
        f.write_str(s)
    }
}

/// A tenant's stored record of one cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CellRecord {
    pub manifest: Manifest,
    pub signature: Option<CellSignature>,
    /// The trusted publisher that signed it (key id and name).
    pub publisher: Option<TrustedPublisher>,
    pub state: CellState,
    /// Why it is in its state (who suspended it, which anomaly, …).
    pub state_reason: Option<String>,
    pub installed_at_ms: i64,
    pub updated_at_ms: i64,
    pub installed_by: String,
    /// Granted guest directory → host directory.
    pub mounts: BTreeMap<String, PathBuf>,
    /// Values of the granted environment variables, sealed with the
    /// instance key for this tenant, cell and variable (never in clear).
    #[serde(default)]
    pub sealed_env: BTreeMap<String, String>,
    /// Values a build before sealing stored in clear; read, and sealed
    /// into `sealed_env` at the record's next write. Never written.
    #[serde(default, rename = "env", skip_serializing_if = "BTreeMap::is_empty")]
    pub unsealed_env: BTreeMap<String, String>,
    /// What the module imports, as `module.name`.
    pub imports: Vec<String>,
}

/// The tenant's cell policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CellPolicy {
    /// Accept cells without a signature (development only).
    #[serde(default)]
    pub allow_unsigned: bool,
}

/// Settings of the cell runtime.
#[derive(Debug, Clone)]
pub struct CellsConfig {
    /// Where module bytes and cell-owned directories live.
    pub data_dir: PathBuf,
    /// Host directories under which an installer may bind a granted
    /// directory. Empty: granted directories are always cell-owned
    /// directories under `data_dir`.
    pub mount_roots: Vec<PathBuf>,
    pub sandbox: SandboxConfig,
    pub profile: ProfileConfig,
    /// Largest accepted module.
    pub max_module_bytes: usize,
    /// How long a tenant's cell list read from the store is trusted before
    /// it is read again (so that changes made by another replica show).
    pub refresh: Duration,
    /// Least time between two writes of one cell's profile to the store
    /// during calls. Transitions and [`CellRegistry::flush_profiles`]
    /// write at once.
    pub profile_save_interval: Duration,
}

impl CellsConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            mount_roots: Vec::new(),
            sandbox: SandboxConfig::default(),
            profile: ProfileConfig::default(),
            max_module_bytes: 32 << 20,
            refresh: Duration::from_secs(5),
            profile_save_interval: Duration::from_secs(10),
        }
    }
}

/// What an installer hands over.
#[derive(Debug, Clone)]
pub struct InstallRequest {
    pub manifest: Manifest,
    pub module: Vec<u8>,
    pub signature: Option<CellSignature>,
    /// Host directories for granted guest directories (must lie under a
    /// configured mount root); unbound grants get cell-owned directories.
    pub mounts: BTreeMap<String, PathBuf>,
    /// Values for granted environment variables.
    pub env: BTreeMap<String, String>,
    /// Go straight to ACTIVE (else stay VERIFIED).
    pub activate: bool,
    /// Replace an installed cell of the same name.
    pub replace: bool,
}

impl InstallRequest {
    pub fn new(manifest: Manifest, module: Vec<u8>, signature: Option<CellSignature>) -> Self {
        Self {
            manifest,
            module,
            signature,
            mounts: BTreeMap::new(),
            env: BTreeMap::new(),
            activate: true,
            replace: false,
        }
    }
}

/// The result of re-verifying one cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reverification {
    pub cell: String,
    /// `ok`, or the state the cell was moved to.
    pub outcome: String,
    pub reason: Option<String>,
}

/// One installed cell as the runtime holds it.
struct LiveCell {
    record: CellRecord,
    grants: Grants,
    /// Why the grants are incomplete (an environment value that does not
    /// open); such a cell is not run.
    grant_problem: Option<GrantProblem>,
    profile: Arc<Mutex<ProfileSlot>>,
}

/// The field at fault and why.
type GrantProblem = (String, String);

/// A profile and whether the store has its latest state.
struct ProfileSlot {
    profile: BehaviourProfile,
    dirty: bool,
    saved_at: Instant,
}

/// A profile as stored: the module it describes, and the profile.
#[derive(Serialize, Deserialize)]
struct StoredProfile {
    sha256: String,
    profile: BehaviourProfile,
}

/// (tenant, cell, module digest): a new module starts a new profile.
type ProfileKey = (String, String, String);

struct TenantCells {
    loaded: Instant,
    cells: HashMap<String, Arc<LiveCell>>,
}

/// The cell runtime: registry, sandbox, profiles. One per process.
pub struct CellRegistry {
    store: Store,
    config: CellsConfig,
    sandbox: Arc<Sandbox>,
    audit: Option<AuditSink>,
    tenants: Mutex<HashMap<String, Arc<TenantCells>>>,
    /// Compiled modules by digest; content-addressed, so shared safely.
    prepared: Mutex<HashMap<String, PreparedCell>>,
    /// Compiled artefacts on disk, for the first call after a restart.
    compiled: CompiledCache,
    /// Seals environment values at rest.
    seal: SecretSeal,
    /// Profiles by (tenant, cell, digest): they outlive cache refreshes,
    /// and are loaded from and saved to the store.
    profiles: Mutex<HashMap<ProfileKey, Arc<Mutex<ProfileSlot>>>>,
    events: broadcast::Sender<ProviderEvent>,
}

impl fmt::Debug for CellRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CellRegistry")
            .field("data_dir", &self.config.data_dir)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The principal of actions the runtime takes on its own (anomalies,
/// re-verification).
pub fn runtime_principal() -> Principal {
    Principal {
        id: Arc::from("cellgate-cells"),
        kind: PrincipalKind::Service,
        roles: Arc::from(Vec::new()),
        scopes: Arc::from(Vec::new()),
        auth: cellgate_kernel::AuthMethod::Local,
        claims: None,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these maps leaves it consistent (each
    // update is a single insert or remove), so a poisoned lock is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CellRegistry {
    /// Builds the sandbox and the registry. `audit` receives lifecycle
    /// events, anomalies and sandbox denials.
    pub fn new(
        store: Store,
        config: CellsConfig,
        audit: Option<AuditSink>,
    ) -> Result<Arc<Self>, CellError> {
        config
            .profile
            .validate()
            .map_err(|m| CellError::invalid("profile", m))?;
        if config.max_module_bytes == 0 {
            return Err(CellError::invalid("max_module_bytes", "must be positive"));
        }
        let sandbox = Arc::new(
            Sandbox::new(config.sandbox.clone()).map_err(|m| CellError::invalid("sandbox", m))?,
        );
        let seal = SecretSeal::load_or_create(&config.data_dir)?;
        let compiled = CompiledCache::new(
            config.data_dir.join("cells-cache"),
            seal.authenticator(crate::cache::KEY_PURPOSE)?,
            sandbox.engine(),
        );
        let (events, _) = broadcast::channel(16);
        Ok(Arc::new(Self {
            store,
            config,
            sandbox,
            audit,
            tenants: Mutex::new(HashMap::new()),
            prepared: Mutex::new(HashMap::new()),
            compiled,
            seal,
            profiles: Mutex::new(HashMap::new()),
            events,
        }))
    }

    pub fn config(&self) -> &CellsConfig {
        &self.config
    }

    /// How many modules and components this registry compiled (rather
    /// than loaded from `<data_dir>/cells-cache/`).
    pub fn compilations(&self) -> u64 {
        self.sandbox.compilations()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ProviderEvent> {
        self.events.subscribe()
    }

    fn tenant_dir(&self, tenant: &TenantId) -> PathBuf {
        self.config.data_dir.join("cells").join(tenant.as_str())
    }

    fn module_path(&self, tenant: &TenantId, sha256: &str) -> PathBuf {
        self.tenant_dir(tenant)
            .join("modules")
            .join(format!("{sha256}.wasm"))
    }

    async fn audit(&self, tenant: &TenantId, actor: &Principal, category: &str, message: String) {
        tracing::info!(tenant = tenant.as_str(), category, "{message}");
        self.audit_event(
            tenant,
            AuditEvent::admin(tenant.as_str(), actor, category, message),
        )
        .await;
    }

    async fn audit_event(&self, tenant: &TenantId, event: AuditEvent) {
        if let Some(sink) = &self.audit
            && let Err(e) = sink.append(event).await
        {
            tracing::warn!(
                tenant = tenant.as_str(),
                "audit of a cell event failed: {e}"
            );
        }
    }

    fn changed(&self, tenant: &TenantId) {
        lock(&self.tenants).remove(tenant.as_str());
        let _ = self.events.send(ProviderEvent::ToolsChanged);
    }

    // ---- trust settings -------------------------------------------------

    pub async fn policy(&self, tenant: &TenantId) -> Result<CellPolicy, CellError> {
        let doc = self
            .store
            .scope(tenant)
            .documents()
            .get(POLICY, POLICY_KEY)
            .await?;
        Ok(doc
            .and_then(|d| serde_json::from_value(d.value).ok())
            .unwrap_or_default())
    }

    pub async fn set_policy(
        &self,
        tenant: &TenantId,
        actor: &Principal,
        policy: &CellPolicy,
    ) -> Result<(), CellError> {
        let value = serde_json::to_value(policy).unwrap_or(Value::Null);
        self.store
            .scope(tenant)
            .documents()
            .put(POLICY, POLICY_KEY, &value)
            .await?;
        self.audit(
            tenant,
            actor,
            "cell.policy",
            format!("cell policy set: allowUnsigned={}", policy.allow_unsigned),
        )
        .await;
        Ok(())
    }

    pub async fn publishers(&self, tenant: &TenantId) -> Result<Vec<TrustedPublisher>, CellError> {
        let docs = self
            .store
            .scope(tenant)
            .documents()
            .list(PUBLISHERS, None, 1000)
            .await?;
        Ok(docs
            .into_iter()
            .filter_map(|d| serde_json::from_value(d.value).ok())
            .collect())
    }

    /// Trusts a publisher key for this tenant; returns it with its key id.
    pub async fn trust_publisher(
        &self,
        tenant: &TenantId,
        actor: &Principal,
        name: &str,
        public_key: &str,
    ) -> Result<TrustedPublisher, CellError> {
        let publisher = TrustedPublisher::new(name, public_key)?;
        let value = serde_json::to_value(&publisher).unwrap_or(Value::Null);
        self.store
            .scope(tenant)
            .documents()
            .put(PUBLISHERS, &publisher.key_id, &value)
            .await?;
        self.audit(
            tenant,
            actor,
            "cell.trust",
            format!(
                "trusted publisher `{}` (key {})",
                publisher.name, publisher.key_id
            ),
        )
        .await;
        Ok(publisher)
    }

    /// Stops trusting a key. Cells it signed fail their next re-verification.
    pub async fn untrust_publisher(
        &self,
        tenant: &TenantId,
        actor: &Principal,
        key_id: &str,
    ) -> Result<bool, CellError> {
        let removed = self
            .store
            .scope(tenant)
            .documents()
            .delete(PUBLISHERS, key_id)
            .await?;
        if removed {
            self.audit(
                tenant,
                actor,
                "cell.trust",
                format!("no longer trusts key {key_id}"),
            )
            .await;
        }
        Ok(removed)
    }

    // ---- install and lifecycle --------------------------------------------

    /// Verifies and installs a cell: manifest, digest, signature (or the
    /// tenant's allowance for unsigned cells), static analysis, deployment
    /// ceilings, bindings; then stores the module and the record.
    pub async fn install(
        &self,
        tenant: &TenantId,
        actor: &Principal,
        req: InstallRequest,
    ) -> Result<CellRecord, CellError> {
        let manifest = &req.manifest;
        manifest.validate()?;
        if req.module.len() > self.config.max_module_bytes {
            return Err(CellError::invalid(
                "module",
                format!(
                    "{} bytes exceeds the limit of {} bytes",
                    req.module.len(),
                    self.config.max_module_bytes
                ),
            ));
        }
        if manifest.limits.memory_bytes > self.config.sandbox.max_memory_bytes {
            return Err(CellError::invalid(
                "limits.memoryBytes",
                format!(
                    "{} exceeds this deployment's ceiling of {} bytes",
                    manifest.limits.memory_bytes, self.config.sandbox.max_memory_bytes
                ),
            ));
        }
        let refused = |reason: String| async move {
            self.audit(tenant, actor, "cell.refused", reason).await;
        };
        if let Err(e) = signing::check_digest(manifest, &req.module) {
            refused(format!("install of `{}` refused: {e}", manifest.name)).await;
            return Err(e.into());
        }
        let publisher = match &req.signature {
            Some(sig) => {
                let trusted = self.publishers(tenant).await?;
                match signing::verify_manifest(manifest, sig, &trusted) {
                    Ok(p) => Some(p.clone()),
                    Err(e) => {
                        refused(format!("install of `{}` refused: {e}", manifest.name)).await;
                        return Err(e.into());
                    }
                }
            }
            None if self.policy(tenant).await?.allow_unsigned => None,
            None => {
                refused(format!("install of `{}` refused: unsigned", manifest.name)).await;
                return Err(TrustError::Unsigned.into());
            }
        };
        let report = analyse(&req.module, manifest);
        if !report.is_clean() {
            refused(format!(
                "install of `{}` refused by static analysis: {report}",
                manifest.name
            ))
            .await;
            return Err(CellError::Analysis(Box::new(report)));
        }
        for key in req.env.keys() {
            if !manifest.permissions.env.contains(key) {
                return Err(CellError::invalid(
                    format!("env.{key}"),
                    "the manifest does not grant this variable",
                ));
            }
        }
        let mounts = self.bind_mounts(tenant, manifest, &req.mounts)?;

        let docs = self.store.scope(tenant).documents();
        let existing = docs.get(CELLS, &manifest.name).await?;
        if existing.is_some() && !req.replace {
            return Err(CellError::AlreadyInstalled(manifest.name.clone()));
        }
        let now = now_ms();
        let mut record = CellRecord {
            manifest: manifest.clone(),
            signature: req.signature.clone(),
            publisher,
            state: CellState::Pending,
            state_reason: None,
            installed_at_ms: now,
            updated_at_ms: now,
            installed_by: actor.id.to_string(),
            mounts,
            sealed_env: self.seal_env(tenant, &manifest.name, &req.env)?,
            unsealed_env: BTreeMap::new(),
            imports: report
                .imports
                .iter()
                .map(|i| format!("{}.{}", i.module, i.name))
                .collect(),
        };
        let expected = existing.as_ref().map_or(0, |d| d.version);
        let pending = docs
            .put_if_version(CELLS, &manifest.name, &to_value(&record), expected)
            .await?;

        // Module bytes, then a compile check: a module the engine refuses
        // never becomes VERIFIED.
        let path = self.module_path(tenant, &manifest.module.sha256);
        write_module(&path, &req.module)?;
        let prepared = match self
            .sandbox
            .prepare_with(&req.module, Some((&self.compiled, &manifest.module.sha256)))
        {
            Ok(p) => p,
            Err(m) => {
                let _ = docs.delete(CELLS, &manifest.name).await;
                refused(format!("install of `{}` refused: {m}", manifest.name)).await;
                return Err(CellError::Compile(m));
            }
        };
        lock(&self.prepared).insert(manifest.module.sha256.clone(), prepared);

        record.state = if req.activate {
            CellState::Active
        } else {
            CellState::Verified
        };
        record.updated_at_ms = now_ms();
        docs.put_if_version(CELLS, &manifest.name, &to_value(&record), pending.version)
            .await?;
        // A (re)installed cell starts a new profile.
        lock(&self.profiles).retain(|(t, c, _), _| !(t == tenant.as_str() && c == &manifest.name));
        docs.delete(PROFILES, &manifest.name).await?;
        self.audit(
            tenant,
            actor,
            "cell.install",
            format!(
                "installed cell `{}` {} (sha256 {}, {}) as {}",
                manifest.name,
                manifest.version,
                manifest.module.sha256,
                match &record.publisher {
                    Some(p) => format!("signed by {} key {}", p.name, p.key_id),
                    None => "unsigned".to_owned(),
                },
                record.state
            ),
        )
        .await;
        self.changed(tenant);
        Ok(record)
    }

    /// Host directories for the manifest's grants: bound ones checked
    /// against the mount roots, the rest created under the data dir.
    fn bind_mounts(
        &self,
        tenant: &TenantId,
        manifest: &Manifest,
        requested: &BTreeMap<String, PathBuf>,
    ) -> Result<BTreeMap<String, PathBuf>, CellError> {
        for guest in requested.keys() {
            if !manifest.permissions.dirs.iter().any(|d| &d.path == guest) {
                return Err(CellError::invalid(
                    format!("mounts.{guest}"),
                    "the manifest grants no such directory",
                ));
            }
        }
        let mut out = BTreeMap::new();
        for grant in &manifest.permissions.dirs {
            let host = match requested.get(&grant.path) {
                Some(host) => {
                    let field = format!("mounts.{}", grant.path);
                    let real = host.canonicalize().map_err(|e| {
                        CellError::invalid(&field, format!("{}: {e}", host.display()))
                    })?;
                    if !real.is_dir() {
                        return Err(CellError::invalid(
                            field,
                            format!("{} is not a directory", real.display()),
                        ));
                    }
                    let allowed = self
                        .config
                        .mount_roots
                        .iter()
                        .filter_map(|r| r.canonicalize().ok())
                        .any(|root| real.starts_with(root));
                    if !allowed {
                        return Err(CellError::invalid(
                            field,
                            format!("{} is not under a configured mount root", real.display()),
                        ));
                    }
                    real
                }
                None => {
                    let dir = self
                        .tenant_dir(tenant)
                        .join("dirs")
                        .join(&manifest.name)
                        .join(grant.path.trim_start_matches('/').replace('/', "_"));
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| CellError::io("creating", &dir, e))?;
                    dir
                }
            };
            out.insert(grant.path.clone(), host);
        }
        Ok(out)
    }

    async fn load(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<(CellRecord, Document), CellError> {
        let doc = self
            .store
            .scope(tenant)
            .documents()
            .get(CELLS, name)
            .await?
            .ok_or_else(|| CellError::NotInstalled(name.to_owned()))?;
        let record = serde_json::from_value(doc.value.clone()).map_err(|e| {
            CellError::invalid(
                "record",
                format!("stored record of `{name}` is unreadable: {e}"),
            )
        })?;
        Ok((record, doc))
    }

    /// Moves a cell to `to` if it is in one of `from`; audited.
    #[allow(clippy::too_many_arguments)] // one private helper; a struct would only rename them
    async fn transition(
        &self,
        tenant: &TenantId,
        actor: &Principal,
        name: &str,
        from: &[CellState],
        to: CellState,
        action: &'static str,
        reason: Option<String>,
    ) -> Result<CellRecord, CellError> {
        let (mut record, doc) = self.load(tenant, name).await?;
        if !from.contains(&record.state) {
            return Err(CellError::WrongState {
                name: name.to_owned(),
                state: record.state,
                action,
            });
        }
        // The baseline must survive what follows (a suspended or revoked
        // cell is often inspected after a restart).
        self.save_profiles(|t, c| t == tenant.as_str() && c == name)
            .await;
        let before = record.state;
        record.state = to;
        record.state_reason = reason.clone();
        record.updated_at_ms = now_ms();
        if !record.unsealed_env.is_empty() {
            let clear = std::mem::take(&mut record.unsealed_env);
            let sealed = self.seal_env(tenant, name, &clear)?;
            record.sealed_env.extend(sealed);
        }
        self.store
            .scope(tenant)
            .documents()
            .put_if_version(CELLS, name, &to_value(&record), doc.version)
            .await?;
        self.audit(
            tenant,
            actor,
            &format!("cell.{action}"),
            format!(
                "cell `{name}`: {before} → {to}{}",
                reason.map(|r| format!(" ({r})")).unwrap_or_default()
            ),
        )
        .await;
        self.changed(tenant);
        Ok(record)
    }

    /// VERIFIED or SUSPENDED → ACTIVE, after checking digest and signature
    /// again.
    pub async fn activate(
        &self,
        tenant: &TenantId,
        actor: &Principal,
        name: &str,
    ) -> Result<CellRecord, CellError> {
        let (record, _) = self.load(tenant, name).await?;
        if let Err(problem) = self.check_installed(tenant, &record).await {
            let revoked = self
                .transition(
                    tenant,
                    actor,
                    name,
                    &ALL_BUT_REVOKED,
                    CellState::Revoked,
                    "revoke",
                    Some(problem.to_string()),
                )
                .await;
            return Err(match revoked {
                Ok(_) => problem,
                Err(e) => e,
            });
        }
        self.transition(
            tenant,
            actor,
            name,
            &[CellState::Verified, CellState::Suspended],
            CellState::Active,
            "activate",
            None,
        )
        .await
    }

    pub async fn suspend(
        &self,
        tenant: &TenantId,
        actor: &Principal,
        name: &str,
        reason: Option<String>,
    ) -> Result<CellRecord, CellError> {
        self.transition(
            tenant,
            actor,
            name,
            &[CellState::Active, CellState::Verified],
            CellState::Suspended,
            "suspend",
            reason,
        )
        .await
    }

    pub async fn revoke(
        &self,
        tenant: &TenantId,
        actor: &Principal,
        name: &str,
        reason: Option<String>,
    ) -> Result<CellRecord, CellError> {
        self.transition(
            tenant,
            actor,
            name,
            &ALL_BUT_REVOKED,
            CellState::Revoked,
            "revoke",
            reason,
        )
        .await
    }

    /// Removes the record, and the module file when no other cell of the
    /// tenant uses it. Cell-owned directories are kept (they hold data).
    pub async fn uninstall(
        &self,
        tenant: &TenantId,
        actor: &Principal,
        name: &str,
    ) -> Result<(), CellError> {
        let (record, _) = self.load(tenant, name).await?;
        let docs = self.store.scope(tenant).documents();
        docs.delete(CELLS, name).await?;
        let digest = &record.manifest.module.sha256;
        let still_used = self
            .records(tenant)
            .await?
            .iter()
            .any(|r| &r.manifest.module.sha256 == digest);
        if !still_used {
            let path = self.module_path(tenant, digest);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(CellError::io("removing", &path, e));
            }
        }
        lock(&self.profiles).retain(|(t, c, _), _| !(t == tenant.as_str() && c == name));
        docs.delete(PROFILES, name).await?;
        self.audit(
            tenant,
            actor,
            "cell.uninstall",
            format!("uninstalled cell `{name}` ({})", record.state),
        )
        .await;
        self.changed(tenant);
        Ok(())
    }

    /// Every cell of the tenant, by name.
    pub async fn records(&self, tenant: &TenantId) -> Result<Vec<CellRecord>, CellError> {
        let docs = self.store.scope(tenant).documents();
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = docs.list(CELLS, after.as_deref(), 1000).await?;
            let full = page.len() == 1000;
            after = page.last().map(|d| d.key.clone());
            for d in page {
                match serde_json::from_value::<CellRecord>(d.value) {
                    Ok(r) => out.push(r),
                    Err(e) => tracing::warn!(
                        tenant = tenant.as_str(),
                        cell = d.key,
                        "unreadable cell record: {e}"
                    ),
                }
            }
            if !full {
                return Ok(out);
            }
        }
    }

    /// One cell's record and its behaviour profile.
    pub async fn inspect(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<(CellRecord, Value), CellError> {
        let (record, _) = self.load(tenant, name).await?;
        let slot = self
            .profile_slot(tenant, name, &record.manifest.module.sha256)
            .await?;
        let profile = lock(&slot).profile.summary();
        Ok((record, profile))
    }

    // ---- sealed environment values ------------------------------------

    /// Seals each value for this tenant, cell and variable.
    fn seal_env(
        &self,
        tenant: &TenantId,
        cell: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, CellError> {
        env.iter()
            .map(|(k, v)| {
                let sealed = self.seal.seal(&env_owner(tenant, cell, k), v.as_bytes())?;
                Ok((k.clone(), sealed))
            })
            .collect()
    }

    /// The clear environment of a record, and the first variable that
    /// does not open (with why), if any.
    fn open_env(
        &self,
        tenant: &TenantId,
        record: &CellRecord,
    ) -> (Vec<(String, String)>, Option<GrantProblem>) {
        let cell = &record.manifest.name;
        let mut env: Vec<(String, String)> = record
            .unsealed_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut problem = None;
        for (k, sealed) in &record.sealed_env {
            let opened = self
                .seal
                .open(&env_owner(tenant, cell, k), sealed)
                .map_err(|e| e.to_string())
                .and_then(|plain| String::from_utf8(plain).map_err(|_| "not UTF-8".to_owned()));
            match opened {
                Ok(v) => env.push((k.clone(), v)),
                Err(e) => {
                    tracing::error!(
                        tenant = tenant.as_str(),
                        cell = cell.as_str(),
                        variable = k.as_str(),
                        "a sealed environment value does not open: {e}"
                    );
                    problem.get_or_insert((format!("sealedEnv.{k}"), e));
                }
            }
        }
        (env, problem)
    }

    // ---- profiles in the store --------------------------------------------

    /// The profile of (tenant, cell, digest): in memory, else from the
    /// store (when it describes that digest), else a new one.
    async fn profile_slot(
        &self,
        tenant: &TenantId,
        cell: &str,
        sha256: &str,
    ) -> Result<Arc<Mutex<ProfileSlot>>, CellError> {
        let key = (
            tenant.as_str().to_owned(),
            cell.to_owned(),
            sha256.to_owned(),
        );
        if let Some(slot) = lock(&self.profiles).get(&key) {
            return Ok(slot.clone());
        }
        let stored = self
            .store
            .scope(tenant)
            .documents()
            .get(PROFILES, cell)
            .await?;
        let profile = stored
            .and_then(|d| match serde_json::from_value::<StoredProfile>(d.value) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(
                        tenant = tenant.as_str(),
                        cell,
                        "unreadable stored profile, starting a new one: {e}"
                    );
                    None
                }
            })
            .filter(|p| p.sha256 == sha256)
            .map(|p| p.profile)
            .unwrap_or_default();
        let slot = Arc::new(Mutex::new(ProfileSlot {
            profile,
            dirty: false,
            saved_at: Instant::now(),
        }));
        // Another task may have loaded it meanwhile: the first one wins.
        Ok(lock(&self.profiles).entry(key).or_insert(slot).clone())
    }

    /// Writes one profile if it changed since it was last written.
    async fn save_slot(
        &self,
        key: &ProfileKey,
        slot: &Mutex<ProfileSlot>,
    ) -> Result<bool, CellError> {
        let snapshot = {
            let mut s = lock(slot);
            if !s.dirty {
                return Ok(false);
            }
            s.dirty = false;
            s.saved_at = Instant::now();
            s.profile.clone()
        };
        let (tenant, cell, sha256) = key;
        let tenant =
            TenantId::parse(tenant).map_err(|e| CellError::invalid("tenant", e.to_string()))?;
        let value = serde_json::to_value(StoredProfile {
            sha256: sha256.clone(),
            profile: snapshot,
        })
        .unwrap_or(Value::Null);
        let written = self
            .store
            .scope(&tenant)
            .documents()
            .put(PROFILES, cell, &value)
            .await;
        if let Err(e) = written {
            lock(slot).dirty = true;
            return Err(e.into());
        }
        Ok(true)
    }

    /// Writes the changed profiles whose (tenant, cell) `select` picks.
    async fn save_profiles(&self, select: impl Fn(&str, &str) -> bool) -> usize {
        let slots: Vec<(ProfileKey, Arc<Mutex<ProfileSlot>>)> = lock(&self.profiles)
            .iter()
            .filter(|((t, c, _), _)| select(t, c))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut saved = 0;
        for (key, slot) in slots {
            match self.save_slot(&key, &slot).await {
                Ok(true) => saved += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    tenant = key.0.as_str(),
                    cell = key.1.as_str(),
                    "saving a cell profile failed: {e}"
                ),
            }
        }
        saved
    }

    /// Writes every profile changed since it was last written; call it on
    /// a clean shutdown. Returns how many were written.
    pub async fn flush_profiles(&self) -> usize {
        self.save_profiles(|_, _| true).await
    }

    // ---- verification -----------------------------------------------------

    /// Digest of the stored module and signature against today's trusted
    /// keys (or the unsigned allowance).
    async fn check_installed(
        &self,
        tenant: &TenantId,
        record: &CellRecord,
    ) -> Result<(), CellError> {
        let path = self.module_path(tenant, &record.manifest.module.sha256);
        let bytes = std::fs::read(&path).map_err(|e| CellError::io("reading", &path, e))?;
        signing::check_digest(&record.manifest, &bytes)?;
        match &record.signature {
            Some(sig) => {
                let trusted = self.publishers(tenant).await?;
                signing::verify_manifest(&record.manifest, sig, &trusted)?;
            }
            None if self.policy(tenant).await?.allow_unsigned => {}
            None => return Err(TrustError::Unsigned.into()),
        }
        Ok(())
    }

    /// Re-verifies every cell of the tenant that is not revoked; revokes
    /// those whose module or signature no longer checks out.
    pub async fn reverify(&self, tenant: &TenantId) -> Result<Vec<Reverification>, CellError> {
        let actor = runtime_principal();
        let mut out = Vec::new();
        for record in self.records(tenant).await? {
            if record.state == CellState::Revoked {
                continue;
            }
            let name = record.manifest.name.clone();
            match self.check_installed(tenant, &record).await {
                Ok(()) => out.push(Reverification {
                    cell: name,
                    outcome: "ok".into(),
                    reason: None,
                }),
                Err(problem) => {
                    let reason = format!("re-verification failed: {problem}");
                    lock(&self.prepared).remove(&record.manifest.module.sha256);
                    self.transition(
                        tenant,
                        &actor,
                        &name,
                        &ALL_BUT_REVOKED,
                        CellState::Revoked,
                        "revoke",
                        Some(reason.clone()),
                    )
                    .await?;
                    out.push(Reverification {
                        cell: name,
                        outcome: CellState::Revoked.to_string(),
                        reason: Some(reason),
                    });
                }
            }
        }
        Ok(out)
    }

    /// [`CellRegistry::reverify`] for every tenant.
    pub async fn reverify_all(&self) -> Result<Vec<(String, Reverification)>, CellError> {
        let mut out = Vec::new();
        for tenant in self.store.tenants().list().await? {
            for r in self.reverify(&tenant.id).await? {
                out.push((tenant.id.as_str().to_owned(), r));
            }
        }
        Ok(out)
    }

    /// Re-verifies all tenants' cells every `every`, until the registry
    /// is dropped.
    pub fn spawn_reverifier(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = registry.reverify_all().await {
                    tracing::warn!("cell re-verification failed: {e}");
                }
            }
        })
    }

    // ---- calls ------------------------------------------------------------

    /// The tenant's cells as the runtime holds them, re-read from the store
    /// when older than `refresh`.
    async fn live(&self, tenant: &TenantId) -> Result<Arc<TenantCells>, CellError> {
        if let Some(t) = lock(&self.tenants).get(tenant.as_str())
            && t.loaded.elapsed() < self.config.refresh
        {
            return Ok(t.clone());
        }
        let records = self.records(tenant).await?;
        let mut cells = HashMap::new();
        for record in records {
            let name = record.manifest.name.clone();
            let profile = self
                .profile_slot(tenant, &name, &record.manifest.module.sha256)
                .await?;
            let (env, grant_problem) = self.open_env(tenant, &record);
            let p = &record.manifest.permissions;
            let grants = Grants {
                dirs: p
                    .dirs
                    .iter()
                    .filter_map(|d| {
                        record.mounts.get(&d.path).map(|host| HostDir {
                            host: host.clone(),
                            guest: d.path.clone(),
                            access: d.access,
                        })
                    })
                    .collect(),
                scratch: p.scratch,
                env,
                clock: p.clock,
                random: p.random,
                network: p.network.clone(),
            };
            cells.insert(
                name,
                Arc::new(LiveCell {
                    record,
                    grants,
                    grant_problem,
                    profile,
                }),
            );
        }
        let t = Arc::new(TenantCells {
            loaded: Instant::now(),
            cells,
        });
        lock(&self.tenants).insert(tenant.as_str().to_owned(), t.clone());
        Ok(t)
    }

    /// The manifests of the tenant's ACTIVE cells (for listing their tools).
    pub async fn active_manifests(&self, tenant: &TenantId) -> Result<Vec<Manifest>, CellError> {
        let live = self.live(tenant).await?;
        let mut out: Vec<Manifest> = live
            .cells
            .values()
            .filter(|c| c.record.state == CellState::Active)
            .map(|c| c.record.manifest.clone())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn prepared(&self, tenant: &TenantId, record: &CellRecord) -> Result<PreparedCell, CellError> {
        let digest = &record.manifest.module.sha256;
        if let Some(p) = lock(&self.prepared).get(digest) {
            return Ok(p.clone());
        }
        // First call after a restart: the bytes must still be the ones the
        // manifest pins before they are compiled.
        let path = self.module_path(tenant, digest);
        let bytes = std::fs::read(&path).map_err(|e| CellError::io("reading", &path, e))?;
        signing::check_digest(&record.manifest, &bytes)?;
        let prepared = self
            .sandbox
            .prepare_with(&bytes, Some((&self.compiled, digest)))
            .map_err(CellError::Compile)?;
        lock(&self.prepared).insert(digest.clone(), prepared.clone());
        Ok(prepared)
    }

    /// Runs `tool` of the tenant's ACTIVE cell `cell`. Resource-limit
    /// stops and anomalies are audited; an anomaly may suspend or revoke
    /// the cell (per [`ProfileConfig`]).
    pub async fn call(
        &self,
        tenant: &TenantId,
        caller: &Principal,
        cell: &str,
        tool: &str,
        arguments: Map<String, Value>,
    ) -> Result<CallReport, CellError> {
        let live = self.live(tenant).await?;
        let Some(entry) = live.cells.get(cell).cloned() else {
            return Err(CellError::NotInstalled(cell.to_owned()));
        };
        if entry.record.state != CellState::Active {
            return Err(CellError::WrongState {
                name: cell.to_owned(),
                state: entry.record.state,
                action: "call",
            });
        }
        if entry.record.manifest.tool(tool).is_none() {
            return Err(CellError::UnknownTool {
                cell: cell.to_owned(),
                tool: tool.to_owned(),
            });
        }
        if let Some((field, problem)) = &entry.grant_problem {
            return Err(CellError::invalid(
                field.clone(),
                format!("cannot run cell `{cell}`: {problem}"),
            ));
        }
        // Digest of the arguments, only when this call will be a sample.
        let args_digest = (lock(&entry.profile).profile.sampling_remaining() > 0)
            .then(|| cellgate_audit::args_digest(&Value::Object(arguments.clone())));
        let prepared = match self.prepared(tenant, &entry.record) {
            Ok(p) => p,
            Err(problem @ CellError::Trust(_)) => {
                let reason = format!("module check before compiling failed: {problem}");
                let _ = self
                    .transition(
                        tenant,
                        &runtime_principal(),
                        cell,
                        &ALL_BUT_REVOKED,
                        CellState::Revoked,
                        "revoke",
                        Some(reason),
                    )
                    .await;
                return Err(problem);
            }
            Err(e) => return Err(e),
        };
        let report = {
            let entry = entry.clone();
            let tool = tool.to_owned();
            let sandbox = self.sandbox.clone();
            tokio::task::spawn_blocking(move || {
                sandbox.call(
                    &prepared,
                    &entry.record.manifest.limits,
                    &entry.grants,
                    &tool,
                    &arguments,
                )
            })
            .await
            .map_err(|e| CellError::Compile(format!("the call's thread failed: {e}")))?
        };
        for denial in &report.denials {
            self.audit(
                tenant,
                caller,
                "cell.denied",
                format!("cell `{cell}` tool `{tool}`: {denial}"),
            )
            .await;
        }
        if let Err(e) = &report.result
            && e.is_limit()
        {
            self.audit(
                tenant,
                caller,
                "cell.denied",
                format!("cell `{cell}` tool `{tool}` stopped by the sandbox: {e}"),
            )
            .await;
        }
        let (anomaly, sample, save) = {
            let mut slot = lock(&entry.profile);
            let sample = slot.profile.take_sample();
            let anomaly =
                slot.profile
                    .observe(&report.stats, report.result.is_err(), &self.config.profile);
            if let Some(a) = &anomaly
                && self.config.profile.action(a.severity) == AnomalyAction::Sample
            {
                slot.profile
                    .start_sampling(self.config.profile.sample_calls);
            }
            slot.dirty = true;
            let save = slot.saved_at.elapsed() >= self.config.profile_save_interval;
            (anomaly, sample, save)
        };
        if let Some(remaining) = sample {
            self.audit_sample(tenant, caller, cell, tool, &report, args_digest, remaining)
                .await;
        }
        if save {
            let key = (
                tenant.as_str().to_owned(),
                cell.to_owned(),
                entry.record.manifest.module.sha256.clone(),
            );
            if let Err(e) = self.save_slot(&key, &entry.profile).await {
                tracing::warn!(
                    tenant = tenant.as_str(),
                    cell,
                    "saving the cell's profile failed: {e}"
                );
            }
        }
        if let Some(anomaly) = anomaly {
            let action = self.config.profile.action(anomaly.severity);
            let reason = format!("tool `{tool}`: {anomaly}");
            let then = match action {
                AnomalyAction::Sample => format!(
                    "Sample (the next {} calls are audited in detail)",
                    self.config.profile.sample_calls
                ),
                other => format!("{other:?}"),
            };
            self.audit(
                tenant,
                caller,
                "cell.anomaly",
                format!("cell `{cell}` {reason} → {then}"),
            )
            .await;
            let actor = runtime_principal();
            let moved = match action {
                AnomalyAction::Log | AnomalyAction::Sample => Ok(entry.record.clone()),
                AnomalyAction::Suspend => self.suspend(tenant, &actor, cell, Some(reason)).await,
                AnomalyAction::Revoke => self.revoke(tenant, &actor, cell, Some(reason)).await,
            };
            if let Err(e) = moved {
                tracing::warn!(
                    tenant = tenant.as_str(),
                    cell,
                    "acting on an anomaly failed: {e}"
                );
            }
        }
        Ok(report)
    }

    /// One sampled call, audited in detail: every metric and the SHA-256
    /// of the arguments and of the output (never their content).
    #[allow(clippy::too_many_arguments)] // one private helper of call()
    async fn audit_sample(
        &self,
        tenant: &TenantId,
        caller: &Principal,
        cell: &str,
        tool: &str,
        report: &CallReport,
        args_digest: Option<[u8; 32]>,
        remaining: u64,
    ) {
        let (outcome, output_digest, error) = match &report.result {
            Ok(v) => (Outcome::Ok, cellgate_audit::args_digest(v), None),
            Err(e) => {
                let text = e.to_string();
                (
                    Outcome::ToolError,
                    sha2::Sha256::digest(text.as_bytes()).into(),
                    Some(e.kind()),
                )
            }
        };
        let message = json!({
            "cell": cell,
            "tool": tool,
            "stats": report.stats,
            "argumentsSha256": args_digest.map(|d| cellgate_audit::to_hex(&d)),
            "outputSha256": cellgate_audit::to_hex(&output_digest),
            "error": error,
            "samplesRemaining": remaining,
        });
        tracing::info!(
            tenant = tenant.as_str(),
            cell,
            tool,
            "cell.sample {message}"
        );
        let mut event =
            AuditEvent::admin(tenant.as_str(), caller, "cell.sample", message.to_string());
        event.target = Some(format!("{cell}{}{tool}", crate::provider::SEPARATOR));
        event.args_digest = args_digest;
        event.outcome = outcome;
        event.latency_us = report.stats.duration_us;
        self.audit_event(tenant, event).await;
    }
}

/// What a sealed environment value is bound to: the tenant, the cell and
/// the variable, so it opens nowhere else.
fn env_owner(tenant: &TenantId, cell: &str, variable: &str) -> String {
    format!("cellgate-cell-env\0{}\0{cell}\0{variable}", tenant.as_str())
}

const ALL_BUT_REVOKED: [CellState; 4] = [
    CellState::Pending,
    CellState::Verified,
    CellState::Active,
    CellState::Suspended,
];

fn to_value(record: &CellRecord) -> Value {
    serde_json::to_value(record).unwrap_or_else(|_| json!({}))
}

/// Writes a content-addressed module file atomically (temp file, rename).
fn write_module(path: &Path, bytes: &[u8]) -> Result<(), CellError> {
    if path.exists() {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| CellError::io("creating", dir, e))?;
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| CellError::io("creating a file in", dir, e))?;
    std::fs::write(tmp.path(), bytes).map_err(|e| CellError::io("writing", tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| CellError::io("writing", path, e.error))?;
    Ok(())
}
