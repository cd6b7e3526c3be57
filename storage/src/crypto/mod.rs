//! The key hierarchy and authenticated encryption.
//!
//! ```text
//! root key   (KeyProvider: a 0600 key file today; Vault Transit or a cloud KMS implement the same trait)
//!   └─ tenant KEK, versioned, wrapped by the root key       AAD = aad::kek(tenant, version)
//!        └─ DEK, one per file, wrapped by a tenant KEK        AAD = aad::dek(tenant, collection, file, kek version)
//!             └─ blocks / WAL frames, AES-256-GCM             AAD = aad::block(..) / aad::wal_frame(..)
//! ```
//!
//! # Invariants
//!
//! - A DEK encrypts exactly one write-once file. It enters a [`FileSealer`] by value and the sealer
//!   hands out strictly increasing nonces (the block's position in the file), so a (key, nonce) pair is
//!   never used twice; past [`NONCE_BUDGET`] the sealer refuses.
//! - Every associated-data string is canonical and length-prefixed ([`aad`]), so distinct contexts
//!   never encode to the same bytes.
//! - Key types zeroize on drop and implement neither `Debug`, `Display` nor `Serialize`.
//! - Decryption never returns partial plaintext: a block either authenticates whole or is an error.

pub mod aad;
mod key;
mod prefetch;
mod provider;
mod seal;
mod service;

pub(crate) use key::fill_random;
pub use key::{DataKey, KEY_BYTES, Kek, WRAPPED_KEY_BYTES, WrappedDek};
pub use prefetch::{Prefetching, WillOpen};
pub use provider::{KeyProvider, LocalKeyFile};
pub use seal::{FileOpener, FileSealer, NONCE_BUDGET, TAG_BYTES};
pub use service::{DekContext, KeyService, LocalKeyService};

#[cfg(test)]
mod tests;
