//! Replicas: added live only at a tenant's first placement, recorded stale with the primary
//! handed to a live replica, made live again, removed; every change moves the epoch on and is
//! audited with it; moves and placements refuse a worker that holds a copy.

use super::*;
use crate::store::CopyState;

fn states(store: &Store, tenant: &str) -> (String, Vec<(String, CopyState)>) {
    let primary = store.placement(tenant).unwrap().unwrap().worker;
    let replicas = store
        .replicas(tenant)
        .unwrap()
        .into_iter()
        .map(|r| (r.worker, r.state))
        .collect();
    (primary, replicas)
}

fn replica_actions(store: &Store, tenant: &str) -> Vec<String> {
    store
        .export_chain(tenant)
        .unwrap()
        .into_iter()
        .filter(|r| r.action.starts_with("replica."))
        .map(|r| format!("{} {}", r.action, r.details["epoch"]))
        .collect()
}

fn store_with_workers(path: &Path) -> Store {
    let store = open(path);
    for w in ["w1", "w2", "w3"] {
        store.record_worker(w, "0", 1, T0).unwrap();
    }
    store.create_tenant(&admin(), "acme", "pro").unwrap();
    store
}

#[test]
fn a_first_placements_replicas_start_live_and_later_ones_stale() {
    let (_dir, path) = db_file();
    let store = store_with_workers(&path);
    store.place(&Actor::system(), "acme", "w1").unwrap();
    let placed = store
        .add_replica(&Actor::system(), "acme", "w2", true)
        .unwrap();
    assert_eq!(placed.epoch, 2);
    let placed = store
        .add_replica(&Actor::system(), "acme", "w3", true)
        .unwrap();
    assert_eq!(placed.epoch, 3);
    assert_eq!(
        states(&store, "acme").1,
        [
            ("w2".to_owned(), CopyState::Live),
            ("w3".to_owned(), CopyState::Stale)
        ],
        "only a copy added fresh at epoch 1 (nothing ever sent) starts live"
    );
    // Not fresh (a tenant at epoch 1 may have been written to): stale.
    store.create_tenant(&admin(), "beta", "pro").unwrap();
    store.place(&Actor::system(), "beta", "w1").unwrap();
    store
        .add_replica(&Actor::system(), "beta", "w2", false)
        .unwrap();
    assert_eq!(
        states(&store, "beta").1,
        [("w2".to_owned(), CopyState::Stale)]
    );
    // Refused: the primary's worker, a worker with a copy, an unknown worker; moves and
    // placements onto a worker with a copy.
    for (worker, unknown) in [("w1", false), ("w2", false), ("w9", true)] {
        let err = store
            .add_replica(&Actor::system(), "acme", worker, true)
            .unwrap_err();
        assert_eq!(
            matches!(err, Error::NotFound(_)),
            unknown,
            "{worker}: {err}"
        );
    }
    assert!(matches!(
        store.begin_move(&admin(), "acme", "w2"),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        store.place(&admin(), "acme", "w3"),
        Err(Error::Invalid(_))
    ));
    assert_eq!(
        replica_actions(&store, "acme"),
        ["replica.add 2", "replica.add 3"]
    );
}

#[test]
fn a_primary_that_missed_a_write_hands_over_to_a_live_replica() {
    let (_dir, path) = db_file();
    let store = store_with_workers(&path);
    store.place(&Actor::system(), "acme", "w1").unwrap();
    store
        .add_replica(&Actor::system(), "acme", "w2", true)
        .unwrap();

    // Nothing to record: no change, no epoch, no row.
    let same = store
        .mark_stale(&Actor::system(), "acme", &["w3".into()], "x")
        .unwrap();
    assert_eq!((same.worker.as_str(), same.epoch), ("w1", 2));

    let placed = store
        .mark_stale(
            &Actor::system(),
            "acme",
            &["w1".into()],
            "its worker is gone",
        )
        .unwrap();
    assert_eq!((placed.worker.as_str(), placed.epoch), ("w2", 3));
    assert_eq!(
        states(&store, "acme"),
        ("w2".to_owned(), vec![("w1".to_owned(), CopyState::Stale)])
    );
    // The only live copy left stays the primary, whatever the caller says.
    let placed = store
        .mark_stale(&Actor::system(), "acme", &["w2".into()], "x")
        .unwrap();
    assert_eq!((placed.worker.as_str(), placed.epoch), ("w2", 3));

    let placed = store
        .mark_live(&Actor::system(), "acme", "w1", json!({ "files": 3 }))
        .unwrap();
    assert_eq!(placed.epoch, 4);
    assert_eq!(
        states(&store, "acme").1,
        [("w1".to_owned(), CopyState::Live)]
    );
    assert!(matches!(
        store.mark_live(&Actor::system(), "acme", "w1", json!({})),
        Err(Error::Invalid(_))
    ));

    // At a coordinator's start every live replica is stale again.
    assert_eq!(store.stale_all_replicas(&Actor::system()).unwrap(), 1);
    assert_eq!(
        states(&store, "acme").1,
        [("w1".to_owned(), CopyState::Stale)]
    );
    let placed = store
        .remove_replica(&Actor::system(), "acme", "w1", "replaced")
        .unwrap();
    assert_eq!(placed.epoch, 6);
    assert!(states(&store, "acme").1.is_empty());
    assert!(matches!(
        store.remove_replica(&Actor::system(), "acme", "w1", "again"),
        Err(Error::NotFound(_))
    ));
    assert_eq!(
        replica_actions(&store, "acme"),
        [
            "replica.add 2",
            "replica.stale 3",
            "replica.live 4",
            "replica.stale 5",
            "replica.remove 6"
        ]
    );
    let rows = store.export_chain("acme").unwrap();
    let handover = rows.iter().find(|r| r.action == "replica.stale").unwrap();
    assert_eq!(handover.outcome, "error");
    assert_eq!(handover.details["promoted"], "w2");
    assert_eq!(handover.details["reason"], "its worker is gone");
    assert_chains_verify(&store, &["acme"]);

    // Deleting the tenant removes its replicas with it, and says which.
    store
        .add_replica(&Actor::system(), "acme", "w3", true)
        .unwrap();
    store.delete_tenant(&admin(), "acme").unwrap();
    assert!(store.all_replicas().unwrap().is_empty());
    let delete = store.export_chain("acme").unwrap().pop().unwrap();
    assert_eq!(delete.details["replicas"], json!(["w3"]));
}

#[test]
fn a_removed_copy_is_left_to_delete_until_its_worker_holds_one_again() {
    let (_dir, path) = db_file();
    let store = store_with_workers(&path);
    let leftovers = |worker: &str| -> Vec<String> {
        store
            .leftovers_on(worker)
            .unwrap()
            .into_iter()
            .map(|l| format!("{} {}", l.tenant, l.reason))
            .collect()
    };
    store.place(&Actor::system(), "acme", "w1").unwrap();
    store
        .add_replica(&Actor::system(), "acme", "w2", true)
        .unwrap();
    assert!(store.holds_copy("acme", "w1").unwrap());
    assert!(store.holds_copy("acme", "w2").unwrap());
    assert!(!store.holds_copy("acme", "w3").unwrap());
    assert!(leftovers("w2").is_empty());
    store
        .remove_replica(&Actor::system(), "acme", "w2", "lost")
        .unwrap();
    assert!(!store.holds_copy("acme", "w2").unwrap());
    assert_eq!(leftovers("w2"), ["acme lost"]);
    assert_eq!(store.leftover_count().unwrap(), 1);
    // Survives a reopen (the worker may be away for a while).
    drop(store);
    let store = open(&path);
    assert_eq!(store.leftovers_on("w2").unwrap().len(), 1);
    // A copy added there again owns the files: nothing is left to delete.
    store
        .add_replica(&Actor::system(), "acme", "w2", false)
        .unwrap();
    assert!(store.leftovers_on("w2").unwrap().is_empty());
    // A move's target holds a copy while the move is recorded.
    store
        .remove_replica(&Actor::system(), "acme", "w2", "again")
        .unwrap();
    store.begin_move(&admin(), "acme", "w2").unwrap();
    assert!(store.holds_copy("acme", "w2").unwrap());
    store.abort_move(&admin(), "acme", "test").unwrap();
    assert!(!store.holds_copy("acme", "w2").unwrap());
    store.end_leftover("acme", "w2").unwrap();
    assert!(store.leftovers_on("w2").unwrap().is_empty());
    assert_eq!(store.leftover_count().unwrap(), 0);
}
