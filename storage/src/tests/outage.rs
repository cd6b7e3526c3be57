//! A key service that is away for a while: writes that need no new key keep being acknowledged,
//! those that do get a retriable key error, background work waits and retries, and nothing is
//! lost or poisoned.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::{keys, tenant};
use crate::collection::{CollectionConfig, Context, Limits, PointInput, SearchRequest};
use crate::crypto::{DataKey, DekContext, KeyService, LocalKeyService, WrappedDek};
use crate::ids::{CollectionName, PointId, TenantId};
use crate::index::Metric;
use crate::{Collection, Error, Result};

/// A key service that answers like the real one while up and fails every call while down,
/// counting the failures so a test can wait for the one it expects.
struct FlakyKeys {
    inner: Arc<LocalKeyService>,
    is_down: AtomicBool,
    failures: Mutex<u64>,
    failed: Condvar,
}

impl FlakyKeys {
    fn new(inner: Arc<LocalKeyService>) -> Arc<FlakyKeys> {
        Arc::new(FlakyKeys {
            inner,
            is_down: AtomicBool::new(false),
            failures: Mutex::new(0),
            failed: Condvar::new(),
        })
    }

    fn set_down(&self, is_down: bool) {
        self.is_down.store(is_down, Ordering::SeqCst);
    }

    fn check(&self) -> Result<()> {
        if self.is_down.load(Ordering::SeqCst) {
            *self.failures.lock() += 1;
            self.failed.notify_all();
            return Err(Error::Key("no connection to the key service".into()));
        }
        Ok(())
    }

    fn failures(&self) -> u64 {
        *self.failures.lock()
    }

    /// Waits until at least `n` calls have failed; false if that did not happen within a minute
    /// (a bound against hanging, not a timing assertion).
    fn wait_for_failures(&self, n: u64) -> bool {
        let mut failures = self.failures.lock();
        let bound = std::time::Instant::now() + Duration::from_secs(60);
        while *failures < n {
            if self.failed.wait_until(&mut failures, bound).timed_out() {
                return *failures >= n;
            }
        }
        true
    }
}

impl KeyService for FlakyKeys {
    fn generate_data_key(
        &self,
        tenant: &TenantId,
        ctx: DekContext<'_>,
    ) -> Result<(DataKey, WrappedDek)> {
        self.check()?;
        self.inner.generate_data_key(tenant, ctx)
    }
    fn decrypt_data_key(
        &self,
        tenant: &TenantId,
        ctx: DekContext<'_>,
        wrapped: &WrappedDek,
    ) -> Result<DataKey> {
        self.check()?;
        self.inner.decrypt_data_key(tenant, ctx, wrapped)
    }
    fn rewrap_data_key(
        &self,
        tenant: &TenantId,
        ctx: DekContext<'_>,
        wrapped: &WrappedDek,
    ) -> Result<WrappedDek> {
        self.check()?;
        self.inner.rewrap_data_key(tenant, ctx, wrapped)
    }
    fn current_kek_version(&self, tenant: &TenantId) -> Result<u32> {
        self.check()?;
        self.inner.current_kek_version(tenant)
    }
}

fn context(keys: &Arc<FlakyKeys>, limits: Limits) -> Context {
    super::context(keys.clone(), limits)
}

fn point(i: u64) -> PointInput {
    PointInput {
        id: PointId::Num(i),
        vector: vec![i as f32, (i % 7) as f32, 1.0, (i * i % 11) as f32],
        payload: None,
    }
}

fn upsert(collection: &Collection, range: std::ops::Range<u64>) -> Result<()> {
    collection.upsert(range.map(point).collect())
}

/// Every point in `0..n` is stored and is its own nearest neighbour.
fn assert_all_found(collection: &Collection, n: u64) {
    assert_eq!(collection.info().points, n);
    for i in 0..n {
        let hits = collection
            .search(&SearchRequest {
                vector: point(i).vector,
                top_k: 1,
                ..SearchRequest::default()
            })
            .unwrap();
        assert_eq!(
            hits[0].id,
            PointId::Num(i),
            "point {i} is not found by its vector"
        );
    }
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

#[test]
fn a_key_service_outage_neither_poisons_nor_loses_anything() {
    let dir = tempfile::tempdir().unwrap();
    let keys = FlakyKeys::new(keys(dir.path(), &["acme"]));
    let limits = Limits {
        segment_points: 100,
        checkpoint_points: 10,
        ..Limits::default()
    };
    let path = dir.path().join("docs");
    let name = CollectionName::parse("docs").unwrap();
    let config = CollectionConfig::new(4, Metric::L2);
    let collection = Collection::create(
        &path,
        &tenant("acme"),
        &name,
        config,
        context(&keys, limits),
    )
    .unwrap();
    // One sealed segment, and a growing one with 50 points whose WAL is open.
    for start in (0..150).step_by(10) {
        upsert(&collection, start..start + 10).unwrap();
    }
    collection.wait_idle().unwrap();
    assert_eq!(collection.info().sealed_segments, 1);

    keys.set_down(true);
    // The open WAL needs no key: these are acknowledged during the outage.
    for start in (150..190).step_by(10) {
        upsert(&collection, start..start + 10).unwrap();
    }
    // This one fills the growing segment: it is frozen for sealing, and the write needs a new
    // WAL, hence a key. It is refused with a key error the client may retry, not as poisoned.
    let err = upsert(&collection, 190..210).unwrap_err();
    assert!(matches!(err, Error::Key(_)), "{err}");
    let failures = keys.failures();
    // The background thread tries to seal the frozen segment, and fails for lack of a key.
    assert!(keys.wait_for_failures(failures + 1));
    let err = upsert(&collection, 190..210).unwrap_err();
    assert!(
        matches!(err, Error::Key(_)),
        "a failed seal poisoned the collection: {err}"
    );
    // Reads keep working.
    assert_all_found(&collection, 190);

    keys.set_down(false);
    upsert(&collection, 190..210).unwrap();
    // The backlog is sealed once keys are back.
    collection.wait_idle().unwrap();
    assert_eq!(collection.info().sealed_segments, 2);
    assert_all_found(&collection, 210);

    // A checkpoint at close that cannot get a key leaves the WAL in place: nothing is lost.
    upsert(&collection, 210..250).unwrap();
    collection.wait_idle().unwrap();
    keys.set_down(true);
    let failures = keys.failures();
    collection.checkpoint_and_close();
    assert!(
        keys.failures() > failures,
        "the checkpoint did not need a key"
    );
    drop(collection);
    assert!(files(&path, "wal-") >= 1);
    keys.set_down(false);
    let collection =
        Collection::open(&path, &tenant("acme"), &name, context(&keys, limits)).unwrap();
    assert_all_found(&collection, 250);
}
