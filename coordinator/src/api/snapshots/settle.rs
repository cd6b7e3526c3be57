//! Restores cut short by a crash of the coordinator (see `store::restores`).
//!
//! A restore is recorded (`restores`) before it stages anything on its worker, marked started
//! with its `started` audit row before it asks the worker to switch, and forgotten with the row
//! of its outcome. A coordinator that stops in between finds the record at its next start: the
//! tenant answers `restoring` (503, retry) from the first request on, and when the restore's
//! worker says hello (or at the next pass, every 2 s, which also settles a switch that failed or
//! whose answer was lost) the restore is settled. The tenant's placement moves to a new epoch and the
//! worker releases it (nothing reads or writes its files meanwhile), then the worker lists the
//! files it holds at rest (waiting for a switch it is still making: the transfer steps hold the
//! tenant's gate). If every file of the snapshot is there with its length and digest, the switch
//! happened: the restore is recorded `ok` and finished as a restore that was not cut (its files
//! re-wrapped under a new KEK version; its replicas, recorded stale before it started, catch up).
//! Otherwise it did not: whatever was staged is dropped, the tenant keeps the files it had, and
//! the restore is recorded `error`. Either way the record goes in the transaction of that row.

use super::*;
use crate::store::RestoreIntent;

const SYSTEM: &str = "system";

impl Service {
    /// At open: every tenant with a restore to settle answers `restoring` until it is settled.
    /// Answers how many there are.
    pub fn hold_unsettled_restores(&self) -> Result<usize, ApiError> {
        let intents = self.store.restores()?;
        let mut restoring = self.snapshots.restoring.lock();
        for intent in &intents {
            tracing::warn!(tenant = %intent.tenant, snapshot = %intent.snapshot, worker = %intent.worker, "a restore was cut short by a stop of the coordinator; it is settled when its worker connects");
            restoring.insert(intent.tenant.clone());
        }
        Ok(intents.len())
    }

    /// Settles the restores a crash (or a switch whose answer was lost) left: those on
    /// `worker` when it has just said hello, or all of them. A restore whose tenant is busy with
    /// another lifecycle operation (a restore still running here holds it) is left for the next
    /// pass.
    pub(crate) async fn settle_restores(&self, worker: Option<&str>) {
        let intents = match off_runtime(|| self.store.restores()) {
            Ok(intents) => intents,
            Err(err) => {
                tracing::error!(error = %err, "listing the restores to settle failed");
                return;
            }
        };
        for intent in intents
            .into_iter()
            .filter(|i| worker.is_none_or(|w| i.worker == w))
        {
            if !self.hub.connected().contains(&intent.worker) {
                continue;
            }
            let Some(lifecycle) = self.try_lifecycle_lock(&intent.tenant) else {
                continue;
            };
            if let Err(err) = self.settle_restore(&intent, lifecycle).await {
                tracing::warn!(tenant = %intent.tenant, worker = %intent.worker, error = %err.message, "settling a restore failed; the next pass tries again");
            }
        }
    }

    async fn settle_restore(
        &self,
        intent: &RestoreIntent,
        _lifecycle: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<(), ApiError> {
        let tenant = intent.tenant.as_str();
        if self.store.restore_of(tenant)?.as_ref() != Some(intent) {
            // Settled meanwhile.
            return Ok(());
        }
        if self.existing(tenant).is_err() {
            // Deleted since: its files and keys are gone with it.
            self.store.forget_restore(tenant)?;
            self.snapshots.restoring.lock().remove(tenant);
            return Ok(());
        }
        let _turn = self.write_turn(tenant).await?;
        let actor = Actor(SYSTEM.into());
        let fenced = self.store.bump_epoch(&actor, tenant)?;
        self.forget_tenant_state(tenant);
        let mut details = serde_json::json!({
            "snapshot": intent.snapshot, "worker": intent.worker,
            "settled_later": true,
        });
        if fenced.worker != intent.worker {
            // The tenant's primary moved on while the coordinator was away: the restore's
            // worker is no longer the one that serves it.
            details["error"] = format!(
                "the tenant's primary moved from {} to {} before the restore was settled",
                intent.worker, fenced.worker
            )
            .into();
            let _ = self
                .transfer(
                    &intent.worker,
                    tenant,
                    Step::ImportAbort(cluster::ImportAbort {}),
                )
                .await;
            self.store.end_restore(&actor, tenant, "error", details)?;
            self.snapshots.restoring.lock().remove(tenant);
            return Ok(());
        }
        self.hub
            .release_checked(&intent.worker, tenant, fenced.epoch, self.request_timeout)
            .await?;
        let held: HashSet<(String, u64, String)> = self
            .transfer(
                &intent.worker,
                tenant,
                Step::ExportFiles(cluster::ExportFiles { live: false }),
            )
            .await?
            .files
            .into_iter()
            .map(|f| (f.path, f.len, hex::encode(f.sha256)))
            .collect();
        let switched = intent.started
            && intent
                .files
                .iter()
                .all(|f| held.contains(&(f.path.clone(), f.len, f.sha256.clone())));
        if switched {
            let row = self.store.end_restore(&actor, tenant, "ok", details)?;
            self.snapshots.restoring.lock().remove(tenant);
            tracing::info!(tenant, snapshot = %intent.snapshot, seq = row.seq, "a restore cut short had switched; recorded ok");
            self.forget_tenant_state(tenant);
            drop(_turn);
            self.finish_restore(tenant).await;
            return Ok(());
        } else {
            self.transfer(
                &intent.worker,
                tenant,
                Step::ImportAbort(cluster::ImportAbort {}),
            )
            .await?;
            details["error"] = "cut short by a stop of the coordinator before the switch; the \
                                tenant keeps the files it had"
                .into();
            self.store.end_restore(&actor, tenant, "error", details)?;
            self.snapshots.restoring.lock().remove(tenant);
            tracing::info!(tenant, snapshot = %intent.snapshot, "a restore cut short had not switched; its staging is dropped");
        }
        self.forget_tenant_state(tenant);
        Ok(())
    }

    /// What follows a restore's switch, with the lifecycle lock held: the restored files are
    /// re-wrapped under a new KEK version, and the replicas catch up (the repair pass tries again
    /// those that do not now). Answers the new KEK version, if the rotation worked.
    pub(super) async fn finish_restore(&self, tenant: &str) -> Option<u32> {
        let kek_version = match self.rotate_kek_locked(tenant, SYSTEM).await {
            Ok(rotation) => Some(rotation.kek_version),
            Err(err) => {
                tracing::warn!(tenant, error = %err, "the KEK rotation after a restore failed; the snapshot's KEK versions stay");
                None
            }
        };
        let replicas = match self.store.replicas(tenant) {
            Ok(replicas) => replicas,
            Err(err) => {
                tracing::warn!(tenant, error = %err, "listing a restored tenant's replicas failed; the repair pass catches them up");
                return kek_version;
            }
        };
        for replica in replicas {
            if let Err(err) = self.catch_up(tenant, &replica.worker).await {
                tracing::warn!(tenant, worker = %replica.worker, error = %err, "a replica did not catch up after a restore; the repair pass tries again");
            }
        }
        kek_version
    }
}
