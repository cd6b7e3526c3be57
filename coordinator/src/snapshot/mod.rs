//! Snapshot archives: the format, how one is written, and the checks every archive passes before
//! anything is restored from it.
//!
//! An archive is a tar file. Its first entry, `vaultvec-snapshot.json`, describes it: format
//! version, snapshot id, tenant, when it was taken, the tenant's KEK versions then, and every file
//! with its length and SHA-256, signed with the coordinator's audit key
//! ([`AuditKey::sign_snapshot`]). Every other entry is one of the tenant's files, named
//! `files/<collection>/<file>` as a worker lists them: ciphertext and wrapped DEKs only, exactly
//! as they were on the worker. Nothing in an archive is plaintext; it restores only with the
//! tenant's KEK versions, which live on the coordinator and die with the tenant (INV-15).
//!
//! [`read_archive`] reads an archive front to back and refuses it at the first of: an entry that
//! is not a regular file (links, devices, directories, FIFOs, long-name and PAX extension
//! headers), a name that is not the description
//! or `files/<collection>/<file>` (so no `..`, no absolute path, no other level), a name seen
//! twice, more entries or bytes than the limits or than the description lists, a description
//! that does not verify under the audit key or names another tenant or snapshot, a file whose
//! length or SHA-256 is not the listed one, a listed file missing. It writes nothing: it hands
//! each file's bytes, as they are read, to the caller's sink, and the caller keeps them only in a
//! private staging area (a worker's import, committed only after every check passed).

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::AuditKey;

/// The description's name in an archive (its first entry).
pub const META_NAME: &str = "vaultvec-snapshot.json";
/// Prefix of every file entry's name.
pub const FILES_PREFIX: &str = "files/";
/// The archive format this build writes and reads.
pub const FORMAT: u32 = 1;
/// Most bytes a description may take, whatever the limits.
pub const MAX_META_BYTES: u64 = 32 << 20;

/// Most files and bytes one archive may hold (`[snapshots]` in the config).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most files.
    pub max_files: usize,
    /// Most bytes, all files together.
    pub max_bytes: u64,
}

/// `[snapshots]` as the config file has it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    /// Directory of the snapshot store; default `<data_dir>/snapshots`.
    dir: Option<PathBuf>,
    /// Most files one snapshot may hold; default 100,000.
    max_files: Option<usize>,
    /// Most bytes one snapshot may hold; default 1 TiB.
    max_bytes: Option<u64>,
    /// A snapshot starts only while the store's archives take less than this; default 4 TiB.
    max_total_bytes: Option<u64>,
    /// Snapshots a tenant's owner may keep (taken from the dashboard); default 5.
    max_owner_snapshots: Option<u32>,
}

/// Where snapshots are kept, and how large one may be.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The snapshot store: `<tenant>/<id>.tar`, plus staging directories while one is taken.
    pub dir: PathBuf,
    /// Limits of one archive, checked when it is taken and when it is read.
    pub limits: Limits,
    /// A snapshot starts only while the store's archives take less than this many bytes.
    pub max_total_bytes: u64,
    /// Snapshots taken from the dashboard a tenant may keep.
    pub max_owner_snapshots: u32,
}

impl RawSettings {
    /// The settings, with defaults under `data_dir` (already resolved); a `dir` given is
    /// resolved with `at` (relative to the config file's directory).
    pub fn resolve(
        &self,
        data_dir: &Path,
        at: impl Fn(&Path) -> PathBuf,
    ) -> anyhow::Result<Settings> {
        let max_files = self.max_files.unwrap_or(100_000);
        let max_bytes = self.max_bytes.unwrap_or(1 << 40);
        if !(1..=1_000_000).contains(&max_files) {
            anyhow::bail!("[snapshots] max_files is 1 to 1000000");
        }
        if max_bytes < 1 << 20 {
            anyhow::bail!("[snapshots] max_bytes is at least 1048576");
        }
        let max_owner_snapshots = self.max_owner_snapshots.unwrap_or(5);
        if max_owner_snapshots > 1000 {
            anyhow::bail!("[snapshots] max_owner_snapshots is 0 to 1000");
        }
        Ok(Settings {
            max_total_bytes: self.max_total_bytes.unwrap_or(4 << 40),
            max_owner_snapshots,
            dir: self
                .dir
                .as_deref()
                .map_or_else(|| data_dir.join("snapshots"), at),
            limits: Limits {
                max_files,
                max_bytes,
            },
        })
    }
}

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// `<collection>/<file>`.
    pub path: String,
    /// Length in bytes.
    pub len: u64,
    /// Hex of its SHA-256.
    pub sha256: String,
}

/// What an archive holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// [`FORMAT`].
    pub format: u32,
    /// The snapshot's id.
    pub id: String,
    /// The tenant it is of.
    pub tenant: String,
    /// When it was taken, Unix ms.
    pub created_ms: u64,
    /// The tenant's KEK versions when it was taken (its files' DEKs are wrapped by these).
    pub kek_versions: Vec<u32>,
    /// Every file, in archive order.
    pub files: Vec<FileEntry>,
}

impl Meta {
    /// All files' bytes together.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.len).sum()
    }
}

/// The description as stored: the meta and its signature.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Signed {
    meta: Meta,
    /// Hex of [`AuditKey::sign_snapshot`] over the meta's compact JSON.
    signature: String,
}

/// Why an archive was refused (the message names the entry).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive is malformed or hostile, or not the snapshot expected.
    #[error("snapshot archive refused: {0}")]
    Refused(String),
    /// Reading it failed, or the sink failed.
    #[error("snapshot archive could not be read: {0}")]
    Io(#[from] std::io::Error),
}

fn refused<T>(why: impl Into<String>) -> Result<T, ArchiveError> {
    Err(ArchiveError::Refused(why.into()))
}

/// Checks a file path as a worker lists them, and answers it.
fn check_file_path(path: &str) -> Result<(), ArchiveError> {
    storage::engine::transfer::check_path(path)
        .map(|_| ())
        .map_err(|e| ArchiveError::Refused(e.to_string()))
}

/// Writes an archive of `meta` to `out`, signed with `key`; `open(path)` gives each listed
/// file's bytes in turn, which must be exactly its listed length.
pub fn write_archive<W: Write>(
    out: W,
    meta: &Meta,
    key: &AuditKey,
    mut open: impl FnMut(&str) -> std::io::Result<Box<dyn Read>>,
) -> std::io::Result<W> {
    let bytes = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
    let signed = Signed {
        meta: meta.clone(),
        signature: hex::encode(key.sign_snapshot(&bytes)),
    };
    let description = serde_json::to_vec(&signed).map_err(std::io::Error::other)?;
    let mut builder = tar::Builder::new(out);
    let mtime = meta.created_ms / 1000;
    let header = |len: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(len);
        h.set_mode(0o600);
        h.set_mtime(mtime);
        h
    };
    builder.append_data(
        &mut header(description.len() as u64),
        META_NAME,
        description.as_slice(),
    )?;
    for file in &meta.files {
        let name = format!("{FILES_PREFIX}{}", file.path);
        let reader = open(&file.path)?.take(file.len);
        builder.append_data(&mut header(file.len), name, reader)?;
    }
    builder.into_inner()
}

/// What [`read_archive`] expects of an archive.
pub struct Expect<'a> {
    /// The tenant it must be of.
    pub tenant: &'a str,
    /// Its snapshot id, if known (a stored snapshot's).
    pub id: Option<&'a str>,
}

/// Reads an archive and checks it (see the module docs). The description is checked before any
/// file is read; `sink(file, reader)` is handed each file's bytes in turn (it must read them to
/// the end) and the file is checked after: a refusal after a sink call means the caller discards
/// what its sink kept. Answers the description.
pub fn read_archive<R: Read>(
    input: R,
    key: &AuditKey,
    limits: Limits,
    expect: &Expect<'_>,
    mut sink: impl FnMut(&FileEntry, &mut dyn Read) -> std::io::Result<()>,
) -> Result<Meta, ArchiveError> {
    let mut archive = tar::Archive::new(input);
    // Raw: GNU long names and PAX headers come as entries of their own, which are refused (no
    // name of ours needs them, and the library would read them into memory whatever their size).
    let mut entries = archive.entries()?.raw(true);
    let meta = match entries.next() {
        None => return refused("the archive is empty"),
        Some(entry) => read_meta(entry?, key, limits, expect)?,
    };
    let listed: BTreeMap<&str, &FileEntry> =
        meta.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut seen: HashSet<String> = HashSet::new();
    let mut buf = vec![0u8; 64 << 10];
    for entry in entries {
        let mut entry = entry?;
        if seen.len() >= meta.files.len() {
            return refused(format!(
                "more entries than the {} files the description lists",
                meta.files.len()
            ));
        }
        let name = entry_name(&entry)?;
        check_kind(&entry, &name)?;
        let Some(path) = name.strip_prefix(FILES_PREFIX) else {
            return refused(format!("entry {name:?} is not under {FILES_PREFIX}"));
        };
        check_file_path(path)?;
        let Some(file) = listed.get(path) else {
            return refused(format!("entry {name:?} is not listed in the description"));
        };
        if !seen.insert(path.to_owned()) {
            return refused(format!("entry {name:?} appears twice"));
        }
        if entry.size() != file.len {
            return refused(format!(
                "entry {name:?} holds {} bytes; the description lists {}",
                entry.size(),
                file.len
            ));
        }
        let mut hashing = Hashing {
            inner: &mut entry,
            hasher: Sha256::new(),
            read: 0,
        };
        sink(file, &mut hashing)?;
        // Whatever the sink left is read too: the digest covers the whole entry.
        while hashing.read(&mut buf)? > 0 {}
        let (read, digest) = (hashing.read, hex::encode(hashing.hasher.finalize()));
        if read != file.len {
            return refused(format!(
                "entry {name:?} ended after {read} of its {} bytes",
                file.len
            ));
        }
        if digest != file.sha256 {
            return refused(format!(
                "entry {name:?} does not match its SHA-256 in the description"
            ));
        }
    }
    if seen.len() != meta.files.len() {
        let missing = meta
            .files
            .iter()
            .find(|f| !seen.contains(&f.path))
            .map_or("", |f| f.path.as_str());
        return refused(format!("listed file {missing:?} is not in the archive"));
    }
    Ok(meta)
}

fn entry_name<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, ArchiveError> {
    let raw = entry.path_bytes();
    match std::str::from_utf8(&raw) {
        Ok(name) => Ok(name.to_owned()),
        Err(_) => refused("an entry's name is not UTF-8"),
    }
}

/// Only regular files: no links, devices, FIFOs, directories or sparse files.
fn check_kind<R: Read>(entry: &tar::Entry<'_, R>, name: &str) -> Result<(), ArchiveError> {
    let kind = entry.header().entry_type();
    if kind != tar::EntryType::Regular {
        return refused(format!("entry {name:?} is not a regular file ({kind:?})"));
    }
    if entry.link_name_bytes().is_some_and(|l| !l.is_empty()) {
        return refused(format!("entry {name:?} names a link target"));
    }
    Ok(())
}

fn read_meta<R: Read>(
    mut entry: tar::Entry<'_, R>,
    key: &AuditKey,
    limits: Limits,
    expect: &Expect<'_>,
) -> Result<Meta, ArchiveError> {
    let name = entry_name(&entry)?;
    check_kind(&entry, &name)?;
    if name != META_NAME {
        return refused(format!(
            "the first entry is {name:?}, not the description {META_NAME:?}"
        ));
    }
    let most = MAX_META_BYTES.min(4096 + (limits.max_files as u64).saturating_mul(512));
    if entry.size() > most {
        return refused(format!(
            "the description takes {} bytes; at most {most} are read",
            entry.size()
        ));
    }
    let mut raw = Vec::new();
    (&mut entry).take(most).read_to_end(&mut raw)?;
    let Ok(signed) = serde_json::from_slice::<Signed>(&raw) else {
        return refused("the description is not valid");
    };
    let bytes = serde_json::to_vec(&signed.meta).map_err(std::io::Error::other)?;
    let signature = hex::decode(&signed.signature).unwrap_or_default();
    if !key.verify_snapshot(&bytes, &signature) {
        return refused(
            "the description's signature does not verify (it was changed, or another coordinator wrote it)",
        );
    }
    let meta = signed.meta;
    if meta.format != FORMAT {
        return refused(format!(
            "format {} is not the supported {FORMAT}",
            meta.format
        ));
    }
    if meta.tenant != expect.tenant {
        return refused(format!(
            "it is a snapshot of tenant {}, not of {}",
            meta.tenant, expect.tenant
        ));
    }
    if let Some(id) = expect.id
        && meta.id != id
    {
        return refused(format!("it is snapshot {}, not {id}", meta.id));
    }
    if meta.files.len() > limits.max_files {
        return refused(format!(
            "it lists {} files; at most {} are allowed",
            meta.files.len(),
            limits.max_files
        ));
    }
    let mut total = 0u64;
    let mut paths = HashSet::new();
    for file in &meta.files {
        check_file_path(&file.path)?;
        if !paths.insert(file.path.as_str()) {
            return refused(format!("the description lists {:?} twice", file.path));
        }
        total = total.saturating_add(file.len);
    }
    if total > limits.max_bytes {
        return refused(format!(
            "it holds {total} bytes; at most {} are allowed",
            limits.max_bytes
        ));
    }
    Ok(meta)
}

/// Counts and hashes what is read through it.
struct Hashing<'a> {
    inner: &'a mut dyn Read,
    hasher: Sha256,
    read: u64,
}

impl Read for Hashing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}
