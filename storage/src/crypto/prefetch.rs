//! DEKs unwrapped ahead of time: a tenant's load asks the key service for every file's DEK in one
//! call ([`KeyService::decrypt_data_keys`]) instead of one call per file as each file opens. Over
//! the cluster channel each call is a round trip to the coordinator and an audit write there, so a
//! small tenant's first request waits for one instead of three or more.
//!
//! [`Prefetching`] wraps the engine's key service. [`Prefetching::prefetch`] unwraps the DEKs of a
//! list of files and keeps them, each until the file's open takes it
//! ([`KeyService::decrypt_data_key`] with exactly that tenant, collection, file id and wrapped
//! key) or [`Prefetching::forget`] drops what the load did not take; both happen within the load,
//! so no DEK stays in memory for a tenant that is not loaded. A prefetch that fails is only
//! logged: each file then asks for its own DEK as it opens, and gets the real error.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{DataKey, DekContext, KeyService, WRAPPED_KEY_BYTES, WrappedDek};
use crate::Result;
use crate::ids::TenantId;

/// One file's DEK, as its open asks for it.
#[derive(Hash, PartialEq, Eq)]
struct Asked {
    tenant: TenantId,
    collection: String,
    file_id: u64,
    kek_version: u32,
    wrapped: [u8; WRAPPED_KEY_BYTES],
}

/// A file whose DEK a load will need: its collection, id and wrapped DEK.
pub struct WillOpen {
    /// The collection.
    pub collection: String,
    /// The file id within it.
    pub file_id: u64,
    /// Its DEK, wrapped (from the file's header).
    pub wrapped: WrappedDek,
}

/// A key service that serves prefetched DEKs once each and passes every other call on.
pub struct Prefetching {
    inner: Arc<dyn KeyService>,
    ready: Mutex<HashMap<Asked, DataKey>>,
}

impl Prefetching {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn KeyService>) -> Prefetching {
        Prefetching {
            inner,
            ready: Mutex::new(HashMap::new()),
        }
    }

    /// Unwraps the DEKs of `files` of `tenant` in one call and keeps them until taken or
    /// forgotten. Answers how many were kept (0 if the call failed).
    pub fn prefetch(&self, tenant: &TenantId, files: &[WillOpen]) -> usize {
        if files.is_empty() {
            return 0;
        }
        let asked: Vec<(DekContext<'_>, WrappedDek)> = files
            .iter()
            .map(|f| {
                (
                    DekContext {
                        collection: &f.collection,
                        file_id: f.file_id,
                    },
                    f.wrapped,
                )
            })
            .collect();
        let deks = match self.inner.decrypt_data_keys(tenant, &asked) {
            Ok(deks) if deks.len() == files.len() => deks,
            Ok(_) => {
                tracing::warn!(tenant = %tenant, "the key service answered a different number of keys; each file asks for its own");
                return 0;
            }
            Err(err) => {
                tracing::debug!(tenant = %tenant, error = %err, "prefetching the DEKs failed; each file asks for its own");
                return 0;
            }
        };
        let mut ready = self.ready.lock();
        for (file, dek) in files.iter().zip(deks) {
            ready.insert(
                Asked {
                    tenant: tenant.clone(),
                    collection: file.collection.clone(),
                    file_id: file.file_id,
                    kek_version: file.wrapped.kek_version,
                    wrapped: file.wrapped.bytes,
                },
                dek,
            );
        }
        files.len()
    }

    /// Drops (zeroizing) the prefetched DEKs of `tenant` that no open took.
    pub fn forget(&self, tenant: &TenantId) -> usize {
        let mut ready = self.ready.lock();
        let before = ready.len();
        ready.retain(|asked, _| asked.tenant != *tenant);
        before - ready.len()
    }

    /// Prefetched DEKs held now (tests).
    pub fn held(&self) -> usize {
        self.ready.lock().len()
    }
}

impl KeyService for Prefetching {
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
        // Outside a load nothing is prefetched: no key to build.
        if self.ready.lock().is_empty() {
            return self.inner.decrypt_data_key(tenant, ctx, wrapped);
        }
        let asked = Asked {
            tenant: tenant.clone(),
            collection: ctx.collection.to_owned(),
            file_id: ctx.file_id,
            kek_version: wrapped.kek_version,
            wrapped: wrapped.bytes,
        };
        if let Some(dek) = self.ready.lock().remove(&asked) {
            return Ok(dek);
        }
        self.inner.decrypt_data_key(tenant, ctx, wrapped)
    }

    fn decrypt_data_keys(
        &self,
        tenant: &TenantId,
        files: &[(DekContext<'_>, WrappedDek)],
    ) -> Result<Vec<DataKey>> {
        self.inner.decrypt_data_keys(tenant, files)
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
