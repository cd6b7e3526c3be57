//! Tenants with more than one copy (tiers with `replicas` > 1): the write path, reads, and the
//! background repair that catches stale copies up and replaces lost ones.
//!
//! # Why no acknowledged write is lost and no two copies diverge
//!
//! - **One order.** The coordinator is the one authority: a tenant's writes (collection create and
//!   delete, upserts, deletes) pass one at a time, under the tenant's write lock here, and each
//!   goes to every live copy before the next starts. Every live copy sees the same writes in the
//!   same order, and each copy's engine is deterministic, so they hold the same points.
//! - **Acknowledged means durable on every live copy.** A write is answered once every live copy
//!   answered it. A copy that did not (its worker is gone, timed out, or answered differently
//!   from the reference, the first copy that gave a definite answer, primary first) is recorded
//!   `stale` in SQLite *before* the client is answered ([`crate::store::Store::mark_stale`]; if the
//!   primary is among them a live replica takes its place in the same transaction). So a copy
//!   recorded live holds every acknowledged write, whatever crashes next.
//! - **Stale copies serve nothing.** Reads go only to live copies; writes only to live copies. A
//!   stale copy becomes live only after it copied a live copy's files whole, under the write lock
//!   (so no write slips between the copy and the switch), with the listing taken again after the
//!   copy and compared ([`storage::Engine::export_files_live`]).
//! - **Fencing.** Every change of a tenant's copies moves its epoch on, and workers refuse
//!   requests under any other epoch than their assignment's (INV-14).
//! - **A coordinator restart** cannot know whether a write it was sending reached some copies and
//!   not others, so at start every replica is recorded stale and copies the primary again
//!   ([`crate::store::Store::stale_all_replicas`]). That costs a full copy of each replicated
//!   tenant after each coordinator restart; per-copy write sequence numbers would avoid it and
//!   are not built yet.
//!
//! Every copy holds all of a tenant's points, so a search answered by one live copy consulted a
//! whole owning copy (INV-21): there is no partial answer to flag.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::error::{ApiError, Code};
use super::{Op, Reply, Service, off_runtime};
use crate::cluster::WorkerState;
use crate::cluster::health::choose_worker;
use crate::config::{PAUSED_TIER, Tier};
use crate::store::{Actor, CopyState};

const SYSTEM: &str = "system";

/// How often the repair pass runs when nothing wakes it sooner (it also runs at every worker's
/// connection, disconnection and state change).
pub const REPAIR_PERIOD: Duration = Duration::from_secs(1);

/// Per-tenant write locks (one write of a replicated tenant at a time), a read spreader, and the
/// repair's counters.
#[derive(Default)]
pub(crate) struct Replication {
    /// Per tenant: a replicated write, and any change of the tenant's copies, hold it
    /// exclusively; a single-copy write holds it shared, so that no change of copies (and no
    /// new epoch) lands while one is in flight.
    locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
    /// Per tenant: held by a catch-up for its whole length (taken before the write lock).
    copy_locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    next_read: AtomicUsize,
    /// Catch-ups finished since start (tests wait on it).
    pub(crate) caught_up: AtomicUsize,
    /// Exclusive turns of the write lock being waited for now (tests wait on it).
    waiting_exclusive: AtomicUsize,
    pub(super) repaired: tokio::sync::Notify,
}

impl Replication {
    pub(super) fn lock_of(&self, tenant: &str) -> Arc<tokio::sync::RwLock<()>> {
        self.locks
            .lock()
            .entry(tenant.to_owned())
            .or_default()
            .clone()
    }

    pub(super) fn copy_lock_of(&self, tenant: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.copy_locks
            .lock()
            .entry(tenant.to_owned())
            .or_default()
            .clone()
    }
}

/// A write that waited for the tenant's write lock past the request timeout.
fn turn_timeout() -> ApiError {
    ApiError::new(
        Code::Unavailable,
        "the tenant's earlier writes (or a change of its copies) did not finish in time; \
         nothing was written, retry",
    )
}

/// Whether an operation changes the tenant's data (and so goes to every live copy, in order).
pub(crate) fn is_write(op: &Op) -> bool {
    matches!(
        op,
        Op::CreateCollection(_)
            | Op::DeleteCollection(_)
            | Op::Upsert(_)
            | Op::Delete(_)
            | Op::RewrapKeys(_)
            | Op::EraseTenant(_)
            | Op::EraseEntity(_)
    )
}

/// How often a request waiting on one copy of a replicated tenant checks that copy's worker is
/// still heartbeating.
const SILENCE_CHECK: Duration = Duration::from_millis(250);

/// Whether two definite answers agree (both succeeded, or both failed the same way).
fn same_outcome(a: &Result<Reply, ApiError>, b: &Result<Reply, ApiError>) -> bool {
    match (a, b) {
        (Ok(_), Ok(_)) => true,
        (Err(x), Err(y)) => x.code == y.code,
        _ => false,
    }
}

impl Service {
    /// The up worker, holding no copy of the tenant (`holders`), that should take one.
    pub(crate) fn choose_copy_worker(&self, holders: &[String]) -> Option<String> {
        let placements = self.store.placements().ok()?;
        let replicas = self.store.all_replicas().ok()?;
        let copies = |w: &str| {
            placements.iter().filter(|p| p.worker == w).count()
                + replicas.iter().filter(|r| r.worker == w).count()
        };
        let others: Vec<_> = self
            .hub
            .health()
            .into_iter()
            .filter(|h| h.state == WorkerState::Up && !holders.contains(&h.id))
            .collect();
        choose_worker(&others, copies)
    }

    /// The tenant's placement and its live copies' workers, the primary first.
    fn live_copies(
        &self,
        tenant: &str,
    ) -> Result<(crate::store::Placement, Vec<String>), ApiError> {
        let state = self.tenant_state(tenant)?;
        let placement = state
            .placement
            .clone()
            .ok_or_else(|| ApiError::internal("a replicated tenant without a placement"))?;
        let live = std::iter::once(placement.worker.clone())
            .chain(
                state
                    .replicas
                    .iter()
                    .filter(|r| r.state == CopyState::Live)
                    .map(|r| r.worker.clone()),
            )
            .collect();
        Ok((placement, live))
    }

    /// Waits for `send` to `worker`, giving up (as no answer) once the health tracker calls that
    /// worker suspect or it is gone: a copy whose worker hangs holds a replicated tenant's reads
    /// and writes up for `[health] suspect_after_ms`, not until it is called down.
    async fn unless_silent<T>(
        &self,
        worker: &str,
        send: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        tokio::pin!(send);
        loop {
            tokio::select! {
                answer = &mut send => return answer,
                _ = tokio::time::sleep(SILENCE_CHECK) => {
                    let heard = self
                        .hub
                        .health()
                        .iter()
                        .any(|h| h.id == worker && h.state != WorkerState::Suspect);
                    if !heard {
                        return Err(ApiError::new(
                            Code::Unavailable,
                            format!("worker {worker} stopped sending heartbeats"),
                        ));
                    }
                }
            }
        }
    }

    /// Routes an operation of a tenant that has replicas: a write to every live copy, a read to
    /// one live copy (another if that one cannot answer).
    pub(super) async fn route_replicated(
        &self,
        tenant: &str,
        tier: Option<&Tier>,
        op: Op,
        large: bool,
    ) -> Result<Reply, ApiError> {
        if is_write(&op) {
            return self.replicated_write(tenant, tier, op, large).await;
        }
        // A change of the copies (its epoch) between reading the state and the copy answering
        // makes every copy refuse the read; a second round reads the state again.
        match self.read_one(tenant, tier, op.clone(), large).await {
            Err(err) if err.code == Code::Unavailable => {
                self.read_one(tenant, tier, op, large).await
            }
            answer => answer,
        }
    }

    /// One round of a replicated read: each live copy in turn until one answers.
    async fn read_one(
        &self,
        tenant: &str,
        tier: Option<&Tier>,
        op: Op,
        large: bool,
    ) -> Result<Reply, ApiError> {
        let (placement, mut live) = self.live_copies(tenant)?;
        // Up workers first, spread in turn; then the others, in case they still answer.
        let health = self.hub.health();
        let up = |w: &String| {
            health
                .iter()
                .any(|h| h.id == *w && h.state != WorkerState::Suspect)
        };
        let turn = self.replication.next_read.fetch_add(1, Ordering::Relaxed);
        let n = live.len();
        live.rotate_left(turn % n);
        live.sort_by_key(|w| !up(w));
        let mut last = None;
        for worker in &live {
            let send = self.send_to(worker, placement.epoch, tenant, tier, op.clone(), large, 0);
            match self.unless_silent(worker, send).await {
                Ok(answer) => return answer,
                Err(err) => last = Some(err),
            }
        }
        Err(last
            .unwrap_or_else(|| ApiError::new(Code::Unavailable, "no copy of the tenant answered")))
    }

    /// The tenant's write lock, held exclusively, waited for up to the request timeout.
    pub(crate) async fn write_turn(
        &self,
        tenant: &str,
    ) -> Result<tokio::sync::OwnedRwLockWriteGuard<()>, ApiError> {
        let lock = self.replication.lock_of(tenant);
        let waiting = &self.replication.waiting_exclusive;
        waiting.fetch_add(1, Ordering::SeqCst);
        let turn = tokio::time::timeout(self.request_timeout, lock.write_owned()).await;
        waiting.fetch_sub(1, Ordering::SeqCst);
        turn.map_err(|_| turn_timeout())
    }

    /// How many tasks wait for an exclusive turn of some tenant's write lock now (tests).
    pub fn write_turns_waiting(&self) -> usize {
        self.replication.waiting_exclusive.load(Ordering::SeqCst)
    }

    /// The tenant's write lock, held shared (a single-copy write), waited for up to the request
    /// timeout.
    pub(crate) async fn shared_write_turn(
        &self,
        tenant: &str,
    ) -> Result<tokio::sync::OwnedRwLockReadGuard<()>, ApiError> {
        let lock = self.replication.lock_of(tenant);
        tokio::time::timeout(self.request_timeout, lock.read_owned())
            .await
            .map_err(|_| turn_timeout())
    }

    /// One write to every live copy, under the tenant's write lock; copies that did not make it
    /// are recorded stale before the answer (see the module docs).
    async fn replicated_write(
        &self,
        tenant: &str,
        tier: Option<&Tier>,
        op: Op,
        large: bool,
    ) -> Result<Reply, ApiError> {
        let _turn = self.write_turn(tenant).await?;
        self.replicated_write_locked(tenant, tier, op, large, 0)
            .await?
    }

    /// [`Service::replicated_write`] with the lock held by the caller and `token` sent with the
    /// write. The outer error: no copy answered for sure.
    pub(super) async fn replicated_write_locked(
        &self,
        tenant: &str,
        tier: Option<&Tier>,
        op: Op,
        large: bool,
        token: u64,
    ) -> Result<Result<Reply, ApiError>, ApiError> {
        // Read again under the lock: a catch-up or another write may have changed the copies.
        let (placement, targets) = self.live_copies(tenant)?;
        // Writes pass one at a time per tenant, so the per-tenant bound on requests in flight
        // need not stop one copy's write and not another's.
        let tier_for_writes = tier.map(|t| Tier {
            max_in_flight: usize::MAX,
            ..t.clone()
        });
        // One copy of the operation per target, the last one the original.
        let ops = std::iter::repeat_n(op, targets.len());
        let sends = targets.iter().zip(ops).map(|(worker, op)| {
            let send = self.send_to(
                worker,
                placement.epoch,
                tenant,
                tier_for_writes.as_ref(),
                op,
                large,
                token,
            );
            self.unless_silent(worker, send)
        });
        let results = futures_util::future::join_all(sends).await;
        let reference = results.iter().position(Result::is_ok);
        let missed: Vec<String> = match reference {
            Some(r) => {
                let want = results[r].as_ref().ok();
                targets
                    .iter()
                    .zip(&results)
                    .filter(|(_, got)| match (got, want) {
                        (Ok(got), Some(want)) => !same_outcome(got, want),
                        _ => true,
                    })
                    .map(|(w, _)| w.clone())
                    .collect()
            }
            // Nothing answered for sure: the primary stays the reference.
            None => targets[1..].to_vec(),
        };
        if !missed.is_empty() {
            let reason = match reference {
                Some(_) => "a write did not reach it, or it answered differently",
                None => "no copy answered a write for sure",
            };
            off_runtime(|| {
                self.store
                    .mark_stale(&Actor(SYSTEM.into()), tenant, &missed, reason)
            })
            .map_err(|err| {
                tracing::error!(tenant, error = %err, "recording stale replicas failed; the write is not acknowledged");
                ApiError::new(
                    Code::Unavailable,
                    "the write's outcome could not be recorded; its outcome is unknown: upserts and deletes are safe to retry",
                )
            })?;
            self.forget_tenant_state(tenant);
            tracing::warn!(tenant, workers = ?missed, "copies recorded stale after a write");
            self.assign_live_copies(tenant).await;
        }
        match reference {
            Some(r) => Ok(results
                .into_iter()
                .nth(r)
                .expect("reference index is in range")
                .expect("reference is a definite answer")),
            None => Err(results
                .into_iter()
                .next()
                .and_then(Result::err)
                .unwrap_or_else(|| ApiError::new(Code::Unavailable, "no copy answered"))),
        }
    }

    /// Runs [`Service::repair_replicas`] at start, at every change of the workers, and every
    /// [`REPAIR_PERIOD`], until the service is dropped.
    pub async fn repair_replicas_forever(self: Arc<Self>) {
        loop {
            let changed = self.hub.wait_for_change();
            self.repair_replicas().await;
            let _ = tokio::time::timeout(REPAIR_PERIOD, changed).await;
        }
    }

    /// One repair pass over every replicated tenant: stale copies on connected workers catch up
    /// from the primary; copies on workers down longer than `[health] replace_after_ms` (or
    /// draining) are replaced by new copies on other workers; tenants with fewer copies than
    /// their tier asks get more. Failures are logged and tried again next pass.
    pub async fn repair_replicas(&self) {
        let (placements, replicas, workers) = match off_runtime(|| {
            Ok::<_, crate::store::Error>((
                self.store.placements()?,
                self.store.all_replicas()?,
                self.store.list_workers()?,
            ))
        }) {
            Ok(all) => all,
            Err(err) => {
                tracing::error!(error = %err, "reading placements for the replica repair failed");
                return;
            }
        };
        let health = self.hub.health();
        let up = |w: &str| {
            health
                .iter()
                .any(|h| h.id == w && h.state == WorkerState::Up)
        };
        let now = crate::cluster::now_ms();
        let gone = |w: &str| {
            if self.hub.worker(w).is_some() {
                return health
                    .iter()
                    .any(|h| h.id == w && h.state == WorkerState::Draining);
            }
            let last_seen = workers
                .iter()
                .find(|row| row.id == w)
                .map_or(0, |row| row.last_seen_ms);
            let down_since = last_seen.max(self.started_ms);
            now.saturating_sub(down_since) >= self.replace_after.as_millis() as u64
        };
        for p in &placements {
            if self.moving.contains(&p.tenant) || self.handing.contains(&p.tenant) {
                continue;
            }
            let Some(tier) = self.repair_tier(&p.tenant) else {
                continue;
            };
            let copies: Vec<_> = replicas.iter().filter(|r| r.tenant == p.tenant).collect();
            for stale in copies.iter().filter(|r| r.state == CopyState::Stale) {
                if up(&stale.worker)
                    && up(&p.worker)
                    && let Err(err) = self.catch_up(&p.tenant, &stale.worker).await
                {
                    tracing::warn!(tenant = %p.tenant, worker = %stale.worker, error = %err, "a replica's catch-up failed; tried again later");
                }
            }
            let mut holders: Vec<String> = std::iter::once(p.worker.clone())
                .chain(copies.iter().map(|r| r.worker.clone()))
                .collect();
            let lost: Vec<String> = copies
                .iter()
                .filter(|r| gone(&r.worker))
                .map(|r| r.worker.clone())
                .collect();
            let kept = holders.len() - lost.len();
            let wanted = tier.replicas as usize;
            for _ in kept..wanted {
                match self.add_copy(&p.tenant, wanted + lost.len()).await {
                    Ok(Some(worker)) => holders.push(worker),
                    Ok(None) => break,
                    Err(err) => {
                        tracing::warn!(tenant = %p.tenant, error = %err, "adding a replica failed; tried again later");
                        break;
                    }
                }
            }
            // A lost copy goes once the tenant has its copies without it.
            let have = holders.len() - lost.len();
            // Copies beyond the tier's (a hand-over cut short, a tier lowered) go too, stale
            // ones first; never the primary.
            let surplus: Vec<String> = copies
                .iter()
                .filter(|r| !lost.contains(&r.worker))
                .map(|r| (r.state == CopyState::Live, r.worker.clone()))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .map(|(_, w)| w)
                .take(have.saturating_sub(wanted))
                .collect();
            for worker in &surplus {
                self.remove_copy(&p.tenant, worker, "more copies than the tier asks")
                    .await;
            }
            if have >= wanted {
                for worker in &lost {
                    self.remove_copy(
                        &p.tenant,
                        worker,
                        "its worker was down or draining; replaced by another copy",
                    )
                    .await;
                }
            }
        }
        self.rebalance_step().await;
        self.replication.repaired.notify_waiters();
    }

    /// The tier whose copies the repair keeps for `tenant`: its own, or, for a paused tenant
    /// whose files rest on cold storage, the one it had before the pause (its copies are caught
    /// up, replaced and removed like a live tenant's, from cold storage to cold storage). `None`
    /// for a deleted tenant, one whose files are moving between hot and cold storage, or on a
    /// read error.
    fn repair_tier(&self, tenant: &str) -> Option<Tier> {
        let row = off_runtime(|| self.store.tenant(tenant)).ok()??;
        if row.deleted {
            return None;
        }
        if row.tier == PAUSED_TIER {
            if row.storage != crate::store::tenant::COLD {
                return None;
            }
            return self.tiers.get(row.paused_from.as_deref()?).cloned();
        }
        self.tiers.get(&row.tier).cloned()
    }

    /// After a change of `tenant`'s copies moved its epoch on: assigns the new epoch to every
    /// live copy whose connection holds an earlier one, so that a key request it makes (a
    /// collection loading, a seal) is answered at once (the key service waits for this; see
    /// `cluster::keys`). Failures are logged; the copy's next request assigns it anyway.
    pub(crate) async fn assign_live_copies(&self, tenant: &str) {
        let Ok((placement, workers)) = self.live_copies(tenant) else {
            return;
        };
        let tier = self.tier_of(tenant);
        for worker in workers {
            let behind = self
                .hub
                .worker(&worker)
                .and_then(|conn| conn.assigned_epoch(tenant))
                .is_some_and(|epoch| epoch < placement.epoch);
            if !behind {
                continue;
            }
            let assigned = self
                .hub
                .assign(
                    &worker,
                    tenant,
                    placement.epoch,
                    Self::quota(tier.as_ref()),
                    self.request_timeout,
                )
                .await;
            if let Err(err) = assigned {
                tracing::info!(tenant, worker, error = %err, "assigning a copy the new epoch failed; its next request does");
            }
        }
    }

    pub(super) fn tier_of(&self, tenant: &str) -> Option<Tier> {
        let row = off_runtime(|| self.store.tenant(tenant)).ok()??;
        if row.deleted || row.tier == PAUSED_TIER {
            return None;
        }
        self.tiers.get(&row.tier).cloned()
    }

    /// Adds a copy of `tenant` on the worker [`Service::choose_copy_worker`] picks, if it has
    /// fewer than `wanted` copies, and catches it up. Answers the worker, or `None` if no copy
    /// was wanted or no worker could take it.
    async fn add_copy(&self, tenant: &str, wanted: usize) -> Result<Option<String>, ApiError> {
        let worker = {
            // The write lock first (as a keyed write takes it before it may place the tenant):
            // the new copy's epoch must not land between the copies of one write.
            let _turn = self.write_turn(tenant).await?;
            // The first placement adds its copies under this lock too: counted again under it,
            // a copy is never added twice.
            let _placing = self.placing.lock().await;
            let placement = off_runtime(|| self.store.placement(tenant))?
                .ok_or_else(|| ApiError::new(Code::NotFound, "the tenant has no placement"))?;
            let holders: Vec<String> = std::iter::once(placement.worker)
                .chain(
                    off_runtime(|| self.store.replicas(tenant))?
                        .into_iter()
                        .map(|r| r.worker),
                )
                .collect();
            if holders.len() >= wanted {
                return Ok(None);
            }
            let Some(worker) = self.choose_copy_worker(&holders) else {
                return Ok(None);
            };
            off_runtime(|| {
                self.store
                    .add_replica(&Actor(SYSTEM.into()), tenant, &worker, false)
            })?;
            // Before the lock is let go: the next write must see the replica.
            self.forget_tenant_state(tenant);
            worker
        };
        tracing::info!(tenant, worker, "replica added");
        let is_stale = off_runtime(|| self.store.replicas(tenant))?
            .iter()
            .any(|r| r.worker == worker && r.state == CopyState::Stale);
        if is_stale {
            self.catch_up(tenant, &worker).await?;
        }
        Ok(Some(worker))
    }

    /// Removes `tenant`'s replica on `worker` under the tenant's write lock (a change of the
    /// copies moves the epoch on, which must not land between the copies of one write, or they
    /// would refuse it), then has the worker delete its files. Failures are logged.
    pub(super) async fn remove_copy(&self, tenant: &str, worker: &str, reason: &str) {
        let turn = match self.write_turn(tenant).await {
            Ok(turn) => turn,
            Err(err) => {
                tracing::warn!(tenant, worker, error = %err, "removing a replica waits for the next pass");
                return;
            }
        };
        let removed = off_runtime(|| {
            self.store
                .remove_replica(&Actor(SYSTEM.into()), tenant, worker, reason)
        });
        self.forget_tenant_state(tenant);
        self.assign_live_copies(tenant).await;
        drop(turn);
        match removed {
            Ok(_) => {
                self.drop_leftover(tenant, worker).await;
            }
            Err(err) => {
                tracing::warn!(tenant, worker, error = %err, "removing a replica failed")
            }
        }
    }

    /// Catch-ups finished since this service started.
    pub fn replicas_caught_up(&self) -> usize {
        self.replication.caught_up.load(Ordering::SeqCst)
    }

    /// Waits until a repair pass ends with no stale replica (tests; no sleeping).
    pub async fn wait_for_replicas_settled(&self) {
        loop {
            let notified = self.replication.repaired.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let replicas = self.store.all_replicas().unwrap_or_default();
            if replicas.iter().all(|r| r.state == CopyState::Live) {
                return;
            }
            notified.await;
        }
    }
}
