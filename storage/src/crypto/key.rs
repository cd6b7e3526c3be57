//! Key newtypes. They zeroize on drop and deliberately implement no `Debug`, `Display`,
//! `Serialize` or `PartialEq` (compare wrapped forms, never keys).

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{Error, Result};

/// Length of every symmetric key, in bytes.
pub const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;
/// Length of a key wrapped with [`wrap_key`]: nonce, ciphertext, tag.
pub const WRAPPED_KEY_BYTES: usize = NONCE_BYTES + KEY_BYTES + TAG_BYTES;

/// 32 secret bytes, zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop, Clone)]
pub(crate) struct KeyBytes(pub(crate) [u8; KEY_BYTES]);

impl KeyBytes {
    pub(crate) fn random() -> KeyBytes {
        let mut key = KeyBytes([0u8; KEY_BYTES]);
        fill_random(&mut key.0);
        key
    }

    pub(crate) fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&Key::<Aes256Gcm>::from(self.0))
    }
}

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn fill_random(buf: &mut [u8]) {
    // Failing to read the OS CSPRNG leaves no safe way to make a key; stopping is the only answer.
    getrandom::fill(buf).expect("the operating system's random source failed");
}

/// Wraps `plain` (a key) under `kek_cipher` with a random nonce. Random nonces are safe here: one
/// KEK wraps at most a few million keys in its life, far below the 2^32 random-nonce bound.
pub(crate) fn wrap_key(
    kek_cipher: &Aes256Gcm,
    plain: &KeyBytes,
    aad: &[u8],
) -> [u8; WRAPPED_KEY_BYTES] {
    let mut nonce = [0u8; NONCE_BYTES];
    fill_random(&mut nonce);
    let mut out = [0u8; WRAPPED_KEY_BYTES];
    out[..NONCE_BYTES].copy_from_slice(&nonce);
    out[NONCE_BYTES..NONCE_BYTES + KEY_BYTES].copy_from_slice(&plain.0);
    let tag = kek_cipher
        .encrypt_inout_detached(
            &Nonce::from(nonce),
            aad,
            (&mut out[NONCE_BYTES..NONCE_BYTES + KEY_BYTES]).into(),
        )
        .expect("a 32-byte message is within AES-GCM limits");
    out[NONCE_BYTES + KEY_BYTES..].copy_from_slice(&tag);
    out
}

/// Inverse of [`wrap_key`]; any wrong key, AAD or flipped bit is an error.
pub(crate) fn unwrap_key(kek_cipher: &Aes256Gcm, wrapped: &[u8], aad: &[u8]) -> Option<KeyBytes> {
    if wrapped.len() != WRAPPED_KEY_BYTES {
        return None;
    }
    let nonce: [u8; NONCE_BYTES] = wrapped[..NONCE_BYTES].try_into().ok()?;
    let tag: [u8; TAG_BYTES] = wrapped[NONCE_BYTES + KEY_BYTES..].try_into().ok()?;
    let mut key = KeyBytes([0u8; KEY_BYTES]);
    key.0
        .copy_from_slice(&wrapped[NONCE_BYTES..NONCE_BYTES + KEY_BYTES]);
    kek_cipher
        .decrypt_inout_detached(
            &Nonce::from(nonce),
            aad,
            (&mut key.0[..]).into(),
            &tag.into(),
        )
        .ok()?;
    Some(key)
}

/// A tenant's key-encryption key at one version. Lives only in the key service.
pub struct Kek {
    version: u32,
    key: KeyBytes,
}

impl Kek {
    /// A fresh random KEK.
    pub fn generate(version: u32) -> Kek {
        Kek {
            version,
            key: KeyBytes::random(),
        }
    }

    pub(crate) fn from_bytes(version: u32, key: KeyBytes) -> Kek {
        Kek { version, key }
    }

    pub(crate) fn key(&self) -> &KeyBytes {
        &self.key
    }

    /// This KEK's version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Wraps a DEK; `aad` must be [`crate::crypto::aad::dek`] for this KEK's version.
    pub fn wrap_dek(&self, dek: &DataKey, aad: &[u8]) -> WrappedDek {
        WrappedDek {
            kek_version: self.version,
            bytes: wrap_key(&self.key.cipher(), &dek.0, aad),
        }
    }

    /// Unwraps a DEK wrapped by this KEK.
    pub fn unwrap_dek(&self, wrapped: &WrappedDek, aad: &[u8]) -> Result<DataKey> {
        if wrapped.kek_version != self.version {
            return Err(Error::Key(format!(
                "data key is wrapped by KEK version {}, not {}",
                wrapped.kek_version, self.version
            )));
        }
        unwrap_key(&self.key.cipher(), &wrapped.bytes, aad)
            .map(DataKey)
            .ok_or_else(|| Error::Key("data key failed to unwrap (wrong key or tampered)".into()))
    }
}

/// A data-encryption key: encrypts exactly one file.
pub struct DataKey(pub(crate) KeyBytes);

impl DataKey {
    /// A fresh random DEK.
    pub fn generate() -> DataKey {
        DataKey(KeyBytes::random())
    }

    /// A DEK received from the key service over the authenticated cluster channel.
    pub fn from_wire(bytes: &[u8]) -> Result<DataKey> {
        let key: [u8; KEY_BYTES] = bytes.try_into().map_err(|_| {
            Error::Key(format!(
                "data key is {} bytes, not {KEY_BYTES}",
                bytes.len()
            ))
        })?;
        Ok(DataKey(KeyBytes(key)))
    }

    /// The DEK's bytes, for the key service to send to the worker that asked. The copy zeroizes
    /// itself when dropped; it must never be logged or stored.
    pub fn to_wire(&self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(self.0.0.to_vec())
    }
}

impl WrappedDek {
    /// A wrapped DEK received over the cluster channel; wrong length is an error.
    pub fn from_wire(kek_version: u32, bytes: &[u8]) -> Result<WrappedDek> {
        let bytes: [u8; WRAPPED_KEY_BYTES] = bytes.try_into().map_err(|_| {
            Error::Key(format!(
                "wrapped data key is {} bytes, not {WRAPPED_KEY_BYTES}",
                bytes.len()
            ))
        })?;
        Ok(WrappedDek { kek_version, bytes })
    }
}

/// A DEK wrapped by a tenant KEK, as stored in a file header. Not secret.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct WrappedDek {
    /// Version of the KEK that wrapped it.
    pub kek_version: u32,
    /// Nonce, ciphertext and tag.
    pub bytes: [u8; WRAPPED_KEY_BYTES],
}
