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
/// depends neither on where they first differ nor on the expected token's length (INV-10;
/// measured by `cargo bench -p coordinator --bench dudect`). Both sides are hashed to 32 bytes
/// first and the digests compared in constant time: comparing the raw bytes would return at once
/// when the lengths differ, which tells a caller the token's length.
pub fn tokens_match(presented: &[u8], expected: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let presented = Sha256::digest(presented);
    let expected = Sha256::digest(expected);
    bool::from(presented.as_slice().ct_eq(expected.as_slice()))
}

/// A bearer token the coordinator expects (the admin token, a worker's token). Zeroized on drop,
/// with no `Debug`, `Display`, `Serialize` or `PartialEq`: it can be neither printed nor compared
/// except in constant time by [`BearerToken::matches`] (INV-08, INV-10; the assertions in
/// `auth/tests.rs` stop the build if one is derived).
#[derive(Clone)]
pub struct BearerToken(zeroize::Zeroizing<String>);

impl BearerToken {
    /// Wraps an expected token.
    pub fn new(token: zeroize::Zeroizing<String>) -> BearerToken {
        BearerToken(token)
    }

    /// Whether `presented` is this token, in constant time ([`tokens_match`]).
    pub fn matches(&self, presented: &[u8]) -> bool {
        tokens_match(presented, self.0.as_bytes())
    }

    /// The token's length in bytes (configuration checks its minimum).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the token is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests;
