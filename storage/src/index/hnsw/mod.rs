//! vaultvec's HNSW graph, shaped after hnswlib: flat adjacency arrays, per-node locks for writers,
//! lock-free readers, and hnswlib's neighbour-selection heuristic.
//!
//! One implementation serves both the growing segment (nodes are inserted one by one, from many
//! threads, while searches run) and sealed segments (built in bulk, then encoded next to the
//! vectors and decoded on open). The byte layout of [`Graph::encode`] is documented in `format.rs`.
//!
//! # Layout
//!
//! - Level 0 is one array of `capacity * (1 + 2M)` `u32`s: for each node a neighbour count followed
//!   by room for `2M` neighbour ids.
//! - Levels above 0 live in a second flat array. A node's level is a pure function of
//!   `(seed, node)`, so `Graph::new` lays out every node's upper lists (`1 + M` slots per level)
//!   up front and no allocation happens during an insert.
//! - Unused slots hold `u32::MAX`, which is never a node id (capacity is at most `u32::MAX`).
//!
//! # Concurrency
//!
//! Every slot is an `AtomicU32`. Readers load a list's count with `Acquire` and its ids with
//! `Relaxed` and take no lock; a writer holds the owning node's mutex while it rewrites a list,
//! stores the ids and then publishes the count with `Release`. A reader racing a rewrite therefore
//! sees, for every slot, either an old or a new id, each of which names a node that was inserted
//! (or is being inserted), which is all a graph walk needs. A writer holds at most one node lock at
//! a time, so writers cannot deadlock. A new node's own list is merged with, never written over,
//! the links concurrent inserts already put in it (`write_own_list`). An insert whose node becomes the new top of the hierarchy
//! holds the entry-point mutex for its whole duration, as in hnswlib.
//!
//! # Copies
//!
//! Exact copies of one vector are all at distance 0 from each other, so the neighbour heuristic
//! can neither prune them nor use them to prune anything else: linked as ordinary nodes, a few
//! hundred copies fill each other's lists, push out every other link, and cut off the points
//! whose way in went through them (INV-27). A node whose nearest neighbour at its top layer is a
//! copy of it (see `is_copy`; for cosine this includes vectors within rounding noise) is
//! therefore not linked at all: it joins that neighbour's *copy chain*, a singly linked list in
//! `copies`. Searches that reach a node also take the accepted copies of its chain, scored
//! themselves and kept apart from the walk's results so that they do not use up its `ef`; inserts
//! walk linked nodes only. A node that becomes the new top of the hierarchy is always linked. In
//! the neighbour heuristic, copies of the list's own node (possible when copies are inserted
//! concurrently or at a new level) take at most half of the list, newest first.
//!
//! # Snapshots
//!
//! Searches and inserts see the vectors through a [`Vectors`] snapshot. Any neighbour id at or past
//! the snapshot's end (linked by a concurrent insert of a newer node) is skipped. An insert
//! requires the snapshot to contain the node being inserted; when it meets a full neighbour list
//! that names a node it cannot see, it leaves that list unchanged instead of guessing.

mod format;
mod neighbours;
mod repair;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::hit::Scored;
use super::visited::{Scratch, ScratchPool};
use super::{Hit, Metric, Vectors};
use crate::sys::simd;

/// The search depth used when a caller has no better value.
pub const DEFAULT_EF: usize = 64;

/// The highest level a node can have. Levels past ~10 only occur for tiny `M`; the cap keeps the
/// per-node layout bounded.
pub(crate) const MAX_LEVEL: usize = 24;

/// Cache lines of each unvisited neighbour's vector requested while a list is scanned, so that
/// the loads of all of them overlap.
const PREFETCH_FIRST: usize = 1;

/// Cache lines of the next neighbour's vector requested while the current one is scored (64 lines
/// cover a 1024-dimensional vector). On the 384-dimensional bench set this and `PREFETCH_FIRST`
/// together gave about 10% more single-thread QPS than the first line alone; the next candidate's
/// list (3 lines) is requested the same way.
const PREFETCH_AHEAD: usize = 64;

/// An id that never names a node.
const NO_NODE: u32 = u32::MAX;

/// `entry` value of an empty graph.
const EMPTY: u64 = u64::MAX;

/// Graph-shape parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per node on levels above 0; level 0 keeps `2 * m`. The caller keeps it in `2..=64`.
    pub m: usize,
    /// Candidate-list size while inserting. The caller keeps it in `4..=1024`.
    pub ef_construction: usize,
}

impl HnswParams {
    /// The range-limited copy of these parameters that a graph actually uses.
    fn clamped(self) -> HnswParams {
        HnswParams {
            m: self.m.clamp(2, 64),
            ef_construction: self.ef_construction.clamp(1, 4096),
        }
    }
}

/// A hierarchical navigable small world graph over nodes `0..capacity`.
///
/// The graph stores only links; the vectors are passed in as a [`Vectors`] snapshot on each call.
pub struct Graph {
    params: HnswParams,
    metric: Metric,
    capacity: usize,
    seed: u64,
    /// Count + `2M` ids per node.
    level0: Box<[AtomicU32]>,
    /// Upper-level lists, `1 + M` slots per level, node by node.
    upper: Box<[AtomicU32]>,
    /// `upper_start[node]..upper_start[node + 1]` is `node`'s part of `upper`; its length divided by
    /// `1 + M` is the node's level.
    upper_start: Box<[usize]>,
    inserted: Box<[AtomicBool]>,
    /// The copy chains: `copies[node]` is 0, or 1 + the next node of the chain that `node` heads
    /// or belongs to (see "Copies" in the module docs).
    copies: Box<[AtomicU32]>,
    locks: Box<[Mutex<()>]>,
    /// `(level << 32) | node` of the entry point, or `EMPTY`.
    entry: AtomicU64,
    /// Serialises changes of the entry point.
    entry_lock: Mutex<()>,
    len: AtomicUsize,
    scratch: ScratchPool,
}

impl Graph {
    /// An empty graph with room for nodes `0..capacity`.
    ///
    /// Parameters outside their documented ranges are clamped into them, and `capacity` is capped
    /// at `u32::MAX`. Levels are drawn from `seed`, so the same inserts give the same graph shape.
    pub fn new(params: HnswParams, metric: Metric, capacity: usize, seed: u64) -> Graph {
        let params = params.clamped();
        let capacity = capacity.min(NO_NODE as usize);
        let mult = 1.0 / (params.m as f64).ln();
        Graph::with_levels(params, metric, seed, capacity, |node| {
            random_level(seed, node, mult)
        })
    }

    /// Inserts `node`, whose vector is `vectors.get(node)`.
    ///
    /// Callable from many threads at once and concurrently with [`Graph::search`]. Nodes may be
    /// inserted in any order; inserting a node a second time does nothing.
    ///
    /// `vectors` should hold every node inserted before this one. Nodes it lacks (those that
    /// concurrent inserts are linking) are skipped by the walk, which is harmless for the few
    /// nodes in flight at any moment, but a snapshot missing much of the graph leaves the new node
    /// poorly linked.
    ///
    /// # Panics
    ///
    /// If `node >= self.capacity()` or `node >= vectors.len()`: both are checked by the caller,
    /// which owns the id space.
    pub fn insert(&self, vectors: &Vectors, node: u32) {
        let index = node as usize;
        assert!(
            index < self.capacity && index < vectors.len(),
            "node {node} outside the graph's capacity {} or the vectors' length {}",
            self.capacity,
            vectors.len()
        );
        if self.inserted[index].swap(true, Ordering::AcqRel) {
            return;
        }
        let level = self.level(node);
        let limit = self.limit(vectors);
        let query = vectors.get(node);

        let mut entry = self.entry.load(Ordering::Acquire);
        let mut top_guard = None;
        if entry == EMPTY || level > unpack(entry).0 {
            let guard = self.entry_lock.lock();
            entry = self.entry.load(Ordering::Acquire);
            if entry == EMPTY {
                self.entry.store(pack(level, node), Ordering::Release);
                self.len.fetch_add(1, Ordering::Release);
                return;
            }
            if level > unpack(entry).0 {
                // This node becomes the new top: keep other new tops out until it is linked.
                top_guard = Some(guard);
            }
        }
        let (entry_level, entry_node) = unpack(entry);

        let mut scratch = self.scratch.take();
        let mut current = entry_node;
        let mut current_distance = self.distance_or_inf(vectors, limit, query, entry_node);
        for layer in (level + 1..=entry_level).rev() {
            (current, current_distance) =
                self.greedy(vectors, limit, query, current, current_distance, layer);
        }
        for layer in (0..=level.min(entry_level)).rev() {
            self.search_layer(
                &mut scratch,
                vectors,
                limit,
                query,
                (current, current_distance),
                self.params.ef_construction,
                layer,
                None,
                false,
            );
            let Scratch {
                results,
                sorted,
                selected,
                ..
            } = &mut scratch;
            sorted.clear();
            sorted.extend(results.drain().filter(|scored| scored.node() != node));
            sorted.sort_unstable();
            if layer == level
                && top_guard.is_none()
                && let Some(&original) = sorted.first()
                && self.is_copy(vectors, query, original)
            {
                // An exact copy of a linked node: chain it to that node instead of linking it.
                self.chain_copy(original.node(), node);
                self.len.fetch_add(1, Ordering::Release);
                self.scratch.give_back(scratch);
                return;
            }
            if let Some(nearest) = sorted.first() {
                (current, current_distance) = (nearest.node(), nearest.distance());
            }
            self.select_neighbours(vectors, query, sorted, self.params.m, selected);
            self.write_own_list(vectors, limit, query, node, layer, sorted, selected);
            let chosen = std::mem::take(selected);
            for neighbour in &chosen {
                self.link_back(&mut scratch, vectors, limit, *neighbour, node, layer);
            }
            scratch.selected = chosen;
        }
        if top_guard.is_some() {
            self.entry.store(pack(level, node), Ordering::Release);
        }
        drop(top_guard);
        self.len.fetch_add(1, Ordering::Release);
        self.scratch.give_back(scratch);
    }

    /// Builds a graph over all of `vectors` with `threads` threads (a dedicated rayon pool).
    ///
    /// Node 0 is inserted first, then the threads take the remaining nodes in ascending order from
    /// a shared counter, as hnswlib's `addItems` does.
    pub fn build(
        params: HnswParams,
        metric: Metric,
        vectors: &Vectors,
        threads: usize,
        seed: u64,
    ) -> Graph {
        let graph = Graph::new(params, metric, vectors.len(), seed);
        let n_nodes = graph.capacity;
        if n_nodes == 0 {
            return graph;
        }
        graph.insert(vectors, 0);
        let next = AtomicUsize::new(1);
        let work = || {
            loop {
                let node = next.fetch_add(1, Ordering::Relaxed);
                if node >= n_nodes {
                    break;
                }
                graph.insert(vectors, node as u32);
            }
        };
        match rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("hnsw-build-{i}"))
            .start_handler(|_| crate::sys::process::idle_background_thread())
            .build()
        {
            Ok(pool) => {
                pool.broadcast(|_| work());
            }
            Err(err) => {
                tracing::warn!(error = %err, "no thread pool for the graph build; building on one thread");
                work();
            }
        }
        graph.repair(vectors);
        graph
    }

    /// The `k` nearest inserted nodes to `query` among those `accept` keeps (all when `None`),
    /// nearest first, ties by the smaller node id.
    ///
    /// `ef` is the candidate-list size (raised to `k` if smaller); larger is slower and more
    /// accurate. With a filter, rejected nodes are still walked through but never returned, and
    /// the walk continues until `ef` accepted nodes were found or the reachable graph is exhausted
    /// (hnswlib's filter semantics); for very selective filters [`super::exact_search_ids`] over
    /// the accepted ids is faster.
    ///
    /// Nodes at or past `vectors.len()` are ignored. Returns nothing when `k == 0`, the graph is
    /// empty or `query` does not have `vectors.dim()` components.
    pub fn search(
        &self,
        vectors: &Vectors,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: Option<&dyn Fn(u32) -> bool>,
    ) -> Vec<Hit> {
        let entry = self.entry.load(Ordering::Acquire);
        if k == 0 || query.len() != vectors.dim() || entry == EMPTY {
            return Vec::new();
        }
        let limit = self.limit(vectors);
        let (entry_level, entry_node) = unpack(entry);
        let mut current = entry_node;
        let mut current_distance = self.distance_or_inf(vectors, limit, query, entry_node);
        for layer in (1..=entry_level).rev() {
            (current, current_distance) =
                self.greedy(vectors, limit, query, current, current_distance, layer);
        }
        let mut scratch = self.scratch.take();
        self.search_layer(
            &mut scratch,
            vectors,
            limit,
            query,
            (current, current_distance),
            ef.max(k),
            0,
            accept,
            true,
        );
        let Scratch {
            results,
            copies,
            sorted,
            ..
        } = &mut scratch;
        sorted.clear();
        sorted.extend(results.drain());
        sorted.extend(copies.drain());
        sorted.sort_unstable();
        let hits = sorted.iter().take(k).map(|scored| scored.hit()).collect();
        self.scratch.give_back(scratch);
        hits
    }

    /// Number of nodes inserted so far.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// True when no node was inserted yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when `node` was inserted (or its insert is in progress).
    pub fn contains(&self, node: u32) -> bool {
        self.inserted
            .get(node as usize)
            .is_some_and(|flag| flag.load(Ordering::Acquire))
    }

    /// Number of node ids the graph has room for.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The graph's parameters (after clamping).
    pub fn params(&self) -> HnswParams {
        self.params
    }

    /// The graph's metric.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// Bytes of heap memory held by the graph, search scratch space included.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Graph>()
            + self.level0.len() * std::mem::size_of::<AtomicU32>()
            + self.upper.len() * std::mem::size_of::<AtomicU32>()
            + self.upper_start.len() * std::mem::size_of::<usize>()
            + self.inserted.len() * std::mem::size_of::<AtomicBool>()
            + self.copies.len() * std::mem::size_of::<AtomicU32>()
            + self.locks.len() * std::mem::size_of::<Mutex<()>>()
            + self.scratch.memory_bytes()
    }

    /// Inserted nodes below `limit` that a walk of level 0 from the entry point cannot reach:
    /// nodes no search can return. Empty for a sound graph (INV-27).
    #[cfg(test)]
    pub(crate) fn unreachable(&self, limit: usize) -> Vec<u32> {
        let limit = limit.min(self.capacity) as u32;
        let entry = self.entry.load(Ordering::Acquire);
        let mut seen = vec![false; limit as usize];
        if entry != EMPTY {
            self.mark_reachable(unpack(entry).1, &mut seen);
        }
        (0..limit)
            .filter(|&node| self.contains(node) && !seen[node as usize])
            .collect()
    }

    /// Allocates a graph whose nodes have the given levels.
    fn with_levels(
        params: HnswParams,
        metric: Metric,
        seed: u64,
        capacity: usize,
        level_of: impl Fn(u32) -> usize,
    ) -> Graph {
        let stride0 = 1 + 2 * params.m;
        let stride = 1 + params.m;
        // All zero: a count of 0 in every list. Slots past a list's count are never read (counts
        // are published after the ids they cover), so they need no sentinel, and zeroed memory
        // lets a growing segment's preallocated graph stay unbacked until it fills.
        let level0 = crate::sys::zeroed::zeroed_atomic_u32(capacity * stride0);
        let mut upper_start = Vec::with_capacity(capacity + 1);
        let mut end = 0;
        upper_start.push(end);
        for node in 0..capacity as u32 {
            end += level_of(node).min(MAX_LEVEL) * stride;
            upper_start.push(end);
        }
        let upper = crate::sys::zeroed::zeroed_atomic_u32(end);
        Graph {
            params,
            metric,
            capacity,
            seed,
            level0,
            upper,
            upper_start: upper_start.into_boxed_slice(),
            inserted: (0..capacity).map(|_| AtomicBool::new(false)).collect(),
            copies: crate::sys::zeroed::zeroed_atomic_u32(capacity),
            locks: (0..capacity).map(|_| Mutex::new(())).collect(),
            entry: AtomicU64::new(EMPTY),
            entry_lock: Mutex::new(()),
            len: AtomicUsize::new(0),
            scratch: ScratchPool::default(),
        }
    }

    /// Node ids below this are both in the graph's range and in the snapshot.
    #[inline]
    fn limit(&self, vectors: &Vectors) -> u32 {
        vectors.len().min(self.capacity) as u32
    }

    /// The level of `node` (< capacity).
    #[inline]
    fn level(&self, node: u32) -> usize {
        let node = node as usize;
        (self.upper_start[node + 1] - self.upper_start[node]) / (1 + self.params.m)
    }

    /// The list of `node` (< capacity) on `layer`: a count slot then the id slots. Empty when the
    /// node does not reach that layer.
    #[inline]
    fn links(&self, node: u32, layer: usize) -> &[AtomicU32] {
        let node = node as usize;
        if layer == 0 {
            let stride0 = 1 + 2 * self.params.m;
            &self.level0[node * stride0..(node + 1) * stride0]
        } else {
            let stride = 1 + self.params.m;
            let start = self.upper_start[node] + (layer - 1) * stride;
            self.upper
                .get(start..start + stride)
                .filter(|_| start + stride <= self.upper_start[node + 1])
                .unwrap_or(&[])
        }
    }

    #[inline]
    fn distance_or_inf(&self, vectors: &Vectors, limit: u32, query: &[f32], node: u32) -> f32 {
        if node < limit {
            self.metric.distance(query, vectors.get(node))
        } else {
            f32::INFINITY
        }
    }

    /// Walks `layer` greedily from `start` to a local minimum of the distance to `query`.
    fn greedy(
        &self,
        vectors: &Vectors,
        limit: u32,
        query: &[f32],
        start: u32,
        start_distance: f32,
        layer: usize,
    ) -> (u32, f32) {
        let (mut current, mut current_distance) = (start, start_distance);
        loop {
            let mut changed = false;
            for slot in neighbours(self.links(current, layer)) {
                let id = slot.load(Ordering::Relaxed);
                if id >= limit {
                    continue;
                }
                let distance = self.metric.distance(query, vectors.get(id));
                if distance < current_distance {
                    (current, current_distance) = (id, distance);
                    changed = true;
                }
            }
            if !changed {
                return (current, current_distance);
            }
        }
    }

    /// Best-first search of one layer from `entry` with a candidate list of `ef`, leaving the
    /// (at most `ef`) best accepted nodes in `scratch.results` (hnswlib's `searchBaseLayerST`),
    /// and, `with_copies`, the (at most `ef`) best accepted copies chained to the nodes it
    /// reached in `scratch.copies` (inserts walk without copies: they link only linked nodes).
    #[allow(clippy::too_many_arguments)]
    fn search_layer(
        &self,
        scratch: &mut Scratch,
        vectors: &Vectors,
        limit: u32,
        query: &[f32],
        (entry, entry_distance): (u32, f32),
        ef: usize,
        layer: usize,
        accept: Option<&dyn Fn(u32) -> bool>,
        with_copies: bool,
    ) {
        let Scratch {
            visited,
            candidates,
            results,
            copies,
            batch,
            ..
        } = scratch;
        visited.clear(self.capacity);
        candidates.clear();
        results.clear();
        copies.clear();
        visited.insert(entry);
        let mut bound = f32::INFINITY;
        if entry < limit && accept.is_none_or(|accept| accept(entry)) {
            results.push(Scored::new(entry_distance, entry));
            bound = entry_distance;
        }
        if with_copies && entry < limit {
            self.collect_copies(
                visited,
                copies,
                vectors,
                query,
                ef,
                limit,
                accept,
                entry,
                entry_distance,
            );
        }
        candidates.push(std::cmp::Reverse(Scored::new(entry_distance, entry)));

        let mut expanded = 0u32;
        while let Some(std::cmp::Reverse(current)) = candidates.pop() {
            if current.distance() > bound && (results.len() >= ef || accept.is_none()) {
                break;
            }
            expanded = expanded.wrapping_add(1);
            if expanded.is_multiple_of(256) {
                // An idle-class walk (a busy tenant's search, an insert while indexing) lets
                // its core go idle now and then (`courtesy`).
                crate::courtesy::pause_if_due();
            }
            if let Some(std::cmp::Reverse(next)) = candidates.peek() {
                simd::prefetch(self.links(next.node(), layer), 3);
            }
            batch.clear();
            for slot in neighbours(self.links(current.node(), layer)) {
                let id = slot.load(Ordering::Relaxed);
                if id < limit && visited.insert(id) {
                    simd::prefetch(vectors.get(id), PREFETCH_FIRST);
                    batch.push(id);
                }
            }
            for (i, &id) in batch.iter().enumerate() {
                if let Some(&ahead) = batch.get(i + 1) {
                    simd::prefetch(vectors.get(ahead), PREFETCH_AHEAD);
                }
                let distance = self.metric.distance(query, vectors.get(id));
                if results.len() < ef || distance < bound {
                    candidates.push(std::cmp::Reverse(Scored::new(distance, id)));
                    if accept.is_none_or(|accept| accept(id)) {
                        results.push(Scored::new(distance, id));
                        if results.len() > ef {
                            results.pop();
                        }
                    }
                    if let Some(worst) = results.peek() {
                        bound = worst.distance();
                    }
                    if with_copies {
                        self.collect_copies(
                            visited, copies, vectors, query, ef, limit, accept, id, distance,
                        );
                    }
                }
            }
        }
    }
}

/// The id slots of a list, as many as its count says (clamped to the list's room).
#[inline]
fn neighbours(links: &[AtomicU32]) -> &[AtomicU32] {
    match links.split_first() {
        Some((count, ids)) => {
            let count = (count.load(Ordering::Acquire) as usize).min(ids.len());
            &ids[..count]
        }
        None => &[],
    }
}

/// Stores `ids` into a list (count slot first), publishing the new count last. The caller holds
/// the owning node's lock and passes at most as many ids as the list has room for.
fn write_list(links: &[AtomicU32], ids: impl Iterator<Item = u32>) {
    let Some((count_slot, id_slots)) = links.split_first() else {
        return;
    };
    let mut count = 0;
    for (slot, id) in id_slots.iter().zip(ids) {
        slot.store(id, Ordering::Relaxed);
        count += 1;
    }
    count_slot.store(count, Ordering::Release);
}

#[inline]
fn pack(level: usize, node: u32) -> u64 {
    ((level as u64) << 32) | node as u64
}

#[inline]
fn unpack(entry: u64) -> (usize, u32) {
    ((entry >> 32) as usize, entry as u32)
}

/// hnswlib's level distribution, `floor(-ln(u) / ln(M))` for `u` uniform in (0, 1], with `u`
/// derived from a hash of `(seed, node)` so that levels do not depend on insertion order.
fn random_level(seed: u64, node: u32, mult: f64) -> usize {
    let bits = splitmix64(seed ^ splitmix64(u64::from(node)));
    let uniform = ((bits >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let level = -uniform.ln() * mult;
    (level as usize).min(MAX_LEVEL)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
