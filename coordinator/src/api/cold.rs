//! Paused tenants on cold storage. Pausing a tenant moves every copy's files from its worker's
//! data directory to that worker's cold storage (ciphertext only, see `storage::engine::cold`);
//! resuming moves them back before the tenant serves again.
//!
//! The tenant's `storage` state (`store::tenant`) says where its files are: `cooling` from the
//! pause until every copy has moved, then `cold`; `warming` from the resume until every copy is
//! back, then `hot` with the tier restored in the same transaction. Each transition is audited
//! (`tenant.pause`, `tenant.storage`, `tenant.resume`). A move is idempotent on the worker, so a
//! state left `cooling` or `warming` by a worker that was away or a crash of either side is
//! finished by running the moves again: when the worker connects (its hello), or when the pause
//! or resume is asked again. Requests are refused while paused (`paused`), and answered
//! `resuming` (503, retry) while warming. Nothing deletes a paused tenant's files but its
//! deletion.

use proto::vaultvec::cluster::v1 as cluster;

use super::error::{ApiError, Code};
use super::{Op, Reply, Service};
use crate::store::tenant::{COLD, COOLING, HOT, WARMING};
use crate::store::{Actor, Tenant};

const SYSTEM: &str = "system";

impl Service {
    /// Runs the moves a `cooling` or `warming` tenant still needs on every copy's worker and, if
    /// all of them answered, records the new state. Answers the tenant as it is now (still
    /// `cooling` or `warming` if a worker did not answer; the failures are logged and audited).
    pub(crate) async fn settle_storage(&self, id: &str) -> Result<Tenant, ApiError> {
        // One settling per tenant at a time, and never beside a write of it.
        let _turn = self.write_turn(id).await?;
        let tenant = self.existing(id)?;
        let to_cold = match tenant.storage.as_str() {
            COOLING => true,
            WARMING => false,
            _ => return Ok(tenant),
        };
        let actor = Actor(SYSTEM.into());
        let mut failed = Vec::new();
        if self.store.placement(id)?.is_some() {
            // A new epoch for the moves: the pause released the workers at the old one.
            let placement = self.store.bump_epoch(&actor, id)?;
            let workers: Vec<String> = std::iter::once(placement.worker.clone())
                .chain(self.store.replicas(id)?.into_iter().map(|r| r.worker))
                .collect();
            for worker in &workers {
                let op = Op::MoveStorage(cluster::MoveStorage { to_cold });
                let answer = self
                    .send_to(worker, placement.epoch, id, None, op, false, 0)
                    .await;
                match answer {
                    Ok(Ok(Reply::MovedBytes(bytes))) => {
                        tracing::info!(tenant = id, worker, to_cold, bytes, "tenant files moved");
                    }
                    Ok(Ok(_)) => failed.push((worker.clone(), "an unexpected answer".to_owned())),
                    Ok(Err(err)) | Err(err) => failed.push((worker.clone(), err.message)),
                }
                self.hub
                    .release(worker, id, placement.epoch, self.request_timeout)
                    .await;
            }
        }
        if !failed.is_empty() {
            for (worker, why) in &failed {
                tracing::warn!(tenant = id, worker, to_cold, error = %why, "moving a paused tenant's files did not finish; it is run again when the worker connects");
            }
            let details = serde_json::json!({ "to_cold": to_cold, "failed": failed });
            self.audit(id, SYSTEM, "tenant.storage", id, "error", details);
            return self.existing(id);
        }
        let tenant = if to_cold {
            self.store.set_storage(&actor, id, COLD)?
        } else {
            let tenant = self.store.resume_tenant(&Actor("admin".into()), id)?;
            if self.store.placement(id)?.is_some() {
                self.store.bump_epoch(&actor, id)?;
            }
            tenant
        };
        self.after_change(id);
        Ok(tenant)
    }

    /// Resumes a paused tenant: moves its files back from cold storage, then restores its tier
    /// under a new fencing epoch. While the files move, its requests are answered `resuming`.
    /// Answers 503 if a copy's worker did not move them back yet (the resume finishes when it
    /// connects, or when asked again).
    pub async fn resume(&self, id: &str) -> Result<Tenant, ApiError> {
        let tenant = self.existing(id)?;
        if tenant.storage == HOT {
            // Paused before its files were moved (an older version): nothing to move back.
            let tenant = self.store.resume_tenant(&Actor("admin".into()), id)?;
            if self.store.placement(id)?.is_some() {
                self.store.bump_epoch(&Actor("admin".into()), id)?;
            }
            self.after_change(id);
            return Ok(tenant);
        }
        self.store
            .set_storage(&Actor("admin".into()), id, WARMING)?;
        self.forget_tenant_state(id);
        let tenant = self.settle_storage(id).await?;
        if tenant.storage != HOT {
            return Err(ApiError::new(
                Code::Unavailable,
                format!(
                    "tenant {id} is resuming: a copy's files are not back from cold storage yet \
                     (its worker did not answer); the resume finishes when that worker connects, \
                     or when it is asked again"
                ),
            ));
        }
        Ok(tenant)
    }

    /// Finishes the moves of paused tenants with a copy on `worker`, which has just said hello.
    pub(crate) async fn finish_storage_moves_on(&self, worker: &str) {
        let moving = match self.store.tenants_moving_storage() {
            Ok(moving) => moving,
            Err(err) => {
                tracing::error!(error = %err, "listing tenants whose files are moving failed");
                return;
            }
        };
        for tenant in moving {
            let holds = self
                .store
                .placement(&tenant.id)
                .ok()
                .flatten()
                .is_some_and(|p| p.worker == worker)
                || self
                    .store
                    .replicas(&tenant.id)
                    .is_ok_and(|r| r.iter().any(|r| r.worker == worker));
            if holds && let Err(err) = self.settle_storage(&tenant.id).await {
                tracing::warn!(tenant = %tenant.id, worker, error = %err.message, "finishing a paused tenant's move failed");
            }
        }
    }
}
