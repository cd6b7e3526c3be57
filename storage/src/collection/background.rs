//! Background work: indexing, sealing, compaction, the checkpoint at close and key re-wraps.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::segment::{self, Segment};
use super::{COMPACT_DELETED_FRACTION, Inner, Loc, State, Writer, wal_path};
use crate::crypto::DekContext;
use crate::sealed::{FileKind, SealedFile};
use crate::wal;
use crate::{Error, Result};

/// The first wait before background work retries after the key service failed to give a key.
pub(super) const KEY_RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest such wait; each failure in a row doubles it up to this.
pub(super) const KEY_RETRY_MAX: Duration = Duration::from_secs(10);

/// What one background step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing was left to do.
    Idle,
    /// It indexed points; there may be more.
    Indexed,
    /// It sealed, retired or compacted a segment; there may be more.
    Maintained,
}

impl Inner {
    /// The background thread: runs steps until stopped. A step that fails for lack of a key (the
    /// key service is away) is retried after a wait that doubles from [`KEY_RETRY_FIRST`] to
    /// [`KEY_RETRY_MAX`]; nothing it did is listed yet, so nothing is lost, and writes go on to
    /// the open WAL meanwhile. Any other failure is a fault of the disk or the data and poisons.
    pub(super) fn background(self: Arc<Self>) {
        let mut retry: Option<Duration> = None;
        while !self.stop.load(Ordering::Acquire) {
            match self.background_step() {
                Ok(Step::Indexed) => continue,
                Ok(Step::Maintained) => {
                    retry = None;
                    continue;
                }
                Ok(Step::Idle) => retry = None,
                Err(err) if err.is_key_failure() => {
                    let wait = retry.map_or(KEY_RETRY_FIRST, |wait| (wait * 2).min(KEY_RETRY_MAX));
                    retry = Some(wait);
                    tracing::warn!(tenant = %self.tenant, collection = %self.name, error = %err, retry_in_ms = wait.as_millis() as u64, "background work could not get a key; retrying");
                    self.pause(wait);
                    continue;
                }
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

    /// Waits `wait`, or less if the collection is closed meanwhile. Writes do not cut it short:
    /// they wake the thread on every write, which would retry the key service at their pace.
    fn pause(&self, wait: Duration) {
        let until = std::time::Instant::now() + wait;
        let mut flag = self.wake_lock.lock();
        while !self.stop.load(Ordering::Acquire) && std::time::Instant::now() < until {
            self.wake.wait_until(&mut flag, until);
        }
        *flag = false;
    }

    /// One unit of background work.
    pub(super) fn background_step(&self) -> Result<Step> {
        if self.writer.lock().check_writable(&self.name).is_err() {
            return Ok(Step::Idle);
        }
        let segments = self.state.read().segments.clone();
        // 1. Index what is acknowledged but not in a graph, oldest segment first, in slices so
        //    that sealing and shutdown are not held up by a huge backlog.
        for segment in &segments {
            if !segment.is_fully_indexed() {
                let start = segment.indexed.load(Ordering::Acquire);
                let target = (start + 8192).min(segment.len());
                self.pool.install(|| segment.index_up_to(target));
                return Ok(Step::Indexed);
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
            return Ok(Step::Maintained);
        }
        // 3. Compact one sealed segment with many deleted points.
        let candidate = self.compaction_candidate(&self.state.read());
        if let Some(segment) = candidate {
            self.compact(&[segment])?;
            return Ok(Step::Maintained);
        }
        // 4. Merge small sealed segments.
        let small = self.merge_candidates(&self.state.read());
        if !small.is_empty() {
            self.compact(&small)?;
            return Ok(Step::Maintained);
        }
        self.notify_waiters();
        Ok(Step::Idle)
    }

    /// The sealing half of [`Collection::checkpoint_and_close`]; the background thread must be
    /// stopped.
    pub(super) fn checkpoint(&self) -> Result<()> {
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

    pub(super) fn notify_waiters(&self) {
        self.wake.notify_all();
    }

    /// Small sealed segments to merge into one: those with fewer than half of
    /// `Limits::segment_points` live points, smallest first, as many as fit in one segment; empty
    /// unless at least two fit. Once none is left to merge, at most one sealed segment is small
    /// (two small ones always fit together), so there are at most `2 * live / segment_points + 1`
    /// sealed segments besides those waiting for compaction.
    pub(super) fn merge_candidates(&self, state: &State) -> Vec<Arc<Segment>> {
        let limit = self.limits.segment_points;
        let live = |s: &Arc<Segment>| s.len().saturating_sub(s.deleted.len());
        let mut small: Vec<&Arc<Segment>> = state
            .segments
            .iter()
            .filter(|s| s.file_id().is_some() && live(s) < limit / 2)
            .collect();
        small.sort_by_key(|s| live(s));
        let mut chosen = Vec::new();
        let mut total = 0;
        for segment in small {
            if total + live(segment) > limit {
                break;
            }
            total += live(segment);
            chosen.push(segment.clone());
        }
        if chosen.len() < 2 {
            chosen.clear();
        }
        chosen
    }

    pub(super) fn compaction_candidate(&self, state: &State) -> Option<Arc<Segment>> {
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
    pub(super) fn retirable_wals(
        &self,
        writer: &Writer,
        state: &State,
        sealing: &Segment,
    ) -> Vec<u64> {
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
    pub(super) fn retire_empty(&self, frozen: &Arc<Segment>) -> Result<()> {
        let _writer = self.writer.lock();
        self.state.write().segments.retain(|s| s.id != frozen.id);
        Ok(())
    }

    /// Takes the next file id. It becomes durable with the next manifest; if that never happens,
    /// the id is not reused anyway, since open starts above every id found on disk.
    pub(super) fn allocate_file_id(&self) -> u64 {
        let mut writer = self.writer.lock();
        let id = writer.manifest.next_file_id;
        writer.manifest.next_file_id += 1;
        id
    }

    /// Writes `segment` as `seg-<file_id>` in this collection's directory.
    pub(super) fn write_segment(&self, segment: &Segment, file_id: u64) -> Result<()> {
        segment.write_file(
            self.disk.as_ref(),
            &self.dir,
            &self.tenant,
            self.name.as_str(),
            &self.config,
            file_id,
            self.keys.as_ref(),
            self.incarnation.as_ref(),
        )
    }

    pub(super) fn seal(&self, frozen: &Arc<Segment>) -> Result<()> {
        let _maintenance = self.maintenance.lock();
        let file_id = self.allocate_file_id();
        self.write_segment(frozen, file_id)?;
        let retired = {
            let mut writer = self.writer.lock();
            writer.check_writable(&self.name)?;
            self.rewrap_segment_file(file_id)
                .inspect_err(|err| self.discard_unlisted(file_id, err))?;
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
            self.write_manifest(&mut writer, segments, wals)
                .inspect_err(|err| self.discard_unlisted(file_id, err))?;
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

    /// Replaces sealed segments `olds` (one with many deleted points, or several small ones) by
    /// one new segment holding their live points, or by nothing if none is live. Crash-safe: the
    /// new file is written and synced, then one manifest lists it instead of the old ones, then
    /// the old files are removed. Answers false, doing nothing, when another compaction
    /// replaced one of `olds` first (the background thread and an erasure both compact).
    pub(super) fn compact(&self, olds: &[Arc<Segment>]) -> Result<bool> {
        let _maintenance = self.maintenance.lock();
        {
            let state = self.state.read();
            let listed = |old: &Arc<Segment>| state.segments.iter().any(|s| Arc::ptr_eq(s, old));
            if !olds.iter().all(listed) {
                return Ok(false);
            }
        }
        let old_files: Vec<u64> = olds
            .iter()
            .map(|old| old.file_id().expect("only sealed segments are compacted"))
            .collect();
        // (index in `olds`, slot) of every live point, in order.
        let live: Vec<(usize, u32)> = olds
            .iter()
            .enumerate()
            .flat_map(|(i, old)| {
                (0..old.len() as u32)
                    .filter(|slot| !old.deleted.contains(*slot))
                    .map(move |slot| (i, slot))
            })
            .collect();
        let id = self.next_segment_id.fetch_add(1, Ordering::Relaxed);
        let new = Arc::new(Segment::new_mutable(id, &self.config, live.len().max(1))?);
        for (i, old) in olds.iter().enumerate() {
            let ids = old.ids.read();
            let payloads = old.payloads.read();
            for &(_, slot) in live.iter().filter(|(j, _)| *j == i) {
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
                self.rewrap_segment_file(file_id)
                    .inspect_err(|err| self.discard_unlisted(file_id, err))?;
            }
            let state = self.state.upgradable_read();
            // Deletes that happened while the copy was built carry over.
            for (new_slot, &(i, old_slot)) in live.iter().enumerate() {
                if olds[i].deleted.contains(old_slot) {
                    new.deleted.insert(new_slot as u32);
                }
            }
            let wals = writer.manifest.wals.clone();
            let replacement = (!live.is_empty()).then_some((new.as_ref(), file_id));
            let old_ids: Vec<u64> = olds.iter().map(|old| old.id).collect();
            let segments = Inner::segment_entries(&state, None, Some((&old_ids, replacement)));
            self.write_manifest(&mut writer, segments, wals)
                .inspect_err(|err| self.discard_unlisted(file_id, err))?;
            let mut state = parking_lot::RwLockUpgradableReadGuard::upgrade(state);
            if !live.is_empty() {
                new.set_sealed(file_id);
                let ids = new.ids.read();
                for (new_slot, &(i, old_slot)) in live.iter().enumerate() {
                    let loc = state.ids.get_mut(&ids[new_slot]);
                    if let Some(loc) = loc
                        && *loc
                            == (Loc {
                                segment: olds[i].id,
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
                // The new segment takes the place of the first old one.
                let position = state
                    .segments
                    .iter()
                    .position(|s| old_ids.contains(&s.id))
                    .expect("old segments listed");
                state.segments[position] = new.clone();
            }
            state.segments.retain(|s| !old_ids.contains(&s.id));
        }
        for old_file in &old_files {
            let path = segment::segment_path(&self.dir, *old_file);
            self.disk.remove_file(&path).map_err(Error::io(&path))?;
        }
        self.disk
            .sync_dir(&self.dir)
            .map_err(Error::io(&self.dir))?;
        tracing::debug!(tenant = %self.tenant, collection = %self.name, from = ?old_files, to = file_id, live = live.len(), "compacted segments");
        Ok(true)
    }

    /// Removes a segment file that was written but could not be listed for lack of a key, so that
    /// retries during a long outage do not pile up copies (open would remove them, but only then).
    /// After any other failure the collection is poisoned and the file is left for open.
    fn discard_unlisted(&self, file_id: u64, err: &Error) {
        if !err.is_key_failure() {
            return;
        }
        let path = segment::segment_path(&self.dir, file_id);
        if let Err(err) = self.disk.remove_file(&path) {
            tracing::warn!(segment = %path.display(), error = %err, "could not remove an unlisted segment file; it is removed on next open");
        }
    }

    /// Re-wraps a segment file's DEK under the tenant's current KEK if it is under an older one.
    ///
    /// Seal and compaction write their file outside the writer lock and call this under it, just
    /// before listing the file: a re-wrap that ran meanwhile could not see the unlisted file, and
    /// must not leave it under a KEK the caller is about to destroy.
    pub(super) fn rewrap_segment_file(&self, file_id: u64) -> Result<()> {
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

    pub(super) fn rewrap_locked(&self, writer: &mut Writer) -> Result<()> {
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
