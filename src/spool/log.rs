//! The delivery log beside a queued message (`cur/ID.log`): one appended line per attempt per recipient.
//!
//! ```text
//! 1795431945 deferred <bob@remote.test> 4.4.1 mx.remote.test[192.0.2.7]:25 connection%20refused
//! 1795433745 sent <bob@remote.test> 2.0.0 mx.remote.test[192.0.2.7]:25 250%202.0.0%20Ok
//! 1795433745 warned - 4.0.0 - delay%20warning%20sent
//! ```
//! Fields are separated by one space and %-escaped, so any text round-trips. A last line
//! without its newline was torn by a crash and is ignored.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::spool::envelope::{escape, unescape};

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Deferred,
    Bounced,
    /// A delay warning went to the sender (recipient field `-`).
    Warned,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Deferred => "deferred",
            Outcome::Bounced => "bounced",
            Outcome::Warned => "warned",
        }
    }

    fn parse(text: &str) -> Option<Outcome> {
        match text {
            "sent" => Some(Outcome::Sent),
            "deferred" => Some(Outcome::Deferred),
            "bounced" => Some(Outcome::Bounced),
            "warned" => Some(Outcome::Warned),
            _ => None,
        }
    }

    /// Sent and bounced are final; nothing more is done for that recipient.
    pub fn is_final(self) -> bool {
        matches!(self, Outcome::Sent | Outcome::Bounced)
    }
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub time: u64,
    pub outcome: Outcome,
    /// The final recipient (after alias expansion), as `<local@domain>`; `-` for a warning.
    pub recipient: String,
    /// RFC 3463 status, such as `4.4.1`.
    pub status: String,
    /// Where it went: `mx.example[192.0.2.7]:25`, `maildir`, or `-`.
    pub relay: String,
    /// The remote reply or the local reason, for the log and the bounce.
    pub text: String,
}

impl Attempt {
    pub fn to_line(&self) -> String {
        // `-` stands for an empty field; a field that is a lone dash is written escaped.
        let field = |s: &str| match s {
            "" => "-".to_string(),
            "-" => "%2D".to_string(),
            s => escape(s),
        };
        format!(
            "{} {} {} {} {} {}\n",
            self.time,
            self.outcome.name(),
            field(&self.recipient),
            field(&self.status),
            field(&self.relay),
            field(&self.text)
        )
    }

    fn parse(line: &str) -> Option<Attempt> {
        let mut f = line.split(' ');
        let time = f.next()?.parse().ok()?;
        let outcome = Outcome::parse(f.next()?)?;
        let mut text = || f.next().and_then(|t| if t == "-" { Some(String::new()) } else { unescape(t) });
        let (recipient, status, relay, text) = (text()?, text()?, text()?, text()?);
        Some(Attempt { time, outcome, recipient, status, relay, text })
    }
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
    match std::fs::read(path) {
        Ok(bytes) => Ok(parse_log(&String::from_utf8_lossy(&bytes))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// An open log, appended to and synced one line at a time; it remembers what it appended.
pub struct DeliveryLog {
    file: File,
    appended: Vec<Attempt>,
}

impl DeliveryLog {
    pub fn open(path: &Path) -> io::Result<DeliveryLog> {
        let file =
            OpenOptions::new().append(true).create(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)?;
        Ok(DeliveryLog { file, appended: Vec::new() })
    }

    /// Appends and fsyncs, so a recipient marked done is never tried again after a crash.
    pub fn append(&mut self, attempt: &Attempt) -> io::Result<()> {
        self.file.write_all(attempt.to_line().as_bytes())?;
        self.file.sync_data()?;
        self.appended.push(attempt.clone());
        Ok(())
    }

    /// The lines appended through this handle, oldest first.
    pub fn appended(&self) -> &[Attempt] {
        &self.appended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(outcome: Outcome, text: &str) -> Attempt {
        Attempt {
            time: 1_795_431_945,
            outcome,
            recipient: "<\"a b\"@remote.test>".into(),
            status: "4.4.1".into(),
            relay: "mx.remote.test[192.0.2.7]:25".into(),
            text: text.into(),
        }
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
    fn a_torn_last_line_is_ignored() {
        let whole = attempt(Outcome::Sent, "ok").to_line();
        let torn = attempt(Outcome::Bounced, "gone").to_line();
        let text = format!("{whole}{}", &torn[..torn.len() - 5]);
        assert_eq!(parse_log(&text), vec![attempt(Outcome::Sent, "ok")]);
        assert_eq!(parse_log("garbage line\n"), vec![]);
    }
}
