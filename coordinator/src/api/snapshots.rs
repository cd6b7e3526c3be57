//! Snapshots of tenants in the coordinator's snapshot store, and restoring them
//! (`/admin/v1/tenants/{t}/snapshots`). The archive format and its checks are `crate::snapshot`.
//!
//! **Taking one** copies the tenant's files from its primary, ciphertext only (the worker never
//! decrypts for it), in two phases like a replica's catch-up: first while its writes go on, into
//! a private staging directory of the store; then, holding the tenant's writes back, the primary
//! is listed again and only what differs (its WAL, its manifest, segments sealed meanwhile) is
//! copied, until a listing taken after the copy equals the one before (nothing changed in
//! between: the copy is one state the tenant had, with every write acknowledged before it). The
//! archive is written beside the store (`.<id>.tar.tmp`), made durable and renamed into place,
//! and only then recorded (`snapshot.create`, audited). It records the tenant's KEK versions:
//! while a snapshot needs a version, a KEK rotation keeps it (retired, not destroyed) and
//! destroys it once the last snapshot that needs it is deleted.
//!
//! **Restoring one** reads the whole archive and checks it (names, kinds, sizes, the signed
//! description, every digest) before anything is sent anywhere; a snapshot of another tenant, or
//! one whose KEK versions are gone, is refused before that. Then the tenant's requests are
//! answered 503 (`restoring`), its writes are held, its placement moves to a new epoch and every
//! copy is released (nothing can write under the old one), the archive is read again into a
//! staging import on the primary (a private directory the worker checks file by file against the
//! listing, digests included) and committed there: one rename switches the tenant to the
//! snapshot's files. Its replicas are recorded stale first and catch up from the primary. The
//! worker opens restored files as after a crash: a WAL is replayed read-only and new writes go
//! to a new WAL under a new DEK, so no DEK ever encrypts at a position it used before the
//! restore (INV-05).
//!
//! Deleting a tenant deletes its archives (its keys are destroyed first, so a copy kept anywhere
//! else does not restore either: INV-15).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proto::vaultvec::cluster::v1 as cluster;
use serde::Serialize;
use sha2::{Digest, Sha256};
use storage::ids::TenantId;

use super::error::{ApiError, Code};
use super::{Service, off_runtime};
use crate::config::PAUSED_TIER;
use crate::snapshot::{self, Expect, FileEntry, Meta, Settings};
use crate::store::{Actor, SnapshotRow, tenant as tenant_state};

use cluster::transfer_tenant::Step;

/// Bytes of a file fetched or sent per step.
const PIECE_BYTES: usize = 1 << 20;
/// Times the locked phase lists, copies and lists again before it gives up.
const LOCKED_ROUNDS: usize = 3;

/// Who took or deleted a snapshot.
pub const ORIGIN_ADMIN: &str = "admin";
/// The scheduler.
pub const ORIGIN_SCHEDULE: &str = "schedule";

/// The service's snapshot state: settings, and the tenants with a snapshot operation running.
pub(crate) struct Snapshots {
    pub(crate) settings: Settings,
    /// Per tenant: held by a snapshot from before it reads the KEK versions until it is
    /// recorded, by a restore, by a snapshot's deletion and by a KEK rotation, so a rotation never
    /// destroys a version a snapshot being taken needs, and no two of these run at once.
    lifecycle: parking_lot::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Tenants being restored now (their requests are answered 503).
    restoring: parking_lot::Mutex<HashSet<String>>,
}

impl Snapshots {
    pub(crate) fn new(settings: Settings) -> Snapshots {
        Snapshots {
            settings,
            lifecycle: parking_lot::Mutex::default(),
            restoring: parking_lot::Mutex::default(),
        }
    }

    /// Whether `tenant` is being restored.
    pub(crate) fn restoring(&self, tenant: &str) -> bool {
        self.restoring.lock().contains(tenant)
    }

    fn archive_path(&self, tenant: &str, id: &str) -> PathBuf {
        self.settings.dir.join(tenant).join(format!("{id}.tar"))
    }
}

/// Removes `tenant` from a set when dropped.
struct Marked<'a>(&'a parking_lot::Mutex<HashSet<String>>, String);

impl Drop for Marked<'_> {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

/// The error a tenant's requests get while it is restored.
pub(crate) fn restoring_error() -> ApiError {
    ApiError {
        code: Code::Unavailable,
        message: "the tenant is being restored from a snapshot; retry in a moment".into(),
        retry_after: Some(std::time::Duration::from_secs(1)),
    }
}

/// A snapshot as the admin API shows it.
#[derive(Debug, Serialize)]
pub struct SnapshotView {
    /// Its id.
    pub id: String,
    /// The tenant it is of.
    pub tenant: String,
    /// When it was taken, Unix ms.
    pub created_ms: u64,
    /// `admin` or `schedule`.
    pub origin: String,
    /// Files in it.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The archive's size.
    pub archive_bytes: u64,
    /// The tenant's KEK versions it needs.
    pub kek_versions: Vec<u32>,
}

impl From<SnapshotRow> for SnapshotView {
    fn from(r: SnapshotRow) -> SnapshotView {
        SnapshotView {
            id: r.id,
            tenant: r.tenant,
            created_ms: r.created_ms,
            origin: r.origin,
            files: r.files,
            bytes: r.bytes,
            archive_bytes: r.archive_bytes,
            kek_versions: r.kek_versions,
        }
    }
}

/// What a verification found.
#[derive(Debug, Serialize)]
pub struct Verification {
    /// The snapshot.
    pub id: String,
    /// Whether the archive passed every check, and its KEK versions are still there.
    pub verified: bool,
    /// Files checked.
    pub files: usize,
    /// Bytes checked.
    pub bytes: u64,
    /// Why not, if not.
    pub error: Option<String>,
}

/// What a restore did.
#[derive(Debug, Serialize)]
pub struct Restored {
    /// The tenant.
    pub tenant: String,
    /// The snapshot restored.
    pub snapshot: String,
    /// Files written.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// The worker holding the tenant.
    pub worker: String,
    /// Replicas that were recorded stale and caught up from it (or catch up later).
    pub replicas: Vec<String>,
    /// The KEK version the restored files were re-wrapped under (`None`: the rotation failed
    /// and they stay under the snapshot's versions, which are kept).
    pub kek_version: Option<u32>,
    /// The audit row that records the restore: chain, seq, hash.
    pub audit_row: super::erasure::AuditRef,
}

/// A piece of a file on its way from an archive to a worker's import.
struct Piece {
    path: String,
    offset: u64,
    data: Vec<u8>,
}

fn new_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    format!("snap-{}", hex::encode(bytes))
}

fn io_error(what: &str, path: &Path, err: std::io::Error) -> ApiError {
    ApiError::internal(format!("{what} {}: {err}", path.display()))
}

/// Creates `dir` (and its parents) with mode 0700.
fn private_dir(dir: &Path) -> Result<(), ApiError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error("creating", dir, e))
}

fn sync_dir(dir: &Path) -> Result<(), ApiError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("syncing", dir, e))
}

fn refusal(err: snapshot::ArchiveError) -> ApiError {
    match err {
        snapshot::ArchiveError::Refused(why) => ApiError::new(
            Code::FailedPrecondition,
            format!("snapshot archive refused: {why}"),
        ),
        snapshot::ArchiveError::Io(err) => ApiError::new(
            Code::DataLoss,
            format!("snapshot archive could not be read: {err}"),
        ),
    }
}

impl Service {
    /// `tenant`'s lifecycle lock (see [`Snapshots`]), waited for.
    pub(crate) async fn lifecycle_lock(&self, tenant: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .snapshots
            .lifecycle
            .lock()
            .entry(tenant.to_owned())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// A live tenant whose files are on its workers (not paused, not moving).
    fn snapshottable(&self, tenant: &str) -> Result<crate::store::Tenant, ApiError> {
        let t = self.existing(tenant)?;
        if t.tier == PAUSED_TIER || t.storage != tenant_state::HOT {
            return Err(ApiError::new(
                Code::FailedPrecondition,
                format!(
                    "tenant {tenant} is paused (its files are on cold storage); resume it first"
                ),
            ));
        }
        if self.moving.contains(tenant) {
            return Err(super::moves::moving_error());
        }
        Ok(t)
    }

    /// Takes a snapshot of `tenant` now (see the module docs).
    pub async fn take_snapshot(
        &self,
        tenant: &str,
        origin: &str,
    ) -> Result<SnapshotView, ApiError> {
        self.snapshottable(tenant)?;
        let _lifecycle = self.lifecycle_lock(tenant).await;
        let tenant_id = TenantId::parse(tenant).map_err(|e| ApiError::invalid(e.to_string()))?;
        let kek_versions = self
            .keys
            .kek_versions(&tenant_id)
            .map_err(ApiError::internal)?;
        let id = new_id();
        let created_ms = self.clock().now_ms();
        let staging = self.snapshots.settings.dir.join(format!(".staging-{id}"));
        let result = self
            .snapshot_into(tenant, &id, created_ms, kek_versions, origin, &staging)
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
        origin: &str,
        staging: &Path,
    ) -> Result<SnapshotView, ApiError> {
        off_runtime(|| private_dir(staging))?;
        let files = match self.store.placement(tenant)? {
            // Never placed: it has no files.
            None => Vec::new(),
            Some(placement) => {
                self.fetch_consistent(tenant, &placement.worker, staging)
                    .await?
            }
        };
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
        let actor = Actor(
            if origin == ORIGIN_SCHEDULE {
                "system"
            } else {
                "admin"
            }
            .into(),
        );
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

    /// A tenant's snapshots, oldest first.
    pub fn list_snapshots(&self, tenant: &str) -> Result<Vec<SnapshotView>, ApiError> {
        self.existing(tenant)?;
        Ok(self
            .store
            .snapshots(tenant)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// The snapshot `id` of `tenant`: not found if it is another tenant's.
    fn snapshot_of(&self, tenant: &str, id: &str) -> Result<SnapshotRow, ApiError> {
        match self.store.snapshot(id)? {
            Some(row) if row.tenant == tenant => Ok(row),
            Some(row) => Err(ApiError::new(
                Code::FailedPrecondition,
                format!(
                    "snapshot {id} is of tenant {}; a snapshot restores only into the tenant it was taken of",
                    row.tenant
                ),
            )),
            None => Err(ApiError::new(
                Code::NotFound,
                format!("snapshot {id} of tenant {tenant} not found"),
            )),
        }
    }

    /// Reads the archive of `row` and checks it, handing each file to `sink`.
    fn read_stored(
        &self,
        row: &SnapshotRow,
        sink: impl FnMut(&FileEntry, &mut dyn Read) -> std::io::Result<()>,
    ) -> Result<Meta, ApiError> {
        let path = self.snapshots.archive_path(&row.tenant, &row.id);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc_o_nofollow())
            .open(&path)
            .map_err(|e| {
                ApiError::new(
                    Code::DataLoss,
                    format!("snapshot {}'s archive cannot be opened: {e}", row.id),
                )
            })?;
        let meta = snapshot::read_archive(
            std::io::BufReader::new(file),
            self.store.audit_key(),
            self.snapshots.settings.limits,
            &Expect {
                tenant: &row.tenant,
                id: Some(&row.id),
            },
            sink,
        )
        .map_err(refusal)?;
        if meta.kek_versions != row.kek_versions {
            return Err(ApiError::new(
                Code::FailedPrecondition,
                "snapshot archive refused: its KEK versions are not the recorded ones",
            ));
        }
        Ok(meta)
    }

    /// The KEK versions of `row` that are gone (destroyed), if any.
    fn missing_keks(&self, row: &SnapshotRow) -> Result<Vec<u32>, ApiError> {
        let tenant = TenantId::parse(&row.tenant).map_err(|e| ApiError::invalid(e.to_string()))?;
        let have = self
            .keys
            .kek_versions(&tenant)
            .map_err(ApiError::internal)?;
        Ok(row
            .kek_versions
            .iter()
            .copied()
            .filter(|v| !have.contains(v))
            .collect())
    }

    /// Reads a snapshot's whole archive and checks it (see `crate::snapshot`), and that its
    /// KEK versions are still there.
    pub async fn verify_snapshot(&self, tenant: &str, id: &str) -> Result<Verification, ApiError> {
        self.existing(tenant)?;
        let row = self.snapshot_of(tenant, id)?;
        let checked = off_runtime(|| {
            self.read_stored(&row, |_, r| {
                std::io::copy(r, &mut std::io::sink()).map(|_| ())
            })
        });
        let (files, bytes, error) = match checked {
            Ok(meta) => {
                let missing = self.missing_keks(&row)?;
                let error = (!missing.is_empty())
                    .then(|| format!("its KEK versions {missing:?} are destroyed"));
                (meta.files.len(), meta.bytes(), error)
            }
            Err(err) => (0, 0, Some(err.message)),
        };
        Ok(Verification {
            id: id.to_owned(),
            verified: error.is_none(),
            files,
            bytes,
            error,
        })
    }

    /// Deletes a snapshot (audited), then destroys the retired KEK versions no other snapshot
    /// needs.
    pub async fn delete_snapshot(
        &self,
        tenant: &str,
        id: &str,
        actor: &str,
    ) -> Result<(), ApiError> {
        self.existing(tenant)?;
        let row = self.snapshot_of(tenant, id)?;
        let _lifecycle = self.lifecycle_lock(tenant).await;
        self.store
            .remove_snapshot(&Actor(actor.into()), &row.id, "deleted")?;
        let path = self.snapshots.archive_path(tenant, id);
        if let Err(err) = std::fs::remove_file(&path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(tenant, snapshot = id, error = %err, "deleting a snapshot's archive failed; the sweep at start removes it");
        }
        self.destroy_retired_keks(tenant, actor)
    }

    /// Deletes every snapshot of `tenant` (audited each, with `reason`); answers how many.
    pub(crate) async fn delete_every_snapshot(
        &self,
        tenant: &str,
        reason: &str,
    ) -> Result<usize, ApiError> {
        let _lifecycle = self.lifecycle_lock(tenant).await;
        let rows = self.store.snapshots(tenant)?;
        for row in &rows {
            self.store
                .remove_snapshot(&Actor("admin".into()), &row.id, reason)?;
            let path = self.snapshots.archive_path(tenant, &row.id);
            if let Err(err) = std::fs::remove_file(&path)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(tenant, snapshot = %row.id, error = %err, "deleting a snapshot's archive failed; the sweep at start removes it");
            }
        }
        Ok(rows.len())
    }

    /// The KEK versions any snapshot of `tenant` needs.
    pub(crate) fn pinned_keks(&self, tenant: &str) -> Result<HashSet<u32>, ApiError> {
        Ok(self
            .store
            .snapshots(tenant)?
            .into_iter()
            .flat_map(|s| s.kek_versions)
            .collect())
    }

    /// Destroys the retired KEK versions of `tenant` that no snapshot needs any more (audited
    /// `kek.destroy`).
    fn destroy_retired_keks(&self, tenant: &str, actor: &str) -> Result<(), ApiError> {
        let pinned = self.pinned_keks(tenant)?;
        let free: Vec<u32> = self
            .store
            .retired_keks(tenant)?
            .into_iter()
            .filter(|v| !pinned.contains(v))
            .collect();
        if free.is_empty() {
            return Ok(());
        }
        let tenant_id = TenantId::parse(tenant).map_err(|e| ApiError::invalid(e.to_string()))?;
        let details = serde_json::json!({ "destroyed": free, "reason": "no snapshot needs them" });
        self.audit_required_by(actor, tenant, "kek.destroy", "ok", details)?;
        for v in free {
            self.keys
                .destroy_kek(&tenant_id, v)
                .map_err(ApiError::internal)?;
            self.store.forget_retired_kek(tenant, v)?;
        }
        Ok(())
    }

    /// Deletes every archive of a tenant being deleted (after its keys are destroyed) and
    /// forgets them. Answers how many archives were deleted.
    pub(crate) fn delete_snapshots_of(&self, tenant: &str) -> Result<usize, ApiError> {
        let dir = self.snapshots.settings.dir.join(tenant);
        let mut deleted = 0;
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    if std::fs::remove_file(entry.path()).is_ok() {
                        deleted += 1;
                    }
                }
                let _ = std::fs::remove_dir(&dir);
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_error("listing", &dir, err)),
        }
        self.store.forget_snapshots_of(tenant)?;
        Ok(deleted)
    }

    /// At start: removes staging directories and unfinished archives left by a crash, and
    /// archives no snapshot records (written, then not recorded).
    pub fn sweep_snapshot_store(&self) -> Result<(), ApiError> {
        let root = &self.snapshots.settings.dir;
        let entries = match std::fs::read_dir(root) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(io_error("listing", root, err)),
        };
        let recorded: HashSet<(String, String)> = self
            .store
            .all_snapshots()?
            .into_iter()
            .map(|s| (s.tenant, format!("{}.tar", s.id)))
            .collect();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(".staging-") {
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            let Ok(files) = std::fs::read_dir(&path) else {
                continue;
            };
            for file in files.flatten() {
                let file_name = file.file_name().to_string_lossy().into_owned();
                if !recorded.contains(&(name.clone(), file_name.clone())) {
                    tracing::info!(tenant = %name, file = %file_name, "removing an unrecorded file from the snapshot store");
                    let _ = std::fs::remove_file(file.path());
                }
            }
        }
        Ok(())
    }

    /// Restores `tenant` from its snapshot `id` (see the module docs).
    pub async fn restore_snapshot(&self, tenant: &str, id: &str) -> Result<Restored, ApiError> {
        let t = self.snapshottable(tenant)?;
        let row = self.snapshot_of(tenant, id)?;
        let _lifecycle = self.lifecycle_lock(tenant).await;
        let missing = self.missing_keks(&row)?;
        if !missing.is_empty() {
            return Err(ApiError::new(
                Code::FailedPrecondition,
                format!(
                    "snapshot {id} cannot be restored: the KEK versions {missing:?} its files need are destroyed"
                ),
            ));
        }
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
        if let Err(err) = self.stage_restore(&row, &meta, &primary).await {
            let _ = self
                .transfer(&primary, tenant, Step::ImportAbort(cluster::ImportAbort {}))
                .await;
            self.forget_tenant_state(tenant);
            return Err(err);
        }
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
        let audit_row = self.audit_required(tenant, "snapshot.restore", "ok", details)?;
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
                Step::ImportCommit(cluster::ImportCommit { files: listing }),
            )
            .await;
        self.forget_tenant_state(tenant);
        if let Err(err) = committed {
            let details = serde_json::json!({ "snapshot": id, "error": err.message });
            let _ = self.audit_required(tenant, "snapshot.restore", "error", details);
            return Err(err);
        }
        drop(_turn);
        drop(_restoring);
        // A rotation re-wraps the restored files under a new KEK version (so they need none of
        // the snapshot's) and retires or destroys the old versions as usual.
        let kek_version = match self.rotate_kek_locked(tenant, "system").await {
            Ok(rotation) => Some(rotation.kek_version),
            Err(err) => {
                tracing::warn!(tenant, error = %err, "the KEK rotation after a restore failed; the snapshot's KEK versions stay");
                None
            }
        };
        for worker in &replicas {
            if let Err(err) = self.catch_up(tenant, worker).await {
                tracing::warn!(tenant, worker = %worker, error = %err, "a replica did not catch up after a restore; the repair pass tries again");
            }
        }
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
            let path = self.snapshots.archive_path(&row.tenant, &row.id);
            let key_row = row.clone();
            let limits = self.snapshots.settings.limits;
            let key = self.store.clone();
            tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc_o_nofollow())
                    .open(&path)
                    .map_err(|e| {
                        ApiError::new(Code::DataLoss, format!("reading the archive: {e}"))
                    })?;
                snapshot::read_archive(
                    std::io::BufReader::new(file),
                    key.audit_key(),
                    limits,
                    &Expect {
                        tenant: &key_row.tenant,
                        id: Some(&key_row.id),
                    },
                    |file, r| {
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
                    },
                )
                .map(|_| ())
                .map_err(refusal)
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

/// `O_NOFOLLOW`: an archive that was replaced by a link is not followed.
fn libc_o_nofollow() -> i32 {
    libc::O_NOFOLLOW
}

fn as_entry(file: &cluster::TenantFile) -> FileEntry {
    FileEntry {
        path: file.path.clone(),
        len: file.len,
        sha256: hex::encode(&file.sha256),
    }
}

impl Service {
    /// The `snapshots` job (see `crate::jobs`): answers the outcome and what it did.
    pub(crate) async fn run_scheduled_snapshots(&self) -> (&'static str, serde_json::Value) {
        let now = self.clock().now_ms();
        let tenants = match off_runtime(|| self.store.list_tenants()) {
            Ok(tenants) => tenants,
            Err(err) => {
                return (
                    "error",
                    serde_json::json!({ "error": format!("listing the tenants failed: {err}") }),
                );
            }
        };
        let (mut taken, mut deleted, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        for tenant in tenants.iter().filter(|t| !t.deleted) {
            let Some(tier) = self.tiers.get(&tenant.tier) else {
                continue;
            };
            if tier.snapshot_every_hours == 0 || tenant.storage != tenant_state::HOT {
                continue;
            }
            let scheduled = |rows: Vec<SnapshotRow>| -> Vec<SnapshotRow> {
                rows.into_iter()
                    .filter(|r| r.origin == ORIGIN_SCHEDULE)
                    .collect()
            };
            let rows = match off_runtime(|| self.store.snapshots(&tenant.id)) {
                Ok(rows) => scheduled(rows),
                Err(err) => {
                    failed
                        .push(serde_json::json!({ "tenant": tenant.id, "error": err.to_string() }));
                    continue;
                }
            };
            let every_ms = u64::from(tier.snapshot_every_hours) * 3_600_000;
            let due = rows
                .last()
                .is_none_or(|last| now.saturating_sub(last.created_ms) >= every_ms);
            if due {
                match self.take_snapshot(&tenant.id, ORIGIN_SCHEDULE).await {
                    Ok(view) => {
                        taken.push(serde_json::json!({ "tenant": tenant.id, "snapshot": view.id }))
                    }
                    Err(err) => {
                        failed
                            .push(serde_json::json!({ "tenant": tenant.id, "error": err.message }));
                        continue;
                    }
                }
            }
            let rows = match off_runtime(|| self.store.snapshots(&tenant.id)) {
                Ok(rows) => scheduled(rows),
                Err(err) => {
                    failed
                        .push(serde_json::json!({ "tenant": tenant.id, "error": err.to_string() }));
                    continue;
                }
            };
            let keep = tier.snapshot_keep as usize;
            for old in rows.iter().take(rows.len().saturating_sub(keep)) {
                match self.delete_snapshot(&tenant.id, &old.id, "system").await {
                    Ok(()) => {
                        deleted.push(serde_json::json!({ "tenant": tenant.id, "snapshot": old.id }))
                    }
                    Err(err) => failed
                        .push(serde_json::json!({ "tenant": tenant.id, "error": err.message })),
                }
            }
        }
        let outcome = if failed.is_empty() { "ok" } else { "error" };
        (
            outcome,
            serde_json::json!({ "taken": taken, "deleted": deleted, "failed": failed }),
        )
    }
}
