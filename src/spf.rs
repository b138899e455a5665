//! SPF (RFC 7208): may this host send mail for that domain? `check_host()` over the
//! `dns::Resolve` trait, so that it is pure code fed answers in tests; the record grammar
//! (§4.6, §12), the mechanisms (§5), the modifiers (§6), the macros (§7) and the limits of
//! §4.6.4, which make every check finish in a bounded number of questions.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::dns::{DnsFailure, Resolve};

/// §4.6.4: at most 10 terms that ask DNS (include, a, mx, ptr, exists, redirect).
pub const MAX_DNS_TERMS: u32 = 10;
/// §4.6.4: at most 2 questions that find no name or no records ("void lookups").
pub const MAX_VOID_LOOKUPS: u32 = 2;
/// §4.6.4: an `mx` with more records than this is a permerror.
pub const MAX_MX_NAMES: usize = 10;
/// §4.6.4: a `ptr` (or `%{p}`) looks at the first 10 names only.
pub const MAX_PTR_NAMES: usize = 10;
/// A record longer than this is refused unread (a DNS answer is at most 64 KiB; a real SPF
/// record a few hundred octets).
pub const MAX_RECORD: usize = 4096;
/// §4.3: a domain name is at most 253 octets (without its final dot).
const MAX_NAME: usize = 253;

/// The seven results of §2.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfResult {
    None,
    Neutral,
    Pass,
    Fail,
    SoftFail,
    TempError,
    PermError,
}

impl SpfResult {
    /// The name §2.6 gives it, as `Received-SPF:` and `Authentication-Results:` write it.
    pub fn as_str(self) -> &'static str {
        match self {
            SpfResult::None => "none",
            SpfResult::Neutral => "neutral",
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        }
    }
}

impl fmt::Display for SpfResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which identity was checked (§2.3, §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    MailFrom,
    Helo,
}

/// What is being checked: the client, its HELO name, the sender, and who asks.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub ip: IpAddr,
    /// The HELO/EHLO argument, for `%{h}`.
    pub helo: &'a str,
    /// The sender's local part (`postmaster` for the HELO identity or an empty one).
    pub local: &'a str,
    /// The sender's domain: where the check starts.
    pub domain: &'a str,
    /// Our host name, for `%{r}` in explanations.
    pub receiver: &'a str,
    /// When all the questions must have been answered (§4.6.4: a bound on the elapsed time).
    pub deadline: Instant,
}

/// The answer: the result, and what the header fields and the reply say of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub result: SpfResult,
    /// The term that matched, as written in the record (`ip4:192.0.2.0/24`), or `default`.
    pub mechanism: Option<String>,
    /// For `fail`: the domain's explanation (§6.2), already expanded, printable ASCII.
    pub explanation: Option<String>,
    /// For `temperror` and `permerror`: what went wrong.
    pub problem: Option<String>,
}

/// §4: evaluate the sender's domain's policy for the client's address.
pub fn check_host(dns: &dyn Resolve, request: &Request<'_>) -> Outcome {
    let mut eval = Eval { dns, request, terms: 0, voids: 0, ip: request.ip.to_canonical() };
    match eval.check(request.domain, true) {
        Ok(found) => {
            let explanation = match (found.result, found.exp) {
                (SpfResult::Fail, Some((exp, domain))) => eval.explain(&exp, &domain),
                _ => None,
            };
            Outcome { result: found.result, mechanism: found.mechanism, explanation, problem: None }
        }
        Err(Stop::Temp(why)) => {
            Outcome { result: SpfResult::TempError, mechanism: None, explanation: None, problem: Some(why) }
        }
        Err(Stop::Perm(why)) => {
            Outcome { result: SpfResult::PermError, mechanism: None, explanation: None, problem: Some(why) }
        }
    }
}

/// What ends an evaluation early.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stop {
    Temp(String),
    Perm(String),
}

/// One record's result, with the `exp=` that applies to it (and the domain it came from).
struct Found {
    result: SpfResult,
    mechanism: Option<String>,
    exp: Option<(MacroString, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

impl Qualifier {
    fn result(self) -> SpfResult {
        match self {
            Qualifier::Pass => SpfResult::Pass,
            Qualifier::Fail => SpfResult::Fail,
            Qualifier::SoftFail => SpfResult::SoftFail,
            Qualifier::Neutral => SpfResult::Neutral,
        }
    }
}

/// A mechanism of §5, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    All,
    Include(MacroString),
    A(Option<MacroString>, Cidr),
    Mx(Option<MacroString>, Cidr),
    Ptr(Option<MacroString>),
    Ip4(Ipv4Addr, u8),
    Ip6(Ipv6Addr, u8),
    Exists(MacroString),
}

/// The prefix lengths of `a` and `mx` (§5.6: `dual-cidr-length`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub v4: u8,
    pub v6: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub qualifier: Qualifier,
    pub mechanism: Mechanism,
    /// The term as written, for `Received-SPF: ... mechanism=`.
    pub text: String,
}

/// A parsed record (§4.6): its directives in order, and its two modifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub directives: Vec<Directive>,
    pub redirect: Option<MacroString>,
    pub exp: Option<MacroString>,
}

/// A macro-string (§7.1): literal text and macros, expanded at evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacroString(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Macro { letter: u8, upper: bool, keep: Option<usize>, reverse: bool, delimiters: Vec<u8> },
}

/// Whether the text is an SPF record of version 1 (§4.5): `v=spf1`, then a space or nothing.
pub fn is_spf1(text: &[u8]) -> bool {
    text.len() >= 6 && text[..6].eq_ignore_ascii_case(b"v=spf1") && (text.len() == 6 || text[6] == b' ')
}

/// Parses a record (§4.6, §12): any syntax error makes the whole record a permerror.
pub fn parse_record(text: &str) -> Result<Record, String> {
    if !is_spf1(text.as_bytes()) {
        return Err("not an SPF version 1 record".into());
    }
    if text.len() > MAX_RECORD {
        return Err(format!("record longer than {MAX_RECORD} octets"));
    }
    let mut record = Record { directives: Vec::new(), redirect: None, exp: None };
    for term in text[6..].split(' ').filter(|t| !t.is_empty()) {
        if let Some((name, value)) = modifier(term) {
            let slot = match name.to_ascii_lowercase().as_str() {
                "redirect" => &mut record.redirect,
                "exp" => &mut record.exp,
                _ => {
                    // §6: unknown modifiers are ignored, but must still be well formed.
                    parse_macro_string(value, false).map_err(|e| format!("{term}: {e}"))?;
                    continue;
                }
            };
            if slot.is_some() {
                return Err(format!("{name} appears twice")); // §6: at most once each
            }
            *slot = Some(parse_domain_spec(value, false).map_err(|e| format!("{term}: {e}"))?);
            continue;
        }
        record.directives.push(parse_directive(term).map_err(|e| format!("{term}: {e}"))?);
    }
    Ok(record)
}

/// `name "=" macro-string`, where name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ) (§12).
fn modifier(term: &str) -> Option<(&str, &str)> {
    let (name, value) = term.split_once('=')?;
    let mut chars = name.bytes();
    let first = chars.next()?;
    let valid = first.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c));
    valid.then_some((name, value))
}

fn parse_directive(term: &str) -> Result<Directive, String> {
    let (qualifier, rest) = match term.as_bytes()[0] {
        b'+' => (Qualifier::Pass, &term[1..]),
        b'-' => (Qualifier::Fail, &term[1..]),
        b'~' => (Qualifier::SoftFail, &term[1..]),
        b'?' => (Qualifier::Neutral, &term[1..]),
        _ => (Qualifier::Pass, term),
    };
    let end = rest.find([':', '/']).unwrap_or(rest.len());
    let (name, args) = rest.split_at(end);
    let mechanism = match name.to_ascii_lowercase().as_str() {
        "all" if args.is_empty() => Mechanism::All,
        "include" => Mechanism::Include(required_domain(args)?),
        "exists" => Mechanism::Exists(required_domain(args)?),
        "a" => {
            let (domain, cidr) = domain_and_cidr(args)?;
            Mechanism::A(domain, cidr)
        }
        "mx" => {
            let (domain, cidr) = domain_and_cidr(args)?;
            Mechanism::Mx(domain, cidr)
        }
        "ptr" => match args.strip_prefix(':') {
            Some(spec) => Mechanism::Ptr(Some(parse_domain_spec(spec, false)?)),
            None if args.is_empty() => Mechanism::Ptr(None),
            None => return Err("ptr takes no prefix length".into()),
        },
        "ip4" => {
            let text = args.strip_prefix(':').ok_or("ip4 needs an address")?;
            let (addr, len) = split_prefix(text, 32)?;
            let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{addr}: not an IPv4 address"))?;
            Mechanism::Ip4(addr, len.unwrap_or(32))
        }
        "ip6" => {
            let text = args.strip_prefix(':').ok_or("ip6 needs an address")?;
            let (addr, len) = split_prefix(text, 128)?;
            let addr: Ipv6Addr = addr.parse().map_err(|_| format!("{addr}: not an IPv6 address"))?;
            Mechanism::Ip6(addr, len.unwrap_or(128))
        }
        "all" => return Err("all takes no arguments".into()),
        _ => return Err("unknown mechanism".into()),
    };
    Ok(Directive { qualifier, mechanism, text: term.to_string() })
}

fn required_domain(args: &str) -> Result<MacroString, String> {
    let spec = args.strip_prefix(':').ok_or("needs a domain")?;
    parse_domain_spec(spec, false)
}

/// `[":" domain-spec] [dual-cidr-length]` of `a` and `mx` (§5.3, §5.4).
fn domain_and_cidr(args: &str) -> Result<(Option<MacroString>, Cidr), String> {
    let mut rest = args;
    let mut cidr = Cidr { v4: 32, v6: 128 };
    if let Some(at) = rest.rfind("//") {
        cidr.v6 = prefix_length(&rest[at + 2..], 128)?;
        rest = &rest[..at];
    }
    if let Some(at) = rest.rfind('/')
        && !rest[at + 1..].is_empty()
        && rest[at + 1..].bytes().all(|c| c.is_ascii_digit())
    {
        cidr.v4 = prefix_length(&rest[at + 1..], 32)?;
        rest = &rest[..at];
    }
    let domain = match rest.strip_prefix(':') {
        Some(spec) => Some(parse_domain_spec(spec, false)?),
        None if rest.is_empty() => None,
        None => return Err("bad prefix length".into()),
    };
    Ok((domain, cidr))
}

/// `address [ "/" length ]` of `ip4` and `ip6`.
fn split_prefix(text: &str, max: u8) -> Result<(&str, Option<u8>), String> {
    match text.split_once('/') {
        Some((addr, len)) => Ok((addr, Some(prefix_length(len, max)?))),
        None => Ok((text, None)),
    }
}

/// §12: `ip4-cidr-length = "/" ("0" / %x31-39 0*1DIGIT)`, at most 32 (128 for IPv6): no
/// leading zero, no sign.
fn prefix_length(text: &str, max: u8) -> Result<u8, String> {
    let digits = text.len() <= 3 && !text.is_empty() && text.bytes().all(|c| c.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return Err(format!("/{text}: not a prefix length"));
    }
    match text.parse::<u8>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("/{text}: a prefix length is at most {max}")),
    }
}

/// §7.1: `domain-spec = macro-string domain-end`, where `domain-end` is `"." toplabel ["."]`
/// or a macro.
fn parse_domain_spec(text: &str, explanation: bool) -> Result<MacroString, String> {
    let spec = parse_macro_string(text, explanation)?;
    let ends_well = match spec.0.last() {
        None => false,
        Some(Piece::Macro { .. }) => true,
        Some(Piece::Literal(tail)) => {
            let tail = tail.strip_suffix('.').unwrap_or(tail);
            match tail.rsplit_once('.') {
                Some((_, top)) => is_toplabel(top),
                // A macro, then the last label: "%{d}.com" splits as "%{d}" and ".com".
                None => false,
            }
        }
    };
    if !ends_well {
        return Err(format!("{text}: not a domain (it must end in a macro or a top label)"));
    }
    Ok(spec)
}

/// §7.1: `toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )`.
fn is_toplabel(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !b.iter().all(u8::is_ascii_digit)
}

/// §7.1: a macro-string. `c`, `r` and `t` are allowed in an explanation only (§7.3).
pub fn parse_macro_string(text: &str, explanation: bool) -> Result<MacroString, String> {
    let bytes = text.as_bytes();
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c != b'%' {
            // macro-literal: %x21-24 / %x26-7E; an explanation may also hold spaces (§6.2).
            if !((0x21..=0x7e).contains(&c) || explanation && c == b' ') {
                return Err(format!("character {c:#04x} not allowed"));
            }
            literal.push(c as char);
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'%') => literal.push('%'),
            Some(b'_') => literal.push(' '),
            Some(b'-') => literal.push_str("%20"),
            Some(b'{') => {
                let close = text[i..].find('}').ok_or("a macro without its closing brace")? + i;
                if !literal.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(parse_macro(&bytes[i + 2..close], explanation)?);
                i = close + 1;
                continue;
            }
            _ => return Err("a '%' that starts no macro".into()),
        }
        i += 2;
    }
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(MacroString(pieces))
}

/// The inside of `%{...}`: `macro-letter transformers *delimiter` (§7.1).
fn parse_macro(inside: &[u8], explanation: bool) -> Result<Piece, String> {
    let (&first, mut rest) = inside.split_first().ok_or("an empty macro")?;
    let letter = first.to_ascii_lowercase();
    match letter {
        b's' | b'l' | b'o' | b'd' | b'i' | b'p' | b'h' | b'v' => {}
        b'c' | b'r' | b't' if explanation => {}
        b'c' | b'r' | b't' => return Err(format!("%{{{}}} is for explanations only", first as char)),
        _ => return Err(format!("%{{{}}}: no such macro", first as char)),
    }
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    let keep = match digits {
        0 => None,
        _ => {
            let n = std::str::from_utf8(&rest[..digits]).ok().and_then(|d| d.parse::<usize>().ok());
            match n {
                Some(0) => return Err("a macro keeping 0 parts".into()), // §7.3: nonzero
                Some(n) => Some(n),
                None => Some(usize::MAX), // more digits than any name has parts
            }
        }
    };
    rest = &rest[digits..];
    let reverse = matches!(rest.first(), Some(b'r' | b'R'));
    if reverse {
        rest = &rest[1..];
    }
    if let Some(bad) = rest.iter().find(|c| !b".-+,/_=".contains(c)) {
        return Err(format!("{:?} is not a macro delimiter", *bad as char));
    }
    Ok(Piece::Macro { letter, upper: first.is_ascii_uppercase(), keep, reverse, delimiters: rest.to_vec() })
}

struct Eval<'a> {
    dns: &'a dyn Resolve,
    request: &'a Request<'a>,
    terms: u32,
    voids: u32,
    ip: IpAddr,
}

impl Eval<'_> {
    /// §4: one `check_host()` for `domain` (the first one, or an include's or redirect's).
    fn check(&mut self, domain: &str, top: bool) -> Result<Found, Stop> {
        let none = Found { result: SpfResult::None, mechanism: None, exp: None };
        // §4.3: a malformed or single-label domain has no policy.
        if !valid_domain(domain) {
            return Ok(none);
        }
        let records = match self.dns.txt(domain, self.request.deadline) {
            Ok(records) => records,
            Err(DnsFailure::NotFound | DnsFailure::NoData) => {
                // An include's or redirect's missing target is a void lookup (§4.6.4).
                if !top {
                    self.void()?;
                }
                return Ok(none);
            }
            Err(DnsFailure::Temporary(why)) => return Err(Stop::Temp(format!("{domain}: {why}"))),
        };
        // §4.5: the records that start "v=spf1"; more than one is a permerror.
        let mut spf = records.iter().filter(|r| is_spf1(r));
        let Some(text) = spf.next() else { return Ok(none) };
        if spf.next().is_some() {
            return Err(Stop::Perm(format!("{domain}: more than one SPF record")));
        }
        let text = std::str::from_utf8(text).map_err(|_| Stop::Perm(format!("{domain}: a record not in ASCII")))?;
        let record = parse_record(text).map_err(|e| Stop::Perm(format!("{domain}: {e}")))?;
        for directive in &record.directives {
            if self.matches(&directive.mechanism, domain)? {
                let exp = record.exp.clone().map(|e| (e, domain.to_string()));
                return Ok(Found {
                    result: directive.qualifier.result(),
                    mechanism: Some(directive.text.clone()),
                    exp,
                });
            }
        }
        if let Some(target) = &record.redirect {
            // §6.1: the result is the target's, and so is its explanation.
            self.dns_term()?;
            let target = self.expand(target, domain)?;
            let found = self.check(&target, false)?;
            if found.result == SpfResult::None {
                return Err(Stop::Perm(format!("redirect={target}: no SPF record there")));
            }
            return Ok(found);
        }
        // §4.7: no match and no redirect: neutral.
        Ok(Found { result: SpfResult::Neutral, mechanism: Some("default".into()), exp: None })
    }

    /// §4.6.4: one more term that asks DNS.
    fn dns_term(&mut self) -> Result<(), Stop> {
        self.terms += 1;
        if self.terms > MAX_DNS_TERMS {
            return Err(Stop::Perm(format!("more than {MAX_DNS_TERMS} DNS-querying terms")));
        }
        Ok(())
    }

    /// §4.6.4: one more question that found nothing.
    fn void(&mut self) -> Result<(), Stop> {
        self.voids += 1;
        if self.voids > MAX_VOID_LOOKUPS {
            return Err(Stop::Perm(format!("more than {MAX_VOID_LOOKUPS} void lookups")));
        }
        Ok(())
    }

    /// A question whose "no such name" and "no records" are an empty answer, and a void
    /// lookup; any other failure ends the check with temperror (§5).
    fn answer<T>(&mut self, name: &str, asked: Result<Vec<T>, DnsFailure>) -> Result<Vec<T>, Stop> {
        match asked {
            Ok(found) if !found.is_empty() => Ok(found),
            Ok(_) | Err(DnsFailure::NotFound | DnsFailure::NoData) => {
                self.void()?;
                Ok(Vec::new())
            }
            Err(DnsFailure::Temporary(why)) => Err(Stop::Temp(format!("{name}: {why}"))),
        }
    }

    fn matches(&mut self, mechanism: &Mechanism, domain: &str) -> Result<bool, Stop> {
        let deadline = self.request.deadline;
        let v6 = self.ip.is_ipv6();
        match mechanism {
            Mechanism::All => Ok(true),
            Mechanism::Ip4(net, len) => Ok(in_network(self.ip, IpAddr::V4(*net), *len)),
            Mechanism::Ip6(net, len) => Ok(in_network(self.ip, IpAddr::V6(*net), *len)),
            Mechanism::Include(spec) => {
                self.dns_term()?;
                let target = self.expand(spec, domain)?;
                // §5.2: pass matches; fail, softfail, neutral do not; none is a permerror.
                match self.check(&target, false)?.result {
                    SpfResult::Pass => Ok(true),
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Ok(false),
                    SpfResult::None => Err(Stop::Perm(format!("include:{target}: no SPF record there"))),
                    SpfResult::TempError | SpfResult::PermError => Ok(false), // returned as Err above
                }
            }
            Mechanism::A(spec, cidr) => {
                self.dns_term()?;
                let target = self.target(spec.as_ref(), domain)?;
                let asked = self.dns.ips(&target, v6, deadline);
                let addrs = self.answer(&target, asked)?;
                Ok(addrs.iter().any(|a| self.in_cidr(*a, *cidr)))
            }
            Mechanism::Mx(spec, cidr) => {
                self.dns_term()?;
                let target = self.target(spec.as_ref(), domain)?;
                let asked = self.dns.mx(&target, deadline);
                let exchanges = self.answer(&target, asked)?;
                if exchanges.len() > MAX_MX_NAMES {
                    return Err(Stop::Perm(format!("mx:{target}: more than {MAX_MX_NAMES} MX records")));
                }
                for (_, exchange) in exchanges.iter().filter(|(_, x)| !x.is_empty()) {
                    let addrs = match self.dns.ips(exchange, v6, deadline) {
                        Ok(addrs) => addrs,
                        Err(DnsFailure::NotFound | DnsFailure::NoData) => Vec::new(),
                        Err(DnsFailure::Temporary(why)) => return Err(Stop::Temp(format!("{exchange}: {why}"))),
                    };
                    if addrs.iter().any(|a| self.in_cidr(*a, *cidr)) {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Ptr(spec) => {
                self.dns_term()?;
                let target = self.target(spec.as_ref(), domain)?;
                let names = self.validated_names()?;
                let target = target.to_ascii_lowercase();
                Ok(names.iter().any(|n| n == &target || n.ends_with(&format!(".{target}"))))
            }
            Mechanism::Exists(spec) => {
                self.dns_term()?;
                let target = self.expand(spec, domain)?;
                // §5.7: an A question whatever the client's address family.
                let asked = self.dns.ips(&target, false, deadline);
                Ok(!self.answer(&target, asked)?.is_empty())
            }
        }
    }

    fn target(&mut self, spec: Option<&MacroString>, domain: &str) -> Result<String, Stop> {
        match spec {
            Some(spec) => self.expand(spec, domain),
            None => Ok(domain.to_string()),
        }
    }

    fn in_cidr(&self, addr: IpAddr, cidr: Cidr) -> bool {
        match addr {
            IpAddr::V4(_) => in_network(self.ip, addr, cidr.v4),
            IpAddr::V6(_) => in_network(self.ip, addr, cidr.v6),
        }
    }

    /// §5.5: the client's names that point back at it (the first 10 PTR names only). A
    /// failure of the PTR question matches nothing; of a name's question, skips that name.
    fn validated_names(&mut self) -> Result<Vec<String>, Stop> {
        let deadline = self.request.deadline;
        let names = match self.dns.ptr(self.ip, deadline) {
            Ok(names) => names,
            Err(DnsFailure::NotFound | DnsFailure::NoData) => {
                self.void()?;
                return Ok(Vec::new());
            }
            Err(DnsFailure::Temporary(_)) => return Ok(Vec::new()),
        };
        let mut valid = Vec::new();
        for name in names.into_iter().take(MAX_PTR_NAMES) {
            if let Ok(addrs) = self.dns.ips(&name, self.ip.is_ipv6(), deadline)
                && addrs.iter().any(|a| a.to_canonical() == self.ip)
            {
                valid.push(name.to_ascii_lowercase());
            }
        }
        Ok(valid)
    }

    /// §7.3: `%{p}`: a validated name, the domain itself or one below it preferred; "unknown".
    fn validated_name(&mut self, domain: &str) -> Result<String, Stop> {
        self.dns_term()?;
        let names = self.validated_names()?;
        let domain = domain.to_ascii_lowercase();
        let best = names
            .iter()
            .find(|n| **n == domain)
            .or_else(|| names.iter().find(|n| n.ends_with(&format!(".{domain}"))))
            .or(names.first());
        Ok(best.cloned().unwrap_or_else(|| "unknown".into()))
    }

    /// §7: a domain-spec expanded; over 253 octets, left-hand labels go until it fits.
    fn expand(&mut self, spec: &MacroString, domain: &str) -> Result<String, Stop> {
        let mut name = self.expand_text(spec, domain)?;
        while name.trim_end_matches('.').len() > MAX_NAME {
            match name.split_once('.') {
                Some((_, rest)) => name = rest.to_string(),
                None => break,
            }
        }
        Ok(name.trim_end_matches('.').to_string())
    }

    fn expand_text(&mut self, spec: &MacroString, domain: &str) -> Result<String, Stop> {
        let mut out = String::new();
        for piece in &spec.0 {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Macro { letter, upper, keep, reverse, delimiters } => {
                    let value = self.macro_value(*letter, domain)?;
                    let value = transform(&value, delimiters, *reverse, *keep);
                    if *upper { out.push_str(&url_escape(&value)) } else { out.push_str(&value) }
                }
            }
        }
        Ok(out)
    }

    fn macro_value(&mut self, letter: u8, domain: &str) -> Result<String, Stop> {
        let r = self.request;
        Ok(match letter {
            b's' => format!("{}@{}", r.local, r.domain),
            b'l' => r.local.to_string(),
            b'o' => r.domain.to_string(),
            b'd' => domain.to_string(),
            b'i' => dotted(self.ip),
            b'p' => self.validated_name(domain)?,
            b'v' => if self.ip.is_ipv6() { "ip6" } else { "in-addr" }.to_string(),
            b'h' => r.helo.to_string(),
            b'c' => self.ip.to_string(),
            b'r' => r.receiver.to_string(),
            b't' => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()).to_string(),
            _ => String::new(),
        })
    }

    /// §6.2: the explanation of a fail: the TXT record `exp=` names, expanded. Anything
    /// wrong (no such record, several, a bad macro, not printable) means none.
    fn explain(&mut self, exp: &MacroString, domain: &str) -> Option<String> {
        let name = self.expand(exp, domain).ok()?;
        let records = self.dns.txt(&name, self.request.deadline).ok()?;
        let [text] = records.as_slice() else { return None };
        let text = std::str::from_utf8(text).ok()?;
        let spec = parse_macro_string(text, true).ok()?;
        let explained = self.expand_text(&spec, domain).ok()?;
        let printable = explained.bytes().all(|c| (0x20..0x7f).contains(&c));
        (printable && !explained.trim().is_empty()).then(|| explained.trim().chars().take(300).collect())
    }
}

/// §4.3: a name with at least two labels, each 1 to 63 octets, 253 in all, printable.
fn valid_domain(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.len() <= MAX_NAME
        && name.contains('.')
        && name.split('.').all(|l| !l.is_empty() && l.len() <= 63)
        && name.bytes().all(|c| (0x21..0x7f).contains(&c))
}

/// `ip` within `net/len`.
fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// `%{i}` (§7.3): dotted quad, or 32 dot-separated nibbles for IPv6.
fn dotted(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let hex: Vec<String> =
                v6.octets().iter().flat_map(|b| [b >> 4, b & 0xf]).map(|n| format!("{n:x}")).collect();
            hex.join(".")
        }
    }
}

/// §7.3: split on the delimiters (`.` when none), reverse when asked, keep the right-hand
/// `keep` parts, join with dots.
fn transform(value: &str, delimiters: &[u8], reverse: bool, keep: Option<usize>) -> String {
    if delimiters.is_empty() && !reverse && keep.is_none() {
        return value.to_string();
    }
    let delimiters: &[u8] = if delimiters.is_empty() { b"." } else { delimiters };
    let mut parts: Vec<&str> = value.split(|c: char| c.is_ascii() && delimiters.contains(&(c as u8))).collect();
    if reverse {
        parts.reverse();
    }
    let keep = keep.unwrap_or(parts.len()).min(parts.len());
    parts[parts.len() - keep..].join(".")
}

/// §7.3: uppercase macros are URL-escaped (RFC 3986 unreserved characters stay).
fn url_escape(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    /// A zone fed to the checks: (name, type) to an answer; absent names are NXDOMAIN.
    #[derive(Default)]
    pub struct Zone {
        txt: HashMap<String, Result<Vec<&'static str>, DnsFailure>>,
        ips: HashMap<String, Vec<IpAddr>>,
        mx: HashMap<String, Vec<(u16, String)>>,
        ptr: HashMap<IpAddr, Vec<String>>,
        asked: std::cell::RefCell<Vec<String>>,
    }

    impl Zone {
        fn txt(mut self, name: &str, records: &[&'static str]) -> Zone {
            self.txt.insert(name.into(), Ok(records.to_vec()));
            self
        }
        fn txt_fails(mut self, name: &str) -> Zone {
            self.txt.insert(name.into(), Err(DnsFailure::Temporary("SERVFAIL".into())));
            self
        }
        fn ip(mut self, name: &str, addrs: &[&str]) -> Zone {
            self.ips.insert(name.into(), addrs.iter().map(|a| a.parse().unwrap()).collect());
            self
        }
        fn mx(mut self, name: &str, hosts: &[&str]) -> Zone {
            self.mx.insert(name.into(), hosts.iter().map(|h| (10, h.to_string())).collect());
            self
        }
        fn ptr(mut self, ip: &str, names: &[&str]) -> Zone {
            self.ptr.insert(ip.parse().unwrap(), names.iter().map(|n| n.to_string()).collect());
            self
        }
        fn known(&self, name: &str) -> bool {
            self.txt.contains_key(name) || self.ips.contains_key(name) || self.mx.contains_key(name)
        }
    }

    impl Resolve for Zone {
        fn txt(&self, name: &str, _: Instant) -> Result<Vec<Vec<u8>>, DnsFailure> {
            self.asked.borrow_mut().push(format!("TXT {name}"));
            match self.txt.get(name) {
                Some(Ok(records)) => Ok(records.iter().map(|r| r.as_bytes().to_vec()).collect()),
                Some(Err(e)) => Err(e.clone()),
                None if self.known(name) => Err(DnsFailure::NoData),
                None => Err(DnsFailure::NotFound),
            }
        }
        fn ips(&self, name: &str, v6: bool, _: Instant) -> Result<Vec<IpAddr>, DnsFailure> {
            self.asked.borrow_mut().push(format!("{} {name}", if v6 { "AAAA" } else { "A" }));
            match self.ips.get(name) {
                Some(addrs) => Ok(addrs.iter().filter(|a| a.is_ipv6() == v6).copied().collect()),
                None if self.known(name) => Err(DnsFailure::NoData),
                None => Err(DnsFailure::NotFound),
            }
        }
        fn mx(&self, name: &str, _: Instant) -> Result<Vec<(u16, String)>, DnsFailure> {
            self.asked.borrow_mut().push(format!("MX {name}"));
            match self.mx.get(name) {
                Some(hosts) => Ok(hosts.clone()),
                None if self.known(name) => Err(DnsFailure::NoData),
                None => Err(DnsFailure::NotFound),
            }
        }
        fn ptr(&self, ip: IpAddr, _: Instant) -> Result<Vec<String>, DnsFailure> {
            self.asked.borrow_mut().push(format!("PTR {ip}"));
            self.ptr.get(&ip).cloned().ok_or(DnsFailure::NotFound)
        }
    }

    fn check(zone: &Zone, ip: &str, sender: &str) -> Outcome {
        let (local, domain) = sender.rsplit_once('@').unwrap();
        let request = Request {
            ip: ip.parse().unwrap(),
            helo: "mx.sender.test",
            local,
            domain,
            receiver: "mail.example.test",
            deadline: Instant::now() + Duration::from_secs(20),
        };
        check_host(zone, &request)
    }

    fn result(zone: &Zone, ip: &str, sender: &str) -> SpfResult {
        check(zone, ip, sender).result
    }

    #[test]
    fn each_mechanism_matches_what_it_names() {
        let zone = Zone::default()
            .txt("ip.test", &["v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"])
            .txt("a.test", &["v=spf1 a a:other.a.test/24 -all"])
            .ip("a.test", &["192.0.2.1", "2001:db8::1"])
            .ip("other.a.test", &["198.51.100.1"])
            .txt("mx.test", &["v=spf1 mx -all"])
            .mx("mx.test", &["mail.mx.test"])
            .ip("mail.mx.test", &["192.0.2.25"])
            .txt("ex.test", &["v=spf1 exists:%{i}.ok.ex.test -all"])
            .ip("192.0.2.9.ok.ex.test", &["127.0.0.2"])
            .txt("ptr.test", &["v=spf1 ptr -all"])
            .ptr("192.0.2.80", &["host.ptr.test", "liar.ptr.test"])
            .ip("host.ptr.test", &["192.0.2.80"])
            .txt("inc.test", &["v=spf1 include:ip.test ~all"])
            .txt("red.test", &["v=spf1 redirect=ip.test"]);
        assert_eq!(result(&zone, "192.0.2.7", "a@ip.test"), SpfResult::Pass);
        assert_eq!(result(&zone, "2001:db8::5", "a@ip.test"), SpfResult::Pass);
        assert_eq!(result(&zone, "203.0.113.1", "a@ip.test"), SpfResult::Fail);
        assert_eq!(result(&zone, "192.0.2.1", "a@a.test"), SpfResult::Pass);
        assert_eq!(result(&zone, "2001:db8::1", "a@a.test"), SpfResult::Pass);
        assert_eq!(result(&zone, "198.51.100.200", "a@a.test"), SpfResult::Pass);
        assert_eq!(result(&zone, "192.0.2.2", "a@a.test"), SpfResult::Fail);
        assert_eq!(result(&zone, "192.0.2.25", "a@mx.test"), SpfResult::Pass);
        assert_eq!(result(&zone, "192.0.2.26", "a@mx.test"), SpfResult::Fail);
        assert_eq!(result(&zone, "192.0.2.9", "a@ex.test"), SpfResult::Pass);
        assert_eq!(result(&zone, "192.0.2.10", "a@ex.test"), SpfResult::Fail);
        assert_eq!(result(&zone, "192.0.2.80", "a@ptr.test"), SpfResult::Pass);
        assert_eq!(result(&zone, "192.0.2.7", "a@inc.test"), SpfResult::Pass);
        assert_eq!(result(&zone, "203.0.113.1", "a@inc.test"), SpfResult::SoftFail);
        assert_eq!(result(&zone, "203.0.113.1", "a@red.test"), SpfResult::Fail);
        assert_eq!(check(&zone, "192.0.2.7", "a@ip.test").mechanism.as_deref(), Some("ip4:192.0.2.0/24"));
    }

    #[test]
    fn the_seven_results() {
        let zone = Zone::default()
            .txt("none.test", &["some other text"])
            .txt("neutral.test", &["v=spf1 ip4:192.0.2.1"])
            .txt("two.test", &["v=spf1 -all", "v=spf1 +all"])
            .txt("bad.test", &["v=spf1 ip4:300.1.1.1 -all"])
            .txt_fails("down.test")
            .txt("soft.test", &["v=spf1 ~all"]);
        assert_eq!(result(&zone, "192.0.2.9", "a@none.test"), SpfResult::None);
        assert_eq!(result(&zone, "192.0.2.9", "a@nxdomain.test"), SpfResult::None);
        assert_eq!(result(&zone, "192.0.2.9", "a@single"), SpfResult::None);
        assert_eq!(result(&zone, "192.0.2.9", "a@neutral.test"), SpfResult::Neutral);
        assert_eq!(result(&zone, "192.0.2.9", "a@two.test"), SpfResult::PermError);
        assert_eq!(result(&zone, "192.0.2.9", "a@bad.test"), SpfResult::PermError);
        assert_eq!(result(&zone, "192.0.2.9", "a@down.test"), SpfResult::TempError);
        assert_eq!(result(&zone, "192.0.2.9", "a@soft.test"), SpfResult::SoftFail);
    }

    #[test]
    fn syntax_errors_anywhere_are_permerror() {
        for bad in [
            "v=spf1 -all foo",
            "v=spf1 a:",
            "v=spf1 a:com",
            "v=spf1 a:foo.123",
            "v=spf1 ip4:192.0.2.0/33",
            "v=spf1 ip4:192.0.2.0/024",
            "v=spf1 ip6:2001:db8::/129",
            "v=spf1 ip4:2001:db8::1",
            "v=spf1 redirect=a.test redirect=b.test",
            "v=spf1 exp=a.test exp=b.test",
            "v=spf1 a:%{x}.test",
            "v=spf1 a:%{d0}.test",
            "v=spf1 a:%{c}.test",
            "v=spf1 a:%{d.test",
            "v=spf1 a:50%.test",
            "v=spf1 all:foo.test",
            "v=spf1 ptr/24",
            "v=spf1 moo=%{z}",
        ] {
            assert!(parse_record(bad).is_err(), "{bad}");
        }
        for good in [
            "v=spf1",
            "v=spf1 ",
            "V=SPF1 A MX -ALL",
            "v=spf1 a/24//64 mx:%{d}/26 ptr:%{d} a:%{d}.example.test. -all",
            "v=spf1 moo.cow-far_out=man:dog/cat ip4:0.0.0.0/0",
            "v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} -all",
            "v=spf1 a:foo-bar.123-456 -all",
        ] {
            assert!(parse_record(good).is_ok(), "{good}: {:?}", parse_record(good));
        }
        assert!(!is_spf1(b"v=spf10 -all"));
    }

    #[test]
    fn macros_expand_as_section_7_4_shows() {
        let zone = Zone::default();
        let request = Request {
            ip: "192.0.2.3".parse().unwrap(),
            helo: "mx.example.org",
            local: "strong-bad",
            domain: "email.example.com",
            receiver: "mail.example.test",
            deadline: Instant::now() + Duration::from_secs(5),
        };
        let mut eval = Eval { dns: &zone, request: &request, terms: 0, voids: 0, ip: request.ip };
        let domain = "email.example.com";
        for (spec, want) in [
            ("%{s}", "strong-bad@email.example.com"),
            ("%{o}", "email.example.com"),
            ("%{d}", "email.example.com"),
            ("%{d4}", "email.example.com"),
            ("%{d3}", "email.example.com"),
            ("%{d2}", "example.com"),
            ("%{d1}", "com"),
            ("%{dr}", "com.example.email"),
            ("%{d2r}", "example.email"),
            ("%{l}", "strong-bad"),
            ("%{l-}", "strong.bad"),
            ("%{lr}", "strong-bad"),
            ("%{lr-}", "bad.strong"),
            ("%{l1r-}", "strong"),
            ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
            ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
            ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
            ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
            ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
            ("%{S}", "strong-bad%40email.example.com"),
            ("%%%_%-", "% %20"),
        ] {
            let parsed = parse_macro_string(spec, false).unwrap();
            assert_eq!(eval.expand_text(&parsed, domain).unwrap(), want, "{spec}");
        }
        let v6 = Request { ip: "2001:db8::cb01".parse().unwrap(), ..request.clone() };
        let mut eval = Eval { dns: &zone, request: &v6, terms: 0, voids: 0, ip: v6.ip };
        let parsed = parse_macro_string("%{ir}.%{v}._spf.%{d2}", false).unwrap();
        assert_eq!(
            eval.expand_text(&parsed, domain).unwrap(),
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
        );
    }

    #[test]
    fn the_limits_of_4_6_4() {
        let many: &'static str = "v=spf1 a:a1.test a:a2.test a:a3.test a:a4.test a:a5.test a:a6.test \
                                  a:a7.test a:a8.test a:a9.test a:a10.test a:a11.test -all";
        let mut zone = Zone::default().txt("many.test", &[many]);
        for i in 1..=11 {
            zone = zone.ip(&format!("a{i}.test"), &["198.51.100.1"]);
        }
        assert_eq!(result(&zone, "192.0.2.1", "x@many.test"), SpfResult::PermError);
        // Ten is allowed: the eleventh term is never reached when the tenth matches.
        let zone = zone.ip("a10.test", &["192.0.2.1"]);
        assert_eq!(result(&zone, "192.0.2.1", "x@many.test"), SpfResult::Pass);
        // Three void lookups.
        let zone = Zone::default().txt("void.test", &["v=spf1 a:n1.void.test a:n2.void.test a:n3.void.test -all"]);
        let outcome = check(&zone, "192.0.2.1", "x@void.test");
        assert_eq!(outcome.result, SpfResult::PermError, "{outcome:?}");
        let zone = Zone::default().txt("void.test", &["v=spf1 a:n1.void.test a:n2.void.test -all"]);
        assert_eq!(result(&zone, "192.0.2.1", "x@void.test"), SpfResult::Fail);
        // More than ten MX records.
        let hosts: Vec<String> = (0..11).map(|i| format!("m{i}.mx.test")).collect();
        let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let zone = Zone::default().txt("mx.test", &["v=spf1 mx -all"]).mx("mx.test", &names);
        assert_eq!(result(&zone, "192.0.2.1", "x@mx.test"), SpfResult::PermError);
        // An include loop ends in the term limit.
        let zone = Zone::default().txt("loop.test", &["v=spf1 include:loop.test -all"]);
        assert_eq!(result(&zone, "192.0.2.1", "x@loop.test"), SpfResult::PermError);
        let zone = Zone::default().txt("loop.test", &["v=spf1 redirect=loop.test"]);
        assert_eq!(result(&zone, "192.0.2.1", "x@loop.test"), SpfResult::PermError);
    }

    #[test]
    fn include_and_redirect_results() {
        let zone = Zone::default()
            .txt("inc-none.test", &["v=spf1 include:nothing.test -all"])
            .txt("inc-temp.test", &["v=spf1 include:down.test -all"])
            .txt_fails("down.test")
            .txt("inc-fail.test", &["v=spf1 include:deny.test ?all"])
            .txt("deny.test", &["v=spf1 -all"])
            .txt("red-none.test", &["v=spf1 redirect=nothing.test"])
            .txt("red-all.test", &["v=spf1 -all redirect=nothing.test"]);
        assert_eq!(result(&zone, "192.0.2.1", "x@inc-none.test"), SpfResult::PermError);
        assert_eq!(result(&zone, "192.0.2.1", "x@inc-temp.test"), SpfResult::TempError);
        assert_eq!(result(&zone, "192.0.2.1", "x@inc-fail.test"), SpfResult::Neutral);
        assert_eq!(result(&zone, "192.0.2.1", "x@red-none.test"), SpfResult::PermError);
        assert_eq!(result(&zone, "192.0.2.1", "x@red-all.test"), SpfResult::Fail);
    }

    #[test]
    fn a_fail_carries_the_domains_explanation() {
        let zone = Zone::default()
            .txt("exp.test", &["v=spf1 -all exp=why.exp.test"])
            .txt("why.exp.test", &["%{i} may not send for %{d}; see %{r}"])
            .txt("noexp.test", &["v=spf1 -all exp=missing.noexp.test"])
            .txt("inc.test", &["v=spf1 include:exp.test -all exp=own.inc.test"])
            .txt("own.inc.test", &["not %{o}"])
            .txt("red.test", &["v=spf1 redirect=exp.test exp=own.inc.test"]);
        let out = check(&zone, "192.0.2.1", "x@exp.test");
        assert_eq!(out.explanation.as_deref(), Some("192.0.2.1 may not send for exp.test; see mail.example.test"));
        assert_eq!(check(&zone, "192.0.2.1", "x@noexp.test").explanation, None);
        assert_eq!(check(&zone, "192.0.2.1", "x@inc.test").explanation.as_deref(), Some("not inc.test"));
        let out = check(&zone, "192.0.2.1", "x@red.test");
        assert_eq!(out.explanation.as_deref(), Some("192.0.2.1 may not send for exp.test; see mail.example.test"));
    }

    #[test]
    fn ptr_looks_at_ten_names_and_dns_errors_match_nothing() {
        let names: Vec<String> = (0..12).map(|i| format!("h{i}.ptr.test")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let zone = Zone::default()
            .txt("ptr.test", &["v=spf1 ptr -all"])
            .ptr("192.0.2.1", &refs)
            .ip("h11.ptr.test", &["192.0.2.1"]);
        assert_eq!(result(&zone, "192.0.2.1", "x@ptr.test"), SpfResult::Fail, "the eleventh name is not looked at");
        let zone = zone.ip("h9.ptr.test", &["192.0.2.1"]);
        assert_eq!(result(&zone, "192.0.2.1", "x@ptr.test"), SpfResult::Pass);
    }

    #[test]
    fn ipv4_mapped_clients_are_checked_as_ipv4() {
        let zone = Zone::default().txt("ip.test", &["v=spf1 ip4:192.0.2.0/24 -all"]);
        assert_eq!(result(&zone, "::ffff:192.0.2.7", "a@ip.test"), SpfResult::Pass);
    }
}
