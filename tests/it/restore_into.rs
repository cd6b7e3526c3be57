//! A snapshot restored into another tenant, through the admin API against a real worker: the
//! target answers exactly what the source held when the snapshot was taken, every collection
//! with its configuration, under its own keys (no DEK of the source's files encrypts any of its
//! files, and every file names the target); the source is untouched. Refused, with nothing
//! left in the target: its own tenant named as `into`, an unknown or paused target, a target that
//! has collections, a tampered archive, and a target whose tier cannot hold the data (the
//! collections the copy created are removed).

use serde_json::{Value, json};
use tests::Cluster;

use super::snapshots::{
    archive_path, audit_actions, coordinator_dir, count, deks, files_under, key_service, put,
    snapshot_id, tag, tenant_dir,
};

async fn restore_into(cluster: &Cluster, tenant: &str, id: &str, into: &str) -> (u16, Value) {
    cluster
        .admin(
            "POST",
            &format!("/admin/v1/tenants/{tenant}/snapshots/{id}/restore"),
            Some(json!({ "into": into })),
        )
        .await
}

async fn collections(cluster: &Cluster, key: &str) -> Vec<Value> {
    let (status, body) = cluster
        .http("GET", "/v1/collections", Some(key), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["collections"].as_array().unwrap().clone()
}

/// No extracted archive is left in the snapshot store.
fn no_scratch_left(cluster: &Cluster) {
    let dir = coordinator_dir(cluster).join("snapshots");
    let left: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the snapshot store: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_restores_into_another_tenant_under_that_tenants_own_keys() {
    let cluster = Cluster::start(1).await;
    let acme = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&acme, "docs", 4).await;
    put(&cluster, &acme, 0..300, "v1").await;
    let (status, body) = cluster
        .http(
            "POST",
            "/v1/collections",
            Some(&acme),
            Some(json!({"name": "small", "dim": 3, "metric": "cosine", "m": 8, "ef_construction": 50})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = cluster
        .http(
            "PUT",
            "/v1/collections/small/points",
            Some(&acme),
            Some(json!({"points": [
                {"id": "a", "vector": [1.0, 0.0, 0.0], "payload": {"n": 1, "deep": {"x": [1, 2]}}},
                {"id": "b", "vector": [0.0, 1.0, 0.0]},
            ]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = snapshot_id(&cluster, "acme").await;
    // Written after the snapshot: not in the copy.
    put(&cluster, &acme, 0..10, "v2").await;
    put(&cluster, &acme, 300..350, "later").await;

    let copy = cluster.tenant("acme-copy", Some("pro")).await;
    let (status, body) = restore_into(&cluster, "acme", &id, "acme-copy").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tenant"], "acme-copy", "{body}");
    assert_eq!(body["from_tenant"], "acme", "{body}");
    assert_eq!(body["points"], 302, "{body}");
    assert_eq!(
        body["collections"],
        json!([{"name": "docs", "points": 300}, {"name": "small", "points": 2}]),
        "{body}"
    );
    assert_eq!(body["audit_row"]["chain"], "acme-copy", "{body}");
    no_scratch_left(&cluster);

    // The copy answers what acme held at the snapshot.
    assert_eq!(count(&cluster, &copy).await, 300);
    assert_eq!(tag(&cluster, &copy, 5).await.as_deref(), Some("v1"));
    assert_eq!(tag(&cluster, &copy, 299).await.as_deref(), Some("v1"));
    assert_eq!(tag(&cluster, &copy, 300).await, None);
    let listed = collections(&cluster, &copy).await;
    let small = listed.iter().find(|c| c["name"] == "small").unwrap();
    assert_eq!(
        (
            &small["dim"],
            &small["metric"],
            &small["m"],
            &small["ef_construction"]
        ),
        (&json!(3), &json!("cosine"), &json!(8), &json!(50)),
        "{small}"
    );
    let (status, body) = cluster
        .http(
            "POST",
            "/v1/collections/small/points/get",
            Some(&copy),
            Some(json!({"ids": ["a"], "with_payload": true, "with_vector": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["points"][0]["payload"],
        json!({"n": 1, "deep": {"x": [1, 2]}})
    );
    let (status, body) = cluster
        .http(
            "POST",
            "/v1/collections/docs/points/search",
            Some(&copy),
            Some(json!({"vector": [42.0, 1.0, -1.0, 0.5], "top_k": 1})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["points"][0]["id"], 42, "{body}");
    // The copy takes writes of its own; acme is untouched.
    put(&cluster, &copy, 1000..1010, "copy").await;
    assert_eq!(count(&cluster, &copy).await, 310);
    assert_eq!(count(&cluster, &acme).await, 350);
    assert_eq!(tag(&cluster, &acme, 5).await.as_deref(), Some("v2"));

    // Under its own keys: every file names acme-copy and decrypts with its KEK, and no DEK of
    // the snapshot's files encrypts any of them.
    let keys = key_service(&cluster);
    let copy_files = files_under(&tenant_dir(&cluster, 0, "acme-copy"));
    let copy_deks = deks(&keys, "acme-copy", &copy_files);
    assert!(copy_deks.len() >= 2, "{:?}", copy_files.keys());
    let archive = std::fs::read(archive_path(&cluster, "acme", &id)).unwrap();
    let mut source_files = std::collections::BTreeMap::new();
    let mut entries = tar::Archive::new(archive.as_slice());
    for entry in entries.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if let Some(name) = path.strip_prefix("files/") {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            source_files.insert(name.to_owned(), bytes);
        }
    }
    let source_deks = deks(&keys, "acme", &source_files);
    assert!(!source_deks.is_empty());
    for dek in copy_deks.keys() {
        assert!(!source_deks.contains_key(dek), "a DEK of acme's is reused");
    }

    let read = audit_actions(&cluster, "acme", "snapshot.read").await;
    assert_eq!(read.len(), 1, "{read:?}");
    assert_eq!(read[0]["details"]["into"], "acme-copy", "{read:?}");
    assert!(read[0]["details"]["keys_unwrapped"].as_u64().unwrap() >= 2);
    let restored = audit_actions(&cluster, "acme-copy", "snapshot.restore").await;
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert_eq!(restored[0]["outcome"], "ok");
    assert_eq!(restored[0]["details"]["from_tenant"], "acme");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_into_another_tenant_is_refused_with_nothing_left_in_it() {
    let cluster = Cluster::start(1).await;
    let acme = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&acme, "docs", 4).await;
    cluster.create_collection(&acme, "more", 4).await;
    put(&cluster, &acme, 0..1200, "v1").await;
    let id = snapshot_id(&cluster, "acme").await;

    let (status, body) = restore_into(&cluster, "acme", &id, "acme").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = restore_into(&cluster, "acme", &id, "nobody").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = restore_into(&cluster, "acme", &id, "../etc").await;
    assert!((400..500).contains(&status), "{status} {body}");

    // A target that has a collection already.
    let busy = cluster.tenant("busy", Some("pro")).await;
    cluster.create_collection(&busy, "mine", 4).await;
    let (status, body) = restore_into(&cluster, "acme", &id, "busy").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(collections(&cluster, &busy).await.len(), 1);

    // A paused target.
    cluster.tenant("sleepy", Some("pro")).await;
    let (status, body) = cluster
        .admin("POST", "/admin/v1/tenants/sleepy/pause", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = restore_into(&cluster, "acme", &id, "sleepy").await;
    assert_eq!(status, 409, "{body}");

    // A target whose tier holds 1,000 points: the copy stops at the quota and the collection
    // it created is removed.
    let tiny = cluster.tenant("tiny", Some("free")).await;
    let (status, body) = restore_into(&cluster, "acme", &id, "tiny").await;
    assert_eq!(status, 429, "{body}");
    assert!(collections(&cluster, &tiny).await.is_empty());
    let failed = audit_actions(&cluster, "tiny", "snapshot.restore").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["outcome"], "error", "{failed:?}");
    no_scratch_left(&cluster);

    // A tampered archive: refused before anything is created in the target.
    let fresh = cluster.tenant("fresh", Some("pro")).await;
    let path = archive_path(&cluster, "acme", &id);
    let mut bytes = std::fs::read(&path).unwrap();
    // A bit in the middle of the first file's data.
    let at = {
        let mut archive = tar::Archive::new(bytes.as_slice());
        let entry = archive
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .find(|e| e.path().unwrap().starts_with("files/"))
            .unwrap();
        (entry.raw_file_position() + entry.size() / 2) as usize
    };
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let (status, body) = restore_into(&cluster, "acme", &id, "fresh").await;
    assert!((400..500).contains(&status), "{status} {body}");
    assert!(collections(&cluster, &fresh).await.is_empty());
    no_scratch_left(&cluster);
    cluster.shutdown().await;
}
