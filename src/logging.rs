//! Log output: `log` lines to stderr, or to syslog's /dev/log when stderr is the SMTP session (inetd).

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;

static DEFAULT_LEVEL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// The level used when `RUST_LOG` is not set (`-v` asks for debug); call before `to_stderr`.
pub fn set_default_level(level: &'static str) {
    let _ = DEFAULT_LEVEL.set(level);
}

/// Logs to stderr as `program[pid]: message`, level from `RUST_LOG` (default info).
pub fn to_stderr(program: &'static str) {
    let pid = std::process::id();
    let level = DEFAULT_LEVEL.get().copied().unwrap_or("info");
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format(move |buf, record| writeln!(buf, "{program}[{pid}]: {}{}", prefix(record.level()), record.args()))
        .try_init();
}

fn prefix(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "error: ",
        log::Level::Warn => "warning: ",
        _ => "",
    }
}

/// Logs to /dev/log (the journal also listens there), facility mail. Under inetd
/// stderr is the client's socket, so nothing may be written there.
pub fn to_syslog(program: &'static str) {
    let socket = UnixDatagram::unbound().ok().filter(|s| s.connect("/dev/log").is_ok());
    let level = match std::env::var("RUST_LOG").as_deref() {
        Ok("debug") | Ok("trace") => log::LevelFilter::Debug,
        Ok("warn") => log::LevelFilter::Warn,
        Ok("error") => log::LevelFilter::Error,
        _ => log::LevelFilter::Info,
    };
    let logger = Syslog { program, socket: Mutex::new(socket), level };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}

struct Syslog {
    program: &'static str,
    socket: Mutex<Option<UnixDatagram>>,
    level: log::LevelFilter,
}

impl log::Log for Syslog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // RFC 3164: <facility * 8 + severity>; mail is facility 2.
        let severity = match record.level() {
            log::Level::Error => 3,
            log::Level::Warn => 4,
            log::Level::Info => 6,
            _ => 7,
        };
        let line = format!(
            "<{}>{}[{}]: {}{}",
            16 + severity,
            self.program,
            std::process::id(),
            prefix(record.level()),
            record.args()
        );
        if let Ok(guard) = self.socket.lock()
            && let Some(socket) = guard.as_ref()
        {
            let _ = socket.send(line.as_bytes());
        }
    }

    fn flush(&self) {}
}
