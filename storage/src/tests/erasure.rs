//! Erasure ([`Collection::erase_matching`]): after it answers, no file of the collection,
//! decrypted with the tenant's keys, holds any version of an erased point, in a sealed segment, a
//! WAL or the manifest; the other points are all still served, also after a reopen.

use std::path::Path;

use serde_json::json;

use super::collection::{engine, filter, limits, name, payload};
use super::{keys, tenant};
use crate::collection::{Limits, PointInput};
use crate::crypto::{DekContext, FileOpener, KeyService};
use crate::ids::{PointId, TenantId};
use crate::index::Metric;
use crate::manifest::{MANIFEST_NAME, Manifest};
use crate::sealed::{FileKind, SealedFile};
use crate::{CollectionConfig, Deadline};

const DIM: usize = 8;

/// A vector no other point has, and whose bytes no two neighbours' bytes put together make (as
/// an arithmetic series would): pseudo-random components seeded by the point and its version.
fn vector(i: u64, version: u64) -> Vec<f32> {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(i * 1000 + version);
    (0..DIM).map(|_| rng.random::<f32>() * 100.0).collect()
}

fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Every file of the collection in `dir`, decrypted: each WAL's operations (ids, vectors and
/// payloads as bytes), each segment's sections, the manifest's body. Fails on a file it cannot
/// read, so a scan never passes by skipping one.
fn decrypted_files(dir: &Path, t: &TenantId, keys: &dyn KeyService) -> Vec<(String, Vec<u8>)> {
    let manifest = Manifest::read(dir, t, "docs", keys).unwrap();
    let mut out = vec![(MANIFEST_NAME.to_owned(), manifest.encode_body())];
    for entry in std::fs::read_dir(dir).unwrap() {
        let file_name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let path = dir.join(&file_name);
        let mut plain = Vec::new();
        if let Some(id) = file_name.strip_prefix("wal-") {
            crate::wal::replay(
                &path,
                t,
                "docs",
                id.parse().unwrap(),
                keys,
                manifest.incarnation,
                |ops| {
                    for op in ops {
                        match op {
                            crate::wal::Op::Upsert {
                                id,
                                vector,
                                payload,
                            } => {
                                plain.extend(format!("{id:?}").bytes());
                                plain.extend(bytes_of(&vector));
                                plain.extend(payload.unwrap_or_default());
                            }
                            other => plain.extend(format!("{other:?}").bytes()),
                        }
                    }
                    Ok(())
                },
            )
            .unwrap();
        } else if file_name.starts_with("seg-") {
            let file = SealedFile::open(&path, FileKind::Segment, t, "docs")
                .unwrap()
                .bind_incarnation(manifest.incarnation);
            let ctx = DekContext {
                collection: "docs",
                file_id: file.header().file_id,
            };
            let dek = keys
                .decrypt_data_key(t, ctx, &file.header().wrapped_dek)
                .unwrap();
            let opener = FileOpener::new(dek);
            for section in &file.header().sections {
                let bytes = file.read_section(&opener, t, section.id).unwrap();
                plain.extend_from_slice(bytes.as_bytes());
            }
        } else {
            assert_eq!(
                file_name, MANIFEST_NAME,
                "an unexpected file in the collection"
            );
            continue;
        }
        out.push((file_name, plain));
    }
    out
}

/// The files among `files` that contain `needle`.
fn holding(files: &[(String, Vec<u8>)], needle: &[u8]) -> Vec<String> {
    files
        .iter()
        .filter(|(_, plain)| plain.windows(needle.len()).any(|w| w == needle))
        .map(|(name, _)| name.clone())
        .collect()
}

fn point(i: u64, version: u64, entity: &str) -> PointInput {
    PointInput {
        id: PointId::Num(i),
        vector: vector(i, version),
        payload: Some(payload(
            json!({ "entity_id": entity, "note": format!("note-{i}-{version}") }),
        )),
    }
}

#[test]
fn erasure_leaves_no_file_holding_an_erased_point() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let t = tenant("a");
    let limits = Limits {
        segment_points: 100,
        max_batch: 50,
        ..limits()
    };
    let engine = engine(dir.path(), &keys, limits);
    engine
        .create_collection(&t, &name("docs"), CollectionConfig::new(DIM, Metric::L2))
        .unwrap();
    let c = engine.collection(&t, &name("docs")).unwrap();
    // 450 points in batches (several sealed segments), every tenth naming the entity.
    let entity_of = |i: u64| {
        if i.is_multiple_of(10) {
            "person-7".to_owned()
        } else {
            format!("other-{i}")
        }
    };
    for batch in (0..450u64).collect::<Vec<_>>().chunks(50) {
        c.upsert(batch.iter().map(|&i| point(i, 0, &entity_of(i))).collect())
            .unwrap();
    }
    c.wait_idle().unwrap();
    // Point 5 named the entity once and was overwritten: its old version must go too, while its
    // current one stays. Points 450..455 name it and stay in the growing segment and its WAL.
    c.upsert(vec![point(5, 1, "person-7")]).unwrap();
    c.upsert(vec![point(5, 2, "other-5")]).unwrap();
    c.upsert((450..455).map(|i| point(i, 0, "person-7")).collect())
        .unwrap();
    let erased: Vec<(u64, u64)> = (0..455u64)
        .filter(|i| i.is_multiple_of(10) || *i >= 450)
        .map(|i| (i, 0))
        .chain([(5, 1)])
        .collect();
    let coll_dir = dir.path().join("data/tenants/a/docs");

    // The scan finds them before the erasure (so that it can fail).
    let files = decrypted_files(&coll_dir, &t, keys.as_ref());
    assert!(!holding(&files, b"person-7").is_empty());
    for &(i, version) in &erased {
        assert!(!holding(&files, &bytes_of(&vector(i, version))).is_empty());
    }

    let purged = c
        .erase_matching(
            &filter(json!({ "must": [{ "key": "entity_id", "match": { "value": "person-7" } }] })),
            &Deadline::none(),
        )
        .unwrap();
    assert_eq!(purged.points, 50, "45 sealed and 5 growing: {purged:?}");
    assert!(purged.segments_rewritten >= 5, "{purged:?}");
    assert!(
        purged.files_deleted >= purged.segments_rewritten,
        "{purged:?}"
    );

    let files = decrypted_files(&coll_dir, &t, keys.as_ref());
    assert_eq!(holding(&files, b"person-7"), Vec::<String>::new());
    for &(i, version) in &erased {
        let found = holding(&files, &bytes_of(&vector(i, version)));
        assert!(
            found.is_empty(),
            "point {i} v{version} is still in {found:?}"
        );
    }
    // Everything else is still there and served, also after a reopen.
    let kept = |c: &crate::Collection| {
        assert_eq!(c.count(None), 405);
        let got = c
            .get(
                &[PointId::Num(5), PointId::Num(10), PointId::Num(11)],
                true,
                true,
            )
            .unwrap();
        assert_eq!(got.len(), 2, "point 10 is erased: {got:?}");
        assert_eq!(got[0].vector.as_deref(), Some(&vector(5, 2)[..]));
        assert_eq!(got[1].vector.as_deref(), Some(&vector(11, 0)[..]));
    };
    kept(&c);
    assert!(!holding(&files, &bytes_of(&vector(5, 2))).is_empty());
    drop(c);
    drop(engine);
    let engine = self::engine(dir.path(), &keys, limits);
    kept(&engine.collection(&t, &name("docs")).unwrap());
}

#[test]
fn erasure_of_nothing_rewrites_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let t = tenant("a");
    let engine = engine(dir.path(), &keys, limits());
    engine
        .create_collection(&t, &name("docs"), CollectionConfig::new(DIM, Metric::L2))
        .unwrap();
    let c = engine.collection(&t, &name("docs")).unwrap();
    c.upsert((0..20).map(|i| point(i, 0, "other")).collect())
        .unwrap();
    let purged = c
        .erase_matching(
            &filter(json!({ "must": [{ "key": "entity_id", "match": { "value": "nobody" } }] })),
            &Deadline::none(),
        )
        .unwrap();
    assert_eq!(purged, crate::Purged::default());
    assert_eq!(c.count(None), 20);
}
