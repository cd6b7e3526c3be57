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

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::secure::SecureBuf;

/// Fixed-capacity append-only vector storage in locked, non-dumpable memory.
pub(crate) struct AppendVectors {
    buf: SecureBuf,
    /// Pointer to the first f32 of `buf`. Stable: `buf` is never reallocated.
    base: *mut f32,
    dim: usize,
    capacity: usize,
    len: AtomicUsize,
    writer: Mutex<()>,
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
        let mut buf = SecureBuf::new(n_floats * 4)?;
        let base = buf.as_mut_f32().as_mut_ptr();
        Ok(AppendVectors {
            buf,
            base,
            dim,
            capacity,
            len: AtomicUsize::new(0),
            writer: Mutex::new(()),
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
        Ok(AppendVectors {
            buf,
            base,
            dim,
            capacity: n,
            len: AtomicUsize::new(n),
            writer: Mutex::new(()),
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
        let _writer = self.writer.lock();
        let slot = self.len.load(Ordering::Relaxed);
        if slot >= self.capacity {
            return None;
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
}
