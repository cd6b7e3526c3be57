//! Cold storage: a paused tenant's files moved, as ciphertext (never decrypted on the way), from
//! the data directory to a cold directory (an HDD mount in production) and back.
//!
//! ```text
//! <cold>/<tenant>/<collection>/{MANIFEST, wal-<n>, seg-<n>}   a tenant on cold storage
//! <cold>/.incoming-<tenant>/...                               a move to cold, uncommitted
//! <data>/tenants/.warming-<tenant>/...                        a move back, uncommitted
//! ```
//!
//! A move copies the source tree file by file into a staging directory beside the destination
//! (each file synced, then each directory), renames the staging directory into place (the commit)
//! and syncs its parent, then removes the source durably (a rename to a hidden name, synced, then
//! the removal).
//!
//! **Crash safety.** A paused tenant takes no writes, so whenever a committed destination and a
//! source both exist they hold the same files, and the source may go. Each move is idempotent and
//! is simply run again after a crash at any step: a committed destination is kept (the copy is
//! not redone) and the source removed; an uncommitted staging directory is discarded and the copy
//! redone; a move whose source is gone and destination present is done. Nothing in either
//! direction deletes the only copy: the source goes only after the destination is committed and
//! durable. Paused data is never deleted by anything else.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Engine, remove_tree};
use crate::ids::TenantId;
use crate::{Error, Result};

/// A move to cold storage in progress, under the cold root.
const INCOMING_PREFIX: &str = ".incoming-";
/// A move back in progress, under the data root's tenants directory.
pub(super) const WARMING_PREFIX: &str = ".warming-";

impl Engine {
    /// Unloads `tenant` and moves its files to `<cold_root>/<tenant>`. The caller holds the
    /// tenant's requests off (it is paused, and the worker holds its gate exclusively). Answers
    /// the bytes copied (0 when the copy was already committed).
    pub fn move_to_cold(&self, tenant: &TenantId, cold_root: &Path) -> Result<u64> {
        self.unload(tenant, false);
        self.ctx
            .disk
            .create_dir_all(cold_root)
            .map_err(Error::io(cold_root))?;
        let hot = self.tenant_dir(tenant);
        let cold = cold_root.join(tenant.as_str());
        let staging = cold_root.join(format!("{INCOMING_PREFIX}{tenant}"));
        self.move_tree(&hot, &staging, &cold)
    }

    /// Moves `tenant`'s files back from `<cold_root>/<tenant>` to the data directory. Answers the
    /// bytes copied (0 when the copy was already committed).
    pub fn move_to_hot(&self, tenant: &TenantId, cold_root: &Path) -> Result<u64> {
        self.unload(tenant, false);
        let hot = self.tenant_dir(tenant);
        let cold = cold_root.join(tenant.as_str());
        let staging = self.root.join(format!("{WARMING_PREFIX}{tenant}"));
        self.move_tree(&cold, &staging, &hot)
    }

    /// The bytes of `tenant`'s files in the data directory and under `<cold_root>/<tenant>`.
    pub fn file_bytes(&self, tenant: &TenantId, cold_root: &Path) -> Result<(u64, u64)> {
        Ok((
            tree_bytes(&self.tenant_dir(tenant))?,
            tree_bytes(&cold_root.join(tenant.as_str()))?,
        ))
    }

    /// Moves the tree `from` to `to` through `staging` (see the module documentation).
    fn move_tree(&self, from: &Path, staging: &Path, to: &Path) -> Result<u64> {
        let mut copied = 0;
        if !to.exists() {
            remove_tree(staging)?;
            if !from.exists() {
                // No files at all (a tenant never written): nothing to move.
                return Ok(0);
            }
            copied = self.copy_tree(from, staging)?;
            self.sync_tree(staging)?;
            self.ctx
                .disk
                .rename(staging, to)
                .map_err(Error::io(staging))?;
            let parent = parent_of(to);
            self.ctx.disk.sync_dir(parent).map_err(Error::io(parent))?;
        }
        self.remove_durably(from)?;
        let parent = parent_of(from);
        if parent.exists() {
            // Removals a crash cut short under the source's parent.
            Engine::finish_removals(parent)?;
        }
        Ok(copied)
    }

    /// Copies the regular files of `from` (two levels: collections, then their files) into a new
    /// `to`, each file synced. Anything else (a link, a device, a deeper directory) is refused:
    /// the engine never makes one.
    fn copy_tree(&self, from: &Path, to: &Path) -> Result<u64> {
        let disk = &self.ctx.disk;
        disk.create_dir_all(to).map_err(Error::io(to))?;
        let mut bytes = 0;
        for collection in sorted_entries(from)? {
            let kind = std::fs::symlink_metadata(&collection).map_err(Error::io(&collection))?;
            if !kind.is_dir() {
                return Err(unexpected(&collection));
            }
            let target = to.join(collection.file_name().unwrap_or_default());
            disk.create_dir_all(&target).map_err(Error::io(&target))?;
            for file in sorted_entries(&collection)? {
                let kind = std::fs::symlink_metadata(&file).map_err(Error::io(&file))?;
                if !kind.is_file() {
                    return Err(unexpected(&file));
                }
                let dest = target.join(file.file_name().unwrap_or_default());
                bytes += self.copy_file(&file, &dest)?;
            }
        }
        Ok(bytes)
    }

    fn copy_file(&self, from: &Path, to: &Path) -> Result<u64> {
        let mut source = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(from)
            .map_err(Error::io(from))?;
        let mut dest = self.ctx.disk.create(to).map_err(Error::io(to))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let n = source.read(&mut buf).map_err(Error::io(from))?;
            if n == 0 {
                break;
            }
            dest.append(&buf[..n]).map_err(Error::io(to))?;
            bytes += n as u64;
        }
        dest.sync().map_err(Error::io(to))?;
        Ok(bytes)
    }

    /// Syncs every directory of a copied tree, deepest first.
    fn sync_tree(&self, dir: &Path) -> Result<()> {
        for collection in sorted_entries(dir)? {
            self.ctx
                .disk
                .sync_dir(&collection)
                .map_err(Error::io(&collection))?;
        }
        self.ctx.disk.sync_dir(dir).map_err(Error::io(dir))
    }
}

fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

fn unexpected(path: &Path) -> Error {
    Error::Corrupt {
        path: path.to_owned(),
        offset: 0,
        reason: "not a file or directory the engine writes; the move stops here".into(),
    }
}

/// The entries of `dir`, by name, skipping a `SimDisk`'s bookkeeping files.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let entry = entry.map_err(Error::io(dir))?;
        if crate::disk::is_sim_backup(&entry.file_name().to_string_lossy()) {
            continue;
        }
        entries.push(entry.path());
    }
    entries.sort();
    Ok(entries)
}

/// The bytes of the regular files of a tenant's tree (collections, then their files); 0 if it
/// does not exist.
fn tree_bytes(root: &Path) -> Result<u64> {
    if !root.exists() {
        return Ok(0);
    }
    let mut bytes = 0;
    for collection in sorted_entries(root)? {
        let kind = std::fs::symlink_metadata(&collection).map_err(Error::io(&collection))?;
        if !kind.is_dir() {
            continue;
        }
        for file in sorted_entries(&collection)? {
            let meta = std::fs::symlink_metadata(&file).map_err(Error::io(&file))?;
            if meta.is_file() {
                bytes += meta.len();
            }
        }
    }
    Ok(bytes)
}
