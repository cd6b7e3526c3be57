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

pub(crate) async fn placement(cluster: &Cluster, tenant: &str) -> (String, u64) {
    let (status, body) = cluster.admin("GET", "/admin/v1/placements", None).await;
    assert_eq!(status, 200, "{body}");
    let p = body["placements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["tenant"] == tenant)
        .cloned()
        .unwrap_or_else(|| panic!("{tenant} is not placed: {body}"));
    (
        p["worker"].as_str().unwrap().to_owned(),
        p["epoch"].as_u64().unwrap(),
    )
}

/// The tenant's move in progress as `/admin/v1/placements` shows it (null if none).
async fn placement_move(cluster: &Cluster, tenant: &str) -> Value {
    let (status, body) = cluster.admin("GET", "/admin/v1/placements", None).await;
    assert_eq!(status, 200, "{body}");
    body["placements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["tenant"] == tenant)
        .map(|p| p["move"].clone())
        .unwrap_or_else(|| panic!("{tenant} is not placed: {body}"))
}

/// Upserts points 0..n of dimension 4 with payloads, in batches.
async fn fill(cluster: &Cluster, key: &str, n: u64) {
    for start in (0..n).step_by(500) {
        let points: Vec<Value> = (start..(start + 500).min(n))
            .map(|id| {
                serde_json::json!({
                    "id": id,
                    "vector": [id as f32, (id % 7) as f32, 1.0, (id % 3) as f32],
                    "payload": {"n": id},
                })
            })
            .collect();
        let (status, body) = cluster
            .http(
                "PUT",
                "/v1/collections/docs/points",
                Some(key),
                Some(serde_json::json!({ "points": points })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

async fn search(cluster: &Cluster, key: &str) -> Value {
    let (status, body) = cluster
        .http(
            "POST",
            "/v1/collections/docs/points/search",
            Some(key),
            Some(serde_json::json!({"vector": [10.0, 3.0, 1.0, 1.0], "top_k": 5, "with_payload": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn move_stages(export: &Value) -> Vec<String> {
    super::cluster::audit_rows(export, "tenant.move")
        .iter()
        .map(|r| r["details"]["stage"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tenant_keeps_every_point_and_leaves_no_copy_behind() {
    let cluster = Cluster::start(2).await;
    let key = cluster.tenant("acme", None).await;
    cluster.create_collection(&key, "docs", 4).await;
    fill(&cluster, &key, 2500).await;
    let before = search(&cluster, &key).await;
    let (from, epoch) = placement(&cluster, "acme").await;
    let to = if from == "worker-0" {
        "worker-1"
    } else {
        "worker-0"
    };
    let from_dir = cluster.worker_dir(if from == "worker-0" { 0 } else { 1 });
    assert!(from_dir.join("tenants/acme/docs").exists());

    let (status, report) = cluster
        .admin(
            "POST",
            "/admin/v1/tenants/acme/move",
            Some(serde_json::json!({ "to": to })),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["from"], from.as_str(), "{report}");
    assert_eq!(report["to"], to, "{report}");
    assert!(report["files"].as_u64().unwrap() >= 2, "{report}");
    assert!(report["bytes"].as_u64().unwrap() > 2500 * 16, "{report}");
    assert_eq!(report["source_copy_deleted"], true, "{report}");
    let (now_on, new_epoch) = placement(&cluster, "acme").await;
    assert_eq!(now_on, to);
    assert!(new_epoch > epoch, "{new_epoch} after {epoch}");
    assert_eq!(report["epoch"], new_epoch);

    // Every point, payload and search answer came along; the source holds nothing of it.
    let (status, counted) = count(&cluster, &key).await;
    assert_eq!(status, 200, "{counted}");
    assert_eq!(counted["count"], 2500, "{counted}");
    assert_eq!(search(&cluster, &key).await, before);
    assert!(
        !from_dir.join("tenants/acme").exists(),
        "the source's copy is deleted"
    );
    // Writes go to the new worker.
    fill(&cluster, &key, 2600).await;
    assert_eq!(count(&cluster, &key).await.1["count"], 2600);

    // Back again, to whichever other worker the tracker chooses (the only other one).
    let (status, report) = cluster
        .admin(
            "POST",
            "/admin/v1/tenants/acme/move",
            Some(serde_json::json!({})),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["to"], from.as_str(), "{report}");
    assert_eq!(count(&cluster, &key).await.1["count"], 2600);

    // Clear refusals.
    for (path, body, want) in [
        ("/admin/v1/tenants/nobody/move", serde_json::json!({}), 404),
        (
            "/admin/v1/tenants/acme/move",
            serde_json::json!({"to": "worker-9"}),
            404,
        ),
        (
            "/admin/v1/tenants/acme/move",
            serde_json::json!({"to": from}),
            409,
        ),
        (
            "/admin/v1/tenants/acme/move",
            serde_json::json!({"to": 3}),
            400,
        ),
        (
            "/admin/v1/tenants/acme/move",
            serde_json::json!({"bogus": 1}),
            400,
        ),
    ] {
        let (status, answer) = cluster.admin("POST", path, Some(body.clone())).await;
        assert_eq!(status, want, "{path} {body}: {answer}");
    }
    let (_, export) = cluster.admin("GET", "/admin/v1/audit/acme", None).await;
    assert_eq!(
        move_stages(&export),
        ["started", "switched", "done", "started", "switched", "done"]
    );
    cluster.shutdown().await;
}

/// Connects as worker-1, a worker this test plays (`fake_transfer` answers for it).
async fn fake_worker_1(cluster: &Cluster) -> super::cluster::Ws {
    let token = "worker-token-1-0123456789abcdefghijklmnop";
    let mut fake = super::cluster::dial(cluster, "worker-1", token)
        .await
        .unwrap();
    super::cluster::say_hello(&mut fake, "worker-1", 4).await;
    fake
}

/// Asks for `tenant` to move to worker-1 in the background; answers the status and body.
fn spawn_move_to_worker_1(
    cluster: &Cluster,
    tenant: &str,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let admin = cluster.url(&format!("/admin/v1/tenants/{tenant}/move"));
    tokio::spawn(async move {
        let response = reqwest::Client::new()
            .post(admin)
            .bearer_auth(tests::ADMIN_TOKEN)
            .json(&serde_json::json!({ "to": "worker-1" }))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    })
}

/// Reads frames from a fake worker's socket, reassembling pieces, until a `TransferTenant`
/// arrives; answers the steps before `stop_at` and returns the first step that matches it.
async fn fake_transfer(
    ws: &mut super::cluster::Ws,
    stop_at: fn(&proto::vaultvec::cluster::v1::transfer_tenant::Step) -> bool,
) -> Option<(u64, proto::vaultvec::cluster::v1::TransferTenant)> {
    use futures_util::{SinkExt, StreamExt};
    use prost::Message as _;
    use proto::vaultvec::cluster::v1 as cluster;
    let mut reassembly = proto::chunk::Reassembly::new(64 << 20, 128 << 20);
    while let Some(Ok(message)) = ws.next().await {
        let bytes = message.into_data();
        let bytes = match reassembly.offer(&bytes) {
            proto::chunk::Piece::Frame => bytes.to_vec(),
            proto::chunk::Piece::Whole(frame) => frame,
            _ => continue,
        };
        let Ok(env) = cluster::Envelope::decode(bytes.as_slice()) else {
            continue;
        };
        let Some(cluster::envelope::Body::TransferTenant(transfer)) = env.body else {
            continue;
        };
        let step = transfer.step.as_ref().expect("a step");
        if stop_at(step) {
            return Some((env.request_id, transfer));
        }
        let answer = cluster::envelope::Body::TransferTenantResponse(Default::default());
        ws.send(super::cluster::frame(env.request_id, answer))
            .await
            .unwrap();
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_whose_target_dies_leaves_the_tenant_on_its_source_and_its_copy_is_dropped_later() {
    use proto::vaultvec::cluster::v1::transfer_tenant::Step;
    let mut cluster = Cluster::start_without_workers(2, |_| {}).await;
    cluster.start_worker(0).await;
    let key = cluster.tenant("acme", None).await;
    cluster.create_collection(&key, "docs", 4).await;
    fill(&cluster, &key, 1200).await;
    let before = search(&cluster, &key).await;
    assert_eq!(placement(&cluster, "acme").await.0, "worker-0");

    // worker-1 is this test: it takes the import's start, then dies at its first piece.
    let mut fake = fake_worker_1(&cluster).await;
    let mover = spawn_move_to_worker_1(&cluster, "acme");
    let piece = fake_transfer(&mut fake, |s| matches!(s, Step::ImportPiece(_))).await;
    assert!(piece.is_some(), "the copy reached the target");
    // The move shows in the placements with its progress: listed, nothing acknowledged yet.
    let moving = placement_move(&cluster, "acme").await;
    assert_eq!(moving["state"], "copying", "{moving}");
    assert_eq!(moving["to"], "worker-1", "{moving}");
    assert!(
        moving["progress"]["bytes"].as_u64().unwrap() > 1200 * 16,
        "{moving}"
    );
    assert!(
        moving["progress"]["files"].as_u64().unwrap() >= 1,
        "{moving}"
    );
    assert_eq!(moving["progress"]["copied_bytes"], 0, "{moving}");
    drop(fake);
    let (status, answer) = mover.await.unwrap();
    assert_eq!(status, 503, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("stays on worker-0"), "{message}");

    // The tenant is served from its source with every point, at once.
    assert_eq!(count(&cluster, &key).await.1["count"], 1200);
    assert_eq!(search(&cluster, &key).await, before);
    assert_eq!(placement(&cluster, "acme").await.0, "worker-0");
    let moving = placement_move(&cluster, "acme").await;
    assert_eq!(moving["state"], "aborted", "{moving}");
    assert!(moving["progress"].is_null(), "{moving}");
    let text = metrics(&cluster).await;
    assert!(
        text.lines().any(|l| l == "vaultvec_tenant_moves 1"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == r#"vaultvec_worker_placed_tenants{worker="worker-0"} 1"#),
        "{text}"
    );

    // When worker-1 is back, it is told to drop what it staged, and the move ends.
    let mut fake = fake_worker_1(&cluster).await;
    let (request_id, drop_step) = fake_transfer(&mut fake, |s| matches!(s, Step::DropFiles(_)))
        .await
        .expect("a drop of the leftover copy");
    assert_eq!(drop_step.tenant, "acme");
    use futures_util::SinkExt;
    fake.send(super::cluster::frame(
        request_id,
        proto::vaultvec::cluster::v1::envelope::Body::TransferTenantResponse(Default::default()),
    ))
    .await
    .unwrap();
    // The move ends once that answer is in.
    cluster.service().wait_for_no_moves().await;
    let (_, export) = cluster.admin("GET", "/admin/v1/audit/acme", None).await;
    let stages = move_stages(&export);
    assert_eq!(stages, ["started", "aborted", "done"]);
    assert!(placement_move(&cluster, "acme").await.is_null());
    drop(fake);
    cluster.shutdown().await;
}

/// A second connection to the running coordinator's database (to stage what a crash leaves).
fn second_store(cluster: &Cluster) -> coordinator::store::Store {
    let config = coordinator::config::Config::for_tests(&cluster.dir().join("coordinator"), &[]);
    let audit_key = coordinator::audit::AuditKey::new(&config.secrets.audit_key).unwrap();
    coordinator::store::Store::open(&config.data_dir.join("coordinator.sqlite"), audit_key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_cut_short_by_a_coordinator_restart_is_aborted_and_the_tenant_served_from_its_source()
 {
    let mut cluster = Cluster::start(2).await;
    let key = cluster.tenant("acme", None).await;
    cluster.create_collection(&key, "docs", 4).await;
    fill(&cluster, &key, 600).await;
    let (from, _) = placement(&cluster, "acme").await;
    let to = if from == "worker-0" {
        "worker-1"
    } else {
        "worker-0"
    };
    // The coordinator recorded the start of a move (and fenced the tenant), then stopped: the
    // row is written through a second connection to its database.
    second_store(&cluster)
        .begin_move(&coordinator::store::Actor("test".into()), "acme", to)
        .unwrap();
    cluster.restart_coordinator().await;
    cluster.service().wait_for_no_moves().await;
    assert_eq!(placement(&cluster, "acme").await.0, from);
    assert_eq!(count(&cluster, &key).await.1["count"], 600);
    let (_, export) = cluster.admin("GET", "/admin/v1/audit/acme", None).await;
    assert_eq!(move_stages(&export), ["started", "aborted", "done"]);
    let aborted = super::cluster::audit_rows(&export, "tenant.move")[1].clone();
    assert_eq!(aborted["actor"], "system", "{aborted}");
    assert_eq!(aborted["outcome"], "error", "{aborted}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_worker_gives_up_its_tenants_and_takes_no_new_ones_until_undrained() {
    let mut cluster = Cluster::start_without_workers(3, |_| {}).await;
    cluster.start_worker(0).await;
    // Three tenants, all on worker-0 (the only one up when they were placed).
    let mut keys = Vec::new();
    for (i, tenant) in ["t-a", "t-b", "t-c"].into_iter().enumerate() {
        let key = cluster.tenant(tenant, None).await;
        cluster.create_collection(&key, "docs", 4).await;
        fill(&cluster, &key, 300 + 100 * i as u64).await;
        assert_eq!(placement(&cluster, tenant).await.0, "worker-0");
        keys.push((tenant, key, 300 + 100 * i as u64));
    }
    cluster.start_worker(1).await;
    cluster.start_worker(2).await;

    let (status, started) = cluster
        .admin("POST", "/admin/v1/workers/worker-0/drain", None)
        .await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["tenants"], 3, "{started}");
    let w = worker_view(&cluster, "worker-0").await;
    assert_eq!(w["state"], "draining", "{w}");
    assert_eq!(w["draining"], true, "{w}");
    cluster.service().wait_for_drains().await;

    // Every tenant moved off with every point, spread over the other two.
    let mut on = std::collections::BTreeSet::new();
    for (tenant, key, n) in &keys {
        let (worker, _) = placement(&cluster, tenant).await;
        assert_ne!(worker, "worker-0", "{tenant}");
        on.insert(worker);
        assert_eq!(count(&cluster, key).await.1["count"], *n, "{tenant}");
    }
    assert_eq!(on.len(), 2, "spread over both: {on:?}");
    assert_eq!(worker_view(&cluster, "worker-0").await["placed_tenants"], 0);
    let text = metrics(&cluster).await;
    for line in [
        r#"vaultvec_worker_placed_tenants{worker="worker-0"} 0"#,
        r#"vaultvec_worker_state{worker="worker-0",state="draining"} 1"#,
        "vaultvec_tenant_moves 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    let left: Vec<_> = std::fs::read_dir(cluster.worker_dir(0).join("tenants"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "worker-0 keeps no copy: {left:?}");
    // A new tenant is not placed on the draining worker.
    let key = cluster.tenant("t-new", None).await;
    cluster.create_collection(&key, "docs", 4).await;
    assert_ne!(placement(&cluster, "t-new").await.0, "worker-0");
    let (_, export) = cluster.admin("GET", "/admin/v1/audit/platform", None).await;
    let drained = super::cluster::audit_rows(&export, "worker.drained");
    assert_eq!(drained.len(), 1, "{drained:?}");
    assert_eq!(drained[0]["details"]["moved"], 3, "{drained:?}");
    assert_eq!(drained[0]["outcome"], "ok", "{drained:?}");

    // Undrained, it is up and takes tenants again; unknown workers are refused.
    let (status, _) = cluster
        .admin("POST", "/admin/v1/workers/worker-0/undrain", None)
        .await;
    assert_eq!(status, 200);
    let w = worker_view(&cluster, "worker-0").await;
    assert_eq!(
        (w["state"].as_str(), w["draining"].as_bool()),
        (Some("up"), Some(false)),
        "{w}"
    );
    for path in [
        "/admin/v1/workers/worker-9/drain",
        "/admin/v1/workers/worker-9/undrain",
    ] {
        assert_eq!(cluster.admin("POST", path, None).await.0, 404, "{path}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_cut_short_by_a_coordinator_restart_goes_on_when_it_starts() {
    let mut cluster = Cluster::start_without_workers(2, |_| {}).await;
    cluster.start_worker(0).await;
    let key = cluster.tenant("acme", None).await;
    cluster.create_collection(&key, "docs", 4).await;
    fill(&cluster, &key, 400).await;
    cluster.start_worker(1).await;
    // The drain was recorded, then the coordinator stopped before moving anything.
    second_store(&cluster)
        .set_draining(&coordinator::store::Actor("test".into()), "worker-0", true)
        .unwrap();
    cluster.restart_coordinator().await;
    cluster.service().wait_for_drains().await;
    assert_eq!(placement(&cluster, "acme").await.0, "worker-1");
    assert_eq!(count(&cluster, &key).await.1["count"], 400);
    assert_eq!(worker_view(&cluster, "worker-0").await["state"], "draining");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_evens_out_tenants_over_the_workers_that_are_up() {
    let mut cluster = Cluster::start_without_workers(3, |_| {}).await;
    cluster.start_worker(0).await;
    let mut keys = Vec::new();
    for tenant in ["r-a", "r-b", "r-c", "r-d", "r-e"] {
        let key = cluster.tenant(tenant, None).await;
        cluster.create_collection(&key, "docs", 4).await;
        fill(&cluster, &key, 200).await;
        keys.push(key);
    }
    cluster.start_worker(1).await;
    cluster.start_worker(2).await;
    // Clients write and read every tenant throughout: a hand-over refuses nothing.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = tokio::spawn({
        let (http, keys, stop) = (cluster.url(""), keys.clone(), stop.clone());
        async move {
            let client = reqwest::Client::new();
            let (mut errors, mut requests) = (Vec::new(), 0usize);
            let mut id = 1000u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for key in &keys {
                    id += 1;
                    let point =
                        serde_json::json!({"points": [{"id": id, "vector": [1.0, 2.0, 3.0, 4.0]}]});
                    for (path, body) in [
                        ("/v1/collections/docs/points", point),
                        ("/v1/collections/docs/points/count", serde_json::json!({})),
                    ] {
                        let method = if path.ends_with("count") {
                            reqwest::Method::POST
                        } else {
                            reqwest::Method::PUT
                        };
                        let response = client
                            .request(method, format!("{http}{path}"))
                            .bearer_auth(key)
                            .json(&body)
                            .send()
                            .await
                            .unwrap();
                        requests += 1;
                        if !response.status().is_success() {
                            errors.push(format!("{path}: {}", response.status()));
                        }
                    }
                }
            }
            (requests, errors, id - 1000)
        }
    });
    let (status, answer) = cluster
        .admin(
            "POST",
            "/admin/v1/rebalance",
            Some(serde_json::json!({"max_moves": 0})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    // One move at most: one tenant goes.
    let (status, answer) = cluster
        .admin(
            "POST",
            "/admin/v1/rebalance",
            Some(serde_json::json!({"max_moves": 1})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["moves"].as_array().unwrap().len(), 1, "{answer}");
    let (status, answer) = cluster
        .admin("POST", "/admin/v1/rebalance", Some(serde_json::json!({})))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["moves"].as_array().unwrap().len(), 2, "{answer}");
    let placed = &answer["placed"];
    let mut counts: Vec<u64> = ["worker-0", "worker-1", "worker-2"]
        .iter()
        .map(|w| placed[*w].as_u64().unwrap())
        .collect();
    counts.sort_unstable();
    assert_eq!(counts, [1, 2, 2], "{answer}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (requests, errors, written) = clients.await.unwrap();
    assert!(requests > 0);
    assert!(
        errors.is_empty(),
        "{} of {requests} failed: {errors:?}",
        errors.len()
    );
    // Every write went to every tenant in turn: each holds its 200 points and its share.
    let mut total = 0;
    for key in &keys {
        let n = count(&cluster, key).await.1["count"].as_u64().unwrap();
        assert!(n >= 200, "{n}");
        total += n - 200;
    }
    assert_eq!(total, written);
    // Even already: nothing moves.
    let (_, answer) = cluster
        .admin("POST", "/admin/v1/rebalance", Some(serde_json::json!({})))
        .await;
    assert_eq!(answer["moves"].as_array().unwrap().len(), 0, "{answer}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_whose_source_dies_midway_keeps_the_tenant_there_with_every_point() {
    use futures_util::SinkExt;
    use proto::vaultvec::cluster::v1::transfer_tenant::Step;
    let mut cluster = Cluster::start_without_workers(2, |_| {}).await;
    cluster.start_worker(0).await;
    let key = cluster.tenant("acme", None).await;
    cluster.create_collection(&key, "docs", 4).await;
    fill(&cluster, &key, 1500).await;
    let before = search(&cluster, &key).await;
    let mut fake = fake_worker_1(&cluster).await;
    let mover = spawn_move_to_worker_1(&cluster, "acme");
    // The first piece reached the target; the source dies before the next one is read.
    let (request_id, _) = fake_transfer(&mut fake, |s| matches!(s, Step::ImportPiece(_)))
        .await
        .expect("a piece");
    cluster.kill_worker(0).await;
    cluster.hub().wait_for_worker_gone("worker-0").await;
    let ok =
        proto::vaultvec::cluster::v1::envelope::Body::TransferTenantResponse(Default::default());
    fake.send(super::cluster::frame(request_id, ok.clone()))
        .await
        .unwrap();
    // The move fails and the target is told to drop what it staged.
    let (drop_id, dropped) = fake_transfer(&mut fake, |s| matches!(s, Step::DropFiles(_)))
        .await
        .expect("a drop of the staged copy");
    assert_eq!(dropped.tenant, "acme");
    fake.send(super::cluster::frame(drop_id, ok)).await.unwrap();
    assert_eq!(mover.await.unwrap().0, 503);
    cluster.service().wait_for_no_moves().await;
    assert_eq!(placement(&cluster, "acme").await.0, "worker-0");

    // The source comes back with the tenant's files, which nothing touched.
    cluster.start_worker(0).await;
    assert_eq!(count(&cluster, &key).await.1["count"], 1500);
    assert_eq!(search(&cluster, &key).await, before);
    drop(fake);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_goes_on_when_its_caller_goes_away() {
    use futures_util::SinkExt;
    use proto::vaultvec::cluster::v1::transfer_tenant::Step;
    let mut cluster = Cluster::start_without_workers(2, |_| {}).await;
    cluster.start_worker(0).await;
    let key = cluster.tenant("acme", None).await;
    cluster.create_collection(&key, "docs", 4).await;
    fill(&cluster, &key, 600).await;
    let mut fake = fake_worker_1(&cluster).await;
    let service = cluster.service().clone();
    let caller =
        tokio::spawn(async move { service.move_tenant_detached("acme", Some("worker-1")).await });
    // The caller (an admin request whose client disconnected, say) goes away mid-copy.
    let (piece_id, _) = fake_transfer(&mut fake, |s| matches!(s, Step::ImportPiece(_)))
        .await
        .expect("a piece");
    caller.abort();
    let _ = caller.await;
    let ok =
        proto::vaultvec::cluster::v1::envelope::Body::TransferTenantResponse(Default::default());
    fake.send(super::cluster::frame(piece_id, ok.clone()))
        .await
        .unwrap();
    // The copy goes on to its commit, the placement switches and the source's copy goes.
    let (commit_id, _) = fake_transfer(&mut fake, |s| matches!(s, Step::ImportCommit(_)))
        .await
        .expect("the commit");
    fake.send(super::cluster::frame(commit_id, ok))
        .await
        .unwrap();
    // A bound on a failure, not a wait for readiness: a cancelled move never ends.
    tokio::time::timeout(
        Duration::from_secs(60),
        cluster.service().wait_for_no_moves(),
    )
    .await
    .expect("the move ended");
    assert_eq!(placement(&cluster, "acme").await.0, "worker-1");
    assert!(!cluster.worker_dir(0).join("tenants/acme").exists());
    let (_, export) = cluster.admin("GET", "/admin/v1/audit/acme", None).await;
    assert_eq!(move_stages(&export), ["started", "switched", "done"]);
    drop(fake);
    cluster.shutdown().await;
}
