//! Crash safety (INVARIANTS §0 line 1, INV-07): a crash at any write-side step of upsert, delete,
//! seal, compaction or KEK rotation loses no acknowledged write and leaves a collection that opens.
//!
//! - A scripted scenario runs on a [`SimDisk`] that fails its n-th operation, for every n; then
//!   power loss is simulated (unsynced tails dropped or torn, undurable directory operations undone).
//!   The first restart crashes too, at one of its own writes; the second must hold exactly the
//!   acknowledged writes (plus, whole or not at all, the one that failed), survive finishing the
//!   KEK re-wrap and destroying the old KEK, and look the same after one more restart.
//! - The newest WAL is cut at every byte.
//! - A real child process (this test binary again) is killed with SIGKILL while it writes.
//! - Regressions for the bugs these found, made deterministic: a seal held inside the key service
//!   ([`GatedKeys`]) while foreground work runs.
//!
//! Every assertion names the seed and the failpoint; `VV_CRASH_SEED` and `VV_CRASH_FAILPOINT`
//! rerun one case.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use super::{keys, tenant};
use crate::Error;
use crate::collection::{Collection, CollectionConfig, Limits, PointInput, SearchRequest};
use crate::crypto::{LocalKeyFile, LocalKeyService};
use crate::disk::SimDisk;
use crate::engine::Engine;
use crate::filter::{Filter, FilterLimits, Payload, PayloadLimits};
use crate::ids::{CollectionName, PointId, TenantId};
use crate::index::Metric;
use crate::sealed::Header;

const DIM: usize = 8;
const TENANT: &str = "acme";
const COLLECTION: &str = "docs";

/// A point as stored: its vector and payload.
type Point = (Vec<f32>, Option<Payload>);
/// What the collection must hold: every acknowledged write applied in order.
type Model = BTreeMap<PointId, Point>;

/// Small limits, so a short scenario crosses WAL rotation, segment rotation, sealing and compaction.
fn limits() -> Limits {
    Limits {
        max_batch: 16,
        segment_points: 64,
        wal_bytes: 3000,
        index_threads: 1,
        ..Limits::default()
    }
}

/// L2, so stored vectors compare exactly with what was written. Not too small an `m`: with m = 4
/// the HNSW heuristic leaves the odd node without in-links, and a search for its own vector
/// misses it (found by this suite; an index property, not a crash effect).
fn config() -> CollectionConfig {
    CollectionConfig {
        m: 16,
        ef_construction: 64,
        ef: 64,
        ..CollectionConfig::new(DIM, Metric::L2)
    }
}

fn collection_name() -> CollectionName {
    CollectionName::parse(COLLECTION).unwrap()
}

/// The seed for this run: `VV_CRASH_SEED`, or a fresh random one. Always printed.
fn seed() -> u64 {
    let seed = match std::env::var("VV_CRASH_SEED") {
        Ok(raw) => raw.parse().expect("VV_CRASH_SEED is a u64"),
        Err(_) => getrandom::u64().expect("random seed"),
    };
    eprintln!("crash test seed {seed} (rerun with VV_CRASH_SEED={seed})");
    seed
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Version `version` of point `id`'s vector: distinct per (seed, id, version).
fn vector(seed: u64, id: u64, version: u64) -> Vec<f32> {
    (0..DIM as u64)
        .map(|i| {
            let bits = splitmix(seed ^ splitmix(id ^ splitmix(version ^ splitmix(i))));
            (bits >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// Points whose id is a multiple of 7 have no payload; the rest carry their group (`id % 4`).
fn payload(id: u64, version: u64) -> Option<Payload> {
    (!id.is_multiple_of(7)).then(|| {
        let json = format!(r#"{{"group":{},"version":{version}}}"#, id % 4);
        Payload::from_json_bytes(json.as_bytes(), &PayloadLimits::default()).unwrap()
    })
}

fn group_filter(group: u64) -> Filter {
    let json = format!(r#"{{"must":[{{"key":"group","match":{{"value":{group}}}}}]}}"#);
    Filter::from_json_bytes(json.as_bytes(), &FilterLimits::default()).unwrap()
}

/// A place for files. On tmpfs where there is one: [`SimDisk`] models durability itself, so real
/// fsyncs only cost time.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = tempfile::Builder::new().prefix("vv-crash-").clone();
    if shm.is_dir()
        && let Ok(dir) = builder.tempdir_in(shm)
    {
        return dir;
    }
    builder.tempdir().unwrap()
}

/// Every stored point, with vector and payload, through paged scrolls.
fn read_all(collection: &Collection) -> Model {
    let mut points = Model::new();
    let mut from = None;
    loop {
        let page = collection
            .scroll(from.as_ref(), limits().max_batch, None, true, true)
            .unwrap();
        for record in page.points {
            let vector = record.vector.expect("asked for vectors");
            points.insert(record.id, (vector, record.payload));
        }
        match page.next {
            Some(next) => from = Some(next),
            None => return points,
        }
    }
}

/// Renders how `stored` differs from `expected`, for assertion messages.
fn diff(stored: &Model, expected: &Model) -> String {
    let mut out = String::new();
    for (id, point) in expected {
        match stored.get(id) {
            None => out.push_str(&format!("\n  lost: {id}")),
            Some(got) if got != point => {
                out.push_str(&format!("\n  changed: {id}: {got:?}, expected {point:?}"))
            }
            Some(_) => {}
        }
    }
    for id in stored.keys() {
        if !expected.contains_key(id) {
            out.push_str(&format!("\n  unexpected: {id}"));
        }
    }
    out
}

/// An operation that returned an error: its effect may or may not have survived.
#[derive(Debug, Clone, Default)]
enum Pending {
    #[default]
    Nothing,
    /// One WAL frame: all of these points or none.
    Upsert(Vec<(PointId, Point)>),
    /// One WAL frame: all of these deletes or none.
    Delete(Vec<PointId>),
    /// Several frames: each delete on its own.
    DeleteEach(Vec<PointId>),
}

/// Most searches `check` makes, each for a stored point's own vector.
const SELF_SEARCHES: usize = 256;

/// Checks that `collection` holds exactly `model`, plus possibly `pending` applied whole. Returns
/// what it holds.
#[track_caller]
fn check(collection: &Collection, model: &Model, pending: &Pending, ctx: &str) -> Model {
    let stored = read_all(collection);
    let mut expected = model.clone();
    match pending {
        Pending::Nothing => {}
        Pending::Upsert(points) => {
            let is_applied = points
                .iter()
                .any(|(id, point)| stored.get(id) == Some(point) && model.get(id) != Some(point));
            if is_applied {
                expected.extend(points.iter().cloned());
            }
        }
        Pending::Delete(ids) => {
            if ids
                .iter()
                .any(|id| model.contains_key(id) && !stored.contains_key(id))
            {
                for id in ids {
                    expected.remove(id);
                }
            }
        }
        Pending::DeleteEach(ids) => {
            for id in ids {
                if !stored.contains_key(id) {
                    expected.remove(id);
                }
            }
        }
    }
    assert!(
        stored == expected,
        "{ctx}: the collection differs from the acknowledged writes (pending {pending:?}):{}",
        diff(&stored, &expected)
    );
    assert_eq!(
        collection.count(None),
        stored.len() as u64,
        "{ctx}: count() differs from the visible points"
    );
    // Every point of a small collection, an even sample of a large one.
    let step = stored.len().div_ceil(SELF_SEARCHES).max(1);
    for (id, (vector, _)) in stored.iter().step_by(step) {
        let hits = collection
            .search(&SearchRequest {
                vector: vector.clone(),
                top_k: 3,
                ..SearchRequest::default()
            })
            .unwrap();
        assert!(
            hits.iter().any(|hit| &hit.id == id && hit.distance <= 1e-6),
            "{ctx}: a search for point {id}'s own vector does not find it: {hits:?}"
        );
    }
    stored
}

/// One step of the scenario.
#[derive(Debug, Clone)]
enum Step {
    /// Upserts `(id, version)` in one batch.
    Upsert(Vec<(u64, u64)>),
    /// Deletes by id in one batch (ids that do not exist included).
    Delete(Vec<u64>),
    /// Deletes every point of a payload group.
    DeleteGroup(u64),
    /// Freezes the growing segment and waits until it is sealed.
    Flush,
    /// Waits for indexing, sealing and compaction.
    WaitIdle,
    /// Rotates the tenant's KEK.
    RotateKek,
    /// Re-wraps every file of the collection under the current KEK.
    Rewrap,
    /// Destroys every KEK version but the current one.
    DestroyOldKeks,
}

fn new_points(ids: Range<u64>) -> Step {
    Step::Upsert(ids.map(|id| (id, 0)).collect())
}

/// Crosses WAL creation and rotation, segment rotation, sealing, updates of sealed points, deletes
/// by id and by filter, compaction, KEK rotation with re-wrap and destruction of the old KEK,
/// writes under the new KEK, and a merge of small sealed segments.
fn scenario() -> Vec<Step> {
    use Step::*;
    vec![
        // 64 points fill the first segment; the WAL rotates by size on the way.
        new_points(0..16),
        new_points(16..32),
        new_points(32..48),
        new_points(48..64),
        // Segment rotation: the first segment freezes and is sealed in the background.
        new_points(64..80),
        WaitIdle,
        // Updates of sealed points and new points in one batch.
        Upsert(
            (0..8)
                .map(|id| (id, 1))
                .chain((80..88).map(|id| (id, 0)))
                .collect(),
        ),
        Delete((8..14).chain([64, 65, 999]).collect()),
        // With this the first segment is over 30% deleted and is compacted.
        DeleteGroup(1),
        WaitIdle,
        new_points(88..104),
        Flush,
        new_points(104..120),
        Delete(vec![70, 71, 105]),
        RotateKek,
        Rewrap,
        Upsert(
            (120..132)
                .map(|id| (id, 0))
                .chain([(66, 1), (67, 1), (104, 1)])
                .collect(),
        ),
        DestroyOldKeks,
        Upsert(
            (136..144)
                .map(|id| (id, 0))
                .chain((16..24).map(|id| (id, 1)))
                .collect(),
        ),
        Flush,
        // Many segments over the compaction threshold at once.
        DeleteGroup(2),
        WaitIdle,
        new_points(144..160),
        Delete(vec![144, 3, 100]),
        // Two small sealed segments, merged into one (with the delete carried over) before the
        // second flush returns.
        new_points(160..172),
        Flush,
        new_points(172..184),
        Delete(vec![161, 150]),
        Flush,
    ]
}

/// The id of the write tried after a failure, which must be refused.
const PROBE: u64 = 1_000_000;

/// What running the scenario until its first failure left.
#[derive(Default)]
struct Outcome {
    /// Every acknowledged write.
    model: Model,
    /// The failed operation.
    pending: Pending,
    /// Whether the collection's creation was acknowledged.
    is_created: bool,
    /// The step that failed and how.
    failure: Option<String>,
}

/// Runs the scenario on `sim` until the first error, recording only acknowledged writes.
fn run_scenario(dir: &Path, sim: &SimDisk, seed: u64, limits: Limits) -> Outcome {
    let mut out = Outcome::default();
    let t = tenant(TENANT);
    let root = Arc::new(LocalKeyFile::open_or_generate(&dir.join("root.key")).unwrap());
    let keys = match LocalKeyService::open_with_disk(root, &dir.join("keks"), Arc::new(sim.clone()))
    {
        Ok(keys) => Arc::new(keys),
        Err(err) => {
            out.failure = Some(format!("opening the key service: {err}"));
            return out;
        }
    };
    if let Err(err) = keys.ensure_tenant(&t) {
        out.failure = Some(format!("creating the tenant's KEK: {err}"));
        return out;
    }
    let engine = match Engine::open_with_disk(
        &dir.join("data"),
        keys.clone(),
        limits,
        Arc::new(sim.clone()),
    ) {
        Ok(engine) => engine,
        Err(err) => {
            out.failure = Some(format!("opening the engine: {err}"));
            return out;
        }
    };
    let collection = match engine.create_collection(&t, &collection_name(), config()) {
        Ok(collection) => collection,
        Err(err) => {
            out.failure = Some(format!("creating the collection: {err}"));
            return out;
        }
    };
    out.is_created = true;
    for (i, step) in scenario().into_iter().enumerate() {
        let mut pending = Pending::Nothing;
        let mut is_key_op = false;
        let res = match &step {
            Step::Upsert(points) => {
                let points: Vec<(PointId, Point)> = points
                    .iter()
                    .map(|&(id, version)| {
                        let point = (vector(seed, id, version), payload(id, version));
                        (PointId::Num(id), point)
                    })
                    .collect();
                pending = Pending::Upsert(points.clone());
                let inputs = points
                    .iter()
                    .map(|(id, (vector, payload))| PointInput {
                        id: id.clone(),
                        vector: vector.clone(),
                        payload: payload.clone(),
                    })
                    .collect();
                collection.upsert(inputs)
            }
            Step::Delete(ids) => {
                let ids: Vec<PointId> = ids.iter().map(|&id| PointId::Num(id)).collect();
                pending = Pending::Delete(ids.clone());
                collection.delete(&ids).map(|_| ())
            }
            Step::DeleteGroup(group) => {
                let filter = group_filter(*group);
                let ids: Vec<PointId> = out
                    .model
                    .iter()
                    .filter(|(_, (_, payload))| filter.matches(payload.as_ref()))
                    .map(|(id, _)| id.clone())
                    .collect();
                pending = Pending::DeleteEach(ids);
                collection.delete_by_filter(&filter).map(|_| ())
            }
            Step::Flush => collection.flush(),
            Step::WaitIdle => collection.wait_idle(),
            Step::RotateKek => {
                is_key_op = true;
                keys.rotate_kek(&t).map(|_| ())
            }
            Step::Rewrap => collection.rewrap_keys(),
            Step::DestroyOldKeks => {
                is_key_op = true;
                destroy_old_keks(&keys, &t)
            }
        };
        match res {
            Ok(()) => match pending {
                Pending::Nothing => {}
                Pending::Upsert(points) => out.model.extend(points),
                Pending::Delete(ids) | Pending::DeleteEach(ids) => {
                    for id in ids {
                        out.model.remove(&id);
                    }
                }
            },
            Err(err) => {
                out.failure = Some(format!("step {i} {step:?}: {err}"));
                out.pending = pending;
                // A collection that failed a write acknowledges nothing more.
                let probe = PointInput {
                    id: PointId::Num(PROBE),
                    vector: vector(seed, PROBE, 0),
                    payload: None,
                };
                let again = collection.upsert(vec![probe]);
                let ctx = out.failure.as_deref().unwrap_or_default();
                if is_key_op {
                    assert!(
                        again.is_err(),
                        "{ctx}: a write was acknowledged after a failure"
                    );
                } else {
                    assert!(
                        matches!(again, Err(Error::Poisoned(_))),
                        "{ctx}: after a failed write the collection answered {again:?}, not Poisoned"
                    );
                }
                return out;
            }
        }
    }
    out
}

fn destroy_old_keks(keys: &LocalKeyService, t: &TenantId) -> crate::Result<()> {
    let current = crate::crypto::KeyService::current_kek_version(keys, t)?;
    for version in keys.kek_versions(t)? {
        if version != current {
            keys.destroy_kek(t, version)?;
        }
    }
    Ok(())
}

/// Opens the engine on `dir` as a restarted process would, with the key files as they are on disk.
fn reopen(dir: &Path) -> (Arc<LocalKeyService>, Engine) {
    reopen_with(dir, limits())
}

fn reopen_with(dir: &Path, limits: Limits) -> (Arc<LocalKeyService>, Engine) {
    let keys = keys(dir, &[TENANT]);
    let engine = Engine::open(&dir.join("data"), keys.clone(), limits).unwrap();
    (keys, engine)
}

/// Opens the collection after a crash and checks it against `outcome`. `None` if it is absent,
/// which is allowed only if its creation was not acknowledged.
fn open_and_check(
    engine: &Engine,
    outcome: &Outcome,
    ctx: &str,
) -> crate::Result<Option<(Arc<Collection>, Model)>> {
    let t = tenant(TENANT);
    engine.load_tenant(&t)?;
    let collection = match engine.collection(&t, &collection_name()) {
        Ok(collection) => collection,
        Err(Error::CollectionNotFound(_)) if !outcome.is_created => return Ok(None),
        Err(err) => return Err(err),
    };
    let stored = check(&collection, &outcome.model, &outcome.pending, ctx);
    assert!(
        !stored.contains_key(&PointId::Num(PROBE)),
        "{ctx}: a write refused after the failure was stored"
    );
    Ok(Some((collection, stored)))
}

/// A restart that itself crashes: recovery (and the recovery work after it) runs on a disk that
/// fails its `fail_at`-th operation, then power is lost again. Returns what the collection held
/// when it opened, if it got that far.
fn recover_interrupted(
    dir: &Path,
    outcome: &Outcome,
    fail_at: Option<u64>,
    torn: bool,
    ctx: &str,
    limits: Limits,
) -> (Option<Model>, u64) {
    let t = tenant(TENANT);
    let sim = SimDisk::new();
    if let Some(n) = fail_at {
        sim.fail_at(n);
    }
    let mut observed = None;
    let root = Arc::new(LocalKeyFile::open(&dir.join("root.key")).unwrap());
    if let Ok(keys) =
        LocalKeyService::open_with_disk(root, &dir.join("keks"), Arc::new(sim.clone()))
    {
        let keys = Arc::new(keys);
        let engine = keys.ensure_tenant(&t).and_then(|()| {
            Engine::open_with_disk(
                &dir.join("data"),
                keys.clone(),
                limits,
                Arc::new(sim.clone()),
            )
        });
        if let Ok(engine) = engine {
            // With the disk failing, opening may fail (removing debris writes); it must not lie.
            if let Ok(Some((collection, stored))) = open_and_check(&engine, outcome, ctx) {
                observed = Some(stored);
                let _ = collection
                    .wait_idle()
                    .and_then(|()| collection.rewrap_keys())
                    .and_then(|()| destroy_old_keks(&keys, &t));
            }
        }
    }
    let ops = sim.ops();
    sim.crash(torn).unwrap();
    (observed, ops)
}

/// Copies a directory tree.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Recovers after a crash and checks the collection against `outcome`. Then finishes background
/// work, re-runs the KEK re-wrap, destroys old KEKs, restarts again and checks that nothing moved.
fn recover(dir: &Path, outcome: &Outcome, ctx: &str, limits: Limits) {
    let t = tenant(TENANT);
    let (keys, engine) = reopen_with(dir, limits);
    let (collection, stored) = match open_and_check(&engine, outcome, ctx) {
        Ok(Some(opened)) => opened,
        Ok(None) => return,
        Err(err) => panic!("{ctx}: the collection does not open after the crash: {err}"),
    };
    collection
        .wait_idle()
        .unwrap_or_else(|err| panic!("{ctx}: background work after recovery failed: {err}"));
    collection
        .rewrap_keys()
        .unwrap_or_else(|err| panic!("{ctx}: re-running the re-wrap failed: {err}"));
    destroy_old_keks(&keys, &t).unwrap();
    check(&collection, &stored, &Pending::Nothing, ctx);
    drop(collection);
    drop(engine);
    drop(keys);

    let (_keys, engine) = reopen_with(dir, limits);
    let collection = engine
        .collection(&t, &collection_name())
        .unwrap_or_else(|err| {
            panic!(
                "{ctx}: after re-wrap and destroying old KEKs, the collection does not open: {err}"
            )
        });
    let ctx = format!("{ctx}, second restart");
    check(&collection, &stored, &Pending::Nothing, &ctx);
}

/// Runs the scenario with a fault at operation `fail_at` (none if `None`), crashes and recovers.
/// Returns the operations performed and where the scenario failed.
fn crash_at(seed: u64, fail_at: Option<u64>, torn: bool, limits: Limits) -> (u64, Option<String>) {
    let dir = scratch();
    let sim = SimDisk::new();
    if let Some(n) = fail_at {
        sim.fail_at(n);
    }
    let outcome = run_scenario(dir.path(), &sim, seed, limits);
    let ops = sim.ops();
    let ctx = format!(
        "seed {seed} failpoint {fail_at:?} torn {torn} (rerun with VV_CRASH_SEED={seed} \
         VV_CRASH_FAILPOINT={}), failed at {}",
        fail_at.map_or("none".to_owned(), |n| n.to_string()),
        outcome.failure.as_deref().unwrap_or("nothing")
    );
    sim.crash(torn).unwrap();
    // The first restart crashes too, at a write picked from those a restart makes here (counted
    // on a copy); the second must still recover every acknowledged write, and whatever the first
    // one saw.
    let copy = scratch();
    copy_dir(dir.path(), copy.path());
    let (_, recovery_ops) = recover_interrupted(copy.path(), &outcome, None, false, &ctx, limits);
    drop(copy);
    let recovery_fail_at = splitmix(seed ^ fail_at.unwrap_or(u64::MAX)) % recovery_ops.max(1);
    let ctx = format!(
        "{ctx}; the first restart crashed at its operation {recovery_fail_at} of {recovery_ops}"
    );
    let interrupted = recover_interrupted(
        dir.path(),
        &outcome,
        Some(recovery_fail_at),
        !torn,
        &ctx,
        limits,
    );
    let outcome = match interrupted.0 {
        Some(stored) => Outcome {
            model: stored,
            pending: Pending::Nothing,
            is_created: true,
            failure: outcome.failure,
        },
        None => outcome,
    };
    recover(dir.path(), &outcome, &ctx, limits);
    (ops, outcome.failure)
}

#[test]
fn a_crash_at_every_write_step_loses_no_acknowledged_write() {
    every_failpoint(limits());
}

/// The same with every frame in a WAL file of its own: more WAL creation and retirement, WAL files
/// holding only deletes, and more manifests.
#[test]
fn a_crash_at_every_write_step_loses_no_acknowledged_write_with_a_wal_per_frame() {
    every_failpoint(Limits {
        wal_bytes: 1,
        segment_points: 48,
        ..limits()
    });
}

/// Runs the scenario with a fault at every write-side operation in turn, each with and without a
/// torn tail, and recovers. `VV_CRASH_FAILPOINT` runs one.
fn every_failpoint(limits: Limits) {
    let seed = seed();
    if let Ok(raw) = std::env::var("VV_CRASH_FAILPOINT") {
        let n: u64 = raw.parse().expect("VV_CRASH_FAILPOINT is a u64");
        for torn in [false, true] {
            crash_at(seed, Some(n), torn, limits);
        }
        return;
    }
    let (n_ops, failure) = crash_at(seed, None, false, limits);
    assert_eq!(
        failure, None,
        "seed {seed}: the scenario fails without a fault"
    );
    eprintln!("crash test seed {seed}: the scenario performs {n_ops} write-side operations");
    // Background work interleaves with the scenario, so the count varies a little between runs;
    // the margin covers faults that fire late.
    let last = n_ops + 8;
    let mut failed_steps: BTreeMap<String, u64> = BTreeMap::new();
    for n in 0..last {
        for torn in [false, true] {
            let (_, failure) = crash_at(seed, Some(n), torn, limits);
            // "step 4 Upsert([...]): error" becomes "step 4 Upsert".
            let step = failure.map_or("no step (the scenario completed)".to_owned(), |failure| {
                let end = failure.find(['(', ':']).unwrap_or(failure.len());
                failure[..end].to_owned()
            });
            *failed_steps.entry(step).or_default() += 1;
        }
    }
    eprintln!("crash test seed {seed}: ran {last} failpoints, each with and without a torn tail");
    for (step, count) in &failed_steps {
        eprintln!("  {count:4} crashes in {step}");
    }
    // Every step of the scenario must have been interrupted at least once.
    for (i, step) in scenario().iter().enumerate() {
        let prefix = format!("step {i} ");
        assert!(
            failed_steps.keys().any(|key| key.starts_with(&prefix)),
            "seed {seed}: no failpoint landed in step {i} {step:?}"
        );
    }
}

// Regressions for bugs the tests above found, each reduced to its cause.

/// Upserts points `ids` (version 0) in batches of at most `max_batch`.
fn upsert_ids(collection: &Collection, seed: u64, ids: Range<u64>) -> Model {
    let mut written = Model::new();
    let ids: Vec<u64> = ids.collect();
    for chunk in ids.chunks(limits().max_batch) {
        let inputs: Vec<PointInput> = chunk
            .iter()
            .map(|&id| PointInput {
                id: PointId::Num(id),
                vector: vector(seed, id, 0),
                payload: payload(id, 0),
            })
            .collect();
        collection.upsert(inputs.clone()).unwrap();
        for input in inputs {
            written.insert(input.id, (input.vector, input.payload));
        }
    }
    written
}

#[test]
fn a_segment_sealed_before_it_is_full_reopens() {
    let seed = seed();
    let dir = scratch();
    let t = tenant(TENANT);
    let model = {
        let (_keys, engine) = reopen(dir.path());
        let collection = engine
            .create_collection(&t, &collection_name(), config())
            .unwrap();
        let model = upsert_ids(&collection, seed, 0..10);
        collection.flush().unwrap();
        assert_eq!(collection.info().sealed_segments, 1, "seed {seed}");
        model
    };
    let (_keys, engine) = reopen(dir.path());
    let collection = engine
        .collection(&t, &collection_name())
        .unwrap_or_else(|err| panic!("seed {seed}: does not reopen: {err}"));
    check(
        &collection,
        &model,
        &Pending::Nothing,
        &format!("seed {seed}"),
    );
}

#[test]
fn an_interrupted_collection_creation_does_not_block_its_tenant() {
    let seed = seed();
    let dir = scratch();
    let t = tenant(TENANT);
    let other = CollectionName::parse("other").unwrap();
    let sim = SimDisk::new();
    let model = {
        let keys = keys(dir.path(), &[TENANT]);
        let engine = Engine::open_with_disk(
            &dir.path().join("data"),
            keys,
            limits(),
            Arc::new(sim.clone()),
        )
        .unwrap();
        let collection = engine
            .create_collection(&t, &collection_name(), config())
            .unwrap();
        let model = upsert_ids(&collection, seed, 0..20);
        // Die after the new collection's directory exists but before its manifest does.
        sim.fail_at(sim.ops() + 2);
        assert!(engine.create_collection(&t, &other, config()).is_err());
        model
    };
    sim.crash(false).unwrap();
    let (_keys, engine) = reopen(dir.path());
    let collection = engine
        .collection(&t, &collection_name())
        .unwrap_or_else(|err| panic!("seed {seed}: the tenant does not open: {err}"));
    check(
        &collection,
        &model,
        &Pending::Nothing,
        &format!("seed {seed}"),
    );
    let res = engine.collection(&t, &other);
    assert!(
        matches!(res, Err(Error::CollectionNotFound(_))),
        "seed {seed}: the never acknowledged collection answers {res:?}"
    );
    engine
        .create_collection(&t, &other, config())
        .unwrap_or_else(|err| panic!("seed {seed}: the name stays taken: {err}"));
}

/// A key service that can hold a collection's background thread inside `generate_data_key`, after
/// the key was made and wrapped, until released: a deterministic way to run foreground work in the
/// middle of a seal (which makes its segment's DEK first, outside the writer lock).
struct GatedKeys {
    inner: Arc<LocalKeyService>,
    gate: parking_lot::Mutex<Gate>,
    changed: parking_lot::Condvar,
}

#[derive(Default)]
struct Gate {
    is_armed: bool,
    is_holding: bool,
    is_released: bool,
}

/// How long a gated test waits for the background thread before declaring it stuck. A guard
/// against hanging, not a timing assertion: the thread arrives within milliseconds.
const GATE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

impl GatedKeys {
    fn new(inner: Arc<LocalKeyService>) -> Arc<GatedKeys> {
        Arc::new(GatedKeys {
            inner,
            gate: parking_lot::Mutex::new(Gate::default()),
            changed: parking_lot::Condvar::new(),
        })
    }

    /// Holds the next background thread that asks for a new DEK. The returned guard releases it
    /// when dropped, so a failing test does not hang on the held thread.
    fn arm(&self) -> GateGuard<'_> {
        self.gate.lock().is_armed = true;
        GateGuard(self)
    }

    /// Waits until a background thread is held.
    fn wait_holding(&self) {
        let mut gate = self.gate.lock();
        while !gate.is_holding {
            let timed_out = self.changed.wait_for(&mut gate, GATE_PATIENCE).timed_out();
            assert!(!timed_out, "the background thread never asked for a DEK");
        }
    }

    fn release(&self) {
        self.gate.lock().is_released = true;
        self.changed.notify_all();
    }
}

struct GateGuard<'a>(&'a GatedKeys);

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl crate::crypto::KeyService for GatedKeys {
    fn generate_data_key(
        &self,
        tenant: &TenantId,
        ctx: crate::crypto::DekContext<'_>,
    ) -> crate::Result<(crate::crypto::DataKey, crate::crypto::WrappedDek)> {
        let res = self.inner.generate_data_key(tenant, ctx);
        let is_background = std::thread::current()
            .name()
            .is_some_and(|name| name.starts_with("vv-bg-"));
        if is_background {
            let mut gate = self.gate.lock();
            if gate.is_armed {
                gate.is_armed = false;
                gate.is_holding = true;
                self.changed.notify_all();
                while !gate.is_released {
                    self.changed.wait(&mut gate);
                }
            }
        }
        res
    }

    fn decrypt_data_key(
        &self,
        tenant: &TenantId,
        ctx: crate::crypto::DekContext<'_>,
        wrapped: &crate::crypto::WrappedDek,
    ) -> crate::Result<crate::crypto::DataKey> {
        self.inner.decrypt_data_key(tenant, ctx, wrapped)
    }

    fn rewrap_data_key(
        &self,
        tenant: &TenantId,
        ctx: crate::crypto::DekContext<'_>,
        wrapped: &crate::crypto::WrappedDek,
    ) -> crate::Result<crate::crypto::WrappedDek> {
        self.inner.rewrap_data_key(tenant, ctx, wrapped)
    }

    fn current_kek_version(&self, tenant: &TenantId) -> crate::Result<u32> {
        self.inner.current_kek_version(tenant)
    }
}

#[test]
fn a_delete_survives_when_its_wal_outlives_the_seal_of_another_segment() {
    let seed = seed();
    let dir = scratch();
    let t = tenant(TENANT);
    // Every frame goes to a WAL file of its own, so the delete's file holds nothing else.
    let limits = Limits {
        wal_bytes: 1,
        ..limits()
    };
    let model = {
        let keys = GatedKeys::new(keys(dir.path(), &[TENANT]));
        let engine = Engine::open(&dir.path().join("data"), keys.clone(), limits).unwrap();
        let collection = engine
            .create_collection(&t, &collection_name(), config())
            .unwrap();
        let mut model = upsert_ids(&collection, seed, 0..64);
        let guard = keys.arm();
        // The first segment is full: these go to a new one, and the first is sealed meanwhile.
        model.extend(upsert_ids(&collection, seed, 64..80));
        keys.wait_holding();
        // Delete a point of the growing segment, then write on: the seal finishes after both.
        collection.delete(&[PointId::Num(70)]).unwrap();
        model.remove(&PointId::Num(70));
        model.extend(upsert_ids(&collection, seed, 80..96));
        drop(guard);
        collection.wait_idle().unwrap();
        check(
            &collection,
            &model,
            &Pending::Nothing,
            &format!("seed {seed}, before restart"),
        );
        model
    };
    let (_keys, engine) = reopen(dir.path());
    let collection = engine.collection(&t, &collection_name()).unwrap();
    check(
        &collection,
        &model,
        &Pending::Nothing,
        &format!("seed {seed}, after restart"),
    );
}

#[test]
fn a_segment_sealed_during_a_rewrap_is_rewrapped_before_the_old_kek_goes() {
    let seed = seed();
    let dir = scratch();
    let t = tenant(TENANT);
    let model = {
        let inner = keys(dir.path(), &[TENANT]);
        let keys = GatedKeys::new(inner.clone());
        let engine = Engine::open(&dir.path().join("data"), keys.clone(), limits()).unwrap();
        let collection = engine
            .create_collection(&t, &collection_name(), config())
            .unwrap();
        let mut model = upsert_ids(&collection, seed, 0..64);
        let guard = keys.arm();
        model.extend(upsert_ids(&collection, seed, 64..80));
        // The seal holds a DEK wrapped under KEK 1 and has not listed its file yet.
        keys.wait_holding();
        inner.rotate_kek(&t).unwrap();
        // The re-wrap waits for the seal in flight, so it runs on its own thread while this one
        // lets the seal go on.
        std::thread::scope(|scope| {
            let rewrap = scope.spawn(|| collection.rewrap_keys());
            drop(guard);
            rewrap.join().unwrap().unwrap();
        });
        collection.wait_idle().unwrap();
        // The re-wrap returned, so KEK 1 must no longer be needed.
        inner.destroy_kek(&t, 1).unwrap();
        model
    };
    let (_keys, engine) = reopen(dir.path());
    let collection = engine
        .collection(&t, &collection_name())
        .unwrap_or_else(|err| {
            panic!("seed {seed}: after re-wrap and destroying KEK 1, does not open: {err}")
        });
    check(
        &collection,
        &model,
        &Pending::Nothing,
        &format!("seed {seed}"),
    );
}

#[test]
fn a_failed_kek_rotation_does_not_wrap_new_files_under_the_lost_kek() {
    let seed = seed();
    let dir = scratch();
    let t = tenant(TENANT);
    let sim = SimDisk::new();
    let model = {
        let root = Arc::new(LocalKeyFile::open_or_generate(&dir.path().join("root.key")).unwrap());
        let keys = Arc::new(
            LocalKeyService::open_with_disk(root, &dir.path().join("keks"), Arc::new(sim.clone()))
                .unwrap(),
        );
        keys.ensure_tenant(&t).unwrap();
        let engine = Engine::open(&dir.path().join("data"), keys.clone(), limits()).unwrap();
        let collection = engine
            .create_collection(&t, &collection_name(), config())
            .unwrap();
        let mut model = upsert_ids(&collection, seed, 0..20);
        // Writing the new KEK fails: it never became durable.
        sim.fail_at(sim.ops());
        assert!(keys.rotate_kek(&t).is_err());
        // The data disk is fine, so the collection goes on: a new segment, a new WAL, new DEKs.
        collection.flush().unwrap();
        model.extend(upsert_ids(&collection, seed, 20..40));
        model
    };
    sim.crash(false).unwrap();
    let (_keys, engine) = reopen(dir.path());
    let collection = engine
        .collection(&t, &collection_name())
        .unwrap_or_else(|err| panic!("seed {seed}: does not open: {err}"));
    check(
        &collection,
        &model,
        &Pending::Nothing,
        &format!("seed {seed}"),
    );
}

/// Where each frame of the WAL file `bytes` ends.
fn frame_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = Header::encoded_len(0);
    while let Some(head) = bytes.get(at..at + 4) {
        let len = u32::from_le_bytes(head.try_into().unwrap()) as usize;
        at += 16 + len;
        assert!(at <= bytes.len(), "the WAL ends inside a frame");
        ends.push(at);
    }
    ends
}

/// The newest WAL file of a collection directory, by file id.
fn newest_wal(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            let id: u64 = name.strip_prefix("wal-")?.parse().ok()?;
            Some((id, path))
        })
        .max()
        .expect("a WAL file")
        .1
}

#[test]
fn every_prefix_of_the_newest_wal_opens_with_exactly_its_complete_frames() {
    let seed = seed();
    let dir = scratch();
    let t = tenant(TENANT);
    // No sealing, and a few frames per WAL file, so older WAL files are replayed whole first.
    let limits = Limits {
        segment_points: 1000,
        wal_bytes: 1200,
        ..limits()
    };
    let batch = |version: u64, ids: Range<u64>| -> Vec<(PointId, Point)> {
        ids.map(|id| {
            let point = (vector(seed, id, version), payload(id, version));
            (PointId::Num(id), point)
        })
        .collect()
    };
    // One model per acknowledged batch: states[k] holds the first k batches.
    let mut states = vec![Model::new()];
    {
        let keys = keys(dir.path(), &[TENANT]);
        let engine = Engine::open(&dir.path().join("data"), keys, limits).unwrap();
        let collection = engine
            .create_collection(&t, &collection_name(), config())
            .unwrap();
        for round in 0..4u64 {
            let mut model = states.last().unwrap().clone();
            let points = batch(round, round * 3..round * 3 + 5);
            collection
                .upsert(
                    points
                        .iter()
                        .map(|(id, (vector, payload))| PointInput {
                            id: id.clone(),
                            vector: vector.clone(),
                            payload: payload.clone(),
                        })
                        .collect(),
                )
                .unwrap();
            model.extend(points);
            states.push(model.clone());
            let deleted = [PointId::Num(round * 3 + 1), PointId::Num(500)];
            collection.delete(&deleted).unwrap();
            for id in &deleted {
                model.remove(id);
            }
            states.push(model);
        }
    }
    let collection_dir = dir
        .path()
        .join("data/tenants")
        .join(TENANT)
        .join(COLLECTION);
    let path = newest_wal(&collection_dir);
    let full = std::fs::read(&path).unwrap();
    let ends = frame_ends(&full);
    let n_batches = states.len() - 1;
    assert!(
        (1..n_batches).contains(&ends.len()),
        "seed {seed}: the newest WAL should hold some but not all of the {n_batches} batches, \
         it holds {}",
        ends.len()
    );
    // The batches before the newest WAL's first frame are in older files.
    let first = n_batches - ends.len();
    eprintln!(
        "seed {seed}: cutting {} ({} bytes, {} of {n_batches} batches) at every byte",
        path.display(),
        full.len(),
        ends.len()
    );
    for len in Header::encoded_len(0)..=full.len() {
        std::fs::write(&path, &full[..len]).unwrap();
        let complete = ends.iter().filter(|&&end| end <= len).count();
        let ctx = format!("seed {seed}: WAL {} cut to {len} bytes", path.display());
        let keys = keys(dir.path(), &[TENANT]);
        let engine = Engine::open(&dir.path().join("data"), keys, limits).unwrap();
        let collection = engine
            .collection(&t, &collection_name())
            .unwrap_or_else(|err| panic!("{ctx}: does not open: {err}"));
        check(
            &collection,
            &states[first + complete],
            &Pending::Nothing,
            &ctx,
        );
    }
}

const SIGKILL_DIR_VAR: &str = "VV_SIGKILL_DIR";
const SIGKILL_START_VAR: &str = "VV_SIGKILL_START";
const SIGKILL_SEED_VAR: &str = "VV_SIGKILL_SEED";
/// A child never writes more batches than this, even if its parent is gone.
const SIGKILL_MAX_BATCHES: u64 = 100_000;

/// Batch `batch` of the SIGKILL test: 16 new points.
fn sigkill_batch(seed: u64, batch: u64) -> Vec<(PointId, Point)> {
    let per_batch = limits().max_batch as u64;
    (batch * per_batch..(batch + 1) * per_batch)
        .map(|id| (PointId::Num(id), (vector(seed, id, 0), payload(id, 0))))
        .collect()
}

/// The child half of `sigkill_loses_no_acknowledged_batch`, which runs this test binary again with
/// only this test selected. Returns at once unless that test started it.
#[test]
fn sigkill_child() {
    let Some(dir) = std::env::var_os(SIGKILL_DIR_VAR) else {
        return;
    };
    let var = |name: &str| -> u64 { std::env::var(name).unwrap().parse().unwrap() };
    let (start, seed) = (var(SIGKILL_START_VAR), var(SIGKILL_SEED_VAR));
    let (_keys, engine) = reopen(Path::new(&dir));
    let t = tenant(TENANT);
    let collection = match engine.collection(&t, &collection_name()) {
        Ok(collection) => collection,
        Err(Error::CollectionNotFound(_)) => engine
            .create_collection(&t, &collection_name(), config())
            .unwrap(),
        Err(err) => panic!("the collection does not open: {err}"),
    };
    // Straight to the process's stdout, past the test harness's capture. A write fails once the
    // parent is gone, which ends this loop too.
    let mut stdout = std::io::stdout();
    for batch in start..start + SIGKILL_MAX_BATCHES {
        let points = sigkill_batch(seed, batch)
            .into_iter()
            .map(|(id, (vector, payload))| PointInput {
                id,
                vector,
                payload,
            })
            .collect();
        collection.upsert(points).unwrap();
        writeln!(stdout, "\nACK {batch}").unwrap();
        stdout.flush().unwrap();
    }
}

#[test]
fn sigkill_loses_no_acknowledged_batch() {
    let seed = seed();
    let dir = scratch();
    let t = tenant(TENANT);
    // Acknowledgements to wait for before each kill. A segment holds 4 batches, so kills land at
    // every phase of filling, rotating and sealing; 0 kills the child while it starts and recovers.
    let rounds = [1u64, 5, 0, 3, 4, 9, 2, 6, 13, 1, 7];
    let mut next = 0u64;
    for (round, &k) in rounds.iter().enumerate() {
        let ctx = format!(
            "seed {seed} round {round} (kill after {k} acknowledgements from batch {next})"
        );
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::crash::sigkill_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SIGKILL_DIR_VAR, dir.path())
            .env(SIGKILL_START_VAR, next.to_string())
            .env(SIGKILL_SEED_VAR, seed.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let mut acked = Vec::new();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        while (acked.len() as u64) < k {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(batch) = line.strip_prefix("ACK ") {
                acked.push(batch.trim().parse::<u64>().unwrap());
            }
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        drop(lines);
        let stderr = stderr.join().unwrap();
        assert_eq!(
            acked,
            (next..next + k).collect::<Vec<_>>(),
            "{ctx}: the child stopped early ({status}); its stderr:\n{stderr}"
        );

        let (_keys, engine) = reopen(dir.path());
        let collection = match engine.collection(&t, &collection_name()) {
            Ok(collection) => collection,
            // Killed before it created the collection: nothing was acknowledged.
            Err(Error::CollectionNotFound(_)) if next == 0 && k == 0 => continue,
            Err(err) => panic!("{ctx}: the collection does not open: {err}"),
        };
        let stored = read_all(&collection);
        // Every acknowledged batch, and after them whichever batches the child finished before the
        // kill landed (acknowledged to nobody, but each must be whole).
        let mut expected = Model::new();
        let mut batch = 0;
        loop {
            let points = sigkill_batch(seed, batch);
            if batch >= next + k && !stored.contains_key(&points[0].0) {
                break;
            }
            expected.extend(points);
            batch += 1;
        }
        check(&collection, &expected, &Pending::Nothing, &ctx);
        eprintln!("{ctx}: {batch} batches present");
        next = batch;
    }
}

/// Segment and WAL files of a collection directory by name: header and the bytes after it.
fn data_files(dir: &Path) -> BTreeMap<String, (Header, Vec<u8>)> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("seg-") || name.starts_with("wal-") {
            let bytes = std::fs::read(&path).unwrap();
            let header = Header::decode(&bytes, &path).unwrap();
            let body = bytes[Header::encoded_len(header.sections.len())..].to_vec();
            files.insert(name, (header, body));
        }
    }
    files
}

/// INV-07: a KEK re-wrap replaces each data file's wrapped DEK and nothing else.
#[test]
fn a_rewrap_changes_only_the_wrapped_keys_of_data_files() {
    let seed = seed();
    let dir = scratch();
    let t = tenant(TENANT);
    let (keys, engine) = reopen(dir.path());
    let collection = engine
        .create_collection(&t, &collection_name(), config())
        .unwrap();
    let model = upsert_ids(&collection, seed, 0..90);
    collection.wait_idle().unwrap();
    let collection_dir = dir
        .path()
        .join("data/tenants")
        .join(TENANT)
        .join(COLLECTION);
    let before = data_files(&collection_dir);
    assert!(
        before.keys().any(|name| name.starts_with("seg-"))
            && before.keys().any(|name| name.starts_with("wal-")),
        "seed {seed}: expected sealed segments and WAL files, found {:?}",
        before.keys().collect::<Vec<_>>()
    );
    let version = keys.rotate_kek(&t).unwrap();
    collection.rewrap_keys().unwrap();
    let after = data_files(&collection_dir);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "seed {seed}"
    );
    for (name, (header, body)) in &before {
        let (new_header, new_body) = &after[name];
        assert_eq!(
            new_header.wrapped_dek.kek_version, version,
            "seed {seed}: {name}"
        );
        let unchanged = Header {
            wrapped_dek: new_header.wrapped_dek,
            ..header.clone()
        };
        assert_eq!(&unchanged, new_header, "seed {seed}: {name}: header");
        assert!(body == new_body, "seed {seed}: {name}: the data changed");
    }
    keys.destroy_kek(&t, version - 1).unwrap();
    drop(collection);
    drop(engine);
    let (_keys, engine) = reopen(dir.path());
    let collection = engine.collection(&t, &collection_name()).unwrap();
    check(
        &collection,
        &model,
        &Pending::Nothing,
        &format!("seed {seed}"),
    );
}
