//! Collection parameters (persisted in the manifest) and engine limits (not persisted).

use serde::{Deserialize, Serialize};

use crate::index::Metric;
use crate::{Error, Result};

/// Largest vector dimension.
pub const MAX_DIM: usize = 4096;

/// What a collection is created with. Immutable after creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    /// Vector dimension, 1..=4096.
    pub dim: usize,
    /// Distance metric.
    pub metric: Metric,
    /// HNSW links per node (2M at layer 0), 2..=64.
    #[serde(default = "default_m")]
    pub m: usize,
    /// HNSW candidate list size while building, 4..=1024 and at least `m`.
    #[serde(default = "default_ef_construction")]
    pub ef_construction: usize,
    /// Search candidate list size when a search does not give one.
    #[serde(default = "default_ef")]
    pub ef: usize,
}

fn default_m() -> usize {
    16
}
fn default_ef_construction() -> usize {
    200
}
fn default_ef() -> usize {
    64
}

impl CollectionConfig {
    /// A config with default HNSW parameters.
    pub fn new(dim: usize, metric: Metric) -> CollectionConfig {
        CollectionConfig {
            dim,
            metric,
            m: default_m(),
            ef_construction: default_ef_construction(),
            ef: default_ef(),
        }
    }

    /// Checks every bound, naming the one that failed.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        let check = |ok: bool, msg: String| {
            if ok {
                Ok(())
            } else {
                Err(Error::InvalidArgument { reason: msg })
            }
        };
        check(
            (1..=MAX_DIM).contains(&self.dim),
            format!("dimension {} is outside 1..={MAX_DIM}", self.dim),
        )?;
        check(
            (2..=64).contains(&self.m),
            format!("m {} is outside 2..=64", self.m),
        )?;
        check(
            (4..=1024).contains(&self.ef_construction) && self.ef_construction >= self.m,
            format!(
                "ef_construction {} is outside {}..=1024",
                self.ef_construction,
                self.m.max(4)
            ),
        )?;
        check(
            (1..=limits.max_ef).contains(&self.ef),
            format!("ef {} is outside 1..={}", self.ef, limits.max_ef),
        )
    }
}

/// Bounds the engine enforces on every request (set by the operator, not persisted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `top_k` of a search.
    pub max_top_k: usize,
    /// Largest `ef` of a search.
    pub max_ef: usize,
    /// Most points in one upsert, get or delete call.
    pub max_batch: usize,
    /// Most queries in one batch search.
    pub max_search_batch: usize,
    /// Largest payload, in bytes of compact JSON.
    pub max_payload_bytes: usize,
    /// Points in the mutable segment before it is sealed.
    pub segment_points: usize,
    /// Bytes in a WAL file before writes move to a new one.
    pub wal_bytes: u64,
    /// Threads used to index and seal in the background.
    pub index_threads: usize,
    /// When a collection is closed (tenant unloaded, engine closed), a growing segment with at
    /// least this many points, all in its graph, is sealed first, so the next open reads its graph
    /// instead of rebuilding it from the WAL. Small, so that an idle tenant's next request does
    /// not rebuild its graph either; below it the replay costs little.
    pub checkpoint_points: usize,
    /// Most bytes one answer of get, scroll, search or batch search may carry (ids, payloads as
    /// compact JSON, vectors as 4 bytes a component). Checked while the answer is built: a get
    /// or search past it is refused, a scroll page ends early with its cursor.
    pub max_answer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_top_k: 1000,
            max_ef: 4096,
            max_batch: 10_000,
            max_search_batch: 100,
            max_payload_bytes: 64 * 1024,
            segment_points: 200_000,
            wal_bytes: 64 << 20,
            index_threads: 2,
            checkpoint_points: 256,
            max_answer_bytes: 16 << 20,
        }
    }
}
