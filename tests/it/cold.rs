//! Paused tenants on cold storage: a pause moves every copy's files to its worker's cold storage
//! (requests answered `paused`), a resume moves them back (answered `resuming` meanwhile) and
//! every point is served again; a copy whose worker is away moves when the pause or resume is
//! asked again, or when the worker connects, also after the worker process was killed in the
//! middle of a move. Both transitions are audited.

use std::path::Path;

use serde_json::{Value, json};
use tests::Cluster;

fn two_copies(config: &mut coordinator::config::Config) {
    config.tiers.get_mut("pro").expect("pro tier").replicas = 2;
}

/// File names under `dir`, two levels deep (`collection/file`), sorted.
fn files(dir: &Path) -> Vec<String> {
    let Ok(collections) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for collection in collections {
        let collection = collection.unwrap().path();
        for file in std::fs::read_dir(&collection).unwrap() {
            names.push(format!(
                "{}/{}",
                collection.file_name().unwrap().to_string_lossy(),
                file.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    names.sort();
    names
}

async fn count(cluster: &Cluster, key: &str, collection: &str) -> (u16, Value) {
    cluster
        .http(
            "POST",
            &format!("/v1/collections/{collection}/points/count"),
            Some(key),
            Some(json!({})),
        )
        .await
}

async fn storage(cluster: &Cluster, tenant: &str) -> String {
    let (status, body) = cluster
        .admin("GET", &format!("/admin/v1/tenants/{tenant}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["storage"].as_str().unwrap().to_owned()
}

async fn put(cluster: &Cluster, key: &str, collection: &str, n: u64) {
    for start in (0..n).step_by(100) {
        let points: Vec<Value> = (start..(start + 100).min(n))
            .map(|i| json!({"id": i, "vector": [i as f32, 1.0, 2.0, 3.0], "payload": {"n": i}}))
            .collect();
        let (status, body) = cluster
            .http(
                "PUT",
                &format!("/v1/collections/{collection}/points"),
                Some(key),
                Some(json!({ "points": points })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_tenant_moves_to_cold_storage_on_every_copy_and_back() {
    let mut cluster = Cluster::start_without_workers(2, two_copies).await;
    cluster.start_worker(0).await;
    cluster.start_worker(1).await;
    let acme = cluster.tenant("acme", Some("pro")).await;
    let beta = cluster.tenant("beta", Some("pro")).await;
    cluster.create_collection(&acme, "a", 4).await;
    cluster.create_collection(&acme, "b", 4).await;
    cluster.create_collection(&beta, "a", 4).await;
    // Fewer points than `checkpoint_points`: the release at the pause seals nothing, so the files
    // moved are exactly those listed here.
    put(&cluster, &acme, "a", 200).await;
    put(&cluster, &acme, "b", 30).await;
    put(&cluster, &beta, "a", 10).await;
    let hot: Vec<Vec<String>> = (0..2)
        .map(|i| files(&cluster.worker_dir(i).join("tenants/acme")))
        .collect();
    assert!(hot.iter().all(|f| f.len() >= 4), "{hot:?}");

    let (status, body) = cluster
        .admin("POST", "/admin/v1/tenants/acme/pause", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["paused"].as_bool(), body["storage"].as_str()),
        (Some(true), Some("cold"))
    );
    for (i, before) in hot.iter().enumerate() {
        let dir = cluster.worker_dir(i);
        assert!(
            !dir.join("tenants/acme").exists(),
            "worker {i} kept hot files"
        );
        assert_eq!(&files(&dir.join("cold/acme")), before, "worker {i}");
    }
    let (status, body) = count(&cluster, &acme, "a").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("paused"),
        "{body}"
    );
    assert_eq!(count(&cluster, &beta, "a").await.1["count"], 10);

    let (status, body) = cluster
        .admin("POST", "/admin/v1/tenants/acme/resume", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["paused"].as_bool(), body["storage"].as_str()),
        (Some(false), Some("hot"))
    );
    for (i, before) in hot.iter().enumerate() {
        let dir = cluster.worker_dir(i);
        assert!(
            !dir.join("cold/acme").exists(),
            "worker {i} kept cold files"
        );
        assert_eq!(&files(&dir.join("tenants/acme")), before, "worker {i}");
    }
    // Reads go to the copies in turn: every point on both.
    for _ in 0..4 {
        assert_eq!(count(&cluster, &acme, "a").await.1["count"], 200);
        assert_eq!(count(&cluster, &acme, "b").await.1["count"], 30);
    }
    put(&cluster, &acme, "b", 40).await;
    assert_eq!(count(&cluster, &acme, "b").await.1["count"], 40);

    let (_, chain) = cluster.admin("GET", "/admin/v1/audit/acme", None).await;
    let actions: Vec<String> = chain["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"].as_str().unwrap().starts_with("tenant."))
        .map(|r| {
            format!(
                "{} {}",
                r["action"].as_str().unwrap(),
                r["details"]["to"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            "tenant.create ",
            "tenant.pause ",
            "tenant.storage cold",
            "tenant.storage warming",
            "tenant.resume pro"
        ],
        "{chain}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_worker_is_away_moves_when_asked_again_or_when_it_connects() {
    let mut cluster = Cluster::start_without_workers(2, two_copies).await;
    cluster.start_worker(0).await;
    cluster.start_worker(1).await;
    let acme = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&acme, "a", 4).await;
    put(&cluster, &acme, "a", 120).await;
    let pause = "/admin/v1/tenants/acme/pause";
    let resume = "/admin/v1/tenants/acme/resume";

    // Worker 1 is away during the pause: its copy stays hot until the pause is asked again.
    cluster.stop_worker(1).await;
    let (status, body) = cluster.admin("POST", pause, None).await;
    assert_eq!(
        (status, body["storage"].as_str()),
        (200, Some("cooling")),
        "{body}"
    );
    assert!(cluster.worker_dir(0).join("cold/acme").exists());
    assert!(cluster.worker_dir(1).join("tenants/acme").exists());
    assert_eq!(count(&cluster, &acme, "a").await.0, 409);
    cluster.start_worker(1).await;
    let (status, body) = cluster.admin("POST", pause, None).await;
    assert_eq!(
        (status, body["storage"].as_str()),
        (200, Some("cold")),
        "{body}"
    );
    assert!(!cluster.worker_dir(1).join("tenants/acme").exists());
    assert!(cluster.worker_dir(1).join("cold/acme").exists());

    // Away during the resume: the tenant answers `resuming` (503) until its copy is back,
    // which its worker's next hello finishes.
    cluster.stop_worker(1).await;
    let (status, body) = cluster.admin("POST", resume, None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(storage(&cluster, "acme").await, "warming");
    let (status, body) = count(&cluster, &acme, "a").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("resuming"),
        "{body}"
    );
    cluster.start_worker(1).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while storage(&cluster, "acme").await != "hot" {
        assert!(
            std::time::Instant::now() < deadline,
            "the hello did not finish the resume"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for i in 0..2 {
        assert!(
            !cluster.worker_dir(i).join("cold/acme").exists(),
            "worker {i}"
        );
    }
    for _ in 0..4 {
        assert_eq!(count(&cluster, &acme, "a").await.1["count"], 120);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_in_the_middle_of_either_move_leaves_the_tenant_wholly_on_one_side() {
    let mut cluster = Cluster::start_with_processes(1).await;
    let acme = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&acme, "a", 64).await;
    // About 10 MB of files, so the copy to cold storage takes a while.
    let n = 20_000u64;
    fill(&cluster, &acme, "a", n).await;
    let cold = cluster.worker_dir(0).join("cold");
    let staging = cold.join(".incoming-acme");
    let pause = tokio::spawn(
        reqwest::Client::new()
            .post(cluster.url("/admin/v1/tenants/acme/pause"))
            .bearer_auth(tests::ADMIN_TOKEN)
            .send(),
    );
    // SIGKILL as soon as the move has begun (its staging directory exists): in 5 of 5 runs the
    // kill left the staging directory half copied and the data directory whole.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !staging.exists() && !cold.join("acme").exists() {
        assert!(std::time::Instant::now() < deadline, "the move never began");
        tokio::task::yield_now().await;
    }
    cluster.kill_worker(0).await;
    let _ = pause.await;

    // Its hello finishes the move: the tenant is wholly on cold storage, then wholly back.
    cluster.start_worker_process(0).await;
    while storage(&cluster, "acme").await != "cold" {
        assert!(
            std::time::Instant::now() < deadline,
            "the hello did not finish the pause"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let data = cluster.worker_dir(0).join("tenants/acme");
    assert!(!data.exists(), "hot files left after the pause");
    assert!(!staging.exists(), "a staging directory left");
    assert!(!files(&cold.join("acme")).is_empty());

    // The same in the middle of the resume's move back (in 3 of 3 runs the kill left its staging
    // directory half copied and the cold copy whole).
    let warming = cluster.worker_dir(0).join("tenants/.warming-acme");
    let resume = tokio::spawn(
        reqwest::Client::new()
            .post(cluster.url("/admin/v1/tenants/acme/resume"))
            .bearer_auth(tests::ADMIN_TOKEN)
            .send(),
    );
    while !warming.exists() && !data.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the move back never began"
        );
        tokio::task::yield_now().await;
    }
    cluster.kill_worker(0).await;
    let _ = resume.await;
    cluster.start_worker_process(0).await;
    while storage(&cluster, "acme").await != "hot" {
        assert!(
            std::time::Instant::now() < deadline,
            "the hello did not finish the resume"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        !cold.join("acme").exists(),
        "cold files left after the resume"
    );
    assert!(!warming.exists(), "a staging directory left");
    let (status, body) = count(&cluster, &acme, "a").await;
    assert_eq!((status, body["count"].as_u64()), (200, Some(n)), "{body}");
    cluster.shutdown().await;
}

/// Upserts points 0..n of dimension 64 into `collection`, 500 a request: about 10 MB of files
/// for 20,000, enough that copying them takes a while.
pub(crate) async fn fill(cluster: &Cluster, key: &str, collection: &str, n: u64) {
    for start in (0..n).step_by(500) {
        let points: Vec<Value> = (start..(start + 500).min(n))
            .map(|i| json!({"id": i, "vector": vec![i as f32; 64], "payload": {"n": i}}))
            .collect();
        let (status, body) = cluster
            .http(
                "PUT",
                &format!("/v1/collections/{collection}/points"),
                Some(key),
                Some(json!({ "points": points })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

async fn placed_on(cluster: &Cluster, tenant: &str) -> String {
    super::fleet::placement(cluster, tenant).await.0
}

/// A drain of a worker holding paused tenants finishes: a single-copy one is copied from the
/// worker's cold storage straight to another worker's (never through a data directory), a
/// replicated one is handed to its other copy and the repair adds a new copy, cold too; the
/// drained worker keeps no file of either, both stay paused, and resumed they serve every point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_hands_paused_tenants_over_on_cold_storage() {
    let mut cluster = Cluster::start_without_workers(3, two_copies).await;
    cluster.start_worker(0).await;
    cluster.start_worker(1).await;
    let solo = cluster.tenant("solo", Some("free")).await;
    let duo = cluster.tenant("duo", Some("pro")).await;
    cluster.create_collection(&solo, "a", 4).await;
    cluster.create_collection(&duo, "a", 4).await;
    put(&cluster, &solo, "a", 200).await;
    put(&cluster, &duo, "a", 120).await;
    let from = placed_on(&cluster, "solo").await;
    let from_index: usize = from.trim_start_matches("worker-").parse().unwrap();
    let other_index = 1 - from_index;
    let before = files(&cluster.worker_dir(from_index).join("tenants/solo"));
    assert!(before.len() >= 2, "{before:?}");
    for tenant in ["solo", "duo"] {
        let (status, body) = cluster
            .admin("POST", &format!("/admin/v1/tenants/{tenant}/pause"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["storage"], "cold", "{body}");
    }
    let from_dir = cluster.worker_dir(from_index);
    assert_eq!(files(&from_dir.join("cold/solo")), before);
    let duo_kept = files(&cluster.worker_dir(other_index).join("cold/duo"));
    assert!(duo_kept.len() >= 2, "{duo_kept:?}");
    assert!(from_dir.join("cold/duo").exists());
    cluster.start_worker(2).await;

    let (status, body) = cluster
        .admin("POST", &format!("/admin/v1/workers/{from}/drain"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    cluster.service().wait_for_drains().await;
    let (_, export) = cluster.admin("GET", "/admin/v1/audit/platform", None).await;
    let drained = super::cluster::audit_rows(&export, "worker.drained");
    assert_eq!(drained.len(), 1, "{drained:?}");
    assert_eq!(drained[0]["outcome"], "ok", "{drained:?}");
    assert_eq!(drained[0]["details"]["tenants_left"], 0, "{drained:?}");
    // The repair replaces the copies left on the draining worker (it runs at every change of
    // the workers too; run here so the test need not wait for one).
    cluster.service().repair_replicas().await;

    let to = placed_on(&cluster, "solo").await;
    assert_ne!(to, from);
    let to_index: usize = to.trim_start_matches("worker-").parse().unwrap();
    let to_dir = cluster.worker_dir(to_index);
    assert_eq!(files(&to_dir.join("cold/solo")), before, "copied as it was");
    assert!(!to_dir.join("tenants/solo").exists(), "not in the data dir");
    assert_ne!(placed_on(&cluster, "duo").await, from);
    let new_dir = cluster.worker_dir(2);
    assert_eq!(
        files(&new_dir.join("cold/duo")),
        duo_kept,
        "the new copy is cold"
    );
    assert!(!new_dir.join("tenants/duo").exists(), "not in the data dir");
    for tenant in ["solo", "duo"] {
        for dir in ["cold", "tenants"] {
            assert!(
                !from_dir.join(dir).join(tenant).exists(),
                "the drained worker kept {dir}/{tenant}"
            );
        }
        assert_eq!(storage(&cluster, tenant).await, "cold");
    }
    assert_eq!(count(&cluster, &solo, "a").await.0, 409);

    for tenant in ["solo", "duo"] {
        let (status, body) = cluster
            .admin("POST", &format!("/admin/v1/tenants/{tenant}/resume"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["storage"], "hot", "{body}");
    }
    assert!(!to_dir.join("cold/solo").exists());
    let (status, body) = count(&cluster, &solo, "a").await;
    assert_eq!((status, body["count"].as_u64()), (200, Some(200)), "{body}");
    // Reads go to the copies in turn: every point on both.
    for _ in 0..4 {
        let (status, body) = count(&cluster, &duo, "a").await;
        assert_eq!((status, body["count"].as_u64()), (200, Some(120)), "{body}");
    }
    put(&cluster, &solo, "a", 250).await;
    assert_eq!(count(&cluster, &solo, "a").await.1["count"], 250);
    cluster.shutdown().await;
}
