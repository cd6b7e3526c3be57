//! Replicated tenants (tiers with `replicas` = 2) on real worker processes: the loss of a worker
//! under load loses no acknowledged write and keeps searches answered; a copy that was away (its
//! process killed, or its link cut) serves nothing until it caught up; a lost copy is replaced
//! after the grace period; a coordinator restart makes replicas copy their primary again; and a
//! seeded random mix of all of these, with moves, keeps every acknowledged write.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use coordinator::cluster::HealthConfig;
use serde_json::{Value, json};
use tests::Cluster;
use tests::partition::Link;

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
        let id = if n.is_multiple_of(3) {
            w * 1_000_000 + n / 2
        } else {
            w * 1_000_000 + n
        };
        let version = n;
        let mut tries = 0;
        loop {
            let (status, body) = client.upsert(id, version).await;
            if status == 200 {
                acked.lock().unwrap().insert(id, version);
                break;
            }
            tries += 1;
            assert!(
                tries < 500,
                "a write failed 500 times, the last: {status} {body}"
            );
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

/// Starts `n` worker processes, each dialing the coordinator through its own [`Link`].
async fn start_behind_links(
    tweak: fn(&mut coordinator::config::Config),
    n: usize,
) -> (Cluster, Vec<Link>) {
    let mut cluster = Cluster::start_without_workers(n, tweak).await;
    let mut links = Vec::new();
    for i in 0..n {
        let link = Link::start(cluster.cluster).await;
        let url = format!("ws://{}/v1/cluster", link.addr());
        cluster.start_worker_process_dialing(i, &url).await;
        links.push(link);
    }
    (cluster, links)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_copy_is_written_around_and_after_the_heal_catches_up_before_serving() {
    let (mut cluster, links) = start_behind_links(replicated, 2).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 4).await;
    let client = Client::new(&cluster, &key);
    for id in 0..20 {
        assert_eq!(client.upsert(id, 1).await.0, 200);
    }
    let (primary, replicas) = copies(&cluster, "acme").await;
    let replica = replicas[0].0.clone();

    // The primary's link goes silent (its process runs on, its socket stays open). The next
    // write waits until the tracker calls it down, then goes on with the other copy alone.
    links[index_of(&primary)].cut();
    let (status, body) = client.upsert(100, 2).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(client.search().await.0, 200);
    let (now_primary, replicas) = copies(&cluster, "acme").await;
    assert_eq!(now_primary, replica);
    assert_eq!(replicas, vec![(primary.clone(), "stale".to_owned())]);
    for id in 101..110 {
        assert_eq!(client.upsert(id, 2).await.0, 200);
    }

    // Healed, the cut worker reconnects with its old copy: it serves nothing until it caught
    // up, and then holds everything, the writes made while it was cut off included.
    links[index_of(&primary)].heal();
    cluster.hub().wait_for_worker(&primary).await;
    cluster.service().wait_for_replicas_settled().await;
    assert_eq!(
        copies(&cluster, "acme").await.1,
        vec![(primary.clone(), "live".to_owned())]
    );
    cluster.kill_worker(index_of(&replica)).await;
    let ids: Vec<u64> = (0..20).chain(100..110).collect();
    let versions = client.versions(&ids).await.expect("reading");
    for id in ids {
        let want = if id < 20 { 1 } else { 2 };
        assert_eq!(versions.get(&id), Some(&want), "point {id}: {versions:?}");
    }
    cluster.shutdown().await;
}

/// A small seeded generator (SplitMix64), so a failing run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a point may hold at the end: its last acknowledged version, or a version written after
/// it whose outcome was unknown.
#[derive(Default)]
struct Possible {
    acked: Option<u64>,
    unknown: Vec<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_kills_restarts_partitions_and_moves_lose_no_acknowledged_write() {
    let seed = std::env::var("VAULTVEC_FLEET_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("randomized fleet test: seed {seed} (set VAULTVEC_FLEET_SEED to replay)");
    for run in 0..3u64 {
        let mut rng = Rng(seed.wrapping_add(run));
        let (mut cluster, links) = start_behind_links(replicated, 3).await;
        let key = cluster.tenant("acme", Some("pro")).await;
        cluster.create_collection(&key, "docs", 4).await;
        let client = Client::new(&cluster, &key);
        let mut model: HashMap<u64, Possible> = HashMap::new();
        let mut running = [true; 3];
        let mut cut: Option<usize> = None;
        let mut version = 0u64;
        let mut log = Vec::new();
        for _step in 0..14 {
            match rng.below(8) {
                0 if running.iter().filter(|r| **r).count() > 1 => {
                    let i = rng.below(3) as usize;
                    if running[i] {
                        log.push(format!("kill worker-{i}"));
                        cluster.kill_worker(i).await;
                        running[i] = false;
                    }
                }
                1 => {
                    let i = rng.below(3) as usize;
                    if !running[i] {
                        log.push(format!("restart worker-{i}"));
                        let url = format!("ws://{}/v1/cluster", links[i].addr());
                        cluster.start_worker_process_dialing(i, &url).await;
                        running[i] = true;
                    }
                }
                2 if cut.is_none() => {
                    let i = rng.below(3) as usize;
                    log.push(format!("cut worker-{i}"));
                    links[i].cut();
                    cut = Some(i);
                }
                3 => {
                    if let Some(i) = cut.take() {
                        log.push(format!("heal worker-{i}"));
                        links[i].heal();
                    }
                }
                4 => {
                    let (status, body) = cluster
                        .admin("POST", "/admin/v1/tenants/acme/move", Some(json!({})))
                        .await;
                    log.push(format!("move: {status} {}", body["error"]["message"]));
                }
                _ => {
                    for _ in 0..4 {
                        version += 1;
                        let id = rng.below(40);
                        let (status, _) = client.upsert(id, version).await;
                        let entry = model.entry(id).or_default();
                        if status == 200 {
                            *entry = Possible {
                                acked: Some(version),
                                unknown: Vec::new(),
                            };
                        } else {
                            entry.unknown.push(version);
                        }
                    }
                    log.push(format!("writes up to version {version}"));
                }
            }
        }
        // Everything back: every link healed, every worker running, every copy caught up.
        if let Some(i) = cut.take() {
            links[i].heal();
        }
        for (i, up) in running.iter().enumerate() {
            if !up {
                let url = format!("ws://{}/v1/cluster", links[i].addr());
                cluster.start_worker_process_dialing(i, &url).await;
            }
        }
        for i in 0..3 {
            cluster.hub().wait_for_worker(&format!("worker-{i}")).await;
        }
        cluster.service().wait_for_replicas_settled().await;
        let ids: Vec<u64> = model.keys().copied().collect();
        let stored = loop {
            // A tenant whose move was cut short answers 503 until the move is undone.
            match client.versions(&ids).await {
                Ok(stored) => break stored,
                Err((503, _)) => cluster.hub().wait_for_change().await,
                Err(other) => panic!("seed {seed} run {run}: reading failed: {other:?}; {log:?}"),
            }
        };
        for (id, possible) in &model {
            let got = stored.get(id).copied();
            let fine = got == possible.acked
                || got.is_some_and(|v| {
                    possible.unknown.contains(&v) && possible.acked.is_none_or(|a| v > a)
                });
            assert!(
                fine,
                "seed {seed} run {run}: point {id} holds {got:?}, acknowledged {:?}, unknown {:?}; steps: {log:?}",
                possible.acked, possible.unknown
            );
        }
        eprintln!("run {run}: {} points checked; steps: {log:?}", model.len());
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_replicated_tenants_worker_under_load_gives_no_client_error() {
    let cluster = start(replicated, 3).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 4).await;
    let (primary, replicas) = copies(&cluster, "acme").await;
    let client = Client::new(&cluster, &key);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let writers: Vec<_> = (1..=2)
        .map(|w| tokio::spawn(writer(client.clone(), w, stop.clone(), acked.clone())))
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(reader(client.clone(), stop.clone())))
        .collect();
    while acked.lock().unwrap().len() < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The primary's worker drains: its live replica takes over at once, and the repair makes a
    // new copy on the third worker.
    let (status, body) = cluster
        .admin("POST", &format!("/admin/v1/workers/{primary}/drain"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    cluster.service().wait_for_drains().await;
    loop {
        let (_, replicas) = copies(&cluster, "acme").await;
        if replicas.iter().all(|(w, s)| *w != primary && s == "live") && !replicas.is_empty() {
            break;
        }
        cluster.hub().wait_for_change().await;
    }
    let at_drain = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < at_drain + 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut write_errors = 0;
    for w in writers {
        write_errors += w.await.expect("writer");
    }
    let mut search_errors = 0;
    for r in readers {
        search_errors += r.await.expect("reader").1;
    }
    assert_eq!(
        (write_errors, search_errors),
        (0, 0),
        "clients saw errors during the drain"
    );
    let (now_primary, now_replicas) = copies(&cluster, "acme").await;
    assert_eq!(now_primary, replicas[0].0, "the live replica took over");
    assert!(now_replicas.iter().all(|(w, _)| *w != primary));
    let acked = acked.lock().unwrap().clone();
    assert_all_acked(&client, &acked).await;
    cluster.shutdown().await;
}

/// Single-copy tenants, and copies handed over to even the workers out.
fn rebalancing(config: &mut coordinator::config::Config) {
    config.health = HealthConfig {
        suspect_after: Duration::from_secs(2),
        down_after: Duration::from_secs(4),
    };
    config.auto_rebalance = true;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_joins_gets_copies_handed_over_with_no_client_error() {
    let mut cluster = Cluster::start_without_workers(3, rebalancing).await;
    cluster.start_worker_process(0).await;
    cluster.start_worker_process(1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let tenant = format!("t{t}");
        let key = cluster.tenant(&tenant, Some("pro")).await;
        cluster.create_collection(&key, "docs", 4).await;
        let client = Client::new(&cluster, &key);
        let acked: Acked = Arc::default();
        tasks.push((
            tokio::spawn(writer(client.clone(), 1, stop.clone(), acked.clone())),
            tokio::spawn(reader(client.clone(), stop.clone())),
        ));
        clients.push((tenant, client, acked));
    }
    let placed_on = |body: &Value, worker: &str| {
        body["placements"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["worker"] == worker)
            .count()
    };
    let (_, body) = cluster.admin("GET", "/admin/v1/placements", None).await;
    assert_eq!(
        (placed_on(&body, "worker-0"), placed_on(&body, "worker-1")),
        (2, 2)
    );

    // Worker 2 joins: one tenant is handed over to it, served all along.
    cluster.start_worker_process(2).await;
    let moved = loop {
        let (_, body) = cluster.admin("GET", "/admin/v1/placements", None).await;
        let on_new: Vec<String> = body["placements"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["worker"] == "worker-2" && p["replicas"].as_array().unwrap().is_empty())
            .map(|p| p["tenant"].as_str().unwrap().to_owned())
            .collect();
        if let Some(tenant) = on_new.first() {
            break tenant.clone();
        }
        cluster.hub().wait_for_change().await;
    };
    let total = || {
        clients
            .iter()
            .map(|(_, _, acked)| acked.lock().unwrap().len())
            .sum::<usize>()
    };
    let at_move = total();
    while total() < at_move + 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut write_errors, mut search_errors) = (0, 0);
    for (w, r) in tasks {
        write_errors += w.await.expect("writer");
        search_errors += r.await.expect("reader").1;
    }
    assert_eq!(
        (write_errors, search_errors),
        (0, 0),
        "clients saw errors while {moved} was handed over"
    );
    for (_, client, acked) in &clients {
        let acked = acked.lock().unwrap().clone();
        assert_all_acked(client, &acked).await;
    }
    let export = cluster
        .admin("GET", &format!("/admin/v1/audit/{moved}"), None)
        .await
        .1;
    let actions: Vec<&str> = export["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for action in [
        "replica.add",
        "replica.live",
        "replica.promote",
        "replica.remove",
    ] {
        assert!(actions.contains(&action), "no {action} in {actions:?}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_placed_while_one_worker_was_up_gets_its_second_copy_with_its_data() {
    let mut cluster = Cluster::start_without_workers(2, replicated).await;
    cluster.start_worker_process(0).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 4).await;
    let client = Client::new(&cluster, &key);
    for id in 0..30 {
        assert_eq!(client.upsert(id, 1).await.0, 200);
    }
    assert!(copies(&cluster, "acme").await.1.is_empty());
    // A second worker joins: the tenant gets its second copy there, copied from the first (it
    // was written to at its first epoch, so the new copy cannot start live).
    cluster.start_worker_process(1).await;
    loop {
        cluster.service().wait_for_replicas_settled().await;
        if copies(&cluster, "acme").await.1 == vec![("worker-1".to_owned(), "live".to_owned())] {
            break;
        }
        cluster.hub().wait_for_change().await;
    }
    cluster.kill_worker(0).await;
    let versions = client
        .versions(&(0..30).collect::<Vec<_>>())
        .await
        .expect("reading from the new copy alone");
    assert_eq!(versions.len(), 30, "{versions:?}");
    cluster.shutdown().await;
}
