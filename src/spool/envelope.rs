//! The envelope block at the head of a spool file: plain `key: value` lines, a blank line, then the message.
//!
//! ```text
//! postern-envelope 1
//! arrived: 1795000000
//! client: 127.0.0.1
//! helo: client.example
//! protocol: ESMTP
//! body: 8bitmime
//! smtputf8: no
//! auth: alice
//! submitted: yes
//! quarantine: yes
//! from: <a@b.example>
//! rcpt: <c@d.example>
//! size: 000000000004096
//! check: 5a0c2f13
//!
//! ```
//! Keys come in this order; the loader is strict. `auth` (the user who logged in, RFC 4954)
//! and `submitted` (mail of our own users: authenticated, trusted or local, which delivery
//! signs) appear only when they apply, and so does `quarantine` (a stranger's message that
//! failed its author domain's DMARC policy of quarantine, RFC 7489 §6.3, or one a milter
//! marked as spam: delivered into the recipient's Junk folder, and never the cause of a report). `size` is fixed-width so it can be
//! written last, once the message is complete, and it lets a truncated file be found. `check`
//! (fixed-width too, written with `size`) is the CRC-32C of the queue ID followed by the message:
//! it lets a file be found whose blocks a power cut left unwritten or stale (doc/queue.md, "S1 ->
//! S2"). Files written before it existed have none.

use std::net::IpAddr;

use crate::smtp::address::{ForwardPath, ReversePath};
use crate::smtp::command::BodyType;

const MAGIC: &str = "postern-envelope 1";
const SIZE_DIGITS: usize = 15;
/// From the size digits to the check digits: the digits, a newline and `check: `.
pub const CHECK_AFTER_SIZE: usize = SIZE_DIGITS + "\ncheck: ".len();
/// Enough for thousands of recipients; a longer head is not ours.
pub const MAX_HEAD: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Seconds since 1970.
    pub arrived: u64,
    /// The peer; `None` for local submission or an unknown peer.
    pub client: Option<IpAddr>,
    /// The HELO/EHLO name, printable ASCII.
    pub helo: Option<String>,
    /// RFC 3848 protocol name: SMTP, ESMTP, ESMTPS, or LOCAL.
    pub protocol: String,
    pub body: BodyType,
    pub smtputf8: bool,
    /// The authenticated user, when the client logged in.
    pub auth: Option<String>,
    /// Our own users' mail (authenticated, trusted network, local), not mail that arrived for us.
    pub submitted: bool,
    /// Taken, but for the recipient's Junk folder (DMARC quarantine, or spam a milter marked);
    /// no report is sent for it.
    pub quarantine: bool,
    pub from: ReversePath,
    pub rcpts: Vec<ForwardPath>,
    /// Octets of message after the blank line.
    pub size: u64,
    /// The CRC-32C of the queue ID and the message, when the file has one.
    pub check: Option<u32>,
}

/// Why an envelope block could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    NoEnd,
    BadMagic,
    /// Line number (1-based) and what was expected there.
    BadLine(usize, &'static str),
}

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvelopeError::NoEnd => f.write_str("envelope has no blank line"),
            EnvelopeError::BadMagic => f.write_str("not a postern spool file"),
            EnvelopeError::BadLine(n, want) => write!(f, "envelope line {n}: expected {want}"),
        }
    }
}

impl Envelope {
    /// A local submission's envelope (`sendmail`): no peer, protocol `LOCAL`; the size is
    /// set when it is written.
    pub fn local(arrived: u64, from: ReversePath, rcpts: Vec<ForwardPath>, body: BodyType, smtputf8: bool) -> Envelope {
        Envelope {
            arrived,
            client: None,
            helo: None,
            protocol: "LOCAL".into(),
            body,
            smtputf8,
            auth: None,
            submitted: true,
            quarantine: false,
            from,
            rcpts,
            size: 0,
            check: None,
        }
    }

    /// The envelope block as it is (a `check:` line when it has a check), and the offset of
    /// the size digits in it.
    pub fn to_text(&self) -> (String, usize) {
        self.text(self.check)
    }

    /// The envelope block of a draft: its `check:` always there, filled in at the commit with
    /// the size, `CHECK_AFTER_SIZE` octets after the size digits.
    pub fn draft_text(&self) -> (String, usize) {
        self.text(Some(self.check.unwrap_or(0)))
    }

    fn text(&self, check: Option<u32>) -> (String, usize) {
        let mut t = format!("{MAGIC}\narrived: {}\n", self.arrived);
        let client = self.client.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
        t += &format!("client: {client}\nhelo: {}\n", escape(self.helo.as_deref().unwrap_or("")));
        t += &format!("protocol: {}\nbody: {}\n", self.protocol, body_name(self.body));
        t += &format!("smtputf8: {}\n", if self.smtputf8 { "yes" } else { "no" });
        if let Some(user) = &self.auth {
            t += &format!("auth: {}\n", escape(user));
        }
        if self.submitted {
            t += "submitted: yes\n";
        }
        if self.quarantine {
            t += "quarantine: yes\n";
        }
        t += &format!("from: {}\n", self.from);
        for r in &self.rcpts {
            t += &format!("rcpt: {r}\n");
        }
        t += "size: ";
        let offset = t.len();
        match check {
            Some(check) => t += &Self::size_and_check(self.size, check),
            None => t += &format!("{:0width$}", self.size, width = SIZE_DIGITS),
        }
        t += "\n\n";
        (t, offset)
    }

    /// What follows `size: ` in a draft's envelope, written over its place at the commit:
    /// the size digits, then the check's line without its newline (`CHECK_AFTER_SIZE` octets
    /// from the size digits to the check digits).
    pub fn size_and_check(size: u64, check: u32) -> String {
        format!("{size:0SIZE_DIGITS$}\ncheck: {check:08x}")
    }

    /// Reads an envelope from the head of a spool file; returns it and the head length.
    pub fn parse(file: &[u8]) -> Result<(Envelope, usize), EnvelopeError> {
        let head_end = find_blank_line(file).ok_or(EnvelopeError::NoEnd)?;
        let head = std::str::from_utf8(&file[..head_end]).map_err(|_| EnvelopeError::BadLine(0, "UTF-8"))?;
        let mut lines = head.lines().enumerate().map(|(i, l)| (i + 1, l)).peekable();
        if lines.next().map(|(_, l)| l) != Some(MAGIC) {
            return Err(EnvelopeError::BadMagic);
        }
        let mut field = |key: &'static str| -> Result<(usize, &str), EnvelopeError> {
            let (n, line) = lines.next().ok_or(EnvelopeError::BadLine(0, key))?;
            let value =
                line.strip_prefix(key).and_then(|r| r.strip_prefix(": ")).ok_or(EnvelopeError::BadLine(n, key))?;
            Ok((n, value))
        };
        let (n, v) = field("arrived")?;
        let arrived = v.parse().map_err(|_| EnvelopeError::BadLine(n, "arrived"))?;
        let (n, v) = field("client")?;
        let client =
            if v == "unknown" { None } else { Some(v.parse().map_err(|_| EnvelopeError::BadLine(n, "client"))?) };
        let (n, v) = field("helo")?;
        let helo = unescape(v).ok_or(EnvelopeError::BadLine(n, "helo"))?;
        let helo = (!helo.is_empty()).then_some(helo);
        let (n, v) = field("protocol")?;
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(EnvelopeError::BadLine(n, "protocol"));
        }
        let protocol = v.to_string();
        let (n, v) = field("body")?;
        let body = parse_body(v).ok_or(EnvelopeError::BadLine(n, "body"))?;
        let (n, v) = field("smtputf8")?;
        let smtputf8 = match v {
            "yes" => true,
            "no" => false,
            _ => return Err(EnvelopeError::BadLine(n, "smtputf8")),
        };
        let mut optional = |key: &str| match lines.peek() {
            Some(&(n, l)) => match l.strip_prefix(key).and_then(|r| r.strip_prefix(": ")) {
                Some(v) => {
                    lines.next();
                    Some((n, v))
                }
                None => None,
            },
            None => None,
        };
        let auth = match optional("auth") {
            Some((n, v)) => Some(unescape(v).filter(|u| !u.is_empty()).ok_or(EnvelopeError::BadLine(n, "auth"))?),
            None => None,
        };
        let submitted = match optional("submitted") {
            Some((_, "yes")) => true,
            Some((n, _)) => return Err(EnvelopeError::BadLine(n, "submitted")),
            None => false,
        };
        let quarantine = match optional("quarantine") {
            Some((_, "yes")) => true,
            Some((n, _)) => return Err(EnvelopeError::BadLine(n, "quarantine")),
            None => false,
        };
        let mut field = |key: &'static str| -> Result<(usize, &str), EnvelopeError> {
            let (n, line) = lines.next().ok_or(EnvelopeError::BadLine(0, key))?;
            let value =
                line.strip_prefix(key).and_then(|r| r.strip_prefix(": ")).ok_or(EnvelopeError::BadLine(n, key))?;
            Ok((n, value))
        };
        let (n, v) = field("from")?;
        let from = parse_bracketed(v, ReversePath::parse).ok_or(EnvelopeError::BadLine(n, "from"))?;
        let mut rcpts = Vec::new();
        while let Some((n, v)) = lines.peek().and_then(|&(n, l)| l.strip_prefix("rcpt: ").map(|v| (n, v))) {
            rcpts.push(parse_bracketed(v, ForwardPath::parse).ok_or(EnvelopeError::BadLine(n, "rcpt"))?);
            lines.next();
        }
        let (n, v) = lines
            .next()
            .and_then(|(n, l)| l.strip_prefix("size: ").map(|v| (n, v)))
            .ok_or(EnvelopeError::BadLine(0, "size"))?;
        let size = v.parse().map_err(|_| EnvelopeError::BadLine(n, "size"))?;
        let check = match lines.peek().and_then(|&(n, l)| l.strip_prefix("check: ").map(|v| (n, v))) {
            Some((n, v)) => {
                lines.next();
                if v.len() != 8 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(EnvelopeError::BadLine(n, "check"));
                }
                Some(u32::from_str_radix(v, 16).map_err(|_| EnvelopeError::BadLine(n, "check"))?)
            }
            None => None,
        };
        if let Some((n, _)) = lines.next() {
            return Err(EnvelopeError::BadLine(n, "blank line"));
        }
        if rcpts.is_empty() {
            return Err(EnvelopeError::BadLine(0, "rcpt"));
        }
        let envelope = Envelope {
            arrived,
            client,
            helo,
            protocol,
            body,
            smtputf8,
            auth,
            submitted,
            quarantine,
            from,
            rcpts,
            size,
            check,
        };
        Ok((envelope, head_end + 1))
    }
}

fn find_blank_line(file: &[u8]) -> Option<usize> {
    let limit = file.len().min(MAX_HEAD);
    file[..limit].windows(2).position(|w| w == b"\n\n").map(|i| i + 1)
}

fn parse_bracketed<T, E>(v: &str, parse: impl Fn(&[u8]) -> Result<T, E>) -> Option<T> {
    let inner = v.strip_prefix('<')?.strip_suffix('>')?;
    parse(inner.as_bytes()).ok()
}

fn body_name(body: BodyType) -> &'static str {
    match body {
        BodyType::SevenBit => "7bit",
        BodyType::EightBitMime => "8bitmime",
    }
}

fn parse_body(v: &str) -> Option<BodyType> {
    match v {
        "7bit" => Some(BodyType::SevenBit),
        "8bitmime" => Some(BodyType::EightBitMime),
        _ => None,
    }
}

/// `%XX` for every byte that is not printable ASCII, and for `%` itself.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b));
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

pub fn unescape(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            arrived: 1_795_000_000,
            client: Some("127.0.0.1".parse().unwrap()),
            helo: Some("client.test".into()),
            protocol: "ESMTP".into(),
            body: BodyType::EightBitMime,
            smtputf8: false,
            auth: None,
            submitted: false,
            quarantine: false,
            from: ReversePath::parse(b"a@b.test").unwrap(),
            rcpts: vec![ForwardPath::parse(b"c@d.test").unwrap(), ForwardPath::Postmaster],
            size: 42,
            check: Some(0x5a0c_2f13),
        }
    }

    #[test]
    fn round_trip() {
        let env = sample();
        let (text, offset) = env.to_text();
        assert_eq!(&text[offset..offset + 15], "000000000000042");
        assert_eq!(&text[offset + CHECK_AFTER_SIZE..offset + CHECK_AFTER_SIZE + 8], "5a0c2f13");
        let mut file = text.clone().into_bytes();
        file.extend_from_slice(b"message");
        assert_eq!(Envelope::parse(&file), Ok((env, text.len())));
    }

    #[test]
    fn a_file_from_before_the_check_has_none_and_a_bad_check_is_refused() {
        let (text, _) = sample().to_text();
        let old = text.replace("check: 5a0c2f13\n", "");
        let read = Envelope::parse(old.as_bytes()).unwrap().0;
        assert_eq!(read, Envelope { check: None, ..sample() });
        assert_eq!(read.to_text().0, old, "written back as it was");
        assert!(read.draft_text().0.contains("\nsize: 000000000000042\ncheck: 00000000\n\n"));
        for bad in ["check: 5a0c2f1", "check: 5a0c2f1x", "check: +a0c2f13"] {
            let broken = text.replace("check: 5a0c2f13", bad);
            assert_eq!(Envelope::parse(broken.as_bytes()), Err(EnvelopeError::BadLine(12, "check")), "{bad}");
        }
    }

    #[test]
    fn null_sender_and_no_helo_round_trip() {
        let env = Envelope { from: ReversePath::Null, helo: None, client: None, ..sample() };
        let (text, _) = env.to_text();
        assert_eq!(Envelope::parse(text.as_bytes()).unwrap().0, env);
    }

    #[test]
    fn the_user_and_the_submitted_mark_round_trip() {
        let env = Envelope { auth: Some("alice@example.test".into()), submitted: true, ..sample() };
        let (text, _) = env.to_text();
        assert!(
            text.contains("\nsmtputf8: no\nauth: alice@example.test\nsubmitted: yes\nfrom: <a@b.test>\n"),
            "{text}"
        );
        assert_eq!(Envelope::parse(text.as_bytes()).unwrap().0, env);
        let junk = Envelope { quarantine: true, ..sample() };
        let (text, _) = junk.to_text();
        assert!(text.contains("\nsmtputf8: no\nquarantine: yes\nfrom: <a@b.test>\n"), "{text}");
        assert_eq!(Envelope::parse(text.as_bytes()).unwrap().0, junk);
        let bad = text.replace("quarantine: yes", "quarantine: no");
        assert_eq!(Envelope::parse(bad.as_bytes()), Err(EnvelopeError::BadLine(8, "quarantine")));
        let odd = Envelope { auth: Some("x\nrcpt: <evil@x.test>".into()), ..sample() };
        let (text, _) = odd.to_text();
        assert_eq!(Envelope::parse(text.as_bytes()).unwrap().0, odd, "{text}");
        let bad = sample().to_text().0.replace("from:", "submitted: no\nfrom:");
        assert!(Envelope::parse(bad.as_bytes()).is_err());
    }

    #[test]
    fn reads_as_plain_text() {
        let (text, _) = sample().to_text();
        assert!(text.contains("\nfrom: <a@b.test>\nrcpt: <c@d.test>\nrcpt: <Postmaster>\n"), "{text}");
    }

    #[test]
    fn strict_loader() {
        let (text, _) = sample().to_text();
        let broken = text.replace("rcpt: <c@d.test>", "rcpt: c@d.test");
        assert_eq!(Envelope::parse(broken.as_bytes()), Err(EnvelopeError::BadLine(9, "rcpt")));
        let injected = text.replace("helo: client.test", "helo: x\nrcpt: <evil@x.test>");
        assert!(Envelope::parse(injected.as_bytes()).is_err());
        assert_eq!(Envelope::parse(b"hello\n\n"), Err(EnvelopeError::BadMagic));
        assert_eq!(Envelope::parse(b"postern-envelope 1\n"), Err(EnvelopeError::NoEnd));
    }

    #[test]
    fn escaping_round_trips_any_text() {
        for s in ["", "a b", "100%", "x\r\ny\0z", "ünï"] {
            assert_eq!(unescape(&escape(s)).as_deref(), Some(s));
            assert!(escape(s).bytes().all(|b| b.is_ascii_graphic()));
        }
    }
}
