//! Copies into the maildirs of the system's own users (`local_users = system`), each written
//! by a process running as that user (its uid, gid and groups): never as root, never as the
//! service user.
//!
//! A delivery run started as root starts one helper (`postern-deliver --local-writer`) before
//! it gives root up. The helper keeps root and nothing else: it reads requests (a user name,
//! the two stamp fields, the message) from the run, works out the maildir itself from the
//! configuration and the password database, refuses root, and for each copy starts a writer
//! (`postern-deliver --write-maildir`) as that user, which makes the maildir when it is
//! missing and writes the copy (`maildir::deliver_to_maildir`). Nothing the run sends can
//! make the helper write anywhere but a user's own maildir, as that user.
//!
//! The same helper runs the aliases' `|command`s and appends to their `/file`s, as
//! `alias_user`: only commands and files the aliases name, so the run cannot choose others.
//! With `forward_files = on` it reads the users' `~/.forward` files for the run (which may
//! not reach their homes), and runs the commands and appends to the files one names as its
//! user, after reading it again: only those that user's `.forward` names. And it runs
//! `mailbox_command` (dovecot-lda, say) as a user for the copy into that user's mailbox.
//!
//! Requests and replies are one line each, fields split by tabs:
//! `mailbox|junk|command|file|look|forward|mailbox-command<TAB>USER|COMMAND|PATH<TAB>RETURN-PATH<TAB>DELIVERED-TO<TAB>NAME<TAB>SIZE`
//! then SIZE octets of message; `ok<TAB>WHERE` or `err<TAB>full|unsafe|loop|io|refused<TAB>TEXT`.
//! NAME is the maildir file name the run chose and recorded for a `mailbox` or `junk` copy,
//! the user whose `.forward` names a `command` or `file` (`-` for the aliases' and the
//! others); `forward` is answered `text<TAB>SIZE` and SIZE octets, `none<TAB>-` or
//! `ignored<TAB>WHY` (`alias::Forward`); `junk` is a `mailbox` copy into the maildir's `junk_folder`, which
//! the helper reads from its own configuration; `look` asks whether USER's maildir has a copy
//! under NAME, in its inbox or its Junk folder (`ok<TAB>WHERE`, or `none<TAB>-`), after a run
//! was killed between a copy and its record.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use crate::alias::{Forward, LocalUsers, read_forward};
use crate::config::Config;
use crate::maildir::{MaildirError, Stamp, deliver_to_maildir};
use crate::smtp::address::ReversePath;
use crate::sys;

/// The run's side: a helper started as root, asked for one copy at a time.
pub struct Writer {
    inner: Mutex<Helper>,
}

struct Helper {
    child: Child,
    /// Dropped (closed) to end the helper.
    input: Option<ChildStdin>,
    output: BufReader<ChildStdout>,
}

/// The program and the configuration arguments a helper process is started with.
fn program(config: &Config) -> io::Result<(PathBuf, Vec<OsString>)> {
    let exe = std::env::current_exe()?.with_file_name("postern-deliver");
    Ok((exe, config.program_args()))
}

impl Writer {
    /// Starts the helper; called as root, before root is given up.
    pub fn start(config: &Config) -> io::Result<Writer> {
        let (exe, args) = program(config)?;
        let mut command = Command::new(exe);
        command.args(args).arg("--local-writer").stdin(Stdio::piped()).stdout(Stdio::piped());
        crate::logging::pass_to(&mut command);
        let mut child = command.spawn()?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(io::Error::other("local writer: no pipes"));
        };
        Ok(Writer { inner: Mutex::new(Helper { child, input: Some(input), output: BufReader::new(output) }) })
    }

    /// One copy into `user`'s maildir under `name` (`maildir::new_name`), written as `user`;
    /// into its Junk folder when `junk`.
    pub fn write(
        &self,
        user: &str,
        return_path: &ReversePath,
        delivered_to: &str,
        name: &str,
        junk: bool,
        message: &[u8],
    ) -> Result<PathBuf, MaildirError> {
        let kind = if junk { "junk" } else { "mailbox" };
        self.ask([kind, user, &return_path.to_string(), delivered_to, name], message)
    }

    /// Where `user`'s maildir has the copy named `name`, if it has it (`maildir::find_copy`).
    pub fn look(&self, user: &str, name: &str) -> Option<PathBuf> {
        self.ask(["look", user, "<>", "-", name], b"").ok()
    }

    /// One copy to an alias's command, run as `alias_user`, or to the command `user`'s
    /// `.forward` names, run as `user`.
    pub fn pipe(
        &self,
        command: &str,
        from: &ReversePath,
        alias: &str,
        user: Option<&str>,
        message: &[u8],
    ) -> Result<PathBuf, MaildirError> {
        self.ask(["command", command, &from.to_string(), alias, user.unwrap_or("-")], message)
    }

    /// One copy appended to an alias's mbox file, as `alias_user`, or to the file `user`'s
    /// `.forward` names, as `user`.
    pub fn append(
        &self,
        path: &Path,
        from: &ReversePath,
        alias: &str,
        user: Option<&str>,
        message: &[u8],
    ) -> Result<PathBuf, MaildirError> {
        self.ask(["file", &path.display().to_string(), &from.to_string(), alias, user.unwrap_or("-")], message)
    }

    /// One copy to `mailbox_command`, run as `user` (the helper reads the command from its
    /// own configuration).
    pub fn mailbox_command(
        &self,
        user: &str,
        from: &ReversePath,
        delivered_to: &str,
        message: &[u8],
    ) -> Result<PathBuf, MaildirError> {
        self.ask(["mailbox-command", user, &from.to_string(), delivered_to, "-"], message)
    }

    /// `user`'s `~/.forward`, read by the helper as root (`alias::read_forward`).
    pub fn forward(&self, user: &str) -> Result<Forward, String> {
        let answer = self.exchange(["forward", user, "<>", "-", "-"], b"", |line, output| {
            let mut fields = line.trim_end_matches('\n').splitn(2, '\t');
            match (fields.next(), fields.next()) {
                (Some("text"), Some(size)) => {
                    let size: u64 = size.parse().map_err(|_| MaildirError::Io(format!("bad size `{size}`")))?;
                    let mut text = Vec::new();
                    output.take(size).read_to_end(&mut text).map_err(|e| MaildirError::Io(e.to_string()))?;
                    Ok(Forward::Text(String::from_utf8_lossy(&text).into_owned()))
                }
                (Some("none"), Some("-")) => Ok(Forward::Missing),
                (Some("ignored"), Some(why)) => Ok(Forward::Ignored(why.to_string())),
                _ => {
                    Err(parse_reply(line).err().unwrap_or_else(|| MaildirError::Io(format!("reply `{}`", line.trim()))))
                }
            }
        });
        answer.map_err(|e| crate::outcome::judge(crate::outcome::Event::Maildir(&e)).text)
    }

    /// One request: kind, who, return path, delivered-to and name, then the message.
    fn ask(&self, fields: [&str; 5], message: &[u8]) -> Result<PathBuf, MaildirError> {
        self.exchange(fields, message, |line, _| parse_reply(line))
    }

    /// Sends one request and reads its reply's line, then what `then` makes of it (and of
    /// what follows it).
    fn exchange<T>(
        &self,
        fields: [&str; 5],
        message: &[u8],
        then: impl FnOnce(&str, &mut BufReader<ChildStdout>) -> Result<T, MaildirError>,
    ) -> Result<T, MaildirError> {
        let who = fields[1];
        if fields.iter().any(|f| f.contains(['\t', '\n', '\r'])) {
            return Err(MaildirError::Unsafe(format!("`{}`: a tab or line end in it", who.escape_default())));
        }
        let mut helper = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let helper = &mut *helper;
        let request = format!("{}\t{}\n", fields.join("\t"), message.len());
        let Some(input) = helper.input.as_mut() else { return Err(MaildirError::Io("local writer: closed".into())) };
        let sent = input.write_all(request.as_bytes()).and_then(|()| input.write_all(message));
        sent.and_then(|()| input.flush()).map_err(|e| MaildirError::Io(format!("local writer for {who}: {e}")))?;
        let mut line = String::new();
        match helper.output.read_line(&mut line) {
            Ok(n) if n > 0 => then(&line, &mut helper.output),
            Ok(_) => Err(MaildirError::Io(format!("local writer for {who}: it stopped"))),
            Err(e) => Err(MaildirError::Io(format!("local writer for {who}: {e}"))),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let helper = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        helper.input = None; // end of its input: the helper exits
        let _ = helper.child.wait();
    }
}

fn reply(result: &Result<PathBuf, MaildirError>) -> String {
    let clean = |t: &str| t.replace(['\t', '\n', '\r'], " ");
    match result {
        Ok(path) => format!("ok\t{}\n", clean(&path.display().to_string())),
        Err(MaildirError::Full(t)) => format!("err\tfull\t{}\n", clean(t)),
        Err(MaildirError::Unsafe(t)) => format!("err\tunsafe\t{}\n", clean(t)),
        Err(MaildirError::Loop) => "err\tloop\t-\n".to_string(),
        Err(MaildirError::Io(t)) => format!("err\tio\t{}\n", clean(t)),
        Err(MaildirError::Refused(t)) => format!("err\trefused\t{}\n", clean(t)),
        Err(MaildirError::Denied(t)) => format!("err\tdenied\t{}\n", clean(t)),
    }
}

fn parse_reply(line: &str) -> Result<PathBuf, MaildirError> {
    let mut fields = line.trim_end_matches('\n').splitn(3, '\t');
    match (fields.next(), fields.next(), fields.next()) {
        (Some("ok"), Some(path), None) => Ok(PathBuf::from(path)),
        (Some("none"), Some("-"), None) => Err(MaildirError::Io("no such copy".into())),
        (Some("err"), Some("full"), Some(t)) => Err(MaildirError::Full(t.to_string())),
        (Some("err"), Some("unsafe"), Some(t)) => Err(MaildirError::Unsafe(t.to_string())),
        (Some("err"), Some("loop"), _) => Err(MaildirError::Loop),
        (Some("err"), Some("refused"), Some(t)) => Err(MaildirError::Refused(t.to_string())),
        (Some("err"), Some("denied"), Some(t)) => Err(MaildirError::Denied(t.to_string())),
        (Some("err"), Some(_), Some(t)) => Err(MaildirError::Io(t.to_string())),
        _ => Err(MaildirError::Io(format!("local writer: unreadable reply `{}`", line.trim()))),
    }
}

/// One request as the helper reads it.
struct Request {
    kind: String,
    user: String,
    return_path: ReversePath,
    delivered_to: String,
    /// The maildir file name of a `mailbox` or `look` request.
    name: String,
    message: Vec<u8>,
}

fn read_request(input: &mut impl BufRead, max: u64) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("bad request: {what}"));
    let fields: Vec<&str> = line.trim_end_matches('\n').split('\t').collect();
    let [kind, user, return_path, delivered_to, name, size] = fields[..] else { return Err(bad("fields")) };
    let size: u64 = size.parse().map_err(|_| bad("size"))?;
    if size > max {
        return Err(bad("too large"));
    }
    let return_path = match return_path {
        "<>" => ReversePath::Null,
        other => ReversePath::parse(other.trim_start_matches('<').trim_end_matches('>').as_bytes())
            .map_err(|_| bad("return path"))?,
    };
    let mut message = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    input.take(size).read_to_end(&mut message)?;
    if message.len() as u64 != size {
        return Err(bad("short message"));
    }
    let (kind, user, delivered_to, name) = (kind.to_string(), user.to_string(), delivered_to.to_string(), name.into());
    Ok(Some(Request { kind, user, return_path, delivered_to, name, message }))
}

/// `--local-writer`: the helper's loop, as root, until its input closes.
pub fn serve(config: &Config) -> Result<(), String> {
    let users = LocalUsers::load(config).map_err(|e| e.to_string())?;
    let (exe, _) = program(config).map_err(|e| e.to_string())?;
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let mut output = io::stdout().lock();
    let max = config.message_size_limit.saturating_mul(2).saturating_add(1 << 20);
    while let Some(req) = read_request(&mut input, max).map_err(|e| e.to_string())? {
        let result = match req.kind.as_str() {
            "mailbox" => write_one(config, &users, &exe, &req, None),
            "junk" => write_one(config, &users, &exe, &req, Some(&config.junk_folder)),
            "look" => {
                let find = |m: &Path| {
                    let junk = Some(config.junk_folder.as_str());
                    crate::maildir::find_copy(m, None, &req.name)
                        .or_else(|| crate::maildir::find_copy(m, junk, &req.name))
                };
                let found = mailbox_of(config, &users, &req.user).map(|(_, m)| find(&m));
                output
                    .write_all(look_reply(found).as_bytes())
                    .and_then(|()| output.flush())
                    .map_err(|e| e.to_string())?;
                continue;
            }
            "command" => run_command(config, &users, &req),
            "mailbox-command" => run_mailbox_command(config, &users, &req),
            "file" => append_file(config, &users, &exe, &req),
            "forward" => {
                let answer = match mailbox_of(config, &users, &req.user) {
                    Ok((account, _)) => match read_forward(&account) {
                        Ok(Forward::Text(text)) => format!("text\t{}\n{text}", text.len()),
                        Ok(Forward::Missing) => "none\t-\n".to_string(),
                        Ok(Forward::Ignored(why)) => format!("ignored\t{}\n", why.replace(['\t', '\n', '\r'], " ")),
                        Err(why) => reply(&Err(MaildirError::Io(why))),
                    },
                    Err(e) => reply(&Err(e)),
                };
                output.write_all(answer.as_bytes()).and_then(|()| output.flush()).map_err(|e| e.to_string())?;
                continue;
            }
            other => Err(MaildirError::Unsafe(format!("unknown request `{other}`"))),
        };
        output.write_all(reply(&result).as_bytes()).and_then(|()| output.flush()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A local system user's account and maildir; never root's, never another kind of user's.
fn mailbox_of(config: &Config, users: &LocalUsers, user: &str) -> Result<(sys::Account, PathBuf), MaildirError> {
    let unsafe_ = |why: String| Err(MaildirError::Unsafe(why));
    // Only the system's users get copies written as themselves, and only local users.
    if !config.system_users || users.lookup_name(user).as_deref() != Some(user) {
        return unsafe_(format!("{user}: not a local system user"));
    }
    let account = match sys::account_named(user) {
        Ok(Some(a)) => a,
        Ok(None) => return unsafe_(format!("{user}: no such account")),
        Err(e) => return Err(MaildirError::Io(format!("{user}: {e}"))),
    };
    if account.uid == 0 {
        return unsafe_(format!("{user}: never delivered as root"));
    }
    match users.maildir(user) {
        Some(maildir) => Ok((account, maildir)),
        None => unsafe_(format!("{user}: no mailbox")),
    }
}

/// The reply to `look`: where the copy is, or that there is none (also when the user has
/// no maildir to look in: the copy is then made, and refused, as before).
fn look_reply(found: Result<Option<PathBuf>, MaildirError>) -> String {
    match found {
        Ok(Some(path)) => reply(&Ok(path)),
        _ => "none\t-\n".to_string(),
    }
}

fn write_one(
    config: &Config,
    users: &LocalUsers,
    exe: &Path,
    req: &Request,
    folder: Option<&str>,
) -> Result<PathBuf, MaildirError> {
    let (account, maildir) = mailbox_of(config, users, &req.user)?;
    let groups = sys::groups_of(&account.name, account.gid).map_err(|e| MaildirError::Io(e.to_string()))?;
    let mut command = Command::new(exe);
    command
        .arg("--write-maildir")
        .arg(&maildir)
        .arg(req.return_path.to_string())
        .arg(&req.delivered_to)
        .arg(&config.hostname)
        .arg(if config.follow_maildir_symlinks { "follow" } else { "nofollow" })
        .arg(&req.name)
        .arg(folder.unwrap_or("-"))
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    sys::run_as(&mut command, account.uid, account.gid, groups);
    let io = |e: io::Error| MaildirError::Io(format!("writer for {}: {e}", req.user));
    let mut child = command.spawn().map_err(io)?;
    let mut stdin = child.stdin.take().ok_or_else(|| MaildirError::Io("writer: no pipe".into()))?;
    // A writer that fails early stops reading; its reply says why.
    let _ = stdin.write_all(&req.message);
    drop(stdin);
    let out = child.wait_with_output().map_err(io)?;
    parse_reply(&String::from_utf8_lossy(&out.stdout))
}

/// The alias user's account and groups; root is never one.
fn alias_account(config: &Config) -> Result<(sys::Account, Vec<u32>), MaildirError> {
    let name = &config.alias_user;
    let account = match sys::account_named(name) {
        Ok(Some(a)) if a.uid != 0 => a,
        Ok(Some(_)) => return Err(MaildirError::Unsafe(format!("alias_user {name} is root"))),
        Ok(None) => return Err(MaildirError::Unsafe(format!("alias_user {name}: no such user"))),
        Err(e) => return Err(MaildirError::Io(format!("alias_user {name}: {e}"))),
    };
    let groups = sys::groups_of(&account.name, account.gid).map_err(|e| MaildirError::Io(e.to_string()))?;
    Ok((account, groups))
}

/// The account and groups a `.forward`'s `|command` or `/file` (`target`) runs as: a local
/// system user's, never root's, and only when that user's `.forward`, read again here, names
/// `target`.
fn forward_account(
    config: &Config,
    users: &LocalUsers,
    user: &str,
    target: &str,
) -> Result<(sys::Account, Vec<u32>), MaildirError> {
    let (account, _) = mailbox_of(config, users, user)?;
    match read_forward(&account) {
        Ok(Forward::Text(text)) if config.forward_files && crate::alias::forward_names(&text, target) => {}
        Ok(_) => return Err(MaildirError::Unsafe(format!("`{target}` is not in ~{user}/.forward"))),
        Err(why) => return Err(MaildirError::Io(why)),
    }
    let groups = sys::groups_of(&account.name, account.gid).map_err(|e| MaildirError::Io(e.to_string()))?;
    Ok((account, groups))
}

/// Exit codes of sysexits.h that mean "try again later" (EX_OSERR, EX_IOERR, EX_TEMPFAIL).
const TEMPORARY_EXITS: [i32; 3] = [71, 74, 75];

/// An alias's `|command`, run as `alias_user` with HOME=/, or a `.forward`'s, run as its
/// user in its home (`run_piped`).
fn run_command(config: &Config, users: &LocalUsers, req: &Request) -> Result<PathBuf, MaildirError> {
    let (account, groups, home) = match req.name.as_str() {
        "-" if !users.allows_command(&req.user) => {
            return Err(MaildirError::Unsafe(format!("`|{}` is no command of the aliases", req.user)));
        }
        "-" => {
            let (account, groups) = alias_account(config)?;
            (account, groups, PathBuf::from("/"))
        }
        user => {
            let (account, groups) = forward_account(config, users, user, &format!("|{}", req.user))?;
            let home = Some(account.home.clone()).filter(|h| h.is_dir()).unwrap_or_else(|| PathBuf::from("/"));
            (account, groups, home)
        }
    };
    run_piped(config, &req.user, &account, groups, &home, req, &[])
}

/// `mailbox_command` (`local_users = system`): the configured command, never one the run
/// names, run as the recipient's own account in its home, with Postfix's variables (SENDER,
/// RECIPIENT, USER, HOME, LOCAL, DOMAIN, EXTENSION) and `run_piped`'s rules for its exit.
fn run_mailbox_command(config: &Config, users: &LocalUsers, req: &Request) -> Result<PathBuf, MaildirError> {
    let Some(command) = &config.mailbox_command else {
        return Err(MaildirError::Unsafe("no mailbox_command is configured".into()));
    };
    let (account, _) = mailbox_of(config, users, &req.user)?;
    let groups = sys::groups_of(&account.name, account.gid).map_err(|e| MaildirError::Io(e.to_string()))?;
    let home = Some(account.home.clone()).filter(|h| h.is_dir()).unwrap_or_else(|| PathBuf::from("/"));
    let (local, domain) = req.delivered_to.rsplit_once('@').unwrap_or((&req.delivered_to, ""));
    let extension = local.split_once(|c| config.recipient_delimiter.contains(c)).map_or("", |(_, e)| e);
    let vars = [("LOCAL", local), ("DOMAIN", domain), ("EXTENSION", extension)];
    run_piped(config, command, &account, groups, &home, req, &vars)
}

/// `sh -c COMMAND` as `account`, the message on its input, a clean environment (SENDER,
/// RECIPIENT, USER, LOGNAME, HOME, SHELL, a plain PATH, and `vars`), at most `alias_timeout`.
/// Exit 0 delivers; a temporary sysexits code, a signal or the timeout defers; any other
/// code bounces, with what the command printed.
fn run_piped(
    config: &Config,
    shell_command: &str,
    account: &sys::Account,
    groups: Vec<u32>,
    home: &Path,
    req: &Request,
    vars: &[(&str, &str)],
) -> Result<PathBuf, MaildirError> {
    use std::os::unix::process::ExitStatusExt;
    let sender = req.return_path.to_string();
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(shell_command)
        .env_clear()
        .envs(vars.iter().copied())
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home)
        .env("SHELL", "/bin/sh")
        .env("USER", &account.name)
        .env("LOGNAME", &account.name)
        .env("SENDER", sender.trim_start_matches('<').trim_end_matches('>'))
        .env("RECIPIENT", &req.delivered_to)
        .current_dir(home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group, so that a timeout kills what it started too.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    sys::run_as(&mut command, account.uid, account.gid, groups);
    let io = |e: io::Error| MaildirError::Io(format!("|{shell_command}: {e}"));
    let mut child = command.spawn().map_err(io)?;
    let stamp = Stamp {
        return_path: &req.return_path,
        delivered_to: &req.delivered_to,
        hostname: "",
        follow_symlinks: false,
        folder: None,
        syncs: None,
    };
    let input = crate::maildir::local_copy(&stamp, &req.message);
    let mut stdin = child.stdin.take().ok_or_else(|| MaildirError::Io("no pipe".into()))?;
    // A command that stops reading is judged by its exit, not by the broken pipe.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    // What it prints, read until its pipes close: when the command ends, or when whatever it
    // left behind (`sleep 86400 &`) ends or is killed.
    let (said_tx, said_rx) = std::sync::mpsc::channel();
    for pipe in [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        child.stderr.take().map(|p| Box::new(p) as _),
    ]
    .into_iter()
    .flatten()
    {
        let tx = said_tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(tail(pipe));
        });
    }
    drop(said_tx);
    let deadline = std::time::Instant::now() + config.alias_timeout;
    let status = loop {
        match child.try_wait().map_err(io)? {
            Some(status) => break Some(status),
            None if std::time::Instant::now() >= deadline => {
                sys::kill_group(child.id());
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    };
    // The timeout covers the command's process group and its pipes, not only the command:
    // what it left running past the deadline is killed, so it holds nothing (RFC 5321 §6.1
    // asks for the message to be delivered or reported, never held without end).
    let mut printed = Vec::new();
    let mut killed = status.is_none();
    while printed.len() < 2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match said_rx.recv_timeout(if killed { std::time::Duration::from_secs(1) } else { left }) {
            Ok(text) => printed.push(text),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !killed => {
                sys::kill_group(child.id());
                killed = true;
            }
            Err(_) => break,
        }
    }
    // The message is fed whole, or to a reader that is gone; one left behind that never
    // reads holds the feeder until the deadline, then is killed too.
    while !feeder.is_finished() && !killed {
        if std::time::Instant::now() >= deadline {
            sys::kill_group(child.id());
            killed = true;
        } else {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let _ = feeder.join();
    let said = printed.join(" ").split_whitespace().collect::<Vec<_>>().join(" ");
    let what = |how: String| if said.is_empty() { how } else { format!("{how}: {said}") };
    let name = format!("|{shell_command}");
    match status {
        None => Err(MaildirError::Io(what(format!("{name}: killed after {}s", config.alias_timeout.as_secs())))),
        Some(s) if s.success() => Ok(PathBuf::from(format!("command: {shell_command}"))),
        Some(s) => match s.code() {
            Some(code) if TEMPORARY_EXITS.contains(&code) => {
                Err(MaildirError::Io(what(format!("{name}: exit {code}"))))
            }
            Some(code) => Err(MaildirError::Refused(what(format!("{name}: exit {code}")))),
            None => Err(MaildirError::Io(what(format!("{name}: killed by signal {}", s.signal().unwrap_or(0))))),
        },
    }
}

/// The last 512 octets a pipe gave, as text.
fn tail(mut pipe: impl Read) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        if all.len() > 4096 {
            all.drain(..all.len() - 512);
        }
    }
    let start = all.len().saturating_sub(512);
    String::from_utf8_lossy(&all[start..]).into_owned()
}

/// An alias's `/file`: appended as `alias_user` by `--append-mbox`.
fn append_file(config: &Config, users: &LocalUsers, exe: &Path, req: &Request) -> Result<PathBuf, MaildirError> {
    let path = Path::new(&req.user);
    let (account, groups) = match req.name.as_str() {
        "-" if !users.allows_file(path) => {
            return Err(MaildirError::Unsafe(format!("{} is no file of the aliases", path.display())));
        }
        "-" => alias_account(config)?,
        user => forward_account(config, users, user, &req.user)?,
    };
    let mut command = Command::new(exe);
    command
        .arg("--append-mbox")
        .arg(path)
        .arg(req.return_path.to_string())
        .arg(&req.delivered_to)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    sys::run_as(&mut command, account.uid, account.gid, groups);
    let io = |e: io::Error| MaildirError::Io(format!("{}: {e}", path.display()));
    let mut child = command.spawn().map_err(io)?;
    let mut stdin = child.stdin.take().ok_or_else(|| MaildirError::Io("no pipe".into()))?;
    let _ = stdin.write_all(&req.message);
    drop(stdin);
    let out = child.wait_with_output().map_err(io)?;
    parse_reply(&String::from_utf8_lossy(&out.stdout))
}

/// `--append-mbox PATH RETURN-PATH DELIVERED-TO`: one copy appended to an mbox file, as the
/// user this process already is. The file is locked (flock and fcntl, the two locks mbox
/// readers take) for the append; a `From ` line starts the copy, body lines that start with
/// `From ` (or `>From `) gain a `>` (mboxrd), a blank line ends it; a failed append is cut
/// back off.
pub fn append_mbox(args: &[String]) -> bool {
    let result = (|| {
        let [path, return_path, delivered_to] = args else {
            return Err(MaildirError::Io("--append-mbox: wrong arguments".into()));
        };
        let return_path = match return_path.as_str() {
            "<>" => ReversePath::Null,
            other => ReversePath::parse(other.trim_start_matches('<').trim_end_matches('>').as_bytes())
                .map_err(|_| MaildirError::Io("bad return path".into()))?,
        };
        let mut message = Vec::new();
        io::stdin().read_to_end(&mut message).map_err(|e| MaildirError::Io(e.to_string()))?;
        if crate::maildir::delivered_to(&message, delivered_to) {
            return Err(MaildirError::Loop);
        }
        let stamp = Stamp {
            return_path: &return_path,
            delivered_to,
            hostname: "",
            follow_symlinks: false,
            folder: None,
            syncs: None,
        };
        let copy = crate::maildir::local_copy(&stamp, &message);
        let path = Path::new(path);
        write_mbox(path, &return_path, &copy).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => MaildirError::Full(format!("{}: {e}", path.display())),
            _ => MaildirError::Io(format!("{}: {e}", path.display())),
        })?;
        Ok(path.to_path_buf())
    })();
    let ok = result.is_ok();
    let _ = io::stdout().write_all(reply(&result).as_bytes());
    ok
}

fn write_mbox(path: &Path, sender: &ReversePath, copy: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file =
        std::fs::OpenOptions::new().append(true).create(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a plain file"));
    }
    sys::lock_for_append(&file, std::time::Duration::from_secs(60))?;
    let start = file.metadata()?.len();
    let from = match sender {
        ReversePath::Null => "MAILER-DAEMON".to_string(),
        ReversePath::Mailbox(m) => m.to_string(),
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut text = format!("From {from} {}\n", crate::trace::ctime(now)).into_bytes();
    for line in copy.split_inclusive(|&b| b == b'\n') {
        let bare = line.iter().position(|&b| b != b'>').map_or(line, |i| &line[i..]);
        if bare.starts_with(b"From ") {
            text.push(b'>');
        }
        text.extend_from_slice(line);
    }
    if !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    text.push(b'\n');
    let written = (&file).write_all(&text).and_then(|()| file.sync_data());
    if let Err(e) = written {
        let _ = file.set_len(start);
        return Err(e);
    }
    Ok(())
}

/// `--write-maildir DIR RETURN-PATH DELIVERED-TO HOSTNAME follow|nofollow NAME FOLDER|-`: one
/// copy under NAME, into the maildir's FOLDER or its inbox (`-`), as the user this process
/// already is; the reply on stdout.
pub fn write_maildir(args: &[String]) -> bool {
    let result = (|| {
        let [dir, return_path, delivered_to, hostname, follow, name, folder] = args else {
            return Err(MaildirError::Io("--write-maildir: wrong arguments".into()));
        };
        let return_path = match return_path.as_str() {
            "<>" => ReversePath::Null,
            other => ReversePath::parse(other.trim_start_matches('<').trim_end_matches('>').as_bytes())
                .map_err(|_| MaildirError::Io("bad return path".into()))?,
        };
        let mut message = Vec::new();
        io::stdin().read_to_end(&mut message).map_err(|e| MaildirError::Io(e.to_string()))?;
        let stamp = Stamp {
            return_path: &return_path,
            delivered_to,
            hostname,
            follow_symlinks: follow == "follow",
            folder: (folder != "-").then_some(folder.as_str()),
            syncs: None,
        };
        deliver_to_maildir(Path::new(dir), &stamp, name, || Ok(&message[..]))
    })();
    let ok = result.is_ok();
    let _ = io::stdout().write_all(reply(&result).as_bytes());
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_read_back() {
        for r in [
            Ok(PathBuf::from("/home/a/Maildir/new/x")),
            Err(MaildirError::Full("disk\tfull".into())),
            Err(MaildirError::Unsafe("link".into())),
            Err(MaildirError::Loop),
            Err(MaildirError::Io("gone".into())),
            Err(MaildirError::Denied("/home/a/Maildir/tmp: Permission denied".into())),
        ] {
            let back = parse_reply(&reply(&r));
            // A tab in a text would split the line: it comes back as a space.
            assert_eq!(format!("{back:?}"), format!("{r:?}").replace("\\t", " "));
        }
        assert!(parse_reply("what\n").is_err());
    }

    #[test]
    fn requests_are_read_whole_or_refused() {
        let mut ok = &b"mailbox\talice\t<a@b.test>\talice@example.test\t1.M1P1Q0.h\t3\nabcrest"[..];
        let req = read_request(&mut ok, 100).unwrap().unwrap();
        assert_eq!((req.kind.as_str(), req.user.as_str(), req.message.as_slice()), ("mailbox", "alice", &b"abc"[..]));
        assert_eq!((req.delivered_to.as_str(), req.name.as_str()), ("alice@example.test", "1.M1P1Q0.h"));
        let mut null = &b"command\t/bin/true\t<>\tbob@example.test\t-\t0\n"[..];
        assert_eq!(read_request(&mut null, 100).unwrap().unwrap().return_path, ReversePath::Null);
        for bad in [&b"mailbox\talice\t<a@b.test>\tx\t-\t9\nabc"[..], b"alice\tx\n", b"file\ta\t<>\tb\t-\t1000\n"] {
            let mut input = bad;
            assert!(read_request(&mut input, 100).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(read_request(&mut &b""[..], 100).unwrap().is_none());
    }
}
