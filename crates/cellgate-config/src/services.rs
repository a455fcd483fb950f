//! `[memory]` and `[orchestration]`: the built-in services' settings.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diagnostic::Problem;

/// Durable memory: key/value memories, the knowledge graph (the official
/// memory server's tools and more) and hybrid search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Serve the memory tools.
    pub enabled: bool,
    /// Earlier values kept per memory key.
    pub keep_versions: u32,
    /// Items per tenant and kind above which vector search uses an HNSW
    /// index instead of an exact scan.
    pub exact_search_max: u64,
    /// Similarity (0–1) at or above which a new entity gets an inferred
    /// `related_to` edge to an existing one.
    pub discovery_threshold: f32,
    /// Similarity (0–1) at or above which consolidation merges two entities
    /// of the same type.
    pub merge_threshold: f32,
    /// Inferred edges scoring below this are pruned by consolidation.
    pub prune_below: f64,
    /// Seconds between scheduled consolidations; 0 turns them off (the
    /// `consolidate_memory` tool still works).
    pub consolidate_every_secs: u64,
    /// Record every tool call (caller, time, outcome, latency) as an
    /// observation on an entity named after the tool, so agents can ask the
    /// graph which tools were used and how they fared. Off by default.
    pub record_interactions: bool,
    /// Keep each tenant's built HNSW graph under `<data_dir>/memory-index`,
    /// so a restart loads it instead of rebuilding it (a file that does not
    /// match the stored vectors is rebuilt, never trusted).
    pub persist_index: bool,
    /// How hybrid search fuses the full-text and the vector ranking.
    pub fusion: FusionConfig,
    /// Where embeddings come from.
    pub embedding: EmbeddingConfig,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            keep_versions: 10,
            exact_search_max: 20_000,
            discovery_threshold: 0.8,
            merge_threshold: 0.95,
            prune_below: 0.85,
            consolidate_every_secs: 3600,
            record_interactions: false,
            persist_index: true,
            fusion: FusionConfig::default(),
            embedding: EmbeddingConfig::default(),
        }
    }
}

/// Hybrid search's fusion of the full-text and the vector ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FusionConfig {
    /// `rrf`: weighted reciprocal rank fusion, each row scoring the sum of
    /// `weight / (k + rank)` over the rankings it is in. `zscore`: each
    /// ranking's scores standardised and summed.
    pub method: FusionMethod,
    /// RRF's constant (>= 0): small values let a clear first place count.
    pub k: f64,
    /// RRF weight of the full-text ranking (>= 0).
    pub text_weight: f64,
    /// RRF weight of the vector ranking (>= 0).
    pub vector_weight: f64,
    /// Candidates each ranking contributes (5–1000).
    pub depth: u32,
}

impl Default for FusionConfig {
    fn default() -> Self {
        Self {
            method: FusionMethod::Rrf,
            k: 1.0,
            text_weight: 1.0,
            vector_weight: 1.5,
            depth: 50,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FusionMethod {
    Rrf,
    Zscore,
}

/// The embedding backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// `local`: hashed character n-grams and words, computed in-process, no
    /// download. `openai`: an OpenAI-compatible `/v1/embeddings` endpoint
    /// (OpenAI, LM Studio, Ollama, vLLM) at `url`.
    pub backend: EmbeddingBackend,
    /// Dimensions of the local embedder (16–4096).
    pub dimensions: u32,
    /// Base URL of the OpenAI-compatible API, such as
    /// `http://127.0.0.1:11434/v1` (Ollama).
    pub url: Option<String>,
    /// The embedding model name the endpoint expects.
    pub model: Option<String>,
    /// The environment variable holding the API key, if the endpoint needs
    /// one (the key itself never goes in this file).
    pub api_key_env: Option<String>,
    /// Seconds one embedding request may take.
    pub timeout_secs: u64,
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        Self {
            backend: EmbeddingBackend::Local,
            dimensions: 1024,
            url: None,
            model: None,
            api_key_env: None,
            timeout_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingBackend {
    Local,
    Openai,
}

impl MemoryConfig {
    pub(crate) fn validate(&self, p: &mut Vec<Problem>) {
        for (key, v) in [
            (
                "memory.discovery_threshold",
                f64::from(self.discovery_threshold),
            ),
            ("memory.merge_threshold", f64::from(self.merge_threshold)),
            ("memory.prune_below", self.prune_below),
        ] {
            if !(0.0..=1.0).contains(&v) {
                p.push(Problem::new(
                    key,
                    format!("must be between 0 and 1, got {v}"),
                ));
            }
        }
        if !(1..=1000).contains(&self.keep_versions) {
            p.push(Problem::new(
                "memory.keep_versions",
                "must be between 1 and 1000",
            ));
        }
        let f = &self.fusion;
        for (key, v) in [
            ("memory.fusion.k", f.k),
            ("memory.fusion.text_weight", f.text_weight),
            ("memory.fusion.vector_weight", f.vector_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                p.push(Problem::new(key, format!("must be a number >= 0, got {v}")));
            }
        }
        if f.text_weight + f.vector_weight <= 0.0 {
            p.push(Problem::new(
                "memory.fusion.vector_weight",
                "text_weight and vector_weight must not both be 0",
            ));
        }
        if !(5..=1000).contains(&f.depth) {
            p.push(Problem::new(
                "memory.fusion.depth",
                "must be between 5 and 1000",
            ));
        }
        let e = &self.embedding;
        if !(16..=4096).contains(&e.dimensions) {
            p.push(Problem::new(
                "memory.embedding.dimensions",
                "must be between 16 and 4096",
            ));
        }
        if e.backend == EmbeddingBackend::Openai {
            match e.url.as_deref() {
                None | Some("") => p.push(Problem::new(
                    "memory.embedding.url",
                    "is required with backend = \"openai\" (e.g. http://127.0.0.1:11434/v1)",
                )),
                Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                    p.push(Problem::new(
                        "memory.embedding.url",
                        format!("{u:?} is not an http(s) URL"),
                    ))
                }
                Some(_) => {}
            }
            if e.model.as_deref().unwrap_or("").is_empty() {
                p.push(Problem::new(
                    "memory.embedding.model",
                    "is required with backend = \"openai\"",
                ));
            }
        }
        if !(1..=600).contains(&e.timeout_secs) {
            p.push(Problem::new(
                "memory.embedding.timeout_secs",
                "must be between 1 and 600",
            ));
        }
    }
}

/// The durable task queue and workflow engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct OrchestrationConfig {
    /// Serve the task and workflow tools and run in-process workers.
    pub enabled: bool,
    /// Queues this instance's workers serve, with how many tasks of each
    /// run at once. Empty: no in-process workers.
    pub queues: BTreeMap<String, u32>,
    /// Seconds a lease lasts without renewal; a worker that dies loses its
    /// tasks to others after this long.
    pub visibility_timeout_secs: u64,
    /// Seconds between lease renewals (well under the visibility timeout).
    pub heartbeat_secs: u64,
}

impl Default for OrchestrationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            queues: BTreeMap::from([("default".to_owned(), 16)]),
            visibility_timeout_secs: 30,
            heartbeat_secs: 10,
        }
    }
}

impl OrchestrationConfig {
    pub(crate) fn validate(&self, p: &mut Vec<Problem>) {
        for (name, n) in &self.queues {
            if name.is_empty() || name.len() > 64 {
                p.push(Problem::new(
                    format!("orchestration.queues.{name}"),
                    "queue names have 1 to 64 characters",
                ));
            }
            if !(1..=1024).contains(n) {
                p.push(Problem::new(
                    format!("orchestration.queues.{name}"),
                    "concurrency must be between 1 and 1024",
                ));
            }
        }
        if !(1..=86_400).contains(&self.visibility_timeout_secs) {
            p.push(Problem::new(
                "orchestration.visibility_timeout_secs",
                "must be between 1 and 86400",
            ));
        }
        if self.heartbeat_secs == 0 || self.heartbeat_secs * 2 > self.visibility_timeout_secs {
            p.push(Problem::new(
                "orchestration.heartbeat_secs",
                "must be at least 1 and at most half of visibility_timeout_secs",
            ));
        }
    }
}
