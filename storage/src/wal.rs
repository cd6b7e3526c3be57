//! The write-ahead log: one file per DEK, append-only, one encrypted frame per group commit.
//!
//! ```text
//! header   a sealed-file header of kind Wal with no sections (see `sealed`, FORMAT.md)
//! frame    len      u32 LE   length of `sealed` (ciphertext + 16-byte tag)
//!          crc      u32 LE   CRC-32 (IEEE) of seq and sealed
//!          seq      u64 LE   frame number in this file, from 0; also the GCM nonce counter
//!          sealed   len bytes AES-256-GCM of the batch, AAD = aad::wal_frame(tenant, collection, file, seq)
//!                   followed by the collection's incarnation, if it has one (see `sealed::Incarnation`)
//! batch    n_ops u32, then per op: tag u8 (1 upsert, 2 delete, 3 write token), then
//!          upsert and delete: point id (ids::PointId encoding),
//!          upsert only: dim u32, dim f32 LE, payload_len u32 (u32::MAX = none), payload bytes (JSON)
//!          write token only: token u64 (see `Op::Token`)
//! ```
//!
//! Recovery reads frames in order. A frame that fails its length or CRC check is a *torn tail* if
//! no valid frame follows it (a crash during the last group commit, never acknowledged): replay stops
//! there and reports it. If a valid frame follows, the damage is in the middle of the log and replay
//! fails with the file and offset. A frame whose CRC holds but whose tag does not is tampering and
//! always an error. A WAL is never appended to after a restart: the next writes go to a new file
//! under a new DEK, so no (key, nonce) pair is ever reused.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::crypto::{
    DataKey, DekContext, FileOpener, FileSealer, KeyService, TAG_BYTES, WrappedDek, aad,
};
use crate::disk::{Disk, DiskFile};
use crate::ids::{PointId, TenantId};
use crate::sealed::{BLOCK_BYTES, FORMAT_VERSION, FileKind, Header, Incarnation};
use crate::{Error, Result};

const FRAME_HEAD: usize = 16;
/// Largest frame accepted (ciphertext bytes); bigger batches are split by the caller.
pub const MAX_FRAME_BYTES: usize = 256 << 20;
const NO_PAYLOAD: u32 = u32::MAX;

/// One logged operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Insert or replace a point.
    Upsert {
        /// The point's id.
        id: PointId,
        /// The vector, already validated (and normalised for cosine).
        vector: Vec<f32>,
        /// The payload as compact JSON, if any.
        payload: Option<Vec<u8>>,
    },
    /// Delete a point (a no-op if it does not exist).
    Delete {
        /// The point's id.
        id: PointId,
    },
    /// The coordinator's token for the write whose operations share this frame: logged in the
    /// same frame, so it is durable exactly when they are. The collection remembers the highest
    /// (`Collection::applied_token`), which tells a retried write whether its first attempt ran.
    Token(u64),
}

/// Encodes a batch of ops (the plaintext of one frame).
pub fn encode_batch(ops: &[Op]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(4 + ops.len() * 16));
    out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for op in ops {
        match op {
            Op::Upsert {
                id,
                vector,
                payload,
            } => {
                out.push(1);
                id.encode_into(&mut out);
                out.extend_from_slice(&(vector.len() as u32).to_le_bytes());
                out.extend_from_slice(bytemuck::cast_slice(vector));
                match payload {
                    Some(bytes) => {
                        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                        out.extend_from_slice(bytes);
                    }
                    None => out.extend_from_slice(&NO_PAYLOAD.to_le_bytes()),
                }
            }
            Op::Delete { id } => {
                out.push(2);
                id.encode_into(&mut out);
            }
            Op::Token(token) => {
                out.push(3);
                out.extend_from_slice(&token.to_le_bytes());
            }
        }
    }
    out
}

/// Decodes a batch; `None` if it is malformed in any way.
pub fn decode_batch(buf: &[u8]) -> Option<Vec<Op>> {
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let bytes = buf.get(*at..at.checked_add(n)?)?;
        *at += n;
        Some(bytes)
    };
    let u32_of = |bytes: &[u8]| u32::from_le_bytes(bytes.try_into().expect("4 bytes"));
    let n_ops = u32_of(take(&mut at, 4)?) as usize;
    // Each op takes at least 10 bytes, which bounds the allocation by the input size.
    let mut ops = Vec::with_capacity(n_ops.min(buf.len() / 10));
    for _ in 0..n_ops {
        let tag = take(&mut at, 1)?[0];
        if tag == 3 {
            let token = u64::from_le_bytes(take(&mut at, 8)?.try_into().ok()?);
            ops.push(Op::Token(token));
            continue;
        }
        let (id, used) = PointId::decode(&buf[at..])?;
        at += used;
        match tag {
            1 => {
                let dim = u32_of(take(&mut at, 4)?) as usize;
                let raw = take(&mut at, dim.checked_mul(4)?)?;
                let vector = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect();
                let len = u32_of(take(&mut at, 4)?);
                let payload = if len == NO_PAYLOAD {
                    None
                } else {
                    Some(take(&mut at, len as usize)?.to_vec())
                };
                ops.push(Op::Upsert {
                    id,
                    vector,
                    payload,
                });
            }
            2 => ops.push(Op::Delete { id }),
            _ => return None,
        }
    }
    (at == buf.len()).then_some(ops)
}

/// Appends frames to one WAL file.
pub struct WalWriter {
    path: PathBuf,
    file: Box<dyn DiskFile>,
    sealer: FileSealer,
    tenant: TenantId,
    collection: String,
    file_id: u64,
    incarnation: Option<Incarnation>,
    is_poisoned: bool,
}

impl WalWriter {
    /// Creates `path` with its header, durably (file and directory fsynced) before any frame.
    #[allow(clippy::too_many_arguments)] // the file's full identity; a struct would only rename them
    pub fn create(
        disk: &dyn Disk,
        path: &Path,
        tenant: &TenantId,
        collection: &str,
        file_id: u64,
        dim: u32,
        (dek, wrapped): (DataKey, WrappedDek),
        incarnation: Option<Incarnation>,
    ) -> Result<WalWriter> {
        let header = Header {
            kind: FileKind::Wal,
            file_id,
            block_bytes: BLOCK_BYTES,
            wrapped_dek: wrapped,
            tenant: tenant.to_string(),
            collection: collection.to_owned(),
            dim,
            metric: 0,
            n_points: 0,
            sections: Vec::new(),
        };
        let mut file = disk.create(path).map_err(Error::io(path))?;
        file.append(&header.encode()).map_err(Error::io(path))?;
        file.sync().map_err(Error::io(path))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        disk.sync_dir(dir).map_err(Error::io(dir))?;
        Ok(WalWriter {
            path: path.to_owned(),
            file,
            sealer: FileSealer::new(dek),
            tenant: tenant.clone(),
            collection: collection.to_owned(),
            file_id,
            incarnation,
            is_poisoned: false,
        })
    }

    /// This WAL's file id.
    pub fn file_id(&self) -> u64 {
        self.file_id
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.file.len()
    }

    /// Whether nothing but the header was written.
    pub fn is_empty(&self) -> bool {
        self.sealer.next_counter() == 0
    }

    /// Appends one frame holding `ops` and fsyncs. When this returns `Ok` the ops are durable.
    /// After any failure the writer refuses every later append: a failed fsync may have dropped
    /// data the kernel reported written, so nothing after it can be trusted (no retry-then-trust).
    pub fn append(&mut self, ops: &[Op]) -> Result<()> {
        if self.is_poisoned {
            return Err(Error::Poisoned(self.collection.clone()));
        }
        let res = self.append_inner(ops);
        if res.is_err() {
            self.is_poisoned = true;
        }
        res
    }

    fn append_inner(&mut self, ops: &[Op]) -> Result<()> {
        let plain = encode_batch(ops);
        let sealed_len = plain.len() + TAG_BYTES;
        if sealed_len > MAX_FRAME_BYTES {
            return Err(Error::invalid(format!(
                "batch encodes to {sealed_len} bytes, over the {MAX_FRAME_BYTES} byte frame limit"
            )));
        }
        let mut frame = Vec::with_capacity(FRAME_HEAD + sealed_len);
        frame.extend_from_slice(&(sealed_len as u32).to_le_bytes());
        frame.extend_from_slice(&[0; 4]);
        let seq = self.sealer.next_counter();
        frame.extend_from_slice(&seq.to_le_bytes());
        frame.extend_from_slice(&plain);
        drop(plain);
        let aad = frame_aad(
            &self.tenant,
            &self.collection,
            self.file_id,
            seq,
            self.incarnation.as_ref(),
        );
        let (used, tag) = self
            .sealer
            .seal_next(aad.as_bytes(), &mut frame[FRAME_HEAD..])?;
        debug_assert_eq!(used, seq);
        frame.extend_from_slice(&tag);
        let crc = crc32fast::hash(&frame[8..]);
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
        self.file.append(&frame).map_err(Error::io(&self.path))?;
        self.file.sync().map_err(Error::io(&self.path))?;
        Ok(())
    }
}

/// What replaying one WAL found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Frames applied.
    pub frames: u64,
    /// Ops applied.
    pub ops: u64,
    /// Offset where a torn tail was cut, and how many bytes followed it.
    pub torn_tail: Option<(u64, u64)>,
}

/// Reads the header of a WAL file and checks that it belongs to this tenant and collection.
pub fn read_header(path: &Path, tenant: &TenantId, collection: &str) -> Result<(Header, Vec<u8>)> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    let header = Header::decode(&bytes, path)?;
    header.check_identity(path, FileKind::Wal, tenant, collection)?;
    Ok((header, bytes))
}

/// A frame's AAD: its place, and the collection's incarnation if it has one.
fn frame_aad(
    tenant: &TenantId,
    collection: &str,
    file_id: u64,
    seq: u64,
    incarnation: Option<&Incarnation>,
) -> aad::Aad {
    let mut aad = aad::wal_frame(tenant, collection, file_id, seq, FORMAT_VERSION);
    if let Some(incarnation) = incarnation {
        aad.bytes(incarnation);
    }
    aad
}

/// Replays the WAL at `path`, calling `apply` with each frame's ops in order. Frames must be
/// bound to `incarnation` (the collection's, from its manifest).
pub fn replay(
    path: &Path,
    tenant: &TenantId,
    collection: &str,
    file_id: u64,
    keys: &dyn KeyService,
    incarnation: Option<Incarnation>,
    mut apply: impl FnMut(Vec<Op>) -> Result<()>,
) -> Result<ReplayReport> {
    let (header, bytes) = read_header(path, tenant, collection)?;
    if header.file_id != file_id {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            offset: 16,
            reason: format!(
                "WAL has file id {}, the manifest expects {file_id}",
                header.file_id
            ),
        });
    }
    let dek = keys.decrypt_data_key(
        tenant,
        DekContext {
            collection,
            file_id,
        },
        &header.wrapped_dek,
    )?;
    let opener = FileOpener::new(dek);
    let mut report = ReplayReport {
        frames: 0,
        ops: 0,
        torn_tail: None,
    };
    let mut at = Header::encoded_len(0);
    let mut seq = 0u64;
    while at < bytes.len() {
        let Some(sealed) = check_frame(&bytes, at, seq) else {
            if has_valid_frame_after(&bytes, at, seq) {
                return Err(Error::Corrupt {
                    path: path.to_owned(),
                    offset: at as u64,
                    reason: format!("WAL frame {seq} is damaged and later frames are intact"),
                });
            }
            let dropped = (bytes.len() - at) as u64;
            tracing::warn!(
                wal = %path.display(),
                offset = at,
                bytes = dropped,
                "cut a torn WAL tail (a group commit that never completed)"
            );
            report.torn_tail = Some((at as u64, dropped));
            break;
        };
        let (body, tag) = sealed.split_at(sealed.len() - TAG_BYTES);
        let tag: &[u8; TAG_BYTES] = tag.try_into().expect("split at TAG_BYTES");
        let mut plain = Zeroizing::new(body.to_vec());
        let aad = frame_aad(tenant, collection, file_id, seq, incarnation.as_ref());
        if !opener.open_in_place(seq, aad.as_bytes(), &mut plain, tag) {
            return Err(Error::Decrypt {
                path: path.to_owned(),
                what: format!("WAL frame {seq} at offset {at}"),
            });
        }
        let ops = decode_batch(&plain).ok_or_else(|| Error::Corrupt {
            path: path.to_owned(),
            offset: at as u64,
            reason: format!("WAL frame {seq} decrypted but does not decode"),
        })?;
        report.frames += 1;
        report.ops += ops.len() as u64;
        apply(ops)?;
        at += FRAME_HEAD + sealed.len();
        seq += 1;
    }
    Ok(report)
}

/// The sealed part of the frame at `at` if its length and CRC hold and it carries `seq`.
fn check_frame(bytes: &[u8], at: usize, seq: u64) -> Option<&[u8]> {
    let head = bytes.get(at..at + FRAME_HEAD)?;
    let len = u32::from_le_bytes(head[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[4..8].try_into().ok()?);
    let frame_seq = u64::from_le_bytes(head[8..16].try_into().ok()?);
    if !(TAG_BYTES..=MAX_FRAME_BYTES).contains(&len) || frame_seq != seq {
        return None;
    }
    let end = at.checked_add(FRAME_HEAD)?.checked_add(len)?;
    let sealed = bytes.get(at + FRAME_HEAD..end)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&head[8..16]);
    hasher.update(sealed);
    (hasher.finalize() == crc).then_some(sealed)
}

/// Whether any intact frame with a sequence number after `seq` starts after offset `at`.
fn has_valid_frame_after(bytes: &[u8], at: usize, seq: u64) -> bool {
    (at + 1..bytes.len().saturating_sub(FRAME_HEAD - 1)).any(|start| {
        let Some(raw) = bytes.get(start + 8..start + 16) else {
            return false;
        };
        let frame_seq = u64::from_le_bytes(raw.try_into().expect("8 bytes"));
        // Later frames carry later numbers; a handful of lost frames at most lie between.
        frame_seq > seq
            && frame_seq <= seq + (1 << 20)
            && check_frame(bytes, start, frame_seq).is_some()
    })
}

/// Re-wraps a WAL file's DEK under the tenant's KEK version `current` (KEK rotation): a copy with a
/// new header and the frames unchanged replaces the file atomically. Only for WAL files no writer
/// appends to any more.
pub fn rewrite_key(
    disk: &dyn Disk,
    path: &Path,
    tenant: &TenantId,
    collection: &str,
    file_id: u64,
    keys: &dyn KeyService,
    current: u32,
) -> Result<()> {
    let (mut header, bytes) = read_header(path, tenant, collection)?;
    if header.wrapped_dek.kek_version == current {
        return Ok(());
    }
    header.wrapped_dek = keys.rewrap_data_key(
        tenant,
        DekContext {
            collection,
            file_id,
        },
        &header.wrapped_dek,
    )?;
    let encoded = header.encode();
    crate::disk::write_atomic_parts(disk, path, &[&encoded, &bytes[encoded.len()..]])
}
