//! Replies (RFC 5321 §4.2, RFC 3463 enhanced codes): the only place reply text is written.

//!
//! Errors of the layers above (session, policy) map to replies beside their own types, with
//! `Reply::new`; this module knows only the wire and the errors of `src/smtp/`.

use crate::smtp::command::SyntaxError;

/// §4.5.3.1.5: a reply line is at most 512 octets, CRLF included.
const MAX_REPLY_LINE: usize = 512;

/// An RFC 3463 status code, `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnhancedStatus(pub u8, pub u16, pub u16);

impl EnhancedStatus {
    pub const fn new(class: u8, subject: u16, detail: u16) -> EnhancedStatus {
        EnhancedStatus(class, subject, detail)
    }
}

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    status: Option<EnhancedStatus>,
    lines: Vec<String>,
}

impl Reply {
    /// A one-line reply with its enhanced code. RFC 3463 §2: the class of the code and of the
    /// status agree; every caller's table test checks that (`agrees`).
    pub fn new(code: u16, status: EnhancedStatus, text: impl Into<String>) -> Reply {
        Reply { code, status: Some(status), lines: vec![text.into()] }
    }

    /// RFC 3463 §2: the status class is the reply's first digit, and the code is 2xx-5xx.
    pub fn agrees(&self) -> bool {
        (200..600).contains(&self.code) && self.status.is_none_or(|s| u16::from(s.0) == self.code / 100)
    }

    /// RFC 2034 §3: the greeting and the HELO/EHLO replies carry no enhanced code.
    fn plain(code: u16, lines: Vec<String>) -> Reply {
        Reply { code, status: None, lines }
    }

    pub fn code(&self) -> u16 {
        self.code
    }

    pub fn status(&self) -> Option<EnhancedStatus> {
        self.status
    }

    /// A 4xx or 5xx reply, which counts toward the error limits.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// The text of every line, without code and status.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Appends the reply in wire form; every line is cut to 512 octets.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let last = self.lines.len().saturating_sub(1);
        for (i, text) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let start = out.len();
            // Written in place: writing to a Vec cannot fail.
            let _ = match self.status {
                Some(EnhancedStatus(a, b, c)) => write!(out, "{}{sep}{a}.{b}.{c} {text}", self.code),
                None => write!(out, "{}{sep}{text}", self.code),
            };
            truncate_at_char(out, start, MAX_REPLY_LINE - 2);
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

impl Reply {
    /// A reply as a client received it (see `parse_reply`).
    fn received(code: u16, status: Option<EnhancedStatus>, lines: Vec<String>) -> Reply {
        Reply { code, status, lines }
    }

    /// 2xx or 3xx: the command worked, or the server waits for more.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 5xx: the same command will fail again (§4.2.1).
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// `550 5.1.1 text of every line`, as a log line or a report quotes it.
    pub fn summary(&self) -> String {
        let mut out = self.code.to_string();
        if let Some(EnhancedStatus(a, b, c)) = self.status {
            out += &format!(" {a}.{b}.{c}");
        }
        for line in self.lines.iter().filter(|l| !l.is_empty()) {
            out.push(' ');
            out += line;
        }
        out
    }
}

impl std::fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl EnhancedStatus {
    /// RFC 3463 §2: `class.subject.detail`, class 2, 4 or 5, subject and detail 1-3 digits.
    pub fn parse(text: &str) -> Option<EnhancedStatus> {
        let mut parts = text.split('.');
        let mut number = |max_len: usize| {
            let p = parts.next()?;
            let ok = !p.is_empty() && p.len() <= max_len && p.bytes().all(|b| b.is_ascii_digit());
            ok.then(|| p.parse::<u16>().ok()).flatten()
        };
        let (class, subject, detail) = (number(1)?, number(3)?, number(3)?);
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
            return None;
        }
        Some(EnhancedStatus(class as u8, subject, detail))
    }
}

/// The longest reply line a client takes. §4.5.3.1.5 says 512 octets, but servers in the
/// field send longer texts; past this it is a protocol error, so a server cannot grow memory.
pub const MAX_RECEIVED_LINE: usize = 2048;
/// The most lines one reply may have (an EHLO reply has one per extension).
pub const MAX_RECEIVED_LINES: usize = 100;

/// What the bytes received so far hold (the shape of httparse's `Status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole reply yet, and nothing wrong so far: read more.
    Partial,
    /// One whole reply, and how many octets of the input it took.
    Reply(Reply, usize),
    /// The input is not an SMTP reply; no amount of reading more will make it one.
    Error(ReplyError),
}

/// Why received bytes are not a reply (§4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// A line that does not start with three digits (2-5 first) and a space or hyphen.
    Malformed(String),
    /// The lines of one reply carry different codes (§4.2.1).
    CodeChanged(u16, u16),
    LineTooLong,
    TooManyLines,
}

impl std::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyError::Malformed(line) => write!(f, "malformed reply line: {line}"),
            ReplyError::CodeChanged(a, b) => write!(f, "reply code changed within a reply: {a} then {b}"),
            ReplyError::LineTooLong => write!(f, "reply line too long"),
            ReplyError::TooManyLines => write!(f, "reply with too many lines"),
        }
    }
}

/// Reads one reply from the front of `input`: `ddd-text` lines, then `ddd text` (§4.2.1).
/// Pure: call it again with more bytes after `Partial`. A line ends with LF (a CR before it
/// is dropped). The enhanced code (RFC 2034 §4) is taken from the first line when its class
/// agrees with the reply code, and cut from every line that repeats it.
pub fn parse_reply(input: &[u8]) -> Parsed {
    let mut raw_lines: Vec<&[u8]> = Vec::new();
    let mut code = None;
    let mut at = 0;
    loop {
        let rest = &input[at..];
        let Some(end) = rest.iter().take(MAX_RECEIVED_LINE).position(|&b| b == b'\n') else {
            return if rest.len() >= MAX_RECEIVED_LINE {
                Parsed::Error(ReplyError::LineTooLong)
            } else {
                Parsed::Partial
            };
        };
        let mut line = &rest[..end];
        line = line.strip_suffix(b"\r").unwrap_or(line);
        at += end + 1;
        let (this, more) = match reply_line_code(line) {
            Some(found) => found,
            None => {
                let shown = String::from_utf8_lossy(&line[..line.len().min(80)]).escape_debug().to_string();
                return Parsed::Error(ReplyError::Malformed(shown));
            }
        };
        if let Some(first) = code
            && first != this
        {
            return Parsed::Error(ReplyError::CodeChanged(first, this));
        }
        code = Some(this);
        raw_lines.push(line.get(4..).unwrap_or(b""));
        if !more {
            return Parsed::Reply(received(this, &raw_lines), at);
        }
        if raw_lines.len() >= MAX_RECEIVED_LINES {
            return Parsed::Error(ReplyError::TooManyLines);
        }
    }
}

/// The code of one reply line and whether more lines follow.
fn reply_line_code(line: &[u8]) -> Option<(u16, bool)> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&digits[0]) {
        return None;
    }
    let code = digits.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match line.get(3) {
        None | Some(b' ') => Some((code, false)),
        Some(b'-') => Some((code, true)),
        Some(_) => None,
    }
}

fn received(code: u16, raw_lines: &[&[u8]]) -> Reply {
    let texts: Vec<String> = raw_lines.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
    let first_word = texts[0].split(' ').next().unwrap_or("").to_string();
    let status = EnhancedStatus::parse(&first_word).filter(|s| u16::from(s.0) == code / 100);
    let lines = match status {
        Some(_) => {
            let prefix = format!("{first_word} ");
            texts
                .into_iter()
                .map(|t| match t.strip_prefix(&prefix) {
                    Some(rest) => rest.to_string(),
                    None if t == first_word => String::new(),
                    None => t,
                })
                .collect()
        }
        None => texts,
    };
    Reply::received(code, status, lines)
}

/// Cuts the text written to `out` from `start` (UTF-8, as it came from strings) to at most
/// `max` octets, never inside a character.
fn truncate_at_char(out: &mut Vec<u8>, start: usize, max: usize) {
    if out.len() - start > max {
        let mut end = start + max;
        // A continuation octet (10xxxxxx) is inside a character.
        while out[end] & 0xC0 == 0x80 {
            end -= 1;
        }
        out.truncate(end);
    }
}

const fn es(class: u8, subject: u16, detail: u16) -> EnhancedStatus {
    EnhancedStatus::new(class, subject, detail)
}

// The replies of a good session, in the order they usually appear.
impl Reply {
    pub fn greeting(host: &str) -> Reply {
        Reply::plain(220, vec![format!("{host} ESMTP postern")])
    }

    pub fn helo(host: &str) -> Reply {
        Reply::plain(250, vec![host.to_string()])
    }

    /// §4.1.1.1: the first line greets, each further line names one extension.
    pub fn ehlo(host: &str, extensions: &[String]) -> Reply {
        let mut lines = vec![host.to_string()];
        lines.extend(extensions.iter().cloned());
        Reply::plain(250, lines)
    }

    pub fn ok() -> Reply {
        Reply::new(250, es(2, 0, 0), "Ok")
    }

    pub fn sender_ok() -> Reply {
        Reply::new(250, es(2, 1, 0), "Ok")
    }

    pub fn recipient_ok() -> Reply {
        Reply::new(250, es(2, 1, 5), "Ok")
    }

    pub fn start_data() -> Reply {
        // RFC 2034 §3: enhanced codes go with 2xx, 4xx and 5xx replies only.
        Reply::plain(354, vec!["End data with <CR><LF>.<CR><LF>".into()])
    }

    pub fn queued(id: &str) -> Reply {
        Reply::new(250, es(2, 0, 0), format!("Ok: queued as {id}"))
    }

    /// VERB mode: one line per accepted recipient before the final reply.
    pub fn queued_verbose(id: &str, recipients: &[String]) -> Reply {
        let mut lines: Vec<String> = recipients.iter().map(|r| format!("{r} queued as {id}")).collect();
        lines.push(format!("Ok: queued as {id}"));
        Reply { code: 250, status: Some(es(2, 0, 0)), lines }
    }

    pub fn closing(host: &str) -> Reply {
        Reply::new(221, es(2, 0, 0), format!("{host} closing connection"))
    }

    pub fn help() -> Reply {
        let lines = [
            "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY EXPN VERB STARTTLS",
            "Send mail: EHLO, MAIL FROM:<sender>, RCPT TO:<recipient>, DATA",
            "End of HELP",
        ];
        Reply { code: 214, status: Some(es(2, 0, 0)), lines: lines.map(String::from).to_vec() }
    }

    pub fn verbose_on() -> Reply {
        Reply::new(250, es(2, 0, 0), "Verbose mode: the reply to DATA lists every recipient")
    }

    /// §3.5.3: 252 neither confirms nor denies; the default, so users cannot be listed.
    pub fn cannot_verify() -> Reply {
        Reply::new(252, es(2, 5, 2), "Cannot VRFY user, but will accept message and attempt delivery")
    }

    pub fn cannot_expand() -> Reply {
        Reply::new(252, es(2, 5, 2), "Cannot EXPN list, but will accept message and attempt delivery")
    }

    pub fn verified(address: &str) -> Reply {
        Reply::new(250, es(2, 1, 5), format!("<{address}>"))
    }

    /// §3.5.2: one member per line.
    pub fn expanded(members: &[String]) -> Reply {
        let lines = members.iter().map(|m| format!("<{m}>")).collect();
        Reply { code: 250, status: Some(es(2, 1, 5)), lines }
    }

    pub fn no_such_user(who: &str) -> Reply {
        Reply::new(550, es(5, 1, 1), format!("{who}: User unknown"))
    }

    pub fn ready_for_tls() -> Reply {
        Reply::new(220, es(2, 0, 0), "Ready to start TLS")
    }

    pub fn tls_unavailable() -> Reply {
        Reply::new(454, es(4, 7, 0), "TLS not available due to temporary reason")
    }

    /// RFC 4954 §4: `334 ` and the base64 challenge (empty for PLAIN's first).
    pub fn challenge(text: &str) -> Reply {
        Reply::plain(334, vec![text.to_string()])
    }

    pub fn authenticated() -> Reply {
        Reply::new(235, es(2, 7, 0), "Authentication successful")
    }

    pub fn tls_already_active() -> Reply {
        Reply::new(554, es(5, 5, 1), "Error: TLS already active")
    }
}

// The replies that end a session from the server side.
impl Reply {
    pub fn timeout(host: &str) -> Reply {
        Reply::new(421, es(4, 4, 2), format!("{host} Error: timeout exceeded"))
    }

    pub fn too_many_errors(host: &str) -> Reply {
        Reply::new(421, es(4, 7, 0), format!("{host} Error: too many errors"))
    }

    pub fn too_many_connections(host: &str) -> Reply {
        Reply::new(421, es(4, 3, 2), format!("{host} Error: too many connections"))
    }

    pub fn too_many_connections_from(host: &str, ip: &str) -> Reply {
        Reply::new(421, es(4, 7, 0), format!("{host} Error: too many connections from {ip}"))
    }

    pub fn shutting_down(host: &str) -> Reply {
        Reply::new(421, es(4, 3, 2), format!("{host} Service shutting down, closing connection"))
    }

    /// A command line ended in a bare LF (RFC 5321 §2.3.8); the session closes after it.
    pub fn bare_lf() -> Reply {
        Reply::new(500, es(5, 5, 2), "Error: bare <LF> received; lines end with <CR><LF>")
    }

    pub fn local_error(host: &str) -> Reply {
        Reply::new(421, es(4, 3, 0), format!("{host} Error: internal error, closing connection"))
    }
}

impl From<&SyntaxError> for Reply {
    fn from(e: &SyntaxError) -> Reply {
        match e {
            SyntaxError::Unrecognized => Reply::new(500, es(5, 5, 2), "Error: command not recognized"),
            SyntaxError::LineTooLong => Reply::new(500, es(5, 5, 2), "Error: line too long"),
            SyntaxError::Usage(usage) => Reply::new(501, es(5, 5, 4), format!("Syntax: {usage}")),
            SyntaxError::NotImplemented(verb) => Reply::new(502, es(5, 5, 1), format!("Error: {verb} not implemented")),
            SyntaxError::Sender(a) => {
                Reply::new(501, es(5, 1, 7), format!("Bad sender address syntax: {}", a.describe()))
            }
            SyntaxError::Recipient(a) => {
                Reply::new(501, es(5, 1, 3), format!("Bad recipient address syntax: {}", a.describe()))
            }
            SyntaxError::BadParameter => Reply::new(501, es(5, 5, 4), "Error: malformed parameter"),
            SyntaxError::DuplicateParameter => Reply::new(501, es(5, 5, 4), "Error: parameter given twice"),
            SyntaxError::UnknownParameter(name) => {
                Reply::new(555, es(5, 5, 4), format!("Error: unsupported parameter {name}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_replies_mark_continuations() {
        let r = Reply::ehlo("mx.test", &["PIPELINING".into(), "8BITMIME".into()]);
        assert_eq!(r.to_bytes(), b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
    }

    #[test]
    fn every_line_carries_the_enhanced_code() {
        let text = String::from_utf8(Reply::help().to_bytes()).unwrap();
        assert!(text.lines().all(|l| l.starts_with("214-2.0.0 ") || l.starts_with("214 2.0.0 ")), "{text}");
    }

    #[test]
    fn lines_are_cut_to_512_octets() {
        let r = Reply::no_such_user(&"é".repeat(600));
        let bytes = r.to_bytes();
        assert!(bytes.len() <= 512, "{}", bytes.len());
        assert!(bytes.ends_with(b"\r\n"));
        assert!(std::str::from_utf8(&bytes).is_ok());
    }

    /// Every syntax error, each address error inside one; the match makes a new variant a
    /// compile error here until it is listed.
    fn every_syntax_error() -> Vec<(SyntaxError, &'static str)> {
        use crate::smtp::address::AddressError;
        use AddressError as A;
        let addresses = [
            A::MissingBrackets,
            A::NotUtf8,
            A::PathTooLong,
            A::LocalPartTooLong,
            A::DomainTooLong,
            A::NoDomain,
            A::BadLocalPart,
            A::BadDomain,
            A::BadLiteral,
            A::BadRoute,
        ];
        let _exhaustive = |a: &AddressError| match a {
            A::MissingBrackets | A::NotUtf8 | A::PathTooLong | A::LocalPartTooLong | A::DomainTooLong => (),
            A::NoDomain | A::BadLocalPart | A::BadDomain | A::BadLiteral | A::BadRoute => (),
        };
        let mut all = vec![
            (SyntaxError::Unrecognized, "500 5.5.2"),
            (SyntaxError::LineTooLong, "500 5.5.2"),
            (SyntaxError::Usage("MAIL FROM:<address>"), "501 5.5.4"),
            (SyntaxError::NotImplemented("ETRN"), "502 5.5.1"),
            (SyntaxError::BadParameter, "501 5.5.4"),
            (SyntaxError::DuplicateParameter, "501 5.5.4"),
            (SyntaxError::UnknownParameter("X".into()), "555 5.5.4"),
        ];
        let _exhaustive = |e: &SyntaxError| match e {
            SyntaxError::Unrecognized | SyntaxError::LineTooLong | SyntaxError::Usage(_) => (),
            SyntaxError::NotImplemented(_) | SyntaxError::Sender(_) | SyntaxError::Recipient(_) => (),
            SyntaxError::BadParameter | SyntaxError::DuplicateParameter | SyntaxError::UnknownParameter(_) => (),
        };
        for a in addresses {
            all.push((SyntaxError::Sender(a), "501 5.1.7"));
            all.push((SyntaxError::Recipient(a), "501 5.1.3"));
        }
        all
    }

    #[test]
    fn every_syntax_error_has_its_code_and_an_agreeing_class() {
        for (error, want) in every_syntax_error() {
            let reply = Reply::from(&error);
            let EnhancedStatus(a, b, c) = reply.status().expect("an error reply carries an enhanced code");
            assert_eq!(format!("{} {a}.{b}.{c}", reply.code()), want, "{error:?}");
            assert!(reply.agrees() && reply.is_error(), "{error:?}");
            assert!(!reply.lines()[0].is_empty(), "{error:?} has a text");
        }
    }

    #[test]
    fn agreement_is_checked() {
        assert!(!Reply::new(250, es(5, 0, 0), "x").agrees());
        assert!(!Reply::new(199, es(1, 0, 0), "x").agrees());
        assert!(Reply::new(451, es(4, 3, 0), "x").agrees());
    }

    fn parsed(bytes: &[u8]) -> Reply {
        match parse_reply(bytes) {
            Parsed::Reply(r, n) => {
                assert_eq!(n, bytes.len(), "the whole input is one reply");
                r
            }
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn replies_are_read_with_their_enhanced_code() {
        let r = parsed(b"550-5.1.1 no such\r\n550 5.1.1 user here\r\n");
        assert_eq!(
            (r.code(), r.status(), r.lines()),
            (550, Some(es(5, 1, 1)), &["no such".into(), "user here".into()][..])
        );
        assert_eq!(r.summary(), "550 5.1.1 no such user here");
        let r = parsed(b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n");
        assert_eq!((r.status(), r.lines().len()), (None, 3));
        assert_eq!(parsed(b"451 5.1.1 class disagrees\r\n").status(), None);
        assert_eq!(parsed(b"250\r\n").summary(), "250");
        assert_eq!(parsed(b"250 ok\n").lines(), ["ok"], "a bare LF ends a received line");
        assert_eq!(parsed(b"220 2.0.0\r\n").summary(), "220 2.0.0");
    }

    #[test]
    fn what_we_send_reads_back_the_same() {
        for reply in [Reply::help(), Reply::ehlo("mx.test", &["PIPELINING".into(), "SIZE 10".into()]), Reply::ok()] {
            assert_eq!(parsed(&reply.to_bytes()), reply);
        }
    }

    #[test]
    fn every_prefix_of_a_reply_is_partial_and_the_rest_is_left() {
        let wire = b"250-first\r\n250-2.0.0 second\r\n250 third\r\n354 go\r\n";
        let first_end = wire.len() - b"354 go\r\n".len();
        for cut in 0..first_end {
            assert_eq!(parse_reply(&wire[..cut]), Parsed::Partial, "prefix of {cut} octets");
        }
        for cut in first_end..=wire.len() {
            assert!(matches!(parse_reply(&wire[..cut]), Parsed::Reply(_, n) if n == first_end), "cut {cut}");
        }
        assert_eq!(parsed(&wire[first_end..]).code(), 354);
    }

    #[test]
    fn bytes_that_are_not_a_reply_are_errors_not_waits() {
        let error = |b: &[u8]| matches!(parse_reply(b), Parsed::Error(_));
        assert!(error(b"hello\r\n") && error(b"2\r\n") && error(b"650 x\r\n") && error(b"250x\r\n"));
        assert_eq!(parse_reply(b"250-x\r\n550 y\r\n"), Parsed::Error(ReplyError::CodeChanged(250, 550)));
        assert_eq!(parse_reply(&[b'2'; MAX_RECEIVED_LINE]), Parsed::Error(ReplyError::LineTooLong));
        assert_eq!(parse_reply(&b"250-x\r\n".repeat(MAX_RECEIVED_LINES)), Parsed::Error(ReplyError::TooManyLines));
        assert_eq!(parse_reply(&[b'2'; MAX_RECEIVED_LINE - 1]), Parsed::Partial, "still within a line");
    }

    #[test]
    fn enhanced_codes_are_parsed_strictly() {
        assert_eq!(EnhancedStatus::parse("5.7.26"), Some(es(5, 7, 26)));
        assert_eq!(EnhancedStatus::parse("4.999.999"), Some(es(4, 999, 999)));
        for bad in ["", "5", "5.1", "5.1.1.1", "3.1.1", "55.1.1", "5.1000.1", "5..1", "5.a.1", "5.1.1x"] {
            assert_eq!(EnhancedStatus::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn greeting_has_no_enhanced_code() {
        assert_eq!(Reply::greeting("h").to_bytes(), b"220 h ESMTP postern\r\n");
    }
}
