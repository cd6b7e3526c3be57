//! Routing one operation to the worker (or the workers) holding its tenant: placing a tenant on
//! first use, single-copy and replicated routes, and sending to one worker under an epoch,
//! assigning the tenant there first when that connection has not acknowledged the epoch.

use std::time::Duration;

use proto::vaultvec::cluster::v1 as cluster;

use super::error::{ApiError, Code};
use super::{Op, Reply, Service, moves, replicas};
use crate::config::Tier;
use crate::store::{Actor, Placement};

impl Service {
    pub(super) async fn placement_for(
        &self,
        tenant: &str,
        tier: Option<&Tier>,
    ) -> Result<Placement, ApiError> {
        if let Some(p) = &self.tenant_state(tenant)?.placement {
            return Ok(p.clone());
        }
        let _guard = self.placing.lock().await;
        if let Some(p) = self.store.placement(tenant).map_err(ApiError::internal)? {
            self.forget_tenant_state(tenant);
            return Ok(p);
        }
        let placements = self.store.placements().map_err(ApiError::internal)?;
        let placed = |w: &str| placements.iter().filter(|p| p.worker == w).count();
        let Some(worker) = crate::cluster::health::choose_worker(&self.hub.health(), placed) else {
            return Err(ApiError::new(
                Code::Unavailable,
                "no worker is connected; retry later",
            ));
        };
        let mut placement = self
            .store
            .place(&Actor("system".into()), tenant, &worker)
            .map_err(ApiError::internal)?;
        // The other copies of a replicated tier go on other workers now, while the tenant is
        // empty (they start live); those that do not fit yet are added when workers join.
        let wanted = tier.map_or(1, |t| t.replicas as usize);
        let mut holders = vec![worker];
        for _ in 1..wanted {
            let Some(next) = self.choose_copy_worker(&holders) else {
                break;
            };
            // Placed a moment ago under the placing lock and sent nothing yet: no copy holds
            // anything, so the new one starts live.
            placement = self
                .store
                .add_replica(&Actor("system".into()), tenant, &next, true)
                .map_err(ApiError::internal)?;
            holders.push(next);
        }
        self.forget_tenant_state(tenant);
        Ok(placement)
    }

    /// Sends an operation to the tenant's worker, assigning the tenant to it first if this
    /// connection has not acknowledged the current epoch.
    pub(crate) async fn route(
        &self,
        tenant: &str,
        tier: Option<&Tier>,
        op: Op,
    ) -> Result<Reply, ApiError> {
        self.route_sized(tenant, tier, op, false).await
    }

    /// [`Service::route`]; a `large` operation is encoded on the background-priority pool. A
    /// tenant with replicas goes through `replicas` (writes to every live copy, reads to one).
    pub(super) async fn route_sized(
        &self,
        tenant: &str,
        tier: Option<&Tier>,
        op: Op,
        large: bool,
    ) -> Result<Reply, ApiError> {
        // A single-copy write holds the tenant's write lock shared while in flight: a change of
        // its copies (a hand-over's new epoch) waits for it, and one that came first is seen
        // here, under the lock.
        let shared = if replicas::is_write(&op) {
            Some(self.shared_write_turn(tenant).await?)
        } else {
            None
        };
        let Some(placement) = self.single_copy(tenant, tier).await? else {
            drop(shared);
            return self.route_replicated(tenant, tier, op, large).await;
        };
        // A read is kept to be sent again if the tenant's copies change under it; a large one
        // is not: its copy would double what it holds, outside the large-message budget, for
        // as long as the worker takes. Refused by a hand-over, it answers 503 to be retried.
        let retry = (!replicas::is_write(&op) && !large).then(|| op.clone());
        match self
            .send_to(
                &placement.worker,
                placement.epoch,
                tenant,
                tier,
                op,
                large,
                0,
            )
            .await
        {
            Ok(answer) => answer,
            // A read refused because the tenant's copies changed under it (a hand-over started:
            // a new epoch) is sent again, once, where the tenant is now.
            Err(err) => match retry {
                Some(op) if self.placement_for(tenant, tier).await? != placement => {
                    Box::pin(self.route_sized(tenant, tier, op, large)).await
                }
                _ => Err(err),
            },
        }
    }

    /// The placement of a tenant with one copy (placed first if it has none yet), or `None` for
    /// a tenant with replicas. Refuses a tenant that is moving.
    pub(super) async fn single_copy(
        &self,
        tenant: &str,
        tier: Option<&Tier>,
    ) -> Result<Option<Placement>, ApiError> {
        if self.moving.contains(tenant) {
            return Err(moves::moving_error());
        }
        if self.snapshots.restoring(tenant) {
            return Err(super::snapshots::restoring_error());
        }
        let placement = self.placement_for(tenant, tier).await?;
        Ok(self
            .tenant_state(tenant)?
            .replicas
            .is_empty()
            .then_some(placement))
    }

    /// [`Service::route_sized`] for a write carrying `token` (`TenantRequest.write_token`), with
    /// the caller holding the tenant's write lock. The outer error says no copy answered for
    /// sure (the write may or may not have run); the inner result is the definite answer.
    pub(crate) async fn route_token(
        &self,
        tenant: &str,
        tier: Option<&Tier>,
        op: Op,
        large: bool,
        token: u64,
    ) -> Result<Result<Reply, ApiError>, ApiError> {
        if let Some(placement) = self.single_copy(tenant, tier).await? {
            return self
                .send_to(
                    &placement.worker,
                    placement.epoch,
                    tenant,
                    tier,
                    op,
                    large,
                    token,
                )
                .await;
        }
        if replicas::is_write(&op) {
            return self
                .replicated_write_locked(tenant, tier, op, large, token)
                .await;
        }
        Ok(self.route_replicated(tenant, tier, op, large).await)
    }

    /// Sends an operation to one worker holding the tenant under `epoch`, assigning it first if
    /// that worker's connection has not acknowledged the epoch. The outer error says no answer
    /// came from the worker (not connected, busy, timed out, disconnected: the operation may or
    /// may not have run); the inner result is the worker's own answer.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send_to(
        &self,
        worker: &str,
        epoch: u64,
        tenant: &str,
        tier: Option<&Tier>,
        op: Op,
        large: bool,
        write_token: u64,
    ) -> Result<Result<Reply, ApiError>, ApiError> {
        let conn = self.hub.worker(worker).ok_or_else(|| {
            ApiError::new(
                Code::Unavailable,
                "the worker holding this tenant is not connected; retry later",
            )
        })?;
        if conn.assigned_epoch(tenant) != Some(epoch) {
            self.hub
                .assign(
                    worker,
                    tenant,
                    epoch,
                    Self::quota(tier),
                    self.request_timeout,
                )
                .await?;
        }
        // An erasure rewrites files before it answers.
        let timeout = match op {
            Op::EraseEntity(_) => Duration::from_secs(self.privacy.erase_timeout_secs),
            _ => self.request_timeout,
        };
        let request = cluster::TenantRequest {
            tenant: tenant.to_owned(),
            epoch,
            op: Some(op),
            write_token,
        };
        let answer = self
            .hub
            .tenant_request(
                worker,
                request,
                timeout,
                tier.map_or(0, |t| t.max_in_flight),
                large,
            )
            .await?;
        Ok(match answer {
            cluster::envelope::Body::TenantResponse(r) => r
                .result
                .ok_or_else(|| ApiError::internal("a worker answered without a result")),
            cluster::envelope::Body::Error(err) => {
                let code = cluster::ErrorCode::try_from(err.code)
                    .unwrap_or(cluster::ErrorCode::Unspecified);
                if matches!(
                    code,
                    cluster::ErrorCode::StaleEpoch | cluster::ErrorCode::NotAssigned
                ) {
                    conn.forget_assignment_up_to(tenant, epoch);
                    self.audit(
                        tenant,
                        &format!("worker:{worker}"),
                        "cluster.refused",
                        tenant,
                        "denied",
                        serde_json::json!({ "reason": err.message, "epoch": epoch }),
                    );
                    // The worker did not run it: as good as no answer.
                    return Err(err.into());
                }
                Err(err.into())
            }
            _ => Err(ApiError::internal("unexpected answer from a worker")),
        })
    }
}
