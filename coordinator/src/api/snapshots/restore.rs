//! Restoring a tenant from one of its snapshots (see the parent module).

use super::*;

/// A piece of a file on its way from an archive to a worker's import.
struct Piece {
    path: String,
    offset: u64,
    data: Vec<u8>,
}

impl Service {
    /// Restores `tenant` from its snapshot `id` (see the module docs).
    pub async fn restore_snapshot(&self, tenant: &str, id: &str) -> Result<Restored, ApiError> {
        let t = self.snapshottable(tenant)?;
        let row = self.snapshot_of(tenant, id)?;
        let _lifecycle = self.lifecycle_lock(tenant).await;
        self.require_keks(&row)?;
        // Every check before anything is sent anywhere.
        let meta = off_runtime(|| {
            self.read_stored(&row, |_, r| {
                std::io::copy(r, &mut std::io::sink()).map(|_| ())
            })
        })?;
        let tier = self.tiers.get(&t.tier).cloned();
        // A tenant never placed is placed now (its snapshot may hold no files, or some).
        self.placement_for(tenant, tier.as_ref()).await?;
        let _restoring = {
            self.snapshots.restoring.lock().insert(tenant.to_owned());
            Marked(&self.snapshots.restoring, tenant.to_owned())
        };
        let _turn = self.write_turn(tenant).await?;
        let fenced = self.store.bump_epoch(&Actor("admin".into()), tenant)?;
        self.forget_tenant_state(tenant);
        let replicas: Vec<String> = self
            .store
            .replicas(tenant)?
            .into_iter()
            .map(|r| r.worker)
            .collect();
        self.hub
            .release_checked(&fenced.worker, tenant, fenced.epoch, self.request_timeout)
            .await?;
        for worker in &replicas {
            self.hub
                .release(worker, tenant, fenced.epoch, self.request_timeout)
                .await;
        }
        let primary = fenced.worker.clone();
        // Recorded before anything is staged: a crash from here on is settled at the next start
        // (`settle`).
        self.store
            .begin_restore(tenant, id, &primary, &meta.files)?;
        crate::failpoint::hit("restore.recorded");
        if let Err(err) = self.stage_restore(&row, &meta, &primary).await {
            let _ = self
                .transfer(&primary, tenant, Step::ImportAbort(cluster::ImportAbort {}))
                .await;
            self.forget_tenant_state(tenant);
            self.store.forget_restore(tenant)?;
            return Err(err);
        }
        crate::failpoint::hit("restore.staged");
        if !replicas.is_empty() {
            self.store.mark_stale(
                &Actor("system".into()),
                tenant,
                &replicas,
                "restored from a snapshot on the primary",
            )?;
        }
        let details = serde_json::json!({
            "snapshot": id, "worker": primary, "files": meta.files.len(), "bytes": meta.bytes(),
            "kek_versions": meta.kek_versions, "replicas_stale": replicas,
        });
        // Recorded before the switch (an action that cannot be recorded is not taken) as
        // `started`, and as `ok` once it is done: a crash in between leaves no `ok` row for a
        // restore that did not switch, and the next start finds out which it was.
        let admin = Actor("admin".into());
        if let Err(err) = self.store.restore_started(&admin, tenant, details.clone()) {
            let _ = self
                .transfer(&primary, tenant, Step::ImportAbort(cluster::ImportAbort {}))
                .await;
            self.forget_tenant_state(tenant);
            self.store.forget_restore(tenant)?;
            return Err(err.into());
        }
        crate::failpoint::hit("restore.started");
        // The restored files' DEKs are wrapped by the snapshot's KEK versions: none of them may
        // be destroyed as merely retired now.
        for v in &meta.kek_versions {
            self.store.forget_retired_kek(tenant, *v)?;
        }
        let listing: Vec<cluster::TenantFile> = meta
            .files
            .iter()
            .map(|f| cluster::TenantFile {
                path: f.path.clone(),
                len: f.len,
                sha256: hex::decode(&f.sha256).unwrap_or_default(),
            })
            .collect();
        let committed = self
            .transfer(
                &primary,
                tenant,
                Step::ImportCommit(cluster::ImportCommit {
                    files: listing,
                    to_cold: false,
                }),
            )
            .await;
        crate::failpoint::hit("restore.committed");
        self.forget_tenant_state(tenant);
        if let Err(err) = committed {
            // The worker refused the switch, or its answer was lost and the switch may have
            // happened. The record stays and the tenant keeps answering `restoring` (the marker
            // is not dropped here) until the settling pass has listed the worker's files and
            // recorded which it was (`settle`).
            std::mem::forget(_restoring);
            tracing::warn!(tenant, error = %err.message, "a restore's switch failed or its answer was lost; the settling pass finds out which");
            return Err(err);
        }
        let audit_row = self.store.end_restore(&admin, tenant, "ok", details)?;
        drop(_turn);
        drop(_restoring);
        // A rotation re-wraps the restored files under a new KEK version (so they need none of
        // the snapshot's) and retires or destroys the old versions as usual; the replicas catch
        // up.
        let kek_version = self.finish_restore(tenant).await;
        tracing::info!(tenant, snapshot = id, worker = %primary, "tenant restored from a snapshot");
        Ok(Restored {
            tenant: tenant.to_owned(),
            snapshot: id.to_owned(),
            files: meta.files.len(),
            bytes: meta.bytes(),
            worker: primary,
            replicas,
            kek_version,
            audit_row: audit_row.into(),
        })
    }

    /// Reads the archive again (checking it again) into a staging import on `worker`. Nothing
    /// is committed.
    async fn stage_restore(
        &self,
        row: &SnapshotRow,
        meta: &Meta,
        worker: &str,
    ) -> Result<(), ApiError> {
        let max_files = u32::try_from(meta.files.len())
            .map_err(|_| ApiError::internal("too many files to restore"))?;
        self.transfer(
            worker,
            &row.tenant,
            Step::ImportBegin(cluster::ImportBegin {
                max_files,
                max_bytes: meta.bytes(),
            }),
        )
        .await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(2);
        let reader = {
            let (store, settings, row) = (
                self.store.clone(),
                self.snapshots.settings.clone(),
                row.clone(),
            );
            tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
                read_stored_archive(&store, &settings, &row, |file, r| {
                    let mut offset = 0u64;
                    loop {
                        let mut data = Vec::with_capacity(PIECE_BYTES.min(file.len as usize));
                        r.take(PIECE_BYTES as u64).read_to_end(&mut data)?;
                        let n = data.len() as u64;
                        let piece = Piece {
                            path: file.path.clone(),
                            offset,
                            data,
                        };
                        // The first piece of an empty file creates it.
                        if (n > 0 || offset == 0) && tx.blocking_send(piece).is_err() {
                            return Err(std::io::Error::other("the restore stopped"));
                        }
                        offset += n;
                        if n == 0 || offset >= file.len {
                            return Ok(());
                        }
                    }
                })
                .map(|_| ())
            })
        };
        while let Some(piece) = rx.recv().await {
            self.transfer(
                worker,
                &row.tenant,
                Step::ImportPiece(cluster::ImportPiece {
                    path: piece.path,
                    offset: piece.offset,
                    data: piece.data,
                }),
            )
            .await?;
        }
        reader
            .await
            .map_err(|e| ApiError::internal(format!("the archive reader failed: {e}")))?
    }
}
