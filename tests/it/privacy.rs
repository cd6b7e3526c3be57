//! Privacy requests: a tenant's data exported as streamed JSON lines (every collection's points,
//! vectors and payloads, nothing of another tenant's, an end line with the counts), audited; an
//! entity's erasure from every collection and copy, and a tenant's deletion, each answered with a
//! receipt naming its audit row.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_cut_short_by_its_worker_ends_without_its_end_line() {
    let mut cluster = Cluster::start(1).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "big", 2048).await;
    // About 28 MB of JSON lines: far more than the sockets and buffers between the coordinator
    // and this client hold, so the export is still reading pages from the worker when it stops.
    let points: Vec<Value> = (0..2000u64)
        .map(|id| json!({"id": id, "vector": vec![id as f32 + 0.5; 2048]}))
        .collect();
    put(&cluster, &key, "big", points).await;
    let mut response = reqwest::Client::new()
        .get(cluster.url("/admin/v1/tenants/acme/export"))
        .bearer_auth(tests::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().expect("a first piece");
    assert!(!first.is_empty());
    cluster.stop_worker(0).await;
    let mut text = first.to_vec();
    let mut cut = false;
    loop {
        match response.chunk().await {
            Ok(Some(piece)) => text.extend_from_slice(&piece),
            Ok(None) => break,
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&text);
    assert!(
        !text.contains("\"end\""),
        "a cut export carries an end line"
    );
    assert!(cut, "the stream ended as if whole");
    let whole_lines = text.lines().filter(|l| l.ends_with('}')).count();
    assert!(whole_lines < 2000, "{whole_lines} points before the cut");
    cluster.shutdown().await;
}

/// Two copies of every `pro` tenant; the entity is named by a nested payload field.
fn two_copies_nested_entity(config: &mut coordinator::config::Config) {
    config.tiers.get_mut("pro").expect("pro tier").replicas = 2;
    config.privacy.entity_field = "subject.id".into();
}

/// Points `0..n` of dimension `dim`, every `every`-th about `entity`, the others about someone
/// else.
fn about(n: u64, dim: usize, every: u64, entity: &str) -> Vec<Value> {
    (0..n)
        .map(|id| {
            let subject = if id.is_multiple_of(every) {
                entity.to_owned()
            } else {
                format!("p-{id}")
            };
            let vector: Vec<f32> = (0..dim).map(|c| (id as f32) * 0.5 + c as f32).collect();
            json!({"id": id, "vector": vector, "payload": {"subject": {"id": subject}, "n": id}})
        })
        .collect()
}

async fn count(cluster: &Cluster, key: &str, collection: &str, filter: Option<Value>) -> u64 {
    let body = match filter {
        Some(filter) => json!({ "filter": filter }),
        None => json!({}),
    };
    let (status, body) = cluster
        .http(
            "POST",
            &format!("/v1/collections/{collection}/points/count"),
            Some(key),
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["count"].as_u64().unwrap()
}

fn naming(entity: &str) -> Value {
    json!({ "must": [{ "key": "subject.id", "match": { "value": entity } }] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entity_erasure_removes_its_points_from_every_copy_and_answers_a_receipt() {
    use sha2::Digest;
    let mut cluster = Cluster::start_without_workers(2, two_copies_nested_entity).await;
    cluster.start_worker(0).await;
    cluster.start_worker(1).await;
    let acme = cluster.tenant("acme", Some("pro")).await;
    let beta = cluster.tenant("beta", Some("pro")).await;
    cluster.tenant("unused", Some("pro")).await;
    cluster.create_collection(&acme, "a", 4).await;
    cluster.create_collection(&acme, "b", 3).await;
    cluster.create_collection(&beta, "a", 4).await;
    put(&cluster, &acme, "a", about(300, 4, 10, "person-7")).await;
    put(&cluster, &acme, "b", about(20, 3, 4, "person-7")).await;
    put(&cluster, &beta, "a", about(10, 4, 1, "person-7")).await;

    let (status, receipt) = cluster
        .admin("DELETE", "/admin/v1/tenants/acme/entities/person-7", None)
        .await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["entity_field"], "subject.id");
    assert_eq!(receipt["points"], 35, "30 in a, 5 in b: {receipt}");
    let per: Vec<(&str, u64)> = receipt["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["collection"].as_str().unwrap(),
                c["points"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(per, [("a", 30), ("b", 5)]);
    assert!(receipt["files_deleted"].as_u64().unwrap() >= 2, "{receipt}");
    assert!(
        receipt["keys_destroyed"].as_u64().unwrap() >= 1,
        "{receipt}"
    );

    // Gone from both copies (reads go to the copies in turn), the rest all there; another
    // tenant's points about the same entity are untouched.
    for _ in 0..4 {
        assert_eq!(
            count(&cluster, &acme, "a", Some(naming("person-7"))).await,
            0
        );
        assert_eq!(count(&cluster, &acme, "a", None).await, 270);
        assert_eq!(count(&cluster, &acme, "b", None).await, 15);
    }
    assert_eq!(
        count(&cluster, &beta, "a", Some(naming("person-7"))).await,
        10
    );

    // The receipt names the audit row, which keeps the entity's digest, never the id.
    let (_, chain) = cluster.admin("GET", "/admin/v1/audit/acme", None).await;
    assert_eq!(chain["chain_verified"], true, "{chain}");
    let rows = super::cluster::audit_rows(&chain, "tenant.erase_entity");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["seq"], receipt["audit_row"]["seq"]);
    assert_eq!(rows[0]["hash"], receipt["audit_row"]["hash"]);
    assert_eq!(
        rows[0]["details"]["entity_sha256"],
        hex::encode(sha2::Sha256::digest(b"person-7"))
    );
    assert_eq!(rows[0]["details"]["points"], 35);
    assert!(
        !chain.to_string().contains("person-7"),
        "the id is in the chain"
    );

    // Again: nothing left to remove. A tenant never placed has nothing either.
    let (status, again) = cluster
        .admin("DELETE", "/admin/v1/tenants/acme/entities/person-7", None)
        .await;
    assert_eq!((status, &again["points"]), (200, &json!(0)), "{again}");
    let (status, unused) = cluster
        .admin("DELETE", "/admin/v1/tenants/unused/entities/person-7", None)
        .await;
    assert_eq!((status, &unused["points"]), (200, &json!(0)), "{unused}");

    // Bad requests.
    let long = "x".repeat(257);
    for (path, want) in [
        (format!("/admin/v1/tenants/acme/entities/{long}"), 400),
        ("/admin/v1/tenants/acme/entities/a%0Ab".to_owned(), 400),
        ("/admin/v1/tenants/nobody/entities/person-7".to_owned(), 404),
    ] {
        let (status, body) = cluster.admin("DELETE", &path, None).await;
        assert_eq!(status, want, "{path}: {body}");
    }
    let (status, _) = cluster
        .http(
            "DELETE",
            "/admin/v1/tenants/acme/entities/person-7",
            Some("wrong-token"),
            None,
        )
        .await;
    assert_eq!(status, 401);

    // A tenant's deletion answers its receipt too: what it held, the files its copies deleted,
    // and its audit row.
    let (status, erased) = cluster
        .admin("DELETE", "/admin/v1/tenants/beta", None)
        .await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(erased["keys_destroyed"], true);
    assert_eq!(erased["points"], 10);
    assert_eq!(erased["files_deleted"], true);
    assert!(
        erased["kek_versions_destroyed"].as_u64().unwrap() >= 1,
        "{erased}"
    );
    // Two copies, each with at least a manifest and a WAL.
    assert!(erased["files_removed"].as_u64().unwrap() >= 4, "{erased}");
    let (_, chain) = cluster.admin("GET", "/admin/v1/audit/beta", None).await;
    let rows = super::cluster::audit_rows(&chain, "tenant.erase");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["seq"], erased["audit_row"]["seq"]);
    cluster.shutdown().await;
}
