//! The vector index alone (no store): exact-scan latency (what searches
//! pay while a graph builds), graph build time, and graph search latency
//! and agreement with the exact scan, at one size.
//!
//! ```text
//! cargo bench -p cellgate-memory --bench index
//! CELLGATE_BENCH_ITEMS=20000 CELLGATE_BENCH_EF_CONSTRUCTION=32,64 cargo bench -p cellgate-memory --bench index
//! ```
//!
//! Environment: `CELLGATE_BENCH_ITEMS` (default 100000),
//! `CELLGATE_BENCH_DIMS` (hashed embedder dimensions, default 1024),
//! `CELLGATE_BENCH_QUERIES` (default 200), `CELLGATE_BENCH_EF_CONSTRUCTION`
//! (comma-separated, default the built-in value), `CELLGATE_BENCH_EF_SEARCH`
//! (default the built-in value). The graph is built on
//! rayon's pool: every core unless `RAYON_NUM_THREADS` says otherwise.

use std::time::{Duration, Instant};

use cellgate_memory::HashedEmbedder;
use cellgate_memory::bench::{GRAPH_EF_CONSTRUCTION, GRAPH_EF_SEARCH, VectorIndex};
use cellgate_memory::dataset;
use cellgate_store::{Space, View};

fn env_list(name: &str, default: usize) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}: {x:?} is not a number"))
            })
            .collect(),
        Err(_) => vec![default],
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

fn main() {
    let n = env_list("CELLGATE_BENCH_ITEMS", 100_000)[0];
    let dims = env_list("CELLGATE_BENCH_DIMS", HashedEmbedder::DEFAULT_DIMS)[0];
    let q = env_list("CELLGATE_BENCH_QUERIES", 200)[0].max(3);
    let efs = env_list("CELLGATE_BENCH_EF_CONSTRUCTION", GRAPH_EF_CONSTRUCTION);
    let ef_search = env_list("CELLGATE_BENCH_EF_SEARCH", GRAPH_EF_SEARCH)[0];
    let embedder = HashedEmbedder::new(dims).expect("CELLGATE_BENCH_DIMS within 16..=4096");
    let facts = dataset::facts(n, 42);
    let queries: Vec<Vec<f32>> = dataset::queries(&facts, q.div_ceil(3), 7)
        .iter()
        .map(|x| embedder.vector(&x.text))
        .collect();
    let started = Instant::now();
    let vectors: Vec<Vec<f32>> = facts.iter().map(|f| embedder.vector(&f.text)).collect();
    eprintln!(
        "{n} items, {dims} dims, {} queries, {} cores; embedded in {:.1}s",
        queries.len(),
        std::thread::available_parallelism().map_or(1, |c| c.get()),
        started.elapsed().as_secs_f64()
    );
    let view = View::only(&Space::Shared);
    for ef in efs {
        let mut index = VectorIndex::new(1);
        for (i, v) in vectors.iter().enumerate() {
            index.insert(i as i64, Space::Shared, v.clone());
        }
        let mut exact_times = Vec::new();
        let mut exact_top = Vec::new();
        for query in &queries {
            let t = Instant::now();
            let hits = index.search(query, 5, &view);
            exact_times.push(t.elapsed());
            exact_top.push(hits.first().map(|h| h.0));
        }
        exact_times.sort();
        let job = index.start_build().expect("a build is due");
        let t = Instant::now();
        let built = job.run_with(ef, ef_search);
        let build_s = t.elapsed().as_secs_f64();
        index.install(built);
        let mut graph_times = Vec::new();
        let mut same_top = 0;
        for (query, exact) in queries.iter().zip(&exact_top) {
            let t = Instant::now();
            let hits = index.search(query, 5, &view);
            graph_times.push(t.elapsed());
            if hits.first().map(|h| h.0) == *exact {
                same_top += 1;
            }
        }
        graph_times.sort();
        println!(
            "items {n} ef_construction {ef} ef_search {ef_search}: exact p50 {:.2} ms p99 {:.2} ms | build {build_s:.1} s | graph p50 {:.2} ms p99 {:.2} ms, top hit = exact {:.1}%",
            percentile(&exact_times, 0.5),
            percentile(&exact_times, 0.99),
            percentile(&graph_times, 0.5),
            percentile(&graph_times, 0.99),
            100.0 * same_top as f64 / queries.len() as f64
        );
    }
}
