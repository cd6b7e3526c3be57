//! Bad input at every route is a clear 4xx (INV-17), and the server keeps serving.

use proto::vaultvec::v1 as api;
use proto::vaultvec::v1::points_client::PointsClient;
use serde_json::{Value, json};
use tests::{Cluster, with_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_client_error_and_nothing_breaks() {
    let cluster = Cluster::start(1).await;
    let key = cluster.tenant("bad-input", None).await;
    let k = Some(key.as_str());
    let (s, _) = cluster
        .http(
            "POST",
            "/v1/collections",
            k,
            Some(json!({"name": "c", "dim": 3, "metric": "cosine"})),
        )
        .await;
    assert_eq!(s, 200);
    let ok_point = json!({"id": 1, "vector": [1.0, 0.0, 0.0]});
    let too_many: Vec<Value> = (0..10_001)
        .map(|i| json!({"id": i, "vector": [1.0, 0.0, 0.0]}))
        .collect();
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            "POST",
            "/v1/collections",
            json!({"name": "Bad Name!", "dim": 3, "metric": "l2"}),
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/collections",
            json!({"name": "d", "dim": 0, "metric": "l2"}),
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/collections",
            json!({"name": "d", "dim": 5000, "metric": "l2"}),
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/collections",
            json!({"name": "d", "dim": 3, "metric": "hamming"}),
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/collections",
            json!({"name": "d", "dim": 3, "metric": "l2", "shards": 4}),
            "invalid_argument",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            json!({"points": [{"id": 1, "vector": [1.0, 0.0]}]}),
            "invalid_argument",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            json!({"points": [{"id": 1, "vector": [1.0, 0.0, 1e39]}]}),
            "invalid_argument",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            json!({"points": []}),
            "invalid_argument",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            json!({"points": too_many}),
            "invalid_argument",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            json!({"points": [{"id": -1, "vector": [1.0, 0.0, 0.0]}]}),
            "invalid_argument",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            json!({"points": [{"id": "x".repeat(129), "vector": [1.0, 0.0, 0.0]}]}),
            "invalid_argument",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            json!({"points": [{"id": 1, "vector": [1.0, 0.0, 0.0], "payload": [1, 2]}]}),
            "invalid_argument",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            json!({"points": [ok_point.clone()], "upsert_mode": "fast"}),
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/collections/c/points/search",
            json!({"vector": [1.0, 0.0, 0.0], "top_k": 0}),
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/collections/c/points/search",
            json!({"vector": [1.0, 0.0, 0.0], "top_k": 1001}),
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/collections/c/points/search",
            json!({"vector": [1.0, 0.0, 0.0], "top_k": 3, "ef": 0}),
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/collections/c/points/search",
            json!({"vector": [1.0, 0.0, 0.0], "top_k": 3, "ef": 5000}),
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/collections/c/points/search",
            json!({"vector": [1.0, 0.0], "top_k": 3}),
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/collections/c/points/search",
            json!({"vector": [], "top_k": 3}),
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/collections/c/points/search",
            json!({"vector": [1.0, 0.0, 0.0], "top_k": 3, "filter": {"must": [{"key": "a", "match": {}}]}}),
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/collections/c/points/search/batch",
            json!({"searches": []}),
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/collections/c/points/get",
            json!({"ids": []}),
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/collections/c/points/delete",
            json!({}),
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/collections/c/points/delete",
            json!({"ids": [1], "filter": {}}),
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/collections/c/points/scroll",
            json!({"limit": 0}),
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/collections/c/points/scroll",
            json!({"limit": 10, "cursor": "not-a-cursor"}),
            "invalid_argument",
        ),
    ];
    for (method, path, body, code) in cases {
        let (s, v) = cluster.http(method, path, k, Some(body.clone())).await;
        assert_eq!(v["error"]["code"], code, "{method} {path} {body}: {s} {v}");
        assert!((400..500).contains(&s), "{method} {path}: {s}");
        assert!(!v["error"]["message"].as_str().unwrap_or("").is_empty());
    }
    // Malformed JSON and a body that is not JSON at all.
    for raw in ["{\"points\": [", "NaN", "[1,2,3]", "\u{0}\u{1}binary"] {
        let response = reqwest::Client::new()
            .put(cluster.url("/v1/collections/c/points"))
            .bearer_auth(&key)
            .body(raw.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{raw:?}");
        let v: Value = response.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_argument");
    }
    // A body over the server-wide limit is refused without being read whole.
    let huge = vec![b' '; 65 << 20];
    let response = reqwest::Client::new()
        .put(cluster.url("/v1/collections/c/points"))
        .bearer_auth(&key)
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    // gRPC: non-finite and bounds.
    let mut points = PointsClient::new(cluster.grpc_channel().await);
    for vector in [
        vec![f32::NAN, 0.0, 0.0],
        vec![f32::INFINITY, 0.0, 0.0],
        vec![0.0, f32::NEG_INFINITY, 0.0],
    ] {
        let status = points
            .upsert(with_key(
                api::UpsertRequest {
                    collection: "c".into(),
                    points: vec![api::Point {
                        id: Some(api::PointId {
                            kind: Some(api::point_id::Kind::Num(1)),
                        }),
                        vector,
                        payload: None,
                    }],
                    idempotency_key: String::new(),
                },
                &key,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    let status = points
        .search(with_key(
            api::SearchRequest {
                collection: "c".into(),
                vector: vec![f32::NAN, 0.0, 0.0],
                top_k: 3,
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = points
        .upsert(with_key(
            api::UpsertRequest {
                collection: "c".into(),
                points: vec![api::Point {
                    id: None,
                    vector: vec![1.0, 0.0, 0.0],
                    payload: None,
                }],
                idempotency_key: String::new(),
            },
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // Still serving, and nothing bad was stored.
    let (s, v) = cluster
        .http(
            "PUT",
            "/v1/collections/c/points",
            k,
            Some(json!({"points": [ok_point]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = cluster
        .http("POST", "/v1/collections/c/points/count", k, None)
        .await;
    assert_eq!(v["count"], 1);
    cluster.shutdown().await;
}
