//! The scheduler on a clock the test moves (nothing waits for real time): the audit
//! verification runs when due, is shown with its last run and next run in `GET /admin/v1/jobs`,
//! and raises an integrity alert (metric, platform audit row, job outcome) for a chain edited in
//! the SQLite file; audit exports say whether their chain verifies.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use coordinator::jobs::{CENSUS, ManualClock, ROTATE_KEKS, VERIFY_AUDIT};
use serde_json::Value;
use tests::Cluster;

const T0: u64 = 1_800_000_000_000;
const HOUR: Duration = Duration::from_secs(3600);

static CLOCK: LazyLock<Arc<ManualClock>> = LazyLock::new(|| Arc::new(ManualClock::new(T0)));

fn on_the_test_clock(config: &mut coordinator::config::Config) {
    config.clock = CLOCK.clone();
}

/// Job `name` as `GET /admin/v1/jobs` shows it.
pub(crate) async fn job(cluster: &Cluster, name: &str) -> Value {
    let (status, body) = cluster.admin("GET", "/admin/v1/jobs", None).await;
    assert_eq!(status, 200, "{body}");
    body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

async fn verify_job(cluster: &Cluster) -> Value {
    job(cluster, VERIFY_AUDIT).await
}

async fn alerts_metric(cluster: &Cluster) -> u64 {
    cluster
        .metric("vaultvec_audit_integrity_alerts_total")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_verification_runs_when_due_and_raises_an_alert_for_an_edited_chain() {
    let mut cluster = Cluster::start_without_workers(1, on_the_test_clock).await;
    assert_eq!(cluster.service().clock().now_ms(), T0);
    cluster.tenant("acme", None).await;
    cluster.tenant("beta", None).await;

    // Scheduled an hour after the start; nothing ran yet.
    let job = verify_job(&cluster).await;
    assert_eq!(job["next_run_ms"], T0 + 3_600_000, "{job}");
    assert_eq!(job["runs"], 0, "{job}");
    assert!(job["last_outcome"].is_null(), "{job}");
    assert_eq!(job["every_s"], 3600, "{job}");

    CLOCK.advance(HOUR);
    cluster.service().wait_for_job_runs(VERIFY_AUDIT, 1).await;
    let job = verify_job(&cluster).await;
    assert_eq!(job["last_outcome"], "ok", "{job}");
    assert_eq!(job["last_start_ms"], T0 + 3_600_000, "{job}");
    assert_eq!(job["next_run_ms"], T0 + 7_200_000, "{job}");
    assert_eq!(
        job["last_details"]["failed"],
        serde_json::json!([]),
        "{job}"
    );
    // platform, acme and beta.
    assert_eq!(job["last_details"]["chains"], 3, "{job}");
    assert_eq!(alerts_metric(&cluster).await, 0);

    // Someone with the file drops the trigger and edits one of acme's rows.
    let db =
        rusqlite::Connection::open(cluster.dir().join("coordinator/coordinator.sqlite")).unwrap();
    // The coordinator's jobs may be writing now (their runs, usage): wait for its locks.
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute_batch(
        "DROP TRIGGER audit_rows_no_update;
         UPDATE audit_rows SET actor = 'nobody' WHERE chain = 'acme' AND seq = 1;",
    )
    .unwrap();
    let (_, export) = cluster.admin("GET", "/admin/v1/audit/acme", None).await;
    assert_eq!(export["chain_verified"], false, "{export}");
    assert!(
        export["verify_error"].as_str().unwrap().contains("row 1"),
        "{export}"
    );

    // Not before it is due; then the alert.
    CLOCK.advance(HOUR - Duration::from_millis(1));
    assert_eq!(verify_job(&cluster).await["runs"], 1);
    CLOCK.advance(Duration::from_millis(1));
    cluster.service().wait_for_job_runs(VERIFY_AUDIT, 2).await;
    let job = verify_job(&cluster).await;
    assert_eq!(job["last_outcome"], "error", "{job}");
    let failed = job["last_details"]["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{job}");
    assert_eq!(failed[0]["chain"], "acme", "{job}");
    assert_eq!(failed[0]["line"], 1, "{job}");
    assert_eq!(alerts_metric(&cluster).await, 1);
    let (_, platform) = cluster.admin("GET", "/admin/v1/audit/platform", None).await;
    assert_eq!(platform["chain_verified"], true, "{platform}");
    let alerts = super::cluster::audit_rows(&platform, "audit.integrity_alert");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["resource"], "acme", "{alerts:?}");
    assert_eq!(alerts[0]["actor"], "system", "{alerts:?}");
    // The untouched tenant's chain still verifies.
    let (_, beta) = cluster.admin("GET", "/admin/v1/audit/beta", None).await;
    assert_eq!(beta["chain_verified"], true, "{beta}");

    // A coordinator that missed runs (the clock jumped three hours) runs once, not three times.
    CLOCK.advance(3 * HOUR);
    cluster.service().wait_for_job_runs(VERIFY_AUDIT, 3).await;
    let job = verify_job(&cluster).await;
    assert_eq!(job["runs"], 3, "{job}");
    assert_eq!(job["next_run_ms"], T0 + 6 * 3_600_000, "{job}");

    // A restarted coordinator keeps the schedule and the record of the last run.
    CLOCK.advance(Duration::from_secs(600));
    cluster.restart_coordinator().await;
    let after = verify_job(&cluster).await;
    for field in [
        "runs",
        "next_run_ms",
        "last_start_ms",
        "last_outcome",
        "last_details",
    ] {
        assert_eq!(after[field], job[field], "{field}: {after} after {job}");
    }
    cluster.shutdown().await;
}

static ROTATION_CLOCK: LazyLock<Arc<ManualClock>> =
    LazyLock::new(|| Arc::new(ManualClock::new(T0)));

/// `pro` rotates its tenants' KEKs daily; the job looks every hour.
fn rotating_daily(config: &mut coordinator::config::Config) {
    config.clock = ROTATION_CLOCK.clone();
    config
        .tiers
        .get_mut("pro")
        .expect("pro tier")
        .rotate_kek_every_days = 1;
}

/// Upserts points `0..n` (dimension 4, with payloads) into the tenant's collection `docs`.
async fn put_points(cluster: &Cluster, key: &str, n: u64) {
    let points: Vec<Value> = (0..n)
        .map(|id| serde_json::json!({"id": id, "vector": [id as f32, 1.0, 2.0, 3.0], "payload": {"n": id}}))
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

async fn rotate_job(cluster: &Cluster) -> Value {
    job(cluster, ROTATE_KEKS).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keks_are_rotated_when_their_tiers_policy_says_so_and_the_data_stays_readable() {
    let mut cluster = Cluster::start_without_workers(1, rotating_daily).await;
    cluster.start_worker(0).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.tenant("never", Some("free")).await;
    cluster.create_collection(&key, "docs", 4).await;
    put_points(&cluster, &key, 50).await;
    let search = || async {
        let (status, body) = cluster
            .http(
                "POST",
                "/v1/collections/docs/points/search",
                Some(&key),
                Some(serde_json::json!({"vector": [7.0, 1.0, 2.0, 3.0], "top_k": 3, "with_payload": true})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    };
    let before = search().await;

    // Created more than a day before the first run (the test clock starts after the wall
    // clock): rotated at once; the free tier's tenant has no policy.
    ROTATION_CLOCK.advance(HOUR);
    cluster.service().wait_for_job_runs(ROTATE_KEKS, 1).await;
    let job = rotate_job(&cluster).await;
    assert_eq!(job["last_outcome"], "ok", "{job}");
    assert_eq!(
        job["last_details"]["rotated"],
        serde_json::json!([{"tenant": "acme", "kek_version": 2}]),
        "{job}"
    );
    // Re-wrapped on the worker: the data reads the same under the new KEK.
    assert_eq!(search().await, before);

    // Not again within the day.
    ROTATION_CLOCK.advance(HOUR);
    cluster.service().wait_for_job_runs(ROTATE_KEKS, 2).await;
    let job = rotate_job(&cluster).await;
    assert_eq!(
        job["last_details"]["rotated"],
        serde_json::json!([]),
        "{job}"
    );

    // A day after the last rotation: version 3.
    ROTATION_CLOCK.advance(23 * HOUR);
    cluster.service().wait_for_job_runs(ROTATE_KEKS, 3).await;
    let job = rotate_job(&cluster).await;
    assert_eq!(
        job["last_details"]["rotated"],
        serde_json::json!([{"tenant": "acme", "kek_version": 3}]),
        "{job}"
    );
    assert_eq!(search().await, before);

    // Each rotation is in the tenant's chain, by the scheduler, with its version.
    let (_, chain) = cluster.admin("GET", "/admin/v1/audit/acme", None).await;
    let rotations = super::cluster::audit_rows(&chain, "kek.rotate");
    let seen: Vec<(String, u64)> = rotations
        .iter()
        .map(|r| {
            (
                r["actor"].as_str().unwrap().to_owned(),
                r["details"]["kek_version"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("system".to_owned(), 2), ("system".to_owned(), 3)],
        "{rotations:?}"
    );
    cluster.shutdown().await;
}

static CENSUS_CLOCK: LazyLock<Arc<ManualClock>> = LazyLock::new(|| Arc::new(ManualClock::new(T0)));

fn on_the_census_clock(config: &mut coordinator::config::Config) {
    config.clock = CENSUS_CLOCK.clone();
}

async fn census(cluster: &Cluster, query: Value) -> (u16, Value) {
    cluster.admin("POST", "/admin/v1/census", Some(query)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_census_records_each_tenants_figures_and_traffic() {
    let mut cluster = Cluster::start_without_workers(1, on_the_census_clock).await;
    cluster.start_worker(0).await;
    let acme = cluster.tenant("acme", Some("pro")).await;
    let beta = cluster.tenant("beta", Some("free")).await;
    cluster.tenant("idle", Some("free")).await;
    // Known traffic on 2027-01-15 (T0 is 08:00 UTC that day).
    cluster.create_collection(&acme, "docs", 4).await;
    cluster.create_collection(&beta, "docs", 4).await;
    put_points(&cluster, &acme, 30).await;
    put_points(&cluster, &beta, 5).await;
    let query = serde_json::json!({"vector": [1.0, 1.0, 2.0, 3.0], "top_k": 3});
    for _ in 0..3 {
        let (status, _) = cluster
            .http(
                "POST",
                "/v1/collections/docs/points/search",
                Some(&acme),
                Some(query.clone()),
            )
            .await;
        assert_eq!(status, 200);
    }
    let (status, body) = cluster
        .http(
            "POST",
            "/v1/collections/docs/points/search/batch",
            Some(&acme),
            Some(serde_json::json!({ "searches": [query.clone(), query.clone()] })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // A refused request counts too.
    let (status, _) = cluster
        .http(
            "POST",
            "/v1/collections/nope/points/count",
            Some(&acme),
            Some(serde_json::json!({})),
        )
        .await;
    assert_eq!(status, 404);
    let (_, info) = cluster
        .http("GET", "/v1/collections/docs", Some(&acme), None)
        .await;
    let acme_bytes = info["stored_bytes"].as_u64().expect("stored_bytes");
    assert!(acme_bytes >= 30 * 16, "{info}");

    // beta is paused: its files move to cold storage, and the census counts their bytes there.
    let (status, body) = cluster
        .admin("POST", "/admin/v1/tenants/beta/pause", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["storage"], "cold", "{body}");
    let cold_bytes: u64 = walk_files(&cluster.worker_dir(0).join("cold/beta"))
        .iter()
        .map(|f| f.metadata().unwrap().len())
        .sum();
    assert!(cold_bytes > 0);

    // The census runs a day after the start and records the day that ended.
    CENSUS_CLOCK.advance(24 * HOUR);
    cluster.service().wait_for_job_runs(CENSUS, 1).await;
    let (status, body) = census(
        &cluster,
        serde_json::json!({"from": "2027-01-15", "to": "2027-01-15"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let rows = body["rows"].as_array().unwrap();
    let row = |tenant: &str| {
        rows.iter()
            .find(|r| r["tenant"] == tenant)
            .cloned()
            .unwrap_or_else(|| panic!("no {tenant} in {body}"))
    };
    assert_eq!(rows.len(), 3, "{body}");
    let a = row("acme");
    // create, upsert, 3 searches, a batch, the refused count, the collection read.
    assert_eq!(
        (a["requests"].as_u64(), a["searches"].as_u64()),
        (Some(8), Some(4)),
        "{a}"
    );
    assert_eq!(a["tier"], "pro", "{a}");
    assert_eq!(a["state"], "active", "{a}");
    assert_eq!(a["collections"], 1, "{a}");
    assert_eq!(a["points"], 30, "{a}");
    assert_eq!(a["bytes_hot"], acme_bytes, "{a}");
    assert_eq!(a["bytes_cold"], 0, "{a}");
    let b = row("beta");
    assert_eq!(
        (b["requests"].as_u64(), b["searches"].as_u64()),
        (Some(2), Some(0)),
        "{b}"
    );
    assert_eq!(b["state"], "paused", "{b}");
    assert!(b["points"].is_null(), "{b}");
    assert_eq!(b["bytes_cold"], cold_bytes, "{b}");
    let i = row("idle");
    assert_eq!(i["state"], "unplaced", "{i}");
    assert_eq!(
        (i["requests"].as_u64(), i["points"].as_u64()),
        (Some(0), Some(0)),
        "{i}"
    );
    assert_eq!(a["day"], "2027-01-15", "{a}");

    // One tenant; pages.
    let (_, one) = census(
        &cluster,
        serde_json::json!({"from": "2027-01-01", "to": "2027-01-31", "tenant": "beta"}),
    )
    .await;
    assert_eq!(one["rows"].as_array().unwrap().len(), 1, "{one}");
    let (_, first) = census(
        &cluster,
        serde_json::json!({"from": "2027-01-15", "to": "2027-01-15", "limit": 2}),
    )
    .await;
    assert_eq!(first["rows"].as_array().unwrap().len(), 2, "{first}");
    let after = first["next"].as_str().expect("a cursor").to_owned();
    let (_, second) = census(
        &cluster,
        serde_json::json!({"from": "2027-01-15", "to": "2027-01-15", "limit": 2, "after": after}),
    )
    .await;
    assert_eq!(second["rows"][0]["tenant"], "idle", "{second}");
    assert!(second["next"].is_null(), "{second}");

    // As CSV: a header line, a line per row, the cursor in a header.
    let response = reqwest::Client::new()
        .post(cluster.url("/admin/v1/census"))
        .bearer_auth(tests::ADMIN_TOKEN)
        .json(&serde_json::json!({"from": "2027-01-15", "to": "2027-01-15", "format": "csv", "limit": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    assert_eq!(response.headers()["vaultvec-next"], "2027-01-15/beta");
    let text = response.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "day,tenant,tier,state,collections,points,bytes_hot,bytes_cold,requests,searches,taken_ms"
    );
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[1].starts_with(&format!(
            "2027-01-15,acme,pro,active,1,30,{acme_bytes},0,8,4,"
        )),
        "{text}"
    );

    // Clear refusals.
    for bad in [
        serde_json::json!({"from": "2027-1-15", "to": "2027-01-15"}),
        serde_json::json!({"from": "2027-01-16", "to": "2027-01-15"}),
        serde_json::json!({"from": "2025-01-01", "to": "2027-01-15"}),
        serde_json::json!({"from": "2027-01-15", "to": "2027-01-15", "limit": 0}),
        serde_json::json!({"from": "2027-01-15", "to": "2027-01-15", "limit": 10001}),
        serde_json::json!({"from": "2027-01-15", "to": "2027-01-15", "after": "junk"}),
        serde_json::json!({"from": "2027-01-15", "to": "2027-01-15", "bogus": 1}),
        serde_json::json!({"to": "2027-01-15"}),
        serde_json::json!({"from": "2027-01-15", "to": "2027-01-15", "format": "xml"}),
    ] {
        let (status, answer) = census(&cluster, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }

    // Counts survive a coordinator restart (flushed when it stops) and land on their day.
    let (status, body) = cluster
        .admin("POST", "/admin/v1/tenants/beta/resume", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = cluster
        .http(
            "POST",
            "/v1/collections/docs/points/search",
            Some(&beta),
            Some(query.clone()),
        )
        .await;
    assert_eq!(status, 200);
    cluster.restart_coordinator().await;
    CENSUS_CLOCK.advance(24 * HOUR);
    cluster.service().wait_for_job_runs(CENSUS, 2).await;
    let (_, day2) = census(
        &cluster,
        serde_json::json!({"from": "2027-01-16", "to": "2027-01-16", "tenant": "beta"}),
    )
    .await;
    let b = &day2["rows"][0];
    assert_eq!(
        (b["requests"].as_u64(), b["searches"].as_u64()),
        (Some(1), Some(1)),
        "{day2}"
    );

    // The census kept every chain's signed head and exported it to a file only the owner reads.
    let file = cluster
        .dir()
        .join("coordinator/audit-anchors/2027-01-15.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let heads: Vec<Value> = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let chains: Vec<&str> = heads.iter().map(|h| h["chain"].as_str().unwrap()).collect();
    assert!(
        chains.contains(&"platform") && chains.contains(&"acme"),
        "{heads:?}"
    );
    let anchored = heads.iter().find(|h| h["chain"] == "acme").unwrap()["seq"]
        .as_u64()
        .unwrap();
    let (_, verdict) = cluster
        .admin("POST", "/admin/v1/audit/acme/verify", None)
        .await;
    assert_eq!(verdict["ok"], true, "{verdict}");
    // Someone with the file cuts acme's chain back to before the kept head: every row left
    // still links, and the kept head is what catches it.
    let db =
        rusqlite::Connection::open(cluster.dir().join("coordinator/coordinator.sqlite")).unwrap();
    // The coordinator's jobs may be writing now (their runs, usage): wait for its locks.
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute_batch("DROP TRIGGER audit_rows_no_delete;")
        .unwrap();
    db.execute(
        "DELETE FROM audit_rows WHERE chain = 'acme' AND seq >= ?1",
        [anchored as i64],
    )
    .unwrap();
    let (_, verdict) = cluster
        .admin("POST", "/admin/v1/audit/acme/verify", None)
        .await;
    assert_eq!(verdict["ok"], false, "{verdict}");
    let (_, export) = cluster.admin("GET", "/admin/v1/audit/acme", None).await;
    assert_eq!(export["chain_verified"], false, "{export}");
    cluster.shutdown().await;
}

/// Every file under `dir`, any depth.
fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}
