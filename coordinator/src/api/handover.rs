//! Handing a tenant's copy from one worker to another with no request refused, and evening the
//! workers out with it (`auto_rebalance`).
//!
//! A hand-over adds a copy on the target as a replica (stale, audited `replica.add`), catches it
//! up from the primary under the tenant's write lock (writes wait, reads go on from the live
//! copies), and once it is live makes it the primary if the source was (`replica.promote`), then
//! removes the source's copy (`replica.remove`) and has its worker delete the files. A single-copy
//! tenant has two copies for the length of it, so it is served throughout; unlike a move
//! (`moves.rs`), nothing is fenced. A hand-over cut short by a crash leaves a tenant with one copy
//! more than its tier asks, which the repair removes (`Service::repair_replicas`).
//!
//! With `auto_rebalance` on, each repair pass hands over at most one copy: from the `up` worker
//! holding the most copies (primaries and replicas) to the one holding the fewest, while they
//! differ by two or more, choosing a tenant with no copy on the target.

use std::collections::{BTreeMap, HashSet};

use super::error::{ApiError, Code};
use super::{Service, off_runtime};
use crate::cluster::WorkerState;
use crate::store::{Actor, CopyState};

const SYSTEM: &str = "system";

/// Tenants being handed over now.
#[derive(Default)]
pub(crate) struct Handing(parking_lot::Mutex<HashSet<String>>);

impl Handing {
    pub(crate) fn contains(&self, tenant: &str) -> bool {
        self.0.lock().contains(tenant)
    }
}

struct HandingGuard<'a>(&'a Handing, String);

impl Drop for HandingGuard<'_> {
    fn drop(&mut self) {
        self.0.0.lock().remove(&self.1);
    }
}

impl Service {
    /// Moves `tenant`'s copy on `from` to `to` with no request refused (see the module docs).
    pub async fn hand_over(&self, tenant: &str, from: &str, to: &str) -> Result<(), ApiError> {
        if !self.handing.0.lock().insert(tenant.to_owned()) {
            return Err(ApiError::new(
                Code::FailedPrecondition,
                format!("a copy of tenant {tenant} is being handed over already"),
            ));
        }
        let _guard = HandingGuard(&self.handing, tenant.to_owned());
        if self.moving.contains(tenant) {
            return Err(super::moves::moving_error());
        }
        if self.snapshots.restoring(tenant) {
            return Err(super::snapshots::restoring_error());
        }
        {
            let _turn = self.write_turn(tenant).await?;
            off_runtime(|| {
                self.store
                    .add_replica(&Actor(SYSTEM.into()), tenant, to, false)
            })?;
            // Before the lock is let go: the next write must see the replica.
            self.forget_tenant_state(tenant);
            self.assign_live_copies(tenant).await;
        }
        let stale = off_runtime(|| self.store.replicas(tenant))?
            .iter()
            .any(|r| r.worker == to && r.state == CopyState::Stale);
        if stale {
            self.catch_up(tenant, to).await?;
        }
        let _turn = self.write_turn(tenant).await?;
        let placement = off_runtime(|| self.store.placement(tenant))?
            .ok_or_else(|| ApiError::new(Code::NotFound, "the tenant has no placement"))?;
        if placement.worker == from {
            off_runtime(|| {
                self.store.make_primary(
                    &Actor(SYSTEM.into()),
                    tenant,
                    to,
                    &format!("handed over from {from}"),
                )
            })?;
        }
        off_runtime(|| {
            self.store.remove_replica(
                &Actor(SYSTEM.into()),
                tenant,
                from,
                &format!("handed over to {to}"),
            )
        })?;
        self.forget_tenant_state(tenant);
        self.assign_live_copies(tenant).await;
        drop(_turn);
        self.drop_leftover(tenant, from).await;
        tracing::info!(tenant, from, to, "a copy was handed over");
        Ok(())
    }

    /// One step of `auto_rebalance` (see the module docs): answers whether it handed a copy over.
    pub(super) async fn rebalance_step(&self) -> bool {
        if !self.auto_rebalance {
            return false;
        }
        let up: Vec<String> = self
            .hub
            .health()
            .into_iter()
            .filter(|h| h.state == WorkerState::Up)
            .map(|h| h.id)
            .collect();
        if up.len() < 2 {
            return false;
        }
        let Ok((placements, replicas)) = off_runtime(|| {
            Ok::<_, crate::store::Error>((self.store.placements()?, self.store.all_replicas()?))
        }) else {
            return false;
        };
        let mut copies: BTreeMap<&str, Vec<&str>> =
            up.iter().map(|w| (w.as_str(), Vec::new())).collect();
        for (tenant, worker) in placements
            .iter()
            .map(|p| (p.tenant.as_str(), p.worker.as_str()))
            .chain(
                replicas
                    .iter()
                    .map(|r| (r.tenant.as_str(), r.worker.as_str())),
            )
        {
            if let Some(list) = copies.get_mut(worker) {
                list.push(tenant);
            }
        }
        let most = copies
            .iter()
            .max_by_key(|(w, list)| (list.len(), std::cmp::Reverse(**w)));
        let least = copies.iter().min_by_key(|(w, list)| (list.len(), **w));
        let (Some((from, held)), Some((to, fewest))) = (most, least) else {
            return false;
        };
        if held.len() < fewest.len() + 2 {
            return false;
        }
        let holds_on_target = |tenant: &str| {
            placements
                .iter()
                .any(|p| p.tenant == tenant && p.worker == **to)
                || replicas
                    .iter()
                    .any(|r| r.tenant == tenant && r.worker == **to)
        };
        let Some(tenant) = held.iter().find(|t| {
            !holds_on_target(t)
                && !self.moving.contains(t)
                && !self.handing.contains(t)
                && self.tier_of(t).is_some()
        }) else {
            return false;
        };
        let (tenant, from, to) = (tenant.to_string(), from.to_string(), to.to_string());
        tracing::info!(tenant, from, to, "rebalancing: handing a copy over");
        match self.hand_over(&tenant, &from, &to).await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(tenant, from, to, error = %err, "handing a copy over failed; tried again later");
                false
            }
        }
    }
}
