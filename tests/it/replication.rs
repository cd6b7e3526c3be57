//! Replicated tenants (tiers with `replicas` = 2) on real worker processes: the loss of a worker
//! under load loses no acknowledged write and keeps searches answered; a copy that was away
//! serves nothing until it caught up; a lost copy is replaced after the grace period; a
//! coordinator restart makes replicas copy their primary again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use coordinator::cluster::HealthConfig;
use serde_json::{Value, json};
use tests::Cluster;

/// Down after 4 s without a heartbeat; `pro` keeps two copies; lost copies are replaced after
/// `REPLACE_AFTER`.
fn replicated(config: &mut coordinator::config::Config) {
    config.health = HealthConfig {
        suspect_after: Duration::from_secs(2),
        down_after: Duration::from_secs(4),
    };
    config.replace_after = Duration::from_secs(3600);
    config.tiers.get_mut("pro").expect("pro tier").replicas = 2;
}

/// As [`replicated`], replacing a lost copy as soon as its worker is down.
fn replaced_quickly(config: &mut coordinator::config::Config) {
    replicated(config);
    config.replace_after = config.health.down_after;
}

/// The tenant's primary worker and its replicas (worker, state).
async fn copies(cluster: &Cluster, tenant: &str) -> (String, Vec<(String, String)>) {
    let (status, body) = cluster.admin("GET", "/admin/v1/placements", None).await;
    assert_eq!(status, 200, "{body}");
    let p = body["placements"]
        .as_array()
        .expect("placements")
        .iter()
        .find(|p| p["tenant"] == tenant)
        .cloned()
        .unwrap_or_else(|| panic!("{tenant} is not placed: {body}"));
    let replicas = p["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| {
            (
                r["worker"].as_str().unwrap().to_owned(),
                r["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (p["worker"].as_str().unwrap().to_owned(), replicas)
}

fn index_of(worker: &str) -> usize {
    worker
        .strip_prefix("worker-")
        .and_then(|i| i.parse().ok())
        .expect("a worker-N id")
}

/// A client of the public HTTP API that tasks can own.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    fn new(cluster: &Cluster, key: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            base: cluster.url(""),
            key: key.to_owned(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        match self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
        {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(err) => (0, json!({ "transport": err.to_string() })),
        }
    }

    async fn upsert(&self, id: u64, version: u64) -> (u16, Value) {
        let point = json!({
            "id": id,
            "vector": [id as f32, version as f32, 1.0, (id % 3) as f32],
            "payload": { "v": version },
        });
        self.call(
            "PUT",
            "/v1/collections/docs/points",
            json!({ "points": [point] }),
        )
        .await
    }

    async fn search(&self) -> (u16, Value) {
        self.call(
            "POST",
            "/v1/collections/docs/points/search",
            json!({"vector": [1.0, 1.0, 1.0, 1.0], "top_k": 3}),
        )
        .await
    }

    /// The `v` payload of each of `ids` that exists.
    async fn versions(&self, ids: &[u64]) -> Result<HashMap<u64, u64>, (u16, Value)> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(500) {
            let (status, body) = self
                .call(
                    "POST",
                    "/v1/collections/docs/points/get",
                    json!({ "ids": chunk, "with_payload": true }),
                )
                .await;
            if status != 200 {
                return Err((status, body));
            }
            for p in body["points"].as_array().expect("points") {
                out.insert(
                    p["id"].as_u64().expect("numeric id"),
                    p["payload"]["v"].as_u64().expect("a version"),
                );
            }
        }
        Ok(out)
    }
}

/// What the writers had acknowledged: id -> last acknowledged version.
type Acked = Arc<std::sync::Mutex<HashMap<u64, u64>>>;

/// Writer `w` upserts new ids and rewrites old ones with higher versions, one at a time; an
/// attempt that is not acknowledged is retried unchanged until it is (a write is never
/// abandoned unacknowledged, so the last acknowledged version is the one stored).
async fn writer(client: Client, w: u64, stop: Arc<AtomicBool>, acked: Acked) -> usize {
    let mut errors = 0;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = if n % 3 == 0 {
            w * 1_000_000 + n / 2
        } else {
            w * 1_000_000 + n
        };
        let version = n;
        loop {
            let (status, _) = client.upsert(id, version).await;
            if status == 200 {
                acked.lock().unwrap().insert(id, version);
                break;
            }
            errors += 1;
            // A client's retry pause, not a wait for readiness.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    errors
}

/// Searches until stopped: (answered, failed, longest time without an answer).
async fn reader(client: Client, stop: Arc<AtomicBool>) -> (usize, usize, Duration) {
    let (mut ok, mut failed) = (0, 0);
    let mut last_ok = Instant::now();
    let mut longest = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        let (status, _) = client.search().await;
        if status == 200 {
            ok += 1;
            longest = longest.max(last_ok.elapsed());
            last_ok = Instant::now();
        } else {
            failed += 1;
        }
    }
    longest = longest.max(last_ok.elapsed());
    (ok, failed, longest)
}

/// Asserts every acknowledged write is stored with its acknowledged version.
async fn assert_all_acked(client: &Client, acked: &HashMap<u64, u64>) {
    let mut ids: Vec<u64> = acked.keys().copied().collect();
    ids.sort_unstable();
    let stored = client.versions(&ids).await.expect("reading the points");
    let wrong: Vec<_> = acked
        .iter()
        .filter(|(id, v)| stored.get(id) != Some(v))
        .map(|(id, v)| (*id, *v, stored.get(id).copied()))
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} acknowledged writes are missing or old (id, acked, stored): {wrong:?}",
        acked
            .iter()
            .filter(|(id, v)| stored.get(id) != Some(v))
            .count(),
        acked.len()
    );
}

async fn start(tweak: fn(&mut coordinator::config::Config), workers: usize) -> Cluster {
    let mut cluster = Cluster::start_without_workers(workers, tweak).await;
    for i in 0..workers {
        cluster.start_worker_process(i).await;
    }
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_under_load_loses_no_acknowledged_write_and_its_copy_catches_up() {
    let mut cluster = start(replicated, 3).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 4).await;
    let (primary, replicas) = copies(&cluster, "acme").await;
    assert_eq!(replicas.len(), 1, "{replicas:?}");
    assert_eq!(replicas[0].1, "live", "a new tenant's copies start live");
    let replica = replicas[0].0.clone();
    assert_ne!(primary, replica);

    let client = Client::new(&cluster, &key);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let writers: Vec<_> = (1..=3)
        .map(|w| tokio::spawn(writer(client.clone(), w, stop.clone(), acked.clone())))
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(reader(client.clone(), stop.clone())))
        .collect();
    // Let the load run, then kill the primary's worker outright.
    while acked.lock().unwrap().len() < 200 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = Instant::now();
    cluster.kill_worker(index_of(&primary)).await;
    let acked_at_kill = acked.lock().unwrap().len();
    // Writes go on, on the other copy, until a few hundred more are acknowledged.
    while acked.lock().unwrap().len() < acked_at_kill + 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first_after = killed_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut write_errors = 0;
    for w in writers {
        write_errors += w.await.expect("writer");
    }
    let (mut searches, mut search_errors, mut longest) = (0, 0, Duration::ZERO);
    for r in readers {
        let (ok, failed, gap) = r.await.expect("reader");
        searches += ok;
        search_errors += failed;
        longest = longest.max(gap);
    }
    eprintln!(
        "failover: {} writes acknowledged ({write_errors} retried), {searches} searches, \
         {search_errors} failed, longest gap {longest:?}, 300 writes after the kill took {first_after:?}",
        acked.lock().unwrap().len()
    );
    assert!(searches > 0);
    let acked = acked.lock().unwrap().clone();
    assert_all_acked(&client, &acked).await;

    // The surviving copy is the primary now; the killed one is stale and serves nothing.
    let (now_primary, replicas) = copies(&cluster, "acme").await;
    assert_eq!(now_primary, replica);
    assert_eq!(replicas, vec![(primary.clone(), "stale".to_owned())]);

    // Restarted, the killed copy catches up, and then holds everything by itself.
    cluster.start_worker_process(index_of(&primary)).await;
    cluster.service().wait_for_replicas_settled().await;
    let (_, replicas) = copies(&cluster, "acme").await;
    assert_eq!(replicas, vec![(primary.clone(), "live".to_owned())]);
    cluster.kill_worker(index_of(&replica)).await;
    assert_all_acked(&client, &acked).await;
    let (status, body) = client.upsert(7, 7).await;
    assert_eq!(status, 200, "writes go on with the caught-up copy: {body}");

    let export = cluster.admin("GET", "/admin/v1/audit/acme", None).await.1;
    let actions: Vec<String> = export["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["action"].as_str().unwrap().to_owned())
        .collect();
    for action in ["replica.add", "replica.stale", "replica.live"] {
        assert!(
            actions.iter().any(|a| a == action),
            "no {action} in {actions:?}"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_missed_writes_serves_nothing_until_it_caught_up() {
    let mut cluster = start(replicated, 2).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 4).await;
    let client = Client::new(&cluster, &key);
    for id in 0..20 {
        assert_eq!(client.upsert(id, 1).await.0, 200);
    }
    let (primary, replicas) = copies(&cluster, "acme").await;
    let replica = replicas[0].0.clone();

    // The replica's worker dies; a write goes to the primary alone, and the replica is stale.
    cluster.kill_worker(index_of(&replica)).await;
    let (status, body) = client.upsert(100, 2).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        copies(&cluster, "acme").await.1,
        vec![(replica.clone(), "stale".to_owned())]
    );

    // Now the primary dies and the stale copy returns: it must not answer (it lacks point 100).
    cluster.kill_worker(index_of(&primary)).await;
    cluster.start_worker_process(index_of(&replica)).await;
    let (status, body) = client
        .call(
            "POST",
            "/v1/collections/docs/points/get",
            json!({ "ids": [100] }),
        )
        .await;
    assert_eq!(status, 503, "a stale copy answered: {body}");
    let (status, body) = client.search().await;
    assert_eq!(status, 503, "a stale copy answered: {body}");
    let (status, body) = client.upsert(101, 3).await;
    assert_eq!(status, 503, "a stale copy took a write: {body}");

    // The primary returns: the stale copy catches up from it and then holds point 100 alone.
    cluster.start_worker_process(index_of(&primary)).await;
    cluster.service().wait_for_replicas_settled().await;
    cluster.kill_worker(index_of(&primary)).await;
    let versions = client.versions(&[0, 19, 100]).await.expect("reading");
    assert_eq!(versions.get(&100), Some(&2), "{versions:?}");
    assert_eq!(versions.get(&19), Some(&1), "{versions:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_lost_for_the_grace_period_is_replaced_on_another_worker() {
    let mut cluster = start(replaced_quickly, 3).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 4).await;
    let client = Client::new(&cluster, &key);
    for id in 0..50 {
        assert_eq!(client.upsert(id, 1).await.0, 200);
    }
    let (primary, replicas) = copies(&cluster, "acme").await;
    let lost = replicas[0].0.clone();
    let third = (0..3)
        .map(|i| format!("worker-{i}"))
        .find(|w| *w != primary && *w != lost)
        .expect("a third worker");
    cluster.kill_worker(index_of(&lost)).await;
    assert_eq!(client.upsert(50, 2).await.0, 200);
    // After the grace period the tenant gets a copy on the third worker, which catches up, and
    // the lost one is dropped.
    loop {
        cluster.service().wait_for_replicas_settled().await;
        let (_, replicas) = copies(&cluster, "acme").await;
        if replicas.iter().all(|(w, _)| *w != lost) {
            assert_eq!(replicas, vec![(third.clone(), "live".to_owned())]);
            break;
        }
        cluster.hub().wait_for_change().await;
    }
    cluster.kill_worker(index_of(&primary)).await;
    let versions = client.versions(&[0, 49, 50]).await.expect("reading");
    assert_eq!(versions.get(&50), Some(&2), "{versions:?}");
    assert_eq!(versions.get(&0), Some(&1), "{versions:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_coordinator_restart_replicas_copy_their_primary_before_serving() {
    let mut cluster = start(replicated, 2).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 4).await;
    let client = Client::new(&cluster, &key);
    for id in 0..30 {
        assert_eq!(client.upsert(id, 1).await.0, 200);
    }
    cluster.restart_coordinator().await;
    cluster.service().wait_for_replicas_settled().await;
    assert_eq!(cluster.service().replicas_caught_up(), 1);
    let (primary, replicas) = copies(&cluster, "acme").await;
    assert_eq!(replicas.len(), 1);
    assert_eq!(replicas[0].1, "live");
    cluster.kill_worker(index_of(&primary)).await;
    let versions = client
        .versions(&(0..30).collect::<Vec<_>>())
        .await
        .expect("reading");
    assert_eq!(versions.len(), 30, "{versions:?}");
    let export = cluster.admin("GET", "/admin/v1/audit/acme", None).await.1;
    let reasons: Vec<String> = export["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["action"] == "replica.stale")
        .map(|r| r["details"]["reason"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("coordinator restarted")),
        "{reasons:?}"
    );
    cluster.shutdown().await;
}
