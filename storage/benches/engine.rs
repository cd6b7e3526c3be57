//! Engine benchmark: builds vaultvec's HNSW graph over a bench-kit dataset and reports build time,
//! memory, and per-`ef` recall@10, QPS on one and two threads and per-query latency (`index` rows).
//! Then it runs the whole engine: the dataset goes in through `Collection::upsert` in batches of
//! 1,000 (each acknowledged after its WAL fsync, background indexing running alongside), the
//! segment is sealed, the collection is reopened from its encrypted files, and searches go through
//! `Collection::search` (`engine` rows). Reopening is timed next to a pure AES-GCM decryption of the
//! same files. `--skip-engine` leaves the engine phase out. `--filter-sweep` instead times filtered
//! graph walks against exact scans at selectivities from 0.1% to 50% (the filter switch point).
//!
//! ```text
//! cargo bench -p storage --bench engine -- DATASET [--json FILE] [--hnsw-rs] [--threads 2]
//!     [--ef 16,32,64,128,256] [--n-query N] [--m 16] [--efc 200] [--runs 3] [--seed 1]
//!     [--graph-cache FILE]
//! ```
//!
//! `DATASET` is a directory in the `shared/bench` format: `base.npy`, `query.npy`, `gt_ids.npy`,
//! `gt_dist.npy` and `meta.json` (which names the metric). Recall is counted the ann-benchmarks
//! way, like `benchlib.recall_at_k`: a returned id counts when its exact distance is within the
//! 10th ground-truth distance plus 1e-5, so ties are not penalised. QPS is the best of `--runs`
//! timed passes over the queries after one warm-up pass, one query at a time per thread; a pass is
//! repeated until it lasts at least 0.5 s. `--hnsw-rs` also builds hnsw_rs (same M, ef_construction
//! and thread count) and reports the same rows. `--graph-cache FILE` is for tuning the search: it
//! decodes the graph from FILE when it exists (the build time is then reported as 0) and otherwise
//! builds it and writes it there.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use storage::index::{Graph, HnswParams, Metric, Vectors};

const MIN_SAMPLE: Duration = Duration::from_millis(500);

fn main() {
    if let Err(err) = run() {
        eprintln!("engine bench: {err:#}");
        std::process::exit(1);
    }
}

/// Command-line options.
struct Args {
    dataset: PathBuf,
    json: Option<PathBuf>,
    hnsw_rs: bool,
    threads: usize,
    ef: Vec<usize>,
    n_query: usize,
    m: usize,
    ef_construction: usize,
    runs: usize,
    seed: u64,
    graph_cache: Option<PathBuf>,
    tune: bool,
    skip_engine: bool,
    filter_sweep: bool,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut args = Args {
            dataset: PathBuf::new(),
            json: None,
            hnsw_rs: false,
            threads: 2,
            ef: vec![16, 32, 64, 128, 256],
            n_query: 0,
            m: 16,
            ef_construction: 200,
            runs: 3,
            seed: 1,
            graph_cache: None,
            tune: false,
            skip_engine: false,
            filter_sweep: false,
        };
        let mut raw = std::env::args().skip(1);
        let mut dataset = None;
        while let Some(arg) = raw.next() {
            let mut value =
                |name: &str| raw.next().with_context(|| format!("{name} needs a value"));
            match arg.as_str() {
                // `cargo bench` appends `--bench` to the arguments of every bench target.
                "--bench" => {}
                "--json" => args.json = Some(PathBuf::from(value("--json")?)),
                "--hnsw-rs" => args.hnsw_rs = true,
                "--tune" => args.tune = true,
                "--skip-engine" => args.skip_engine = true,
                "--filter-sweep" => args.filter_sweep = true,
                "--graph-cache" => args.graph_cache = Some(PathBuf::from(value("--graph-cache")?)),
                "--threads" => args.threads = number(&value("--threads")?)?,
                "--n-query" => args.n_query = number(&value("--n-query")?)?,
                "--m" => args.m = number(&value("--m")?)?,
                "--efc" => args.ef_construction = number(&value("--efc")?)?,
                "--runs" => args.runs = number::<usize>(&value("--runs")?)?.max(1),
                "--seed" => args.seed = number(&value("--seed")?)?,
                "--ef" => {
                    args.ef = value("--ef")?
                        .split(',')
                        .filter(|part| !part.is_empty())
                        .map(number)
                        .collect::<Result<_>>()?
                }
                flag if flag.starts_with("--") => bail!("unknown option {flag}"),
                path if dataset.is_none() => dataset = Some(PathBuf::from(path)),
                extra => bail!("unexpected argument {extra}"),
            }
        }
        args.dataset = dataset.context("usage: engine DATASET [--json FILE] [--hnsw-rs] ...")?;
        Ok(args)
    }
}

fn number<T: std::str::FromStr>(raw: &str) -> Result<T> {
    raw.parse().map_err(|_| anyhow!("not a number: {raw}"))
}

/// Everything the benchmark measured, written as JSON with `--json`.
///
/// The collection layer's figures (reopen time, decrypt throughput, upsert rate) are meant to be
/// added here as further optional fields.
#[derive(Serialize)]
struct Report {
    dataset: String,
    n_base: usize,
    n_query: usize,
    dim: usize,
    metric: String,
    m: usize,
    ef_construction: usize,
    threads: usize,
    build_s: f64,
    /// CPU seconds of all build threads; steadier than `build_s` on a busy machine.
    build_cpu_s: f64,
    graph_bytes: usize,
    peak_rss_mb: f64,
    /// Share of the cores other processes used while the engine was built and measured.
    foreign_cpu_share: f64,
    /// The raw graph: `Graph::build` and `Graph::search`.
    index: Vec<Point>,
    /// The whole engine: `Collection::search` over the sealed, reopened collection.
    engine: Vec<Point>,
    /// Acknowledged upserts per second (1,000-point batches, WAL fsync included).
    #[serde(skip_serializing_if = "Option::is_none")]
    upsert_pps: Option<f64>,
    /// Points per second moved into the graph by background indexing, from the first upsert until
    /// every point was indexed.
    #[serde(skip_serializing_if = "Option::is_none")]
    index_pps: Option<f64>,
    /// Seconds to seal the indexed segment to its encrypted file.
    #[serde(skip_serializing_if = "Option::is_none")]
    seal_s: Option<f64>,
    /// Seconds to reopen the sealed collection from disk (decrypt, decode, id map; no rebuild).
    #[serde(skip_serializing_if = "Option::is_none")]
    reopen_s: Option<f64>,
    /// Seconds to AES-GCM-decrypt every section of the collection's segment files, alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    decrypt_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decrypt_gbps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    segment_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hnsw_rs_build_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hnsw_rs: Option<Vec<Point>>,
}

/// The measurements at one `ef`.
#[derive(Serialize, Clone)]
struct Point {
    ef: usize,
    recall_at_10: f64,
    qps_1t: f64,
    qps_2t: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Dataset {
    /// [`Dataset::load`], with the base and queries as the index sees them: normalised for cosine.
    fn load_for_index(dir: &Path, n_query: usize) -> Result<Dataset> {
        let mut data = Dataset::load(dir, n_query)?;
        if data.metric == Metric::Cosine {
            normalise(&mut data.base, data.dim);
            normalise(&mut data.queries, data.dim);
        }
        Ok(data)
    }

    fn vectors(&self) -> Vectors<'_> {
        Vectors::new(&self.base, self.dim)
    }

    fn queries(&self) -> Vec<&[f32]> {
        self.queries.chunks_exact(self.dim).collect()
    }
}

fn normalise(data: &mut [f32], dim: usize) {
    for row in data.chunks_exact_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|x| *x /= norm);
        }
    }
}

/// Measures one searcher at one `ef`: recall, QPS on 1 and 2 threads, latency percentiles.
fn measure(
    data: &Dataset,
    ef: usize,
    runs: usize,
    search: &(dyn Fn(&[f32], usize) -> Vec<u32> + Sync),
) -> Point {
    let queries = data.queries();
    // Warm-up pass; its answers give the recall.
    let results: Vec<Vec<u32>> = queries.iter().map(|q| search(q, ef)).collect();
    let recall = data.recall(&results);

    let mut latencies = Vec::with_capacity(queries.len());
    let one_pass = |latencies: &mut Vec<Duration>| {
        latencies.clear();
        let start = Instant::now();
        for query in &queries {
            let t = Instant::now();
            std::hint::black_box(search(query, ef));
            latencies.push(t.elapsed());
        }
        start.elapsed()
    };
    let reps = repetitions(one_pass(&mut latencies));
    let mut best_1t = Duration::MAX;
    let mut best_latencies = Vec::new();
    for _ in 0..runs {
        let mut total = Duration::ZERO;
        for _ in 0..reps {
            total += one_pass(&mut latencies);
        }
        if total < best_1t {
            best_1t = total;
            best_latencies.clone_from(&latencies);
        }
    }
    best_latencies.sort_unstable();

    let two_threads = || {
        let start = Instant::now();
        std::thread::scope(|scope| {
            for part in 0..2 {
                let queries = &queries;
                scope.spawn(move || {
                    for query in queries.iter().skip(part).step_by(2) {
                        std::hint::black_box(search(query, ef));
                    }
                });
            }
        });
        start.elapsed()
    };
    let reps_2t = repetitions(two_threads());
    let best_2t = (0..runs)
        .map(|_| (0..reps_2t).map(|_| two_threads()).sum::<Duration>())
        .min()
        .unwrap_or(Duration::MAX);

    let n = queries.len() as f64;
    let percentile = |p: f64| {
        let index = ((best_latencies.len() as f64 - 1.0) * p).round() as usize;
        best_latencies
            .get(index)
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Point {
        ef,
        recall_at_10: round(recall, 4),
        qps_1t: round(n * reps as f64 / best_1t.as_secs_f64(), 1),
        qps_2t: round(n * reps_2t as f64 / best_2t.as_secs_f64(), 1),
        p50_us: round(percentile(0.50), 1),
        p99_us: round(percentile(0.99), 1),
    }
}

/// Single-thread QPS by this thread's CPU time (from `/proc/thread-self/schedstat`), best of 3
/// passes, so that time spent preempted by other processes does not count. For comparing versions
/// of the code on a busy machine, not for reports.
fn tune_qps(data: &Dataset, ef: usize, search: &(dyn Fn(&[f32], usize) -> Vec<u32> + Sync)) -> f64 {
    let cpu_ns = || {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let queries = data.queries();
    // The kernel accounts CPU time in scheduler ticks here, so a pass must last many ticks.
    let pass = |reps: u32| {
        let start = cpu_ns();
        for _ in 0..reps {
            for query in &queries {
                std::hint::black_box(search(query, ef));
            }
        }
        cpu_ns() - start
    };
    let reps = (1e9 / pass(1).max(1) as f64).ceil() as u32;
    let best = (0..3).map(|_| pass(reps)).min().unwrap_or(1).max(1);
    queries.len() as f64 * reps as f64 / (best as f64 / 1e9)
}

/// Passes per sample so that a sample lasts at least `MIN_SAMPLE`.
fn repetitions(one: Duration) -> u32 {
    (MIN_SAMPLE.as_secs_f64() / one.as_secs_f64().max(1e-6))
        .ceil()
        .max(1.0) as u32
}

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// CPU use by other processes, to tell a quiet measurement from a disturbed one (the same figure
/// as `peers.py`'s `noise.foreign_share_of_cores`).
struct ForeignLoad {
    start: Instant,
    busy_ticks: u64,
    own_ticks: u64,
}

impl ForeignLoad {
    fn start() -> ForeignLoad {
        let (busy_ticks, own_ticks) = ForeignLoad::ticks();
        ForeignLoad {
            start: Instant::now(),
            busy_ticks,
            own_ticks,
        }
    }

    /// Share of all cores' time that other processes used since `start`, in 0..=1.
    fn share(&self) -> f64 {
        let (busy, own) = ForeignLoad::ticks();
        let foreign =
            busy.saturating_sub(self.busy_ticks) as f64 - own.saturating_sub(self.own_ticks) as f64;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        // USER_HZ, the unit of /proc/stat and /proc/self/stat, is 100 on Linux.
        let capacity = self.start.elapsed().as_secs_f64() * 100.0 * cores;
        round((foreign / capacity.max(1.0)).clamp(0.0, 1.0), 3)
    }

    /// (non-idle ticks of all CPUs, ticks of this process).
    fn ticks() -> (u64, u64) {
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
        let own = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| {
                let after_name = &stat[stat.rfind(')')? + 2..];
                let fields: Vec<&str> = after_name.split_whitespace().collect();
                Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0);
        (busy, own)
    }
}

/// Peak resident set size of this process so far, in MiB (`VmHWM`).
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
        })
        .map_or(0.0, |kib| round(kib / 1024.0, 1))
}

fn run() -> Result<()> {
    let args = Args::parse()?;
    let data = Dataset::load_for_index(&args.dataset, args.n_query)?;
    let vectors = data.vectors();
    let params = HnswParams {
        m: args.m,
        ef_construction: args.ef_construction,
    };
    eprintln!(
        "{}: {} x {} {:?}, {} queries; building with M={} efc={} on {} threads",
        data.name,
        data.n_base(),
        data.dim,
        data.metric,
        data.n_query(),
        params.m,
        params.ef_construction,
        args.threads
    );
    let load = ForeignLoad::start();
    let cpu_start = ForeignLoad::ticks().1;
    let start = Instant::now();
    let cached = args.graph_cache.as_ref().filter(|path| path.exists());
    let graph = match cached {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Graph::decode(&bytes, params, data.metric, data.n_base())
                .with_context(|| format!("decoding {}", path.display()))?
        }
        None => Graph::build(params, data.metric, &vectors, args.threads, args.seed),
    };
    let build_cpu_s = (ForeignLoad::ticks().1 - cpu_start) as f64 / 100.0;
    let build_s = if cached.is_some() {
        0.0
    } else {
        start.elapsed().as_secs_f64()
    };
    if let Some(path) = args.graph_cache.as_ref().filter(|_| cached.is_none()) {
        std::fs::write(path, graph.encode())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "built in {build_s:.2} s ({build_cpu_s:.1} CPU s), graph {:.1} MiB",
        graph.memory_bytes() as f64 / (1 << 20) as f64
    );

    let ours = |query: &[f32], ef: usize| {
        graph
            .search(&vectors, query, K, ef, None)
            .iter()
            .map(|hit| hit.node)
            .collect()
    };
    if args.filter_sweep {
        filter_sweep(&data, &graph);
        return Ok(());
    }
    if args.tune {
        for &ef in &args.ef {
            eprintln!(
                "  tune ef={ef}: {:.1} QPS (1 thread, by CPU time)",
                tune_qps(&data, ef, &ours)
            );
        }
        return Ok(());
    }
    let mut index = Vec::new();
    for &ef in &args.ef {
        let point = measure(&data, ef, args.runs, &ours);
        eprintln!(
            "  vaultvec index ef={ef}: {}",
            serde_json::to_string(&point).unwrap_or_default()
        );
        index.push(point);
    }
    let mut report = Report {
        dataset: data.name.clone(),
        n_base: data.n_base(),
        n_query: data.n_query(),
        dim: data.dim,
        metric: format!("{:?}", data.metric).to_lowercase(),
        m: params.m,
        ef_construction: params.ef_construction,
        threads: args.threads,
        build_s: round(build_s, 2),
        build_cpu_s: round(build_cpu_s, 2),
        graph_bytes: graph.memory_bytes(),
        peak_rss_mb: peak_rss_mb(),
        foreign_cpu_share: load.share(),
        index,
        engine: Vec::new(),
        upsert_pps: None,
        index_pps: None,
        seal_s: None,
        reopen_s: None,
        decrypt_s: None,
        decrypt_gbps: None,
        segment_bytes: None,
        hnsw_rs_build_s: None,
        hnsw_rs: None,
    };
    drop(graph);
    if !args.skip_engine {
        engine_phase::run(&data, params, &args, &mut report)?;
        report.peak_rss_mb = peak_rss_mb();
    }

    if args.hnsw_rs {
        let (build_s, points) = reference::run(&data, params, &args)?;
        report.hnsw_rs_build_s = Some(round(build_s, 2));
        report.hnsw_rs = Some(points);
    }

    print_table(&report);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn print_table(report: &Report) {
    println!(
        "## {} (n={}, dim={}, metric={}, queries={}, M={}, efc={}, build threads={})\n",
        report.dataset,
        report.n_base,
        report.dim,
        report.metric,
        report.n_query,
        report.m,
        report.ef_construction,
        report.threads
    );
    if report.foreign_cpu_share > 0.05 {
        println!(
            "(other processes used {:.0}% of the cores while vaultvec was measured)\n",
            report.foreign_cpu_share * 100.0
        );
    }
    println!(
        "| engine | build s | graph MiB | peak RSS MiB | ef | recall@10 | QPS 1t | QPS 2t | p50 us | p99 us |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let rows = |name: &str, build: String, graph: String, rss: String, points: &[Point]| {
        for (i, p) in points.iter().enumerate() {
            let head = if i == 0 {
                format!("| {name} | {build} | {graph} | {rss} ")
            } else {
                "| | | | ".to_owned()
            };
            println!(
                "{head}| {} | {:.4} | {:.0} | {:.0} | {:.0} | {:.0} |",
                p.ef, p.recall_at_10, p.qps_1t, p.qps_2t, p.p50_us, p.p99_us
            );
        }
    };
    rows(
        "vaultvec index",
        format!("{:.1}", report.build_s),
        format!("{:.0}", report.graph_bytes as f64 / (1 << 20) as f64),
        format!("{:.0}", report.peak_rss_mb),
        &report.index,
    );
    rows(
        "vaultvec engine",
        String::new(),
        String::new(),
        String::new(),
        &report.engine,
    );
    if let (Some(build), Some(points)) = (report.hnsw_rs_build_s, &report.hnsw_rs) {
        rows(
            "hnsw_rs",
            format!("{build:.1}"),
            String::new(),
            String::new(),
            points,
        );
    }
    println!();
    if let (Some(upsert), Some(index), Some(seal), Some(reopen), Some(decrypt), Some(gbps)) = (
        report.upsert_pps,
        report.index_pps,
        report.seal_s,
        report.reopen_s,
        report.decrypt_s,
        report.decrypt_gbps,
    ) {
        println!(
            "engine: upserts acknowledged {upsert:.0} points/s (1,000-point batches, fsync each); \
             background indexing {index:.0} points/s; seal {seal:.2} s; \
             reopen {reopen:.2} s vs AES-GCM decrypt alone {decrypt:.2} s ({gbps:.2} GB/s), ratio {:.2}\n",
            reopen / decrypt
        );
    }
}

/// For the filtered-search switch point: at each selectivity, the time per query and recall@10 of
/// the filtered graph walk (ef 64) against the exact scan over the matching points, which is also
/// the truth. The filter is a hash of the node id, so matches are spread without structure.
fn filter_sweep(data: &Dataset, graph: &Graph) {
    use storage::index::exact_search;
    let vectors = data.vectors();
    let queries: Vec<&[f32]> = data.queries().into_iter().take(200).collect();
    println!("| matching | graph us/query | graph recall@10 | exact us/query | faster |");
    println!("|---:|---:|---:|---:|---|");
    for per_mille in [1u64, 2, 5, 10, 20, 50, 100, 200, 500] {
        let accept = move |node: u32| {
            (u64::from(node).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 1000 < per_mille
        };
        let start = Instant::now();
        let truth: Vec<Vec<u32>> = queries
            .iter()
            .map(|q| {
                exact_search(&vectors, data.metric, q, K, Some(&accept))
                    .iter()
                    .map(|h| h.node)
                    .collect()
            })
            .collect();
        let exact_us = start.elapsed().as_secs_f64() * 1e6 / queries.len() as f64;
        let start = Instant::now();
        let found: Vec<Vec<u32>> = queries
            .iter()
            .map(|q| {
                graph
                    .search(&vectors, q, K, 64, Some(&accept))
                    .iter()
                    .map(|h| h.node)
                    .collect()
            })
            .collect();
        let graph_us = start.elapsed().as_secs_f64() * 1e6 / queries.len() as f64;
        let hits: usize = found
            .iter()
            .zip(&truth)
            .map(|(f, t)| f.iter().filter(|n| t.contains(n)).count())
            .sum();
        let total: usize = truth.iter().map(Vec::len).sum();
        let recall = hits as f64 / total.max(1) as f64;
        let faster = if exact_us < graph_us {
            "exact"
        } else {
            "graph"
        };
        println!(
            "| {:.1}% | {graph_us:.0} | {recall:.3} | {exact_us:.0} | {faster} |",
            per_mille as f64 / 10.0
        );
    }
}

#[path = "common/engine_phase.rs"]
mod engine_phase;

#[path = "common/reference.rs"]
mod reference;

#[path = "common/dataset.rs"]
mod dataset;
#[path = "common/npy.rs"]
mod npy;

use dataset::{Dataset, K};
