//! The snapshot store: the scheduler takes snapshots when due and keeps the newest per the tier;
//! the sweep at start removes only unrecorded archives and leftovers; a tenant larger than a
//! snapshot may be is refused before anything is copied; no snapshot starts once the store holds
//! its limit. Helpers are in `snapshots.rs`.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use coordinator::jobs::{ManualClock, SNAPSHOTS};
use serde_json::{Value, json};
use tests::Cluster;

use super::snapshots::{
    archive_path, audit_actions, coordinator_dir, files_under, put, snapshot_id, verify,
};

/// The ids of acme's scheduled snapshots, oldest first.
async fn scheduled(cluster: &Cluster) -> Vec<String> {
    let (_, listed) = cluster
        .admin("GET", "/admin/v1/tenants/acme/snapshots", None)
        .await;
    listed["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["origin"] == "schedule")
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

const T0: u64 = 1_800_000_000_000;
static CLOCK: LazyLock<Arc<ManualClock>> = LazyLock::new(|| Arc::new(ManualClock::new(T0)));

/// `pro` snapshots its tenants every 6 hours and keeps 2; the job looks every hour.
fn snapshotting(config: &mut coordinator::config::Config) {
    config.clock = CLOCK.clone();
    let pro = config.tiers.get_mut("pro").expect("pro tier");
    pro.snapshot_every_hours = 6;
    pro.snapshot_keep = 2;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_takes_snapshots_when_due_and_keeps_the_newest_per_the_tier() {
    let mut cluster = Cluster::start_without_workers(1, snapshotting).await;
    cluster.start_worker(0).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.tenant("cheap", Some("free")).await;
    cluster.create_collection(&key, "docs", 4).await;
    put(&cluster, &key, 0..10, "a").await;
    // One taken on request is never deleted by the retention.
    let manual = snapshot_id(&cluster, "acme").await;
    let hour = Duration::from_secs(3600);
    // First run: none yet, so one is taken (the free tier has no schedule).
    CLOCK.advance(hour);
    cluster.service().wait_for_job_runs(SNAPSHOTS, 1).await;
    let first = scheduled(&cluster).await;
    assert_eq!(first.len(), 1);
    let (_, cheap) = cluster
        .admin("GET", "/admin/v1/tenants/cheap/snapshots", None)
        .await;
    assert_eq!(cheap["snapshots"], json!([]));
    // Five more hours: not due.
    for run in 2..=6 {
        CLOCK.advance(hour);
        cluster.service().wait_for_job_runs(SNAPSHOTS, run).await;
    }
    assert_eq!(scheduled(&cluster).await, first);
    // Due six hours after the first (run 7), and six after that (run 13), which retires the
    // first.
    for run in 7..=13 {
        CLOCK.advance(hour);
        cluster.service().wait_for_job_runs(SNAPSHOTS, run).await;
        if run == 7 {
            assert_eq!(scheduled(&cluster).await.len(), 2);
            put(&cluster, &key, 0..1, "b").await;
        }
    }
    let now = scheduled(&cluster).await;
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(!now.contains(&first[0]), "{now:?}");
    assert!(!archive_path(&cluster, "acme", &first[0]).exists());
    let (_, listed) = cluster
        .admin("GET", "/admin/v1/tenants/acme/snapshots", None)
        .await;
    assert!(
        listed["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == manual.as_str()),
        "{listed}"
    );
    let (_, jobs) = cluster.admin("GET", "/admin/v1/jobs", None).await;
    let job = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == SNAPSHOTS)
        .cloned()
        .unwrap();
    assert_eq!(job["last_outcome"], "ok", "{job}");
    assert_eq!(
        job["last_details"]["deleted"],
        json!([{"tenant": "acme", "snapshot": first[0]}]),
        "{job}"
    );
    // Every scheduled snapshot is audited as taken by the system.
    let created = audit_actions(&cluster, "acme", "snapshot.create").await;
    assert_eq!(created.len(), 4, "{created:?}");
    assert_eq!(created[1]["actor"], "system");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_at_start_removes_only_unrecorded_archives_and_leftovers() {
    let mut cluster = Cluster::start(1).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 4).await;
    put(&cluster, &key, 0..10, "a").await;
    let id = snapshot_id(&cluster, "acme").await;
    let store = coordinator_dir(&cluster).join("snapshots");
    // Left by a crash: an archive written but not recorded, one being written, a staging
    // directory. Not the store's: other files, and a directory not named like a tenant.
    let leftovers = [
        store.join("acme/snap-00000000000000aa.tar"),
        store.join("acme/.snap-00000000000000bb.tar.tmp"),
        store.join(".staging-snap-00000000000000cc/docs/seg-1"),
    ];
    let foreign = [
        store.join("acme/operator-notes.txt"),
        store.join("Backups/snap-00000000000000dd.tar"),
        store.join(".staging-other/file"),
    ];
    for path in leftovers.iter().chain(&foreign) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }
    cluster.restart_coordinator().await;
    for path in &leftovers {
        assert!(!path.exists(), "{} was kept", path.display());
    }
    for path in &foreign {
        assert!(path.exists(), "{} was deleted", path.display());
    }
    assert!(archive_path(&cluster, "acme", &id).exists());
    assert_eq!(verify(&cluster, "acme", &id).await["verified"], true);
    cluster.shutdown().await;
}

/// Snapshots of at most 1 MiB.
fn small_snapshots(config: &mut coordinator::config::Config) {
    config.snapshots.limits.max_bytes = 1 << 20;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_larger_than_a_snapshot_may_be_is_refused_before_anything_is_copied() {
    let mut cluster = Cluster::start_without_workers(1, small_snapshots).await;
    cluster.start_worker(0).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 4).await;
    let points: Vec<Value> = (0..20_000u64)
        .map(|id| json!({"id": id, "vector": [id as f32, 1.0, 2.0, 3.0], "payload": {"pad": "x".repeat(64)}}))
        .collect();
    for chunk in points.chunks(1000) {
        let (status, body) = cluster
            .http(
                "PUT",
                "/v1/collections/docs/points",
                Some(&key),
                Some(json!({ "points": chunk })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = cluster
        .admin("POST", "/admin/v1/tenants/acme/snapshots", None)
        .await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[snapshots]"),
        "{body}"
    );
    let store = coordinator_dir(&cluster).join("snapshots");
    let left: Vec<_> = std::fs::read_dir(&store)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.iter().all(|p| files_under(p).is_empty()), "{left:?}");
    cluster.shutdown().await;
}

/// A snapshot store full once it holds any archive.
fn tiny_store(config: &mut coordinator::config::Config) {
    config.snapshots.max_total_bytes = 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_snapshot_starts_once_the_store_holds_its_limit_until_one_is_deleted() {
    let mut cluster = Cluster::start_without_workers(1, tiny_store).await;
    cluster.start_worker(0).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 4).await;
    put(&cluster, &key, 0..10, "a").await;
    let first = snapshot_id(&cluster, "acme").await;
    // Refused every time, not only once.
    for _ in 0..2 {
        let (status, body) = cluster
            .admin("POST", "/admin/v1/tenants/acme/snapshots", None)
            .await;
        assert_eq!(status, 429, "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("full"),
            "{body}"
        );
    }
    let (status, list) = cluster
        .admin("GET", "/admin/v1/tenants/acme/snapshots", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1, "{list}");
    let (status, body) = cluster
        .admin(
            "DELETE",
            &format!("/admin/v1/tenants/acme/snapshots/{first}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    snapshot_id(&cluster, "acme").await;
    cluster.shutdown().await;
}
