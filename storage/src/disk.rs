//! All writes to persistent storage go through [`Disk`], so tests can inject faults and simulate
//! power loss ([`SimDisk`]). Reads use `std::fs` and memory maps directly: after a simulated crash,
//! what is on disk is the truth.
//!
//! Files are only ever appended to (WAL) or written once and renamed into place (segments,
//! manifests, key files), so the write interface is just `create`, `append`, `sync`, `rename`,
//! `remove_file` and `sync_dir`. Files are created 0600 and directories 0700 (`FILE_MODE`,
//! `DIR_MODE`): they are ciphertext, but their names, sizes and times are the tenant's business.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::{Error, Result};

/// A filesystem for writing.
pub trait Disk: Send + Sync {
    /// Creates a new file for appending; fails if it exists.
    fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>>;
    /// Renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates a directory and its parents, durably.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
}

/// A file open for appending.
pub trait DiskFile: Send {
    /// Appends `bytes` at the end.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (`fdatasync`).
    fn sync(&mut self) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> u64;
    /// Whether nothing was written.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdDisk;

struct StdFile {
    file: File,
    len: u64,
}

impl DiskFile for StdFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn len(&self) -> u64 {
        self.len
    }
}

impl Disk for StdDisk {
    fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(path)?;
        Ok(Box::new(StdFile { file, len: 0 }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        create_private_dirs(dir)?;
        // Make each new level durable in its parent.
        let mut level = dir;
        while let Some(parent) = level.parent() {
            if parent.as_os_str().is_empty() {
                break;
            }
            File::open(parent)?.sync_all()?;
            if parent.join(".").exists() && level != dir {
                break;
            }
            level = parent;
        }
        Ok(())
    }
}

/// The mode of every file storage creates: readable by the owner only (less under a stricter umask).
pub const FILE_MODE: u32 = 0o600;
/// The mode of every directory storage creates.
pub const DIR_MODE: u32 = 0o700;

/// `create_dir_all` with [`DIR_MODE`] for every level it creates (existing levels keep theirs).
fn create_private_dirs(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// fsyncs a directory on the real filesystem.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    StdDisk.sync_dir(dir).map_err(Error::io(dir))
}

/// Replaces `path` with `bytes` atomically: write a temporary file, fsync, rename, fsync the directory.
pub fn write_atomic(disk: &dyn Disk, path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_parts(disk, path, &[bytes])
}

/// As [`write_atomic`], with the content given in parts.
pub fn write_atomic_parts(disk: &dyn Disk, path: &Path, parts: &[&[u8]]) -> Result<()> {
    let tmp = tmp_path(path);
    let dir = path.parent().unwrap_or(Path::new("."));
    // A temporary file left by an earlier crash is garbage.
    if tmp.exists() {
        disk.remove_file(&tmp).map_err(Error::io(&tmp))?;
    }
    let mut file = disk.create(&tmp).map_err(Error::io(&tmp))?;
    for part in parts {
        file.append(part).map_err(Error::io(&tmp))?;
    }
    file.sync().map_err(Error::io(&tmp))?;
    drop(file);
    disk.rename(&tmp, path).map_err(Error::io(path))?;
    disk.sync_dir(dir).map_err(Error::io(dir))?;
    Ok(())
}

/// The temporary name used while `path` is being written.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// A [`Disk`] over the real filesystem that can fail on the n-th operation and simulate power loss.
///
/// Power loss model, applied by [`SimDisk::crash`]: bytes appended since a file's last `sync` are
/// lost (or, with `torn`, a prefix of them survives followed by garbage); directory operations
/// (create, rename, remove) since the directory's last `sync_dir` are undone. After the injected
/// fault every further operation fails, as if the process had died at that point.
#[derive(Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
}

#[derive(Default)]
struct SimState {
    ops: u64,
    fail_at: Option<u64>,
    is_dead: bool,
    synced_len: HashMap<PathBuf, u64>,
    /// Directory operations not yet made durable, oldest first.
    pending: Vec<PendingDirOp>,
    backups: u64,
}

enum PendingDirOp {
    Create(PathBuf),
    Rename {
        from: PathBuf,
        to: PathBuf,
        replaced: Option<PathBuf>,
    },
    Remove {
        path: PathBuf,
        backup: PathBuf,
    },
}

impl PendingDirOp {
    fn dir(&self) -> &Path {
        let path = match self {
            PendingDirOp::Create(path) => path,
            PendingDirOp::Rename { to, .. } => to,
            PendingDirOp::Remove { path, .. } => path,
        };
        path.parent().unwrap_or(Path::new("."))
    }
}

fn injected() -> io::Error {
    io::Error::other("injected fault (simulated crash)")
}

impl SimDisk {
    /// A disk that never fails until told to.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// Fails operation number `n` (0-based, counting every call) and every one after it.
    pub fn fail_at(&self, n: u64) {
        self.state.lock().fail_at = Some(n);
    }

    /// Operations performed so far.
    pub fn ops(&self) -> u64 {
        self.state.lock().ops
    }

    /// Whether the injected fault has fired.
    pub fn is_dead(&self) -> bool {
        self.state.lock().is_dead
    }

    fn step(&self) -> io::Result<()> {
        let mut state = self.state.lock();
        if state.is_dead {
            return Err(injected());
        }
        let n = state.ops;
        state.ops += 1;
        if state.fail_at == Some(n) {
            state.is_dead = true;
            return Err(injected());
        }
        Ok(())
    }

    fn backup_name(state: &mut SimState, path: &Path) -> PathBuf {
        state.backups += 1;
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".simdisk-backup-{}", state.backups));
        path.with_file_name(name)
    }

    /// Simulates power loss: undoes everything not made durable. With `torn`, each file's unsynced
    /// tail keeps half of its bytes and the last of those is flipped, as a torn sector would.
    /// Afterwards the disk works again, for the recovery that follows.
    pub fn crash(&self, torn: bool) -> io::Result<()> {
        let mut state = self.state.lock();
        // Undo directory operations newest first.
        while let Some(op) = state.pending.pop() {
            match op {
                PendingDirOp::Create(path) => {
                    let _ = std::fs::remove_file(&path);
                    state.synced_len.remove(&path);
                }
                PendingDirOp::Rename { from, to, replaced } => {
                    if to.exists() {
                        std::fs::rename(&to, &from)?;
                    }
                    SimDisk::rebase(&mut state, &to, &from);
                    if let Some(backup) = replaced {
                        std::fs::rename(&backup, &to)?;
                        let len = std::fs::metadata(&to)?.len();
                        state.synced_len.insert(to, len);
                    }
                }
                PendingDirOp::Remove { path, backup } => {
                    std::fs::rename(&backup, &path)?;
                    let len = std::fs::metadata(&path)?.len();
                    state.synced_len.insert(path, len);
                }
            }
        }
        for (path, synced) in &state.synced_len {
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            if meta.len() > *synced {
                let file = OpenOptions::new().write(true).open(path)?;
                if torn {
                    let keep = *synced + (meta.len() - *synced) / 2;
                    file.set_len(keep)?;
                    if keep > *synced {
                        let mut bytes = std::fs::read(path)?;
                        let last = bytes.len() - 1;
                        bytes[last] ^= 0x5a;
                        std::fs::write(path, &bytes)?;
                    }
                } else {
                    file.set_len(*synced)?;
                }
            }
        }
        state.is_dead = false;
        state.fail_at = None;
        Ok(())
    }

    /// Moves the synced lengths of `from` and, when it is a directory, of every file under it, to
    /// their names under `to`: a renamed directory's files keep their unsynced tails.
    fn rebase(state: &mut SimState, from: &Path, to: &Path) {
        let moved: Vec<PathBuf> = state
            .synced_len
            .keys()
            .filter(|path| path.starts_with(from))
            .cloned()
            .collect();
        for path in moved {
            let len = state.synced_len.remove(&path).expect("listed");
            let rest = path.strip_prefix(from).expect("under from");
            let new = if rest.as_os_str().is_empty() {
                to.to_owned()
            } else {
                to.join(rest)
            };
            state.synced_len.insert(new, len);
        }
    }

    /// Drops backups of replaced and removed files that are no longer needed. Called by `sync_dir`.
    fn settle(state: &mut SimState, dir: &Path) {
        let mut kept = Vec::new();
        for op in state.pending.drain(..) {
            if op.dir() == dir {
                match op {
                    PendingDirOp::Rename {
                        replaced: Some(backup),
                        ..
                    }
                    | PendingDirOp::Remove { backup, .. } => {
                        let _ = std::fs::remove_file(backup);
                    }
                    _ => {}
                }
            } else {
                kept.push(op);
            }
        }
        state.pending = kept;
    }
}

struct SimFile {
    disk: SimDisk,
    path: PathBuf,
    inner: StdFile,
}

impl DiskFile for SimFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.disk.step()?;
        self.inner.append(bytes)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.disk.step()?;
        self.inner.sync()?;
        self.disk
            .state
            .lock()
            .synced_len
            .insert(self.path.clone(), self.inner.len);
        Ok(())
    }
    fn len(&self) -> u64 {
        self.inner.len
    }
}

impl Disk for SimDisk {
    fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        self.step()?;
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(path)?;
        let mut state = self.state.lock();
        state.synced_len.insert(path.to_owned(), 0);
        state.pending.push(PendingDirOp::Create(path.to_owned()));
        drop(state);
        Ok(Box::new(SimFile {
            disk: self.clone(),
            path: path.to_owned(),
            inner: StdFile { file, len: 0 },
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step()?;
        let mut state = self.state.lock();
        let replaced = if to.exists() {
            let backup = SimDisk::backup_name(&mut state, to);
            std::fs::hard_link(to, &backup)?;
            Some(backup)
        } else {
            None
        };
        std::fs::rename(from, to)?;
        SimDisk::rebase(&mut state, from, to);
        state.pending.push(PendingDirOp::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
            replaced,
        });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.step()?;
        let mut state = self.state.lock();
        let backup = SimDisk::backup_name(&mut state, path);
        std::fs::rename(path, &backup)?;
        state.synced_len.remove(path);
        state.pending.push(PendingDirOp::Remove {
            path: path.to_owned(),
            backup,
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.step()?;
        File::open(dir)?.sync_all()?;
        SimDisk::settle(&mut self.state.lock(), dir);
        Ok(())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.step()?;
        create_private_dirs(dir)
    }
}

/// Names in `dir` that a `SimDisk` uses for its own bookkeeping, which readers must skip.
pub fn is_sim_backup(name: &str) -> bool {
    name.contains(".simdisk-backup-")
}
