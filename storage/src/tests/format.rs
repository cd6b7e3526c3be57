//! Sealed files and manifests: round trips, tampering, transplanted blocks, key rewrite.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::{keys, tenant};
use crate::Error;
use crate::collection::CollectionConfig;
use crate::crypto::{
    DekContext, FileOpener, FileSealer, KeyService, WRAPPED_KEY_BYTES, WrappedDek,
};
use crate::disk::StdDisk;
use crate::index::Metric;
use crate::manifest::{Manifest, SegmentEntry};
use crate::sealed::{self, FileKind, Header, SealedFile};

fn header(tenant_name: &str, file_id: u64, wrapped: WrappedDek, block_bytes: u32) -> Header {
    Header {
        kind: FileKind::Segment,
        file_id,
        block_bytes,
        wrapped_dek: wrapped,
        tenant: tenant_name.into(),
        collection: "docs".into(),
        dim: 4,
        metric: 1,
        n_points: 3,
        sections: Vec::new(),
    }
}

const SECTION_A: &[u8] = b"the first section holds some ids and spans several small blocks";
const SECTION_B: &[u8] = b"second: vectors vectors vectors vectors vectors vectors vectors!!";

/// Writes a two-section file with 16-byte blocks, so that a small file has many blocks.
fn write_small(dir: &Path, keys: &dyn KeyService, tenant_name: &str, file_id: u64) -> PathBuf {
    write_small_in(dir, keys, tenant_name, "docs", file_id)
}

fn write_small_in(
    dir: &Path,
    keys: &dyn KeyService,
    tenant_name: &str,
    collection: &str,
    file_id: u64,
) -> PathBuf {
    let t = tenant(tenant_name);
    let (dek, wrapped) = keys
        .generate_data_key(
            &t,
            DekContext {
                collection: "docs",
                file_id,
            },
        )
        .unwrap();
    let path = dir.join(format!("{tenant_name}-{collection}-seg-{file_id}"));
    sealed::write(
        &StdDisk,
        &path,
        Header {
            collection: collection.into(),
            ..header(tenant_name, file_id, wrapped, 16)
        },
        &t,
        FileSealer::new(dek),
        &[(1, SECTION_A), (2, SECTION_B)],
        None,
    )
    .unwrap();
    path
}

/// Opens a file as `tenant_name`'s and decrypts both sections.
fn read_small(
    path: &Path,
    keys: &dyn KeyService,
    tenant_name: &str,
) -> crate::Result<(Vec<u8>, Vec<u8>)> {
    let t = tenant(tenant_name);
    let file = SealedFile::open(path, FileKind::Segment, &t, "docs")?;
    let ctx = DekContext {
        collection: "docs",
        file_id: file.header().file_id,
    };
    let dek = keys.decrypt_data_key(&t, ctx, &file.header().wrapped_dek)?;
    let opener = FileOpener::new(dek);
    let a = file.read_section(&opener, &t, 1)?.as_bytes().to_vec();
    let b = file.read_section(&opener, &t, 2)?.as_bytes().to_vec();
    Ok((a, b))
}

#[test]
fn sealed_file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let path = write_small(dir.path(), keys.as_ref(), "a", 1);
    let (a, b) = read_small(&path, keys.as_ref(), "a").unwrap();
    assert_eq!((a.as_slice(), b.as_slice()), (SECTION_A, SECTION_B));
    // Plaintext never reaches the file.
    let raw = std::fs::read(&path).unwrap();
    assert!(
        !raw.windows(8)
            .any(|w| w == &SECTION_A[..8] || w == &SECTION_B[..8])
    );
}

#[test]
fn every_flipped_bit_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let path = write_small(dir.path(), keys.as_ref(), "a", 1);
    let clean = std::fs::read(&path).unwrap();
    let bad = dir.path().join("flipped");
    for bit in 0..clean.len() * 8 {
        let mut bytes = clean.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(&bad, &bytes).unwrap();
        // Header fields that only reserve space (padding) are covered by the checksum too.
        assert!(
            read_small(&bad, keys.as_ref(), "a").is_err(),
            "flipped bit {bit} went unnoticed"
        );
    }
}

#[test]
fn blocks_moved_between_tenants_files_and_positions_fail() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a", "b"]);
    let a = std::fs::read(write_small(dir.path(), keys.as_ref(), "a", 1)).unwrap();
    let b_path = write_small(dir.path(), keys.as_ref(), "b", 1);
    let b = std::fs::read(&b_path).unwrap();
    let a2 = std::fs::read(write_small(dir.path(), keys.as_ref(), "a", 2)).unwrap();
    let header_len = Header::encoded_len(2);
    let block = 16 + 16;
    let target = dir.path().join("target");
    // A block from tenant A's file at the same offset in tenant B's file.
    let mut moved = b.clone();
    moved[header_len..header_len + block].copy_from_slice(&a[header_len..header_len + block]);
    std::fs::write(&target, &moved).unwrap();
    let err = read_small(&target, keys.as_ref(), "b").unwrap_err();
    assert!(matches!(err, Error::Decrypt { .. }), "{err}");
    // Tenant B's other data is still readable from the untouched file.
    read_small(&b_path, keys.as_ref(), "b").unwrap();
    // A block from another file of the same tenant.
    let mut moved = a.clone();
    moved[header_len..header_len + block].copy_from_slice(&a2[header_len..header_len + block]);
    std::fs::write(&target, &moved).unwrap();
    assert!(matches!(
        read_small(&target, keys.as_ref(), "a"),
        Err(Error::Decrypt { .. })
    ));
    // Two blocks of one file swapped.
    let mut swapped = a.clone();
    let (first, second) = (header_len, header_len + block);
    let tmp = swapped[first..first + block].to_vec();
    swapped.copy_within(second..second + block, first);
    swapped[second..second + block].copy_from_slice(&tmp);
    std::fs::write(&target, &swapped).unwrap();
    assert!(matches!(
        read_small(&target, keys.as_ref(), "a"),
        Err(Error::Decrypt { .. })
    ));
    // The whole file copied into tenant B's place: identity and key checks fail.
    std::fs::write(&target, &a).unwrap();
    assert!(read_small(&target, keys.as_ref(), "b").is_err());
}

#[test]
fn a_block_moved_between_collections_of_one_tenant_fails() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let docs = write_small_in(dir.path(), keys.as_ref(), "a", "docs", 1);
    let other = std::fs::read(write_small_in(dir.path(), keys.as_ref(), "a", "other", 1)).unwrap();
    let mut moved = std::fs::read(&docs).unwrap();
    let header_len = Header::encoded_len(2);
    let block = 16 + 16;
    // Same tenant, same file id, same position: only the collection differs.
    moved[header_len..header_len + block].copy_from_slice(&other[header_len..header_len + block]);
    std::fs::write(&docs, &moved).unwrap();
    assert!(matches!(
        read_small(&docs, keys.as_ref(), "a"),
        Err(Error::Decrypt { .. })
    ));
}

#[test]
fn header_edits_with_a_fixed_checksum_still_fail() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let path = write_small(dir.path(), keys.as_ref(), "a", 1);
    let bytes = std::fs::read(&path).unwrap();
    let mut header = Header::decode(&bytes, &path).unwrap();
    header.n_points += 1;
    header.metric = 3;
    let mut edited = header.encode();
    edited.extend_from_slice(&bytes[edited.len()..]);
    std::fs::write(&path, &edited).unwrap();
    assert!(matches!(
        read_small(&path, keys.as_ref(), "a"),
        Err(Error::Decrypt { .. })
    ));
}

#[test]
fn key_rewrite_keeps_the_body_and_survives_old_kek_destruction() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let t = tenant("a");
    let path = write_small(dir.path(), keys.as_ref(), "a", 1);
    let before = std::fs::read(&path).unwrap();
    keys.rotate_kek(&t).unwrap();
    let file = SealedFile::open(&path, FileKind::Segment, &t, "docs").unwrap();
    let ctx = DekContext {
        collection: "docs",
        file_id: 1,
    };
    let wrapped = keys
        .rewrap_data_key(&t, ctx, &file.header().wrapped_dek)
        .unwrap();
    file.rewrite_key(&StdDisk, wrapped).unwrap();
    // The old map still reads the old inode after the rename.
    assert_eq!(file.header().wrapped_dek.kek_version, 1);
    drop(file);
    keys.destroy_kek(&t, 1).unwrap();
    let after = std::fs::read(&path).unwrap();
    let header_len = Header::encoded_len(2);
    assert_eq!(
        before[header_len..],
        after[header_len..],
        "body bytes must be unchanged"
    );
    assert_ne!(before[..header_len], after[..header_len]);
    let (a, b) = read_small(&path, keys.as_ref(), "a").unwrap();
    assert_eq!((a.as_slice(), b.as_slice()), (SECTION_A, SECTION_B));
}

#[test]
fn crypto_erasure_makes_files_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let path = write_small(dir.path(), keys.as_ref(), "a", 1);
    let copy = dir.path().join("stolen-copy");
    std::fs::copy(&path, &copy).unwrap();
    keys.destroy_tenant(&tenant("a")).unwrap();
    assert!(read_small(&path, keys.as_ref(), "a").is_err());
    assert!(read_small(&copy, keys.as_ref(), "a").is_err());
    // Re-creating the tenant makes new keys, which do not open the old files either.
    keys.ensure_tenant(&tenant("a")).unwrap();
    assert!(read_small(&copy, keys.as_ref(), "a").is_err());
}

#[test]
fn manifest_round_trip_through_disk_and_tamper() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let t = tenant("a");
    let manifest = Manifest {
        file_id: 9,
        next_file_id: 10,
        config: CollectionConfig::new(384, Metric::Cosine),
        segments: vec![SegmentEntry {
            file_id: 3,
            n_points: 100,
            deleted: vec![1, 5, 99],
        }],
        wals: vec![7, 8],
        incarnation: Some([7; 16]),
        applied_token: 0,
    };
    manifest
        .write(&StdDisk, dir.path(), &t, "docs", keys.as_ref())
        .unwrap();
    assert_eq!(
        Manifest::read(dir.path(), &t, "docs", keys.as_ref()).unwrap(),
        manifest
    );
    assert!(Manifest::read(dir.path(), &t, "other", keys.as_ref()).is_err());
    let path = dir.path().join("MANIFEST");
    let clean = std::fs::read(&path).unwrap();
    for bit in (0..clean.len() * 8).step_by(7) {
        let mut bytes = clean.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            Manifest::read(dir.path(), &t, "docs", keys.as_ref()).is_err(),
            "bit {bit}"
        );
    }
}

fn any_header() -> impl Strategy<Value = Header> {
    (
        prop_oneof![
            Just(FileKind::Segment),
            Just(FileKind::Manifest),
            Just(FileKind::Wal)
        ],
        any::<u64>(),
        1u32..(16 << 20),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), WRAPPED_KEY_BYTES),
        "[a-z0-9_-]{1,63}",
        "[a-z0-9_-]{1,63}",
        (any::<u32>(), any::<u8>(), any::<u64>()),
        proptest::collection::vec((any::<u32>(), any::<u64>(), any::<u64>()), 0..16),
    )
        .prop_map(
            |(
                kind,
                file_id,
                block_bytes,
                kek_version,
                wrapped,
                tenant,
                collection,
                (dim, metric, n_points),
                sections,
            )| {
                Header {
                    kind,
                    file_id,
                    block_bytes,
                    wrapped_dek: WrappedDek {
                        kek_version,
                        bytes: wrapped.try_into().unwrap(),
                    },
                    tenant,
                    collection,
                    dim,
                    metric,
                    n_points,
                    sections: sections
                        .into_iter()
                        .map(|(id, plain_len, offset)| crate::sealed::SectionEntry {
                            id,
                            plain_len,
                            offset,
                        })
                        .collect(),
                }
            },
        )
}

fn any_manifest() -> impl Strategy<Value = Manifest> {
    (
        any::<u64>(),
        any::<u64>(),
        (
            1usize..=4096,
            prop_oneof![Just(Metric::Cosine), Just(Metric::Dot), Just(Metric::L2)],
            2usize..=64,
            4usize..=1024,
            1usize..=4096,
        ),
        proptest::collection::vec(
            (
                any::<u64>(),
                proptest::collection::btree_set(0u32..1000, 0..20),
            ),
            0..5,
        ),
        proptest::collection::vec(any::<u64>(), 0..5),
    )
        .prop_map(
            |(file_id, next_file_id, (dim, metric, m, ef_construction, ef), segments, wals)| {
                Manifest {
                    file_id,
                    next_file_id,
                    config: CollectionConfig {
                        dim,
                        metric,
                        m,
                        ef_construction,
                        ef,
                    },
                    segments: segments
                        .into_iter()
                        .map(|(file_id, deleted)| SegmentEntry {
                            file_id,
                            n_points: 1000,
                            deleted: deleted.into_iter().collect(),
                        })
                        .collect(),
                    wals,
                    // Both forms: with an incarnation, and without (older collections).
                    incarnation: (next_file_id % 2 == 0).then_some([next_file_id as u8; 16]),
                    applied_token: if next_file_id % 3 == 0 {
                        next_file_id.wrapping_mul(7).max(1)
                    } else {
                        0
                    },
                }
            },
        )
}

proptest! {
    #[test]
    fn header_round_trip(h in any_header()) {
        let encoded = h.encode();
        prop_assert_eq!(Header::decode(&encoded, Path::new("x")).unwrap(), h);
    }

    #[test]
    fn header_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        let _ = Header::decode(&bytes, Path::new("x"));
    }

    #[test]
    fn manifest_body_round_trip(m in any_manifest()) {
        prop_assert_eq!(Manifest::decode_body(m.file_id, &m.encode_body()).unwrap(), m);
    }

    #[test]
    fn manifest_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Manifest::decode_body(1, &bytes);
    }
}

/// Every length, count and offset of a header is checked before it is used: a hostile header
/// (with a valid checksum, which anyone can compute) is refused as corrupt, never a panic, an
/// overflow or a huge allocation.
#[test]
fn hostile_header_fields_are_refused_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["acme"]);
    let path = write_small(dir.path(), keys.as_ref(), "acme", 7);
    let bytes = std::fs::read(&path).unwrap();
    let original = Header::decode(&bytes, &path).unwrap();
    let body = &bytes[Header::encoded_len(original.sections.len())..];
    let file_len = bytes.len() as u64;
    type Edit = fn(&mut Header, u64);
    let edits: &[(&str, Edit)] = &[
        ("a section of u64::MAX bytes", |h, _| {
            h.sections[0].plain_len = u64::MAX
        }),
        ("a last section of u64::MAX bytes", |h, _| {
            h.sections[1].plain_len = u64::MAX
        }),
        ("sections whose lengths overflow together", |h, _| {
            h.sections[0].plain_len = 1 << 63;
            h.sections[1].plain_len = 1 << 63;
            h.sections[1].offset = h.sections[0].offset;
        }),
        ("one-byte blocks whose tags overflow", |h, _| {
            h.block_bytes = 1;
            h.sections[0].plain_len = 1 << 62;
        }),
        ("a section at offset u64::MAX", |h, _| {
            h.sections[1].offset = u64::MAX
        }),
        ("a section past the end of the file", |h, len| {
            h.sections[1].offset = len + 1
        }),
        ("a section longer than the file", |h, len| {
            h.sections[1].plain_len = len
        }),
        ("u64::MAX points", |h, _| h.n_points = u64::MAX),
    ];
    for (what, edit) in edits {
        let mut header = original.clone();
        edit(&mut header, file_len);
        let hostile = dir.path().join("hostile");
        let mut file = header.encode();
        file.extend_from_slice(body);
        std::fs::write(&hostile, &file).unwrap();
        match SealedFile::open(&hostile, FileKind::Segment, &tenant("acme"), "docs") {
            Err(Error::Corrupt { .. }) => {}
            Err(err) => panic!("{what}: {err}"),
            // The counts the layout does not constrain are bound into every block's AAD.
            Ok(_) => assert!(
                matches!(
                    read_small(&hostile, keys.as_ref(), "acme"),
                    Err(Error::Decrypt { .. })
                ),
                "{what}: opened"
            ),
        }
    }
    // Raw fields the encoder cannot produce: section count and header length.
    let raw_edits: &[(&str, usize, &[u8])] = &[
        ("u16::MAX sections", 10, &[0xff, 0xff]),
        ("a header of u32::MAX bytes", 12, &[0xff, 0xff, 0xff, 0xff]),
    ];
    for (what, at, patch) in raw_edits {
        let mut file = bytes.clone();
        file[*at..*at + patch.len()].copy_from_slice(patch);
        let hostile = dir.path().join("hostile");
        std::fs::write(&hostile, &file).unwrap();
        let res = SealedFile::open(&hostile, FileKind::Segment, &tenant("acme"), "docs");
        assert!(matches!(res, Err(Error::Corrupt { .. })), "{what}");
    }
    // A file cut inside its header.
    for len in [0, 6, 100, 255, 300] {
        std::fs::write(dir.path().join("hostile"), &bytes[..len]).unwrap();
        let res = SealedFile::open(
            &dir.path().join("hostile"),
            FileKind::Segment,
            &tenant("acme"),
            "docs",
        );
        assert!(matches!(res, Err(Error::Corrupt { .. })), "cut at {len}");
    }
}
