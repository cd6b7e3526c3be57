//! The scheduler's clock: wall time in Unix milliseconds, and a wait until a given time. The
//! system clock sleeps on tokio's timer; tests use a [`ManualClock`] they move themselves, so
//! nothing scheduled waits for real time.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall time for the scheduler.
pub trait Clock: Send + Sync {
    /// Now, in Unix milliseconds.
    fn now_ms(&self) -> u64;

    /// Resolves once [`Clock::now_ms`] has reached `at_ms`.
    fn wait_until(&self, at_ms: u64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The host's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn wait_until(&self, at_ms: u64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            // The wall clock may step (NTP): sleep in bounded slices and look again.
            loop {
                let now = self.now_ms();
                if now >= at_ms {
                    return;
                }
                let left = Duration::from_millis(at_ms - now).min(Duration::from_secs(60));
                tokio::time::sleep(left).await;
            }
        })
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    now: tokio::sync::watch::Sender<u64>,
}

impl ManualClock {
    /// A clock standing at `now_ms`.
    pub fn new(now_ms: u64) -> ManualClock {
        ManualClock {
            now: tokio::sync::watch::Sender::new(now_ms),
        }
    }

    /// Moves the clock on by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.now.send_modify(|now| *now = now.saturating_add(by));
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        *self.now.borrow()
    }

    fn wait_until(&self, at_ms: u64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut now = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock, which outlives this borrow.
            let _ = now.wait_for(|now| *now >= at_ms).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_its_waiters_only_once_moved_past_their_time() {
        let clock = ManualClock::new(1_000);
        let mut early = std::pin::pin!(clock.wait_until(1_000));
        assert!(futures_util::poll!(early.as_mut()).is_ready());
        let mut later = std::pin::pin!(clock.wait_until(5_000));
        assert!(futures_util::poll!(later.as_mut()).is_pending());
        clock.advance(Duration::from_millis(3_999));
        assert!(futures_util::poll!(later.as_mut()).is_pending());
        clock.advance(Duration::from_millis(1));
        assert!(futures_util::poll!(later.as_mut()).is_ready());
        assert_eq!(clock.now_ms(), 5_000);
    }
}
