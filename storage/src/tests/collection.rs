//! Collections against a brute-force oracle: validation, recall, visibility, updates, deletes,
//! filters, scroll, count, reopen, compaction, rotation, erasure, unload, isolation.

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

fn name(raw: &str) -> CollectionName {
    CollectionName::parse(raw).unwrap()
}

fn limits() -> Limits {
    Limits {
        segment_points: 1000,
        max_batch: 500,
        index_threads: 2,
        ..Limits::default()
    }
}

fn engine(dir: &Path, keys: &Arc<LocalKeyService>, limits: Limits) -> Engine {
    Engine::open(&dir.join("data"), keys.clone(), limits).unwrap()
}

fn filter(json: serde_json::Value) -> Filter {
    Filter::from_value(json, &FilterLimits::default()).unwrap()
}

fn payload(json: serde_json::Value) -> Payload {
    Payload::from_value(json, &PayloadLimits::default()).unwrap()
}

/// `n` points in `clusters` gaussian clusters.
fn clustered(seed: u64, n: usize, dim: usize, clusters: usize) -> Vec<Vec<f32>> {
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

fn normalised(metric: Metric, v: &[f32]) -> Vec<f32> {
    if metric != Metric::Cosine {
        return v.to_vec();
    }
    let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    v.iter().map(|x| (f64::from(*x) / norm) as f32).collect()
}

/// Exact top-k ids over a model of id -> (vector, payload).
fn oracle(
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
fn recall(got: &[(PointId, f32)], truth: &[(PointId, f32)]) -> f64 {
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

fn search(
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

fn upsert_all(
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
fn kek_rotation_rewraps_without_reencrypting_and_erasure_locks_everything() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let t = tenant("a");
    let engine = engine(dir.path(), &keys, limits());
    let c = engine
        .create_collection(&t, &name("docs"), CollectionConfig::new(8, Metric::L2))
        .unwrap();
    let points: Vec<_> = clustered(3, 1500, 8, 5)
        .into_iter()
        .enumerate()
        .map(|(i, v)| (PointId::Num(i as u64), v, None))
        .collect();
    upsert_all(&c, &points[..1200], 400);
    c.flush().unwrap();
    upsert_all(&c, &points[1200..], 300);
    let coll_dir = dir.path().join("data/tenants/a/docs");
    let seg = std::fs::read_dir(&coll_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .unwrap();
    let seg_before = std::fs::read(&seg).unwrap();

    keys.rotate_kek(&t).unwrap();
    engine.rewrap_tenant(&t).unwrap();
    keys.destroy_kek(&t, 1).unwrap();
    let seg_after = std::fs::read(&seg).unwrap();
    let header_len = crate::sealed::Header::encoded_len(4);
    assert_eq!(
        seg_before[header_len..],
        seg_after[header_len..],
        "rotation must not re-encrypt data"
    );
    // Writes continue, and everything reopens under the new KEK alone.
    c.upsert(vec![PointInput {
        id: PointId::Num(9999),
        vector: vec![1.0; 8],
        payload: None,
    }])
    .unwrap();
    drop(c);
    drop(engine);
    let engine = self::engine(dir.path(), &keys, limits());
    let c = engine.collection(&t, &name("docs")).unwrap();
    assert_eq!(c.count(None), 1501);
    drop(c);
    drop(engine);

    // Crypto-erasure: with the tenant's KEKs destroyed, nothing opens, copies included.
    let stolen = dir.path().join("stolen");
    std::fs::create_dir_all(&stolen).unwrap();
    for entry in std::fs::read_dir(&coll_dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), stolen.join(entry.file_name())).unwrap();
    }
    keys.destroy_tenant(&t).unwrap();
    let engine = self::engine(dir.path(), &keys, limits());
    assert!(engine.collection(&t, &name("docs")).is_err());
    engine.delete_tenant(&t).unwrap();
    assert!(!dir.path().join("data/tenants/a").exists());
    keys.ensure_tenant(&t).unwrap();
    let res = crate::collection::Collection::open(&stolen, &t, &name("docs"), test_context(&keys));
    assert!(res.is_err(), "a copy must not open after erasure");
}

fn test_context(keys: &Arc<LocalKeyService>) -> crate::collection::Context {
    super::context(keys.clone(), limits())
}

#[test]
fn unloading_a_tenant_frees_its_plaintext_and_loading_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let t = tenant("a");
    let engine = engine(dir.path(), &keys, limits());
    let c = engine
        .create_collection(&t, &name("docs"), CollectionConfig::new(64, Metric::L2))
        .unwrap();
    let vectors = clustered(8, 1500, 64, 6);
    let points: Vec<_> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (PointId::Num(i as u64), v.clone(), None))
        .collect();
    upsert_all(&c, &points, 500);
    c.flush().unwrap();
    let before = search(&c, &vectors[7], 5, None);
    assert!(c.info().memory_bytes >= 1500 * 64 * 4);
    let weak = Arc::downgrade(&c);
    drop(c);
    engine.unload_tenant(&t).unwrap();
    assert!(!engine.is_loaded(&t));
    // The collection, and with it every segment's plaintext buffer (zeroized on drop), is gone.
    assert!(
        weak.upgrade().is_none(),
        "unloading must drop the collection's plaintext"
    );
    engine.load_tenant(&t).unwrap();
    let c = engine.collection(&t, &name("docs")).unwrap();
    assert_eq!(search(&c, &vectors[7], 5, None), before);
}

/// WAL files anywhere under `dir`.
fn wal_files(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            n += wal_files(&entry.path());
        } else if entry.file_name().to_string_lossy().starts_with("wal-") {
            n += 1;
        }
    }
    n
}

#[test]
fn unloading_seals_a_large_indexed_growing_segment_so_reload_reads_its_graph() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let t = tenant("a");
    let limits = Limits {
        checkpoint_points: 300,
        ..limits()
    };
    let engine = engine(dir.path(), &keys, limits);
    let config = CollectionConfig::new(16, Metric::L2);
    let big = engine.create_collection(&t, &name("big"), config).unwrap();
    let small = engine
        .create_collection(&t, &name("small"), config)
        .unwrap();
    let vectors = clustered(9, 600, 16, 4);
    let points: Vec<_> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (PointId::Num(i as u64), v.clone(), None))
        .collect();
    // 600 points stay in the growing segment (segment_points is 1000); 100 are below the bar.
    upsert_all(&big, &points, 200);
    upsert_all(&small, &points[..100], 100);
    big.wait_idle().unwrap();
    small.wait_idle().unwrap();
    assert_eq!(big.info().sealed_segments, 0);
    let before = search(&big, &vectors[11], 5, None);
    assert_eq!(wal_files(dir.path()), 2);
    drop((big, small));

    engine.unload_tenant(&t).unwrap();
    // The big collection's WAL is retired into a sealed file; the small one keeps its WAL.
    assert_eq!(wal_files(dir.path()), 1);
    engine.load_tenant(&t).unwrap();
    let big = engine.collection(&t, &name("big")).unwrap();
    let info = big.info();
    assert_eq!(
        (info.points, info.sealed_segments, info.unindexed_points),
        (600, 1, 0)
    );
    assert_eq!(search(&big, &vectors[11], 5, None), before);
    let small = engine.collection(&t, &name("small")).unwrap();
    assert_eq!(
        (small.info().points, small.info().sealed_segments),
        (100, 0)
    );
    // Writes after the reload go on as before, and survive the next reopen.
    upsert_all(&big, &[(PointId::Num(1000), vectors[3].clone(), None)], 1);
    drop((big, small));
    engine.close();
    let engine = self::engine(dir.path(), &keys, limits);
    engine.load_tenant(&t).unwrap();
    assert_eq!(
        engine.collection(&t, &name("big")).unwrap().info().points,
        601
    );
}

#[test]
fn tenants_cannot_reach_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a", "b"]);
    let engine = engine(dir.path(), &keys, limits());
    let (a, b) = (tenant("a"), tenant("b"));
    let ca = engine
        .create_collection(
            &a,
            &name("shared-name"),
            CollectionConfig::new(4, Metric::L2),
        )
        .unwrap();
    let cb = engine
        .create_collection(
            &b,
            &name("shared-name"),
            CollectionConfig::new(4, Metric::L2),
        )
        .unwrap();
    engine
        .create_collection(&b, &name("only-b"), CollectionConfig::new(4, Metric::L2))
        .unwrap();
    ca.upsert(vec![PointInput {
        id: PointId::Num(1),
        vector: vec![1.0, 0.0, 0.0, 0.0],
        payload: Some(payload(json!({"owner": "a"}))),
    }])
    .unwrap();
    cb.upsert(vec![PointInput {
        id: PointId::Num(2),
        vector: vec![1.0, 0.0, 0.0, 0.0],
        payload: Some(payload(json!({"owner": "b"}))),
    }])
    .unwrap();
    let hits = search(&ca, &[1.0, 0.0, 0.0, 0.0], 10, None);
    assert_eq!(
        hits.iter().map(|h| h.0.clone()).collect::<Vec<_>>(),
        vec![PointId::Num(1)]
    );
    assert!(ca.get(&[PointId::Num(2)], true, true).unwrap().is_empty());
    // Another tenant's collection name answers exactly like a missing one.
    let theirs = engine
        .collection(&a, &name("only-b"))
        .err()
        .unwrap()
        .to_string();
    let missing = engine
        .collection(&a, &name("nowhere"))
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        theirs.replace("only-b", "X"),
        missing.replace("nowhere", "X")
    );
    assert_eq!(engine.list_collections(&a).unwrap().len(), 1);
    drop((ca, cb));
    drop(engine);
    // A damaged collection of tenant B answers with its error; B's other collection and tenant A serve.
    let manifest = dir.path().join("data/tenants/b/shared-name/MANIFEST");
    let mut bytes = std::fs::read(&manifest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    std::fs::write(&manifest, &bytes).unwrap();
    let engine = self::engine(dir.path(), &keys, limits());
    let err = engine.collection(&b, &name("shared-name")).unwrap_err();
    assert!(matches!(err, Error::CollectionUnavailable { .. }), "{err}");
    assert!(!err.is_user_error());
    engine
        .collection(&b, &name("only-b"))
        .unwrap()
        .upsert(vec![PointInput {
            id: PointId::Num(5),
            vector: vec![0.0, 1.0, 0.0, 0.0],
            payload: None,
        }])
        .unwrap();
    assert_eq!(
        engine
            .collection(&a, &name("shared-name"))
            .unwrap()
            .count(None),
        1
    );
    assert!(matches!(
        engine.rewrap_tenant(&b),
        Err(Error::CollectionUnavailable { .. })
    ));
    // Tenant B's files are encrypted under B's key: tenant A's key service context cannot open them.
    let b_dir = dir.path().join("data/tenants/b/shared-name");
    assert!(
        crate::collection::Collection::open(&b_dir, &a, &name("shared-name"), test_context(&keys))
            .is_err()
    );
}

#[test]
fn searches_run_while_writes_seal_segments() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let engine = engine(
        dir.path(),
        &keys,
        Limits {
            segment_points: 500,
            max_batch: 100,
            ..limits()
        },
    );
    let c = engine
        .create_collection(
            &tenant("a"),
            &name("docs"),
            CollectionConfig::new(16, Metric::Cosine),
        )
        .unwrap();
    let vectors = clustered(77, 3000, 16, 10);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let hits = search(&c, &vectors[n % vectors.len()], 10, None);
                assert!(hits.windows(2).all(|w| w[0].1 <= w[1].1));
                n += 1;
            }
            n
        });
        for (chunk_idx, chunk) in vectors.chunks(100).enumerate() {
            let inputs = chunk
                .iter()
                .enumerate()
                .map(|(i, v)| PointInput {
                    id: PointId::Num((chunk_idx * 100 + i) as u64),
                    vector: v.clone(),
                    payload: None,
                })
                .collect();
            c.upsert(inputs).unwrap();
            let probe = chunk_idx * 100 + 50;
            assert_eq!(
                search(&c, &vectors[probe], 1, None)[0].0,
                PointId::Num(probe as u64)
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    });
    c.wait_idle().unwrap();
    assert_eq!(c.count(None), 3000);
    assert!(c.info().sealed_segments >= 5);
}

/// (is closed, syncs waiting) and the condition variable both sides wait on.
type Gate = Arc<(parking_lot::Mutex<(bool, usize)>, parking_lot::Condvar)>;

/// A disk whose WAL fsyncs wait at a gate the test opens.
#[derive(Clone, Default)]
struct GateDisk {
    gate: Gate,
}

struct GateFile {
    inner: Box<dyn crate::disk::DiskFile>,
    gate: Option<Gate>,
}

impl crate::disk::DiskFile for GateFile {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.append(bytes)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        if let Some(gate) = &self.gate {
            let mut state = gate.0.lock();
            state.1 += 1;
            gate.1.notify_all();
            while state.0 {
                gate.1.wait(&mut state);
            }
            state.1 -= 1;
        }
        self.inner.sync()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
}

impl crate::disk::Disk for GateDisk {
    fn create(&self, path: &Path) -> std::io::Result<Box<dyn crate::disk::DiskFile>> {
        let is_wal = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("wal-");
        Ok(Box::new(GateFile {
            inner: crate::disk::StdDisk.create(path)?,
            gate: is_wal.then(|| self.gate.clone()),
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        crate::disk::StdDisk.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        crate::disk::StdDisk.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        crate::disk::StdDisk.sync_dir(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        crate::disk::StdDisk.create_dir_all(dir)
    }
}

#[test]
fn concurrent_writers_share_one_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let t = tenant("a");
    let disk = GateDisk::default();
    let engine = Engine::open_with_disk(
        &dir.path().join("data"),
        keys.clone(),
        limits(),
        Arc::new(disk.clone()),
    )
    .unwrap();
    let c = engine
        .create_collection(&t, &name("docs"), CollectionConfig::new(4, Metric::L2))
        .unwrap();
    let point = |i: u64| PointInput {
        id: PointId::Num(i),
        vector: vec![i as f32, 1.0, 2.0, 3.0],
        payload: None,
    };
    c.upsert(vec![point(0)]).unwrap(); // creates the WAL while the gate is open
    disk.gate.0.lock().0 = true;
    std::thread::scope(|scope| {
        let leader = scope.spawn(|| c.upsert(vec![point(1)]));
        // Wait until the leader holds the writer lock and is parked in its fsync.
        {
            let mut state = disk.gate.0.lock();
            while state.1 == 0 {
                disk.gate.1.wait(&mut state);
            }
        }
        // These seven queue behind it.
        let followers: Vec<_> = (2..9)
            .map(|i| {
                let c = &c;
                scope.spawn(move || c.upsert(vec![point(i)]))
            })
            .collect();
        while c.queued_writes() < 7 {
            std::thread::yield_now();
        }
        disk.gate.0.lock().0 = false;
        disk.gate.1.notify_all();
        leader.join().unwrap().unwrap();
        for follower in followers {
            follower.join().unwrap().unwrap();
        }
    });
    assert_eq!(c.count(None), 9);
    drop(c);
    drop(engine);
    // Three frames: the first write, the leader's, and one for all seven followers.
    let coll_dir = dir.path().join("data/tenants/a/docs");
    let mut frames = Vec::new();
    for entry in std::fs::read_dir(&coll_dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_prefix("wal-") {
            let id: u64 = id.parse().unwrap();
            let manifest =
                crate::manifest::Manifest::read(&coll_dir, &t, "docs", keys.as_ref()).unwrap();
            crate::wal::replay(
                &coll_dir.join(&name),
                &t,
                "docs",
                id,
                keys.as_ref(),
                manifest.incarnation,
                |ops: Vec<crate::wal::Op>| {
                    frames.push(ops.len());
                    Ok(())
                },
            )
            .unwrap();
        }
    }
    assert_eq!(frames, vec![1, 1, 7]);
    let engine = self::engine(dir.path(), &keys, limits());
    assert_eq!(engine.collection(&t, &name("docs")).unwrap().count(None), 9);
}

#[test]
fn a_drop_is_all_or_nothing_across_a_crash() {
    use crate::disk::SimDisk;
    for fail_after in 0..3u64 {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path(), &["a"]);
        let t = tenant("a");
        let sim = SimDisk::new();
        let engine = Engine::open_with_disk(
            &dir.path().join("data"),
            keys.clone(),
            limits(),
            Arc::new(sim.clone()),
        )
        .unwrap();
        let c = engine
            .create_collection(&t, &name("docs"), CollectionConfig::new(4, Metric::L2))
            .unwrap();
        c.upsert(vec![PointInput {
            id: PointId::Num(1),
            vector: vec![1.0; 4],
            payload: None,
        }])
        .unwrap();
        c.flush().unwrap();
        drop(c);
        sim.fail_at(sim.ops() + fail_after);
        let dropped = engine.drop_collection(&t, &name("docs")).is_ok();
        drop(engine);
        sim.crash(fail_after % 2 == 1).unwrap();
        let engine = self::engine(dir.path(), &keys, limits());
        match engine.collection(&t, &name("docs")) {
            Ok(c) => {
                assert!(
                    !dropped,
                    "failpoint {fail_after}: an acknowledged drop came back"
                );
                assert_eq!(c.count(None), 1, "failpoint {fail_after}");
            }
            Err(Error::CollectionNotFound(_)) => {
                // The name is free again.
                engine
                    .create_collection(&t, &name("docs"), CollectionConfig::new(4, Metric::L2))
                    .unwrap();
            }
            Err(other) => panic!("failpoint {fail_after}: a half-dropped collection: {other}"),
        }
        let hidden: Vec<_> = std::fs::read_dir(dir.path().join("data/tenants/a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(
            hidden.is_empty(),
            "failpoint {fail_after}: leftovers {hidden:?}"
        );
    }
    // A removal cut short after its durable rename is finished by the next load, for collections
    // and for whole tenants.
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let half_collection = dir.path().join("data/tenants/a/.dropped-docs-7");
    let half_tenant = dir.path().join("data/tenants/.dropped-b-9/docs");
    for half in [&half_collection, &half_tenant] {
        std::fs::create_dir_all(half).unwrap();
        std::fs::write(half.join("seg-3"), b"leftover").unwrap();
    }
    let engine = self::engine(dir.path(), &keys, limits());
    assert!(!half_tenant.parent().unwrap().exists());
    engine.load_tenant(&tenant("a")).unwrap();
    assert!(!half_collection.exists());
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Child half of `an_empty_growing_segment_costs_little_memory`: prints the RSS growth of creating
/// a collection (whose growing segment has room for 200,000 384-d points) and upserting one point.
#[test]
fn rss_child() {
    if std::env::var_os("VV_RSS_CHILD").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let engine = engine(
        dir.path(),
        &keys,
        Limits {
            segment_points: 200_000,
            ..Limits::default()
        },
    );
    let before = rss_kib();
    let c = engine
        .create_collection(
            &tenant("a"),
            &name("docs"),
            CollectionConfig::new(384, Metric::Cosine),
        )
        .unwrap();
    c.upsert(vec![PointInput {
        id: PointId::Num(1),
        vector: vec![1.0; 384],
        payload: None,
    }])
    .unwrap();
    c.wait_idle().unwrap();
    println!("RSS_GROWTH_KIB {}", rss_kib() - before);
}

#[test]
fn an_empty_growing_segment_costs_little_memory() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::collection::rss_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("VV_RSS_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let growth: u64 = stdout
        .lines()
        .find_map(|l| l.split("RSS_GROWTH_KIB ").nth(1))
        .unwrap_or_else(|| {
            panic!(
                "child printed no figure: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .trim()
        .parse()
        .unwrap();
    // Fully backed, the vectors alone would be 307 MB and the graph 26 MB.
    assert!(
        growth < 16 * 1024,
        "a collection holding one point grew RSS by {growth} KiB"
    );
}

/// A key service that parks data-key decryption for one tenant until the test opens the gate.
struct SlowKeys {
    inner: Arc<LocalKeyService>,
    slow: crate::ids::TenantId,
    gate: Gate,
}

impl crate::crypto::KeyService for SlowKeys {
    fn generate_data_key(
        &self,
        tenant: &crate::ids::TenantId,
        ctx: crate::crypto::DekContext<'_>,
    ) -> crate::Result<(crate::crypto::DataKey, crate::crypto::WrappedDek)> {
        self.inner.generate_data_key(tenant, ctx)
    }
    fn decrypt_data_key(
        &self,
        tenant: &crate::ids::TenantId,
        ctx: crate::crypto::DekContext<'_>,
        wrapped: &crate::crypto::WrappedDek,
    ) -> crate::Result<crate::crypto::DataKey> {
        if *tenant == self.slow {
            let mut state = self.gate.0.lock();
            state.1 += 1;
            self.gate.1.notify_all();
            while state.0 {
                self.gate.1.wait(&mut state);
            }
        }
        self.inner.decrypt_data_key(tenant, ctx, wrapped)
    }
    fn rewrap_data_key(
        &self,
        tenant: &crate::ids::TenantId,
        ctx: crate::crypto::DekContext<'_>,
        wrapped: &crate::crypto::WrappedDek,
    ) -> crate::Result<crate::crypto::WrappedDek> {
        self.inner.rewrap_data_key(tenant, ctx, wrapped)
    }
    fn current_kek_version(&self, tenant: &crate::ids::TenantId) -> crate::Result<u32> {
        self.inner.current_kek_version(tenant)
    }
}

#[test]
fn a_tenant_that_is_loading_does_not_hold_up_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["slow", "fast"]);
    let (slow, fast) = (tenant("slow"), tenant("fast"));
    {
        let engine = engine(dir.path(), &keys, limits());
        for t in [&slow, &fast] {
            let c = engine
                .create_collection(t, &name("docs"), CollectionConfig::new(4, Metric::L2))
                .unwrap();
            c.upsert(vec![PointInput {
                id: PointId::Num(1),
                vector: vec![1.0; 4],
                payload: None,
            }])
            .unwrap();
            c.flush().unwrap();
        }
    }
    let gated = Arc::new(SlowKeys {
        inner: keys.clone(),
        slow: slow.clone(),
        gate: Gate::default(),
    });
    gated.gate.0.lock().0 = true;
    let engine = Arc::new(Engine::open(&dir.path().join("data"), gated.clone(), limits()).unwrap());
    let loading = {
        let (engine, slow) = (engine.clone(), slow.clone());
        std::thread::spawn(move || {
            engine
                .collection(&slow, &name("docs"))
                .map(|c| c.count(None))
        })
    };
    {
        let mut state = gated.gate.0.lock();
        while state.1 == 0 {
            gated.gate.1.wait(&mut state);
        }
    }
    // Tenant "slow" is now stuck mid-load; tenant "fast" must still be served.
    let (done, answer) = std::sync::mpsc::channel();
    {
        let (engine, fast) = (engine.clone(), fast.clone());
        std::thread::spawn(move || {
            let _ = done.send(
                engine
                    .collection(&fast, &name("docs"))
                    .map(|c| c.count(None))
                    .ok(),
            );
        });
    }
    // A generous bound, only so that a regression fails instead of hanging the suite.
    let served = answer.recv_timeout(std::time::Duration::from_secs(60));
    gated.gate.0.lock().0 = false;
    gated.gate.1.notify_all();
    assert_eq!(
        served,
        Ok(Some(1)),
        "tenant fast was held up by tenant slow's load"
    );
    assert_eq!(loading.join().unwrap().unwrap(), 1);
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
fn loaded_collection_never_loads_a_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    {
        let engine = engine(dir.path(), &keys, limits());
        engine
            .create_collection(
                &tenant("a"),
                &name("docs"),
                CollectionConfig::new(2, Metric::L2),
            )
            .unwrap();
        assert!(
            engine
                .loaded_collection(&tenant("a"), &name("docs"))
                .is_some()
        );
        assert!(
            engine
                .loaded_collection(&tenant("a"), &name("nope"))
                .is_none()
        );
        engine.close();
    }
    let engine = engine(dir.path(), &keys, limits());
    assert!(
        engine
            .loaded_collection(&tenant("a"), &name("docs"))
            .is_none()
    );
    assert!(
        !engine.is_loaded(&tenant("a")),
        "asking did not load the tenant"
    );
    engine.load_tenant(&tenant("a")).unwrap();
    assert!(
        engine
            .loaded_collection(&tenant("a"), &name("docs"))
            .is_some()
    );
}
