//! The vector index: searches answer (by exact scan) while its graph is
//! built in the background, and use the graph once it is in.

use std::collections::HashMap;
use std::sync::Arc;

use cellgate_memory::dataset;
use cellgate_memory::{
    Anonymizer, HashedEmbedder, IndexState, MemoryConfig, MemoryProvider, SearchMode,
};
use cellgate_store::{ItemKind, NewMemory, Space, Store, StoreConfig, View};
use serde_json::json;

fn new_memory(key: &str, text: &str) -> NewMemory {
    NewMemory {
        key: key.into(),
        category: "people".into(),
        tags: Vec::new(),
        value: json!(text),
        expires_at_ms: None,
        source: None,
        provenance: None,
    }
}

pub async fn searches_answer_while_the_graph_builds(store: Store, _: StoreConfig) {
    let t = crate::tenant(&store, "index").await;
    // A small threshold so 400 items get a graph; 256 dimensions so the
    // graph is built over folded vectors.
    let config = MemoryConfig {
        exact_search_max: 100,
        ..MemoryConfig::default()
    };
    let p = MemoryProvider::new(
        store.clone(),
        Arc::new(HashedEmbedder::new(256).expect("dims")),
        Anonymizer::builtin(),
        config,
    );
    let facts = dataset::facts(400, 5);
    let news: Vec<NewMemory> = facts.iter().map(|f| new_memory(&f.key, &f.text)).collect();
    let written = p
        .store_memories(&t, &Space::Shared, &news)
        .await
        .expect("bulk write");
    let key_of: HashMap<i64, String> = written.iter().map(|r| (r.id, r.key.clone())).collect();
    let view = View::only(&Space::Shared);
    let kind = ItemKind::Memory;
    assert_eq!(p.index_state(&t, kind).await, IndexState::Unloaded);

    let top = |hits: Vec<(i64, f64)>| key_of.get(&hits[0].0).cloned().unwrap_or_default();
    let probes = [17usize, 123, 301];

    // Builds held back: the first search loads the index, queues a build,
    // and still answers, by exact scan.
    let pause = p.pause_index_builds().await;
    let mut before = Vec::new();
    for &i in &probes {
        let hits = p
            .search(&t, kind, &view, &facts[i].text, 5, SearchMode::Vector)
            .await
            .expect("search before the graph");
        assert_eq!(
            top(hits.clone()),
            facts[i].key,
            "exact search finds fact {i}"
        );
        before.push(hits);
    }
    assert_eq!(
        p.index_state(&t, kind).await,
        IndexState::Exact {
            items: 400,
            building: true
        }
    );
    // Hybrid search (what the tools use) answers too.
    let hybrid = p
        .search(&t, kind, &view, &facts[123].text, 5, SearchMode::Hybrid)
        .await
        .expect("hybrid before the graph");
    assert_eq!(top(hybrid), facts[123].key);

    drop(pause);
    assert_eq!(
        p.wait_for_index(&t, kind).await,
        IndexState::Graph {
            items: 400,
            graph_items: 400,
            building: false
        }
    );
    for (&i, exact) in probes.iter().zip(&before) {
        let hits = p
            .search(&t, kind, &view, &facts[i].text, 5, SearchMode::Vector)
            .await
            .expect("search with the graph");
        // The graph proposes, full vectors score: the best hit and its
        // similarity are the exact scan's.
        assert_eq!(hits[0], exact[0], "graph search finds fact {i}");
    }

    // A row written after the build is searched exactly next to the graph.
    let late = p
        .store_memories(
            &t,
            &Space::Shared,
            &[new_memory(
                "late",
                "Quillon Brask repairs harpsichords in Tartu",
            )],
        )
        .await
        .expect("late write");
    let hits = p
        .search(
            &t,
            kind,
            &view,
            "Quillon Brask harpsichords",
            1,
            SearchMode::Vector,
        )
        .await
        .expect("search after a late write");
    assert_eq!(hits[0].0, late[0].id);
    assert_eq!(
        p.index_state(&t, kind).await,
        IndexState::Graph {
            items: 401,
            graph_items: 400,
            building: false
        }
    );

    // Deleting more than a tenth queues a rebuild; the graph keeps
    // answering meanwhile and deleted rows are never returned.
    let pause = p.pause_index_builds().await;
    let ctx = crate::as_user(&t, "alice");
    for f in facts.iter().take(60) {
        crate::call(&p, &ctx, "delete_memory", json!({ "key": f.key })).await;
    }
    let hits = p
        .search(&t, kind, &view, &facts[10].text, 5, SearchMode::Vector)
        .await
        .expect("search after deletes");
    assert!(
        hits.iter()
            .all(|(id, _)| key_of.get(id) != Some(&facts[10].key))
    );
    assert_eq!(
        p.index_state(&t, kind).await,
        IndexState::Graph {
            items: 341,
            graph_items: 400,
            building: true
        }
    );
    drop(pause);
    assert_eq!(
        p.wait_for_index(&t, kind).await,
        IndexState::Graph {
            items: 341,
            graph_items: 341,
            building: false
        }
    );
}

/// A provider whose graphs are built from 100 items and saved under `dir`.
fn saving_provider(store: &Store, dir: &std::path::Path) -> Arc<MemoryProvider> {
    MemoryProvider::new(
        store.clone(),
        Arc::new(HashedEmbedder::new(256).expect("dims")),
        Anonymizer::builtin(),
        MemoryConfig {
            exact_search_max: 100,
            index_dir: Some(dir.to_owned()),
            ..MemoryConfig::default()
        },
    )
}

pub async fn a_saved_graph_is_loaded_and_a_stale_one_rebuilt(store: Store, _: StoreConfig) {
    let t = crate::tenant(&store, "saved").await;
    let dir = cellgate_testkit::TempDir::new("cellgate-memory-index");
    let index_dir = dir.path().join("memory-index");
    let file = index_dir.join("saved.memories.hnsw");
    let kind = ItemKind::Memory;
    let view = View::only(&Space::Shared);
    let facts = dataset::facts(300, 9);
    let news: Vec<NewMemory> = facts.iter().map(|f| new_memory(&f.key, &f.text)).collect();
    let full = IndexState::Graph {
        items: 300,
        graph_items: 300,
        building: false,
    };

    // First start: built in the background, then saved.
    let p = saving_provider(&store, &index_dir);
    let written = p
        .store_memories(&t, &Space::Shared, &news)
        .await
        .expect("bulk write");
    let probe = |p: Arc<MemoryProvider>| {
        let (t, view) = (t.clone(), view.clone());
        let text = facts[77].text.clone();
        async move {
            p.search(&t, kind, &view, &text, 1, SearchMode::Vector)
                .await
                .expect("search")[0]
                .0
        }
    };
    assert_eq!(probe(p.clone()).await, written[77].id);
    assert_eq!(p.wait_for_index(&t, kind).await, full);
    assert!(file.is_file(), "the built graph is saved");

    // A restart loads it: a graph is in place at once, with builds held.
    let p = saving_provider(&store, &index_dir);
    let pause = p.pause_index_builds().await;
    assert_eq!(probe(p.clone()).await, written[77].id);
    assert_eq!(p.index_state(&t, kind).await, full);
    drop(pause);

    // A corrupt file is not trusted: exact search until it is rebuilt,
    // and the rebuilt graph replaces the file.
    let mut bytes = std::fs::read(&file).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&file, &bytes).expect("corrupt");
    let p = saving_provider(&store, &index_dir);
    let pause = p.pause_index_builds().await;
    assert_eq!(probe(p.clone()).await, written[77].id);
    assert_eq!(
        p.index_state(&t, kind).await,
        IndexState::Exact {
            items: 300,
            building: true
        }
    );
    drop(pause);
    assert_eq!(p.wait_for_index(&t, kind).await, full);
    assert_ne!(std::fs::read(&file).expect("reread"), bytes);

    // A stale file (a row's stored vector differs from the one the graph
    // was built over) is not trusted either.
    let other = HashedEmbedder::new(256)
        .expect("dims")
        .vector("an entirely different text about lighthouses");
    store
        .scope(&t)
        .memory()
        .set_embeddings(kind, "cellgate-hashed-v1-256", &[(written[5].id, &other)])
        .await
        .expect("overwrite a vector");
    let p = saving_provider(&store, &index_dir);
    let pause = p.pause_index_builds().await;
    assert_eq!(probe(p.clone()).await, written[77].id);
    assert!(matches!(
        p.index_state(&t, kind).await,
        IndexState::Exact { building: true, .. }
    ));
    drop(pause);
    assert_eq!(p.wait_for_index(&t, kind).await, full);

    // Rows deleted since the save are tolerated (dead entries, as while
    // running), and never returned.
    let ctx = crate::as_user(&t, "alice");
    crate::call(&p, &ctx, "delete_memory", json!({ "key": facts[77].key })).await;
    let p = saving_provider(&store, &index_dir);
    let pause = p.pause_index_builds().await;
    assert_ne!(probe(p.clone()).await, written[77].id);
    assert_eq!(
        p.index_state(&t, kind).await,
        IndexState::Graph {
            items: 299,
            graph_items: 300,
            building: false
        }
    );
    drop(pause);
}
