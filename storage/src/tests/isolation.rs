//! What one request may cost and touch: deadlines checked inside scans and walks, answers bounded
//! in bytes while they are built, and a dropped collection's handle that can no longer write.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use super::{keys, tenant};
use crate::collection::{CollectionConfig, Limits, PointInput, SearchRequest};
use crate::crypto::LocalKeyService;
use crate::filter::{Filter, FilterLimits, Payload, PayloadLimits};
use crate::ids::{CollectionName, PointId};
use crate::index::Metric;
use crate::{Collection, Deadline, Engine, Error};

fn name(raw: &str) -> CollectionName {
    CollectionName::parse(raw).unwrap()
}

fn engine(dir: &Path, keys: &Arc<LocalKeyService>, limits: Limits) -> Engine {
    Engine::open(&dir.join("data"), keys.clone(), limits).unwrap()
}

fn limits() -> Limits {
    Limits {
        segment_points: 10_000,
        max_batch: 5_000,
        index_threads: 1,
        ..Limits::default()
    }
}

fn trips_after(n: u64) -> Deadline {
    Deadline::trips_after(n)
}

/// Points `0..n` at `(i, 0)` with payload `{"i": i, "pad": <pad bytes>}`.
fn fill(c: &Collection, n: u64, pad: usize) {
    let points: Vec<PointInput> = (0..n)
        .map(|i| PointInput {
            id: PointId::Num(i),
            vector: vec![i as f32, 0.0],
            payload: Some(
                Payload::from_value(
                    json!({"i": i, "pad": "x".repeat(pad)}),
                    &PayloadLimits::default(),
                )
                .unwrap(),
            ),
        })
        .collect();
    for chunk in points.chunks(5_000) {
        c.upsert(chunk.to_vec()).unwrap();
    }
}

fn odd() -> Filter {
    Filter::from_value(
        json!({"must_not": [{"key": "i", "match": {"any": [0, 2, 4, 6, 8]}}]}),
        &FilterLimits::default(),
    )
    .unwrap()
}

fn query(filter: Option<Filter>) -> SearchRequest {
    SearchRequest {
        vector: vec![0.0, 0.0],
        top_k: 3,
        filter,
        ..Default::default()
    }
}

fn setup(dir: &Path, limits: Limits, n: u64, pad: usize) -> (Engine, Arc<Collection>) {
    let keys = keys(dir, &["a"]);
    let engine = engine(dir, &keys, limits);
    let c = engine
        .create_collection(
            &tenant("a"),
            &name("docs"),
            CollectionConfig::new(2, Metric::L2),
        )
        .unwrap();
    fill(&c, n, pad);
    (engine, c)
}

#[test]
fn scans_stop_inside_at_a_deadline_that_passes_while_they_run() {
    let dir = tempfile::tempdir().unwrap();
    // One growing segment, so the only look before the work is the one before that segment.
    let (_engine, c) = setup(dir.path(), limits(), 8_000, 0);
    let filter = odd();
    // The first look (before the segment) passes; the deadline passes during the scan.
    assert!(matches!(
        c.search_within(&query(Some(filter.clone())), &trips_after(1)),
        Err(Error::DeadlineExceeded)
    ));
    assert!(matches!(
        c.count_within(Some(&filter), &trips_after(1)),
        Err(Error::DeadlineExceeded)
    ));
    assert!(matches!(
        c.scroll_within(
            None,
            10,
            Some(
                &Filter::from_value(
                    json!({"must": [{"key": "i", "match": {"value": 7999}}]}),
                    &FilterLimits::default()
                )
                .unwrap()
            ),
            false,
            false,
            &trips_after(1)
        ),
        Err(Error::DeadlineExceeded)
    ));
    assert!(matches!(
        c.delete_by_filter_within(&filter, &trips_after(1)),
        Err(Error::DeadlineExceeded)
    ));
    // The delete chose its points and stopped before deleting any.
    assert_eq!(c.count(None), 8_000);

    // With time to spare, the same calls answer in full.
    let plenty = || trips_after(1_000);
    assert_eq!(
        c.search_within(&query(Some(filter.clone())), &plenty())
            .unwrap()
            .len(),
        3
    );
    assert_eq!(c.count_within(Some(&filter), &plenty()).unwrap(), 7_995);
    assert_eq!(
        c.delete_by_filter_within(&filter, &plenty()).unwrap(),
        7_995
    );
    assert_eq!(c.count(None), 5);
}

#[test]
fn a_deadline_already_past_refuses_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let (_engine, c) = setup(dir.path(), limits(), 10, 0);
    let past = Deadline::at(std::time::Instant::now());
    assert!(matches!(
        c.search_within(&query(None), &past),
        Err(Error::DeadlineExceeded)
    ));
    assert!(matches!(
        c.count_within(None, &past),
        Err(Error::DeadlineExceeded)
    ));
}

#[test]
fn get_answers_a_repeated_id_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_engine, c) = setup(dir.path(), limits(), 3, 0);
    let ids = vec![PointId::Num(2); 5_000];
    let got = c.get(&ids, true, true).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, PointId::Num(2));
    let ids = [2, 0, 2, 9, 0].map(PointId::Num);
    let got: Vec<PointId> = c
        .get(&ids, false, false)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(got, [2, 0].map(PointId::Num));
}

#[test]
fn answers_are_bounded_in_bytes_while_they_are_built() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_answer_bytes: 100_000,
        ..limits()
    };
    // 200 points of about 1 KiB of payload each: 200 KB in all, twice the bound.
    let (_engine, c) = setup(dir.path(), limits, 200, 1_000);
    let ids: Vec<PointId> = (0..200).map(PointId::Num).collect();
    let err = c.get(&ids, true, false).unwrap_err();
    assert!(
        matches!(err, Error::AnswerTooLarge { limit: 100_000, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("fewer ids"), "{err}");
    // Without payloads the same ids fit.
    assert_eq!(c.get(&ids, false, false).unwrap().len(), 200);

    // A scroll page ends early at the bound and says where to go on; the pages cover every point.
    let mut from = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = c.scroll(from.as_ref(), 200, None, true, false).unwrap();
        let bytes: usize = page
            .points
            .iter()
            .map(|r| r.payload.as_ref().map_or(0, Payload::encoded_len))
            .sum();
        assert!(bytes <= 100_000, "a page of {bytes} bytes");
        seen.extend(page.points.into_iter().map(|r| r.id));
        pages += 1;
        match page.next {
            Some(next) => from = Some(next),
            None => break,
        }
    }
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(seen, ids);

    // A batch search counts all its answers against one bound.
    let search = SearchRequest {
        top_k: 50,
        with_payload: true,
        ..query(None)
    };
    assert_eq!(c.search(&search).unwrap().len(), 50);
    let err = c.search_batch(&vec![search; 3]).unwrap_err();
    assert!(matches!(err, Error::AnswerTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("top_k"), "{err}");
}

#[test]
fn a_dropped_collection_refuses_writes_through_a_handle_taken_before() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, old) = setup(dir.path(), limits(), 10, 0);
    engine.drop_collection(&tenant("a"), &name("docs")).unwrap();
    let new = engine
        .create_collection(
            &tenant("a"),
            &name("docs"),
            CollectionConfig::new(2, Metric::L2),
        )
        .unwrap();
    let point = PointInput {
        id: PointId::Num(99),
        vector: vec![9.0, 9.0],
        payload: None,
    };
    assert!(matches!(
        old.upsert(vec![point.clone()]),
        Err(Error::Dropped(_))
    ));
    assert!(matches!(
        old.delete(&[PointId::Num(1)]),
        Err(Error::Dropped(_))
    ));
    assert!(matches!(
        old.delete_by_filter(&odd()),
        Err(Error::Dropped(_))
    ));
    assert!(matches!(old.rewrap_keys(), Err(Error::Dropped(_))));
    drop(old);
    assert_eq!(new.count(None), 0);
    new.upsert(vec![PointInput {
        id: PointId::Num(1),
        ..point
    }])
    .unwrap();
    drop(new);
    drop(engine);
    // The new collection, reopened, holds exactly its own point.
    let keys = keys(dir.path(), &["a"]);
    let engine = self::engine(dir.path(), &keys, limits());
    let c = engine.collection(&tenant("a"), &name("docs")).unwrap();
    assert_eq!(c.count(None), 1);
    assert_eq!(c.get(&[PointId::Num(99)], false, false).unwrap().len(), 0);
}

#[test]
fn memory_accounting_counts_payload_and_id_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // 300 points, each with 8 KB of payload: 2.4 MB the budget must see.
    let (engine, c) = setup(dir.path(), limits(), 300, 8_000);
    let payload_bytes = 300 * 8_000;
    let growing = c.info().memory_bytes;
    assert!(growing >= payload_bytes, "{growing} bytes counted");
    // String ids count their bytes too.
    let long_id = "i".repeat(128);
    let before = c.info().memory_bytes;
    c.upsert(vec![PointInput {
        id: PointId::string(&long_id).unwrap(),
        vector: vec![1.0, 1.0],
        payload: None,
    }])
    .unwrap();
    assert!(c.info().memory_bytes >= before + 128);
    // Sealed and loaded again from its file, the segment counts the same.
    c.flush().unwrap();
    c.wait_idle().unwrap();
    drop(c);
    engine.unload_tenant(&tenant("a")).unwrap();
    let c = engine.collection(&tenant("a"), &name("docs")).unwrap();
    let loaded = c.info().memory_bytes;
    assert!(
        loaded >= payload_bytes,
        "{loaded} bytes counted after a load"
    );
}

/// The bytes a tenant's byte quota counts follow the live points exactly: overwrites replace,
/// deletes free at once (before any compaction), and a sealed, reloaded segment counts the same.
#[test]
fn stored_bytes_count_live_points_only() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, c) = setup(dir.path(), limits(), 300, 8_000);
    let bytes_of = |c: &Collection| -> u64 {
        let ids: Vec<PointId> = (0..300).map(PointId::Num).collect();
        let records = c.get(&ids, true, false).unwrap();
        records
            .iter()
            .map(|r| crate::collection::point_stored_bytes(2, &r.id, r.payload.as_ref()))
            .sum()
    };
    let stored = c.info().stored_bytes;
    assert_eq!(stored, bytes_of(&c));
    // Real bytes: every payload's 8 KB and every vector's 8 bytes at least.
    assert!(stored >= 300 * (8_000 + 8), "{stored}");
    assert_eq!(c.stored_bytes_of(&[PointId::Num(0), PointId::Num(0)]).0, 1);
    assert_eq!(
        c.stored_bytes_of(&[PointId::Num(7), PointId::Num(1_000)]).0,
        1
    );
    // Overwriting every point with the same payload leaves the figure as it was.
    fill(&c, 300, 8_000);
    assert_eq!(c.info().stored_bytes, stored);
    // Deleting frees a point's bytes at once.
    let (n, freed) = c.stored_bytes_of(&[PointId::Num(3), PointId::Num(4)]);
    assert_eq!(n, 2);
    c.delete(&[PointId::Num(3), PointId::Num(4)]).unwrap();
    assert_eq!(c.info().stored_bytes, stored - freed);
    c.flush().unwrap();
    c.wait_idle().unwrap();
    drop(c);
    engine.unload_tenant(&tenant("a")).unwrap();
    let c = engine.collection(&tenant("a"), &name("docs")).unwrap();
    assert_eq!(c.info().stored_bytes, stored - freed);
}

#[test]
fn a_file_of_another_tenant_is_refused_without_naming_that_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["acme", "globex"]);
    let engine = engine(dir.path(), &keys, limits());
    let config = CollectionConfig::new(2, Metric::L2);
    let acme = engine
        .create_collection(&tenant("acme"), &name("docs"), config)
        .unwrap();
    fill(&acme, 3, 0);
    let globex = engine
        .create_collection(&tenant("globex"), &name("secretplans"), config)
        .unwrap();
    fill(&globex, 3, 0);
    drop((acme, globex));
    drop(engine);
    // An attacker with write access to the disk, or a restore gone wrong, puts globex's
    // manifest where acme's was.
    let tenants = dir.path().join("data").join("tenants");
    std::fs::copy(
        tenants.join("globex/secretplans/MANIFEST"),
        tenants.join("acme/docs/MANIFEST"),
    )
    .unwrap();
    let engine = self::engine(dir.path(), &keys, limits());
    let err = engine
        .collection(&tenant("acme"), &name("docs"))
        .unwrap_err();
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains("globex"), "{shown}");
        assert!(!shown.contains("secretplans"), "{shown}");
    }
    // globex itself still serves.
    let c = engine
        .collection(&tenant("globex"), &name("secretplans"))
        .unwrap();
    assert_eq!(c.count(None), 3);
}

/// A collection's files are bound to its incarnation: a segment or WAL of a dropped collection,
/// put in place of the file with the same id in a new collection of the same name (same tenant,
/// same KEK, same file ids), does not authenticate there.
#[test]
fn files_of_a_dropped_collection_do_not_authenticate_in_a_new_one_of_the_same_name() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["acme"]);
    let t = tenant("acme");
    let coll_dir = dir
        .path()
        .join("data")
        .join("tenants")
        .join("acme")
        .join("docs");
    // The same history in both incarnations, so their files get the same ids.
    let history = |engine: &Engine, offset: f32| {
        let collection = engine
            .create_collection(&t, &name("docs"), CollectionConfig::new(2, Metric::L2))
            .unwrap();
        let points = |ids: std::ops::Range<u64>| {
            ids.map(|i| PointInput {
                id: PointId::Num(i),
                vector: vec![i as f32 + offset, 1.0],
                payload: None,
            })
            .collect()
        };
        collection.upsert(points(0..10)).unwrap();
        collection.flush().unwrap();
        collection.upsert(points(10..15)).unwrap();
    };
    let stash = dir.path().join("stash");
    std::fs::create_dir(&stash).unwrap();
    {
        let engine = engine(dir.path(), &keys, limits());
        history(&engine, 1000.0);
        for entry in std::fs::read_dir(&coll_dir).unwrap() {
            let entry = entry.unwrap();
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with("seg-") || file.starts_with("wal-") {
                std::fs::copy(entry.path(), stash.join(&file)).unwrap();
            }
        }
        engine.drop_collection(&t, &name("docs")).unwrap();
        history(&engine, 0.0);
    }
    let mut stashed: Vec<String> = std::fs::read_dir(&stash)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    stashed.sort();
    assert!(stashed.iter().any(|f| f.starts_with("seg-")), "{stashed:?}");
    assert!(stashed.iter().any(|f| f.starts_with("wal-")), "{stashed:?}");
    for file in &stashed {
        let current = coll_dir.join(file);
        assert!(
            current.exists(),
            "{file} has no counterpart in the new collection"
        );
        let kept = std::fs::read(&current).unwrap();
        std::fs::copy(stash.join(file), &current).unwrap();
        {
            let engine = engine(dir.path(), &keys, limits());
            let res = engine.collection(&t, &name("docs"));
            assert!(
                matches!(res, Err(Error::CollectionUnavailable { .. })),
                "{file} of the dropped collection was accepted: {res:?}"
            );
        }
        std::fs::write(&current, kept).unwrap();
    }
    // With its own files back, the new collection opens with its own points.
    let engine = engine(dir.path(), &keys, limits());
    let collection = engine.collection(&t, &name("docs")).unwrap();
    assert_eq!(collection.count(None), 15);
    let record = collection.get(&[PointId::Num(3)], false, true).unwrap();
    assert_eq!(record[0].vector.as_deref(), Some(&[3.0, 1.0][..]));
}

/// A collection created before incarnations (its manifest has none) keeps opening and writing
/// files whose AAD is what it always was.
#[test]
fn a_collection_without_an_incarnation_still_opens_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["acme"]);
    let t = tenant("acme");
    let coll_dir = dir.path().join("docs");
    std::fs::create_dir(&coll_dir).unwrap();
    let config = CollectionConfig::new(2, Metric::L2);
    crate::manifest::Manifest {
        file_id: 1,
        next_file_id: 2,
        config,
        segments: Vec::new(),
        wals: Vec::new(),
        incarnation: None,
        applied_token: 0,
    }
    .write(&crate::disk::StdDisk, &coll_dir, &t, "docs", keys.as_ref())
    .unwrap();
    let context = || super::context(keys.clone(), limits());
    let point = |i: u64| PointInput {
        id: PointId::Num(i),
        vector: vec![i as f32, 1.0],
        payload: None,
    };
    {
        let collection = Collection::open(&coll_dir, &t, &name("docs"), context()).unwrap();
        collection.upsert((0..10).map(point).collect()).unwrap();
        collection.flush().unwrap();
        collection.upsert((10..15).map(point).collect()).unwrap();
    }
    let collection = Collection::open(&coll_dir, &t, &name("docs"), context()).unwrap();
    assert_eq!(collection.count(None), 15);
    let manifest = crate::manifest::Manifest::read(&coll_dir, &t, "docs", keys.as_ref()).unwrap();
    assert_eq!(manifest.incarnation, None);
    assert_eq!(manifest.segments.len(), 1);
}
