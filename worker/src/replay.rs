//! Which coordinator request ids this connection has already seen.

use std::collections::BTreeSet;

/// How many request ids a connection remembers.
pub(crate) const REPLAY_WINDOW: usize = 4096;

/// The last [`REPLAY_WINDOW`] request ids seen on a connection. An id seen before, or one below
/// the lowest id still remembered once the window is full, is a replay.
#[derive(Debug)]
pub(crate) struct ReplayWindow {
    seen: BTreeSet<u64>,
    capacity: usize,
}

impl ReplayWindow {
    pub(crate) fn new(capacity: usize) -> ReplayWindow {
        ReplayWindow {
            seen: BTreeSet::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `id` and says whether it is fresh.
    pub(crate) fn admit(&mut self, id: u64) -> bool {
        if self.seen.contains(&id) {
            return false;
        }
        if self.seen.len() >= self.capacity && self.seen.first().is_some_and(|low| id < *low) {
            return false;
        }
        self.seen.insert(id);
        if self.seen.len() > self.capacity {
            self.seen.pop_first();
        }
        true
    }
}

#[cfg(test)]
mod tests;
