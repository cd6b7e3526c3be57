//! Choosing neighbour lists (hnswlib's heuristic, made safe for copies), linking a new node
//! back into its neighbours' lists, and the copy chains (see "Copies" in the module docs).

use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;

use super::super::hit::Scored;
use super::super::visited::{Scratch, Visited};
use super::super::{Metric, Vectors};
use super::{Graph, neighbours, write_list};

impl Graph {
    /// True when `candidate` (scored against `base`) is a copy of `base`: the same vector or,
    /// for cosine, one whose distance from `base` is within the rounding noise of `1 - a·b`
    /// (a few float epsilons, growing with the square root of the dimension). Below that noise
    /// cosine distances cannot tell such vectors apart, so to the graph they are copies.
    #[inline]
    pub(super) fn is_copy(&self, vectors: &Vectors, base: &[f32], candidate: Scored) -> bool {
        match self.metric {
            Metric::Cosine => {
                candidate.distance() <= 4.0 * f32::EPSILON * (base.len() as f32).sqrt()
            }
            Metric::Dot | Metric::L2 => {
                candidate.distance() == self.metric.distance(base, base)
                    && vectors.get(candidate.node()) == base
            }
        }
    }

    /// Adds `copy` to the chain of `original`, right after it.
    pub(super) fn chain_copy(&self, original: u32, copy: u32) {
        let _lock = self.locks[original as usize].lock();
        let next = self.copies[original as usize].load(Ordering::Relaxed);
        self.copies[copy as usize].store(next, Ordering::Relaxed);
        self.copies[original as usize].store(copy + 1, Ordering::Release);
    }

    /// The node after `node` in its copy chain.
    #[inline]
    pub(super) fn next_copy(&self, node: u32) -> Option<u32> {
        match self.copies.get(node as usize)?.load(Ordering::Acquire) {
            0 => None,
            next => Some(next - 1),
        }
    }

    /// Adds the accepted copies chained after `node` (at `distance` from the query, as are its
    /// copies up to rounding noise; each is scored itself) to `copies`, which keeps the best `ef`. They are kept apart from the walk's results: a
    /// thousand copies of one vector would otherwise fill the results with one distance and end
    /// the walk before it reached nearer points. Copies have no links of their own, so they never
    /// become candidates. Stops at a node already visited (so a damaged chain cannot loop) and
    /// once no further copy could enter `copies`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn collect_copies(
        &self,
        visited: &mut Visited,
        copies: &mut BinaryHeap<Scored>,
        vectors: &Vectors,
        query: &[f32],
        ef: usize,
        limit: u32,
        accept: Option<&dyn Fn(u32) -> bool>,
        node: u32,
        distance: f32,
    ) {
        let mut current = node;
        while let Some(copy) = self.next_copy(current) {
            let is_full = copies.len() >= ef
                && copies
                    .peek()
                    .is_some_and(|worst| worst.distance() <= distance);
            if is_full || !visited.insert(copy) {
                return;
            }
            if copy < limit && accept.is_none_or(|accept| accept(copy)) {
                let distance = self.metric.distance(query, vectors.get(copy));
                copies.push(Scored::new(distance, copy));
                if copies.len() > ef {
                    copies.pop();
                }
            }
            current = copy;
        }
    }

    /// hnswlib's `getNeighborsByHeuristic2`, made safe for exact copies: walks `candidates`
    /// (sorted nearest first) and keeps one only if it is nearer to `base` than to every
    /// neighbour kept so far, up to `m`.
    ///
    /// Copies of `base` itself (see `is_copy`) are the exception. The
    /// heuristic can never prune them (nothing is nearer to them than `base`) and they never prune
    /// anything else (every other candidate is exactly as far from them as from `base`), so
    /// unchecked they fill the whole list of every copy and push out the links that lead
    /// anywhere else: with a few hundred copies of one vector, the points whose way in went
    /// through the copies become unreachable. At most [`copy_share`] of the list goes to copies,
    /// and the newest copies (largest ids) are preferred, so that each copy is linked from the
    /// copies inserted after it and the copies form a chain rather than all pointing at the
    /// oldest few.
    pub(super) fn select_neighbours(
        &self,
        vectors: &Vectors,
        base: &[f32],
        candidates: &[Scored],
        m: usize,
        out: &mut Vec<Scored>,
    ) {
        out.clear();
        if candidates.len() < m {
            out.extend_from_slice(candidates);
            return;
        }
        let is_copy = |candidate: &Scored| self.is_copy(vectors, base, *candidate);
        let max_copies = copy_share(m);
        for candidate in candidates.iter().rev() {
            if out.len() >= max_copies {
                break;
            }
            if is_copy(candidate) {
                out.push(*candidate);
            }
        }
        let n_copies = out.len();
        for candidate in candidates {
            if out.len() >= m {
                break;
            }
            if is_copy(candidate) {
                continue;
            }
            let vector = vectors.get(candidate.node());
            let diverse = out[n_copies..].iter().all(|kept| {
                self.metric.distance(vector, vectors.get(kept.node())) >= candidate.distance()
            });
            if diverse {
                out.push(*candidate);
            }
        }
    }

    /// Writes the list of `node` (being inserted) on `layer`: the `selected` neighbours, plus
    /// every link a concurrent insert already added to it.
    ///
    /// Once `node` is linked on a layer above, a concurrent insert can reach it, start its walk of
    /// this layer there, and link back into this (still empty) list. Overwriting the list would
    /// drop that link, often the other node's only way in: 2-thread builds left 0.1-0.2% of
    /// nodes unreachable that way (hnswlib avoids it by holding the new node's lock for its whole
    /// insert). The union is kept; when it does not fit, the heuristic chooses among it, as
    /// [`Graph::link_back`] does for a full list.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write_own_list(
        &self,
        vectors: &Vectors,
        limit: u32,
        query: &[f32],
        node: u32,
        layer: usize,
        merged: &mut Vec<Scored>,
        selected: &[Scored],
    ) {
        let links = self.links(node, layer);
        let max = links.len().saturating_sub(1);
        let _lock = self.locks[node as usize].lock();
        let existing = neighbours(links);
        if existing.is_empty() {
            write_list(links, selected.iter().map(|scored| scored.node()));
            return;
        }
        merged.clear();
        merged.extend_from_slice(selected);
        let mut unseen = Vec::new();
        for slot in existing {
            let id = slot.load(Ordering::Relaxed);
            if id == node || merged.iter().any(|scored| scored.node() == id) {
                continue;
            }
            if id < limit {
                merged.push(Scored::new(
                    self.metric.distance(query, vectors.get(id)),
                    id,
                ));
            } else {
                // Linked by an insert this snapshot cannot see: kept while there is room.
                unseen.push(id);
            }
        }
        merged.sort_unstable();
        let room = max.saturating_sub(unseen.len().min(max / 2));
        let mut kept = Vec::with_capacity(max);
        if merged.len() > room {
            self.select_neighbours(vectors, query, merged, room, &mut kept);
        } else {
            kept.extend_from_slice(merged);
        }
        let ids = kept.iter().map(|scored| scored.node());
        let room_left = max - kept.len();
        write_list(links, ids.chain(unseen.into_iter().take(room_left)));
    }

    /// Adds `node` to `neighbour`'s list on `layer`, shrinking the list with the heuristic when it
    /// is full (hnswlib's `mutuallyConnectNewElement`, second half).
    pub(super) fn link_back(
        &self,
        scratch: &mut Scratch,
        vectors: &Vectors,
        limit: u32,
        neighbour: Scored,
        node: u32,
        layer: usize,
    ) {
        let links = self.links(neighbour.node(), layer);
        let Some((count_slot, id_slots)) = links.split_first() else {
            return;
        };
        let max = id_slots.len();
        let _lock = self.locks[neighbour.node() as usize].lock();
        let count = (count_slot.load(Ordering::Acquire) as usize).min(max);
        let existing = &id_slots[..count];
        if existing
            .iter()
            .any(|slot| slot.load(Ordering::Relaxed) == node)
        {
            return;
        }
        if count < max {
            id_slots[count].store(node, Ordering::Relaxed);
            count_slot.store(count as u32 + 1, Ordering::Release);
            return;
        }
        let base = vectors.get(neighbour.node());
        let Scratch {
            sorted, selected, ..
        } = scratch;
        sorted.clear();
        sorted.push(Scored::new(neighbour.distance(), node));
        for slot in existing {
            let id = slot.load(Ordering::Relaxed);
            if id >= limit {
                // A neighbour this snapshot cannot see: keep the list as it is.
                return;
            }
            sorted.push(Scored::new(self.metric.distance(base, vectors.get(id)), id));
        }
        sorted.sort_unstable();
        self.select_neighbours(vectors, base, sorted, max, selected);
        write_list(links, selected.iter().map(|scored| scored.node()));
    }
}

/// How many of a list of `m` neighbours may be copies of the list's own node: half, so that the
/// other half stays for links that lead somewhere else.
pub(super) fn copy_share(m: usize) -> usize {
    (m / 2).max(1)
}
