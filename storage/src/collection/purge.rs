//! Erasure: deleting every point whose payload matches a filter and rewriting every file that
//! still holds one, so that once the answer comes no file of the collection holds any version of
//! such a point (a tombstone alone leaves the data in its segment and WAL until compaction).
//!
//! A point's data lives in the slot of the segment it was written to (every version: an
//! overwrite leaves the old slot deleted, not emptied), and in the WAL file that fed that segment
//! until the segment is sealed. So erasure, after the delete:
//! 1. freezes the growing segment if any of its deleted slots matches, so that the background
//!    thread seals it, and waits until no frozen segment is left unsealed: every WAL that fed
//!    one is then retired (removed), and the current WAL holds only writes made afterwards;
//! 2. compacts, one at a time, every sealed segment holding a deleted slot that matches: the
//!    replacement holds only its live points, and the old file is removed.
//!
//! What stays: tombstone frames (ids only) in the current WAL, and ids in the manifest's
//! tombstone lists, never a vector or payload. Writes made meanwhile that match the filter again
//! are new data the caller wrote and are kept if live; their deleted versions are purged too.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use super::segment::Segment;
use super::{Collection, State};
use crate::deadline::Deadline;
use crate::filter::Filter;
use crate::{Error, Result};

/// What an erasure removed from one collection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Live points deleted (their payload matched).
    pub points: u64,
    /// Sealed segments rewritten without the erased points.
    pub segments_rewritten: u64,
    /// Segment and WAL files that held data when the erasure began and are gone now.
    pub files_deleted: u64,
}

/// Whether a deleted slot of `segment` holds a point whose payload matches `filter`.
fn holds_erased(segment: &Segment, filter: &Filter) -> bool {
    let payloads = segment.payloads.read();
    segment
        .deleted
        .to_sorted_vec()
        .into_iter()
        .any(|slot| filter.matches(payloads.get(slot as usize).and_then(Option::as_ref)))
}

/// The data files (`seg-<n>`, `wal-<n>`) in a collection's directory.
fn data_files(dir: &Path) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let entry = entry.map_err(Error::io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("seg-") || name.starts_with("wal-") {
            names.insert(name);
        }
    }
    Ok(names)
}

impl Collection {
    /// Deletes every point whose payload matches `filter` and rewrites every file that holds
    /// any version of such a point (see the module documentation). One erasure at a time per
    /// collection.
    ///
    /// When `deadline` passes before the points are chosen, nothing is deleted and the answer is
    /// [`Error::DeadlineExceeded`]; once deleting has begun it runs to the end, rewrite included.
    /// Sealing needs the key service: while it is away, this waits for it.
    pub fn erase_matching(&self, filter: &Filter, deadline: &Deadline) -> Result<Purged> {
        let inner = &self.inner;
        let _one = inner.erasing.lock();
        let before = data_files(&inner.dir)?;
        let points = self.delete_by_filter_within(filter, deadline)?;
        {
            let mut writer = inner.writer.lock();
            writer.check_writable(&inner.name)?;
            let growing_holds = holds_erased(inner.state.read().mutable(), filter);
            if growing_holds {
                inner.rotate_segment(&mut writer, true)?;
            }
        }
        inner.notify();
        self.wait_sealed()?;
        let mut segments_rewritten = 0u64;
        // Each round rewrites one segment; a segment replaced by the background thread meanwhile
        // is found again through its replacement. Writes that keep adding matching points cannot
        // hold this up for ever.
        let limit = 2 * inner.state.read().segments.len() + 16;
        for _ in 0..limit {
            let candidate = Self::erasure_candidate(&inner.state.read(), filter);
            let Some(segment) = candidate else {
                let after = data_files(&inner.dir)?;
                return Ok(Purged {
                    points,
                    segments_rewritten,
                    files_deleted: before.difference(&after).count() as u64,
                });
            };
            if inner.compact(&[segment])? {
                segments_rewritten += 1;
            }
        }
        Err(Error::invalid(
            "writes kept adding points that match the erasure while it ran; run it again",
        ))
    }

    /// A sealed segment holding a deleted slot that matches `filter`.
    fn erasure_candidate(state: &State, filter: &Filter) -> Option<std::sync::Arc<Segment>> {
        state
            .segments
            .iter()
            .filter(|s| s.file_id().is_some())
            .find(|s| holds_erased(s, filter))
            .cloned()
    }

    /// Waits until no frozen segment is left unsealed (the background thread seals them).
    fn wait_sealed(&self) -> Result<()> {
        let inner = &self.inner;
        loop {
            inner.writer.lock().check_writable(&inner.name)?;
            if inner.stop.load(std::sync::atomic::Ordering::Acquire) {
                // Closing: nothing seals any more. What is deleted stays deleted.
                return Err(Error::invalid(
                    "the collection closed before the erasure finished; run it again",
                ));
            }
            let unsealed = inner
                .state
                .read()
                .segments
                .iter()
                .any(|s| s.is_frozen() && s.file_id().is_none());
            if !unsealed {
                return Ok(());
            }
            inner.notify();
            let mut flag = inner.wake_lock.lock();
            inner.wake.wait_for(&mut flag, Duration::from_millis(5));
        }
    }
}
