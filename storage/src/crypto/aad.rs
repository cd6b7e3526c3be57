//! Canonical associated data.
//!
//! Every AAD string starts with a domain label and then lists its fields, each as a little-endian
//! `u32` length followed by the bytes, so `("ab", "c")` and `("a", "bc")` encode differently and no
//! field of one domain can be read as a field of another. AAD is not secret: never put key material
//! or user data in it.

use crate::ids::TenantId;

/// Builds one canonical AAD string.
#[derive(Debug, Clone, Default)]
pub struct Aad(Vec<u8>);

impl Aad {
    /// Starts an AAD for `domain` (a fixed label such as `"kek"`).
    pub fn new(domain: &str) -> Aad {
        let mut aad = Aad(Vec::with_capacity(96));
        aad.bytes(b"vaultvec-aad-v1");
        aad.bytes(domain.as_bytes());
        aad
    }

    /// Appends a length-prefixed byte field.
    pub fn bytes(&mut self, field: &[u8]) -> &mut Aad {
        self.0
            .extend_from_slice(&(field.len() as u32).to_le_bytes());
        self.0.extend_from_slice(field);
        self
    }

    /// Appends a u64 field (length-prefixed like every other field).
    pub fn u64(&mut self, value: u64) -> &mut Aad {
        self.bytes(&value.to_le_bytes())
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The encoded bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// AAD for a tenant KEK wrapped by the root key.
pub fn kek(tenant: &TenantId, version: u32) -> Aad {
    let mut aad = Aad::new("kek");
    aad.bytes(tenant.as_str().as_bytes()).u64(version.into());
    aad
}

/// AAD for a file's DEK wrapped by a tenant KEK.
pub fn dek(tenant: &TenantId, collection: &str, file_id: u64, kek_version: u32) -> Aad {
    let mut aad = Aad::new("dek");
    aad.bytes(tenant.as_str().as_bytes())
        .bytes(collection.as_bytes())
        .u64(file_id)
        .u64(kek_version.into());
    aad
}

/// AAD for one sealed block of a file section.
pub fn block(
    tenant: &TenantId,
    collection: &str,
    file_id: u64,
    section: u32,
    block_index: u64,
    format_version: u16,
) -> Aad {
    let mut aad = Aad::new("block");
    aad.bytes(tenant.as_str().as_bytes())
        .bytes(collection.as_bytes())
        .u64(file_id)
        .u64(section.into())
        .u64(block_index)
        .u64(format_version.into());
    aad
}

/// AAD for one WAL frame.
pub fn wal_frame(
    tenant: &TenantId,
    collection: &str,
    file_id: u64,
    seq: u64,
    format_version: u16,
) -> Aad {
    let mut aad = Aad::new("wal");
    aad.bytes(tenant.as_str().as_bytes())
        .bytes(collection.as_bytes())
        .u64(file_id)
        .u64(seq)
        .u64(format_version.into());
    aad
}
