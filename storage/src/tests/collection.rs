//! Collections against a brute-force oracle: validation, recall, visibility, updates, deletes,
//! filters, scroll, count, reopen, compaction, overflow; and the helpers the other collection
//! tests share (`lifecycle`, `concurrency`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;

use super::{keys, tenant};
use crate::collection::{CollectionConfig, Limits, PointInput, SearchRequest};
use crate::crypto::LocalKeyService;
use crate::filter::{Filter, FilterLimits, Payload, PayloadLimits};
use crate::ids::{CollectionName, PointId};
use crate::index::Metric;
use crate::{Engine, Error};

pub(super) fn name(raw: &str) -> CollectionName {
    CollectionName::parse(raw).unwrap()
}

pub(super) fn limits() -> Limits {
    Limits {
        segment_points: 1000,
        max_batch: 500,
        index_threads: 2,
        ..Limits::default()
    }
}

pub(super) fn engine(dir: &Path, keys: &Arc<LocalKeyService>, limits: Limits) -> Engine {
    Engine::open(&dir.join("data"), keys.clone(), limits).unwrap()
}

pub(super) fn filter(json: serde_json::Value) -> Filter {
    Filter::from_value(json, &FilterLimits::default()).unwrap()
}

pub(super) fn payload(json: serde_json::Value) -> Payload {
    Payload::from_value(json, &PayloadLimits::default()).unwrap()
}

/// `n` points in `clusters` gaussian clusters.
pub(super) fn clustered(seed: u64, n: usize, dim: usize, clusters: usize) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let centers: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..dim).map(|_| rng.random::<f32>() * 10.0 - 5.0).collect())
        .collect();
    (0..n)
        .map(|i| {
            let center = &centers[i % clusters];
            center
                .iter()
                .map(|c| {
                    // Box-Muller.
                    let (u, v): (f32, f32) = (rng.random::<f32>().max(1e-7), rng.random());
                    c + (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
                })
                .collect()
        })
        .collect()
}

pub(super) fn normalised(metric: Metric, v: &[f32]) -> Vec<f32> {
    if metric != Metric::Cosine {
        return v.to_vec();
    }
    let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    v.iter().map(|x| (f64::from(*x) / norm) as f32).collect()
}

/// Exact top-k ids over a model of id -> (vector, payload).
pub(super) fn oracle(
    model: &BTreeMap<PointId, (Vec<f32>, Option<Payload>)>,
    metric: Metric,
    query: &[f32],
    k: usize,
    filter: Option<&Filter>,
) -> Vec<(PointId, f32)> {
    let q = normalised(metric, query);
    let mut all: Vec<(PointId, f32)> = model
        .iter()
        .filter(|(_, (_, p))| filter.is_none_or(|f| f.matches(p.as_ref())))
        .map(|(id, (v, _))| (id.clone(), metric.distance(&q, &normalised(metric, v))))
        .collect();
    all.sort_by(|a, b| a.1.total_cmp(&b.1));
    all.truncate(k);
    all
}

/// Recall@k counting ties at the k-th distance as hits (ann-benchmarks style).
pub(super) fn recall(got: &[(PointId, f32)], truth: &[(PointId, f32)]) -> f64 {
    if truth.is_empty() {
        return 1.0;
    }
    let kth = truth.last().unwrap().1;
    let hits = got
        .iter()
        .filter(|(_, d)| *d <= kth + 1e-4)
        .count()
        .min(truth.len());
    hits as f64 / truth.len() as f64
}

pub(super) fn search(
    collection: &crate::Collection,
    query: &[f32],
    k: usize,
    filter: Option<Filter>,
) -> Vec<(PointId, f32)> {
    let req = SearchRequest {
        vector: query.to_vec(),
        top_k: k,
        ef: None,
        filter,
        with_payload: false,
        with_vector: false,
    };
    collection
        .search(&req)
        .unwrap()
        .into_iter()
        .map(|p| (p.id, p.distance))
        .collect()
}

pub(super) fn upsert_all(
    collection: &crate::Collection,
    points: &[(PointId, Vec<f32>, Option<Payload>)],
    batch: usize,
) {
    for chunk in points.chunks(batch) {
        let inputs = chunk
            .iter()
            .map(|(id, v, p)| PointInput {
                id: id.clone(),
                vector: v.clone(),
                payload: p.clone(),
            })
            .collect();
        collection.upsert(inputs).unwrap();
    }
}

#[test]
fn bad_input_gets_a_typed_error_that_says_what_was_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let engine = engine(dir.path(), &keys, limits());
    let t = tenant("a");
    let c = engine
        .create_collection(
            &t,
            &name("docs"),
            CollectionConfig::new(384, Metric::Cosine),
        )
        .unwrap();
    let point = |vector: Vec<f32>| PointInput {
        id: PointId::Num(1),
        vector,
        payload: None,
    };
    let err = |res: crate::Result<()>| res.unwrap_err().to_string();
    assert_eq!(
        err(c.upsert(vec![point(vec![1.0; 383])])),
        "vector has 383 dimensions, collection expects 384"
    );
    let mut nan = vec![1.0; 384];
    nan[17] = f32::NAN;
    assert_eq!(
        err(c.upsert(vec![point(nan)])),
        "vector component at position 17 is not finite"
    );
    let mut inf = vec![1.0; 384];
    inf[0] = f32::INFINITY;
    assert!(err(c.upsert(vec![point(inf)])).contains("position 0"));
    assert!(err(c.upsert(vec![point(vec![0.0; 384])])).contains("zero vector"));
    assert!(err(c.upsert(vec![])).contains("1..=500 items, got 0"));
    assert!(err(c.upsert((0..501).map(|_| point(vec![1.0; 384])).collect())).contains("got 501"));
    let loose = PayloadLimits {
        max_bytes: 1 << 20,
        ..PayloadLimits::default()
    };
    let big = Payload::from_value(json!({ "blob": "x".repeat(70 * 1024) }), &loose).unwrap();
    let e = c
        .upsert(vec![PointInput {
            id: PointId::Num(1),
            vector: vec![1.0; 384],
            payload: Some(big),
        }])
        .unwrap_err();
    assert!(
        matches!(e, Error::PayloadTooLarge { limit: 65536, .. }),
        "{e}"
    );
    let req = |top_k, ef| SearchRequest {
        vector: vec![1.0; 384],
        top_k,
        ef,
        ..Default::default()
    };
    assert!(
        c.search(&req(0, None))
            .unwrap_err()
            .to_string()
            .contains("top_k 0")
    );
    assert!(
        c.search(&req(1001, None))
            .unwrap_err()
            .to_string()
            .contains("top_k 1001")
    );
    assert!(
        c.search(&req(10, Some(0)))
            .unwrap_err()
            .to_string()
            .contains("ef 0")
    );
    assert!(
        c.search(&req(10, Some(5000)))
            .unwrap_err()
            .to_string()
            .contains("ef 5000")
    );
    let mut short = req(10, None);
    short.vector.pop();
    assert!(matches!(
        c.search(&short),
        Err(Error::DimensionMismatch {
            expected: 384,
            got: 383
        })
    ));
    // Nothing above was stored, and every error is the caller's.
    assert_eq!(c.count(None), 0);
    assert!(matches!(
        engine.collection(&t, &name("nope")),
        Err(Error::CollectionNotFound(_))
    ));
    assert!(matches!(
        engine.create_collection(&t, &name("docs"), CollectionConfig::new(3, Metric::L2)),
        Err(Error::CollectionExists(_))
    ));
    for bad in [
        CollectionConfig::new(0, Metric::L2),
        CollectionConfig::new(4097, Metric::L2),
        CollectionConfig {
            m: 1,
            ..CollectionConfig::new(3, Metric::L2)
        },
    ] {
        let e = engine
            .create_collection(&t, &name("bad"), bad)
            .err()
            .unwrap();
        assert!(e.is_user_error(), "{e}");
    }
    // The collection still serves after all of that.
    c.upsert(vec![point(vec![1.0; 384])]).unwrap();
    assert_eq!(c.count(None), 1);
}

#[test]
fn recall_across_sealed_and_growing_segments_for_every_metric() {
    for (seed, metric) in [(11, Metric::Cosine), (12, Metric::Dot), (13, Metric::L2)] {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path(), &["a"]);
        let engine = engine(dir.path(), &keys, limits());
        let c = engine
            .create_collection(
                &tenant("a"),
                &name("docs"),
                CollectionConfig::new(32, metric),
            )
            .unwrap();
        let vectors = clustered(seed, 3500, 32, 20);
        let points: Vec<_> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (PointId::Num(i as u64), v.clone(), None))
            .collect();
        upsert_all(&c, &points, 500);
        c.wait_idle().unwrap();
        let info = c.info();
        assert_eq!(info.sealed_segments, 3, "seed {seed}: {info:?}");
        let model: BTreeMap<_, _> = points
            .iter()
            .map(|(id, v, p)| (id.clone(), (v.clone(), p.clone())))
            .collect();
        let queries = clustered(seed + 100, 100, 32, 20);
        let total: f64 = queries
            .iter()
            .map(|q| {
                recall(
                    &search(&c, q, 10, None),
                    &oracle(&model, metric, q, 10, None),
                )
            })
            .sum();
        let mean = total / queries.len() as f64;
        assert!(
            mean >= 0.95,
            "seed {seed} {metric:?}: recall@10 {mean:.3} below 0.95"
        );
    }
}

#[test]
fn an_acknowledged_point_is_visible_to_the_next_search() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let engine = engine(dir.path(), &keys, limits());
    let c = engine
        .create_collection(
            &tenant("a"),
            &name("docs"),
            CollectionConfig::new(16, Metric::L2),
        )
        .unwrap();
    for (i, v) in clustered(5, 600, 16, 4).into_iter().enumerate() {
        c.upsert(vec![PointInput {
            id: PointId::Num(i as u64),
            vector: v.clone(),
            payload: None,
        }])
        .unwrap();
        let hits = search(&c, &v, 1, None);
        assert_eq!(
            hits[0].0,
            PointId::Num(i as u64),
            "point {i} not found right after its upsert"
        );
    }
}

#[test]
fn updates_deletes_filters_scroll_and_count_match_the_oracle() {
    let seed = 42;
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let mut engine = engine(dir.path(), &keys, limits());
    let t = tenant("a");
    let mut c = engine
        .create_collection(&t, &name("docs"), CollectionConfig::new(8, Metric::Cosine))
        .unwrap();
    let mut model: BTreeMap<PointId, (Vec<f32>, Option<Payload>)> = BTreeMap::new();
    let vectors = clustered(seed, 4000, 8, 8);
    for round in 0..12 {
        // Upserts: new ids and replacements of existing ones, numeric and string ids.
        let mut batch = Vec::new();
        for _ in 0..300 {
            let n = rng.random_range(0..2500u64);
            let id = if n % 7 == 0 {
                PointId::string(&format!("doc-{n}")).unwrap()
            } else {
                PointId::Num(n)
            };
            let vector = vectors[rng.random_range(0..vectors.len())].clone();
            let group = rng.random_range(0..20u64);
            let p = (n % 5 != 0).then(|| payload(json!({ "group": group, "price": n as f64 / 10.0, "tags": ["t", format!("g{}", group % 3)] })));
            batch.push(PointInput {
                id,
                vector,
                payload: p,
            });
        }
        for point in &batch {
            model.insert(
                point.id.clone(),
                (point.vector.clone(), point.payload.clone()),
            );
        }
        c.upsert(batch).unwrap();
        // Deletes by id (some missing) and by filter.
        let ids: Vec<PointId> = (0..40)
            .map(|_| PointId::Num(rng.random_range(0..2600)))
            .collect();
        let existing = ids
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|id| model.contains_key(*id))
            .count() as u64;
        for id in &ids {
            model.remove(id);
        }
        let deleted = c.delete(&ids).unwrap();
        assert_eq!(deleted, existing, "seed {seed} round {round}");
        if round % 4 == 3 {
            let f = filter(json!({ "must": [{ "key": "group", "match": { "value": round } }] }));
            let expect = model
                .values()
                .filter(|(_, p)| f.matches(p.as_ref()))
                .count() as u64;
            model.retain(|_, (_, p)| !f.matches(p.as_ref()));
            assert_eq!(
                c.delete_by_filter(&f).unwrap(),
                expect,
                "seed {seed} round {round}"
            );
        }
        if round == 6 {
            // Seal what there is, drop the engine and reopen: everything comes back.
            c.flush().unwrap();
            drop(c);
            drop(engine);
            engine = self::engine(dir.path(), &keys, limits());
            c = engine.collection(&t, &name("docs")).unwrap();
        }
        // Count, get, scroll.
        assert_eq!(
            c.count(None),
            model.len() as u64,
            "seed {seed} round {round}"
        );
        let f = filter(
            json!({ "must": [{ "key": "tags", "match": { "value": "g1" } }], "must_not": [{ "key": "price", "range": { "lt": 50 } }] }),
        );
        let matching = model
            .values()
            .filter(|(_, p)| f.matches(p.as_ref()))
            .count() as u64;
        assert_eq!(c.count(Some(&f)), matching, "seed {seed} round {round}");
        let probe: Vec<PointId> = model.keys().take(50).cloned().collect();
        let got = c.get(&probe, true, true).unwrap();
        assert_eq!(got.len(), probe.len());
        for record in &got {
            let (v, p) = &model[&record.id];
            assert_eq!(
                &record.payload, p,
                "seed {seed} round {round} id {}",
                record.id
            );
            let stored = record.vector.as_ref().unwrap();
            let expect = normalised(Metric::Cosine, v);
            assert!(
                stored
                    .iter()
                    .zip(&expect)
                    .all(|(a, b)| (a - b).abs() < 1e-6)
            );
        }
        let mut scrolled = Vec::new();
        let mut from: Option<PointId> = None;
        loop {
            let page = c.scroll(from.as_ref(), 97, None, false, false).unwrap();
            scrolled.extend(page.points.into_iter().map(|r| r.id));
            match page.next {
                Some(next) => from = Some(next),
                None => break,
            }
        }
        assert_eq!(
            scrolled,
            model.keys().cloned().collect::<Vec<_>>(),
            "seed {seed} round {round}"
        );
        // Filtered and unfiltered search against the oracle.
        let mut total = 0.0;
        for q in vectors.iter().step_by(200) {
            total += recall(
                &search(&c, q, 10, Some(f.clone())),
                &oracle(&model, Metric::Cosine, q, 10, Some(&f)),
            );
            for (id, _) in search(&c, q, 10, Some(f.clone())) {
                assert!(
                    f.matches(model[&id].1.as_ref()),
                    "seed {seed} round {round}: {id} does not match the filter"
                );
            }
        }
        let mean = total / 20.0;
        assert!(
            mean >= 0.9,
            "seed {seed} round {round}: filtered recall {mean:.3}"
        );
    }
}

#[test]
fn selective_filters_are_answered_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let engine = engine(
        dir.path(),
        &keys,
        Limits {
            segment_points: 5000,
            ..limits()
        },
    );
    let c = engine
        .create_collection(
            &tenant("a"),
            &name("docs"),
            CollectionConfig::new(16, Metric::L2),
        )
        .unwrap();
    let vectors = clustered(9, 4000, 16, 10);
    let points: Vec<_> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (
                PointId::Num(i as u64),
                v.clone(),
                Some(payload(json!({ "rare": i % 100 == 0 }))),
            )
        })
        .collect();
    upsert_all(&c, &points, 500);
    c.wait_idle().unwrap();
    let model: BTreeMap<_, _> = points
        .iter()
        .map(|(id, v, p)| (id.clone(), (v.clone(), p.clone())))
        .collect();
    let f = filter(json!({ "must": [{ "key": "rare", "match": { "value": true } }] }));
    for q in vectors.iter().step_by(97) {
        let got: Vec<PointId> = search(&c, q, 10, Some(f.clone()))
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let want: Vec<PointId> = oracle(&model, Metric::L2, q, 10, Some(&f))
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(got, want);
    }
}

#[test]
fn sealed_collections_reopen_with_identical_results_and_compact() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let t = tenant("a");
    let vectors = clustered(21, 2500, 24, 12);
    let queries = clustered(22, 30, 24, 12);
    let before: Vec<_> = {
        let engine = engine(dir.path(), &keys, limits());
        let c = engine
            .create_collection(&t, &name("docs"), CollectionConfig::new(24, Metric::Cosine))
            .unwrap();
        let points: Vec<_> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (PointId::Num(i as u64), v.clone(), None))
            .collect();
        upsert_all(&c, &points, 500);
        c.flush().unwrap();
        queries.iter().map(|q| search(&c, q, 10, None)).collect()
    };
    let engine = engine(dir.path(), &keys, limits());
    let c = engine.collection(&t, &name("docs")).unwrap();
    let after: Vec<_> = queries.iter().map(|q| search(&c, q, 10, None)).collect();
    assert_eq!(
        before, after,
        "a reopened sealed collection must answer exactly as before"
    );

    // Delete most of the first segment: compaction rewrites it without the dead points.
    let files = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let coll_dir = dir.path().join("data/tenants/a/docs");
    let segs_before: Vec<String> = files(&coll_dir)
        .into_iter()
        .filter(|n| n.starts_with("seg-"))
        .collect();
    let doomed: Vec<PointId> = (0..600).map(PointId::Num).collect();
    for chunk in doomed.chunks(300) {
        c.delete(chunk).unwrap();
    }
    c.wait_idle().unwrap();
    let segs_after: Vec<String> = files(&coll_dir)
        .into_iter()
        .filter(|n| n.starts_with("seg-"))
        .collect();
    assert_ne!(
        segs_before, segs_after,
        "compaction should replace the segment file"
    );
    assert_eq!(c.count(None), 1900);
    let model: BTreeMap<_, _> = vectors
        .iter()
        .enumerate()
        .skip(600)
        .map(|(i, v)| (PointId::Num(i as u64), (v.clone(), None)))
        .collect();
    let check = |c: &crate::Collection| {
        let total: f64 = queries
            .iter()
            .map(|q| {
                recall(
                    &search(c, q, 10, None),
                    &oracle(&model, Metric::Cosine, q, 10, None),
                )
            })
            .sum();
        assert!(total / queries.len() as f64 >= 0.95);
        for q in &queries {
            for (id, _) in search(c, q, 10, None) {
                assert!(model.contains_key(&id), "deleted point {id} returned");
            }
        }
    };
    check(&c);
    drop(c);
    drop(engine);
    let engine = self::engine(dir.path(), &keys, limits());
    let c = engine.collection(&t, &name("docs")).unwrap();
    assert_eq!(c.count(None), 1900);
    check(&c);
}

#[test]
fn vectors_whose_distances_would_overflow_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let engine = engine(dir.path(), &keys, limits());
    let t = tenant("a");
    for metric in [Metric::L2, Metric::Dot] {
        let c = engine
            .create_collection(
                &t,
                &name(&format!("{metric:?}").to_lowercase()),
                CollectionConfig::new(2, metric),
            )
            .unwrap();
        let point = |id, vector: Vec<f32>| PointInput {
            id: PointId::Num(id),
            vector,
            payload: None,
        };
        // Finite, but |a - b|^2 and a . b overflow f32 (found by the Python client tests).
        let err = c.upsert(vec![point(1, vec![3e38, -3e38])]).unwrap_err();
        assert!(
            err.is_user_error() && err.to_string().contains("too long"),
            "{err}"
        );
        // The largest admissible vectors give finite distances to each other.
        let edge = (crate::collection::MAX_SQUARED_NORM / 2.0).sqrt() as f32 * 0.999;
        c.upsert(vec![
            point(1, vec![edge, edge]),
            point(2, vec![-edge, -edge]),
            point(3, vec![1.0, 2.0]),
        ])
        .unwrap();
        let query = |vector: Vec<f32>| SearchRequest {
            vector,
            top_k: 3,
            ..Default::default()
        };
        assert!(
            c.search(&query(vec![-3e38, 3e38]))
                .unwrap_err()
                .to_string()
                .contains("too long")
        );
        let hits = c.search(&query(vec![-edge, -edge])).unwrap();
        assert_eq!(hits.len(), 3);
        assert!(
            hits.iter().all(|h| h.distance.is_finite()),
            "{metric:?}: {hits:?}"
        );
    }
}

#[test]
fn write_tokens_are_applied_with_their_write_and_survive_reopen_and_flush() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let t = tenant("a");
    let point = |id: u64| PointInput {
        id: PointId::Num(id),
        vector: vec![1.0, id as f32 + 1.0, 0.5],
        payload: None,
    };
    {
        let engine = engine(dir.path(), &keys, limits());
        let c = engine
            .create_collection(&t, &name("docs"), CollectionConfig::new(3, Metric::L2))
            .unwrap();
        assert_eq!(c.applied_token(), 0);
        c.upsert_with_token(vec![point(1)], Some(5)).unwrap();
        c.upsert(vec![point(2)]).unwrap();
        assert_eq!(c.applied_token(), 5, "a write without a token leaves it");
        // A refused write logs nothing, its token included.
        let refused = PointInput {
            id: PointId::Num(3),
            vector: vec![1.0],
            payload: None,
        };
        c.upsert_with_token(vec![refused], Some(6)).unwrap_err();
        assert_eq!(c.applied_token(), 5);
        assert_eq!(c.delete_with_token(&[PointId::Num(2)], Some(7)).unwrap(), 1);
        assert_eq!(c.applied_token(), 7);
    }
    // Replayed from the WAL.
    {
        let engine = engine(dir.path(), &keys, limits());
        let c = engine.collection(&t, &name("docs")).unwrap();
        assert_eq!(c.applied_token(), 7);
        c.upsert_with_token(vec![point(4)], Some(9)).unwrap();
        // Sealed: the WAL is retired, and the manifest carries the token.
        c.flush().unwrap();
    }
    let engine = engine(dir.path(), &keys, limits());
    let c = engine.collection(&t, &name("docs")).unwrap();
    assert_eq!(c.applied_token(), 9);
    assert_eq!(c.count(None), 2);
}
