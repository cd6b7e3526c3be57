//! A tenant's load asks the key service for every file's DEK in one call, takes each from what
//! that call answered, and keeps none of them once loaded; if that call fails, each file asks for
//! its own and the load still succeeds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::collection::{clustered, limits, name, search, upsert_all};
use super::{keys, tenant};
use crate::collection::CollectionConfig;
use crate::crypto::{DataKey, DekContext, KeyService, LocalKeyService, WrappedDek};
use crate::ids::{PointId, TenantId};
use crate::index::Metric;
use crate::{Engine, Error, Result};

/// Counts single and batched unwraps; batches fail while `fail_batches` is set.
struct Counting {
    inner: Arc<LocalKeyService>,
    singles: AtomicUsize,
    batches: AtomicUsize,
    batched_keys: AtomicUsize,
    fail_batches: AtomicBool,
}

impl KeyService for Counting {
    fn generate_data_key(
        &self,
        tenant: &TenantId,
        ctx: DekContext<'_>,
    ) -> Result<(DataKey, WrappedDek)> {
        self.inner.generate_data_key(tenant, ctx)
    }
    fn decrypt_data_key(
        &self,
        tenant: &TenantId,
        ctx: DekContext<'_>,
        wrapped: &WrappedDek,
    ) -> Result<DataKey> {
        self.singles.fetch_add(1, Ordering::SeqCst);
        self.inner.decrypt_data_key(tenant, ctx, wrapped)
    }
    fn decrypt_data_keys(
        &self,
        tenant: &TenantId,
        files: &[(DekContext<'_>, WrappedDek)],
    ) -> Result<Vec<DataKey>> {
        if self.fail_batches.load(Ordering::SeqCst) {
            return Err(Error::Key("the batch call is down".into()));
        }
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.batched_keys.fetch_add(files.len(), Ordering::SeqCst);
        files
            .iter()
            .map(|(ctx, wrapped)| self.inner.decrypt_data_key(tenant, *ctx, wrapped))
            .collect()
    }
    fn rewrap_data_key(
        &self,
        tenant: &TenantId,
        ctx: DekContext<'_>,
        wrapped: &WrappedDek,
    ) -> Result<WrappedDek> {
        self.inner.rewrap_data_key(tenant, ctx, wrapped)
    }
    fn current_kek_version(&self, tenant: &TenantId) -> Result<u32> {
        self.inner.current_kek_version(tenant)
    }
}

#[test]
fn a_load_unwraps_every_files_dek_in_one_call_and_keeps_none() {
    let dir = tempfile::tempdir().unwrap();
    let counting = Arc::new(Counting {
        inner: keys(dir.path(), &["a"]),
        singles: AtomicUsize::new(0),
        batches: AtomicUsize::new(0),
        batched_keys: AtomicUsize::new(0),
        fail_batches: AtomicBool::new(false),
    });
    let t = tenant("a");
    let engine = Engine::open(&dir.path().join("data"), counting.clone(), limits()).unwrap();
    let points: Vec<_> = clustered(2, 600, 8, 3)
        .into_iter()
        .enumerate()
        .map(|(i, v)| (PointId::Num(i as u64), v, None))
        .collect();
    for collection in ["docs", "notes"] {
        let c = engine
            .create_collection(&t, &name(collection), CollectionConfig::new(8, Metric::L2))
            .unwrap();
        upsert_all(&c, &points[..400], 200);
        c.flush().unwrap();
        upsert_all(&c, &points[400..], 200);
    }
    let files: usize = ["docs", "notes"]
        .iter()
        .map(|c| {
            std::fs::read_dir(dir.path().join("data/tenants/a").join(c))
                .unwrap()
                .filter(|e| {
                    let n = e
                        .as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .into_owned();
                    n == "MANIFEST" || n.starts_with("seg-") || n.starts_with("wal-")
                })
                .count()
        })
        .sum();
    assert!(files >= 6, "{files} files");

    engine.unload_tenant(&t).unwrap();
    let singles = counting.singles.load(Ordering::SeqCst);
    engine.load_tenant(&t).unwrap();
    assert_eq!(counting.batches.load(Ordering::SeqCst), 1);
    assert!(counting.batched_keys.load(Ordering::SeqCst) >= files - 2);
    assert_eq!(
        counting.singles.load(Ordering::SeqCst),
        singles,
        "a file asked for its own DEK although the load had it"
    );
    assert_eq!(engine.prefetched_deks(), 0, "DEKs were kept after the load");
    let c = engine.collection(&t, &name("docs")).unwrap();
    assert_eq!(c.info().points, 600);
    assert_eq!(search(&c, &points[7].1, 1, None)[0].0, PointId::Num(7));

    // The batch call down: each file asks for its own, and the tenant loads the same.
    engine.unload_tenant(&t).unwrap();
    counting.fail_batches.store(true, Ordering::SeqCst);
    let singles = counting.singles.load(Ordering::SeqCst);
    engine.load_tenant(&t).unwrap();
    assert!(counting.singles.load(Ordering::SeqCst) >= singles + files - 2);
    assert_eq!(engine.prefetched_deks(), 0);
    let c = engine.collection(&t, &name("notes")).unwrap();
    assert_eq!(c.info().points, 600);
}
