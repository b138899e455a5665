//! Instant delivery: once a message is committed, a `postern-deliver --id ID --if-queued`
//! child delivers it, so local mail lands at once and remote mail leaves in one round of
//! SMTP. At most `MAX_RUNNING` children run at once; a message that finds them all busy is
//! left for one whole run started when a child ends (and for cron or the timer in any case).
//!
//! Nothing here ever holds the 250 of the message it is asked to deliver: a child is started
//! and not waited for, and the line to a launcher kept as root is written without blocking.
//! A child that ends without delivering (its configuration file did not load, say) is said in
//! the log, and one whole run is owed for when the configuration is good again (a reload).

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::spool::QueueId;

/// Delivery children at once; more would only compete for the same disk and the same peers.
pub const MAX_RUNNING: usize = 4;

/// What a daemon writes to its root launcher to have the owed whole run started.
const RUN_OWED: &str = "run";
/// What a daemon writes to its root launcher after a reload, with the new digest.
const CONFIG: &str = "config";

#[derive(Default)]
struct State {
    running: usize,
    /// A message came while every slot was taken: one whole run is owed.
    missed: bool,
}

/// Starts delivery children for committed messages, or asks a launcher that kept root to.
pub struct Launcher {
    program: PathBuf,
    config_args: Vec<OsString>,
    /// The child's stderr: the daemon's own (its log), or nothing (a command's caller must
    /// not wait for a child that holds its pipe).
    inherit_stderr: bool,
    state: Mutex<State>,
    /// `instant_delivery`, as the configuration in use says (a reload may change it).
    enabled: AtomicBool,
    /// A child ended without delivering: one whole run is owed once the cause may be gone.
    owed: AtomicBool,
    /// A `postern-deliver --launcher` started as root: each ID is written to it, one a
    /// line, and it starts the children (as root, so that they can write system users'
    /// copies as those users). Its input closes when this process ends, and it ends too.
    /// `None` once it is gone: the children are then this process's own.
    root: Mutex<Option<ChildStdin>>,
    /// The digest of the configuration in use, which each child must read too.
    digest: Mutex<String>,
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
            inherit_stderr,
            state: Mutex::new(State::default()),
            enabled: AtomicBool::new(config.instant_delivery),
            owed: AtomicBool::new(false),
            root: Mutex::new(None),
            digest: Mutex::new(config.digest.clone()),
        })
    }

    /// For a process started as root that is about to give root up: a launcher process that
    /// keeps it (`postern-deliver --launcher`), asked for each delivery. The caller can make
    /// it do nothing but start deliveries of queue IDs, at most `MAX_RUNNING` at once.
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
                *launcher.root.lock().unwrap_or_else(|e| e.into_inner()) = input;
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
    pub fn reconfigure(&self, config: &Config) {
        self.enabled.store(config.instant_delivery, Ordering::Relaxed);
        self.set_digest(&config.digest);
        self.ask_root(&format!("{CONFIG} {}", config.digest));
    }

    fn set_digest(&self, digest: &str) {
        *self.digest.lock().unwrap_or_else(|e| e.into_inner()) = digest.to_string();
    }

    /// Delivers `id` now, in a child; never waits and never fails the caller.
    pub fn deliver(self: &Arc<Self>, id: &QueueId) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        if self.ask_root(id.as_str()) {
            return;
        }
        self.start_counted(Some(id));
    }

    /// Starts the whole run owed since a child ended without delivering, if one is.
    pub fn deliver_owed(self: &Arc<Self>) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        // The root launcher keeps its own account of what it owes.
        if !self.ask_root(RUN_OWED) && self.owed.swap(false, Ordering::Relaxed) {
            self.start_counted(None);
        }
    }

    /// Writes one line to the launcher kept as root, without blocking; false when there is
    /// none (any more): the caller starts the child itself.
    fn ask_root(&self, line: &str) -> bool {
        let mut root = self.root.lock().unwrap_or_else(|e| e.into_inner());
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

    /// Starts a child within `MAX_RUNNING`, or owes a whole run when every slot is taken.
    fn start_counted(self: &Arc<Self>, id: Option<&QueueId>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.running >= MAX_RUNNING {
            state.missed = true;
            return;
        }
        state.running += 1;
        drop(state);
        self.start(id);
    }

    /// Starts one child (for `id`, or a whole run) and a thread that waits for it.
    fn start(self: &Arc<Self>, id: Option<&QueueId>) {
        let mut command = Command::new(&self.program);
        command.args(&self.config_args);
        if let Some(id) = id {
            command.args(["--id", id.as_str(), "--if-queued"]);
        }
        command.stdin(Stdio::null()).stdout(Stdio::null());
        if !self.inherit_stderr {
            command.stderr(Stdio::null());
        }
        crate::logging::pass_to(&mut command);
        command.env(crate::config::DIGEST_ENV, &*self.digest.lock().unwrap_or_else(|e| e.into_inner()));
        let child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                log::warn!("instant delivery: cannot start {}: {e}", self.program.display());
                self.finished(false);
                return;
            }
        };
        let me = Arc::clone(self);
        let what = id.map_or_else(|| "a whole run".to_string(), |id| id.to_string());
        let waiter = std::thread::Builder::new().name("deliver-wait".into()).stack_size(64 * 1024).spawn(move || {
            let mut child = child;
            let delivered = match child.wait() {
                Ok(status) if status.success() => true,
                Ok(status) => {
                    log::warn!(
                        "{what}: instant delivery ended without delivering ({status}); the next run delivers it"
                    );
                    false
                }
                Err(_) => false,
            };
            me.finished(delivered);
        });
        if waiter.is_err() {
            // The child runs on; it is reaped when this process ends.
            self.finished(true);
        }
    }

    fn finished(self: &Arc<Self>, delivered: bool) {
        if !delivered {
            self.owed.store(true, Ordering::Relaxed);
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.running = state.running.saturating_sub(1);
        if state.missed {
            state.missed = false;
            state.running += 1;
            drop(state);
            self.start(None);
        }
    }
}

/// `postern-deliver --launcher`: reads queue IDs, one a line, from the daemon that started
/// it, and delivers each (bounded as `Launcher::deliver` is); `run` starts the whole run owed
/// for deliveries that failed. Anything else on a line is ignored. Returns when the daemon
/// closes its end.
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
        if let Some(digest) = line.strip_prefix(CONFIG).map(str::trim).filter(|d| d.len() == 32) {
            launcher.set_digest(digest);
            continue;
        }
        match QueueId::parse(line) {
            Some(id) => launcher.deliver(&id),
            None => log::warn!("delivery launcher: ignored a line that is no queue ID"),
        }
    }
}

/// For a command that queued one message and exits at once (`postern-sendmail`): a detached
/// child that delivers it; the caller does not wait for it.
pub fn deliver_detached(config: &Config, id: &QueueId) {
    let Some(launcher) = Launcher::new(config, false) else { return };
    let mut command = Command::new(&launcher.program);
    command.args(&launcher.config_args).args(["--id", id.as_str(), "--if-queued"]);
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    crate::logging::pass_to(&mut command);
    if let Err(e) = command.spawn() {
        log::warn!("instant delivery: cannot start {}: {e}", launcher.program.display());
    }
}
