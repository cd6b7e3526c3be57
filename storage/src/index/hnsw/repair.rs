//! Linking back nodes no search can reach.
//!
//! Neighbour selection prunes lists, and a node whose every in-link at level 0 was pruned (by the
//! heuristic, or in a race between concurrent inserts) is cut off: no walk from the entry point
//! reaches it, so no search returns it, at any `ef`. hnswlib's design allows this too; it was seen
//! here in about one build in 25 of 5,875 points on two index threads. [`Graph::repair`] finds
//! such nodes with one walk of level 0 from the entry point and links each into the list of its
//! nearest reachable node: in a free slot, or in place of that node's farthest neighbour when the
//! displaced one keeps another in-link, so nothing reachable is cut off in its turn.

use std::sync::atomic::Ordering;

use super::super::Vectors;
use super::{EMPTY, Graph, neighbours, unpack, write_list};

/// How many of the nearest reachable nodes are tried as the new in-link of a cut-off node.
const CANDIDATES: usize = 16;

impl Graph {
    /// Links every inserted node below `vectors.len()` that a walk of level 0 from the entry
    /// point cannot reach back into the graph (see the module docs); answers how many were
    /// linked. Callable concurrently with searches and inserts (it takes each changed list's
    /// lock), though a node inserted meanwhile may be reported and linked needlessly.
    pub fn repair(&self, vectors: &Vectors) -> usize {
        let limit = self.limit(vectors) as usize;
        let entry = self.entry.load(Ordering::Acquire);
        if entry == EMPTY || unpack(entry).1 as usize >= limit {
            return 0;
        }
        let mut reached = vec![false; limit];
        self.mark_reachable(unpack(entry).1, &mut reached);
        if (0..limit).all(|node| reached[node] || !self.contains(node as u32)) {
            return 0;
        }
        // In-links at level 0, so a displaced neighbour is never one whose only in-link it was.
        let mut in_links = vec![0u32; limit];
        for node in 0..limit as u32 {
            for slot in neighbours(self.links(node, 0)) {
                if let Some(count) = in_links.get_mut(slot.load(Ordering::Relaxed) as usize) {
                    *count += 1;
                }
            }
        }
        let mut linked = 0;
        for node in 0..limit as u32 {
            if reached[node as usize] || !self.contains(node) {
                continue;
            }
            let query = vectors.get(node);
            let candidates = {
                let reached = &reached;
                let accept = move |id: u32| id != node && reached.get(id as usize) == Some(&true);
                self.search(
                    vectors,
                    query,
                    CANDIDATES,
                    self.params.ef_construction,
                    Some(&accept),
                )
            };
            let done = candidates
                .iter()
                .any(|hit| self.link_into(vectors, hit.node, node, &mut in_links));
            if done {
                linked += 1;
                self.mark_reachable(node, &mut reached);
            } else {
                tracing::debug!(node, "could not link an unreachable graph node back");
            }
        }
        linked
    }

    /// Puts `node` into `into`'s level-0 list: in a free slot, or in place of its farthest
    /// neighbour if that one has another in-link. False if neither is possible.
    fn link_into(&self, vectors: &Vectors, into: u32, node: u32, in_links: &mut [u32]) -> bool {
        let limit = in_links.len() as u32;
        let links = self.links(into, 0);
        let Some((count_slot, id_slots)) = links.split_first() else {
            return false;
        };
        let _lock = self.locks[into as usize].lock();
        let count = (count_slot.load(Ordering::Acquire) as usize).min(id_slots.len());
        let existing: Vec<u32> = id_slots[..count]
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .collect();
        if existing.contains(&node) {
            return true;
        }
        if count < id_slots.len() {
            write_list(links, existing.iter().copied().chain([node]));
            in_links[node as usize] += 1;
            return true;
        }
        let base = vectors.get(into);
        let farthest = existing
            .iter()
            .copied()
            .filter(|&id| id < limit)
            .map(|id| (self.metric.distance(base, vectors.get(id)), id))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        match farthest {
            Some((_, displaced)) if in_links[displaced as usize] >= 2 => {
                let kept = existing
                    .iter()
                    .map(|&id| if id == displaced { node } else { id });
                write_list(links, kept);
                in_links[displaced as usize] -= 1;
                in_links[node as usize] += 1;
                true
            }
            _ => false,
        }
    }

    /// Marks in `reached` every node a walk of level 0 (and the copy chains) reaches from
    /// `start`, not walking on from nodes marked already.
    pub(super) fn mark_reachable(&self, start: u32, reached: &mut [bool]) {
        let Some(first) = reached.get_mut(start as usize) else {
            return;
        };
        *first = true;
        let mut stack = vec![start];
        while let Some(node) = stack.pop() {
            let linked = neighbours(self.links(node, 0))
                .iter()
                .map(|slot| slot.load(Ordering::Relaxed));
            for id in linked.chain(self.next_copy(node)) {
                if let Some(seen) = reached.get_mut(id as usize)
                    && !std::mem::replace(seen, true)
                {
                    stack.push(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::Metric;
    use super::super::{Graph, HnswParams};
    use super::*;

    /// A graph in which `victim` has no in-link at level 0 left: every list holding it is
    /// rewritten without it, as pruning (or a lost race) would leave it.
    fn cut_off(graph: &Graph, victim: u32, n: u32) {
        for node in 0..n {
            let links = graph.links(node, 0);
            let kept: Vec<u32> = neighbours(links)
                .iter()
                .map(|slot| slot.load(Ordering::Relaxed))
                .filter(|&id| id != victim)
                .collect();
            let _lock = graph.locks[node as usize].lock();
            write_list(links, kept.into_iter());
        }
    }

    #[test]
    fn a_node_cut_off_from_the_graph_is_linked_back_and_found_again() {
        let n = 2_000u32;
        let dim = 8;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let flat: Vec<f32> = (0..n as usize * dim)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        let vectors = Vectors::new(&flat, dim);
        let params = HnswParams {
            m: 8,
            ef_construction: 64,
        };
        let graph = Graph::build(params, Metric::L2, &vectors, 1, 3);
        let entry = unpack(graph.entry.load(Ordering::Acquire)).1;
        let victims: Vec<u32> = [17u32, 900, 1_999]
            .into_iter()
            .filter(|&v| v != entry)
            .collect();
        for &victim in &victims {
            cut_off(&graph, victim, n);
        }
        assert_eq!(graph.unreachable(n as usize), victims);
        for &victim in &victims {
            let hits = graph.search(&vectors, vectors.get(victim), 1, 4_096, None);
            assert_ne!(hits[0].node, victim, "found although cut off");
        }

        assert_eq!(graph.repair(&vectors), victims.len());
        assert!(graph.unreachable(n as usize).is_empty());
        for &victim in &victims {
            let hits = graph.search(&vectors, vectors.get(victim), 1, 64, None);
            assert_eq!(hits[0].node, victim);
        }
        // A sound graph needs nothing.
        assert_eq!(graph.repair(&vectors), 0);
    }

    #[test]
    fn a_full_list_gives_up_only_a_neighbour_that_has_another_in_link() {
        let n = 500u32;
        let dim = 4;
        let flat: Vec<f32> = (0..n as usize * dim)
            .map(|i| ((i * 7_919) % 1_000) as f32 / 1_000.0)
            .collect();
        let vectors = Vectors::new(&flat, dim);
        let params = HnswParams {
            m: 4,
            ef_construction: 32,
        };
        let graph = Graph::build(params, Metric::L2, &vectors, 1, 5);
        let entry = unpack(graph.entry.load(Ordering::Acquire)).1;
        let victim = if entry == 250 { 251 } else { 250 };
        cut_off(&graph, victim, n);
        graph.repair(&vectors);
        // Whatever was displaced to make room stays reachable: nothing is cut off in turn.
        assert!(graph.unreachable(n as usize).is_empty());
    }
}
