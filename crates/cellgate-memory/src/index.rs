//! The in-memory vector index of one tenant's memories or entities: exact
//! cosine search while small, an HNSW graph (`instant-distance`) over the
//! bulk once it has [`VectorIndex::threshold`] items, with rows added since
//! the last build searched exactly. It is rebuilt from the store on start
//! (the store keeps the vectors), so nothing of it is persisted.
//!
//! The graph is built over vectors folded down to [`GRAPH_DIMS`]
//! dimensions (coordinate `i` added into `i % GRAPH_DIMS`, then
//! normalised: for hashed features this is the same feature hashing into
//! fewer buckets, which keeps dot products in expectation). Building costs
//! one distance per candidate edge, so 1024-dimensional vectors would make
//! it eight times slower; the graph only proposes candidates, which are
//! then ranked by the exact similarity of the full vectors.

use std::collections::HashMap;
use std::sync::Arc;

use cellgate_store::{Space, View};
use instant_distance::{Builder, HnswMap, Point, Search};

use crate::embed::dot;

#[derive(Clone, Debug)]
struct Vector(Arc<[f32]>);

impl Point for Vector {
    fn distance(&self, other: &Self) -> f32 {
        1.0 - dot(&self.0, &other.0)
    }
}

/// Dimensions of the vectors the graph is built over.
const GRAPH_DIMS: usize = 128;
/// Candidates a graph search visits (and re-ranks exactly).
const GRAPH_EF_SEARCH: usize = 160;
/// Candidates considered per insertion while building: lower builds faster
/// and connects the graph a little less well.
const GRAPH_EF_CONSTRUCTION: usize = 64;

/// `v` folded to [`GRAPH_DIMS`] and normalised; shorter vectors as they are.
fn fold(v: &Arc<[f32]>) -> Vector {
    if v.len() <= GRAPH_DIMS {
        return Vector(v.clone());
    }
    let mut out = vec![0f32; GRAPH_DIMS];
    for (i, x) in v.iter().enumerate() {
        out[i % GRAPH_DIMS] += x;
    }
    crate::embed::normalise(&mut out);
    Vector(out.into())
}

#[derive(Clone)]
struct Slot {
    id: i64,
    space: Space,
    vector: Vector,
    live: bool,
}

/// Vectors by row id, searchable by cosine similarity.
pub(crate) struct VectorIndex {
    slots: Vec<Slot>,
    by_id: HashMap<i64, usize>,
    dead: usize,
    /// The graph over `slots[..graph_len]`; values are slot positions.
    graph: Option<Arc<HnswMap<Vector, usize>>>,
    graph_len: usize,
    threshold: usize,
}

impl VectorIndex {
    pub(crate) fn new(threshold: usize) -> Self {
        Self {
            slots: Vec::new(),
            by_id: HashMap::new(),
            dead: 0,
            graph: None,
            graph_len: 0,
            threshold: threshold.max(1),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len() - self.dead
    }

    /// Adds or replaces the vector of `id`.
    pub(crate) fn insert(&mut self, id: i64, space: Space, vector: Vec<f32>) {
        self.remove(id);
        self.by_id.insert(id, self.slots.len());
        self.slots.push(Slot {
            id,
            space,
            vector: Vector(vector.into()),
            live: true,
        });
    }

    pub(crate) fn remove(&mut self, id: i64) {
        if let Some(i) = self.by_id.remove(&id) {
            self.slots[i].live = false;
            self.dead += 1;
        }
    }

    /// Whether a (re)build would pay off: enough items, and no graph yet or
    /// a tenth of the items unindexed or deleted.
    pub(crate) fn wants_graph(&self) -> bool {
        let live = self.len();
        if live < self.threshold {
            return false;
        }
        let stale = (self.slots.len() - self.graph_len) + self.dead;
        self.graph.is_none() || stale * 10 > live
    }

    /// Compacts and builds the graph. CPU-heavy: run it off the async
    /// threads (`spawn_blocking`).
    pub(crate) fn rebuild(&mut self) {
        self.slots.retain(|s| s.live);
        self.dead = 0;
        self.by_id = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
        if self.slots.len() < self.threshold {
            self.graph = None;
            self.graph_len = 0;
            return;
        }
        let points: Vec<Vector> = self.slots.iter().map(|s| fold(&s.vector.0)).collect();
        let values: Vec<usize> = (0..points.len()).collect();
        // A fixed seed: the same data gives the same graph (and results).
        let map = Builder::default()
            .seed(0x5eed)
            .ef_construction(GRAPH_EF_CONSTRUCTION)
            .ef_search(GRAPH_EF_SEARCH)
            .build(points, values);
        self.graph_len = self.slots.len();
        self.graph = Some(Arc::new(map));
    }

    /// The `k` nearest live vectors `view` sees, best first, with their
    /// cosine similarity.
    pub(crate) fn search(&self, query: &[f32], k: usize, view: &View) -> Vec<(i64, f32)> {
        if k == 0 || self.len() == 0 {
            return Vec::new();
        }
        let visible = |s: &Slot| s.live && view.sees(&s.space);
        let mut found: Vec<(i64, f32)> = Vec::new();
        let exact_from = match &self.graph {
            Some(graph) => {
                let q = fold(&Arc::from(query));
                let mut search = Search::default();
                for item in graph.search(&q, &mut search) {
                    let slot = &self.slots[*item.value];
                    if visible(slot) {
                        found.push((slot.id, dot(query, &slot.vector.0)));
                    }
                }
                self.graph_len
            }
            None => 0,
        };
        for slot in &self.slots[exact_from..] {
            if visible(slot) {
                found.push((slot.id, dot(query, &slot.vector.0)));
            }
        }
        if self.graph.is_some() && found.len() < k {
            // The graph's candidates were mostly other spaces' rows: fall
            // back to an exact scan rather than return too few.
            found = self
                .slots
                .iter()
                .filter(|s| visible(s))
                .map(|s| (s.id, dot(query, &s.vector.0)))
                .collect();
        }
        found.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        found.truncate(k);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::HashedEmbedder;

    fn index_of(n: usize, threshold: usize) -> (VectorIndex, HashedEmbedder) {
        // Few dimensions: unit tests run unoptimised, and building the graph
        // computes many distances.
        let e = HashedEmbedder::new(64).expect("dims");
        let mut index = VectorIndex::new(threshold);
        for i in 0..n {
            let space = if i % 2 == 0 {
                Space::Shared
            } else {
                Space::Private("p".into())
            };
            index.insert(
                i as i64,
                space,
                e.vector(&format!("item number {i} about topic {}", i % 17)),
            );
        }
        (index, e)
    }

    #[test]
    fn exact_and_graph_search_agree_on_the_top_hit() {
        let (mut index, e) = index_of(200, 50);
        let q = e.vector("item number 42 about topic 8");
        let view = View::only(&Space::Shared);
        let exact = index.search(&q, 5, &view);
        assert_eq!(exact[0].0, 42);
        assert!(index.wants_graph());
        index.rebuild();
        assert!(!index.wants_graph());
        let graph = index.search(&q, 5, &view);
        assert_eq!(graph[0].0, 42);
        // Private rows stay out of a shared view, with or without the graph.
        assert!(graph.iter().all(|(id, _)| id % 2 == 0));
        index.remove(42);
        assert!(index.search(&q, 5, &view).iter().all(|(id, _)| *id != 42));
    }

    #[test]
    fn a_graph_over_folded_vectors_finds_the_exact_top_hits() {
        // More dimensions than the graph keeps: candidates come from the
        // folded graph, scores from the full vectors.
        let e = HashedEmbedder::new(512).expect("dims");
        let mut index = VectorIndex::new(50);
        for i in 0..300 {
            let text = format!("record {i} filed under topic {} by desk {}", i % 13, i % 7);
            index.insert(i, Space::Shared, e.vector(&text));
        }
        let view = View::only(&Space::Shared);
        let q = e.vector("record 123 filed under topic 6 by desk 4");
        let exact = index.search(&q, 3, &view);
        index.rebuild();
        let graph = index.search(&q, 3, &view);
        assert_eq!(graph[0], exact[0]);
        assert_eq!(graph[0].0, 123);
        assert!((graph[0].1 - dot(&q, &q)).abs() < 1e-4, "exact similarity");
    }

    #[test]
    fn replacing_a_vector_keeps_one_entry() {
        let (mut index, e) = index_of(10, 100);
        index.insert(3, Space::Shared, e.vector("something else entirely"));
        assert_eq!(index.len(), 10);
        let hits = index.search(
            &e.vector("something else entirely"),
            1,
            &View::only(&Space::Shared),
        );
        assert_eq!(hits[0].0, 3);
    }
}
