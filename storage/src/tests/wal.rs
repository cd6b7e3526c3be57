//! WAL: frame round trips, every prefix replays, torn tails versus mid-log damage, tampering.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::{keys, tenant};
use crate::Error;
use crate::crypto::{DekContext, KeyService, LocalKeyService};
use crate::disk::StdDisk;
use crate::ids::PointId;
use crate::sealed::Header;
use crate::wal::{self, Op, WalWriter, decode_batch, encode_batch};

fn batch(frame: u64) -> Vec<Op> {
    vec![
        Op::Upsert {
            id: PointId::Num(frame),
            vector: vec![frame as f32, 1.5, -2.0],
            payload: Some(br#"{"k":1}"#.to_vec()),
        },
        Op::Upsert {
            id: PointId::string(&format!("s{frame}")).unwrap(),
            vector: vec![0.0; 3],
            payload: None,
        },
        Op::Delete {
            id: PointId::Num(frame + 1000),
        },
    ]
}

/// Writes a WAL with `frames` frames; returns its path and each frame's end offset.
fn write_wal(dir: &Path, keys: &LocalKeyService, frames: u64) -> (PathBuf, Vec<u64>) {
    let t = tenant("a");
    let path = dir.join("wal-5");
    let dek = keys
        .generate_data_key(
            &t,
            DekContext {
                collection: "docs",
                file_id: 5,
            },
        )
        .unwrap();
    let mut writer = WalWriter::create(&StdDisk, &path, &t, "docs", 5, 3, dek, None).unwrap();
    let mut ends = Vec::new();
    for frame in 0..frames {
        writer.append(&batch(frame)).unwrap();
        ends.push(writer.len());
    }
    (path, ends)
}

fn replay_all(
    path: &Path,
    keys: &LocalKeyService,
) -> crate::Result<(Vec<Vec<Op>>, wal::ReplayReport)> {
    let mut frames = Vec::new();
    let report = wal::replay(path, &tenant("a"), "docs", 5, keys, None, |ops| {
        frames.push(ops);
        Ok(())
    })?;
    Ok((frames, report))
}

#[test]
fn frames_replay_in_order_and_plaintext_never_hits_disk() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let (path, _) = write_wal(dir.path(), &keys, 4);
    let (frames, report) = replay_all(&path, &keys).unwrap();
    assert_eq!(frames, (0..4).map(batch).collect::<Vec<_>>());
    assert_eq!(
        report,
        wal::ReplayReport {
            frames: 4,
            ops: 12,
            torn_tail: None
        }
    );
    let raw = std::fs::read(&path).unwrap();
    assert!(!raw.windows(7).any(|w| w == br#"{"k":1}"#));
    assert!(!raw.windows(4).any(|w| w == 1.5f32.to_le_bytes()));
}

#[test]
fn every_prefix_replays_the_complete_frames_and_reports_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let (path, ends) = write_wal(dir.path(), &keys, 5);
    let full = std::fs::read(&path).unwrap();
    let header_len = Header::encoded_len(0) as u64;
    let cut = dir.path().join("wal-cut");
    for len in header_len..=full.len() as u64 {
        std::fs::write(&cut, &full[..len as usize]).unwrap();
        std::fs::rename(&cut, &path).unwrap();
        let (frames, report) = replay_all(&path, &keys).unwrap();
        let complete = ends.iter().filter(|&&end| end <= len).count();
        assert_eq!(frames.len(), complete, "prefix {len}");
        let last_end = if complete == 0 {
            header_len
        } else {
            ends[complete - 1]
        };
        let expect_torn = (len > last_end).then_some((last_end, len - last_end));
        assert_eq!(report.torn_tail, expect_torn, "prefix {len}");
        std::fs::write(&path, &full).unwrap();
    }
}

#[test]
fn damage_before_the_tail_is_an_error_naming_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let (path, ends) = write_wal(dir.path(), &keys, 4);
    let clean = std::fs::read(&path).unwrap();
    // Every bit of every frame but the last: an error; of the last: a torn tail, never silence.
    for bit in Header::encoded_len(0) * 8..clean.len() * 8 {
        let mut bytes = clean.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(&path, &bytes).unwrap();
        let byte = (bit / 8) as u64;
        match replay_all(&path, &keys) {
            Err(Error::Corrupt { offset, .. }) => {
                assert!(
                    byte < ends[2],
                    "bit {bit} in the last frame reported as mid-log damage"
                );
                let frame_start = ends
                    .iter()
                    .rev()
                    .find(|&&end| end <= byte)
                    .copied()
                    .unwrap_or(Header::encoded_len(0) as u64);
                assert_eq!(offset, frame_start, "bit {bit}");
            }
            Ok((frames, report)) => {
                assert!(
                    byte >= ends[2],
                    "bit {bit} before the last frame was not an error"
                );
                assert_eq!(frames.len(), 3);
                assert_eq!(report.torn_tail.map(|(at, _)| at), Some(ends[2]));
            }
            Err(other) => panic!("bit {bit}: unexpected {other}"),
        }
    }
}

#[test]
fn a_forged_frame_with_a_valid_crc_fails_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let (path, _) = write_wal(dir.path(), &keys, 2);
    let mut bytes = std::fs::read(&path).unwrap();
    let frame = Header::encoded_len(0);
    bytes[frame + 20] ^= 0x01;
    let len = u32::from_le_bytes(bytes[frame..frame + 4].try_into().unwrap()) as usize;
    let crc = crc32fast::hash(&bytes[frame + 8..frame + 16 + len]);
    bytes[frame + 4..frame + 8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        replay_all(&path, &keys),
        Err(Error::Decrypt { .. })
    ));
}

#[test]
fn a_wal_of_another_tenant_or_file_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a", "b"]);
    let (path, _) = write_wal(dir.path(), &keys, 1);
    assert!(
        wal::replay(&path, &tenant("b"), "docs", 5, keys.as_ref(), None, |_| Ok(
            ()
        ))
        .is_err()
    );
    assert!(
        wal::replay(&path, &tenant("a"), "docs", 6, keys.as_ref(), None, |_| Ok(
            ()
        ))
        .is_err()
    );
    assert!(
        wal::replay(
            &path,
            &tenant("a"),
            "other",
            5,
            keys.as_ref(),
            None,
            |_| Ok(())
        )
        .is_err()
    );
}

fn any_op() -> impl Strategy<Value = Op> {
    let id = prop_oneof![
        any::<u64>().prop_map(PointId::Num),
        "[a-z]{1,20}".prop_map(PointId::Str)
    ];
    prop_oneof![
        (
            id.clone(),
            proptest::collection::vec(-1e6f32..1e6, 0..20),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))
        )
            .prop_map(|(id, vector, payload)| Op::Upsert {
                id,
                vector,
                payload
            }),
        id.prop_map(|id| Op::Delete { id }),
        any::<u64>().prop_map(Op::Token),
    ]
}

proptest! {
    #[test]
    fn batch_round_trip(ops in proptest::collection::vec(any_op(), 0..20)) {
        prop_assert_eq!(decode_batch(&encode_batch(&ops)).unwrap(), ops);
    }

    #[test]
    fn batch_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_batch(&bytes);
    }
}
