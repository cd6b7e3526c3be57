//! Exact search by a full scan: the oracle HNSW is tested against, and the plan for small
//! segments, unindexed tails and filters so selective that a graph walk would visit most nodes.

use std::collections::BinaryHeap;

use super::hit::{Scored, into_hits, push_bounded};
use super::{Hit, Metric, Vectors};

/// The `k` nearest rows of `vectors` to `query` among those `accept` keeps (all when `None`),
/// nearest first, ties by the smaller node id.
///
/// Returns nothing when `k == 0` or `query` does not have `vectors.dim()` components.
pub fn exact_search(
    vectors: &Vectors,
    metric: Metric,
    query: &[f32],
    k: usize,
    accept: Option<&dyn Fn(u32) -> bool>,
) -> Vec<Hit> {
    exact_search_range(vectors, metric, query, k, 0..vectors.len() as u32, accept)
}

/// As [`exact_search`], over the rows in `range` only (rows past `vectors.len()` are skipped):
/// a segment's not-yet-indexed tail, for instance.
pub fn exact_search_range(
    vectors: &Vectors,
    metric: Metric,
    query: &[f32],
    k: usize,
    range: std::ops::Range<u32>,
    accept: Option<&dyn Fn(u32) -> bool>,
) -> Vec<Hit> {
    if k == 0 || query.len() != vectors.dim() {
        return Vec::new();
    }
    let end = range.end.min(vectors.len() as u32);
    let mut heap = BinaryHeap::with_capacity(k.min(vectors.len()) + 1);
    for node in range.start..end {
        if accept.is_some_and(|accept| !accept(node)) {
            continue;
        }
        let distance = metric.distance(query, vectors.get(node));
        push_bounded(&mut heap, Scored::new(distance, node), k);
    }
    into_hits(heap)
}

/// The `k` nearest of the candidate rows `ids` to `query`, nearest first, ties by the smaller
/// node id.
///
/// Ids at or past `vectors.len()` are skipped; a repeated id is scored once.
/// Returns nothing when `k == 0` or `query` does not have `vectors.dim()` components.
pub fn exact_search_ids(
    vectors: &Vectors,
    metric: Metric,
    query: &[f32],
    k: usize,
    ids: &[u32],
) -> Vec<Hit> {
    if k == 0 || query.len() != vectors.dim() {
        return Vec::new();
    }
    if !ids.windows(2).all(|pair| pair[0] < pair[1]) {
        // Unsorted or repeated ids: score each distinct id once, so a repeat cannot take two of
        // the k slots.
        let mut distinct = ids.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        return exact_search_ids(vectors, metric, query, k, &distinct);
    }
    let mut heap = BinaryHeap::with_capacity(k.min(ids.len()) + 1);
    for &node in ids {
        if node as usize >= vectors.len() {
            continue;
        }
        let distance = metric.distance(query, vectors.get(node));
        push_bounded(&mut heap, Scored::new(distance, node), k);
    }
    into_hits(heap)
}
