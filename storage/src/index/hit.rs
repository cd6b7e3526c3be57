//! Search results and the total order they are ranked by.

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
/// Both are packed into one `u64` whose unsigned order is exactly that order: the high half is
/// the distance's bits mapped so that integer order equals `total_cmp` order, the low half is the
/// node. Heap and sort comparisons are then a single integer compare, and the order is total even
/// for NaN, so heaps and sorts never panic and always agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Scored {
    key: u64,
}

impl Scored {
    #[inline]
    pub(crate) fn new(distance: f32, node: u32) -> Scored {
        Scored {
            key: (u64::from(order_bits(distance)) << 32) | u64::from(node),
        }
    }

    #[inline]
    pub(crate) fn distance(self) -> f32 {
        from_order_bits((self.key >> 32) as u32)
    }

    #[inline]
    pub(crate) fn node(self) -> u32 {
        self.key as u32
    }

    pub(crate) fn hit(self) -> Hit {
        Hit {
            distance: self.distance(),
            node: self.node(),
        }
    }
}

/// Maps an `f32` to a `u32` whose unsigned order is `f32::total_cmp`'s order: negative values
/// have their magnitude bits inverted (as `total_cmp` does), then the sign bit is flipped so that
/// negatives sort below positives.
#[inline]
fn order_bits(value: f32) -> u32 {
    let bits = value.to_bits() as i32;
    let total = bits ^ ((((bits >> 31) as u32) >> 1) as i32);
    (total as u32) ^ 0x8000_0000
}

/// Inverse of [`order_bits`].
#[inline]
fn from_order_bits(key: u32) -> f32 {
    let total = (key ^ 0x8000_0000) as i32;
    let bits = total ^ ((((total >> 31) as u32) >> 1) as i32);
    f32::from_bits(bits as u32)
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
