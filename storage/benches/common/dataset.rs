//! A bench-kit dataset directory (`base.npy`, `query.npy`, `gt_ids.npy`, `gt_dist.npy`,
//! `meta.json`; see `../shared/bench/README.md`) and the recall@10 every benchmark reports, shared
//! by `storage/benches/engine.rs` and `tests/benches/server.rs` through `#[path]` (next to
//! `npy.rs`, which the including crate must declare as `mod npy`).

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use storage::index::Metric;

/// Neighbours per query that recall counts.
pub(crate) const K: usize = 10;

/// The vectors, row-major, as stored in the files (cosine datasets are not normalised here).
pub(crate) struct Dataset {
    pub(crate) name: String,
    pub(crate) metric: Metric,
    pub(crate) dim: usize,
    pub(crate) base: Vec<f32>,
    pub(crate) queries: Vec<f32>,
    /// Exact distance of each query's 10th neighbour, from `gt_dist.npy`.
    pub(crate) kth_distance: Vec<f32>,
}

impl Dataset {
    /// Reads `dir`, keeping the first `n_query` queries (all with 0), and checks that the ground
    /// truth matches the base and the queries.
    pub(crate) fn load(dir: &Path, n_query: usize) -> Result<Dataset> {
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("meta.json"))
                .with_context(|| format!("reading {}/meta.json", dir.display()))?,
        )
        .context("parsing meta.json")?;
        let metric = match meta["metric"].as_str() {
            Some("cosine") => Metric::Cosine,
            Some("l2") => Metric::L2,
            Some("dot" | "ip") => Metric::Dot,
            other => bail!("meta.json: unknown metric {other:?}"),
        };
        let name = meta["name"].as_str().map(str::to_owned).unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let (base, dim) = crate::npy::read(&dir.join("base.npy"))?.into_f32_matrix()?;
        let (mut queries, query_dim) =
            crate::npy::read(&dir.join("query.npy"))?.into_f32_matrix()?;
        let (gt_dist, gt_cols) = crate::npy::read(&dir.join("gt_dist.npy"))?.into_f32_matrix()?;
        let gt_ids = crate::npy::read(&dir.join("gt_ids.npy"))?;
        if dim == 0 || query_dim != dim {
            bail!("queries have {query_dim} dimensions, base {dim}");
        }
        let n_query_all = queries.len() / dim;
        if gt_cols < K
            || gt_dist.len() / gt_cols != n_query_all
            || gt_ids.shape.first() != Some(&n_query_all)
        {
            bail!("ground truth does not match the queries or has fewer than 10 columns");
        }
        let n_base = base.len() / dim;
        if gt_ids
            .into_i32()?
            .iter()
            .any(|&id| id < 0 || id as usize >= n_base)
        {
            bail!("gt_ids.npy names ids outside the base");
        }
        let n_query = match n_query {
            0 => n_query_all,
            n => n.min(n_query_all),
        };
        queries.truncate(n_query * dim);
        let kth_distance = (0..n_query).map(|q| gt_dist[q * gt_cols + K - 1]).collect();
        Ok(Dataset {
            name,
            metric,
            dim,
            base,
            queries,
            kth_distance,
        })
    }

    pub(crate) fn n_base(&self) -> usize {
        self.base.len() / self.dim
    }

    pub(crate) fn n_query(&self) -> usize {
        self.kth_distance.len()
    }

    pub(crate) fn query(&self, i: usize) -> &[f32] {
        &self.queries[i * self.dim..(i + 1) * self.dim]
    }

    pub(crate) fn row(&self, id: usize) -> &[f32] {
        &self.base[id * self.dim..(id + 1) * self.dim]
    }

    /// ann-benchmarks recall@10 of `results` (one id list per query, in query order), as
    /// `benchlib.recall_at_k` counts it: a returned id counts when its exact distance, in f64, is
    /// within the 10th ground-truth distance plus 1e-5 (relative for l2); duplicates count once.
    pub(crate) fn recall<I: Copy + Into<u64>>(&self, results: &[Vec<I>]) -> f64 {
        let mut found = 0;
        for (q, ids) in results.iter().enumerate() {
            let kth = f64::from(self.kth_distance[q]);
            let threshold = kth
                + match self.metric {
                    Metric::L2 => 1e-5 * kth.max(1.0),
                    _ => 1e-5,
                };
            let mut seen = HashSet::new();
            for id in ids.iter().take(K).map(|&id| id.into()) {
                if (id as usize) < self.n_base()
                    && self.exact_distance(self.query(q), self.row(id as usize)) <= threshold
                    && seen.insert(id)
                {
                    found += 1;
                }
            }
        }
        found as f64 / (results.len() * K).max(1) as f64
    }

    fn exact_distance(&self, a: &[f32], b: &[f32]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        match self.metric {
            Metric::Cosine => {
                let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                1.0 - dot / (norm(a) * norm(b))
            }
            Metric::Dot => -dot,
            Metric::L2 => a
                .iter()
                .zip(b)
                .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
                .sum(),
        }
    }
}
