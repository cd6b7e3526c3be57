//! The same data scenario over HTTP and over gRPC gives identical results.

use proto::vaultvec::v1 as api;
use proto::vaultvec::v1::collections_client::CollectionsClient;
use proto::vaultvec::v1::points_client::PointsClient;
use serde_json::{Value, json};
use tests::{Cluster, with_key};

const DIM: usize = 8;

fn vector(i: u64) -> Vec<f32> {
    // Deterministic, spread out, finite.
    (0..DIM)
        .map(|d| (((i * 31 + d as u64 * 17) % 97) as f32 / 97.0) - 0.5)
        .collect()
}

fn color(i: u64) -> &'static str {
    ["red", "green", "blue"][(i % 3) as usize]
}

fn ids_of(points: &Value) -> Vec<u64> {
    points
        .as_array()
        .expect("points array")
        .iter()
        .map(|p| p["id"].as_u64().expect("numeric id"))
        .collect()
}

fn grpc_ids(points: &[api::ScoredPoint]) -> Vec<u64> {
    points
        .iter()
        .map(|p| match p.id.as_ref().and_then(|id| id.kind.clone()) {
            Some(api::point_id::Kind::Num(n)) => n,
            other => panic!("unexpected id {other:?}"),
        })
        .collect()
}

fn red_filter() -> Value {
    json!({ "must": [ { "key": "color", "match": { "value": "red" } } ] })
}

fn to_struct(v: &Value) -> prost_types::Struct {
    proto::json::json_to_struct(v).expect("object")
}

/// What one transport observed, rendered the same way for both.
#[derive(Debug, PartialEq)]
struct Observed {
    count_all: u64,
    count_red: u64,
    search: Vec<u64>,
    search_red: Vec<u64>,
    deleted: u64,
    count_after_delete: u64,
    scrolled: Vec<u64>,
    payload_of_3: Value,
}

async fn over_http(cluster: &Cluster, key: &str) -> Observed {
    let k = Some(key);
    let (s, v) = cluster
        .http(
            "POST",
            "/v1/collections",
            k,
            Some(json!({"name": "docs", "dim": DIM, "metric": "l2"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let points: Vec<Value> = (0..200u64)
        .map(|i| json!({"id": i, "vector": vector(i), "payload": {"color": color(i), "n": i}}))
        .collect();
    let (s, v) = cluster
        .http(
            "PUT",
            "/v1/collections/docs/points",
            k,
            Some(json!({ "points": points })),
        )
        .await;
    assert_eq!((s, v["upserted"].as_u64()), (200, Some(200)), "{v}");
    let count = |body: Value| async move {
        let (s, v) = cluster
            .http("POST", "/v1/collections/docs/points/count", k, Some(body))
            .await;
        assert_eq!(s, 200, "{v}");
        v["count"].as_u64().unwrap()
    };
    let count_all = count(json!({})).await;
    let count_red = count(json!({ "filter": red_filter() })).await;
    let search = |filter: Option<Value>| async move {
        let mut body = json!({"vector": vector(7), "top_k": 10, "ef": 128});
        if let Some(f) = filter {
            body["filter"] = f;
        }
        let (s, v) = cluster
            .http("POST", "/v1/collections/docs/points/search", k, Some(body))
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["partial"], false);
        ids_of(&v["points"])
    };
    let search_all = search(None).await;
    let search_red = search(Some(red_filter())).await;
    let (s, v) = cluster
        .http(
            "POST",
            "/v1/collections/docs/points/delete",
            k,
            Some(json!({"ids": [0, 1, 2, 1000]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let deleted = v["deleted"].as_u64().unwrap();
    let count_after_delete = count(json!({})).await;
    let mut scrolled = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let (s, v) = cluster
            .http(
                "POST",
                "/v1/collections/docs/points/scroll",
                k,
                Some(json!({"limit": 64, "cursor": cursor})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        scrolled.extend(ids_of(&v["points"]));
        cursor = v["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    let (s, v) = cluster
        .http(
            "POST",
            "/v1/collections/docs/points/get",
            k,
            Some(json!({"ids": [3], "with_payload": true})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    Observed {
        count_all,
        count_red,
        search: search_all,
        search_red,
        deleted,
        count_after_delete,
        scrolled,
        payload_of_3: v["points"][0]["payload"].clone(),
    }
}

async fn over_grpc(cluster: &Cluster, key: &str) -> Observed {
    let channel = cluster.grpc_channel().await;
    let mut collections = CollectionsClient::new(channel.clone());
    let mut points = PointsClient::new(channel);
    collections
        .create_collection(with_key(
            api::CreateCollectionRequest {
                name: "docs".into(),
                config: Some(api::CollectionConfig {
                    dim: DIM as u32,
                    metric: api::Metric::L2 as i32,
                    ..Default::default()
                }),
            },
            key,
        ))
        .await
        .expect("create");
    let batch: Vec<api::Point> = (0..200u64)
        .map(|i| api::Point {
            id: Some(api::PointId {
                kind: Some(api::point_id::Kind::Num(i)),
            }),
            vector: vector(i),
            payload: Some(to_struct(&json!({"color": color(i), "n": i}))),
        })
        .collect();
    let r = points
        .upsert(with_key(
            api::UpsertRequest {
                collection: "docs".into(),
                points: batch,
                idempotency_key: String::new(),
            },
            key,
        ))
        .await
        .expect("upsert");
    assert_eq!(r.get_ref().upserted, 200);
    let count_all = points
        .count(with_key(
            api::CountRequest {
                collection: "docs".into(),
                filter: None,
            },
            key,
        ))
        .await
        .expect("count")
        .into_inner()
        .count;
    let count_red = points
        .count(with_key(
            api::CountRequest {
                collection: "docs".into(),
                filter: Some(to_struct(&red_filter())),
            },
            key,
        ))
        .await
        .expect("count")
        .into_inner()
        .count;
    let search = |filter: Option<Value>| {
        let mut points = points.clone();
        async move {
            let r = points
                .search(with_key(
                    api::SearchRequest {
                        collection: "docs".into(),
                        vector: vector(7),
                        top_k: 10,
                        ef: Some(128),
                        filter: filter.as_ref().map(to_struct),
                        ..Default::default()
                    },
                    key,
                ))
                .await
                .expect("search")
                .into_inner();
            assert!(!r.partial);
            grpc_ids(&r.points)
        }
    };
    let search_all = search(None).await;
    let search_red = search(Some(red_filter())).await;
    let ids = [0u64, 1, 2, 1000]
        .map(|n| api::PointId {
            kind: Some(api::point_id::Kind::Num(n)),
        })
        .to_vec();
    let deleted = points
        .delete(with_key(
            api::DeletePointsRequest {
                collection: "docs".into(),
                ids,
                filter: None,
                idempotency_key: String::new(),
            },
            key,
        ))
        .await
        .expect("delete")
        .into_inner()
        .deleted;
    let count_after_delete = points
        .count(with_key(
            api::CountRequest {
                collection: "docs".into(),
                filter: None,
            },
            key,
        ))
        .await
        .expect("count")
        .into_inner()
        .count;
    let mut scrolled = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = points
            .scroll(with_key(
                api::ScrollRequest {
                    collection: "docs".into(),
                    cursor: cursor.clone(),
                    limit: 64,
                    ..Default::default()
                },
                key,
            ))
            .await
            .expect("scroll")
            .into_inner();
        scrolled.extend(page.points.iter().map(|r| {
            match r.id.as_ref().and_then(|id| id.kind.clone()) {
                Some(api::point_id::Kind::Num(n)) => n,
                other => panic!("unexpected id {other:?}"),
            }
        }));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    let got = points
        .get(with_key(
            api::GetPointsRequest {
                collection: "docs".into(),
                ids: vec![api::PointId {
                    kind: Some(api::point_id::Kind::Num(3)),
                }],
                with_payload: true,
                with_vector: false,
            },
            key,
        ))
        .await
        .expect("get")
        .into_inner();
    let payload = got.points[0].payload.as_ref().map(|p| {
        Value::Object(proto::json::struct_to_json(p, &proto::json::Bounds::NONE).unwrap())
    });
    Observed {
        count_all,
        count_red,
        search: search_all,
        search_red,
        deleted,
        count_after_delete,
        scrolled,
        payload_of_3: payload.unwrap_or(Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_grpc_give_identical_results() {
    let cluster = Cluster::start(2).await;
    let key_a = cluster.tenant("over-http", None).await;
    let key_b = cluster.tenant("over-grpc", None).await;
    let http = over_http(&cluster, &key_a).await;
    let grpc = over_grpc(&cluster, &key_b).await;
    assert_eq!(http, grpc);
    // And the results are right, not merely equal.
    assert_eq!(http.count_all, 200);
    assert_eq!(http.count_red, 67);
    assert_eq!(
        http.search[0], 7,
        "a stored vector is its own nearest neighbour"
    );
    assert!(
        http.search_red.iter().all(|id| id % 3 == 0),
        "{:?}",
        http.search_red
    );
    assert_eq!(http.deleted, 3);
    assert_eq!(http.count_after_delete, 197);
    assert_eq!(http.scrolled, (3..200).collect::<Vec<u64>>());
    assert_eq!(http.payload_of_3, json!({"color": "red", "n": 3}));
    // Two tenants, two workers: placement spread them.
    let (_, placements) = cluster.admin("GET", "/admin/v1/placements", None).await;
    let mut workers: Vec<&str> = placements["placements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["worker"].as_str().unwrap())
        .collect();
    workers.sort_unstable();
    assert_eq!(workers, ["worker-0", "worker-1"]);
    cluster.shutdown().await;
}
