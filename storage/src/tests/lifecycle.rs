//! A collection's life beyond its data: KEK rotation and erasure, unloading and loading, tenant
//! isolation, an all-or-nothing drop across a crash, the memory an empty collection costs.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use super::collection::{clustered, engine, limits, name, payload, search, upsert_all};
use super::{keys, tenant};
use crate::collection::{CollectionConfig, Limits, PointInput};
use crate::crypto::LocalKeyService;
use crate::ids::PointId;
use crate::index::Metric;
use crate::{Engine, Error};

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
    let stolen_files = std::fs::read_dir(&stolen).unwrap().count() as u64;
    assert_eq!(
        engine.delete_tenant(&t).unwrap(),
        stolen_files,
        "every file of docs"
    );
    assert!(!dir.path().join("data/tenants/a").exists());
    assert_eq!(engine.delete_tenant(&t).unwrap(), 0, "nothing is left");
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
            "tests::lifecycle::rss_child",
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
