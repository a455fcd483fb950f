//! Memory and knowledge for agents, as a built-in provider
//! ([`MemoryProvider`]): key/value memories with versions and expiry, a
//! knowledge graph whose tools have the names, arguments and results of the
//! official `@modelcontextprotocol/server-memory` (so agents written for it
//! work unchanged) plus ranked concept queries with the surrounding
//! subgraph, superseding updates, export/import, consolidation and the
//! elevation of private knowledge into the tenant's shared space with
//! personal data redacted.
//!
//! Data lives in the tenant-scoped store (`cellgate_store::Memory`): the
//! tenant comes from the call's identity, and within it each item is in the
//! shared space or in the calling principal's private one. Search is hybrid:
//! the store's full-text ranking fused with vector similarity by weighted
//! reciprocal rank fusion ([`Fusion`]; standardised scores are the
//! alternative); vectors come from an [`Embedder`] (a local hashed embedder
//! by default, or an OpenAI-compatible endpoint) and are searched by an
//! in-memory [`index`](crate::index) loaded from the store on first use,
//! its HNSW graph built in the background.
//!
//! Not here: authorization (the pipeline decides who may call these tools),
//! PII detection (reused from `cellgate-inspect`), and metering: tool calls
//! are recorded as observations ([`InteractionRecorder`]) only from the call
//! records the pipeline's meter hands over.

mod anonymize;
pub mod dataset;
mod embed;
mod index;
mod interactions;
mod persist;
mod tools;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cellgate_kernel::{BoxFuture, CallContext, McpError, Provider, Resource, Tool};
use cellgate_store::{
    ItemKind, MEMORY_BATCH_MAX, Memory, MemoryRecord, NewMemory, Space, Store, StoreError,
    TenantId, View,
};
use serde_json::{Map, Value};

pub use anonymize::Anonymizer;
pub use embed::{Embedder, HashedEmbedder, HttpEmbedder};
pub use interactions::{InteractionRecorder, RecordedCalls, TOOL_ENTITY_TYPE};

pub use index::IndexState;
use index::{BuildJob, VectorIndex};

/// The vector index without a store, for `benches/index.rs`. Not a stable
/// interface.
#[doc(hidden)]
pub mod bench {
    pub use crate::index::{
        BuildJob, BuiltGraph, GRAPH_EF_CONSTRUCTION, GRAPH_EF_SEARCH, VectorIndex,
    };
}

/// What can go wrong outside of a tool's own validation.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("`{key}`: {message}")]
    Config { key: &'static str, message: String },
    #[error("embedding endpoint {url}: {message}")]
    Embedding { url: String, message: String },
}

/// Tuning of the memory provider; every field has a default.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Earlier values kept per memory key.
    pub keep_versions: u32,
    /// Items per tenant and kind above which the vector index builds an
    /// HNSW graph instead of scanning exactly.
    pub exact_search_max: usize,
    /// Candidates each ranking contributes to hybrid fusion.
    pub fusion_pool: u32,
    /// How hybrid search combines the two rankings.
    pub fusion: Fusion,
    /// Similarity at or above which a new entity gets an inferred
    /// `related_to` edge to an existing one.
    pub discovery_threshold: f32,
    /// Most inferred edges per new entity.
    pub discovery_max: usize,
    /// Similarity at or above which consolidation merges two entities of
    /// the same type.
    pub merge_threshold: f32,
    /// Inferred edges scoring below this are pruned by consolidation.
    pub prune_below: f64,
    /// Record tool calls as observations on `tool` entities
    /// ([`MemoryProvider::interaction_recorder`]).
    pub record_interactions: bool,
    /// Recorded observations kept per tool entity, newest first.
    pub interactions_kept: usize,
    /// Where built HNSW graphs are saved and loaded from (one file per
    /// tenant and kind); `None` rebuilds them after every start.
    pub index_dir: Option<std::path::PathBuf>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            keep_versions: 10,
            exact_search_max: 20_000,
            fusion_pool: 50,
            fusion: Fusion::DEFAULT,
            discovery_threshold: 0.8,
            discovery_max: 3,
            merge_threshold: 0.95,
            prune_below: 0.85,
            record_interactions: false,
            interactions_kept: 100,
            index_dir: None,
        }
    }
}

/// How [`MemoryProvider::search`] ranks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SearchMode {
    /// Full text only (FTS5 bm25 / tsvector rank).
    Text,
    /// Vector similarity only.
    Vector,
    /// Both, fused as the config's [`MemoryConfig::fusion`] says (what the
    /// tools use).
    Hybrid,
    /// Both, fused as given (for comparisons).
    Fused(Fusion),
}

/// How hybrid search combines the full-text and the vector ranking, each
/// cut to [`MemoryConfig::fusion_pool`] candidates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fusion {
    /// Weighted reciprocal rank fusion: a row scores the sum over the
    /// rankings it is in of `weight / (k + rank)`, rank counted from 1.
    /// Only ranks count, so the two scales need no calibration.
    ReciprocalRank {
        k: f64,
        text_weight: f64,
        vector_weight: f64,
    },
    /// Each list's scores standardised (z-scores over its candidates, a
    /// list with fewer matches than asked for padded with zero scores) and
    /// summed; a row missing from a list counts as that list's weakest
    /// candidate. Keeps how far a hit stands out, which ranks lose.
    Standardised,
}

impl Fusion {
    /// Reciprocal rank fusion with `k = 1` and vectors weighted 1.5 times
    /// the full text, chosen from the variants measured (see the README):
    /// with the textbook `k = 60` a first place is worth hardly more than a
    /// tenth, so rows both lists rank mediocre outvote one list's clear
    /// winner; the full-text order among rows that share only a common
    /// word is near arbitrary, so vectors weigh a little more; and not
    /// twice as much, which was best on the labelled set but let a weak
    /// vector ranking bury full-text winners at 100,000 items. A full-text
    /// first place (1/2) ties a vector second (1.5/3); ties go to the
    /// older row.
    pub const DEFAULT: Fusion = Fusion::ReciprocalRank {
        k: 1.0,
        text_weight: 1.0,
        vector_weight: 1.5,
    };

    /// Fuses a full-text and a vector ranking (each best first) into
    /// unordered `(id, score)` pairs, higher better.
    fn fuse(&self, text: Vec<(i64, f64)>, vector: Vec<(i64, f64)>, pool: usize) -> Vec<(i64, f64)> {
        match *self {
            Fusion::ReciprocalRank {
                k,
                text_weight,
                vector_weight,
            } => fuse_reciprocal_rank(&[(&text, text_weight), (&vector, vector_weight)], k),
            Fusion::Standardised => fuse_standardised(&[text, vector], pool),
        }
    }
}

/// Weighted reciprocal rank fusion of rankings (best first).
fn fuse_reciprocal_rank(lists: &[(&[(i64, f64)], f64)], k: f64) -> Vec<(i64, f64)> {
    let mut fused: HashMap<i64, f64> = HashMap::new();
    for (list, weight) in lists {
        for (rank, (id, _)) in list.iter().enumerate() {
            // A zero k with rank counted from 1 never divides by zero.
            *fused.entry(*id).or_default() += weight / (k + rank as f64 + 1.0);
        }
    }
    fused.into_iter().collect()
}

/// Sums each list's standardised scores per row (see [`SearchMode::Hybrid`]).
/// A list shorter than `pool` had fewer matches than it was asked for: the
/// rows it lacks score zero (no word matched, or an orthogonal vector), so
/// it is padded with zeros before standardising. Without that, a lone
/// full-text hit would have no spread to stand out by.
fn fuse_standardised(lists: &[Vec<(i64, f64)>], pool: usize) -> Vec<(i64, f64)> {
    let mut fused: HashMap<i64, f64> = HashMap::new();
    let mut floor = 0.0;
    let mut standardised = Vec::new();
    for list in lists.iter().filter(|l| !l.is_empty()) {
        let pad = pool.saturating_sub(list.len()) as f64;
        let n = list.len() as f64 + pad;
        let mean = list.iter().map(|r| r.1).sum::<f64>() / n;
        let var = (list.iter().map(|r| (r.1 - mean).powi(2)).sum::<f64>() + pad * mean * mean) / n;
        let sd = var.sqrt();
        let scale = |s: f64| if sd > 0.0 { (s - mean) / sd } else { 0.0 };
        let z: Vec<(i64, f64)> = list.iter().map(|&(id, s)| (id, scale(s))).collect();
        let mut min = z.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
        if pad > 0.0 {
            min = min.min(scale(0.0));
        }
        floor += min;
        standardised.push((min, z));
    }
    for (min, z) in &standardised {
        for &(id, v) in z {
            // Start from the sum of every list's floor, then replace this
            // list's floor by the row's own value.
            *fused.entry(id).or_insert(floor) += v - min;
        }
    }
    fused.into_iter().collect()
}

type IndexKey = (String, ItemKind);

/// One tenant's index of one kind: loaded on first use, its graph built in
/// the background.
#[derive(Default)]
struct IndexSlot {
    index: Arc<tokio::sync::Mutex<Option<VectorIndex>>>,
    /// Woken when a build ends (installed or failed).
    built: tokio::sync::Notify,
}

/// Holds back graph builds while alive (see
/// [`MemoryProvider::pause_index_builds`]).
pub struct IndexBuildPause {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// The memory provider. Cheap to share (`Arc`).
pub struct MemoryProvider {
    store: Store,
    embedder: Arc<dyn Embedder>,
    anonymizer: Anonymizer,
    config: MemoryConfig,
    tools: Vec<Tool>,
    indexes: Mutex<HashMap<IndexKey, Arc<IndexSlot>>>,
    /// One graph build at a time per provider: a build already uses every
    /// core (rayon), so several at once would only starve searches.
    builds: Arc<tokio::sync::Semaphore>,
}

impl MemoryProvider {
    /// A provider over `store`'s memory tables. `anonymizer` redacts what
    /// `elevate_knowledge` copies (build it from the content filter's
    /// detectors so there is one PII implementation).
    pub fn new(
        store: Store,
        embedder: Arc<dyn Embedder>,
        anonymizer: Anonymizer,
        config: MemoryConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            embedder,
            anonymizer,
            config,
            tools: tools::definitions(),
            indexes: Mutex::new(HashMap::new()),
            builds: Arc::new(tokio::sync::Semaphore::new(1)),
        })
    }

    /// With the local hashed embedder, the built-in PII detectors and
    /// default tuning.
    pub fn with_defaults(store: Store) -> Arc<Self> {
        Self::new(
            store,
            Arc::new(HashedEmbedder::default()),
            Anonymizer::builtin(),
            MemoryConfig::default(),
        )
    }

    pub fn config(&self) -> &MemoryConfig {
        &self.config
    }

    pub(crate) fn memory(&self, tenant: &TenantId) -> Memory {
        self.store.scope(tenant).memory()
    }

    pub(crate) fn anonymizer(&self) -> &Anonymizer {
        &self.anonymizer
    }

    fn slot(&self, tenant: &TenantId, kind: ItemKind) -> Arc<IndexSlot> {
        let mut map = self.indexes.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((tenant.as_str().to_owned(), kind))
            .or_default()
            .clone()
    }

    /// Embeds rows just written and adds them to the tenant's index if it
    /// is loaded (an unloaded index picks them up when it loads).
    pub(crate) async fn embed_rows(
        &self,
        tenant: &TenantId,
        kind: ItemKind,
        rows: &[(i64, Space, String)],
    ) -> Result<(), MemoryError> {
        if rows.is_empty() {
            return Ok(());
        }
        let texts: Vec<String> = rows.iter().map(|r| r.2.clone()).collect();
        let vectors = self.embedder.embed(&texts).await?;
        let memory = self.memory(tenant);
        let pairs: Vec<(i64, &[f32])> = rows
            .iter()
            .zip(&vectors)
            .map(|((id, _, _), v)| (*id, v.as_slice()))
            .collect();
        for chunk in pairs.chunks(MEMORY_BATCH_MAX) {
            memory
                .set_embeddings(kind, self.embedder.model(), chunk)
                .await?;
        }
        let slot = self.slot(tenant, kind);
        let mut guard = slot.index.lock().await;
        if let Some(index) = guard.as_mut() {
            for ((id, space, _), v) in rows.iter().zip(vectors) {
                index.insert(*id, space.clone(), v);
            }
        }
        Ok(())
    }

    /// Writes memories in bulk (what `store_memory` does one at a time):
    /// one transaction per [`MEMORY_BATCH_MAX`] memories, embedded in
    /// batches. For imports and loads; the records in the order given.
    pub async fn store_memories(
        &self,
        tenant: &TenantId,
        space: &Space,
        memories: &[NewMemory],
    ) -> Result<Vec<MemoryRecord>, MemoryError> {
        let memory = self.memory(tenant);
        let mut written = Vec::with_capacity(memories.len());
        for chunk in memories.chunks(MEMORY_BATCH_MAX) {
            let records = memory
                .put_memories(space, chunk, self.config.keep_versions)
                .await?;
            let rows: Vec<(i64, Space, String)> = records
                .iter()
                .map(|r| (r.id, r.space.clone(), r.search_text.clone()))
                .collect();
            self.embed_rows(tenant, ItemKind::Memory, &rows).await?;
            written.extend(records);
        }
        Ok(written)
    }

    /// Drops rows from the tenant's index (deleted or superseded).
    pub(crate) async fn unindex(&self, tenant: &TenantId, kind: ItemKind, ids: &[i64]) {
        let slot = self.slot(tenant, kind);
        let mut guard = slot.index.lock().await;
        if let Some(index) = guard.as_mut() {
            ids.iter().for_each(|id| index.remove(*id));
        }
    }

    /// Loads the index from the store (embedding rows that lack a vector of
    /// the current model) unless loaded, and starts building its graph in
    /// the background when due; meanwhile searches scan exactly.
    async fn loaded_index(
        &self,
        tenant: &TenantId,
        kind: ItemKind,
    ) -> Result<tokio::sync::OwnedMutexGuard<Option<VectorIndex>>, MemoryError> {
        let slot = self.slot(tenant, kind);
        let mut guard = slot.index.clone().lock_owned().await;
        if guard.is_none() {
            let memory = self.memory(tenant);
            let model = self.embedder.model().to_owned();
            loop {
                let batch = memory
                    .unembedded(kind, &model, MEMORY_BATCH_MAX as u32)
                    .await?;
                if batch.is_empty() {
                    break;
                }
                let texts: Vec<String> = batch.iter().map(|u| u.text.clone()).collect();
                let vectors = self.embedder.embed(&texts).await?;
                let pairs: Vec<(i64, &[f32])> = batch
                    .iter()
                    .zip(&vectors)
                    .map(|(u, v)| (u.id, v.as_slice()))
                    .collect();
                memory.set_embeddings(kind, &model, &pairs).await?;
            }
            let mut index = VectorIndex::new(self.config.exact_search_max);
            let mut after = 0;
            loop {
                let page = memory.embeddings(kind, &model, after, 10_000).await?;
                let Some(last) = page.last() else { break };
                after = last.id;
                for v in page {
                    index.insert(v.id, v.space, v.vector);
                }
            }
            if index.len() >= self.config.exact_search_max {
                self.load_saved_graph(tenant, kind, &mut index).await;
            }
            *guard = Some(index);
        }
        if let Some(job) = guard.as_mut().and_then(VectorIndex::start_build) {
            self.spawn_build(tenant, kind, slot, job);
        }
        Ok(guard)
    }

    /// Adopts the saved graph of the tenant's `kind` index if there is one
    /// and it matches the stored vectors; otherwise the graph is rebuilt.
    async fn load_saved_graph(&self, tenant: &TenantId, kind: ItemKind, index: &mut VectorIndex) {
        let Some(dir) = &self.config.index_dir else {
            return;
        };
        let path = persist::path(dir, tenant, kind);
        let model = self.embedder.model().to_owned();
        let rows = index.vectors();
        let loaded = tokio::task::spawn_blocking(move || persist::load(&path, &model, &rows)).await;
        match loaded {
            Ok(Ok(map)) => {
                tracing::debug!(tenant = %tenant, items = map.values.len(), "loaded a saved vector index");
                index.adopt(map);
            }
            Ok(Err(e)) if e.is_missing() => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "ignoring a saved vector index; rebuilding it")
            }
            Err(e) => tracing::error!(error = %e, "loading a saved vector index failed"),
        }
    }

    /// Builds `job`'s graph off the async threads (one build at a time),
    /// installs it into `slot`'s index and saves it when configured.
    fn spawn_build(&self, tenant: &TenantId, kind: ItemKind, slot: Arc<IndexSlot>, job: BuildJob) {
        let builds = self.builds.clone();
        let instance = job.instance();
        let save_to = self.config.index_dir.as_ref().map(|dir| {
            (
                persist::path(dir, tenant, kind),
                self.embedder.model().to_owned(),
            )
        });
        tokio::spawn(async move {
            // Never closed, so this always holds a permit.
            let _permit = builds.acquire_owned().await;
            let items = job.len();
            let started = std::time::Instant::now();
            let built = tokio::task::spawn_blocking(move || job.run()).await;
            let mut guard = slot.index.lock().await;
            let mut saving = None;
            match built {
                Ok(built) => {
                    tracing::debug!(
                        items,
                        secs = started.elapsed().as_secs_f64(),
                        "vector index built"
                    );
                    if let Some(index) = guard.as_mut()
                        && index.install(built)
                    {
                        saving = index.graph_map().zip(save_to);
                    }
                }
                Err(e) => tracing::error!(error = %e, "building a vector index failed"),
            }
            drop(guard);
            if let Some((map, (path, model))) = saving {
                // Saved before waiters are woken, so a caller that waited
                // for the index finds the file written.
                let saved =
                    tokio::task::spawn_blocking(move || persist::save(&path, &model, &map)).await;
                match saved {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "saving a vector index failed"),
                    Err(e) => tracing::error!(error = %e, "saving a vector index failed"),
                }
            }
            if let Some(index) = slot.index.lock().await.as_mut() {
                index.finish_build(instance);
            }
            slot.built.notify_waiters();
        });
    }

    /// How the tenant's vector search over `kind` answers right now.
    pub async fn index_state(&self, tenant: &TenantId, kind: ItemKind) -> IndexState {
        let slot = self.slot(tenant, kind);
        let guard = slot.index.lock().await;
        guard
            .as_ref()
            .map_or(IndexState::Unloaded, VectorIndex::state)
    }

    /// Waits until no graph build of the tenant's `kind` index is queued or
    /// running, and returns its state then.
    pub async fn wait_for_index(&self, tenant: &TenantId, kind: ItemKind) -> IndexState {
        let slot = self.slot(tenant, kind);
        loop {
            let notified = slot.built.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let state = self.index_state(tenant, kind).await;
            if !state.building() {
                return state;
            }
            notified.await;
        }
    }

    /// Holds back graph builds until the returned value is dropped (for a
    /// maintenance window, or to observe searches before a graph exists);
    /// searches keep answering by exact scan.
    pub async fn pause_index_builds(&self) -> IndexBuildPause {
        let permit = self.builds.clone().acquire_owned().await;
        IndexBuildPause {
            _permit: permit.expect("the build semaphore is never closed"),
        }
    }

    /// Forgets the tenant's loaded indexes; the next search reloads them
    /// from the store (consolidation's "rebuild indexes").
    pub(crate) async fn reset_indexes(&self, tenant: &TenantId) {
        for kind in [ItemKind::Memory, ItemKind::Entity] {
            *self.slot(tenant, kind).index.lock().await = None;
        }
    }

    /// Vector neighbours of `text` among `kind` rows that `view` sees.
    pub(crate) async fn nearest(
        &self,
        tenant: &TenantId,
        kind: ItemKind,
        view: &View,
        text: &str,
        k: usize,
    ) -> Result<Vec<(i64, f32)>, MemoryError> {
        let query = self
            .embedder
            .embed(&[text.to_owned()])
            .await?
            .pop()
            .unwrap_or_default();
        let guard = self.loaded_index(tenant, kind).await?;
        Ok(guard
            .as_ref()
            .map(|i| i.search(&query, k, view))
            .unwrap_or_default())
    }

    /// Ranked row ids of `kind` for `query` as `view` sees them, best first,
    /// with a score that is higher for better matches (its scale depends on
    /// the mode).
    pub async fn search(
        &self,
        tenant: &TenantId,
        kind: ItemKind,
        view: &View,
        query: &str,
        limit: usize,
        mode: SearchMode,
    ) -> Result<Vec<(i64, f64)>, MemoryError> {
        let pool = self.config.fusion_pool.max(limit as u32);
        let text = if mode == SearchMode::Vector {
            Vec::new()
        } else {
            self.memory(tenant)
                .search_text(kind, view, query, pool)
                .await?
        };
        let vector = if mode == SearchMode::Text {
            Vec::new()
        } else {
            self.nearest(tenant, kind, view, query, pool as usize)
                .await?
        };
        let mut ranked: Vec<(i64, f64)> = match mode {
            SearchMode::Text => text,
            SearchMode::Vector => vector
                .into_iter()
                .map(|(id, s)| (id, f64::from(s)))
                .collect(),
            SearchMode::Hybrid | SearchMode::Fused(_) => {
                let fusion = match mode {
                    SearchMode::Fused(f) => f,
                    _ => self.config.fusion,
                };
                let vector: Vec<(i64, f64)> = vector
                    .into_iter()
                    .map(|(id, s)| (id, f64::from(s)))
                    .collect();
                fusion.fuse(text, vector, pool as usize)
            }
        };
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(limit);
        Ok(ranked)
    }
}

impl MemoryProvider {
    /// Embeds new entities and proposes inferred `related_to` edges to the
    /// nearest existing entities of the same space (relationship discovery).
    pub(crate) async fn after_entities_created(
        &self,
        tenant: &TenantId,
        space: &Space,
        created: &[cellgate_store::EntityRecord],
    ) -> Result<(), MemoryError> {
        let rows: Vec<(i64, Space, String)> = created
            .iter()
            .map(|e| (e.id, e.space.clone(), e.search_text.clone()))
            .collect();
        self.embed_rows(tenant, ItemKind::Entity, &rows).await?;
        if self.config.discovery_max == 0 || created.is_empty() {
            return Ok(());
        }
        let view = View::only(space);
        let mut proposals = Vec::new();
        for e in created {
            let near = self
                .nearest(
                    tenant,
                    ItemKind::Entity,
                    &view,
                    &e.search_text,
                    self.config.discovery_max + 1,
                )
                .await?;
            let ids: Vec<i64> = near
                .iter()
                .filter(|(id, s)| *id != e.id && *s >= self.config.discovery_threshold)
                .map(|(id, _)| *id)
                .take(self.config.discovery_max)
                .collect();
            let neighbours = self.memory(tenant).entities_by_ids(&view, &ids).await?;
            for n in neighbours {
                let score = near
                    .iter()
                    .find(|(id, _)| *id == n.id)
                    .map_or(0.0, |(_, s)| *s);
                let mut r = cellgate_store::NewRelation::stated(&e.name, &n.name, "related_to");
                r.inferred = true;
                r.score = Some(f64::from(score));
                r.confidence = f64::from(score).clamp(0.0, 1.0);
                r.source = Some("discovery".into());
                proposals.push(r);
            }
        }
        self.memory(tenant)
            .create_relations(space, &proposals)
            .await?;
        Ok(())
    }

    /// Consolidates one space of a tenant: expires memories past their TTL
    /// (every space), merges entities of the same type whose vectors are at
    /// least `merge_threshold` similar (the older one is kept and records
    /// the merge), prunes inferred edges scoring below `prune_below`, and
    /// reloads the vector indexes. Returns the counts.
    pub async fn consolidate(
        &self,
        tenant: &TenantId,
        space: &Space,
        merge_threshold: f32,
        prune_below: f64,
    ) -> Result<Value, MemoryError> {
        let memory = self.memory(tenant);
        let expired = memory.expire_memories().await?;
        self.unindex(tenant, ItemKind::Memory, &expired).await;
        let view = View::only(space);
        let graph = memory.read_graph(&view, false).await?;
        let mut gone: std::collections::HashSet<i64> = std::collections::HashSet::new();
        let mut merged = 0u64;
        for keep in &graph.entities {
            if gone.contains(&keep.id) {
                continue;
            }
            let near = self
                .nearest(tenant, ItemKind::Entity, &view, &keep.search_text, 6)
                .await?;
            let candidates: Vec<i64> = near
                .iter()
                .filter(|(id, s)| *id > keep.id && *s >= merge_threshold && !gone.contains(id))
                .map(|(id, _)| *id)
                .collect();
            for dup in memory.entities_by_ids(&view, &candidates).await? {
                if dup.entity_type != keep.entity_type || dup.valid_to_ms.is_some() {
                    continue;
                }
                let score = near
                    .iter()
                    .find(|(id, _)| *id == dup.id)
                    .map_or(0.0, |(_, s)| *s);
                if let Some(id) = memory
                    .merge_entities(space, &keep.name, &dup.name, f64::from(score))
                    .await?
                {
                    gone.insert(id);
                    self.unindex(tenant, ItemKind::Entity, &[id]).await;
                    merged += 1;
                }
            }
        }
        let pruned = memory.prune_inferred_relations(space, prune_below).await?;
        self.reset_indexes(tenant).await;
        let mut reindexed = 0;
        for kind in [ItemKind::Memory, ItemKind::Entity] {
            reindexed += self
                .loaded_index(tenant, kind)
                .await?
                .as_ref()
                .map_or(0, VectorIndex::len);
        }
        Ok(serde_json::json!({
            "mergedEntities": merged,
            "prunedRelations": pruned,
            "expiredMemories": expired.len(),
            "reindexed": reindexed,
        }))
    }

    /// Consolidates the shared space of every tenant, every `every`, until
    /// the returned task is aborted. Failures are logged, not fatal.
    pub fn spawn_scheduled_consolidation(
        self: &Arc<Self>,
        every: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let tenants = match this.store.tenants().list().await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(error = %e, "memory consolidation: listing tenants failed");
                        continue;
                    }
                };
                for t in tenants {
                    let (merge, prune) = (this.config.merge_threshold, this.config.prune_below);
                    if let Err(e) = this.consolidate(&t.id, &Space::Shared, merge, prune).await {
                        tracing::warn!(tenant = %t.id, error = %e, "memory consolidation failed");
                    }
                }
            }
        })
    }
}

impl Provider for MemoryProvider {
    fn id(&self) -> &str {
        "memory"
    }

    fn list_tools<'a>(
        &'a self,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<Tool>, McpError>> {
        Box::pin(async move { Ok(self.tools.clone()) })
    }

    fn call_tool<'a>(
        &'a self,
        ctx: &'a CallContext,
        name: &'a str,
        arguments: Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async move { tools::call(self, ctx, name, arguments).await })
    }

    fn list_resources<'a>(
        &'a self,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Vec<Resource>, McpError>> {
        Box::pin(async move { Ok(vec![tools::graph_resource()]) })
    }

    fn read_resource<'a>(
        &'a self,
        ctx: &'a CallContext,
        uri: &'a str,
    ) -> BoxFuture<'a, Result<Value, McpError>> {
        Box::pin(async move { tools::read_graph_resource(self, ctx, uri).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn best(lists: &[Vec<(i64, f64)>]) -> i64 {
        let mut fused = fuse_standardised(lists, 50);
        fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        fused[0].0
    }

    #[test]
    fn a_single_text_hit_is_not_ranked_last() {
        // Full text found one row; vectors rank other rows, none far ahead.
        let vector: Vec<(i64, f64)> = (10..30).map(|id| (id, 0.5 - id as f64 * 0.001)).collect();
        assert_eq!(best(&[vec![(7, 3.0)], vector.clone()]), 7);
        // Unless vectors found it too: a lone text hit that vectors rank
        // first wins over both lists' other rows.
        assert_eq!(best(&[vec![(12, 3.0)], vector]), 12);
    }

    fn top5(mut fused: Vec<(i64, f64)>) -> Vec<i64> {
        fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        fused.iter().take(5).map(|r| r.0).collect()
    }

    #[test]
    fn a_clear_first_place_survives_reciprocal_rank_fusion() {
        // Full text ranks row 7 first (a rare word) and rows 101.. after it
        // (common words); vectors rank rows 101.. and lack row 7.
        let text: Vec<(i64, f64)> = std::iter::once((7, 9.0))
            .chain((101..120).map(|id| (id, 1.0)))
            .collect();
        let vector: Vec<(i64, f64)> = (101..120).map(|id| (id, 0.5)).collect();
        let default = top5(Fusion::DEFAULT.fuse(text.clone(), vector.clone(), 50));
        assert!(default.contains(&7), "{default:?}");
        // With the textbook k = 60, two mediocre placements outvote it.
        let textbook = Fusion::ReciprocalRank {
            k: 60.0,
            text_weight: 1.0,
            vector_weight: 1.0,
        };
        assert!(!top5(textbook.fuse(text, vector, 50)).contains(&7));
    }

    #[test]
    fn reciprocal_rank_fusion_weighs_and_adds_ranks() {
        let fused = fuse_reciprocal_rank(&[(&[(1, 5.0), (2, 4.0)], 1.0), (&[(2, 0.9)], 2.0)], 1.0);
        let score = |id| fused.iter().find(|r| r.0 == id).map(|r| r.1);
        assert_eq!(score(1), Some(0.5));
        assert_eq!(score(2), Some(1.0 / 3.0 + 1.0));
    }

    #[test]
    fn agreement_wins() {
        let text = vec![(1, 9.0), (2, 8.0), (3, 1.0)];
        let vector = vec![(2, 0.9), (1, 0.5), (3, 0.4)];
        assert_eq!(best(&[text, vector]), 2);
    }
}
