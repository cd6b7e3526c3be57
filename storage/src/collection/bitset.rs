//! A fixed-size set of slots that many threads read while one writer adds to it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Tombstones of one segment.
pub(crate) struct Tombstones {
    words: Box<[AtomicU64]>,
    count: AtomicUsize,
}

impl Tombstones {
    pub(crate) fn new(n_slots: usize) -> Tombstones {
        Tombstones {
            words: (0..n_slots.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            count: AtomicUsize::new(0),
        }
    }

    /// Marks `slot` deleted; returns whether it was live.
    pub(crate) fn insert(&self, slot: u32) -> bool {
        let Some(word) = self.words.get(slot as usize / 64) else {
            return false;
        };
        let bit = 1u64 << (slot % 64);
        let was_live = word.fetch_or(bit, Ordering::AcqRel) & bit == 0;
        if was_live {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        was_live
    }

    #[inline]
    pub(crate) fn contains(&self, slot: u32) -> bool {
        self.words
            .get(slot as usize / 64)
            .is_some_and(|word| word.load(Ordering::Acquire) & (1u64 << (slot % 64)) != 0)
    }

    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The deleted slots, ascending.
    pub(crate) fn to_sorted_vec(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.len());
        for (i, word) in self.words.iter().enumerate() {
            let mut bits = word.load(Ordering::Acquire);
            while bits != 0 {
                let bit = bits.trailing_zeros();
                out.push((i * 64) as u32 + bit);
                bits &= bits - 1;
            }
        }
        out
    }
}
