//! Log output, one line per event in Postfix's shape, to the journal, syslog or stderr.
//!
//! Each program logs under a `postern/NAME` tag (`postern/smtpd`, `postern/deliver`, ...), so
//! tools that read Postfix logs read ours given the name (`pflogsumm --syslog-name=postern`).
//!
//! - **journal**: stderr is the journal's stream (`JOURNAL_STREAM` names it). Each line is
//!   `<N>text` (sd-daemon(3) priority prefix) and carries no tag: the journal adds the unit's
//!   `SyslogIdentifier=`, and the units set `SyslogFacility=mail`.
//! - **syslog**: datagrams to `/dev/log` (or `syslog_socket`), `<PRI>postern/NAME[pid]: text`
//!   with facility mail (RFC 3164 §4.1.1). Warnings and errors are also printed on stderr,
//!   so a person or cron sees what went wrong, and nothing else.
//! - **stderr**: `postern/NAME[pid]: text`.
//!
//! The start-up destination is the automatic one; `configure` applies the `log` key once the
//! configuration is read.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
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

enum Sink {
    Stderr,
    /// Nowhere to write (inetd without syslog, stderr the client's socket).
    Discard,
    Journal,
    Syslog(UnixDatagram),
}

struct State {
    sink: Sink,
    /// Lines at or below this level are logged.
    level: log::LevelFilter,
    /// With syslog: what is also printed on stderr.
    console: log::LevelFilter,
}

struct Logger {
    program: &'static str,
    role: Role,
    verbose: bool,
    state: RwLock<State>,
}

static LOGGER: std::sync::OnceLock<Logger> = std::sync::OnceLock::new();

/// Starts logging for `program` (`postern/smtpd`, ...) with the automatic destination and
/// the system log socket; `verbose` (`-v`) logs debug lines too, and shows them on stderr.
pub fn start(program: &'static str, role: Role, verbose: bool) {
    let state = choose(role, Choice::Auto, Path::new(DEV_LOG), verbose);
    let level = state.level;
    let logger = LOGGER.get_or_init(|| Logger { program, role, verbose, state: RwLock::new(state) });
    if log::set_logger(logger).is_ok() {
        // Lines below the level are dropped by the `log` macros themselves, lock-free.
        log::set_max_level(level);
    }
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

fn choose(role: Role, choice: Choice, socket: &Path, verbose: bool) -> State {
    let level = match std::env::var("RUST_LOG").ok().as_deref().and_then(parse_level) {
        Some(level) => level,
        None if verbose => log::LevelFilter::Debug,
        None => log::LevelFilter::Info,
    };
    // A stalled syslog holds a line up for a second at most, never the mail behind it.
    let syslog = || {
        let s = UnixDatagram::unbound().ok().filter(|s| s.connect(socket).is_ok())?;
        s.set_write_timeout(Some(std::time::Duration::from_secs(1))).ok()?;
        Some(s)
    };
    let sink = match choice {
        Choice::Stderr => Sink::Stderr,
        Choice::Syslog => syslog().map_or(Sink::Stderr, Sink::Syslog),
        Choice::Auto if journal_stream_is_stderr() => Sink::Journal,
        Choice::Auto => match role {
            Role::Daemon => Sink::Stderr,
            Role::Inetd | Role::Command => syslog().map_or(Sink::Stderr, Sink::Syslog),
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
    use std::os::fd::AsFd;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    std::fs::File::from(fd).metadata().ok()
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
    let sev = severity(level);
    match shape {
        Shape::Journal => format!("<{sev}>{}{text}", prefix(level)),
        Shape::Syslog => format!("<{}>{program}[{pid}]: {}{text}", FACILITY_MAIL * 8 + sev, prefix(level)),
        Shape::Tagged => format!("{program}[{pid}]: {}{text}", prefix(level)),
    }
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
        let text = record.args().to_string().replace(['\r', '\n'], " ");
        let pid = std::process::id();
        // A line may name its own program (`log::info!(target: "postern/pickup", ...)`), for the
        // tools that count by program name.
        let program = if record.target().starts_with("postern/") { record.target() } else { self.program };
        let line = |shape| format_line(shape, program, pid, record.level(), &text);
        let to_stderr = |shape| {
            let _ = writeln!(std::io::stderr().lock(), "{}", line(shape));
        };
        match &state.sink {
            Sink::Discard => {}
            Sink::Stderr => to_stderr(Shape::Tagged),
            Sink::Journal => to_stderr(Shape::Journal),
            Sink::Syslog(socket) => {
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
    fn levels_from_the_environment() {
        assert_eq!(parse_level("debug"), Some(log::LevelFilter::Debug));
        assert_eq!(parse_level(" WARN "), Some(log::LevelFilter::Warn));
        assert_eq!(parse_level("postern=debug"), None);
    }
}
