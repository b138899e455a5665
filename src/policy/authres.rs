//! The header fields that say what the checks found: `Authentication-Results:` (RFC 8601)
//! and `Received-SPF:` (RFC 7208 §9.1), written above `Received:`; and which
//! `Authentication-Results:` fields a client sent under our name (RFC 8601 §5).

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::dkim::verify::Verdict;
use crate::dmarc::Evaluation;
use crate::spf::{Identity, Outcome, SpfResult};

/// What the sender checks found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Findings {
    /// SPF was not checked, and why.
    Unchecked(Unchecked),
    Spf(SpfFinding),
}

/// Why SPF was not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unchecked {
    /// A logged-in user's mail (RFC 8601 §2.7.4: `auth=pass`).
    User(String),
    /// A client in `trusted_networks`, or a local user: our own mail, which must not fail
    /// its own domain's SPF on its way through.
    Trusted,
    /// A program on this host.
    Loopback,
    /// `spf = off`, or no DNS to ask.
    Off,
    /// A pipe (inetd over a pipe): no address to check.
    NoAddress,
    /// The sender was refused before SPF.
    Refused,
}

/// One SPF check and what it was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfFinding {
    pub identity: Identity,
    pub outcome: Outcome,
    pub ip: IpAddr,
    pub helo: String,
    /// The MAIL FROM address, without brackets; `None` for the null sender.
    pub sender: Option<String>,
    /// The domain checked: the sender's, or the HELO name.
    pub domain: String,
    pub receiver: String,
}

impl Findings {
    /// The fields to write at the top of the message, above `Received:`, each ending CRLF:
    /// `Authentication-Results:` first, then `Received-SPF:` when SPF was checked.
    pub fn fields(&self, authserv_id: &str) -> String {
        self.fields_with(authserv_id, None, None)
    }

    /// The same, with the results of the checks that read the message: `dkim`, one verdict
    /// per signature checked (`Some(&[])`: the message has none), `None` when not checked;
    /// then DMARC's, when it was evaluated.
    pub fn fields_with(&self, authserv_id: &str, dkim: Option<&[Verdict]>, dmarc: Option<&Evaluation>) -> String {
        // The results that read the message, one resinfo each (RFC 8601 §2.2), written
        // straight into the field.
        let read = |out: &mut String| {
            if let Some(verdicts) = dkim {
                out.push_str(";\r\n\t");
                push_dkim_results(out, verdicts);
            }
            if let Some(e) = dmarc {
                out.push_str(";\r\n\t");
                push_dmarc_result(out, e);
            }
        };
        let mut out = String::with_capacity(512);
        out.push_str("Authentication-Results: ");
        out.push_str(authserv_id);
        match self {
            Findings::Unchecked(Unchecked::Off) if dkim.is_some() || dmarc.is_some() => {
                out.push_str(" (SPF not checked)");
                read(&mut out);
                out.push_str("\r\n");
            }
            Findings::Unchecked(why) => {
                match why {
                    Unchecked::User(user) => {
                        out.push_str(";\r\n\tauth=pass smtp.auth=");
                        push_value(&mut out, user);
                    }
                    Unchecked::Trusted => out.push_str(" (trusted client, not checked); none"),
                    Unchecked::Loopback => out.push_str(" (loopback client, not checked); none"),
                    Unchecked::Off => out.push_str(" (SPF not checked); none"),
                    Unchecked::NoAddress => out.push_str(" (client address unknown, not checked); none"),
                    Unchecked::Refused => out.push_str(" (sender refused, not checked); none"),
                }
                out.push_str("\r\n");
            }
            Findings::Spf(spf) => {
                let _ = write!(out, ";\r\n\tspf={} ", spf.outcome.result);
                match &spf.sender {
                    Some(sender) => {
                        out.push_str("smtp.mailfrom=");
                        push_pvalue(&mut out, sender);
                    }
                    None => {
                        out.push_str("smtp.helo=");
                        push_value(&mut out, &spf.helo);
                    }
                }
                read(&mut out);
                out.push_str("\r\n");
                push_received_spf(&mut out, spf);
            }
        }
        out
    }

    /// Whether the checks that read the message run for this client: not for our own users
    /// and clients, which were not checked either (RFC 8601 §2.7.4, and mail relayed by our
    /// own gateway must not fail its own domain's checks).
    pub fn checks_message(&self) -> bool {
        matches!(self, Findings::Spf(_) | Findings::Unchecked(Unchecked::Off))
    }

    /// The SPF result, when SPF was checked.
    pub fn spf(&self) -> Option<SpfResult> {
        match self {
            Findings::Spf(spf) => Some(spf.outcome.result),
            Findings::Unchecked(_) => None,
        }
    }

    /// The SPF result and the domain it was about (the MAIL FROM's, or the HELO name for
    /// the null sender), as DMARC aligns it (RFC 7489 §4.1).
    pub fn spf_identity(&self) -> Option<(SpfResult, &str)> {
        match self {
            Findings::Spf(spf) => Some((spf.outcome.result, spf.domain.as_str())),
            Findings::Unchecked(_) => None,
        }
    }
}

/// RFC 8601 §2.7.1: `dkim=` once per signature, with `reason=` when it is not a pass and
/// the signing domain and selector (`header.d=`, `header.s=`), each on a line of its own;
/// `dkim=none` when the message has no signature.
pub fn dkim_results(verdicts: &[Verdict]) -> String {
    let mut out = String::new();
    push_dkim_results(&mut out, verdicts);
    out
}

fn push_dkim_results(out: &mut String, verdicts: &[Verdict]) {
    if verdicts.is_empty() {
        out.push_str("dkim=none");
    }
    for (i, v) in verdicts.iter().enumerate() {
        if i > 0 {
            out.push_str(";\r\n\t");
        }
        let _ = write!(out, "dkim={}", v.result);
        if let Some(reason) = &v.reason {
            out.push_str(" reason=");
            push_quoted(out, reason);
        }
        if !v.domain.is_empty() {
            out.push_str(" header.d=");
            push_value(out, &v.domain);
        }
        if !v.selector.is_empty() {
            out.push_str(" header.s=");
            push_value(out, &v.selector);
        }
    }
}

/// RFC 7489 §11.2: `dmarc=` with the policy published in a comment, the reason when there is
/// one, and `header.from=`.
fn push_dmarc_result(out: &mut String, e: &Evaluation) {
    let _ = write!(out, "dmarc={}", e.result);
    if let Some(policy) = e.published {
        let _ = write!(out, " (p={} dis={})", policy.name(), e.applied.name());
    }
    if let Some(reason) = &e.reason {
        out.push_str(" reason=");
        push_quoted(out, reason);
    }
    out.push_str(" header.from=");
    push_value(out, &e.from);
}

/// RFC 7208 §9.1: the result, a comment a person reads, then the key-value pairs.
fn push_received_spf(field: &mut String, spf: &SpfFinding) {
    let who = match (&spf.sender, spf.identity) {
        (Some(sender), Identity::MailFrom) => std::borrow::Cow::Borrowed(sender.as_str()),
        _ => std::borrow::Cow::Owned(format!("postmaster@{}", spf.helo)),
    };
    let (ip, domain) = (spf.ip, &spf.domain);
    let said = match spf.outcome.result {
        SpfResult::Pass => format!("domain of {who} designates {ip} as permitted sender"),
        SpfResult::Fail => format!("domain of {who} does not designate {ip} as permitted sender"),
        SpfResult::SoftFail => format!("domain of transitioning {who} does not designate {ip} as permitted sender"),
        SpfResult::Neutral => format!("{ip} is neither permitted nor denied by domain of {who}"),
        SpfResult::None => format!("domain of {who} does not provide an SPF record"),
        SpfResult::TempError => format!("error in processing during lookup of {domain}"),
        SpfResult::PermError => format!("error in the SPF record of {domain}"),
    };
    let start = field.len();
    let _ = write!(field, "Received-SPF: {} ({}: ", spf.outcome.result, spf.receiver);
    push_comment(field, &said);
    field.push(')');
    let mut line = field.len() - start;
    // Each pair is written into `pair`, then onto the field: folded before a pair that would
    // take the line past 78 octets (RFC 5322 §2.1.1).
    let mut pair = String::with_capacity(128);
    let mut add = |pair: &mut String| {
        if line + 1 + pair.len() > 78 {
            field.push_str("\r\n\t");
            line = 1;
        } else {
            field.push(' ');
            line += 1;
        }
        line += pair.len();
        field.push_str(pair);
        pair.clear();
    };
    let _ = write!(pair, "client-ip={ip};");
    add(&mut pair);
    pair.push_str("envelope-from=");
    push_quoted(&mut pair, spf.sender.as_deref().unwrap_or(""));
    pair.push(';');
    add(&mut pair);
    pair.push_str("helo=");
    push_value(&mut pair, &spf.helo);
    pair.push(';');
    add(&mut pair);
    pair.push_str("receiver=");
    push_value(&mut pair, &spf.receiver);
    pair.push(';');
    add(&mut pair);
    pair.push_str(if spf.identity == Identity::MailFrom { "identity=mailfrom;" } else { "identity=helo;" });
    add(&mut pair);
    if let Some(mechanism) = &spf.outcome.mechanism {
        pair.push_str("mechanism=");
        push_quoted(&mut pair, mechanism);
        pair.push(';');
        add(&mut pair);
    }
    if let Some(problem) = &spf.outcome.problem {
        pair.push_str("problem=");
        push_quoted(&mut pair, problem);
        pair.push(';');
        add(&mut pair);
    }
    field.push_str("\r\n");
}

/// Text a client or a DNS zone supplied, made safe for a header field: printable, one line,
/// at most 200 characters.
fn clean(text: &str) -> impl Iterator<Item = char> + '_ {
    text.chars().filter(|c| !c.is_control()).take(200)
}

/// Comment text (RFC 5322 §3.2.2): parentheses and backslashes quoted.
fn push_comment(out: &mut String, text: &str) {
    for c in clean(text) {
        if matches!(c, '(' | ')' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// A quoted-string (RFC 5322 §3.2.4).
fn push_quoted(out: &mut String, text: &str) {
    out.push('"');
    for c in clean(text) {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Whether the text is a dot-atom, written as it is where a `value` may be (else quoted).
fn is_plain_value(text: &str) -> bool {
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    let dot_atom = !text.is_empty()
        && !text.starts_with('.')
        && !text.ends_with('.')
        && !text.contains("..")
        && text.chars().all(|c| atext(c) || c == '.');
    dot_atom && !text.contains('=') && !text.contains('/')
}

/// A dot-atom when the text is one, else a quoted-string (RFC 7208 §9.1 `key-value-pair`,
/// RFC 8601 `value`).
fn push_value(out: &mut String, text: &str) {
    if is_plain_value(text) { out.push_str(text) } else { push_quoted(out, text) }
}

/// RFC 8601 §2.2 `pvalue`: `local-part@domain` as it is when it is one, else quoted.
fn push_pvalue(out: &mut String, address: &str) {
    match address.rsplit_once('@') {
        Some((local, domain)) if is_plain_value(domain) => {
            let local_ok = local.starts_with('"') || is_plain_value(local);
            if local_ok && !local.chars().any(char::is_control) {
                out.push_str(address)
            } else {
                push_quoted(out, address)
            }
        }
        _ => push_quoted(out, address),
    }
}

/// RFC 8601 §5: whether an `Authentication-Results:` value (what follows the colon) names
/// `authserv_id`, ours. A value whose id cannot be read (an unclosed comment or quote) counts
/// as ours: a field we cannot read is not passed on under our name.
pub fn names_us(value: &[u8], authserv_id: &str) -> bool {
    let mut i = 0;
    // [CFWS] before the id: white space, line breaks and comments (which nest).
    loop {
        while i < value.len() && value[i].is_ascii_whitespace() {
            i += 1;
        }
        if value.get(i) != Some(&b'(') {
            break;
        }
        let mut depth = 0usize;
        while i < value.len() {
            match value[i] {
                b'\\' => i += 1,
                b'(' => depth += 1,
                b')' => depth -= 1,
                _ => {}
            }
            i += 1;
            if depth == 0 {
                break;
            }
        }
        if depth > 0 {
            return true;
        }
    }
    let id: Vec<u8> = if value.get(i) == Some(&b'"') {
        let mut id = Vec::new();
        i += 1;
        loop {
            match value.get(i) {
                None => return true,
                Some(b'"') => break,
                Some(b'\\') => {
                    i += 1;
                    if let Some(c) = value.get(i) {
                        id.push(*c);
                    }
                }
                Some(c) => id.push(*c),
            }
            i += 1;
        }
        id
    } else {
        value[i..].iter().take_while(|c| !c.is_ascii_whitespace() && !b";(".contains(c)).copied().collect()
    };
    let id = id.strip_suffix(b".").unwrap_or(&id);
    id.eq_ignore_ascii_case(authserv_id.trim_end_matches('.').as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(result: SpfResult, sender: Option<&str>) -> SpfFinding {
        SpfFinding {
            identity: if sender.is_some() { Identity::MailFrom } else { Identity::Helo },
            outcome: Outcome {
                result,
                mechanism: Some("ip4:192.0.2.0/24".into()),
                explanation: None,
                problem: (result == SpfResult::PermError).then(|| "a.test: unknown \"mechanism\"\r\nX: y".into()),
            },
            ip: "192.0.2.1".parse().unwrap(),
            helo: "mx.sender.test".into(),
            sender: sender.map(String::from),
            domain: "sender.test".into(),
            receiver: "mail.example.test".into(),
        }
    }

    #[test]
    fn dkim_results_one_per_signature() {
        use crate::dkim::verify::DkimResult;
        let verdict = |result, domain: &str, reason: Option<&str>| Verdict {
            result,
            domain: domain.into(),
            selector: "s1".into(),
            reason: reason.map(String::from),
        };
        let spf = Findings::Spf(finding(SpfResult::Pass, Some("boss@sender.test")));
        let two = [
            verdict(DkimResult::Pass, "sender.test", None),
            verdict(DkimResult::Fail, "x.test", Some("body hash did not verify")),
        ];
        let text = spf.fields_with("mx.test", Some(&two), None);
        assert!(
            text.starts_with(
                "Authentication-Results: mx.test;\r\n\tspf=pass smtp.mailfrom=boss@sender.test;\r\n\t\
                 dkim=pass header.d=sender.test header.s=s1;\r\n\t\
                 dkim=fail reason=\"body hash did not verify\" header.d=x.test header.s=s1\r\nReceived-SPF: pass"
            ),
            "{text}"
        );
        assert!(spf.fields_with("mx.test", Some(&[]), None).contains("\tdkim=none\r\n"));
        let off = Findings::Unchecked(Unchecked::Off);
        assert_eq!(
            off.fields_with("mx.test", Some(&[]), None),
            "Authentication-Results: mx.test (SPF not checked);\r\n\tdkim=none\r\n"
        );
        let user = Findings::Unchecked(Unchecked::User("alice".into()));
        assert!(!user.checks_message());
        assert_eq!(user.fields_with("mx.test", Some(&two), None), user.fields("mx.test"));
    }

    #[test]
    fn the_fields_for_a_checked_sender() {
        let text = Findings::Spf(finding(SpfResult::Pass, Some("boss@sender.test"))).fields("mail.example.test");
        let want = [
            "Authentication-Results: mail.example.test;",
            "\tspf=pass smtp.mailfrom=boss@sender.test",
            "Received-SPF: pass (mail.example.test: domain of boss@sender.test designates 192.0.2.1 as permitted sender)",
            "\tclient-ip=192.0.2.1; envelope-from=\"boss@sender.test\"; helo=mx.sender.test;",
            "\treceiver=mail.example.test; identity=mailfrom; mechanism=\"ip4:192.0.2.0/24\";",
            "",
        ];
        assert_eq!(text, want.join("\r\n"));
        for line in text.split("\r\n") {
            assert!(line.len() <= 998, "{line}");
        }
    }

    #[test]
    fn a_helo_check_a_problem_and_the_unchecked() {
        let text = Findings::Spf(finding(SpfResult::PermError, None)).fields("mail.example.test");
        assert!(text.contains("spf=permerror smtp.helo=mx.sender.test\r\n"), "{text}");
        assert!(text.contains("envelope-from=\"\";"), "{text}");
        assert!(text.contains("identity=helo;"), "{text}");
        assert!(text.contains("problem=\"a.test: unknown \\\"mechanism\\\"X: y\";"), "no line break from DNS: {text}");
        assert_eq!(text.matches("\r\n").count(), text.matches("\r\n\t").count() + 2, "{text}");
        let user = Findings::Unchecked(Unchecked::User("alice".into())).fields("mail.example.test");
        assert_eq!(user, "Authentication-Results: mail.example.test;\r\n\tauth=pass smtp.auth=alice\r\n");
        let trusted = Findings::Unchecked(Unchecked::Trusted).fields("mail.example.test");
        assert_eq!(trusted, "Authentication-Results: mail.example.test (trusted client, not checked); none\r\n");
        let odd = Findings::Unchecked(Unchecked::User("a b\"c".into())).fields("h.test");
        assert!(odd.contains("smtp.auth=\"a b\\\"c\""), "{odd}");
    }

    #[test]
    fn our_authserv_id_is_found_behind_comments_and_quotes() {
        let us = "mail.example.test";
        for (value, ours) in [
            (" mail.example.test; spf=pass smtp.mailfrom=a@b.test", true),
            (" MAIL.Example.Test.; none", true),
            (" (a comment (nested)) mail.example.test 1; none", true),
            ("\r\n\tmail.example.test;\r\n\tspf=pass", true),
            (" \"mail.example.test\"; none", true),
            (" (never closed mail.example.test", true),
            (" mail.example.test.evil.test; none", false),
            (" mx.other.test; spf=pass smtp.mailfrom=mail.example.test", false),
            (" (mail.example.test) other.test; none", false),
        ] {
            assert_eq!(names_us(value.as_bytes(), us), ours, "{value:?}");
        }
    }
}
