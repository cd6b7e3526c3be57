//! Who is calling: API keys of tenants.
//!
//! A key is `vv_<keyid>_<secret>`: 8 base62 characters of public key id (shown in the dashboard and
//! in audit rows) and 32 of secret (about 190 bits). The store keeps only `HMAC-SHA256(pepper, key)`,
//! never the key and never a fast hash alone. In front of the store sits an LRU indexed by the
//! xxHash3 of the presented key under a per-process random seed; xxHash3 is not a security hash, so a
//! cache hit is only a candidate, confirmed by comparing HMAC digests in constant time. Revocation
//! removes the cache entry at once.

mod api_key;

pub use api_key::{
    AuthError, Authenticator, Identity, KEY_ID_LEN, KeyRecord, KeyStore, NewKey, Pepper,
    SECRET_LEN, Scope, Scopes, generate,
};

/// Whether a presented bearer token (admin or worker) equals the expected one, in time that
/// depends only on their lengths, never on where they first differ (INV-10; measured by
/// `cargo bench -p coordinator --bench dudect`).
pub fn tokens_match(presented: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(presented.ct_eq(expected))
}

#[cfg(test)]
mod tests;
