//! Retrieval quality on the synthetic labelled set: recall@5 of full-text,
//! vector and hybrid search. Hybrid (weighted reciprocal rank fusion, the
//! default) must beat both, and so must the standardised-score fusion that
//! the config can choose instead. Textbook RRF (k = 60, equal weights) is
//! reported for comparison only.

use std::collections::HashMap;
use std::io::Write as _;

use cellgate_memory::dataset::{self, QueryKind};
use cellgate_memory::{Fusion, MemoryProvider, SearchMode};
use cellgate_store::{ItemKind, NewMemory, Space, Store, StoreConfig, View};
use serde_json::json;

pub async fn hybrid_beats_text_and_vector(store: Store, _: StoreConfig) {
    let t = crate::tenant(&store, "quality").await;
    let p = MemoryProvider::with_defaults(store.clone());
    let facts = dataset::facts(2000, 42);
    let queries = dataset::queries(&facts, 70, 7);
    assert!(facts.len() >= 2000 && queries.len() >= 200);
    let memory = store.scope(&t).memory();
    let mut ids: HashMap<i64, String> = HashMap::new();
    for f in &facts {
        let new = NewMemory {
            key: f.key.clone(),
            category: f.category.clone(),
            tags: Vec::new(),
            value: json!(f.text),
            expires_at_ms: None,
            source: None,
            provenance: None,
        };
        let r = memory
            .put_memory(&Space::Shared, &new, 1)
            .await
            .expect("put");
        ids.insert(r.id, r.key);
    }
    let view = View::only(&Space::Shared);
    assert_eq!(p.config().fusion, Fusion::DEFAULT);
    let textbook_rrf = Fusion::ReciprocalRank {
        k: 60.0,
        text_weight: 1.0,
        vector_weight: 1.0,
    };
    let modes = [
        ("text", SearchMode::Text),
        ("vector", SearchMode::Vector),
        ("hybrid", SearchMode::Hybrid),
        ("zscore", SearchMode::Fused(Fusion::Standardised)),
        ("rrf-60", SearchMode::Fused(textbook_rrf)),
    ];
    let mut hits: HashMap<(&str, Option<QueryKind>), usize> = HashMap::new();
    for q in &queries {
        for (name, mode) in modes {
            let ranked = p
                .search(&t, ItemKind::Memory, &view, &q.text, 5, mode)
                .await
                .expect("search");
            if ranked
                .iter()
                .any(|(id, _)| ids.get(id) == Some(&q.relevant))
            {
                *hits.entry((name, None)).or_default() += 1;
                *hits.entry((name, Some(q.kind))).or_default() += 1;
            }
        }
    }
    let recall = |name: &'static str, kind: Option<QueryKind>| {
        let n = match kind {
            None => queries.len(),
            Some(k) => queries.iter().filter(|q| q.kind == k).count(),
        };
        hits.get(&(name, kind)).copied().unwrap_or(0) as f64 / n as f64
    };
    let mut report = format!(
        "recall@5 on {} facts, {} queries ({}):",
        facts.len(),
        queries.len(),
        store.backend_name()
    );
    for (name, _) in modes {
        report.push_str(&format!(
            "\n  {name:<6} all {:.3}  misspelt {:.3}  rare-among-common {:.3}  mixed {:.3}",
            recall(name, None),
            recall(name, Some(QueryKind::Misspelt)),
            recall(name, Some(QueryKind::RareAmongCommon)),
            recall(name, Some(QueryKind::Mixed)),
        ));
    }
    let _ = writeln!(std::io::stderr(), "{report}");
    for fused in ["hybrid", "zscore"] {
        assert!(
            recall(fused, None) > recall("text", None)
                && recall(fused, None) > recall("vector", None),
            "{fused} must beat both rankings: {report}"
        );
    }
}
