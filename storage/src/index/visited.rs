//! Per-search scratch space, reused across searches so that a query allocates only its result.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use parking_lot::Mutex;

use super::hit::Scored;

/// A set of node ids that is cleared in O(1): a node is in the set when its tag equals the
/// current epoch, and clearing moves to the next epoch (hnswlib's `VisitedList`).
#[derive(Default)]
pub(crate) struct Visited {
    tags: Vec<u16>,
    epoch: u16,
}

impl Visited {
    /// Empties the set and makes room for ids below `n`.
    pub(crate) fn clear(&mut self, n: usize) {
        if self.tags.len() < n {
            self.tags.resize(n, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            // Tags from 65,535 searches ago would read as current: start over.
            self.tags.fill(0);
            self.epoch = 1;
        }
    }

    /// Adds `id` and returns true if it was not in the set. `id` must be below the `n` given to
    /// the last [`Visited::clear`]; larger ids are reported as already visited, so they are skipped.
    #[inline]
    pub(crate) fn insert(&mut self, id: u32) -> bool {
        match self.tags.get_mut(id as usize) {
            Some(tag) if *tag != self.epoch => {
                *tag = self.epoch;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.tags.capacity() * 2
    }
}

/// Everything one graph walk needs besides the graph.
#[derive(Default)]
pub(crate) struct Scratch {
    pub(crate) visited: Visited,
    /// Nodes still to expand, nearest on top.
    pub(crate) candidates: BinaryHeap<Reverse<Scored>>,
    /// The best nodes found so far, worst on top.
    pub(crate) results: BinaryHeap<Scored>,
    /// The best copies (nodes chained to a linked node, see the graph's docs) found so far,
    /// worst on top. Kept apart from `results` so that copies do not use up the walk's `ef`.
    pub(crate) copies: BinaryHeap<Scored>,
    /// Unvisited neighbours of the node being expanded.
    pub(crate) batch: Vec<u32>,
    /// Candidate neighbours during insertion, nearest first.
    pub(crate) sorted: Vec<Scored>,
    /// Neighbours chosen by the selection heuristic.
    pub(crate) selected: Vec<Scored>,
}

/// A pool of [`Scratch`] values, one per thread that is searching at the moment.
#[derive(Default)]
pub(crate) struct ScratchPool {
    free: Mutex<Vec<Scratch>>,
}

impl ScratchPool {
    pub(crate) fn take(&self) -> Scratch {
        self.free.lock().pop().unwrap_or_default()
    }

    pub(crate) fn give_back(&self, scratch: Scratch) {
        self.free.lock().push(scratch);
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.free
            .lock()
            .iter()
            .map(|scratch| scratch.visited.memory_bytes())
            .sum()
    }
}
