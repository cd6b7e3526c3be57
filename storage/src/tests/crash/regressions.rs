//! Regressions for crash bugs the scenario found, made deterministic: a segment sealed before it
//! is full, an interrupted collection creation, and seals or re-wraps held inside the key service
//! ([`GatedKeys`]) while foreground work runs.

use super::*;

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
