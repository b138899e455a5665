//! postern-sendmail: the `sendmail` command line, also installed as `sendmail`, `mailq` and
//! `newaliases`. It queues a message read on standard input through the spool code the server
//! uses, so it works with no daemon running.
//!
//! Root and the spool's owner write the spool directly. Anyone else goes through `maildrop/`
//! (the binary setgid to the drop group): the program then does as little as it can with
//! that group, reads no configuration a caller could have written, and gives the group up
//! before it does anything but write the dropped file.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use postern::alias::LocalUsers;
use postern::config::Config;
use postern::launch::Launcher;
use postern::milter::draft::Fate;
use postern::milter::local::LocalMilters;
use postern::policy::LocalPolicy;
use postern::server::Server;
use postern::spool::maildrop::{self, drop_message};
use postern::spool::{Envelope, QueueId, Spool, SpoolError};
use postern::submit::{self, Request, SubmitError};
use postern::{logging, sys, trace};

const USAGE: &str = "usage: sendmail [flags] [recipient ...]
       sendmail -t [flags]          recipients from To:, Cc: and Bcc: (Bcc: is removed)
       sendmail -bs                 an SMTP session on standard input and output
       sendmail -bp | mailq         the queue
       sendmail -bi | newaliases    check the aliases file
       sendmail -q                  run delivery now
       sendmail -bv ADDRESS...      where mail to each would go, sent nowhere
  -i, -oi        a line with a single `.` does not end the message
  -f ADDR        the envelope sender (`-f ''` or `-f '<>'`: the null sender); also -r
  -F NAME        the full name for an added From: field
  -C FILE        configuration file (root only when installed setgid)
  -v             say the queue ID
  --help, --version
Accepted and ignored, as other MTAs' sendmail does: -B TYPE, -N DSN, -R RET, -V ENVID,
-L TAG, -h N, -A X, -X FILE, -o OPTION (but -oi), -G, -U, -m, -n, -od*, -oe*.
Exit codes are those of sysexits.h: 0 queued, 64 usage, 65 bad data, 67 an address -bv
cannot deliver to, 69 no spool,
73 cannot queue, 75 try again later, 77 no permission, 78 configuration.";

// sysexits.h
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_NOUSER: u8 = 67;
const EX_UNAVAILABLE: u8 = 69;
const EX_SOFTWARE: u8 = 70;
const EX_OSERR: u8 = 71;
const EX_CANTCREAT: u8 = 73;
const EX_IOERR: u8 = 74;
const EX_TEMPFAIL: u8 = 75;
const EX_NOPERM: u8 = 77;
const EX_CONFIG: u8 = 78;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// -bm: queue the message on stdin (the default).
    Queue,
    /// -bs: an SMTP session on stdin and stdout.
    Smtp,
    /// -bp: list the queue.
    List,
    /// -bi: check the aliases file.
    Aliases,
    /// -q: run delivery now.
    Run,
    /// -bv: where mail to the recipients would go (postern-deliver --verify).
    Verify,
}

#[derive(Debug)]
struct Args {
    mode: Mode,
    ignore_dots: bool,
    extract: bool,
    sender: Option<String>,
    full_name: Option<String>,
    config: Option<PathBuf>,
    verbose: bool,
    recipients: Vec<String>,
}

/// Why the program ends before it queues anything: the text and the exit code.
struct Fail(u8, String);

impl<T: Into<String>> From<(u8, T)> for Fail {
    fn from((code, text): (u8, T)) -> Fail {
        Fail(code, text.into())
    }
}

/// The flags of sendmail's command line: single letters, clustered (`-ti`), a value attached
/// (`-FCronDaemon`, `-oi`) or in the next argument (`-f addr`). Options end at the first
/// argument that is not one, or at `--`.
fn parse_args(program: &str, argv: &[String]) -> Result<Args, Fail> {
    let mode = match program {
        "mailq" => Mode::List,
        "newaliases" => Mode::Aliases,
        _ => Mode::Queue,
    };
    let mut args = Args {
        mode,
        ignore_dots: false,
        extract: false,
        sender: None,
        full_name: None,
        config: None,
        verbose: false,
        recipients: Vec::new(),
    };
    let mut i = 0;
    while i < argv.len() {
        let arg = &argv[i];
        i += 1;
        match arg.as_str() {
            "--" => break,
            "--help" => return Err(Fail(0, USAGE.into())),
            "--version" => return Err(Fail(0, format!("postern-sendmail {}", env!("CARGO_PKG_VERSION")))),
            a if !a.starts_with('-') || a == "-" => {
                i -= 1;
                break;
            }
            _ => {}
        }
        let flags = &arg[1..];
        for (at, flag) in flags.char_indices() {
            if "BCFfrNRVLhAXobpqd".contains(flag) {
                let attached = &flags[at + flag.len_utf8()..];
                let value = if !attached.is_empty() || flag == 'q' {
                    attached.to_string()
                } else if let Some(next) = argv.get(i) {
                    i += 1;
                    next.clone()
                } else {
                    return Err(Fail(EX_USAGE, format!("-{flag} needs a value\n{USAGE}")));
                };
                take_value(&mut args, flag, value)?;
                break;
            }
            match flag {
                't' => args.extract = true,
                'i' => args.ignore_dots = true,
                'v' => args.verbose = true,
                // -m (me too), -n (no aliasing), -G (gateway), -U (initial submission):
                // nothing to change here.
                'm' | 'n' | 'G' | 'U' => {}
                other => return Err(Fail(EX_USAGE, format!("unknown flag -{other}\n{USAGE}"))),
            }
        }
    }
    args.recipients = argv[i..].to_vec();
    Ok(args)
}

fn take_value(args: &mut Args, flag: char, value: String) -> Result<(), Fail> {
    match flag {
        'f' | 'r' => args.sender = Some(value),
        'F' => args.full_name = Some(value),
        'C' => args.config = Some(value.into()),
        // -oi is -i; -oem, -odi, -odb and the rest are sendmail options with no meaning here.
        'o' if value == "i" => args.ignore_dots = true,
        'b' => {
            args.mode = match value.as_str() {
                "m" => Mode::Queue,
                "s" => Mode::Smtp,
                "p" => Mode::List,
                "i" => Mode::Aliases,
                "v" => Mode::Verify,
                "d" | "D" => return Err(Fail(EX_USAGE, "-bd: the daemon is postern-smtpd".to_string())),
                other => return Err(Fail(EX_USAGE, format!("-b{other}: not supported\n{USAGE}"))),
            }
        }
        'q' => args.mode = Mode::Run,
        'd' => return Err(Fail(EX_USAGE, "-d: debugging flags are not supported".to_string())),
        // -B body type (read from the message itself), -N/-R/-V DSN parameters, -L syslog tag,
        // -h hop count, -A submit file, -X traffic log (never written: it would be a file any
        // caller names, written with the drop group).
        _ => {}
    }
    Ok(())
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let program = argv.first().map(|a| a.rsplit('/').next().unwrap_or(a).to_string()).unwrap_or_default();
    let program = program.as_str();
    let args = match parse_args(program, argv.get(1..).unwrap_or(&[])) {
        Ok(a) => a,
        Err(Fail(0, text)) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(Fail(code, text)) => {
            eprintln!("{program}: {text}");
            return ExitCode::from(code);
        }
    };
    // Only the drop itself needs the drop group (-bs keeps it as its saved group, for drops).
    if !matches!(args.mode, Mode::Queue | Mode::Smtp)
        && sys::is_set_id()
        && let Err(e) = sys::drop_set_group()
    {
        eprintln!("{program}: cannot give up the drop group: {e}");
        return ExitCode::from(EX_OSERR);
    }
    logging::start("postern/sendmail", logging::Role::Command, args.verbose);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, text)) => {
            logging::fatal(program, &text);
            ExitCode::from(code)
        }
    }
}

fn run(args: &Args) -> Result<(), Fail> {
    let config = load_config(args)?;
    logging::configure(config.log, &config.syslog_socket);
    match args.mode {
        Mode::Queue => queue(args, &config),
        Mode::Smtp => smtp_session(&config),
        Mode::List => list_queue(&config),
        Mode::Aliases => check_aliases(&config),
        Mode::Run => run_delivery(args, &config),
        Mode::Verify => verify(args, &config),
    }
}

/// The configuration: `-C FILE` or `$POSTERN_CONF` or the system file. A setgid run by
/// anyone but root takes a named file only when only root can change it, so a caller cannot
/// point the drop group at a spool of their choosing.
fn load_config(args: &Args) -> Result<Config, Fail> {
    let named =
        args.config.clone().or_else(|| std::env::var_os("POSTERN_CONF").filter(|v| !v.is_empty()).map(PathBuf::from));
    let named = match named {
        Some(path) if sys::is_set_id() && sys::real_uid() != 0 => {
            let safe = std::fs::metadata(&path).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0);
            if !safe {
                return Err(Fail(
                    EX_CONFIG,
                    format!(
                        "{}: ignored: installed setgid, this program reads only configuration files \
                         that root owns and only root can write",
                        path.display()
                    ),
                ));
            }
            Some(path)
        }
        other => other,
    };
    Config::locate(named.as_deref()).map_err(|e| Fail(EX_CONFIG, e.to_string()))
}

/// How this caller can reach the spool.
enum Access {
    /// Root (then the service user) or the spool's owner: the spool itself.
    Direct(Spool),
    /// Anyone else: `maildrop/`.
    Drop,
}

fn access(config: &Config) -> Result<Access, Fail> {
    // Root writes as the service user, through the setgid copy too (root's real ID is still
    // 0 there): a queue file root owned could not be read by the delivery runs.
    if sys::real_uid() == 0 {
        sys::become_user(config.user.as_deref()).map_err(|e| Fail(EX_OSERR, e))?;
    }
    let root = &config.spool;
    let owner = std::fs::metadata(root.join("new")).map(|m| m.uid());
    let direct = sys::is_root() || owner.as_ref().is_ok_and(|&uid| uid == sys::effective_uid());
    if direct {
        return Spool::open(root)
            .map(Access::Direct)
            .map_err(|e| Fail(EX_CANTCREAT, postern::spool::open_error(root, &e)));
    }
    match std::fs::symlink_metadata(root.join(maildrop::DIR)) {
        Ok(m) if m.is_dir() => Ok(Access::Drop),
        _ => Err(Fail(
            EX_UNAVAILABLE,
            format!(
                "spool {} is not this user's and has no {}/ for local users; run `postern-queue init` as root",
                root.display(),
                maildrop::DIR
            ),
        )),
    }
}

/// -bm: the message on stdin, queued.
fn queue(args: &Args, config: &Config) -> Result<(), Fail> {
    let uid = sys::real_uid();
    let account = sys::account(uid).ok().flatten();
    let login = account.as_ref().map_or_else(|| format!("uid{uid}"), |a| a.name.clone());
    let full_name = args.full_name.clone().or_else(|| account.as_ref().and_then(|a| a.full_name.clone()));
    let limit = config.message_size_limit;
    let mut input = Vec::new();
    std::io::stdin()
        .lock()
        .take(limit.saturating_add(1))
        .read_to_end(&mut input)
        .map_err(|e| Fail(EX_IOERR, format!("reading the message: {e}")))?;
    let message = submit::normalize(&input, args.ignore_dots);
    drop(input);
    if message.len() as u64 > limit {
        return Err(Fail(EX_DATAERR, format!("the message is larger than message_size_limit ({limit} octets)")));
    }
    // Root's mail to system users is written as those users by a delivery that keeps root:
    // its launcher starts before root is given up (src/launch.rs).
    let root_launcher = match sys::real_uid() == 0 && config.user.is_some() {
        true if LocalUsers::load(config).is_ok_and(|u| u.needs_root_helper()) => Launcher::keeping_root(config, false),
        _ => None,
    };
    let access = access(config)?;
    let mut draft = match &access {
        Access::Direct(spool) => Some(spool.draft().map_err(|e| spool_error(&e))?),
        Access::Drop => None,
    };
    let id = draft.as_ref().map_or_else(QueueId::generate, |d| d.id().clone());
    let request = Request {
        login: &login,
        full_name: full_name.as_deref(),
        sender: args.sender.as_deref(),
        origin: config.origin(),
        hostname: &config.hostname,
        id: id.as_str(),
        now: now(),
        extract: args.extract,
        recipients: &args.recipients,
    };
    let prepared = submit::prepare(&request, &message).map_err(|e| match e {
        SubmitError::NoRecipients { extract: false } => Fail(EX_USAGE, e.to_string()),
        other => Fail(EX_DATAERR, other.to_string()),
    })?;
    let message_id = postern::message::Headers::parse(&prepared.message)
        .0
        .get("message-id")
        .as_deref()
        .and_then(postern::message::message_id);
    let envelope =
        Envelope::local(request.now, prepared.from.clone(), prepared.rcpts.clone(), prepared.body, prepared.smtputf8);
    match draft.take() {
        Some(mut d) => {
            let received = trace::received_local(&config.hostname, uid, id.as_str(), envelope.arrived);
            d.begin(&envelope)
                .and_then(|()| d.write(received.as_bytes()))
                .and_then(|()| d.write(&prepared.message))
                .map_err(|e| spool_error(&e))?;
            // non_smtpd_milters: their verdict is the caller's to hear, and their changes
            // are made before the commit.
            let fate = match LocalMilters::from_config(config) {
                Some(m) => m.filter(&mut d, &envelope).map_err(|e| spool_error(&e))?,
                None => Fate::Queue,
            };
            let size = d.message_len();
            match fate {
                Fate::Queue => d.commit(size).map(drop).map_err(|e| spool_error(&e))?,
                Fate::Hold(reason) => {
                    d.commit_held(size).map_err(|e| spool_error(&e))?;
                    log::warn!(target: "postern/pickup", "{id}: held: milter triggers HOLD action: {reason}");
                    return Ok(());
                }
                Fate::Discard(why) => {
                    log::info!(target: "postern/pickup", "{id}: discarded: {why}; from={}", envelope.from);
                    return Ok(());
                }
                Fate::Refuse(reply) => {
                    let code = if reply.code() >= 500 { EX_UNAVAILABLE } else { EX_TEMPFAIL };
                    return Err(Fail(code, format!("refused by a milter: {}", reply.summary())));
                }
            }
            // The shape of Postfix's pickup line, which log summarisers count as received.
            log::info!(target: "postern/pickup", "{id}: uid={uid} from={}", envelope.from);
            match root_launcher {
                Some(launcher) => launcher.deliver(&id),
                None => postern::launch::deliver_detached(config),
            }
        }
        None => {
            let dropped = drop_message(&config.spool, &id, &envelope, &prepared.message);
            if sys::is_set_id() {
                let _ = sys::drop_set_group();
            }
            dropped.map_err(|e| drop_error(&e, &config.spool))?;
        }
    }
    if let Some(m) = message_id {
        log::info!(target: "postern/pickup", "{id}: message-id={m}");
    }
    if args.verbose {
        println!("queued as {id}");
    }
    Ok(())
}

fn spool_error(e: &SpoolError) -> Fail {
    match e {
        SpoolError::DiskFull => Fail(EX_TEMPFAIL, "the spool is full; try again later".into()),
        other => Fail(EX_CANTCREAT, format!("cannot queue: {other}")),
    }
}

fn drop_error(e: &std::io::Error, spool: &Path) -> Fail {
    let dir = spool.join(maildrop::DIR);
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => Fail(
            EX_NOPERM,
            format!(
                "{}: permission denied: this program must be setgid to the group that may write there \
                 (`postern-queue init` sets that up)",
                dir.display()
            ),
        ),
        Some(libc::ENOSPC | libc::EDQUOT) => Fail(EX_TEMPFAIL, format!("{}: no space; try again later", dir.display())),
        _ => Fail(EX_CANTCREAT, format!("{}: {e}", dir.display())),
    }
}

/// -bs: one SMTP session with the local user on stdin and stdout (Symfony Mailer's default
/// transport, for one). Root and the spool's owner commit into the spool; anyone else's
/// messages are committed into `maildrop/`, the drop group taken up only for that.
fn smtp_session(config: &Config) -> Result<(), Fail> {
    let spool = match access(config)? {
        Access::Direct(spool) => {
            if sys::is_set_id() {
                sys::drop_set_group().map_err(|e| Fail(EX_OSERR, format!("cannot give up the drop group: {e}")))?;
            }
            spool
        }
        Access::Drop if !sys::is_set_id() => {
            let denied = std::io::Error::from_raw_os_error(libc::EACCES);
            return Err(drop_error(&denied, &config.spool));
        }
        Access::Drop => {
            let group = sys::effective_gid();
            sys::lower_set_group().map_err(|e| Fail(EX_OSERR, format!("cannot lower the drop group: {e}")))?;
            Spool::maildrop(&config.spool, Some(group))
        }
    };
    let policy = LocalPolicy::load(config).map_err(|e| Fail(EX_CONFIG, e.to_string()))?;
    let policy = policy.with_srs(postern::srs::from_config(config, false));
    Server::new(config.clone(), policy, spool, None, None).serve_local_user();
    Ok(())
}

/// -bp (mailq): the queue in the traditional shape. Root and the spool's owner read the spool;
/// anyone else asks the running server, as Postfix's mailq asks its showq service.
fn list_queue(config: &Config) -> Result<(), Fail> {
    sys::end_quietly_on_closed_pipe();
    let text = match access(config)? {
        Access::Direct(spool) => {
            postern::queue::mailq(&postern::queue::list(&spool, &postern::schedule::RetryPolicy::of(config), now()))
        }
        Access::Drop => postern::showq::fetch(&config.spool).map_err(|e| Fail(EX_UNAVAILABLE, e))?,
    };
    print!("{text}");
    Ok(())
}

/// -bi (newaliases): the aliases file is read whenever it is used, so there is nothing to
/// rebuild; this checks it and says what it holds.
fn check_aliases(config: &Config) -> Result<(), Fail> {
    let Some(path) = &config.aliases else {
        println!("no aliases file is configured (`aliases` in {})", config.source);
        return Ok(());
    };
    let users = postern::alias::LocalUsers::load(config).map_err(|e| Fail(EX_DATAERR, e.to_string()))?;
    println!("{}: {} aliases, read at each use (nothing to rebuild)", path.display(), users.alias_count());
    if users.problems().is_empty() {
        return Ok(());
    }
    for p in users.problems() {
        eprintln!("{p}");
    }
    Err(Fail(
        EX_DATAERR,
        format!("{}: {} lines not used (each costs only its own alias)", path.display(), users.problems().len()),
    ))
}

/// -q: a delivery run now, by the postern-deliver installed beside this program.
fn run_delivery(args: &Args, config: &Config) -> Result<(), Fail> {
    let exe = std::env::current_exe().map_err(|e| Fail(EX_SOFTWARE, e.to_string()))?;
    let deliver = exe.with_file_name("postern-deliver");
    let mut cmd = std::process::Command::new(&deliver);
    cmd.args(config.program_args());
    if args.verbose {
        cmd.arg("-v");
    }
    let status = cmd.status().map_err(|e| Fail(EX_UNAVAILABLE, format!("{}: {e}", deliver.display())))?;
    let _ = std::io::stdout().flush();
    if status.success() { Ok(()) } else { Err(Fail(EX_TEMPFAIL, format!("{} failed ({status})", deliver.display()))) }
}

/// `-bv`: `postern-deliver --verify` says where mail to each recipient would go; exit 0 when
/// every one can be delivered, EX_NOUSER when one cannot.
fn verify(args: &Args, config: &Config) -> Result<(), Fail> {
    if args.recipients.is_empty() {
        return Err(Fail(EX_USAGE, "-bv needs an address".to_string()));
    }
    let exe = std::env::current_exe().map_err(|e| Fail(EX_SOFTWARE, e.to_string()))?;
    let deliver = exe.with_file_name("postern-deliver");
    let mut cmd = std::process::Command::new(&deliver);
    cmd.args(config.program_args()).arg("--verify").args(&args.recipients);
    let status = cmd.status().map_err(|e| Fail(EX_UNAVAILABLE, format!("{}: {e}", deliver.display())))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(Fail(EX_NOUSER, "not every address can be delivered".to_string())),
        _ => Err(Fail(EX_SOFTWARE, format!("{} failed ({status})", deliver.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Args {
        let argv: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        parse_args("sendmail", &argv).unwrap_or_else(|Fail(c, t)| panic!("{line}: {c} {t}"))
    }

    #[test]
    fn what_cron_mail_php_and_git_pass() {
        let cron = parse("-FCronDaemon -i -B8BITMIME -oem root");
        assert_eq!(
            (cron.full_name.as_deref(), cron.ignore_dots, cron.recipients.as_slice()),
            (Some("CronDaemon"), true, &["root".to_string()][..])
        );
        let php = parse("-t -i");
        assert!(php.extract && php.ignore_dots && php.recipients.is_empty());
        let mutt = parse("-oem -oi -N success,delay -- bob@example.org");
        assert!(mutt.ignore_dots);
        assert_eq!(mutt.recipients, ["bob@example.org"]);
        let git = parse("-i -f alice@example.org bob@example.org carol@example.org");
        assert_eq!(git.sender.as_deref(), Some("alice@example.org"));
        assert_eq!(git.recipients.len(), 2);
        let clustered = parse("-tif<> -odi");
        assert!(clustered.extract && clustered.ignore_dots);
        assert_eq!(clustered.sender.as_deref(), Some("<>"));
        assert_eq!(parse("-bs").mode, Mode::Smtp);
        assert_eq!(parse("-q").mode, Mode::Run);
        assert_eq!(parse("-q30m").mode, Mode::Run);
        assert_eq!(parse("-bp").mode, Mode::List);
        assert_eq!(parse("-bv").mode, Mode::Verify);
        assert_eq!(parse_args("mailq", &[]).map(|a| a.mode).ok(), Some(Mode::List));
        assert_eq!(parse_args("newaliases", &[]).map(|a| a.mode).ok(), Some(Mode::Aliases));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for line in [&["-bd"][..], &["-Z"], &["-f"], &["-bt", "root"]] {
            let argv: Vec<String> = line.iter().map(|s| s.to_string()).collect();
            assert!(matches!(parse_args("sendmail", &argv), Err(Fail(EX_USAGE, _))), "{line:?}");
        }
    }
}
