//! Which threads a tenant request runs on: CPU shares between tenants.
//!
//! A tenant that has used little of the worker's CPU lately runs its request on the foreground
//! pool (tokio's blocking threads, normal priority). A tenant that already has a request running,
//! or whose recent CPU use is above [`FOREGROUND_CORES`], runs on the background pool: threads in
//! Linux's `SCHED_IDLE` class (nice 10 where that is refused). Priorities only matter when the
//! cores are contended: a heavy tenant alone still gets every core, but beside it a light tenant's
//! request is scheduled first, preempting the heavy one's thread as soon as it wakes (with nice 10
//! instead, the heavy thread would keep its slice, and the measured victim p99 beside heavy
//! searches was 2.2x its baseline instead of 1.7x), so one tenant's backlog of heavy searches,
//! batches or bulk writes costs another tenant's single search little. A thread's priority cannot be raised again without privileges, which is why
//! these are two pools and not one pool whose threads change priority.
//!
//! Recent CPU use is each tenant's thread CPU time of finished requests, decayed exponentially
//! with a half-life of [`HALF_LIFE`]. Times are passed in, so tests drive the clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use storage::ids::TenantId;

/// Recent CPU use, in cores, above which a tenant's requests run at background priority.
pub const FOREGROUND_CORES: f64 = 0.5;
/// How fast past CPU use is forgotten.
pub const HALF_LIFE: Duration = Duration::from_secs(1);
/// Tenants tracked before idle ones are forgotten.
const PRUNE_ABOVE: usize = 1024;

/// The two pools a request can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pool {
    Foreground,
    Background,
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    /// Decayed CPU seconds as of `at`.
    busy: f64,
    at: Instant,
    /// Requests of the tenant running now.
    running: u32,
}

impl Usage {
    fn decay_to(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.at).as_secs_f64();
        self.busy *= (-age * std::f64::consts::LN_2 / HALF_LIFE.as_secs_f64()).exp();
        self.at = self.at.max(now);
    }

    /// CPU use in cores: the decayed seconds over the decay kernel's length (half-life / ln 2).
    fn cores(&self) -> f64 {
        self.busy * std::f64::consts::LN_2 / HALF_LIFE.as_secs_f64()
    }
}

/// The worker's CPU shares and its background pool.
pub(crate) struct Shares {
    usage: Mutex<HashMap<TenantId, Usage>>,
    background: rayon::ThreadPool,
}

/// A request's job was lost: it panicked outside the request's own catch.
#[derive(Debug)]
pub(crate) struct Lost;

impl Shares {
    /// A background pool of `threads` threads at background priority.
    pub(crate) fn new(threads: usize) -> anyhow::Result<Self> {
        let background = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("vv-bg-request-{i}"))
            .start_handler(|_| storage::process::idle_background_thread())
            .build()?;
        Ok(Self {
            usage: Mutex::new(HashMap::new()),
            background,
        })
    }

    /// Chooses the pool for a request of `tenant` that starts at `now`, and counts it running.
    pub(crate) fn start(&self, tenant: &TenantId, now: Instant) -> Pool {
        let mut usage = self.usage.lock();
        let entry = usage.entry(tenant.clone()).or_insert(Usage {
            busy: 0.0,
            at: now,
            running: 0,
        });
        entry.decay_to(now);
        let pool = if entry.running > 0 || entry.cores() > FOREGROUND_CORES {
            Pool::Background
        } else {
            Pool::Foreground
        };
        entry.running += 1;
        pool
    }

    /// Counts out a request of `tenant` that used `cpu` and finished at `now`.
    pub(crate) fn finish(&self, tenant: &TenantId, cpu: Duration, now: Instant) {
        let mut usage = self.usage.lock();
        if let Some(entry) = usage.get_mut(tenant) {
            entry.decay_to(now);
            entry.busy += cpu.as_secs_f64();
            entry.running = entry.running.saturating_sub(1);
        }
        if usage.len() > PRUNE_ABOVE {
            usage.retain(|_, u| {
                u.decay_to(now);
                u.running > 0 || u.cores() > FOREGROUND_CORES / 100.0
            });
        }
    }

    /// A tenant's recent CPU use in cores, as of `now`.
    #[cfg(test)]
    pub(crate) fn cores(&self, tenant: &TenantId, now: Instant) -> f64 {
        let mut usage = self.usage.lock();
        usage.get_mut(tenant).map_or(0.0, |u| {
            u.decay_to(now);
            u.cores()
        })
    }

    /// Runs `job` for `tenant` on the pool its share gives it, and counts its CPU time.
    pub(crate) async fn run<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        tenant: TenantId,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Lost> {
        let pool = self.start(&tenant, Instant::now());
        let shares = self.clone();
        let counted = move || {
            let before = storage::process::this_thread_cpu_time().unwrap_or_default();
            // Counted out even if the job panics.
            let _finish = Finish {
                shares,
                tenant,
                before,
            };
            job()
        };
        match pool {
            Pool::Foreground => tokio::task::spawn_blocking(counted).await.map_err(|_| Lost),
            Pool::Background => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.background.spawn(move || {
                    // A panic must not reach rayon, which would abort the process; the dropped
                    // sender tells the waiter the job was lost.
                    if let Ok(out) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(counted))
                    {
                        let _ = tx.send(out);
                    }
                });
                rx.await.map_err(|_| Lost)
            }
        }
    }
}

struct Finish {
    shares: std::sync::Arc<Shares>,
    tenant: TenantId,
    before: Duration,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let after = storage::process::this_thread_cpu_time().unwrap_or_default();
        self.shares.finish(
            &self.tenant,
            after.saturating_sub(self.before),
            Instant::now(),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name).unwrap()
    }

    #[test]
    fn a_light_tenant_runs_in_the_foreground_and_a_heavy_one_in_the_background() {
        let shares = Shares::new(1).unwrap();
        let (light, heavy) = (tenant("light"), tenant("heavy"));
        let t0 = Instant::now();
        // The heavy tenant used 2 CPU seconds over the last second (two cores, which the decay counts
        // as about one so far). Its first
        // requests ran in the foreground, the ones after it crossed half a core in the background.
        let mut pools = Vec::new();
        for i in 0..10 {
            let at = t0 + Duration::from_millis(100 * i);
            pools.push(shares.start(&heavy, at));
            shares.finish(&heavy, Duration::from_millis(200), at);
        }
        assert_eq!(pools[0], Pool::Foreground);
        assert_eq!(pools[9], Pool::Background);
        // The light one used 1 ms in every 10 ms.
        for i in 0..100 {
            let at = t0 + Duration::from_millis(10 * i);
            assert_eq!(shares.start(&light, at), Pool::Foreground);
            shares.finish(&light, Duration::from_millis(1), at);
        }
        let now = t0 + Duration::from_secs(1);
        assert!(
            shares.cores(&heavy, now) > FOREGROUND_CORES,
            "{}",
            shares.cores(&heavy, now)
        );
        assert!(
            shares.cores(&light, now) < 0.2,
            "{}",
            shares.cores(&light, now)
        );
        assert_eq!(shares.start(&heavy, now), Pool::Background);
        assert_eq!(shares.start(&light, now), Pool::Foreground);
    }

    #[test]
    fn a_second_request_running_at_once_goes_to_the_background() {
        let shares = Shares::new(1).unwrap();
        let t = tenant("t");
        let now = Instant::now();
        assert_eq!(shares.start(&t, now), Pool::Foreground);
        assert_eq!(shares.start(&t, now), Pool::Background);
        shares.finish(&t, Duration::ZERO, now);
        shares.finish(&t, Duration::ZERO, now);
        assert_eq!(shares.start(&t, now), Pool::Foreground);
    }

    #[test]
    fn past_use_is_forgotten_with_the_half_life() {
        let shares = Shares::new(1).unwrap();
        let t = tenant("t");
        let t0 = Instant::now();
        shares.start(&t, t0);
        shares.finish(&t, Duration::from_secs(4), t0);
        assert_eq!(shares.start(&t, t0), Pool::Background);
        shares.finish(&t, Duration::ZERO, t0);
        let fresh = shares.cores(&t, t0);
        let later = shares.cores(&t, t0 + HALF_LIFE);
        assert!((later - fresh / 2.0).abs() < 1e-9, "{fresh} {later}");
        // 4 s of CPU is about 2.8 cores at once, and under half a core 3 half-lives later.
        assert_eq!(shares.start(&t, t0 + HALF_LIFE * 3), Pool::Foreground);
    }

    #[test]
    fn idle_tenants_are_forgotten_once_many_are_tracked() {
        let shares = Shares::new(1).unwrap();
        let t0 = Instant::now();
        for i in 0..=PRUNE_ABOVE {
            let t = tenant(&format!("t{i}"));
            shares.start(&t, t0);
            shares.finish(&t, Duration::from_micros(1), t0);
        }
        let busy = tenant("busy");
        shares.start(&busy, t0);
        shares.finish(&busy, Duration::ZERO, t0 + Duration::from_secs(60));
        assert!(
            shares.usage.lock().len() <= 2,
            "{}",
            shares.usage.lock().len()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_requests_run_in_the_idle_class_and_count_their_cpu() {
        let shares = Arc::new(Shares::new(1).unwrap());
        let t = tenant("t");
        let spin = || {
            let start = storage::process::this_thread_cpu_time().unwrap();
            while storage::process::this_thread_cpu_time().unwrap() - start
                < Duration::from_millis(20)
            {
                std::hint::black_box(0u64);
            }
            storage::process::this_thread_is_idle_class().unwrap()
        };
        // Held running, the next request of the tenant goes to the background pool.
        let held = shares.start(&t, Instant::now());
        assert_eq!(held, Pool::Foreground);
        assert!(
            shares.run(t.clone(), spin).await.unwrap(),
            "background pool"
        );
        shares.finish(&t, Duration::ZERO, Instant::now());
        assert!(
            !shares.run(t.clone(), spin).await.unwrap(),
            "foreground pool"
        );
        assert!(shares.cores(&t, Instant::now()) > 0.0);
        // A panicking job is lost, not fatal, and is counted out.
        let lost = shares.run(t.clone(), || panic!("boom")).await;
        assert!(lost.is_err());
        assert_eq!(shares.start(&t, Instant::now()), Pool::Foreground);
    }
}
