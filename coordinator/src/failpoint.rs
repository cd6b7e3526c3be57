//! Crash points for tests (the cargo feature `failpoints`, which only the integration tests turn
//! on: a release build has none). A process started with `VAULTVEC_FAILPOINT=<name>` aborts
//! when it reaches the point of that name, as if the machine had lost power there; the tests
//! then start it again and check what the next start makes of the state left behind.

/// Aborts the process here if `VAULTVEC_FAILPOINT` names this point.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    if std::env::var("VAULTVEC_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Nothing: this build has no crash points.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
