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
//! Requests and replies are one line each, fields split by tabs:
//! `USER<TAB>RETURN-PATH<TAB>DELIVERED-TO<TAB>SIZE` then SIZE octets of message;
//! `ok<TAB>PATH` or `err<TAB>full|unsafe|loop|io<TAB>TEXT`.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use crate::alias::LocalUsers;
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
    let args = match config.path() {
        Some(path) => vec!["-c".into(), path.into()],
        None => vec!["--builtin-config".into()],
    };
    Ok((exe, args))
}

impl Writer {
    /// Starts the helper; called as root, before root is given up.
    pub fn start(config: &Config) -> io::Result<Writer> {
        let (exe, args) = program(config)?;
        let mut child =
            Command::new(exe).args(args).arg("--local-writer").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(io::Error::other("local writer: no pipes"));
        };
        Ok(Writer { inner: Mutex::new(Helper { child, input: Some(input), output: BufReader::new(output) }) })
    }

    /// One copy into `user`'s maildir, written as `user`.
    pub fn write(
        &self,
        user: &str,
        return_path: &ReversePath,
        delivered_to: &str,
        message: &[u8],
    ) -> Result<PathBuf, MaildirError> {
        let mut helper = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let helper = &mut *helper;
        let request = format!("{user}\t{return_path}\t{delivered_to}\t{}\n", message.len());
        let Some(input) = helper.input.as_mut() else { return Err(MaildirError::Io("local writer: closed".into())) };
        let sent = input.write_all(request.as_bytes()).and_then(|()| input.write_all(message));
        sent.and_then(|()| input.flush()).map_err(|e| MaildirError::Io(format!("local writer for {user}: {e}")))?;
        let mut line = String::new();
        match helper.output.read_line(&mut line) {
            Ok(n) if n > 0 => parse_reply(&line),
            Ok(_) => Err(MaildirError::Io(format!("local writer for {user}: it stopped"))),
            Err(e) => Err(MaildirError::Io(format!("local writer for {user}: {e}"))),
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
    }
}

fn parse_reply(line: &str) -> Result<PathBuf, MaildirError> {
    let mut fields = line.trim_end_matches('\n').splitn(3, '\t');
    match (fields.next(), fields.next(), fields.next()) {
        (Some("ok"), Some(path), None) => Ok(PathBuf::from(path)),
        (Some("err"), Some("full"), Some(t)) => Err(MaildirError::Full(t.to_string())),
        (Some("err"), Some("unsafe"), Some(t)) => Err(MaildirError::Unsafe(t.to_string())),
        (Some("err"), Some("loop"), _) => Err(MaildirError::Loop),
        (Some("err"), Some(_), Some(t)) => Err(MaildirError::Io(t.to_string())),
        _ => Err(MaildirError::Io(format!("local writer: unreadable reply `{}`", line.trim()))),
    }
}

/// One request as the helper reads it.
struct Request {
    user: String,
    return_path: ReversePath,
    delivered_to: String,
    message: Vec<u8>,
}

fn read_request(input: &mut impl BufRead, max: u64) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("bad request: {what}"));
    let fields: Vec<&str> = line.trim_end_matches('\n').split('\t').collect();
    let [user, return_path, delivered_to, size] = fields[..] else { return Err(bad("fields")) };
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
    Ok(Some(Request { user: user.to_string(), return_path, delivered_to: delivered_to.to_string(), message }))
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
        let result = write_one(config, &users, &exe, &req);
        output.write_all(reply(&result).as_bytes()).and_then(|()| output.flush()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn write_one(config: &Config, users: &LocalUsers, exe: &Path, req: &Request) -> Result<PathBuf, MaildirError> {
    let unsafe_ = |why: String| Err(MaildirError::Unsafe(why));
    let account = match sys::account_named(&req.user) {
        Ok(Some(a)) => a,
        Ok(None) => return unsafe_(format!("{}: no such account", req.user)),
        Err(e) => return Err(MaildirError::Io(format!("{}: {e}", req.user))),
    };
    if account.uid == 0 {
        return unsafe_(format!("{}: never delivered as root", req.user));
    }
    let Some(maildir) = users.maildir(&req.user) else { return unsafe_(format!("{}: no mailbox", req.user)) };
    let groups = sys::groups_of(&account.name, account.gid).map_err(|e| MaildirError::Io(e.to_string()))?;
    let mut command = Command::new(exe);
    command
        .arg("--write-maildir")
        .arg(&maildir)
        .arg(req.return_path.to_string())
        .arg(&req.delivered_to)
        .arg(&config.hostname)
        .arg(if config.follow_maildir_symlinks { "follow" } else { "nofollow" })
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

/// `--write-maildir DIR RETURN-PATH DELIVERED-TO HOSTNAME follow|nofollow`: one copy, as the
/// user this process already is; the reply on stdout.
pub fn write_maildir(args: &[String]) -> bool {
    let result = (|| {
        let [dir, return_path, delivered_to, hostname, follow] = args else {
            return Err(MaildirError::Io("--write-maildir: wrong arguments".into()));
        };
        let return_path = match return_path.as_str() {
            "<>" => ReversePath::Null,
            other => ReversePath::parse(other.trim_start_matches('<').trim_end_matches('>').as_bytes())
                .map_err(|_| MaildirError::Io("bad return path".into()))?,
        };
        let mut message = Vec::new();
        io::stdin().read_to_end(&mut message).map_err(|e| MaildirError::Io(e.to_string()))?;
        let stamp = Stamp { return_path: &return_path, delivered_to, hostname, follow_symlinks: follow == "follow" };
        deliver_to_maildir(Path::new(dir), &stamp, || Ok(&message[..]))
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
        ] {
            let back = parse_reply(&reply(&r));
            // A tab in a text would split the line: it comes back as a space.
            assert_eq!(format!("{back:?}"), format!("{r:?}").replace("\\t", " "));
        }
        assert!(parse_reply("what\n").is_err());
    }

    #[test]
    fn requests_are_read_whole_or_refused() {
        let mut ok = &b"alice\t<a@b.test>\talice@example.test\t3\nabcrest"[..];
        let req = read_request(&mut ok, 100).unwrap().unwrap();
        assert_eq!(
            (req.user.as_str(), req.message.as_slice(), req.delivered_to.as_str()),
            ("alice", &b"abc"[..], "alice@example.test")
        );
        let mut null = &b"bob\t<>\tbob@example.test\t0\n"[..];
        assert_eq!(read_request(&mut null, 100).unwrap().unwrap().return_path, ReversePath::Null);
        for bad in [&b"alice\t<a@b.test>\tx\t9\nabc"[..], b"alice\tx\n", b"a\t<>\tb\t1000\n"] {
            let mut input = bad;
            assert!(read_request(&mut input, 100).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(read_request(&mut &b""[..], 100).unwrap().is_none());
    }
}
