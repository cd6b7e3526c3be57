//! The coordinator's scheduler: one task that runs each configured job when it is due, one job
//! at a time, and records every run (start, end, outcome, what it found) and the next run in the
//! store (`store::jobs`), so a restarted coordinator keeps the schedule and `GET /admin/v1/jobs`
//! shows it. A run that ends after later runs were due skips them: the next run is the first
//! slot of the job's interval after the end. Time is a [`Clock`]: the host's, or in tests a
//! [`ManualClock`] they move (nothing waits for real time).
//!
//! `rotate_keks` rotates the KEK of each live, unpaused tenant whose tier sets
//! `rotate_kek_every_days` and whose last rotation (or creation) is at least that long ago, as the
//! admin call does (re-wrap on the worker, audited `kek.rotate` with the version, by `system`).
//!
//! `flush_usage` and `census`: see `census.rs`.
//!
//! `snapshots` snapshots each live, unpaused tenant whose tier sets `snapshot_every_hours` and
//! whose last scheduled snapshot is at least that old, then deletes its scheduled snapshots past
//! the newest `snapshot_keep` (`crate::api::snapshots`; snapshots taken on request are kept).
//!
//! `anomalies` (`crate::billing`) watches usage for spikes; `send_mail` (`crate::mail`) sends
//! the outbox.
//!
//! `verify_audit` re-verifies every audit chain (links, hashes, HMAC signatures);
//! a chain that does not verify raises an integrity alert: an error log line naming the chain
//! and the first bad row, `vaultvec_audit_integrity_alerts` counted, and an
//! `audit.integrity_alert` row on the platform chain.

mod census;
mod clock;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use census::{CENSUS, CensusFormat, CensusPage, CensusQuery, FLUSH_USAGE, MAX_CATCH_UP_DAYS};
pub use clock::{Clock, ManualClock, SystemClock};

use crate::api::error::ApiError;
use crate::api::{Service, off_runtime};

/// The audit chains' verification.
pub const VERIFY_AUDIT: &str = "verify_audit";
/// Scheduled snapshots and their retention (`snapshot_every_hours`, `snapshot_keep`).
pub const SNAPSHOTS: &str = "snapshots";
/// KEK rotation of the tenants whose tier asks for it (`rotate_kek_every_days`).
pub const ROTATE_KEKS: &str = "rotate_keks";

/// A job the scheduler runs, and how often.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Its name (one of the constants of this module).
    pub name: &'static str,
    /// Time from one scheduled run to the next.
    pub every: Duration,
}

/// The scheduler's part of the service.
pub struct Jobs {
    clock: Arc<dyn Clock>,
    specs: Vec<JobSpec>,
    running: parking_lot::Mutex<Option<&'static str>>,
    finished: tokio::sync::Notify,
    /// Requests and searches since the last usage flush.
    usage: census::Usage,
}

impl Jobs {
    /// The jobs `specs` on `clock`.
    pub fn new(clock: Arc<dyn Clock>, specs: Vec<JobSpec>) -> Jobs {
        Jobs {
            clock,
            specs,
            running: parking_lot::Mutex::new(None),
            finished: tokio::sync::Notify::new(),
            usage: census::Usage::default(),
        }
    }
}

/// A job as `GET /admin/v1/jobs` shows it.
#[derive(Debug, Serialize)]
pub struct JobView {
    /// Its name.
    pub name: String,
    /// Seconds from one scheduled run to the next.
    pub every_s: u64,
    /// When it runs next, Unix ms.
    pub next_run_ms: u64,
    /// Whether it is running now.
    pub running: bool,
    /// Runs finished so far.
    pub runs: u64,
    /// When the last run started, Unix ms.
    pub last_start_ms: Option<u64>,
    /// When it ended, Unix ms.
    pub last_end_ms: Option<u64>,
    /// `ok` or `error`.
    pub last_outcome: Option<String>,
    /// What it found.
    pub last_details: Option<serde_json::Value>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The run after one scheduled at `scheduled_ms` that ended at `end_ms`: the first slot of
/// `every_ms` after the end (missed slots are skipped, not run in a burst).
fn next_slot(scheduled_ms: u64, end_ms: u64, every_ms: u64) -> u64 {
    let every = every_ms.max(1);
    let missed = end_ms.saturating_sub(scheduled_ms) / every;
    scheduled_ms.saturating_add(every.saturating_mul(missed + 1))
}

impl Service {
    /// Schedules every job's first run (a job already scheduled keeps its next run): done when
    /// the coordinator opens, so the schedule is in place before any request can ask for it.
    pub fn schedule_jobs(&self) {
        let jobs = &self.jobs;
        let now = jobs.clock.now_ms();
        for spec in &jobs.specs {
            let first = now.saturating_add(millis(spec.every));
            if let Err(err) = self.store.schedule_job(spec.name, first, first) {
                tracing::error!(job = spec.name, error = %err, "scheduling a job failed; it does not run");
            }
        }
    }

    /// Runs the scheduled jobs until dropped ([`Service::schedule_jobs`] first).
    pub async fn run_jobs_forever(&self) {
        let jobs = &self.jobs;
        loop {
            let rows = match off_runtime(|| self.store.jobs()) {
                Ok(rows) => rows,
                Err(err) => {
                    tracing::error!(error = %err, "reading the jobs failed; the scheduler stops");
                    return;
                }
            };
            let due = jobs
                .specs
                .iter()
                .filter_map(|spec| {
                    let row = rows.iter().find(|r| r.name == spec.name)?;
                    Some((spec, row.next_run_ms))
                })
                .min_by_key(|(_, at)| *at);
            let Some((spec, at)) = due else {
                return std::future::pending().await;
            };
            jobs.clock.wait_until(at).await;
            self.run_job(spec, at).await;
        }
    }

    async fn run_job(&self, spec: &JobSpec, scheduled_ms: u64) {
        let jobs = &self.jobs;
        *jobs.running.lock() = Some(spec.name);
        let start = jobs.clock.now_ms();
        tracing::info!(job = spec.name, "a scheduled job starts");
        let (outcome, details) = match spec.name {
            VERIFY_AUDIT => off_runtime(|| self.verify_every_chain()),
            ROTATE_KEKS => self.rotate_due_keks().await,
            FLUSH_USAGE => off_runtime(|| self.flush_usage()),
            CENSUS => self.take_census().await,
            SNAPSHOTS => self.run_scheduled_snapshots().await,
            crate::billing::ANOMALIES => self.watch_anomalies().await,
            crate::mail::SEND_MAIL => self.deliver_mail().await,
            other => (
                "error",
                serde_json::json!({ "error": format!("no job is named {other}") }),
            ),
        };
        let end = jobs.clock.now_ms();
        let next = next_slot(scheduled_ms, end, millis(spec.every));
        tracing::info!(
            job = spec.name,
            outcome,
            took_ms = end.saturating_sub(start),
            "a scheduled job ended"
        );
        if let Err(err) = off_runtime(|| {
            self.store
                .finish_job(spec.name, (start, end), outcome, &details, next)
        }) {
            tracing::error!(job = spec.name, error = %err, "recording a job's run failed");
        }
        *jobs.running.lock() = None;
        jobs.finished.notify_waiters();
    }

    /// Verifies every audit chain; raises an integrity alert for each one that does not verify.
    /// Answers the outcome and what it found.
    fn verify_every_chain(&self) -> (&'static str, serde_json::Value) {
        let chains = match self.store.audit_chains() {
            Ok(chains) => chains,
            Err(err) => {
                return (
                    "error",
                    serde_json::json!({ "error": format!("listing the chains failed: {err}") }),
                );
            }
        };
        let mut failed = Vec::new();
        for chain in &chains {
            let problem = match self.store.verify_chain(chain) {
                Ok(Ok(())) => continue,
                Ok(Err(bad)) => serde_json::json!({
                    "chain": chain, "line": bad.line, "reason": bad.reason,
                }),
                Err(err) => serde_json::json!({ "chain": chain, "reason": err.to_string() }),
            };
            tracing::error!(chain = %chain, problem = %problem, "integrity alert: an audit chain does not verify");
            self.metrics.audit_integrity_alerts.inc();
            self.audit(
                crate::api::admin::PLATFORM_CHAIN,
                "system",
                "audit.integrity_alert",
                chain,
                "error",
                problem.clone(),
            );
            failed.push(problem);
        }
        let outcome = if failed.is_empty() { "ok" } else { "error" };
        (
            outcome,
            serde_json::json!({ "chains": chains.len(), "failed": failed }),
        )
    }

    /// Rotates the KEKs that are due (see the module docs). Answers the outcome and what it
    /// did: tenants checked, rotated (with the new version) and failed.
    async fn rotate_due_keks(&self) -> (&'static str, serde_json::Value) {
        let now = self.jobs.clock.now_ms();
        let tenants = match off_runtime(|| self.store.list_tenants()) {
            Ok(tenants) => tenants,
            Err(err) => {
                return (
                    "error",
                    serde_json::json!({ "error": format!("listing the tenants failed: {err}") }),
                );
            }
        };
        let (mut rotated, mut failed) = (Vec::new(), Vec::new());
        for tenant in &tenants {
            let days = match self.tiers.get(&tenant.tier) {
                Some(tier) if tier.rotate_kek_every_days > 0 => tier.rotate_kek_every_days,
                // No policy, or paused (its files cannot be re-wrapped now).
                _ => continue,
            };
            let last = match off_runtime(|| self.store.kek_rotated_ms(&tenant.id)) {
                Ok(last) => last.unwrap_or(tenant.created_ms),
                Err(err) => {
                    failed
                        .push(serde_json::json!({ "tenant": tenant.id, "error": err.to_string() }));
                    continue;
                }
            };
            if now.saturating_sub(last) < u64::from(days) * 86_400_000 {
                continue;
            }
            match self.rotate_kek_by(&tenant.id, "system").await {
                Ok(rotation) => rotated.push(serde_json::json!({
                    "tenant": tenant.id, "kek_version": rotation.kek_version,
                })),
                Err(err) => {
                    tracing::warn!(tenant = %tenant.id, error = %err, "a scheduled KEK rotation failed; tried again at the next run");
                    failed.push(serde_json::json!({ "tenant": tenant.id, "error": err.message }));
                }
            }
        }
        let outcome = if failed.is_empty() { "ok" } else { "error" };
        (
            outcome,
            serde_json::json!({ "tenants": tenants.len(), "rotated": rotated, "failed": failed }),
        )
    }

    /// Every scheduled job with its last run and next run.
    pub fn jobs(&self) -> Result<Vec<JobView>, ApiError> {
        let rows = self.store.jobs()?;
        let running = *self.jobs.running.lock();
        Ok(self
            .jobs
            .specs
            .iter()
            .filter_map(|spec| {
                let row = rows.iter().find(|r| r.name == spec.name)?;
                Some(JobView {
                    name: row.name.clone(),
                    every_s: spec.every.as_secs(),
                    next_run_ms: row.next_run_ms,
                    running: running == Some(spec.name),
                    runs: row.runs,
                    last_start_ms: row.last_run.map(|(start, _)| start),
                    last_end_ms: row.last_run.map(|(_, end)| end),
                    last_outcome: row.last_outcome.clone(),
                    last_details: row.last_details.clone(),
                })
            })
            .collect())
    }

    /// Waits until job `name` has finished `runs` runs in all (tests; no sleeping).
    pub async fn wait_for_job_runs(&self, name: &str, runs: u64) {
        loop {
            let finished = self.jobs.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            let done = self
                .store
                .jobs()
                .ok()
                .and_then(|rows| rows.into_iter().find(|r| r.name == name))
                .is_some_and(|r| r.runs >= runs);
            if done {
                return;
            }
            finished.await;
        }
    }

    /// The scheduler's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.jobs.clock
    }
}

#[cfg(test)]
mod tests {
    use super::next_slot;

    #[test]
    fn a_late_run_skips_the_slots_it_missed() {
        // On time: the next slot.
        assert_eq!(next_slot(1_000, 1_010, 100), 1_100);
        // Ended after two more slots were due: the first slot after the end.
        assert_eq!(next_slot(1_000, 1_250, 100), 1_300);
        // Ended exactly on a slot: the one after it.
        assert_eq!(next_slot(1_000, 1_200, 100), 1_300);
        // A zero interval cannot spin.
        assert_eq!(next_slot(1_000, 1_000, 0), 1_001);
    }
}
