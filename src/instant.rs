//! Instant delivery's one process (`postern-deliver --instant`): it delivers what new/ holds,
//! then each message as it is committed there (inotify), with `max_delivery_threads`
//! threads and the sessions, resolvers and local writer of one run, and ends after `IDLE`
//! with nothing to do. Whoever commits a message starts it when none runs (src/launch.rs).
//!
//! At most one runs per spool: it holds `spool/instant.lock`, which a starter takes first
//! and passes to it (doc/queue.md). Its end is the one step that needs care: it gives the
//! lock back, then looks at new/ once more. A message committed before that look is seen by
//! it; one committed after it finds the lock free, and its committer starts the next one.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::deliver::{Feed, Options, Runner, Summary};
use crate::local::Writer;
use crate::spool::{QueueId, Spool};
use crate::sys;

/// With nothing to do for this long, the process ends (the next commit starts another).
pub const IDLE: Duration = Duration::from_secs(2);
/// A run of the process is this long at most: then its sessions, policies and the hosts
/// found down are let go and a new run begins, the lock kept.
pub const ROUND: Duration = Duration::from_secs(60);
/// How long a message a pickup committed waits for that pickup to finish (`maildrop/ID`
/// gone) before it is left to a whole run.
const PICKUP_WAIT: Duration = Duration::from_secs(30);

/// Why a run of the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Nothing to do for `IDLE`.
    Idle,
    /// `ROUND` is over: a new run begins.
    Round,
    /// The daemon that started it holds another configuration now: the process ends, and
    /// the daemon starts one that reads it.
    Reconfigured,
    /// The spool is full.
    Halted,
}

/// Delivers new mail until idle; `lock` is the instant delivery lock, held. Returns false
/// when a run could not start (what it says is logged).
pub fn serve(config: &Config, lock: File, mut writer: Option<Writer>) -> bool {
    let spool = match Spool::open_or_explain(&config.spool) {
        Ok(s) => s,
        Err(e) => {
            log::error!("instant delivery: {e}");
            return false;
        }
    };
    let mut control = Control::stdin(&config.digest);
    let mut lock = Some(lock);
    let mut total = Summary::default();
    loop {
        // Watched before new/ is listed: a message committed in between is in one or the other.
        let watch = match sys::watch_names_made_in(&spool.root().join("new")) {
            Ok(w) => w,
            Err(e) => {
                log::error!("instant delivery: cannot watch {}/new: {e}", spool.root().display());
                return false;
            }
        };
        // Before the run reads them: a change while it does is a change seen.
        let tables = Tables::of(config);
        let runner = match Runner::new(config, Options::default()) {
            Ok(r) => r.with_writer(writer.take()),
            Err(e) => {
                log::error!("instant delivery: {e}");
                return false;
            }
        };
        let feed = Feed::default();
        runner.pickup();
        for id in spool.untried() {
            feed.give(id);
        }
        let (ended, summary) = runner.stream(&feed, |feed| watch_new(&spool, &watch, &mut control, &tables, feed));
        runner.close();
        writer = runner.into_writer();
        total.add(&summary);
        log::debug!("instant delivery: {ended:?} after {} messages", summary.messages);
        match ended {
            Ended::Round => continue,
            Ended::Reconfigured | Ended::Halted => break,
            Ended::Idle => {}
        }
        drop(lock.take());
        crate::fault::crash_point("instant-lock-released");
        // The look after the lock is given back (see the top of this file).
        if !spool.untried().iter().any(|id| !feed.was_given(id)) {
            break;
        }
        match Spool::take_instant_lock(spool.root()) {
            Ok(Some(l)) => lock = Some(l),
            _ => break, // another process has it, and with it the look at new/
        }
    }
    if total.halted {
        log::error!("instant delivery stopped: the spool is full; free space, and the next run delivers the rest");
    }
    true
}

/// Feeds `feed` each message committed into new/ until it is time to stop, and says why.
fn watch_new(
    spool: &Spool,
    watch: &std::os::fd::OwnedFd,
    control: &mut Control,
    tables: &Tables,
    feed: &Feed,
) -> Ended {
    let round_ends = Instant::now() + ROUND;
    // Committed by a pickup that has not yet removed its maildrop/ name: no run may take
    // such a message until it has (doc/queue.md, S0).
    let mut in_pickup: Vec<(QueueId, Instant)> = Vec::new();
    loop {
        let mut fds = vec![watch.as_raw_fd()];
        fds.extend(control.fd());
        let later = feed.take_again();
        let wait = if in_pickup.is_empty() && !later { Duration::from_millis(250) } else { Duration::from_millis(20) };
        let ready = sys::wait_any_readable(&fds, wait).unwrap_or_else(|e| {
            log::warn!("instant delivery: poll: {e}");
            std::thread::sleep(wait);
            Vec::new()
        });
        // The aliases and mailboxes are read at each use: a changed file begins a new run
        // before anything new is given to this one (the next run lists new/).
        if tables.changed() {
            return Ended::Round;
        }
        if ready.first() == Some(&true) {
            let events = sys::read_names(watch);
            let mut named: Vec<QueueId> =
                events.names.iter().filter_map(|n| n.to_str().and_then(QueueId::parse)).collect();
            if events.overflowed {
                named.extend(spool.untried());
            }
            for id in named {
                if spool.in_pickup(&id) {
                    in_pickup.push((id, Instant::now()));
                } else {
                    feed.give(id);
                }
            }
        }
        if ready.get(1) == Some(&true) && control.read() {
            return Ended::Reconfigured;
        }
        in_pickup.retain(|(id, since)| {
            if spool.in_pickup(id) {
                return since.elapsed() < PICKUP_WAIT;
            }
            feed.give(id.clone());
            false
        });
        if feed.is_closed() {
            return Ended::Halted;
        }
        if in_pickup.is_empty() && feed.idle_for() >= IDLE {
            return Ended::Idle;
        }
        if Instant::now() >= round_ends {
            return Ended::Round;
        }
    }
}

/// The files a run reads its recipients from (`aliases`, `mailboxes`), as they were when
/// it began: a run ends when one changes, so mail is delivered as they say now.
struct Tables {
    seen: Vec<(std::path::PathBuf, Option<FileStamp>)>,
}

/// Modification time (seconds, nanoseconds), inode and size.
type FileStamp = (i64, i64, u64, u64);

impl Tables {
    fn of(config: &Config) -> Tables {
        let paths = [&config.aliases, &config.mailboxes].into_iter().flatten();
        Tables { seen: paths.map(|p| (p.clone(), Tables::stamp(p))).collect() }
    }

    /// `None` when missing.
    fn stamp(path: &std::path::Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.mtime(), m.mtime_nsec(), m.ino(), m.size()))
    }

    fn changed(&self) -> bool {
        self.seen.iter().any(|(path, stamp)| Tables::stamp(path) != *stamp)
    }
}

/// The process's standard input: a daemon that started it writes `config DIGEST` there
/// when it reloads. Its end (the daemon gone, or no daemon) changes nothing.
struct Control {
    digest: String,
    open: bool,
    buffer: Vec<u8>,
}

impl Control {
    fn stdin(digest: &str) -> Control {
        Control { digest: digest.to_string(), open: true, buffer: Vec::new() }
    }

    fn fd(&self) -> Option<i32> {
        self.open.then(|| std::io::stdin().as_raw_fd())
    }

    /// Reads what is there (poll said it is readable, so one read does not wait); true
    /// when a line names a configuration other than the one this process runs with.
    fn read(&mut self) -> bool {
        let mut chunk = [0u8; 512];
        // One read(2) of the raw descriptor: std's buffered stdin could wait for more.
        match sys::read_once(std::io::stdin().as_raw_fd(), &mut chunk) {
            Ok(0) | Err(_) => {
                self.open = false;
                return false;
            }
            Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
        }
        let mut changed = false;
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            if let Some(digest) = crate::launch::config_line(&String::from_utf8_lossy(&line)) {
                changed |= digest != self.digest;
            }
        }
        // A daemon writes short lines; anything longer is not one of them.
        if self.buffer.len() > 4096 {
            self.buffer.clear();
        }
        changed
    }
}
