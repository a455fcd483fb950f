//! The in-memory vector index of one tenant's memories or entities: exact
//! cosine search while small, an HNSW graph (`instant-distance`) over the
//! bulk once it has [`VectorIndex::threshold`] items, with rows added since
//! the last build searched exactly.
//!
//! The graph is built in the background ([`VectorIndex::start_build`] hands
//! out a [`BuildJob`] to run off the async threads, [`VectorIndex::install`]
//! puts its result in place): until it is installed, searches scan exactly,
//! so they answer correctly, only slower. Graph entries name rows by id,
//! not by position, so rows can come and go while a build runs, and a
//! graph saved by [`crate::persist`] can be adopted after a restart.
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
use std::sync::atomic::{AtomicU64, Ordering};

use cellgate_store::{Space, View};
use instant_distance::{Builder, HnswMap, Point, Search};

use crate::embed::dot;

#[derive(Clone, Debug)]
pub(crate) struct Vector(pub(crate) Arc<[f32]>);

impl serde::Serialize for Vector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.as_ref().serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Vector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<f32>::deserialize(d).map(|v| Vector(v.into()))
    }
}

impl Point for Vector {
    fn distance(&self, other: &Self) -> f32 {
        1.0 - dot(&self.0, &other.0)
    }
}

/// Dimensions of the vectors the graph is built over.
pub(crate) const GRAPH_DIMS: usize = 128;
/// Candidates a graph search visits (and re-ranks exactly). Measured at
/// 20,000 items (`benches/index.rs`): the graph's top hit is the exact
/// scan's in 73% of queries at 160, 84% at 400, 93% at 800, for 0.9, 2.0
/// and 3.1 ms p50; at 100,000 items 88% at 400 (2.7 / 3.5 ms p50 / p99)
/// and 94% at 800 (5.7 / 7.7 ms), which would strain the 20 ms p99 budget
/// at a million items.
pub const GRAPH_EF_SEARCH: usize = 400;
/// Candidates considered per insertion while building. Build time grows
/// faster than linearly with it (20,000 items: 1.7 s at 16, 7 s at 32,
/// 22 s at 64) while 64 finds the exact top hit no more often than 32
/// does; a wider search buys that back at query time instead.
pub const GRAPH_EF_CONSTRUCTION: usize = 32;

/// `v` folded to [`GRAPH_DIMS`] and normalised; shorter vectors as they are.
pub(crate) fn fold(v: &Arc<[f32]>) -> Vector {
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

/// Tells indexes apart, so a build started for an index that has since
/// been dropped and reloaded is not installed into the new one.
static INSTANCES: AtomicU64 = AtomicU64::new(1);

struct Slot {
    id: i64,
    space: Space,
    vector: Arc<[f32]>,
    /// Insertion order: the graph holds exactly the slots with a lower
    /// `seq` than its `covers` (and that were live when it was started).
    seq: u64,
    live: bool,
}

/// An installed graph; values are row ids.
struct Graph {
    map: Arc<HnswMap<Vector, i64>>,
    /// Slots with `seq` below this were handed to the build.
    covers: u64,
    /// Entries in the graph.
    len: usize,
}

/// How an index answers vector searches right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexState {
    /// Not loaded from the store yet (the next search loads it).
    Unloaded,
    /// Exact scan: below the threshold, or the first graph is still being
    /// built (`building`).
    Exact { items: usize, building: bool },
    /// HNSW graph over `graph_items` entries (rows deleted since
    /// included), plus an exact scan of rows added since; `building` while
    /// a fresher graph is on its way or the new one is being saved.
    Graph {
        items: usize,
        graph_items: usize,
        building: bool,
    },
}

impl IndexState {
    /// Whether a build is queued or running.
    pub fn building(&self) -> bool {
        match self {
            IndexState::Unloaded => false,
            IndexState::Exact { building, .. } | IndexState::Graph { building, .. } => *building,
        }
    }
}

/// A graph build to run off the async threads: the folded vectors of every
/// live row at the time it was started.
pub struct BuildJob {
    instance: u64,
    covers: u64,
    ids: Vec<i64>,
    vectors: Vec<Arc<[f32]>>,
}

/// What [`BuildJob::run`] produced, for [`VectorIndex::install`].
pub struct BuiltGraph {
    instance: u64,
    covers: u64,
    map: HnswMap<Vector, i64>,
}

impl BuildJob {
    /// The index it was started for.
    pub(crate) fn instance(&self) -> u64 {
        self.instance
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Builds the graph. CPU-heavy (and parallel on rayon's pool): call it
    /// from `spawn_blocking`.
    pub fn run(self) -> BuiltGraph {
        self.run_with(GRAPH_EF_CONSTRUCTION, GRAPH_EF_SEARCH)
    }

    /// [`BuildJob::run`] with other parameters (for tuning: a graph saved
    /// from it is not loaded back).
    pub fn run_with(self, ef_construction: usize, ef_search: usize) -> BuiltGraph {
        let points: Vec<Vector> = self.vectors.iter().map(fold).collect();
        // A fixed seed: the same data gives the same graph (and results).
        let map = Builder::default()
            .seed(0x5eed)
            .ef_construction(ef_construction)
            .ef_search(ef_search)
            .build(points, self.ids);
        BuiltGraph {
            instance: self.instance,
            covers: self.covers,
            map,
        }
    }
}

/// Vectors by row id, searchable by cosine similarity. Public only for the
/// benchmarks (`cellgate_memory::bench`); the provider owns its indexes.
pub struct VectorIndex {
    instance: u64,
    slots: Vec<Slot>,
    by_id: HashMap<i64, usize>,
    dead: usize,
    next_seq: u64,
    graph: Option<Graph>,
    /// Live slots the graph holds (`seq < covers`).
    in_graph: usize,
    building: bool,
    threshold: usize,
}

impl VectorIndex {
    pub fn new(threshold: usize) -> Self {
        Self {
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
            slots: Vec::new(),
            by_id: HashMap::new(),
            dead: 0,
            next_seq: 0,
            graph: None,
            in_graph: 0,
            building: false,
            threshold: threshold.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len() - self.dead
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn state(&self) -> IndexState {
        match &self.graph {
            None => IndexState::Exact {
                items: self.len(),
                building: self.building,
            },
            Some(g) => IndexState::Graph {
                items: self.len(),
                graph_items: g.len,
                building: self.building,
            },
        }
    }

    fn covers(&self) -> u64 {
        self.graph.as_ref().map_or(0, |g| g.covers)
    }

    /// Adds or replaces the vector of `id`.
    pub fn insert(&mut self, id: i64, space: Space, vector: Vec<f32>) {
        self.remove(id);
        self.by_id.insert(id, self.slots.len());
        self.slots.push(Slot {
            id,
            space,
            vector: vector.into(),
            seq: self.next_seq,
            live: true,
        });
        self.next_seq += 1;
    }

    pub(crate) fn remove(&mut self, id: i64) {
        let covers = self.covers();
        if let Some(i) = self.by_id.remove(&id) {
            let slot = &mut self.slots[i];
            slot.live = false;
            self.dead += 1;
            if slot.seq < covers {
                self.in_graph -= 1;
            }
        }
    }

    /// Whether a (re)build would pay off: enough items, none running, and
    /// no graph yet or a tenth of the items unindexed or deleted.
    pub(crate) fn wants_graph(&self) -> bool {
        let live = self.len();
        if live < self.threshold || self.building {
            return false;
        }
        match &self.graph {
            None => true,
            Some(g) => {
                let unindexed = live.saturating_sub(self.in_graph);
                let deleted = g.len.saturating_sub(self.in_graph);
                (unindexed + deleted) * 10 > live
            }
        }
    }

    /// Compacts the slots and, when a build is due, marks one as running
    /// and returns it. Until [`VectorIndex::install`] the current graph (or
    /// an exact scan) keeps answering.
    pub fn start_build(&mut self) -> Option<BuildJob> {
        if !self.wants_graph() {
            return None;
        }
        self.compact();
        self.building = true;
        Some(BuildJob {
            instance: self.instance,
            covers: self.next_seq,
            ids: self.slots.iter().map(|s| s.id).collect(),
            vectors: self.slots.iter().map(|s| s.vector.clone()).collect(),
        })
    }

    /// Puts a finished build in place, unless it was started for another
    /// index (this one was reloaded meanwhile). The build counts as running
    /// until [`VectorIndex::finish_build`] (the graph may still be saving).
    pub fn install(&mut self, built: BuiltGraph) -> bool {
        if built.instance != self.instance {
            return false;
        }
        let len = built.map.values.len();
        self.graph = Some(Graph {
            map: Arc::new(built.map),
            covers: built.covers,
            len,
        });
        self.in_graph = self
            .slots
            .iter()
            .filter(|s| s.live && s.seq < built.covers)
            .count();
        true
    }

    /// The installed graph, to save it.
    pub(crate) fn graph_map(&self) -> Option<Arc<HnswMap<Vector, i64>>> {
        self.graph.as_ref().map(|g| g.map.clone())
    }

    /// The live rows' full vectors by id, to check a saved graph against.
    pub(crate) fn vectors(&self) -> HashMap<i64, Arc<[f32]>> {
        self.slots
            .iter()
            .filter(|s| s.live)
            .map(|s| (s.id, s.vector.clone()))
            .collect()
    }

    /// Takes a saved graph that [`crate::persist::load`] checked against
    /// [`VectorIndex::vectors`] (with nothing changed since) as this index's
    /// graph. Rows it lacks are searched exactly until the next build.
    pub(crate) fn adopt(&mut self, map: HnswMap<Vector, i64>) {
        self.compact();
        let held: std::collections::HashSet<i64> = map
            .values
            .iter()
            .copied()
            .filter(|id| self.by_id.contains_key(id))
            .collect();
        // The rows the graph holds first, so the rest are the exact tail.
        self.slots.sort_by_key(|s| !held.contains(&s.id));
        for (seq, slot) in self.slots.iter_mut().enumerate() {
            slot.seq = seq as u64;
        }
        self.next_seq = self.slots.len() as u64;
        self.reindex_slots();
        self.building = false;
        self.in_graph = held.len();
        self.graph = Some(Graph {
            len: map.values.len(),
            map: Arc::new(map),
            covers: held.len() as u64,
        });
    }

    /// The build started for `instance` is over (installed and saved, or
    /// failed): a later search may start another.
    pub fn finish_build(&mut self, instance: u64) {
        if instance == self.instance {
            self.building = false;
        }
    }

    fn compact(&mut self) {
        if self.dead == 0 {
            return;
        }
        self.slots.retain(|s| s.live);
        self.dead = 0;
        self.reindex_slots();
    }

    /// Rebuilds the id → slot position map after the slots moved.
    fn reindex_slots(&mut self) {
        self.by_id = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
    }

    /// Builds the graph in place, blocking (tests and benchmarks).
    #[cfg(test)]
    pub(crate) fn rebuild(&mut self) {
        if let Some(job) = self.start_build() {
            let built = job.run();
            let instance = built.instance;
            assert!(self.install(built));
            self.finish_build(instance);
        }
    }

    /// The `k` nearest live vectors `view` sees, best first, with their
    /// cosine similarity.
    pub fn search(&self, query: &[f32], k: usize, view: &View) -> Vec<(i64, f32)> {
        if k == 0 || self.is_empty() {
            return Vec::new();
        }
        let visible = |s: &Slot| s.live && view.sees(&s.space);
        let mut found: Vec<(i64, f32)> = Vec::new();
        let exact_from = match &self.graph {
            Some(graph) => {
                let q = fold(&Arc::from(query));
                let mut search = Search::default();
                for item in graph.map.search(&q, &mut search) {
                    let Some(&i) = self.by_id.get(item.value) else {
                        continue;
                    };
                    let slot = &self.slots[i];
                    // A row replaced since the build is in the exact part.
                    if slot.seq < graph.covers && visible(slot) {
                        found.push((slot.id, dot(query, &slot.vector)));
                    }
                }
                self.slots.partition_point(|s| s.seq < graph.covers)
            }
            None => 0,
        };
        for slot in &self.slots[exact_from..] {
            if visible(slot) {
                found.push((slot.id, dot(query, &slot.vector)));
            }
        }
        if self.graph.is_some() && found.len() < k {
            // The graph's candidates were mostly other spaces' rows: fall
            // back to an exact scan rather than return too few.
            found = self
                .slots
                .iter()
                .filter(|s| visible(s))
                .map(|s| (s.id, dot(query, &s.vector)))
                .collect();
        }
        top(found, k)
    }
}

/// The `k` best of `found`, best first (ties by id).
fn top(mut found: Vec<(i64, f32)>, k: usize) -> Vec<(i64, f32)> {
    let order = |a: &(i64, f32), b: &(i64, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if found.len() > k {
        // Partial selection: an exact scan yields every row.
        found.select_nth_unstable_by(k - 1, order);
        found.truncate(k);
    }
    found.sort_by(order);
    found
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
