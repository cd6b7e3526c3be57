//! Taking a snapshot: a consistent copy of the tenant's files from its primary into a staging
//! directory, then the signed archive (see the parent module).

use super::*;

/// Who takes a snapshot: its origin (admin, schedule, owner) and the audited actor.
struct By<'a> {
    origin: &'a str,
    actor: &'a str,
}

impl Service {
    /// Takes a snapshot of `tenant` now (see the module docs), for the admin API or the
    /// scheduler (`origin`).
    pub async fn take_snapshot(
        &self,
        tenant: &str,
        origin: &str,
    ) -> Result<SnapshotView, ApiError> {
        let actor = if origin == ORIGIN_SCHEDULE {
            "system"
        } else {
            "admin"
        };
        self.take_snapshot_by(tenant, origin, actor).await
    }

    /// [`Service::take_snapshot`] recorded as done by `actor`. Refused (429) while the store's
    /// archives take `[snapshots] max_total_bytes` or more, and for the owner's origin while the
    /// tenant keeps `max_owner_snapshots` of theirs.
    pub async fn take_snapshot_by(
        &self,
        tenant: &str,
        origin: &str,
        actor: &str,
    ) -> Result<SnapshotView, ApiError> {
        self.snapshottable(tenant)?;
        let _lifecycle = self.lifecycle_lock(tenant).await;
        let settings = &self.snapshots.settings;
        let stored = off_runtime(|| self.store.snapshot_store_bytes())?;
        if stored >= settings.max_total_bytes {
            return Err(ApiError::new(
                Code::ResourceExhausted,
                format!(
                    "the snapshot store is full ({stored} bytes of archives, the limit is {}); \
                     delete snapshots first",
                    settings.max_total_bytes
                ),
            ));
        }
        if origin == ORIGIN_OWNER {
            let kept = off_runtime(|| self.store.snapshots(tenant))?
                .iter()
                .filter(|s| s.origin == ORIGIN_OWNER)
                .count();
            if kept >= settings.max_owner_snapshots as usize {
                return Err(ApiError::new(
                    Code::ResourceExhausted,
                    format!(
                        "the tenant keeps {kept} snapshots taken from the dashboard, the most \
                         allowed; an operator deletes old ones"
                    ),
                ));
            }
        }
        let tenant_id = TenantId::parse(tenant).map_err(|e| ApiError::invalid(e.to_string()))?;
        let kek_versions = self
            .keys
            .kek_versions(&tenant_id)
            .map_err(ApiError::internal)?;
        let id = new_id();
        let created_ms = self.clock().now_ms();
        let staging = self.snapshots.settings.dir.join(format!(".staging-{id}"));
        let result = self
            .snapshot_into(
                tenant,
                &id,
                created_ms,
                kek_versions,
                By { origin, actor },
                &staging,
            )
            .await;
        if let Err(err) = off_runtime(|| std::fs::remove_dir_all(&staging))
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(tenant, snapshot = %id, error = %err, "removing a snapshot's staging directory failed");
        }
        if let Err(err) = &result {
            tracing::warn!(tenant, snapshot = %id, error = %err, "a snapshot failed");
        }
        result
    }

    async fn snapshot_into(
        &self,
        tenant: &str,
        id: &str,
        created_ms: u64,
        kek_versions: Vec<u32>,
        by: By<'_>,
        staging: &Path,
    ) -> Result<SnapshotView, ApiError> {
        let By { origin, actor } = by;
        off_runtime(|| private_dir(staging))?;
        let files = match self.store.placement(tenant)? {
            // Never placed: it has no files.
            None => Vec::new(),
            Some(placement) => {
                self.fetch_consistent(tenant, &placement.worker, staging)
                    .await?
            }
        };
        let bytes: u64 = files.iter().map(|f| f.len).sum();
        let meta = Meta {
            format: snapshot::FORMAT,
            id: id.to_owned(),
            tenant: tenant.to_owned(),
            created_ms,
            kek_versions,
            files,
        };
        let archive_bytes = off_runtime(|| self.write_archive(&meta, staging))?;
        let row = SnapshotRow {
            id: id.to_owned(),
            tenant: tenant.to_owned(),
            created_ms,
            origin: origin.to_owned(),
            files: meta.files.len() as u64,
            bytes,
            archive_bytes,
            kek_versions: meta.kek_versions.clone(),
        };
        let actor = Actor(actor.into());
        if let Err(err) = off_runtime(|| self.store.add_snapshot(&actor, &row)) {
            // Not recorded: not kept.
            let _ = std::fs::remove_file(self.snapshots.archive_path(tenant, id));
            return Err(err.into());
        }
        tracing::info!(
            tenant,
            snapshot = id,
            files = row.files,
            bytes,
            "snapshot taken"
        );
        Ok(row.into())
    }

    /// Writes the archive of `meta` from the staged files, durably, under its final name.
    /// Answers its size.
    fn write_archive(&self, meta: &Meta, staging: &Path) -> Result<u64, ApiError> {
        let dir = self.snapshots.settings.dir.join(&meta.tenant);
        private_dir(&dir)?;
        let tmp = dir.join(format!(".{}.tar.tmp", meta.id));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_error("creating", &tmp, e))?;
        let written = snapshot::write_archive(
            std::io::BufWriter::new(file),
            meta,
            self.store.audit_key(),
            |path| Ok(Box::new(std::fs::File::open(staging.join(path))?) as Box<dyn Read>),
        )
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .and_then(|f| {
            f.sync_all()?;
            f.metadata()
        });
        let size = match written {
            Ok(meta) => meta.len(),
            Err(err) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io_error("writing", &tmp, err));
            }
        };
        let path = self.snapshots.archive_path(&meta.tenant, &meta.id);
        std::fs::rename(&tmp, &path).map_err(|e| io_error("renaming", &tmp, e))?;
        sync_dir(&dir)?;
        Ok(size)
    }

    /// Copies `tenant`'s files from `worker` into `staging` as one consistent state (see the
    /// module docs). Answers the listing copied.
    async fn fetch_consistent(
        &self,
        tenant: &str,
        worker: &str,
        staging: &Path,
    ) -> Result<Vec<FileEntry>, ApiError> {
        let mut staged: std::collections::HashMap<String, FileEntry> = Default::default();
        // Phase 1: writes go on; a file the worker replaced meanwhile is left to phase 2.
        for file in self.worker_listing(tenant, worker).await? {
            if let Ok(entry) = self.fetch_file(tenant, worker, &file, staging).await {
                staged.insert(entry.path.clone(), entry);
            }
        }
        // Phase 2: writes held back.
        let _turn = self.write_turn(tenant).await?;
        let placement = self.store.placement(tenant)?;
        if placement.as_ref().map(|p| p.worker.as_str()) != Some(worker) {
            return Err(ApiError::new(
                Code::Unavailable,
                "the tenant moved to another worker during the snapshot; retry",
            ));
        }
        for _ in 0..LOCKED_ROUNDS {
            let listing = self.worker_listing(tenant, worker).await?;
            for file in &listing {
                let entry = as_entry(file);
                if staged.get(&entry.path) != Some(&entry) {
                    let got = self.fetch_file(tenant, worker, file, staging).await?;
                    staged.insert(got.path.clone(), got);
                }
            }
            if self.worker_listing(tenant, worker).await? != listing {
                continue;
            }
            let entries: Vec<FileEntry> = listing.iter().map(as_entry).collect();
            if entries.iter().any(|e| staged.get(&e.path) != Some(e)) {
                continue;
            }
            return Ok(entries);
        }
        Err(ApiError::new(
            Code::Unavailable,
            format!("the files of {tenant} changed during each of {LOCKED_ROUNDS} copies; retry"),
        ))
    }

    async fn worker_listing(
        &self,
        tenant: &str,
        worker: &str,
    ) -> Result<Vec<cluster::TenantFile>, ApiError> {
        let mut files = self
            .transfer(
                worker,
                tenant,
                Step::ExportFiles(cluster::ExportFiles { live: true }),
            )
            .await?
            .files;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        // Refused before a byte is fetched: a tenant past the limits never fills the store.
        let limits = self.snapshots.settings.limits;
        let bytes: u64 = files.iter().map(|f| f.len).sum();
        if files.len() > limits.max_files || bytes > limits.max_bytes {
            return Err(ApiError::new(
                Code::ResourceExhausted,
                format!(
                    "the tenant has {} files, {bytes} bytes; a snapshot holds at most {} files, {} bytes ([snapshots])",
                    files.len(),
                    limits.max_files,
                    limits.max_bytes
                ),
            ));
        }
        Ok(files)
    }

    /// Fetches one file from `worker` into `staging/<path>`, answering what was staged (its
    /// digest computed here). An error if the worker gave fewer bytes than listed.
    async fn fetch_file(
        &self,
        tenant: &str,
        worker: &str,
        file: &cluster::TenantFile,
        staging: &Path,
    ) -> Result<FileEntry, ApiError> {
        storage::engine::transfer::check_path(&file.path).map_err(|e| {
            ApiError::internal(format!(
                "worker {worker} listed a file it may not hold: {e}"
            ))
        })?;
        let path = staging.join(&file.path);
        if let Some(parent) = path.parent() {
            off_runtime(|| private_dir(parent))?;
        }
        let mut out = off_runtime(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
        })
        .map_err(|e| io_error("creating", &path, e))?;
        let mut hasher = Sha256::new();
        let mut offset = 0u64;
        while offset < file.len {
            let mut data = self
                .transfer(
                    worker,
                    tenant,
                    Step::ReadFile(cluster::ReadFile {
                        path: file.path.clone(),
                        offset,
                        max_len: PIECE_BYTES as u32,
                    }),
                )
                .await?
                .data;
            if data.is_empty() {
                return Err(ApiError::new(
                    Code::Unavailable,
                    format!("{} on {worker} ended before its listed length", file.path),
                ));
            }
            data.truncate(usize::try_from(file.len - offset).unwrap_or(usize::MAX));
            off_runtime(|| out.write_all(&data)).map_err(|e| io_error("writing", &path, e))?;
            hasher.update(&data);
            offset += data.len() as u64;
        }
        Ok(FileEntry {
            path: file.path.clone(),
            len: file.len,
            sha256: hex::encode(hasher.finalize()),
        })
    }
}

fn as_entry(file: &cluster::TenantFile) -> FileEntry {
    FileEntry {
        path: file.path.clone(),
        len: file.len,
        sha256: hex::encode(&file.sha256),
    }
}
