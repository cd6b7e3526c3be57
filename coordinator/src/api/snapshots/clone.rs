//! Restoring a snapshot into another tenant (`POST .../snapshots/{id}/restore` with
//! `{"into": "<tenant>"}`).
//!
//! An archive's files are bound to the tenant they were taken of: every DEK is wrapped under
//! that tenant's KEK with its id in the AAD, and every block's AAD names it. Another tenant cannot
//! take them as they are, so they are read and written again: the coordinator checks the whole
//! archive (as for an in-place restore), extracts it into a private directory of the snapshot
//! store (`.clone-<id>`, mode 0700, removed at the end and by the sweep at start), opens it with
//! a storage engine whose key service unwraps only the source tenant's DEKs with its KEKs, and
//! copies each collection, one at a time, page by page, through the target's ordinary write
//! path: the collection is created there with the same configuration and its points are upserted
//! on the target's workers, under the target's own new DEKs and KEK. No file, DEK or nonce of the
//! source is reused (INV-05), and a snapshot whose KEK versions are gone (an erased tenant's) is
//! refused before anything is read (INV-15).
//!
//! The target must be live, another tenant, and have no collections; its tier's quotas apply. A
//! copy cut short (a quota, a worker away) deletes the collections it created and answers the
//! error. One collection of the archive is held in the coordinator's memory at a time (the archive
//! is bounded by `[snapshots] max_bytes`).

use std::sync::atomic::{AtomicUsize, Ordering};

use proto::vaultvec::v1 as api;
use storage::crypto::{DataKey, DekContext, KeyService, WrappedDek};

use super::*;
use crate::api::{Op, Reply};

/// Prefix of the private directory a restore into another tenant extracts its archive into.
pub(super) const CLONE_PREFIX: &str = ".clone-";

/// What restoring a snapshot into another tenant did.
#[derive(Debug, Serialize)]
pub struct RestoredInto {
    /// The tenant restored into.
    pub tenant: String,
    /// The tenant the snapshot was taken of.
    pub from_tenant: String,
    /// The snapshot.
    pub snapshot: String,
    /// Each collection copied, with its points.
    pub collections: Vec<CopiedCollection>,
    /// Points copied in all.
    pub points: u64,
    /// The audit row on the target's chain that records it.
    pub audit_row: super::super::erasure::AuditRef,
}

/// One collection copied into the target.
#[derive(Debug, Serialize)]
pub struct CopiedCollection {
    /// Its name.
    pub name: String,
    /// Points copied.
    pub points: u64,
}

/// The key service of an extracted archive: unwraps the source tenant's DEKs (and no other
/// tenant's) with its KEKs, counting them, and wraps nothing new.
struct SourceKeys {
    inner: Arc<storage::crypto::LocalKeyService>,
    tenant: TenantId,
    unwrapped: AtomicUsize,
}

impl SourceKeys {
    fn refuse(what: &str) -> storage::Error {
        storage::Error::Key(format!(
            "a snapshot restored into another tenant is read only: {what} refused"
        ))
    }
}

impl KeyService for SourceKeys {
    fn generate_data_key(
        &self,
        _tenant: &TenantId,
        _ctx: DekContext<'_>,
    ) -> storage::Result<(DataKey, WrappedDek)> {
        Err(Self::refuse("a new data key"))
    }

    fn decrypt_data_key(
        &self,
        tenant: &TenantId,
        ctx: DekContext<'_>,
        wrapped: &WrappedDek,
    ) -> storage::Result<DataKey> {
        if *tenant != self.tenant {
            return Err(Self::refuse("another tenant's key"));
        }
        self.unwrapped.fetch_add(1, Ordering::Relaxed);
        self.inner.decrypt_data_key(tenant, ctx, wrapped)
    }

    fn rewrap_data_key(
        &self,
        _tenant: &TenantId,
        _ctx: DekContext<'_>,
        _wrapped: &WrappedDek,
    ) -> storage::Result<WrappedDek> {
        Err(Self::refuse("re-wrapping"))
    }

    fn current_kek_version(&self, tenant: &TenantId) -> storage::Result<u32> {
        self.inner.current_kek_version(tenant)
    }
}

/// Removes the extracted archive when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_dir_all(&self.0)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.0.display(), error = %err, "removing an extracted snapshot failed; the sweep at start removes it");
        }
    }
}

impl Service {
    /// Restores `tenant`'s snapshot `id` into the tenant `into` (see the module docs).
    pub async fn restore_snapshot_into(
        &self,
        tenant: &str,
        id: &str,
        into: &str,
    ) -> Result<RestoredInto, ApiError> {
        if into == tenant {
            return Err(ApiError::invalid(
                "`into` names the snapshot's own tenant; leave it out to restore in place",
            ));
        }
        self.existing(tenant)?;
        let row = self.snapshot_of(tenant, id)?;
        let target = self.snapshottable(into)?;
        // Both tenants' lifecycles, in name order (no two restores wait for each other): the
        // source's KEK versions stay while its files are read, and nothing else restores into
        // or snapshots the target meanwhile.
        let (first, second) = if tenant < into {
            (tenant, into)
        } else {
            (into, tenant)
        };
        let _first = self.lifecycle_lock(first).await;
        let _second = self.lifecycle_lock(second).await;
        let existing = self.stored_collections(&target).await?;
        if !existing.is_empty() {
            return Err(ApiError::new(
                Code::FailedPrecondition,
                format!(
                    "tenant {into} has {} collections; a snapshot is restored into another tenant only while it has none",
                    existing.len()
                ),
            ));
        }
        self.require_keks(&row)?;
        let source = TenantId::parse(tenant).map_err(|e| ApiError::invalid(e.to_string()))?;
        let scratch = Scratch(
            self.snapshots
                .settings
                .dir
                .join(format!("{CLONE_PREFIX}{id}")),
        );
        let tenant_dir = scratch.0.join("tenants").join(tenant);
        // The whole archive is checked while it is extracted; any failure leaves nothing kept.
        off_runtime(|| {
            let _ = std::fs::remove_dir_all(&scratch.0);
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&tenant_dir)
                .map_err(|e| io_error("creating", &tenant_dir, e))?;
            self.read_stored(&row, |entry, reader| {
                let path = tenant_dir.join(&entry.path);
                if let Some(parent) = path.parent() {
                    std::fs::DirBuilder::new()
                        .mode(0o700)
                        .recursive(true)
                        .create(parent)?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                std::io::copy(reader, &mut file).map(|_| ())
            })
        })?;
        let keys = Arc::new(SourceKeys {
            inner: self.keys.clone(),
            tenant: source.clone(),
            unwrapped: AtomicUsize::new(0),
        });
        let limits = storage::Limits {
            index_threads: 1,
            ..self.limits
        };
        let engine = off_runtime(|| {
            storage::Engine::open(&scratch.0, keys.clone() as Arc<dyn KeyService>, limits)
        })
        .map_err(|e| ApiError::internal(format!("opening the snapshot: {e}")))?;
        let tier = self.tiers.get(&target.tier).cloned();
        let mut copied = Vec::new();
        let result = self
            .copy_collections(&engine, &source, into, tier.as_ref(), &mut copied)
            .await;
        off_runtime(|| {
            engine.unload_read_only(&source);
            drop(engine);
            drop(scratch);
        });
        let points: u64 = copied.iter().map(|c| c.points).sum();
        let unwrapped = keys.unwrapped.load(Ordering::Relaxed);
        let details = serde_json::json!({
            "from_tenant": tenant,
            "snapshot": id,
            "collections": copied.iter().map(|c| &c.name).collect::<Vec<_>>(),
            "points": points,
        });
        if let Err(err) = result {
            for c in &copied {
                let drop = Op::DeleteCollection(api::DeleteCollectionRequest {
                    name: c.name.clone(),
                });
                if let Err(e) = self.route(into, tier.as_ref(), drop).await {
                    tracing::warn!(tenant = into, collection = %c.name, error = %e, "removing a half-restored collection failed");
                }
            }
            let mut details = details;
            details["error"] = err.message.clone().into();
            let _ = self.audit_required(into, "snapshot.restore", "error", details);
            return Err(err);
        }
        self.audit(
            tenant,
            "admin",
            "snapshot.read",
            id,
            "ok",
            serde_json::json!({ "into": into, "keys_unwrapped": unwrapped }),
        );
        let audit_row = self.audit_required(into, "snapshot.restore", "ok", details)?;
        tracing::info!(
            tenant = into,
            from = tenant,
            snapshot = id,
            points,
            "a snapshot was restored into another tenant"
        );
        Ok(RestoredInto {
            tenant: into.to_owned(),
            from_tenant: tenant.to_owned(),
            snapshot: id.to_owned(),
            collections: copied,
            points,
            audit_row: audit_row.into(),
        })
    }

    /// Copies every collection of `source` in `engine` into the tenant `into`, appending each to
    /// `copied` as soon as it is created there.
    async fn copy_collections(
        &self,
        engine: &storage::Engine,
        source: &TenantId,
        into: &str,
        tier: Option<&crate::config::Tier>,
        copied: &mut Vec<CopiedCollection>,
    ) -> Result<(), ApiError> {
        let read = |e: storage::Error| ApiError::internal(format!("reading the snapshot: {e}"));
        let listed = off_runtime(|| engine.list_collections(source)).map_err(read)?;
        for (name, info) in listed {
            let info = info.map_err(read)?;
            let create = Op::CreateCollection(api::CreateCollectionRequest {
                name: name.as_str().to_owned(),
                config: Some(proto::stored::collection_config(&info.config)),
            });
            self.route(into, tier, create).await?;
            copied.push(CopiedCollection {
                name: name.as_str().to_owned(),
                points: 0,
            });
            let collection = off_runtime(|| engine.collection(source, &name)).map_err(read)?;
            let mut from = None;
            loop {
                let page = off_runtime(|| {
                    collection.scroll(
                        from.as_ref(),
                        super::super::export::EXPORT_PAGE_POINTS as usize,
                        None,
                        true,
                        true,
                    )
                })
                .map_err(read)?;
                let n = page.points.len() as u64;
                if n > 0 {
                    let points = page
                        .points
                        .into_iter()
                        .map(|record| {
                            let record = proto::stored::record(record);
                            api::Point {
                                id: record.id,
                                vector: record.vector,
                                payload: record.payload,
                            }
                        })
                        .collect();
                    let upsert = Op::Upsert(api::UpsertRequest {
                        collection: name.as_str().to_owned(),
                        points,
                        idempotency_key: String::new(),
                    });
                    match self.route(into, tier, upsert).await? {
                        Reply::Upsert(_) => {}
                        _ => return Err(ApiError::internal("unexpected answer to an upsert")),
                    }
                    if let Some(last) = copied.last_mut() {
                        last.points += n;
                    }
                }
                match page.next {
                    Some(next) => from = Some(next),
                    None => break,
                }
            }
        }
        Ok(())
    }
}
