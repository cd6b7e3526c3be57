//! Idle tenants cost almost nothing: a tenant no request has used for the worker's
//! `idle_unload_after` is unloaded (no open file or mapping of its files is left) and wakes on its
//! next request with every point. The worker's clock is one the test moves.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tests::Cluster;

/// A clock that stands still until the test moves it.
struct TestClock(AtomicU64);

impl worker::Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Open files and mappings of this process under `dir` (the in-process worker's).
fn held_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let mut held: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.starts_with(&dir))
        .collect();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    held.extend(
        maps.lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| p.starts_with(&dir))
            .map(str::to_owned),
    );
    held
}

async fn count(cluster: &Cluster, key: &str) -> u64 {
    let (status, body) = cluster
        .http(
            "POST",
            "/v1/collections/docs/points/count",
            Some(key),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["count"].as_u64().unwrap()
}

/// The worker's loaded tenants as of a heartbeat sent after an accounting pass that started
/// after this call (each heartbeat starts one once it is sent).
async fn loaded_after_accounting(cluster: &Cluster) -> u64 {
    let seen = cluster.hub().heartbeats("worker-0").expect("connected");
    cluster
        .hub()
        .wait_for_heartbeats("worker-0", seen + 3)
        .await;
    let (status, body) = cluster.admin("GET", "/admin/v1/workers", None).await;
    assert_eq!(status, 200, "{body}");
    let worker: &Value = &body["workers"][0];
    worker["heartbeat"]["loaded_tenants"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tenant_is_unloaded_and_wakes_on_its_next_request() {
    let clock = Arc::new(TestClock(AtomicU64::new(1_000_000)));
    let mut cluster = Cluster::start_without_workers(1, |_| {}).await;
    let mut config = cluster.worker_config(0);
    config.idle_unload_after = Some(Duration::from_secs(60));
    config.clock = clock.clone();
    cluster.start_worker_with(0, config).await;
    let mut keys = Vec::new();
    for tenant in ["idle-a", "busy-b", "busy-c"] {
        let key = cluster.tenant(tenant, None).await;
        cluster.create_collection(&key, "docs", 4).await;
        let points: Vec<Value> = (0..50u64)
            .map(|i| json!({"id": i, "vector": [i as f32, 1.0, 2.0, 3.0]}))
            .collect();
        let (status, body) = cluster
            .http(
                "PUT",
                "/v1/collections/docs/points",
                Some(&key),
                Some(json!({ "points": points })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        keys.push(key);
    }
    let tenants = cluster.worker_dir(0).join("tenants");
    assert_eq!(loaded_after_accounting(&cluster).await, 3);
    assert!(
        !held_under(&tenants.join("idle-a")).is_empty(),
        "a loaded tenant holds its WAL open"
    );

    // A minute on, only the tenants used since are kept.
    clock.0.fetch_add(60_001, Ordering::SeqCst);
    assert_eq!(count(&cluster, &keys[1]).await, 50);
    assert_eq!(count(&cluster, &keys[2]).await, 50);
    assert_eq!(loaded_after_accounting(&cluster).await, 2);
    assert_eq!(
        held_under(&tenants.join("idle-a")),
        Vec::<String>::new(),
        "an unloaded tenant holds no file"
    );
    assert!(!held_under(&tenants.join("busy-b")).is_empty());

    // Its next request loads it again, with every point, asking the key service for every
    // file's DEK in one call (each answer audited, with the size of its batch).
    let (_, before) = cluster.admin("GET", "/admin/v1/audit/idle-a", None).await;
    let seen = before["rows"].as_array().unwrap().len();
    assert_eq!(count(&cluster, &keys[0]).await, 50);
    assert_eq!(loaded_after_accounting(&cluster).await, 3);
    let (_, after) = cluster.admin("GET", "/admin/v1/audit/idle-a", None).await;
    let unwrapped: Vec<&serde_json::Value> = after["rows"].as_array().unwrap()[seen..]
        .iter()
        .filter(|r| r["action"] == "kms.decrypt_data_key")
        .collect();
    assert!(unwrapped.len() >= 2, "{unwrapped:?}");
    assert!(
        unwrapped
            .iter()
            .all(|r| r["details"]["batch"] == unwrapped.len()),
        "{unwrapped:?}"
    );
    cluster.shutdown().await;
}
