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

mod archive;
mod clone;
mod restore;
mod schedule;
mod settle;
mod take;

pub use archive::Upload;

/// Bytes of a file fetched or sent per step.
const PIECE_BYTES: usize = 1 << 20;
/// Times the locked phase lists, copies and lists again before it gives up.
const LOCKED_ROUNDS: usize = 3;

/// Who took or deleted a snapshot.
pub const ORIGIN_ADMIN: &str = "admin";
/// The scheduler.
pub const ORIGIN_SCHEDULE: &str = "schedule";
/// The tenant's owner, from the dashboard.
pub const ORIGIN_OWNER: &str = "owner";
/// An archive uploaded into the store (`PUT .../snapshots/{id}/archive`).
pub const ORIGIN_UPLOAD: &str = "upload";

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
        archive_path(&self.settings, tenant, id)
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
    /// `admin`, `schedule`, `owner` (from the dashboard) or `upload`.
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
    /// `tenant`'s lifecycle mutex (see [`Snapshots`]).
    fn lifecycle_mutex(&self, tenant: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.snapshots
            .lifecycle
            .lock()
            .entry(tenant.to_owned())
            .or_default()
            .clone()
    }

    /// `tenant`'s lifecycle lock, waited for.
    pub(crate) async fn lifecycle_lock(&self, tenant: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.lifecycle_mutex(tenant).lock_owned().await
    }

    /// `tenant`'s lifecycle lock if nothing holds it now.
    fn try_lifecycle_lock(&self, tenant: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.lifecycle_mutex(tenant).try_lock_owned().ok()
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
        if self.moving.contains(tenant) || self.handing.contains(tenant) {
            return Err(super::moves::moving_error());
        }
        Ok(t)
    }

    /// The snapshot store's settings.
    pub fn snapshot_settings(&self) -> &crate::snapshot::Settings {
        &self.snapshots.settings
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
        read_stored_archive(&self.store, &self.snapshots.settings, row, sink)
    }

    /// Refuses to restore `row` if any KEK version its files need is gone (an erased tenant's
    /// snapshot never restores: INV-15).
    fn require_keks(&self, row: &SnapshotRow) -> Result<(), ApiError> {
        let missing = self.missing_keks(row)?;
        if missing.is_empty() {
            return Ok(());
        }
        Err(ApiError::new(
            Code::FailedPrecondition,
            format!(
                "snapshot {} cannot be restored: the KEK versions {missing:?} its files need are destroyed",
                row.id
            ),
        ))
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
        self.remove_archive(tenant, id);
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
            self.remove_archive(tenant, &row.id);
        }
        Ok(rows.len())
    }

    /// Deletes the archive of a snapshot no longer recorded; a failure is logged (the sweep at
    /// start removes it).
    fn remove_archive(&self, tenant: &str, id: &str) {
        let path = self.snapshots.archive_path(tenant, id);
        if let Err(err) = std::fs::remove_file(&path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(tenant, snapshot = id, error = %err, "deleting a snapshot's archive failed; the sweep at start removes it");
        }
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
                // Only what the store writes there: the directory may hold other files (a
                // store configured over another directory), which are never touched.
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if store_file(&name).is_some() && std::fs::remove_file(entry.path()).is_ok() {
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
        // Only names the store makes are looked at: a staging directory of a snapshot id, and in
        // a directory named like a tenant, archives and their temporary files. Anything else
        // (the store configured over another directory) is never touched.
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.strip_prefix(".staging-").is_some_and(is_snapshot_id)
                || name
                    .strip_prefix(clone::CLONE_PREFIX)
                    .is_some_and(is_snapshot_id)
            {
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            if TenantId::parse(&name).is_err() {
                continue;
            }
            let Ok(files) = std::fs::read_dir(&path) else {
                continue;
            };
            for file in files.flatten() {
                let file_name = file.file_name().to_string_lossy().into_owned();
                if store_file(&file_name).is_some()
                    && !recorded.contains(&(name.clone(), file_name.clone()))
                {
                    tracing::info!(tenant = %name, file = %file_name, "removing an unrecorded file from the snapshot store");
                    let _ = std::fs::remove_file(file.path());
                }
            }
        }
        Ok(())
    }
}

/// Whether `id` is a snapshot id as [`new_id`] makes them.
fn is_snapshot_id(id: &str) -> bool {
    id.strip_prefix("snap-")
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The snapshot id of a file the store writes in a tenant's directory (`<id>.tar`, or
/// `.<id>.tar.tmp` while it is written), if it is one.
fn store_file(name: &str) -> Option<&str> {
    let id = name
        .strip_suffix(".tar")
        .or_else(|| name.strip_prefix('.')?.strip_suffix(".tar.tmp"))?;
    is_snapshot_id(id).then_some(id)
}

/// Where the archive of snapshot `id` of `tenant` is kept.
fn archive_path(settings: &Settings, tenant: &str, id: &str) -> PathBuf {
    settings.dir.join(tenant).join(format!("{id}.tar"))
}

/// Reads the stored archive of `row` (never through a link: `O_NOFOLLOW`) and checks it (see
/// `crate::snapshot`), handing each file to `sink`, and that it names the recorded KEK versions.
fn read_stored_archive(
    store: &crate::store::Store,
    settings: &Settings,
    row: &SnapshotRow,
    sink: impl FnMut(&FileEntry, &mut dyn Read) -> std::io::Result<()>,
) -> Result<Meta, ApiError> {
    let path = archive_path(settings, &row.tenant, &row.id);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| {
            ApiError::new(
                Code::DataLoss,
                format!("snapshot {}'s archive cannot be opened: {e}", row.id),
            )
        })?;
    let meta = snapshot::read_archive(
        std::io::BufReader::new(file),
        store.audit_key(),
        settings.limits,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_the_store_makes_are_its_files() {
        let id = new_id();
        assert!(is_snapshot_id(&id), "{id}");
        assert_eq!(store_file(&format!("{id}.tar")), Some(id.as_str()));
        assert_eq!(store_file(&format!(".{id}.tar.tmp")), Some(id.as_str()));
        for other in [
            "acme.keks",
            "snap-xyz.tar",
            "snap-0123456789abcdef0.tar",
            "snap-0123456789abcdeg.tar",
            "snap-0123456789abcdef.tar.bak",
            ".snap-0123456789abcdef.tar",
            "MANIFEST",
            "coordinator.sqlite",
        ] {
            assert_eq!(store_file(other), None, "{other}");
        }
    }
}
