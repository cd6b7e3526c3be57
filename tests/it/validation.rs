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
    let sent = reqwest::Client::new()
        .put(cluster.url("/v1/collections/c/points"))
        .bearer_auth(&key)
        .body(huge)
        .send()
        .await;
    match sent {
        Ok(response) => assert_eq!(response.status().as_u16(), 413),
        // The server answers 413 from the declared length and closes without reading the body,
        // so a client still writing it may see the connection close before reading the answer.
        // Either way nothing was accepted.
        Err(err) => assert!(err.is_request(), "{err}"),
    }
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

/// `{"a": {"a": .. 1}}` with `levels` objects.
fn nested(levels: usize) -> Value {
    (0..levels).fold(json!(1), |inner, _| json!({ "a": inner }))
}

/// The tenant's placement, `Null` while it has none (no request of it ever reached a worker).
async fn placement(cluster: &Cluster, tenant: &str) -> Value {
    let (s, v) = cluster
        .admin("GET", &format!("/admin/v1/tenants/{tenant}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["placement"].clone()
}

/// INV-23: filters of a few MiB that are refused by a bound are refused by the coordinator, before
/// any worker sees them, so they cannot freeze the worker other tenants share. The aggressor's
/// requests never reach a worker: placement is made at a tenant's first routed request, and it
/// has none afterwards. The victim on the same worker keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_malformed_filters_are_refused_by_the_coordinator_and_the_worker_keeps_serving() {
    let cluster = Cluster::start(1).await;
    let victim = cluster.tenant("victim", None).await;
    let aggressor = cluster.tenant("aggressor", None).await;
    cluster.create_collection(&victim, "c", 3).await;
    let (s, _) = cluster
        .http(
            "PUT",
            "/v1/collections/c/points",
            Some(&victim),
            Some(json!({"points": [{"id": 1, "vector": [1.0, 0.0, 0.0]}]})),
        )
        .await;
    assert_eq!(s, 200);

    // Each about 3 MiB.
    let many: Vec<Value> = (0..1_500_000).map(|_| json!(0)).collect();
    let too_many_values = json!({"must": [{"key": "a", "match": {"any": many}}]});
    // The shape whose conversion cost the square of its size: a 1 MiB key over 1M list elements.
    let long_key = json!({ "k".repeat(1 << 20): vec![0; 1 << 20] });
    let too_deep = (0..60).fold(json!({}), |inner, _| json!({ "must": [inner] }));
    let filters = [
        (too_many_values, "more than the limit of"),
        (long_key, "limit 256"),
        (too_deep, "nested deeper than the limit"),
    ];
    let vector = json!([1.0, 0.0, 0.0]);
    for (filter, message) in &filters {
        let bodies = [
            ("count", json!({ "filter": filter })),
            ("scroll", json!({ "limit": 10, "filter": filter })),
            ("delete", json!({ "filter": filter })),
            (
                "search",
                json!({ "vector": vector, "top_k": 3, "filter": filter }),
            ),
            (
                "search/batch",
                json!({ "searches": [{ "vector": vector, "top_k": 3, "filter": filter }] }),
            ),
        ];
        for (route, body) in bodies {
            let path = format!("/v1/collections/c/points/{route}");
            let (s, v) = cluster
                .http("POST", &path, Some(&aggressor), Some(body))
                .await;
            assert_eq!(s, 400, "{route}: {v}");
            assert_eq!(v["error"]["code"], "invalid_argument", "{route}: {v}");
            let text = v["error"]["message"].as_str().unwrap_or_default();
            assert!(text.contains(message), "{route}: {text}");
            assert!(
                text.len() < 300,
                "{route}: an error message of {} bytes",
                text.len()
            );
            assert_eq!(
                placement(&cluster, "aggressor").await,
                Value::Null,
                "{route}"
            );
            let (s, v) = cluster
                .http(
                    "POST",
                    "/v1/collections/c/points/count",
                    Some(&victim),
                    None,
                )
                .await;
            assert_eq!((s, &v["count"]), (200, &json!(1)), "after {route}: {v}");
        }
    }
    // The same over gRPC.
    let mut points = PointsClient::new(cluster.grpc_channel().await);
    let filter = proto::json::json_to_struct(&filters[1].0).unwrap();
    let status = points
        .count(with_key(
            api::CountRequest {
                collection: "c".into(),
                filter: Some(filter),
            },
            &aggressor,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(placement(&cluster, "aggressor").await, Value::Null);
    assert_eq!(cluster.hub().connected().len(), 1);
    cluster.shutdown().await;
}

/// A payload nested deeper than storage's limit (32 levels) is refused by the coordinator with a
/// message that says so, on both transports; one at the limit is stored and read back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_nesting_is_refused_beyond_the_documented_limit() {
    let cluster = Cluster::start(1).await;
    let key = cluster.tenant("deep-payload", None).await;
    let k = Some(key.as_str());
    let (s, _) = cluster
        .http(
            "POST",
            "/v1/collections",
            k,
            Some(json!({"name": "c", "dim": 2, "metric": "l2"})),
        )
        .await;
    assert_eq!(s, 200);
    for levels in [33, 40, 100] {
        let point = json!({"id": 1, "vector": [1.0, 0.0], "payload": nested(levels)});
        let (s, v) = cluster
            .http(
                "PUT",
                "/v1/collections/c/points",
                k,
                Some(json!({ "points": [point] })),
            )
            .await;
        assert_eq!(s, 400, "{levels}: {v}");
        assert_eq!(
            v["error"]["message"],
            "payload: a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a \
             is nested deeper than the limit of 32 levels",
            "{levels}"
        );
    }
    let mut points = PointsClient::new(cluster.grpc_channel().await);
    let status = points
        .upsert(with_key(
            api::UpsertRequest {
                collection: "c".into(),
                points: vec![api::Point {
                    id: Some(api::PointId {
                        kind: Some(api::point_id::Kind::Num(1)),
                    }),
                    vector: vec![1.0, 0.0],
                    payload: Some(proto::json::json_to_struct(&nested(33)).unwrap()),
                }],
                idempotency_key: String::new(),
            },
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("nested deeper than the limit of 32 levels"),
        "{status:?}"
    );
    let at_limit = nested(32);
    let point = json!({"id": 2, "vector": [1.0, 0.0], "payload": at_limit});
    let (s, v) = cluster
        .http(
            "PUT",
            "/v1/collections/c/points",
            k,
            Some(json!({ "points": [point] })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = cluster
        .http(
            "POST",
            "/v1/collections/c/points/get",
            k,
            Some(json!({"ids": [2], "with_payload": true})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["points"][0]["payload"], at_limit);
    cluster.shutdown().await;
}

/// Duplicate keys inside a filter or a payload are refused, naming the key, as everywhere else;
/// they used to be accepted with the last one winning, which could widen a filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_in_filters_and_payloads_are_refused() {
    let cluster = Cluster::start(1).await;
    let key = cluster.tenant("dup-keys", None).await;
    cluster.create_collection(&key, "c", 2).await;
    let client = reqwest::Client::new();
    let raw = |method: &str, route: &str, body: &'static str| {
        client
            .request(method.parse().unwrap(), cluster.url(route))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases = [
        (
            "POST",
            "/v1/collections/c/points/count",
            r#"{"filter": {"must": [], "must": [{"key": "a", "match": {"value": 1}}]}}"#,
            "duplicate key \"must\"",
        ),
        (
            "POST",
            "/v1/collections/c/points/search",
            r#"{"vector": [1, 0], "top_k": 1, "filter": {"must": [{"key": "a", "key": "b", "match": {"value": 1}}]}}"#,
            "duplicate key \"key\"",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            r#"{"points": [{"id": 1, "vector": [1, 0], "payload": {"x": {"y": 1, "y": 2}}}]}"#,
            "duplicate key \"y\"",
        ),
    ];
    for (method, route, body, message) in cases {
        let response = raw(method, route, body).await.unwrap();
        let status = response.status().as_u16();
        let v: Value = response.json().await.unwrap();
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["code"], "invalid_argument", "{body}: {v}");
        let text = v["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{body}: {text}");
    }
    let (_, v) = cluster
        .http("POST", "/v1/collections/c/points/count", Some(&key), None)
        .await;
    assert_eq!(
        v["count"], 0,
        "the payload with a duplicate key was stored: {v}"
    );
    cluster.shutdown().await;
}

/// A path that is not valid UTF-8 after percent-decoding is a JSON 400 like every other client
/// mistake, not the framework's `text/plain` message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_with_invalid_utf8_gets_the_json_error_body() {
    let cluster = Cluster::start(1).await;
    let key = cluster.tenant("bad-path", None).await;
    let cases = [
        ("PUT", "/v1/collections/%FF/points", key.as_str()),
        ("GET", "/v1/collections/%FF%FE", key.as_str()),
        ("GET", "/admin/v1/tenants/%FF", tests::ADMIN_TOKEN),
    ];
    for (method, path, token) in cases {
        let response = reqwest::Client::new()
            .request(method.parse().unwrap(), cluster.url(path))
            .bearer_auth(token)
            .json(&json!({"points": [{"id": 1, "vector": [1.0]}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{method} {path}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(content_type, "application/json", "{method} {path}");
        let v: Value = response.json().await.unwrap();
        assert_eq!(
            v["error"]["code"], "invalid_argument",
            "{method} {path}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("UTF-8"),
            "{method} {path}: {v}"
        );
    }
    cluster.shutdown().await;
}

/// HNSW parameters out of storage's ranges are a 400 from the coordinator itself, over HTTP and
/// gRPC: with no worker connected, values at the edges of the ranges get as far as routing
/// (503, no worker), values past them never leave the coordinator (400, naming the range).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_parameters_out_of_range_are_refused_before_any_worker() {
    use proto::vaultvec::v1::collections_client::CollectionsClient;
    let cluster = Cluster::start_without_workers(1, |_| {}).await;
    let key = cluster.tenant("hnsw-params", None).await;
    // (m, ef_construction, ef, the range named in the refusal, or None when it is in range)
    type Case = (Option<u32>, Option<u32>, Option<u32>, Option<&'static str>);
    let cases: Vec<Case> = vec![
        (Some(2), Some(4), Some(1), None),
        (Some(64), Some(1024), Some(4096), None),
        (Some(64), Some(64), None, None),
        (Some(1), None, None, Some("m 1 is outside 2..=64")),
        (Some(0), None, None, Some("m 0 is outside 2..=64")),
        (Some(65), None, None, Some("m 65 is outside 2..=64")),
        (Some(4_000_000), None, None, Some("outside 2..=64")),
        (
            None,
            Some(3),
            None,
            Some("ef_construction 3 is outside 16..=1024"),
        ),
        (
            None,
            Some(1025),
            None,
            Some("ef_construction 1025 is outside"),
        ),
        (
            Some(32),
            Some(31),
            None,
            Some("ef_construction 31 is outside 32..=1024"),
        ),
        (None, None, Some(0), Some("ef 0 is outside 1..=4096")),
        (None, None, Some(4097), Some("ef 4097 is outside 1..=4096")),
    ];
    let channel = cluster.grpc_channel().await;
    let mut grpc = CollectionsClient::new(channel);
    for (m, ef_construction, ef, refusal) in cases {
        let case = format!("m {m:?}, ef_construction {ef_construction:?}, ef {ef:?}");
        let (s, v) = cluster
            .http(
                "POST",
                "/v1/collections",
                Some(&key),
                Some(json!({"name": "c", "dim": 3, "metric": "l2",
                            "m": m, "ef_construction": ef_construction, "ef": ef})),
            )
            .await;
        let status = grpc
            .create_collection(with_key(
                api::CreateCollectionRequest {
                    name: "c".into(),
                    config: Some(api::CollectionConfig {
                        dim: 3,
                        metric: api::Metric::L2 as i32,
                        m,
                        ef_construction,
                        ef,
                    }),
                },
                &key,
            ))
            .await
            .expect_err("no worker, so nothing succeeds");
        match refusal {
            None => {
                assert_eq!(s, 503, "{case}: {v}");
                assert_eq!(
                    status.code(),
                    tonic::Code::Unavailable,
                    "{case}: {status:?}"
                );
            }
            Some(range) => {
                assert_eq!(s, 400, "{case}: {v}");
                assert_eq!(v["error"]["code"], "invalid_argument", "{case}: {v}");
                let message = v["error"]["message"].as_str().unwrap();
                assert!(message.contains(range), "{case}: {message}");
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "{case}");
                assert_eq!(status.message(), message, "{case}");
            }
        }
    }
    // A search's ef, alone and in a batch, the same way.
    let mut points = PointsClient::new(cluster.grpc_channel().await);
    for (ef, refusal) in [
        (1, None),
        (4096, None),
        (0, Some("ef 0")),
        (4097, Some("ef 4097")),
    ] {
        let search = json!({"vector": [1.0, 0.0, 0.0], "top_k": 1, "ef": ef});
        let batch = json!({ "searches": [search.clone()] });
        for (path, body) in [("search", search), ("search/batch", batch)] {
            let path = format!("/v1/collections/c/points/{path}");
            let (s, v) = cluster.http("POST", &path, Some(&key), Some(body)).await;
            match refusal {
                None => assert_eq!(s, 503, "{path} ef {ef}: {v}"),
                Some(named) => {
                    assert_eq!(s, 400, "{path} ef {ef}: {v}");
                    let message = v["error"]["message"].as_str().unwrap();
                    assert!(message.contains(named), "{message}");
                    assert!(message.contains("outside 1..=4096"), "{message}");
                }
            }
        }
        let status = points
            .search(with_key(
                api::SearchRequest {
                    collection: "c".into(),
                    vector: vec![1.0, 0.0, 0.0],
                    top_k: 1,
                    ef: Some(ef),
                    ..Default::default()
                },
                &key,
            ))
            .await
            .expect_err("no worker, so nothing succeeds");
        let expected = match refusal {
            None => tonic::Code::Unavailable,
            Some(_) => tonic::Code::InvalidArgument,
        };
        assert_eq!(status.code(), expected, "ef {ef}: {status:?}");
    }
    cluster.shutdown().await;
}
