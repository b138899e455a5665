//! DMARC (RFC 7489): the policy a `From:` domain publishes, found by the DNS tree walk of the
//! DMARC revision (no public suffix list: doc/dependencies.md says why), its organizational
//! domain, identifier alignment of SPF and DKIM in relaxed and strict mode, and the policy
//! that applies (`p`, `sp`, `pct`). Pure but for the TXT questions, which go through
//! `dns::Resolve`; the random draw for `pct` is the caller's.

use std::time::Instant;

use crate::dkim::verify::{DkimResult, Verdict, parse_tags};
use crate::dns::{DnsFailure, Resolve};
use crate::spf::SpfResult;

/// Labels a tree walk starts from at most: a longer domain is cut to its last 8 (the DMARC
/// revision's bound), so that a walk asks at most 8 questions.
const MAX_WALK_LABELS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    None,
    Quarantine,
    Reject,
}

impl Policy {
    fn parse(text: &str) -> Option<Policy> {
        match text.to_ascii_lowercase().as_str() {
            "none" => Some(Policy::None),
            "quarantine" => Some(Policy::Quarantine),
            "reject" => Some(Policy::Reject),
            _ => None,
        }
    }

    /// RFC 7489 §6.6.4: a message outside `pct` gets the next policy down.
    fn lower(self) -> Policy {
        match self {
            Policy::Reject => Policy::Quarantine,
            Policy::Quarantine | Policy::None => Policy::None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Policy::None => "none",
            Policy::Quarantine => "quarantine",
            Policy::Reject => "reject",
        }
    }
}

/// A DMARC record (RFC 7489 §6.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub policy: Policy,
    /// `sp`: for subdomains of the domain that published it (default `p`).
    pub subdomain_policy: Policy,
    /// `pct`: 0 to 100.
    pub percent: u8,
    pub strict_dkim: bool,
    pub strict_spf: bool,
    /// `psd=y` (a public suffix's record) or `psd=n` (an organizational domain's), from the
    /// DMARC revision; `None` when absent.
    pub psd: Option<bool>,
}

/// A TXT record read as DMARC: `Ok(None)` when it is not a DMARC record at all (it does not
/// begin with `v=DMARC1`), `Err` when it is one that cannot be used.
pub fn parse_record(text: &[u8]) -> Result<Option<Record>, String> {
    let start = text.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(text.len());
    let rest = &text[start..];
    // §6.3: v=DMARC1 first, exactly; anything else is some other record.
    let is_dmarc =
        rest.starts_with(b"v=DMARC1") && rest[8..].iter().find(|b| !b.is_ascii_whitespace()).is_none_or(|&b| b == b';');
    if !is_dmarc {
        return Ok(None);
    }
    let tags = parse_tags(text)?;
    let tag = |name: &str| tags.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v);
    // §6.6.3: a record without a valid p= but with a rua= is read as p=none.
    let policy = match tag("p").map(Policy::parse) {
        Some(Some(policy)) => policy,
        _ if tag("rua").is_some_and(|r| r.contains("mailto:")) => Policy::None,
        Some(None) => return Err("p= is not none, quarantine or reject".into()),
        None => return Err("no p= tag".into()),
    };
    let subdomain_policy = match tag("sp") {
        None => policy,
        Some(sp) => Policy::parse(sp).ok_or("sp= is not none, quarantine or reject")?,
    };
    let percent = match tag("pct") {
        None => 100,
        Some(p) => p.parse::<u8>().ok().filter(|p| *p <= 100).ok_or("pct= is not 0 to 100")?,
    };
    let mode = |name: &str| match tag(name).map(str::to_ascii_lowercase).as_deref() {
        None | Some("r") => Ok(false),
        Some("s") => Ok(true),
        Some(_) => Err(format!("{name}= is not r or s")),
    };
    let psd = match tag("psd").map(str::to_ascii_lowercase).as_deref() {
        Some("y") => Some(true),
        Some("n") => Some(false),
        _ => None,
    };
    Ok(Some(Record { policy, subdomain_policy, percent, strict_dkim: mode("adkim")?, strict_spf: mode("aspf")?, psd }))
}

/// What asking `_dmarc.DOMAIN` gave.
#[derive(Debug, Clone)]
enum Asked {
    Found(Record),
    /// No record, or not exactly one usable DMARC record (§6.6.3: several are none).
    Nothing,
    Broken(String),
}

/// The DMARC questions of one message, each asked once.
struct Walker<'a> {
    dns: &'a dyn Resolve,
    until: Instant,
    asked: Vec<(String, Asked)>,
}

impl Walker<'_> {
    fn ask(&mut self, domain: &str) -> Result<Asked, String> {
        if let Some((_, answer)) = self.asked.iter().find(|(d, _)| d == domain) {
            return Ok(answer.clone());
        }
        let answer = match self.dns.txt(&format!("_dmarc.{domain}"), self.until) {
            Err(DnsFailure::Temporary(why)) => return Err(why),
            Err(DnsFailure::NotFound | DnsFailure::NoData) => Asked::Nothing,
            Ok(records) => {
                let read: Vec<Result<Record, String>> =
                    records.iter().filter_map(|r| parse_record(r).transpose()).collect();
                match read.as_slice() {
                    [Ok(record)] => Asked::Found(record.clone()),
                    [Err(why)] => Asked::Broken(why.clone()),
                    _ => Asked::Nothing,
                }
            }
        };
        self.asked.push((domain.to_string(), answer.clone()));
        Ok(answer)
    }

    /// `domain` and each parent, from the longest, starting at most 8 labels long; the bare
    /// top-level label is not asked.
    fn path(domain: &str) -> Vec<String> {
        let labels: Vec<&str> = domain.split('.').collect();
        let first = labels.len().saturating_sub(MAX_WALK_LABELS);
        (first..labels.len().saturating_sub(1)).map(|i| labels[i..].join(".")).collect()
    }

    /// The policy record for `domain` (DMARC revision §4.10.1): its own, else the first found
    /// walking up; with the domain it was found at.
    /// `Asked::Nothing` when no domain on the way has one.
    fn policy(&mut self, domain: &str) -> Result<(String, Asked), String> {
        let mut path = Walker::path(domain);
        if path.first().map(String::as_str) != Some(domain) {
            path.insert(0, domain.to_string()); // a long domain's own record is asked first
        }
        for candidate in path {
            match self.ask(&candidate)? {
                Asked::Nothing => {}
                found => return Ok((candidate, found)),
            }
        }
        Ok((domain.to_string(), Asked::Nothing))
    }

    /// The organizational domain of `domain` (DMARC revision §4.10.2): walking up, a record
    /// with `psd=n` marks it; one with `psd=y` marks a public suffix, and the domain one label
    /// below it is the one; else the shortest domain with a record; with none, `domain`.
    fn organizational(&mut self, domain: &str) -> Result<String, String> {
        let path = Walker::path(domain);
        let mut shortest = None;
        for (i, candidate) in path.iter().enumerate() {
            if let Asked::Found(record) = self.ask(candidate)? {
                match record.psd {
                    Some(false) => return Ok(candidate.clone()),
                    Some(true) => return Ok(if i == 0 { domain.to_string() } else { path[i - 1].clone() }),
                    None => shortest = Some(candidate.clone()),
                }
            }
        }
        Ok(shortest.unwrap_or_else(|| domain.to_string()))
    }

    /// §3.1: whether `other` is aligned with the `From:` domain `from`.
    fn aligned(&mut self, from: &str, other: &str, strict: bool) -> Result<bool, String> {
        let (from, other) = (from.to_ascii_lowercase(), other.to_ascii_lowercase());
        if from == other {
            return Ok(true);
        }
        if strict {
            return Ok(false);
        }
        Ok(self.organizational(&from)? == self.organizational(&other)?)
    }
}

/// The result of a DMARC check (RFC 7489 §11.2 for `Authentication-Results:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// `pass`, `fail`, `none` (no policy published), `temperror`, `permerror`.
    pub result: &'static str,
    /// The `From:` domain (`header.from=`).
    pub from: String,
    /// The policy published (`p` or `sp`), and the one applied after `pct`.
    pub published: Option<Policy>,
    pub applied: Policy,
    /// Why, for a person.
    pub reason: Option<String>,
}

/// The DMARC check of a message whose `From:` domain is `from` (one address, checked by the
/// caller), given SPF's result and the domain it checked (the MAIL FROM's, or the HELO name
/// for the null sender, §4.1), and the DKIM verdicts. `roll` is a random number below 100,
/// drawn by the caller for `pct`.
pub fn evaluate(
    from: &str,
    spf: Option<(SpfResult, &str)>,
    dkim: &[Verdict],
    dns: &dyn Resolve,
    until: Instant,
    roll: u8,
) -> Evaluation {
    let from = from.trim_end_matches('.').to_ascii_lowercase();
    let mut outcome =
        Evaluation { result: "none", from: from.clone(), published: None, applied: Policy::None, reason: None };
    let mut walker = Walker { dns, until, asked: Vec::new() };
    let (at, record) = match walker.policy(&from) {
        Err(why) => {
            outcome.result = "temperror";
            outcome.reason = Some(format!("policy lookup: {why}"));
            return outcome;
        }
        Ok((_, Asked::Nothing)) => return outcome,
        Ok((_, Asked::Broken(why))) => {
            outcome.result = "permerror";
            outcome.reason = Some(why);
            return outcome;
        }
        Ok((at, Asked::Found(record))) => (at, record),
    };
    let published = if at == from { record.policy } else { record.subdomain_policy };
    outcome.published = Some(published);
    let mut check = || -> Result<Option<String>, String> {
        for v in dkim.iter().filter(|v| v.result == DkimResult::Pass) {
            if walker.aligned(&from, &v.domain, record.strict_dkim)? {
                return Ok(Some(format!("dkim {}", v.domain)));
            }
        }
        if let Some((SpfResult::Pass, domain)) = spf
            && walker.aligned(&from, domain, record.strict_spf)?
        {
            return Ok(Some(format!("spf {domain}")));
        }
        Ok(None)
    };
    match check() {
        Err(why) => {
            outcome.result = "temperror";
            outcome.reason = Some(format!("organizational domain lookup: {why}"));
        }
        Ok(Some(_)) => outcome.result = "pass",
        Ok(None) => {
            outcome.result = "fail";
            outcome.reason = Some("no aligned SPF or DKIM pass".into());
            outcome.applied = if roll < record.percent { published } else { published.lower() };
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dkim::verify::DkimResult;
    use crate::dns::TxtZone;
    use std::collections::HashMap;
    use std::time::Duration;

    struct Zone(HashMap<&'static str, Result<Vec<&'static str>, DnsFailure>>);

    impl Zone {
        fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, DnsFailure> {
            match self.0.get(name) {
                Some(Ok(records)) => Ok(records.iter().map(|r| r.as_bytes().to_vec()).collect()),
                Some(Err(e)) => Err(e.clone()),
                None => Err(DnsFailure::NotFound),
            }
        }
    }

    fn zone(entries: &[(&'static str, &'static str)]) -> Zone {
        Zone(entries.iter().map(|(n, r)| (*n, Ok(vec![*r]))).collect())
    }

    fn pass(domain: &str) -> Verdict {
        Verdict { result: DkimResult::Pass, domain: domain.into(), selector: "s".into(), reason: None }
    }

    fn eval(
        z: &Zone,
        from: &str,
        spf: Option<(SpfResult, &str)>,
        dkim: &[Verdict],
        roll: u8,
    ) -> (&'static str, Policy) {
        let e = evaluate(from, spf, dkim, &TxtZone(|n: &str| z.txt(n)), Instant::now() + Duration::from_secs(5), roll);
        (e.result, e.applied)
    }

    #[test]
    fn records() {
        let r = parse_record(b"v=DMARC1; p=reject; sp=none; pct=50; adkim=s; aspf=r").unwrap().unwrap();
        assert_eq!(
            (r.policy, r.subdomain_policy, r.percent, r.strict_dkim, r.strict_spf),
            (Policy::Reject, Policy::None, 50, true, false)
        );
        let d = parse_record(b"v=DMARC1;p=quarantine").unwrap().unwrap();
        assert_eq!((d.subdomain_policy, d.percent, d.strict_dkim), (Policy::Quarantine, 100, false));
        assert_eq!(parse_record(b"v=spf1 -all"), Ok(None));
        assert_eq!(parse_record(b"v=DMARC10; p=none"), Ok(None));
        assert!(parse_record(b"v=DMARC1; p=bogus").is_err());
        assert!(parse_record(b"v=DMARC1; p=none; pct=101").is_err());
        assert!(parse_record(b"v=DMARC1; p=none; adkim=x").is_err());
        // §6.6.3: no valid p= but a rua=: read as p=none.
        assert_eq!(
            parse_record(b"v=DMARC1; p=bogus; rua=mailto:d@example.test").unwrap().unwrap().policy,
            Policy::None
        );
    }

    #[test]
    fn alignment_and_policies() {
        let z = zone(&[
            ("_dmarc.example.test", "v=DMARC1; p=reject; sp=quarantine"),
            ("_dmarc.strict.test", "v=DMARC1; p=reject; adkim=s; aspf=s"),
            ("_dmarc.half.test", "v=DMARC1; p=reject; pct=50"),
            ("_dmarc.watch.test", "v=DMARC1; p=none"),
        ]);
        let none: &[Verdict] = &[];
        // Relaxed: a subdomain's signature or SPF aligns with the organizational domain.
        assert_eq!(eval(&z, "example.test", None, &[pass("mail.example.test")], 0), ("pass", Policy::None));
        assert_eq!(
            eval(&z, "news.example.test", Some((SpfResult::Pass, "example.test")), none, 0),
            ("pass", Policy::None)
        );
        assert_eq!(eval(&z, "example.test", None, &[pass("other.test")], 0), ("fail", Policy::Reject));
        assert_eq!(
            eval(&z, "example.test", Some((SpfResult::SoftFail, "example.test")), none, 0),
            ("fail", Policy::Reject)
        );
        // A subdomain without its own record gets sp=.
        assert_eq!(eval(&z, "news.example.test", None, none, 0), ("fail", Policy::Quarantine));
        // Strict: only the exact domain.
        assert_eq!(eval(&z, "strict.test", None, &[pass("mail.strict.test")], 0), ("fail", Policy::Reject));
        assert_eq!(eval(&z, "strict.test", None, &[pass("STRICT.test")], 0), ("pass", Policy::None));
        // pct=50: half the failures get the policy, the rest the next one down.
        assert_eq!(eval(&z, "half.test", None, none, 49), ("fail", Policy::Reject));
        assert_eq!(eval(&z, "half.test", None, none, 50), ("fail", Policy::Quarantine));
        assert_eq!(eval(&z, "watch.test", None, none, 0), ("fail", Policy::None));
        // No record anywhere: none.
        assert_eq!(eval(&z, "nopolicy.test", None, none, 0), ("none", Policy::None));
        // A failed DKIM signature does not count.
        let failed = Verdict { result: DkimResult::Fail, ..pass("example.test") };
        assert_eq!(eval(&z, "example.test", None, &[failed], 0).0, "fail");
    }

    #[test]
    fn the_tree_walk_finds_organizational_domains() {
        let z = zone(&[
            ("_dmarc.example.test", "v=DMARC1; p=reject"),
            // A public suffix with its own record: its registrants are organizations.
            ("_dmarc.suffix.test", "v=DMARC1; p=none; psd=y"),
            ("_dmarc.a.suffix.test", "v=DMARC1; p=reject"),
            ("_dmarc.b.suffix.test", "v=DMARC1; p=reject"),
        ]);
        let dns = TxtZone(|n: &str| z.txt(n));
        let mut w = Walker { dns: &dns, until: Instant::now() + Duration::from_secs(5), asked: Vec::new() };
        assert_eq!(w.organizational("x.y.example.test").unwrap(), "example.test");
        assert_eq!(w.organizational("mail.a.suffix.test").unwrap(), "a.suffix.test");
        assert_eq!(w.organizational("unknown.test").unwrap(), "unknown.test");
        // Two registrants under one suffix are not aligned with each other.
        assert_eq!(eval(&z, "a.suffix.test", None, &[pass("b.suffix.test")], 0), ("fail", Policy::Reject));
        assert_eq!(eval(&z, "a.suffix.test", None, &[pass("mail.a.suffix.test")], 0), ("pass", Policy::None));
        // A long name is cut to its last 8 labels before the walk.
        let long = "1.2.3.4.5.6.7.8.9.example.test";
        assert!(Walker::path(long).len() < MAX_WALK_LABELS);
        assert_eq!(eval(&z, long, None, &[], 0), ("fail", Policy::Reject));
    }

    #[test]
    fn dns_failures_and_broken_records() {
        let mut z =
            zone(&[("_dmarc.broken.test", "v=DMARC1; p=sometimes"), ("_dmarc.example.test", "v=DMARC1; p=reject")]);
        z.0.insert("_dmarc.slow.test", Err(DnsFailure::Temporary("timed out".into())));
        z.0.insert("_dmarc.two.test", Ok(vec!["v=DMARC1; p=reject", "v=DMARC1; p=none"]));
        assert_eq!(eval(&z, "slow.test", None, &[], 0), ("temperror", Policy::None));
        assert_eq!(eval(&z, "broken.test", None, &[], 0), ("permerror", Policy::None));
        assert_eq!(eval(&z, "two.test", None, &[], 0), ("none", Policy::None), "several records are none (§6.6.3)");
        // The organizational domain of a signer cannot be found: temperror, never a fail.
        z.0.insert("_dmarc.mail.slow.test", Err(DnsFailure::Temporary("timed out".into())));
        assert_eq!(eval(&z, "example.test", None, &[pass("mail.slow.test")], 0), ("temperror", Policy::None));
    }
}
