//! Group commit: callers that need the same flush at the same moment share one.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// Group commit: one flush that starts after a caller's write covers that caller, so
/// sessions committing at the same moment share a flush instead of queueing for their own.
#[derive(Default)]
pub struct GroupSync {
    state: Mutex<SyncState>,
    done: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// Tickets handed out; a ticket is taken after the caller's write is complete.
    issued: u64,
    /// Every ticket up to this one is covered by a completed flush.
    covered: u64,
    running: bool,
}

impl GroupSync {
    /// Returns once a flush that began after this call has completed.
    pub fn sync(&self, flush: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.issued += 1;
        let ticket = state.issued;
        let mut flush = Some(flush);
        loop {
            if state.covered >= ticket {
                return Ok(());
            }
            if state.running {
                state = self.done.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // Every ticket issued so far belongs to a write made before this flush starts.
            let target = state.issued;
            state.running = true;
            drop(state);
            let result = match flush.take() {
                Some(f) => f(),
                None => Err(io::Error::other("group flush failed")),
            };
            state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.running = false;
            if result.is_ok() {
                state.covered = state.covered.max(target);
            }
            self.done.notify_all();
            result?;
        }
    }
}

/// One `GroupSync` per directory: the fsyncs of a maildir's `new/` that deliveries into it
/// ask for at the same moment are made once (a run's threads, delivering to one user).
#[derive(Default)]
pub struct DirSyncs {
    dirs: Mutex<HashMap<PathBuf, Arc<GroupSync>>>,
}

impl DirSyncs {
    /// Returns once an fsync of `dir` that began after this call has completed.
    pub fn sync(&self, dir: &Path) -> io::Result<()> {
        let group = {
            let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(dirs.entry(dir.to_path_buf()).or_default())
        };
        group.sync(|| File::open(dir)?.sync_all())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn callers_at_the_same_moment_share_a_flush_and_each_is_covered() {
        let group = GroupSync::default();
        let flushes = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    group
                        .sync(|| {
                            flushes.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(200));
                            Ok(())
                        })
                        .unwrap()
                });
            }
        });
        let n = flushes.load(Ordering::SeqCst);
        assert!((1..8).contains(&n), "{n} flushes for 8 callers");
    }

    #[test]
    fn a_failed_flush_fails_its_callers() {
        let group = GroupSync::default();
        assert!(group.sync(|| Err(io::Error::other("disk"))).is_err());
        assert!(group.sync(|| Ok(())).is_ok());
    }
}
