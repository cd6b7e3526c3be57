//! The audit chain: every admin operation is recorded, and the offline verifier detects a row
//! edited in the SQLite file, a row deleted from it, and a truncated export.

use serde_json::{Value, json};
use tests::{Cluster, binary};

fn actions(export: &Value) -> Vec<String> {
    export["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r["action"].as_str().unwrap(),
                r["resource"].as_str().unwrap(),
                r["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

/// Runs the real verifier CLI on an export file; answers (success, output).
fn verify_cli(file: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(binary("vaultvec-coordinator"))
        .args(["audit", "verify"])
        .arg(file)
        .args(extra)
        .output()
        .expect("running the verifier");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_operation_is_in_the_chain_and_tampering_is_detected() {
    let cluster = Cluster::start(1).await;
    let key = cluster.tenant("audited", None).await;
    let key_id = key[3..11].to_owned();
    cluster.create_collection(&key, "c", 2).await;
    let (s, _) = cluster
        .http(
            "PUT",
            "/v1/collections/c/points",
            Some(&key),
            Some(json!({"points": [{"id": 1, "vector": [1.0, 2.0]}]})),
        )
        .await;
    assert_eq!(s, 200);
    for (method, path, body) in [
        (
            "PUT",
            "/admin/v1/tenants/audited/tier",
            Some(json!({"tier": "free"})),
        ),
        ("POST", "/admin/v1/tenants/audited/pause", None),
        ("POST", "/admin/v1/tenants/audited/resume", None),
        ("POST", "/admin/v1/tenants/audited/rotate-kek", None),
        (
            "DELETE",
            &format!("/admin/v1/tenants/audited/keys/{key_id}"),
            None,
        ),
    ] {
        let (s, v) = cluster.admin(method, path, body).await;
        assert_eq!(s, 200, "{method} {path}: {v}");
    }
    // A failed authentication is recorded too (in the platform chain).
    assert_eq!(
        cluster
            .http("GET", "/v1/collections", Some(&key), None)
            .await
            .0,
        401
    );
    let (s, _) = cluster
        .http(
            "GET",
            "/admin/v1/tenants",
            Some("not-the-admin-token"),
            None,
        )
        .await;
    assert_eq!(s, 401);

    let (s, export) = cluster.admin("GET", "/admin/v1/audit/audited", None).await;
    assert_eq!(s, 200);
    let tenant_actions = actions(&export);
    let expected_in_order = [
        "tenant.create audited ok".to_owned(),
        format!("key.create {key_id} ok"),
        "placement.assign audited ok".to_owned(),
        "tenant.set_tier audited ok".to_owned(),
        "tenant.pause audited ok".to_owned(),
        "tenant.resume audited ok".to_owned(),
        "placement.epoch audited ok".to_owned(),
        "kek.rotate audited ok".to_owned(),
        format!("key.revoke {key_id} ok"),
        "audit.export audited ok".to_owned(),
    ];
    let mut at = 0;
    for action in &tenant_actions {
        if at < expected_in_order.len() && *action == expected_in_order[at] {
            at += 1;
        }
    }
    assert_eq!(
        at,
        expected_in_order.len(),
        "missing {:?} in {tenant_actions:#?}",
        expected_in_order.get(at)
    );
    assert!(
        tenant_actions
            .iter()
            .any(|a| a.starts_with("kms.generate_data_key")),
        "key-service answers are audited"
    );
    let (_, platform) = cluster.admin("GET", "/admin/v1/audit/platform", None).await;
    let platform_actions = actions(&platform);
    assert!(platform_actions.contains(&"tenant.create audited ok".to_owned()));
    assert!(
        platform_actions
            .iter()
            .any(|a| a == &format!("auth.failure {key_id} denied")),
        "{platform_actions:#?}"
    );
    assert!(
        platform_actions
            .iter()
            .any(|a| a == "auth.failure admin denied"),
        "{platform_actions:#?}"
    );
    assert!(
        !export.to_string().contains(&key[12..]),
        "the key's secret is never in the chain"
    );

    assert_eq!(export["chain_verified"], true, "{export}");
    assert!(export["verify_error"].is_null(), "{export}");
    // The export verifies offline, with the CLI, with and without the audit key.
    let dir = cluster.dir().to_owned();
    let file = dir.join("export.json");
    std::fs::write(&file, export.to_string()).unwrap();
    let (ok, out) = verify_cli(&file, &[]);
    assert!(ok, "{out}");

    // Truncated export: the last two rows cut, checked against the head exported with it.
    let mut cut = export.clone();
    let rows = cut["rows"].as_array_mut().unwrap();
    rows.truncate(rows.len() - 2);
    std::fs::write(&file, cut.to_string()).unwrap();
    let (ok, out) = verify_cli(&file, &[]);
    assert!(!ok && out.contains("tail was cut"), "{out}");

    // A row edited in the SQLite file (the attacker drops the trigger first), then exported.
    let db = rusqlite::Connection::open(dir.join("coordinator/coordinator.sqlite")).unwrap();
    let triggers: Vec<String> = db
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_rows'",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        db.execute(
            "UPDATE audit_rows SET outcome = 'ok' WHERE chain = 'audited' AND seq = 3",
            []
        )
        .is_err(),
        "the trigger refuses edits"
    );
    for trigger in &triggers {
        db.execute(&format!("DROP TRIGGER {trigger}"), []).unwrap();
    }
    db.execute(
        "UPDATE audit_rows SET actor = 'nobody' WHERE chain = 'audited' AND seq = 3",
        [],
    )
    .unwrap();
    let (_, edited) = cluster.admin("GET", "/admin/v1/audit/audited", None).await;
    assert_eq!(edited["chain_verified"], false, "{edited}");
    assert!(
        edited["verify_error"].as_str().unwrap().contains("row 3"),
        "{edited}"
    );
    std::fs::write(&file, edited.to_string()).unwrap();
    let (ok, out) = verify_cli(&file, &[]);
    assert!(!ok && out.contains("row 3"), "{out}");
    let (_, verdict) = cluster
        .admin("POST", "/admin/v1/audit/audited/verify", None)
        .await;
    assert_eq!(verdict["ok"], false, "{verdict}");

    // A row deleted from the file.
    db.execute(
        "DELETE FROM audit_rows WHERE chain = 'platform' AND seq = 2",
        [],
    )
    .unwrap();
    let (_, deleted) = cluster.admin("GET", "/admin/v1/audit/platform", None).await;
    std::fs::write(&file, deleted.to_string()).unwrap();
    let (ok, out) = verify_cli(&file, &[]);
    assert!(!ok && out.contains("row 2"), "{out}");
    cluster.shutdown().await;
}

/// Makes every audit insert fail, as a full disk or a broken database would, through a trigger a
/// second connection adds to the coordinator's SQLite file; answers a function that removes it.
fn break_audit_writes(cluster: &Cluster) -> impl FnOnce() {
    let path = cluster.dir().join("coordinator/coordinator.sqlite");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(
        "CREATE TRIGGER test_break_audit BEFORE INSERT ON audit_rows
         BEGIN SELECT RAISE(ABORT, 'audit writes are broken by the test'); END;",
    )
    .unwrap();
    move || {
        db.execute_batch("DROP TRIGGER test_break_audit").unwrap();
    }
}

/// INV-18: an admin operation whose audit row cannot be written does not happen. Deleting a
/// tenant used to destroy its keys (and its files) first and fail only at the audit row, leaving a
/// live tenant whose data was gone; a KEK rotation answered 200 without any row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_operation_whose_audit_row_fails_does_not_happen() {
    let cluster = Cluster::start(1).await;
    let key = cluster.tenant("kept", None).await;
    cluster.create_collection(&key, "c", 2).await;
    let (s, _) = cluster
        .http(
            "PUT",
            "/v1/collections/c/points",
            Some(&key),
            Some(json!({"points": [{"id": 1, "vector": [1.0, 0.0]}, {"id": 2, "vector": [0.0, 1.0]}]})),
        )
        .await;
    assert_eq!(s, 200);
    let count = || async {
        cluster
            .http(
                "POST",
                "/v1/collections/c/points/count",
                Some(&key),
                Some(json!({})),
            )
            .await
    };
    assert_eq!(count().await.1["count"], 2);

    let repair = break_audit_writes(&cluster);
    let (s, v) = cluster
        .admin("DELETE", "/admin/v1/tenants/kept", None)
        .await;
    assert!(
        s >= 500,
        "the deletion must fail without its audit row: {s} {v}"
    );
    let (s, v) = cluster
        .admin("POST", "/admin/v1/tenants/kept/rotate-kek", None)
        .await;
    assert!(
        s >= 500,
        "the rotation must fail without its audit row: {s} {v}"
    );
    repair();

    // Nothing was erased: the tenant, its key and its points are all still there.
    let (s, v) = count().await;
    assert_eq!((s, &v["count"]), (200, &json!(2)), "{v}");
    let (s, v) = cluster
        .admin("DELETE", "/admin/v1/tenants/kept", None)
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = count().await;
    assert_eq!(s, 401);
    let (_, export) = cluster.admin("GET", "/admin/v1/audit/kept", None).await;
    let actions: Vec<&str> = export["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert!(
        actions
            .windows(2)
            .any(|w| w == ["tenant.delete", "tenant.erase"]),
        "{actions:?}"
    );
    cluster.shutdown().await;
}

/// INV-18: a deletion whose key destruction fails has still committed (the tenant serves
/// nothing from then on), answers an error, and finishes when run again, audited as
/// `tenant.erase`. The failure is injected by a directory where the erasure writes its scratch
/// file. (The keys used to be destroyed first, so a failure there left the tenant fully alive.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_whose_key_destruction_fails_finishes_when_run_again() {
    let cluster = Cluster::start(1).await;
    let key = cluster.tenant("halfway", None).await;
    cluster.create_collection(&key, "c", 2).await;
    let keks = cluster.dir().join("coordinator/keks");
    let kek_file = keks.join("halfway.keks");
    assert!(kek_file.exists());
    let blocker = keks.join("halfway.keks.erase");
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("x"), b"x").unwrap();

    let (s, v) = cluster
        .admin("DELETE", "/admin/v1/tenants/halfway", None)
        .await;
    assert_eq!(s, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("run the deletion again"),
        "{v}"
    );
    // Deleted already: its key is refused, though its KEK file is still there.
    let (s, _) = cluster
        .http("GET", "/v1/collections/c", Some(&key), None)
        .await;
    assert_eq!(s, 401);
    assert!(kek_file.exists());

    std::fs::remove_dir_all(&blocker).unwrap();
    let (s, v) = cluster
        .admin("DELETE", "/admin/v1/tenants/halfway", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(!kek_file.exists(), "the KEKs are destroyed");
    let (s, _) = cluster
        .admin("DELETE", "/admin/v1/tenants/halfway", None)
        .await;
    assert_eq!(s, 404, "a finished erasure is not found again");
    let (_, export) = cluster.admin("GET", "/admin/v1/audit/halfway", None).await;
    let actions: Vec<&str> = export["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "tenant.delete").count(),
        1,
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| **a == "tenant.erase").count(),
        1,
        "{actions:?}"
    );
    cluster.shutdown().await;
}

/// A tenant id the store refuses leaves no key file behind (the KEK used to be written first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tenant_id_leaves_no_key_file() {
    let cluster = Cluster::start_without_workers(0, |_| {}).await;
    let (s, v) = cluster
        .admin("POST", "/admin/v1/tenants", Some(json!({"id": "platform"})))
        .await;
    assert!((400..500).contains(&s), "{s} {v}");
    let keks = cluster.dir().join("coordinator/keks");
    let files: Vec<_> = std::fs::read_dir(&keks)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "{files:?}");
    cluster.shutdown().await;
}
