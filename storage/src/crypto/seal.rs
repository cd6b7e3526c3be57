//! Encrypting the blocks of one file under its own DEK, with position nonces.

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, Nonce};

use super::key::DataKey;
use crate::{Error, Result};

/// Length of an AES-GCM tag.
pub const TAG_BYTES: usize = 16;

/// Most encryptions one DEK may perform (2^30, below SP 800-38D's 2^32 guidance). Files are far
/// smaller than this in blocks; a WAL rotates long before.
pub const NONCE_BUDGET: u64 = 1 << 30;

fn nonce(counter: u64) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::from(bytes)
}

/// Encrypts the blocks of one file. Owns its DEK, so the key cannot be reused for another file, and
/// hands out strictly increasing nonce counters, so no nonce repeats under it.
pub struct FileSealer {
    cipher: Aes256Gcm,
    next: u64,
    budget: u64,
}

impl FileSealer {
    /// A sealer for a new file; the first block gets counter 0.
    pub fn new(dek: DataKey) -> FileSealer {
        FileSealer::with_budget(dek, NONCE_BUDGET)
    }

    /// A sealer that refuses after `budget` encryptions (tests use small budgets).
    pub fn with_budget(dek: DataKey, budget: u64) -> FileSealer {
        FileSealer {
            cipher: dek.0.cipher(),
            next: 0,
            budget: budget.min(NONCE_BUDGET),
        }
    }

    /// The counter the next block will get.
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    /// Encrypts `buf` in place under the next counter, returning that counter and the tag.
    pub fn seal_next(&mut self, aad: &[u8], buf: &mut [u8]) -> Result<(u64, [u8; TAG_BYTES])> {
        if self.next >= self.budget {
            return Err(Error::Key(format!(
                "data key reached its budget of {} encryptions; rotate the file",
                self.budget
            )));
        }
        let counter = self.next;
        self.next += 1;
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce(counter), aad, buf.into())
            .map_err(|_| Error::invalid("block too large for AES-GCM"))?;
        Ok((counter, tag.into()))
    }
}

/// Decrypts the blocks of one file.
pub struct FileOpener {
    cipher: Aes256Gcm,
}

impl FileOpener {
    /// An opener for the file whose DEK this is.
    pub fn new(dek: DataKey) -> FileOpener {
        FileOpener {
            cipher: dek.0.cipher(),
        }
    }

    /// Decrypts `ciphertext` sealed under `counter` into `out` (same length). Returns false, with
    /// `out` zeroed, when authentication fails.
    #[must_use]
    pub fn open(
        &self,
        counter: u64,
        aad: &[u8],
        ciphertext: &[u8],
        tag: &[u8; TAG_BYTES],
        out: &mut [u8],
    ) -> bool {
        let Ok(inout) = aes_gcm::aead::inout::InOutBuf::new(ciphertext, out) else {
            return false;
        };
        let ok = self
            .cipher
            .decrypt_inout_detached(&nonce(counter), aad, inout, &(*tag).into())
            .is_ok();
        if !ok {
            out.fill(0);
        }
        ok
    }

    /// Decrypts `buf` in place. Returns false, with `buf` zeroed, when authentication fails.
    #[must_use]
    pub fn open_in_place(
        &self,
        counter: u64,
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_BYTES],
    ) -> bool {
        let ok = self
            .cipher
            .decrypt_inout_detached(&nonce(counter), aad, buf.into(), &(*tag).into())
            .is_ok();
        if !ok {
            buf.fill(0);
        }
        ok
    }
}
