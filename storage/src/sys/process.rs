//! Process-wide protection of the plaintext this process holds: `prctl(PR_SET_DUMPABLE, 0)`.
//!
//! A non-dumpable process writes no core dump (whatever `RLIMIT_CORE` and `core_pattern` say), and
//! processes of the same user without `CAP_SYS_PTRACE` can neither `ptrace` it nor read its
//! `/proc/<pid>/mem`, `environ` or `maps`; the kernel also makes root the owner of its `/proc/<pid>`
//! files. Both binaries call [`forbid_core_dumps`] first thing in `main`. The flag is reset by
//! `execve`, so it must be set by each binary itself.
//!
//! # Safety argument
//!
//! `prctl(PR_SET_DUMPABLE, arg2)` and `prctl(PR_GET_DUMPABLE)` take integers only and touch no
//! memory of ours; unused arguments are passed as 0 as the man page asks.

use std::io;

/// Makes this process non-dumpable (`PR_SET_DUMPABLE` 0).
pub fn forbid_core_dumps() -> io::Result<()> {
    let zero: libc::c_ulong = 0;
    // SAFETY: see the module docs; integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, zero, zero, zero, zero) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether this process is dumpable (`PR_GET_DUMPABLE`).
pub fn is_dumpable() -> io::Result<bool> {
    let zero: libc::c_ulong = 0;
    // SAFETY: see the module docs; integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, zero, zero, zero, zero) };
    match rc {
        -1 => Err(io::Error::last_os_error()),
        n => Ok(n != 0),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn forbid_core_dumps_clears_the_flag() {
        // Runs in the test process: nextest gives each test its own process, and a non-dumpable
        // test process loses nothing.
        super::forbid_core_dumps().unwrap();
        assert!(!super::is_dumpable().unwrap());
    }
}
