//! Erasures, each answered with a purge receipt naming what was removed and the audit row that
//! records it: a tenant's deletion (crypto-erasure, then its files), and an entity's erasure
//! (every point whose payload names the entity, from every collection and every copy, with the
//! files that held them rewritten, then a KEK rotation).

use proto::vaultvec::cluster::v1 as cluster;
use serde::Serialize;
use sha2::{Digest, Sha256};
use storage::ids::TenantId;

use super::admin::ADMIN;
use super::error::{ApiError, Code};
use super::{Op, Reply, Service};
use crate::audit::AuditRow;
use crate::store::{Actor, Placement};

/// Longest entity id, in bytes.
pub const MAX_ENTITY_ID: usize = 256;

/// The audit row that records an erasure.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditRef {
    /// The chain (the tenant's id).
    pub chain: String,
    /// The row's number in the chain.
    pub seq: u64,
    /// The row's hash, as the chain's export shows it.
    pub hash: String,
}

impl From<AuditRow> for AuditRef {
    fn from(row: AuditRow) -> AuditRef {
        AuditRef {
            chain: row.chain,
            seq: row.seq,
            hash: row.hash,
        }
    }
}

/// Receipt of a tenant deletion.
#[derive(Debug, Serialize)]
pub struct Erasure {
    /// The KEKs are destroyed: every copy of the tenant's files is unreadable from now on.
    pub keys_destroyed: bool,
    /// How many KEK versions were destroyed (0 when a deletion is finished by a second run).
    pub kek_versions_destroyed: usize,
    /// Live points the tenant held, counted before the deletion; `None` when its worker did not
    /// answer (its files are unreadable anyway).
    pub points: Option<u64>,
    /// Every copy's worker also deleted the files (false if one was not connected; they stay
    /// unreadable).
    pub files_deleted: bool,
    /// Files the workers deleted, all copies together.
    pub files_removed: u64,
    /// Snapshot archives deleted from the snapshot store.
    pub snapshots_deleted: usize,
    /// The `tenant.erase` row.
    pub audit_row: AuditRef,
}

/// What an entity erasure removed from one collection (its primary copy's figures).
#[derive(Debug, Serialize)]
pub struct CollectionPurge {
    /// The collection.
    pub collection: String,
    /// Points removed.
    pub points: u64,
    /// Sealed segments rewritten without them.
    pub segments_rewritten: u64,
    /// Segment and WAL files that held data and are gone.
    pub files_deleted: u64,
}

/// Receipt of an entity erasure. No file of any copy holds an erased point any more; the old
/// KEK versions are destroyed, so what is left of the deleted files on the device (blocks not
/// yet overwritten) does not decrypt either.
#[derive(Debug, Serialize)]
pub struct EntityErasure {
    /// The payload field compared with the entity id.
    pub entity_field: String,
    /// Points removed, all collections together.
    pub points: u64,
    /// Sealed segments rewritten.
    pub segments_rewritten: u64,
    /// Files deleted.
    pub files_deleted: u64,
    /// KEK versions destroyed by the rotation that follows the rewrite.
    pub keys_destroyed: usize,
    /// The tenant's snapshots deleted (each taken before the erasure may hold the points).
    pub snapshots_deleted: usize,
    /// Per collection.
    pub collections: Vec<CollectionPurge>,
    /// The `tenant.erase_entity` row.
    pub audit_row: AuditRef,
}

/// Hex SHA-256 of an entity id: what the audit chain keeps instead of the id, which is itself
/// personal data and would otherwise outlive its erasure in an append-only log.
pub fn entity_digest(entity: &str) -> String {
    hex::encode(Sha256::digest(entity.as_bytes()))
}

fn check_entity(entity: &str) -> Result<(), ApiError> {
    if entity.is_empty() || entity.len() > MAX_ENTITY_ID {
        return Err(ApiError::invalid(format!(
            "an entity id is 1 to {MAX_ENTITY_ID} bytes"
        )));
    }
    if entity.chars().any(char::is_control) {
        return Err(ApiError::invalid("an entity id has no control characters"));
    }
    Ok(())
}

impl Service {
    /// Erases every point whose payload field `[privacy] entity_field` equals `entity`, in every
    /// collection of the tenant and on every copy, rewriting the files that held any version of
    /// one; then rotates the tenant's KEK, destroying the old versions. Audited as
    /// `tenant.erase_entity` with the entity's digest, never the id itself.
    ///
    /// A collection whose erasure fails (its worker away, say) fails the request after the
    /// collections done so far are audited (`outcome: error`); running it again finishes it.
    pub async fn erase_entity(&self, id: &str, entity: &str) -> Result<EntityErasure, ApiError> {
        let row = self.existing(id)?;
        check_entity(entity)?;
        if row.tier == crate::config::PAUSED_TIER {
            return Err(ApiError::new(
                Code::FailedPrecondition,
                format!(
                    "tenant {id} is paused (its files are on cold storage); resume it to erase \
                     an entity"
                ),
            ));
        }
        let field = self.privacy.entity_field.clone();
        let filter =
            serde_json::json!({ "must": [{ "key": field, "match": { "value": entity } }] });
        let filter = proto::json::json_to_struct(&filter).map_err(ApiError::internal)?;
        let tier = self.tiers.get(&row.tier).cloned();
        let mut collections = Vec::new();
        let mut failure = None;
        for info in self.stored_collections(&row).await? {
            let name = info.name;
            let op = Op::EraseEntity(cluster::EraseEntity {
                collection: name.clone(),
                filter: Some(filter.clone()),
            });
            match self.route(id, tier.as_ref(), op).await {
                Ok(Reply::Purged(p)) => collections.push(CollectionPurge {
                    collection: name,
                    points: p.points,
                    segments_rewritten: p.segments_rewritten,
                    files_deleted: p.files_deleted,
                }),
                Ok(_) => {
                    failure = Some(ApiError::internal("unexpected answer to an erasure"));
                    break;
                }
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        // Snapshots taken before hold the entity's points: they are deleted, so the rotation
        // destroys the old KEK versions their files need.
        let snapshots_deleted = match failure {
            Some(err) => Err(err),
            None => self.delete_every_snapshot(id, "entity erasure").await,
        };
        let (rotation, snapshots_deleted) = match snapshots_deleted {
            Err(err) => (Err(err), 0),
            Ok(n) => (self.rotate_kek(id).await, n),
        };
        let points = collections.iter().map(|c| c.points).sum();
        let segments_rewritten = collections.iter().map(|c| c.segments_rewritten).sum();
        let files_deleted = collections.iter().map(|c| c.files_deleted).sum();
        let keys_destroyed = rotation.as_ref().map_or(0, |r| r.destroyed_versions.len());
        let mut details = serde_json::json!({
            "entity_sha256": entity_digest(entity),
            "entity_field": field,
            "points": points,
            "segments_rewritten": segments_rewritten,
            "files_deleted": files_deleted,
            "keys_destroyed": keys_destroyed,
            "snapshots_deleted": snapshots_deleted,
            "collections": collections,
        });
        if let Err(err) = rotation {
            details["error"] = err.message.clone().into();
            self.audit_required(id, "tenant.erase_entity", "error", details)?;
            return Err(err);
        }
        let audit_row = self
            .audit_required(id, "tenant.erase_entity", "ok", details)?
            .into();
        Ok(EntityErasure {
            entity_field: field,
            points,
            segments_rewritten,
            files_deleted,
            keys_destroyed,
            snapshots_deleted,
            collections,
            audit_row,
        })
    }

    /// The tenant's live points, asked of its worker before a deletion; `None` if it does not
    /// answer.
    async fn points_before_deletion(&self, row: &crate::store::Tenant) -> Option<u64> {
        let collections = self.stored_collections(row).await.ok()?;
        Some(collections.iter().map(|c| c.points).sum())
    }

    /// Deletes a tenant by destroying its keys (crypto-erasure), then its files on the worker.
    ///
    /// The store's transaction comes first: it marks the tenant deleted, revokes its keys, removes
    /// its placement, moves its fencing epoch on and writes the audit rows, all or nothing
    /// (INV-18). From that commit nothing of the tenant is served (the key service refuses a
    /// deleted tenant). Then the KEKs are destroyed. If that fails, the deletion answers an error
    /// and can be run again: a deleted tenant whose key file is still there finishes its erasure
    /// (audited as `tenant.erase`).
    pub async fn delete_tenant(&self, id: &str) -> Result<Erasure, ApiError> {
        let tenant = TenantId::parse(id).map_err(|e| ApiError::invalid(e.to_string()))?;
        let row = self.store.tenant(id)?;
        let mut points = None;
        let copies: Vec<Placement> = match row {
            Some(t) if !t.deleted => {
                points = self.points_before_deletion(&t).await;
                let placement = self.store.placement(id)?;
                let replicas = self.store.replicas(id)?;
                self.store.delete_tenant(&Actor(ADMIN.into()), id)?;
                self.auth.forget_tenant(id);
                self.forget_tenant_state(id);
                // Every copy is erased under the epoch its worker was last given.
                placement
                    .iter()
                    .cloned()
                    .chain(replicas.into_iter().map(|r| Placement {
                        tenant: r.tenant,
                        worker: r.worker,
                        epoch: placement.as_ref().map_or(0, |p| p.epoch),
                    }))
                    .collect()
            }
            // A deletion that stopped before its keys were destroyed is finished now.
            Some(_) if self.keys.kek_versions(&tenant).is_ok() => Vec::new(),
            _ => {
                return Err(ApiError::new(
                    Code::NotFound,
                    format!("tenant {id} not found"),
                ));
            }
        };
        let kek_versions_destroyed = self.keys.kek_versions(&tenant).map_or(0, |v| v.len());
        if let Err(err) = self.keys.destroy_tenant(&tenant) {
            tracing::error!(tenant = id, error = %err, "destroying a deleted tenant's KEKs failed");
            return Err(ApiError::new(
                Code::Unavailable,
                "the tenant is deleted and serves nothing, but its keys could not be destroyed yet; \
                 run the deletion again to finish the erasure",
            ));
        }
        let snapshots_deleted = self.delete_snapshots_of(id)?;
        let mut files_deleted = !copies.is_empty();
        let mut files_removed = 0;
        for p in &copies {
            if self.hub.worker(&p.worker).is_none() {
                files_deleted = false;
                continue;
            }
            let body = cluster::envelope::Body::TenantRequest(cluster::TenantRequest {
                tenant: id.to_owned(),
                epoch: p.epoch,
                op: Some(Op::EraseTenant(cluster::EraseTenant {})),
                write_token: 0,
            });
            if let Some(conn) = self.hub.worker(&p.worker)
                && conn.assigned_epoch(id) != Some(p.epoch)
            {
                let _ = self
                    .hub
                    .assign(
                        &p.worker,
                        id,
                        p.epoch,
                        Self::quota(None),
                        self.request_timeout,
                    )
                    .await;
            }
            match self
                .hub
                .request(&p.worker, body, self.request_timeout)
                .await
            {
                Ok(cluster::envelope::Body::TenantResponse(answer)) => {
                    if let Some(Reply::Purged(purged)) = answer.result {
                        files_removed += purged.files_deleted;
                    }
                }
                _ => files_deleted = false,
            }
            self.hub
                .release(&p.worker, id, p.epoch, self.request_timeout)
                .await;
        }
        let audit_row = self
            .audit_required(
                id,
                "tenant.erase",
                "ok",
                serde_json::json!({
                    "keys_destroyed": true,
                    "kek_versions_destroyed": kek_versions_destroyed,
                    "points": points,
                    "files_deleted": files_deleted,
                    "files_removed": files_removed,
                    "snapshots_deleted": snapshots_deleted,
                }),
            )?
            .into();
        Ok(Erasure {
            keys_destroyed: true,
            kek_versions_destroyed,
            points,
            files_deleted,
            files_removed,
            snapshots_deleted,
            audit_row,
        })
    }
}
