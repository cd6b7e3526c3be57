//! The sealed-file container shared by segments and manifests: a header, then encrypted sections
//! cut into fixed-size blocks. `FORMAT.md` has the byte table; this file is the code for it.
//!
//! A sealed file is written once to a temporary name, fsynced and renamed into place. It is then
//! only read (memory-mapped) or replaced whole: KEK rotation writes a copy with a new header and the
//! body bytes unchanged.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::crypto::{FileOpener, FileSealer, TAG_BYTES, WRAPPED_KEY_BYTES, WrappedDek, aad};
use crate::disk::{Disk, tmp_path};
use crate::ids::TenantId;
use crate::secure::SecureBuf;
use crate::sys::mmap::SealedMap;
use crate::{Error, Result};

#[cfg(target_endian = "big")]
compile_error!("vaultvec's file formats are little-endian and cast f32 slices directly");

/// Magic bytes at offset 0 of every vaultvec file.
pub const MAGIC: [u8; 6] = *b"VVAULT";
/// Version of the file formats in this crate; bump together with FORMAT.md.
pub const FORMAT_VERSION: u16 = 1;
/// Plaintext bytes per block (the last block of a section may be shorter).
pub const BLOCK_BYTES: u32 = 64 * 1024;
/// Most sections one file may have.
pub const MAX_SECTIONS: usize = 16;
const NAME_FIELD: usize = 64;
/// Fixed part of the header, before the section table.
const FIXED_BYTES: usize = 256;
const SECTION_ENTRY_BYTES: usize = 24;
const CHECKSUM_BYTES: usize = 8;

/// A collection's incarnation: 16 random bytes chosen when it is created and kept in its
/// manifest. Bound into the AAD of every segment block and WAL frame it writes, so that a file of
/// a dropped collection never authenticates in a new collection of the same name. Collections
/// created before it existed have none, and their AAD is what it always was.
pub type Incarnation = [u8; 16];

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A sealed segment.
    Segment = 1,
    /// A collection manifest.
    Manifest = 2,
    /// A write-ahead log (header only; frames follow, see `wal`).
    Wal = 3,
}

impl FileKind {
    fn from_code(code: u8) -> Option<FileKind> {
        match code {
            1 => Some(FileKind::Segment),
            2 => Some(FileKind::Manifest),
            3 => Some(FileKind::Wal),
            _ => None,
        }
    }
}

/// One section's place in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionEntry {
    /// Section id, unique within the file.
    pub id: u32,
    /// Plaintext length in bytes.
    pub plain_len: u64,
    /// Offset of the section's first block in the file.
    pub offset: u64,
}

impl SectionEntry {
    /// Number of blocks of this section.
    pub fn n_blocks(&self, block_bytes: u32) -> u64 {
        self.plain_len.div_ceil(u64::from(block_bytes))
    }
    /// Bytes the section occupies on disk; `None` if that does not fit in a `u64` (a hostile
    /// header: the fields are read before anything authenticates them).
    pub fn stored_len(&self, block_bytes: u32) -> Option<u64> {
        self.n_blocks(block_bytes)
            .checked_mul(TAG_BYTES as u64)?
            .checked_add(self.plain_len)
    }
}

/// The header of a vaultvec file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// What the file holds.
    pub kind: FileKind,
    /// File id, unique within the collection, never reused.
    pub file_id: u64,
    /// Plaintext bytes per block.
    pub block_bytes: u32,
    /// The DEK of this file, wrapped under a tenant KEK (whose version it carries).
    pub wrapped_dek: WrappedDek,
    /// Owning tenant.
    pub tenant: String,
    /// Owning collection.
    pub collection: String,
    /// Vector dimension (0 where not applicable).
    pub dim: u32,
    /// Metric code (0 where not applicable).
    pub metric: u8,
    /// Number of points (segments), 0 otherwise.
    pub n_points: u64,
    /// Sections, in file order.
    pub sections: Vec<SectionEntry>,
}

fn put_name(buf: &mut [u8], name: &str) {
    buf[0] = name.len() as u8;
    buf[1..1 + name.len()].copy_from_slice(name.as_bytes());
}

fn get_name(buf: &[u8]) -> Option<String> {
    let len = buf[0] as usize;
    if len >= NAME_FIELD {
        return None;
    }
    String::from_utf8(buf[1..1 + len].to_vec()).ok()
}

impl Header {
    /// Encoded length of a header with `n_sections` sections.
    pub fn encoded_len(n_sections: usize) -> usize {
        FIXED_BYTES + n_sections * SECTION_ENTRY_BYTES + CHECKSUM_BYTES
    }

    /// Encodes the header (little-endian, checksum last).
    pub fn encode(&self) -> Vec<u8> {
        let len = Header::encoded_len(self.sections.len());
        let mut buf = vec![0u8; len];
        buf[0..6].copy_from_slice(&MAGIC);
        buf[6..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        buf[8] = self.kind as u8;
        buf[9] = self.metric;
        buf[10..12].copy_from_slice(&(self.sections.len() as u16).to_le_bytes());
        buf[12..16].copy_from_slice(&(len as u32).to_le_bytes());
        buf[16..24].copy_from_slice(&self.file_id.to_le_bytes());
        buf[24..28].copy_from_slice(&self.block_bytes.to_le_bytes());
        buf[28..32].copy_from_slice(&self.dim.to_le_bytes());
        buf[32..40].copy_from_slice(&self.n_points.to_le_bytes());
        put_name(&mut buf[40..104], &self.tenant);
        put_name(&mut buf[104..168], &self.collection);
        buf[168..172].copy_from_slice(&self.wrapped_dek.kek_version.to_le_bytes());
        buf[172..172 + WRAPPED_KEY_BYTES].copy_from_slice(&self.wrapped_dek.bytes);
        let mut at = FIXED_BYTES;
        for section in &self.sections {
            buf[at..at + 4].copy_from_slice(&section.id.to_le_bytes());
            buf[at + 8..at + 16].copy_from_slice(&section.plain_len.to_le_bytes());
            buf[at + 16..at + 24].copy_from_slice(&section.offset.to_le_bytes());
            at += SECTION_ENTRY_BYTES;
        }
        let checksum = xxhash_rust::xxh3::xxh3_64(&buf[..at]);
        buf[at..at + 8].copy_from_slice(&checksum.to_le_bytes());
        buf
    }

    /// Decodes and checks a header from the start of `bytes` (which may hold more than the header).
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Header> {
        let corrupt = |offset: usize, reason: String| Error::Corrupt {
            path: path.to_owned(),
            offset: offset as u64,
            reason,
        };
        if bytes.len() < FIXED_BYTES + CHECKSUM_BYTES {
            return Err(corrupt(
                0,
                format!("{} bytes is too short for a header", bytes.len()),
            ));
        }
        if bytes[0..6] != MAGIC {
            return Err(corrupt(0, "not a vaultvec file (bad magic)".into()));
        }
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let version = u16_at(6);
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.to_owned(),
                version,
            });
        }
        let n_sections = u16_at(10) as usize;
        if n_sections > MAX_SECTIONS {
            return Err(corrupt(
                10,
                format!("{n_sections} sections, at most {MAX_SECTIONS}"),
            ));
        }
        let len = u32_at(12) as usize;
        if len != Header::encoded_len(n_sections) || bytes.len() < len {
            return Err(corrupt(12, format!("header length {len} is inconsistent")));
        }
        let body_end = len - CHECKSUM_BYTES;
        if xxhash_rust::xxh3::xxh3_64(&bytes[..body_end]) != u64_at(body_end) {
            return Err(corrupt(body_end, "header checksum mismatch".into()));
        }
        let kind = FileKind::from_code(bytes[8])
            .ok_or_else(|| corrupt(8, format!("unknown file kind {}", bytes[8])))?;
        let tenant =
            get_name(&bytes[40..104]).ok_or_else(|| corrupt(40, "bad tenant field".into()))?;
        let collection = get_name(&bytes[104..168])
            .ok_or_else(|| corrupt(104, "bad collection field".into()))?;
        let block_bytes = u32_at(24);
        if block_bytes == 0 || block_bytes > 16 << 20 {
            return Err(corrupt(
                24,
                format!("block size {block_bytes} is out of range"),
            ));
        }
        let mut wrapped = [0u8; WRAPPED_KEY_BYTES];
        wrapped.copy_from_slice(&bytes[172..172 + WRAPPED_KEY_BYTES]);
        let mut sections = Vec::with_capacity(n_sections);
        let mut at = FIXED_BYTES;
        for _ in 0..n_sections {
            sections.push(SectionEntry {
                id: u32_at(at),
                plain_len: u64_at(at + 8),
                offset: u64_at(at + 16),
            });
            at += SECTION_ENTRY_BYTES;
        }
        Ok(Header {
            kind,
            file_id: u64_at(16),
            block_bytes,
            wrapped_dek: WrappedDek {
                kek_version: u32_at(168),
                bytes: wrapped,
            },
            tenant,
            collection,
            dim: u32_at(28),
            metric: bytes[9],
            n_points: u64_at(32),
            sections,
        })
    }

    /// SHA-256 of the fields that never change after the file is written (everything but the
    /// wrapped DEK, its KEK version and the checksum). Bound into every block's AAD, so a header
    /// edited to change the dimension, metric, counts or layout makes every block fail to decrypt.
    pub fn digest(&self) -> [u8; 32] {
        let mut fixed = self.clone();
        fixed.wrapped_dek = WrappedDek {
            kek_version: 0,
            bytes: [0; WRAPPED_KEY_BYTES],
        };
        let encoded = fixed.encode();
        Sha256::digest(&encoded[..encoded.len() - CHECKSUM_BYTES]).into()
    }

    /// Checks that this header belongs where the caller found it.
    pub fn check_identity(
        &self,
        path: &Path,
        kind: FileKind,
        tenant: &TenantId,
        collection: &str,
    ) -> Result<()> {
        if self.kind != kind || self.tenant != tenant.as_str() || self.collection != collection {
            // The names the file carries may be another tenant's: they go to the log, never into
            // the error, whose message can reach this tenant's client.
            tracing::warn!(
                path = %path.display(),
                found_kind = ?self.kind,
                found_tenant = %self.tenant,
                found_collection = %self.collection,
                expected_kind = ?kind,
                "a file names another tenant, collection or kind than where it was found"
            );
            return Err(Error::Corrupt {
                path: path.to_owned(),
                offset: 0,
                reason: format!(
                    "the file is not a {kind:?} file of collection {collection} (the log names what it is)"
                ),
            });
        }
        Ok(())
    }
}

fn block_aad(
    header: &Header,
    digest: &[u8; 32],
    tenant: &TenantId,
    section: u32,
    block: u64,
    incarnation: Option<&Incarnation>,
) -> Vec<u8> {
    let mut aad = aad::block(
        tenant,
        &header.collection,
        header.file_id,
        section,
        block,
        FORMAT_VERSION,
    );
    aad.bytes(digest);
    if let Some(incarnation) = incarnation {
        aad.bytes(incarnation);
    }
    aad.into_bytes()
}

/// Writes a sealed file at `path` (via a temporary name, fsync, rename, directory fsync).
///
/// `header.sections` is filled in from `sections`; blocks are numbered across the whole file, and a
/// block's number is its nonce counter under the file's own DEK. With an `incarnation`, every
/// block is bound to it, and reads must give the same one ([`SealedFile::bind_incarnation`]).
pub fn write(
    disk: &dyn Disk,
    path: &Path,
    mut header: Header,
    tenant: &TenantId,
    mut sealer: FileSealer,
    sections: &[(u32, &[u8])],
    incarnation: Option<&Incarnation>,
) -> Result<()> {
    if sections.len() > MAX_SECTIONS {
        return Err(Error::invalid("too many sections"));
    }
    let mut offset = Header::encoded_len(sections.len()) as u64;
    header.sections = sections
        .iter()
        .map(|(id, bytes)| {
            let entry = SectionEntry {
                id: *id,
                plain_len: bytes.len() as u64,
                offset,
            };
            offset += entry
                .stored_len(header.block_bytes)
                .expect("an in-memory section fits in a u64");
            entry
        })
        .collect();
    let digest = header.digest();
    let tmp = tmp_path(path);
    if tmp.exists() {
        disk.remove_file(&tmp).map_err(Error::io(&tmp))?;
    }
    let mut file = disk.create(&tmp).map_err(Error::io(&tmp))?;
    file.append(&header.encode()).map_err(Error::io(&tmp))?;
    let block_bytes = header.block_bytes as usize;
    // Ciphertext is staged in batches of blocks, so a segment costs a few large writes.
    let mut staging: Vec<u8> = Vec::with_capacity(16 * (block_bytes + TAG_BYTES));
    let mut block = vec![0u8; block_bytes];
    for (id, bytes) in sections {
        for chunk in bytes.chunks(block_bytes) {
            let buf = &mut block[..chunk.len()];
            buf.copy_from_slice(chunk);
            let counter = sealer.next_counter();
            let (used, tag) = sealer.seal_next(
                &block_aad(&header, &digest, tenant, *id, counter, incarnation),
                buf,
            )?;
            debug_assert_eq!(used, counter);
            staging.extend_from_slice(buf);
            staging.extend_from_slice(&tag);
            if staging.len() >= 16 * block_bytes {
                file.append(&staging).map_err(Error::io(&tmp))?;
                staging.clear();
            }
        }
    }
    block.iter_mut().for_each(|b| *b = 0);
    file.append(&staging).map_err(Error::io(&tmp))?;
    file.sync().map_err(Error::io(&tmp))?;
    drop(file);
    disk.rename(&tmp, path).map_err(Error::io(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    disk.sync_dir(dir).map_err(Error::io(dir))?;
    Ok(())
}

/// A sealed file opened for reading: its header checked, its ciphertext mapped.
pub struct SealedFile {
    path: PathBuf,
    map: SealedMap,
    header: Header,
    digest: [u8; 32],
    incarnation: Option<Incarnation>,
}

impl SealedFile {
    /// Opens and checks a sealed file: header, identity, and that every section lies inside it.
    /// Every length and offset of the header is checked with overflow-checked arithmetic against
    /// the file's length before anything is sized from it: the header is not authenticated
    /// until a block decrypts.
    pub fn open(
        path: &Path,
        kind: FileKind,
        tenant: &TenantId,
        collection: &str,
    ) -> Result<SealedFile> {
        let file = std::fs::File::open(path).map_err(Error::io(path))?;
        let map = SealedMap::open(&file).map_err(Error::io(path))?;
        let header = Header::decode(&map, path)?;
        header.check_identity(path, kind, tenant, collection)?;
        let mut expected = Header::encoded_len(header.sections.len()) as u64;
        for section in &header.sections {
            if section.offset != expected {
                return Err(Error::Corrupt {
                    path: path.to_owned(),
                    offset: section.offset,
                    reason: format!("section {} is not where the layout puts it", section.id),
                });
            }
            expected = section
                .stored_len(header.block_bytes)
                .and_then(|len| expected.checked_add(len))
                .filter(|&end| end <= map.len() as u64)
                .ok_or_else(|| Error::Corrupt {
                    path: path.to_owned(),
                    offset: 0,
                    reason: format!(
                        "section {} of {} bytes does not fit in the file",
                        section.id, section.plain_len
                    ),
                })?;
        }
        if expected != map.len() as u64 {
            return Err(Error::Corrupt {
                path: path.to_owned(),
                offset: map.len() as u64,
                reason: format!(
                    "file is {} bytes, its header describes {expected}",
                    map.len()
                ),
            });
        }
        let digest = header.digest();
        Ok(SealedFile {
            path: path.to_owned(),
            map,
            header,
            digest,
            incarnation: None,
        })
    }

    /// Reads blocks as bound to `incarnation` (the collection's, from its manifest): blocks
    /// written under another incarnation, or none, fail to authenticate.
    pub fn bind_incarnation(mut self, incarnation: Option<Incarnation>) -> SealedFile {
        self.incarnation = incarnation;
        self
    }

    /// The checked header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decrypts one section into plaintext memory, blocks in parallel. Fails whole on any bad block,
    /// naming it; no partial plaintext is returned.
    pub fn read_section(
        &self,
        opener: &FileOpener,
        tenant: &TenantId,
        id: u32,
    ) -> Result<SecureBuf> {
        let (index, section) = self
            .header
            .sections
            .iter()
            .enumerate()
            .find(|(_, s)| s.id == id)
            .ok_or_else(|| Error::Corrupt {
                path: self.path.clone(),
                offset: 0,
                reason: format!("section {id} is missing"),
            })?;
        // Block numbers continue across sections.
        let first_block: u64 = self.header.sections[..index]
            .iter()
            .map(|s| s.n_blocks(self.header.block_bytes))
            .sum();
        let block_bytes = self.header.block_bytes as usize;
        let stored_block = block_bytes + TAG_BYTES;
        let mut out = SecureBuf::new(section.plain_len as usize).map_err(Error::io(&self.path))?;
        let start = section.offset as usize;
        let stored_len = section
            .stored_len(self.header.block_bytes)
            .expect("checked against the file length in open");
        let stored = &self.map[start..start + stored_len as usize];
        let bad_block = out
            .as_mut_bytes()
            .par_chunks_mut(block_bytes)
            .zip(stored.par_chunks(stored_block))
            .enumerate()
            .find_map_any(|(i, (plain, cipher))| {
                let block = first_block + i as u64;
                let (body, tag) = cipher.split_at(cipher.len() - TAG_BYTES);
                let tag: &[u8; TAG_BYTES] = tag.try_into().expect("split at TAG_BYTES");
                let aad = block_aad(
                    &self.header,
                    &self.digest,
                    tenant,
                    id,
                    block,
                    self.incarnation.as_ref(),
                );
                (!opener.open(block, &aad, body, tag, plain)).then_some((i, block))
            });
        if let Some((i, block)) = bad_block {
            return Err(Error::Decrypt {
                path: self.path.clone(),
                what: format!(
                    "section {id} block {block} (offset {})",
                    section.offset + (i * stored_block) as u64
                ),
            });
        }
        Ok(out)
    }

    /// Writes a copy of this file with `wrapped` as its DEK (KEK rotation): the header is new, the
    /// body bytes are copied unchanged, and the copy replaces the file atomically.
    pub fn rewrite_key(&self, disk: &dyn Disk, wrapped: WrappedDek) -> Result<()> {
        let mut header = self.header.clone();
        header.wrapped_dek = wrapped;
        let encoded = header.encode();
        let body = &self.map[encoded.len()..];
        crate::disk::write_atomic_parts(disk, &self.path, &[&encoded, body])
    }
}
