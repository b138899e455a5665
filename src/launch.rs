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

/// Starts delivery children for committed messages.
pub struct Launcher {
    program: PathBuf,
    config_args: Vec<OsString>,
    /// The child's stderr: the daemon's own (its log), or nothing (a command's caller must
    /// not wait for a child that holds its pipe).
    inherit_stderr: bool,
    state: Mutex<State>,
}

impl Launcher {
    /// The launcher for `config`: `postern-deliver` beside the running program, told to use
    /// the same configuration. `None` when `instant_delivery = off` or the program is missing.
    pub fn new(config: &Config, inherit_stderr: bool) -> Option<Arc<Launcher>> {
        if !config.instant_delivery {
            return None;
        }
        let program = std::env::current_exe().ok()?.with_file_name("postern-deliver");
        if !program.is_file() {
            log::warn!("instant delivery is off: {} is missing", program.display());
            return None;
        }
        let config_args = match config.path() {
            Some(path) => vec!["-c".into(), path.into()],
            None => vec!["--builtin-config".into()],
        };
        Some(Arc::new(Launcher { program, config_args, inherit_stderr, state: Mutex::new(State::default()) }))
    }

    /// Delivers `id` now, in a child; never waits and never fails the caller.
    pub fn deliver(self: &Arc<Self>, id: &QueueId) {
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

/// For a command that queued one message and exits at once (`postern-sendmail`): a detached
/// child that delivers it; the caller does not wait for it.
pub fn deliver_detached(config: &Config, id: &QueueId) {
    let Some(launcher) = Launcher::new(config, false) else { return };
    let mut command = Command::new(&launcher.program);
    command.args(&launcher.config_args).args(["--id", id.as_str(), "--if-queued"]);
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    if let Err(e) = command.spawn() {
        log::warn!("instant delivery: cannot start {}: {e}", launcher.program.display());
    }
}
