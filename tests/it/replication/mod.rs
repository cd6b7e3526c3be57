//! Replicated tenants (tiers with `replicas` = 2) on real worker processes, and copies moving
//! between workers. `failover`: the loss of a worker under load loses no acknowledged write and
//! keeps searches answered; a copy that was away (its process killed, or its link cut) serves
//! nothing until it caught up; a lost copy is replaced after the grace period; a coordinator
//! restart makes replicas copy their primary again. `fleet_changes`: a drain and a joining worker
//! move copies with no client error, a tenant placed while one worker was up gets its second copy
//! with its data. `catch_up`: a returning copy copies only what changed, a hand-over waits for a
//! write in flight, a copy that stays placed through a change keeps getting its keys. `randomized`: a seeded random mix of kills, restarts, partitions, moves and
//! writes keeps every acknowledged write.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use coordinator::cluster::HealthConfig;
use serde_json::{Value, json};
use tests::Cluster;
use tests::partition::Link;

mod catch_up;
mod failover;
mod fleet_changes;
mod randomized;

/// Down after 4 s without a heartbeat; `pro` keeps two copies; lost copies are replaced after
/// `REPLACE_AFTER`.
pub(super) fn replicated(config: &mut coordinator::config::Config) {
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
pub(crate) async fn copies(cluster: &Cluster, tenant: &str) -> (String, Vec<(String, String)>) {
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

/// [`writer`]s and [`reader`]s running against one tenant until [`Load::finish`].
struct Load {
    stop: Arc<AtomicBool>,
    acked: Acked,
    writers: Vec<tokio::task::JoinHandle<usize>>,
    readers: Vec<tokio::task::JoinHandle<(usize, usize, Duration)>>,
}

impl Load {
    fn start(client: &Client, writers: u64, readers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Acked = Arc::default();
        Load {
            writers: (1..=writers)
                .map(|w| tokio::spawn(writer(client.clone(), w, stop.clone(), acked.clone())))
                .collect(),
            readers: (0..readers)
                .map(|_| tokio::spawn(reader(client.clone(), stop.clone())))
                .collect(),
            stop,
            acked,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `more` writes beyond those acknowledged now are acknowledged.
    async fn until_more_acked(&self, more: usize) {
        let target = self.acked() + more;
        while self.acked() < target {
            // A poll of the clients' progress, not a wait for readiness.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the clients; answers the write and search errors they saw and the acknowledged
    /// writes.
    async fn finish(self) -> (usize, usize, HashMap<u64, u64>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut write_errors = 0;
        for w in self.writers {
            write_errors += w.await.expect("writer");
        }
        let mut search_errors = 0;
        for r in self.readers {
            search_errors += r.await.expect("reader").1;
        }
        let acked = self.acked.lock().unwrap().clone();
        (write_errors, search_errors, acked)
    }
}

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
            eprintln!("a write failed: {status} {body}");
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
        let (status, body) = client.search().await;
        if status == 200 {
            ok += 1;
            longest = longest.max(last_ok.elapsed());
            last_ok = Instant::now();
        } else {
            eprintln!("a search failed: {status} {body}");
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

/// Tenant `acme` on tier `pro` with collection `docs` (dimension 4) holding points `0..n` at
/// version 1; answers its client.
async fn filled_tenant(cluster: &Cluster, n: u64) -> Client {
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 4).await;
    let client = Client::new(cluster, &key);
    for id in 0..n {
        assert_eq!(client.upsert(id, 1).await.0, 200);
    }
    client
}

async fn start(tweak: fn(&mut coordinator::config::Config), workers: usize) -> Cluster {
    let mut cluster = Cluster::start_without_workers(workers, tweak).await;
    for i in 0..workers {
        cluster.start_worker_process(i).await;
    }
    cluster
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
