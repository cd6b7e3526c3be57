//! The worker's view of its tenants: who may touch a tenant in the engine at a time, when each was
//! last used, the memory budget that unloads the least recently used ones, and the idle time after
//! which a tenant is unloaded whatever the budget (`Config::idle_unload_after`): an unloaded
//! tenant holds no plaintext, no open file and no thread, and loads again on its next request.
//!
//! **Invariant:** every engine call for a tenant happens under that tenant's `gate`: requests hold
//! it shared; unloading (release, erase, eviction) holds it exclusively. So a tenant is never
//! unloaded under a running request, and a request never reloads a tenant while it is being
//! unloaded (the storage engine would otherwise open a second copy of its collections).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use storage::Engine;
use storage::ids::TenantId;

/// One tenant's coordination state on this worker.
#[derive(Default)]
pub(crate) struct TenantSlot {
    /// Shared by requests, exclusive while the tenant is unloaded or erased.
    pub(crate) gate: RwLock<()>,
    /// Serialises the check-then-write of quota-limited operations.
    pub(crate) quota: Mutex<()>,
    /// Tick of the last request admitted for the tenant.
    last_used: AtomicU64,
    /// When that was, in the clock's milliseconds (when the slot was made, before any).
    last_used_ms: AtomicU64,
}

/// The time idle unloading goes by: the host's, or one a test moves.
pub trait Clock: Send + Sync {
    /// Milliseconds since some fixed point (the Unix epoch for [`SystemClock`]).
    fn now_ms(&self) -> u64;
}

/// The host's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::server::now_ms()
    }
}

/// Every tenant this worker has served since it started, with the figures for heartbeats.
pub(crate) struct Tenants {
    slots: Mutex<HashMap<TenantId, Arc<TenantSlot>>>,
    ticks: AtomicU64,
    clock: Arc<dyn Clock>,
    loaded: AtomicU64,
    plaintext_bytes: AtomicU64,
}

impl Tenants {
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Tenants {
        Tenants {
            slots: Mutex::default(),
            ticks: AtomicU64::new(0),
            clock,
            loaded: AtomicU64::new(0),
            plaintext_bytes: AtomicU64::new(0),
        }
    }

    /// The tenant's slot, marked as just used.
    pub(crate) fn touch(&self, tenant: &TenantId) -> Arc<TenantSlot> {
        let tick = self.ticks.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = self.slot(tenant);
        slot.last_used.store(tick, Ordering::Relaxed);
        slot.last_used_ms
            .store(self.clock.now_ms(), Ordering::Relaxed);
        slot
    }

    /// The tenant's slot, without marking it used.
    pub(crate) fn slot(&self, tenant: &TenantId) -> Arc<TenantSlot> {
        self.slots
            .lock()
            .entry(tenant.clone())
            .or_insert_with(|| {
                Arc::new(TenantSlot {
                    last_used_ms: AtomicU64::new(self.clock.now_ms()),
                    ..TenantSlot::default()
                })
            })
            .clone()
    }

    /// Loaded tenants and their plaintext bytes, as of the last [`Tenants::account`].
    pub(crate) fn stats(&self) -> (u64, u64) {
        (
            self.loaded.load(Ordering::Relaxed),
            self.plaintext_bytes.load(Ordering::Relaxed),
        )
    }

    /// Measures the loaded tenants, unloads those no request has used for `idle_after` (if set)
    /// and, while the rest hold more than `budget_bytes` of plaintext, the least recently used
    /// ones. A tenant a request is using is never unloaded. Blocking.
    pub(crate) fn account(&self, engine: &Engine, budget_bytes: u64, idle_after: Option<Duration>) {
        let now_ms = self.clock.now_ms();
        let slots: Vec<(TenantId, Arc<TenantSlot>)> = self
            .slots
            .lock()
            .iter()
            .map(|(t, s)| (t.clone(), s.clone()))
            .collect();
        let mut loaded = Vec::new();
        for (tenant, slot) in slots {
            // A tenant being unloaded right now is skipped; the next pass sees the result.
            let Some(shared) = slot.gate.try_read() else {
                continue;
            };
            if !engine.is_loaded(&tenant) {
                continue;
            }
            let (bytes, has_key_failure) = match engine.list_collections(&tenant) {
                Ok(collections) => (
                    collections
                        .iter()
                        .filter_map(|(_, info)| info.as_ref().ok())
                        .map(|info| info.memory_bytes)
                        .sum(),
                    collections
                        .iter()
                        .any(|(_, info)| info.as_ref().is_err_and(is_key_failure)),
                ),
                Err(_) => (0, false),
            };
            let last_used = slot.last_used.load(Ordering::Relaxed);
            let idle_ms = now_ms.saturating_sub(slot.last_used_ms.load(Ordering::Relaxed));
            drop(shared);
            if let Some(idle_after) = idle_after
                && u128::from(idle_ms) >= idle_after.as_millis()
                && let Some(_exclusive) = slot.gate.try_write()
            {
                match engine.unload_tenant(&tenant) {
                    Ok(()) => {
                        tracing::info!(tenant = %tenant, idle_ms, "unloaded an idle tenant");
                        continue;
                    }
                    Err(err) => {
                        tracing::warn!(tenant = %tenant, error = %err, "unloading an idle tenant failed");
                    }
                }
            }
            // A collection that failed to load for want of a key stays failed until the tenant
            // loads again; unload it so the next request retries (the key service may be back).
            if has_key_failure
                && let Some(_exclusive) = slot.gate.try_write()
                && engine.unload_tenant(&tenant).is_ok()
            {
                tracing::info!(tenant = %tenant, "unloaded a tenant whose collections failed to get their keys");
                continue;
            }
            loaded.push((tenant, slot.clone(), bytes, last_used));
        }
        let mut total: u64 = loaded.iter().map(|(_, _, bytes, _)| bytes).sum();
        let mut n_loaded = loaded.len() as u64;
        if total > budget_bytes {
            loaded.sort_by_key(|(_, _, _, last_used)| *last_used);
            for (tenant, slot, bytes, _) in &loaded {
                if total <= budget_bytes {
                    break;
                }
                // Held by a running request: not a candidate.
                let Some(_exclusive) = slot.gate.try_write() else {
                    continue;
                };
                if !engine.is_loaded(tenant) {
                    continue;
                }
                if let Err(err) = engine.unload_tenant(tenant) {
                    tracing::warn!(tenant = %tenant, error = %err, "unloading a tenant over the memory budget failed");
                    continue;
                }
                total = total.saturating_sub(*bytes);
                n_loaded -= 1;
                tracing::info!(tenant = %tenant, plaintext_bytes = bytes, budget_bytes, "unloaded the least recently used tenant to stay within the memory budget");
            }
        }
        self.loaded.store(n_loaded, Ordering::Relaxed);
        self.plaintext_bytes.store(total, Ordering::Relaxed);
    }
}

/// Whether a storage error comes from the key service (unreachable, refused, timed out) rather
/// than from the data. The engine keeps only the message of a collection's load failure, in
/// which a key error renders as "key error: ...".
pub(crate) fn is_key_failure(err: &storage::Error) -> bool {
    match err {
        storage::Error::Key(_) => true,
        storage::Error::CollectionUnavailable { reason, .. } => reason.starts_with("key error"),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
