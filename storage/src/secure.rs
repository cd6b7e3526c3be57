//! Memory for plaintext: anonymous mappings that are locked (best effort), excluded from core
//! dumps, and zeroized before they are freed.
//!
//! `mlock` can fail under `RLIMIT_MEMLOCK`; the buffer is still usable, the failure is counted in
//! [`plaintext_stats`] and logged once, so an operator can raise the limit (`LimitMEMLOCK=` in the
//! systemd unit). `MADV_DONTDUMP` has no such limit and is always applied.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use zeroize::Zeroize;

static LOCKED_BYTES: AtomicU64 = AtomicU64::new(0);
static UNLOCKED_BYTES: AtomicU64 = AtomicU64::new(0);
static WARNED: AtomicBool = AtomicBool::new(false);

/// How much plaintext memory is live, and how much of it could not be locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaintextStats {
    /// Bytes in buffers that `mlock` accepted.
    pub locked_bytes: u64,
    /// Bytes in buffers that `mlock` refused (still excluded from core dumps).
    pub unlocked_bytes: u64,
}

/// Current plaintext memory figures for this process.
pub fn plaintext_stats() -> PlaintextStats {
    PlaintextStats {
        locked_bytes: LOCKED_BYTES.load(Ordering::Relaxed),
        unlocked_bytes: UNLOCKED_BYTES.load(Ordering::Relaxed),
    }
}

/// A zero-initialised, page-aligned plaintext buffer.
pub struct SecureBuf {
    map: memmap2::MmapMut,
    len: usize,
    is_locked: bool,
    is_dontdump: bool,
    /// Bytes counted in the process-wide figures (all of `len`, or 0 for a reservation).
    accounted: usize,
}

/// Adds `bytes` of plaintext to the process-wide figures, warning once if `mlock` refused.
pub(crate) fn account(bytes: usize, is_locked: bool) {
    let counter = if is_locked {
        &LOCKED_BYTES
    } else {
        &UNLOCKED_BYTES
    };
    counter.fetch_add(bytes as u64, Ordering::Relaxed);
    if !is_locked && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            bytes,
            "mlock refused for plaintext memory (RLIMIT_MEMLOCK); it may be swapped out. \
             Raise the limit (systemd: LimitMEMLOCK=infinity) to keep plaintext in RAM"
        );
    }
}

/// Removes `bytes` of plaintext from the process-wide figures.
pub(crate) fn unaccount(bytes: usize, is_locked: bool) {
    let counter = if is_locked {
        &LOCKED_BYTES
    } else {
        &UNLOCKED_BYTES
    };
    counter.fetch_sub(bytes as u64, Ordering::Relaxed);
}

impl SecureBuf {
    /// Allocates `len` zero bytes of plaintext memory.
    pub fn new(len: usize) -> std::io::Result<SecureBuf> {
        // A zero-length anonymous map is an error on Linux; keep one page so the pointer is valid.
        let map = memmap2::MmapMut::map_anon(len.max(1))?;
        let is_dontdump = map.advise(memmap2::Advice::DontDump).is_ok();
        let is_locked = map.lock().is_ok();
        account(len, is_locked);
        Ok(SecureBuf {
            map,
            len,
            is_locked,
            is_dontdump,
            accounted: len,
        })
    }

    /// Reserves `len` bytes of address space without locking or touching it: pages are backed only
    /// when written. The owner locks what it fills and zeroizes what it wrote (see `sys::append`);
    /// dropping the reservation zeroizes nothing itself.
    pub(crate) fn reserve(len: usize) -> std::io::Result<SecureBuf> {
        let map = memmap2::MmapMut::map_anon(len.max(1))?;
        let is_dontdump = map.advise(memmap2::Advice::DontDump).is_ok();
        Ok(SecureBuf {
            map,
            len,
            is_locked: false,
            is_dontdump,
            accounted: 0,
        })
    }

    /// Copies `bytes` into a new buffer.
    pub fn from_slice(bytes: &[u8]) -> std::io::Result<SecureBuf> {
        let mut buf = SecureBuf::new(bytes.len())?;
        buf.as_mut_bytes().copy_from_slice(bytes);
        Ok(buf)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `mlock` succeeded for this buffer.
    pub fn is_locked(&self) -> bool {
        self.is_locked
    }

    /// Whether `MADV_DONTDUMP` was applied to this buffer.
    pub fn is_dontdump(&self) -> bool {
        self.is_dontdump
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.map[..self.len]
    }

    /// The bytes, mutably.
    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        &mut self.map[..self.len]
    }

    /// Pointer to the first byte, without touching any page (for `sys::append`).
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// The buffer as f32s. The length must be a multiple of 4 (the mapping is page-aligned).
    pub fn as_f32(&self) -> &[f32] {
        bytemuck::cast_slice(self.as_bytes())
    }

    /// The buffer as f32s, mutably.
    pub fn as_mut_f32(&mut self) -> &mut [f32] {
        bytemuck::cast_slice_mut(self.as_mut_bytes())
    }
}

impl Drop for SecureBuf {
    fn drop(&mut self) {
        if self.accounted > 0 {
            self.map.zeroize();
            unaccount(self.accounted, self.is_locked);
        }
    }
}

impl std::fmt::Debug for SecureBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecureBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_excluded_from_dumps_and_counted() {
        let before = plaintext_stats();
        let buf = SecureBuf::from_slice(&[7u8; 10_000]).unwrap();
        assert!(buf.is_dontdump(), "MADV_DONTDUMP must always apply");
        let during = plaintext_stats();
        let grew = (during.locked_bytes + during.unlocked_bytes)
            - (before.locked_bytes + before.unlocked_bytes);
        assert!(grew >= 10_000);
        // The kernel's view: the mapping carries the "dd" (do not dump) flag in /proc/self/smaps.
        let addr = buf.as_bytes().as_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_range = false;
        let mut found = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((lo, hi)) = range.split_once('-')
                && let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                in_range = (lo..hi).contains(&addr);
                continue;
            }
            if in_range && line.starts_with("VmFlags:") {
                assert!(line.contains(" dd"), "no dd flag: {line}");
                if buf.is_locked() {
                    assert!(line.contains(" lo"), "locked buffer lacks lo flag: {line}");
                }
                found = true;
            }
        }
        assert!(found, "mapping not found in smaps");
        drop(buf);
    }
}
