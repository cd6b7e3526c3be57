//! Search results and the total order they are ranked by.

use std::cmp::Ordering;

/// One search result. Lists of hits are nearest first, ties broken by the smaller node id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Distance to the query under the index's metric (smaller is nearer).
    pub distance: f32,
    /// Row index of the vector.
    pub node: u32,
}

/// A (distance, node) pair ordered by distance (`f32::total_cmp`), then by node id.
///
/// The order is total even for NaN, so heaps and sorts built on it never panic and always agree.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scored {
    pub(crate) distance: f32,
    pub(crate) node: u32,
}

impl Scored {
    #[inline]
    pub(crate) fn new(distance: f32, node: u32) -> Scored {
        Scored { distance, node }
    }

    pub(crate) fn hit(self) -> Hit {
        Hit {
            distance: self.distance,
            node: self.node,
        }
    }
}

impl PartialEq for Scored {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then(self.node.cmp(&other.node))
    }
}

/// Keeps the `k` smallest items pushed into a max-heap (the worst kept item on top).
#[inline]
pub(crate) fn push_bounded(
    heap: &mut std::collections::BinaryHeap<Scored>,
    item: Scored,
    k: usize,
) {
    if heap.len() < k {
        heap.push(item);
    } else if let Some(mut worst) = heap.peek_mut()
        && item < *worst
    {
        *worst = item;
    }
}

/// Drains a heap into hits, nearest first.
pub(crate) fn into_hits(heap: std::collections::BinaryHeap<Scored>) -> Vec<Hit> {
    heap.into_sorted_vec()
        .into_iter()
        .map(Scored::hit)
        .collect()
}
