//! Instant delivery: once a message is committed, a `postern-deliver --id ID --if-queued`
//! child delivers it, so local mail lands at once and remote mail leaves in one round of
//! SMTP. At most `MAX_RUNNING` children run at once; a message that finds them all busy is
//! left for one whole run started when a child ends (and for cron or the timer in any case).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::spool::QueueId;

/// Delivery children at once; more would only compete for the same disk and the same peers.
pub const MAX_RUNNING: usize = 4;

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
    /// A `postern-deliver --launcher` started as root: each ID is written to it, one a
    /// line, and it starts the children (as root, so that they can write system users'
    /// copies as those users). Its input closes when this process ends, and it ends too.
    root: Option<Mutex<std::process::ChildStdin>>,
}

impl Launcher {
    /// The launcher for `config`: `postern-deliver` beside the running program, told to use
    /// the same configuration. `None` when `instant_delivery = off` or the program is missing.
    pub fn new(config: &Config, inherit_stderr: bool) -> Option<Arc<Launcher>> {
        Launcher::build(config, inherit_stderr).map(Arc::new)
    }

    fn build(config: &Config, inherit_stderr: bool) -> Option<Launcher> {
        if !config.instant_delivery {
            return None;
        }
        let program = std::env::current_exe().ok()?.with_file_name("postern-deliver");
        if !program.is_file() {
            log::warn!("instant delivery is off: {} is missing", program.display());
            return None;
        }
        let config_args = config.program_args();
        Some(Launcher { program, config_args, inherit_stderr, state: Mutex::new(State::default()), root: None })
    }

    /// For a daemon started as root that is about to give root up: a launcher process that
    /// keeps it (`postern-deliver --launcher`), asked for each delivery. The daemon can make
    /// it do nothing but start deliveries of queue IDs, at most `MAX_RUNNING` at once.
    /// `inherit_stderr` as for `new`: a command that exits at once (root's `sendmail`) passes
    /// false, so that its caller does not wait for the launcher's children.
    pub fn keeping_root(config: &Config, inherit_stderr: bool) -> Option<Arc<Launcher>> {
        let mut launcher = Launcher::build(config, inherit_stderr)?;
        let mut command = Command::new(&launcher.program);
        command.args(&launcher.config_args).arg("--launcher").stdin(Stdio::piped()).stdout(Stdio::null());
        if !inherit_stderr {
            command.stderr(Stdio::null());
        }
        crate::logging::pass_to(&mut command);
        match command.spawn() {
            Ok(mut child) => launcher.root = child.stdin.take().map(Mutex::new),
            Err(e) => log::warn!(
                "instant delivery without a launcher kept as root ({e}): system users' mail waits for the timer"
            ),
        }
        Some(Arc::new(launcher))
    }

    /// Delivers `id` now, in a child; never waits and never fails the caller.
    pub fn deliver(self: &Arc<Self>, id: &QueueId) {
        if let Some(root) = &self.root {
            use std::io::Write;
            let mut input = root.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = writeln!(input, "{id}") {
                log::warn!("{id}: the delivery launcher is gone ({e}); the next run delivers it");
            }
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.running >= MAX_RUNNING {
            state.missed = true;
            return;
        }
        state.running += 1;
        drop(state);
        self.start(Some(id));
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
        let child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                log::warn!("instant delivery: cannot start {}: {e}", self.program.display());
                self.finished();
                return;
            }
        };
        let me = Arc::clone(self);
        let waiter = std::thread::Builder::new().name("deliver-wait".into()).stack_size(64 * 1024).spawn(move || {
            let mut child = child;
            let _ = child.wait();
            me.finished();
        });
        if waiter.is_err() {
            // The child runs on; it is reaped when this process ends.
            self.finished();
        }
    }

    fn finished(self: &Arc<Self>) {
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
/// it, and delivers each (bounded as `Launcher::deliver` is). Anything else on a line is
/// ignored. Returns when the daemon closes its end.
pub fn serve(config: &Config) {
    use std::io::BufRead;
    let Some(launcher) = Launcher::new(config, true) else { return };
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match QueueId::parse(line.trim()) {
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
