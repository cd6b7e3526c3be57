//! Token buckets: per-tenant request rates, and per-client failed-authentication rates.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Buckets keyed by `K`, each refilled at `rate` per second up to `burst`.
pub struct Buckets<K> {
    buckets: Mutex<HashMap<K, Bucket>>,
    max_keys: usize,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// Holds at most `max_keys` buckets; full buckets are the first forgotten beyond that.
    pub fn new(max_keys: usize) -> Buckets<K> {
        Buckets {
            buckets: Mutex::new(HashMap::new()),
            max_keys,
        }
    }

    /// How long until `key`'s bucket has a token (zero if it has one now); takes nothing.
    pub fn wait(&self, key: &K, rate: f64, burst: u32, now: Instant) -> Duration {
        let burst = f64::from(burst.max(1));
        let buckets = self.buckets.lock();
        let Some(bucket) = buckets.get(key) else {
            return Duration::ZERO;
        };
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        let tokens = (bucket.tokens + elapsed * rate).min(burst);
        if tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - tokens) / rate)
        }
    }

    /// Takes one token from `key`'s bucket, or says how long until one is available.
    pub fn take(&self, key: &K, rate: f64, burst: u32, now: Instant) -> Result<(), Duration> {
        let burst = f64::from(burst.max(1));
        let mut buckets = self.buckets.lock();
        if buckets.len() >= self.max_keys && !buckets.contains_key(key) {
            // A bucket that has refilled completely carries no state worth keeping.
            buckets
                .retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
            if buckets.len() >= self.max_keys {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_at_the_rate() {
        let buckets = Buckets::new(10);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(buckets.take(&"a", 2.0, 3, t0).is_ok());
        }
        let wait = buckets.take(&"a", 2.0, 3, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert!(
            buckets.take(&"b", 2.0, 3, t0).is_ok(),
            "buckets are independent"
        );
        assert!(
            buckets
                .take(&"a", 2.0, 3, t0 + Duration::from_millis(500))
                .is_ok()
        );
        assert!(
            buckets
                .take(&"a", 2.0, 3, t0 + Duration::from_millis(500))
                .is_err()
        );
    }

    #[test]
    fn many_keys_stay_bounded() {
        let buckets = Buckets::new(100);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let _ = buckets.take(&i, 1.0, 1, t0);
        }
        assert!(buckets.buckets.lock().len() <= 100);
    }
}
