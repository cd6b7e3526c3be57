//! vaultvec storage engine: per-tenant encrypted, memory-mapped vector collections with HNSW search.
//!
//! # Layout on disk
//!
//! ```text
//! <data>/tenants/<tenant>/<collection>/
//!     MANIFEST-<n>   encrypted, atomically replaced: config, live segments, WAL files, tombstones
//!     wal-<n>        append-only encrypted frames (one frame per group commit)
//!     seg-<n>        sealed, immutable: header + encrypted sections (ids, vectors, payloads, graph)
//! ```
//!
//! The byte-level formats are documented in `FORMAT.md` beside this crate's `Cargo.toml`.
//!
//! # Invariants
//!
//! - Plaintext vectors, payloads and graphs never reach persistent storage, the WAL included.
//! - Every sealed block and every wrapped key is bound by its AES-GCM associated data to its tenant,
//!   collection, file, section and position; a (key, nonce) pair is never used twice.
//! - Only `sys` contains `unsafe` code.
//! - This crate knows nothing about networking or SQLite.

pub mod collection;
pub mod courtesy;
pub mod crypto;
mod deadline;
pub mod disk;
pub mod engine;
pub mod error;
pub mod filter;
pub mod gate;
pub mod ids;
pub mod index;
pub mod logging;
pub mod manifest;
pub mod sealed;
pub mod secure;
#[allow(unsafe_code)]
mod sys;
pub mod wal;

/// Process-wide hardening both binaries apply at startup (`prctl(PR_SET_DUMPABLE, 0)`).
pub use sys::process;

pub use collection::{
    Collection, CollectionConfig, Limits, PointInput, Purged, Record, ScoredPoint, SearchRequest,
};
pub use deadline::Deadline;
pub use engine::Engine;
pub use error::{Error, Result};

#[cfg(test)]
mod tests;
