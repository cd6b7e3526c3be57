//! Creating and opening a collection, and removing the debris of interrupted operations.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use parking_lot::{Condvar, Mutex, RwLock};

use super::segment::{self, Segment};
use super::write::Apply;
use super::{Collection, CollectionConfig, Context, Inner, Loc, State, Writer, wal_path};
use crate::disk::{Disk, is_sim_backup};
use crate::filter::Payload;
use crate::ids::{CollectionName, TenantId};
use crate::manifest::{MANIFEST_NAME, Manifest};
use crate::sealed::Incarnation;
use crate::wal::{self, Op, WalWriter};
use crate::{Error, Result};

impl Collection {
    /// Creates a new, empty collection in `dir` (which must not exist).
    pub fn create(
        dir: &Path,
        tenant: &TenantId,
        name: &CollectionName,
        config: CollectionConfig,
        ctx: Context,
    ) -> Result<Collection> {
        config.validate(&ctx.limits)?;
        if dir.exists() {
            return Err(Error::CollectionExists(name.to_string()));
        }
        ctx.disk.create_dir_all(dir).map_err(Error::io(dir))?;
        let manifest = Manifest {
            file_id: 1,
            next_file_id: 2,
            config,
            segments: Vec::new(),
            wals: Vec::new(),
            incarnation: Some(new_incarnation()),
            applied_token: 0,
        };
        manifest.write(
            ctx.disk.as_ref(),
            dir,
            tenant,
            name.as_str(),
            ctx.keys.as_ref(),
        )?;
        Collection::open(dir, tenant, name, ctx)
    }

    /// Opens a collection: reads the manifest, loads sealed segments, replays WAL files.
    pub fn open(
        dir: &Path,
        tenant: &TenantId,
        name: &CollectionName,
        ctx: Context,
    ) -> Result<Collection> {
        let keys = ctx.keys.as_ref();
        if !dir.join(MANIFEST_NAME).exists() {
            return Err(Error::CollectionNotFound(name.to_string()));
        }
        let mut manifest = Manifest::read(dir, tenant, name.as_str(), keys)?;
        let config = manifest.config;
        config.validate(&ctx.limits).map_err(|err| Error::Corrupt {
            path: dir.join(MANIFEST_NAME),
            offset: 0,
            reason: format!("stored configuration is invalid: {err}"),
        })?;
        let max_file_id = remove_debris(ctx.disk.as_ref(), dir, &manifest)?;
        manifest.next_file_id = manifest.next_file_id.max(max_file_id + 1);

        // Sealed segments, with their tombstones; ids map in manifest order.
        let mut next_segment_id = 1u64;
        let loaded: Vec<Result<Segment>> = ctx.pool.install(|| {
            use rayon::prelude::*;
            manifest
                .segments
                .par_iter()
                .enumerate()
                .map(|(i, entry)| {
                    let segment = Segment::load(
                        dir,
                        tenant,
                        name.as_str(),
                        &config,
                        entry.file_id,
                        i as u64 + 1,
                        keys,
                        manifest.incarnation,
                    )?;
                    if segment.len() as u64 != entry.n_points {
                        return Err(Error::Corrupt {
                            path: segment::segment_path(dir, entry.file_id),
                            offset: 0,
                            reason: "segment size differs from the manifest".into(),
                        });
                    }
                    for &slot in &entry.deleted {
                        segment.deleted.insert(slot);
                    }
                    Ok(segment)
                })
                .collect()
        });
        let mut segments = Vec::with_capacity(loaded.len() + 1);
        let mut ids = BTreeMap::new();
        for segment in loaded {
            let segment = Arc::new(segment?);
            next_segment_id = next_segment_id.max(segment.id + 1);
            for (slot, id) in segment.ids.read().iter().enumerate() {
                if segment.deleted.contains(slot as u32) {
                    continue;
                }
                if let Some(old) = ids.insert(
                    id.clone(),
                    Loc {
                        segment: segment.id,
                        slot: slot as u32,
                    },
                ) {
                    // Cannot happen with a consistent manifest; keep the newest copy.
                    let older: &Arc<Segment> = segments
                        .iter()
                        .find(|s: &&Arc<Segment>| s.id == old.segment)
                        .expect("loaded earlier");
                    older.deleted.insert(old.slot);
                }
            }
            segments.push(segment);
        }
        let mutable = Segment::new_mutable(next_segment_id, &config, ctx.limits.segment_points)?;
        segments.push(Arc::new(mutable));
        let inner = Arc::new(Inner {
            tenant: tenant.clone(),
            name: name.clone(),
            dir: dir.to_owned(),
            config,
            incarnation: manifest.incarnation,
            limits: ctx.limits,
            keys: ctx.keys.clone(),
            disk: ctx.disk.clone(),
            pool: ctx.pool.clone(),
            writer: Mutex::new(Writer {
                wal: None,
                manifest: manifest.clone(),
                is_poisoned: false,
                is_dropped: false,
            }),
            queue: Mutex::new(VecDeque::new()),
            maintenance: Mutex::new(()),
            erasing: Mutex::new(()),
            state: RwLock::new(State { segments, ids }),
            next_segment_id: AtomicU64::new(next_segment_id + 1),
            applied_token: AtomicU64::new(manifest.applied_token),
            wake: Condvar::new(),
            wake_lock: Mutex::new(false),
            stop: AtomicBool::new(false),
        });
        // Replay the WAL files, oldest first, into growing segments.
        for &wal_id in &manifest.wals {
            let path = wal_path(dir, wal_id);
            let incarnation = manifest.incarnation;
            let report = wal::replay(
                &path,
                tenant,
                name.as_str(),
                wal_id,
                keys,
                incarnation,
                |ops| {
                    let mut state = inner.state.write();
                    for op in ops {
                        let op = match op {
                            Op::Upsert {
                                id,
                                vector,
                                payload,
                            } => {
                                let payload = payload
                                    .map(|bytes| Payload::decode(&bytes))
                                    .transpose()
                                    .map_err(|err| Error::Corrupt {
                                        path: path.clone(),
                                        offset: 0,
                                        reason: format!("logged payload does not decode: {err}"),
                                    })?;
                                if vector.len() != config.dim {
                                    return Err(Error::Corrupt {
                                        path: path.clone(),
                                        offset: 0,
                                        reason: "logged vector has the wrong dimension".into(),
                                    });
                                }
                                Apply::Upsert {
                                    id,
                                    vector,
                                    payload,
                                }
                            }
                            Op::Delete { id } => Apply::Delete { id },
                            Op::Token(token) => Apply::Token(token),
                        };
                        inner.apply(&mut state, op, wal_id)?;
                    }
                    Ok(())
                },
            )?;
            tracing::info!(tenant = %tenant, collection = %name, wal = wal_id, frames = report.frames, ops = report.ops, "replayed WAL");
            if let Some((offset, bytes)) = report.torn_tail {
                tracing::warn!(tenant = %tenant, collection = %name, wal = wal_id, offset, bytes, "recovered past a torn WAL tail");
            }
        }
        if let Err(err) = inner.consolidate_wals() {
            if !err.is_key_failure() {
                return Err(err);
            }
            tracing::warn!(tenant = %tenant, collection = %name, error = %err, "could not rewrite the WAL files as one for lack of a key; they stay as they are");
        }
        let collection = Collection {
            inner: inner.clone(),
            background: Mutex::new(None),
        };
        let handle = std::thread::Builder::new()
            .name(format!("vv-bg-{}", name))
            .spawn(move || {
                crate::sys::process::idle_background_thread();
                inner.background()
            })
            .map_err(Error::io(dir))?;
        *collection.background.lock() = Some(handle);
        collection.inner.notify();
        Ok(collection)
    }
}

/// Removes files a crash left behind (temporaries, segments and WALs the manifest does not list).
/// Returns the highest file id seen, so new files never reuse one.
pub(super) fn remove_debris(disk: &dyn Disk, dir: &Path, manifest: &Manifest) -> Result<u64> {
    let live: BTreeSet<u64> = manifest
        .segments
        .iter()
        .map(|s| s.file_id)
        .chain(manifest.wals.iter().copied())
        .collect();
    let mut max_id = manifest.file_id;
    let mut removed = false;
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let entry = entry.map_err(Error::io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == MANIFEST_NAME || is_sim_backup(&name) {
            continue;
        }
        let file_id = name
            .strip_prefix("seg-")
            .or_else(|| name.strip_prefix("wal-"))
            .and_then(|id| id.parse::<u64>().ok());
        if let Some(id) = file_id {
            max_id = max_id.max(id);
            if live.contains(&id) {
                continue;
            }
        }
        if name.ends_with(".tmp") || file_id.is_some() {
            tracing::info!(file = %entry.path().display(), "removing debris of an interrupted operation");
            disk.remove_file(&entry.path())
                .map_err(Error::io(entry.path()))?;
            removed = true;
        }
    }
    if removed {
        disk.sync_dir(dir).map_err(Error::io(dir))?;
    }
    Ok(max_id)
}

/// Most WAL files a collection keeps listed when it opens. Each run of a lightly written
/// collection starts a new WAL, and a WAL retires only when the segments it fed are sealed, so
/// without a bound they would pile up with restarts; beyond it, open rewrites them as one.
pub(super) const MAX_WALS_AT_OPEN: usize = 2;

impl Inner {
    /// Rewrites what the listed WAL files hold as one new WAL when there are more than
    /// [`MAX_WALS_AT_OPEN`]: the live points of the unsealed segments, in order, in frames of at
    /// most half the frame limit. Crash-safe like a seal: the new WAL is written and synced,
    /// then a manifest lists it instead of the old ones (and carries every tombstone of the
    /// sealed segments, which the old ones may have carried), then the old ones are removed. The
    /// new WAL stays open for this run's writes. Runs in open, before the background thread.
    fn consolidate_wals(&self) -> Result<()> {
        let mut writer = self.writer.lock();
        if writer.manifest.wals.len() <= MAX_WALS_AT_OPEN {
            return Ok(());
        }
        let old_wals = writer.manifest.wals.clone();
        let state = self.state.read();
        let unsealed: Vec<&Arc<Segment>> = state
            .segments
            .iter()
            .filter(|s| s.file_id().is_none())
            .collect();
        let has_points = unsealed
            .iter()
            .any(|s| (0..s.len() as u32).any(|slot| !s.deleted.contains(slot)));
        let mut wal = None;
        if has_points {
            let mut new = self.create_wal(&mut writer.manifest)?;
            let frame_limit = wal::MAX_FRAME_BYTES / 2;
            let mut ops = Vec::new();
            let mut bytes = 0;
            for segment in &unsealed {
                let ids = segment.ids.read();
                let payloads = segment.payloads.read();
                for slot in 0..segment.len() as u32 {
                    if segment.deleted.contains(slot) {
                        continue;
                    }
                    let vector = segment
                        .vectors
                        .get(slot)
                        .expect("replayed slots are published");
                    let payload = payloads[slot as usize].as_ref().map(Payload::encode);
                    let size = 160 + vector.len() * 4 + payload.as_ref().map_or(0, Vec::len);
                    if bytes + size > frame_limit && !ops.is_empty() {
                        new.append(&ops)?;
                        ops.clear();
                        bytes = 0;
                    }
                    bytes += size;
                    ops.push(Op::Upsert {
                        id: ids[slot as usize].clone(),
                        vector: vector.to_vec(),
                        payload,
                    });
                }
            }
            if !ops.is_empty() {
                new.append(&ops)?;
            }
            wal = Some(new);
        }
        let new_wals: Vec<u64> = wal.iter().map(WalWriter::file_id).collect();
        let segments = Inner::segment_entries(&state, None, None);
        if let Err(err) = self.write_manifest(&mut writer, segments, new_wals.clone()) {
            // Without a key nothing was written, so the new WAL is surely unlisted. After an I/O
            // failure either manifest may be the durable one: both sets of WALs stay, and the
            // next open removes whichever the manifest it reads does not list.
            if err.is_key_failure()
                && let Some(id) = new_wals.first()
            {
                drop(wal);
                let _ = self.disk.remove_file(&wal_path(&self.dir, *id));
            }
            return Err(err);
        }
        for segment in &unsealed {
            let mut wals = segment.wals.lock();
            wals.clear();
            wals.extend(new_wals.iter().copied());
        }
        writer.wal = wal;
        drop((state, writer));
        for wal_id in old_wals {
            let path = wal_path(&self.dir, wal_id);
            if let Err(err) = self.disk.remove_file(&path) {
                tracing::warn!(wal = %path.display(), error = %err, "could not remove a rewritten WAL; it is removed on next open");
            }
        }
        self.disk
            .sync_dir(&self.dir)
            .map_err(Error::io(&self.dir))?;
        tracing::info!(tenant = %self.tenant, collection = %self.name, wals = ?new_wals, "rewrote the WAL files as one");
        Ok(())
    }
}

/// A fresh random incarnation for a new collection.
fn new_incarnation() -> Incarnation {
    let mut incarnation = [0u8; 16];
    crate::crypto::fill_random(&mut incarnation);
    incarnation
}
