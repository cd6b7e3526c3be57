//! Failed authentications, coalesced into audit rows.
//!
//! A failed authentication costs the request path one map update under a short lock: no store
//! access, no fsync. Every [`AUDIT_WINDOW`] the coordinator writes one `auth.failure` row per
//! (client address, resource) seen in the window, with the count and the first and last time,
//! all in one transaction on a blocking thread (and before every audit export, so an export
//! shows every failure noticed so far). A flood from many addresses therefore costs at most
//! [`MAX_ENTRIES`] rows per window, and never holds the runtime's threads on SQLite.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::audit::Draft;

/// How often pending failure rows are written.
pub const AUDIT_WINDOW: Duration = Duration::from_secs(10);
/// Distinct (address, resource) pairs kept per window; beyond them failures are counted in one
/// row with actor `peer:other` and resource `*`.
pub const MAX_ENTRIES: usize = 10_000;

const OVERFLOW_ACTOR: &str = "peer:other";
const OVERFLOW_RESOURCE: &str = "*";

#[derive(Debug, Clone, Copy)]
struct Tally {
    count: u64,
    first_ms: u64,
    last_ms: u64,
}

/// The failures of the current window.
pub(crate) struct FailureLog {
    pending: Mutex<HashMap<(String, String), Tally>>,
    max_entries: usize,
}

impl FailureLog {
    pub(crate) fn new(max_entries: usize) -> FailureLog {
        FailureLog {
            pending: Mutex::new(HashMap::new()),
            max_entries: max_entries.max(1),
        }
    }

    /// Counts one failure of `actor` (the client address) on `resource` (a key id, `admin`).
    pub(crate) fn record(&self, actor: &str, resource: &str, now_ms: u64) {
        let mut pending = self.pending.lock();
        let key = (actor.to_owned(), resource.to_owned());
        let key = if pending.contains_key(&key) || pending.len() + 1 < self.max_entries {
            key
        } else {
            // One slot stays free for the overflow row.
            (OVERFLOW_ACTOR.to_owned(), OVERFLOW_RESOURCE.to_owned())
        };
        let tally = pending.entry(key).or_insert(Tally {
            count: 0,
            first_ms: now_ms,
            last_ms: now_ms,
        });
        tally.count += 1;
        tally.first_ms = tally.first_ms.min(now_ms);
        tally.last_ms = tally.last_ms.max(now_ms);
    }

    /// Takes the window's failures (oldest first), leaving the window empty.
    pub(crate) fn drain(&self) -> Vec<Pending> {
        let pending = std::mem::take(&mut *self.pending.lock());
        let mut drained: Vec<Pending> = pending
            .into_iter()
            .map(|((actor, resource), tally)| Pending {
                actor,
                resource,
                tally,
            })
            .collect();
        drained.sort_by(|a, b| {
            (a.tally.first_ms, &a.actor, &a.resource).cmp(&(
                b.tally.first_ms,
                &b.actor,
                &b.resource,
            ))
        });
        drained
    }

    /// Puts failures that could not be written back, so the next flush writes them.
    pub(crate) fn restore(&self, drained: Vec<Pending>) {
        let mut pending = self.pending.lock();
        for Pending {
            actor,
            resource,
            tally,
        } in drained
        {
            let kept = pending
                .entry((actor, resource))
                .or_insert(Tally { count: 0, ..tally });
            kept.count += tally.count;
            kept.first_ms = kept.first_ms.min(tally.first_ms);
            kept.last_ms = kept.last_ms.max(tally.last_ms);
        }
    }
}

/// The failures of one (address, resource) in a window.
pub(crate) struct Pending {
    actor: String,
    resource: String,
    tally: Tally,
}

impl Pending {
    /// The `auth.failure` row of these failures, written at `now_ms`.
    pub(crate) fn draft(&self, now_ms: u64) -> Draft {
        Draft {
            time_ms: now_ms,
            actor: self.actor.clone(),
            action: "auth.failure".to_owned(),
            resource: self.resource.clone(),
            outcome: "denied".to_owned(),
            details: serde_json::json!({
                "count": self.tally.count,
                "first_ms": self.tally.first_ms,
                "last_ms": self.tally.last_ms,
            }),
        }
    }
}

/// Runs `flush` on a blocking thread every `period` until `stop`, and once more after it.
pub(crate) async fn flush_every(
    period: Duration,
    stop: CancellationToken,
    flush: Arc<dyn Fn() + Send + Sync>,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        let flush = flush.clone();
        if let Err(err) = tokio::task::spawn_blocking(move || flush()).await {
            tracing::error!(error = %err, "writing failed-authentication rows failed");
        }
    }
    if let Err(err) = tokio::task::spawn_blocking(move || flush()).await {
        tracing::error!(error = %err, "writing failed-authentication rows failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn failures_of_one_address_and_resource_become_one_row_with_their_count() {
        let log = FailureLog::new(100);
        for i in 0..1_000 {
            log.record("peer:10.0.0.1", "KEYID123", 5_000 + i);
        }
        log.record("peer:10.0.0.2", "admin", 4_000);
        let rows: Vec<Draft> = log.drain().iter().map(|p| p.draft(9_999)).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].actor, "peer:10.0.0.2");
        assert_eq!(rows[0].details["count"], 1);
        assert_eq!(rows[1].resource, "KEYID123");
        assert_eq!(rows[1].details["count"], 1_000);
        assert_eq!(rows[1].details["first_ms"], 5_000);
        assert_eq!(rows[1].details["last_ms"], 5_999);
        assert!(log.drain().is_empty(), "a drained window is empty");
    }

    #[test]
    fn a_flood_from_many_addresses_costs_at_most_the_entry_bound() {
        let log = FailureLog::new(16);
        for i in 0..10_000u32 {
            log.record(&format!("peer:{}", std::net::Ipv4Addr::from(i)), "k", 1);
        }
        let rows: Vec<Draft> = log.drain().iter().map(|p| p.draft(2)).collect();
        assert_eq!(rows.len(), 16);
        let total: u64 = rows
            .iter()
            .map(|r| r.details["count"].as_u64().unwrap())
            .sum();
        assert_eq!(total, 10_000, "every failure is counted");
        let overflow = rows.iter().find(|r| r.actor == OVERFLOW_ACTOR).unwrap();
        assert_eq!(overflow.details["count"], 10_000 - 15);
    }

    #[test]
    fn drafts_put_back_are_merged_into_the_next_window() {
        let log = FailureLog::new(100);
        log.record("peer:a", "k", 10);
        let drained = log.drain();
        log.record("peer:a", "k", 20);
        log.restore(drained);
        let rows: Vec<Draft> = log.drain().iter().map(|p| p.draft(21)).collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].details["count"], 2);
        assert_eq!(rows[0].details["first_ms"], 10);
        assert_eq!(rows[0].details["last_ms"], 20);
    }

    #[tokio::test(start_paused = true)]
    async fn the_flusher_runs_once_per_period_and_once_more_at_stop() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let stop = CancellationToken::new();
        let task = tokio::spawn(flush_every(
            Duration::from_secs(10),
            stop.clone(),
            Arc::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
            }),
        ));
        tokio::time::sleep(Duration::from_secs(35)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        stop.cancel();
        task.await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }
}
