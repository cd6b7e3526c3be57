//! The key service: generates and unwraps per-file DEKs under tenant KEKs.
//!
//! In a cluster the coordinator is the key service and workers reach it over the cluster channel;
//! [`LocalKeyService`] is the in-process implementation used by the embedded server, the tests and
//! the benchmarks. Both answer only through this trait, so storage never holds a KEK itself.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use super::aad;
use super::key::{DataKey, KEY_BYTES, Kek, KeyBytes, WRAPPED_KEY_BYTES, WrappedDek};
use super::provider::KeyProvider;
use crate::disk::{Disk, StdDisk};
use crate::ids::TenantId;
use crate::{Error, Result};

/// Which file a DEK belongs to, besides its tenant.
#[derive(Debug, Clone, Copy)]
pub struct DekContext<'a> {
    /// Collection name.
    pub collection: &'a str,
    /// File id within the collection.
    pub file_id: u64,
}

/// Hands out and unwraps data keys. Implementations answer only for tenants they serve.
pub trait KeyService: Send + Sync {
    /// A new random DEK for one file, and its form wrapped under the tenant's current KEK.
    fn generate_data_key(
        &self,
        tenant: &TenantId,
        ctx: DekContext<'_>,
    ) -> Result<(DataKey, WrappedDek)>;
    /// Unwraps a DEK from a file header. Fails closed: a destroyed, wrong or tampered key is an error.
    fn decrypt_data_key(
        &self,
        tenant: &TenantId,
        ctx: DekContext<'_>,
        wrapped: &WrappedDek,
    ) -> Result<DataKey>;
    /// Unwraps the DEKs of many files of one tenant, in order (a tenant's load asks for every
    /// file's at once: `Prefetching`). The default asks for one at a time.
    fn decrypt_data_keys(
        &self,
        tenant: &TenantId,
        files: &[(DekContext<'_>, WrappedDek)],
    ) -> Result<Vec<DataKey>> {
        files
            .iter()
            .map(|(ctx, wrapped)| self.decrypt_data_key(tenant, *ctx, wrapped))
            .collect()
    }
    /// Re-wraps a DEK under the tenant's current KEK (KEK rotation); no data is re-encrypted.
    fn rewrap_data_key(
        &self,
        tenant: &TenantId,
        ctx: DekContext<'_>,
        wrapped: &WrappedDek,
    ) -> Result<WrappedDek>;
    /// The tenant's current KEK version.
    fn current_kek_version(&self, tenant: &TenantId) -> Result<u32>;
}

struct TenantKeks {
    current: u32,
    versions: BTreeMap<u32, Kek>,
}

/// An in-process key service keeping each tenant's KEKs, wrapped by a root [`KeyProvider`], in
/// `<dir>/<tenant>.keks` (replaced atomically).
pub struct LocalKeyService {
    root: Arc<dyn KeyProvider>,
    dir: PathBuf,
    disk: Arc<dyn Disk>,
    tenants: RwLock<HashMap<TenantId, TenantKeks>>,
}

const KEKS_MAGIC: &[u8; 8] = b"VVKEKS\x00\x01";

impl LocalKeyService {
    /// Opens the key directory, creating it if needed. Tenant key files load on first use.
    pub fn open(root: Arc<dyn KeyProvider>, dir: &Path) -> Result<LocalKeyService> {
        LocalKeyService::open_with_disk(root, dir, Arc::new(StdDisk))
    }

    /// As [`LocalKeyService::open`], writing through `disk`.
    pub fn open_with_disk(
        root: Arc<dyn KeyProvider>,
        dir: &Path,
        disk: Arc<dyn Disk>,
    ) -> Result<LocalKeyService> {
        disk.create_dir_all(dir).map_err(Error::io(dir))?;
        Ok(LocalKeyService {
            root,
            dir: dir.to_owned(),
            disk,
            tenants: RwLock::new(HashMap::new()),
        })
    }

    fn path(&self, tenant: &TenantId) -> PathBuf {
        self.dir.join(format!("{tenant}.keks"))
    }

    /// Creates version 1 of a tenant's KEK if the tenant has none yet.
    pub fn ensure_tenant(&self, tenant: &TenantId) -> Result<()> {
        let mut tenants = self.tenants.write();
        if tenants.contains_key(tenant) {
            return Ok(());
        }
        if let Some(keks) = self.load(tenant)? {
            tenants.insert(tenant.clone(), keks);
            return Ok(());
        }
        let keks = TenantKeks {
            current: 1,
            versions: BTreeMap::from([(1, Kek::generate(1))]),
        };
        self.store(tenant, &keks)?;
        tenants.insert(tenant.clone(), keks);
        Ok(())
    }

    /// Adds a new KEK version and makes it current. Older versions stay until [`Self::destroy_kek`].
    pub fn rotate_kek(&self, tenant: &TenantId) -> Result<u32> {
        self.with_tenant_mut(tenant, |keks| {
            let version = keks.versions.keys().next_back().copied().unwrap_or(0) + 1;
            keks.versions.insert(version, Kek::generate(version));
            keks.current = version;
            Ok(version)
        })
    }

    /// Destroys an old KEK version. The current version cannot be destroyed this way.
    pub fn destroy_kek(&self, tenant: &TenantId, version: u32) -> Result<()> {
        self.with_tenant_mut(tenant, |keks| {
            if version == keks.current {
                return Err(Error::Key(format!(
                    "KEK version {version} is current; rotate first"
                )));
            }
            keks.versions.remove(&version);
            Ok(())
        })
    }

    /// The tenant's KEK versions that still exist.
    pub fn kek_versions(&self, tenant: &TenantId) -> Result<Vec<u32>> {
        self.with_tenant(tenant, |keks| Ok(keks.versions.keys().copied().collect()))
    }

    /// Crypto-erasure: destroys every KEK version of the tenant. Files wrapped under them can never
    /// be opened again, wherever copies of them are.
    pub fn destroy_tenant(&self, tenant: &TenantId) -> Result<()> {
        let mut tenants = self.tenants.write();
        tenants.remove(tenant);
        let path = self.path(tenant);
        match std::fs::metadata(&path) {
            Ok(meta) => {
                // Overwrite before unlinking so the wrapped KEKs do not linger in the freed blocks of
                // simple filesystems; the root key still protects them where they do.
                let zeros = vec![0u8; meta.len() as usize];
                let tmp = path.with_extension("keks.erase");
                let mut file = self.disk.create(&tmp).map_err(Error::io(&tmp))?;
                file.append(&zeros).map_err(Error::io(&tmp))?;
                file.sync().map_err(Error::io(&tmp))?;
                self.disk.rename(&tmp, &path).map_err(Error::io(&path))?;
                self.disk.remove_file(&path).map_err(Error::io(&path))?;
                self.disk
                    .sync_dir(&self.dir)
                    .map_err(Error::io(&self.dir))?;
                Ok(())
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(Error::io(&path)(err)),
        }
    }

    fn with_tenant<T>(
        &self,
        tenant: &TenantId,
        f: impl FnOnce(&TenantKeks) -> Result<T>,
    ) -> Result<T> {
        {
            let tenants = self.tenants.read();
            if let Some(keks) = tenants.get(tenant) {
                return f(keks);
            }
        }
        let mut tenants = self.tenants.write();
        if !tenants.contains_key(tenant) {
            let keks = self
                .load(tenant)?
                .ok_or_else(|| Error::Key(format!("tenant {tenant} has no keys")))?;
            tenants.insert(tenant.clone(), keks);
        }
        f(&tenants[tenant])
    }

    fn with_tenant_mut<T>(
        &self,
        tenant: &TenantId,
        f: impl FnOnce(&mut TenantKeks) -> Result<T>,
    ) -> Result<T> {
        let mut tenants = self.tenants.write();
        if !tenants.contains_key(tenant) {
            let keks = self
                .load(tenant)?
                .ok_or_else(|| Error::Key(format!("tenant {tenant} has no keys")))?;
            tenants.insert(tenant.clone(), keks);
        }
        // Change a copy and adopt it only once it is durable: a KEK version that failed to persist
        // must never wrap a DEK, or the files under it are lost with the next restart.
        let keks = tenants.get_mut(tenant).expect("inserted above");
        let mut changed = TenantKeks {
            current: keks.current,
            versions: keks
                .versions
                .iter()
                .map(|(version, kek)| (*version, Kek::from_bytes(*version, kek.key().clone())))
                .collect(),
        };
        let res = f(&mut changed)?;
        self.store(tenant, &changed)?;
        *keks = changed;
        Ok(res)
    }

    fn store(&self, tenant: &TenantId, keks: &TenantKeks) -> Result<()> {
        let mut buf = Vec::with_capacity(16 + keks.versions.len() * (4 + WRAPPED_KEY_BYTES));
        buf.extend_from_slice(KEKS_MAGIC);
        buf.extend_from_slice(&keks.current.to_le_bytes());
        buf.extend_from_slice(&(keks.versions.len() as u32).to_le_bytes());
        for (version, kek) in &keks.versions {
            let wrapped = self
                .root
                .wrap(&kek.key().0, aad::kek(tenant, *version).as_bytes())?;
            buf.extend_from_slice(&version.to_le_bytes());
            buf.extend_from_slice(&(wrapped.len() as u32).to_le_bytes());
            buf.extend_from_slice(&wrapped);
        }
        crate::disk::write_atomic(self.disk.as_ref(), &self.path(tenant), &buf)
    }

    fn load(&self, tenant: &TenantId) -> Result<Option<TenantKeks>> {
        let path = self.path(tenant);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(Error::io(&path)(err)),
        };
        let corrupt = |offset: usize, reason: &str| Error::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            reason: reason.to_owned(),
        };
        if bytes.get(..8) != Some(&KEKS_MAGIC[..]) {
            return Err(corrupt(0, "not a KEK file"));
        }
        let read_u32 = |at: usize| -> Result<u32> {
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .ok_or_else(|| corrupt(at, "truncated"))
        };
        let current = read_u32(8)?;
        let count = read_u32(12)?;
        let mut at = 16;
        let mut versions = BTreeMap::new();
        for _ in 0..count {
            let version = read_u32(at)?;
            let len = read_u32(at + 4)? as usize;
            let wrapped = bytes
                .get(at + 8..at + 8 + len)
                .ok_or_else(|| corrupt(at, "truncated"))?;
            let plain = self
                .root
                .unwrap(wrapped, aad::kek(tenant, version).as_bytes())?;
            let key: [u8; KEY_BYTES] = plain
                .as_slice()
                .try_into()
                .map_err(|_| corrupt(at, "KEK has the wrong length"))?;
            versions.insert(version, Kek::from_bytes(version, KeyBytes(key)));
            at += 8 + len;
        }
        if !versions.contains_key(&current) {
            return Err(corrupt(8, "current KEK version is missing"));
        }
        Ok(Some(TenantKeks { current, versions }))
    }
}

impl KeyService for LocalKeyService {
    fn generate_data_key(
        &self,
        tenant: &TenantId,
        ctx: DekContext<'_>,
    ) -> Result<(DataKey, WrappedDek)> {
        self.with_tenant(tenant, |keks| {
            let kek = &keks.versions[&keks.current];
            let dek = DataKey::generate();
            let aad = aad::dek(tenant, ctx.collection, ctx.file_id, kek.version());
            let wrapped = kek.wrap_dek(&dek, aad.as_bytes());
            Ok((dek, wrapped))
        })
    }

    fn decrypt_data_key(
        &self,
        tenant: &TenantId,
        ctx: DekContext<'_>,
        wrapped: &WrappedDek,
    ) -> Result<DataKey> {
        self.with_tenant(tenant, |keks| {
            let kek = keks.versions.get(&wrapped.kek_version).ok_or_else(|| {
                Error::Key(format!(
                    "KEK version {} of tenant {tenant} does not exist (destroyed or never made)",
                    wrapped.kek_version
                ))
            })?;
            let aad = aad::dek(tenant, ctx.collection, ctx.file_id, wrapped.kek_version);
            kek.unwrap_dek(wrapped, aad.as_bytes())
        })
    }

    fn rewrap_data_key(
        &self,
        tenant: &TenantId,
        ctx: DekContext<'_>,
        wrapped: &WrappedDek,
    ) -> Result<WrappedDek> {
        let current = self.current_kek_version(tenant)?;
        if wrapped.kek_version == current {
            return Ok(*wrapped);
        }
        let dek = self.decrypt_data_key(tenant, ctx, wrapped)?;
        self.with_tenant(tenant, |keks| {
            let kek = &keks.versions[&keks.current];
            let aad = aad::dek(tenant, ctx.collection, ctx.file_id, kek.version());
            Ok(kek.wrap_dek(&dek, aad.as_bytes()))
        })
    }

    fn current_kek_version(&self, tenant: &TenantId) -> Result<u32> {
        self.with_tenant(tenant, |keks| Ok(keks.current))
    }
}
