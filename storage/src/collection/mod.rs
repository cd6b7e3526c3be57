//! Collections: the API the worker calls.
//!
//! # Write path
//!
//! validate → append one WAL frame and fsync → apply to memory → acknowledge. One writer at a time
//! (the `writer` lock), so memory changes in WAL order. A failed WAL or manifest write poisons the
//! collection: it stops acknowledging writes until reopened (never retry-then-trust).
//!
//! # Segments
//!
//! The growing segment takes appends until it is full, then it is frozen, a new one starts, and writes
//! move to a new WAL file. A background thread indexes new points into the growing segment's graph
//! (searches scan the not-yet-indexed tail exactly, so an acknowledged point is visible at once), seals
//! frozen segments to `seg-<id>` files, and compacts sealed segments with many deleted points. Each
//! segment records which WAL files fed it points or tombstones; a WAL is retired once every segment it
//! fed is sealed.
//!
//! # Durability
//!
//! The durable state is the manifest (sealed segments, their tombstones, live WAL files) plus the WAL
//! files it lists. Every manifest write snapshots all tombstones, so retiring a WAL never loses a
//! delete it carried. Files not listed in the manifest are debris of an interrupted operation and are
//! removed on open; no acknowledged write is ever only in such a file.

mod bitset;
mod config;
mod query;
mod segment;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};

pub use config::{CollectionConfig, Limits, MAX_DIM};
use segment::Segment;
pub use segment::point_stored_bytes;

use crate::crypto::{DekContext, KeyService};
use crate::disk::{Disk, is_sim_backup};
use crate::filter::{Filter, Payload};
use crate::ids::{CollectionName, PointId, TenantId};
use crate::index::Metric;
use crate::manifest::{MANIFEST_NAME, Manifest, SegmentEntry};
use crate::sealed::{FileKind, SealedFile};
use crate::wal::{self, Op, WalWriter};
use crate::{Error, Result};

/// Largest squared length of a stored or query vector under `l2` and `dot`. With both vectors
/// within it, `|a - b|^2 <= 2|a|^2 + 2|b|^2` and `|a . b| <= |a||b|` stay below `f32::MAX`, so no
/// distance overflows to infinity (cosine normalises vectors, so it needs no bound).
pub const MAX_SQUARED_NORM: f64 = f32::MAX as f64 / 4.0;

/// Refuses a vector whose distances to other admissible vectors could overflow f32.
pub fn check_norm(vector: &[f32]) -> Result<()> {
    let squared: f64 = vector.iter().map(|x| f64::from(*x) * f64::from(*x)).sum();
    if squared > MAX_SQUARED_NORM {
        return Err(Error::invalid(format!(
            "vector is too long: its squared length {squared:.3e} exceeds {MAX_SQUARED_NORM:.3e}, \
             beyond which distances overflow 32-bit floats"
        )));
    }
    Ok(())
}

/// A sealed segment with at least this fraction of its points deleted is compacted.
pub const COMPACT_DELETED_FRACTION: f64 = 0.3;

/// A point to upsert.
#[derive(Debug, Clone, PartialEq)]
pub struct PointInput {
    /// The point's id.
    pub id: PointId,
    /// The vector; exactly the collection's dimension, finite.
    pub vector: Vec<f32>,
    /// Optional payload.
    pub payload: Option<Payload>,
}

/// A stored point as returned by get and scroll.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The point's id.
    pub id: PointId,
    /// The payload, when asked for.
    pub payload: Option<Payload>,
    /// The vector (normalised for cosine), when asked for.
    pub vector: Option<Vec<f32>>,
}

/// A search result.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredPoint {
    /// The point's id.
    pub id: PointId,
    /// Distance under the collection's metric: cosine `1 - cos`, dot `-a·b`, l2 squared. Smaller is nearer.
    pub distance: f32,
    /// The payload, when asked for.
    pub payload: Option<Payload>,
    /// The vector, when asked for.
    pub vector: Option<Vec<f32>>,
}

/// One search.
#[derive(Debug, Clone, Default)]
pub struct SearchRequest {
    /// The query vector.
    pub vector: Vec<f32>,
    /// How many results, 1..=`Limits::max_top_k`.
    pub top_k: usize,
    /// Candidate list size; the collection's default when `None`.
    pub ef: Option<usize>,
    /// Only points whose payload matches.
    pub filter: Option<Filter>,
    /// Return payloads.
    pub with_payload: bool,
    /// Return vectors.
    pub with_vector: bool,
}

/// A page of a scroll.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrollPage {
    /// Points in id order.
    pub points: Vec<Record>,
    /// Where the next page starts, if there is one.
    pub next: Option<PointId>,
}

/// Figures about a collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionInfo {
    /// Its configuration.
    pub config: CollectionConfig,
    /// Live points.
    pub points: u64,
    /// Segments in memory (sealed, waiting to be sealed, growing).
    pub segments: usize,
    /// Of those, sealed.
    pub sealed_segments: usize,
    /// Points acknowledged but not yet in a graph.
    pub unindexed_points: u64,
    /// Plaintext bytes in memory (estimate).
    pub memory_bytes: u64,
    /// Bytes the live points occupy ([`point_stored_bytes`] summed), what a byte quota counts.
    pub stored_bytes: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Loc {
    segment: u64,
    slot: u32,
}

struct State {
    /// Oldest first; the last one is the growing segment.
    segments: Vec<Arc<Segment>>,
    ids: BTreeMap<PointId, Loc>,
}

impl State {
    fn mutable(&self) -> &Arc<Segment> {
        self.segments
            .last()
            .expect("a collection always has a growing segment")
    }

    fn segment(&self, id: u64) -> Option<&Arc<Segment>> {
        self.segments.iter().find(|segment| segment.id == id)
    }
}

struct Writer {
    wal: Option<WalWriter>,
    manifest: Manifest,
    is_poisoned: bool,
    /// Set by [`Collection::mark_dropped`]: the directory is being removed, and a collection of
    /// the same name may be created there next, so nothing may be written any more.
    is_dropped: bool,
}

impl Writer {
    /// Refuses a write after a failed fsync or once the collection was dropped.
    fn check_writable(&self, name: &CollectionName) -> Result<()> {
        if self.is_dropped {
            return Err(Error::Dropped(name.to_string()));
        }
        if self.is_poisoned {
            return Err(Error::Poisoned(name.to_string()));
        }
        Ok(())
    }
}

/// One caller's validated write, waiting for the group commit that makes it durable.
struct Pending {
    ops: Vec<Op>,
    applies: Vec<Apply>,
    n_upserts: usize,
    bytes: usize,
    done: std::sync::mpsc::SyncSender<Result<()>>,
}

/// Most bytes of operations one group commit gathers from waiting callers.
const GROUP_MAX_BYTES: usize = 64 << 20;

/// A typed operation as applied to memory.
enum Apply {
    Upsert {
        id: PointId,
        vector: Vec<f32>,
        payload: Option<Payload>,
    },
    Delete {
        id: PointId,
    },
}

struct Inner {
    tenant: TenantId,
    name: CollectionName,
    dir: PathBuf,
    config: CollectionConfig,
    limits: Limits,
    keys: Arc<dyn KeyService>,
    disk: Arc<dyn Disk>,
    pool: Arc<rayon::ThreadPool>,
    writer: Mutex<Writer>,
    /// Held for the whole of a seal, a compaction or a key re-wrap, so a re-wrap never overlaps a
    /// file being written under a DEK from the KEK it is replacing. Taken before `writer`.
    maintenance: Mutex<()>,
    /// Validated writes waiting for a group commit, oldest first.
    queue: Mutex<VecDeque<Pending>>,
    state: RwLock<State>,
    next_segment_id: AtomicU64,
    wake: Condvar,
    wake_lock: Mutex<bool>,
    stop: AtomicBool,
}

/// An open collection. Dropping it stops its background work; plaintext is zeroized when the last
/// search holding a segment finishes.
pub struct Collection {
    inner: Arc<Inner>,
    background: Mutex<Option<JoinHandle<()>>>,
}

/// Everything a collection needs from its engine.
#[derive(Clone)]
pub struct Context {
    /// The key service for this tenant's DEKs.
    pub keys: Arc<dyn KeyService>,
    /// Where writes go.
    pub disk: Arc<dyn Disk>,
    /// Request and sizing limits.
    pub limits: Limits,
    /// Threads for indexing, sealing and compaction.
    pub pool: Arc<rayon::ThreadPool>,
}

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
            state: RwLock::new(State { segments, ids }),
            next_segment_id: AtomicU64::new(next_segment_id + 1),
            wake: Condvar::new(),
            wake_lock: Mutex::new(false),
            stop: AtomicBool::new(false),
        });
        // Replay the WAL files, oldest first, into growing segments.
        for &wal_id in &manifest.wals {
            let path = wal_path(dir, wal_id);
            let report = wal::replay(&path, tenant, name.as_str(), wal_id, keys, |ops| {
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
                    };
                    inner.apply(&mut state, op, wal_id)?;
                }
                Ok(())
            })?;
            tracing::info!(tenant = %tenant, collection = %name, wal = wal_id, frames = report.frames, ops = report.ops, "replayed WAL");
            if let Some((offset, bytes)) = report.torn_tail {
                tracing::warn!(tenant = %tenant, collection = %name, wal = wal_id, offset, bytes, "recovered past a torn WAL tail");
            }
        }
        let collection = Collection {
            inner: inner.clone(),
            background: Mutex::new(None),
        };
        let handle = std::thread::Builder::new()
            .name(format!("vv-bg-{}", name))
            .spawn(move || inner.background())
            .map_err(Error::io(dir))?;
        *collection.background.lock() = Some(handle);
        collection.inner.notify();
        Ok(collection)
    }

    /// The collection's configuration.
    pub fn config(&self) -> &CollectionConfig {
        &self.inner.config
    }

    /// The collection's name.
    pub fn name(&self) -> &CollectionName {
        &self.inner.name
    }

    /// Inserts or replaces points. Returns once they are durable in the WAL and visible to search.
    pub fn upsert(&self, points: Vec<PointInput>) -> Result<()> {
        let inner = &self.inner;
        check_batch(points.len(), &inner.limits)?;
        let mut ops = Vec::with_capacity(points.len());
        let mut applies = Vec::with_capacity(points.len());
        for point in points {
            let vector = inner.check_vector(point.vector)?;
            let payload_bytes = match &point.payload {
                Some(payload) => {
                    let bytes = payload.encode();
                    if bytes.len() > inner.limits.max_payload_bytes {
                        return Err(Error::PayloadTooLarge {
                            size: bytes.len(),
                            limit: inner.limits.max_payload_bytes,
                        });
                    }
                    Some(bytes)
                }
                None => None,
            };
            ops.push(Op::Upsert {
                id: point.id.clone(),
                vector: vector.clone(),
                payload: payload_bytes,
            });
            applies.push(Apply::Upsert {
                id: point.id,
                vector,
                payload: point.payload,
            });
        }
        inner.log_and_apply(ops, applies)
    }

    /// Deletes points by id; ids that do not exist are ignored. Returns how many distinct ids
    /// existed when the call started (a concurrent write may change that before it applies).
    pub fn delete(&self, ids: &[PointId]) -> Result<u64> {
        check_batch(ids.len(), &self.inner.limits)?;
        let existing = {
            let state = self.inner.state.read();
            let distinct: BTreeSet<&PointId> = ids.iter().collect();
            distinct
                .into_iter()
                .filter(|id| state.ids.contains_key(*id))
                .count() as u64
        };
        let ops: Vec<Op> = ids.iter().map(|id| Op::Delete { id: id.clone() }).collect();
        let applies = ids
            .iter()
            .map(|id| Apply::Delete { id: id.clone() })
            .collect();
        self.inner.log_and_apply(ops, applies)?;
        Ok(existing)
    }

    /// Figures about the collection.
    pub fn info(&self) -> CollectionInfo {
        let state = self.inner.state.read();
        CollectionInfo {
            config: self.inner.config,
            points: state.ids.len() as u64,
            segments: state.segments.len(),
            sealed_segments: state
                .segments
                .iter()
                .filter(|s| s.file_id().is_some())
                .count(),
            unindexed_points: state
                .segments
                .iter()
                .map(|s| s.len().saturating_sub(s.indexed.load(Ordering::Acquire)) as u64)
                .sum(),
            memory_bytes: state.segments.iter().map(|s| s.memory_bytes() as u64).sum(),
            stored_bytes: (state.segments.iter())
                .map(|s| s.live_bytes(self.inner.config.dim))
                .sum(),
        }
    }

    /// Of `ids` (each counted once), how many are stored and the bytes they occupy
    /// ([`point_stored_bytes`]), read under one lock: what an upsert of them replaces.
    pub fn stored_bytes_of(&self, ids: &[PointId]) -> (u64, u64) {
        let state = self.inner.state.read();
        let distinct: BTreeSet<&PointId> = ids.iter().collect();
        let locs = distinct.into_iter().filter_map(|id| state.ids.get(id));
        locs.fold((0, 0), |(n, bytes), loc| {
            let of = state
                .segment(loc.segment)
                .map_or(0, |s| s.slot_stored_bytes(loc.slot, self.inner.config.dim));
            (n + 1, bytes + of)
        })
    }

    /// Blocks until every acknowledged point is in a graph and every full segment is sealed.
    /// For tests, benchmarks and orderly shutdown; searches never need it.
    pub fn wait_idle(&self) -> Result<()> {
        loop {
            {
                let writer = self.inner.writer.lock();
                if writer.is_poisoned {
                    return Err(Error::Poisoned(self.inner.name.to_string()));
                }
            }
            let is_idle = {
                let state = self.inner.state.read();
                let busy = state
                    .segments
                    .iter()
                    .any(|s| !s.is_fully_indexed() || (s.is_frozen() && s.file_id().is_none()));
                !busy && self.inner.compaction_candidate(&state).is_none()
            };
            if is_idle {
                return Ok(());
            }
            self.inner.notify();
            let mut flag = self.inner.wake_lock.lock();
            self.inner
                .wake
                .wait_for(&mut flag, Duration::from_millis(5));
        }
    }

    /// Freezes the growing segment (if it holds points) so the background thread seals it.
    pub fn flush(&self) -> Result<()> {
        let mut writer = self.inner.writer.lock();
        self.inner.rotate_segment(&mut writer, true)?;
        drop(writer);
        self.inner.notify();
        self.wait_idle()
    }

    /// Re-wraps the DEK of every file of this collection under the tenant's current KEK, without
    /// re-encrypting data. Safe to interrupt and re-run: each file is replaced atomically, and files
    /// under the old and the new KEK both open until the caller destroys the old one.
    pub fn rewrap_keys(&self) -> Result<()> {
        let inner = &self.inner;
        // Waits for a seal or compaction in flight: its new file must be re-wrapped too before the
        // caller may destroy the old KEK.
        let _maintenance = inner.maintenance.lock();
        let mut writer = inner.writer.lock();
        writer.check_writable(&inner.name)?;
        let res = inner.rewrap_locked(&mut writer);
        if res.is_err() {
            writer.is_poisoned = true;
        }
        res
    }

    /// Writes waiting for a group commit (for tests).
    #[cfg(test)]
    pub(crate) fn queued_writes(&self) -> usize {
        self.inner.queue.lock().len()
    }

    /// [`Collection::close`], then seals the growing segment if it holds at least
    /// `limits.checkpoint_points` points and all of them are in its graph: the next open then
    /// reads the graph from the sealed file instead of rebuilding it from the WAL (about 35 s for
    /// 164k points of 384 dimensions, measured). A segment still being indexed stays in the WAL. A failure is logged; the
    /// WAL still holds every acknowledged write.
    pub fn checkpoint_and_close(&self) {
        self.close();
        if let Err(err) = self.inner.checkpoint() {
            tracing::warn!(tenant = %self.inner.tenant, collection = %self.inner.name, error = %err, "sealing the growing segment at close failed; the WAL is replayed on next open");
        }
    }

    /// Makes the collection refuse every write from now on (its directory is about to be removed),
    /// waiting for a write in progress, then stops background work. A handle a request still holds
    /// can then never write into a new collection created under the same name.
    pub fn mark_dropped(&self) {
        self.inner.writer.lock().is_dropped = true;
        self.close();
    }

    /// Stops background work and waits for it. Also done on drop.
    pub fn close(&self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.notify();
        if let Some(handle) = self.background.lock().take() {
            let _ = handle.join();
        }
    }
}

impl std::fmt::Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Collection({}/{})", self.inner.tenant, self.inner.name)
    }
}

impl Drop for Collection {
    fn drop(&mut self) {
        self.close();
    }
}

fn check_batch(n: usize, limits: &Limits) -> Result<()> {
    if n == 0 || n > limits.max_batch {
        return Err(Error::invalid(format!(
            "a batch holds 1..={} items, got {n}",
            limits.max_batch
        )));
    }
    Ok(())
}

/// Marks a slot deleted by an operation logged in `wal_id`. An unsealed segment's tombstones are
/// durable only in the WAL files that carried them, so the segment keeps that WAL from retiring
/// until it is sealed (the seal's manifest then holds the tombstone).
fn tombstone(state: &State, old: Loc, wal_id: u64) {
    if let Some(segment) = state.segment(old.segment) {
        segment.deleted.insert(old.slot);
        if segment.file_id().is_none() {
            segment.wals.lock().insert(wal_id);
        }
    }
}

fn wal_path(dir: &Path, file_id: u64) -> PathBuf {
    dir.join(format!("wal-{file_id}"))
}

/// Removes files a crash left behind (temporaries, segments and WALs the manifest does not list).
/// Returns the highest file id seen, so new files never reuse one.
fn remove_debris(disk: &dyn Disk, dir: &Path, manifest: &Manifest) -> Result<u64> {
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

impl Inner {
    fn notify(&self) {
        let mut flag = self.wake_lock.lock();
        *flag = true;
        self.wake.notify_all();
    }

    /// Checks dimension and finiteness; normalises for cosine.
    fn check_vector(&self, mut vector: Vec<f32>) -> Result<Vec<f32>> {
        if vector.len() != self.config.dim {
            return Err(Error::DimensionMismatch {
                expected: self.config.dim,
                got: vector.len(),
            });
        }
        if let Some(position) = vector.iter().position(|x| !x.is_finite()) {
            return Err(Error::NonFiniteVector { position });
        }
        if self.config.metric != Metric::Cosine {
            check_norm(&vector)?;
        }
        if self.config.metric == Metric::Cosine {
            let norm = vector
                .iter()
                .map(|x| f64::from(*x) * f64::from(*x))
                .sum::<f64>()
                .sqrt();
            if norm == 0.0 || !norm.is_finite() {
                return Err(Error::invalid(
                    "a zero vector has no direction, so cosine distance is undefined",
                ));
            }
            for x in &mut vector {
                *x = (f64::from(*x) / norm) as f32;
            }
        }
        Ok(vector)
    }

    fn matches(&self, state: &State, loc: Loc, filter: Option<&Filter>) -> bool {
        let Some(filter) = filter else { return true };
        let Some(segment) = state.segment(loc.segment) else {
            return false;
        };
        let payloads = segment.payloads.read();
        filter.matches(payloads.get(loc.slot as usize).and_then(Option::as_ref))
    }

    fn record(
        &self,
        state: &State,
        id: PointId,
        loc: Loc,
        with_payload: bool,
        with_vector: bool,
    ) -> Record {
        let segment = state
            .segment(loc.segment)
            .expect("the id map points at a listed segment");
        let payload = with_payload
            .then(|| segment.payloads.read()[loc.slot as usize].clone())
            .flatten();
        let vector = with_vector
            .then(|| segment.vectors.get(loc.slot).map(<[f32]>::to_vec))
            .flatten();
        Record {
            id,
            payload,
            vector,
        }
    }

    /// Makes `ops` durable and applies them, sharing one WAL frame and one fsync with every other
    /// caller waiting at the same time (group commit). Whoever holds the writer lock leads: it takes
    /// the waiting writes in arrival order, logs them as one frame, applies them, and answers each.
    fn log_and_apply(&self, ops: Vec<Op>, applies: Vec<Apply>) -> Result<()> {
        let (done, answer) = std::sync::mpsc::sync_channel(1);
        let n_upserts = applies
            .iter()
            .filter(|a| matches!(a, Apply::Upsert { .. }))
            .count();
        let bytes = ops
            .iter()
            .map(|op| match op {
                Op::Upsert {
                    vector, payload, ..
                } => 160 + vector.len() * 4 + payload.as_ref().map_or(0, Vec::len),
                Op::Delete { .. } => 140,
            })
            .sum();
        if bytes > wal::MAX_FRAME_BYTES / 2 {
            return Err(Error::invalid(format!(
                "a write of about {bytes} bytes is over the {} byte limit",
                wal::MAX_FRAME_BYTES / 2
            )));
        }
        self.queue.lock().push_back(Pending {
            ops,
            applies,
            n_upserts,
            bytes,
            done,
        });
        let mut writer = self.writer.lock();
        loop {
            if let Ok(res) = answer.try_recv() {
                return res;
            }
            let group = self.take_group();
            if group.is_empty() {
                // Another leader took our write; its answer is on the way.
                drop(writer);
                return answer
                    .recv()
                    .unwrap_or_else(|_| Err(Error::Poisoned(self.name.to_string())));
            }
            let mut ops = Vec::new();
            let mut applies = Vec::new();
            let mut answers = Vec::with_capacity(group.len());
            for pending in group {
                ops.extend(pending.ops);
                applies.extend(pending.applies);
                answers.push(pending.done);
            }
            let res = self.log_and_apply_locked(&mut writer, &ops, applies);
            for done in answers {
                let copy = match &res {
                    Ok(()) => Ok(()),
                    Err(Error::Dropped(name)) => Err(Error::Dropped(name.clone())),
                    Err(err) if err.is_user_error() => Err(Error::invalid(err.to_string())),
                    Err(_) => Err(Error::Poisoned(self.name.to_string())),
                };
                let _ = done.send(copy);
            }
        }
    }

    /// Waiting writes for one group commit: oldest first, at least one, bounded so the group fits in
    /// an empty growing segment and a frame.
    fn take_group(&self) -> Vec<Pending> {
        let mut queue = self.queue.lock();
        let mut group = Vec::new();
        let (mut n_upserts, mut bytes) = (0, 0);
        while let Some(next) = queue.front() {
            let fits = n_upserts + next.n_upserts <= self.limits.segment_points
                && bytes + next.bytes <= GROUP_MAX_BYTES;
            if !group.is_empty() && !fits {
                break;
            }
            n_upserts += next.n_upserts;
            bytes += next.bytes;
            group.push(queue.pop_front().expect("front exists"));
        }
        group
    }

    fn log_and_apply_locked(
        &self,
        writer: &mut Writer,
        ops: &[Op],
        applies: Vec<Apply>,
    ) -> Result<()> {
        writer.check_writable(&self.name)?;
        let res = self.log_and_apply_inner(writer, ops, applies);
        if let Err(err) = &res
            && !err.is_user_error()
        {
            writer.is_poisoned = true;
            tracing::error!(tenant = %self.tenant, collection = %self.name, error = %err, "write failed; collection stops acknowledging writes");
        }
        res
    }

    fn log_and_apply_inner(
        &self,
        writer: &mut Writer,
        ops: &[Op],
        applies: Vec<Apply>,
    ) -> Result<()> {
        let n_upserts = applies
            .iter()
            .filter(|a| matches!(a, Apply::Upsert { .. }))
            .count();
        {
            let state = self.state.read();
            let mutable = state.mutable();
            if mutable.len() + n_upserts > self.limits.segment_points {
                drop(state);
                self.rotate_segment(writer, false)?;
            }
        }
        if writer
            .wal
            .as_ref()
            .is_none_or(|wal| wal.len() >= self.limits.wal_bytes)
        {
            self.start_wal(writer)?;
        }
        let wal = writer.wal.as_mut().expect("started above");
        wal.append(ops)?;
        let wal_id = wal.file_id();
        let mut state = self.state.write();
        for apply in applies {
            self.apply(&mut state, apply, wal_id)?;
        }
        drop(state);
        self.notify();
        Ok(())
    }

    /// Applies one operation to memory. Called in WAL order only.
    fn apply(&self, state: &mut State, op: Apply, wal_id: u64) -> Result<()> {
        match op {
            Apply::Upsert {
                id,
                vector,
                payload,
            } => {
                if let Some(old) = state.ids.get(&id).copied() {
                    tombstone(state, old, wal_id);
                }
                if state.mutable().is_full() {
                    // Only during replay: live writes rotate before they log.
                    self.push_new_mutable(state)?;
                }
                let mutable = state.mutable().clone();
                let slot = mutable
                    .push(id.clone(), &vector, payload)
                    .ok_or_else(|| Error::invalid("growing segment refused a point"))?;
                mutable.wals.lock().insert(wal_id);
                state.ids.insert(
                    id,
                    Loc {
                        segment: mutable.id,
                        slot,
                    },
                );
            }
            Apply::Delete { id } => {
                if let Some(old) = state.ids.remove(&id) {
                    tombstone(state, old, wal_id);
                }
            }
        }
        Ok(())
    }

    fn push_new_mutable(&self, state: &mut State) -> Result<()> {
        state.mutable().freeze();
        let id = self.next_segment_id.fetch_add(1, Ordering::Relaxed);
        state.segments.push(Arc::new(Segment::new_mutable(
            id,
            &self.config,
            self.limits.segment_points,
        )?));
        Ok(())
    }

    /// Freezes the growing segment and starts a new one; later writes go to a new WAL file, so the
    /// frozen segment's WAL files can retire when it is sealed.
    fn rotate_segment(&self, writer: &mut Writer, only_if_nonempty: bool) -> Result<()> {
        let mut state = self.state.write();
        if only_if_nonempty && state.mutable().len() == 0 {
            return Ok(());
        }
        self.push_new_mutable(&mut state)?;
        drop(state);
        writer.wal = None;
        Ok(())
    }

    /// Creates a new WAL file and lists it in the manifest before any frame is written to it.
    fn start_wal(&self, writer: &mut Writer) -> Result<()> {
        let file_id = writer.manifest.next_file_id;
        writer.manifest.next_file_id += 1;
        let dek = self.keys.generate_data_key(
            &self.tenant,
            DekContext {
                collection: self.name.as_str(),
                file_id,
            },
        )?;
        let wal = WalWriter::create(
            self.disk.as_ref(),
            &wal_path(&self.dir, file_id),
            &self.tenant,
            self.name.as_str(),
            file_id,
            self.config.dim as u32,
            dek,
        )?;
        let mut wals = writer.manifest.wals.clone();
        wals.push(file_id);
        let segments = Inner::segment_entries(&self.state.read(), None, None);
        self.write_manifest(writer, segments, wals)?;
        writer.wal = Some(wal);
        Ok(())
    }

    /// The manifest's segment list for `state`: every sealed segment with its current tombstones,
    /// plus `sealing` (a segment being sealed, with the file id it gets), with `replace` (a compacted
    /// segment's id and what replaces it, if anything) swapped in.
    fn segment_entries(
        state: &State,
        sealing: Option<(&Segment, u64)>,
        replace: Option<(u64, Option<(&Segment, u64)>)>,
    ) -> Vec<SegmentEntry> {
        let entry = |segment: &Segment, file_id: u64| SegmentEntry {
            file_id,
            n_points: segment.len() as u64,
            deleted: segment.deleted.to_sorted_vec(),
        };
        let mut entries = Vec::with_capacity(state.segments.len());
        for segment in &state.segments {
            match (segment.file_id(), replace) {
                (Some(_), Some((old, new))) if old == segment.id => {
                    if let Some((new, file_id)) = new {
                        entries.push(entry(new, file_id));
                    }
                }
                (Some(file_id), _) => entries.push(entry(segment, file_id)),
                (None, _) => {
                    if let Some((new, file_id)) = sealing.filter(|(s, _)| s.id == segment.id) {
                        entries.push(entry(new, file_id));
                    }
                }
            }
        }
        entries
    }

    /// Writes a new manifest (new file id, new DEK) listing `segments` and `wals`.
    fn write_manifest(
        &self,
        writer: &mut Writer,
        segments: Vec<SegmentEntry>,
        wals: Vec<u64>,
    ) -> Result<()> {
        let file_id = writer.manifest.next_file_id;
        let manifest = Manifest {
            file_id,
            next_file_id: file_id + 1,
            config: self.config,
            segments,
            wals,
        };
        manifest.write(
            self.disk.as_ref(),
            &self.dir,
            &self.tenant,
            self.name.as_str(),
            self.keys.as_ref(),
        )?;
        writer.manifest = manifest;
        Ok(())
    }

    fn background(self: Arc<Self>) {
        while !self.stop.load(Ordering::Acquire) {
            let res = self.background_step();
            match res {
                Ok(true) => continue,
                Ok(false) => {}
                Err(err) => {
                    tracing::error!(tenant = %self.tenant, collection = %self.name, error = %err, "background work failed; collection stops acknowledging writes");
                    self.writer.lock().is_poisoned = true;
                    self.notify();
                }
            }
            let mut flag = self.wake_lock.lock();
            if !*flag && !self.stop.load(Ordering::Acquire) {
                self.wake.wait_for(&mut flag, Duration::from_millis(500));
            }
            *flag = false;
        }
    }

    /// One unit of background work. Returns whether there may be more.
    fn background_step(&self) -> Result<bool> {
        if self.writer.lock().check_writable(&self.name).is_err() {
            return Ok(false);
        }
        let segments = self.state.read().segments.clone();
        // 1. Index what is acknowledged but not in a graph, oldest segment first, in slices so
        //    that sealing and shutdown are not held up by a huge backlog.
        for segment in &segments {
            if !segment.is_fully_indexed() {
                let start = segment.indexed.load(Ordering::Acquire);
                let target = (start + 8192).min(segment.len());
                self.pool.install(|| segment.index_up_to(target));
                return Ok(true);
            }
        }
        // 2. Seal frozen segments, oldest first.
        if let Some(frozen) = segments
            .iter()
            .find(|s| s.is_frozen() && s.file_id().is_none())
        {
            if frozen.len() == 0 {
                self.retire_empty(frozen)?;
            } else {
                self.seal(frozen)?;
            }
            return Ok(true);
        }
        // 3. Compact one sealed segment with many deleted points.
        let candidate = self.compaction_candidate(&self.state.read());
        if let Some(segment) = candidate {
            self.compact(&segment)?;
            return Ok(true);
        }
        self.notify_waiters();
        Ok(false)
    }

    /// The sealing half of [`Collection::checkpoint_and_close`]; the background thread must be
    /// stopped.
    fn checkpoint(&self) -> Result<()> {
        {
            let mut writer = self.writer.lock();
            if writer.check_writable(&self.name).is_err() {
                return Ok(());
            }
            let state = self.state.read();
            let mutable = state.mutable();
            if mutable.len() < self.limits.checkpoint_points.max(1) || !mutable.is_fully_indexed() {
                return Ok(());
            }
            drop(state);
            self.rotate_segment(&mut writer, true)?;
        }
        // Oldest first, as the background thread does; one not yet fully indexed stops the rest.
        let frozen: Vec<Arc<Segment>> = self
            .state
            .read()
            .segments
            .iter()
            .filter(|s| s.is_frozen() && s.file_id().is_none())
            .cloned()
            .collect();
        for segment in frozen {
            if !segment.is_fully_indexed() {
                break;
            }
            if segment.len() == 0 {
                self.retire_empty(&segment)?;
            } else {
                self.seal(&segment)?;
            }
        }
        Ok(())
    }

    fn notify_waiters(&self) {
        self.wake.notify_all();
    }

    fn compaction_candidate(&self, state: &State) -> Option<Arc<Segment>> {
        state
            .segments
            .iter()
            .filter(|s| s.file_id().is_some() && s.len() > 0)
            .find(|s| s.deleted.len() as f64 >= COMPACT_DELETED_FRACTION * s.len() as f64)
            .cloned()
    }

    /// Listed WAL files that no unsealed segment other than `sealing` was fed from and that the
    /// writer no longer appends to. Their upserts are all in sealed segments (or `sealing`), and
    /// their deletes are in the tombstones of the manifest that retires them.
    fn retirable_wals(&self, writer: &Writer, state: &State, sealing: &Segment) -> Vec<u64> {
        let mut in_use: BTreeSet<u64> = BTreeSet::new();
        for segment in &state.segments {
            if segment.id != sealing.id && segment.file_id().is_none() {
                in_use.extend(segment.wals.lock().iter().copied());
            }
        }
        if let Some(wal) = &writer.wal {
            in_use.insert(wal.file_id());
        }
        writer
            .manifest
            .wals
            .iter()
            .copied()
            .filter(|id| !in_use.contains(id))
            .collect()
    }

    /// Drops a frozen segment that received no points.
    fn retire_empty(&self, frozen: &Arc<Segment>) -> Result<()> {
        let _writer = self.writer.lock();
        self.state.write().segments.retain(|s| s.id != frozen.id);
        Ok(())
    }

    /// Takes the next file id. It becomes durable with the next manifest; if that never happens,
    /// the id is not reused anyway, since open starts above every id found on disk.
    fn allocate_file_id(&self) -> u64 {
        let mut writer = self.writer.lock();
        let id = writer.manifest.next_file_id;
        writer.manifest.next_file_id += 1;
        id
    }

    /// Writes `segment` as `seg-<file_id>` in this collection's directory.
    fn write_segment(&self, segment: &Segment, file_id: u64) -> Result<()> {
        segment.write_file(
            self.disk.as_ref(),
            &self.dir,
            &self.tenant,
            self.name.as_str(),
            &self.config,
            file_id,
            self.keys.as_ref(),
        )
    }

    fn seal(&self, frozen: &Arc<Segment>) -> Result<()> {
        let _maintenance = self.maintenance.lock();
        let file_id = self.allocate_file_id();
        self.write_segment(frozen, file_id)?;
        let retired = {
            let mut writer = self.writer.lock();
            writer.check_writable(&self.name)?;
            self.rewrap_segment_file(file_id)?;
            let state = self.state.read();
            let retired = self.retirable_wals(&writer, &state, frozen);
            let wals: Vec<u64> = writer
                .manifest
                .wals
                .iter()
                .copied()
                .filter(|id| !retired.contains(id))
                .collect();
            let segments = Inner::segment_entries(&state, Some((frozen, file_id)), None);
            self.write_manifest(&mut writer, segments, wals)?;
            frozen.set_sealed(file_id);
            retired
        };
        for wal_id in retired {
            let path = wal_path(&self.dir, wal_id);
            if let Err(err) = self.disk.remove_file(&path) {
                tracing::warn!(wal = %path.display(), error = %err, "could not remove a retired WAL; it is removed on next open");
            }
        }
        self.disk
            .sync_dir(&self.dir)
            .map_err(Error::io(&self.dir))?;
        tracing::debug!(tenant = %self.tenant, collection = %self.name, segment = file_id, points = frozen.len(), "sealed segment");
        Ok(())
    }

    fn compact(&self, old: &Arc<Segment>) -> Result<()> {
        let _maintenance = self.maintenance.lock();
        let old_file = old.file_id().expect("only sealed segments are compacted");
        let live: Vec<u32> = (0..old.len() as u32)
            .filter(|slot| !old.deleted.contains(*slot))
            .collect();
        let id = self.next_segment_id.fetch_add(1, Ordering::Relaxed);
        let new = Arc::new(Segment::new_mutable(id, &self.config, live.len().max(1))?);
        {
            let ids = old.ids.read();
            let payloads = old.payloads.read();
            for &slot in &live {
                let vector = old.vectors.get(slot).expect("sealed slots are published");
                new.push(
                    ids[slot as usize].clone(),
                    vector,
                    payloads[slot as usize].clone(),
                );
            }
        }
        new.freeze();
        self.pool.install(|| new.index_up_to(new.len()));
        let file_id = self.allocate_file_id();
        if !live.is_empty() {
            self.write_segment(&new, file_id)?;
        }
        {
            let mut writer = self.writer.lock();
            writer.check_writable(&self.name)?;
            if !live.is_empty() {
                self.rewrap_segment_file(file_id)?;
            }
            let state = self.state.upgradable_read();
            // Deletes that happened while the copy was built carry over.
            for (new_slot, &old_slot) in live.iter().enumerate() {
                if old.deleted.contains(old_slot) {
                    new.deleted.insert(new_slot as u32);
                }
            }
            let wals = writer.manifest.wals.clone();
            let replacement = (!live.is_empty()).then_some((new.as_ref(), file_id));
            let segments = Inner::segment_entries(&state, None, Some((old.id, replacement)));
            self.write_manifest(&mut writer, segments, wals)?;
            let mut state = parking_lot::RwLockUpgradableReadGuard::upgrade(state);
            if !live.is_empty() {
                new.set_sealed(file_id);
                let ids = new.ids.read();
                for (new_slot, &old_slot) in live.iter().enumerate() {
                    let loc = state.ids.get_mut(&ids[new_slot]);
                    if let Some(loc) = loc
                        && *loc
                            == (Loc {
                                segment: old.id,
                                slot: old_slot,
                            })
                    {
                        *loc = Loc {
                            segment: new.id,
                            slot: new_slot as u32,
                        };
                    }
                }
                drop(ids);
                let position = state
                    .segments
                    .iter()
                    .position(|s| s.id == old.id)
                    .expect("old segment listed");
                state.segments[position] = new.clone();
            } else {
                state.segments.retain(|s| s.id != old.id);
            }
        }
        let path = segment::segment_path(&self.dir, old_file);
        self.disk.remove_file(&path).map_err(Error::io(&path))?;
        self.disk
            .sync_dir(&self.dir)
            .map_err(Error::io(&self.dir))?;
        tracing::debug!(tenant = %self.tenant, collection = %self.name, from = old_file, to = file_id, live = live.len(), "compacted segment");
        Ok(())
    }

    /// Re-wraps a segment file's DEK under the tenant's current KEK if it is under an older one.
    ///
    /// Seal and compaction write their file outside the writer lock and call this under it, just
    /// before listing the file: a re-wrap that ran meanwhile could not see the unlisted file, and
    /// must not leave it under a KEK the caller is about to destroy.
    fn rewrap_segment_file(&self, file_id: u64) -> Result<()> {
        let current = self.keys.current_kek_version(&self.tenant)?;
        let collection = self.name.as_str();
        let path = segment::segment_path(&self.dir, file_id);
        let file = SealedFile::open(&path, FileKind::Segment, &self.tenant, collection)?;
        if file.header().wrapped_dek.kek_version != current {
            let ctx = DekContext {
                collection,
                file_id,
            };
            let wrapped =
                self.keys
                    .rewrap_data_key(&self.tenant, ctx, &file.header().wrapped_dek)?;
            file.rewrite_key(self.disk.as_ref(), wrapped)?;
        }
        Ok(())
    }

    fn rewrap_locked(&self, writer: &mut Writer) -> Result<()> {
        let current = self.keys.current_kek_version(&self.tenant)?;
        // New writes go to a WAL under the new KEK.
        if writer.wal.as_ref().is_some() {
            writer.wal = None;
        }
        let collection = self.name.as_str();
        for entry in writer.manifest.segments.clone() {
            self.rewrap_segment_file(entry.file_id)?;
        }
        for wal_id in writer.manifest.wals.clone() {
            let path = wal_path(&self.dir, wal_id);
            wal::rewrite_key(
                self.disk.as_ref(),
                &path,
                &self.tenant,
                collection,
                wal_id,
                self.keys.as_ref(),
                current,
            )?;
        }
        // A new manifest, under a new DEK wrapped by the current KEK.
        let segments = Inner::segment_entries(&self.state.read(), None, None);
        let wals = writer.manifest.wals.clone();
        self.write_manifest(writer, segments, wals)
    }
}
