//! Copying a tenant's files from one worker to another through the coordinator: ciphertext
//! only, piece by piece (`TransferTenant`), into a staging import on the target that is
//! checked file by file (length and SHA-256) against the source's listing before the target
//! switches to it.
//!
//! Two users:
//! - a move (`moves.rs`) copies a released tenant, whose files do not change, in one pass;
//! - a replica's catch-up ([`Service::catch_up`]) copies from a primary that keeps serving, in
//!   two phases. First, with the tenant's writes going on, the target stages what it already has
//!   (a stale copy shares most of its files with the primary: sealed segments never change) and
//!   the rest is copied from a listing of the primary. Then, under the tenant's write lock, the
//!   primary is listed again and only what differs (the WAL, the manifest, segments sealed
//!   meanwhile) is copied, and of a WAL the first phase staged from the same primary only the
//!   tail appended since; a third listing equal to the second proves nothing changed during
//!   that copy, and the target commits exactly that listing. Writes wait only for the second
//!   phase.

use std::sync::atomic::Ordering;

use proto::vaultvec::cluster::v1 as cluster;

use super::error::{ApiError, Code};
use super::{Service, off_runtime};
use crate::store::{Actor, CopyState};

use cluster::transfer_tenant::Step;

/// Bytes of a file copied per step.
const PIECE_BYTES: u32 = 1 << 20;

/// Times the second phase of a catch-up lists, copies and lists again before it gives up (the
/// primary's background work changed its files each time; the next repair pass tries again).
const LOCKED_ROUNDS: usize = 3;

const SYSTEM: &str = "system";

/// How far a copy of a tenant's files has got.
pub(crate) enum CopyStep {
    /// The source's files are listed.
    Listed {
        /// How many.
        files: usize,
        /// Their bytes.
        bytes: u64,
    },
    /// These many more bytes are copied.
    Copied(u64),
}

/// What a catch-up copied.
#[derive(Debug, Default, Clone, Copy)]
struct Copied {
    files: usize,
    bytes: u64,
}

impl Service {
    /// Copies `tenant`'s files from `from`, where it is released, to `to` (which must not have it
    /// assigned) and commits them there; answers the files and bytes copied.
    pub(crate) async fn copy_tenant_files(
        &self,
        tenant: &str,
        from: &str,
        to: &str,
        progress: &(dyn Fn(CopyStep) + Sync),
    ) -> Result<(usize, u64), ApiError> {
        let listing = self.list_files(tenant, from, false).await?;
        let bytes: u64 = listing.iter().map(|f| f.len).sum();
        progress(CopyStep::Listed {
            files: listing.len(),
            bytes,
        });
        self.begin_import(tenant, to, &listing, false).await?;
        self.copy_missing(tenant, from, to, &listing, false, false, progress)
            .await?;
        self.commit_import(tenant, to, listing.clone()).await?;
        Ok((listing.len(), bytes))
    }

    /// Catches the stale copy of `tenant` on `worker` up from its primary and records it live
    /// (see the module docs). Holds the tenant's writes back only for the second phase.
    pub(crate) async fn catch_up(&self, tenant: &str, worker: &str) -> Result<(), ApiError> {
        // One catch-up of a tenant at a time (the repair pass and a hand-over may both start
        // one); a second one finds the copy live and returns.
        let copying = self.replication.copy_lock_of(tenant);
        let _copying = copying.lock().await;
        let Some(from) = self.stale_copy_source(tenant, worker).await? else {
            return Ok(());
        };
        tracing::info!(tenant, from = %from, to = worker, "a replica catches up");
        // Phase 1: writes go on.
        let first = self.list_files(tenant, &from, true).await?;
        self.begin_import(tenant, worker, &first, true).await?;
        let result = self.finish_catch_up(tenant, worker, &from, &first).await;
        if result.is_err() {
            let _ = self
                .transfer(worker, tenant, Step::ImportAbort(cluster::ImportAbort {}))
                .await;
        }
        let copied = result?;
        self.replication.caught_up.fetch_add(1, Ordering::SeqCst);
        tracing::info!(
            tenant,
            worker,
            files = copied.files,
            bytes = copied.bytes,
            "replica caught up"
        );
        Ok(())
    }

    /// The rest of a catch-up once the target's import has begun: see [`Service::catch_up`].
    async fn finish_catch_up(
        &self,
        tenant: &str,
        worker: &str,
        from: &str,
        first: &[cluster::TenantFile],
    ) -> Result<Copied, ApiError> {
        let bytes_copied = std::sync::atomic::AtomicU64::new(0);
        let progress = |step: CopyStep| {
            if let CopyStep::Copied(n) = step {
                bytes_copied.fetch_add(n, Ordering::Relaxed);
            }
        };
        self.transfer(
            worker,
            tenant,
            Step::ImportReuse(cluster::ImportReuse {
                files: first.to_vec(),
            }),
        )
        .await?;
        self.copy_missing(tenant, from, worker, first, true, false, &progress)
            .await?;

        // Phase 2: under the write lock, from the primary of now (it may have changed).
        let lock = self.replication.lock_of(tenant);
        let _turn = lock.write().await;
        let Some(now) = self.stale_copy_source(tenant, worker).await? else {
            return Err(ApiError::new(
                Code::Unavailable,
                format!("the copy of {tenant} on {worker} is no longer a stale replica"),
            ));
        };
        // A WAL staged in the first phase from this same primary is a prefix of the one it
        // holds now (a live WAL is only appended to): only its tail is copied.
        let tails = now == from;
        let from = now;
        for _ in 0..LOCKED_ROUNDS {
            let listing = self.list_files(tenant, &from, true).await?;
            self.copy_missing(tenant, &from, worker, &listing, true, tails, &progress)
                .await?;
            if self.list_files(tenant, &from, true).await? != listing {
                continue;
            }
            let listing_bytes: u64 = listing.iter().map(|f| f.len).sum();
            let copied = Copied {
                files: listing.len(),
                bytes: bytes_copied.load(Ordering::Relaxed),
            };
            self.commit_import(tenant, worker, listing).await?;
            off_runtime(|| {
                self.store.mark_live(
                    &Actor(SYSTEM.into()),
                    tenant,
                    worker,
                    serde_json::json!({
                        "from": from,
                        "files": copied.files,
                        "bytes": listing_bytes,
                        "bytes_copied": copied.bytes,
                    }),
                )
            })?;
            self.forget_tenant_state(tenant);
            self.assign_live_copies(tenant).await;
            return Ok(copied);
        }
        Err(ApiError::new(
            Code::Unavailable,
            format!(
                "the files of {tenant} on {from} changed during each of {LOCKED_ROUNDS} copies; copied again later"
            ),
        ))
    }

    /// If `tenant`'s copy on `worker` is a stale replica: releases it there (a stale copy is not
    /// served; released, its files can be replaced) and answers the primary to copy from.
    async fn stale_copy_source(
        &self,
        tenant: &str,
        worker: &str,
    ) -> Result<Option<String>, ApiError> {
        let placement = off_runtime(|| self.store.placement(tenant))?
            .ok_or_else(|| ApiError::new(Code::NotFound, "the tenant has no placement"))?;
        let still_stale = off_runtime(|| self.store.replicas(tenant))?
            .iter()
            .any(|r| r.worker == worker && r.state == CopyState::Stale);
        if !still_stale {
            return Ok(None);
        }
        self.hub
            .release_checked(worker, tenant, placement.epoch, self.request_timeout)
            .await?;
        Ok(Some(placement.worker))
    }

    /// The source's files (`live`: while it stays assigned and serving).
    async fn list_files(
        &self,
        tenant: &str,
        from: &str,
        live: bool,
    ) -> Result<Vec<cluster::TenantFile>, ApiError> {
        Ok(self
            .transfer(
                from,
                tenant,
                Step::ExportFiles(cluster::ExportFiles { live }),
            )
            .await?
            .files)
    }

    /// Starts a fresh import on `to`, sized for `listing` (with room to grow when `growing`: a
    /// catch-up copies what the source writes meanwhile too).
    async fn begin_import(
        &self,
        tenant: &str,
        to: &str,
        listing: &[cluster::TenantFile],
        growing: bool,
    ) -> Result<(), ApiError> {
        let bytes: u64 = listing.iter().map(|f| f.len).sum();
        let files = listing.len();
        let (max_files, max_bytes) = if growing {
            (
                files.saturating_mul(2).saturating_add(1024),
                bytes.saturating_mul(2).saturating_add(1 << 30),
            )
        } else {
            (files, bytes)
        };
        let max_files =
            u32::try_from(max_files).map_err(|_| ApiError::internal("too many files to copy"))?;
        self.transfer(
            to,
            tenant,
            Step::ImportBegin(cluster::ImportBegin {
                max_files,
                max_bytes,
            }),
        )
        .await?;
        Ok(())
    }

    /// Commits the import of `files` on `to`. A paused tenant's files (storage `cooling` or
    /// `cold`) go on to `to`'s cold storage in the same step, so a drain or move of it never
    /// leaves them in the data directory.
    async fn commit_import(
        &self,
        tenant: &str,
        to: &str,
        files: Vec<cluster::TenantFile>,
    ) -> Result<(), ApiError> {
        let storage = off_runtime(|| self.store.tenant(tenant))?.map(|t| t.storage);
        let to_cold = matches!(
            storage.as_deref(),
            Some(crate::store::tenant::COOLING | crate::store::tenant::COLD)
        );
        self.transfer(
            to,
            tenant,
            Step::ImportCommit(cluster::ImportCommit { files, to_cold }),
        )
        .await?;
        Ok(())
    }

    /// Copies every file of `listing` that `to` has not staged with that length and digest.
    /// `live` (a source that keeps serving): a file it cannot give whole (its background work
    /// deleted or replaced it since the listing) is skipped; the catch-up's next listing differs
    /// then, and a commit checks every staged file against the listing it commits, so nothing
    /// inconsistent is kept. Otherwise any failure ends the copy. `tails`: a WAL staged shorter
    /// than listed was staged from this source earlier in this copy, so it is a prefix of the
    /// listed one and only the rest is copied (if it were not, the commit's digest check of the
    /// whole file refuses it).
    #[allow(clippy::too_many_arguments)]
    async fn copy_missing(
        &self,
        tenant: &str,
        from: &str,
        to: &str,
        listing: &[cluster::TenantFile],
        live: bool,
        tails: bool,
        progress: &(dyn Fn(CopyStep) + Sync),
    ) -> Result<(), ApiError> {
        let staged = self
            .transfer(to, tenant, Step::ImportStaged(cluster::ImportStaged {}))
            .await?
            .files;
        for file in listing.iter().filter(|f| !staged.contains(f)) {
            let start = staged
                .iter()
                .find(|s| tails && s.path == file.path && s.len < file.len && is_wal(&s.path))
                .map_or(0, |s| s.len);
            match self
                .copy_file(tenant, from, to, file, start, progress)
                .await
            {
                Ok(()) => {}
                Err(CopyError::Source(err)) if live => {
                    tracing::debug!(tenant, path = %file.path, error = %err, "a listed file changed before it was copied; left to the next listing");
                }
                Err(CopyError::Source(err) | CopyError::Target(err)) => return Err(err),
            }
        }
        Ok(())
    }

    /// Copies one file from `start`: 0 starts it again on `to` if staged already; a staged
    /// file's length continues it.
    async fn copy_file(
        &self,
        tenant: &str,
        from: &str,
        to: &str,
        file: &cluster::TenantFile,
        start: u64,
        progress: &(dyn Fn(CopyStep) + Sync),
    ) -> Result<(), CopyError> {
        let mut offset = start;
        loop {
            let data = if offset < file.len {
                let data = self
                    .transfer(
                        from,
                        tenant,
                        Step::ReadFile(cluster::ReadFile {
                            path: file.path.clone(),
                            offset,
                            max_len: PIECE_BYTES,
                        }),
                    )
                    .await
                    .map_err(CopyError::Source)?
                    .data;
                if data.is_empty() {
                    return Err(CopyError::Source(ApiError::new(
                        Code::Unavailable,
                        format!("{} on {from} ended before its listed length", file.path),
                    )));
                }
                // A file that grew since it was listed is copied to its listed length.
                let keep = usize::try_from(file.len - offset).unwrap_or(usize::MAX);
                let mut data = data;
                data.truncate(keep);
                data
            } else {
                Vec::new()
            };
            let n = data.len() as u64;
            self.transfer(
                to,
                tenant,
                Step::ImportPiece(cluster::ImportPiece {
                    path: file.path.clone(),
                    offset,
                    data,
                }),
            )
            .await
            .map_err(CopyError::Target)?;
            offset += n;
            progress(CopyStep::Copied(n));
            if offset >= file.len {
                return Ok(());
            }
        }
    }
}

/// Whether `path` (`<collection>/<file>`) is a WAL.
fn is_wal(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|name| name.starts_with("wal-"))
}

/// Which end of a copy failed.
enum CopyError {
    Source(ApiError),
    Target(ApiError),
}
