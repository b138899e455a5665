//! postern-deliver: one delivery run over the spool, for cron or a systemd timer.

use std::path::PathBuf;
use std::process::ExitCode;

use postern::cli::{self, Exit};
use postern::config::Config;
use postern::deliver::{Options, Runner};
use postern::logging;
use postern::spool::QueueId;

const USAGE: &str =
    "usage: postern-deliver [-c FILE | --builtin-config] [--id ID | --instant] [--dry-run] [--check] [-v]
       postern-deliver --dkim-keygen DOMAIN SELECTOR FILE [--ed25519 | --bits N]
  -c FILE            configuration file (default: $POSTERN_CONF, /etc/postern/postern.conf, built-in)
  --builtin-config   use the built-in configuration (the one `make run` uses)
  --id ID     deliver this one message now, whatever its back-off; an unknown or held ID
              is an error
  --if-queued with --id: a message no longer queued (delivered, held) is no error
  --instant   deliver new mail as it is queued, until there is none for 2 s (what instant
              delivery runs after a message is queued; at most one runs per spool, and
              this exits at once when one does)
  --dry-run   say what is due, change nothing
  --check     check the configuration and what it names (user, spool, tables, credentials),
              print each problem, and exit 0 only when there is none
  --verify ADDRESS...
              say where mail to each address would go (a maildir, an alias's command or
              file, the servers of a remote address in the order they would be tried), or
              why it cannot; nothing is sent. Exit 0 only when every one can (sendmail -bv)
  -v          log each step, and show every log line on stderr
  --dkim-keygen  write a new DKIM key to FILE (RSA, 2048 bits unless --bits; or Ed25519),
              or read FILE when it exists, and print its dkim_keys line and DNS record
  -h, --help  this text;  -V, --version  the version
A normal run prints nothing (cron mails what a job prints): it logs to the journal or syslog,
and only warnings and errors also reach stderr. `log = stderr` in the configuration logs there.";

struct Args {
    config: Option<PathBuf>,
    builtin: bool,
    options: Options,
    verbose: bool,
    check: bool,
    if_queued: bool,
    local_writer: bool,
    launcher: bool,
    instant: bool,
    /// The instant delivery lock is held, on descriptor 3 (passed by src/launch.rs).
    lock_passed: bool,
    /// `--verify ADDRESS...`.
    verify: Vec<String>,
}

fn parse_args() -> Result<Args, Exit> {
    let mut args = Args {
        config: None,
        builtin: false,
        options: Options::default(),
        verbose: false,
        check: false,
        if_queued: false,
        local_writer: false,
        launcher: false,
        instant: false,
        lock_passed: false,
        verify: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-c" => args.config = Some(it.next().ok_or("-c needs a file")?.into()),
            "--id" => {
                let id = it.next().ok_or("--id needs a queue ID")?;
                args.options.only = Some(QueueId::parse(&id).ok_or(format!("`{id}` is not a queue ID"))?);
            }
            "--builtin-config" => args.builtin = true,
            "--dry-run" => args.options.dry_run = true,
            "--if-queued" => args.if_queued = true,
            "--local-writer" => args.local_writer = true,
            "--launcher" => args.launcher = true,
            "--instant" => args.instant = true,
            postern::launch::LOCK_PASSED => args.lock_passed = true,
            "--check" => args.check = true,
            "--verify" => {
                args.verify = it.by_ref().collect();
                if args.verify.is_empty() {
                    return Err(Exit::Usage("--verify needs an address".into()));
                }
            }
            "-v" => args.verbose = true,
            "-h" | "--help" => return Err(Exit::Say(USAGE.into())),
            "-V" | "--version" => return Err(cli::version("postern-deliver")),
            other => return Err(Exit::Usage(format!("unknown argument `{other}`\n{USAGE}"))),
        }
    }
    // For tests and for replaying a schedule: act as if it were this time (seconds since 1970).
    if let Some(now) = std::env::var("POSTERN_NOW").ok().and_then(|v| v.parse().ok()) {
        args.options.now = Some(now);
    }
    Ok(args)
}

/// `--dkim-keygen DOMAIN SELECTOR FILE [--ed25519 | --bits N]`.
fn dkim_keygen(args: &[String]) -> ExitCode {
    let usage = |text: &str| Exit::Usage(format!("postern-deliver --dkim-keygen: {text}")).finish(2);
    let (mut words, mut ed25519, mut bits) = (Vec::new(), false, 2048u32);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--ed25519" => ed25519 = true,
            "--bits" => match it.next().and_then(|b| b.parse().ok()) {
                Some(b) => bits = b,
                None => return usage("--bits needs a number"),
            },
            other => words.push(other.to_string()),
        }
    }
    let [domain, selector, file] = &words[..] else { return usage("DOMAIN SELECTOR FILE") };
    let path = std::path::Path::new(file);
    let record = if path.exists() {
        postern::dkim::Key::load(domain, selector, path).and_then(|k| k.dns_record())
    } else {
        postern::dkim::generate(ed25519, bits).and_then(|(pem, record)| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("{file}: {e}"))?;
            f.write_all(&pem).and_then(|()| f.sync_all()).map_err(|e| format!("{file}: {e}"))?;
            eprintln!("postern-deliver: wrote a new key to {file} (mode 0600; the delivery user must read it)");
            Ok(record)
        })
    };
    match record {
        Ok(record) => {
            println!("# the dkim_keys line:");
            println!("{domain} {selector} {file}");
            println!("# the DNS record to publish:");
            println!("{}", postern::dkim::zone_line(domain, selector, &record));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("postern-deliver: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn main() -> ExitCode {
    // The two internal modes of local delivery (src/local.rs); not for people to run.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--dkim-keygen") {
        return dkim_keygen(&argv[2..]);
    }
    match argv.get(1).map(String::as_str) {
        Some("--write-maildir") => return exit(postern::local::write_maildir(&argv[2..])),
        Some("--append-mbox") => return exit(postern::local::append_mbox(&argv[2..])),
        _ => {}
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(exit) => return exit.finish(2),
    };
    // Before anything else is opened or started: the lock passed on descriptor 3 is made
    // this process's own, closed on exec, so no child of this one holds it.
    let passed = if args.lock_passed { postern::sys::take_passed_fd() } else { None };
    logging::start("postern/deliver", logging::Role::Command, args.verbose);
    let config = Config::choose(args.builtin, args.config.as_deref());
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postern-deliver: {e}");
            return ExitCode::FAILURE;
        }
    };
    logging::configure(config.log, &config.syslog_socket);
    // Started by a daemon: deliver only with the configuration it holds. A file changed since
    // (a refused reload, a file cut short) makes this delivery wait, said, for a later run.
    if let Some(expected) = std::env::var_os(postern::config::DIGEST_ENV)
        && expected.to_str() != Some(config.digest.as_str())
    {
        log::warn!(
            "{} reads otherwise than the configuration postern-smtpd holds (changed since, or a reload was \
             refused): this delivery waits for a run with the configuration in use",
            config.source
        );
        return ExitCode::from(75);
    }
    if args.launcher {
        postern::launch::serve(&config);
        return ExitCode::SUCCESS;
    }
    if args.local_writer {
        if !postern::sys::is_root() {
            eprintln!("postern-deliver: --local-writer is started by a delivery run as root");
            return ExitCode::FAILURE;
        }
        return match postern::local::serve(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                logging::fatal("postern-deliver", &format!("local writer: {e}"));
                ExitCode::FAILURE
            }
        };
    }
    if !args.verify.is_empty() {
        return match postern::deliver::verify(&config, &args.verify) {
            Ok(all) => exit(all),
            Err(e) => {
                eprintln!("postern-deliver: {e}");
                ExitCode::from(2)
            }
        };
    }
    if args.check {
        let findings = postern::check::check(&config, postern::check::Program::Deliver);
        let ok = postern::check::report("postern-deliver", &config, &findings);
        return if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    // The copies for system users are written as those users, by a helper that keeps root
    // (src/local.rs); it starts before root is given up.
    let needs_helper = postern::alias::LocalUsers::load(&config).is_ok_and(|u| u.needs_root_helper());
    let writer = match needs_helper && postern::sys::is_root() {
        true => match postern::local::Writer::start(&config) {
            Ok(w) => Some(w),
            Err(e) => {
                logging::fatal("postern-deliver", &format!("cannot start the local writer: {e}"));
                return ExitCode::FAILURE;
            }
        },
        false => None,
    };
    // Started as root (cron as root, say): deliver as `user`, so no maildir is written as root.
    if let Err(e) = postern::sys::become_user(config.user.as_deref()) {
        logging::fatal("postern-deliver", &e);
        return ExitCode::FAILURE;
    }
    if args.instant {
        let held = match passed {
            Some(file) if postern::spool::Spool::is_instant_lock(&config.spool, &file) => Some(file),
            _ => match postern::spool::Spool::take_instant_lock(&config.spool) {
                Ok(held) => held,
                Err(e) => {
                    logging::fatal("postern-deliver", &format!("{}: {e}", config.spool.display()));
                    return ExitCode::FAILURE;
                }
            },
        };
        // None: another process delivers new mail, and sees what this one would have.
        let Some(held) = held else { return ExitCode::SUCCESS };
        return exit(postern::instant::serve(&config, held, writer));
    }
    if let Some(id) = &args.options.only {
        let found = postern::spool::Spool::open(&config.spool).ok().and_then(|s| s.find(id));
        let why = match found {
            None => Some("no such message in the queue"),
            Some(postern::spool::manage::Found::Held) => Some("held (`postern-queue release` it first)"),
            Some(_) => None,
        };
        match why {
            Some(_) if args.if_queued => return ExitCode::SUCCESS,
            Some(why) => {
                eprintln!("postern-deliver: {id}: {why}");
                return ExitCode::FAILURE;
            }
            None => {}
        }
    }
    if args.options.dry_run {
        // It only prints; `--dry-run | head` ends it quietly.
        postern::sys::end_quietly_on_closed_pipe();
    }
    let runner = match Runner::new(&config, args.options) {
        Ok(r) => r.with_writer(writer),
        Err(e) => {
            logging::fatal("postern-deliver", &e);
            return ExitCode::FAILURE;
        }
    };
    let s = runner.run();
    log::debug!(
        "run done: {} messages, {} sent, {} deferred, {} bounced, {} busy, {} corrupt",
        s.messages,
        s.sent,
        s.deferred,
        s.bounced,
        s.busy,
        s.corrupt
    );
    if s.halted {
        log::error!("run stopped early: the spool is full; free space and run again");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn exit(ok: bool) -> ExitCode {
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
