//! Moving a tenant from one worker to another (`POST /admin/v1/tenants/{t}/move`): fence it,
//! release it on the source (which seals and unloads it), copy its files to the target through
//! the coordinator (ciphertext only, piece by piece: `TransferTenant`), commit them there, switch
//! the placement, and delete the source's copy. While the files are copied the tenant's requests
//! are answered 503 with a retry (the move fences the tenant, replicas too). Drains and
//! rebalances hand tenants over instead (`handover.rs`), with no request refused.
//!
//! Every stage is a `tenant.move` audit row written with the store change it goes with. A move cut
//! short ends on one placement: one still copying when the coordinator starts again is aborted
//! (the tenant stays on its source, whose files were never touched), and a copy left behind (the
//! source's after a switch, the target's after an abort) is deleted when its worker is connected
//! ([`Service::finish_moves`], run at start and at every worker's hello).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proto::vaultvec::cluster::v1 as cluster;
use serde::Serialize;

use super::Service;
use super::copy::CopyStep;
use super::error::{ApiError, Code};
use crate::store::{Actor, MoveState};

use cluster::transfer_tenant::Step;

const ADMIN: &str = "admin";
const SYSTEM: &str = "system";

/// How far a move's copy has got.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MoveProgress {
    /// Files to copy (0 until they are listed).
    pub files: usize,
    /// Bytes to copy.
    pub bytes: u64,
    /// Bytes copied so far.
    pub copied_bytes: u64,
}

/// Tenants being moved now (their requests are answered 503 meanwhile) with their progress,
/// and a notification each time a recorded move ends.
#[derive(Default)]
pub(crate) struct Moving(
    parking_lot::Mutex<HashMap<String, MoveProgress>>,
    tokio::sync::Notify,
);

impl Moving {
    /// True if `tenant` is being moved.
    pub(crate) fn contains(&self, tenant: &str) -> bool {
        self.0.lock().contains_key(tenant)
    }

    /// How far `tenant`'s move has got, if it is being moved.
    pub(crate) fn progress(&self, tenant: &str) -> Option<MoveProgress> {
        self.0.lock().get(tenant).cloned()
    }

    fn update(&self, tenant: &str, f: impl FnOnce(&mut MoveProgress)) {
        if let Some(progress) = self.0.lock().get_mut(tenant) {
            f(progress);
        }
    }
}

/// Marks a tenant as moving until dropped.
struct MovingGuard<'a> {
    moving: &'a Moving,
    tenant: String,
}

impl Drop for MovingGuard<'_> {
    fn drop(&mut self) {
        self.moving.0.lock().remove(&self.tenant);
    }
}

/// What a finished move did.
#[derive(Debug, Serialize)]
pub struct MoveReport {
    /// The tenant.
    pub tenant: String,
    /// The worker it left.
    pub from: String,
    /// The worker it is on now.
    pub to: String,
    /// Its placement's epoch now.
    pub epoch: u64,
    /// Files copied.
    pub files: usize,
    /// Bytes copied.
    pub bytes: u64,
    /// Whether the source's copy is deleted already (otherwise it is when the source is back).
    pub source_copy_deleted: bool,
}

/// The error a tenant's requests get while it moves.
pub(crate) fn moving_error() -> ApiError {
    ApiError {
        code: Code::Unavailable,
        message: "the tenant is moving between workers; retry in a moment".into(),
        retry_after: Some(Duration::from_secs(1)),
    }
}

impl Service {
    /// One transfer step on `worker`.
    pub(crate) async fn transfer(
        &self,
        worker: &str,
        tenant: &str,
        step: Step,
    ) -> Result<cluster::TransferTenantResponse, ApiError> {
        let body = cluster::envelope::Body::TransferTenant(cluster::TransferTenant {
            tenant: tenant.to_owned(),
            step: Some(step),
        });
        match self.hub.request(worker, body, self.request_timeout).await? {
            cluster::envelope::Body::TransferTenantResponse(answer) => Ok(answer),
            cluster::envelope::Body::Error(err) => Err(ApiError::new(
                Code::Unavailable,
                format!("worker {worker} refused a transfer step: {}", err.message),
            )),
            _ => Err(ApiError::internal("unexpected answer to a transfer step")),
        }
    }

    /// [`Service::move_tenant`] in a task of its own: a caller that goes away (a client that
    /// disconnects, a proxy that times out a long copy) does not stop the move halfway, which
    /// would leave the tenant fenced until the coordinator restarts.
    pub async fn move_tenant_detached(
        self: &Arc<Self>,
        tenant: &str,
        to: Option<&str>,
    ) -> Result<MoveReport, ApiError> {
        let service = self.clone();
        let (tenant, to) = (tenant.to_owned(), to.map(str::to_owned));
        tokio::spawn(async move { service.move_tenant(&tenant, to.as_deref()).await })
            .await
            .map_err(|err| ApiError::internal(format!("the move task failed: {err}")))?
    }

    /// Moves `tenant` to worker `to` (or, without it, to the worker the health tracker chooses
    /// among the others). Answers once the tenant is served from its new worker. Dropped
    /// halfway, it leaves the move recorded as copying: callers that may go away use
    /// [`Service::move_tenant_detached`].
    pub async fn move_tenant(
        &self,
        tenant: &str,
        to: Option<&str>,
    ) -> Result<MoveReport, ApiError> {
        match self.store.tenant(tenant)? {
            Some(t) if !t.deleted => {}
            _ => {
                return Err(ApiError::new(
                    Code::NotFound,
                    format!("tenant {tenant} not found"),
                ));
            }
        }
        if let Some(to) = to
            && !self.store.list_workers()?.iter().any(|w| w.id == to)
        {
            return Err(ApiError::new(
                Code::NotFound,
                format!("worker {to} not found"),
            ));
        }
        let placement = self.store.placement(tenant)?.ok_or_else(|| {
            ApiError::new(
                Code::FailedPrecondition,
                format!("tenant {tenant} is not placed on any worker yet (it is placed at its first request)"),
            )
        })?;
        let to = match to {
            Some(to) => to.to_owned(),
            None => {
                let replicas = self.store.replicas(tenant)?;
                let others: Vec<_> = self
                    .hub
                    .health()
                    .into_iter()
                    .filter(|h| {
                        h.id != placement.worker && !replicas.iter().any(|r| r.worker == h.id)
                    })
                    .collect();
                let placements = self.store.placements()?;
                let placed = |w: &str| placements.iter().filter(|p| p.worker == w).count();
                crate::cluster::health::choose_worker(&others, placed).ok_or_else(|| {
                    ApiError::new(
                        Code::FailedPrecondition,
                        "no other worker is connected to move the tenant to",
                    )
                })?
            }
        };
        for worker in [&placement.worker, &to] {
            if self.hub.worker(worker).is_none() {
                return Err(ApiError::new(
                    Code::FailedPrecondition,
                    format!("worker {worker} is not connected; a move needs both workers"),
                ));
            }
        }
        if self.snapshots.restoring(tenant) {
            return Err(super::snapshots::restoring_error());
        }
        {
            let mut moving = self.moving.0.lock();
            if moving
                .insert(tenant.to_owned(), MoveProgress::default())
                .is_some()
            {
                return Err(ApiError::new(
                    Code::FailedPrecondition,
                    format!("tenant {tenant} is already moving"),
                ));
            }
        }
        let guard = MovingGuard {
            moving: &self.moving,
            tenant: tenant.to_owned(),
        };
        let fenced = self.store.begin_move(&Actor(ADMIN.into()), tenant, &to)?;
        self.forget_tenant_state(tenant);
        let from = fenced.worker.clone();
        tracing::info!(tenant, from = %from, to = %to, epoch = fenced.epoch, "moving a tenant");
        let copied = self.copy_files(tenant, &from, &to, fenced.epoch).await;
        let (files, bytes) = match copied {
            Ok(counts) => counts,
            Err(err) => {
                tracing::warn!(tenant, from = %from, to = %to, error = %err, "moving a tenant failed; it stays where it was");
                self.store
                    .abort_move(&Actor(ADMIN.into()), tenant, &err.message)?;
                self.forget_tenant_state(tenant);
                drop(guard);
                self.finish_moves_on(&to).await;
                return Err(ApiError::new(
                    err.code,
                    format!(
                        "the move failed and the tenant stays on {from}: {}",
                        err.message
                    ),
                ));
            }
        };
        let placed = self.store.switch_move(
            &Actor(ADMIN.into()),
            tenant,
            serde_json::json!({ "files": files, "bytes": bytes }),
        )?;
        self.forget_tenant_state(tenant);
        drop(guard);
        self.finish_moves_on(&from).await;
        let source_copy_deleted = !self.store.moves()?.iter().any(|m| m.tenant == tenant);
        Ok(MoveReport {
            tenant: tenant.to_owned(),
            from,
            to,
            epoch: placed.epoch,
            files,
            bytes,
            source_copy_deleted,
        })
    }

    /// Releases the tenant on `from` (sealing and unloading it), then copies its files to `to`
    /// and commits them there. Answers the files and bytes copied.
    async fn copy_files(
        &self,
        tenant: &str,
        from: &str,
        to: &str,
        epoch: u64,
    ) -> Result<(usize, u64), ApiError> {
        self.hub
            .release_checked(from, tenant, epoch, self.request_timeout)
            .await?;
        self.copy_tenant_files(tenant, from, to, &|step| match step {
            CopyStep::Listed { files, bytes } => self.moving.update(tenant, |p| {
                p.files = files;
                p.bytes = bytes;
            }),
            CopyStep::Copied(n) => self.moving.update(tenant, |p| p.copied_bytes += n),
        })
        .await
    }

    /// Deletes the copies moves left on `worker` (the source's after a switch, the target's after
    /// an abort) and ends those moves. A worker that is not connected keeps them until its next
    /// hello. Failures are logged; the move stays recorded and is tried again then.
    pub(crate) async fn finish_moves_on(&self, worker: &str) {
        let moves = match self.store.moves() {
            Ok(moves) => moves,
            Err(err) => {
                tracing::error!(error = %err, "reading the moves failed");
                return;
            }
        };
        for row in moves {
            let leftover = match row.state {
                MoveState::Cleanup => &row.from,
                MoveState::Aborted => &row.to,
                MoveState::Copying => continue,
            };
            if leftover != worker || self.moving.contains(&row.tenant) {
                continue;
            }
            // Never delete the copy the tenant is placed on.
            match self.store.placement(&row.tenant) {
                Ok(Some(p)) if p.worker == *leftover => {
                    tracing::error!(tenant = %row.tenant, worker, "a move's leftover copy is where the tenant is placed; keeping it");
                    continue;
                }
                Err(err) => {
                    tracing::error!(error = %err, "reading a placement failed");
                    continue;
                }
                _ => {}
            }
            let dropped = self
                .transfer(worker, &row.tenant, Step::DropFiles(cluster::DropFiles {}))
                .await;
            match dropped {
                Ok(_) => {
                    if let Err(err) = self.store.end_move(&Actor(SYSTEM.into()), &row.tenant) {
                        tracing::error!(tenant = %row.tenant, error = %err, "ending a move failed");
                    }
                    self.moving.1.notify_waiters();
                }
                Err(err) => {
                    tracing::warn!(tenant = %row.tenant, worker, error = %err, "deleting a moved tenant's leftover copy failed; tried again at the worker's next hello");
                }
            }
        }
    }

    /// Waits until no move is recorded (tests; no sleeping).
    pub async fn wait_for_no_moves(&self) {
        loop {
            let notified = self.moving.1.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.store.moves().map_or(true, |m| m.is_empty()) {
                return;
            }
            notified.await;
        }
    }

    /// At start: aborts moves that were copying when the coordinator stopped (the tenant stays on
    /// its source), so their tenants are served again.
    pub fn abort_interrupted_moves(&self) -> Result<(), ApiError> {
        for row in self.store.moves()? {
            if row.state == MoveState::Copying && !self.moving.contains(&row.tenant) {
                self.store.abort_move(
                    &Actor(SYSTEM.into()),
                    &row.tenant,
                    "the coordinator stopped during the copy",
                )?;
                self.forget_tenant_state(&row.tenant);
            }
        }
        Ok(())
    }
}
