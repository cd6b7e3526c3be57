//! hnsw_rs on the same data and parameters, the design vaultvec measured itself against.

use hnsw_rs::prelude::{DistDot, DistL2, Hnsw};

use anyhow::{Context, Result};

use super::{Args, Dataset, K, Point, measure};
use storage::index::{HnswParams, Metric};

pub(crate) fn run(data: &Dataset, params: HnswParams, args: &Args) -> Result<(f64, Vec<Point>)> {
    // hnsw_rs inserts on rayon's global pool.
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()
        .context("configuring rayon's global pool")?;
    match data.metric {
        // The vectors are already normalised (`Dataset::load_for_index`), so 1 - dot is the
        // cosine distance; `DistCosine` would recompute both norms on every call, an unfair
        // configuration for the peer.
        Metric::Cosine => run_with(data, params, args, DistDot),
        Metric::Dot => run_with(data, params, args, DistDot),
        Metric::L2 => run_with(data, params, args, DistL2),
    }
}

fn run_with<D>(
    data: &Dataset,
    params: HnswParams,
    args: &Args,
    distance: D,
) -> Result<(f64, Vec<Point>)>
where
    D: hnsw_rs::prelude::Distance<f32> + Send + Sync,
{
    let rows: Vec<(&[f32], usize)> = data.base.chunks_exact(data.dim).zip(0..).collect();
    let start = std::time::Instant::now();
    let index = Hnsw::<f32, D>::new(params.m, rows.len(), 16, params.ef_construction, distance);
    index.parallel_insert_slice(&rows);
    let build_s = start.elapsed().as_secs_f64();
    eprintln!("hnsw_rs built in {build_s:.2} s");
    let search = |query: &[f32], ef: usize| {
        index
            .search(query, K, ef)
            .iter()
            .map(|n| n.d_id as u32)
            .collect::<Vec<u32>>()
    };
    let mut points = Vec::new();
    for &ef in &args.ef {
        let point = measure(data, ef, args.runs, &search);
        eprintln!(
            "  hnsw_rs ef={ef}: {}",
            serde_json::to_string(&point).unwrap_or_default()
        );
        points.push(point);
    }
    Ok((build_s, points))
}
