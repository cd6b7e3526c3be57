//! Privacy requests: a tenant's data exported as streamed JSON lines (every collection's points,
//! vectors and payloads, nothing of another tenant's, an end line with the counts), audited.

use std::collections::HashMap;

use serde_json::{Value, json};
use tests::Cluster;

async fn put(cluster: &Cluster, key: &str, collection: &str, points: Vec<Value>) {
    for chunk in points.chunks(100) {
        let (status, body) = cluster
            .http(
                "PUT",
                &format!("/v1/collections/{collection}/points"),
                Some(key),
                Some(json!({ "points": chunk })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

async fn export(cluster: &Cluster, tenant: &str) -> (u16, String, String) {
    let response = reqwest::Client::new()
        .get(cluster.url(&format!("/admin/v1/tenants/{tenant}/export")))
        .bearer_auth(tests::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, kind, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_export_holds_every_point_of_its_own_and_nothing_else() {
    let cluster = Cluster::start(1).await;
    let acme = cluster.tenant("acme", Some("pro")).await;
    let beta = cluster.tenant("beta", Some("pro")).await;
    cluster.tenant("empty", Some("pro")).await;
    cluster.create_collection(&acme, "a", 4).await;
    cluster.create_collection(&acme, "b", 3).await;
    cluster.create_collection(&beta, "a", 4).await;
    let mut written: HashMap<(String, u64), Value> = HashMap::new();
    // 150 points: more than two pages of the export.
    let a: Vec<Value> = (0..150u64)
        .map(|id| {
            let p = json!({"id": id, "vector": [id as f32, 0.5, -1.0, 2.0], "payload": {"n": id, "tag": format!("t{}", id % 3)}});
            written.insert(("a".into(), id), p.clone());
            p
        })
        .collect();
    put(&cluster, &acme, "a", a).await;
    let b: Vec<Value> = (0..10u64)
        .map(|id| {
            let p = json!({"id": id + 1000, "vector": [1.0, id as f32, 3.0]});
            written.insert(("b".into(), id + 1000), p.clone());
            p
        })
        .collect();
    put(&cluster, &acme, "b", b).await;
    put(
        &cluster,
        &beta,
        "a",
        vec![json!({"id": 7, "vector": [9.0, 9.0, 9.0, 9.0], "payload": {"secret": "beta's"}})],
    )
    .await;

    let (status, kind, text) = export(&cluster, "acme").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(kind, "application/x-ndjson");
    assert!(
        !text.contains("beta's"),
        "another tenant's data in the export"
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (end, points) = lines.split_last().unwrap();
    assert_eq!(end, &json!({"end": {"collections": 2, "points": 160}}));
    assert_eq!(points.len(), 160);
    for line in points {
        let collection = line["collection"].as_str().unwrap().to_owned();
        let id = line["id"].as_u64().unwrap();
        let want = written
            .get(&(collection.clone(), id))
            .unwrap_or_else(|| panic!("{line} was never written"));
        assert_eq!(line["vector"], want["vector"], "{line}");
        assert_eq!(line["payload"], want["payload"], "{line}");
    }

    // A tenant never used exports only its end line; unknown and paused ones are refused.
    let (status, _, text) = export(&cluster, "empty").await;
    assert_eq!(
        (status, text.as_str()),
        (200, "{\"end\":{\"collections\":0,\"points\":0}}\n")
    );
    assert_eq!(export(&cluster, "nobody").await.0, 404);
    assert_eq!(
        cluster
            .admin("POST", "/admin/v1/tenants/beta/pause", None)
            .await
            .0,
        200
    );
    let (status, _, text) = export(&cluster, "beta").await;
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("paused"), "{text}");

    let (_, chain) = cluster.admin("GET", "/admin/v1/audit/acme", None).await;
    let rows = super::cluster::audit_rows(&chain, "tenant.export");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["details"]["collections"], json!(["a", "b"]));
    cluster.shutdown().await;
}
