//! The cluster channel over TLS: with `[cluster_tls]` on the coordinator, workers dial `wss://`,
//! verify the coordinator's certificate against their `ca_file`, and data flows; a worker trusting
//! another CA and a plain `ws://` dial never get a connection.

use std::time::Duration;

use serde_json::json;
use tests::{Cluster, TestCa};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

/// A negative check: how long a worker that must not connect is given to try (it retries every
/// 200 ms at most in tests).
const NEVER_CONNECTS: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_dial_wss_and_data_flows_over_tls() {
    let mut cluster = Cluster::start_tls(2).await;
    assert!(cluster.hub().is_tls());
    assert!(cluster.worker_url().starts_with("wss://127.0.0.1:"));
    assert_eq!(
        cluster.hub().connected(),
        vec!["worker-0".to_owned(), "worker-1".to_owned()]
    );

    // A data round trip through the HTTP API; the workers have no other way to the coordinator
    // than the TLS listener.
    for tenant in ["acme", "globex"] {
        let key = cluster.tenant(tenant, None).await;
        let (s, v) = cluster
            .http(
                "POST",
                "/v1/collections",
                Some(&key),
                Some(json!({"name": "docs", "dim": 3, "metric": "l2"})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = cluster
            .http(
                "PUT",
                "/v1/collections/docs/points",
                Some(&key),
                Some(json!({"points": [
                    {"id": 1, "vector": [1.0, 0.0, 0.0], "payload": {"tenant": tenant}},
                    {"id": 2, "vector": [0.0, 1.0, 0.0]},
                    {"id": 3, "vector": [0.0, 0.0, 1.0]},
                ]})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = cluster
            .http(
                "POST",
                "/v1/collections/docs/points/search",
                Some(&key),
                Some(json!({"vector": [0.9, 0.1, 0.0], "top_k": 2, "with_payload": true})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let hits = v["points"]
            .as_array()
            .unwrap_or_else(|| panic!("points: {v}"));
        assert_eq!(hits.len(), 2, "{v}");
        assert_eq!(hits[0]["id"], 1, "{v}");
        assert_eq!(hits[0]["payload"]["tenant"], tenant, "{v}");
    }

    // The worker's one-shot dial with the right CA gets through TLS and the upgrade.
    cluster.stop_worker(1).await;
    cluster.hub().wait_for_worker_gone("worker-1").await;
    worker::check_connection(&cluster.worker_config(1))
        .await
        .expect("the right CA is accepted");

    // A worker trusting another CA refuses the coordinator's certificate ...
    let other_ca = TestCa::new("some other CA");
    let other_ca_file = cluster.dir().join("other-ca.pem");
    other_ca.write_cert(&other_ca_file);
    let mut wrong_ca = cluster.worker_config(1);
    wrong_ca.ca_file = Some(other_ca_file);
    let err = worker::check_connection(&wrong_ca)
        .await
        .expect_err("a certificate from an untrusted CA must be refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("UnknownIssuer"), "{msg}");
    assert!(
        msg.contains("ca_file"),
        "the error says what to check: {msg}"
    );
    // ... and so, running for real, never connects.
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker::serve(wrong_ca, stop.clone().cancelled_owned()));
    let waited = tokio::time::timeout(NEVER_CONNECTS, cluster.hub().wait_for_worker("worker-1"));
    assert!(
        waited.await.is_err(),
        "a worker with the wrong CA connected"
    );
    stop.cancel();
    task.await.unwrap().unwrap();

    // A plain ws:// dial to the TLS listener fails, from the worker and from a bare client.
    let mut plain = cluster.worker_config(1);
    plain.coordinator_url = plain.coordinator_url.replace("wss://", "ws://");
    plain.ca_file = None;
    let err = worker::check_connection(&plain)
        .await
        .expect_err("plain ws:// to a TLS listener must fail");
    assert!(format!("{err:#}").contains("wss://"), "{err:#}");
    let mut request = format!("ws://{}/v1/cluster", cluster.cluster)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        "Bearer worker-token-1-0123456789abcdefghijklmnop"
            .parse()
            .unwrap(),
    );
    request
        .headers_mut()
        .insert("x-vaultvec-worker", "worker-1".parse().unwrap());
    tokio_tungstenite::connect_async(request)
        .await
        .expect_err("plain ws:// to a TLS listener must fail");
    assert!(cluster.hub().worker("worker-1").is_none());

    // Refused handshakes are audited.
    let (_, platform) = cluster.admin("GET", "/admin/v1/audit/platform", None).await;
    let tls_denials = platform["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "worker.connect" && r["details"]["stage"] == "tls")
        .count();
    assert!(tls_denials >= 3, "{platform}");

    // The real binary with its TOML `ca_file` connects over wss://, and serves the tenants.
    cluster.start_worker_process(1).await;
    cluster.restart_coordinator().await;
    for tenant in ["acme", "globex"] {
        let key = cluster.key(tenant, &["read"], None).await;
        let (s, v) = cluster
            .http(
                "POST",
                "/v1/collections/docs/points/search",
                Some(&key),
                Some(json!({"vector": [0.0, 0.0, 1.0], "top_k": 1})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["points"][0]["id"], 3, "{v}");
    }
    cluster.shutdown().await;
}
