//! The store's audit trail: every mutation writes exactly its rows, the chains refuse edits and
//! deletions, verification names a tampered, unreadable, deleted or cut row, and a failed audit
//! write fails its operation.

use super::*;

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
        json!({ "revoked_keys": [], "placement": { "worker": "w1", "epoch": 5 }, "replicas": [], "epoch": 5 })
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
