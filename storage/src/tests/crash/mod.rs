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
//!   ([`regressions::GatedKeys`]) while foreground work runs.
//!
//! Every assertion names the seed and the failpoint; `VV_CRASH_SEED` and `VV_CRASH_FAILPOINT`
//! rerun one case. This module has the scenario and its failpoints; `regressions` the
//! deterministic regressions, `files` the cut WAL, the SIGKILLed child and the re-wrap's bytes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use super::{keys, tenant};

mod files;
mod regressions;
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
