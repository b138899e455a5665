//! postern-smtpd: the SMTP server (daemon, inetd, or systemd socket activation).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use postern::cli::{self, Exit};
use postern::config::Config;
use postern::policy::LocalPolicy;
use postern::server::Server;
use postern::spool::Spool;
use postern::{logging, sys};

const USAGE: &str = "usage: postern-smtpd [-c FILE | --builtin-config] [--inetd] [--check]
  -c FILE            configuration file (default: $POSTERN_CONF, /etc/postern/postern.conf, built-in)
  --builtin-config   use the built-in configuration and ignore every file (what `make run` does)
  --inetd            one session on standard input and output (inetd, systemd Accept=yes)
  --check            check the configuration and what it names (user, spool, TLS files,
                     tables), print each problem, and exit 0 only when there is none
  -h, --help         this text;  -V, --version  the version
Sockets passed by systemd (LISTEN_FDS) are used instead of `listen`.";

struct Args {
    config: Option<PathBuf>,
    builtin: bool,
    inetd: bool,
    check: bool,
}

fn parse_args() -> Result<Args, Exit> {
    let mut args = Args { config: None, builtin: false, inetd: false, check: false };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-c" => args.config = Some(it.next().ok_or("-c needs a file")?.into()),
            "--builtin-config" => args.builtin = true,
            "--inetd" => args.inetd = true,
            "--check" => args.check = true,
            "-h" | "--help" => return Err(Exit::Say(USAGE.into())),
            "-V" | "--version" => return Err(cli::version("postern-smtpd")),
            other => return Err(Exit::Usage(format!("unknown argument `{other}`\n{USAGE}"))),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(exit) => return exit.finish(2),
    };
    let role = if args.inetd { logging::Role::Inetd } else { logging::Role::Daemon };
    logging::start("postern/smtpd", role, false);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::fatal("postern-smtpd", &e);
            if args.inetd {
                // The client on standard output is told, rather than left with nothing
                // (RFC 5321 §3.1: 421 when the service is not available); the reason is logged.
                let reply = postern::smtp::reply::Reply::local_error(&postern::sys::hostname());
                let _ = std::io::Write::write_all(&mut std::io::stdout(), &reply.to_bytes());
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let config = Config::choose(args.builtin, args.config.as_deref());
    let mut config = config.map_err(|e| e.to_string())?;
    logging::configure(config.log, &config.syslog_socket);
    if args.check {
        let findings = postern::check::check(&config, postern::check::Program::Smtpd);
        if !postern::check::report("postern-smtpd", &config, &findings) {
            std::process::exit(1); // each problem is said already
        }
        return Ok(());
    }
    for warning in config.warnings() {
        log::warn!("{warning}");
    }
    if !args.inetd {
        // Before any thread starts, so that only the signal thread takes SIGTERM, SIGINT
        // and SIGHUP.
        sys::block_control_signals().map_err(|e| format!("signals: {e}"))?;
    }
    if !args.inetd
        && let Some(warning) = postern::server::fit_to_descriptors(&mut config)
    {
        log::warn!("{warning}");
    }
    let listeners = if args.inetd { Vec::new() } else { bind(&config)? };
    // The key is often readable by root alone: load it before giving root up.
    let tls = postern::server::load_tls(&config)?;
    // Instant delivery to system users needs a process that keeps root: started before
    // root is given up (src/launch.rs). Otherwise the children are this process's own.
    let needs_root = postern::alias::LocalUsers::load(&config).is_ok_and(|u| u.needs_root_helper());
    let launcher = if !args.inetd && needs_root && sys::is_root() && config.user.is_some() {
        postern::launch::Launcher::keeping_root(&config)
    } else {
        // Under inetd stderr may be the client's socket: a child's never is.
        postern::launch::Launcher::new(&config, !args.inetd)
    };
    drop_privileges(&config)?;
    let spool = Spool::open(&config.spool).map_err(|e| format!("spool {}: {e}", config.spool.display()))?;
    if let Some(warning) = spool.filesystem_warning() {
        log::warn!("{warning}");
    }
    spool.clean_tmp();
    let policy = LocalPolicy::load(&config).map_err(|e| e.to_string())?;
    for problem in policy.problems() {
        log::warn!("{problem} (that alias waits; everything else is delivered)");
    }
    let config_copy = config.clone();
    let server = Server::new(config, policy, spool, tls).with_launcher(launcher.clone());
    if args.inetd {
        server.serve_inetd();
        return Ok(());
    }
    if config_copy.spool.join(postern::spool::maildrop::DIR).is_dir() {
        start_pickup(&config_copy, launcher)?;
    }
    let server = Arc::new(server);
    let signals = Arc::clone(&server);
    let (builtin, explicit) = (args.builtin, args.config.clone());
    std::thread::spawn(move || {
        loop {
            let signal = sys::wait_control_signal();
            if signal == libc::SIGHUP {
                reload(&signals, builtin, explicit.as_deref());
                continue;
            }
            log::info!("signal {signal}: stopping; open sessions are told 421");
            signals.shut_down(Duration::from_secs(10));
            log::info!("stopped");
            std::process::exit(0);
        }
    });
    server.serve(listeners);
    Ok(())
}

/// SIGHUP: the configuration file, the aliases and the mailboxes read again. A file that
/// does not load is logged and the one in use kept.
fn reload(server: &Server, builtin: bool, explicit: Option<&std::path::Path>) {
    let loaded = Config::choose(builtin, explicit).map_err(|e| e.to_string()).and_then(|mut config| {
        if let Some(warning) = postern::server::fit_to_descriptors(&mut config) {
            log::warn!("{warning}");
        }
        let policy = LocalPolicy::load(&config).map_err(|e| e.to_string())?;
        Ok((config, policy))
    });
    match loaded {
        Ok((config, policy)) => {
            for problem in policy.problems() {
                log::warn!("{problem} (that alias waits; everything else is delivered)");
            }
            let source = config.source.clone();
            for note in server.reload(config, policy) {
                log::warn!("reload: {note}");
            }
            log::info!("reloaded {source}");
        }
        Err(e) => log::error!("reload failed, the configuration in use is kept: {e}"),
    }
}

/// Mail that local users left in maildrop/ is queued as soon as it lands there.
fn start_pickup(config: &Config, launcher: Option<Arc<postern::launch::Launcher>>) -> Result<(), String> {
    let spool = Spool::open(&config.spool).map_err(|e| format!("spool {}: {e}", config.spool.display()))?;
    let (hostname, max_size) = (config.hostname.clone(), config.message_size_limit);
    let queued = move |ids: Vec<postern::spool::QueueId>| {
        if let Some(l) = &launcher {
            ids.iter().for_each(|id| l.deliver(id));
        }
    };
    std::thread::Builder::new()
        .name("pickup".into())
        .spawn(move || postern::spool::maildrop::watch(&spool, &hostname, max_size, Duration::from_secs(60), queued))
        .map_err(|e| format!("pickup thread: {e}"))?;
    Ok(())
}

/// The sockets systemd passed, else the configured `listen` addresses.
fn bind(config: &Config) -> Result<Vec<TcpListener>, String> {
    let passed = sys::listen_fds();
    let listeners: Vec<TcpListener> = if passed.is_empty() {
        config
            .listen
            .iter()
            .map(|a| postern::server::listen(*a).map_err(|e| format!("listen {a}: {e}")))
            .collect::<Result<_, _>>()?
    } else {
        passed.into_iter().map(sys::listener_from_fd).collect()
    };
    for l in &listeners {
        match l.local_addr() {
            Ok(a) => log::info!("listening on {a}"),
            Err(e) => return Err(format!("passed socket: {e}")),
        }
    }
    Ok(listeners)
}

/// With `user` set and started as root: give up root after binding, before any client byte.
fn drop_privileges(config: &Config) -> Result<(), String> {
    if let Some(ids) = sys::become_user(config.user.as_deref())? {
        log::info!("running as {} (uid {}, gid {})", config.user.as_deref().unwrap_or(""), ids.uid, ids.gid);
    }
    Ok(())
}
