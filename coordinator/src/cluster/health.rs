//! The health tracker: what each worker's heartbeats say about it, and which worker a new tenant
//! goes to.
//!
//! A connected worker is `up` while its last heartbeat is at most `suspect_after` old,
//! `suspect` after that, and `down` once `down_after` has passed: its connection is then closed
//! (as when the connection drops), its waiters fail at once, and it is no longer in the hub. A
//! worker the store knows but that is not connected is `down`. Times are tokio's clock, so tests
//! move them with a paused clock.
//!
//! Heartbeats are kept in memory on the connection, not written to SQLite: the store records
//! `last_seen_ms` at the hello and when the connection ends.

use std::time::Duration;

use parking_lot::Mutex;
use proto::vaultvec::cluster::v1 as cluster;
use tokio::time::Instant;

/// When a worker without heartbeats becomes suspect, and when down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// No new tenant is placed on a worker silent this long.
    pub suspect_after: Duration,
    /// A worker silent this long is disconnected.
    pub down_after: Duration,
}

impl Default for HealthConfig {
    fn default() -> HealthConfig {
        HealthConfig {
            suspect_after: Duration::from_secs(3),
            down_after: Duration::from_secs(6),
        }
    }
}

impl HealthConfig {
    /// These settings for a worker that sends a heartbeat every `interval` (0: unknown): never
    /// suspect before 2 intervals without one, nor down before 4, so that a worker configured
    /// with a longer interval than the coordinator expects is slow to judge, not dropped over
    /// and over.
    pub fn for_interval(self, interval: Duration) -> HealthConfig {
        HealthConfig {
            suspect_after: self.suspect_after.max(interval.saturating_mul(2)),
            down_after: self.down_after.max(interval.saturating_mul(4)),
        }
    }
}

/// A worker's state as the tracker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerState {
    /// Connected, heartbeats on time.
    Up,
    /// Connected, no heartbeat for `suspect_after`.
    Suspect,
    /// Not connected (dropped, or silent for `down_after`).
    Down,
    /// Connected and being drained: it takes no new tenant, and its tenants are moved off.
    Draining,
}

impl WorkerState {
    /// The state's name in the admin API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Up => "up",
            WorkerState::Suspect => "suspect",
            WorkerState::Down => "down",
            WorkerState::Draining => "draining",
        }
    }

    /// Every state, for metrics that show each.
    pub const ALL: [WorkerState; 4] = [
        WorkerState::Up,
        WorkerState::Suspect,
        WorkerState::Down,
        WorkerState::Draining,
    ];
}

/// What a worker said in its hello.
#[derive(Debug, Clone, Default)]
pub struct HelloFacts {
    /// Its software version.
    pub version: String,
    /// Plaintext it may hold for loaded tenants.
    pub memory_budget_bytes: u64,
    /// Tenant requests it runs at once.
    pub max_in_flight: u32,
}

/// One connection's heartbeats.
pub(crate) struct Pulse {
    pub(crate) hello: HelloFacts,
    /// When this worker is suspect and down (the hub's settings, stretched to its interval).
    pub(crate) config: HealthConfig,
    last: Mutex<(Instant, cluster::Heartbeat)>,
    /// Heartbeats received on the connection.
    count: std::sync::atomic::AtomicU64,
}

impl Pulse {
    /// A pulse that starts at the hello, with no heartbeat figures yet.
    pub(crate) fn new(hello: HelloFacts, config: HealthConfig) -> Pulse {
        Pulse {
            hello,
            config,
            last: Mutex::new((Instant::now(), cluster::Heartbeat::default())),
            count: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Records a heartbeat that arrived now.
    pub(crate) fn beat(&self, heartbeat: cluster::Heartbeat) {
        *self.last.lock() = (Instant::now(), heartbeat);
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Heartbeats received on the connection.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// When the last heartbeat (or the hello) arrived.
    pub(crate) fn last_at(&self) -> Instant {
        self.last.lock().0
    }

    /// The worker's state at `now`, while connected.
    pub(crate) fn state(&self, now: Instant) -> WorkerState {
        if now.saturating_duration_since(self.last_at()) > self.config.suspect_after {
            WorkerState::Suspect
        } else {
            WorkerState::Up
        }
    }

    /// A connected worker as the tracker sees it at `now`.
    pub(crate) fn report(&self, id: &str, now: Instant) -> WorkerHealth {
        let (at, heartbeat) = *self.last.lock();
        WorkerHealth {
            id: id.to_owned(),
            state: self.state(now),
            since_heartbeat: Some(now.saturating_duration_since(at)),
            hello: self.hello.clone(),
            heartbeat,
        }
    }
}

/// A connected worker's health: its state, its hello and its latest heartbeat's figures.
#[derive(Debug, Clone)]
pub struct WorkerHealth {
    /// The worker's id.
    pub id: String,
    /// Up, suspect or draining (a connected worker is never down).
    pub state: WorkerState,
    /// Time since its last heartbeat (or its hello, before the first).
    pub since_heartbeat: Option<Duration>,
    /// What it said in its hello.
    pub hello: HelloFacts,
    /// Its latest heartbeat (zeros before the first).
    pub heartbeat: cluster::Heartbeat,
}

impl WorkerHealth {
    /// Share of its memory budget its loaded tenants hold (0 without a budget).
    pub fn memory_fraction(&self) -> f64 {
        match self.hello.memory_budget_bytes {
            0 => 0.0,
            budget => self.heartbeat.plaintext_bytes as f64 / budget as f64,
        }
    }

    /// Share of its request slots in use (0 without slots).
    pub fn load_fraction(&self) -> f64 {
        match self.hello.max_in_flight {
            0 => 0.0,
            max => f64::from(self.heartbeat.in_flight) / f64::from(max),
        }
    }
}

/// Memory share above which a worker takes no new tenant while another has room.
pub const MEMORY_FULL_FRACTION: f64 = 0.9;

/// Chooses the worker for a new tenant among `workers`, given how many tenants each has placed
/// (`placed`): `up` workers only (`suspect` ones if no worker is up, never a `draining` one), those under
/// [`MEMORY_FULL_FRACTION`] of their memory budget if any is, then the lowest cost
/// `placed / (mean placed + 1) + memory fraction + load fraction`: tenants placed are the
/// long-run load, memory and requests in flight what the heartbeats say now, each near 0..1.
/// Ties go to the lower id.
pub fn choose_worker(workers: &[WorkerHealth], placed: impl Fn(&str) -> usize) -> Option<String> {
    let with_state =
        |state| -> Vec<&WorkerHealth> { workers.iter().filter(|w| w.state == state).collect() };
    let mut candidates = with_state(WorkerState::Up);
    if candidates.is_empty() {
        candidates = with_state(WorkerState::Suspect);
    }
    if candidates
        .iter()
        .any(|w| w.memory_fraction() < MEMORY_FULL_FRACTION)
    {
        candidates.retain(|w| w.memory_fraction() < MEMORY_FULL_FRACTION);
    }
    let counts: Vec<usize> = candidates.iter().map(|w| placed(&w.id)).collect();
    let mean = counts.iter().sum::<usize>() as f64 / counts.len().max(1) as f64;
    let cost = |i: usize| {
        counts[i] as f64 / (mean + 1.0)
            + candidates[i].memory_fraction()
            + candidates[i].load_fraction()
    };
    (0..candidates.len())
        .min_by(|&a, &b| {
            cost(a)
                .total_cmp(&cost(b))
                .then_with(|| candidates[a].id.cmp(&candidates[b].id))
        })
        .map(|i| candidates[i].id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str, state: WorkerState, plaintext: u64, in_flight: u32) -> WorkerHealth {
        WorkerHealth {
            id: id.to_owned(),
            state,
            since_heartbeat: Some(Duration::ZERO),
            hello: HelloFacts {
                version: "test".into(),
                memory_budget_bytes: 1000,
                max_in_flight: 10,
            },
            heartbeat: cluster::Heartbeat {
                plaintext_bytes: plaintext,
                in_flight,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_new_tenant_goes_to_an_up_worker_with_room() {
        let none = |_: &str| 0;
        // Fewer tenants is not enough: memory and load count too.
        let workers = [
            worker("a", WorkerState::Up, 800, 0),
            worker("b", WorkerState::Up, 100, 0),
        ];
        let placed = |id: &str| if id == "a" { 10 } else { 12 };
        assert_eq!(choose_worker(&workers, placed).as_deref(), Some("b"));
        let workers = [
            worker("a", WorkerState::Up, 100, 9),
            worker("b", WorkerState::Up, 100, 0),
        ];
        assert_eq!(choose_worker(&workers, none).as_deref(), Some("b"));
        // Equal in everything: the lower id.
        let workers = [
            worker("b", WorkerState::Up, 0, 0),
            worker("a", WorkerState::Up, 0, 0),
        ];
        assert_eq!(choose_worker(&workers, none).as_deref(), Some("a"));
        // A suspect worker takes nothing while another is up, however empty it is.
        let workers = [
            worker("a", WorkerState::Suspect, 0, 0),
            worker("b", WorkerState::Up, 700, 5),
        ];
        assert_eq!(
            choose_worker(&workers, |id| usize::from(id == "b") * 50).as_deref(),
            Some("b")
        );
        // ... but if none is up, a suspect one is better than refusing.
        let workers = [worker("a", WorkerState::Suspect, 0, 0)];
        assert_eq!(choose_worker(&workers, none).as_deref(), Some("a"));
        // A full worker takes nothing while another has room, even with far fewer tenants.
        let workers = [
            worker("a", WorkerState::Up, 950, 0),
            worker("b", WorkerState::Up, 500, 0),
        ];
        let placed = |id: &str| if id == "a" { 0 } else { 1000 };
        assert_eq!(choose_worker(&workers, placed).as_deref(), Some("b"));
        // Every worker full: still placed, by cost.
        let workers = [
            worker("a", WorkerState::Up, 990, 0),
            worker("b", WorkerState::Up, 950, 0),
        ];
        assert_eq!(choose_worker(&workers, none).as_deref(), Some("b"));
        assert_eq!(choose_worker(&[], none), None);
    }

    #[test]
    fn a_worker_with_a_long_heartbeat_interval_is_judged_by_it() {
        let config = HealthConfig::default();
        assert_eq!(config.for_interval(Duration::ZERO), config);
        assert_eq!(config.for_interval(Duration::from_secs(1)), config);
        let slow = config.for_interval(Duration::from_secs(5));
        assert_eq!(slow.suspect_after, Duration::from_secs(10));
        assert_eq!(slow.down_after, Duration::from_secs(20));
    }
}
