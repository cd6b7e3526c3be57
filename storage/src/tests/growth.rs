//! Files stay bounded by the data, not by the history: WAL files do not pile up with restarts,
//! and small sealed segments are merged.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::{keys, tenant};
use crate::Collection;
use crate::collection::{CollectionConfig, Context, Limits, PointInput, SearchRequest};
use crate::crypto::LocalKeyService;
use crate::filter::{Payload, PayloadLimits};
use crate::ids::{CollectionName, PointId};
use crate::index::Metric;

const DIM: usize = 8;

fn context(keys: &Arc<LocalKeyService>, limits: Limits) -> Context {
    super::context(keys.clone(), limits)
}

fn files(dir: &Path, prefix: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with(prefix)
        })
        .count()
}

fn random_vector(rng: &mut StdRng) -> Vec<f32> {
    (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// The collection holds exactly `model` (vectors and payloads), every point is found by its own
/// vector, and searches give the brute-force top 10.
fn check(collection: &Collection, model: &BTreeMap<u64, Vec<f32>>, rng: &mut StdRng, ctx: &str) {
    assert_eq!(collection.info().points, model.len() as u64, "{ctx}");
    let ids: Vec<PointId> = model.keys().map(|&id| PointId::Num(id)).collect();
    let mut records = Vec::new();
    for chunk in ids.chunks(100) {
        records.extend(collection.get(chunk, true, true).unwrap());
    }
    assert_eq!(records.len(), model.len(), "{ctx}");
    for record in records {
        let PointId::Num(id) = record.id else {
            panic!("{ctx}: unexpected id {:?}", record.id)
        };
        assert_eq!(
            record.vector.as_deref(),
            Some(&model[&id][..]),
            "{ctx}: point {id}"
        );
        let payload = payload(id);
        assert_eq!(record.payload, Some(payload), "{ctx}: point {id}");
    }
    let search = |vector: &[f32], top_k: usize| {
        collection
            .search(&SearchRequest {
                vector: vector.to_vec(),
                top_k,
                ef: Some(512),
                ..SearchRequest::default()
            })
            .unwrap()
    };
    for (&id, vector) in model {
        assert_eq!(
            search(vector, 1)[0].id,
            PointId::Num(id),
            "{ctx}: point {id} not found by its vector"
        );
    }
    for _ in 0..20 {
        let query = random_vector(rng);
        let mut truth: Vec<(f32, u64)> = model.iter().map(|(&id, v)| (l2(&query, v), id)).collect();
        truth.sort_by(|a, b| a.0.total_cmp(&b.0));
        let expected: Vec<PointId> = truth
            .iter()
            .take(10)
            .map(|(_, id)| PointId::Num(*id))
            .collect();
        let got: Vec<PointId> = search(&query, 10).into_iter().map(|hit| hit.id).collect();
        assert_eq!(got, expected, "{ctx}: search differs from brute force");
    }
}

fn payload(id: u64) -> Payload {
    Payload::from_value(serde_json::json!({ "id": id }), &PayloadLimits::default()).unwrap()
}

fn point(id: u64, vector: &[f32]) -> PointInput {
    PointInput {
        id: PointId::Num(id),
        vector: vector.to_vec(),
        payload: Some(payload(id)),
    }
}

#[test]
fn restarts_of_a_lightly_written_collection_do_not_pile_up_wal_files() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["acme"]);
    let limits = Limits {
        segment_points: 1000,
        ..Limits::default()
    };
    let path = dir.path().join("docs");
    let name = CollectionName::parse("docs").unwrap();
    let mut rng = StdRng::seed_from_u64(8);
    let mut model = BTreeMap::new();
    drop(
        Collection::create(
            &path,
            &tenant("acme"),
            &name,
            CollectionConfig::new(DIM, Metric::L2),
            context(&keys, limits),
        )
        .unwrap(),
    );
    for round in 0..200u64 {
        let collection =
            Collection::open(&path, &tenant("acme"), &name, context(&keys, limits)).unwrap();
        let points: Vec<PointInput> = (0..2)
            .map(|i| {
                let id = round * 2 + i;
                let vector = random_vector(&mut rng);
                model.insert(id, vector.clone());
                point(id, &vector)
            })
            .collect();
        collection.upsert(points).unwrap();
        if round % 10 == 9 {
            let id = rng.random_range(0..round * 2);
            if model.remove(&id).is_some() {
                collection.delete(&[PointId::Num(id)]).unwrap();
            }
        }
        collection.checkpoint_and_close();
        drop(collection);
        let (wals, segments) = (files(&path, "wal-"), files(&path, "seg-"));
        assert!(wals <= 3, "round {round}: {wals} WAL files");
        assert!(segments <= 1, "round {round}: {segments} segment files");
    }
    let collection =
        Collection::open(&path, &tenant("acme"), &name, context(&keys, limits)).unwrap();
    collection.wait_idle().unwrap();
    check(&collection, &model, &mut rng, "after 200 restarts");
}

#[test]
fn small_sealed_segments_are_merged() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["acme"]);
    let limits = Limits {
        segment_points: 100,
        max_batch: 100,
        ..Limits::default()
    };
    let path = dir.path().join("docs");
    let name = CollectionName::parse("docs").unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let mut model: BTreeMap<u64, Vec<f32>> = BTreeMap::new();
    let collection = Collection::create(
        &path,
        &tenant("acme"),
        &name,
        CollectionConfig::new(DIM, Metric::L2),
        context(&keys, limits),
    )
    .unwrap();
    let mut next_id = 0;
    for round in 0..60 {
        // New points, updates of older ones, a few deletes; then a flush seals a small segment.
        let mut points = Vec::new();
        for _ in 0..20 {
            let vector = random_vector(&mut rng);
            model.insert(next_id, vector.clone());
            points.push(point(next_id, &vector));
            next_id += 1;
        }
        for _ in 0..5 * (round > 0) as usize {
            let id = rng.random_range(0..next_id - 20);
            if let Some(stored) = model.get_mut(&id) {
                let vector = random_vector(&mut rng);
                stored.clone_from(&vector);
                points.push(point(id, &vector));
            }
        }
        collection.upsert(points).unwrap();
        let deletes: Vec<PointId> = (0..3)
            .map(|_| PointId::Num(rng.random_range(0..next_id)))
            .collect();
        for id in &deletes {
            let PointId::Num(id) = id else { unreachable!() };
            model.remove(id);
        }
        collection.delete(&deletes).unwrap();
        collection.flush().unwrap();
        let info = collection.info();
        let bound = 2 * info.points as usize / limits.segment_points + 1;
        assert!(
            info.sealed_segments <= bound,
            "round {round}: {} sealed segments for {} points",
            info.sealed_segments,
            info.points
        );
    }
    check(&collection, &model, &mut rng, "after merges");
    let sealed = collection.info().sealed_segments;
    // Closing waits for the background thread, which removes replaced files last.
    drop(collection);
    assert_eq!(files(&path, "seg-"), sealed);
    let collection =
        Collection::open(&path, &tenant("acme"), &name, context(&keys, limits)).unwrap();
    check(&collection, &model, &mut rng, "after reopening");
}
