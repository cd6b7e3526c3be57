//! Reconnection delays: exponential, capped, with jitter so that a fleet of workers does not
//! reconnect in lockstep after the coordinator restarts.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// The first delay after a failure.
const INITIAL: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(max: Duration) -> Backoff {
        Backoff {
            next: INITIAL.min(max),
            max,
        }
    }

    /// After a successful connection, the next failure starts from the smallest delay again.
    pub(crate) fn reset(&mut self) {
        self.next = INITIAL.min(self.max);
    }

    /// The delay before the next attempt: a random point in the upper half of the current step,
    /// which then doubles up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        let half = step / 2;
        let jitter_nanos = random_u64() % (half.as_nanos() as u64 + 1);
        half + Duration::from_nanos(jitter_nanos)
    }
}

/// A random number good enough for jitter (not for anything secret).
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests;
