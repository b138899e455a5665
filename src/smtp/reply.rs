//! Replies (RFC 5321 §4.2, RFC 3463 enhanced codes): the only place reply text is written.

//!
//! Errors of the layers above (session, policy) map to replies beside their own types, with
//! `Reply::new`; this module knows only the wire and the errors of `src/smtp/`.

use crate::smtp::address::AddressError;
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
        let last = self.lines.len().saturating_sub(1);
        for (i, text) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let mut line = match self.status {
                Some(EnhancedStatus(a, b, c)) => format!("{}{sep}{a}.{b}.{c} {text}", self.code),
                None => format!("{}{sep}{text}", self.code),
            };
            truncate_at_char(&mut line, MAX_REPLY_LINE - 2);
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
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
            SyntaxError::Sender(a) => Reply::new(501, es(5, 1, 7), format!("Bad sender address syntax: {}", why(a))),
            SyntaxError::Recipient(a) => {
                Reply::new(501, es(5, 1, 3), format!("Bad recipient address syntax: {}", why(a)))
            }
            SyntaxError::BadParameter => Reply::new(501, es(5, 5, 4), "Error: malformed parameter"),
            SyntaxError::DuplicateParameter => Reply::new(501, es(5, 5, 4), "Error: parameter given twice"),
            SyntaxError::UnknownParameter(name) => {
                Reply::new(555, es(5, 5, 4), format!("Error: unsupported parameter {name}"))
            }
        }
    }
}

fn why(e: &AddressError) -> &'static str {
    match e {
        AddressError::MissingBrackets => "the path must be written <local@domain>",
        AddressError::NotUtf8 => "not valid UTF-8",
        AddressError::PathTooLong => "Path too long",
        AddressError::LocalPartTooLong => "local part longer than 64 octets",
        AddressError::DomainTooLong => "domain or label too long",
        AddressError::NoDomain => "no domain",
        AddressError::BadLocalPart => "bad local part",
        AddressError::BadDomain => "bad domain",
        AddressError::BadLiteral => "bad address literal",
        AddressError::BadRoute => "bad source route",
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

    #[test]
    fn greeting_has_no_enhanced_code() {
        assert_eq!(Reply::greeting("h").to_bytes(), b"220 h ESMTP postern\r\n");
    }
}
