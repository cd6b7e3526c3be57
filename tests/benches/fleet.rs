//! Fleet benchmark (`scripts/bench-fleet.sh` runs it, then pgvector on the same data beside it):
//! a coordinator (in this process) and three `vaultvec-worker` processes on loopback, default
//! health settings (suspect 3 s, down 6 s), tier `pro` with two copies.
//!
//! ```text
//! cargo bench -p tests --bench fleet -- DATASET [--json FILE] [--points 100000] [--tenants 100]
//!     [--seconds 5] [--clients 8]
//! ```
//!
//! - **Failover**: a replicated tenant with 20,000 points; `--clients` searching and 4 upserting
//!   (one point per request) over gRPC. After `--seconds`, the primary's worker is SIGKILLed;
//!   `reroute_s` is the time from the kill to the first search and the first upsert (each sent
//!   after the kill) answered by the surviving copy, the later of the two; `failover_error_rate`
//!   is the failed requests over all requests in the `--seconds` after the kill. The same with the
//!   worker hung (SIGSTOP: its socket stays open) gives `reroute_hang_s`, which includes the
//!   tracker's detection (requests give the hung copy up once it is suspect: `suspect_after_ms`,
//!   3 s by default, after its last heartbeat).
//! - **Catch-up**: one copy's worker is stopped, `--points` points are upserted (batches of 1,000)
//!   to the other, the worker is started again; `catchup_s` is the time from its hello until its
//!   copy is live again (files copied from the primary under the tenant's write lock).
//! - **Drain**: `--tenants` single-copy tenants of 200 points each on one worker, two more workers
//!   joined; `drain_s` is the time from the drain request until the worker holds none.
//! - **Replication cost**: every base vector upserted into a tenant with one copy
//!   and into one with two (`upsert_pps_r1`, `upsert_pps_r2`; 2 requests of 1,000 in flight), then
//!   `--clients` clients search each for `--seconds` (`qps_r1`, `qps_r2`; ef 64, top 10).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use proto::vaultvec::v1 as api;
use proto::vaultvec::v1::collections_client::CollectionsClient;
use proto::vaultvec::v1::points_client::PointsClient;
use serde::Serialize;
use tests::Cluster;
use tonic::transport::{Channel, Endpoint};

// Shared with the engine and server benches; this one does not count recall.
#[allow(dead_code)]
#[path = "../../storage/benches/common/dataset.rs"]
mod dataset;
#[path = "../../storage/benches/common/npy.rs"]
mod npy;

use dataset::{Dataset, K};
use storage::index::Metric;

struct Args {
    dataset: PathBuf,
    json: Option<PathBuf>,
    points: usize,
    tenants: usize,
    seconds: f64,
    clients: usize,
}

fn parse() -> Result<Args> {
    let mut args = Args {
        dataset: PathBuf::new(),
        json: None,
        points: 100_000,
        tenants: 100,
        seconds: 5.0,
        clients: 8,
    };
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut dataset = None;
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{arg} needs a value"));
        match arg.as_str() {
            "--json" => args.json = Some(PathBuf::from(value()?)),
            "--points" => args.points = value()?.parse()?,
            "--tenants" => args.tenants = value()?.parse()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "--clients" => args.clients = value()?.parse()?,
            other if !other.starts_with("--") && dataset.is_none() => {
                dataset = Some(PathBuf::from(other))
            }
            other => bail!("unknown argument {other}"),
        }
    }
    args.dataset = dataset.ok_or_else(|| anyhow!("usage: fleet DATASET [--json FILE] ..."))?;
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

#[derive(Serialize, Default)]
struct Report {
    dataset: String,
    dim: usize,
    reroute_s: f64,
    reroute_search_s: f64,
    reroute_upsert_s: f64,
    failover_requests: usize,
    failover_errors: usize,
    failover_error_rate: f64,
    reroute_hang_s: f64,
    hang_error_rate: f64,
    catchup_points: usize,
    catchup_s: f64,
    drain_tenants: usize,
    drain_s: f64,
    qps_r1: f64,
    qps_r2: f64,
    upsert_pps_r1: f64,
    upsert_pps_r2: f64,
}

fn fleet_config(config: &mut coordinator::config::Config) {
    config.health = coordinator::cluster::HealthConfig::default();
    config.replace_after = Duration::from_secs(3600);
    let pro = config.tiers.get_mut("pro").expect("pro tier");
    pro.replicas = 2;
    let mut one = pro.clone();
    one.replicas = 1;
    config.tiers.insert("one".into(), one);
}

async fn start(workers: usize) -> Cluster {
    let mut cluster = Cluster::start_without_workers(3, fleet_config).await;
    for i in 0..workers {
        cluster.start_worker_process(i).await;
    }
    cluster
}

async fn connect(cluster: &Cluster) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{}", cluster.grpc))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

#[derive(Clone)]
struct Target {
    key: String,
    collection: String,
}

impl Target {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        tests::with_key(message, &self.key)
    }
}

fn metric_api(metric: Metric) -> api::Metric {
    match metric {
        Metric::Cosine => api::Metric::Cosine,
        Metric::L2 => api::Metric::L2,
        Metric::Dot => api::Metric::Dot,
    }
}

async fn tenant(cluster: &Cluster, id: &str, tier: &str, data: &Dataset) -> Result<Target> {
    let key = cluster.tenant(id, Some(tier)).await;
    let target = Target {
        key,
        collection: "docs".into(),
    };
    CollectionsClient::new(connect(cluster).await?)
        .create_collection(target.request(api::CreateCollectionRequest {
            name: target.collection.clone(),
            config: Some(api::CollectionConfig {
                dim: data.dim as u32,
                metric: metric_api(data.metric) as i32,
                m: Some(16),
                ef_construction: Some(200),
                ef: None,
            }),
        }))
        .await
        .context("creating the collection")?;
    Ok(target)
}

fn point(data: &Dataset, id: usize) -> api::Point {
    api::Point {
        id: Some(api::PointId {
            kind: Some(api::point_id::Kind::Num(id as u64)),
        }),
        vector: data.row(id % data.n_base()).to_vec(),
        payload: None,
    }
}

/// Upserts ids `0..n` in batches of 1,000, `in_flight` requests at once; answers points/s.
async fn fill(
    cluster: &Cluster,
    data: &Arc<Dataset>,
    target: &Target,
    n: usize,
    in_flight: usize,
) -> Result<f64> {
    let batches = n.div_ceil(1000);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let mut client = PointsClient::new(connect(cluster).await?);
        let (data, target, next) = (data.clone(), target.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return Ok::<(), anyhow::Error>(());
                }
                let points: Vec<_> = (b * 1000..((b + 1) * 1000).min(n))
                    .map(|id| point(&data, id))
                    .collect();
                let mut attempt = 0;
                loop {
                    let request = target.request(api::UpsertRequest {
                        collection: target.collection.clone(),
                        points: points.clone(),
                        idempotency_key: String::new(),
                    });
                    match client.upsert(request).await {
                        Ok(_) => break,
                        Err(status) if attempt < 100 => {
                            attempt += 1;
                            eprintln!("  retrying batch {b}: {}", status.message());
                            tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                        }
                        Err(status) => bail!("upserting batch {b}: {status}"),
                    }
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Polls `GetCollection` until four answers in a row (which go to the copies in turn) count `n`
/// points and none unindexed.
async fn wait_indexed(cluster: &Cluster, target: &Target, n: usize) -> Result<()> {
    let mut client = CollectionsClient::new(connect(cluster).await?);
    let started = Instant::now();
    let mut in_a_row = 0;
    while in_a_row < 4 {
        let info = client
            .get_collection(target.request(api::GetCollectionRequest {
                name: target.collection.clone(),
            }))
            .await?
            .into_inner();
        if info.points as usize == n && info.unindexed_points == 0 {
            in_a_row += 1;
        } else {
            in_a_row = 0;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!(
        "  indexed {:.0} s after the last upsert",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn search_once(
    client: &mut PointsClient<Channel>,
    target: &Target,
    query: &[f32],
) -> Result<(), tonic::Status> {
    client
        .search(target.request(api::SearchRequest {
            collection: target.collection.clone(),
            vector: query.to_vec(),
            top_k: K as u32,
            ef: Some(64),
            filter: None,
            with_payload: false,
            with_vector: false,
        }))
        .await
        .map(|_| ())
}

/// One request's outcome: when it was sent and answered, whether it succeeded, and its kind.
#[derive(Clone, Copy)]
struct Outcome {
    sent: Instant,
    done: Instant,
    ok: bool,
    write: bool,
}

/// Searches (`clients`) and single-point upserts (4 clients) until `stop`; every outcome.
async fn load(
    cluster: &Cluster,
    data: &Arc<Dataset>,
    target: &Target,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Result<tokio::task::JoinSet<Vec<Outcome>>> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients + 4 {
        let mut client = PointsClient::new(connect(cluster).await?);
        let (data, target, stop) = (data.clone(), target.clone(), stop.clone());
        let write = c >= clients;
        tasks.spawn(async move {
            let mut out = Vec::new();
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                i += clients + 4;
                let sent = Instant::now();
                let ok = if write {
                    let request = target.request(api::UpsertRequest {
                        collection: target.collection.clone(),
                        points: vec![point(&data, 1_000_000 + i)],
                        idempotency_key: String::new(),
                    });
                    client.upsert(request).await.is_ok()
                } else {
                    search_once(&mut client, &target, data.query(i % data.n_query()))
                        .await
                        .is_ok()
                };
                out.push(Outcome {
                    sent,
                    done: Instant::now(),
                    ok,
                    write,
                });
                if !ok {
                    // A client's pause before the next request after a failure.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            out
        });
    }
    Ok(tasks)
}

async fn primary_index(cluster: &Cluster, tenant: &str) -> Result<usize> {
    let (_, body) = cluster.admin("GET", "/admin/v1/placements", None).await;
    let worker = body["placements"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["tenant"] == tenant))
        .and_then(|p| p["worker"].as_str())
        .ok_or_else(|| anyhow!("{tenant} is not placed: {body}"))?;
    Ok(worker.trim_start_matches("worker-").parse()?)
}

/// Runs the load, breaks the primary's worker with `kill` after `seconds`, runs on as long
/// again; answers (reroute, reroute of searches, of upserts, requests after, errors after).
async fn failover_once(
    cluster: &mut Cluster,
    data: &Arc<Dataset>,
    target: &Target,
    args: &Args,
    hang: bool,
) -> Result<(f64, f64, f64, usize, usize)> {
    let tenant = if hang { "hang" } else { "kill" };
    let victim = primary_index(cluster, tenant).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = load(cluster, data, target, args.clients, stop.clone()).await?;
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    let broken = Instant::now();
    if hang {
        let pid = cluster.worker_pid(victim).expect("a process");
        std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()?;
    } else {
        cluster.kill_worker(victim).await;
    }
    let after = if hang {
        args.seconds + 6.0
    } else {
        args.seconds
    };
    tokio::time::sleep(Duration::from_secs_f64(after)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done?);
    }
    if hang {
        let pid = cluster.worker_pid(victim).expect("a process");
        std::process::Command::new("kill")
            .args(["-CONT", &pid.to_string()])
            .status()?;
        cluster.kill_worker(victim).await;
    }
    let first = |write: bool| {
        all.iter()
            .filter(|o| o.write == write && o.ok && o.sent >= broken)
            .map(|o| o.done.duration_since(broken).as_secs_f64())
            .fold(f64::INFINITY, f64::min)
    };
    let window: Vec<_> = all
        .iter()
        .filter(|o| o.sent >= broken || o.done >= broken)
        .collect();
    let errors = window.iter().filter(|o| !o.ok).count();
    let (search, upsert) = (first(false), first(true));
    Ok((search.max(upsert), search, upsert, window.len(), errors))
}

async fn run(args: Args) -> Result<()> {
    let data = Arc::new(Dataset::load(&args.dataset, 0)?);
    let mut report = Report {
        dataset: data.name.clone(),
        dim: data.dim,
        ..Report::default()
    };

    eprintln!("== failover: SIGKILL, then SIGSTOP, of a replicated tenant's primary under load");
    let mut cluster = start(3).await;
    for (tenant, hang) in [("kill", false), ("hang", true)] {
        let target = self::tenant(&cluster, tenant, "pro", &data).await?;
        fill(&cluster, &data, &target, 20_000.min(args.points), 2).await?;
        let (reroute, search, upsert, requests, errors) =
            failover_once(&mut cluster, &data, &target, &args, hang).await?;
        let rate = errors as f64 / requests.max(1) as f64;
        eprintln!(
            "  {tenant}: reroute {reroute:.3} s (search {search:.3} s, upsert {upsert:.3} s), \
             {errors} of {requests} requests failed ({:.2}%)",
            rate * 100.0
        );
        if hang {
            report.reroute_hang_s = reroute;
            report.hang_error_rate = rate;
        } else {
            report.reroute_s = reroute;
            report.reroute_search_s = search;
            report.reroute_upsert_s = upsert;
            report.failover_requests = requests;
            report.failover_errors = errors;
            report.failover_error_rate = rate;
        }
        // The broken worker back, its copies caught up, before the next round.
        for i in 0..3 {
            if cluster.worker_pid(i).is_none() {
                cluster.start_worker_process(i).await;
            }
        }
        cluster.service().wait_for_replicas_settled().await;
    }
    cluster.shutdown().await;

    eprintln!("== catch-up after {} upserts", args.points);
    let mut cluster = start(2).await;
    let target = self::tenant(&cluster, "catchup", "pro", &data).await?;
    let replica = 1 - primary_index(&cluster, "catchup").await?;
    cluster.stop_worker(replica).await;
    fill(&cluster, &data, &target, args.points, 2).await?;
    let started = Instant::now();
    cluster.start_worker_process(replica).await;
    cluster.service().wait_for_replicas_settled().await;
    report.catchup_points = args.points;
    report.catchup_s = started.elapsed().as_secs_f64();
    eprintln!("  caught up in {:.2} s", report.catchup_s);
    cluster.shutdown().await;

    eprintln!("== drain of a worker holding {} tenants", args.tenants);
    let mut cluster = start(1).await;
    for t in 0..args.tenants {
        let target = self::tenant(&cluster, &format!("t{t}"), "one", &data).await?;
        fill(&cluster, &data, &target, 200, 1).await?;
    }
    cluster.start_worker_process(1).await;
    cluster.start_worker_process(2).await;
    let started = Instant::now();
    let (status, body) = cluster
        .admin("POST", "/admin/v1/workers/worker-0/drain", None)
        .await;
    if status != 200 {
        bail!("drain refused: {status} {body}");
    }
    cluster.service().wait_for_drains().await;
    report.drain_tenants = args.tenants;
    report.drain_s = started.elapsed().as_secs_f64();
    eprintln!("  drained in {:.2} s", report.drain_s);
    cluster.shutdown().await;

    eprintln!("== replication cost: one copy against two");
    let cluster = start(3).await;
    let n = data.n_base();
    for (tenant, tier) in [("r1", "one"), ("r2", "pro")] {
        let target = self::tenant(&cluster, tenant, tier, &data).await?;
        let pps = fill(&cluster, &data, &target, n, 2).await?;
        wait_indexed(&cluster, &target, n).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        let answered = Arc::new(AtomicUsize::new(0));
        for c in 0..args.clients {
            let mut client = PointsClient::new(connect(&cluster).await?);
            let (data, target, stop, answered) =
                (data.clone(), target.clone(), stop.clone(), answered.clone());
            tasks.spawn(async move {
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    if search_once(&mut client, &target, data.query(i % data.n_query()))
                        .await
                        .is_ok()
                    {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            });
        }
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
        stop.store(true, Ordering::Relaxed);
        while tasks.join_next().await.is_some() {}
        let qps = answered.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        eprintln!("  {tenant}: {pps:.0} upserted points/s, {qps:.0} searches/s");
        if tenant == "r1" {
            (report.upsert_pps_r1, report.qps_r1) = (pps, qps);
        } else {
            (report.upsert_pps_r2, report.qps_r2) = (pps, qps);
        }
    }
    cluster.shutdown().await;

    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
