//! postern-queue: list, show, retry, flush, hold, release, delete and requeue queued mail, and `init`, which
//! sets up the service user, the drop group and the spool.

use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use postern::cli::{self, Exit};
use postern::config::Config;
use postern::deliver::{Options, Runner};
use postern::schedule::RetryPolicy;
use postern::spool::log::read_log;
use postern::spool::manage::{ActionError, Found};
use postern::spool::{QueueId, Spool, maildrop};
use postern::{logging, queue, sys, trace};

const USAGE: &str = "usage: postern-queue [-c FILE | --builtin-config] COMMAND
  list [--json]      every queued message: ID, state, arrival, size, attempts, next try,
                     sender, the recipients left, and the last error
  show ID            its envelope, delivery log and header
  retry ID           deliver it now, whatever the back-off
  flush              deliver every message now, whatever the back-off (retry --all);
                     on a terminal, how far it has come as it goes
  hold ID...         put it aside: no delivery until it is released
  release ID...      deliver it again as before
  delete ID...       remove it; nobody is told
  requeue ID...      make a deferred message due now, as if new: its back-off starts over and
                     its lifetime runs from now (a held one stays held); the next delivery
                     run tries it (flush: at once)
                     (for hold, release, delete and requeue: ALL for every message it applies
                     to, or - for the IDs on standard input, as postsuper reads them)
  init [--group NAME] [--sendmail PATH | --no-sendmail]
                     as root: create the service user (`user`), the drop group (postern-drop),
                     the spool and its maildrop/ with their owners and modes, and make
                     postern-sendmail setgid to the drop group (not with --no-sendmail: a
                     package sets it with dpkg-statoverride); safe to run again
  -c FILE            configuration file (default: $POSTERN_CONF, /etc/postern/postern.conf, built-in)
  --builtin-config   the built-in configuration
  -h, --help         this text;  -V, --version  the version
Safe while a delivery run works: a message being delivered is left alone (exit 75, try again).
Exit status: 0 done, 1 no such message or not possible, 2 usage, 75 busy.";

const DROP_GROUP: &str = "postern-drop";

enum Command {
    List { json: bool },
    Show(QueueId),
    Retry(QueueId),
    Flush,
    Hold(Targets),
    Release(Targets),
    Delete(Targets),
    Requeue(Targets),
    Init { group: String, sendmail: Sendmail },
}

/// Which postern-sendmail `init` makes setgid.
enum Sendmail {
    /// The one beside this program.
    Beside,
    At(PathBuf),
    /// None: the package system sets its mode (dpkg-statoverride).
    Left,
}

struct Args {
    config: Option<PathBuf>,
    builtin: bool,
    command: Command,
}

/// The messages `hold`, `release`, `delete` or `requeue` acts on.
enum Targets {
    Ids(Vec<QueueId>),
    /// `ALL`: every message the command applies to (held ones for release, the others for hold).
    All,
    /// `-`: the IDs on standard input, white space between them.
    Stdin,
}

/// `ID...`, `ALL` or `-`, the rest of the command line.
fn targets(it: &mut impl Iterator<Item = String>, what: &str) -> Result<Targets, Exit> {
    let first = it.next().ok_or(format!("{what} needs a queue ID, ALL or -\n{USAGE}"))?;
    match first.as_str() {
        "ALL" => Ok(Targets::All),
        "-" => Ok(Targets::Stdin),
        _ => std::iter::once(first).chain(it).map(|t| parse_id(&t)).collect::<Result<_, _>>().map(Targets::Ids),
    }
}

fn parse_id(text: &str) -> Result<QueueId, Exit> {
    QueueId::parse(text).ok_or_else(|| Exit::Usage(format!("`{text}` is not a queue ID")))
}

fn id_arg(it: &mut impl Iterator<Item = String>, what: &str) -> Result<QueueId, Exit> {
    parse_id(&it.next().ok_or(format!("{what} needs a queue ID\n{USAGE}"))?)
}

fn parse_args() -> Result<Args, Exit> {
    let mut config = None;
    let mut builtin = false;
    let mut it = std::env::args().skip(1);
    let command = loop {
        let Some(arg) = it.next() else { return Err(Exit::Usage(USAGE.into())) };
        match arg.as_str() {
            "-c" => config = Some(PathBuf::from(it.next().ok_or("-c needs a file")?)),
            "--builtin-config" => builtin = true,
            "-h" | "--help" => return Err(Exit::Say(USAGE.into())),
            "-V" | "--version" => return Err(cli::version("postern-queue")),
            "list" => {
                let json = match it.next().as_deref() {
                    None => false,
                    Some("--json") => true,
                    Some(other) => return Err(Exit::Usage(format!("list: unknown argument `{other}`"))),
                };
                break Command::List { json };
            }
            "show" => break Command::Show(id_arg(&mut it, "show")?),
            "retry" => {
                let next = it.next().ok_or(format!("retry needs a queue ID or --all\n{USAGE}"))?;
                if next == "--all" {
                    break Command::Flush;
                }
                break Command::Retry(parse_id(&next)?);
            }
            "flush" => break Command::Flush,
            "hold" => break Command::Hold(targets(&mut it, "hold")?),
            "release" => break Command::Release(targets(&mut it, "release")?),
            "delete" => break Command::Delete(targets(&mut it, "delete")?),
            "requeue" => break Command::Requeue(targets(&mut it, "requeue")?),
            "init" => {
                let (mut group, mut sendmail) = (DROP_GROUP.to_string(), Sendmail::Beside);
                while let Some(flag) = it.next() {
                    match flag.as_str() {
                        "--group" => group = it.next().ok_or("--group needs a name")?,
                        "--sendmail" => {
                            sendmail = Sendmail::At(PathBuf::from(it.next().ok_or("--sendmail needs a path")?))
                        }
                        "--no-sendmail" => sendmail = Sendmail::Left,
                        other => return Err(Exit::Usage(format!("init: unknown argument `{other}`"))),
                    }
                }
                break Command::Init { group, sendmail };
            }
            other => return Err(Exit::Usage(format!("unknown command `{other}`\n{USAGE}"))),
        }
    };
    if let Some(extra) = it.next() {
        return Err(Exit::Usage(format!("unexpected argument `{extra}`")));
    }
    Ok(Args { config, builtin, command })
}

/// Why a command failed: the text, and the exit status.
struct Fail(u8, String);

impl From<String> for Fail {
    fn from(text: String) -> Fail {
        Fail(1, text)
    }
}

pub fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(exit) => return exit.finish(2),
    };
    logging::start("postern/queue", logging::Role::Command, false);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, text)) => {
            eprintln!("postern-queue: {text}");
            ExitCode::from(code)
        }
    }
}

fn now() -> u64 {
    let clock = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    std::env::var("POSTERN_NOW").ok().and_then(|v| v.parse().ok()).unwrap_or(clock)
}

fn run(args: &Args) -> Result<(), Fail> {
    let config = Config::choose(args.builtin, args.config.as_deref()).map_err(|e| e.to_string())?;
    logging::configure(config.log, &config.syslog_socket);
    if let Command::Init { group, sendmail } = &args.command {
        return init(&config, group, sendmail);
    }
    // As root, act as the service user: every file the queue gains stays the service's.
    sys::become_user(config.user.as_deref())?;
    let root = &config.spool;
    if !root.join("new").is_dir() {
        return Err(Fail(1, format!("{}: no spool here (`postern-queue init` makes one)", root.display())));
    }
    let spool = Spool::open_or_explain(root)?;
    let who = sys::real_uid();
    let acted = |id: &QueueId, what: &str| log::info!("{id}: {what} by the operator (uid {who})");
    if matches!(args.command, Command::List { .. } | Command::Show(_)) {
        sys::end_quietly_on_closed_pipe();
    }
    match &args.command {
        Command::List { json } => {
            let entries = queue::list(&spool, &RetryPolicy::of(&config), now());
            print!("{}", if *json { queue::json(&entries) } else { queue::table(&entries) });
        }
        Command::Show(id) => show(&spool, id)?,
        Command::Retry(id) => {
            match spool.find(id) {
                None => return Err(action(id, &ActionError::Unknown)),
                Some(Found::Held) => return Err(action(id, &ActionError::Wrong(Found::Held))),
                Some(_) => {}
            }
            let options = Options { only: Some(id.clone()), force: false, dry_run: false, now: None };
            let s = Runner::new(&config, options)?.run();
            println!("{}", said(&s));
            if s.busy > 0 && spool.find(id).is_some() {
                return Err(action(id, &ActionError::Busy));
            }
        }
        Command::Flush => {
            let options = Options { only: None, force: true, dry_run: false, now: None };
            let runner = Runner::new(&config, options)?;
            let s = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                run_showing_progress(&runner)
            } else {
                runner.run()
            };
            println!("{}", said(&s));
        }
        Command::Hold(targets) => {
            let ids = chosen(&spool, targets, |state, _| state != Found::Held)?;
            each(&ids, "held", |id| {
                spool.hold(id)?;
                acted(id, "held");
                Ok(format!("{id}: held"))
            })?;
        }
        Command::Release(targets) => {
            let ids = chosen(&spool, targets, |state, _| state == Found::Held)?;
            each(&ids, "released", |id| {
                let to = spool.release(id)?;
                acted(id, "released");
                Ok(format!("{id}: released ({})", to.name()))
            })?;
        }
        Command::Delete(targets) => {
            let ids = chosen(&spool, targets, |_, _| true)?;
            each(&ids, "deleted", |id| {
                spool.delete(id)?;
                acted(id, "removed");
                Ok(format!("{id}: deleted"))
            })?;
        }
        Command::Requeue(targets) => {
            // ALL: the messages a run has tried, held or not.
            let ids = chosen(&spool, targets, |state, id| state != Found::New && spool.log_path(id).exists())?;
            each(&ids, "requeued", |id| {
                let state = spool.requeue(id, now(), &format!("by the operator (uid {who})"))?;
                acted(id, "requeued");
                Ok(match state {
                    Found::Held => format!("{id}: requeued (still held)"),
                    _ => format!("{id}: requeued"),
                })
            })?;
        }
        Command::Init { .. } => {}
    }
    Ok(())
}

/// The IDs `targets` names; for `ALL`, the queued messages to which the command `applies`.
fn chosen(spool: &Spool, targets: &Targets, applies: impl Fn(Found, &QueueId) -> bool) -> Result<Vec<QueueId>, Fail> {
    match targets {
        Targets::Ids(ids) => Ok(ids.clone()),
        Targets::All => {
            Ok(spool.all().into_iter().filter(|(state, id)| applies(*state, id)).map(|(_, id)| id).collect())
        }
        Targets::Stdin => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| Fail(1, format!("standard input: {e}")))?;
            let ids = text.split_whitespace().map(|t| QueueId::parse(t).ok_or(t));
            ids.collect::<Result<_, _>>().map_err(|t| Fail(2, format!("standard input: `{t}` is not a queue ID")))
        }
    }
}

/// Does `act` to each of `ids`, one line each; one that fails is said and the rest are still
/// done. The status is the worst: 1 for a message that is not there or cannot be, else 75
/// for one being delivered (try again).
fn each(ids: &[QueueId], done: &str, act: impl Fn(&QueueId) -> Result<String, ActionError>) -> Result<(), Fail> {
    let (mut status, mut failed) = (0, 0);
    for id in ids {
        match act(id) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                let Fail(code, text) = action(id, &e);
                failed += 1;
                if ids.len() == 1 {
                    return Err(Fail(code, text));
                }
                eprintln!("postern-queue: {text}");
                status = if status == 1 || code == 1 { 1 } else { code };
            }
        }
    }
    match status {
        0 => Ok(()),
        code => Err(Fail(code, format!("{failed} of {} messages not {done}", ids.len()))),
    }
}

/// What a run did, as its last line says it.
fn said(s: &postern::deliver::Summary) -> String {
    format!("{} messages: {} sent, {} deferred, {} bounced, {} busy", s.messages, s.sent, s.deferred, s.bounced, s.busy)
}

/// `runner.run()`, with a line on standard error (a terminal) rewritten every half second:
/// the messages looked at of those listed, and what became of them so far.
fn run_showing_progress(runner: &Runner) -> postern::deliver::Summary {
    let show = || {
        let p = runner.progress();
        let s = &p.summary;
        // One write, whole, the line cleared first (what a log line left on it goes).
        let line = format!(
            "\r\x1b[Kflush: {} of {} messages: {} sent, {} deferred, {} bounced",
            p.looked_at, p.listed, s.sent, s.deferred, s.bounced
        );
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    };
    // Dropping `finished` when the run is over ends the thread that shows the line.
    let (finished, ended) = std::sync::mpsc::channel::<()>();
    let summary = std::thread::scope(|scope| {
        scope.spawn(move || {
            show();
            let half_second = std::time::Duration::from_millis(500);
            while ended.recv_timeout(half_second) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                show();
            }
        });
        let summary = runner.run();
        drop(finished);
        summary
    });
    show();
    eprintln!();
    summary
}

fn action(id: &QueueId, e: &ActionError) -> Fail {
    let code = if matches!(e, ActionError::Busy) { 75 } else { 1 };
    Fail(code, format!("{id}: {e}"))
}

fn show(spool: &Spool, id: &QueueId) -> Result<(), Fail> {
    let found = spool.find(id).ok_or_else(|| action(id, &ActionError::Unknown))?;
    let (envelope, head) = spool.peek(found, id, 64 * 1024).map_err(|e| format!("{id}: {e}"))?;
    println!("id: {id}");
    println!("state: {}", found.name());
    println!("arrived: {} UTC", trace::iso_time(envelope.arrived));
    println!("size: {}", envelope.size);
    let client = envelope.client.map_or_else(|| "local".to_string(), |ip| ip.to_string());
    println!("client: {client} ({})", envelope.protocol);
    if let Some(helo) = &envelope.helo {
        println!("helo: {helo}");
    }
    println!("from: {}", envelope.from);
    for r in &envelope.rcpts {
        println!("rcpt: {r}");
    }
    let log = read_log(&spool.log_path(id)).map_err(|e| format!("{id}: delivery log: {e}"))?;
    println!("\ndelivery log:");
    if log.is_empty() {
        println!("  (no attempt yet)");
    }
    for a in &log {
        let who = &a.recipient;
        let tls = a.protection.map_or_else(String::new, |p| format!(" (tls {})", p.name()));
        println!(
            "  {} {} {who} {} {} {}{tls}",
            trace::iso_time(a.time),
            a.outcome.name(),
            a.status_text(),
            a.relay,
            a.text
        );
    }
    println!("\nheader:");
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").map_or(head.len(), |p| p + 2);
    print!("{}", String::from_utf8_lossy(&head[..end]).replace("\r\n", "\n"));
    Ok(())
}

/// Sets up, or puts right, what a system install needs. Each step says what it did.
fn init(config: &Config, group: &str, sendmail: &Sendmail) -> Result<(), Fail> {
    if !sys::is_root() {
        return Err(Fail(1, "init must run as root".into()));
    }
    let user = config.user.as_deref().ok_or(format!("init: set `user` in {} first", config.source))?;
    let say = |text: String| println!("postern-queue init: {text}");
    if sys::lookup_group(group).map_err(|e| format!("group {group}: {e}"))?.is_none() {
        run_tool("groupadd", &["--system", group])?;
        say(format!("created group {group}"));
    }
    let spool = &config.spool;
    if sys::lookup_user(user).map_err(|e| format!("user {user}: {e}"))?.is_none() {
        let home = spool.to_string_lossy();
        let shell = if Path::new("/usr/sbin/nologin").exists() { "/usr/sbin/nologin" } else { "/bin/false" };
        run_tool(
            "useradd",
            &["--system", "--user-group", "--no-create-home", "--home-dir", &home, "--shell", shell, user],
        )?;
        say(format!("created user {user}"));
    }
    let ids = sys::lookup_user(user).ok().flatten().ok_or(format!("user {user}: not found after useradd"))?;
    let drop_gid = sys::lookup_group(group).ok().flatten().ok_or(format!("group {group}: not found after groupadd"))?;
    // The spool's own directory can be crossed by everyone (to reach maildrop/); each queue
    // directory is the service's alone; maildrop/ takes new names from the drop group only,
    // and the sticky bit keeps one user's file from another (doc/queue.md, "S0").
    let dirs: [(&str, u32, u32, u32); 8] = [
        ("", ids.gid, 0o755, ids.uid),
        ("tmp", ids.gid, 0o700, ids.uid),
        ("new", ids.gid, 0o700, ids.uid),
        ("cur", ids.gid, 0o700, ids.uid),
        ("hold", ids.gid, 0o700, ids.uid),
        ("spare", ids.gid, 0o700, ids.uid),
        ("corrupt", ids.gid, 0o700, ids.uid),
        (maildrop::DIR, drop_gid, 0o1730, ids.uid),
    ];
    for (name, gid, mode, uid) in dirs {
        let path = if name.is_empty() { spool.clone() } else { spool.join(name) };
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        chown(&path, Some(uid), Some(gid)).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    say(format!(
        "spool {} (0755 {user}), its queue directories (0700), {}/ (1730 {user}:{group})",
        spool.display(),
        maildrop::DIR
    ));
    // The secret forwarded senders are rewritten with (SRS): the service's alone.
    if config.srs {
        let secret = config.srs_secret_path();
        let existed = secret.exists();
        postern::srs::load_secret(&secret).map_err(|e| format!("{}: {e}", secret.display()))?;
        chown(&secret, Some(ids.uid), Some(ids.gid)).map_err(|e| format!("{}: {e}", secret.display()))?;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", secret.display()))?;
        match existed {
            true => say(format!("{} kept (0600 {user})", secret.display())),
            false => say(format!("created {}, the SRS secret (0600 {user})", secret.display())),
        }
    }
    let repaired = repair_owners(spool, &["tmp", "new", "cur", "hold", "spare", "corrupt"], ids.uid, ids.gid)?;
    if repaired > 0 {
        say(format!(
            "gave {repaired} queue file(s) another user had written back to {user}, so delivery can read them"
        ));
    }
    // An aliases file named but missing would stop the server: start one, with the line
    // the administrator must complete (mail for root is never written as root).
    if let Some(aliases) = config.aliases.as_ref().filter(|p| !p.exists()) {
        let text = "# Where mail for a local name goes: `name: target, target` (aliases(5)).\n\
                    # Mail for root is never written as root: name the person who reads it.\n\
                    postmaster: root\n#root: you\n";
        std::fs::write(aliases, text).map_err(|e| format!("{}: {e}", aliases.display()))?;
        say(format!("created {}: add `root: you` to it", aliases.display()));
    }
    let sendmail = match sendmail {
        Sendmail::At(p) => p.clone(),
        Sendmail::Beside => std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("postern-sendmail"),
        Sendmail::Left => return Ok(()),
    };
    if sendmail.is_file() {
        chown(&sendmail, Some(0), Some(drop_gid)).map_err(|e| format!("{}: {e}", sendmail.display()))?;
        std::fs::set_permissions(&sendmail, std::fs::Permissions::from_mode(0o2755))
            .map_err(|e| format!("{}: {e}", sendmail.display()))?;
        say(format!("{} is setgid {group} (2755), so every local user can send mail", sendmail.display()));
    } else {
        say(format!(
            "{}: not found; local users other than root cannot send until it is setgid {group}",
            sendmail.display()
        ));
    }
    Ok(())
}

/// Makes every file in the queue directories the service user's: a queue file written as
/// root (by an older `sendmail` run as root) cannot be read by the delivery runs.
fn repair_owners(spool: &Path, dirs: &[&str], uid: u32, gid: u32) -> Result<usize, Fail> {
    let mut repaired = 0;
    for dir in dirs {
        let dir = spool.join(dir);
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if meta.is_file() && meta.uid() != uid {
                chown(&path, Some(uid), Some(gid)).map_err(|e| format!("{}: {e}", path.display()))?;
                repaired += 1;
            }
        }
    }
    Ok(repaired)
}

fn run_tool(tool: &str, args: &[&str]) -> Result<(), Fail> {
    let status = std::process::Command::new(tool).args(args).status().map_err(|e| format!("{tool}: {e}"))?;
    if status.success() { Ok(()) } else { Err(Fail(1, format!("{tool} {} failed ({status})", args.join(" ")))) }
}
