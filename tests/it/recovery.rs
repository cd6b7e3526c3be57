//! Restarts: the coordinator restarted, a worker killed with SIGKILL and started again. No
//! acknowledged write is lost, placement is kept, keys stay valid.

use serde_json::{Value, json};
use tests::Cluster;

async fn upsert_batches(cluster: &Cluster, key: &str, batches: std::ops::Range<u64>) {
    for b in batches {
        let points: Vec<Value> = (0..50)
            .map(|i| {
                let id = b * 50 + i;
                json!({"id": id, "vector": [id as f32, 1.0, (id % 7) as f32], "payload": {"batch": b}})
            })
            .collect();
        let (s, v) = cluster
            .http(
                "PUT",
                "/v1/collections/c/points",
                Some(key),
                Some(json!({"points": points})),
            )
            .await;
        assert_eq!(s, 200, "batch {b}: {v}");
    }
}

async fn count(cluster: &Cluster, key: &str) -> Value {
    let (s, v) = cluster
        .http("POST", "/v1/collections/c/points/count", Some(key), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["count"].clone()
}

async fn placement(cluster: &Cluster, tenant: &str) -> Value {
    let (_, v) = cluster
        .admin("GET", &format!("/admin/v1/tenants/{tenant}"), None)
        .await;
    v["placement"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_restart_keeps_keys_placement_and_data() {
    let mut cluster = Cluster::start(2).await;
    let key = cluster.tenant("restart-c", None).await;
    cluster.create_collection(&key, "c", 3).await;
    upsert_batches(&cluster, &key, 0..4).await;
    let before = placement(&cluster, "restart-c").await;
    let search = json!({"vector": [10.0, 1.0, 3.0], "top_k": 5});
    let (_, results_before) = cluster
        .http(
            "POST",
            "/v1/collections/c/points/search",
            Some(&key),
            Some(search.clone()),
        )
        .await;

    cluster.restart_coordinator().await;

    assert_eq!(placement(&cluster, "restart-c").await, before);
    assert_eq!(
        count(&cluster, &key).await,
        200,
        "the key is valid and nothing was lost"
    );
    let (_, results_after) = cluster
        .http(
            "POST",
            "/v1/collections/c/points/search",
            Some(&key),
            Some(search),
        )
        .await;
    assert_eq!(results_after, results_before);
    // The audit chains survived and still verify.
    let (_, verdict) = cluster
        .admin("POST", "/admin/v1/audit/restart-c/verify", None)
        .await;
    assert_eq!(verdict, json!({"ok": true}));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_sigkill_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start_with_processes(2).await;
    let key = cluster.tenant("killed", None).await;
    cluster.create_collection(&key, "c", 3).await;
    upsert_batches(&cluster, &key, 0..6).await;
    let before = placement(&cluster, "killed").await;
    let worker: usize = before["worker"]
        .as_str()
        .unwrap()
        .trim_start_matches("worker-")
        .parse()
        .unwrap();
    cluster.kill_worker(worker).await;
    cluster
        .hub()
        .wait_for_worker_gone(&format!("worker-{worker}"))
        .await;
    // While it is down the tenant is unavailable, not silently empty.
    let (s, v) = cluster
        .http("POST", "/v1/collections/c/points/count", Some(&key), None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{v}"
    );
    cluster.start_worker_process(worker).await;
    assert_eq!(
        placement(&cluster, "killed").await,
        before,
        "placement kept"
    );
    assert_eq!(
        count(&cluster, &key).await,
        300,
        "every acknowledged point is back"
    );
    let (s, v) = cluster
        .http(
            "POST",
            "/v1/collections/c/points/get",
            Some(&key),
            Some(json!({"ids": [299], "with_payload": true})),
        )
        .await;
    assert_eq!(
        (s, v["points"][0]["payload"].clone()),
        (200, json!({"batch": 5}))
    );
    cluster.shutdown().await;
}
