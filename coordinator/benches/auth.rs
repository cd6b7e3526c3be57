//! API-key validation: `Authenticator::authenticate` over an in-memory key store of 10,000 keys,
//! next to the two hashes every call computes, on the same keys in the same run.
//!
//! ```text
//! cargo bench -p coordinator --bench auth [-- FILTER]
//! ```
//!
//! - `authenticate/hit_same_key`: one cached key, again and again.
//! - `authenticate/hit_1000_hot_keys`: 1,000 cached keys in rotation (the cache holds 100,000,
//!   as the coordinator's does).
//! - `authenticate/miss_store`: 10,000 valid keys in rotation through a cache of 100, so every call
//!   misses, finds the record in the store, checks it and caches it (evicting another).
//! - `authenticate/unknown_key`: a well-formed key the store does not hold.
//! - `authenticate/malformed`: a key of the wrong shape, refused before any hashing.
//! - `peer/hmac_sha256`: `HMAC-SHA256(pepper, key)` alone, keyed once and cloned per key as the
//!   authenticator does; `peer/hmac_sha256_rekeyed` keys the HMAC afresh every time.
//! - `peer/xxh3`: the cache index hash of the key alone.
//!
//! Criterion prints the time per call; a summary table in ns per call follows at the end (read
//! back from criterion's estimates). Target: a cache hit under 1 µs.

use std::collections::HashMap;
use std::hint::black_box;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use coordinator::auth::{Authenticator, KeyRecord, KeyStore, Pepper, Scopes, generate};
use criterion::Criterion;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const PEPPER: &[u8; 32] = b"bench pepper: thirty-two bytes!!";
const KEYS: usize = 10_000;
const HOT: usize = 1_000;
/// The coordinator's cache size (`AUTH_CACHE_KEYS` in `api/mod.rs`).
const CACHE: usize = 100_000;

/// The store as the coordinator's SQLite store answers: an owned record per lookup.
struct MemoryStore(HashMap<String, KeyRecord>);

impl KeyStore for MemoryStore {
    fn find(&self, key_id: &str) -> Option<KeyRecord> {
        self.0.get(key_id).cloned()
    }
}

fn pepper() -> Pepper {
    Pepper::new(PEPPER).expect("a 32-byte pepper")
}

/// 10,000 keys of 100 tenants, and the store holding them.
fn keys() -> (Vec<String>, MemoryStore) {
    let pepper = pepper();
    let mut store = HashMap::new();
    let mut keys = Vec::new();
    for i in 0..KEYS {
        let key = generate();
        store.insert(
            key.key_id.clone(),
            KeyRecord {
                key_id: key.key_id.clone(),
                tenant: format!("tenant-{}", i % 100),
                scopes: Scopes {
                    read: true,
                    write: true,
                    manage: false,
                },
                collections: None,
                digest: pepper.digest(&key.full),
                is_revoked: false,
            },
        );
        keys.push(key.full.to_string());
    }
    (keys, MemoryStore(store))
}

fn authenticator(store: MemoryStore, capacity: usize) -> Authenticator<MemoryStore> {
    Authenticator::new(
        store,
        pepper(),
        NonZeroUsize::new(capacity).expect("positive"),
    )
}

fn bench(c: &mut Criterion) {
    let (keys, store) = keys();
    let store_copy = || MemoryStore(store.0.clone());
    let unknown = generate().full.to_string();

    let mut group = c.benchmark_group("authenticate");
    let auth = authenticator(store_copy(), CACHE);
    for key in &keys {
        auth.authenticate(Some(key)).expect("a valid key");
    }
    group.bench_function("hit_same_key", |b| {
        let key = keys[0].as_str();
        b.iter(|| auth.authenticate(black_box(Some(key))).expect("cached"));
    });
    group.bench_function("hit_1000_hot_keys", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % HOT;
            auth.authenticate(black_box(Some(keys[i].as_str())))
                .expect("cached")
        });
    });
    group.bench_function("unknown_key", |b| {
        b.iter(|| {
            auth.authenticate(black_box(Some(unknown.as_str())))
                .is_err()
        });
    });
    group.bench_function("malformed", |b| {
        b.iter(|| auth.authenticate(black_box(Some("vv_short_key"))).is_err());
    });
    let small = authenticator(store_copy(), 100);
    group.bench_function("miss_store", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % KEYS;
            small
                .authenticate(black_box(Some(keys[i].as_str())))
                .expect("in the store")
        });
    });
    group.finish();

    let mut group = c.benchmark_group("peer");
    let keyed = Hmac::<Sha256>::new_from_slice(PEPPER).expect("any key length");
    group.bench_function("hmac_sha256", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % HOT;
            let mut mac = keyed.clone();
            mac.update(black_box(keys[i].as_bytes()));
            mac.finalize().into_bytes()
        });
    });
    group.bench_function("hmac_sha256_rekeyed", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % HOT;
            let mut mac = Hmac::<Sha256>::new_from_slice(PEPPER).expect("any key length");
            mac.update(black_box(keys[i].as_bytes()));
            mac.finalize().into_bytes()
        });
    });
    group.bench_function("xxh3", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % HOT;
            xxhash_rust::xxh3::xxh3_64_with_seed(black_box(keys[i].as_bytes()), 0x5eed)
        });
    });
    group.finish();
}

/// Where criterion keeps its estimates: `$CRITERION_HOME`, else `<target dir>/criterion`.
fn criterion_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(PathBuf::from(home));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(target).join("criterion"));
    }
    // target/<profile>/deps/auth-<hash>
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.join("criterion"))
}

/// Median ns per call of one benchmark, from criterion's `estimates.json`, if this run wrote it
/// (a filter on the command line leaves older estimates that must not be shown).
fn median_ns(dir: &std::path::Path, group: &str, name: &str, since: SystemTime) -> Option<f64> {
    let path = dir.join(group).join(name).join("new/estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn summary(since: SystemTime) {
    let Some(dir) = criterion_dir() else { return };
    let rows = [
        ("authenticate", "hit_same_key", "cache hit, one key"),
        (
            "authenticate",
            "hit_1000_hot_keys",
            "cache hit, 1,000 hot keys",
        ),
        (
            "authenticate",
            "miss_store",
            "cache miss, found in the store",
        ),
        ("authenticate", "unknown_key", "unknown key (store says no)"),
        ("authenticate", "malformed", "malformed key"),
        ("peer", "hmac_sha256", "HMAC-SHA256 of the key (keyed once)"),
        (
            "peer",
            "hmac_sha256_rekeyed",
            "HMAC-SHA256 of the key (keyed each time)",
        ),
        ("peer", "xxh3", "xxh3 of the key"),
    ];
    let measured: Vec<_> = rows
        .iter()
        .filter_map(|(group, name, label)| Some((*label, median_ns(&dir, group, name, since)?)))
        .collect();
    if measured.is_empty() {
        return;
    }
    println!("\nAPI-key validation, median ns per call (10,000 keys in the store):\n");
    println!("| case | ns/call |");
    println!("|---|---:|");
    for (label, ns) in &measured {
        println!("| {label} | {ns:.0} |");
    }
    let get = |label: &str| {
        measured
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, ns)| *ns)
    };
    if let (Some(hit), Some(hmac), Some(xxh3)) = (
        get("cache hit, 1,000 hot keys"),
        get("HMAC-SHA256 of the key (keyed once)"),
        get("xxh3 of the key"),
    ) {
        println!(
            "\ncache hit (hot keys): {hit:.0} ns = HMAC {hmac:.0} ns + xxh3 {xxh3:.0} ns + {:.0} ns of \
             parsing, cache and comparison; target < 1,000 ns: {}",
            (hit - hmac - xxh3).max(0.0),
            if hit < 1000.0 { "met" } else { "missed" }
        );
    }
}

fn main() {
    let started = SystemTime::now();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
    summary(started);
}
