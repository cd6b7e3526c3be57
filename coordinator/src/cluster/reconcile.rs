//! Reconciliation after a worker's hello: the worker lists the tenants it has files for, and the
//! coordinator has it delete those that were erased while it was away (an erasure that found the
//! worker offline destroyed the keys but could not delete the files) and unload those that are
//! placed on another worker or nowhere.

use std::sync::Arc;
use std::time::Duration;

use proto::vaultvec::cluster::v1 as cluster;
use storage::ids::TenantId;

use super::{Hub, WorkerConn, now_ms};

type Body = cluster::envelope::Body;

/// How long each step of the reconciliation may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// What the coordinator decided for the tenants a worker holds.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Plan {
    /// Deleted tenants: the worker deletes their files.
    pub(super) erase: Vec<String>,
    /// Live tenants not placed on this worker: the worker unloads them.
    pub(super) unload: Vec<String>,
}

impl Hub {
    /// What to do with the tenants `held` by worker `worker`. A tenant this coordinator has never
    /// heard of is left alone (it is not ours to delete).
    pub(super) fn plan(&self, worker: &str, held: &[String]) -> Plan {
        let mut plan = Plan::default();
        for tenant in held {
            if TenantId::parse(tenant).is_err() {
                continue;
            }
            match self.store.tenant(tenant) {
                Ok(Some(t)) if t.deleted => plan.erase.push(tenant.clone()),
                Ok(Some(_)) => match self.store.placement(tenant) {
                    Ok(Some(p)) if p.worker == worker => {}
                    Ok(_) => plan.unload.push(tenant.clone()),
                    Err(err) => {
                        tracing::warn!(worker, tenant, error = %err, "reading a placement failed")
                    }
                },
                Ok(None) => {
                    tracing::warn!(
                        worker,
                        tenant,
                        "the worker holds a tenant this coordinator does not know; leaving it"
                    )
                }
                Err(err) => tracing::warn!(worker, tenant, error = %err, "reading a tenant failed"),
            }
        }
        plan
    }

    /// Carries out the plan for the tenants `held` on `conn`, audits it in the platform chain, and
    /// counts one reconciliation (see [`Hub::wait_for_reconciliations`]).
    pub(super) async fn reconcile(self: Arc<Self>, conn: Arc<WorkerConn>, held: Vec<String>) {
        let plan = self.plan(&conn.id, &held);
        let mut erased = Vec::new();
        for tenant in &plan.erase {
            match self.erase_on(&conn, tenant).await {
                Ok(()) => erased.push(tenant.clone()),
                Err(err) => {
                    tracing::warn!(worker = %conn.id, tenant, error = %err, "erasing a deleted tenant's files failed")
                }
            }
        }
        let mut unloaded = Vec::new();
        for tenant in &plan.unload {
            // Epoch 0: never supersedes an assignment this connection may have received since.
            let release = Body::ReleaseTenant(cluster::ReleaseTenant {
                tenant: tenant.clone(),
                epoch: 0,
            });
            match self.request_on(&conn, release, STEP_TIMEOUT, 0).await {
                Ok(Body::Ack(_)) => unloaded.push(tenant.clone()),
                other => {
                    tracing::warn!(worker = %conn.id, tenant, answer = ?other.err(), "unloading an unplaced tenant failed")
                }
            }
        }
        if !plan.erase.is_empty() || !plan.unload.is_empty() {
            let draft = crate::audit::Draft {
                time_ms: now_ms(),
                actor: format!("worker:{}", conn.id),
                action: "worker.reconcile".into(),
                resource: "cluster".into(),
                outcome: if erased.len() == plan.erase.len() && unloaded.len() == plan.unload.len()
                {
                    "ok".into()
                } else {
                    "error".into()
                },
                details: serde_json::json!({
                    "erase": plan.erase,
                    "erased": erased,
                    "unload": plan.unload,
                    "unloaded": unloaded,
                }),
            };
            if let Err(err) = self.store.audit("platform", draft) {
                tracing::error!(error = %err, "audit write failed");
            }
        }
        self.reconciliations
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Has the worker delete a deleted tenant's files. A deleted tenant is never placed again, so
    /// the erasure runs under the highest epoch, which supersedes anything the worker still holds.
    async fn erase_on(&self, conn: &Arc<WorkerConn>, tenant: &str) -> Result<(), String> {
        let epoch = u64::MAX;
        let assign = Body::AssignTenant(cluster::AssignTenant {
            tenant: tenant.to_owned(),
            epoch,
            quota: Some(cluster::TenantQuota::default()),
        });
        match self.request_on(conn, assign, STEP_TIMEOUT, 0).await {
            Ok(Body::Ack(_)) => {}
            other => return Err(format!("assignment: {other:?}")),
        }
        let erase = Body::TenantRequest(cluster::TenantRequest {
            tenant: tenant.to_owned(),
            epoch,
            op: Some(cluster::tenant_request::Op::EraseTenant(
                cluster::EraseTenant {},
            )),
            write_token: 0,
        });
        let erased = self.request_on(conn, erase, STEP_TIMEOUT, 0).await;
        let release = Body::ReleaseTenant(cluster::ReleaseTenant {
            tenant: tenant.to_owned(),
            epoch,
        });
        let _ = self.request_on(conn, release, STEP_TIMEOUT, 0).await;
        match erased {
            Ok(Body::TenantResponse(_)) => Ok(()),
            other => Err(format!("erasure: {other:?}")),
        }
    }
}
