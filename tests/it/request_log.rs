//! The per-request log line: every API request over either transport, answered or refused, is one
//! `request` event with transport, tenant, key id, endpoint, status and latency (ARCHITECTURE.md,
//! Logs), and it never carries the key's secret.
//!
//! The coordinator runs in process; its events are captured as JSON lines, the format
//! `--log-json` gives the binaries.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use proto::vaultvec::v1 as api;
use serde_json::{Value, json};
use tests::{Cluster, with_key};

/// Every JSON log line of this test process.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        // nextest runs each test in its own process; under `cargo test` the first test installs it.
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter("info")
            .with_writer(move || Sink(sink.clone()))
            .try_init();
        logs
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The `request` events logged so far, as their fields.
fn request_lines() -> Vec<Value> {
    let bytes = captured().lock().unwrap().clone();
    String::from_utf8(bytes)
        .expect("UTF-8 logs")
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("a JSON log line"))
        .filter(|line| line["fields"]["message"] == "request")
        .map(|line| line["fields"].clone())
        .collect()
}

/// Asserts that exactly one request line has these transport, endpoint, tenant and status, and
/// that it carries the key id and a latency.
#[track_caller]
fn assert_logged(
    lines: &[Value],
    transport: &str,
    endpoint: &str,
    tenant: &str,
    key_id: &str,
    status: Value,
) {
    let matching: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["transport"] == transport
                && l["endpoint"] == endpoint
                && l["tenant"] == tenant
                && l["key_id"] == key_id
                && l["status"] == status
        })
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "one {transport} {endpoint} line for tenant {tenant:?}, key {key_id:?}, status {status}; got:\n{}",
        lines
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(matching[0]["latency_us"].is_u64(), "{}", matching[0]);
}

/// A message whose field 1 is raw bytes: sent where field 1 is a string, it need not decode.
#[derive(Clone, PartialEq, prost::Message)]
struct RawField1 {
    #[prost(bytes = "vec", tag = "1")]
    value: Vec<u8>,
}

/// The key id of `vv_<keyid>_<secret>`.
fn key_id(key: &str) -> &str {
    key.split('_').nth(1).expect("key id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_logged_with_tenant_key_endpoint_status_and_latency() {
    captured();
    let cluster = Cluster::start(1).await;
    let key = cluster.tenant("logline", None).await;
    let read_only = cluster.key("logline", &["read"], None).await;
    let unknown = "vv_AAAAAAAA_notakeynotakeynotakeynotakeynotake";

    // HTTP: answered, refused for the key (401), refused for the scope (403), refused input (400).
    cluster.create_collection(&key, "c", 2).await;
    let upsert = json!({"points": [{"id": 1, "vector": [1.0, 2.0]}]});
    let (s, _) = cluster
        .http(
            "PUT",
            "/v1/collections/c/points",
            Some(unknown),
            Some(upsert.clone()),
        )
        .await;
    assert_eq!(s, 401);
    let (s, _) = cluster
        .http(
            "PUT",
            "/v1/collections/c/points",
            Some(&read_only),
            Some(upsert),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = cluster
        .http(
            "POST",
            "/v1/collections/c/points/count",
            Some(&key),
            Some(json!({"nonsense": true})),
        )
        .await;
    assert_eq!(s, 400);

    // gRPC: the same four outcomes.
    let channel = cluster.grpc_channel().await;
    let mut collections = api::collections_client::CollectionsClient::new(channel.clone());
    let mut points = api::points_client::PointsClient::new(channel);
    collections
        .list_collections(with_key(api::ListCollectionsRequest::default(), &key))
        .await
        .expect("list over gRPC");
    let upsert = api::UpsertRequest {
        collection: "c".into(),
        points: vec![api::Point {
            id: Some(api::PointId {
                kind: Some(api::point_id::Kind::Num(2)),
            }),
            vector: vec![1.0, 2.0],
            payload: None,
        }],
        ..Default::default()
    };
    let refused = points
        .upsert(with_key(upsert.clone(), unknown))
        .await
        .expect_err("unknown key");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refused = points
        .upsert(with_key(upsert, &read_only))
        .await
        .expect_err("read-only key");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let refused = points
        .count(with_key(
            api::CountRequest {
                collection: "no such collection".into(),
                ..Default::default()
            },
            &key,
        ))
        .await
        .expect_err("invalid name");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // A message that does not decode (field 1, the collection name, is not UTF-8): refused by the
    // codec before the handler runs, and still one line.
    let mut raw = tonic::client::Grpc::new(cluster.grpc_channel().await);
    raw.ready().await.expect("channel ready");
    let refused = raw
        .unary(
            with_key(
                RawField1 {
                    value: vec![0xff, 0xfe],
                },
                &key,
            ),
            tonic::codegen::http::uri::PathAndQuery::from_static("/vaultvec.v1.Points/Count"),
            proto::codec::Codec::<RawField1, ()>::default(),
        )
        .await
        .expect_err("malformed message");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");

    // A message over the tier's body limit, refused from its declared length before it is read.
    let small = cluster.tenant("logline-free", Some("free")).await;
    let large = api::UpsertRequest {
        collection: "c".into(),
        points: vec![api::Point {
            id: Some(api::PointId {
                kind: Some(api::point_id::Kind::Num(3)),
            }),
            vector: vec![0.5; 80_000],
            payload: None,
        }],
        ..Default::default()
    };
    let refused = points
        .upsert(with_key(large, &small))
        .await
        .expect_err("over the tier's limit");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");

    let lines = request_lines();
    let (id, ro) = (key_id(&key), key_id(&read_only));
    assert_logged(
        &lines,
        "http",
        "create_collection",
        "logline",
        id,
        json!(200),
    );
    assert_logged(&lines, "http", "upsert", "", "", json!(401));
    assert_logged(&lines, "http", "upsert", "logline", ro, json!(403));
    assert_logged(&lines, "http", "count", "logline", id, json!(400));
    assert_logged(
        &lines,
        "grpc",
        "list_collections",
        "logline",
        id,
        json!("ok"),
    );
    assert_logged(&lines, "grpc", "upsert", "", "", json!("unauthenticated"));
    assert_logged(
        &lines,
        "grpc",
        "upsert",
        "logline",
        ro,
        json!("permission_denied"),
    );
    // The undecodable message, refused by the codec after the key was checked: it names its
    // caller too, so there are two such count lines (the invalid name and this one).
    let invalid_counts = lines
        .iter()
        .filter(|l| {
            l["transport"] == "grpc"
                && l["endpoint"] == "count"
                && l["tenant"] == "logline"
                && l["key_id"] == id
                && l["status"] == "invalid_argument"
        })
        .count();
    assert_eq!(invalid_counts, 2, "{lines:?}");
    // The message over the tier's limit, refused before tonic read it.
    assert_logged(
        &lines,
        "grpc",
        "upsert",
        "logline-free",
        key_id(&small),
        json!("resource_exhausted"),
    );

    // No secret in any log line.
    let all = String::from_utf8(captured().lock().unwrap().clone()).unwrap();
    for secret in [&key, &read_only] {
        let secret_part = secret.rsplit('_').next().unwrap();
        assert!(!all.contains(secret_part), "a key's secret was logged");
    }
    cluster.shutdown().await;
}
