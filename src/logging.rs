//! Log output, one line per event in Postfix's shape, to the journal, syslog or stderr.
//!
//! Each program logs under a `postern/NAME` tag (`postern/smtpd`, `postern/deliver`, ...), so
//! tools that read Postfix logs read ours given the name (`pflogsumm --syslog-name=postern`).
//!
//! - **journal**: stderr is the journal's stream (`JOURNAL_STREAM` names it). Each line is
//!   one datagram to the journal's own socket with `SYSLOG_IDENTIFIER=postern/NAME`, so a
//!   daemon's children keep their own tag (the journal's native protocol); where that socket
//!   cannot be reached, `<N>text` on stderr (sd-daemon(3) priority prefix), which the journal
//!   tags with the unit's `SyslogIdentifier=` (the units set `SyslogFacility=mail`).
//! - **syslog**: datagrams to `/dev/log` (or `syslog_socket`), `<PRI>postern/NAME[pid]: text`
//!   with facility mail (RFC 3164 §4.1.1). Warnings and errors are also printed on stderr,
//!   so a person or cron sees what went wrong, and nothing else.
//! - **stderr**: `postern/NAME[pid]: text`.
//!
//! The start-up destination is the automatic one; `configure` applies the `log` key once the
//! configuration is read. A postern program started by another (instant delivery, the root
//! launcher, the local writer) logs where its parent does, at its parent's levels, under its
//! own tag: the parent names its destination in `POSTERN_LOG_INHERIT` (`child_env`). Each line
//! is written with one write(2) or one datagram, so lines of several processes never merge.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// What kind of program logs: it decides the automatic destination and what stderr shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A daemon in the foreground: its stderr is its log.
    Daemon,
    /// One session on stdin and stdout (inetd): syslog, or stderr when there is none.
    Inetd,
    /// A command run by cron, a timer or a person: syslog when there is one, and only
    /// warnings and errors (everything with `-v`) on stderr.
    Command,
}

/// The `log` key: where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Choice {
    /// The journal when stderr is its stream, else by role (see `Role`).
    #[default]
    Auto,
    Stderr,
    Syslog,
}

impl Choice {
    /// The word the `log` key takes.
    pub fn name(self) -> &'static str {
        match self {
            Choice::Auto => "auto",
            Choice::Stderr => "stderr",
            Choice::Syslog => "syslog",
        }
    }
}

enum Sink {
    Stderr,
    /// Nowhere to write (inetd without syslog, stderr the client's socket).
    Discard,
    /// The journal: its native socket when it can be reached, else its stream on stderr.
    Journal(Option<UnixDatagram>),
    /// The socket and its path (which a child is told).
    Syslog(UnixDatagram, PathBuf),
}

struct State {
    sink: Sink,
    /// Lines at or below this level are logged.
    level: log::LevelFilter,
    /// With syslog: what is also printed on stderr.
    console: log::LevelFilter,
}

/// Where a parent logs, as its children are told: `stderr`, `journal`, `discard` or
/// `syslog:PATH`, then the level and the console level.
pub const INHERIT_ENV: &str = "POSTERN_LOG_INHERIT";

/// The journal's native socket (systemd.journal-fields(7), the native protocol).
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

struct Logger {
    program: &'static str,
    role: Role,
    verbose: bool,
    state: RwLock<State>,
    /// Read once: no process of ours forks without an exec, so it never changes.
    pid: u32,
    /// A descriptor of stderr of its own: a line is one write(2) on it, without the lock
    /// `std::io::Stderr` takes, which sessions logging at the same moment queue on.
    stderr: Option<std::fs::File>,
}

static LOGGER: std::sync::OnceLock<Logger> = std::sync::OnceLock::new();

/// Starts logging for `program` (`postern/smtpd`, ...) with the automatic destination and
/// the system log socket; `verbose` (`-v`) logs debug lines too, and shows them on stderr.
pub fn start(program: &'static str, role: Role, verbose: bool) {
    let state = choose(role, Choice::Auto, Path::new(DEV_LOG), verbose);
    let level = state.level;
    let logger = LOGGER.get_or_init(|| {
        // Not under inetd: there stderr may be the client's socket, not to be held open.
        let stderr = match role {
            Role::Inetd => None,
            _ => stderr_file(),
        };
        Logger { program, role, verbose, state: RwLock::new(state), pid: std::process::id(), stderr }
    });
    if log::set_logger(logger).is_ok() {
        // Lines below the level are dropped by the `log` macros themselves, lock-free.
        log::set_max_level(level);
    }
}

/// The variable and value that make a child postern program log as this one does; `None`
/// before logging started.
pub fn child_env() -> Option<(&'static str, String)> {
    let logger = LOGGER.get()?;
    let state = logger.state.read().ok()?;
    let sink = match &state.sink {
        Sink::Stderr => "stderr".to_string(),
        Sink::Discard => "discard".to_string(),
        Sink::Journal(_) => "journal".to_string(),
        Sink::Syslog(_, path) => format!("syslog:{}", path.display()),
    };
    Some((INHERIT_ENV, format!("{} {} {sink}", state.level, state.console)))
}

/// Tells a postern program about to be started to log as this one does.
pub fn pass_to(command: &mut std::process::Command) {
    if let Some((name, value)) = child_env() {
        command.env(name, value);
    }
}

/// What a parent said in `INHERIT_ENV`, when it parses.
fn inherited() -> Option<State> {
    let value = std::env::var(INHERIT_ENV).ok()?;
    let mut words = value.splitn(3, ' ');
    let level = parse_level(words.next()?)?;
    let console = parse_level(words.next()?)?;
    let sink = match words.next()? {
        "stderr" => Sink::Stderr,
        "discard" => Sink::Discard,
        "journal" => Sink::Journal(journal_socket()),
        other => {
            let path = Path::new(other.strip_prefix("syslog:")?);
            syslog_socket(path).map_or(Sink::Stderr, |s| Sink::Syslog(s, path.to_path_buf()))
        }
    };
    Some(State { sink, level, console })
}

/// Applies the configuration's `log` and `syslog_socket` keys.
pub fn configure(choice: Choice, socket: &Path) {
    if let Some(logger) = LOGGER.get() {
        let state = choose(logger.role, choice, socket, logger.verbose);
        log::set_max_level(state.level);
        if let Ok(mut guard) = logger.state.write() {
            *guard = state;
        }
    }
}

/// A fatal error: logged, and printed on stderr too when `RUST_LOG` filtered errors out
/// (never under inetd, where stderr may be the client's socket).
pub fn fatal(program: &str, text: &str) {
    log::error!("{text}");
    let inetd = LOGGER.get().is_some_and(|l| l.role == Role::Inetd);
    if !log::log_enabled!(log::Level::Error) && !inetd {
        eprintln!("{program}: error: {text}");
    }
}

const DEV_LOG: &str = "/dev/log";

/// A stalled syslog or journal holds a line up for a second at most, never the mail behind it.
fn syslog_socket(path: &Path) -> Option<UnixDatagram> {
    let s = UnixDatagram::unbound().ok().filter(|s| s.connect(path).is_ok())?;
    s.set_write_timeout(Some(std::time::Duration::from_secs(1))).ok()?;
    Some(s)
}

fn journal_socket() -> Option<UnixDatagram> {
    syslog_socket(Path::new(JOURNAL_SOCKET))
}

fn choose(role: Role, choice: Choice, socket: &Path, verbose: bool) -> State {
    // A child logs as its parent does, whatever its own role would choose.
    if role == Role::Command
        && !verbose
        && let Some(state) = inherited()
    {
        return state;
    }
    let level = match std::env::var("RUST_LOG").ok().as_deref().and_then(parse_level) {
        Some(level) => level,
        None if verbose => log::LevelFilter::Debug,
        None => log::LevelFilter::Info,
    };
    let syslog = || syslog_socket(socket).map(|s| Sink::Syslog(s, socket.to_path_buf()));
    let sink = match choice {
        Choice::Stderr => Sink::Stderr,
        Choice::Syslog => syslog().unwrap_or(Sink::Stderr),
        Choice::Auto if journal_stream_is_stderr() => Sink::Journal(journal_socket()),
        Choice::Auto => match role {
            Role::Daemon => Sink::Stderr,
            Role::Inetd | Role::Command => syslog().unwrap_or(Sink::Stderr),
        },
    };
    // Under a classic inetd stderr is the client's socket: no log line may go into the session.
    let sink = match sink {
        Sink::Stderr if role == Role::Inetd && stderr_is_socket() => Sink::Discard,
        other => other,
    };
    let console = match role {
        Role::Inetd => log::LevelFilter::Off,
        _ if verbose => level,
        _ => log::LevelFilter::Warn,
    };
    // A command on stderr alone says only what went wrong, unless asked for more: cron
    // mails whatever a job prints.
    let level = match (&sink, role, choice) {
        (Sink::Stderr, Role::Command, Choice::Auto) if !verbose => level.min(log::LevelFilter::Warn),
        _ => level,
    };
    State { sink, level, console }
}

fn parse_level(text: &str) -> Option<log::LevelFilter> {
    Some(match text.trim().to_ascii_lowercase().as_str() {
        "off" => log::LevelFilter::Off,
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => return None,
    })
}

/// JOURNAL_STREAM is `device:inode` of the journal's stream; it counts only while stderr is
/// still that stream (a child whose stderr was redirected inherits the variable).
fn journal_stream_is_stderr() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        let (d, i) = v.split_once(':')?;
        Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?))
    }) else {
        return false;
    };
    stderr_metadata().is_some_and(|m| m.dev() == dev && m.ino() == ino)
}

fn stderr_is_socket() -> bool {
    use std::os::unix::fs::FileTypeExt;
    stderr_metadata().is_some_and(|m| m.file_type().is_socket())
}

fn stderr_metadata() -> Option<std::fs::Metadata> {
    stderr_file()?.metadata().ok()
}

/// A descriptor of stderr of our own (close-on-exec).
fn stderr_file() -> Option<std::fs::File> {
    use std::os::fd::AsFd;
    std::io::stderr().as_fd().try_clone_to_owned().ok().map(std::fs::File::from)
}

/// RFC 5424 §6.2.1 severities.
fn severity(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Facility mail (2), RFC 3164 §4.1.1.
const FACILITY_MAIL: u8 = 2;

fn prefix(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "error: ",
        log::Level::Warn => "warning: ",
        _ => "",
    }
}

/// One line as a datagram of the journal's native protocol: `KEY=value` lines, the text
/// free of line ends already.
fn journal_datagram(program: &str, pid: u32, level: log::Level, text: &str) -> String {
    format!(
        "PRIORITY={}\nSYSLOG_FACILITY={FACILITY_MAIL}\nSYSLOG_IDENTIFIER={program}\nSYSLOG_PID={pid}\nMESSAGE={}{text}\n",
        severity(level),
        prefix(level)
    )
}

/// How a destination writes a line.
#[derive(Clone, Copy)]
enum Shape {
    /// `postern/NAME[pid]: text`, for stderr.
    Tagged,
    /// `<N>text`, for the journal's stream.
    Journal,
    /// `<PRI>postern/NAME[pid]: text`, for syslog.
    Syslog,
}

/// One log line as a destination writes it (without the line end).
fn format_line(shape: Shape, program: &str, pid: u32, level: log::Level, text: &str) -> String {
    use std::fmt::Write as _;
    let sev = severity(level);
    // Room for the prefix and a line end, so the line is one allocation.
    let mut line = String::with_capacity(program.len() + text.len() + 40);
    let _ = match shape {
        Shape::Journal => write!(line, "<{sev}>{}{text}", prefix(level)),
        Shape::Syslog => write!(line, "<{}>{program}[{pid}]: {}{text}", FACILITY_MAIL * 8 + sev, prefix(level)),
        Shape::Tagged => write!(line, "{program}[{pid}]: {}{text}", prefix(level)),
    };
    line
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.state.read().is_ok_and(|s| metadata.level() <= s.level)
    }

    fn log(&self, record: &log::Record<'_>) {
        // Only our own crate's lines: the resolver's internals are not the operator's business.
        if !record.target().starts_with("postern") {
            return;
        }
        let Ok(state) = self.state.read() else { return };
        if record.level() > state.level {
            return;
        }
        // One line per event: a newline inside the text (a peer's words) would forge a second one.
        let text = match record.args().as_str() {
            Some(fixed) => std::borrow::Cow::Borrowed(fixed),
            None => std::borrow::Cow::Owned(record.args().to_string()),
        };
        let text =
            if text.contains(['\r', '\n']) { std::borrow::Cow::Owned(text.replace(['\r', '\n'], " ")) } else { text };
        let pid = self.pid;
        // A line may name its own program (`log::info!(target: "postern/pickup", ...)`), for the
        // tools that count by program name.
        let program = if record.target().starts_with("postern/") { record.target() } else { self.program };
        let line = |shape| format_line(shape, program, pid, record.level(), &text);
        // The whole line and its end in one write(2): stderr is unbuffered, and `writeln!`
        // would write the line end apart, where another process's line could come between.
        let to_stderr = |shape| {
            let mut whole = line(shape);
            whole.push('\n');
            let _ = match &self.stderr {
                Some(file) => (&*file).write_all(whole.as_bytes()),
                None => std::io::stderr().lock().write_all(whole.as_bytes()),
            };
        };
        match &state.sink {
            Sink::Discard => {}
            Sink::Stderr => to_stderr(Shape::Tagged),
            Sink::Journal(Some(socket)) => {
                let datagram = journal_datagram(program, pid, record.level(), &text);
                if socket.send(datagram.as_bytes()).is_err() {
                    to_stderr(Shape::Journal);
                }
            }
            Sink::Journal(None) => to_stderr(Shape::Journal),
            Sink::Syslog(socket, _) => {
                let _ = socket.send(line(Shape::Syslog).as_bytes());
                if record.level() <= state.console {
                    to_stderr(Shape::Tagged);
                }
            }
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_destination_has_its_shape() {
        let e = log::Level::Error;
        let shape = |s, program, level, text| format_line(s, program, 7, level, text);
        assert_eq!(shape(Shape::Tagged, "postern/smtpd", e, "spool: gone"), "postern/smtpd[7]: error: spool: gone");
        // mail.err = 2 * 8 + 3
        assert_eq!(shape(Shape::Syslog, "postern/smtpd", e, "x"), "<19>postern/smtpd[7]: error: x");
        assert_eq!(shape(Shape::Syslog, "postern/deliver", log::Level::Info, "x"), "<22>postern/deliver[7]: x");
        assert_eq!(shape(Shape::Journal, "postern/smtpd", log::Level::Warn, "x"), "<4>warning: x");
    }

    #[test]
    fn a_journal_line_names_its_own_program() {
        let datagram = journal_datagram("postern/deliver", 7, log::Level::Warn, "x: deferred");
        assert_eq!(
            datagram,
            "PRIORITY=4\nSYSLOG_FACILITY=2\nSYSLOG_IDENTIFIER=postern/deliver\nSYSLOG_PID=7\nMESSAGE=warning: x: deferred\n"
        );
    }

    #[test]
    fn levels_from_the_environment() {
        assert_eq!(parse_level("debug"), Some(log::LevelFilter::Debug));
        assert_eq!(parse_level(" WARN "), Some(log::LevelFilter::Warn));
        assert_eq!(parse_level("postern=debug"), None);
    }
}
