//! Draining a worker (`POST /admin/v1/workers/{id}/drain`): it takes no new tenant, and its
//! tenants are handed over one at a time (a replicated one to its live replica at once, any other
//! by [`Service::hand_over`] to the worker the health tracker chooses: no request is refused) by
//! a background task; `/admin/v1/workers` shows it `draining` with its placed tenants
//! going down. The flag is in the store, so a drain that a coordinator restart cut short goes on
//! when it starts again ([`Service::resume_drains`]). `POST .../undrain` stops it: the tenants
//! moved stay where they went.

use std::collections::HashSet;
use std::sync::Arc;

use super::error::{ApiError, Code};
use super::{Service, off_runtime};
use crate::store::Actor;

/// Drains running now, and a notification each time one ends.
#[derive(Default)]
pub(crate) struct Drains(parking_lot::Mutex<HashSet<String>>, tokio::sync::Notify);

/// What `POST .../drain` answers.
#[derive(Debug, serde::Serialize)]
pub struct DrainStarted {
    /// The worker.
    pub worker: String,
    /// Tenants placed on it now, to be moved off.
    pub tenants: usize,
}

impl Service {
    /// Starts draining worker `id` (or answers how far it has to go if it already is).
    pub fn drain_worker(self: &Arc<Self>, id: &str) -> Result<DrainStarted, ApiError> {
        self.store.set_draining(&Actor("admin".into()), id, true)?;
        self.hub.set_draining(id, true);
        let tenants = self.store.placements_of(id)?.len();
        self.spawn_drain(id);
        Ok(DrainStarted {
            worker: id.to_owned(),
            tenants,
        })
    }

    /// Stops draining worker `id`: it takes new tenants again; tenants already moved stay.
    pub fn undrain_worker(&self, id: &str) -> Result<(), ApiError> {
        self.store.set_draining(&Actor("admin".into()), id, false)?;
        self.hub.set_draining(id, false);
        Ok(())
    }

    /// At start: marks the workers the store says are draining, and goes on draining them.
    pub fn resume_drains(self: &Arc<Self>) -> Result<(), ApiError> {
        for worker in self.store.list_workers()? {
            if worker.draining_since_ms.is_some() {
                self.hub.set_draining(&worker.id, true);
                self.spawn_drain(&worker.id);
            }
        }
        Ok(())
    }

    /// Waits until no drain is running (tests; no sleeping).
    pub async fn wait_for_drains(&self) {
        loop {
            let notified = self.drains.1.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.drains.0.lock().is_empty() {
                return;
            }
            notified.await;
        }
    }

    fn spawn_drain(self: &Arc<Self>, id: &str) {
        if !self.drains.0.lock().insert(id.to_owned()) {
            return;
        }
        let service = self.clone();
        let worker = id.to_owned();
        tokio::spawn(async move {
            service.drain(&worker).await;
            service.drains.0.lock().remove(&worker);
            service.drains.1.notify_waiters();
        });
    }

    /// Hands `tenant`'s primary copy on `worker` to a live replica on a worker that is not
    /// draining; the copy here becomes a stale replica, which the repair replaces. False if it
    /// has no such replica (or the store failed; logged).
    async fn promote_off(&self, worker: &str, tenant: &str) -> bool {
        let replicas = match self.store.replicas(tenant) {
            Ok(r) => r,
            Err(err) => {
                tracing::error!(tenant, error = %err, "reading replicas failed");
                return false;
            }
        };
        let has_live = replicas.iter().any(|r| {
            r.state == crate::store::CopyState::Live
                && r.worker != worker
                && !self.hub.is_draining(&r.worker)
                && self.hub.worker(&r.worker).is_some()
        });
        if !has_live {
            return false;
        }
        // Under the write lock: the new epoch must not land between the copies of one write.
        let Ok(_turn) = self.write_turn(tenant).await else {
            return false;
        };
        match self.store.mark_stale(
            &crate::store::Actor("system".into()),
            tenant,
            &[worker.to_owned()],
            "its worker is draining",
        ) {
            Ok(p) if p.worker != worker => {
                self.forget_tenant_state(tenant);
                self.assign_live_copies(tenant).await;
                tracing::info!(worker, tenant, primary = %p.worker, "drain handed a tenant to its replica");
                true
            }
            Ok(_) => false,
            Err(err) => {
                tracing::error!(tenant, error = %err, "handing a tenant to its replica failed");
                false
            }
        }
    }

    /// Hands `tenant`'s primary copy on the draining `worker` over (`handover.rs`: no request is
    /// refused) to the worker the health tracker picks among the others that hold no copy of
    /// it. Answers that worker.
    async fn hand_off(&self, worker: &str, tenant: &str) -> Result<String, ApiError> {
        let holders: Vec<String> = std::iter::once(worker.to_owned())
            .chain(
                off_runtime(|| self.store.replicas(tenant))?
                    .into_iter()
                    .map(|r| r.worker),
            )
            .collect();
        let others: Vec<_> = self
            .hub
            .health()
            .into_iter()
            .filter(|h| !holders.contains(&h.id))
            .collect();
        let placements = off_runtime(|| self.store.placements())?;
        let placed = |w: &str| placements.iter().filter(|p| p.worker == w).count();
        let to = crate::cluster::health::choose_worker(&others, placed).ok_or_else(|| {
            ApiError::new(
                Code::FailedPrecondition,
                "no other worker is connected to hand the tenant to",
            )
        })?;
        self.hand_over(tenant, worker, &to).await?;
        Ok(to)
    }

    /// Hands the tenants placed on `worker` over to others, one at a time, while it is
    /// draining; a tenant whose hand-over fails is skipped (a later drain request tries it
    /// again). Audits the outcome.
    async fn drain(&self, worker: &str) {
        let mut moved = 0usize;
        let mut failed: Vec<String> = Vec::new();
        loop {
            if !self.hub.is_draining(worker) {
                break;
            }
            let placements = match self.store.placements_of(worker) {
                Ok(p) => p,
                Err(err) => {
                    tracing::error!(worker, error = %err, "reading placements failed; the drain stops");
                    break;
                }
            };
            let Some(next) = placements.into_iter().find(|p| !failed.contains(&p.tenant)) else {
                break;
            };
            if self.hub.worker(worker).is_none() {
                tracing::info!(
                    worker,
                    "the draining worker is not connected; waiting for it"
                );
                self.hub.wait_for_worker(worker).await;
                continue;
            }
            // A replicated tenant with a live copy elsewhere needs no move: that copy becomes
            // the primary at once, and the repair replaces the copy left here.
            if self.promote_off(worker, &next.tenant).await {
                moved += 1;
                continue;
            }
            match self.hand_off(worker, &next.tenant).await {
                Ok(to) => {
                    moved += 1;
                    tracing::info!(worker, tenant = %next.tenant, to = %to, "drain handed a tenant over");
                }
                Err(err) if err.code == Code::FailedPrecondition => {
                    // No worker to move to yet (none other connected, say, right after a
                    // restart): try again when the fleet changes (a hello, a heartbeat).
                    tracing::info!(worker, tenant = %next.tenant, error = %err, "drain waits for a worker to move to");
                    self.hub.wait_for_change().await;
                }
                Err(err) => {
                    tracing::warn!(worker, tenant = %next.tenant, error = %err, "drain could not move a tenant; skipping it");
                    failed.push(next.tenant);
                }
            }
        }
        let left = self.store.placements_of(worker).map_or(0, |p| p.len());
        let outcome = if failed.is_empty() { "ok" } else { "error" };
        self.audit(
            crate::api::admin::PLATFORM_CHAIN,
            "system",
            "worker.drained",
            worker,
            outcome,
            serde_json::json!({ "moved": moved, "failed": failed, "tenants_left": left }),
        );
    }
}

/// What `POST /admin/v1/rebalance` did.
#[derive(Debug, serde::Serialize)]
pub struct Rebalanced {
    /// The hand-overs made, in order.
    pub moves: Vec<HandedOver>,
    /// Tenants placed per worker (up, not draining) afterwards.
    pub placed: std::collections::BTreeMap<String, usize>,
}

/// One tenant handed over by a rebalance.
#[derive(Debug, serde::Serialize)]
pub struct HandedOver {
    /// The tenant.
    pub tenant: String,
    /// The worker its primary copy left.
    pub from: String,
    /// The worker it is on now.
    pub to: String,
    /// Its placement's epoch now.
    pub epoch: u64,
}

impl Service {
    /// [`Service::rebalance`] in a task of its own, so that a caller that goes away does not
    /// stop a hand-over halfway.
    pub async fn rebalance_detached(
        self: &Arc<Self>,
        max_moves: usize,
    ) -> Result<Rebalanced, ApiError> {
        let service = self.clone();
        tokio::spawn(async move { service.rebalance(max_moves).await })
            .await
            .map_err(|err| ApiError::internal(format!("the rebalance task failed: {err}")))?
    }

    /// Evens out tenants over the workers that are up and not draining: while the most loaded
    /// has at least two more placed tenants than the least loaded, hands one of its tenants
    /// with no copy there over to it (`handover.rs`: no request is refused), at most
    /// `max_moves` times. Ends early when every tenant of the most loaded worker has a copy on
    /// the least loaded one or is being moved; a hand-over that fails ends it with the error.
    pub async fn rebalance(&self, max_moves: usize) -> Result<Rebalanced, ApiError> {
        let mut moves = Vec::new();
        loop {
            let up: Vec<String> = self
                .hub
                .health()
                .into_iter()
                .filter(|h| h.state == crate::cluster::WorkerState::Up)
                .map(|h| h.id)
                .collect();
            let (placements, replicas) = off_runtime(|| {
                Ok::<_, crate::store::Error>((self.store.placements()?, self.store.all_replicas()?))
            })?;
            let mut placed: std::collections::BTreeMap<String, usize> =
                up.iter().map(|w| (w.clone(), 0)).collect();
            for p in &placements {
                if let Some(n) = placed.get_mut(&p.worker) {
                    *n += 1;
                }
            }
            let most = placed
                .iter()
                .max_by_key(|(w, n)| (**n, std::cmp::Reverse((*w).clone())));
            let least = placed.iter().min_by_key(|(w, n)| (**n, (*w).clone()));
            let (Some((from, &high)), Some((to, &low))) = (most, least) else {
                return Ok(Rebalanced { moves, placed });
            };
            if high < low + 2 || moves.len() >= max_moves {
                return Ok(Rebalanced { moves, placed });
            }
            let candidate = placements.iter().find(|p| {
                &p.worker == from
                    && !self.moving.contains(&p.tenant)
                    && !self.handing.contains(&p.tenant)
                    && !replicas
                        .iter()
                        .any(|r| r.tenant == p.tenant && &r.worker == to)
            });
            let Some(candidate) = candidate else {
                return Ok(Rebalanced { moves, placed });
            };
            let (tenant, from, to) = (candidate.tenant.clone(), from.clone(), to.clone());
            tracing::info!(tenant = %tenant, from = %from, to = %to, "rebalancing: handing a tenant over");
            self.hand_over(&tenant, &from, &to).await?;
            let epoch = off_runtime(|| self.store.placement(&tenant))?.map_or(0, |p| p.epoch);
            moves.push(HandedOver {
                tenant,
                from,
                to,
                epoch,
            });
        }
    }
}
