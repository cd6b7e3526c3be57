//! The write path: validation, group commit, the WAL and applying to memory.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::segment::Segment;
use super::{Collection, Inner, Limits, Loc, PointInput, State, Writer, check_norm, wal_path};
use crate::crypto::DekContext;
use crate::filter::Payload;
use crate::ids::PointId;
use crate::index::Metric;
use crate::manifest::{Manifest, SegmentEntry};
use crate::wal::{self, Op, WalWriter};
use crate::{Error, Result};

/// One caller's validated write, waiting for the group commit that makes it durable.
pub(super) struct Pending {
    ops: Vec<Op>,
    applies: Vec<Apply>,
    n_upserts: usize,
    bytes: usize,
    done: std::sync::mpsc::SyncSender<Result<()>>,
}

/// Most bytes of operations one group commit gathers from waiting callers.
pub(super) const GROUP_MAX_BYTES: usize = 64 << 20;

/// A typed operation as applied to memory.
pub(super) enum Apply {
    Upsert {
        id: PointId,
        vector: Vec<f32>,
        payload: Option<Payload>,
    },
    Delete {
        id: PointId,
    },
    Token(u64),
}

impl Collection {
    /// Inserts or replaces points. Returns once they are durable in the WAL and visible to search.
    pub fn upsert(&self, points: Vec<PointInput>) -> Result<()> {
        self.upsert_with_token(points, None)
    }

    /// The highest write token applied to this collection (0: none). Tokens of one tenant's
    /// writes are handed out in increasing order, and a caller that asks waits until no write
    /// of the tenant is running, so a token at or below this one was applied.
    pub fn applied_token(&self) -> u64 {
        self.inner.applied_token.load(Ordering::SeqCst)
    }

    /// [`Collection::upsert`], logging `token` (the coordinator's, for an idempotent retry) in the
    /// same WAL frame as the points, so it is durable exactly when they are.
    pub fn upsert_with_token(&self, points: Vec<PointInput>, token: Option<u64>) -> Result<()> {
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
        if let Some(token) = token {
            ops.push(Op::Token(token));
            applies.push(Apply::Token(token));
        }
        inner.log_and_apply(ops, applies)
    }

    /// Deletes points by id; ids that do not exist are ignored. Returns how many distinct ids
    /// existed when the call started (a concurrent write may change that before it applies).
    pub fn delete(&self, ids: &[PointId]) -> Result<u64> {
        self.delete_with_token(ids, None)
    }

    /// [`Collection::delete`], logging `token` with the deletions (see
    /// [`Collection::upsert_with_token`]).
    pub fn delete_with_token(&self, ids: &[PointId], token: Option<u64>) -> Result<u64> {
        check_batch(ids.len(), &self.inner.limits)?;
        let existing = {
            let state = self.inner.state.read();
            let distinct: BTreeSet<&PointId> = ids.iter().collect();
            distinct
                .into_iter()
                .filter(|id| state.ids.contains_key(*id))
                .count() as u64
        };
        let mut ops: Vec<Op> = ids.iter().map(|id| Op::Delete { id: id.clone() }).collect();
        let mut applies: Vec<Apply> = ids
            .iter()
            .map(|id| Apply::Delete { id: id.clone() })
            .collect();
        if let Some(token) = token {
            ops.push(Op::Token(token));
            applies.push(Apply::Token(token));
        }
        self.inner.log_and_apply(ops, applies)?;
        Ok(existing)
    }
}

pub(super) fn check_batch(n: usize, limits: &Limits) -> Result<()> {
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
pub(super) fn tombstone(state: &State, old: Loc, wal_id: u64) {
    if let Some(segment) = state.segment(old.segment) {
        segment.deleted.insert(old.slot);
        if segment.file_id().is_none() {
            segment.wals.lock().insert(wal_id);
        }
    }
}

/// Segments replaced in a manifest: their ids, and the segment and file id that take the place
/// of the first, if any.
pub(super) type Replace<'a> = (&'a [u64], Option<(&'a Segment, u64)>);

impl Inner {
    /// Checks dimension and finiteness; normalises for cosine.
    pub(super) fn check_vector(&self, mut vector: Vec<f32>) -> Result<Vec<f32>> {
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

    /// Makes `ops` durable and applies them, sharing one WAL frame and one fsync with every other
    /// caller waiting at the same time (group commit). Whoever holds the writer lock leads: it takes
    /// the waiting writes in arrival order, logs them as one frame, applies them, and answers each.
    pub(super) fn log_and_apply(&self, ops: Vec<Op>, applies: Vec<Apply>) -> Result<()> {
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
                Op::Token(_) => 9,
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
                    Err(Error::Key(reason)) => Err(Error::Key(reason.clone())),
                    Err(_) => Err(Error::Poisoned(self.name.to_string())),
                };
                let _ = done.send(copy);
            }
        }
    }

    /// Waiting writes for one group commit: oldest first, at least one, bounded so the group fits in
    /// an empty growing segment and a frame.
    pub(super) fn take_group(&self) -> Vec<Pending> {
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

    pub(super) fn log_and_apply_locked(
        &self,
        writer: &mut Writer,
        ops: &[Op],
        applies: Vec<Apply>,
    ) -> Result<()> {
        writer.check_writable(&self.name)?;
        let res = self.log_and_apply_inner(writer, ops, applies);
        // A key failure can only come from starting a WAL, before anything is logged or applied:
        // the write is refused and may be retried, and the collection stays writable.
        if let Err(err) = &res
            && !err.is_user_error()
            && !err.is_key_failure()
        {
            writer.is_poisoned = true;
            tracing::error!(tenant = %self.tenant, collection = %self.name, error = %err, "write failed; collection stops acknowledging writes");
        }
        res
    }

    pub(super) fn log_and_apply_inner(
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
    pub(super) fn apply(&self, state: &mut State, op: Apply, wal_id: u64) -> Result<()> {
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
            Apply::Token(token) => {
                self.applied_token.fetch_max(token, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    pub(super) fn push_new_mutable(&self, state: &mut State) -> Result<()> {
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
    pub(super) fn rotate_segment(&self, writer: &mut Writer, only_if_nonempty: bool) -> Result<()> {
        let mut state = self.state.write();
        if only_if_nonempty && state.mutable().len() == 0 {
            return Ok(());
        }
        self.push_new_mutable(&mut state)?;
        drop(state);
        writer.wal = None;
        Ok(())
    }

    /// Creates an empty WAL file under the manifest's next file id and a new data key; listing
    /// it in the manifest is the caller's.
    pub(super) fn create_wal(&self, manifest: &mut Manifest) -> Result<WalWriter> {
        let file_id = manifest.next_file_id;
        manifest.next_file_id += 1;
        let dek = self.keys.generate_data_key(
            &self.tenant,
            DekContext {
                collection: self.name.as_str(),
                file_id,
            },
        )?;
        WalWriter::create(
            self.disk.as_ref(),
            &wal_path(&self.dir, file_id),
            &self.tenant,
            self.name.as_str(),
            file_id,
            self.config.dim as u32,
            dek,
            self.incarnation,
        )
    }

    /// Creates a new WAL file and lists it in the manifest before any frame is written to it.
    pub(super) fn start_wal(&self, writer: &mut Writer) -> Result<()> {
        let wal = self.create_wal(&mut writer.manifest)?;
        let file_id = wal.file_id();
        let mut wals = writer.manifest.wals.clone();
        wals.push(file_id);
        let segments = Inner::segment_entries(&self.state.read(), None, None);
        if let Err(err) = self.write_manifest(writer, segments, wals) {
            if err.is_key_failure() {
                // Not listed and never written to; a retry starts another one.
                drop(wal);
                let path = wal_path(&self.dir, file_id);
                if let Err(err) = self.disk.remove_file(&path) {
                    tracing::warn!(wal = %path.display(), error = %err, "could not remove an unlisted WAL; it is removed on next open");
                }
            }
            return Err(err);
        }
        writer.wal = Some(wal);
        Ok(())
    }

    /// The manifest's segment list for `state`: every sealed segment with its current tombstones,
    /// plus `sealing` (a segment being sealed, with the file id it gets), with `replace` (the ids
    /// of compacted segments and what replaces them, if anything, at the place of the first)
    /// swapped in.
    pub(super) fn segment_entries(
        state: &State,
        sealing: Option<(&Segment, u64)>,
        replace: Option<Replace<'_>>,
    ) -> Vec<SegmentEntry> {
        let entry = |segment: &Segment, file_id: u64| SegmentEntry {
            file_id,
            n_points: segment.len() as u64,
            deleted: segment.deleted.to_sorted_vec(),
        };
        let mut entries = Vec::with_capacity(state.segments.len());
        let mut replacement = replace.and_then(|(_, new)| new);
        for segment in &state.segments {
            match (segment.file_id(), replace) {
                (Some(_), Some((olds, _))) if olds.contains(&segment.id) => {
                    if let Some((new, file_id)) = replacement.take() {
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
    pub(super) fn write_manifest(
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
            incarnation: self.incarnation,
            applied_token: self.applied_token.load(Ordering::SeqCst),
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
}
