//! postern-smtpd: the SMTP server (daemon, inetd, or systemd socket activation).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use postern::auth::Scheme;
use postern::cli::{self, Exit};
use postern::config::{Config, Mode};
use postern::policy::LocalPolicy;
use postern::server::Server;
use postern::spool::Spool;
use postern::{logging, srs, sys};

const USAGE: &str = "usage: postern-smtpd [-c FILE | --builtin-config] [--inetd [--mode MODE]] [--check]
       postern-smtpd [-c FILE | --builtin-config] --show-config [-n]
       postern-smtpd --hash-password [--scheme sha512|bcrypt|yescrypt] [USER]
       postern-smtpd [-c FILE] --test-sender IP HELO MAIL-FROM [MESSAGE-FILE]
  -c FILE            configuration file (default: $POSTERN_CONF, /etc/postern/postern.conf, built-in)
  --builtin-config   use the built-in configuration and ignore every file (what `make run` does)
  --inetd            one session on standard input and output (inetd, systemd Accept=yes)
  --mode MODE        what that session serves: smtp (the default), submission or smtps
  --check            check the configuration and what it names (user, spool, TLS files,
                     tables), print each problem, and exit 0 only when there is none
  --show-config      print every key with the value the daemon would use (`key = value`,
                     after a comment naming the file); with -n only those that differ
                     from their defaults
  --hash-password    read a password on standard input and print the auth_users line
                     (USER:hash; SHA-512-crypt unless --scheme says otherwise)
  --test-sender      run the checks the server makes on port 25 for a stranger at IP who
                     says HELO and MAIL FROM (a bare address, or '' for <>), and with
                     MESSAGE-FILE those that read the message; print the header fields
                     the server would add and `verdict: accept|reject ...|defer ...`.
                     Asks dns_servers; stores, sends and changes nothing
  -h, --help         this text;  -V, --version  the version
Sockets passed by systemd (LISTEN_FDS) are used instead of `listen`; each serves the mode
its FileDescriptorName= names (smtp, submission, smtps), else that of the `listen` entry
with its address, else smtp.";

struct Args {
    config: Option<PathBuf>,
    builtin: bool,
    inetd: bool,
    mode: Mode,
    check: bool,
    /// `--show-config`: every key, or with `-n` those not at their defaults.
    show: Option<bool>,
    /// `--hash-password`: the scheme, and the user to name in the line.
    hash: Option<(Scheme, Option<String>)>,
    /// `--read-tls-files CERT KEY`: the TLS file reader a daemon started as root keeps.
    tls_files: Option<(PathBuf, PathBuf)>,
    /// `--test-sender IP HELO MAIL-FROM [MESSAGE-FILE]`.
    trial: Option<Trial>,
}

struct Trial {
    ip: std::net::IpAddr,
    helo: String,
    from: postern::smtp::address::ReversePath,
    message: Option<PathBuf>,
}

fn parse_args() -> Result<Args, Exit> {
    let mut args = Args {
        config: None,
        builtin: false,
        inetd: false,
        mode: Mode::Mta,
        check: false,
        show: None,
        hash: None,
        tls_files: None,
        trial: None,
    };
    let mut it = std::env::args().skip(1);
    let mut scheme = None;
    let mut user = None;
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--hash-password" => args.hash = Some((Scheme::Sha512Crypt, None)),
            "--scheme" => {
                let name = it.next().ok_or("--scheme needs sha512, bcrypt or yescrypt")?;
                scheme = Some(Scheme::parse(&name).ok_or(format!("--scheme {name}: sha512, bcrypt or yescrypt"))?);
            }
            "--mode" => {
                let name = it.next().ok_or("--mode needs smtp, submission or smtps")?;
                args.mode = Mode::parse(&name).ok_or(format!("--mode {name}: smtp, submission or smtps"))?;
            }
            other if args.hash.is_some() && user.is_none() && !other.starts_with('-') => user = Some(other.to_string()),
            "-c" => args.config = Some(it.next().ok_or("-c needs a file")?.into()),
            "--builtin-config" => args.builtin = true,
            "--read-tls-files" => {
                let (cert, key) = (it.next(), it.next());
                let both = cert.zip(key).ok_or("--read-tls-files needs the certificate and the key")?;
                args.tls_files = Some((both.0.into(), both.1.into()));
            }
            "--inetd" => args.inetd = true,
            "--check" => args.check = true,
            "--show-config" => args.show = Some(args.show.unwrap_or(false)),
            "-n" if args.show.is_some() => args.show = Some(true),
            "--test-sender" => {
                let need = "--test-sender needs IP HELO MAIL-FROM [MESSAGE-FILE]";
                let ip = it.next().ok_or(need)?;
                let ip = ip.parse().map_err(|_| format!("--test-sender: {ip}: not an IP address"))?;
                let helo = it.next().ok_or(need)?;
                let from = it.next().ok_or(need)?;
                let bare = from.trim_start_matches('<').trim_end_matches('>');
                let from = postern::smtp::address::ReversePath::parse(bare.as_bytes())
                    .map_err(|e| format!("--test-sender: {from}: not an address: {e}"))?;
                let message = it.next().map(PathBuf::from);
                args.trial = Some(Trial { ip, helo, from, message });
            }
            "-h" | "--help" => return Err(Exit::Say(USAGE.into())),
            "-V" | "--version" => return Err(cli::version("postern-smtpd")),
            other => return Err(Exit::Usage(format!("unknown argument `{other}`\n{USAGE}"))),
        }
    }
    if let Some((default, _)) = args.hash {
        args.hash = Some((scheme.unwrap_or(default), user));
    } else if scheme.is_some() {
        return Err(Exit::Usage("--scheme goes with --hash-password".into()));
    }
    Ok(args)
}

pub fn main() -> ExitCode {
    sys::limit_allocator_arenas(2);
    let args = match parse_args() {
        Ok(a) => a,
        // sysexits(3): EX_USAGE for the admin's tool, as its page says.
        Err(exit) => return exit.finish(if std::env::args().any(|a| a == "--test-sender") { 64 } else { 2 }),
    };
    if let Some((scheme, user)) = &args.hash {
        return hash_password(*scheme, user.as_deref());
    }
    if let Some(changed) = args.show {
        return show_config(&args, changed);
    }
    if let Some(trial) = &args.trial {
        return test_sender(&args, trial);
    }
    if let Some((cert, key)) = &args.tls_files {
        logging::start("postern/smtpd", logging::Role::Command, false);
        postern::server::tls_files::serve(cert, key);
        return ExitCode::SUCCESS;
    }
    if !args.inetd && !args.check {
        // A daemon's threads come and go by the thousand; a few stacks kept for reuse are enough.
        sys::limit_thread_stack_cache(1024 * 1024);
    }
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

/// `--show-config [-n]`: the configuration as `key = value` lines, like postconf(1).
fn show_config(args: &Args, changed: bool) -> ExitCode {
    let config = match Config::choose(args.builtin, args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postern-smtpd: {e}");
            return ExitCode::FAILURE;
        }
    };
    sys::end_quietly_on_closed_pipe();
    let settings = if changed { config.changed_settings() } else { config.settings() };
    println!("# {}", config.source);
    for (key, value) in settings {
        println!("{}", format!("{key} = {value}").trim_end());
    }
    ExitCode::SUCCESS
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
    let auth = postern::server::load_auth(&config)?;
    if let Some((users, _)) = &auth {
        log::info!("auth_users: {}", users.describe());
    }
    // Instant delivery to system users needs a process that keeps root: started before
    // root is given up (src/launch.rs). Otherwise the children are this process's own.
    let needs_root = postern::alias::LocalUsers::load(&config).is_ok_and(|u| u.needs_root_helper());
    let launcher = if !args.inetd && needs_root && sys::is_root() && config.user.is_some() {
        postern::launch::Launcher::keeping_root(&config, true)
    } else {
        // Under inetd stderr may be the client's socket: a child's never is.
        postern::launch::Launcher::for_daemon(&config, !args.inetd)
    };
    // A renewed certificate whose key root alone may read is taken up by a reload through a
    // reader that keeps root (src/server/tls_files.rs).
    let tls_keeper = match postern::server::tls_paths(&config) {
        Some((cert, key)) if !args.inetd && sys::is_root() && config.user.is_some() => {
            // This program under its own name: postern-smtpd is a link to one program of three.
            let program = std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("postern-smtpd");
            postern::server::tls_files::Keeper::start(&program, &cert, &key)
                .inspect_err(|e| log::warn!("TLS files: no reader kept as root ({e}); a reload reads them as the user"))
                .ok()
        }
        _ => None,
    };
    drop_privileges(&config)?;
    let spool = Spool::open_or_explain(&config.spool)?;
    if let Some(warning) = spool.filesystem_warning() {
        log::warn!("{warning}");
    }
    spool.clean_tmp();
    let policy = LocalPolicy::load(&config).map_err(|e| e.to_string())?.with_srs(srs::from_config(&config, true));
    for problem in policy.problems() {
        log::warn!("{problem} (that alias waits; everything else is delivered)");
    }
    let config_copy = config.clone();
    let server = Server::new(config, policy, spool, tls, auth)
        .with_launcher(launcher.clone())
        .with_tls_keeper(tls_keeper)
        .with_resolvers(Box::new(postern::dns::ResolverPool::default()));
    if args.inetd {
        server.serve_inetd(args.mode);
        return Ok(());
    }
    // Set up for local users (`postern-queue init`): their drops are picked up, and they
    // may list the queue.
    let server = Arc::new(server);
    if config_copy.spool.join(postern::spool::maildrop::DIR).is_dir() {
        start_pickup(&config_copy, Arc::clone(&server), launcher)?;
        if let Err(e) = start_queue_listing(&config_copy) {
            log::warn!("{e}; mailq works for root and the spool's owner only");
        }
    }
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
        let policy = LocalPolicy::load(&config).map_err(|e| e.to_string())?.with_srs(srs::from_config(&config, true));
        Ok((config, policy))
    });
    match loaded {
        Ok((config, policy)) => {
            for problem in policy.problems() {
                log::warn!("{problem} (that alias waits; everything else is delivered)");
            }
            let source = config.source.clone();
            match server.reload(config, policy) {
                Ok(notes) => {
                    for note in notes {
                        log::warn!("reload: {note}");
                    }
                    log::info!("reloaded {source}");
                }
                Err(e) => log::error!("reload refused, the configuration in use is kept: {e}"),
            }
        }
        Err(e) => log::error!("reload failed, the configuration in use is kept: {e}"),
    }
}

/// Mail that local users left in maildrop/ is queued as soon as it lands there.
fn start_pickup(
    config: &Config,
    server: Arc<Server>,
    launcher: Option<Arc<postern::launch::Launcher>>,
) -> Result<(), String> {
    let spool = Spool::open_or_explain(&config.spool)?;
    // The host name, size limit and milters of the configuration in use, which a reload may change.
    let settings = move || {
        let current = server.current();
        let milters = postern::milter::local::LocalMilters::from_config(&current.config)
            .map(|m| Box::new(m) as Box<dyn postern::spool::maildrop::PickupFilter>);
        (current.config.hostname.clone(), current.config.message_size_limit, milters)
    };
    let queued = move |ids: Vec<postern::spool::QueueId>| {
        if let Some(l) = &launcher {
            ids.iter().for_each(|id| l.deliver(id));
        }
    };
    std::thread::Builder::new()
        .name("pickup".into())
        .spawn(move || postern::spool::maildrop::watch(&spool, settings, Duration::from_secs(60), queued))
        .map_err(|e| format!("pickup thread: {e}"))?;
    Ok(())
}

/// `mailq` for users who cannot read the spool: the listing on a socket in the spool.
fn start_queue_listing(config: &Config) -> Result<(), String> {
    let spool = Spool::open_or_explain(&config.spool)?;
    let socket = postern::showq::socket_path(&config.spool);
    let listener = postern::showq::bind(&config.spool).map_err(|e| format!("{}: {e}", socket.display()))?;
    let retry = postern::schedule::RetryPolicy::of(config);
    std::thread::Builder::new()
        .name("showq".into())
        .spawn(move || postern::showq::serve(&listener, &spool, &retry))
        .map_err(|e| format!("queue listing thread: {e}"))?;
    Ok(())
}

/// The sockets systemd passed, else the configured `listen` addresses, each with its mode.
fn bind(config: &Config) -> Result<Vec<(TcpListener, Mode)>, String> {
    let passed = sys::listen_fds();
    let names = sys::listen_fd_names();
    let mut listeners = Vec::new();
    if passed.is_empty() {
        for l in &config.listen {
            let socket = postern::server::listen(l.addr).map_err(|e| format!("listen {}: {e}", l.addr))?;
            listeners.push((socket, l.mode));
        }
    } else {
        for (i, fd) in passed.into_iter().enumerate() {
            let socket = sys::listener_from_fd(fd);
            let addr = socket.local_addr().map_err(|e| format!("passed socket: {e}"))?;
            let named = names.get(i).and_then(|n| Mode::parse(n));
            let listed = config.listen.iter().find(|l| l.addr == addr).map(|l| l.mode);
            listeners.push((socket, named.or(listed).unwrap_or(Mode::Mta)));
        }
    }
    for (socket, mode) in &listeners {
        match socket.local_addr() {
            Ok(a) => log::info!("listening on {a} ({})", mode.name()),
            Err(e) => return Err(format!("passed socket: {e}")),
        }
        if *mode == Mode::Smtps && config.tls_cert.is_none() {
            return Err("an smtps socket needs tls_cert and tls_key".into());
        }
        if *mode != Mode::Mta && config.auth_users.is_none() {
            return Err(format!("a {} socket needs auth_users (who may log in)", mode.name()));
        }
    }
    Ok(listeners)
}

/// `--hash-password`: the password from standard input, hashed with a fresh salt.
fn hash_password(scheme: Scheme, user: Option<&str>) -> ExitCode {
    let password = match sys::read_password("Password: ") {
        Ok(p) if !p.is_empty() => p,
        Ok(_) => return Exit::Usage("postern-smtpd: no password on standard input".into()).finish(2),
        Err(e) => return Exit::Usage(format!("postern-smtpd: standard input: {e}")).finish(2),
    };
    match postern::auth::hash_password(password.as_bytes(), scheme) {
        Ok(hash) => {
            match user {
                Some(user) => println!("{user}:{hash}"),
                None => println!("{hash}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => Exit::Usage(format!("postern-smtpd: {e}")).finish(1),
    }
}

/// With `user` set and started as root: give up root after binding, before any client byte.
fn drop_privileges(config: &Config) -> Result<(), String> {
    if let Some(ids) = sys::become_user(config.user.as_deref())? {
        log::info!("running as {} (uid {}, gid {})", config.user.as_deref().unwrap_or(""), ids.uid, ids.gid);
    }
    Ok(())
}

/// `--test-sender`: the checks of a session on port 25 from a stranger at `trial.ip`, then
/// those that read the message, with nothing stored. Exit 0 whenever they ran; 78
/// (EX_CONFIG) when the configuration or what it names cannot be used.
fn test_sender(args: &Args, trial: &Trial) -> ExitCode {
    use postern::policy::{Client, Policy};
    use postern::session::DataError;
    use postern::smtp::reply::Reply;
    let config = match Config::choose(args.builtin, args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("postern-smtpd: {e}");
            return ExitCode::from(78);
        }
    };
    let policy = match LocalPolicy::load(&config) {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("postern-smtpd: {e}");
            return ExitCode::from(78);
        }
    };
    let message = match &trial.message {
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                eprintln!("postern-smtpd: {}: {e}", path.display());
                return ExitCode::from(66); // EX_NOINPUT
            }
        },
        None => None,
    };
    let pool = postern::dns::ResolverPool::default();
    let dns = postern::dns::Resolvers::resolver(&pool, &config);
    let client = Client { ip: Some(trial.ip), helo: &trial.helo, trusted: false, user: None, mta: true };
    // The block and allow lists, asked as a session on port 25 asks them.
    let blocked = (!config.dnsbl.is_empty()).then(|| {
        use postern::policy::dnsbl;
        let resolver = || postern::dns::Resolvers::resolver(&pool, &config);
        let until = std::time::Instant::now() + config.dnsbl_timeout;
        let said = dnsbl::ask(&config.dnsbl, trial.ip, &resolver, until);
        let score = dnsbl::score(&config.dnsbl, &said);
        let each: Vec<String> = config
            .dnsbl
            .iter()
            .zip(&said)
            .map(|(list, said)| match said {
                dnsbl::Said::Listed => format!("{} listed ({:+})", list.zone, list.weight),
                dnsbl::Said::NotListed => format!("{} not listed", list.zone),
                dnsbl::Said::ErrorCode(code) => format!("{} error code {code}, counted as not listed", list.zone),
            })
            .collect();
        println!("dnsbl: score {} of threshold {}: {}", score.score, config.dnsbl_threshold, each.join(", "));
        score.refusal(trial.ip, config.dnsbl_threshold)
    });
    let verdict = policy.check_sender(&client, &trial.from, Some(dns.as_ref()));
    // The checks that read the message, as the server makes them after the final dot.
    let checked = match &message {
        Some(text) if verdict.refusal.is_none() => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            postern::policy::MessageChecks::new(&config, &verdict.findings, now).map(|mut checks| {
                let mut head = postern::message::HeaderScan::new(postern::message::MAX_HEADER_SECTION);
                let taken = head.feed(text);
                checks.feed(&head, &text[taken..]);
                let until = std::time::Instant::now() + config.spf_timeout;
                let headers = head.headers();
                checks.finish((&head, &headers), &verdict.findings, dns.as_ref(), until, postern::policy::pct_roll())
            })
        }
        _ => None,
    };
    let fields = match &checked {
        Some(checked) => checked.fields(&verdict.findings, &config.hostname),
        None => verdict.findings.fields(&config.hostname),
    };
    print!("{}", fields.replace("\r\n", "\n"));
    let refused = match (verdict.refusal, blocked.flatten()) {
        (Some(refusal), _) => Some(Reply::from(&refusal)),
        (None, Some(blocked)) => Some(blocked),
        (None, None) => message.as_deref().and_then(|text| {
            let mut hops = postern::smtp::line::HopCounter::default();
            hops.scan(text);
            let error = if text.len() as u64 > config.message_size_limit {
                Some(DataError::TooBig)
            } else if hops.hops() >= postern::session::MAX_HOPS {
                Some(DataError::TooManyHops)
            } else {
                None
            };
            let refusal = checked.as_ref().and_then(|c| c.refusal.as_ref());
            error.map(|e| Reply::from(&e)).or_else(|| refusal.map(Reply::from))
        }),
    };
    let quarantine = checked.as_ref().is_some_and(|c| c.quarantine);
    match refused {
        None if quarantine => println!("verdict: quarantine"),
        None => println!("verdict: accept"),
        Some(reply) if reply.code() >= 500 => println!("verdict: reject {}", reply.summary()),
        Some(reply) => println!("verdict: defer {}", reply.summary()),
    }
    ExitCode::SUCCESS
}
