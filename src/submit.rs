//! Local submission, as `sendmail` takes it: the message on standard input made ready for the
//! spool. Pure: the caller reads stdin, knows who is calling and what time it is.
//!
//! - line ends become CRLF (a lone LF or CR ends a line), and without `-i` a line holding only
//!   `.` ends the message (the traditional sendmail rule);
//! - with `-t` the recipients are read from `To:`, `Cc:` and `Bcc:`, and `Bcc:` is removed;
//! - `From:`, `Date:` and `Message-ID:` are added when missing (RFC 5322 §3.6: `Date:` and
//!   `From:` are required, `Message-ID:` should be present), after the fields already there;
//! - a bare name (`root`) is qualified with the local origin, so it stays local.

use crate::message::{self, Headers};
use crate::smtp::address::{AddressError, ForwardPath, ReversePath};
use crate::smtp::command::BodyType;

/// Who submits, and how they asked.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The caller's login name (from the password database, by uid).
    pub login: &'a str,
    /// `-F NAME`, else the account's full name.
    pub full_name: Option<&'a str>,
    /// `-f ADDR`: the envelope sender; the empty text is the null sender `<>`.
    pub sender: Option<&'a str>,
    /// The domain that qualifies bare names (`root` -> `root@origin`).
    pub origin: &'a str,
    /// For `Message-ID:` (`<ID@hostname>`).
    pub hostname: &'a str,
    pub id: &'a str,
    pub now: u64,
    /// `-t`: recipients also from the header.
    pub extract: bool,
    /// Recipients from the command line.
    pub recipients: &'a [String],
}

/// A submission ready for the spool: the envelope's paths and the message to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub from: ReversePath,
    pub rcpts: Vec<ForwardPath>,
    pub body: BodyType,
    pub smtputf8: bool,
    pub message: Vec<u8>,
}

/// Why a submission cannot be queued; each maps to a sysexits code in the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitError {
    /// An address that is not one (`EX_DATAERR`).
    BadAddress(String, AddressError),
    /// Nobody to send to (`EX_USAGE` on the command line, `EX_DATAERR` with `-t`).
    NoRecipients { extract: bool },
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::BadAddress(text, e) => write!(f, "bad address `{text}`: {e}"),
            SubmitError::NoRecipients { extract: true } => f.write_str("no recipient addresses found in the header"),
            SubmitError::NoRecipients { extract: false } => f.write_str("no recipients given (or use -t)"),
        }
    }
}

/// The input with CRLF line ends; without `ignore_dots`, cut at a line holding only `.`.
/// The result ends with CRLF unless it is empty.
pub fn normalize(input: &[u8], ignore_dots: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 32 + 2);
    let mut line_start = 0;
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'\r' || b == b'\n' {
            let line = &input[line_start..i];
            if !ignore_dots && line == b"." {
                return out;
            }
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
            i += if b == b'\r' && input.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
            line_start = i;
            continue;
        }
        i += 1;
    }
    let last = &input[line_start..];
    if !last.is_empty() && (ignore_dots || last != b".") {
        out.extend_from_slice(last);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `root` -> `root@origin`; an address with a domain is kept.
fn qualify(address: &str, origin: &str) -> String {
    if address.contains('@') || address.eq_ignore_ascii_case("postmaster") {
        address.to_string()
    } else {
        format!("{address}@{origin}")
    }
}

/// A recipient as sendmail's command line gives it: `root` is `root@origin`.
pub fn forward_path(text: &str, origin: &str) -> Result<ForwardPath, SubmitError> {
    let q = qualify(text, origin);
    ForwardPath::parse(q.as_bytes()).map_err(|e| SubmitError::BadAddress(text.to_string(), e))
}

/// The envelope sender: `-f` (`""` or `<>` is the null path), else `login@origin`.
fn reverse_path(req: &Request<'_>) -> Result<ReversePath, SubmitError> {
    let text = match req.sender {
        Some(s) => {
            let s = s.trim();
            if s.is_empty() || s == "<>" {
                return Ok(ReversePath::Null);
            }
            message::addresses(s).into_iter().next().unwrap_or_else(|| s.to_string())
        }
        None => req.login.to_string(),
    };
    let q = qualify(&text, req.origin);
    ReversePath::parse(q.as_bytes()).map_err(|e| SubmitError::BadAddress(text, e))
}

/// A display name as an RFC 5322 phrase (§3.2.5): plain words as they are, anything else quoted.
/// Non-ASCII names are left out (they would need RFC 2047 encoding).
fn phrase(name: &str) -> Option<String> {
    let name: String = name.chars().filter(|c| !c.is_control()).collect();
    let name = name.trim();
    if name.is_empty() || !name.is_ascii() {
        return None;
    }
    let plain = name.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ' || "!#$%&'*+-/=?^_`{|}~".contains(c));
    if plain {
        return Some(name.to_string());
    }
    let escaped: String =
        name.chars().flat_map(|c| if c == '"' || c == '\\' { vec!['\\', c] } else { vec![c] }).collect();
    Some(format!("\"{escaped}\""))
}

/// The header section without the fields of that name (a field with its continuation lines).
fn without_field(header: &[u8], name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len());
    let mut dropping = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            let colon = line.iter().position(|&b| b == b':');
            dropping = colon.is_some_and(|c| line[..c].eq_ignore_ascii_case(name.as_bytes()));
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Makes a submission ready: envelope from the request (and the header with `-t`), missing
/// fields added. `message` is the normalized input (`normalize`).
pub fn prepare(req: &Request<'_>, message: &[u8]) -> Result<Prepared, SubmitError> {
    let (headers, body_start) = Headers::parse(message);
    // Did a blank line end the header section, or did the first non-field line (or the end)?
    let blank = (body_start == 2 && message.starts_with(b"\r\n"))
        || (body_start >= 4 && &message[body_start - 4..body_start] == b"\r\n\r\n");
    let header_end = if blank { body_start - 2 } else { body_start };
    let mut rcpt_texts: Vec<String> = req.recipients.iter().flat_map(|r| split_recipients(r)).collect();
    if req.extract {
        for name in ["To", "Cc", "Bcc"] {
            rcpt_texts.extend(headers.addresses(name));
        }
    }
    let mut rcpts: Vec<ForwardPath> = Vec::new();
    for text in &rcpt_texts {
        let path = forward_path(text, req.origin)?;
        if !rcpts.contains(&path) {
            rcpts.push(path);
        }
    }
    if rcpts.is_empty() {
        return Err(SubmitError::NoRecipients { extract: req.extract });
    }
    let from = reverse_path(req)?;
    let mut head = message[..header_end].to_vec();
    if req.extract {
        // RFC 5322 §3.6.3: Bcc recipients get the message; the field itself is not sent.
        head = without_field(&head, "Bcc");
    }
    if !headers.has("From") {
        let address = match &from {
            ReversePath::Mailbox(m) => m.to_string(),
            ReversePath::Null => qualify(req.login, req.origin),
        };
        let line = match req.full_name.and_then(phrase) {
            Some(name) => format!("From: {name} <{address}>\r\n"),
            None => format!("From: {address}\r\n"),
        };
        head.extend_from_slice(line.as_bytes());
    }
    if !headers.has("Date") {
        head.extend_from_slice(format!("Date: {}\r\n", crate::trace::rfc5322_date(req.now)).as_bytes());
    }
    if !headers.has("Message-ID") {
        head.extend_from_slice(format!("Message-ID: <{}@{}>\r\n", req.id, req.hostname).as_bytes());
    }
    let mut out = head;
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&message[body_start..]);
    let smtputf8 = !from.is_ascii() || rcpts.iter().any(|r| !r.is_ascii());
    let body = if out.is_ascii() { BodyType::SevenBit } else { BodyType::EightBitMime };
    Ok(Prepared { from, rcpts, body, smtputf8, message: out })
}

/// One command-line argument: an address, `Name <addr>`, or several separated by commas.
fn split_recipients(arg: &str) -> Vec<String> {
    let found = message::addresses(arg);
    if found.is_empty() && !arg.trim().is_empty() { vec![arg.trim().to_string()] } else { found }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(recipients: &'a [String]) -> Request<'a> {
        Request {
            login: "alice",
            full_name: None,
            sender: None,
            origin: "vm.example.org",
            hostname: "vm.example.org",
            id: "ID1",
            now: 1_795_000_000,
            extract: false,
            recipients,
        }
    }

    fn text(p: &Prepared) -> String {
        String::from_utf8(p.message.clone()).unwrap()
    }

    #[test]
    fn line_ends_become_crlf_and_a_lone_dot_ends_the_message() {
        assert_eq!(normalize(b"a\nb\r\nc\rd", false), b"a\r\nb\r\nc\r\nd\r\n");
        assert_eq!(normalize(b"a\n.\nafter\n", false), b"a\r\n");
        assert_eq!(normalize(b"a\n.\nafter\n", true), b"a\r\n.\r\nafter\r\n");
        assert_eq!(normalize(b"a\n.", false), b"a\r\n");
        assert_eq!(normalize(b"..\n", false), b"..\r\n");
        assert_eq!(normalize(b"", false), b"");
    }

    #[test]
    fn a_bare_body_gets_from_date_and_message_id_and_a_blank_line() {
        let r = ["root".to_string()];
        let p = prepare(&req(&r), &normalize(b"hi\n", false)).unwrap();
        assert_eq!(p.rcpts, vec![ForwardPath::parse(b"root@vm.example.org").unwrap()]);
        assert_eq!(p.from.to_string(), "<alice@vm.example.org>");
        assert_eq!(
            text(&p),
            "From: alice@vm.example.org\r\nDate: Wed, 18 Nov 2026 11:06:40 +0000\r\n\
             Message-ID: <ID1@vm.example.org>\r\n\r\nhi\r\n"
        );
        assert_eq!(p.body, BodyType::SevenBit);
    }

    #[test]
    fn fields_already_there_are_kept_and_not_doubled() {
        let r = ["bob@remote.test".to_string()];
        let msg =
            b"From: Me <me@x.test>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <m@x>\nSubject: s\n\nbody\n";
        let p = prepare(&req(&r), &normalize(msg, false)).unwrap();
        assert_eq!(text(&p), String::from_utf8(normalize(msg, false)).unwrap());
    }

    #[test]
    fn missing_fields_go_after_the_existing_ones() {
        let r = ["bob".to_string()];
        let p = prepare(&req(&r), &normalize(b"Subject: s\n\nbody\n", false)).unwrap();
        assert!(text(&p).starts_with("Subject: s\r\nFrom: alice@vm.example.org\r\nDate: "), "{}", text(&p));
        assert!(text(&p).ends_with(">\r\n\r\nbody\r\n"));
        // Headers only, no blank line and no body.
        let p = prepare(&req(&r), &normalize(b"Subject: s", false)).unwrap();
        assert!(text(&p).starts_with("Subject: s\r\nFrom: ") && text(&p).ends_with(">\r\n\r\n"), "{}", text(&p));
    }

    #[test]
    fn extract_reads_to_cc_bcc_and_removes_bcc() {
        let r: [String; 0] = [];
        let mut q = req(&r);
        q.extract = true;
        let msg = b"To: Bob <bob@remote.test>, root\nCc: carol@x.test\nBcc: secret@y.test,\n  other@y.test\nSubject: s\n\nb\n";
        let p = prepare(&q, &normalize(msg, true)).unwrap();
        let got: Vec<String> = p.rcpts.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            ["<bob@remote.test>", "<root@vm.example.org>", "<carol@x.test>", "<secret@y.test>", "<other@y.test>"]
        );
        assert!(!text(&p).to_lowercase().contains("bcc") && !text(&p).contains("secret"), "{}", text(&p));
        assert!(text(&p).contains("Subject: s\r\n"));
        let none = prepare(&q, &normalize(b"Subject: s\n\nb\n", true));
        assert_eq!(none, Err(SubmitError::NoRecipients { extract: true }));
    }

    #[test]
    fn sender_and_full_name() {
        let r = ["bob".to_string()];
        let mut q = req(&r);
        q.sender = Some("bounces@list.test");
        q.full_name = Some("Cron Daemon");
        let p = prepare(&q, &normalize(b"x\n", false)).unwrap();
        assert_eq!(p.from.to_string(), "<bounces@list.test>");
        assert!(text(&p).starts_with("From: Cron Daemon <bounces@list.test>\r\n"));
        q.sender = Some("<>");
        q.full_name = Some("A \"q\" B.");
        let p = prepare(&q, &normalize(b"x\n", false)).unwrap();
        assert_eq!(p.from, ReversePath::Null);
        assert!(text(&p).starts_with("From: \"A \\\"q\\\" B.\" <alice@vm.example.org>\r\n"), "{}", text(&p));
    }

    #[test]
    fn bad_addresses_and_no_recipients_are_errors() {
        let r = ["a@@b".to_string()];
        assert!(matches!(prepare(&req(&r), b"x\r\n"), Err(SubmitError::BadAddress(..))));
        let r: [String; 0] = [];
        assert_eq!(prepare(&req(&r), b"x\r\n"), Err(SubmitError::NoRecipients { extract: false }));
    }

    #[test]
    fn eight_bit_text_is_marked() {
        let r = ["bob".to_string()];
        let p = prepare(&req(&r), &normalize("Subject: caf\u{e9}\n\nb\n".as_bytes(), false)).unwrap();
        assert_eq!(p.body, BodyType::EightBitMime);
        assert!(!p.smtputf8);
    }
}
