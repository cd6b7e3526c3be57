//! The root of the key hierarchy.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::key::{KEY_BYTES, KeyBytes, WRAPPED_KEY_BYTES, unwrap_key, wrap_key};
use crate::{Error, Result};

/// Wraps and unwraps key material under a root key that never leaves the provider.
///
/// Shaped after Vault Transit (`encrypt`/`decrypt` with a context) and cloud KMS (`Encrypt`/`Decrypt`
/// with an encryption context): the caller passes the plaintext key and associated data and gets an
/// opaque blob back, so a remote implementation can hold the root key in an HSM.
pub trait KeyProvider: Send + Sync {
    /// A name for logs and audit: which provider and which key (never key material).
    fn describe(&self) -> String;
    /// Encrypts `plain` (at most 64 bytes of key material) bound to `aad`.
    fn wrap(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>>;
    /// Decrypts a blob from [`KeyProvider::wrap`]; a wrong key, AAD or any flipped bit is an error.
    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>>;
}

/// A root key held in a local file of exactly 32 bytes, readable by its owner only.
pub struct LocalKeyFile {
    path: PathBuf,
    key: KeyBytes,
}

impl LocalKeyFile {
    /// Reads the key file, refusing one that group or others can read or write.
    pub fn open(path: &Path) -> Result<LocalKeyFile> {
        let mut file = File::open(path).map_err(Error::io(path))?;
        let meta = file.metadata().map_err(Error::io(path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Key(format!(
                "root key file {} has mode {mode:04o}, which lets group or others read it; \
                 run `chmod 600 {}`",
                path.display(),
                path.display()
            )));
        }
        if meta.len() != KEY_BYTES as u64 {
            return Err(Error::Key(format!(
                "root key file {} is {} bytes, expected exactly {KEY_BYTES}",
                path.display(),
                meta.len()
            )));
        }
        let mut key = KeyBytes([0u8; KEY_BYTES]);
        file.read_exact(&mut key.0).map_err(Error::io(path))?;
        Ok(LocalKeyFile {
            path: path.to_owned(),
            key,
        })
    }

    /// Creates a new random key file with mode 0600. Fails if the file exists.
    pub fn generate(path: &Path) -> Result<LocalKeyFile> {
        let key = KeyBytes::random();
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(Error::io(path))?;
        file.write_all(&key.0).map_err(Error::io(path))?;
        file.sync_all().map_err(Error::io(path))?;
        if let Some(dir) = path.parent() {
            crate::disk::sync_dir(dir)?;
        }
        Ok(LocalKeyFile {
            path: path.to_owned(),
            key,
        })
    }

    /// Opens the key file, creating it first if it does not exist.
    pub fn open_or_generate(path: &Path) -> Result<LocalKeyFile> {
        if path.exists() {
            LocalKeyFile::open(path)
        } else {
            LocalKeyFile::generate(path)
        }
    }
}

impl KeyProvider for LocalKeyFile {
    fn describe(&self) -> String {
        format!("local key file {}", self.path.display())
    }

    fn wrap(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let plain: [u8; KEY_BYTES] = plain.try_into().map_err(|_| {
            Error::Key(format!(
                "the local provider wraps {KEY_BYTES}-byte keys only"
            ))
        })?;
        let plain = KeyBytes(plain);
        Ok(wrap_key(&self.key.cipher(), &plain, aad).to_vec())
    }

    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if wrapped.len() != WRAPPED_KEY_BYTES {
            return Err(Error::Key("wrapped key has the wrong length".into()));
        }
        unwrap_key(&self.key.cipher(), wrapped, aad)
            .map(|key| Zeroizing::new(key.0.to_vec()))
            .ok_or_else(|| Error::Key("key failed to unwrap under the root key".into()))
    }
}
