//! Process-wide protection of the plaintext this process holds: `prctl(PR_SET_DUMPABLE, 0)`; and
//! the allocator's purge delay (`return_freed_memory_promptly`).
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
//! memory of ours; unused arguments are passed as 0 as the man page asks. `gettid`,
//! `setpriority`, `getpriority` and `sched_getscheduler` likewise take and return integers only;
//! `sched_setscheduler` reads one `sched_param` through a pointer to a live local of that type. `clock_gettime` writes
//! one `timespec` through the pointer it is given, which points at a local of exactly that type.
//! `mi_option_set` and `mi_option_get` take and return integers only; mimalloc keeps its options
//! in words it reads atomically, and documents setting them while the program runs.
//!
//! Background threads (indexing, sealing, compaction) put themselves in the `SCHED_IDLE` class with
//! [`idle_background_thread`] (nice [`BACKGROUND_NICE`] with [`lower_this_thread`] where that is
//! refused): on Linux the scheduling class and nice value belong to a thread, so a tenant's bulk
//! writes, whose indexing can keep every core busy, leave the cores to requests that wait for an
//! answer, and a waking request thread preempts them at once. An idle-class thread still runs
//! whenever no normal thread wants its core.

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

/// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h` (the Rust bindings name no constant
/// for it): the 16th entry of `mi_option_e`, after `mi_option_deprecated_eager_commit_delay`
/// (14, which the bindings do name).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc give freed memory back to the system at once instead of after its purge delay
/// (1 s by default in v3). A worker loads and unloads tenants on threads that then go idle or exit;
/// with the delay, memory they freed was purged only when those threads allocated again, and a
/// worker that had loaded 2,000 small tenants in turn held 10.7 GiB with all of them unloaded
/// (`scripts/bench-tenants.sh`; 351 MiB with the delay at 0). Only the worker calls it, first
/// thing in `main`; it has no effect where mimalloc is not the allocator.
pub fn return_freed_memory_promptly() {
    // SAFETY: see the module docs; integer arguments only.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}

/// mimalloc's purge delay in milliseconds (see [`return_freed_memory_promptly`]).
pub fn purge_delay_ms() -> libc::c_long {
    // SAFETY: see the module docs; integer arguments only.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
}

/// The nice value background threads run at (request threads keep 0).
pub const BACKGROUND_NICE: i32 = 10;

/// Gives the calling thread the nice value [`BACKGROUND_NICE`]. Best effort: a failure is
/// returned, and the thread simply keeps its priority.
pub fn lower_this_thread() -> io::Result<()> {
    // SAFETY: see the module docs; integer arguments only.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BACKGROUND_NICE)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Puts the calling thread in the `SCHED_IDLE` class: it runs only on cores no normal thread
/// wants, and a waking normal thread preempts it at once, where a nice-10 thread keeps its slice.
/// Best effort like [`lower_this_thread`]; a thread cannot leave the class again without
/// privileges.
pub fn idle_this_thread() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: see the module docs; `param` is a live local `sched_param`, read only.
    let rc = unsafe { libc::sched_setscheduler(libc::gettid(), libc::SCHED_IDLE, &param) };
    if rc == 0 {
        crate::courtesy::begin();
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the calling thread is in the `SCHED_IDLE` class.
pub fn this_thread_is_idle_class() -> io::Result<bool> {
    // SAFETY: see the module docs; integer arguments only.
    let policy = unsafe { libc::sched_getscheduler(libc::gettid()) };
    if policy == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(policy == libc::SCHED_IDLE)
}

/// [`idle_this_thread`] for a thread start handler: logs a failure, and falls back to
/// [`lower_this_thread`].
pub fn idle_background_thread() {
    if let Err(err) = idle_this_thread() {
        tracing::debug!(error = %err, "could not put a thread in the idle class");
        lower_background_thread();
    }
}

/// [`lower_this_thread`], logging a failure instead of returning it (thread start handlers).
pub fn lower_background_thread() {
    if let Err(err) = lower_this_thread() {
        tracing::debug!(error = %err, "could not lower a background thread's priority");
    }
}

/// The calling thread's nice value.
pub fn this_thread_nice() -> io::Result<i32> {
    // SAFETY: see the module docs; integer arguments only. `getpriority` may return -1 as a
    // value, so errno is cleared first and checked after.
    unsafe {
        *libc::__errno_location() = 0;
        let tid = libc::gettid();
        let nice = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        if nice == -1 && *libc::__errno_location() != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(nice)
    }
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`): what a request cost,
/// whatever else ran on the cores meanwhile.
pub fn this_thread_cpu_time() -> io::Result<std::time::Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: see the module docs; `ts` is a live local `timespec`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::time::Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    ))
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
    /// The option index is mimalloc's purge delay: it starts at its default in mimalloc v3's
    /// `options.c` (1000 ms; no other option there defaults to 1000) and takes the value set.
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        assert_eq!(super::purge_delay_ms(), 1000);
        super::return_freed_memory_promptly();
        assert_eq!(super::purge_delay_ms(), 0);
    }

    #[test]
    fn forbid_core_dumps_clears_the_flag() {
        // Runs in the test process: nextest gives each test its own process, and a non-dumpable
        // test process loses nothing.
        super::forbid_core_dumps().unwrap();
        assert!(!super::is_dumpable().unwrap());
    }

    #[test]
    fn thread_cpu_time_counts_this_threads_work_not_its_sleep() {
        let start = super::this_thread_cpu_time().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let slept = super::this_thread_cpu_time().unwrap() - start;
        let mut x = 0u64;
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let worked = super::this_thread_cpu_time().unwrap() - start - slept;
        assert!(slept < std::time::Duration::from_millis(25), "{slept:?}");
        assert!(worked > slept, "{worked:?} {slept:?}");
    }

    #[test]
    fn an_idle_class_thread_is_seen_as_one_and_its_neighbours_are_not() {
        let idle = std::thread::spawn(|| {
            super::idle_this_thread().unwrap();
            super::this_thread_is_idle_class().unwrap()
        })
        .join()
        .unwrap();
        assert!(idle);
        assert!(!super::this_thread_is_idle_class().unwrap());
    }

    #[test]
    fn a_lowered_thread_runs_nicer_and_its_neighbours_do_not() {
        let before = super::this_thread_nice().unwrap();
        let lowered = std::thread::spawn(|| {
            super::lower_this_thread().unwrap();
            super::this_thread_nice().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, super::BACKGROUND_NICE.max(before));
        assert_eq!(super::this_thread_nice().unwrap(), before);
    }
}
