use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use proptest::prelude::*;

use super::*;

const PEPPER: &[u8; 32] = b"test pepper, thirty-two bytes!!!";

#[derive(Default)]
struct Store {
    keys: Mutex<HashMap<String, KeyRecord>>,
    lookups: AtomicUsize,
}

impl KeyStore for Arc<Store> {
    fn find(&self, key_id: &str) -> Option<KeyRecord> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.keys.lock().get(key_id).cloned()
    }
}

fn all_scopes() -> Scopes {
    Scopes {
        read: true,
        write: true,
        manage: true,
    }
}

/// Issues a key for `tenant` into `store`, as the coordinator's admin API will.
fn issue(store: &Store, tenant: &str, scopes: Scopes, collections: Option<Vec<String>>) -> NewKey {
    let key = generate();
    let digest = Pepper::new(PEPPER).unwrap().digest(&key.full);
    store.keys.lock().insert(
        key.key_id.clone(),
        KeyRecord {
            key_id: key.key_id.clone(),
            tenant: tenant.into(),
            scopes,
            collections,
            digest,
            is_revoked: false,
        },
    );
    key
}

fn auth(store: &Arc<Store>) -> Authenticator<Arc<Store>> {
    Authenticator::new(
        store.clone(),
        Pepper::new(PEPPER).unwrap(),
        NonZeroUsize::new(1024).unwrap(),
    )
}

#[test]
fn generated_keys_have_the_documented_shape_and_do_not_repeat() {
    let mut seen = HashSet::new();
    for _ in 0..2000 {
        let key = generate();
        assert_eq!(key.full.len(), 3 + KEY_ID_LEN + 1 + SECRET_LEN);
        assert!(key.full.starts_with(&format!("vv_{}_", key.key_id)));
        assert!(
            key.full[3..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        );
        assert!(seen.insert(key.full.to_string()));
    }
}

#[test]
fn missing_malformed_unknown_wrong_and_revoked_keys_get_one_answer() {
    let store = Arc::new(Store::default());
    let good = issue(&store, "acme", all_scopes(), None);
    let auth = auth(&store);
    assert_eq!(auth.authenticate(Some(&good.full)).unwrap().tenant, "acme");
    let unknown = generate();
    let mut wrong_secret = good.full.to_string();
    let last = wrong_secret.pop().unwrap();
    wrong_secret.push(if last == 'a' { 'b' } else { 'a' });
    let too_long = format!("{}x", good.full.as_str());
    let cases: Vec<Option<&str>> = vec![
        None,
        Some(""),
        Some("vv_"),
        Some("Bearer whatever"),
        Some(&good.full[..good.full.len() - 1]),
        Some(&too_long),
        Some("vv_abcdefgh_ééééééééééééééééééééééééééééééééé"),
        Some("xx_abcdefgh_0123456789012345678901234567890a"),
        Some(&unknown.full),
        Some(&wrong_secret),
    ];
    for case in &cases {
        assert_eq!(
            auth.authenticate(*case),
            Err(AuthError::Unauthenticated),
            "{case:?}"
        );
    }
    store.keys.lock().get_mut(&good.key_id).unwrap().is_revoked = true;
    auth.forget(&good.key_id);
    assert_eq!(
        auth.authenticate(Some(&good.full)),
        Err(AuthError::Unauthenticated)
    );
}

#[test]
fn revocation_takes_effect_on_the_very_next_request() {
    let store = Arc::new(Store::default());
    let key = issue(&store, "acme", all_scopes(), None);
    let auth = auth(&store);
    for _ in 0..3 {
        auth.authenticate(Some(&key.full)).unwrap();
    }
    // The revoke path: mark the record, then drop the cache entry.
    store.keys.lock().get_mut(&key.key_id).unwrap().is_revoked = true;
    auth.forget(&key.key_id);
    assert_eq!(
        auth.authenticate(Some(&key.full)),
        Err(AuthError::Unauthenticated)
    );
}

#[test]
fn a_cache_hit_does_not_reach_the_store() {
    let store = Arc::new(Store::default());
    let key = issue(&store, "acme", all_scopes(), None);
    let auth = auth(&store);
    auth.authenticate(Some(&key.full)).unwrap();
    let before = store.lookups.load(Ordering::Relaxed);
    for _ in 0..100 {
        auth.authenticate(Some(&key.full)).unwrap();
    }
    assert_eq!(store.lookups.load(Ordering::Relaxed), before);
}

/// INV-09: with every key forced into one cache slot, no key ever authenticates as another.
#[test]
fn colliding_index_hashes_never_lend_an_identity() {
    let store = Arc::new(Store::default());
    let a = issue(&store, "tenant-a", all_scopes(), None);
    let b = issue(&store, "tenant-b", all_scopes(), None);
    let auth = auth(&store).with_index_hash(|_, _| 0);
    for _ in 0..3 {
        assert_eq!(auth.authenticate(Some(&a.full)).unwrap().tenant, "tenant-a");
        assert_eq!(auth.authenticate(Some(&b.full)).unwrap().tenant, "tenant-b");
    }
    // A forged key with A's id but another secret hits the slot and the store, and fails both.
    auth.authenticate(Some(&a.full)).unwrap();
    let forged = format!("vv_{}_{}", a.key_id, "0".repeat(SECRET_LEN));
    assert_eq!(
        auth.authenticate(Some(&forged)),
        Err(AuthError::Unauthenticated)
    );
}

#[test]
fn scopes_and_collection_restrictions_are_enforced() {
    let store = Arc::new(Store::default());
    let reader = issue(
        &store,
        "acme",
        Scopes {
            read: true,
            ..Scopes::default()
        },
        Some(vec!["docs".into()]),
    );
    let auth = auth(&store);
    let identity = auth.authenticate(Some(&reader.full)).unwrap();
    identity.require(Scope::Read, Some("docs")).unwrap();
    identity.require(Scope::Read, None).unwrap();
    assert!(matches!(
        identity.require(Scope::Write, Some("docs")),
        Err(AuthError::PermissionDenied(_))
    ));
    assert!(matches!(
        identity.require(Scope::Manage, None),
        Err(AuthError::PermissionDenied(_))
    ));
    assert!(matches!(
        identity.require(Scope::Read, Some("other")),
        Err(AuthError::PermissionDenied(_))
    ));
}

#[test]
fn a_short_pepper_is_refused() {
    assert!(Pepper::new(&[0u8; 31]).is_none());
}

// Secrets cannot be printed or compared by accident.
static_assertions::assert_not_impl_any!(Pepper: std::fmt::Debug, std::fmt::Display, PartialEq, Clone);
static_assertions::assert_not_impl_any!(NewKey: std::fmt::Debug, std::fmt::Display, PartialEq, Clone);
static_assertions::assert_not_impl_any!(super::BearerToken: std::fmt::Debug, std::fmt::Display, serde::Serialize, PartialEq);

proptest! {
    #[test]
    fn arbitrary_input_never_panics_and_never_authenticates(raw in ".{0,80}") {
        let store = Arc::new(Store::default());
        issue(&store, "acme", all_scopes(), None);
        let auth = auth(&store);
        prop_assert_eq!(auth.authenticate(Some(&raw)), Err(AuthError::Unauthenticated));
    }
}

/// A store whose lookups stop after reading, until the test lets them return: it holds a lookup
/// between "read the record" and "the authenticator caches it", where a revocation can slip in.
struct GatedStore {
    inner: Arc<Store>,
    read: std::sync::mpsc::SyncSender<()>,
    proceed: Mutex<std::sync::mpsc::Receiver<()>>,
    gated: std::sync::atomic::AtomicBool,
}

impl KeyStore for Arc<GatedStore> {
    fn find(&self, key_id: &str) -> Option<KeyRecord> {
        let record = self.inner.find(key_id);
        if self.gated.swap(false, Ordering::SeqCst) {
            self.read.send(()).unwrap();
            self.proceed.lock().recv().unwrap();
        }
        record
    }
}

/// INV-11: a lookup that read the key before a revocation committed cannot put it back into the
/// cache after the revocation cleared it (it would then work until evicted).
#[test]
fn a_lookup_racing_a_revocation_cannot_cache_the_revoked_key() {
    let store = Arc::new(Store::default());
    let key = issue(&store, "acme", all_scopes(), None);
    let (read_tx, read_rx) = std::sync::mpsc::sync_channel(1);
    let (proceed_tx, proceed_rx) = std::sync::mpsc::sync_channel(1);
    let gated = Arc::new(GatedStore {
        inner: store.clone(),
        read: read_tx,
        proceed: Mutex::new(proceed_rx),
        gated: true.into(),
    });
    let auth = Arc::new(Authenticator::new(
        gated,
        Pepper::new(PEPPER).unwrap(),
        NonZeroUsize::new(16).unwrap(),
    ));
    let racing = {
        let (auth, full) = (auth.clone(), key.full.to_string());
        std::thread::spawn(move || auth.authenticate(Some(&full)).is_ok())
    };
    // The lookup has read the (still valid) record; now the revocation commits and clears the cache.
    read_rx.recv().unwrap();
    store.keys.lock().get_mut(&key.key_id).unwrap().is_revoked = true;
    auth.forget(&key.key_id);
    proceed_tx.send(()).unwrap();
    assert!(
        racing.join().unwrap(),
        "the racing request itself read a valid key"
    );
    assert_eq!(
        auth.authenticate(Some(&key.full)),
        Err(AuthError::Unauthenticated),
        "the revoked key must not be served from the cache"
    );
    assert!(auth.authenticate_cached(Some(&key.full)).is_none());
}
