//! The only module tree in the workspace that contains `unsafe` code.
//!
//! Each submodule states its safety argument at the top and beside every `unsafe` block:
//!
//! - `mmap`: read-only maps of sealed, immutable files (ciphertext only).
//! - `append`: an append-only, fixed-capacity vector arena that one writer fills while many readers
//!   read the already-published prefix.
//! - `zeroed`: large zero-filled atomic arrays allocated with `alloc_zeroed`, so a growing
//!   segment's graph costs memory only as it fills.
//! - `process`: `prctl(PR_SET_DUMPABLE, 0)`, so no core dump or same-user ptrace sees plaintext.
//! - `simd`: distance kernels compiled for AVX2+FMA, called only after the CPU was checked at run time.
//!
//! If one of these arguments weakens, replace the code with a safe equivalent (`pread`, a lock,
//! the scalar kernel) rather than widening the argument.

pub(crate) mod append;
pub(crate) mod mmap;
pub mod process;
pub(crate) mod simd;
pub(crate) mod zeroed;
