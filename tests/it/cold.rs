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
    for start in (0..n).step_by(500) {
        let points: Vec<Value> = (start..start + 500)
            .map(|i| json!({"id": i, "vector": vec![i as f32; 64], "payload": {"n": i}}))
            .collect();
        let (status, body) = cluster
            .http(
                "PUT",
                "/v1/collections/a/points",
                Some(&acme),
                Some(json!({ "points": points })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
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
