//! Copying a tenant's files from one worker to another: ciphertext only, never decrypted on the
//! way, so neither side needs the tenant's keys for the copy.
//!
//! The source lists an unloaded tenant's files ([`Engine::export_files`]: each collection's
//! `MANIFEST`, `seg-<n>` and `wal-<n>` files with their lengths and SHA-256) and serves them in
//! pieces ([`Engine::read_export`]). The target stages them in a private directory
//! (`.import-<tenant>` beside the tenants' directories: [`Engine::begin_import`],
//! [`Engine::write_import`], each file written in order from offset 0), checks at
//! [`Engine::commit_import`] that it holds exactly the listed files with their lengths and digests,
//! makes them durable and then switches atomically: the tenant's old directory (if any) is renamed
//! aside, the staged one renamed into place, and the old one removed.
//!
//! **Invariant:** an import writes nothing outside its staging directory until its commit, and
//! accepts only names of the form `<collection>/<file>` with a valid collection name and a file
//! named `MANIFEST`, `seg-<n>` or `wal-<n>`: no `..`, no absolute path, no link, no device, no
//! other directory level, no name twice, no more files or bytes than the caller allows. Whether
//! the files are the tenant's own is settled when they load: every block and frame is
//! authenticated with the tenant, collection and file id in its AAD, so another tenant's files do
//! not decrypt.
//!
//! Crash safety: a staging directory left by a crash is removed when the engine opens. A crash
//! between the commit's two renames leaves the old directory under `.replaced-<tenant>` and no
//! tenant directory; opening renames it back. After the second rename the import is done, and a
//! leftover `.replaced-` directory is removed.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{Engine, remove_tree};
use crate::disk::DiskFile;
use crate::ids::{CollectionName, TenantId};
use crate::manifest::MANIFEST_NAME;
use crate::{Error, Result};

/// Names of staging directories start with this.
pub(super) const IMPORT_PREFIX: &str = ".import-";
/// A tenant's old directory between the two renames of a commit.
pub(super) const REPLACED_PREFIX: &str = ".replaced-";

/// Largest piece [`Engine::read_export`] returns.
pub const MAX_PIECE_BYTES: usize = 8 << 20;

/// One file of a tenant's export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportFile {
    /// `<collection>/<file>`.
    pub path: String,
    /// Its length in bytes.
    pub len: u64,
    /// SHA-256 of its contents.
    pub sha256: [u8; 32],
}

/// What one import may hold.
#[derive(Debug, Clone, Copy)]
pub struct ImportLimits {
    /// Most files.
    pub max_files: usize,
    /// Most bytes, all files together.
    pub max_bytes: u64,
}

/// An import in progress: its staging directory and the files written so far.
#[derive(Default)]
pub(super) struct Imports {
    open: parking_lot::Mutex<BTreeMap<TenantId, Import>>,
}

struct Import {
    dir: PathBuf,
    limits: ImportLimits,
    files: BTreeMap<String, Staged>,
    bytes: u64,
}

struct Staged {
    file: Box<dyn DiskFile>,
    hasher: Sha256,
}

/// Checks an export path: `<collection>/<file>`, the file `MANIFEST`, `seg-<n>` or `wal-<n>`
/// (snapshot archives on the coordinator hold the same names).
pub fn check_path(path: &str) -> Result<(CollectionName, &str)> {
    let refuse = |why: &str| Err(Error::invalid(format!("file name {path:?} refused: {why}")));
    let Some((collection, file)) = path.split_once('/') else {
        return refuse("not <collection>/<file>");
    };
    let Ok(collection) = CollectionName::parse(collection) else {
        return refuse("not a collection name");
    };
    let numbered = |prefix: &str| {
        file.strip_prefix(prefix).is_some_and(|n| {
            !n.is_empty() && n.len() <= 20 && n.bytes().all(|b| b.is_ascii_digit())
        })
    };
    if file != MANIFEST_NAME && !numbered("seg-") && !numbered("wal-") {
        return refuse("not MANIFEST, seg-<n> or wal-<n>");
    }
    Ok((collection, file))
}

impl Engine {
    fn staging_dir(&self, tenant: &TenantId) -> PathBuf {
        self.root.join(format!("{IMPORT_PREFIX}{tenant}"))
    }

    fn replaced_dir(&self, tenant: &TenantId) -> PathBuf {
        self.root.join(format!("{REPLACED_PREFIX}{tenant}"))
    }

    /// The files of `tenant`, which must not be loaded (nothing may change them while they are
    /// copied): every collection's manifest, segments and WALs, by path. Temporary files and
    /// directories being removed are left out. Reads every file once, for its digest.
    pub fn export_files(&self, tenant: &TenantId) -> Result<Vec<ExportFile>> {
        if self.is_loaded(tenant) {
            return Err(Error::invalid(format!(
                "tenant {tenant} is loaded; unload it before exporting its files"
            )));
        }
        list_files(&self.tenant_dir(tenant))
    }

    /// The files of `tenant` as [`Engine::export_files`] lists them, loaded or not. A loaded
    /// tenant's files change under background work (a flush writes a segment and a new manifest,
    /// then deletes what they replace), so one listing is not a consistent copy on its own: a
    /// caller that copies a loaded tenant lists again after reading every file and keeps the copy
    /// only if both listings are equal (file numbers only grow and every rewritten manifest names
    /// new ones, so equal listings mean nothing changed in between). Writes must be held back by
    /// the caller meanwhile.
    pub fn export_files_live(&self, tenant: &TenantId) -> Result<Vec<ExportFile>> {
        list_files(&self.tenant_dir(tenant))
    }

    /// The files of `tenant` on cold storage under `<cold_root>/<tenant>` (it is paused, so
    /// nothing changes them), listed as [`Engine::export_files`] lists the data directory's: a
    /// paused tenant is copied to another worker from there, never moved back first.
    pub fn export_cold_files(
        &self,
        tenant: &TenantId,
        cold_root: &Path,
    ) -> Result<Vec<ExportFile>> {
        list_files(&cold_root.join(tenant.as_str()))
    }

    /// Up to `max_len` bytes (at most [`MAX_PIECE_BYTES`]) of an exported file from `offset`;
    /// fewer only at its end.
    pub fn read_export(
        &self,
        tenant: &TenantId,
        path: &str,
        offset: u64,
        max_len: usize,
    ) -> Result<Vec<u8>> {
        read_piece(&self.tenant_dir(tenant), path, offset, max_len)
    }

    /// [`Engine::read_export`] of a file [`Engine::export_cold_files`] lists.
    pub fn read_cold_export(
        &self,
        tenant: &TenantId,
        cold_root: &Path,
        path: &str,
        offset: u64,
        max_len: usize,
    ) -> Result<Vec<u8>> {
        read_piece(&cold_root.join(tenant.as_str()), path, offset, max_len)
    }

    /// Starts an import of `tenant`'s files, within `limits`, into a fresh staging directory
    /// (one left by an earlier import is removed first).
    pub fn begin_import(&self, tenant: &TenantId, limits: ImportLimits) -> Result<()> {
        let dir = self.staging_dir(tenant);
        let mut open = self.imports.open.lock();
        open.remove(tenant);
        remove_tree(&dir)?;
        self.ctx
            .disk
            .create_dir_all(&dir)
            .map_err(Error::io(&dir))?;
        open.insert(
            tenant.clone(),
            Import {
                dir,
                limits,
                files: BTreeMap::new(),
                bytes: 0,
            },
        );
        Ok(())
    }

    /// Appends `bytes` at `offset` of `path` in `tenant`'s import: a file is written in order,
    /// from 0, each piece where the last one ended. A piece at offset 0 of a file staged already
    /// starts it again (a catch-up re-copies a file that changed since it was staged).
    pub fn write_import(
        &self,
        tenant: &TenantId,
        path: &str,
        offset: u64,
        bytes: &[u8],
    ) -> Result<()> {
        let (collection, _) = check_path(path)?;
        let mut open = self.imports.open.lock();
        let import = open.get_mut(tenant).ok_or_else(|| {
            Error::invalid(format!("no import of tenant {tenant} is in progress"))
        })?;
        let limits = import.limits;
        if offset == 0
            && let Some(old) = import.files.remove(path)
        {
            import.bytes -= old.file.len();
            drop(old);
            let full = import.dir.join(path);
            self.ctx.disk.remove_file(&full).map_err(Error::io(&full))?;
        }
        let total = import.bytes.saturating_add(bytes.len() as u64);
        if total > limits.max_bytes {
            return Err(Error::invalid(format!(
                "the import is over its limit of {} bytes",
                limits.max_bytes
            )));
        }
        if !import.files.contains_key(path) {
            if offset != 0 {
                return Err(Error::invalid(format!("{path} must start at offset 0")));
            }
            if import.files.len() >= limits.max_files {
                return Err(Error::invalid(format!(
                    "the import is over its limit of {} files",
                    limits.max_files
                )));
            }
            let cdir = import.dir.join(collection.as_str());
            self.ctx
                .disk
                .create_dir_all(&cdir)
                .map_err(Error::io(&cdir))?;
            let full = import.dir.join(path);
            let file = self.ctx.disk.create(&full).map_err(Error::io(&full))?;
            import.files.insert(
                path.to_owned(),
                Staged {
                    file,
                    hasher: Sha256::new(),
                },
            );
        }
        let staged = import.files.get_mut(path).expect("inserted above");
        if offset != staged.file.len() {
            return Err(Error::invalid(format!(
                "{path} continues at offset {}, not {offset}",
                staged.file.len()
            )));
        }
        let full = import.dir.join(path);
        staged.file.append(bytes).map_err(Error::io(&full))?;
        staged.hasher.update(bytes);
        import.bytes = total;
        Ok(())
    }

    /// Finishes `tenant`'s import if it holds every file of `expected` (names, lengths, digests)
    /// and every collection in it has a manifest: removes staged files `expected` does not list
    /// (a catch-up staged files the source has deleted since), makes every file and directory
    /// durable, then replaces the tenant's directory with the staged one. The tenant must not be
    /// loaded. Anything else leaves the tenant's files as they were, and the import can be aborted.
    pub fn commit_import(&self, tenant: &TenantId, expected: &[ExportFile]) -> Result<()> {
        if self.is_loaded(tenant) {
            return Err(Error::invalid(format!(
                "tenant {tenant} is loaded; unload it before replacing its files"
            )));
        }
        let mut open = self.imports.open.lock();
        let import = open.get_mut(tenant).ok_or_else(|| {
            Error::invalid(format!("no import of tenant {tenant} is in progress"))
        })?;
        let mut wanted: BTreeMap<&str, &ExportFile> = BTreeMap::new();
        for file in expected {
            check_path(&file.path)?;
            if wanted.insert(file.path.as_str(), file).is_some() {
                return Err(Error::invalid(format!("{} is listed twice", file.path)));
            }
        }
        if let Some(missing) = wanted.keys().find(|p| !import.files.contains_key(**p)) {
            return Err(Error::invalid(format!(
                "{missing} is listed but not staged"
            )));
        }
        let unlisted: Vec<String> = import
            .files
            .keys()
            .filter(|p| !wanted.contains_key(p.as_str()))
            .cloned()
            .collect();
        for path in unlisted {
            if let Some(old) = import.files.remove(&path) {
                import.bytes -= old.file.len();
            }
            let full = import.dir.join(&path);
            self.ctx.disk.remove_file(&full).map_err(Error::io(&full))?;
        }
        for (path, staged) in &mut import.files {
            let want = wanted[path.as_str()];
            let sha256: [u8; 32] = staged.hasher.clone().finalize().into();
            if staged.file.len() != want.len || sha256 != want.sha256 {
                return Err(Error::invalid(format!(
                    "{path} does not match its listing (length or digest)"
                )));
            }
            let full = import.dir.join(path);
            staged.file.sync().map_err(Error::io(&full))?;
        }
        let mut collections: BTreeMap<&str, bool> = BTreeMap::new();
        for path in import.files.keys() {
            let (collection, file) = path.split_once('/').expect("checked");
            *collections.entry(collection).or_default() |= file == MANIFEST_NAME;
        }
        if let Some((name, _)) = collections.iter().find(|(_, has)| !**has) {
            return Err(Error::invalid(format!("collection {name} has no MANIFEST")));
        }
        for name in collections.keys() {
            let cdir = import.dir.join(name);
            self.ctx.disk.sync_dir(&cdir).map_err(Error::io(&cdir))?;
        }
        self.ctx
            .disk
            .sync_dir(&import.dir)
            .map_err(Error::io(&import.dir))?;
        let staging = import.dir.clone();
        let target = self.tenant_dir(tenant);
        let replaced = self.replaced_dir(tenant);
        remove_tree(&replaced)?;
        if target.exists() {
            self.ctx
                .disk
                .rename(&target, &replaced)
                .map_err(Error::io(&target))?;
        }
        self.ctx
            .disk
            .rename(&staging, &target)
            .map_err(Error::io(&staging))?;
        self.ctx
            .disk
            .sync_dir(&self.root)
            .map_err(Error::io(&self.root))?;
        open.remove(tenant);
        drop(open);
        remove_tree(&replaced)
    }

    /// Stages, from the files `tenant` has on this worker now (a stale copy), those of `files`
    /// whose length and digest match: a catch-up then copies only what differs. The local
    /// files are read, not linked, and each is checked against its listing as it is staged;
    /// one that does not match (or is missing) is left out. Answers how many were staged.
    pub fn reuse_import(&self, tenant: &TenantId, files: &[ExportFile]) -> Result<usize> {
        let mut reused = 0;
        for want in files {
            check_path(&want.path)?;
            let local = self.tenant_dir(tenant).join(&want.path);
            let Ok(meta) = std::fs::symlink_metadata(&local) else {
                continue;
            };
            if !meta.is_file() || meta.len() != want.len {
                continue;
            }
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&local)
                .map_err(Error::io(&local))?;
            let mut buf = vec![0u8; MAX_PIECE_BYTES.min(1 << 20)];
            let mut offset = 0u64;
            loop {
                let n = file.read(&mut buf).map_err(Error::io(&local))?;
                if n == 0 {
                    break;
                }
                self.write_import(tenant, &want.path, offset, &buf[..n])?;
                offset += n as u64;
            }
            if offset == 0 {
                // An empty file: staged by an empty piece.
                self.write_import(tenant, &want.path, 0, &[])?;
            }
            let matches = self
                .staged_files(tenant)?
                .iter()
                .any(|staged| staged == want);
            if matches {
                reused += 1;
            } else {
                self.unstage(tenant, &want.path)?;
            }
        }
        Ok(reused)
    }

    /// The files staged in `tenant`'s import so far, with their lengths and digests.
    pub fn staged_files(&self, tenant: &TenantId) -> Result<Vec<ExportFile>> {
        let open = self.imports.open.lock();
        let import = open.get(tenant).ok_or_else(|| {
            Error::invalid(format!("no import of tenant {tenant} is in progress"))
        })?;
        Ok(import
            .files
            .iter()
            .map(|(path, staged)| ExportFile {
                path: path.clone(),
                len: staged.file.len(),
                sha256: staged.hasher.clone().finalize().into(),
            })
            .collect())
    }

    /// Removes `path` from `tenant`'s import.
    fn unstage(&self, tenant: &TenantId, path: &str) -> Result<()> {
        let mut open = self.imports.open.lock();
        let Some(import) = open.get_mut(tenant) else {
            return Ok(());
        };
        if let Some(old) = import.files.remove(path) {
            import.bytes -= old.file.len();
            let full = import.dir.join(path);
            self.ctx.disk.remove_file(&full).map_err(Error::io(&full))?;
        }
        Ok(())
    }

    /// Drops `tenant`'s import and its staging directory, if any.
    pub fn abort_import(&self, tenant: &TenantId) -> Result<()> {
        self.imports.open.lock().remove(tenant);
        remove_tree(&self.staging_dir(tenant))
    }

    /// At open: removes staging directories, and puts back a tenant directory a crash left
    /// renamed aside in the middle of a commit (or removes it if the commit got through).
    pub(super) fn recover_imports(root: &Path) -> Result<()> {
        for entry in std::fs::read_dir(root).map_err(Error::io(root))? {
            let entry = entry.map_err(Error::io(root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(IMPORT_PREFIX) || name.starts_with(super::cold::WARMING_PREFIX) {
                remove_tree(&entry.path())?;
            } else if let Some(tenant) = name.strip_prefix(REPLACED_PREFIX) {
                let target = root.join(tenant);
                if TenantId::parse(tenant).is_ok() && !target.exists() {
                    std::fs::rename(entry.path(), &target).map_err(Error::io(&target))?;
                    crate::disk::sync_dir(root)?;
                } else {
                    remove_tree(&entry.path())?;
                }
            }
        }
        Ok(())
    }
}

/// Every manifest, segment and WAL of the tenant directory `dir`, by `collection/file`, with
/// its length and digest; temporary files and directories being removed are left out.
fn list_files(dir: &Path) -> Result<Vec<ExportFile>> {
    let mut files = Vec::new();
    if !dir.exists() {
        return Ok(files);
    }
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let entry = entry.map_err(Error::io(dir))?;
        let Some(collection) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if CollectionName::parse(&collection).is_err()
            || !entry.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        let cdir = entry.path();
        for file in std::fs::read_dir(&cdir).map_err(Error::io(&cdir))? {
            let file = file.map_err(Error::io(&cdir))?;
            let Some(name) = file.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let path = format!("{collection}/{name}");
            if check_path(&path).is_err() || !file.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let (len, sha256) = digest(&file.path())?;
            files.push(ExportFile { path, len, sha256 });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Up to `max_len` bytes (at most [`MAX_PIECE_BYTES`]) of the file `path` under the tenant
/// directory `dir` from `offset`.
fn read_piece(dir: &Path, path: &str, offset: u64, max_len: usize) -> Result<Vec<u8>> {
    check_path(path)?;
    let full = dir.join(path);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&full)
        .map_err(Error::io(&full))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(Error::io(&full))?;
    let mut out = Vec::new();
    file.take(max_len.min(MAX_PIECE_BYTES) as u64)
        .read_to_end(&mut out)
        .map_err(Error::io(&full))?;
    Ok(out)
}

/// Length and SHA-256 of a regular file (links are not followed).
fn digest(path: &Path) -> Result<(u64, [u8; 32])> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(Error::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(Error::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, hasher.finalize().into()))
}

#[cfg(test)]
mod tests;
