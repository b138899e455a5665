//! Envelope addresses (RFC 5321 §4.1.2, RFC 6531 §3.3): bytes in, typed paths out.

use std::fmt;
use std::net::IpAddr;

/// RFC 5321 §4.5.3.1.1: the longest local part we must accept.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 §4.5.3.1.2: the longest domain name.
pub const MAX_DOMAIN: usize = 255;
/// RFC 5321 §4.5.3.1.3: the longest path, angle brackets included.
pub const MAX_PATH: usize = 256;
const MAX_LABEL: usize = 63;

/// Why an address did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressError {
    /// No `<` ... `>` around the path.
    MissingBrackets,
    /// Not valid UTF-8, so not an address in any SMTP dialect.
    NotUtf8,
    /// Over 256 octets (§4.5.3.1.3).
    PathTooLong,
    /// Local part over 64 octets (§4.5.3.1.1).
    LocalPartTooLong,
    /// Domain over 255 octets or a label over 63 (§4.5.3.1.2).
    DomainTooLong,
    /// No `@domain` where one is required.
    NoDomain,
    /// The local part is neither a dot-string nor a quoted string.
    BadLocalPart,
    /// The domain is not a sequence of sub-domains (a trailing dot included).
    BadDomain,
    /// An address literal that is not an IPv4 or IPv6 address (§4.1.3).
    BadLiteral,
    /// A malformed source route (`@a,@b:`).
    BadRoute,
}

impl AddressError {
    /// What is wrong, in the words a reply or an error message uses.
    pub fn describe(&self) -> &'static str {
        match self {
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
}

impl std::fmt::Display for AddressError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// A domain name as the client wrote it: case kept, compared without case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Domain(String);

impl Domain {
    /// Parses a domain (§4.1.2 `Domain`); U-labels are accepted (RFC 6531 §3.3).
    pub fn parse(text: &str) -> Result<Domain, AddressError> {
        if text.len() > MAX_DOMAIN {
            return Err(AddressError::DomainTooLong);
        }
        if text.is_empty() {
            return Err(AddressError::BadDomain);
        }
        for label in text.split('.') {
            check_label(label)?;
        }
        Ok(Domain(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name in lower case, for lookups.
    pub fn folded(&self) -> String {
        self.0.to_lowercase()
    }

    pub fn eq_ignore_case(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other) || self.folded() == other.to_lowercase()
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_label(label: &str) -> Result<(), AddressError> {
    if label.len() > MAX_LABEL {
        return Err(AddressError::DomainTooLong);
    }
    let letter_or_digit = |c: char| c.is_ascii_alphanumeric() || !c.is_ascii();
    let (Some(first), Some(last)) = (label.chars().next(), label.chars().last()) else {
        return Err(AddressError::BadDomain);
    };
    let inner_ok = label.chars().all(|c| letter_or_digit(c) || c == '-');
    if letter_or_digit(first) && letter_or_digit(last) && inner_ok { Ok(()) } else { Err(AddressError::BadDomain) }
}

/// What follows the `@`: a domain or an address literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Domain(Domain),
    Literal(IpAddr),
}

impl Host {
    fn parse(text: &str) -> Result<Host, AddressError> {
        match text.strip_prefix('[') {
            Some(rest) => parse_literal(rest).map(Host::Literal),
            None => Domain::parse(text).map(Host::Domain),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d.as_str()),
            Host::Literal(IpAddr::V4(a)) => write!(f, "[{a}]"),
            Host::Literal(IpAddr::V6(a)) => write!(f, "[IPv6:{a}]"),
        }
    }
}

/// §4.1.3: `[1.2.3.4]` or `[IPv6:...]`; general literals are refused.
fn parse_literal(rest: &str) -> Result<IpAddr, AddressError> {
    let inner = rest.strip_suffix(']').ok_or(AddressError::BadLiteral)?;
    let v6 = inner.get(..5).filter(|tag| tag.eq_ignore_ascii_case("IPv6:"));
    let parsed = match v6 {
        Some(_) => inner.get(5..).and_then(|a| a.parse::<std::net::Ipv6Addr>().ok()).map(IpAddr::V6),
        None => inner.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
    };
    parsed.ok_or(AddressError::BadLiteral)
}

/// A mailbox: local part as written (quotes kept) and host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    local: String,
    host: Host,
}

impl Mailbox {
    /// Parses `local@host` (§4.1.2 `Mailbox`).
    pub fn parse(text: &str) -> Result<Mailbox, AddressError> {
        let at = local_part_end(text)?;
        let (local, host) = (&text[..at], &text[at + 1..]);
        if local.len() > MAX_LOCAL_PART {
            return Err(AddressError::LocalPartTooLong);
        }
        Ok(Mailbox { local: local.to_string(), host: Host::parse(host)? })
    }

    /// The mailbox whose local part names `local` at `host`: written as a dot-string when
    /// it is one, else as a quoted string (§4.1.2).
    pub fn from_text(local: &str, host: &str) -> Result<Mailbox, AddressError> {
        let written = match dot_string_end(local) {
            Ok(end) if end == local.len() => local.to_string(),
            _ => format!("\"{}\"", local.replace('\\', "\\\\").replace('"', "\\\"")),
        };
        Mailbox::parse(&format!("{written}@{host}"))
    }

    /// The local part exactly as written, quotes included.
    pub fn local_part(&self) -> &str {
        &self.local
    }

    /// The local part with quoting removed: what it names.
    pub fn local_part_text(&self) -> String {
        match self.local.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            Some(inner) => unquote(inner),
            None => self.local.clone(),
        }
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The domain, if the host is not an address literal.
    pub fn domain(&self) -> Option<&Domain> {
        match &self.host {
            Host::Domain(d) => Some(d),
            Host::Literal(_) => None,
        }
    }

    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.host.to_string().is_ascii()
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.host)
    }
}

fn unquote(inner: &str) -> String {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// RFC 5322 atext, plus UTF-8 (RFC 6531 §3.3 `atext =/ UTF8-non-ascii`).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// Checks the local part at the start of `text` and returns the index of the `@` after it.
fn local_part_end(text: &str) -> Result<usize, AddressError> {
    let end = if text.starts_with('"') { quoted_end(text)? } else { dot_string_end(text)? };
    match text[end..].chars().next() {
        Some('@') => Ok(end),
        None => Err(AddressError::NoDomain),
        Some(_) => Err(AddressError::BadLocalPart),
    }
}

/// §4.1.2 `Dot-string = Atom *("." Atom)`: no leading, trailing or double dot.
fn dot_string_end(text: &str) -> Result<usize, AddressError> {
    let end = text.find(|c: char| !(is_atext(c) || c == '.')).unwrap_or(text.len());
    let dots = &text[..end];
    if dots.is_empty() || dots.split('.').any(str::is_empty) {
        return Err(AddressError::BadLocalPart);
    }
    Ok(end)
}

/// §4.1.2 `Quoted-string`: qtextSMTP and quoted-pairSMTP (`\` then %d32-126).
fn quoted_end(text: &str) -> Result<usize, AddressError> {
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok(i + 1),
            '\\' => match chars.next() {
                Some((_, p)) if (' '..='~').contains(&p) => {}
                _ => return Err(AddressError::BadLocalPart),
            },
            c if c == ' ' || c == '!' || ('#'..='~').contains(&c) || !c.is_ascii() => {}
            _ => return Err(AddressError::BadLocalPart),
        }
    }
    Err(AddressError::BadLocalPart)
}

/// §4.1.1.3: a source route is accepted and ignored; only its syntax is checked.
fn strip_route(path: &str) -> Result<&str, AddressError> {
    if !path.starts_with('@') {
        return Ok(path);
    }
    let colon = path.find(':').ok_or(AddressError::BadRoute)?;
    for hop in path[..colon].split(',') {
        let domain = hop.strip_prefix('@').ok_or(AddressError::BadRoute)?;
        Host::parse(domain).map_err(|_| AddressError::BadRoute)?;
    }
    Ok(&path[colon + 1..])
}

/// Splits `<path> rest` into the text inside the brackets and what follows.
/// A `>` inside a quoted local part does not close the path.
pub fn split_path(args: &[u8]) -> Result<(&[u8], &[u8]), AddressError> {
    let args = trim_start(args);
    if args.first() != Some(&b'<') {
        return Err(AddressError::MissingBrackets);
    }
    let (mut quoted, mut escaped) = (false, false);
    for (i, &b) in args.iter().enumerate().skip(1) {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'>' if !quoted => {
                if i + 1 > MAX_PATH {
                    return Err(AddressError::PathTooLong);
                }
                return Ok((&args[1..i], &args[i + 1..]));
            }
            _ => {}
        }
    }
    Err(AddressError::MissingBrackets)
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != b' ').unwrap_or(bytes.len());
    &bytes[start..]
}

/// `MAIL FROM:` argument: the null path `<>` or a mailbox (§4.1.2 `Reverse-path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    Null,
    Mailbox(Mailbox),
}

impl ReversePath {
    /// Parses the text between the angle brackets.
    pub fn parse(inner: &[u8]) -> Result<ReversePath, AddressError> {
        if inner.is_empty() {
            return Ok(ReversePath::Null);
        }
        let text = std::str::from_utf8(inner).map_err(|_| AddressError::NotUtf8)?;
        Mailbox::parse(strip_route(text)?).map(ReversePath::Mailbox)
    }

    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(m) => Some(m),
        }
    }

    pub fn is_ascii(&self) -> bool {
        self.mailbox().is_none_or(Mailbox::is_ascii)
    }
}

impl fmt::Display for ReversePath {
    /// The path with its angle brackets, as it goes on the wire and into the spool.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// `RCPT TO:` argument: `<Postmaster>` or a mailbox (§4.1.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// The bare `<Postmaster>` with no domain, which every server must accept (§4.5.1).
    Postmaster,
    Mailbox(Mailbox),
}

impl ForwardPath {
    /// Parses the text between the angle brackets.
    pub fn parse(inner: &[u8]) -> Result<ForwardPath, AddressError> {
        if inner.eq_ignore_ascii_case(b"postmaster") {
            return Ok(ForwardPath::Postmaster);
        }
        if inner.is_empty() {
            return Err(AddressError::NoDomain);
        }
        let text = std::str::from_utf8(inner).map_err(|_| AddressError::NotUtf8)?;
        Mailbox::parse(strip_route(text)?).map(ForwardPath::Mailbox)
    }

    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ForwardPath::Postmaster => None,
            ForwardPath::Mailbox(m) => Some(m),
        }
    }

    pub fn is_ascii(&self) -> bool {
        self.mailbox().is_none_or(Mailbox::is_ascii)
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("<Postmaster>"),
            ForwardPath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt(s: &str) -> Result<ForwardPath, AddressError> {
        let (inner, rest) = split_path(s.as_bytes())?;
        assert!(rest.is_empty(), "unexpected rest {rest:?}");
        ForwardPath::parse(inner)
    }

    #[test]
    fn plain_mailboxes_parse_and_print_back() {
        for a in ["<alice@example.test>", "<a.b+c@x-y.example>", "<\"a b\"@example.test>", "<u@[127.0.0.1]>"] {
            assert_eq!(rcpt(a).unwrap().to_string(), a);
        }
        assert_eq!(rcpt("<u@[ipv6:::1]>").unwrap().to_string(), "<u@[IPv6:::1]>");
    }

    #[test]
    fn postmaster_needs_no_domain() {
        assert_eq!(rcpt("<Postmaster>"), Ok(ForwardPath::Postmaster));
        assert_eq!(rcpt("<POSTMASTER>"), Ok(ForwardPath::Postmaster));
        assert_eq!(rcpt("<alice>"), Err(AddressError::NoDomain));
        assert_eq!(rcpt("<\"relaytest@remote.test\">"), Err(AddressError::NoDomain));
    }

    #[test]
    fn source_routes_are_dropped() {
        let p = rcpt("<@a.test,@example.test:relaytest@remote.test>").unwrap();
        assert_eq!(p.to_string(), "<relaytest@remote.test>");
        assert_eq!(rcpt("<@:x@y.test>"), Err(AddressError::BadRoute));
    }

    #[test]
    fn dot_string_rules() {
        for bad in ["<.alice@e.test>", "<alice.@e.test>", "<a..b@e.test>", "<a;b@e.test>", "<;sleep 66;>"] {
            assert!(rcpt(bad).is_err(), "{bad}");
        }
        assert!(rcpt("<`touch${IFS}/tmp/pwned`@remote.test>").is_ok());
        assert!(rcpt("<a@b@c.test>").is_err());
    }

    #[test]
    fn domain_rules() {
        assert_eq!(rcpt("<a@remote.test.>"), Err(AddressError::BadDomain));
        assert_eq!(rcpt("<a@-x.test>"), Err(AddressError::BadDomain));
        assert_eq!(rcpt("<a@[300.1.1.1]>"), Err(AddressError::BadLiteral));
        assert_eq!(rcpt("<a@[1.2.3]>"), Err(AddressError::BadLiteral));
        let label63 = "a".repeat(63);
        let long = format!("{label63}.{label63}.{label63}.{}", "b".repeat(61));
        assert_eq!(long.len(), 253);
        assert!(Domain::parse(&long).is_ok());
        assert_eq!(Domain::parse(&"a".repeat(64)), Err(AddressError::DomainTooLong));
        assert_eq!(Domain::parse(&format!("{long}.abc")), Err(AddressError::DomainTooLong));
    }

    #[test]
    fn lengths_are_enforced() {
        let local64 = "a".repeat(64);
        assert!(rcpt(&format!("<{local64}@e.test>")).is_ok());
        assert_eq!(rcpt(&format!("<{local64}a@e.test>")), Err(AddressError::LocalPartTooLong));
        let long_path = format!("<{}@{}.test>", "a".repeat(60), vec!["b".repeat(60); 4].join("."));
        assert_eq!(rcpt(&long_path), Err(AddressError::PathTooLong));
    }

    #[test]
    fn a_local_part_is_quoted_only_when_it_must_be() {
        for (text, written) in [("a.b", "a.b@x.test"), ("a b", "\"a b\"@x.test"), ("a\"b\\", "\"a\\\"b\\\\\"@x.test")] {
            let m = Mailbox::from_text(text, "x.test").unwrap();
            assert_eq!((m.to_string().as_str(), m.local_part_text().as_str()), (written, text));
        }
        assert_eq!(Mailbox::from_text(&"a".repeat(65), "x.test"), Err(AddressError::LocalPartTooLong));
    }

    #[test]
    fn quoted_local_parts() {
        let p = rcpt("<\"a\\\"b>c\"@e.test>").unwrap();
        assert_eq!(p.mailbox().unwrap().local_part_text(), "a\"b>c");
        assert_eq!(rcpt("<\"a\u{1}\"@e.test>"), Err(AddressError::BadLocalPart));
    }

    #[test]
    fn bytes_that_are_not_addresses() {
        assert_eq!(rcpt("<\u{0}@e.test>"), Err(AddressError::BadLocalPart));
        assert_eq!(ForwardPath::parse(b"\xff\xfe@b.test"), Err(AddressError::NotUtf8));
        assert!(ReversePath::parse(b"relaytest@remote.test\x00@example.test").is_err());
        assert_eq!(split_path(b"a@b.test"), Err(AddressError::MissingBrackets));
        assert_eq!(split_path(b"<a@b.test"), Err(AddressError::MissingBrackets));
    }

    #[test]
    fn utf8_addresses_are_marked_non_ascii() {
        let p = rcpt("<jösé@bücher.test>").unwrap();
        assert!(!p.is_ascii());
        assert!(rcpt("<a@b.test>").unwrap().is_ascii());
    }
}
