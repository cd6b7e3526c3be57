//! An archive out of the store and back in: download (`GET .../snapshots/{id}/archive`) and
//! upload (`PUT` of the same), so that snapshots can be kept somewhere else (off site, on other
//! media) and brought back.
//!
//! An upload is streamed into a temporary file of the store (`.<id>.tar.tmp` in the tenant's
//! directory, 0600, created exclusively, removed if the upload fails and by the sweep at start),
//! never past the largest archive the store's limits allow nor the room left in the store
//! (`max_total_bytes`). Only then is it read whole and checked
//! exactly as a restore checks a stored archive (`crate::snapshot::read_archive`: entry kinds and
//! names, duplicates, counts and sizes, the description's signature by this coordinator's audit
//! key, that it is of this tenant and names the id uploaded, every length and digest). It is kept
//! (renamed to `<id>.tar` and recorded with origin `upload`, audited `snapshot.create`) only if
//! it also passes what a new snapshot must: the tenant is live, the id is not recorded, the store
//! has room, and every KEK version its files need still exists (an archive whose keys are
//! destroyed can never be restored, INV-15, so it is refused rather than stored). Nothing of an
//! upload reaches a worker before a restore, which reads and checks it again.

use super::*;

/// An upload under way: its temporary file, removed when this is dropped unless kept.
pub struct Upload {
    tenant: String,
    id: String,
    tmp: PathBuf,
    file: Option<std::fs::File>,
    written: u64,
    limit: u64,
    /// Room left in the store when the upload began (`[snapshots] max_total_bytes` less the
    /// recorded archives): an upload never fills the disk past the store's bound.
    room: u64,
    kept: bool,
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.kept {
            drop(self.file.take());
            if let Err(err) = std::fs::remove_file(&self.tmp)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(tenant = %self.tenant, snapshot = %self.id, error = %err, "removing an upload's temporary file failed; the sweep at start removes it");
            }
        }
    }
}

impl Upload {
    /// Appends a piece of the archive; refused (413) once the upload passes the largest archive
    /// the store's limits allow.
    pub fn write(&mut self, piece: &[u8]) -> Result<(), ApiError> {
        let after = self.written.saturating_add(piece.len() as u64);
        if after > self.limit {
            return Err(too_large_archive(self.limit));
        }
        if after > self.room {
            return Err(no_room(self.room));
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| ApiError::internal("the upload is finished"))?;
        file.write_all(piece)
            .map_err(|e| io_error("writing", &self.tmp, e))?;
        self.written = after;
        Ok(())
    }
}

fn no_room(room: u64) -> ApiError {
    ApiError::new(
        Code::ResourceExhausted,
        format!(
            "the snapshot store has room for {room} more bytes of archives \
             ([snapshots] max_total_bytes); delete snapshots first"
        ),
    )
}

fn too_large_archive(limit: u64) -> ApiError {
    ApiError::new(
        Code::PayloadTooLarge,
        format!(
            "the archive is larger than the {limit} bytes the snapshot store's limits allow \
             ([snapshots] max_bytes and max_files)"
        ),
    )
}

impl Service {
    /// The largest archive the store's limits allow: `max_bytes` of files, the description,
    /// and a tar header and padding for each of `max_files` entries and the end.
    fn max_archive_bytes(&self) -> u64 {
        let limits = self.snapshots.settings.limits;
        limits
            .max_bytes
            .saturating_add(snapshot::MAX_META_BYTES)
            .saturating_add((limits.max_files as u64 + 2).saturating_mul(1024))
            .saturating_add(10_240)
    }

    /// Opens the archive of snapshot `id` of `tenant` for download (never through a link):
    /// the file and its length, which must be the recorded one.
    pub fn snapshot_archive(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<(std::fs::File, u64), ApiError> {
        self.existing(tenant)?;
        let row = self.snapshot_of(tenant, id)?;
        let path = self.snapshots.archive_path(tenant, id);
        let lost = |why: String| {
            ApiError::new(
                Code::DataLoss,
                format!("snapshot {id}'s archive cannot be read: {why}"),
            )
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| lost(e.to_string()))?;
        let len = file.metadata().map_err(|e| lost(e.to_string()))?.len();
        if len != row.archive_bytes {
            return Err(lost(format!(
                "it holds {len} bytes, {} were recorded",
                row.archive_bytes
            )));
        }
        Ok((file, len))
    }

    /// Starts an upload of the archive of snapshot `id` into `tenant`'s store. `declared` is
    /// the body's declared length, if any: one past the limit is refused before a byte is read.
    pub fn begin_upload(
        &self,
        tenant: &str,
        id: &str,
        declared: Option<u64>,
    ) -> Result<Upload, ApiError> {
        self.existing(tenant)?;
        if !is_snapshot_id(id) {
            return Err(ApiError::invalid(format!(
                "{id:?} is not a snapshot id (snap- and 16 hex digits)"
            )));
        }
        self.not_recorded(id)?;
        let limit = self.max_archive_bytes();
        if declared.is_some_and(|len| len > limit) {
            return Err(too_large_archive(limit));
        }
        let room = self
            .snapshots
            .settings
            .max_total_bytes
            .saturating_sub(self.store.snapshot_store_bytes()?);
        if declared.is_some_and(|len| len > room) {
            return Err(no_room(room));
        }
        let dir = self.snapshots.settings.dir.join(tenant);
        private_dir(&dir)?;
        let tmp = dir.join(format!(".{id}.tar.tmp"));
        // Read back whole for its check once written.
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ApiError::new(
                    Code::AlreadyExists,
                    format!("snapshot {id} is being uploaded or taken already"),
                ));
            }
            Err(err) => return Err(io_error("creating", &tmp, err)),
        };
        Ok(Upload {
            tenant: tenant.to_owned(),
            id: id.to_owned(),
            tmp,
            file: Some(file),
            written: 0,
            limit,
            room,
            kept: false,
        })
    }

    /// Refuses an id that a snapshot (of any tenant) has.
    fn not_recorded(&self, id: &str) -> Result<(), ApiError> {
        match self.store.snapshot(id)? {
            None => Ok(()),
            Some(_) => Err(ApiError::new(
                Code::AlreadyExists,
                format!("snapshot {id} is in the store already"),
            )),
        }
    }

    /// Checks a whole upload (see the module docs) and keeps it, recorded as done by `actor`.
    pub async fn finish_upload(
        &self,
        mut upload: Upload,
        actor: &str,
    ) -> Result<SnapshotView, ApiError> {
        let file = upload
            .file
            .take()
            .ok_or_else(|| ApiError::internal("the upload is finished"))?;
        let size = upload.written;
        let tmp = upload.tmp.clone();
        let meta = off_runtime(|| -> Result<Meta, ApiError> {
            file.sync_all().map_err(|e| io_error("syncing", &tmp, e))?;
            let mut file = file;
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))
                .map_err(|e| io_error("reading", &tmp, e))?;
            snapshot::read_archive(
                std::io::BufReader::new(file),
                self.store.audit_key(),
                self.snapshots.settings.limits,
                &Expect {
                    tenant: &upload.tenant,
                    id: Some(&upload.id),
                },
                |_, r| std::io::copy(r, &mut std::io::sink()).map(|_| ()),
            )
            .map_err(|err| match err {
                snapshot::ArchiveError::Refused(why) => {
                    ApiError::invalid(format!("snapshot archive refused: {why}"))
                }
                // The file was just written and synced here: what fails to read in it is the
                // upload's tar structure (the tar reader reports that as an I/O error).
                snapshot::ArchiveError::Io(err) => ApiError::invalid(format!(
                    "snapshot archive refused: not a readable tar: {err}"
                )),
            })
        })?;
        let tenant = upload.tenant.clone();
        let _lifecycle = self.lifecycle_lock(&tenant).await;
        self.existing(&tenant)?;
        self.not_recorded(&upload.id)?;
        let row = SnapshotRow {
            id: upload.id.clone(),
            tenant: tenant.clone(),
            created_ms: meta.created_ms,
            origin: ORIGIN_UPLOAD.to_owned(),
            files: meta.files.len() as u64,
            bytes: meta.bytes(),
            archive_bytes: size,
            kek_versions: meta.kek_versions.clone(),
        };
        let missing = self.missing_keks(&row)?;
        if !missing.is_empty() {
            return Err(ApiError::new(
                Code::FailedPrecondition,
                format!(
                    "snapshot {} can never be restored: the KEK versions {missing:?} its files \
                     need are destroyed; it is not stored",
                    row.id
                ),
            ));
        }
        let settings = &self.snapshots.settings;
        let stored = off_runtime(|| self.store.snapshot_store_bytes())?;
        if stored.saturating_add(size) > settings.max_total_bytes {
            return Err(ApiError::new(
                Code::ResourceExhausted,
                format!(
                    "the snapshot store has no room for {size} more bytes ({stored} bytes of \
                     archives, the limit is {}); delete snapshots first",
                    settings.max_total_bytes
                ),
            ));
        }
        let path = self.snapshots.archive_path(&tenant, &row.id);
        let dir = settings.dir.join(&tenant);
        off_runtime(|| -> Result<(), ApiError> {
            std::fs::rename(&upload.tmp, &path)
                .map_err(|e| io_error("renaming", &upload.tmp, e))?;
            sync_dir(&dir)
        })?;
        upload.kept = true;
        if let Err(err) = off_runtime(|| self.store.add_snapshot(&Actor(actor.into()), &row)) {
            // Not recorded: not kept.
            let _ = std::fs::remove_file(&path);
            return Err(err.into());
        }
        tracing::info!(
            tenant = %tenant,
            snapshot = %row.id,
            files = row.files,
            bytes = row.bytes,
            "snapshot archive uploaded"
        );
        Ok(row.into())
    }
}
