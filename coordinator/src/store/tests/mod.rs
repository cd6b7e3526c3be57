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

mod audit;
mod moves;
mod replicas;

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
fn census_rows_of_before_migration_13_are_kept_and_bytes_cold_may_be_unknown_after() {
    let (_dir, path) = db_file();
    {
        let conn = raw(&path);
        for (i, sql) in MIGRATIONS[..12].iter().enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", i as i64 + 1)
                .unwrap();
        }
        conn.execute(
            "INSERT INTO census VALUES ('2027-01-15', 'acme', 'pro', 'active', 1, 30, 480, 0, 8, 4, 1)",
            [],
        )
        .unwrap();
    }
    let store = open(&path);
    let rows = store
        .census(("2027-01-15", "2027-01-15"), None, None, 10)
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].points, rows[0].bytes_hot, rows[0].bytes_cold),
        (Some(30), Some(480), Some(0))
    );
    let mut unknown = rows[0].clone();
    unknown.day = "2027-01-16".into();
    unknown.bytes_cold = None;
    store.record_census(&[unknown]).unwrap();
    let rows = store
        .census(("2027-01-16", "2027-01-16"), None, None, 10)
        .unwrap();
    assert_eq!(rows[0].bytes_cold, None);
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
            "anomalies",
            "api_keys",
            "audit_anchors",
            "audit_rows",
            "audit_rows_no_delete",
            "audit_rows_no_update",
            "census",
            "idempotency",
            "jobs",
            "kek_retired",
            "kek_rotations",
            "leftover_copies",
            "login_flows",
            "members",
            "moves",
            "outbox",
            "placements",
            "replicas",
            "restores",
            "sessions",
            "snapshots",
            "tenant_settings",
            "tenants",
            "tenants_never_deleted",
            "usage_days",
            "usage_hours",
            "user_identities",
            "users",
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
            deleted: false,
            storage: "hot".into(),
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
                memory_budget_bytes: 200,
                draining_since_ms: None,
            },
            WorkerRow {
                id: "w2".into(),
                last_seen_ms: T0,
                version: "0.1.0".into(),
                memory_budget_bytes: 100,
                draining_since_ms: None,
            },
        ]
    );
    // Hellos and disconnections are not audited.
    store.worker_seen("w2", T0 + 99).unwrap();
    store.worker_seen("w2", T0 + 1).unwrap();
    assert_eq!(store.list_workers().unwrap()[1].last_seen_ms, T0 + 99);
    assert_eq!(store.chain_head(PLATFORM_CHAIN).unwrap().seq, 0);
    // Draining is kept, audited, and refused for an unknown worker.
    store.set_draining(&admin(), "w1", true).unwrap();
    let since = store.list_workers().unwrap()[0].draining_since_ms;
    assert!(since.is_some());
    store.set_draining(&admin(), "w1", true).unwrap();
    assert_eq!(
        store.list_workers().unwrap()[0].draining_since_ms,
        since,
        "unchanged"
    );
    store.set_draining(&admin(), "w1", false).unwrap();
    assert_eq!(store.list_workers().unwrap()[0].draining_since_ms, None);
    assert!(matches!(
        store.set_draining(&admin(), "w9", true),
        Err(Error::NotFound(_))
    ));
    assert_eq!(
        actions(&store, &[PLATFORM_CHAIN])
            .into_iter()
            .map(|(_, action, _)| action)
            .collect::<Vec<_>>(),
        ["worker.drain", "worker.drain", "worker.undrain"]
    );
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
