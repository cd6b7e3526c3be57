//! Large zero-initialised atomic arrays whose pages the kernel backs only when first written.
//!
//! # Safety argument
//!
//! `vec![0u32; n]` allocates with `alloc_zeroed` (calloc, which maps fresh zero pages for large
//! sizes), so untouched pages cost no memory; building the array element by element would touch
//! every page. The boxed `[u32]` is then reinterpreted as `[AtomicU32]`: the standard library
//! documents that `AtomicU32` has the same size and bit validity as `u32`, and the compile-time
//! assertion below checks that their alignments agree on this target, so the layout is identical
//! and the all-zero bits are a valid `AtomicU32::new(0)` each.

use std::sync::atomic::AtomicU32;

const _: () = assert!(std::mem::align_of::<u32>() == std::mem::align_of::<AtomicU32>());
const _: () = assert!(std::mem::size_of::<u32>() == std::mem::size_of::<AtomicU32>());

/// `n` atomics, all zero, allocated lazily.
pub(crate) fn zeroed_atomic_u32(n: usize) -> Box<[AtomicU32]> {
    let zeros: Box<[u32]> = vec![0u32; n].into_boxed_slice();
    let raw = Box::into_raw(zeros) as *mut [AtomicU32];
    // SAFETY: see the module docs: same size, alignment and bit validity, and the allocation came
    // from a `Box<[u32]>` of the same length, so the layout the `Box` frees with is the same.
    unsafe { Box::from_raw(raw) }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[test]
    fn zeroed_atomics_read_zero_and_store() {
        let array = zeroed_atomic_u32(1 << 20);
        assert!(
            array
                .iter()
                .step_by(4093)
                .all(|a| a.load(Ordering::Relaxed) == 0)
        );
        array[12345].store(7, Ordering::Relaxed);
        assert_eq!(array[12345].load(Ordering::Relaxed), 7);
    }
}
