//! The engine: every tenant's collections on one worker.
//!
//! ```text
//! <data>/tenants/<tenant>/<collection>/{MANIFEST, wal-<n>, seg-<n>}
//! <data>/tenants/.import-<tenant>/...     a copy of a tenant's files arriving (`transfer`)
//! <data>/tenants/.warming-<tenant>/...    a paused tenant's files coming back from cold (`cold`)
//! ```
//!
//! Every operation names its tenant, and a tenant's collections are found only under its own
//! directory, so no call can reach another tenant's data. A tenant is loaded on first use and can be
//! unloaded, which drops its plaintext (zeroized as the last reference goes).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::collection::{Collection, CollectionConfig, CollectionInfo, Context, Limits};
use crate::crypto::{KeyService, Prefetching, WillOpen};
use crate::disk::{Disk, StdDisk};
use crate::ids::{CollectionName, TenantId};
use crate::manifest::MANIFEST_NAME;
use crate::{Error, Result};

pub mod cold;
pub mod transfer;

/// A tenant's collections: open ones, and those that failed to load with the reason.
type Collections = BTreeMap<CollectionName, Slot>;

#[derive(Clone)]
enum Slot {
    Open(Arc<Collection>),
    Failed(String),
}

impl Slot {
    fn open(&self, name: &CollectionName) -> Result<&Arc<Collection>> {
        match self {
            Slot::Open(collection) => Ok(collection),
            Slot::Failed(reason) => Err(Error::CollectionUnavailable {
                name: name.to_string(),
                reason: reason.clone(),
            }),
        }
    }
}

/// All tenants and collections under one data directory.
pub struct Engine {
    root: PathBuf,
    ctx: Context,
    /// One entry per tenant seen; its mutex is held while that tenant loads, so loading one tenant
    /// (decrypting its files) never holds up requests for another.
    tenants: RwLock<HashMap<TenantId, Arc<TenantSlot>>>,
    /// Imports of tenants' files in progress (`transfer`).
    imports: transfer::Imports,
    /// The key service collections use (`ctx.keys`), which serves the DEKs a load prefetched.
    prefetch: Arc<Prefetching>,
}

/// A tenant's collections once loaded.
#[derive(Default)]
struct TenantSlot {
    loaded: parking_lot::Mutex<Option<Arc<RwLock<Collections>>>>,
}

impl Engine {
    /// Opens the engine over `data_dir`, creating it if needed. Tenants load on first use.
    pub fn open(data_dir: &Path, keys: Arc<dyn KeyService>, limits: Limits) -> Result<Engine> {
        Engine::open_with_disk(data_dir, keys, limits, Arc::new(StdDisk))
    }

    /// As [`Engine::open`], writing through `disk`.
    pub fn open_with_disk(
        data_dir: &Path,
        keys: Arc<dyn KeyService>,
        limits: Limits,
        disk: Arc<dyn Disk>,
    ) -> Result<Engine> {
        if limits.segment_points < limits.max_batch || limits.segment_points == 0 {
            return Err(Error::invalid(format!(
                "segment_points ({}) must be at least max_batch ({})",
                limits.segment_points, limits.max_batch
            )));
        }
        let root = data_dir.join("tenants");
        disk.create_dir_all(&root).map_err(Error::io(&root))?;
        Engine::finish_removals(&root)?;
        Engine::recover_imports(&root)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(limits.index_threads.max(1))
            .thread_name(|i| format!("vv-index-{i}"))
            .start_handler(|_| crate::sys::process::idle_background_thread())
            .build()
            .map_err(|err| Error::invalid(format!("cannot start index threads: {err}")))?;
        let prefetch = Arc::new(Prefetching::new(keys));
        Ok(Engine {
            root,
            prefetch: prefetch.clone(),
            ctx: Context {
                keys: prefetch,
                disk,
                limits,
                pool: Arc::new(pool),
            },
            tenants: RwLock::new(HashMap::new()),
            imports: transfer::Imports::default(),
        })
    }

    /// DEKs prefetched for a load and not yet taken (none outside a load).
    pub fn prefetched_deks(&self) -> usize {
        self.prefetch.held()
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.ctx.limits
    }

    fn tenant_dir(&self, tenant: &TenantId) -> PathBuf {
        self.root.join(tenant.as_str())
    }

    /// Loads every collection of `tenant` (decrypting its segments and replaying its WALs).
    pub fn load_tenant(&self, tenant: &TenantId) -> Result<()> {
        self.tenant(tenant).map(|_| ())
    }

    fn tenant(&self, tenant: &TenantId) -> Result<Arc<RwLock<Collections>>> {
        let existing = self.tenants.read().get(tenant).cloned();
        let slot = match existing {
            Some(slot) => slot,
            None => self
                .tenants
                .write()
                .entry(tenant.clone())
                .or_default()
                .clone(),
        };
        // Only this tenant's callers wait here while it loads.
        let mut loaded = slot.loaded.lock();
        if let Some(collections) = &*loaded {
            return Ok(collections.clone());
        }
        let collections = Arc::new(RwLock::new(self.load_collections(tenant)?));
        *loaded = Some(collections.clone());
        Ok(collections)
    }

    /// Opens every collection of `tenant` found on disk, finishing interrupted drops and creations.
    /// The DEKs of all its files are asked for in one call first ([`Prefetching`]), and any the
    /// opens did not take are dropped before it answers.
    fn load_collections(&self, tenant: &TenantId) -> Result<Collections> {
        let dir = self.tenant_dir(tenant);
        self.prefetch.prefetch(tenant, &files_to_open(&dir, tenant));
        let loaded = self.open_collections(tenant, &dir);
        self.prefetch.forget(tenant);
        loaded
    }

    fn open_collections(&self, tenant: &TenantId, dir: &Path) -> Result<Collections> {
        let mut collections = Collections::new();
        if dir.exists() {
            for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
                let entry = entry.map_err(Error::io(dir))?;
                let raw = entry.file_name().to_string_lossy().into_owned();
                if raw.starts_with(DROPPED_PREFIX) {
                    // A drop that crashed after its durable rename: finish it.
                    if let Err(err) = remove_tree(&entry.path()) {
                        tracing::warn!(tenant = %tenant, dir = %raw, error = %err, "could not finish removing a dropped collection");
                    }
                    continue;
                }
                let Ok(name) = CollectionName::parse(&raw) else {
                    continue;
                };
                if !entry.path().is_dir() {
                    continue;
                }
                if !entry.path().join(MANIFEST_NAME).exists() {
                    // A creation that crashed before its first manifest was durable: never
                    // acknowledged, and it would keep the name taken.
                    tracing::info!(tenant = %tenant, collection = %name, "removing an interrupted collection creation");
                    if let Err(err) = remove_tree(&entry.path()) {
                        tracing::warn!(tenant = %tenant, collection = %name, error = %err, "could not remove an interrupted collection creation");
                    }
                    continue;
                }
                let started = std::time::Instant::now();
                // One damaged collection must not take the tenant's others down with it.
                let slot = match Collection::open(&entry.path(), tenant, &name, self.ctx.clone()) {
                    Ok(collection) => {
                        let info = collection.info();
                        tracing::info!(tenant = %tenant, collection = %name, points = info.points, segments = info.segments, elapsed_ms = started.elapsed().as_millis() as u64, "loaded collection");
                        Slot::Open(Arc::new(collection))
                    }
                    Err(err) => {
                        tracing::error!(tenant = %tenant, collection = %name, error = %err, "collection failed to load; the tenant's other collections keep serving");
                        Slot::Failed(err.to_string())
                    }
                };
                collections.insert(name, slot);
            }
        }
        Ok(collections)
    }

    /// Unloads a tenant: stops its background work and drops its plaintext.
    /// Large growing segments are sealed first ([`Collection::checkpoint_and_close`]).
    pub fn unload_tenant(&self, tenant: &TenantId) -> Result<()> {
        self.unload(tenant, true);
        Ok(())
    }

    /// Unloads `tenant` without writing anything (no growing segment is sealed): for an engine
    /// that only reads, such as a snapshot opened to be copied elsewhere.
    pub fn unload_read_only(&self, tenant: &TenantId) {
        self.unload(tenant, false);
    }

    fn unload(&self, tenant: &TenantId, checkpoint: bool) {
        let removed = self.tenants.write().remove(tenant);
        let loaded = removed.and_then(|slot| slot.loaded.lock().take());
        if let Some(collections) = loaded {
            for slot in collections.read().values() {
                if let Slot::Open(collection) = slot {
                    if checkpoint {
                        collection.checkpoint_and_close();
                    } else {
                        collection.close();
                    }
                }
            }
        }
    }

    /// Whether the tenant's collections are in memory.
    pub fn is_loaded(&self, tenant: &TenantId) -> bool {
        self.tenants
            .read()
            .get(tenant)
            .is_some_and(|slot| slot.loaded.lock().is_some())
    }

    /// Creates a collection.
    pub fn create_collection(
        &self,
        tenant: &TenantId,
        name: &CollectionName,
        config: CollectionConfig,
    ) -> Result<Arc<Collection>> {
        config.validate(&self.ctx.limits)?;
        let collections = self.tenant(tenant)?;
        let mut collections = collections.write();
        if collections.contains_key(name) {
            return Err(Error::CollectionExists(name.to_string()));
        }
        let tenant_dir = self.tenant_dir(tenant);
        self.ctx
            .disk
            .create_dir_all(&tenant_dir)
            .map_err(Error::io(&tenant_dir))?;
        let collection = Arc::new(Collection::create(
            &tenant_dir.join(name.as_str()),
            tenant,
            name,
            config,
            self.ctx.clone(),
        )?);
        collections.insert(name.clone(), Slot::Open(collection.clone()));
        Ok(collection)
    }

    /// An open collection of `tenant`. A name of another tenant's collection answers exactly like a
    /// name that does not exist.
    pub fn collection(&self, tenant: &TenantId, name: &CollectionName) -> Result<Arc<Collection>> {
        let collections = self.tenant(tenant)?;
        let collections = collections.read();
        let slot = collections
            .get(name)
            .ok_or_else(|| Error::CollectionNotFound(name.to_string()))?;
        slot.open(name).cloned()
    }

    /// The open collection if its tenant is loaded already. Never loads, and never waits: a tenant
    /// being loaded, or a collection being created or dropped at this moment, gives `None`. The
    /// worker uses it to answer searches on its I/O thread, which must never wait for a load (a
    /// load asks the key service, which that same thread serves).
    pub fn loaded_collection(
        &self,
        tenant: &TenantId,
        name: &CollectionName,
    ) -> Option<Arc<Collection>> {
        let slot = self.tenants.read().get(tenant).cloned()?;
        let collections = slot.loaded.try_lock()?.as_ref()?.clone();
        let collections = collections.try_read()?;
        match collections.get(name)? {
            Slot::Open(collection) => Some(collection.clone()),
            Slot::Failed(_) => None,
        }
    }

    /// The tenant's collections by name, with their figures or the reason they are unavailable.
    pub fn list_collections(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(CollectionName, Result<CollectionInfo>)>> {
        Ok(self
            .tenant(tenant)?
            .read()
            .iter()
            .map(|(name, slot)| (name.clone(), slot.open(name).map(|c| c.info())))
            .collect())
    }

    /// Drops a collection and deletes its files.
    pub fn drop_collection(&self, tenant: &TenantId, name: &CollectionName) -> Result<()> {
        let collections = self.tenant(tenant)?;
        let removed = collections
            .write()
            .remove(name)
            .ok_or_else(|| Error::CollectionNotFound(name.to_string()))?;
        if let Slot::Open(collection) = removed {
            // A request may still hold the collection; it must not write into the directory a
            // new collection of the same name would get.
            collection.mark_dropped();
        }
        self.remove_durably(&self.tenant_dir(tenant).join(name.as_str()))
    }

    /// Re-wraps every file of the tenant under its current KEK (after the key service rotated it).
    /// When this returns, no file of the tenant needs an older KEK version.
    pub fn rewrap_tenant(&self, tenant: &TenantId) -> Result<()> {
        let collections = self.tenant(tenant)?;
        let slots: Vec<(CollectionName, Slot)> = collections
            .read()
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        for (name, slot) in slots {
            // A collection that cannot be loaded cannot be re-wrapped either: say so, so the caller
            // keeps the old KEK instead of destroying it.
            slot.open(&name)?.rewrap_keys()?;
        }
        Ok(())
    }

    /// Tenants with a directory under the data directory, loaded or not, by id (directories
    /// being removed are not tenants).
    pub fn stored_tenants(&self) -> Result<Vec<TenantId>> {
        let mut tenants = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(Error::io(&self.root))? {
            let entry = entry.map_err(Error::io(&self.root))?;
            if let Some(Ok(tenant)) = entry.file_name().to_str().map(TenantId::parse) {
                tenants.push(tenant);
            }
        }
        tenants.sort();
        Ok(tenants)
    }

    /// Unloads the tenant and deletes all its files. With its KEKs destroyed by the key service,
    /// any copy of them left elsewhere is unreadable. Answers how many files it deleted (those
    /// of its collections' directories: manifests, segments and WALs).
    pub fn delete_tenant(&self, tenant: &TenantId) -> Result<u64> {
        self.unload(tenant, false);
        let dir = self.tenant_dir(tenant);
        let files = count_files(&dir)?;
        self.remove_durably(&dir)?;
        Ok(files)
    }

    /// Deletes `tenant`'s copy on cold storage (its KEKs destroyed first, as for
    /// [`Engine::delete_tenant`]). Answers how many files it deleted.
    pub fn delete_cold(&self, tenant: &TenantId, cold_root: &Path) -> Result<u64> {
        let dir = cold_root.join(tenant.as_str());
        let files = count_files(&dir)?;
        self.remove_durably(&dir)?;
        Ok(files)
    }

    /// Stops every collection's background work, sealing large growing segments first
    /// ([`Collection::checkpoint_and_close`]).
    pub fn close(&self) {
        let tenants: Vec<_> = self.tenants.write().drain().collect();
        for (_, tenant) in tenants {
            let Some(collections) = tenant.loaded.lock().take() else {
                continue;
            };
            for slot in collections.read().values() {
                if let Slot::Open(collection) = slot {
                    collection.checkpoint_and_close();
                }
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}

/// Names starting with this are directories being removed; no tenant or collection name can start
/// with a dot.
const DROPPED_PREFIX: &str = ".dropped-";

impl Engine {
    /// Removes a directory so that a crash at any point leaves either all of it or none of it
    /// visible: first a durable rename to a hidden name, then the removal, which the next load
    /// finishes if it was cut short.
    fn remove_durably(&self, dir: &Path) -> Result<()> {
        if !dir.exists() {
            return Ok(());
        }
        let parent = dir.parent().unwrap_or(Path::new("."));
        let mut random = [0u8; 8];
        crate::crypto::fill_random(&mut random);
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let hidden = parent.join(format!(
            "{DROPPED_PREFIX}{name}-{}",
            u64::from_le_bytes(random)
        ));
        self.ctx.disk.rename(dir, &hidden).map_err(Error::io(dir))?;
        self.ctx.disk.sync_dir(parent).map_err(Error::io(parent))?;
        remove_tree(&hidden)
    }

    /// Finishes removals a crash cut short under the tenants directory (deleted tenants).
    fn finish_removals(root: &Path) -> Result<()> {
        for entry in std::fs::read_dir(root).map_err(Error::io(root))? {
            let entry = entry.map_err(Error::io(root))?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(DROPPED_PREFIX)
            {
                remove_tree(&entry.path())?;
            }
        }
        Ok(())
    }
}

/// Files in `dir` and its subdirectories (0 if it does not exist). Links are counted, not
/// followed.
fn count_files(dir: &Path) -> Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(Error::io(dir)(err)),
    };
    let mut n = 0;
    for entry in entries {
        let entry = entry.map_err(Error::io(dir))?;
        let kind = entry.file_type().map_err(Error::io(dir))?;
        n += if kind.is_dir() {
            count_files(&entry.path())?
        } else {
            1
        };
    }
    Ok(n)
}

fn remove_tree(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(Error::io(dir)(err)),
    }
    if let Some(parent) = dir.parent() {
        crate::disk::sync_dir(parent)?;
    }
    Ok(())
}

/// Bytes read from the start of a file for its header (a header with the most sections fits).
const HEADER_PREFIX_BYTES: u64 = 4096;

/// The manifest, segments and WALs of every collection of `tenant` under `dir`, with the wrapped
/// DEKs their headers carry: what its load will ask the key service for. A file whose header does
/// not read, or names another tenant or collection, is left out (its open reports it).
fn files_to_open(dir: &Path, tenant: &TenantId) -> Vec<WillOpen> {
    use std::io::Read;
    let mut files = Vec::new();
    let Ok(collections) = std::fs::read_dir(dir) else {
        return files;
    };
    for collection in collections.flatten() {
        let name = collection.file_name().to_string_lossy().into_owned();
        if CollectionName::parse(&name).is_err() {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(collection.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if transfer::check_path(&format!("{name}/{file}")).is_err() {
                continue;
            }
            let path = entry.path();
            let mut prefix = Vec::new();
            let read = std::fs::File::open(&path)
                .and_then(|f| f.take(HEADER_PREFIX_BYTES).read_to_end(&mut prefix));
            if read.is_err() {
                continue;
            }
            let Ok(header) = crate::sealed::Header::decode(&prefix, &path) else {
                continue;
            };
            if header.tenant != tenant.as_str() || header.collection != name {
                continue;
            }
            files.push(WillOpen {
                collection: name.clone(),
                file_id: header.file_id,
                wrapped: header.wrapped_dek,
            });
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Indexing runs in the idle scheduling class, below request threads, so one tenant's bulk
    /// writes leave the cores to other tenants' searches.
    #[test]
    fn index_threads_run_at_background_priority() {
        let dir = tempfile::tempdir().unwrap();
        let keys = crate::tests::keys(dir.path(), &["a"]);
        let engine = Engine::open(dir.path(), keys, Limits::default()).unwrap();
        let idle = engine
            .ctx
            .pool
            .install(|| crate::sys::process::this_thread_is_idle_class().unwrap());
        assert!(idle);
    }
}
