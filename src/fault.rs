//! Crash points for the crash tests: a build with the `fault-injection` feature dies at the named point.
//!
//! `POSTERN_CRASH_AT=NAME` makes the process abort (no destructors, no flushing: as kill -9
//! would leave it) the first time it reaches the point NAME. Release builds without the
//! feature compile every point to nothing. doc/queue.md names the points.

/// Dies here when this is the point `POSTERN_CRASH_AT` names (fault-injection builds only).
#[cfg(feature = "fault-injection")]
pub fn crash_point(name: &str) {
    if std::env::var_os("POSTERN_CRASH_AT").is_some_and(|at| at == name) {
        eprintln!("crash point {name}: aborting");
        std::process::abort();
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn crash_point(_name: &str) {}

/// Drafts named in `tmp/`, as where the filesystem has no anonymous files (O_TMPFILE), when
/// `POSTERN_NAMED_DRAFTS` is set: the crash tests that look at what a named draft leaves set
/// it (fault-injection builds only).
#[cfg(feature = "fault-injection")]
pub fn named_drafts() -> bool {
    std::env::var_os("POSTERN_NAMED_DRAFTS").is_some()
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn named_drafts() -> bool {
    false
}
