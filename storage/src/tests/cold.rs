//! Cold storage moves ([`Engine::move_to_cold`], [`Engine::move_to_hot`]): a power loss at every
//! disk operation of a move, then the move run again, ends with the tenant wholly on one side,
//! its files byte for byte what they were, every point served, and no staging debris left.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::collection::{engine, limits, name};
use super::{keys, tenant};
use crate::collection::{Limits, PointInput};
use crate::crypto::LocalKeyService;
use crate::disk::SimDisk;
use crate::ids::PointId;
use crate::index::Metric;
use crate::{CollectionConfig, Engine};

const DIM: usize = 4;

fn small() -> Limits {
    Limits {
        segment_points: 100,
        max_batch: 50,
        ..limits()
    }
}

/// Every file under `dir`, by path relative to it, with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// Names directly in `dir` (none if it does not exist).
fn names(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}

/// A data directory with tenant `a`: two collections of 230 and 40 points (sealed segments, a
/// WAL), the engine closed.
fn written(root: &Path, keys: &Arc<LocalKeyService>) {
    let engine = engine(root, keys, small());
    let t = tenant("a");
    for (collection, n) in [("docs", 230u64), ("notes", 40)] {
        engine
            .create_collection(
                &t,
                &name(collection),
                CollectionConfig::new(DIM, Metric::L2),
            )
            .unwrap();
        let c = engine.collection(&t, &name(collection)).unwrap();
        for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
            c.upsert(
                chunk
                    .iter()
                    .map(|&i| PointInput {
                        id: PointId::Num(i),
                        vector: vec![i as f32, 1.0, 2.0, 3.0],
                        payload: None,
                    })
                    .collect(),
            )
            .unwrap();
        }
        c.wait_idle().unwrap();
    }
    engine.close();
}

fn serves_every_point(root: &Path, keys: &Arc<LocalKeyService>) {
    let engine = engine(root, keys, small());
    let t = tenant("a");
    assert_eq!(
        engine.collection(&t, &name("docs")).unwrap().count(None),
        230
    );
    assert_eq!(
        engine.collection(&t, &name("notes")).unwrap().count(None),
        40
    );
    engine.close();
}

/// Runs `mv` on a copy of `start` with a power loss at disk operation `n` of the move, then runs it
/// again on a fresh engine. Answers whether the fault fired (false once the move needs fewer
/// operations than `n`).
fn crash_at(
    n: u64,
    start: &Path,
    scratch: &Path,
    keys: &Arc<LocalKeyService>,
    mv: fn(&Engine, &Path) -> crate::Result<u64>,
) -> bool {
    let _ = std::fs::remove_dir_all(scratch);
    copy_dir(start, scratch);
    let cold = scratch.join("cold");
    let sim = SimDisk::new();
    let engine = Engine::open_with_disk(
        &scratch.join("data"),
        keys.clone(),
        small(),
        Arc::new(sim.clone()),
    )
    .unwrap();
    sim.fail_at(sim.ops() + n);
    let first = mv(&engine, &cold);
    let fired = sim.is_dead();
    assert_eq!(first.is_err(), fired, "at {n}: {first:?}");
    drop(engine);
    sim.crash(n % 2 == 1).unwrap();
    let engine = Engine::open(&scratch.join("data"), keys.clone(), small()).unwrap();
    mv(&engine, &cold)
        .unwrap_or_else(|err| panic!("running the move again after a crash at {n}: {err}"));
    fired
}

#[test]
fn a_move_to_cold_and_back_survives_a_power_loss_at_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let hot_start = dir.path().join("hot-start");
    written(&hot_start, &keys);
    let original = tree(&hot_start.join("data/tenants/a"));
    assert!(original.len() >= 4, "{:?}", original.keys());

    // The state after a clean move to cold, the starting point of the moves back.
    let cold_start = dir.path().join("cold-start");
    copy_dir(&hot_start, &cold_start);
    {
        let engine = Engine::open(&cold_start.join("data"), keys.clone(), small()).unwrap();
        let bytes = engine
            .move_to_cold(&tenant("a"), &cold_start.join("cold"))
            .unwrap();
        assert_eq!(
            bytes,
            original.values().map(|b| b.len() as u64).sum::<u64>()
        );
        assert!(!cold_start.join("data/tenants/a").exists());
    }
    assert_eq!(tree(&cold_start.join("cold/a")), original);

    let to_cold: fn(&Engine, &Path) -> crate::Result<u64> =
        |engine, cold| engine.move_to_cold(&tenant("a"), cold);
    let to_hot: fn(&Engine, &Path) -> crate::Result<u64> =
        |engine, cold| engine.move_to_hot(&tenant("a"), cold);
    let scratch: PathBuf = dir.path().join("scratch");
    for (start, mv, lands_in) in [
        (&hot_start, to_cold, "cold/a"),
        (&cold_start, to_hot, "data/tenants/a"),
    ] {
        let mut n = 0;
        while crash_at(n, start, &scratch, &keys, mv) {
            // Wholly on one side, byte for byte, and nothing else left behind.
            assert_eq!(tree(&scratch.join(lands_in)), original, "crash at {n}");
            let other = if lands_in == "cold/a" {
                scratch.join("data/tenants/a")
            } else {
                scratch.join("cold/a")
            };
            assert!(!other.exists(), "crash at {n}: the source is still there");
            let debris: Vec<String> = names(&scratch.join("cold"))
                .into_iter()
                .chain(names(&scratch.join("data/tenants")))
                .filter(|n| n.starts_with('.'))
                .collect();
            assert_eq!(debris, Vec::<String>::new(), "crash at {n}");
            n += 1;
        }
        assert!(n > 10, "the move took only {n} disk operations");
    }
    // Back where it started, every point is served.
    serves_every_point(&scratch, &keys);
}

#[test]
fn a_tenant_with_no_files_moves_as_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let engine = engine(dir.path(), &keys, small());
    let cold = dir.path().join("cold");
    assert_eq!(engine.move_to_cold(&tenant("a"), &cold).unwrap(), 0);
    assert!(!cold.join("a").exists());
    assert_eq!(engine.move_to_hot(&tenant("a"), &cold).unwrap(), 0);
}
