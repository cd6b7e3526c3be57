//! Collections: the API the worker calls.
//!
//! # Write path
//!
//! validate → append one WAL frame and fsync → apply to memory → acknowledge. One writer at a time
//! (the `writer` lock), so memory changes in WAL order. A failed WAL or manifest write poisons the
//! collection: it stops acknowledging writes until reopened (never retry-then-trust). A key the
//! key service does not give is not such a failure: it comes before anything is written, so a
//! write that needs one (to start a WAL) is refused with [`Error::Key`] and may be retried, and
//! background work that needs one waits and retries (100 ms doubling to 10 s).
//!
//! # Segments
//!
//! The growing segment takes appends until it is full, then it is frozen, a new one starts, and writes
//! move to a new WAL file. A background thread indexes new points into the growing segment's graph
//! (searches scan the not-yet-indexed tail exactly, so an acknowledged point is visible at once), seals
//! frozen segments to `seg-<id>` files, compacts sealed segments with many deleted points, and
//! merges small sealed segments (under half of `segment_points` live points) into one. Each
//! segment records which WAL files fed it points or tombstones; a WAL is retired once every segment it
//! fed is sealed. A collection opened with more than two WAL files rewrites them as one, so
//! restarts of a lightly written collection (whose segment never fills) do not pile them up.
//!
//! # Durability
//!
//! The durable state is the manifest (sealed segments, their tombstones, live WAL files) plus the WAL
//! files it lists. Every manifest write snapshots all tombstones, so retiring a WAL never loses a
//! delete it carried. Files not listed in the manifest are debris of an interrupted operation and are
//! removed on open; no acknowledged write is ever only in such a file.
//!
//! # Files
//!
//! `mod.rs` holds the types and the small public API, `open.rs` creation, opening and debris
//! removal, `write.rs` the write path (validation, group commit, the WAL, applying to memory),
//! `background.rs` indexing, sealing, compaction, the checkpoint at close and key re-wraps,
//! `query.rs` the reads, `purge.rs` erasure (delete, then rewrite every file that held the points).

mod background;
mod bitset;
mod config;
mod open;
mod purge;
mod query;
mod segment;
mod write;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};

pub use config::{CollectionConfig, Limits, MAX_DIM};
pub use purge::Purged;
use segment::Segment;
pub use segment::point_stored_bytes;
use write::Pending;

use crate::crypto::KeyService;
use crate::disk::Disk;
use crate::filter::{Filter, Payload};
use crate::ids::{CollectionName, PointId, TenantId};
use crate::manifest::Manifest;
use crate::sealed::Incarnation;
use crate::wal::WalWriter;
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

struct Inner {
    tenant: TenantId,
    name: CollectionName,
    dir: PathBuf,
    config: CollectionConfig,
    /// From the manifest; bound into every segment and WAL this collection writes or reads.
    incarnation: Option<Incarnation>,
    limits: Limits,
    keys: Arc<dyn KeyService>,
    disk: Arc<dyn Disk>,
    pool: Arc<rayon::ThreadPool>,
    writer: Mutex<Writer>,
    /// Held for the whole of a seal, a compaction or a key re-wrap, so a re-wrap never overlaps a
    /// file being written under a DEK from the KEK it is replacing. Taken before `writer`.
    maintenance: Mutex<()>,
    /// Held for the whole of an erasure ([`Collection::erase_matching`]): one at a time.
    erasing: Mutex<()>,
    /// Validated writes waiting for a group commit, oldest first.
    queue: Mutex<VecDeque<Pending>>,
    state: RwLock<State>,
    next_segment_id: AtomicU64,
    /// The highest write token applied (`wal::Op::Token`): from the manifest, raised by every
    /// logged token (replayed or live), written into every manifest.
    applied_token: AtomicU64,
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
    /// The collection's configuration.
    pub fn config(&self) -> &CollectionConfig {
        &self.inner.config
    }

    /// The collection's name.
    pub fn name(&self) -> &CollectionName {
        &self.inner.name
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
    /// For tests, benchmarks and orderly shutdown; searches never need it. While the key service
    /// is away, sealing waits for it, and so does this.
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
                !busy
                    && self.inner.compaction_candidate(&state).is_none()
                    && self.inner.merge_candidates(&state).is_empty()
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
        // Every file is replaced whole, so a re-wrap cut short by the key service leaves each
        // file under the old or the new KEK, and running it again completes it.
        if let Err(err) = &res
            && !err.is_key_failure()
        {
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

pub(super) fn wal_path(dir: &Path, file_id: u64) -> PathBuf {
    dir.join(format!("wal-{file_id}"))
}

impl Inner {
    pub(super) fn notify(&self) {
        let mut flag = self.wake_lock.lock();
        *flag = true;
        self.wake.notify_all();
    }

    pub(super) fn matches(&self, state: &State, loc: Loc, filter: Option<&Filter>) -> bool {
        let Some(filter) = filter else { return true };
        let Some(segment) = state.segment(loc.segment) else {
            return false;
        };
        let payloads = segment.payloads.read();
        filter.matches(payloads.get(loc.slot as usize).and_then(Option::as_ref))
    }

    pub(super) fn record(
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
}
