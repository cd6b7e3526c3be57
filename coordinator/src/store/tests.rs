use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::Connection;
use serde_json::json;
use tempfile::TempDir;

use super::*;
use crate::audit::{AuditKey, Draft, verify};
use crate::auth::{Authenticator, KeyRecord, KeyStore, NewKey, Pepper, Scopes, generate};

const AUDIT_KEY: &[u8; 32] = b"audit key for store tests, 32 b!";
const PEPPER: &[u8; 32] = b"pepper for the store tests, 32 b";
const T0: u64 = 1_700_000_000_000;

fn audit_key() -> AuditKey {
    AuditKey::new(AUDIT_KEY).unwrap()
}

/// A database file in a fresh temporary directory (kept alive by the returned `TempDir`).
fn db_file() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coordinator.sqlite");
    (dir, path)
}

/// Opens `path` with a clock that ticks one millisecond per reading, from `T0`.
fn open(path: &Path) -> Store {
    let ticks = AtomicU64::new(T0);
    Store::open(path, audit_key())
        .unwrap()
        .with_clock(move || ticks.fetch_add(1, Ordering::Relaxed))
}

/// A second connection to the same file: an operator's sqlite3 shell, or an attacker's.
fn raw(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn
}

fn admin() -> Actor {
    Actor::admin()
}

fn read_write() -> Scopes {
    Scopes {
        read: true,
        write: true,
        manage: false,
    }
}

/// A new key of `tenant`, and its record as the admin API would build it.
fn new_key(tenant: &str, collections: Option<Vec<String>>) -> (NewKey, KeyRecord) {
    let key = generate();
    let record = KeyRecord {
        key_id: key.key_id.clone(),
        tenant: tenant.into(),
        scopes: read_write(),
        collections,
        digest: Pepper::new(PEPPER).unwrap().digest(&key.full),
        is_revoked: false,
    };
    (key, record)
}

/// `(chain, action, resource)` of every row of `chains`, chain by chain, in seq order.
fn actions(store: &Store, chains: &[&str]) -> Vec<(String, String, String)> {
    chains
        .iter()
        .flat_map(|chain| store.export_chain(chain).unwrap())
        .map(|row| (row.chain, row.action, row.resource))
        .collect()
}

fn triple(chain: &str, action: &str, resource: &str) -> (String, String, String) {
    (chain.into(), action.into(), resource.into())
}

fn assert_chains_verify(store: &Store, chains: &[&str]) {
    for chain in chains {
        assert_eq!(store.verify_chain(chain).unwrap(), Ok(()), "chain {chain}");
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[test]
fn a_fresh_file_gets_every_migration() {
    let (_dir, path) = db_file();
    let store = open(&path);
    let conn = raw(&path);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, MIGRATIONS.len() as i64);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let mut names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger') ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    names.sort();
    assert_eq!(
        names,
        [
            "api_keys",
            "audit_rows",
            "audit_rows_no_delete",
            "audit_rows_no_update",
            "placements",
            "tenants",
            "tenants_never_deleted",
            "workers",
        ]
    );
    assert!(store.list_tenants().unwrap().is_empty());
    assert_eq!(store.chain_head(PLATFORM_CHAIN).unwrap().seq, 0);
}

#[test]
fn reopening_keeps_everything() {
    let (_dir, path) = db_file();
    let (key, record) = new_key("acme", Some(vec!["docs".into()]));
    let (head, platform_head, keys) = {
        let store = open(&path);
        store.create_tenant(&admin(), "acme", "free").unwrap();
        store.create_tenant(&admin(), "beta", "pro").unwrap();
        store.pause_tenant(&admin(), "beta").unwrap();
        store.insert_key(&admin(), &record, "ci").unwrap();
        store.record_worker("w1", "0.0.0", 1 << 30, T0).unwrap();
        store.place(&admin(), "acme", "w1").unwrap();
        store.bump_epoch(&admin(), "acme").unwrap();
        (
            store.chain_head("acme").unwrap(),
            store.chain_head(PLATFORM_CHAIN).unwrap(),
            store.list_keys("acme").unwrap(),
        )
    };

    let store = open(&path);
    let tenants = store.list_tenants().unwrap();
    assert_eq!(
        tenants
            .iter()
            .map(|t| (t.id.as_str(), t.tier.as_str(), t.paused_from.as_deref()))
            .collect::<Vec<_>>(),
        [("acme", "free", None), ("beta", "paused", Some("pro"))]
    );
    assert_eq!(store.list_keys("acme").unwrap(), keys);
    let found = store.find(&key.key_id).unwrap();
    assert_eq!(found, record);
    assert_eq!(
        store.placement("acme").unwrap(),
        Some(Placement {
            tenant: "acme".into(),
            worker: "w1".into(),
            epoch: 2
        })
    );
    assert_eq!(store.list_workers().unwrap().len(), 1);
    assert_eq!(store.chain_head("acme").unwrap(), head);
    assert_eq!(store.chain_head(PLATFORM_CHAIN).unwrap(), platform_head);
    assert_chains_verify(&store, &["acme", "beta", PLATFORM_CHAIN]);
    // The exported heads still vouch for the reopened chains.
    verify(
        &store.export_chain("acme").unwrap(),
        Some(&audit_key()),
        Some(&head),
    )
    .unwrap();
    // The chain continues where it stopped.
    assert_eq!(store.bump_epoch(&admin(), "acme").unwrap().epoch, 3);
    assert_eq!(store.chain_head("acme").unwrap().seq, head.seq + 1);
    assert_chains_verify(&store, &["acme"]);
}

#[test]
fn a_file_from_a_newer_coordinator_is_refused() {
    let (_dir, path) = db_file();
    drop(open(&path));
    raw(&path)
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    let err = Store::open(&path, audit_key()).unwrap_err();
    assert!(
        matches!(err, Error::TooNew { found, supported } if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{err:?}"
    );
    assert!(err.to_string().contains("newer"), "{err}");
    let version: i64 = raw(&path)
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION + 1, "a refused file is left alone");
}

#[test]
fn tenant_lifecycle() {
    let (_dir, path) = db_file();
    let store = open(&path);
    let acme = store.create_tenant(&admin(), "acme", "free").unwrap();
    assert_eq!(
        acme,
        Tenant {
            id: "acme".into(),
            tier: "free".into(),
            paused_from: None,
            created_ms: acme.created_ms,
            deleted: false
        }
    );
    assert!(acme.created_ms >= T0);
    assert_eq!(store.tenant("acme").unwrap(), Some(acme.clone()));
    assert_eq!(store.tenant("nope").unwrap(), None);
    assert!(matches!(
        store.create_tenant(&admin(), "acme", "pro"),
        Err(Error::AlreadyExists(_))
    ));

    assert_eq!(store.set_tier(&admin(), "acme", "pro").unwrap().tier, "pro");
    let paused = store.pause_tenant(&admin(), "acme").unwrap();
    assert_eq!(
        (paused.tier.as_str(), paused.paused_from.as_deref()),
        ("paused", Some("pro"))
    );
    assert_eq!(store.tenant("acme").unwrap(), Some(paused));
    let err = store.pause_tenant(&admin(), "acme").unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert_eq!(err.to_string(), "tenant acme is already paused");
    assert!(matches!(
        store.set_tier(&admin(), "acme", "free"),
        Err(Error::Invalid(_))
    ));
    let resumed = store.resume_tenant(&admin(), "acme").unwrap();
    assert_eq!((resumed.tier.as_str(), resumed.paused_from), ("pro", None));
    let err = store.resume_tenant(&admin(), "acme").unwrap_err();
    assert_eq!(err.to_string(), "tenant acme is not paused");
    assert!(matches!(
        store.set_tier(&admin(), "acme", "paused"),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        store.set_tier(&admin(), "nope", "pro"),
        Err(Error::NotFound(m)) if m == "tenant nope not found"
    ));

    store.create_tenant(&admin(), "beta", "free").unwrap();
    assert_eq!(
        store
            .list_tenants()
            .unwrap()
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        ["acme", "beta"]
    );
    store.delete_tenant(&admin(), "acme").unwrap();
    let deleted = store.tenant("acme").unwrap().unwrap();
    assert!(deleted.deleted);
    assert_eq!(
        store
            .list_tenants()
            .unwrap()
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        ["beta"]
    );
    // Ids are never reused, and a deleted tenant no longer operates.
    let err = store.create_tenant(&admin(), "acme", "free").unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(_)), "{err:?}");
    assert!(err.to_string().contains("never reused"), "{err}");
    for res in [
        store.set_tier(&admin(), "acme", "free"),
        store.pause_tenant(&admin(), "acme"),
        store.resume_tenant(&admin(), "acme"),
    ] {
        assert!(matches!(res, Err(Error::NotFound(_))), "{res:?}");
    }
    assert!(matches!(
        store.delete_tenant(&admin(), "acme"),
        Err(Error::NotFound(_))
    ));
    // The row itself cannot be deleted either.
    let err = raw(&path)
        .execute("DELETE FROM tenants WHERE id = 'acme'", [])
        .unwrap_err();
    assert!(err.to_string().contains("never deleted"), "{err}");
}

#[test]
fn bad_input_is_refused_without_echoing_it_whole() {
    let (_dir, path) = db_file();
    let store = open(&path);
    let long = "a".repeat(64);
    let hostile = format!("x\n{}\u{0}", "y".repeat(10_000));
    for id in [
        "",
        "Acme",
        "a b",
        "../etc",
        "platform",
        long.as_str(),
        hostile.as_str(),
        "é",
    ] {
        let err = store.create_tenant(&admin(), id, "free").unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{id:?}: {err:?}");
        assert!(err.to_string().len() < 200, "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
        let err = store.set_tier(&admin(), id, "free").unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{id:?}: {err:?}");
        assert!(err.to_string().len() < 200, "{err}");
        assert_eq!(store.tenant(id).unwrap(), None);
    }
    for tier in ["", "Free", "paused", hostile.as_str()] {
        assert!(matches!(
            store.create_tenant(&admin(), "acme", tier),
            Err(Error::Invalid(_))
        ));
    }
    store.create_tenant(&admin(), "acme", "free").unwrap();

    let (_, mut record) = new_key("acme", None);
    for label in ["line\nbreak", "l".repeat(257).as_str()] {
        assert!(matches!(
            store.insert_key(&admin(), &record, label),
            Err(Error::Invalid(_))
        ));
    }
    record.collections = Some(vec![String::new()]);
    assert!(matches!(
        store.insert_key(&admin(), &record, "x"),
        Err(Error::Invalid(_))
    ));
    record.collections = None;
    for key_id in ["short", "toolong123", "with_und", hostile.as_str()] {
        let bad = KeyRecord {
            key_id: key_id.into(),
            ..record.clone()
        };
        let err = store.insert_key(&admin(), &bad, "x").unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
        assert!(err.to_string().len() < 200, "{err}");
    }
    let revoked = KeyRecord {
        is_revoked: true,
        ..record.clone()
    };
    assert!(matches!(
        store.insert_key(&admin(), &revoked, "x"),
        Err(Error::Invalid(_))
    ));

    for (id, version) in [("", "1"), ("w 1", "1"), ("w1", ""), (hostile.as_str(), "1")] {
        assert!(matches!(
            store.record_worker(id, version, 1, T0),
            Err(Error::Invalid(_))
        ));
    }
    assert!(matches!(
        store.record_worker("w1", "1", u64::MAX, T0),
        Err(Error::Invalid(_))
    ));
    let draft = Draft {
        time_ms: u64::MAX,
        actor: "system".into(),
        action: "test".into(),
        resource: "x".into(),
        outcome: "ok".into(),
        details: json!({}),
    };
    assert!(matches!(
        store.audit(PLATFORM_CHAIN, draft),
        Err(Error::Invalid(_))
    ));
    // Nothing above left a trace but the one tenant's creation.
    assert_eq!(
        actions(&store, &["acme", PLATFORM_CHAIN]),
        [
            triple("acme", "tenant.create", "acme"),
            triple(PLATFORM_CHAIN, "tenant.create", "acme"),
        ]
    );
    assert!(store.list_keys("acme").unwrap().is_empty());
    assert!(store.list_workers().unwrap().is_empty());
}

#[test]
fn keys_insert_find_revoke_list() {
    let (_dir, path) = db_file();
    let store = Arc::new(open(&path));
    store.create_tenant(&admin(), "acme", "free").unwrap();
    store.create_tenant(&admin(), "beta", "free").unwrap();
    let (key1, record1) = new_key("acme", None);
    let (_key2, record2) = new_key("acme", Some(vec!["docs".into(), "faq".into()]));
    let (key3, record3) = new_key("beta", None);

    let info1 = store.insert_key(&admin(), &record1, "ci").unwrap();
    assert_eq!(
        (
            info1.key_id.as_str(),
            info1.tenant.as_str(),
            info1.label.as_str()
        ),
        (key1.key_id.as_str(), "acme", "ci")
    );
    assert_eq!((info1.scopes, info1.revoked_ms), (read_write(), None));
    let info2 = store.insert_key(&admin(), &record2, "docs bot").unwrap();
    store.insert_key(&admin(), &record3, "").unwrap();
    assert!(matches!(
        store.insert_key(&admin(), &record1, "again"),
        Err(Error::AlreadyExists(_))
    ));
    let (_, orphan) = new_key("nope", None);
    assert!(matches!(
        store.insert_key(&admin(), &orphan, "x"),
        Err(Error::NotFound(_))
    ));

    assert_eq!(
        store.list_keys("acme").unwrap(),
        [info1.clone(), info2.clone()]
    );
    assert_eq!(store.list_keys("beta").unwrap().len(), 1);
    assert!(matches!(store.list_keys("nope"), Err(Error::NotFound(_))));
    assert_eq!(store.find(&key1.key_id), Some(record1.clone()));
    assert_eq!(store.find(&record2.key_id), Some(record2.clone()));
    assert_eq!(store.find("AAAAAAAA"), None);

    // The authenticator sees the store's answers, and a revocation at once.
    let auth = Authenticator::new(
        store.clone(),
        Pepper::new(PEPPER).unwrap(),
        NonZeroUsize::new(16).unwrap(),
    );
    assert_eq!(auth.authenticate(Some(&key1.full)).unwrap().tenant, "acme");

    // Another tenant's key id answers exactly like a missing one.
    let err = store
        .revoke_key(&admin(), "beta", &key1.key_id)
        .unwrap_err();
    let missing = store.revoke_key(&admin(), "beta", "ZZZZZZZZ").unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        missing.to_string().replace("ZZZZZZZZ", &key1.key_id)
    );
    assert!(!err.to_string().contains("acme"), "{err}");
    assert!(!store.find(&key1.key_id).unwrap().is_revoked);

    let revoked = store.revoke_key(&admin(), "acme", &key1.key_id).unwrap();
    let revoked_ms = revoked.revoked_ms.unwrap();
    assert!(store.find(&key1.key_id).unwrap().is_revoked);
    auth.forget(&key1.key_id);
    assert!(auth.authenticate(Some(&key1.full)).is_err());
    // Revoking twice is fine and keeps the first revocation time.
    let again = store.revoke_key(&admin(), "acme", &key1.key_id).unwrap();
    assert_eq!(again.revoked_ms, Some(revoked_ms));
    assert_eq!(store.list_keys("acme").unwrap()[0], again);

    // A deleted tenant's keys are revoked, and stay revoked even if a row was missed.
    assert!(auth.authenticate(Some(&key3.full)).is_ok());
    store.delete_tenant(&admin(), "beta").unwrap();
    assert!(store.find(&key3.key_id).unwrap().is_revoked);
    assert!(
        store.list_keys("beta").unwrap()[0].revoked_ms.is_some(),
        "listing a deleted tenant's keys still works"
    );
    raw(&path)
        .execute(
            "UPDATE api_keys SET revoked_ms = NULL WHERE tenant = 'beta'",
            [],
        )
        .unwrap();
    assert!(store.find(&key3.key_id).unwrap().is_revoked);
    auth.forget_tenant("beta");
    assert!(auth.authenticate(Some(&key3.full)).is_err());
    let (_, late) = new_key("beta", None);
    assert!(matches!(
        store.insert_key(&admin(), &late, "x"),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.revoke_key(&admin(), "beta", &key3.key_id),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn workers_are_upserted_and_never_go_back_in_time() {
    let (_dir, path) = db_file();
    let store = open(&path);
    store.record_worker("w2", "0.1.0", 100, T0).unwrap();
    store.record_worker("w1", "0.1.0", 100, T0).unwrap();
    store.record_worker("w1", "0.2.0", 200, T0 + 50).unwrap();
    store.record_worker("w1", "0.2.0", 200, T0 + 10).unwrap();
    assert_eq!(
        store.list_workers().unwrap(),
        [
            WorkerRow {
                id: "w1".into(),
                last_seen_ms: T0 + 50,
                version: "0.2.0".into(),
                memory_budget_bytes: 200
            },
            WorkerRow {
                id: "w2".into(),
                last_seen_ms: T0,
                version: "0.1.0".into(),
                memory_budget_bytes: 100
            },
        ]
    );
    // Heartbeats are not audited.
    assert_eq!(store.chain_head(PLATFORM_CHAIN).unwrap().seq, 0);
}

#[test]
fn placement_epochs_only_go_up() {
    let (_dir, path) = db_file();
    let mut epochs = Vec::new();
    {
        let store = open(&path);
        store.create_tenant(&admin(), "acme", "free").unwrap();
        store.create_tenant(&admin(), "beta", "free").unwrap();
        store.record_worker("w1", "0.0.0", 1, T0).unwrap();
        store.record_worker("w2", "0.0.0", 1, T0).unwrap();
        assert_eq!(store.placement("acme").unwrap(), None);
        assert!(matches!(
            store.bump_epoch(&admin(), "acme"),
            Err(Error::NotFound(_))
        ));

        epochs.push(store.place(&admin(), "acme", "w1").unwrap().epoch);
        // An unknown worker is refused and uses up no epoch.
        assert!(matches!(
            store.place(&admin(), "acme", "w9"),
            Err(Error::NotFound(m)) if m == "worker w9 not found"
        ));
        let moved = store.place(&admin(), "acme", "w2").unwrap();
        assert_eq!(moved.worker, "w2");
        epochs.push(moved.epoch);
        let bumped = store.bump_epoch(&admin(), "acme").unwrap();
        assert_eq!(bumped.worker, "w2");
        epochs.push(bumped.epoch);
        assert_eq!(store.unplace(&admin(), "acme").unwrap().epoch, 3);
        assert_eq!(store.placement("acme").unwrap(), None);
        assert!(matches!(
            store.unplace(&admin(), "acme"),
            Err(Error::NotFound(_))
        ));
        epochs.push(store.place(&admin(), "acme", "w1").unwrap().epoch);
        // Epochs are per tenant.
        assert_eq!(store.place(&admin(), "beta", "w1").unwrap().epoch, 1);
        assert_eq!(
            store
                .placements_of("w1")
                .unwrap()
                .iter()
                .map(|p| (p.tenant.as_str(), p.epoch))
                .collect::<Vec<_>>(),
            [("acme", 4), ("beta", 1)]
        );
        assert!(store.placements_of("w2").unwrap().is_empty());
    }

    let store = open(&path);
    assert_eq!(store.placement("acme").unwrap().unwrap().epoch, 4);
    epochs.push(store.bump_epoch(&admin(), "acme").unwrap().epoch);
    epochs.push(store.place(&admin(), "acme", "w2").unwrap().epoch);
    assert_eq!(epochs, [1, 2, 3, 4, 5, 6]);

    store.delete_tenant(&admin(), "acme").unwrap();
    assert_eq!(store.placement("acme").unwrap(), None);
    assert_eq!(
        store
            .placements()
            .unwrap()
            .iter()
            .map(|p| p.tenant.as_str())
            .collect::<Vec<_>>(),
        ["beta"]
    );
    assert!(matches!(
        store.place(&admin(), "acme", "w1"),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.bump_epoch(&admin(), "acme"),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.create_tenant(&admin(), "acme", "free"),
        Err(Error::AlreadyExists(_))
    ));
    drop(store);
    // The counter outlived the placement row; the deletion moved it on once more (fencing).
    let counter: i64 = raw(&path)
        .query_row(
            "SELECT placement_epoch FROM tenants WHERE id = 'acme'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(counter, 7);
}

#[test]
fn every_mutation_writes_exactly_its_audit_rows() {
    let (_dir, path) = db_file();
    let store = open(&path);
    let actor = Actor::user("u-7");
    store.create_tenant(&actor, "acme", "free").unwrap();
    store.create_tenant(&admin(), "beta", "pro").unwrap();
    store.set_tier(&admin(), "acme", "pro").unwrap();
    let (key, record) = new_key("acme", Some(vec!["docs".into()]));
    store
        .insert_key(&Actor::key("Manager1"), &record, "ci")
        .unwrap();
    store.revoke_key(&admin(), "acme", &key.key_id).unwrap();
    store.revoke_key(&admin(), "acme", &key.key_id).unwrap();
    store.record_worker("w1", "0.0.0", 1, T0).unwrap();
    store.place(&Actor::system(), "acme", "w1").unwrap();
    store.bump_epoch(&Actor::system(), "acme").unwrap();
    store.pause_tenant(&admin(), "acme").unwrap();
    store.resume_tenant(&admin(), "acme").unwrap();
    store.unplace(&Actor::system(), "acme").unwrap();
    store.place(&Actor::system(), "acme", "w1").unwrap();
    // Refused operations write nothing.
    store.resume_tenant(&admin(), "acme").unwrap_err();
    store.revoke_key(&admin(), "beta", &key.key_id).unwrap_err();
    store.create_tenant(&admin(), "acme", "free").unwrap_err();
    store.delete_tenant(&admin(), "acme").unwrap();

    let chains = ["acme", "beta", PLATFORM_CHAIN];
    assert_eq!(
        actions(&store, &chains),
        [
            triple("acme", "tenant.create", "acme"),
            triple("acme", "tenant.set_tier", "acme"),
            triple("acme", "key.create", &key.key_id),
            triple("acme", "key.revoke", &key.key_id),
            triple("acme", "key.revoke", &key.key_id),
            triple("acme", "placement.assign", "acme"),
            triple("acme", "placement.epoch", "acme"),
            triple("acme", "tenant.pause", "acme"),
            triple("acme", "tenant.resume", "acme"),
            triple("acme", "placement.remove", "acme"),
            triple("acme", "placement.assign", "acme"),
            triple("acme", "tenant.delete", "acme"),
            triple("beta", "tenant.create", "beta"),
            triple(PLATFORM_CHAIN, "tenant.create", "acme"),
            triple(PLATFORM_CHAIN, "tenant.create", "beta"),
            triple(PLATFORM_CHAIN, "tenant.delete", "acme"),
        ]
    );
    assert_chains_verify(&store, &chains);

    let acme = store.export_chain("acme").unwrap();
    assert_eq!(
        acme.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<u64>>()
    );
    assert!(acme.iter().all(|r| r.outcome == "ok"));
    assert_eq!(acme[0].actor, "user:u-7");
    assert_eq!(acme[0].details, json!({ "tier": "free" }));
    assert_eq!(acme[1].details, json!({ "from": "free", "to": "pro" }));
    assert_eq!(acme[2].actor, "key:Manager1");
    assert_eq!(
        acme[2].details,
        json!({ "key_id": key.key_id, "label": "ci", "scopes": ["read", "write"], "collections": ["docs"] })
    );
    assert_eq!(acme[3].details["was_revoked"], json!(false));
    assert_eq!(acme[4].details["was_revoked"], json!(true));
    assert_eq!(acme[5].actor, "system");
    assert_eq!(
        acme[5].details,
        json!({ "worker": "w1", "epoch": 1, "previous_worker": null })
    );
    assert_eq!(acme[6].details, json!({ "worker": "w1", "epoch": 2 }));
    // Pausing and deleting move the fencing epoch on (INV-14): 3 at the pause, 4 at the new
    // placement, 5 at the deletion.
    assert_eq!(acme[7].details, json!({ "from": "pro", "epoch": 3 }));
    assert_eq!(acme[8].details, json!({ "to": "pro" }));
    assert_eq!(
        acme[11].details,
        json!({ "revoked_keys": [], "placement": { "worker": "w1", "epoch": 5 }, "epoch": 5 })
    );
    let platform = store.export_chain(PLATFORM_CHAIN).unwrap();
    assert_eq!(platform[2].details, acme[11].details);
    // Rows are stamped by the store's clock, in order.
    assert!(acme.windows(2).all(|w| w[0].time_ms < w[1].time_ms));
    assert!(acme[0].time_ms >= T0);

    // Neither the key nor its digest is anywhere in the audit trail.
    let export = serde_json::to_string(&(acme, platform)).unwrap();
    assert!(!export.contains(key.full.as_str()));
    assert!(!export.contains(&hex::encode(record.digest)));
    let secret = &key.full[key.full.len() - crate::auth::SECRET_LEN..];
    assert!(!export.contains(secret));
}

#[test]
fn the_audit_call_appends_to_existing_chains_only() {
    let (_dir, path) = db_file();
    let store = open(&path);
    let draft = |action: &str| Draft {
        time_ms: T0,
        actor: "worker:w1".into(),
        action: action.into(),
        resource: "acme".into(),
        outcome: "denied".into(),
        details: json!({ "reason": "stale epoch", "ratio": 0.1, "big": u64::MAX }),
    };
    let row = store
        .audit(PLATFORM_CHAIN, draft("cluster.reject"))
        .unwrap();
    assert_eq!((row.chain.as_str(), row.seq), (PLATFORM_CHAIN, 1));
    assert!(matches!(
        store.audit("acme", draft("x")),
        Err(Error::NotFound(m)) if m == "audit chain acme not found"
    ));
    assert!(matches!(
        store.export_chain("acme"),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(store.chain_head("acme"), Err(Error::NotFound(_))));
    assert!(matches!(
        store.verify_chain("acme"),
        Err(Error::NotFound(_))
    ));
    store.create_tenant(&admin(), "acme", "free").unwrap();
    let row = store.audit("acme", draft("data.read")).unwrap();
    assert_eq!(row.seq, 2);
    assert_eq!(store.export_chain("acme").unwrap()[1], row);
    let head = store.chain_head("acme").unwrap();
    assert_eq!((head.seq, head.hash.as_str()), (2, row.hash.as_str()));
    assert_chains_verify(&store, &["acme", PLATFORM_CHAIN]);
}

/// A store with a few rows in `acme`'s chain, for the tamper tests.
fn tamper_fixture() -> (TempDir, PathBuf, Store) {
    let (dir, path) = db_file();
    let store = open(&path);
    store.create_tenant(&admin(), "acme", "free").unwrap();
    store.set_tier(&admin(), "acme", "pro").unwrap();
    store.pause_tenant(&admin(), "acme").unwrap();
    store.resume_tenant(&admin(), "acme").unwrap();
    assert_eq!(store.chain_head("acme").unwrap().seq, 4);
    (dir, path, store)
}

#[test]
fn triggers_reject_update_and_delete_of_audit_rows() {
    let (_dir, path, store) = tamper_fixture();
    let conn = raw(&path);
    for sql in [
        "UPDATE audit_rows SET outcome = 'denied' WHERE chain = 'acme' AND seq = 2",
        "DELETE FROM audit_rows WHERE chain = 'acme' AND seq = 4",
        "DELETE FROM audit_rows",
    ] {
        let err = conn.execute(sql, []).unwrap_err();
        assert!(
            err.to_string().contains("audit rows are append-only"),
            "{sql}: {err}"
        );
    }
    assert_eq!(store.export_chain("acme").unwrap().len(), 4);
    assert_chains_verify(&store, &["acme", PLATFORM_CHAIN]);
}

#[test]
fn an_edited_row_is_named_by_verify_chain() {
    let (_dir, path, store) = tamper_fixture();
    raw(&path)
        .execute_batch(
            "DROP TRIGGER audit_rows_no_update;
             UPDATE audit_rows SET outcome = 'denied' WHERE chain = 'acme' AND seq = 2;",
        )
        .unwrap();
    let err = store.verify_chain("acme").unwrap().unwrap_err();
    assert_eq!(err.line, 2, "{err}");
    assert!(err.reason.contains("edited"), "{err}");
    assert_chains_verify(&store, &[PLATFORM_CHAIN]);
}

#[test]
fn an_unreadable_row_is_named_by_verify_chain() {
    let (_dir, path, store) = tamper_fixture();
    raw(&path)
        .execute_batch(
            "DROP TRIGGER audit_rows_no_update;
             UPDATE audit_rows SET details = 'not json' WHERE chain = 'acme' AND seq = 3;",
        )
        .unwrap();
    let err = store.verify_chain("acme").unwrap().unwrap_err();
    assert_eq!(err.line, 3, "{err}");
    let err = store.export_chain("acme").unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("row 3"), "{err}");
}

#[test]
fn a_deleted_middle_row_is_named_by_verify_chain() {
    let (_dir, path, store) = tamper_fixture();
    raw(&path)
        .execute_batch(
            "DROP TRIGGER audit_rows_no_delete;
             DELETE FROM audit_rows WHERE chain = 'acme' AND seq = 2;",
        )
        .unwrap();
    let err = store.verify_chain("acme").unwrap().unwrap_err();
    assert_eq!(err.line, 2, "{err}");
    assert!(err.reason.contains("deleted"), "{err}");
}

#[test]
fn a_cut_tail_is_caught_against_an_earlier_head() {
    let (_dir, path, store) = tamper_fixture();
    let head = store.chain_head("acme").unwrap();
    raw(&path)
        .execute_batch(
            "DROP TRIGGER audit_rows_no_delete;
             DELETE FROM audit_rows WHERE chain = 'acme' AND seq = 4;",
        )
        .unwrap();
    let rows = store.export_chain("acme").unwrap();
    assert_eq!(rows.len(), 3);
    let err = verify(&rows, Some(&audit_key()), Some(&head)).unwrap_err();
    assert_eq!(err.line, 0, "{err}");
    assert!(err.reason.contains("tail"), "{err}");
    // What is left is a well-formed chain: only the earlier head can tell.
    assert_eq!(store.verify_chain("acme").unwrap(), Ok(()));
}

#[test]
fn a_failed_audit_write_fails_the_operation() {
    let (_dir, path) = db_file();
    let store = open(&path);
    store.create_tenant(&admin(), "acme", "free").unwrap();
    store.record_worker("w1", "0.0.0", 1, T0).unwrap();
    let (key, record) = new_key("acme", None);
    store.insert_key(&admin(), &record, "ci").unwrap();
    let before = actions(&store, &["acme", PLATFORM_CHAIN]);

    let conn = raw(&path);
    conn.execute_batch(
        "CREATE TRIGGER audit_unavailable BEFORE INSERT ON audit_rows
         BEGIN SELECT RAISE(ABORT, 'audit store unavailable'); END;",
    )
    .unwrap();
    let failing = |res: Result<()>| {
        let err = res.unwrap_err();
        assert!(matches!(err, Error::Sqlite(_)), "{err:?}");
        assert!(err.to_string().contains("audit store unavailable"), "{err}");
    };
    failing(store.create_tenant(&admin(), "gamma", "free").map(drop));
    assert_eq!(store.tenant("gamma").unwrap(), None);
    failing(store.set_tier(&admin(), "acme", "pro").map(drop));
    failing(store.pause_tenant(&admin(), "acme").map(drop));
    assert_eq!(store.tenant("acme").unwrap().unwrap().tier, "free");
    let (_, other) = new_key("acme", None);
    failing(store.insert_key(&admin(), &other, "x").map(drop));
    assert_eq!(store.find(&other.key_id), None);
    failing(store.revoke_key(&admin(), "acme", &key.key_id).map(drop));
    assert!(!store.find(&key.key_id).unwrap().is_revoked);
    failing(store.place(&admin(), "acme", "w1").map(drop));
    assert_eq!(store.placement("acme").unwrap(), None);
    failing(store.delete_tenant(&admin(), "acme"));
    assert!(!store.tenant("acme").unwrap().unwrap().deleted);
    failing(
        store
            .audit(
                PLATFORM_CHAIN,
                Draft {
                    time_ms: T0,
                    actor: "system".into(),
                    action: "x".into(),
                    resource: "x".into(),
                    outcome: "ok".into(),
                    details: json!({}),
                },
            )
            .map(drop),
    );
    assert_eq!(actions(&store, &["acme", PLATFORM_CHAIN]), before);

    conn.execute_batch("DROP TRIGGER audit_unavailable;")
        .unwrap();
    store.create_tenant(&admin(), "gamma", "free").unwrap();
    // The failed placement used up no epoch.
    assert_eq!(store.place(&admin(), "acme", "w1").unwrap().epoch, 1);
    assert_chains_verify(&store, &["acme", "gamma", PLATFORM_CHAIN]);
}

#[test]
fn the_database_files_are_private() {
    let (_dir, path) = db_file();
    // A file left world-readable by someone else is tightened on open.
    std::fs::write(&path, b"").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let store = open(&path);
    store.create_tenant(&admin(), "acme", "free").unwrap();
    assert_eq!(mode(&path), 0o600);
    for suffix in ["-wal", "-shm"] {
        let file = companion(&path, suffix);
        assert!(file.exists(), "{}", file.display());
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    drop(store);

    let (_dir, fresh) = db_file();
    drop(open(&fresh));
    assert_eq!(mode(&fresh), 0o600);
}

#[test]
fn an_in_memory_store_works_for_unit_tests() {
    let store = Store::open_in_memory(audit_key()).unwrap();
    store.create_tenant(&admin(), "acme", "free").unwrap();
    assert_eq!(store.path(), None);
    assert_chains_verify(&store, &["acme", PLATFORM_CHAIN]);
}

#[test]
fn the_connection_is_durable_and_strict() {
    let (_dir, path) = db_file();
    let store = open(&path);
    let conn = store.conn.lock();
    let pragma = |name: &str| -> i64 {
        conn.pragma_query_value(None, name, |row| row.get(0))
            .unwrap()
    };
    assert_eq!(pragma("synchronous"), 2, "FULL");
    assert_eq!(pragma("foreign_keys"), 1);
    assert_eq!(pragma("secure_delete"), 1);
    assert_eq!(pragma("busy_timeout"), 5000);
    let journal: String = conn
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
}
