//! The delivery log beside a queued message (`cur/ID.log`): one appended line per attempt per recipient.
//!
//! ```text
//! 1795431945 deferred <bob@remote.test> 4.4.1 mx.remote.test[192.0.2.7]:25 connection%20refused
//! 1795433745 sent <bob@remote.test> 2.0.0 mx.remote.test[192.0.2.7]:25 250%202.0.0%20Ok
//! 1795433745 warned - 4.0.0 - delay%20warning%20sent
//! 1795433745 bounced <carol@remote.test> 5.1.1 mx.remote.test[192.0.2.7]:25 550%205.1.1%20unknown
//! 1795433745 reported - - - report%20ID2%20to%20<alice@example.test>
//! 1795433745 copying <alice@example.test> - maildir 1795433745.M5P42Q0.mail.example.test
//! 1795433800 sent <dave@secure.test> 2.0.0 mx.secure.test[192.0.2.8]:25 250%20Ok mta-sts:enforce
//! 1795440000 requeued - - - by%20the%20operator%20(uid%200)
//! ```
//! Fields are separated by one space and %-escaped, so any text round-trips. A remote
//! attempt ends with the TLS policy it was made under (`Protection`); lines written before
//! there was one have none, and read back the same. A last line
//! without its newline was torn by a crash and is ignored; the next writer cuts it off, so
//! that the line it appends is read as a line of its own. A line is at most `MAX_LINE`
//! octets (the text is cut to fit), so the space for the next lines can be reserved before
//! a delivery that they record: a full disk cannot then lose the record of a copy made.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::smtp::address::ForwardPath;
use crate::smtp::reply::EnhancedStatus;

use crate::spool::envelope::{escape, unescape};
use crate::sys;

/// The longest line `Attempt::to_line` writes.
pub const MAX_LINE: usize = 2048;

/// The TLS policy a remote attempt was made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// STARTTLS when offered, the certificate not checked.
    Opportunistic,
    /// TLS required, the certificate not checked (`relayhost_tls = encrypt`).
    Encrypt,
    /// TLS required with a certificate valid for the server's name (`relayhost_tls = verify`).
    Verify,
    /// The domain's MTA-STS policy in `enforce` mode (RFC 8461 §5).
    StsEnforce,
    /// The domain's MTA-STS policy in `testing` mode: failures logged, mail delivered.
    StsTesting,
    /// The MX host's DNSSEC-authenticated TLSA records (RFC 7672).
    Dane,
}

impl Protection {
    pub const ALL: [Protection; 6] = [
        Protection::Opportunistic,
        Protection::Encrypt,
        Protection::Verify,
        Protection::StsEnforce,
        Protection::StsTesting,
        Protection::Dane,
    ];

    /// The word the log line uses.
    pub fn name(self) -> &'static str {
        match self {
            Protection::Opportunistic => "opportunistic",
            Protection::Encrypt => "encrypt",
            Protection::Verify => "verify",
            Protection::StsEnforce => "mta-sts:enforce",
            Protection::StsTesting => "mta-sts:testing",
            Protection::Dane => "dane",
        }
    }

    fn parse(word: &str) -> Option<Protection> {
        Protection::ALL.into_iter().find(|p| p.name() == word)
    }
}

/// Room kept at the end of a line for the protection's word.
pub const PROTECTION_ROOM: usize = 24;

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Deferred,
    Bounced,
    /// A delay warning went to the sender (recipient field `-`).
    Warned,
    /// The report for every `bounced` line above this one is queued, or none is owed
    /// (recipient field `-`). Until then a bounced recipient still owes its sender a report.
    Reported,
    /// A maildir copy is being made under the name in the text field. Written before the
    /// copy and not synced: when no outcome for that recipient follows it (the run was
    /// killed), the next run looks for the name in the maildir before it copies again.
    Copying,
    /// `postern-queue requeue` (recipient field `-`): the deferrals and the delay warning
    /// above it no longer count, and the queue lifetime runs from it, as for a new message.
    Requeued,
}

impl Outcome {
    /// The word the log line uses (`sent`, `deferred`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Deferred => "deferred",
            Outcome::Bounced => "bounced",
            Outcome::Warned => "warned",
            Outcome::Reported => "reported",
            Outcome::Copying => "copying",
            Outcome::Requeued => "requeued",
        }
    }

    fn parse(text: &str) -> Option<Outcome> {
        match text {
            "sent" => Some(Outcome::Sent),
            "deferred" => Some(Outcome::Deferred),
            "bounced" => Some(Outcome::Bounced),
            "warned" => Some(Outcome::Warned),
            "reported" => Some(Outcome::Reported),
            "copying" => Some(Outcome::Copying),
            "requeued" => Some(Outcome::Requeued),
            _ => None,
        }
    }

    /// Sent and bounced are final; nothing more is done for that recipient.
    pub fn is_final(self) -> bool {
        matches!(self, Outcome::Sent | Outcome::Bounced)
    }
}

/// Where a copy went, or was to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Where {
    /// Nowhere yet: no route, or a line that is not about one recipient (`-`).
    Nowhere,
    /// Decided here without a mailbox: an unknown user, an alias loop (`local`).
    Local,
    /// A local maildir (`maildir`).
    Maildir,
    /// A server: its name and the address and port that answered (`mx.example[192.0.2.7]:25`).
    Remote { host: String, addr: SocketAddr },
    /// The LMTP server local mailboxes are handed to (`lmtp:unix:/run/dovecot/lmtp`).
    Lmtp(String),
}

impl fmt::Display for Where {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Where::Nowhere => f.write_str("-"),
            Where::Local => f.write_str("local"),
            Where::Maildir => f.write_str("maildir"),
            Where::Remote { host, addr } => write!(f, "{host}[{}]:{}", addr.ip(), addr.port()),
            Where::Lmtp(at) => f.write_str(at),
        }
    }
}

impl Where {
    /// Reads what `Display` writes; anything else is `Nowhere`, for a line's outcome counts
    /// whatever its relay field says.
    fn parse(text: &str) -> Where {
        match text {
            "local" => Where::Local,
            "maildir" => Where::Maildir,
            lmtp if lmtp.starts_with("lmtp:") => Where::Lmtp(lmtp.to_string()),
            _ => (|| {
                let (host, rest) = text.rsplit_once('[')?;
                let (ip, port) = rest.rsplit_once("]:")?;
                let addr = SocketAddr::new(ip.parse().ok()?, port.parse().ok()?);
                Some(Where::Remote { host: host.to_string(), addr })
            })()
            .unwrap_or(Where::Nowhere),
        }
    }
}

/// Whom a line is about: a final recipient after alias expansion, or the message itself.
/// Written as it always was: `<local@domain>`, `|command`, `/path`, `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Recipient {
    /// A line about the message (warned, reported).
    Message,
    /// A mailbox, local or remote: the path's text between its angle brackets.
    Address(String),
    /// The command an alias pipes to.
    Command(String),
    /// The file an alias appends to.
    File(String),
}

impl Recipient {
    /// The recipient of an envelope path (`<a@b.test>`, `<Postmaster>`).
    pub fn of_path(path: &ForwardPath) -> Recipient {
        match path {
            ForwardPath::Postmaster => Recipient::Address("Postmaster".into()),
            ForwardPath::Mailbox(m) => Recipient::Address(m.to_string()),
        }
    }

    /// The address, for a mailbox.
    pub fn address(&self) -> Option<&str> {
        match self {
            Recipient::Address(a) => Some(a),
            _ => None,
        }
    }

    /// Reads what `Display` writes; every line written before this type read back the same.
    fn parse(text: &str) -> Recipient {
        if let Some(a) = text.strip_prefix('<').and_then(|t| t.strip_suffix('>')) {
            return Recipient::Address(a.to_string());
        }
        match text.strip_prefix('|') {
            _ if text.is_empty() => Recipient::Message,
            Some(command) => Recipient::Command(command.to_string()),
            None => Recipient::File(text.to_string()),
        }
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recipient::Message => f.write_str("-"),
            Recipient::Address(a) => write!(f, "<{a}>"),
            Recipient::Command(c) => write!(f, "|{c}"),
            Recipient::File(p) => f.write_str(p),
        }
    }
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub time: u64,
    pub outcome: Outcome,
    /// The final recipient (after alias expansion), or the message (warned, reported).
    pub recipient: Recipient,
    /// RFC 3463 status; none on a `reported` line.
    pub status: Option<EnhancedStatus>,
    pub relay: Where,
    /// The remote reply or the local reason, for the log and the bounce.
    pub text: String,
    /// The TLS policy of a remote attempt; `None` for the rest, and for older lines.
    pub protection: Option<Protection>,
}

impl Attempt {
    /// A line about the message rather than one recipient.
    pub fn about_message(time: u64, outcome: Outcome, status: Option<EnhancedStatus>, text: String) -> Attempt {
        Attempt { time, outcome, recipient: Recipient::Message, status, relay: Where::Nowhere, text, protection: None }
    }

    /// The status as the log, the report and `dsn=` show it; `-` when there is none.
    pub fn status_text(&self) -> String {
        self.status.map_or_else(|| "-".to_string(), |s| s.to_string())
    }

    pub fn to_line(&self) -> String {
        // `-` stands for an empty field; a field that is a lone dash is written escaped.
        let field = |s: &str| match s {
            "" => "-".to_string(),
            "-" => "%2D".to_string(),
            s => escape(s),
        };
        // The recipient is a path of at most 256 octets (RFC 5321 §4.5.3.1.3), 768 escaped;
        // status, relay and text are cut so that the line stays within MAX_LINE.
        let recipient = match &self.recipient {
            Recipient::Message => String::new(),
            r => r.to_string(),
        };
        let mut line = format!("{} {} {} ", self.time, self.outcome.name(), field(&recipient));
        let status = self.status.map(|s| s.to_string()).unwrap_or_default();
        let relay = match &self.relay {
            Where::Nowhere => String::new(),
            other => other.to_string(),
        };
        // Status and relay are values: one that does not fit whole is left out (`-`), since a
        // cut one could read back as another (`mx[192.0.2.7]:2525` cut to `...:25`). The text
        // is prose and is cut to fit.
        for (value, share, whole) in [(&status, 16, true), (&relay, 512, true), (&self.text, MAX_LINE, false)] {
            let room = MAX_LINE.saturating_sub(line.len() + 2 + PROTECTION_ROOM).min(share);
            line += &match value.as_str() {
                "" => "-".to_string(),
                "-" => "%2D".to_string(),
                text if whole => Some(escape(text)).filter(|e| e.len() <= room).unwrap_or_else(|| "-".into()),
                text => escape_within(text, room),
            };
            line.push(' ');
        }
        if let Some(p) = self.protection {
            line += p.name();
        } else {
            line.pop();
        }
        line.push('\n');
        line
    }

    fn parse(line: &str) -> Option<Attempt> {
        let mut f = line.split(' ');
        let time = f.next()?.parse().ok()?;
        let outcome = Outcome::parse(f.next()?)?;
        let mut text = || f.next().and_then(|t| if t == "-" { Some(String::new()) } else { unescape(t) });
        let (recipient, status, relay, text) = (text()?, text()?, text()?, text()?);
        // A status that does not parse is dropped, never the line: a `sent` line must count.
        let (status, relay) = (EnhancedStatus::parse(&status), Where::parse(&relay));
        let recipient = Recipient::parse(&recipient);
        let protection = f.next().and_then(Protection::parse);
        Some(Attempt { time, outcome, recipient, status, relay, text, protection })
    }
}

/// The escaped text, cut at a character boundary so that it takes at most `room` octets
/// (a cut inside a character or an escape would make the line unreadable).
fn escape_within(text: &str, room: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let mut buf = [0u8; 4];
        let escaped = escape(c.encode_utf8(&mut buf));
        if out.len() + escaped.len() > room {
            break;
        }
        out += &escaped;
    }
    if out.is_empty() { "-".to_string() } else { out }
}

/// Reads every complete, well-formed line; a torn or garbled line is skipped.
pub fn parse_log(text: &str) -> Vec<Attempt> {
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete.lines().filter_map(Attempt::parse).collect()
}

pub fn read_log(path: &Path) -> io::Result<Vec<Attempt>> {
    read_log_if_any(path).map(Option::unwrap_or_default)
}

/// `read_log`, `None` when there is no log.
pub fn read_log_if_any(path: &Path) -> io::Result<Option<Vec<Attempt>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(parse_log(&String::from_utf8_lossy(&bytes)))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// An open log, appended to and synced one line at a time; it remembers what it appended.
/// Space for the lines still to come is reserved ahead (`reserve`) and given back on drop;
/// a log that is still empty then is removed, so a run that could write nothing leaves nothing.
/// A log opened `later` is made only when a line or a reservation needs it.
pub struct DeliveryLog {
    /// `None` until something is written or reserved (`later`).
    file: Option<File>,
    path: PathBuf,
    len: u64,
    /// The file's blocks are allocated up to here (at least `len`).
    reserved_to: u64,
    appended: Vec<Attempt>,
    /// Lines appended by `append_unsynced` that no fsync has made durable yet.
    unsynced: bool,
    /// Outcomes `remember`ed and not written yet: written before the next line or sync.
    pending: Vec<Attempt>,
    /// Removed with its message: its blocks go when it is closed, reserved ones with them.
    removed: bool,
}

impl DeliveryLog {
    /// Opens (or makes) the log at once (`open_log`: a last line a crash tore is cut off).
    pub fn open(path: &Path) -> io::Result<DeliveryLog> {
        let mut log = DeliveryLog::later(path);
        log.file()?;
        Ok(log)
    }

    /// The log, opened (or made) as `open` does when it is first written to or reserved in:
    /// a message delivered at once, whose outcomes are only `remember`ed, never has one.
    pub fn later(path: &Path) -> DeliveryLog {
        DeliveryLog {
            file: None,
            path: path.to_path_buf(),
            len: 0,
            reserved_to: 0,
            appended: Vec::new(),
            unsynced: false,
            pending: Vec::new(),
            removed: false,
        }
    }

    /// The file, opened (or made) by `open_log` the first time it is needed.
    fn file(&mut self) -> io::Result<&mut File> {
        let file = match self.file.take() {
            Some(file) => file,
            None => {
                let (file, len, unsynced) = open_log(&self.path)?;
                (self.len, self.reserved_to, self.unsynced) = (len, len, unsynced);
                file
            }
        };
        Ok(self.file.insert(file))
    }

    /// Makes sure the next `lines` appends have their space on disk, so that a delivery made
    /// after this call is always recorded. ENOSPC here means: deliver nothing now.
    pub fn reserve(&mut self, lines: usize) -> io::Result<()> {
        // Opened first: the length counted from is the file's.
        self.file()?;
        let want = self.len.saturating_add((lines as u64).saturating_mul(MAX_LINE as u64));
        let from = self.reserved_to;
        if want <= from {
            return Ok(());
        }
        if sys::reserve_space(self.file()?, from, want - from)? {
            self.reserved_to = want;
        }
        Ok(())
    }

    /// Writes one line, made in `to_line`; not synced.
    fn write_line(&mut self, attempt: &Attempt) -> io::Result<()> {
        let line = attempt.to_line();
        self.file()?.write_all(line.as_bytes())?;
        self.len += line.len() as u64;
        self.reserved_to = self.reserved_to.max(self.len);
        Ok(())
    }

    /// Writes the outcomes remembered so far, before any line that comes after them; they
    /// are then synced as appended ones are.
    fn write_pending(&mut self) -> io::Result<()> {
        for attempt in std::mem::take(&mut self.pending) {
            self.write_line(&attempt)?;
            self.unsynced = true;
        }
        Ok(())
    }

    /// Appends and fsyncs, so a recipient marked done is never tried again after a crash.
    pub fn append(&mut self, attempt: &Attempt) -> io::Result<()> {
        self.append_unsynced(attempt)?;
        self.sync()
    }

    /// Appends without an fsync: the line outlives a killed process (the page cache does),
    /// and `sync` makes it durable before the next step that must not be undone by a power
    /// cut. A finished message is removed without it (doc/queue.md, S3 -> S5).
    pub fn append_unsynced(&mut self, attempt: &Attempt) -> io::Result<()> {
        self.write_pending()?;
        self.write_line(attempt)?;
        self.appended.push(attempt.clone());
        self.unsynced = true;
        Ok(())
    }

    /// Counts an outcome among `appended` without writing it yet: for the copy a message
    /// delivered at once has under its fixed name, which a killed run's successor finds by
    /// that name (doc/queue.md, S3). Written before the next line or sync, or when the log
    /// is dropped without its message having been removed.
    pub fn remember(&mut self, attempt: &Attempt) {
        self.appended.push(attempt.clone());
        self.pending.push(attempt.clone());
    }

    /// Makes the lines appended so far durable (one fdatasync, none when they are).
    pub fn sync(&mut self) -> io::Result<()> {
        self.write_pending()?;
        if self.unsynced {
            self.file()?.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Whether this log's file was opened (or made) by this run.
    pub fn made(&self) -> bool {
        self.file.is_some()
    }

    /// The log was removed with its message: what it holds needs no fsync any more, and
    /// its reserved space needs no giving back (a truncation is a discard on a filesystem
    /// mounted with `discard`, and the close frees every block anyway).
    pub fn removed(&mut self) {
        self.removed = true;
    }

    /// Appends a `copying` line without a sync: it must outlive a killed run, which the
    /// page cache does, not a power cut, after which a copy may be made twice (doc/queue.md).
    /// It takes reserved space, like any line, and is not among `appended`.
    pub fn note(&mut self, attempt: &Attempt) -> io::Result<()> {
        self.write_pending()?;
        self.write_line(attempt)
    }

    /// The lines appended through this handle, oldest first.
    pub fn appended(&self) -> &[Attempt] {
        &self.appended
    }
}

/// Opens (or makes) a log for appending: the file, the length it is kept to, and whether
/// that length was cut (a last line a crash tore, with no newline, is cut off: it is not
/// read, `parse_log`, and the next line appended must not be joined to it; the cut is made
/// durable by that line's fdatasync, which writes over what was cut).
fn open_log(path: &Path) -> io::Result<(File, u64, bool)> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut len = file.metadata()?.len();
    // Only its last octet is read, unless that is not a line end.
    let mut last = [b'\n'];
    if len > 0 {
        file.read_exact_at(&mut last, len - 1)?;
    }
    let cut = last[0] != b'\n';
    if cut {
        let mut text = Vec::new();
        file.read_to_end(&mut text)?;
        len = text.iter().rposition(|&b| b == b'\n').map_or(0, |at| at as u64 + 1);
        file.set_len(len)?;
    }
    Ok((file, len, cut))
}

impl Drop for DeliveryLog {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // Left by an error before its sync: made durable as its append would have been.
        let _ = self.write_pending();
        let Some(file) = &self.file else { return };
        if self.unsynced {
            let _ = file.sync_data();
        }
        if self.len == 0 {
            let _ = std::fs::remove_file(&self.path);
        } else if self.reserved_to > self.len {
            // Truncating to the same size frees the blocks reserved past the end.
            let _ = file.set_len(self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(outcome: Outcome, text: &str) -> Attempt {
        Attempt {
            time: 1_795_431_945,
            outcome,
            recipient: Recipient::Address("\"a b\"@remote.test".into()),
            status: Some(EnhancedStatus(4, 4, 1)),
            relay: Where::Remote { host: "mx.remote.test".into(), addr: "192.0.2.7:25".parse().unwrap() },
            text: text.into(),
            protection: None,
        }
    }

    /// An empty directory of the test's own (`tag`), and the path of a log in it.
    fn scratch(tag: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("postern-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("X.log");
        (dir, path)
    }

    #[test]
    fn lines_round_trip_any_text() {
        for text in ["", "250 2.0.0 Ok", "550 5.1.1 x\u{0}y\u{1b}[31m\r\nrcpt: <evil@x>", "100% sure"] {
            let a = attempt(Outcome::Deferred, text);
            let line = a.to_line();
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            assert_eq!(parse_log(&line), vec![a]);
        }
    }

    #[test]
    fn every_kind_of_recipient_round_trips_and_old_lines_read_the_same() {
        let old = "1795431945 sent <bob@remote.test> 2.0.0 mx.remote.test[192.0.2.7]:25 250%20Ok\n\
                   1795431945 bounced |/usr/bin/procmail%20-a%20x 5.3.0 local exit%2067\n\
                   1795431945 sent /var/mail/archive 2.0.0 local appended\n\
                   1795431945 reported - - - report%20ID2\n\
                   1795431945 sent <-@b.test> 2.0.0 maildir x\n";
        let read: Vec<Recipient> = parse_log(old).into_iter().map(|a| a.recipient).collect();
        assert_eq!(
            read,
            [
                Recipient::Address("bob@remote.test".into()),
                Recipient::Command("/usr/bin/procmail -a x".into()),
                Recipient::File("/var/mail/archive".into()),
                Recipient::Message,
                Recipient::Address("-@b.test".into()),
            ]
        );
        let rewritten: String = parse_log(old).iter().map(Attempt::to_line).collect();
        assert_eq!(rewritten, old, "the lines are written as they always were");
        for r in [Recipient::Address("Postmaster".into()), Recipient::File("-".into()), Recipient::Command("-".into())]
        {
            let a = Attempt { recipient: r.clone(), ..attempt(Outcome::Sent, "x") };
            assert_eq!(parse_log(&a.to_line())[0].recipient, r);
        }
        assert_eq!(Recipient::of_path(&ForwardPath::Postmaster), Recipient::Address("Postmaster".into()));
    }

    #[test]
    fn every_place_round_trips() {
        for relay in [
            Where::Nowhere,
            Where::Local,
            Where::Maildir,
            Where::Remote { host: "mx.b.test".into(), addr: "[2001:db8::1]:2525".parse().unwrap() },
            Where::Remote { host: "[192.0.2.9]".into(), addr: "192.0.2.9:25".parse().unwrap() },
        ] {
            for status in [None, Some(EnhancedStatus(5, 1, 10))] {
                let a = Attempt { relay: relay.clone(), status, ..attempt(Outcome::Bounced, "x") };
                assert_eq!(parse_log(&a.to_line()), vec![a]);
            }
        }
        let old = "1 sent <a@b.test> 2.0.0 weird%20relay x\n";
        assert_eq!(parse_log(old)[0].relay, Where::Nowhere, "an unknown place still leaves the line");
        assert_eq!(parse_log("1 sent <a@b.test> 9.9 - x\n")[0].status, None);
    }

    #[test]
    fn the_tls_policy_ends_a_remote_line_and_old_lines_have_none() {
        for p in Protection::ALL {
            for text in ["250 Ok", &"x".repeat(5000)] {
                let a = Attempt { protection: Some(p), ..attempt(Outcome::Sent, text) };
                let line = a.to_line();
                assert!(line.len() <= MAX_LINE && line.ends_with(&format!(" {}\n", p.name())), "{line}");
                let back = &parse_log(&line)[0];
                assert_eq!((back.protection, back.relay.clone()), (Some(p), a.relay.clone()));
                assert!(text.starts_with(&back.text));
            }
        }
        let old = "1 sent <a@b.test> 2.0.0 mx[192.0.2.1]:25 250%20Ok\n";
        assert_eq!(parse_log(old)[0].protection, None);
        let unknown = "1 sent <a@b.test> 2.0.0 mx[192.0.2.1]:25 250%20Ok some-later-policy\n";
        assert_eq!((parse_log(unknown)[0].protection, parse_log(unknown)[0].text.as_str()), (None, "250 Ok"));
    }

    #[test]
    fn a_relay_that_does_not_fit_is_left_out_not_cut() {
        let host = "h".repeat(500);
        let relay = Where::Remote { host, addr: "192.0.2.7:2525".parse().unwrap() };
        let a = Attempt { relay, ..attempt(Outcome::Deferred, "x") };
        assert!(a.relay.to_string().len() > 512 && a.relay.to_string().len() <= 520);
        assert_eq!(parse_log(&a.to_line())[0].relay, Where::Nowhere);
        let fits =
            Attempt { relay: Where::Remote { host: "h".repeat(400), addr: "192.0.2.7:2525".parse().unwrap() }, ..a };
        assert_eq!(parse_log(&fits.to_line())[0].relay, fits.relay);
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let whole = attempt(Outcome::Sent, "ok").to_line();
        let torn = attempt(Outcome::Bounced, "gone").to_line();
        let text = format!("{whole}{}", &torn[..torn.len() - 5]);
        assert_eq!(parse_log(&text), vec![attempt(Outcome::Sent, "ok")]);
        assert_eq!(parse_log("garbage line\n"), vec![]);
    }

    #[test]
    fn a_line_appended_after_a_torn_one_stays_whole() {
        let path = std::env::temp_dir().join(format!("postern-torn-log-{}", std::process::id()));
        let whole = attempt(Outcome::Sent, "ok").to_line();
        let torn = attempt(Outcome::Bounced, "gone").to_line();
        // A power cut can also leave the file longer than what was written, the end zeros.
        for tail in [&torn.as_bytes()[..torn.len() - 5], b"\0\0\0\0"] {
            std::fs::write(&path, [whole.as_bytes(), tail].concat()).unwrap();
            let mut log = DeliveryLog::open(&path).unwrap();
            log.append(&attempt(Outcome::Deferred, "later")).unwrap();
            drop(log);
            let read = read_log(&path).unwrap();
            assert_eq!(read, vec![attempt(Outcome::Sent, "ok"), attempt(Outcome::Deferred, "later")]);
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn long_texts_are_cut_to_a_readable_line() {
        for text in ["x".repeat(5000), "\u{e9}".repeat(3000), "%".repeat(3000), format!("a{}", "\u{1F600}".repeat(900))]
        {
            let a = attempt(Outcome::Bounced, &text);
            let line = a.to_line();
            assert!(line.len() <= MAX_LINE, "{} octets", line.len());
            let back = parse_log(&line);
            assert_eq!(back.len(), 1, "{line}");
            assert!(text.starts_with(&back[0].text) && back[0].text.len() > 100);
        }
    }

    #[test]
    fn an_empty_log_is_not_left_behind_and_reserved_space_is_returned() {
        use std::os::unix::fs::MetadataExt;
        let (dir, path) = scratch("log");
        let mut log = DeliveryLog::open(&path).unwrap();
        log.reserve(100).unwrap();
        drop(log);
        assert!(!path.exists(), "nothing was appended, so no file");
        let mut log = DeliveryLog::open(&path).unwrap();
        log.reserve(100).unwrap();
        log.append(&attempt(Outcome::Sent, "ok")).unwrap();
        drop(log);
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.blocks() * 512 <= 8192, "{} blocks still allocated", meta.blocks());
        assert_eq!(read_log(&path).unwrap(), vec![attempt(Outcome::Sent, "ok")]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_log_removed_with_its_message_is_closed_as_it_is() {
        use std::os::unix::fs::MetadataExt;
        let (dir, path) = scratch("log-removed");
        let mut log = DeliveryLog::open(&path).unwrap();
        log.reserve(100).unwrap();
        log.append_unsynced(&attempt(Outcome::Sent, "ok")).unwrap();
        // A second name, kept here, shows what the close does to the file once its own is gone.
        let kept = dir.join("kept");
        std::fs::hard_link(&path, &kept).unwrap();
        std::fs::remove_file(&path).unwrap();
        log.removed();
        let reserved = std::fs::metadata(&kept).unwrap().blocks();
        drop(log);
        assert!(!path.exists(), "not made again");
        let meta = std::fs::metadata(&kept).unwrap();
        if reserved * 512 > 8192 {
            // Where space can be reserved at all: nothing was cut off, since the close frees it.
            assert_eq!(meta.blocks(), reserved);
        }
        assert_eq!(read_log(&kept).unwrap(), vec![attempt(Outcome::Sent, "ok")]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_log_opened_later_is_made_only_for_a_line_that_must_be_kept() {
        let (dir, path) = scratch("log-later");
        // Delivered at once: the outcome is remembered, the message removed, no file made.
        let mut log = DeliveryLog::later(&path);
        log.remember(&attempt(Outcome::Sent, "ok"));
        assert_eq!(log.appended(), &[attempt(Outcome::Sent, "ok")]);
        log.removed();
        drop(log);
        assert!(!path.exists());
        // Let go without the removal (it failed): what was remembered is written.
        let mut log = DeliveryLog::later(&path);
        log.remember(&attempt(Outcome::Sent, "ok"));
        drop(log);
        assert_eq!(read_log(&path).unwrap(), vec![attempt(Outcome::Sent, "ok")]);
        // A line appended after a remembered one comes after it in the file.
        std::fs::remove_file(&path).unwrap();
        let mut log = DeliveryLog::later(&path);
        log.remember(&attempt(Outcome::Sent, "first"));
        log.append(&attempt(Outcome::Deferred, "second")).unwrap();
        drop(log);
        let read = read_log(&path).unwrap();
        assert_eq!(read, vec![attempt(Outcome::Sent, "first"), attempt(Outcome::Deferred, "second")]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
