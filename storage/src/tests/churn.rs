//! INV-27 under update churn: after overwrites, deletes and compactions of the same ids (several
//! times the collection's size, with and without reopening in between), every live point is found
//! by its own stored vector at ef 4096, as in a collection built fresh from the same points, and
//! recall and self-hits at the default ef match that fresh collection.
//!
//! Before the fix of `Graph::write_own_list`, both lost points: every seal and compaction builds a
//! graph on several threads, and such builds left 0.1-0.4% of nodes with no link in (measured at
//! this size: 4 to 11 churned, 10 to 22 fresh, never found even at ef 4096).
//!
//! The default size runs in seconds; `RUN_SLOW_TESTS=1` runs the issue's size (60,000 live points).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::{keys, tenant};
use crate::collection::{CollectionConfig, Limits, PointInput, SearchRequest};
use crate::crypto::LocalKeyService;
use crate::ids::{CollectionName, PointId};
use crate::index::Vectors;
use crate::index::{Metric, exact_search};
use crate::{Collection, Engine};

const DIM: usize = 16;
const SEED: u64 = 20_261_130;

fn limits(n_live: usize) -> Limits {
    Limits {
        segment_points: (n_live / 3).max(1000),
        max_batch: 1000,
        index_threads: 2,
        ..Limits::default()
    }
}

fn open(dir: &Path, keys: &Arc<LocalKeyService>, n_live: usize) -> Engine {
    Engine::open(&dir.join("data"), keys.clone(), limits(n_live)).unwrap()
}

fn name(raw: &str) -> CollectionName {
    CollectionName::parse(raw).unwrap()
}

fn random_vector(rng: &mut StdRng) -> Vec<f32> {
    (0..DIM).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

fn upsert(collection: &Collection, points: &[(u64, Vec<f32>)]) {
    for chunk in points.chunks(1000) {
        let inputs = chunk
            .iter()
            .map(|(id, vector)| PointInput {
                id: PointId::Num(*id),
                vector: vector.clone(),
                payload: None,
            })
            .collect();
        collection.upsert(inputs).unwrap();
    }
}

fn search(collection: &Collection, query: &[f32], top_k: usize, ef: usize) -> Vec<PointId> {
    let req = SearchRequest {
        vector: query.to_vec(),
        top_k,
        ef: Some(ef),
        filter: None,
        with_payload: false,
        with_vector: false,
    };
    collection
        .search(&req)
        .unwrap()
        .into_iter()
        .map(|point| point.id)
        .collect()
}

/// How one collection answers: live points not found by their own vector at the default ef and
/// at ef 4096, and recall@10 at the default ef over random queries.
#[derive(Debug)]
struct Quality {
    missed_default_ef: usize,
    missed_max_ef: usize,
    recall: f64,
}

fn measure(
    collection: &Collection,
    model: &BTreeMap<u64, Vec<f32>>,
    queries: &[Vec<f32>],
) -> Quality {
    let ef = collection.config().ef;
    let mut missed_default_ef = 0;
    let mut missed_max_ef = 0;
    for (id, vector) in model {
        if search(collection, vector, 1, ef).first() != Some(&PointId::Num(*id)) {
            missed_default_ef += 1;
            if search(collection, vector, 1, 4096).first() != Some(&PointId::Num(*id)) {
                missed_max_ef += 1;
            }
        }
    }
    let ids: Vec<u64> = model.keys().copied().collect();
    let flat: Vec<f32> = model.values().flatten().copied().collect();
    let vectors = Vectors::new(&flat, DIM);
    let (mut found, mut wanted) = (0, 0);
    for query in queries {
        let exact = exact_search(&vectors, Metric::L2, query, 10, None);
        let truth: Vec<PointId> = exact
            .iter()
            .map(|hit| PointId::Num(ids[hit.node as usize]))
            .collect();
        found += search(collection, query, 10, ef)
            .iter()
            .filter(|id| truth.contains(id))
            .count();
        wanted += truth.len();
    }
    Quality {
        missed_default_ef,
        missed_max_ef,
        recall: found as f64 / wanted.max(1) as f64,
    }
}

/// Inserts `n_live` points, then churns `rounds` times the collection's size: each step
/// overwrites random ids with new vectors, deletes some and brings deleted ids back, and lets
/// seals and compactions run; with `reopen`, the engine is closed and reopened after each round.
/// Then compares the churned collection with one built fresh from the same live points.
fn check_churn(n_live: usize, rounds: usize, reopen: bool) {
    eprintln!("churn test seed {SEED}: {n_live} live points, {rounds} rounds, reopen {reopen}");
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let t = tenant("a");
    let mut engine = open(dir.path(), &keys, n_live);
    engine
        .create_collection(&t, &name("churned"), CollectionConfig::new(DIM, Metric::L2))
        .unwrap();
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut model: BTreeMap<u64, Vec<f32>> = BTreeMap::new();
    let initial: Vec<(u64, Vec<f32>)> = (0..n_live as u64)
        .map(|id| (id, random_vector(&mut rng)))
        .collect();
    upsert(&engine.collection(&t, &name("churned")).unwrap(), &initial);
    model.extend(initial);
    let mut deleted: Vec<u64> = Vec::new();
    for _ in 0..rounds {
        let collection = engine.collection(&t, &name("churned")).unwrap();
        let mut done = 0;
        while done < n_live {
            let mut writes = Vec::new();
            let mut deletes = Vec::new();
            for _ in 0..1000 {
                let roll = rng.random::<f64>();
                if roll < 0.15 && !deleted.is_empty() {
                    let id = deleted.swap_remove(rng.random_range(0..deleted.len()));
                    writes.push((id, random_vector(&mut rng)));
                } else if roll < 0.3 {
                    let id = rng.random_range(0..n_live as u64);
                    if model.contains_key(&id) && !writes.iter().any(|(w, _)| *w == id) {
                        deletes.push(id);
                    }
                } else {
                    let id = rng.random_range(0..n_live as u64);
                    if model.contains_key(&id) && !deletes.contains(&id) {
                        writes.push((id, random_vector(&mut rng)));
                    }
                }
            }
            let ids: Vec<PointId> = deletes.iter().map(|id| PointId::Num(*id)).collect();
            collection.delete(&ids).unwrap();
            for id in deletes {
                model.remove(&id);
                deleted.push(id);
            }
            upsert(&collection, &writes);
            model.extend(writes);
            done += 1000;
        }
        collection.wait_idle().unwrap();
        drop(collection);
        if reopen {
            engine.close();
            engine = open(dir.path(), &keys, n_live);
        }
    }
    let churned = engine.collection(&t, &name("churned")).unwrap();
    churned.wait_idle().unwrap();
    let fresh = engine
        .create_collection(&t, &name("fresh"), CollectionConfig::new(DIM, Metric::L2))
        .unwrap();
    let points: Vec<(u64, Vec<f32>)> = model.iter().map(|(id, v)| (*id, v.clone())).collect();
    upsert(&fresh, &points);
    fresh.wait_idle().unwrap();
    let queries: Vec<Vec<f32>> = (0..200).map(|_| random_vector(&mut rng)).collect();
    let churned_quality = measure(&churned, &model, &queries);
    let fresh_quality = measure(&fresh, &model, &queries);
    eprintln!(
        "{} live points: churned {churned_quality:?} ({} segments), fresh {fresh_quality:?}",
        model.len(),
        churned.info().segments
    );
    // Before `Graph::repair`, about one build in 25 under a loaded machine left one point of the
    // *fresh* graph unreachable (seen with fresh 1, churned 0). The churn defect this test was
    // written for cut off 0.1-0.25% of the points (6-15 here).
    assert!(
        churned_quality.missed_max_ef == 0 && fresh_quality.missed_max_ef == 0,
        "live points never returned for their own vector: churned {churned_quality:?}, fresh {fresh_quality:?}"
    );
    assert!(
        churned_quality.missed_default_ef <= fresh_quality.missed_default_ef + model.len() / 1000,
        "churned {churned_quality:?}, fresh {fresh_quality:?}"
    );
    assert!(
        churned_quality.recall >= fresh_quality.recall - 0.01,
        "churned {churned_quality:?}, fresh {fresh_quality:?}"
    );
}

#[test]
fn churned_collection_finds_every_live_point() {
    check_churn(6_000, 4, false);
}

#[test]
fn churned_and_reopened_collection_finds_every_live_point() {
    check_churn(6_000, 4, true);
}

#[test]
fn churn_at_the_issues_size_when_slow_tests_run() {
    if std::env::var_os("RUN_SLOW_TESTS").is_none() {
        return;
    }
    check_churn(60_000, 4, false);
    check_churn(60_000, 4, true);
}
