//! One segment in memory: vectors, ids, payloads, tombstones and its HNSW graph.
//!
//! The same type serves the growing (mutable) segment, a full segment waiting to be sealed, and a
//! sealed segment loaded from disk. Only the collection's writer appends, under its lock; searches
//! read the published prefix without locks on the vectors or the graph.
//!
//! A segment file (`seg-<file id>`, a sealed file of kind Segment) has four sections:
//!
//! ```text
//! 1 ids       n point ids, `ids::PointId` encoding, concatenated
//! 2 vectors   n * dim f32 LE, row i = slot i
//! 3 payloads  per slot: len u32 LE (u32::MAX = none), then len bytes of compact JSON
//! 4 graph     `index::Graph::encode`
//! ```

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};
use zeroize::Zeroizing;

use super::CollectionConfig;
use super::bitset::Tombstones;
use crate::crypto::{DekContext, FileOpener, FileSealer, KeyService};
use crate::deadline::Watch;
use crate::disk::Disk;
use crate::filter::{Filter, Payload};
use crate::ids::{PointId, TenantId};
use crate::index::{Graph, Hit, HnswParams, Vectors, exact_search_range};
use crate::sealed::{self, BLOCK_BYTES, FileKind, Header, Incarnation, SealedFile};
use crate::sys::append::AppendVectors;
use crate::{Error, Result};

const IDS: u32 = 1;
const VECTORS: u32 = 2;
const PAYLOADS: u32 = 3;
const GRAPH: u32 = 4;
const NO_PAYLOAD: u32 = u32::MAX;

/// Points sampled to estimate how selective a filter is.
const FILTER_SAMPLE: usize = 256;
/// Calibrates where a filtered search switches from the graph walk to an exact scan of the matching
/// points. A filtered walk costs about `ef / s` distance computations at selectivity `s`, an exact
/// scan about `n * s`; they cross at `s* = sqrt(C * ef / n)`. `C` was fitted where the two costs
/// crossed on wordnet-minilm-384-cosine (n = 163,888, ef = 64: 7.5%) and checked on two synthetic
/// L2 sets it was not fitted to (n = 30,000: measured 13%, predicted 17.5%; and 20-50%, predicted
/// 21%). `cargo bench -p storage --bench engine -- DATASET --filter-sweep` measures it.
pub(crate) const FILTER_EXACT_C: f64 = 14.0;

/// The selectivity at or below which an exact scan beats the filtered graph walk.
pub(crate) fn exact_switch_fraction(n: usize, ef: usize) -> f64 {
    (FILTER_EXACT_C * ef as f64 / n.max(1) as f64)
        .sqrt()
        .min(1.0)
}

/// Graphs up to this many nodes are checked for cut-off nodes (one walk of their level-0 links)
/// each time indexing catches up with the writes; larger ones each time they have grown by an
/// eighth.
const REPAIR_ALWAYS_NODES: usize = 1 << 16;

pub(crate) struct Segment {
    /// Unique within one open collection; the id map refers to segments by it.
    pub(crate) id: u64,
    /// The file id once sealed, 0 before.
    file_id: AtomicU64,
    pub(crate) vectors: AppendVectors,
    pub(crate) ids: RwLock<Vec<PointId>>,
    pub(crate) payloads: RwLock<Vec<Option<Payload>>>,
    pub(crate) deleted: Tombstones,
    pub(crate) graph: Graph,
    /// Slots `0..indexed` are in the graph; the rest are scanned exactly.
    pub(crate) indexed: AtomicUsize,
    /// Nodes in the graph when it was last checked for cut-off nodes (`Graph::repair`).
    repaired: AtomicUsize,
    /// WAL files whose operations went into this segment.
    pub(crate) wals: Mutex<BTreeSet<u64>>,
    /// No more appends: full, and waiting to be sealed (or sealed).
    is_frozen: AtomicBool,
    /// Bytes the ids and payloads of every slot hold in memory ([`slot_memory_bytes`]).
    slot_bytes: AtomicUsize,
}

/// Bytes one slot's id and payload hold in memory: the two vector elements, a string id's bytes,
/// the payload ([`Payload::memory_bytes`]), and the collection's id map entry for it.
fn slot_memory_bytes(id: &PointId, payload: Option<&Payload>) -> usize {
    const ID_MAP_ENTRY: usize = std::mem::size_of::<PointId>() + 16 + 16;
    let id_bytes = match id {
        PointId::Num(_) => 0,
        PointId::Str(s) => 2 * s.len(),
    };
    std::mem::size_of::<PointId>()
        + std::mem::size_of::<Option<Payload>>()
        + ID_MAP_ENTRY
        + id_bytes
        + payload.map_or(0, Payload::memory_bytes)
}

/// Bytes a stored point occupies, the figure a tenant's byte quota counts: its vector (4 bytes a
/// component) and its id and payload as the memory budget counts them ([`slot_memory_bytes`]).
pub fn point_stored_bytes(dim: usize, id: &PointId, payload: Option<&Payload>) -> u64 {
    (dim * std::mem::size_of::<f32>() + slot_memory_bytes(id, payload)) as u64
}

fn params(config: &CollectionConfig) -> HnswParams {
    HnswParams {
        m: config.m,
        ef_construction: config.ef_construction,
    }
}

impl Segment {
    /// An empty growing segment with room for `capacity` points.
    pub(crate) fn new_mutable(
        id: u64,
        config: &CollectionConfig,
        capacity: usize,
    ) -> Result<Segment> {
        let vectors =
            AppendVectors::new(config.dim, capacity).map_err(Error::io("<plaintext arena>"))?;
        Ok(Segment {
            id,
            file_id: AtomicU64::new(0),
            vectors,
            ids: RwLock::new(Vec::new()),
            payloads: RwLock::new(Vec::new()),
            deleted: Tombstones::new(capacity),
            graph: Graph::new(params(config), config.metric, capacity, id),
            indexed: AtomicUsize::new(0),
            repaired: AtomicUsize::new(0),
            wals: Mutex::new(BTreeSet::new()),
            is_frozen: AtomicBool::new(false),
            slot_bytes: AtomicUsize::new(0),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.vectors.len()
    }

    pub(crate) fn file_id(&self) -> Option<u64> {
        match self.file_id.load(Ordering::Acquire) {
            0 => None,
            id => Some(id),
        }
    }

    pub(crate) fn set_sealed(&self, file_id: u64) {
        self.file_id.store(file_id, Ordering::Release);
    }

    pub(crate) fn freeze(&self) {
        self.is_frozen.store(true, Ordering::Release);
    }

    pub(crate) fn is_frozen(&self) -> bool {
        self.is_frozen.load(Ordering::Acquire)
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len() >= self.vectors.capacity()
    }

    pub(crate) fn is_fully_indexed(&self) -> bool {
        self.indexed.load(Ordering::Acquire) >= self.len()
    }

    /// Appends a point. Only the collection's writer calls this. Ids and payloads are pushed before
    /// the vector is published, so any slot a reader can see has both.
    pub(crate) fn push(
        &self,
        id: PointId,
        vector: &[f32],
        payload: Option<Payload>,
    ) -> Option<u32> {
        if self.is_full() || self.is_frozen() {
            return None;
        }
        self.slot_bytes
            .fetch_add(slot_memory_bytes(&id, payload.as_ref()), Ordering::Relaxed);
        self.ids.write().push(id);
        self.payloads.write().push(payload);
        let slot = self.vectors.push(vector);
        debug_assert!(slot.is_some());
        slot
    }

    /// Indexes slots `indexed..target` on the current rayon pool, then publishes the new prefix.
    /// Cut-off nodes are linked back on the way (see the body).
    pub(crate) fn index_up_to(&self, target: usize) {
        use rayon::prelude::*;
        let start = self.indexed.load(Ordering::Acquire);
        let data = self.vectors.published();
        let vectors = Vectors::new(data, self.vectors.dim());
        let target = target.min(vectors.len());
        if target <= start {
            return;
        }
        (start as u32..target as u32)
            .into_par_iter()
            .for_each(|node| self.graph.insert(&vectors, node));
        // Nodes cut off by pruning are linked back (`Graph::repair`, one walk of the graph): once
        // the graph is complete (a frozen segment, before it is sealed or when compaction built
        // it); while it grows, whenever indexing has caught up with the writes, for a graph of
        // up to `REPAIR_ALWAYS_NODES` nodes, and beyond that each time it has grown by an eighth,
        // which keeps the walks' cost linear in the inserts.
        let repaired = self.repaired.load(Ordering::Acquire);
        let grown = target.saturating_sub(repaired);
        let caught_up = target == vectors.len();
        let complete = self.is_frozen() && caught_up;
        if complete
            || grown > repaired / 8
            || (caught_up && grown > 0 && target <= REPAIR_ALWAYS_NODES)
        {
            let linked = self.graph.repair(&vectors);
            if linked > 0 {
                tracing::debug!(linked, "linked cut-off graph nodes back");
            }
            self.repaired.store(target, Ordering::Release);
        }
        self.indexed.store(target, Ordering::Release);
    }

    /// The `k` nearest live points accepted by `filter`, nearest first.
    pub(crate) fn search(
        &self,
        config: &CollectionConfig,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&Filter>,
        watch: &Watch<'_>,
    ) -> Vec<Hit> {
        let data = self.vectors.published();
        let vectors = Vectors::new(data, config.dim);
        let n = vectors.len();
        if n == 0 || k == 0 {
            return Vec::new();
        }
        let payloads = filter.map(|_| self.payloads.read());
        let is_match = |slot: u32| -> bool {
            !self.deleted.contains(slot)
                && match (filter, &payloads) {
                    (Some(filter), Some(payloads)) => {
                        filter.matches(payloads.get(slot as usize).and_then(Option::as_ref))
                    }
                    _ => true,
                }
        };
        // Both watch the deadline; once it has passed the caller discards the hits, so each ends
        // its loop the cheapest way: a scan skips every remaining point, a graph walk accepts
        // every node, which fills its candidate list and ends it within a few steps.
        let accept = |slot: u32| -> bool { !watch.tick() && is_match(slot) };
        let accept_walk = |slot: u32| -> bool { watch.tick() || is_match(slot) };
        let indexed = self.indexed.load(Ordering::Acquire).min(n);
        let is_selective = filter.is_some() && {
            let step = (n / FILTER_SAMPLE).max(1);
            let sampled = n.div_ceil(step);
            let matched = (0..n)
                .step_by(step)
                .filter(|&slot| is_match(slot as u32))
                .count();
            (matched as f64) <= exact_switch_fraction(n, ef) * sampled as f64
        };
        if is_selective || indexed == 0 {
            return exact_search_range(
                &vectors,
                config.metric,
                query,
                k,
                0..n as u32,
                Some(&accept),
            );
        }
        let needs_accept = filter.is_some() || self.deleted.len() > 0;
        let accept_dyn: &dyn Fn(u32) -> bool = &accept_walk;
        let mut hits = self.graph.search(
            &vectors,
            query,
            k,
            ef.max(k),
            needs_accept.then_some(accept_dyn),
        );
        if indexed < n {
            // Acknowledged points the graph does not hold yet; a concurrent insert may have linked
            // some of them already, so drop duplicates.
            let tail = exact_search_range(
                &vectors,
                config.metric,
                query,
                k,
                indexed as u32..n as u32,
                Some(&accept),
            );
            hits.retain(|hit| (hit.node as usize) < indexed);
            hits.extend(tail);
            hits.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.node.cmp(&b.node)));
            hits.truncate(k);
        }
        hits
    }

    /// Writes this segment as `<dir>/seg-<file_id>`.
    #[allow(clippy::too_many_arguments)] // the file's full identity; a struct would only rename them
    pub(crate) fn write_file(
        &self,
        disk: &dyn Disk,
        dir: &Path,
        tenant: &TenantId,
        collection: &str,
        config: &CollectionConfig,
        file_id: u64,
        keys: &dyn KeyService,
        incarnation: Option<&Incarnation>,
    ) -> Result<()> {
        let n = self.len();
        let ids = self.ids.read();
        let payloads = self.payloads.read();
        let mut id_bytes = Zeroizing::new(Vec::with_capacity(n * 9));
        for id in &ids[..n] {
            id.encode_into(&mut id_bytes);
        }
        let mut payload_bytes = Zeroizing::new(Vec::with_capacity(n * 4));
        for payload in &payloads[..n] {
            match payload {
                Some(payload) => {
                    let encoded = Zeroizing::new(payload.encode());
                    payload_bytes.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
                    payload_bytes.extend_from_slice(&encoded);
                }
                None => payload_bytes.extend_from_slice(&NO_PAYLOAD.to_le_bytes()),
            }
        }
        drop((ids, payloads));
        let graph = Zeroizing::new(self.graph.encode());
        let vectors: &[u8] = bytemuck::cast_slice(&self.vectors.published()[..n * config.dim]);
        let (dek, wrapped) = keys.generate_data_key(
            tenant,
            DekContext {
                collection,
                file_id,
            },
        )?;
        let header = Header {
            kind: FileKind::Segment,
            file_id,
            block_bytes: BLOCK_BYTES,
            wrapped_dek: wrapped,
            tenant: tenant.to_string(),
            collection: collection.to_owned(),
            dim: config.dim as u32,
            metric: config.metric.code(),
            n_points: n as u64,
            sections: Vec::new(),
        };
        sealed::write(
            disk,
            &segment_path(dir, file_id),
            header,
            tenant,
            FileSealer::new(dek),
            &[
                (IDS, &id_bytes),
                (VECTORS, vectors),
                (PAYLOADS, &payload_bytes),
                (GRAPH, &graph),
            ],
            incarnation,
        )
    }

    /// Loads and authenticates `<dir>/seg-<file_id>`.
    #[allow(clippy::too_many_arguments)] // the file's full identity; a struct would only rename them
    pub(crate) fn load(
        dir: &Path,
        tenant: &TenantId,
        collection: &str,
        config: &CollectionConfig,
        file_id: u64,
        id: u64,
        keys: &dyn KeyService,
        incarnation: Option<Incarnation>,
    ) -> Result<Segment> {
        let path = segment_path(dir, file_id);
        let file = SealedFile::open(&path, FileKind::Segment, tenant, collection)?
            .bind_incarnation(incarnation);
        let header = file.header();
        let corrupt = |reason: String| Error::Corrupt {
            path: path.clone(),
            offset: 0,
            reason,
        };
        if header.file_id != file_id
            || header.dim as usize != config.dim
            || header.metric != config.metric.code()
        {
            return Err(corrupt("segment header does not match the manifest".into()));
        }
        let n = usize::try_from(header.n_points)
            .map_err(|_| corrupt("point count overflows".into()))?;
        let dek = keys.decrypt_data_key(
            tenant,
            DekContext {
                collection,
                file_id,
            },
            &header.wrapped_dek,
        )?;
        let opener = FileOpener::new(dek);
        let vector_buf = file.read_section(&opener, tenant, VECTORS)?;
        let vectors = AppendVectors::from_buf(vector_buf, config.dim, n)
            .map_err(|_| corrupt("vector section has the wrong length".into()))?;
        let id_buf = file.read_section(&opener, tenant, IDS)?;
        let mut ids = Vec::with_capacity(n);
        let mut at = 0;
        while at < id_buf.len() {
            let (point, used) = PointId::decode(&id_buf.as_bytes()[at..])
                .ok_or_else(|| corrupt(format!("bad point id at {at}")))?;
            ids.push(point);
            at += used;
        }
        if ids.len() != n {
            return Err(corrupt(format!("{} ids for {n} points", ids.len())));
        }
        let payload_buf = file.read_section(&opener, tenant, PAYLOADS)?;
        let payloads = decode_payloads(payload_buf.as_bytes(), n)
            .ok_or_else(|| corrupt("bad payload section".into()))?;
        let graph_buf = file.read_section(&opener, tenant, GRAPH)?;
        let graph = Graph::decode(graph_buf.as_bytes(), params(config), config.metric, n)
            .map_err(|err| corrupt(format!("bad graph: {err}")))?;
        let slot_bytes = ids
            .iter()
            .zip(&payloads)
            .map(|(id, payload)| slot_memory_bytes(id, payload.as_ref()))
            .sum();
        Ok(Segment {
            id,
            file_id: AtomicU64::new(file_id),
            vectors,
            ids: RwLock::new(ids),
            payloads: RwLock::new(payloads),
            deleted: Tombstones::new(n),
            graph,
            indexed: AtomicUsize::new(n),
            repaired: AtomicUsize::new(n),
            wals: Mutex::new(BTreeSet::new()),
            is_frozen: AtomicBool::new(true),
            slot_bytes: AtomicUsize::new(slot_bytes),
        })
    }

    /// Plaintext bytes held: vectors, graph, and the ids and payloads counted by their size.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.vectors.memory_bytes()
            + self.graph.memory_bytes()
            + self.slot_bytes.load(Ordering::Relaxed)
    }

    /// [`point_stored_bytes`] of every point in the segment that is not deleted: every slot's,
    /// less the tombstoned ones' (few, as compaction rewrites segments with many).
    pub(crate) fn live_bytes(&self, dim: usize) -> u64 {
        let ids = self.ids.read();
        let payloads = self.payloads.read();
        let all = (ids.len() * dim * std::mem::size_of::<f32>()
            + self.slot_bytes.load(Ordering::Relaxed)) as u64;
        let deleted: u64 = self
            .deleted
            .to_sorted_vec()
            .into_iter()
            .filter_map(|slot| {
                let slot = slot as usize;
                Some(point_stored_bytes(
                    dim,
                    ids.get(slot)?,
                    payloads.get(slot)?.as_ref(),
                ))
            })
            .sum();
        all.saturating_sub(deleted)
    }

    /// [`point_stored_bytes`] of the point in `slot`.
    pub(crate) fn slot_stored_bytes(&self, slot: u32, dim: usize) -> u64 {
        let (ids, payloads) = (self.ids.read(), self.payloads.read());
        match (ids.get(slot as usize), payloads.get(slot as usize)) {
            (Some(id), Some(payload)) => point_stored_bytes(dim, id, payload.as_ref()),
            _ => 0,
        }
    }
}

fn decode_payloads(buf: &[u8], n: usize) -> Option<Vec<Option<Payload>>> {
    let mut out = Vec::with_capacity(n);
    let mut at = 0usize;
    for _ in 0..n {
        let len = u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len == NO_PAYLOAD {
            out.push(None);
        } else {
            let bytes = buf.get(at..at.checked_add(len as usize)?)?;
            out.push(Some(Payload::decode(bytes).ok()?));
            at += len as usize;
        }
    }
    (at == buf.len()).then_some(out)
}

/// Path of a segment file.
pub(crate) fn segment_path(dir: &Path, file_id: u64) -> std::path::PathBuf {
    dir.join(format!("seg-{file_id}"))
}
