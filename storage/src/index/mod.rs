//! Vector indexes: distance metrics, exact search and HNSW.
//!
//! - [`Graph`] (`hnsw`): vaultvec's own HNSW graph, used for growing and sealed segments alike.
//! - [`exact_search`] and [`exact_search_ids`] (`flat`): full scans, the oracle the graph is tested
//!   against and the plan for tiny segments and very selective filters.
//! - [`Vectors`]: the borrowed row-major vectors both search; node id = row index.

mod flat;
mod hit;
mod hnsw;
mod vectors;
mod visited;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use flat::{exact_search, exact_search_ids, exact_search_range};
pub use hit::Hit;
pub use hnsw::{DEFAULT_EF, Graph, HnswParams};
pub use vectors::Vectors;

use crate::sys::simd;

/// How vectors are compared. Smaller distance is nearer for every metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine distance `1 - cos(a, b)`. Vectors are normalised on the way in, so this is `1 - a·b`.
    Cosine,
    /// Negative inner product `-a·b`.
    Dot,
    /// Squared Euclidean distance.
    L2,
}

impl Metric {
    /// Distance between two vectors of equal length (already normalised for cosine).
    #[inline]
    pub fn distance(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::Cosine => 1.0 - simd::dot(a, b),
            Metric::Dot => -simd::dot(a, b),
            Metric::L2 => simd::l2_sq(a, b),
        }
    }

    /// Stable one-byte code used in file headers.
    pub fn code(self) -> u8 {
        match self {
            Metric::Cosine => 1,
            Metric::Dot => 2,
            Metric::L2 => 3,
        }
    }

    /// Inverse of [`Metric::code`].
    pub fn from_code(code: u8) -> Option<Metric> {
        match code {
            1 => Some(Metric::Cosine),
            2 => Some(Metric::Dot),
            3 => Some(Metric::L2),
            _ => None,
        }
    }
}
