//! Read-only memory maps of sealed files.
//!
//! # Safety argument
//!
//! A `memmap2::Mmap` hands out a `&[u8]` whose bytes the kernel may change if the file is written
//! or truncated while mapped (truncation raises SIGBUS on access). vaultvec maps only *sealed*
//! files: segments and manifests that were written to a temporary name, fsynced and renamed into
//! place, and are never opened for writing again. Replacing one (KEK rotation, compaction) writes a
//! new file and renames it over the old name, which leaves the old inode, and so this map, intact;
//! deleting one unlinks the name, and the inode lives until the last map drops. The length is
//! checked against the header before any section is read. Only ciphertext is ever mapped.

use std::fs::File;
use std::io;
use std::ops::Deref;

/// A read-only map of a sealed file.
pub(crate) struct SealedMap(memmap2::Mmap);

impl SealedMap {
    /// Maps `file`, which must be a sealed file (see the module's safety argument).
    pub(crate) fn open(file: &File) -> io::Result<SealedMap> {
        // SAFETY: `file` is sealed: it is never written, truncated or extended after it was
        // renamed into place, so the mapped bytes cannot change under the returned slice.
        let map = unsafe { memmap2::MmapOptions::new().map(file)? };
        // Sections are read front to back once, at load time.
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(SealedMap(map))
    }
}

impl Deref for SealedMap {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}
