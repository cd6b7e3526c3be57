//! The collection manifest: configuration, live segments with their tombstones, and WAL files.
//!
//! Stored as a sealed file of kind Manifest with one section, at `<collection>/MANIFEST`, replaced
//! atomically (write a temporary file, fsync, rename, fsync the directory). Each version is a new
//! file id with a new DEK. Body layout (little-endian):
//!
//! ```text
//! next_file_id u64 | dim u32 | metric u8 | m u16 | ef_construction u16 | ef u16
//! n_segments u32, per segment: file_id u64 | n_points u64 | n_deleted u32 | deleted slots u32 * n_deleted
//! n_wals u32, per WAL: file_id u64
//! incarnation [u8; 16]   (absent in manifests of collections created before incarnations)
//! applied_token u64      (absent when 0: the highest write token applied, `wal::Op::Token`)
//! ```
//!
//! The two optional tails are told apart by what is left after the WALs: 0, 8, 16 or 24 bytes.

use std::path::Path;

use crate::collection::CollectionConfig;
use crate::crypto::{DekContext, FileOpener, FileSealer, KeyService};
use crate::disk::Disk;
use crate::ids::TenantId;
use crate::index::Metric;
use crate::sealed::{self, BLOCK_BYTES, FileKind, Header, Incarnation, SealedFile};
use crate::{Error, Result};

/// File name of the manifest inside a collection directory.
pub const MANIFEST_NAME: &str = "MANIFEST";
const BODY_SECTION: u32 = 1;

/// A sealed segment as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentEntry {
    /// The segment's file id (`seg-<id>`).
    pub file_id: u64,
    /// Points stored in it.
    pub n_points: u64,
    /// Slots deleted since it was sealed, sorted, unique.
    pub deleted: Vec<u32>,
}

/// The durable state of a collection, apart from what its WAL files hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// This manifest's own file id.
    pub file_id: u64,
    /// The next unused file id.
    pub next_file_id: u64,
    /// The collection's configuration.
    pub config: CollectionConfig,
    /// Live sealed segments, oldest first.
    pub segments: Vec<SegmentEntry>,
    /// WAL files to replay after the segments, oldest first.
    pub wals: Vec<u64>,
    /// The collection's incarnation, bound into its segments' and WALs' AAD (`None` for a
    /// collection created before incarnations, whose files carry none).
    pub incarnation: Option<Incarnation>,
    /// The highest write token applied to the collection when this manifest was written (0: none).
    pub applied_token: u64,
}

impl Manifest {
    /// Encodes the body.
    pub fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.segments.len() * 24);
        out.extend_from_slice(&self.next_file_id.to_le_bytes());
        out.extend_from_slice(&(self.config.dim as u32).to_le_bytes());
        out.push(self.config.metric.code());
        out.extend_from_slice(&(self.config.m as u16).to_le_bytes());
        out.extend_from_slice(&(self.config.ef_construction as u16).to_le_bytes());
        out.extend_from_slice(&(self.config.ef as u16).to_le_bytes());
        out.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for segment in &self.segments {
            out.extend_from_slice(&segment.file_id.to_le_bytes());
            out.extend_from_slice(&segment.n_points.to_le_bytes());
            out.extend_from_slice(&(segment.deleted.len() as u32).to_le_bytes());
            for slot in &segment.deleted {
                out.extend_from_slice(&slot.to_le_bytes());
            }
        }
        out.extend_from_slice(&(self.wals.len() as u32).to_le_bytes());
        for wal in &self.wals {
            out.extend_from_slice(&wal.to_le_bytes());
        }
        if let Some(incarnation) = &self.incarnation {
            out.extend_from_slice(incarnation);
        }
        if self.applied_token != 0 {
            out.extend_from_slice(&self.applied_token.to_le_bytes());
        }
        out
    }

    /// Decodes a body; `None` if malformed in any way (lengths, metric, unsorted tombstones).
    pub fn decode_body(file_id: u64, buf: &[u8]) -> Option<Manifest> {
        let at = std::cell::Cell::new(0usize);
        let take = |n: usize| -> Option<&[u8]> {
            let bytes = buf.get(at.get()..at.get().checked_add(n)?)?;
            at.set(at.get() + n);
            Some(bytes)
        };
        let next_file_id = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let dim = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let metric = Metric::from_code(take(1)?[0])?;
        let m = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
        let ef_construction = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
        let ef = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
        let n_segments = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let mut segments = Vec::with_capacity(n_segments.min(buf.len() / 20));
        for _ in 0..n_segments {
            let file_id = u64::from_le_bytes(take(8)?.try_into().ok()?);
            let n_points = u64::from_le_bytes(take(8)?.try_into().ok()?);
            let n_deleted = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            let raw = take(n_deleted.checked_mul(4)?)?;
            let deleted: Vec<u32> = raw
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            let is_sorted_unique = deleted.windows(2).all(|w| w[0] < w[1]);
            let in_range = deleted
                .last()
                .is_none_or(|&last| u64::from(last) < n_points);
            if !is_sorted_unique || !in_range {
                return None;
            }
            segments.push(SegmentEntry {
                file_id,
                n_points,
                deleted,
            });
        }
        let n_wals = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let mut wals = Vec::with_capacity(n_wals.min(buf.len() / 8));
        for _ in 0..n_wals {
            wals.push(u64::from_le_bytes(take(8)?.try_into().ok()?));
        }
        let left = buf.len().checked_sub(at.get())?;
        let incarnation: Option<Incarnation> = if left >= 16 {
            Some(take(16)?.try_into().ok()?)
        } else {
            None
        };
        let applied_token = match buf.len() - at.get() {
            0 => 0,
            8 => u64::from_le_bytes(take(8)?.try_into().ok()?),
            _ => return None,
        };
        // A token is written only when it is not 0, so a written 0 is not a body this code made.
        if at.get() != buf.len() || (matches!(left, 8 | 24) && applied_token == 0) {
            return None;
        }
        let config = CollectionConfig {
            dim,
            metric,
            m,
            ef_construction,
            ef,
        };
        Some(Manifest {
            file_id,
            next_file_id,
            config,
            segments,
            wals,
            incarnation,
            applied_token,
        })
    }

    /// Writes this manifest as `<dir>/MANIFEST`, atomically, under a new DEK for `self.file_id`.
    pub fn write(
        &self,
        disk: &dyn Disk,
        dir: &Path,
        tenant: &TenantId,
        collection: &str,
        keys: &dyn KeyService,
    ) -> Result<()> {
        let (dek, wrapped) = keys.generate_data_key(
            tenant,
            DekContext {
                collection,
                file_id: self.file_id,
            },
        )?;
        let header = Header {
            kind: FileKind::Manifest,
            file_id: self.file_id,
            block_bytes: BLOCK_BYTES,
            wrapped_dek: wrapped,
            tenant: tenant.to_string(),
            collection: collection.to_owned(),
            dim: self.config.dim as u32,
            metric: self.config.metric.code(),
            n_points: 0,
            sections: Vec::new(),
        };
        let body = self.encode_body();
        sealed::write(
            disk,
            &dir.join(MANIFEST_NAME),
            header,
            tenant,
            FileSealer::new(dek),
            &[(BODY_SECTION, &body)],
            None,
        )
    }

    /// Reads and authenticates `<dir>/MANIFEST`.
    pub fn read(
        dir: &Path,
        tenant: &TenantId,
        collection: &str,
        keys: &dyn KeyService,
    ) -> Result<Manifest> {
        let path = dir.join(MANIFEST_NAME);
        let file = SealedFile::open(&path, FileKind::Manifest, tenant, collection)?;
        let file_id = file.header().file_id;
        let dek = keys.decrypt_data_key(
            tenant,
            DekContext {
                collection,
                file_id,
            },
            &file.header().wrapped_dek,
        )?;
        let body = file.read_section(&FileOpener::new(dek), tenant, BODY_SECTION)?;
        let manifest =
            Manifest::decode_body(file_id, body.as_bytes()).ok_or_else(|| Error::Corrupt {
                path: path.clone(),
                offset: 0,
                reason: "manifest body decrypted but does not decode".into(),
            })?;
        if manifest.config.dim as u32 != file.header().dim {
            return Err(Error::Corrupt {
                path,
                offset: 28,
                reason: "manifest header and body disagree".into(),
            });
        }
        Ok(manifest)
    }
}
