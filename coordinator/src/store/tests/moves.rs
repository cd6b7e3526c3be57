//! The move state machine: fenced at the start, switched or aborted, ended once the leftover copy
//! is gone; each stage audited with its change.

use super::*;
use crate::store::MoveState;

fn stages(store: &Store, tenant: &str) -> Vec<String> {
    store
        .export_chain(tenant)
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "tenant.move")
        .map(|r| r.details["stage"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_move_fences_then_switches_or_aborts_and_ends_once() {
    let (_dir, path) = db_file();
    let store = open(&path);
    store.create_tenant(&admin(), "acme", "free").unwrap();
    store.record_worker("w1", "0", 1, T0).unwrap();
    store.record_worker("w2", "0", 1, T0).unwrap();
    // Refusals: not placed yet, unknown worker, the worker it is on.
    assert!(matches!(
        store.begin_move(&admin(), "acme", "w2"),
        Err(Error::Invalid(_))
    ));
    let placed = store.place(&admin(), "acme", "w1").unwrap();
    assert!(matches!(
        store.begin_move(&admin(), "acme", "w9"),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.begin_move(&admin(), "acme", "w1"),
        Err(Error::Invalid(_))
    ));
    assert!(store.moves().unwrap().is_empty(), "refusals record nothing");

    // Started: fenced on the source under a new epoch.
    let fenced = store.begin_move(&admin(), "acme", "w2").unwrap();
    assert_eq!(fenced.worker, "w1");
    assert!(fenced.epoch > placed.epoch);
    assert_eq!(store.placement("acme").unwrap(), Some(fenced.clone()));
    let rows = store.moves().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].from.as_str(), rows[0].to.as_str()), ("w1", "w2"));
    assert_eq!(rows[0].state, MoveState::Copying);
    assert!(
        matches!(
            store.begin_move(&admin(), "acme", "w2"),
            Err(Error::Invalid(_))
        ),
        "one move at a time"
    );
    assert!(
        matches!(store.end_move(&admin(), "acme"), Err(Error::Invalid(_))),
        "still copying"
    );

    // Switched: on the target under a newer epoch; the source's copy is to go.
    let switched = store
        .switch_move(&admin(), "acme", serde_json::json!({"files": 3}))
        .unwrap();
    assert_eq!(switched.worker, "w2");
    assert!(switched.epoch > fenced.epoch);
    assert_eq!(store.moves().unwrap()[0].state, MoveState::Cleanup);
    assert!(
        matches!(
            store.abort_move(&admin(), "acme", "late"),
            Err(Error::Invalid(_))
        ),
        "switched moves are not aborted"
    );
    assert!(
        matches!(
            store.begin_move(&admin(), "acme", "w1"),
            Err(Error::Invalid(_))
        ),
        "until cleaned up"
    );
    store.end_move(&admin(), "acme").unwrap();
    assert!(store.moves().unwrap().is_empty());
    assert!(matches!(
        store.end_move(&admin(), "acme"),
        Err(Error::NotFound(_))
    ));

    // Aborted: stays on the source; the target's copy is to go.
    let fenced = store.begin_move(&admin(), "acme", "w1").unwrap();
    let row = store.abort_move(&admin(), "acme", "target died").unwrap();
    assert_eq!(row.state, MoveState::Aborted);
    assert_eq!(store.placement("acme").unwrap(), Some(fenced));
    assert!(matches!(
        store.switch_move(&admin(), "acme", serde_json::json!({})),
        Err(Error::Invalid(_))
    ));
    store.end_move(&admin(), "acme").unwrap();

    assert_eq!(
        stages(&store, "acme"),
        ["started", "switched", "done", "started", "aborted", "done"]
    );
    assert_chains_verify(&store, &["acme"]);
}
