//! Isolation probes: tenant A's key against every route with tenant B's names, ids and cursors.

use serde_json::{Value, json};
use tests::Cluster;

/// Every data route, with a body naming `collection`.
fn probes(collection: &str) -> Vec<(&'static str, String, Option<Value>)> {
    let c = collection;
    vec![
        ("GET", format!("/v1/collections/{c}"), None),
        ("DELETE", format!("/v1/collections/{c}"), None),
        (
            "PUT",
            format!("/v1/collections/{c}/points"),
            Some(json!({"points": [{"id": "b-1", "vector": [0.0, 1.0, 0.0]}]})),
        ),
        (
            "POST",
            format!("/v1/collections/{c}/points/get"),
            Some(json!({"ids": ["b-1"], "with_payload": true})),
        ),
        (
            "POST",
            format!("/v1/collections/{c}/points/delete"),
            Some(json!({"ids": ["b-1"]})),
        ),
        (
            "POST",
            format!("/v1/collections/{c}/points/scroll"),
            Some(json!({"limit": 10})),
        ),
        (
            "POST",
            format!("/v1/collections/{c}/points/count"),
            Some(json!({})),
        ),
        (
            "POST",
            format!("/v1/collections/{c}/points/search"),
            Some(json!({"vector": [0.0, 1.0, 0.0], "top_k": 3})),
        ),
        (
            "POST",
            format!("/v1/collections/{c}/points/search/batch"),
            Some(json!({"searches": [{"vector": [0.0, 1.0, 0.0], "top_k": 3}]})),
        ),
    ]
}

fn normalise(v: &Value, name: &str) -> String {
    v.to_string().replace(name, "<NAME>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_names_answer_exactly_like_missing_ones() {
    let cluster = Cluster::start(2).await;
    let key_a = cluster.tenant("tenant-a", None).await;
    let key_b = cluster.tenant("tenant-b", None).await;
    let (s, _) = cluster
        .http(
            "POST",
            "/v1/collections",
            Some(&key_b),
            Some(json!({"name": "secret", "dim": 3, "metric": "cosine"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = cluster
        .http("PUT", "/v1/collections/secret/points", Some(&key_b),
              Some(json!({"points": [{"id": "b-1", "vector": [0.0, 1.0, 0.0], "payload": {"owner": "b"}}]})))
        .await;
    assert_eq!(s, 200);

    for ((method, path, body), (_, ghost_path, ghost_body)) in
        probes("secret").into_iter().zip(probes("ghost"))
    {
        let foreign = cluster.http(method, &path, Some(&key_a), body).await;
        let missing = cluster
            .http(method, &ghost_path, Some(&key_a), ghost_body)
            .await;
        assert_eq!(foreign.0, 404, "{method} {path}: {}", foreign.1);
        assert_eq!(
            (foreign.0, normalise(&foreign.1, "secret")),
            (missing.0, normalise(&missing.1, "ghost")),
            "{method} {path} must answer like a missing name"
        );
        assert!(
            !foreign.1.to_string().contains("b-1"),
            "{method} {path} leaked an id"
        );
    }
    // Headers that try to pick a tenant are ignored: the key decides (INV-13).
    for header in ["x-tenant-id", "x-internal-tenant", "x-forwarded-for"] {
        let response = reqwest::Client::new()
            .get(cluster.url("/v1/collections/secret"))
            .bearer_auth(&key_a)
            .header(header, "tenant-b")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 404, "{header}");
    }
    let (_, list) = cluster
        .http("GET", "/v1/collections", Some(&key_a), None)
        .await;
    assert_eq!(list, json!({"collections": []}));

    // B's data is untouched by all of A's probes, including the PUT and DELETE.
    let (s, v) = cluster
        .http(
            "POST",
            "/v1/collections/secret/points/get",
            Some(&key_b),
            Some(json!({"ids": ["b-1"], "with_payload": true})),
        )
        .await;
    assert_eq!(
        (s, v["points"][0]["payload"].clone()),
        (200, json!({"owner": "b"}))
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_of_another_tenant_reads_only_your_own_points() {
    let cluster = Cluster::start(1).await;
    let key_a = cluster.tenant("cursor-a", None).await;
    let key_b = cluster.tenant("cursor-b", None).await;
    // The same ids in both tenants, told apart by their payloads: B's cursor is a position A's
    // collection also has, so an empty answer cannot pass for isolation.
    for (key, owner) in [(&key_a, "a"), (&key_b, "b")] {
        let (s, _) = cluster
            .http(
                "POST",
                "/v1/collections",
                Some(key),
                Some(json!({"name": "shared", "dim": 2, "metric": "l2"})),
            )
            .await;
        assert_eq!(s, 200);
        let points: Vec<Value> = (0..20)
            .map(|i| json!({"id": format!("p-{i:02}"), "vector": [i as f32, 1.0], "payload": {"owner": owner}}))
            .collect();
        let (s, _) = cluster
            .http(
                "PUT",
                "/v1/collections/shared/points",
                Some(key),
                Some(json!({"points": points})),
            )
            .await;
        assert_eq!(s, 200);
    }
    let (_, page) = cluster
        .http(
            "POST",
            "/v1/collections/shared/points/scroll",
            Some(&key_b),
            Some(json!({"limit": 5})),
        )
        .await;
    let cursor = page["next_cursor"]
        .as_str()
        .expect("B has more pages")
        .to_owned();
    let (s, v) = cluster
        .http(
            "POST",
            "/v1/collections/shared/points/scroll",
            Some(&key_a),
            Some(json!({"limit": 100, "cursor": cursor, "with_payload": true})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let points = v["points"].as_array().unwrap();
    let ids: Vec<&str> = points.iter().map(|p| p["id"].as_str().unwrap()).collect();
    let expected: Vec<String> = (5..20).map(|i| format!("p-{i:02}")).collect();
    assert_eq!(ids, expected, "the cursor is only a position");
    assert!(
        points.iter().all(|p| p["payload"]["owner"] == "a"),
        "A read B's points: {v}"
    );
    cluster.shutdown().await;
}

/// A point of dim 3 with about 8 KB of payload.
fn heavy(id: u64) -> Value {
    json!({"id": id, "vector": [id as f32, 1.0, 0.0], "payload": {"pad": "x".repeat(8_000)}})
}

/// A tenant whose tier allows 40,000 stored bytes (about four 8 KB points) is refused once full,
/// over HTTP with the same 429 as a points quota; a tenant of another tier on the same worker
/// keeps writing and searching; overwrites, deletes and a tier change behave as the quota says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_quota_refuses_a_full_tenant_and_leaves_its_neighbour_alone() {
    let mut cluster = Cluster::start_without_workers(1, |config| {
        let mut small = config.tiers["pro"].clone();
        small.max_stored_bytes = 40_000;
        config.tiers.insert("small".into(), small);
    })
    .await;
    cluster.start_worker(0).await;
    let full = cluster.tenant("full", Some("small")).await;
    let neighbour = cluster.tenant("neighbour", None).await;
    for key in [&full, &neighbour] {
        let (s, v) = cluster
            .http(
                "POST",
                "/v1/collections",
                Some(key),
                Some(json!({"name": "docs", "dim": 3, "metric": "l2"})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let put = |key: &str, points: Vec<Value>| {
        let key = key.to_owned();
        let cluster = &cluster;
        async move {
            cluster
                .http(
                    "PUT",
                    "/v1/collections/docs/points",
                    Some(&key),
                    Some(json!({ "points": points })),
                )
                .await
        }
    };
    let (s, v) = put(&full, (1..=4).map(heavy).collect()).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = put(&full, vec![heavy(5)]).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["code"], "resource_exhausted", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("quota of 40000 bytes"), "{message}");

    // The neighbour stores ten times as much and searches, undisturbed.
    let (s, v) = put(&neighbour, (1..=40).map(heavy).collect()).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = cluster
        .http(
            "POST",
            "/v1/collections/docs/points/search",
            Some(&neighbour),
            Some(json!({"vector": [40.0, 1.0, 0.0], "top_k": 1})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["points"][0]["id"], 40, "{v}");

    // The full tenant may still overwrite what it has; a delete makes room.
    let (s, v) = put(&full, vec![heavy(2)]).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = cluster
        .http(
            "POST",
            "/v1/collections/docs/points/delete",
            Some(&full),
            Some(json!({"ids": [1]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = put(&full, vec![heavy(5)]).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = put(&full, vec![heavy(6)]).await;
    assert_eq!(s, 429);

    // A tier without a byte quota lifts it.
    let (s, v) = cluster
        .admin(
            "PUT",
            "/admin/v1/tenants/full/tier",
            Some(json!({"tier": "pro"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = put(&full, vec![heavy(6)]).await;
    assert_eq!(s, 200, "{v}");
    cluster.shutdown().await;
}
