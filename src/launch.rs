//! Instant delivery's starter: once a message is committed, the one process that delivers
//! new mail as it arrives (`postern-deliver --instant`, src/instant.rs) is started if none
//! runs: its lock (`spool/instant.lock`) is taken without waiting, and passed to the child.
//! When the lock is held, the process holding it sees the new message, so nothing else is
//! done. However mail comes in (the daemon, its pickup, postern-sendmail, a launcher kept as
//! root), at most one such process runs per spool, beside the runs cron or the timer start.
//!
//! Nothing here ever holds the 250 of the message it is asked to deliver: the child is
//! started and not waited for, and the line to a launcher kept as root is written without
//! blocking. A child that ends without delivering (its configuration file did not load, say)
//! is said in the log, and it is started again once the cause may be gone (a reload).

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::spool::{QueueId, Spool};

/// What a daemon writes to its root launcher to have the owed delivery started.
const RUN_OWED: &str = "run";
/// What a daemon writes to its root launcher after a reload, with the new digest; and what
/// a starter writes to the delivery process it started (read with `config_line`).
const CONFIG: &str = "config";

/// The digest a `config DIGEST` line names; `None` for any other line.
pub fn config_line(line: &str) -> Option<&str> {
    line.trim().strip_prefix(CONFIG).map(str::trim).filter(|d| d.len() == 32)
}
/// The argument that tells `postern-deliver --instant` its lock is descriptor 3.
pub const LOCK_PASSED: &str = "--lock-passed";
/// A delivery process killed by a signal is started again at once, but not more often.
const RESTART_AFTER_KILL: Duration = Duration::from_secs(1);

/// The delivery process this one started, while it runs.
struct Worker {
    /// Which start it was (a later one may have replaced it).
    start: u64,
    /// Its standard input, where a reload is said.
    input: ChildStdin,
    /// The configuration it was started with.
    digest: String,
    /// A reload was said to it: it ends, and is started again with the new configuration.
    told: bool,
}

/// Starts the instant delivery process for committed messages, or asks a launcher that kept
/// root to.
pub struct Launcher {
    program: PathBuf,
    config_args: Vec<OsString>,
    spool: PathBuf,
    /// The child's stderr: the daemon's own (its log), or nothing (a command's caller must
    /// not wait for a child that holds its pipe).
    inherit_stderr: bool,
    /// `instant_delivery`, as the configuration in use says (a reload may change it).
    enabled: AtomicBool,
    /// A child ended without delivering: it is started again once the cause may be gone.
    owed: AtomicBool,
    /// A `postern-deliver --launcher` started as root: each ID is written to it, one a
    /// line, and it starts the delivery process (as root, so that it can write system
    /// users' copies as those users). Its input closes when this process ends, and it ends
    /// too. `None` once it is gone: the delivery process is then this process's own.
    root: Mutex<Option<ChildStdin>>,
    /// The digest of the configuration in use, which the child must read too.
    digest: Mutex<String>,
    worker: Mutex<Option<Worker>>,
    starts: AtomicU64,
    /// When a child killed by a signal was last started again.
    restarted: Mutex<Option<Instant>>,
    /// The lock could not be opened: said once.
    said_lock: AtomicBool,
}

impl Launcher {
    /// The launcher for a command that exits at once (`postern-sendmail`): `postern-deliver`
    /// beside the running program, told to use the same configuration. `None` when
    /// `instant_delivery = off` or the program is missing.
    pub fn new(config: &Config, inherit_stderr: bool) -> Option<Arc<Launcher>> {
        if !config.instant_delivery {
            return None;
        }
        Launcher::build(config, inherit_stderr).map(Arc::new)
    }

    /// The launcher for a daemon: there even while `instant_delivery = off`, so that a reload
    /// can turn it on (`set_enabled`).
    pub fn for_daemon(config: &Config, inherit_stderr: bool) -> Option<Arc<Launcher>> {
        Launcher::build(config, inherit_stderr).map(Arc::new)
    }

    fn build(config: &Config, inherit_stderr: bool) -> Option<Launcher> {
        let program = std::env::current_exe().ok()?.with_file_name("postern-deliver");
        if !program.is_file() {
            log::warn!("instant delivery is off: {} is missing", program.display());
            return None;
        }
        Some(Launcher {
            program,
            config_args: config.program_args(),
            spool: config.spool.clone(),
            inherit_stderr,
            enabled: AtomicBool::new(config.instant_delivery),
            owed: AtomicBool::new(false),
            root: Mutex::new(None),
            digest: Mutex::new(config.digest.clone()),
            worker: Mutex::new(None),
            starts: AtomicU64::new(0),
            restarted: Mutex::new(None),
            said_lock: AtomicBool::new(false),
        })
    }

    /// For a process started as root that is about to give root up: a launcher process that
    /// keeps it (`postern-deliver --launcher`), asked for each delivery. The caller can make
    /// it do nothing but start the delivery process.
    /// `inherit_stderr` as for `new`: a command that exits at once (root's `sendmail`) passes
    /// false, so that its caller does not wait for the launcher's children.
    pub fn keeping_root(config: &Config, inherit_stderr: bool) -> Option<Arc<Launcher>> {
        let launcher = Launcher::build(config, inherit_stderr)?;
        if !config.instant_delivery {
            return Some(Arc::new(launcher));
        }
        let mut command = Command::new(&launcher.program);
        command.args(&launcher.config_args).arg("--launcher").stdin(Stdio::piped()).stdout(Stdio::null());
        command.env(crate::config::DIGEST_ENV, &config.digest);
        if !inherit_stderr {
            command.stderr(Stdio::null());
        }
        crate::logging::pass_to(&mut command);
        match command.spawn() {
            Ok(mut child) => {
                let input = child.stdin.take().filter(|i| crate::sys::set_nonblocking(i).is_ok());
                *lock(&launcher.root) = input;
                // Reaped when it ends, and said: instant delivery then goes on without it.
                let _ =
                    std::thread::Builder::new().name("launcher-wait".into()).stack_size(64 * 1024).spawn(move || {
                        let status = child.wait();
                        log::error!(
                            "the delivery launcher kept as root ended ({}); instant delivery goes on without root, \
                             and system users' copies wait for a run started as root (the timer, cron)",
                            status.map_or_else(|e| e.to_string(), |s| s.to_string())
                        );
                    });
            }
            Err(e) => log::warn!(
                "instant delivery without a launcher kept as root ({e}): system users' mail waits for the timer"
            ),
        }
        Some(Arc::new(launcher))
    }

    /// A reload: instant delivery on or off, and the configuration the children must read.
    pub fn reconfigure(self: &Arc<Self>, config: &Config) {
        self.enabled.store(config.instant_delivery, Ordering::Relaxed);
        self.set_digest(&config.digest);
        self.ask_root(&format!("{CONFIG} {}", config.digest));
    }

    /// The configuration in use is now the one with `digest`: a delivery process started
    /// with another ends, and is started again.
    fn set_digest(self: &Arc<Self>, digest: &str) {
        *lock(&self.digest) = digest.to_string();
        let mut worker = lock(&self.worker);
        if let Some(w) = worker.as_mut().filter(|w| w.digest != digest) {
            // Short, and written whole or not at all; a child that reads nothing is ending.
            let _ = w.input.write_all(format!("{CONFIG} {digest}\n").as_bytes());
            w.told = true;
        }
    }

    /// Has `id`, just committed, delivered now; never waits and never fails the caller.
    pub fn deliver(self: &Arc<Self>, id: &QueueId) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        if self.ask_root(id.as_str()) {
            return;
        }
        self.ensure(true);
    }

    /// Starts the delivery process owed since one ended without delivering, if one is.
    pub fn deliver_owed(self: &Arc<Self>) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        // The root launcher keeps its own account of what it owes.
        if !self.ask_root(RUN_OWED) && self.owed.swap(false, Ordering::Relaxed) {
            self.ensure(true);
        }
    }

    /// Writes one line to the launcher kept as root, without blocking; false when there is
    /// none (any more): the caller starts the child itself.
    fn ask_root(&self, line: &str) -> bool {
        let mut root = lock(&self.root);
        let Some(input) = root.as_mut() else { return false };
        // A line shorter than PIPE_BUF is written whole or not at all.
        match input.write_all(format!("{line}\n").as_bytes()) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Stopped, or far behind: this message waits for a run; the 250 does not wait.
                log::warn!("{line}: the delivery launcher is not reading; the next run delivers it");
                true
            }
            Err(e) => {
                log::error!("the delivery launcher kept as root is gone ({e}); instant delivery goes on without it");
                *root = None;
                false
            }
        }
    }

    /// Starts the delivery process unless one runs (its lock is held). `waited`: this
    /// process stays to reap it and to tell it of a reload (a daemon, a launcher).
    fn ensure(self: &Arc<Self>, waited: bool) {
        let held = match Spool::take_instant_lock(&self.spool) {
            Ok(Some(held)) => held,
            Ok(None) => return, // it runs, and sees the new message in new/
            Err(e) => {
                if !self.said_lock.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "instant delivery: {}: {e}; mail waits for the next run",
                        self.spool.join(crate::spool::INSTANT_LOCK).display()
                    );
                }
                return;
            }
        };
        self.start(held, waited);
    }

    /// Starts `postern-deliver --instant` with the lock `held` passed to it.
    fn start(self: &Arc<Self>, held: File, waited: bool) {
        let mut command = Command::new(&self.program);
        command.args(&self.config_args).args(["--instant", LOCK_PASSED]);
        command.stdin(if waited { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::null());
        if !self.inherit_stderr {
            command.stderr(Stdio::null());
        }
        crate::logging::pass_to(&mut command);
        let digest = lock(&self.digest).clone();
        command.env(crate::config::DIGEST_ENV, &digest);
        crate::sys::pass_as_fd3(&mut command, held.as_raw_fd());
        let spawned = command.spawn();
        // The child holds the lock now; this process's descriptor goes.
        drop(held);
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                log::warn!("instant delivery: cannot start {}: {e}", self.program.display());
                self.owed.store(true, Ordering::Relaxed);
                return;
            }
        };
        if !waited {
            return; // reaped by init once this command has exited
        }
        let start = self.starts.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(input) = child.stdin.take().filter(|i| crate::sys::set_nonblocking(i).is_ok()) {
            *lock(&self.worker) = Some(Worker { start, input, digest, told: false });
        }
        let me = Arc::clone(self);
        let waiter = std::thread::Builder::new().name("deliver-wait".into()).stack_size(64 * 1024).spawn(move || {
            let status = child.wait();
            me.ended(start, status);
        });
        if waiter.is_err() {
            log::warn!("instant delivery: no thread to wait for its process; it is reaped when this one ends");
        }
    }

    /// The delivery process of start `start` ended.
    fn ended(self: &Arc<Self>, start: u64, status: std::io::Result<std::process::ExitStatus>) {
        use std::os::unix::process::ExitStatusExt;
        let told = {
            let mut worker = lock(&self.worker);
            match worker.as_ref().map(|w| w.start) {
                Some(s) if s == start => worker.take().is_some_and(|w| w.told),
                _ => false,
            }
        };
        let status = match status {
            Ok(status) => status,
            Err(_) => return,
        };
        if status.success() {
            if told {
                // It ended for a reload: the next one reads the configuration now in use.
                self.ensure(true);
            }
            return;
        }
        log::warn!("instant delivery ended without delivering ({status}); the next run delivers what it left");
        self.owed.store(true, Ordering::Relaxed);
        // Killed (by the OOM killer, say): a message committed while it was ending would
        // wait for the next one; it is started again at once, not more than once a second.
        if status.signal().is_some() {
            let mut restarted = lock(&self.restarted);
            if restarted.is_none_or(|t| t.elapsed() >= RESTART_AFTER_KILL) {
                *restarted = Some(Instant::now());
                drop(restarted);
                if Spool::open(&self.spool).is_ok_and(|s| !s.untried().is_empty()) {
                    self.ensure(true);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `postern-deliver --launcher`: reads queue IDs, one a line, from the daemon that started
/// it, and has each delivered (as `Launcher::deliver` does); `run` starts the delivery
/// owed for one that failed, `config DIGEST` follows a reload. Anything else on a line is
/// ignored. Returns when the daemon closes its end.
pub fn serve(config: &Config) {
    use std::io::BufRead;
    let Some(launcher) = Launcher::new(config, true) else { return };
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line == RUN_OWED {
            launcher.deliver_owed();
            continue;
        }
        if let Some(digest) = config_line(line) {
            launcher.set_digest(digest);
            continue;
        }
        match QueueId::parse(line) {
            Some(id) => launcher.deliver(&id),
            None => log::warn!("delivery launcher: ignored a line that is no queue ID"),
        }
    }
}

/// For a command that queued one message and exits at once (`postern-sendmail`): the
/// delivery process, started detached unless one runs; the caller does not wait for it.
pub fn deliver_detached(config: &Config) {
    if let Some(launcher) = Launcher::new(config, false) {
        launcher.ensure(false);
    }
}
