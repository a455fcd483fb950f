//! Shared set-up: a store, a registry with an audit log, a trusted
//! publisher key, and helpers to build, sign, install and call cells.

use std::sync::Arc;

use cellgate_audit::{
    AuditMetrics, AuditSink, AuditWriter, SigningKey, WriterConfig, spawn_writer,
};
use cellgate_cells::{
    CallReport, CellError, CellRecord, CellRegistry, CellsConfig, InstallRequest, Manifest,
    PublisherKey, signing::sha256_hex,
};
use cellgate_kernel::Principal;
use cellgate_store::{AuditQuery, Store, StoreConfig, TenantId};
use serde_json::{Map, Value, json};

pub struct Env {
    pub tmp: tempfile::TempDir,
    pub store: Store,
    pub registry: Arc<CellRegistry>,
    pub tenant: TenantId,
    pub key: PublisherKey,
    pub actor: Principal,
    sink: AuditSink,
    _writer: AuditWriter,
}

pub async fn env() -> Env {
    env_with(|_| {}).await
}

pub async fn env_with(adjust: impl FnOnce(&mut CellsConfig)) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig::Sqlite {
        path: tmp.path().join("cellgate.db"),
    })
    .await
    .unwrap();
    let tenant = TenantId::parse("acme").unwrap();
    store.tenants().create(&tenant, "Acme").await.unwrap();
    let (sink, writer) = spawn_writer(
        store.audit(),
        SigningKey::from_bytes(&[7; 32]),
        WriterConfig::default(),
        AuditMetrics::new(),
    );
    let mut config = CellsConfig::new(tmp.path().join("data"));
    config.sandbox.max_concurrent_calls = 8;
    adjust(&mut config);
    let registry = CellRegistry::new(store.clone(), config, Some(sink.clone())).unwrap();
    let key = PublisherKey::generate();
    let actor = Principal::local_operator();
    registry
        .trust_publisher(&tenant, &actor, "test publisher", &key.public_key_b64())
        .await
        .unwrap();
    Env {
        tmp,
        store,
        registry,
        tenant,
        key,
        actor,
        sink,
        _writer: writer,
    }
}

/// A manifest for `module` with one tool `run`; `extra` is merged in at the
/// top level (permissions, limits, …).
pub fn manifest(name: &str, module: &[u8], extra: Value) -> Manifest {
    let mut v = json!({
        "name": name,
        "version": "1.0.0",
        "author": "tests",
        "tools": [{ "name": "run", "description": "Run the test cell", "inputSchema": { "type": "object" } }],
        "limits": { "memoryBytes": 2097152, "fuel": 10000000, "timeoutMs": 2000, "maxOutputBytes": 65536 },
        "module": { "sha256": sha256_hex(module) }
    });
    if let Value::Object(extra) = extra {
        for (k, val) in extra {
            v[k] = val;
        }
    }
    Manifest::from_value(v).unwrap()
}

pub fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap_or_else(|e| panic!("bad test WAT: {e}\n{text}"))
}

impl Env {
    /// What a restart does: drops the registry, opens the SQLite file
    /// again and builds a new registry on the same data directory.
    pub async fn reopen(&mut self) {
        let config = self.registry.config().clone();
        self.store = Store::open(&StoreConfig::Sqlite {
            path: self.tmp.path().join("cellgate.db"),
        })
        .await
        .unwrap();
        self.registry =
            CellRegistry::new(self.store.clone(), config, Some(self.sink.clone())).unwrap();
    }

    /// Signs with the trusted key and installs (ACTIVE).
    pub async fn install(
        &self,
        manifest: Manifest,
        module: Vec<u8>,
    ) -> Result<CellRecord, CellError> {
        let sig = self.key.sign(&manifest);
        self.registry
            .install(
                &self.tenant,
                &self.actor,
                InstallRequest::new(manifest, module, Some(sig)),
            )
            .await
    }

    pub async fn install_request(&self, request: InstallRequest) -> Result<CellRecord, CellError> {
        self.registry
            .install(&self.tenant, &self.actor, request)
            .await
    }

    pub async fn call(&self, cell: &str, tool: &str, args: Value) -> Result<CallReport, CellError> {
        let Value::Object(args) = args else {
            panic!("args must be an object")
        };
        self.registry
            .call(&self.tenant, &self.actor, cell, tool, args)
            .await
    }

    /// Calls and expects a result value.
    pub async fn call_ok(&self, cell: &str, args: Value) -> Value {
        let report = self.call(cell, "run", args).await.unwrap();
        report
            .result
            .unwrap_or_else(|e| panic!("call of {cell} failed: {e}"))
    }

    /// The audit log's categories and messages, oldest first.
    pub async fn audit(&self) -> Vec<(String, String)> {
        let entries = self
            .store
            .audit()
            .entries(&AuditQuery::default(), 1000)
            .await
            .unwrap();
        entries
            .into_iter()
            .map(|e| {
                (
                    e.category.unwrap_or_default(),
                    e.message.unwrap_or_default(),
                )
            })
            .collect()
    }

    pub async fn audited(&self, category: &str, contains: &str) -> bool {
        self.audit()
            .await
            .iter()
            .any(|(c, m)| c == category && m.contains(contains))
    }
}

pub fn empty_args() -> Value {
    Value::Object(Map::new())
}

/// `$emit(v)` writes `{"n":"DDD"}` (v in 0..1000) to stdout. Needs
/// `$fd_write` imported and one page of memory; uses bytes 100-211.
pub const EMIT: &str = r#"
  (data (i32.const 200) "{\"n\":\"000\"}")
  (func $emit (param $v i32)
    (i32.store8 (i32.const 206) (i32.add (i32.const 48) (i32.div_u (local.get $v) (i32.const 100))))
    (i32.store8 (i32.const 207) (i32.add (i32.const 48) (i32.rem_u (i32.div_u (local.get $v) (i32.const 10)) (i32.const 10))))
    (i32.store8 (i32.const 208) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
    (i32.store (i32.const 100) (i32.const 200))
    (i32.store (i32.const 104) (i32.const 11))
    (drop (call $fd_write (i32.const 1) (i32.const 100) (i32.const 1) (i32.const 108))))
"#;

pub const FD_WRITE: &str = r#"(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))"#;

/// The number a cell emitted with `$emit`.
pub fn emitted(v: &Value) -> u32 {
    v["n"].as_str().unwrap().parse().unwrap()
}

/// The shipped echo cell, built from its WAT source.
pub fn echo_module() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../cells/echo/echo.wat");
    wat::parse_file(path).unwrap()
}

/// The shipped echo manifest with the digest of `module` filled in.
pub fn echo_manifest(module: &[u8]) -> Manifest {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../cells/echo/manifest.json"
    );
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["module"]["sha256"] = json!(sha256_hex(module));
    Manifest::from_value(v).unwrap()
}
