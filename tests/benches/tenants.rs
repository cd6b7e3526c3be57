//! Many-tenants benchmark (`scripts/bench-tenants.sh` runs it, then pgvector with one table per
//! tenant on the same data beside it): a coordinator (in this process) and one `vaultvec-worker`
//! process on loopback holding every tenant.
//!
//! ```text
//! cargo bench -p tests --bench tenants -- DATASET [--json FILE] [--tenants 10000] [--points 1000]
//!     [--dim 128] [--samples 200] [--large-points 100000] [--large-runs 5]
//! ```
//!
//! - `--tenants` tenants of `--points` points of dimension `--dim` each (components from
//!   splitmix64 of tenant, point and component: `bench_tenants_pg.py` makes the same), one
//!   collection each, created and filled over gRPC 4 at a time. The worker unloads a tenant idle
//!   for 1 s (`idle_unload_after`); once its heartbeat shows none loaded, `idle_rss_mb` and
//!   `open_files` are read from `/proc/<worker>/`. `idle_bytes_per_tenant` is the slope: the RSS
//!   with every tenant idle less the RSS with the first tenth idle, over the tenants in between
//!   (the allocator keeps tens of MiB it used while loading tenants whatever their number, which
//!   a division of the whole growth by the tenants would spread over them).
//! - `cold_small_*`: the first search (top 10) of `--samples` unloaded tenants, spread over all.
//! - A large tenant of the dataset's first `--large-points` base vectors: `cold_large_p50_ms` is
//!   the first search after it was unloaded, `--large-runs` times; `pause_s` and `resume_s` are
//!   its pause (files to cold storage) and resume (back).
//! - `restart_ready_s`: the worker stopped (SIGTERM) and started again, from the start until a
//!   search of a random tenant answered.
//! - `snapshot_s`, `restore_s`: a snapshot of the large tenant (`POST .../snapshots`: its files
//!   copied from the worker into a signed archive in the coordinator's snapshot store), and its
//!   restore (the archive checked whole, then staged on the worker and switched to), each until
//!   the admin call answered; after the restore a search must answer.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use proto::vaultvec::v1 as api;
use proto::vaultvec::v1::collections_client::CollectionsClient;
use proto::vaultvec::v1::points_client::PointsClient;
use serde::Serialize;
use tests::Cluster;
use tonic::transport::{Channel, Endpoint};

#[allow(dead_code)]
#[path = "../../storage/benches/common/dataset.rs"]
mod dataset;
#[path = "../../storage/benches/common/npy.rs"]
mod npy;

use dataset::Dataset;
use storage::index::Metric;

struct Args {
    dataset: PathBuf,
    json: Option<PathBuf>,
    tenants: usize,
    points: usize,
    dim: usize,
    samples: usize,
    large_points: usize,
    large_runs: usize,
}

fn parse() -> Result<Args> {
    let mut args = Args {
        dataset: PathBuf::new(),
        json: None,
        tenants: 10_000,
        points: 1_000,
        dim: 128,
        samples: 200,
        large_points: 100_000,
        large_runs: 5,
    };
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut dataset = None;
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{arg} needs a value"));
        match arg.as_str() {
            "--json" => args.json = Some(PathBuf::from(value()?)),
            "--tenants" => args.tenants = value()?.parse()?,
            "--points" => args.points = value()?.parse()?,
            "--dim" => args.dim = value()?.parse()?,
            "--samples" => args.samples = value()?.parse()?,
            "--large-points" => args.large_points = value()?.parse()?,
            "--large-runs" => args.large_runs = value()?.parse()?,
            other if !other.starts_with("--") && dataset.is_none() => {
                dataset = Some(PathBuf::from(other))
            }
            other => bail!("unknown argument {other}"),
        }
    }
    args.dataset = dataset.ok_or_else(|| anyhow!("usage: tenants DATASET [--json FILE] ..."))?;
    if args.tenants == 0 || args.points == 0 || args.samples == 0 || args.large_runs == 0 {
        bail!("--tenants, --points, --samples and --large-runs are at least 1");
    }
    Ok(args)
}

#[derive(Serialize, Default)]
struct Report {
    tenants: usize,
    points_per_tenant: usize,
    dim: usize,
    idle_rss_mb: f64,
    baseline_rss_mb: f64,
    idle_bytes_per_tenant: f64,
    tenth_idle_rss_mb: f64,
    open_files: usize,
    cold_small_p50_ms: f64,
    cold_small_p99_ms: f64,
    large_points: usize,
    large_dim: usize,
    cold_large_p50_ms: f64,
    restart_ready_s: f64,
    pause_s: f64,
    resume_s: f64,
    snapshot_s: Option<f64>,
    restore_s: Option<f64>,
    fill_s: f64,
}

fn main() -> Result<()> {
    let args = parse()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

/// splitmix64: the same in `scripts/bench_tenants_pg.py`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Component `c` of point `i` of tenant `t`, in [0, 1).
fn component(t: u64, i: u64, c: u64) -> f32 {
    let u = splitmix64((t << 40) ^ (i << 12) ^ c);
    (u >> 40) as f32 / (1u64 << 24) as f32
}

fn small_vector(t: usize, i: usize, dim: usize) -> Vec<f32> {
    (0..dim as u64)
        .map(|c| component(t as u64, i as u64, c))
        .collect()
}

fn tenant_id(t: usize) -> String {
    format!("t{t:05}")
}

async fn connect(cluster: &Cluster) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{}", cluster.grpc))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

fn point(id: usize, vector: Vec<f32>) -> api::Point {
    api::Point {
        id: Some(api::PointId {
            kind: Some(api::point_id::Kind::Num(id as u64)),
        }),
        vector,
        payload: None,
    }
}

fn proc_rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS"))?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("bad VmRSS"))?
        .parse()?;
    Ok(kb * 1024)
}

fn open_files(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// The worker's loaded tenants as of a heartbeat after an accounting pass that began after this
/// call.
async fn loaded_tenants(cluster: &Cluster) -> Result<u64> {
    let seen = cluster.hub().heartbeats("worker-0").unwrap_or(0);
    cluster
        .hub()
        .wait_for_heartbeats("worker-0", seen + 3)
        .await;
    let (status, body) = cluster.admin("GET", "/admin/v1/workers", None).await;
    if status != 200 {
        bail!("listing workers: {body}");
    }
    body["workers"][0]["heartbeat"]["loaded_tenants"]
        .as_u64()
        .ok_or_else(|| anyhow!("no loaded_tenants in {body}"))
}

/// Waits until the worker has unloaded every tenant (1 s idle, then an accounting pass).
async fn wait_all_unloaded(cluster: &Cluster) -> Result<()> {
    let started = Instant::now();
    while loaded_tenants(cluster).await? > 0 {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the worker did not unload its idle tenants");
        }
    }
    Ok(())
}

async fn create(
    cluster: &Cluster,
    channel: &Channel,
    id: &str,
    dim: usize,
    metric: api::Metric,
) -> Result<String> {
    let key = cluster.tenant(id, Some("pro")).await;
    CollectionsClient::new(channel.clone())
        .create_collection(tests::with_key(
            api::CreateCollectionRequest {
                name: "docs".into(),
                config: Some(api::CollectionConfig {
                    dim: dim as u32,
                    metric: metric as i32,
                    m: Some(16),
                    ef_construction: Some(200),
                    ef: None,
                }),
            },
            &key,
        ))
        .await
        .with_context(|| format!("creating {id}'s collection"))?;
    Ok(key)
}

async fn upsert(channel: &Channel, key: &str, points: Vec<api::Point>) -> Result<()> {
    PointsClient::new(channel.clone())
        .upsert(tests::with_key(
            api::UpsertRequest {
                collection: "docs".into(),
                points,
                idempotency_key: String::new(),
            },
            key,
        ))
        .await
        .context("upserting")?;
    Ok(())
}

/// One search (top 10, ef 64); answers its latency.
async fn search(channel: &Channel, key: &str, vector: Vec<f32>) -> Result<Duration> {
    let started = Instant::now();
    let answer = PointsClient::new(channel.clone())
        .search(tests::with_key(
            api::SearchRequest {
                collection: "docs".into(),
                vector,
                top_k: 10,
                ef: Some(64),
                ..Default::default()
            },
            key,
        ))
        .await
        .context("searching")?
        .into_inner();
    let took = started.elapsed();
    if answer.points.is_empty() {
        bail!("a search found nothing");
    }
    Ok(took)
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at].as_secs_f64() * 1000.0
}

fn bench_config(config: &mut coordinator::config::Config) {
    let pro = config.tiers.get_mut("pro").expect("pro tier");
    pro.max_points = 0;
    pro.max_stored_bytes = 0;
    config.request_timeout = Duration::from_secs(120);
}

async fn run(args: Args) -> Result<()> {
    let data = Dataset::load(&args.dataset, 0)?;
    let large_points = args.large_points.min(data.n_base());
    let mut cluster = Cluster::start_without_workers(1, bench_config).await;
    cluster.worker_process_toml = "idle_unload_after = \"1s\"\n".into();
    cluster.start_worker_process(0).await;
    let pid = cluster
        .worker_pid(0)
        .ok_or_else(|| anyhow!("no worker pid"))?;
    let channel = connect(&cluster).await?;
    let mut report = Report {
        tenants: args.tenants,
        points_per_tenant: args.points,
        dim: args.dim,
        large_points,
        large_dim: data.dim,
        ..Report::default()
    };
    wait_all_unloaded(&cluster).await?;
    let baseline = proc_rss_bytes(pid)?;
    report.baseline_rss_mb = baseline as f64 / (1 << 20) as f64;

    eprintln!(
        "creating {} tenants of {} points (dimension {})",
        args.tenants, args.points, args.dim
    );
    let started = Instant::now();
    let mut keys: Vec<String> = Vec::with_capacity(args.tenants);
    let (cluster_ref, channel_ref) = (&cluster, &channel);
    let tenth = (args.tenants / 10).max(1);
    let mut tenth_rss = None;
    let mut made = futures_util::stream::iter(0..args.tenants)
        .map(|t| async move {
            let key = create(
                cluster_ref,
                channel_ref,
                &tenant_id(t),
                args.dim,
                api::Metric::L2,
            )
            .await?;
            let points = (0..args.points)
                .map(|i| point(i, small_vector(t, i, args.dim)))
                .collect();
            upsert(channel_ref, &key, points).await?;
            Ok::<_, anyhow::Error>((t, key))
        })
        .buffered(4);
    while let Some(done) = made.next().await {
        let (t, key) = done?;
        keys.push(key);
        if keys.len() == tenth && tenth < args.tenants {
            // The stream is polled again only after this: no tenant is being created meanwhile.
            wait_all_unloaded(&cluster).await?;
            tenth_rss = Some(proc_rss_bytes(pid)?);
        }
        if (t + 1) % 500 == 0 || t + 1 == args.tenants {
            eprintln!(
                "  {} tenants in {:.0} s",
                t + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    drop(made);
    report.fill_s = started.elapsed().as_secs_f64();

    eprintln!("waiting for the worker to unload every idle tenant");
    wait_all_unloaded(&cluster).await?;
    let idle = proc_rss_bytes(pid)?;
    report.idle_rss_mb = idle as f64 / (1 << 20) as f64;
    let (from_rss, from_n) = tenth_rss.map_or((baseline, 0), |rss| (rss, tenth));
    report.tenth_idle_rss_mb = from_rss as f64 / (1 << 20) as f64;
    report.idle_bytes_per_tenant = (idle as f64 - from_rss as f64) / (args.tenants - from_n) as f64;
    report.open_files = open_files(pid)?;

    eprintln!("first searches of {} unloaded tenants", args.samples);
    let mut cold = Vec::new();
    for s in 0..args.samples.min(args.tenants) {
        let t = s * args.tenants / args.samples.min(args.tenants);
        cold.push(search(&channel, &keys[t], small_vector(t, 0, args.dim)).await?);
    }
    cold.sort();
    report.cold_small_p50_ms = percentile_ms(&cold, 0.5);
    report.cold_small_p99_ms = percentile_ms(&cold, 0.99);

    eprintln!(
        "a large tenant: {large_points} x {} from {}",
        data.dim, data.name
    );
    let metric = match data.metric {
        Metric::Cosine => api::Metric::Cosine,
        Metric::L2 => api::Metric::L2,
        Metric::Dot => api::Metric::Dot,
    };
    let large = create(&cluster, &channel, "large", data.dim, metric).await?;
    for start in (0..large_points).step_by(1000) {
        let points = (start..(start + 1000).min(large_points))
            .map(|i| point(i, data.row(i).to_vec()))
            .collect();
        upsert(&channel, &large, points).await?;
    }
    let mut collections = CollectionsClient::new(channel.clone());
    loop {
        let info = collections
            .get_collection(tests::with_key(
                api::GetCollectionRequest {
                    name: "docs".into(),
                },
                &large,
            ))
            .await?
            .into_inner();
        if info.unindexed_points == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut cold_large = Vec::new();
    for run in 0..args.large_runs {
        wait_all_unloaded(&cluster).await?;
        cold_large.push(search(&channel, &large, data.query(run % data.n_query()).to_vec()).await?);
    }
    cold_large.sort();
    report.cold_large_p50_ms = percentile_ms(&cold_large, 0.5);

    eprintln!("pause and resume of the large tenant");
    let started = Instant::now();
    let (status, body) = cluster
        .admin("POST", "/admin/v1/tenants/large/pause", None)
        .await;
    if status != 200 || body["storage"] != "cold" {
        bail!("pausing: {status} {body}");
    }
    report.pause_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let (status, body) = cluster
        .admin("POST", "/admin/v1/tenants/large/resume", None)
        .await;
    if status != 200 {
        bail!("resuming: {status} {body}");
    }
    report.resume_s = started.elapsed().as_secs_f64();
    search(&channel, &large, data.query(0).to_vec()).await?;

    eprintln!("snapshot and restore of the large tenant");
    let started = Instant::now();
    let (status, body) = cluster
        .admin("POST", "/admin/v1/tenants/large/snapshots", None)
        .await;
    if status != 200 {
        bail!("taking a snapshot: {status} {body}");
    }
    report.snapshot_s = Some(started.elapsed().as_secs_f64());
    let id = body["id"].as_str().context("a snapshot id")?.to_owned();
    let started = Instant::now();
    let (status, body) = cluster
        .admin(
            "POST",
            &format!("/admin/v1/tenants/large/snapshots/{id}/restore"),
            None,
        )
        .await;
    if status != 200 {
        bail!("restoring: {status} {body}");
    }
    report.restore_s = Some(started.elapsed().as_secs_f64());
    search(&channel, &large, data.query(0).to_vec()).await?;

    eprintln!("restarting the worker");
    cluster.stop_worker(0).await;
    let started = Instant::now();
    cluster.start_worker_process(0).await;
    let t = args.tenants / 2;
    search(&channel, &keys[t], small_vector(t, 0, args.dim)).await?;
    report.restart_ready_s = started.elapsed().as_secs_f64();

    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(path) = &args.json {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    cluster.shutdown().await;
    Ok(())
}
