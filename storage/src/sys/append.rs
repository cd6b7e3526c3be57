//! An append-only arena of fixed-dimension f32 vectors with one writer and many readers.
//!
//! # Safety argument
//!
//! The arena is a fixed-capacity [`SecureBuf`] allocated once and never moved or resized.
//! `len` counts the published vectors. [`AppendVectors::push`] takes `&mut` access to the *writer
//! half* only through a `parking_lot::Mutex`, writes slot `len` (which no reader can reach, since
//! readers only take slots `< len`), then publishes it with a `Release` store. [`AppendVectors::get`]
//! loads `len` with `Acquire` and hands out only slots below it, which are never written again. So
//! no byte is ever read and written concurrently, and every read happens after its write.
//!
//! The arena is a reservation: its pages are backed only when written. The writer `mlock`s the
//! filled prefix in steps (a range inside the mapping this struct owns; `mlock` has no effect on
//! memory safety), and `Drop`, which has exclusive access, zeroizes the written prefix.

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use zeroize::Zeroize;

use crate::secure::{self, SecureBuf};

/// The written prefix is locked in steps of this many bytes (a multiple of the page size).
const LOCK_STEP: usize = 1 << 20;

/// Fixed-capacity append-only vector storage in locked, non-dumpable memory.
pub(crate) struct AppendVectors {
    buf: SecureBuf,
    /// Pointer to the first f32 of `buf`. Stable: `buf` is never reallocated.
    base: *mut f32,
    dim: usize,
    capacity: usize,
    len: AtomicUsize,
    /// The writer's lock; it guards how far the prefix is locked and how much of it `mlock` refused.
    writer: Mutex<Locked>,
}

#[derive(Default)]
struct Locked {
    /// Bytes from the start that were passed to `mlock` (successfully or not).
    upto: usize,
    locked: usize,
    unlocked: usize,
}

// SAFETY: the raw pointer is only dereferenced under the discipline described in the module docs:
// writes to unpublished slots under `writer`, reads of published slots only.
unsafe impl Send for AppendVectors {}
// SAFETY: as above; shared access never produces a data race.
unsafe impl Sync for AppendVectors {}

impl AppendVectors {
    /// Allocates room for `capacity` vectors of `dim` components.
    pub(crate) fn new(dim: usize, capacity: usize) -> std::io::Result<AppendVectors> {
        let n_floats = dim.checked_mul(capacity).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "arena size overflows")
        })?;
        let mut buf = SecureBuf::reserve(n_floats * 4)?;
        // Taking the pointer writes nothing; the pages stay unbacked until a vector lands in them.
        let base = buf.as_mut_ptr().cast::<f32>();
        Ok(AppendVectors {
            buf,
            base,
            dim,
            capacity,
            len: AtomicUsize::new(0),
            writer: Mutex::new(Locked::default()),
        })
    }

    /// Wraps `n` vectors already in `buf` (a loaded sealed segment), all published, capacity `n`.
    pub(crate) fn from_buf(
        mut buf: SecureBuf,
        dim: usize,
        n: usize,
    ) -> std::io::Result<AppendVectors> {
        if dim.checked_mul(n).and_then(|f| f.checked_mul(4)) != Some(buf.len()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "vector section has the wrong length",
            ));
        }
        let base = buf.as_mut_f32().as_mut_ptr();
        // `buf` is fully locked and zeroizes itself; nothing for this struct to lock or wipe.
        let locked = Locked {
            upto: usize::MAX,
            locked: 0,
            unlocked: 0,
        };
        Ok(AppendVectors {
            buf,
            base,
            dim,
            capacity: n,
            len: AtomicUsize::new(n),
            writer: Mutex::new(locked),
        })
    }

    /// Bytes of plaintext memory held.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Number of published vectors.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Capacity in vectors.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Dimension of each vector.
    pub(crate) fn dim(&self) -> usize {
        self.dim
    }

    /// Appends `vector` and returns its slot, or `None` when full. Panics if the length is wrong,
    /// which callers have validated.
    pub(crate) fn push(&self, vector: &[f32]) -> Option<u32> {
        assert_eq!(vector.len(), self.dim, "caller validates the dimension");
        let mut locked = self.writer.lock();
        let slot = self.len.load(Ordering::Relaxed);
        if slot >= self.capacity {
            return None;
        }
        let end = (slot + 1) * self.dim * 4;
        if end > locked.upto {
            let upto = end.next_multiple_of(LOCK_STEP).min(self.buf.len());
            let start = locked.upto;
            // SAFETY: `start..upto` lies inside the mapping `buf` owns (`upto <= buf.len()`), and
            // `mlock` only pins pages; it reads and writes no memory.
            let is_locked =
                unsafe { libc::mlock(self.base.cast::<u8>().add(start).cast(), upto - start) } == 0;
            secure::account(upto - start, is_locked);
            if is_locked {
                locked.locked += upto - start;
            } else {
                locked.unlocked += upto - start;
            }
            locked.upto = upto;
        }
        // SAFETY: `slot < capacity`, so the range is inside `buf`; `slot >= len` as seen by any
        // reader, so no reader holds a reference into it; the writer lock excludes other writers.
        unsafe {
            let dst = std::slice::from_raw_parts_mut(self.base.add(slot * self.dim), self.dim);
            dst.copy_from_slice(vector);
        }
        self.len.store(slot + 1, Ordering::Release);
        Some(slot as u32)
    }

    /// The vector in `slot`, if published.
    #[inline]
    pub(crate) fn get(&self, slot: u32) -> Option<&[f32]> {
        let slot = slot as usize;
        if slot >= self.len.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: `slot < len`: the slot was fully written before `len` was released past it and
        // is never written again; `buf` outlives `&self`.
        Some(unsafe { std::slice::from_raw_parts(self.base.add(slot * self.dim), self.dim) })
    }

    /// All published vectors as one contiguous slice.
    pub(crate) fn published(&self) -> &[f32] {
        let len = self.len.load(Ordering::Acquire);
        // SAFETY: as in `get`, for every slot below `len`.
        unsafe { std::slice::from_raw_parts(self.base, len * self.dim) }
    }
}

impl Drop for AppendVectors {
    fn drop(&mut self) {
        let locked = self.writer.get_mut();
        if locked.upto == usize::MAX {
            return; // a loaded buffer, wiped by its own drop
        }
        let written = *self.len.get_mut() * self.dim;
        // SAFETY: `&mut self` excludes every reader and the writer; the first `written` floats
        // are inside `buf`, which is still alive.
        unsafe { std::slice::from_raw_parts_mut(self.base, written) }.zeroize();
        secure::unaccount(locked.locked, true);
        secure::unaccount(locked.unlocked, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_readers_see_only_published_vectors() {
        let arena = std::sync::Arc::new(AppendVectors::new(4, 1000).unwrap());
        let writer = {
            let arena = arena.clone();
            std::thread::spawn(move || {
                for i in 0..1000 {
                    let v = [i as f32; 4];
                    assert_eq!(arena.push(&v), Some(i));
                }
                assert_eq!(arena.push(&[0.0; 4]), None);
            })
        };
        let mut seen = 0;
        while seen < 1000 {
            let len = arena.len();
            for i in 0..len as u32 {
                assert_eq!(arena.get(i).unwrap(), &[i as f32; 4]);
            }
            assert!(arena.get(len as u32).is_none() || arena.len() > len);
            seen = len;
        }
        writer.join().unwrap();
        assert_eq!(arena.published().len(), 4000);
    }

    #[test]
    fn a_large_empty_arena_pins_no_memory() {
        let before = secure::plaintext_stats();
        // 200,000 vectors of 384 dimensions: 307 MB reserved.
        let arena = AppendVectors::new(384, 200_000).unwrap();
        arena.push(&[1.0; 384]).unwrap();
        let after = secure::plaintext_stats();
        let grew = (after.locked_bytes + after.unlocked_bytes) as i64
            - (before.locked_bytes + before.unlocked_bytes) as i64;
        // One lock step, not the whole reservation (other tests may run alongside, hence the margin).
        assert!(
            grew < 64 << 20,
            "an arena holding one vector accounts {grew} bytes"
        );
        assert_eq!(arena.get(0).unwrap(), &[1.0; 384]);
    }
}
