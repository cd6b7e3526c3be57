//! A seeded random mix of kills, restarts, partitions, moves and writes.

use super::*;

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

/// How long one step may take before the run fails with its seed and steps (a bound on a
/// failure, not a wait for readiness: a step that never ends would hang the suite).
const STEP_BOUND: Duration = Duration::from_secs(120);

async fn bounded<T>(
    (seed, run): (u64, u64),
    log: &[String],
    what: &str,
    step: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(STEP_BOUND, step).await {
        Ok(done) => done,
        Err(_) => panic!(
            "seed {seed} run {run}: {what} did not end within {STEP_BOUND:?}; steps: {log:?}"
        ),
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
    // The coordinator runs in this process: its log goes to the test's captured output.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
    for run in 0..3u64 {
        let at = (seed, run);
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
                        bounded(at, &log, "kill", cluster.kill_worker(i)).await;
                        running[i] = false;
                    }
                }
                1 => {
                    let i = rng.below(3) as usize;
                    if !running[i] {
                        // A worker started behind a cut link cannot say hello, and the harness
                        // waits for its hello: its link is healed first. (Seed
                        // 1796190774218461164 run 2 hung here: "cut worker-1" while it was
                        // dead, then "restart worker-1".)
                        if cut == Some(i) {
                            cut = None;
                            log.push(format!("heal worker-{i}"));
                            links[i].heal();
                        }
                        log.push(format!("restart worker-{i}"));
                        let url = format!("ws://{}/v1/cluster", links[i].addr());
                        let start = cluster.start_worker_process_dialing(i, &url);
                        bounded(at, &log, "restart", start).await;
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
                    let moved =
                        cluster.admin("POST", "/admin/v1/tenants/acme/move", Some(json!({})));
                    let (status, body) = bounded(at, &log, "move", moved).await;
                    log.push(format!("move: {status} {}", body["error"]["message"]));
                }
                _ => {
                    for _ in 0..4 {
                        version += 1;
                        let id = rng.below(40);
                        let (status, _) =
                            bounded(at, &log, "write", client.upsert(id, version)).await;
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
                let start = cluster.start_worker_process_dialing(i, &url);
                bounded(at, &log, "the last restart", start).await;
            }
        }
        for i in 0..3 {
            let worker = format!("worker-{i}");
            let back = cluster.hub().wait_for_worker(&worker);
            bounded(at, &log, "a worker's return", back).await;
        }
        let settled = cluster.service().wait_for_replicas_settled();
        bounded(at, &log, "settling the replicas", settled).await;
        let ids: Vec<u64> = model.keys().copied().collect();
        let read = async {
            loop {
                // A tenant whose move was cut short answers 503 until the move is undone.
                match client.versions(&ids).await {
                    Ok(stored) => break stored,
                    Err((503, _)) => cluster.hub().wait_for_change().await,
                    Err(other) => {
                        panic!("seed {seed} run {run}: reading failed: {other:?}; {log:?}")
                    }
                }
            }
        };
        let stored = bounded(at, &log, "the last read", read).await;
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
