//! Server load benchmark: a gRPC client against a running coordinator (started, with its worker, by
//! `scripts/bench-server.sh`, which also runs the engine and pgvector figures beside it).
//!
//! ```text
//! cargo bench -p tests --bench server -- DATASET --grpc HOST:PORT --key-file FILE [--json FILE]
//!     [--ef 16,24,32,48,64,96,128] [--clients 1,2,8] [--seconds 3] [--batch 1000] [--upserts 4]
//!     [--n-query N] [--collection bench] [--server-pids PID,PID]
//! ```
//!
//! `DATASET` is a directory in the `shared/bench` format (`base.npy`, `query.npy`, `gt_ids.npy`,
//! `gt_dist.npy`, `meta.json`, which names the metric). The client creates one collection
//! (M 16, ef_construction 200, the dataset's metric) and upserts the base vectors (row i has id i)
//! in batches of `--batch`, `--upserts` requests in flight, each on its own connection. Ingest
//! points/s counts until the last batch is acknowledged; then `GetCollection` is polled until
//! `unindexed_points` is 0, and the time to indexed (from the first upsert) is reported apart.
//!
//! Two round trips without a search come first, on one connection, as the floor under every
//! search's latency: `Health.Check` (the coordinator alone, no key) and `Points.Count` (key checked,
//! routed to the worker and back). Then, at each `ef`: one warm-up pass over all queries on one connection gives recall@10,
//! counted ann-benchmarks style like `benchlib.recall_at_k` (a returned id counts when its exact
//! distance is within the 10th ground-truth distance plus 1e-5). For each client count, every
//! client has its own connection and takes every n-th query, cycling through its share until the
//! run lasts `--seconds` (and every query ran at least once): QPS is the answered queries over the
//! wall time, p50/p99 the round-trip latency of single `Search` calls, in µs. `--server-pids`
//! names the server's processes: each row then also gives the server's CPU time per query
//! (coordinator and worker together) and the share of the cores other processes used during the
//! run (`foreign_cpu_share`, the same figure as the engine bench and `peers.py` give).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use proto::vaultvec::v1 as api;
use proto::vaultvec::v1::collections_client::CollectionsClient;
use proto::vaultvec::v1::health_client::HealthClient;
use proto::vaultvec::v1::points_client::PointsClient;
use serde::Serialize;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

#[path = "../../storage/benches/common/dataset.rs"]
mod dataset;
#[path = "../../storage/benches/common/npy.rs"]
mod npy;

use dataset::{Dataset, K};
use storage::index::Metric;

fn main() {
    let result = Args::parse().and_then(|args| {
        // One thread by default: the client shares the cores with the server, and a single thread
        // spares every call a wake-up of another thread on the client side.
        let mut runtime = match args.client_threads {
            0 | 1 => tokio::runtime::Builder::new_current_thread(),
            n => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(n);
                builder
            }
        };
        runtime
            .enable_all()
            .build()
            .context("starting the runtime")?
            .block_on(run(args))
    });
    if let Err(err) = result {
        eprintln!("server bench: {err:#}");
        std::process::exit(1);
    }
}

/// Command-line options.
struct Args {
    dataset: PathBuf,
    grpc: String,
    key_file: PathBuf,
    json: Option<PathBuf>,
    ef: Vec<u32>,
    clients: Vec<usize>,
    seconds: f64,
    batch: usize,
    upserts: usize,
    n_query: usize,
    collection: String,
    server_pids: Vec<u32>,
    client_threads: usize,
    /// `--existing`: the collection is already loaded (by an earlier run on the same server);
    /// skip creating and ingesting, measure searches only (for profiling runs).
    existing: bool,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut args = Args {
            dataset: PathBuf::new(),
            grpc: String::new(),
            key_file: PathBuf::new(),
            json: None,
            ef: vec![16, 24, 32, 48, 64, 96, 128],
            clients: vec![1, 2, 8],
            seconds: 3.0,
            batch: 1000,
            upserts: 4,
            n_query: 0,
            collection: "bench".into(),
            server_pids: Vec::new(),
            client_threads: 1,
            existing: false,
        };
        let mut raw = std::env::args().skip(1);
        let mut dataset = None;
        let mut grpc = None;
        let mut key_file = None;
        while let Some(arg) = raw.next() {
            let mut value =
                |name: &str| raw.next().with_context(|| format!("{name} needs a value"));
            match arg.as_str() {
                // `cargo bench` appends `--bench` to the arguments of every bench target.
                "--bench" => {}
                "--existing" => args.existing = true,
                "--grpc" => grpc = Some(value("--grpc")?),
                "--key-file" => key_file = Some(PathBuf::from(value("--key-file")?)),
                "--json" => args.json = Some(PathBuf::from(value("--json")?)),
                "--ef" => args.ef = list(&value("--ef")?)?,
                "--clients" => args.clients = list(&value("--clients")?)?,
                "--seconds" => args.seconds = number(&value("--seconds")?)?,
                "--batch" => args.batch = number::<usize>(&value("--batch")?)?.max(1),
                "--upserts" => args.upserts = number::<usize>(&value("--upserts")?)?.max(1),
                "--n-query" => args.n_query = number(&value("--n-query")?)?,
                "--collection" => args.collection = value("--collection")?,
                "--server-pids" => args.server_pids = list(&value("--server-pids")?)?,
                "--client-threads" => args.client_threads = number(&value("--client-threads")?)?,
                flag if flag.starts_with("--") => bail!("unknown option {flag}"),
                path if dataset.is_none() => dataset = Some(PathBuf::from(path)),
                extra => bail!("unexpected argument {extra}"),
            }
        }
        let usage = "usage: server DATASET --grpc HOST:PORT --key-file FILE [--json FILE] ...";
        args.dataset = dataset.context(usage)?;
        args.grpc = grpc.context(usage)?;
        args.key_file = key_file.context(usage)?;
        if args.clients.contains(&0) || args.ef.contains(&0) {
            bail!("--clients and --ef take positive numbers");
        }
        Ok(args)
    }
}

fn number<T: std::str::FromStr>(raw: &str) -> Result<T> {
    raw.parse().map_err(|_| anyhow!("not a number: {raw}"))
}

fn list<T: std::str::FromStr>(raw: &str) -> Result<Vec<T>> {
    raw.split(',')
        .filter(|part| !part.is_empty())
        .map(number)
        .collect()
}

/// Everything measured, written as JSON with `--json`.
#[derive(Serialize)]
struct Report {
    dataset: String,
    n_base: usize,
    n_query: usize,
    dim: usize,
    metric: &'static str,
    batch: usize,
    concurrent_upserts: usize,
    /// Points per second until the last upsert was acknowledged (WAL fsync included).
    ingest_pps: f64,
    ingest_s: f64,
    /// From the first upsert until `unindexed_points` was 0.
    time_to_indexed_s: f64,
    /// Of which after the last acknowledgement.
    index_wait_s: f64,
    /// Upserts retried after `Unavailable` or `ResourceExhausted`.
    upsert_retries: usize,
    segments: u32,
    /// One client's round trips that do no search: `Health.Check` (answered by the coordinator
    /// alone) and `Points.Count` (authenticated and routed to the worker), for where time goes.
    round_trip: Vec<Floor>,
    server: Vec<Row>,
}

/// Latency of one kind of call without a search.
#[derive(Serialize)]
struct Floor {
    call: &'static str,
    qps: f64,
    p50_us: f64,
    p99_us: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_cpu_us_per_call: Option<f64>,
}

/// One client count at one `ef`.
#[derive(Serialize, Clone)]
struct Row {
    ef: u32,
    clients: usize,
    recall_at_10: f64,
    qps: f64,
    p50_us: f64,
    p99_us: f64,
    queries: usize,
    seconds: f64,
    /// Share of the cores other processes (not this client, not the server) used during the run.
    foreign_cpu_share: f64,
    /// CPU time of the server's processes per answered query (with `--server-pids`).
    #[serde(skip_serializing_if = "Option::is_none")]
    server_cpu_us_per_query: Option<f64>,
}

fn metric_name(metric: Metric) -> &'static str {
    match metric {
        Metric::Cosine => "cosine",
        Metric::L2 => "l2",
        Metric::Dot => "dot",
    }
}

fn metric_api(metric: Metric) -> api::Metric {
    match metric {
        Metric::Cosine => api::Metric::Cosine,
        Metric::L2 => api::Metric::L2,
        Metric::Dot => api::Metric::Dot,
    }
}

/// What every call needs: the collection and the credential.
#[derive(Clone)]
struct Target {
    collection: String,
    auth: MetadataValue<Ascii>,
}

impl Target {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.auth.clone());
        request
    }
}

/// A new HTTP/2 connection of its own.
async fn connect(addr: &str) -> Result<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

async fn run(args: Args) -> Result<()> {
    let data = Arc::new(Dataset::load(&args.dataset, args.n_query)?);
    let key = std::fs::read_to_string(&args.key_file)
        .with_context(|| format!("reading {}", args.key_file.display()))?;
    let target = Target {
        collection: args.collection.clone(),
        auth: format!("Bearer {}", key.trim())
            .parse()
            .context("the key is not valid metadata")?,
    };
    eprintln!(
        "{}: {} x {} {}, {} queries; server at {}",
        data.name,
        data.n_base(),
        data.dim,
        metric_name(data.metric),
        data.n_query(),
        args.grpc
    );

    let channel = connect(&args.grpc).await?;
    let (ingest, segments, time_to_indexed) = if args.existing {
        let ingest = Ingest {
            start: Instant::now(),
            elapsed: Duration::ZERO,
            retries: 0,
        };
        (ingest, 0, 0.0)
    } else {
        CollectionsClient::new(channel.clone())
            .create_collection(target.request(api::CreateCollectionRequest {
                name: args.collection.clone(),
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

        let ingest = ingest(&args, &data, &target).await?;
        let segments = wait_indexed(&channel, &data, &target, ingest.start, ingest.elapsed).await?;
        let time_to_indexed = ingest.start.elapsed().as_secs_f64();
        let ingest_s = ingest.elapsed.as_secs_f64();
        eprintln!(
            "ingested {} points in {ingest_s:.2} s ({:.0} points/s, {} retries); indexed {time_to_indexed:.2} s after the first upsert; {segments} segment(s)",
            data.n_base(),
            data.n_base() as f64 / ingest_s,
            ingest.retries
        );
        (ingest, segments, time_to_indexed)
    };
    let ingest_s = ingest.elapsed.as_secs_f64();

    let max_clients = args.clients.iter().copied().max().unwrap_or(1);
    let mut channels = vec![channel];
    while channels.len() < max_clients {
        channels.push(connect(&args.grpc).await?);
    }
    let round_trip = floors(&channels[0], &target, args.seconds, &args.server_pids).await?;
    let mut rows = Vec::new();
    for &ef in &args.ef {
        // Warm-up pass on one connection; its answers give the recall.
        let mut client = PointsClient::new(channels[0].clone());
        let mut results = Vec::with_capacity(data.n_query());
        for q in 0..data.n_query() {
            results.push(search(&mut client, &target, data.query(q), ef).await?);
        }
        let recall = round(data.recall(&results), 4);
        for &clients in &args.clients {
            let row = measure(
                &data,
                &target,
                &channels[..clients],
                ef,
                recall,
                args.seconds,
                &args.server_pids,
            )
            .await?;
            eprintln!(
                "  server ef={ef} clients={clients}: {}",
                serde_json::to_string(&row).unwrap_or_default()
            );
            rows.push(row);
        }
    }

    let report = Report {
        dataset: data.name.clone(),
        n_base: data.n_base(),
        n_query: data.n_query(),
        dim: data.dim,
        metric: metric_name(data.metric),
        batch: args.batch,
        concurrent_upserts: args.upserts,
        ingest_pps: round(data.n_base() as f64 / ingest_s, 1),
        ingest_s: round(ingest_s, 3),
        time_to_indexed_s: round(time_to_indexed, 3),
        index_wait_s: round(time_to_indexed - ingest_s, 3),
        upsert_retries: ingest.retries,
        segments,
        round_trip,
        server: rows,
    };
    print_table(&report);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

struct Ingest {
    start: Instant,
    elapsed: Duration,
    retries: usize,
}

/// Upserts the base in batches, `args.upserts` in flight, each sender on its own connection.
async fn ingest(args: &Args, data: &Arc<Dataset>, target: &Target) -> Result<Ingest> {
    let n = data.n_base();
    let batches = n.div_ceil(args.batch);
    let next = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..args.upserts.min(batches.max(1)) {
        clients.push(PointsClient::new(connect(&args.grpc).await?));
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in clients {
        let (data, target, next, retries) =
            (data.clone(), target.clone(), next.clone(), retries.clone());
        let batch = args.batch;
        tasks.spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return Ok::<(), anyhow::Error>(());
                }
                let ids = b * batch..((b + 1) * batch).min(n);
                let points: Vec<api::Point> = ids
                    .clone()
                    .map(|id| api::Point {
                        id: Some(api::PointId {
                            kind: Some(api::point_id::Kind::Num(id as u64)),
                        }),
                        vector: data.row(id).to_vec(),
                        payload: None,
                    })
                    .collect();
                let mut attempt = 0;
                loop {
                    let request = target.request(api::UpsertRequest {
                        collection: target.collection.clone(),
                        points: points.clone(),
                        // Upserting the same ids again is harmless, so retries need no key.
                        idempotency_key: String::new(),
                    });
                    match client.upsert(request).await {
                        Ok(reply) if reply.get_ref().upserted as usize == ids.len() => break,
                        Ok(reply) => bail!(
                            "batch {b}: {} of {} points upserted",
                            reply.get_ref().upserted,
                            ids.len()
                        ),
                        Err(status)
                            if attempt < 100
                                && matches!(
                                    status.code(),
                                    tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                                ) =>
                        {
                            attempt += 1;
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                        }
                        Err(status) => bail!("upserting batch {b}: {status}"),
                    }
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("an upsert task failed")??;
    }
    Ok(Ingest {
        start,
        elapsed: start.elapsed(),
        retries: retries.load(Ordering::Relaxed),
    })
}

/// Polls `GetCollection` until every point is counted and indexed; returns the segment count.
async fn wait_indexed(
    channel: &Channel,
    data: &Dataset,
    target: &Target,
    start: Instant,
    acked: Duration,
) -> Result<u32> {
    let mut client = CollectionsClient::new(channel.clone());
    let mut last_report = Instant::now();
    loop {
        let info = client
            .get_collection(target.request(api::GetCollectionRequest {
                name: target.collection.clone(),
            }))
            .await
            .context("GetCollection")?
            .into_inner();
        if info.points as usize == data.n_base() && info.unindexed_points == 0 {
            return Ok(info.segments);
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  waiting for the index: {} of {} points unindexed, {:.0} s since the last acknowledgement",
                info.unindexed_points,
                info.points,
                (start.elapsed() - acked).as_secs_f64()
            );
            last_report = Instant::now();
        }
        if start.elapsed() > acked + Duration::from_secs(3600) {
            bail!(
                "still {} points unindexed an hour after the last upsert",
                info.unindexed_points
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `Search` call: the returned ids, nearest first.
async fn search(
    client: &mut PointsClient<Channel>,
    target: &Target,
    query: &[f32],
    ef: u32,
) -> Result<Vec<u64>> {
    let reply = client
        .search(target.request(api::SearchRequest {
            collection: target.collection.clone(),
            vector: query.to_vec(),
            top_k: K as u32,
            ef: Some(ef),
            filter: None,
            with_payload: false,
            with_vector: false,
        }))
        .await
        .context("Search")?
        .into_inner();
    reply
        .points
        .iter()
        .map(|p| match p.id.as_ref().and_then(|id| id.kind.as_ref()) {
            Some(api::point_id::Kind::Num(id)) => Ok(*id),
            _ => Err(anyhow!("a search answered a point without a numeric id")),
        })
        .collect()
}

/// `clients` concurrent clients, one per channel, each cycling through every `clients`-th query
/// until the run has lasted `seconds` and every query has run once.
async fn measure(
    data: &Arc<Dataset>,
    target: &Target,
    channels: &[Channel],
    ef: u32,
    recall: f64,
    seconds: f64,
    server_pids: &[u32],
) -> Result<Row> {
    let clients = channels.len();
    let barrier = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for (c, channel) in channels.iter().enumerate() {
        let (data, target, barrier) = (data.clone(), target.clone(), barrier.clone());
        let mut client = PointsClient::new(channel.clone());
        tasks.spawn(async move {
            let share: Vec<usize> = (c..data.n_query()).step_by(clients).collect();
            for &q in share.iter().take(20) {
                search(&mut client, &target, data.query(q), ef).await?;
            }
            barrier.wait().await;
            let start = Instant::now();
            let deadline = start + Duration::from_secs_f64(seconds);
            let mut latencies = Vec::new();
            let mut done = 0usize;
            while done < share.len() || Instant::now() < deadline {
                let q = share[done % share.len()];
                let t = Instant::now();
                std::hint::black_box(search(&mut client, &target, data.query(q), ef).await?);
                latencies.push(t.elapsed());
                done += 1;
            }
            Ok::<_, anyhow::Error>((latencies, Instant::now()))
        });
    }
    barrier.wait().await;
    let load = ForeignLoad::start(server_pids);
    let start = Instant::now();
    let mut latencies = Vec::new();
    let mut end = start;
    while let Some(done) = tasks.join_next().await {
        let (mut lat, finished) = done.context("a search task failed")??;
        latencies.append(&mut lat);
        end = end.max(finished);
    }
    let (foreign, server_cpu_s) = load.finish();
    let elapsed = (end - start).as_secs_f64();
    latencies.sort_unstable();
    Ok(Row {
        ef,
        clients,
        recall_at_10: recall,
        qps: round(latencies.len() as f64 / elapsed, 1),
        p50_us: round(percentile(&latencies, 0.50), 1),
        p99_us: round(percentile(&latencies, 0.99), 1),
        queries: latencies.len(),
        seconds: round(elapsed, 3),
        foreign_cpu_share: foreign,
        server_cpu_us_per_query: if server_pids.is_empty() {
            None
        } else {
            Some(round(server_cpu_s * 1e6 / latencies.len().max(1) as f64, 1))
        },
    })
}

/// Health and Count round trips on one connection, each for `seconds`.
async fn floors(
    channel: &Channel,
    target: &Target,
    seconds: f64,
    server_pids: &[u32],
) -> Result<Vec<Floor>> {
    let mut out = Vec::new();
    for call in ["health", "count"] {
        let mut health = HealthClient::new(channel.clone());
        let mut points = PointsClient::new(channel.clone());
        let mut latencies = Vec::new();
        let load = ForeignLoad::start(server_pids);
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(seconds);
        // The first 100 calls warm up and are not counted.
        for i in 0.. {
            if i >= 100 && Instant::now() >= deadline {
                break;
            }
            let t = Instant::now();
            if call == "health" {
                health
                    .check(api::HealthCheckRequest {})
                    .await
                    .context("Health.Check")?;
            } else {
                points
                    .count(target.request(api::CountRequest {
                        collection: target.collection.clone(),
                        filter: None,
                    }))
                    .await
                    .context("Count")?;
            }
            if i >= 100 {
                latencies.push(t.elapsed());
            }
        }
        let (_, server_cpu_s) = load.finish();
        let elapsed = start.elapsed().as_secs_f64();
        latencies.sort_unstable();
        let floor = Floor {
            call,
            qps: round((latencies.len() + 100) as f64 / elapsed, 1),
            p50_us: round(percentile(&latencies, 0.50), 1),
            p99_us: round(percentile(&latencies, 0.99), 1),
            server_cpu_us_per_call: (!server_pids.is_empty())
                .then(|| round(server_cpu_s * 1e6 / (latencies.len() + 100) as f64, 1)),
        };
        eprintln!(
            "  round trip {call}: {}",
            serde_json::to_string(&floor).unwrap_or_default()
        );
        out.push(floor);
    }
    Ok(out)
}

/// The `p` quantile (nearest rank) of sorted latencies, in µs.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

fn print_table(report: &Report) {
    println!(
        "## server: {} (n={}, dim={}, metric={}, queries={}); ingest {:.0} points/s, indexed after {:.1} s\n",
        report.dataset,
        report.n_base,
        report.dim,
        report.metric,
        report.n_query,
        report.ingest_pps,
        report.time_to_indexed_s
    );
    println!(
        "| ef | clients | recall@10 | QPS | p50 us | p99 us | server CPU us/query | other processes |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &report.server {
        println!(
            "| {} | {} | {:.4} | {:.0} | {:.0} | {:.0} | {} | {:.0}% |",
            r.ef,
            r.clients,
            r.recall_at_10,
            r.qps,
            r.p50_us,
            r.p99_us,
            r.server_cpu_us_per_query
                .map_or(String::new(), |us| format!("{us:.0}")),
            r.foreign_cpu_share * 100.0
        );
    }
    println!();
    for f in &report.round_trip {
        println!(
            "round trip without search, 1 client, {}: {:.0} calls/s, p50 {:.0} us, p99 {:.0} us{}",
            f.call,
            f.qps,
            f.p50_us,
            f.p99_us,
            f.server_cpu_us_per_call
                .map_or(String::new(), |us| format!(", server CPU {us:.0} us/call"))
        );
    }
    println!();
}

/// CPU use by processes other than this client and the server's, to tell a quiet measurement
/// from a disturbed one (the figure `peers.py` reports as `noise.foreign_share_of_cores`), and the
/// server's own CPU time.
struct ForeignLoad {
    start: Instant,
    server_pids: Vec<u32>,
    busy_ticks: u64,
    server_ticks: u64,
    own_ticks: u64,
}

impl ForeignLoad {
    fn start(server_pids: &[u32]) -> ForeignLoad {
        let server_pids = server_pids.to_vec();
        let (busy_ticks, server_ticks, own_ticks) = ForeignLoad::ticks(&server_pids);
        ForeignLoad {
            start: Instant::now(),
            server_pids,
            busy_ticks,
            server_ticks,
            own_ticks,
        }
    }

    /// (share of all cores' time that other processes used since `start`, in 0..=1; CPU seconds
    /// the server's processes used).
    fn finish(&self) -> (f64, f64) {
        let (busy, server, own) = ForeignLoad::ticks(&self.server_pids);
        let server = server.saturating_sub(self.server_ticks) as f64;
        let foreign = busy.saturating_sub(self.busy_ticks) as f64
            - server
            - own.saturating_sub(self.own_ticks) as f64;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        // USER_HZ, the unit of /proc/stat and /proc/<pid>/stat, is 100 on Linux.
        let capacity = self.start.elapsed().as_secs_f64() * 100.0 * cores;
        (
            round((foreign / capacity.max(1.0)).clamp(0.0, 1.0), 3),
            server / 100.0,
        )
    }

    /// (non-idle ticks of all CPUs, ticks of `server_pids`, ticks of this process).
    fn ticks(server_pids: &[u32]) -> (u64, u64, u64) {
        let busy = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| {
                let fields: Vec<u64> = stat
                    .lines()
                    .next()?
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|field| field.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal
                Some(fields.iter().take(8).sum::<u64>() - fields.get(3)? - fields.get(4)?)
            })
            .unwrap_or(0);
        let process = |pid: &str| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let after_name = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        };
        let server = server_pids
            .iter()
            .filter_map(|pid| process(&pid.to_string()))
            .sum();
        (busy, server, process("self").unwrap_or(0))
    }
}
