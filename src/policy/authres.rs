//! The header fields that say what the checks found: `Authentication-Results:` (RFC 8601)
//! and `Received-SPF:` (RFC 7208 §9.1), written above `Received:`; and which
//! `Authentication-Results:` fields a client sent under our name (RFC 8601 §5).

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
        // The results that read the message, one resinfo each (RFC 8601 §2.2).
        let read: Vec<String> = dkim.map(dkim_results).into_iter().chain(dmarc.map(dmarc_result)).collect();
        let read = (!read.is_empty()).then(|| read.join(";\r\n\t"));
        match (self, read) {
            (Findings::Unchecked(Unchecked::Off), Some(read)) => {
                format!("Authentication-Results: {authserv_id} (SPF not checked);\r\n\t{read}\r\n")
            }
            (Findings::Unchecked(why), _) => {
                let result = match why {
                    Unchecked::User(user) => format!(";\r\n\tauth=pass smtp.auth={}", value(user)),
                    Unchecked::Trusted => " (trusted client, not checked); none".into(),
                    Unchecked::Loopback => " (loopback client, not checked); none".into(),
                    Unchecked::Off => " (SPF not checked); none".into(),
                    Unchecked::NoAddress => " (client address unknown, not checked); none".into(),
                    Unchecked::Refused => " (sender refused, not checked); none".into(),
                };
                format!("Authentication-Results: {authserv_id}{result}\r\n")
            }
            (Findings::Spf(spf), read) => {
                let property = match &spf.sender {
                    Some(sender) => format!("smtp.mailfrom={}", pvalue(sender)),
                    None => format!("smtp.helo={}", value(&spf.helo)),
                };
                let read = read.map(|r| format!(";\r\n\t{r}")).unwrap_or_default();
                format!(
                    "Authentication-Results: {authserv_id};\r\n\tspf={} {property}{read}\r\n{}",
                    spf.outcome.result,
                    received_spf(spf)
                )
            }
        }
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
    if verdicts.is_empty() {
        return "dkim=none".into();
    }
    let results: Vec<String> = verdicts
        .iter()
        .map(|v| {
            let mut text = format!("dkim={}", v.result);
            if let Some(reason) = &v.reason {
                text += &format!(" reason={}", quoted(reason));
            }
            if !v.domain.is_empty() {
                text += &format!(" header.d={}", value(&v.domain));
            }
            if !v.selector.is_empty() {
                text += &format!(" header.s={}", value(&v.selector));
            }
            text
        })
        .collect();
    results.join(";\r\n\t")
}

/// RFC 7489 §11.2: `dmarc=` with the policy published in a comment, the reason when there is
/// one, and `header.from=`.
pub fn dmarc_result(e: &Evaluation) -> String {
    let mut text = format!("dmarc={}", e.result);
    if let Some(policy) = e.published {
        text += &format!(" (p={} dis={})", policy.name(), e.applied.name());
    }
    if let Some(reason) = &e.reason {
        text += &format!(" reason={}", quoted(reason));
    }
    text + &format!(" header.from={}", value(&e.from))
}

/// RFC 7208 §9.1: the result, a comment a person reads, then the key-value pairs.
pub fn received_spf(spf: &SpfFinding) -> String {
    let who = match (&spf.sender, spf.identity) {
        (Some(sender), Identity::MailFrom) => sender.clone(),
        _ => format!("postmaster@{}", spf.helo),
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
    let mut pairs = vec![
        format!("client-ip={ip};"),
        format!("envelope-from={};", quoted(spf.sender.as_deref().unwrap_or(""))),
        format!("helo={};", value(&spf.helo)),
        format!("receiver={};", value(&spf.receiver)),
        format!("identity={};", if spf.identity == Identity::MailFrom { "mailfrom" } else { "helo" }),
    ];
    if let Some(mechanism) = &spf.outcome.mechanism {
        pairs.push(format!("mechanism={};", quoted(mechanism)));
    }
    if let Some(problem) = &spf.outcome.problem {
        pairs.push(format!("problem={};", quoted(problem)));
    }
    let mut field = format!("Received-SPF: {} ({}: {})", spf.outcome.result, spf.receiver, comment(&said));
    let mut line = field.len();
    for pair in pairs {
        // Folded before a pair that would take the line past 78 octets (RFC 5322 §2.1.1).
        if line + 1 + pair.len() > 78 {
            field.push_str("\r\n\t");
            line = 1;
        } else {
            field.push(' ');
            line += 1;
        }
        line += pair.len();
        field.push_str(&pair);
    }
    field + "\r\n"
}

/// Text a client or a DNS zone supplied, made safe for a header field: printable, one line,
/// at most 200 characters.
fn clean(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// Comment text (RFC 5322 §3.2.2): parentheses and backslashes quoted.
fn comment(text: &str) -> String {
    let mut out = String::new();
    for c in clean(text).chars() {
        if matches!(c, '(' | ')' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A quoted-string (RFC 5322 §3.2.4).
fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in clean(text).chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out + "\""
}

/// A dot-atom when the text is one, else a quoted-string (RFC 7208 §9.1 `key-value-pair`,
/// RFC 8601 `value`).
fn value(text: &str) -> String {
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    let dot_atom = !text.is_empty()
        && !text.starts_with('.')
        && !text.ends_with('.')
        && !text.contains("..")
        && text.chars().all(|c| atext(c) || c == '.');
    if dot_atom && !text.contains('=') && !text.contains('/') { text.to_string() } else { quoted(text) }
}

/// RFC 8601 §2.2 `pvalue`: `local-part@domain` as it is when it is one, else quoted.
fn pvalue(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) if !domain.is_empty() && value(domain) == domain => {
            let local_ok = local.starts_with('"') || value(local) == local;
            if local_ok && !local.chars().any(char::is_control) { address.to_string() } else { quoted(address) }
        }
        _ => quoted(address),
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
