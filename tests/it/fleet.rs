//! The fleet: the health tracker's view of real worker processes, through the admin API and the
//! metrics listener.

use std::time::Duration;

use coordinator::cluster::HealthConfig;
use serde_json::Value;
use tests::Cluster;

/// Suspect after 2 s and down after 4 s without a heartbeat (workers send one per second).
fn short_health(config: &mut coordinator::config::Config) {
    config.health = HealthConfig {
        suspect_after: Duration::from_secs(2),
        down_after: Duration::from_secs(4),
    };
}

async fn worker_view(cluster: &Cluster, id: &str) -> Value {
    let (status, body) = cluster.admin("GET", "/admin/v1/workers", None).await;
    assert_eq!(status, 200, "{body}");
    body["workers"]
        .as_array()
        .expect("a list of workers")
        .iter()
        .find(|w| w["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} is not listed: {body}"))
}

async fn metrics(cluster: &Cluster) -> String {
    reqwest::get(format!("http://{}/metrics", cluster.metrics))
        .await
        .expect("scraping metrics")
        .text()
        .await
        .expect("metrics text")
}

async fn count(cluster: &Cluster, key: &str) -> (u16, Value) {
    cluster
        .http(
            "POST",
            "/v1/collections/docs/points/count",
            Some(key),
            Some(serde_json::json!({})),
        )
        .await
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_tracker_shows_heartbeats_and_marks_a_hung_worker_down_until_it_returns() {
    let mut cluster = Cluster::start_without_workers(1, short_health).await;
    cluster.start_worker_process(0).await;
    let key = cluster.tenant("acme", None).await;
    cluster.create_collection(&key, "docs", 4).await;
    assert_eq!(count(&cluster, &key).await.0, 200);
    // Loaded tenants and plaintext bytes are as of the worker's last memory accounting, which
    // each heartbeat starts after it is sent: the first heartbeat after the requests starts one,
    // and the figures arrive with a later one (two seconds later, for a pass of microseconds).
    let seen = cluster.hub().heartbeats("worker-0").expect("connected");
    cluster
        .hub()
        .wait_for_heartbeats("worker-0", seen + 3)
        .await;

    let w = worker_view(&cluster, "worker-0").await;
    assert_eq!(w["state"], "up", "{w}");
    assert_eq!(w["connected"], true, "{w}");
    assert_eq!(w["placed_tenants"], 1, "{w}");
    assert!(
        w["since_heartbeat_ms"].as_u64().expect("connected") < 4000,
        "{w}"
    );
    assert!(w["memory_budget_bytes"].as_u64().unwrap() > 0, "{w}");
    let beat = &w["heartbeat"];
    assert_eq!(beat["loaded_tenants"], 1, "{w}");
    assert_eq!(beat["assigned_tenants"], 1, "{w}");
    assert!(beat["requests_total"].as_u64().unwrap() >= 2, "{w}");
    assert!(beat["plaintext_bytes"].as_u64().is_some(), "{w}");
    assert!(beat["rss_bytes"].as_u64().unwrap() > 1 << 20, "{w}");
    assert!(beat["max_in_flight"].as_u64().unwrap() > 0, "{w}");
    let text = metrics(&cluster).await;
    for line in [
        r#"vaultvec_worker_state{worker="worker-0",state="up"} 1"#,
        r#"vaultvec_worker_state{worker="worker-0",state="down"} 0"#,
        r#"vaultvec_worker_loaded_tenants{worker="worker-0"} 1"#,
        r#"vaultvec_worker_assigned_tenants{worker="worker-0"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }

    // A hung worker (stopped, its socket open) sends no heartbeats: down after `down_after`,
    // its connection closed, its tenant answered 503, not left waiting.
    let pid = cluster.worker_pid(0).expect("a process");
    signal(pid, "STOP");
    cluster.hub().wait_for_worker_gone("worker-0").await;
    let w = worker_view(&cluster, "worker-0").await;
    assert_eq!(w["state"], "down", "{w}");
    assert_eq!(w["connected"], false, "{w}");
    assert!(w["heartbeat"].is_null(), "{w}");
    assert!(w["last_seen_ms"].as_u64().unwrap() > 0, "{w}");
    let text = metrics(&cluster).await;
    assert!(
        text.lines()
            .any(|l| l == r#"vaultvec_worker_state{worker="worker-0",state="down"} 1"#),
        "{text}"
    );
    assert!(
        !text.contains(r#"vaultvec_worker_loaded_tenants{worker="worker-0"}"#),
        "{text}"
    );
    let (status, body) = count(&cluster, &key).await;
    assert_eq!(status, 503, "{body}");

    // Woken, it finds its connection closed, dials again and serves its tenant.
    signal(pid, "CONT");
    cluster.hub().wait_for_worker("worker-0").await;
    assert_eq!(worker_view(&cluster, "worker-0").await["state"], "up");
    assert_eq!(count(&cluster, &key).await.0, 200);
    cluster.shutdown().await;
}
