//! In-crate integration tests: whole files and collections on a real filesystem.

mod churn;
mod cold;
mod collection;
mod concurrency;
mod crash;
mod erasure;
mod format;
mod growth;
mod hygiene;
mod isolation;
mod lifecycle;
mod outage;
mod prefetch;
mod wal;

use std::path::Path;
use std::sync::Arc;

use crate::crypto::{LocalKeyFile, LocalKeyService};
use crate::ids::TenantId;

pub(crate) fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

/// A key service over a fresh root key in `dir`, with the given tenants created.
pub(crate) fn keys(dir: &Path, tenants: &[&str]) -> Arc<LocalKeyService> {
    let root = LocalKeyFile::open_or_generate(&dir.join("root.key")).unwrap();
    let keys = LocalKeyService::open(Arc::new(root), &dir.join("keks")).unwrap();
    for name in tenants {
        keys.ensure_tenant(&tenant(name)).unwrap();
    }
    Arc::new(keys)
}

/// A collection context over the real disk with `keys`, `limits` and one index thread.
pub(crate) fn context(
    keys: Arc<dyn crate::crypto::KeyService>,
    limits: crate::collection::Limits,
) -> crate::collection::Context {
    crate::collection::Context {
        keys,
        disk: Arc::new(crate::disk::StdDisk),
        limits,
        pool: Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap(),
        ),
    }
}
