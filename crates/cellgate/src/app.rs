//! Wiring: configuration → store, providers, pipeline, edge, HTTP app.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cellgate_admin::{AdminProvider, AdminServices, AuditTools};
use cellgate_audit::{
    AuditMetrics, AuditSink, AuditStage, AuditWriter, Backpressure, WriterConfig, spawn_writer,
};
use cellgate_auth::{AuthStack, InstanceKey};
use cellgate_config::{Config, RateLimitBackend, StoreBackend};
use cellgate_federation::Federation;
use cellgate_inspect::{ContentFilterStage, InspectStage};
use cellgate_kernel::{
    CallRecord, Catalog, MeterLayer, Metrics, Pipeline, Provider, StageLayer, TraceLayer,
};
use cellgate_mcp::conformance::ConformanceProvider;
use cellgate_mcp::{EdgeConfig, McpServer};
use cellgate_policy::{
    AuthorizeStage, Directory, MemoryLimiter, RateLimitMetrics, RateLimitStage, RateLimiter,
    RedisLimiter, RequireAuthStage, ServerScopeStage, TenantStage,
};
use cellgate_store::{Store, StoreConfig, TenantId};
use serde_json::json;
use tokio::sync::mpsc;

use crate::InstanceArgs;

/// Reads the configuration: defaults ← file ← `CELLGATE_*` ← command line.
pub fn load_config(args: &InstanceArgs) -> anyhow::Result<Config> {
    let path = args
        .config
        .clone()
        .or_else(cellgate_config::default_config_path);
    let mut config = Config::load(path.as_deref(), std::env::vars())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| match &path {
            Some(p) => format!("loading configuration from {}", p.display()),
            None => "loading configuration from the environment".into(),
        })?;
    if let Some(dir) = &args.data_dir {
        config.data_dir = Some(dir.display().to_string());
    }
    Ok(config)
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CELLGATE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        cellgate_config::LogFormat::Json => builder.json().try_init(),
        cellgate_config::LogFormat::Text => builder.try_init(),
    };
}

/// Everything a running instance is made of.
pub struct Instance {
    /// Where upstreams come from: the file and those added at run time.
    pub upstream_sources: Arc<crate::runtime_upstreams::UpstreamSources>,
    pub server: Arc<McpServer>,
    /// `[[servers]]`, by name: each served at `/servers/{name}/mcp`.
    pub virtual_servers: Vec<(String, Arc<McpServer>)>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub auth: AuthStack,
    pub audit: Option<(AuditSink, AuditWriter)>,
    /// The tenant that records what belongs to no tenant, such as requests
    /// refused before authentication (`[policy] operator_tenant`).
    pub operator_tenant: String,
    pub federation: Option<Arc<Federation>>,
    /// Installed WebAssembly cells, when `[cells]` is enabled.
    pub cells: Option<Arc<cellgate_cells::CellRegistry>>,
    /// The memory service, when `[memory]` is enabled.
    pub memory: Option<Arc<cellgate_memory::MemoryProvider>>,
    /// The task queue and workflow engine, when `[orchestration]` is enabled;
    /// its workers run only under `serve` and `stdio` ([`Instance::start_workers`]).
    pub orchestration: Option<cellgate_orchestration::Engine>,
}

impl Instance {
    /// Stops background work: stores every audit entry already accepted
    /// (and signs a final checkpoint), stops upstreams, writes the cells'
    /// behaviour profiles, closes the store.
    pub async fn shutdown(self) {
        if let Some(f) = &self.federation {
            f.shutdown();
        }
        if let Some(cells) = &self.cells {
            cells.flush_profiles().await;
        }
        if let Some((_, writer)) = self.audit
            && !writer.shutdown(Duration::from_secs(10)).await
        {
            tracing::error!("some audit entries could not be stored before shutdown");
        }
        self.store.close().await;
    }
}

/// Builds the instance: store (migrated), identity and keys, providers, the
/// trust pipeline, the edge.
pub async fn build(config: &Config) -> anyhow::Result<Instance> {
    let store = Store::open(&store_config(config))
        .await
        .with_context(|| format!("opening the store ({})", config.redacted_store_location()))?;
    for (id, name) in [
        ("local", "Local"),
        (config.policy.operator_tenant.as_str(), "Operator"),
    ] {
        let id = TenantId::parse(id).map_err(|e| anyhow::anyhow!("policy.operator_tenant: {e}"))?;
        store
            .tenants()
            .ensure(&id, name)
            .await
            .with_context(|| format!("creating the `{id}` tenant"))?;
    }
    let directory = Arc::new(
        Directory::new(store.clone(), config.policy.clone())
            .map_err(|e| anyhow::anyhow!("invalid [policy]: {e}"))?,
    );
    let auth = AuthStack::from_config(config, store.clone())
        .map_err(|e| anyhow::anyhow!("invalid [auth]: {e}"))?;
    let instance_key = match &auth.instance_key {
        Some(k) => k.clone(),
        None => Arc::new(
            InstanceKey::load_or_create(&config.data_dir())
                .map_err(|e| anyhow::anyhow!("instance key: {e}"))?,
        ),
    };
    let metrics = Metrics::new();

    let audit = if config.audit.enabled {
        let audit_metrics = AuditMetrics::new();
        metrics.with_registry(|r| audit_metrics.register(r));
        let a = &config.audit;
        let writer_config = WriterConfig {
            batch_size: a.batch_size as usize,
            channel_capacity: a.channel_capacity as usize,
            checkpoint_every_entries: a.checkpoint_every_entries,
            checkpoint_every: a.checkpoint_every(),
            backpressure: a
                .backpressure_wait()
                .map_or(Backpressure::Refuse, Backpressure::Wait),
        };
        Some(spawn_writer(
            store.audit(),
            instance_key.signing_key().clone(),
            writer_config,
            audit_metrics,
        ))
    } else {
        tracing::warn!(
            "audit is off ([audit] enabled = false): calls leave no tamper-evident record"
        );
        None
    };

    // Always present, even with no upstreams, so that a reload or
    // `add_upstream` can add some.
    let operator =
        TenantId::parse(&config.policy.operator_tenant).map_err(|e| anyhow::anyhow!("{e}"))?;
    upstreams_with_loop_guard(config)?;
    let upstream_sources = crate::runtime_upstreams::UpstreamSources::new(
        &store,
        &operator,
        cellgate_store::SecretSeal::load_or_create(&config.data_dir())?,
        config.federation.clone(),
        config.upstreams.clone(),
    );
    let (federation_config, upstreams) = upstream_sources
        .merged()
        .await
        .map_err(|e| anyhow::anyhow!("upstreams: {e}"))?;
    let federation = Federation::builder(federation_config, upstreams)
        .pin_store(Arc::new(crate::upstream_state::StorePins::new(
            &store, &operator,
        )))
        .incident_sink(crate::upstream_state::StoreIncidents::new(
            &store, &operator,
        ))
        .start()
        .await
        .map_err(|e| anyhow::anyhow!("upstreams: {e}"))?;
    let federation = Arc::new(federation);
    upstream_sources.attach(federation.clone());
    metrics.with_registry(|r| federation.metrics().register(r));
    let federation = Some(federation);

    let admin = AdminProvider::new(
        directory.clone(),
        AdminServices {
            api_keys: auth.api_keys.clone(),
            audit: audit.as_ref().map(|(sink, _)| AuditTools {
                sink: sink.clone(),
                store: store.clone(),
                trusted: vec![instance_key.verifying_key()],
            }),
            federation: federation.clone(),
            runtime_upstreams: Some(upstream_sources.clone()),
        },
    );
    // The demo provider comes first: the conformance suite calls the first
    // listed tool with empty arguments, which the demo tools accept.
    let mut providers: Vec<Arc<dyn Provider>> = Vec::new();
    if config.demo.enabled {
        providers.push(ConformanceProvider::new(Duration::from_secs(5)));
    }
    if let Some(f) = &federation {
        providers.push(f.clone());
    }
    let cells = if config.cells.enabled {
        let registry = cell_registry(config, &store, audit.as_ref().map(|(s, _)| s.clone()))?;
        providers.push(cellgate_cells::CellProvider::new(registry.clone()));
        Some(registry)
    } else {
        None
    };
    let memory = if config.memory.enabled {
        let m = memory_provider(config, &store)?;
        providers.push(m.clone());
        Some(m)
    } else {
        None
    };
    // The engine runs each task as a call through the very pipeline built
    // below, so it reaches the pipeline through a handle filled in later.
    let task_runner = cellgate_orchestration::DeferredPipeline::new();
    let orchestration = if config.orchestration.enabled {
        let engine = task_engine(config, &store, task_runner.clone())?;
        providers.push(cellgate_orchestration::OrchestrationProvider::new(
            engine.clone(),
        ));
        Some(engine)
    } else {
        None
    };
    providers.push(admin.clone());
    let catalog = Catalog::new(providers);
    admin.attach(&catalog);

    let (records_tx, records_rx) = mpsc::channel::<CallRecord>(8192);
    let interactions = memory.as_ref().and_then(|m| m.interaction_recorder(8192));
    spawn_call_log_writer(store.clone(), records_rx, interactions);

    // Layers are added from the inside out: the last one added sees a call
    // first. The order a call meets them: meter, trace, audit, authenticate,
    // tenant, rate limit, authorize, inspect, filter, dispatch. Meter and
    // audit wrap the security layers so refused calls are counted and
    // audited too; the filter redacts arguments just before dispatch, after
    // inspection judged them as the caller sent them.
    let filter = if config.filter.enabled {
        let filter = ContentFilterStage::from_config(&config.filter)
            .map_err(|e| anyhow::anyhow!("invalid [filter]: {e}"))?;
        metrics.with_registry(|r| filter.stats().register(r));
        Some(filter.into_layer())
    } else {
        None
    };
    let inspect = if config.inspect.enabled {
        let inspect = InspectStage::from_config(&config.inspect, catalog.clone())
            .map_err(|e| anyhow::anyhow!("invalid [inspect]: {e}"))?;
        Some(inspect.into_layer())
    } else {
        None
    };
    let authorize = StageLayer::new(AuthorizeStage {
        directory: directory.clone(),
        catalog: catalog.clone(),
    });
    let rate_limit = if config.rate_limit.enabled {
        let rate_metrics = RateLimitMetrics::default();
        metrics.with_registry(|r| rate_metrics.register(r));
        Some(StageLayer::new(RateLimitStage {
            directory: directory.clone(),
            limiter: rate_limiter(config).await?,
            config: config.rate_limit.clone(),
            metrics: rate_metrics,
        }))
    } else {
        None
    };
    let tenant = StageLayer::new(TenantStage {
        directory: directory.clone(),
    });
    let require_auth = StageLayer::new(RequireAuthStage {
        required: config.auth.required,
    });
    let audit_layer = audit
        .as_ref()
        .map(|(sink, _)| AuditStage::layer(sink.clone()));
    let meter = MeterLayer::new(metrics.clone()).with_records(records_tx);
    // One stack for /mcp and one per virtual server, sharing every layer's
    // state (limits, caches, the audit chain); a virtual server's stack
    // only adds its scope, innermost, so refused calls are still metered,
    // audited and authorized like any other.
    let assemble = |scope: Option<StageLayer<ServerScopeStage>>| {
        let mut builder = Pipeline::builder(catalog.clone());
        if let Some(scope) = scope {
            builder = builder.layer(scope);
        }
        if let Some(layer) = &filter {
            builder = builder.layer(layer.clone());
        }
        if let Some(layer) = &inspect {
            builder = builder.layer(layer.clone());
        }
        builder = builder.layer(authorize.clone());
        if let Some(layer) = &rate_limit {
            builder = builder.layer(layer.clone());
        }
        builder = builder.layer(tenant.clone()).layer(require_auth.clone());
        if let Some(layer) = &audit_layer {
            builder = builder.layer(layer.clone());
        }
        builder.layer(TraceLayer).layer(meter.clone()).build()
    };
    let pipeline = assemble(None);
    task_runner.attach(pipeline.clone());
    let server = McpServer::new(pipeline, edge_config(config), metrics.clone());
    let mut virtual_servers = Vec::with_capacity(config.servers.len());
    for vs in &config.servers {
        let scope = ServerScopeStage::new(vs)
            .map_err(|e| anyhow::anyhow!("invalid virtual server `{}`: {e}", vs.name))?;
        let mut edge = edge_config(config);
        if vs.description.is_some() {
            edge.instructions = vs.description.clone();
        }
        let pipeline = assemble(Some(StageLayer::new(scope)));
        virtual_servers.push((
            vs.name.clone(),
            McpServer::new(pipeline, edge, metrics.clone()),
        ));
    }
    Ok(Instance {
        upstream_sources,
        server,
        virtual_servers,
        cells,
        memory,
        orchestration,
        store,
        metrics,
        auth,
        audit,
        operator_tenant: config.policy.operator_tenant.clone(),
        federation,
    })
}

/// The memory service with the configured embedder; elevation's PII
/// redaction uses the content filter's detectors and national-id patterns.
fn memory_provider(
    config: &Config,
    store: &Store,
) -> anyhow::Result<Arc<cellgate_memory::MemoryProvider>> {
    use cellgate_config::EmbeddingBackend;
    let m = &config.memory;
    let e = &m.embedding;
    let embedder: Arc<dyn cellgate_memory::Embedder> = match e.backend {
        EmbeddingBackend::Local => Arc::new(
            cellgate_memory::HashedEmbedder::new(e.dimensions as usize)
                .map_err(|e| anyhow::anyhow!("[memory.embedding]: {e}"))?,
        ),
        EmbeddingBackend::Openai => {
            let key = match &e.api_key_env {
                Some(var) => Some(std::env::var(var).with_context(|| {
                    format!("memory.embedding.api_key_env names {var}, which is not set")
                })?),
                None => None,
            };
            Arc::new(
                cellgate_memory::HttpEmbedder::new(
                    e.url.as_deref().unwrap_or_default(),
                    e.model.as_deref().unwrap_or_default(),
                    key,
                    Duration::from_secs(e.timeout_secs),
                )
                .map_err(|e| anyhow::anyhow!("[memory.embedding]: {e}"))?,
            )
        }
    };
    let national_ids: Vec<(String, String)> = config
        .filter
        .national_ids
        .iter()
        .map(|n| (n.name.clone(), n.pattern.clone()))
        .collect();
    let detectors = cellgate_inspect::Detectors::new(&national_ids)
        .map_err(|e| anyhow::anyhow!("filter.national_ids: {e}"))?;
    let tuning = cellgate_memory::MemoryConfig {
        keep_versions: m.keep_versions,
        exact_search_max: usize::try_from(m.exact_search_max).unwrap_or(usize::MAX),
        discovery_threshold: m.discovery_threshold,
        merge_threshold: m.merge_threshold,
        prune_below: m.prune_below,
        record_interactions: m.record_interactions,
        fusion_pool: m.fusion.depth,
        fusion: match m.fusion.method {
            cellgate_config::FusionMethod::Rrf => cellgate_memory::Fusion::ReciprocalRank {
                k: m.fusion.k,
                text_weight: m.fusion.text_weight,
                vector_weight: m.fusion.vector_weight,
            },
            cellgate_config::FusionMethod::Zscore => cellgate_memory::Fusion::Standardised,
        },
        // The built vector index survives restarts instead of being rebuilt.
        index_dir: m
            .persist_index
            .then(|| config.data_dir().join("memory-index")),
        ..cellgate_memory::MemoryConfig::default()
    };
    Ok(cellgate_memory::MemoryProvider::new(
        store.clone(),
        embedder,
        cellgate_memory::Anonymizer::new(detectors),
        tuning,
    ))
}

/// The task engine. Its lease owner name is kept in the data directory, so
/// that after a crash the restarted instance takes its own leases back at
/// once instead of waiting for them to expire.
fn task_engine(
    config: &Config,
    store: &Store,
    runner: Arc<cellgate_orchestration::DeferredPipeline>,
) -> anyhow::Result<cellgate_orchestration::Engine> {
    let o = &config.orchestration;
    let dir = config.data_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("instance-id");
    let id = match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => id.trim().to_owned(),
        _ => {
            let id = format!("cellgate-{}", uuid::Uuid::new_v4().simple());
            std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
            id
        }
    };
    let engine_config = cellgate_orchestration::EngineConfig {
        instance_id: Some(id),
        queues: o
            .queues
            .iter()
            .map(|(q, n)| (q.clone(), *n as usize))
            .collect(),
        visibility_timeout: Duration::from_secs(o.visibility_timeout_secs),
        heartbeat_interval: Duration::from_secs(o.heartbeat_secs),
        ..cellgate_orchestration::EngineConfig::default()
    };
    Ok(cellgate_orchestration::Engine::new(
        store.clone(),
        runner,
        engine_config,
    ))
}

/// The cell runtime: modules under `<data_dir>/cells`, limits from `[cells]`.
fn cell_registry(
    config: &Config,
    store: &Store,
    audit: Option<AuditSink>,
) -> anyhow::Result<Arc<cellgate_cells::CellRegistry>> {
    let c = &config.cells;
    let mut cells = cellgate_cells::CellsConfig::new(config.data_dir());
    cells.mount_roots = c.mount_roots.iter().map(Into::into).collect();
    cells.sandbox.max_memory_bytes = c.max_memory_bytes;
    cells.sandbox.max_concurrent_calls = c.max_concurrent_calls;
    cells.max_module_bytes = usize::try_from(c.max_module_bytes).unwrap_or(usize::MAX);
    cellgate_cells::CellRegistry::new(store.clone(), cells, audit)
        .map_err(|e| anyhow::anyhow!("invalid [cells]: {e}"))
}

/// The environment variable that counts how deep in a chain of cellgates
/// (one fronting another over stdio) this process is.
const DEPTH_VAR: &str = "CELLGATE_FEDERATION_DEPTH";
/// Deeper chains are almost surely a loop: a cellgate whose stdio upstream
/// is a cellgate reading the same cellgate.toml (an inherited working
/// directory is enough), which would spawn processes without end.
const MAX_DEPTH: u32 = 4;

/// The configured upstreams, with the depth counter passed on to stdio
/// children; refuses to start upstreams past [`MAX_DEPTH`].
pub(crate) fn upstreams_with_loop_guard(
    config: &Config,
) -> anyhow::Result<Vec<cellgate_config::UpstreamConfig>> {
    with_loop_guard(config.upstreams.clone())
}

/// [`upstreams_with_loop_guard`] for any list of upstreams.
pub(crate) fn with_loop_guard(
    mut upstreams: Vec<cellgate_config::UpstreamConfig>,
) -> anyhow::Result<Vec<cellgate_config::UpstreamConfig>> {
    let depth: u32 = std::env::var(DEPTH_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if depth >= MAX_DEPTH {
        anyhow::bail!(
            "upstreams: this cellgate is {depth} levels deep in cellgates fronting cellgates ({DEPTH_VAR}); \
             this is almost surely a loop (a stdio upstream running `cellgate` that reads the same cellgate.toml). \
             Give the child its own --config or cwd."
        );
    }
    for u in &mut upstreams {
        if let cellgate_config::UpstreamTransport::Stdio(t) = &mut u.transport {
            t.env.insert(DEPTH_VAR.to_owned(), (depth + 1).to_string());
        }
    }
    Ok(upstreams)
}

async fn rate_limiter(config: &Config) -> anyhow::Result<Arc<dyn RateLimiter>> {
    Ok(match config.rate_limit.backend {
        RateLimitBackend::Memory => Arc::new(MemoryLimiter::new()),
        RateLimitBackend::Redis => {
            let url = config.rate_limit.redis_url.as_deref().unwrap_or_default();
            Arc::new(
                RedisLimiter::connect(url, "cellgate:rl:")
                    .await
                    .with_context(|| {
                        format!(
                            "rate_limit.redis_url {}",
                            cellgate_config::redact_url_password(url)
                        )
                    })?,
            )
        }
    })
}

/// Maps the `[store]` section onto the store's own configuration.
pub fn store_config(config: &Config) -> StoreConfig {
    match config.store.backend {
        StoreBackend::Sqlite => StoreConfig::Sqlite {
            path: config.sqlite_path(),
        },
        StoreBackend::Postgres => StoreConfig::Postgres {
            // `Config::load` has checked that a postgres backend has a URL.
            url: config.store.url.clone().unwrap_or_default(),
            max_connections: config.store.max_connections,
        },
    }
}

pub fn edge_config(config: &Config) -> EdgeConfig {
    let s = &config.server;
    let mut allowed_hosts = s.allowed_hosts.clone();
    // A non-loopback listen address is reachable under its own IP.
    if let Ok(addr) = s.listen.parse::<SocketAddr>()
        && !addr.ip().is_loopback()
        && !addr.ip().is_unspecified()
    {
        allowed_hosts.push(addr.ip().to_string());
    }
    EdgeConfig {
        max_body_bytes: s.max_body_bytes as usize,
        max_json_depth: s.max_json_depth as usize,
        session_idle: Duration::from_secs(s.session_idle_secs),
        sse_retry: Duration::from_millis(s.sse_retry_ms),
        sse_history: s.sse_history as usize,
        request_timeout: Duration::from_secs(s.request_timeout_secs),
        allowed_origins: s.allowed_origins.clone(),
        allowed_hosts,
        ..EdgeConfig::default()
    }
}

/// Persists call records in batches: one transaction per batch keeps the
/// write cost per call small.
/// Writes the meter's call records to the call log, in batches per tenant,
/// and hands each to the memory's interaction recorder when one is on.
fn spawn_call_log_writer(
    store: Store,
    mut rx: mpsc::Receiver<CallRecord>,
    interactions: Option<cellgate_memory::InteractionRecorder>,
) {
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(512);
        while rx.recv_many(&mut batch, 512).await > 0 {
            let mut by_tenant: std::collections::BTreeMap<
                Arc<str>,
                Vec<cellgate_store::CallRecord>,
            > = Default::default();
            for r in batch.drain(..) {
                if let Some(recorder) = &interactions {
                    recorder.offer(&r);
                }
                by_tenant
                    .entry(r.tenant.clone())
                    .or_default()
                    .push(cellgate_store::CallRecord {
                        principal: r.principal.to_string(),
                        method: r.method.to_owned(),
                        target: r.target,
                        outcome: r.outcome.to_owned(),
                        error_code: r.error_code,
                        latency_us: r.latency_us as i64,
                        at_ms: r.at_ms,
                    });
            }
            for (tenant, records) in by_tenant {
                let Ok(id) = TenantId::parse(&tenant) else {
                    continue;
                };
                if let Err(e) = store.scope(&id).call_log().append_batch(&records).await {
                    tracing::warn!(error = %e, "writing the call log failed");
                }
            }
        }
    });
}

#[derive(Clone)]
struct Health {
    store: Store,
    metrics: Arc<Metrics>,
    providers: usize,
    audit: Option<AuditSink>,
}

async fn healthz() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "status": "ok" }).to_string(),
    )
        .into_response()
}

async fn readyz(State(h): State<Health>) -> Response {
    let store = h.store.ping().await;
    // Audit fails closed: while its writer cannot store, calls are refused,
    // so the instance is not ready either.
    let audit = h.audit.as_ref().map(AuditSink::status);
    let audit_ok = audit.as_ref().is_none_or(|a| a.healthy && a.running);
    let ready = store.is_ok() && audit_ok;
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "store": { "backend": h.store.backend_name(), "ok": store.is_ok(), "error": store.as_ref().err().map(|e| e.to_string()) },
        "audit": audit.map(|a| json!({ "ok": a.healthy && a.running, "queued": a.in_use, "capacity": a.capacity, "error": a.last_error })),
        "providers": h.providers,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn metrics(State(h): State<Health>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.render(),
    )
        .into_response()
}

/// The whole HTTP app: MCP routes plus health and metrics.
pub fn http_app(instance: &Instance, metrics_enabled: bool) -> Router {
    let health = Health {
        store: instance.store.clone(),
        metrics: instance.metrics.clone(),
        providers: instance.server.pipeline().catalog().providers().len(),
        audit: instance.audit.as_ref().map(|(sink, _)| sink.clone()),
    };
    let mut ops = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if metrics_enabled {
        ops = ops.route("/metrics", get(metrics));
    }
    let rest = cellgate_rest::router(
        instance.server.pipeline().clone(),
        cellgate_rest::RestOptions {
            max_body_bytes: instance.server.config.max_body_bytes,
            default_tenant: instance.server.config.default_tenant.clone(),
        },
    );
    let mut mcp = cellgate_mcp::http::router(instance.server.clone());
    for (name, server) in &instance.virtual_servers {
        mcp = mcp.nest(
            &format!("/servers/{name}"),
            cellgate_mcp::http::router(server.clone()),
        );
    }
    mcp.merge(rest)
        .merge(ops.with_state(health))
        .merge(instance.auth.routes())
        .layer(match &instance.audit {
            Some((sink, _)) => instance
                .auth
                .layer()
                .with_refusal_log(Arc::new(AuditedRefusals {
                    sink: sink.clone(),
                    tenant: instance.operator_tenant.clone(),
                })),
            None => instance.auth.layer(),
        })
        .layer(axum::middleware::map_response(security_headers))
}

/// Requests refused before authentication go to the audit log under the
/// operator tenant: they belong to no tenant, and the pipeline's own audit
/// layer never sees them.
struct AuditedRefusals {
    sink: AuditSink,
    tenant: String,
}

impl cellgate_auth::RefusalLog for AuditedRefusals {
    fn refused(&self, refusal: cellgate_auth::AuthRefusal) -> cellgate_kernel::BoxFuture<'_, ()> {
        Box::pin(async move {
            let event = cellgate_audit::AuditEvent::refused_request(
                &self.tenant,
                &refusal.path,
                refusal.status,
                refusal.reason,
            );
            // The sink's back-pressure policy applies; a refusal of the
            // entry itself is counted in the audit metrics.
            if let Ok(slot) = self.sink.reserve().await {
                slot.send(event);
            }
        })
    }
}

/// Headers every response carries: no sniffing, no framing, no referrer,
/// no caching of answers that may hold tenant data.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'; form-action 'self'; style-src 'unsafe-inline'",
        ),
    ] {
        h.entry(name)
            .or_insert(header::HeaderValue::from_static(value));
    }
    h.entry(header::CACHE_CONTROL)
        .or_insert(header::HeaderValue::from_static("no-store"));
    response
}

/// Serves HTTP until a shutdown signal. With `reload`, a changed
/// configuration file or SIGHUP applies upstream changes while running.
pub async fn serve(
    config: Config,
    reload: Option<(Option<std::path::PathBuf>, crate::reload::Loader)>,
) -> anyhow::Result<()> {
    init_logging(&config);
    let addr: SocketAddr = config.server.listen.parse().with_context(|| {
        format!(
            "server.listen {:?} is not an address like 127.0.0.1:8080",
            config.server.listen
        )
    })?;
    let instance = build(&config).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    if config.auth.required {
        tracing::info!("authentication required: bearer tokens (JWT) or API keys");
    } else {
        tracing::warn!(
            tenant = "local",
            roles = ?config.policy.anonymous_roles,
            "authentication is optional: callers without a credential act as the anonymous principal of the local tenant (set [auth] required = true to refuse them)"
        );
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "listening beyond loopback without required authentication: anyone who can reach this address acts as the local tenant's anonymous caller");
        }
    }
    let scheme = if config.server.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    println!(
        "cellgate {} listening on {scheme}://{local}/mcp",
        env!("CARGO_PKG_VERSION")
    );
    println!("  legacy SSE:  {scheme}://{local}/sse");
    println!(
        "  health:      {scheme}://{local}/healthz  ready: {scheme}://{local}/readyz  metrics: {scheme}://{local}/metrics"
    );
    println!("  data:        {}", config.redacted_store_location());
    if config.demo.enabled {
        println!("  demo:        conformance tools, resources and prompts are served");
    }
    let _background = instance.auth.spawn_background();
    let services = Services::start(&instance, &config).await?;
    if let Some((path, load)) = reload {
        if let Some(p) = &path {
            println!("  reload:      on changes to {} and on SIGHUP", p.display());
        }
        crate::reload::spawn(
            path,
            config.clone(),
            load,
            instance.upstream_sources.clone(),
        );
    }
    let app = http_app(&instance, config.metrics.enabled);
    match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| {
                    format!("loading server.tls_cert {cert} and server.tls_key {key}")
                })?;
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                stopper.graceful_shutdown(Some(Duration::from_secs(10)));
            });
            axum_server::from_tcp_rustls(listener.into_std()?, tls)
                .context("serving HTTPS")?
                .handle(handle)
                .serve(app.into_make_service())
                .await
                .context("serving HTTPS")?;
        }
        _ => axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving HTTP")?,
    }
    services.stop().await;
    instance.shutdown().await;
    Ok(())
}

pub async fn stdio(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    let instance = build(&config).await?;
    let services = Services::start(&instance, &config).await?;
    let served = cellgate_mcp::stdio::serve_stdio(instance.server.clone())
        .await
        .context("serving stdio");
    services.stop().await;
    instance.shutdown().await;
    served?;
    Ok(())
}

/// What a serving instance runs besides answering requests: task workers
/// (after taking back this instance's leases from before a crash and
/// resuming its workflows), scheduled memory consolidation, and periodic
/// re-verification of installed cells.
pub struct Services {
    workers: Option<cellgate_orchestration::BackgroundWorkers>,
    jobs: Vec<tokio::task::JoinHandle<()>>,
}

impl Services {
    pub async fn start(instance: &Instance, config: &Config) -> anyhow::Result<Services> {
        let mut jobs = Vec::new();
        if let Some(cells) = &instance.cells
            && config.cells.reverify_interval_secs > 0
        {
            jobs.push(
                cells.spawn_reverifier(Duration::from_secs(config.cells.reverify_interval_secs)),
            );
        }
        if let Some(memory) = &instance.memory
            && config.memory.consolidate_every_secs > 0
        {
            jobs.push(memory.spawn_scheduled_consolidation(Duration::from_secs(
                config.memory.consolidate_every_secs,
            )));
        }
        let workers = match &instance.orchestration {
            Some(engine) => {
                let recovered = engine
                    .recover_on_startup()
                    .await
                    .map_err(|e| anyhow::anyhow!("resuming tasks and workflows: {e}"))?;
                if recovered > 0 {
                    tracing::info!(
                        recovered,
                        "took back tasks and workflows from before a restart"
                    );
                }
                Some(engine.start())
            }
            None => None,
        };
        Ok(Services { workers, jobs })
    }

    /// Stops the workers (their tasks in flight go back to the queue) and
    /// the periodic jobs.
    pub async fn stop(self) {
        for job in &self.jobs {
            job.abort();
        }
        if let Some(w) = self.workers {
            w.shutdown().await;
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
