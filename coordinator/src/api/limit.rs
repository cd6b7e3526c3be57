//! Token buckets: per-tenant request rates, and per-client failed-authentication rates.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Buckets keyed by `K`, each refilled at `rate` per second up to `burst`.
///
/// At most `max_keys` buckets are kept. When the table is full, buckets that have refilled
/// completely are forgotten (they carry no state); if it is still full, keys without a bucket
/// share one overflow bucket. Spent buckets are never dropped: a client cannot restore its own
/// budget by filling the table with other keys.
pub struct Buckets<K> {
    buckets: Mutex<Table<K>>,
    max_keys: usize,
}

struct Table<K> {
    keyed: HashMap<K, Bucket>,
    overflow: Option<Bucket>,
}

impl<K: Hash + Eq> Table<K> {
    /// The bucket of `key`, or the shared overflow bucket when the table is full.
    fn slot(&mut self, key: &K, max_keys: usize, rate: f64, burst: f64, now: Instant) -> Slot {
        if self.keyed.contains_key(key) {
            return Slot::Keyed;
        }
        if self.keyed.len() >= max_keys {
            self.keyed.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
            });
        }
        if self.keyed.len() >= max_keys {
            Slot::Overflow
        } else {
            Slot::New
        }
    }
}

enum Slot {
    Keyed,
    New,
    Overflow,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// Holds at most `max_keys` buckets; full buckets are the first forgotten beyond that.
    pub fn new(max_keys: usize) -> Buckets<K> {
        Buckets {
            buckets: Mutex::new(Table {
                keyed: HashMap::new(),
                overflow: None,
            }),
            max_keys,
        }
    }

    /// How long until `key`'s bucket has a token (zero if it has one now); takes nothing.
    pub fn wait(&self, key: &K, rate: f64, burst: u32, now: Instant) -> Duration {
        let burst = f64::from(burst.max(1));
        let mut table = self.buckets.lock();
        let bucket = match table.slot(key, self.max_keys, rate, burst, now) {
            Slot::Keyed => table.keyed.get(key).copied(),
            Slot::New => None,
            Slot::Overflow => table.overflow,
        };
        let Some(bucket) = bucket else {
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
        let mut table = self.buckets.lock();
        let full = Bucket {
            tokens: burst,
            last: now,
        };
        let bucket = match table.slot(key, self.max_keys, rate, burst, now) {
            Slot::Keyed | Slot::New => table.keyed.entry(key.clone()).or_insert(full),
            Slot::Overflow => table.overflow.get_or_insert(full),
        };
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

/// The key of a client address's failure budget: an IPv4 address itself, an IPv6 address's /64
/// (one subscriber usually holds a whole /64, so per-address buckets would give it 2^64 budgets),
/// and an IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn client_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
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
        assert!(buckets.buckets.lock().keyed.len() <= 100);
    }

    /// Filling the table with other keys neither resets a spent bucket nor gives new keys a
    /// fresh budget each: they share one overflow bucket until buckets refill.
    #[test]
    fn a_full_table_keeps_spent_buckets_and_new_keys_share_one_budget() {
        let buckets = Buckets::new(100);
        let t0 = Instant::now();
        let (rate, burst) = (0.001, 2);
        for _ in 0..2 {
            buckets.take(&0u32, rate, burst, t0).unwrap();
        }
        assert!(buckets.take(&0u32, rate, burst, t0).is_err());
        // An attacker spends the budgets of many more addresses than the table holds.
        for i in 1..10_000u32 {
            let _ = buckets.take(&i, rate, burst, t0);
        }
        assert!(
            buckets.take(&0u32, rate, burst, t0).is_err(),
            "the spent bucket survived"
        );
        assert!(!buckets.wait(&0u32, rate, burst, t0).is_zero());
        // Addresses without a bucket share the (spent) overflow budget.
        assert!(buckets.take(&20_000u32, rate, burst, t0).is_err());
        assert!(!buckets.wait(&20_001u32, rate, burst, t0).is_zero());
        assert!(buckets.buckets.lock().keyed.len() <= 100);
    }
}

#[cfg(test)]
mod client_tests {
    use super::client_bucket;
    use std::net::IpAddr;

    #[test]
    fn ipv6_addresses_share_their_64_and_mapped_ipv4_is_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            client_bucket(ip("2001:db8:1:2:aaaa::1")),
            client_bucket(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(
            client_bucket(ip("2001:db8:1:2::1")),
            client_bucket(ip("2001:db8:1:3::1"))
        );
        assert_eq!(client_bucket(ip("::ffff:203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(client_bucket(ip("203.0.113.7")), ip("203.0.113.7"));
    }
}
