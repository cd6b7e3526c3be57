//! API keys: format, generation, digests, the cache, scopes.

use std::num::NonZeroUsize;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use lru::LruCache;
use parking_lot::Mutex;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Characters of the public key id.
pub const KEY_ID_LEN: usize = 8;
/// Characters of the secret.
pub const SECRET_LEN: usize = 32;
const PREFIX: &str = "vv_";
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a request was refused. `Unauthenticated` deliberately says nothing about which check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Missing, malformed, unknown or revoked key: one answer for all, so none is an oracle.
    #[error("invalid or missing API key")]
    Unauthenticated,
    /// A valid key used outside its scope or collections.
    #[error("this API key may not {0}")]
    PermissionDenied(String),
}

/// What a key may do within its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Search, get, scroll, count, list.
    Read,
    /// Upsert and delete points.
    Write,
    /// Create and delete collections.
    Manage,
}

/// The scopes a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes {
    /// May read.
    pub read: bool,
    /// May write points.
    pub write: bool,
    /// May manage collections.
    pub manage: bool,
}

impl Scopes {
    fn allows(&self, scope: Scope) -> bool {
        match scope {
            Scope::Read => self.read,
            Scope::Write => self.write,
            Scope::Manage => self.manage,
        }
    }
}

/// A key as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Public key id.
    pub key_id: String,
    /// Owning tenant.
    pub tenant: String,
    /// Scopes.
    pub scopes: Scopes,
    /// If set, the only collections the key may touch.
    pub collections: Option<Vec<String>>,
    /// `HMAC-SHA256(pepper, key)`.
    pub digest: [u8; 32],
    /// Revoked keys never authenticate.
    pub is_revoked: bool,
}

/// Where key records live (SQLite in the coordinator).
pub trait KeyStore: Send + Sync {
    /// The record of `key_id`, if any.
    fn find(&self, key_id: &str) -> Option<KeyRecord>;
}

/// Who is calling, once authenticated. The tenant comes from here and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The caller's tenant.
    pub tenant: String,
    /// The key's public id (for logs and audit).
    pub key_id: String,
    /// Its scopes.
    pub scopes: Scopes,
    /// Collections it is restricted to, if any.
    pub collections: Option<Vec<String>>,
}

impl Identity {
    /// Checks that this key may use `scope`, on `collection` if the request names one.
    pub fn require(&self, scope: Scope, collection: Option<&str>) -> Result<(), AuthError> {
        if !self.scopes.allows(scope) {
            return Err(AuthError::PermissionDenied(
                format!("{scope:?}").to_lowercase(),
            ));
        }
        if let (Some(allowed), Some(name)) = (&self.collections, collection)
            && !allowed.iter().any(|c| c == name)
        {
            return Err(AuthError::PermissionDenied(format!(
                "use collection {name}"
            )));
        }
        Ok(())
    }
}

/// The server's pepper: the HMAC key for key digests. Read from a 0600 secrets file.
pub struct Pepper {
    /// HMAC keyed once; cloned per digest, so a digest costs two SHA-256 compressions.
    mac: Hmac<Sha256>,
}

impl Pepper {
    /// A pepper from its secret bytes (at least 32).
    pub fn new(secret: &[u8]) -> Option<Pepper> {
        if secret.len() < 32 {
            return None;
        }
        Some(Pepper {
            mac: Hmac::<Sha256>::new_from_slice(secret).ok()?,
        })
    }

    /// `HMAC-SHA256(pepper, key)`.
    pub fn digest(&self, key: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(key.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// A freshly generated key: the full key is shown to its owner once and never stored.
pub struct NewKey {
    /// Public id.
    pub key_id: String,
    /// `vv_<keyid>_<secret>`.
    pub full: Zeroizing<String>,
}

fn random_base62(n: usize) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(n));
    let mut byte = [0u8; 1];
    while out.len() < n {
        getrandom::fill(&mut byte).expect("the operating system's random source failed");
        // 248 = 4 * 62: rejecting the rest keeps every character equally likely.
        if byte[0] < 248 {
            out.push(BASE62[(byte[0] % 62) as usize] as char);
        }
    }
    out
}

/// Generates a new key.
pub fn generate() -> NewKey {
    let key_id = random_base62(KEY_ID_LEN).to_string();
    let secret = random_base62(SECRET_LEN);
    let full = Zeroizing::new(format!("{PREFIX}{key_id}_{}", secret.as_str()));
    NewKey { key_id, full }
}

/// The key id of a well-formed key, or `None`.
fn key_id_of(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (key_id, secret) = rest.split_at_checked(KEY_ID_LEN)?;
    let secret = secret.strip_prefix('_')?;
    let is_base62 = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
    (secret.len() == SECRET_LEN && is_base62(key_id) && is_base62(secret)).then_some(key_id)
}

struct Cached {
    digest: [u8; 32],
    identity: Arc<Identity>,
}

/// The cache, and how many times entries were forgotten: a lookup that started before the last
/// forget may not fill the cache (its record may predate a revocation).
struct Cache {
    entries: LruCache<u64, Cached>,
    generation: u64,
}

/// Checks presented keys against the store, through the cache.
pub struct Authenticator<S> {
    store: S,
    pepper: Pepper,
    seed: u64,
    cache: Mutex<Cache>,
    /// Replaces the cache index hash in tests, to force collisions (INV-09).
    hash: fn(u64, &str) -> u64,
}

fn xxh3(seed: u64, key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), seed)
}

impl<S: KeyStore> Authenticator<S> {
    /// An authenticator caching up to `capacity` keys.
    pub fn new(store: S, pepper: Pepper, capacity: NonZeroUsize) -> Authenticator<S> {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("the operating system's random source failed");
        Authenticator {
            store,
            pepper,
            seed: u64::from_le_bytes(seed),
            cache: Mutex::new(Cache {
                entries: LruCache::new(capacity),
                generation: 0,
            }),
            hash: xxh3,
        }
    }

    /// As [`Authenticator::new`] with a chosen cache index hash (tests force collisions with it).
    #[doc(hidden)]
    pub fn with_index_hash(mut self, hash: fn(u64, &str) -> u64) -> Authenticator<S> {
        self.hash = hash;
        self
    }

    /// The caller's identity for a presented key. Missing, malformed, unknown and revoked keys all
    /// get the same [`AuthError::Unauthenticated`].
    pub fn authenticate(&self, presented: Option<&str>) -> Result<Arc<Identity>, AuthError> {
        let presented = presented.ok_or(AuthError::Unauthenticated)?;
        let key_id = key_id_of(presented).ok_or(AuthError::Unauthenticated)?;
        let index = (self.hash)(self.seed, presented);
        let digest = self.pepper.digest(presented);
        if let Some(identity) = self.lookup_cache(index, &digest) {
            return Ok(identity);
        }
        // Taken before the store is read: if a revocation commits after this read and forgets
        // the key before we cache it, the generation has moved and the stale record is not cached.
        let generation = self.cache.lock().generation;
        let record = self.store.find(key_id).ok_or(AuthError::Unauthenticated)?;
        if record.is_revoked || !bool::from(record.digest.ct_eq(&digest)) {
            return Err(AuthError::Unauthenticated);
        }
        let identity = Arc::new(Identity {
            tenant: record.tenant,
            key_id: record.key_id,
            scopes: record.scopes,
            collections: record.collections,
        });
        let mut cache = self.cache.lock();
        if cache.generation == generation {
            cache.entries.put(
                index,
                Cached {
                    digest,
                    identity: identity.clone(),
                },
            );
        }
        Ok(identity)
    }

    /// The identity of a presented key if the cache confirms it, without asking the store. The
    /// service asks this first, so a client that is being throttled for failed attempts still gets
    /// through with a key it has used before.
    pub fn authenticate_cached(&self, presented: Option<&str>) -> Option<Arc<Identity>> {
        let presented = presented?;
        key_id_of(presented)?;
        let index = (self.hash)(self.seed, presented);
        self.lookup_cache(index, &self.pepper.digest(presented))
    }

    fn lookup_cache(&self, index: u64, digest: &[u8; 32]) -> Option<Arc<Identity>> {
        let mut cache = self.cache.lock();
        let hit = cache.entries.get(&index)?;
        // The index is not a security hash: only an equal digest, compared in constant time,
        // confirms the hit. A collision falls through to the store.
        bool::from(hit.digest.ct_eq(digest)).then(|| hit.identity.clone())
    }

    /// Drops every cached entry of `key_id`. Call it after the store marks the key revoked (or its
    /// scopes change); the very next request then goes to the store.
    pub fn forget(&self, key_id: &str) {
        self.forget_where(|identity| identity.key_id == key_id);
    }

    /// Drops every cached entry of a tenant (paused, deleted, tier changed).
    pub fn forget_tenant(&self, tenant: &str) {
        self.forget_where(|identity| identity.tenant == tenant);
    }

    fn forget_where(&self, stale: impl Fn(&Identity) -> bool) {
        let mut cache = self.cache.lock();
        cache.generation = cache.generation.wrapping_add(1);
        let indexes: Vec<u64> = cache
            .entries
            .iter()
            .filter(|(_, c)| stale(&c.identity))
            .map(|(k, _)| *k)
            .collect();
        for index in indexes {
            cache.entries.pop(&index);
        }
    }
}
