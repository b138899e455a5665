//! The checks a session makes, in one place: the client (its name), the sender (our own
//! domains are not for strangers; SPF), each recipient (is the domain ours, does the user
//! exist, may this client relay), and the end of data (a logged-in user's `From:`). Each is
//! a step the session or the server carries out; DNS is asked through `dns::Resolve`, so
//! tests feed the answers. What the sender checks found goes at the top of the message
//! (`authres`).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::alias::LocalUsers;
use crate::config::Config;
use crate::dkim::verify::{DkimResult, Verdict, Verifier};
use crate::dmarc::{self, Evaluation};
use crate::dns::Resolve;
use crate::message::{HeaderScan, Headers};
use crate::smtp::address::{ForwardPath, Host, ReversePath};
use crate::smtp::reply::{EnhancedStatus, Reply};
use crate::spf::{self, SpfResult};
use crate::srs::Srs;
use crate::table::TableError;

pub mod authres;
pub mod dnsbl;
pub mod greylist;

/// Why a recipient or transaction is refused; `smtp::reply` turns each into its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A local domain without that user (`550 5.1.1`).
    UnknownUser(String),
    /// Whether the user exists cannot be said now (`451 4.3.0`): Dovecot's userdb is down.
    LookupFailed(String),
    /// Not ours, and the client may not relay (`554 5.7.1`).
    RelayDenied(String),
    /// Over `max_recipients` (`452 4.5.3`, §4.5.3.1.10).
    TooManyRecipients,
    /// DATA after every RCPT was refused (`554 5.5.1`).
    NoValidRecipients,
    /// A non-ASCII address without SMTPUTF8 (`553 5.6.7`, RFC 6531 §3.5).
    NeedsSmtputf8,
    /// Declared SIZE over the limit (`552 5.3.4`, RFC 1870).
    MessageTooBig,
    /// An ESMTP parameter after HELO, which offers none (`555 5.5.4`).
    NotOffered(&'static str),
    /// A sender in one of our own domains from a stranger (`550 5.7.1`).
    LocalSender(String),
    /// SPF said `fail` (`550 5.7.23`, RFC 7372 §3.2), with the domain's explanation.
    SpfFail(String),
    /// SPF could not be checked for now (`451 4.7.24`, RFC 7372 §3.2).
    SpfTempError(String),
    /// A logged-in user's `From:` names an address that is not theirs (`553 5.7.1`,
    /// RFC 6409 §8.1).
    FromNotOwned { address: String, user: String },
    /// From a stranger, a `From:` with no address or several: DMARC cannot name the author
    /// (`550 5.7.1`, RFC 7489 §6.6.1).
    FromCount(usize),
    /// The `From:` domain's DMARC policy is reject, and the message failed it (`550 5.7.26`,
    /// RFC 7489 §6.3, RFC 7372 §3.4).
    DmarcReject(String),
    /// An SRS address in our SRS domain that we did not make, or made too long ago
    /// (`550 5.1.1`: no such mailbox).
    BadSrs(String, crate::srs::SrsError),
}

impl From<&Refusal> for Reply {
    fn from(e: &Refusal) -> Reply {
        let es = EnhancedStatus::new;
        match e {
            Refusal::UnknownUser(who) => Reply::no_such_user(who),
            Refusal::LookupFailed(who) => Reply::new(451, es(4, 3, 0), format!("{who}: Temporary lookup failure")),
            Refusal::BadSrs(who, why) => {
                Reply::new(550, es(5, 1, 1), format!("{who}: Recipient address rejected: {why}"))
            }
            Refusal::RelayDenied(who) => Reply::new(554, es(5, 7, 1), format!("{who}: Relay access denied")),
            Refusal::TooManyRecipients => Reply::new(452, es(4, 5, 3), "Error: too many recipients"),
            Refusal::NoValidRecipients => Reply::new(554, es(5, 5, 1), "Error: no valid recipients"),
            Refusal::NeedsSmtputf8 => {
                Reply::new(553, es(5, 6, 7), "Error: non-ASCII address needs the SMTPUTF8 parameter")
            }
            Refusal::MessageTooBig => Reply::new(552, es(5, 3, 4), "Error: message size exceeds fixed limit"),
            Refusal::NotOffered(name) => {
                Reply::new(555, es(5, 5, 4), format!("Error: {name} was not offered; use EHLO"))
            }
            Refusal::LocalSender(who) => {
                Reply::new(550, es(5, 7, 1), format!("{who}: Sender address rejected: not logged in"))
            }
            Refusal::SpfFail(why) => Reply::new(550, es(5, 7, 23), format!("SPF: {why}")),
            Refusal::SpfTempError(why) => Reply::new(451, es(4, 7, 24), format!("SPF: {why}; try again later")),
            Refusal::FromNotOwned { address, user } => {
                Reply::new(553, es(5, 7, 1), format!("<{address}>: From: address rejected: not owned by user {user}"))
            }
            Refusal::FromCount(0) => Reply::new(550, es(5, 7, 1), "Message rejected: no author address in From:"),
            Refusal::FromCount(n) => {
                Reply::new(550, es(5, 7, 1), format!("Message rejected: {n} author addresses in From:; one is needed"))
            }
            Refusal::DmarcReject(domain) => Reply::new(
                550,
                es(5, 7, 26),
                format!("DMARC: {domain} refuses mail that fails its SPF and DKIM alignment"),
            ),
        }
    }
}

/// Where an accepted recipient will go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Local,
    Relay,
}

/// The client as the sender checks see it.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub ip: Option<IpAddr>,
    /// The HELO/EHLO argument.
    pub helo: &'a str,
    /// In `trusted_networks`, or a local user on a pipe.
    pub trusted: bool,
    /// The user, once logged in.
    pub user: Option<&'a str>,
    /// On an MTA port (25), not a submission port.
    pub mta: bool,
}

/// What the sender checks found, and whether they refuse the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderVerdict {
    pub findings: authres::Findings,
    pub refusal: Option<Refusal>,
}

/// The questions the session asks; `LocalPolicy` answers them from the configuration.
pub trait Policy: Send + Sync {
    fn is_trusted(&self, client: Option<IpAddr>) -> bool;
    /// At MAIL: our own domains from strangers, then SPF (RFC 7208 §2.4, and §2.3 for the
    /// null sender), asked through `dns`; without it SPF is not checked.
    fn check_sender(&self, client: &Client<'_>, from: &ReversePath, dns: Option<&dyn Resolve>) -> SenderVerdict;
    fn check_recipient(&self, to: &ForwardPath, may_relay: bool) -> Result<Destination, Refusal>;
    /// VRFY: the full address of a local user, when the name is one.
    fn verify(&self, name: &str) -> Option<String>;
    /// EXPN: the members of a local alias.
    fn expand(&self, name: &str) -> Option<Vec<String>>;
}

/// What a password check came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    Yes,
    No,
    /// Whoever checks passwords could not say (Dovecot down): try again later.
    Unavailable,
}

/// What AUTH asks (RFC 4954); `crate::auth` answers from the `auth_users` and
/// `auth_senders` files, or from Dovecot.
pub trait Authenticator: Send + Sync {
    /// Whether `client` is locked out after repeated failures.
    fn locked_out(&self, client: Option<IpAddr>) -> bool;
    /// Whether the password is the user's; a failure counts against the client.
    fn verify(&self, client: Option<IpAddr>, user: &str, password: &[u8]) -> Verified;
    /// Whether the user may use this address (no brackets) as sender, in MAIL or `From:`.
    fn may_send_as(&self, user: &str, address: &str) -> bool;
}

/// The policy of one configuration: local users and trusted networks.
pub struct LocalPolicy {
    config: Config,
    users: LocalUsers,
    /// The SRS addresses we take bounces for.
    srs: Option<Srs>,
}

impl LocalPolicy {
    /// Loads the mailboxes and aliases files the configuration names.
    pub fn load(config: &Config) -> Result<LocalPolicy, TableError> {
        Ok(LocalPolicy { config: config.clone(), users: LocalUsers::load(config)?, srs: None })
    }

    /// Takes bounces to the SRS addresses `srs` makes; any other address of the SRS shape
    /// in its domain is refused.
    pub fn with_srs(mut self, srs: Option<Srs>) -> LocalPolicy {
        self.srs = srs;
        self
    }

    /// The aliases file's unusable lines.
    pub fn problems(&self) -> &[crate::table::TableError] {
        self.users.problems()
    }
}

impl Policy for LocalPolicy {
    fn is_trusted(&self, client: Option<IpAddr>) -> bool {
        self.config.is_trusted(client)
    }

    fn check_sender(&self, client: &Client<'_>, from: &ReversePath, dns: Option<&dyn Resolve>) -> SenderVerdict {
        check_sender(&self.config, &self.users, client, from, dns)
    }

    fn check_recipient(&self, to: &ForwardPath, may_relay: bool) -> Result<Destination, Refusal> {
        let mailbox = match to {
            ForwardPath::Postmaster => return Ok(Destination::Local), // §4.5.1
            ForwardPath::Mailbox(m) => m,
        };
        let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if let Some(reversed) = self.srs.as_ref().and_then(|srs| srs.reverse_mailbox(mailbox, now())) {
            return match reversed {
                Ok(_) => Ok(Destination::Local),
                Err(why) => Err(Refusal::BadSrs(to.to_string(), why)),
            };
        }
        if self.users.is_local_domain(mailbox.host()) {
            let domain = mailbox.host().to_string();
            return match self.users.resolve_checked(&mailbox.local_part_text(), &domain) {
                Ok(Some(_)) => Ok(Destination::Local),
                Ok(None) => Err(Refusal::UnknownUser(to.to_string())),
                Err(why) => {
                    log::warn!("{to}: {why}");
                    Err(Refusal::LookupFailed(to.to_string()))
                }
            };
        }
        if may_relay { Ok(Destination::Relay) } else { Err(Refusal::RelayDenied(to.to_string())) }
    }

    fn verify(&self, name: &str) -> Option<String> {
        let (key, domain) = self.local_key(name)?;
        // A catch-all takes the mail, but names nobody.
        match key.split_once('@') {
            None => Some(format!("{key}@{domain}")),
            Some(("", _)) => None,
            Some(_) => Some(key),
        }
    }

    fn expand(&self, name: &str) -> Option<Vec<String>> {
        let (key, _) = self.local_key(name)?;
        self.users.alias(&key).map(<[String]>::to_vec)
    }
}

impl LocalPolicy {
    /// The key a VRFY or EXPN argument is found under (`alice`, `<alice@example.test>`; a bare
    /// name at the first local domain), with its domain; `None` off our domains.
    fn local_key(&self, name: &str) -> Option<(String, String)> {
        let text = name.trim_start_matches('<').trim_end_matches('>');
        let (local, domain) = match text.rsplit_once('@') {
            Some((l, d)) => (l, d.to_lowercase()),
            None => (text, self.config.local_domains.first()?.clone()),
        };
        if !self.config.local_domains.contains(&domain) {
            return None;
        }
        Some((self.users.resolve(local, &domain)?, domain))
    }
}

/// The sender checks of `Policy::check_sender`.
fn check_sender(
    config: &Config,
    users: &LocalUsers,
    client: &Client<'_>,
    from: &ReversePath,
    dns: Option<&dyn Resolve>,
) -> SenderVerdict {
    use authres::{Findings, Unchecked};
    let verdict = |findings, refusal| SenderVerdict { findings, refusal };
    if let Some(user) = client.user {
        return verdict(Findings::Unchecked(Unchecked::User(user.to_string())), None);
    }
    if client.trusted {
        return verdict(Findings::Unchecked(Unchecked::Trusted), None);
    }
    // Our own domains are ours to send from: a stranger on port 25 who claims one is
    // forging it (our users log in, our own hosts are trusted).
    if let ReversePath::Mailbox(mailbox) = from
        && client.mta
        && config.reject_local_senders
        && users.is_local_domain(mailbox.host())
    {
        return verdict(Findings::Unchecked(Unchecked::Refused), Some(Refusal::LocalSender(from.to_string())));
    }
    let Some(ip) = client.ip else { return verdict(Findings::Unchecked(Unchecked::NoAddress), None) };
    if !config.spf {
        return verdict(Findings::Unchecked(Unchecked::Off), None);
    }
    // A loopback client is a program on this host (a filter handing mail back): no
    // domain's policy lists it.
    if ip.to_canonical().is_loopback() {
        return verdict(Findings::Unchecked(Unchecked::Loopback), None);
    }
    let Some(dns) = dns else { return verdict(Findings::Unchecked(Unchecked::Off), None) };
    let spf = check_spf(dns, ip, client.helo, from, &config.hostname, config.spf_timeout);
    let refusal = match spf.outcome.result {
        SpfResult::Fail if config.spf_fail_reject => {
            let default = format!("{} is not allowed to send mail from {}", spf.ip, spf.domain);
            Some(Refusal::SpfFail(spf.outcome.explanation.clone().unwrap_or(default)))
        }
        SpfResult::TempError if config.spf_temperror_defer => {
            Some(Refusal::SpfTempError(format!("temporary error checking {}", spf.domain)))
        }
        _ => None,
    };
    verdict(Findings::Spf(spf), refusal)
}

/// RFC 7208 §2.4: the MAIL FROM identity; for the null sender, §2.3: the HELO identity,
/// `postmaster@` the HELO name. The whole check is bounded by `within`.
pub fn check_spf(
    dns: &dyn Resolve,
    ip: IpAddr,
    helo: &str,
    from: &ReversePath,
    receiver: &str,
    within: Duration,
) -> authres::SpfFinding {
    let ip = ip.to_canonical();
    let (identity, local, domain) = match from.mailbox() {
        Some(mailbox) => {
            let domain = match mailbox.host() {
                Host::Domain(d) => d.as_str().to_string(),
                Host::Literal(_) => String::new(), // §4.3: no domain, no policy: none
            };
            let local = mailbox.local_part_text();
            // §4.3: a sender without a local part is postmaster@domain.
            let local = if local.is_empty() { "postmaster".to_string() } else { local };
            (spf::Identity::MailFrom, local, domain)
        }
        None => (spf::Identity::Helo, "postmaster".to_string(), helo.to_string()),
    };
    let deadline = Instant::now().checked_add(within).unwrap_or_else(Instant::now);
    let request = spf::Request { ip, helo, local: &local, domain: &domain, receiver, deadline };
    let outcome = spf::check_host(dns, &request);
    authres::SpfFinding {
        identity,
        outcome,
        ip,
        helo: helo.to_string(),
        sender: from.mailbox().map(|m| m.to_string()),
        domain,
        receiver: receiver.to_string(),
    }
}

/// At the end of data (RFC 6409 §8.1): the `From:` addresses of a logged-in user's mail must
/// be theirs to send as.
pub fn check_message(
    user: Option<&str>,
    auth: Option<&dyn Authenticator>,
    headers: &Headers<'_>,
) -> Result<(), Refusal> {
    let (Some(user), Some(auth)) = (user, auth) else { return Ok(()) };
    match headers.addresses("from").into_iter().find(|a| !auth.may_send_as(user, a)) {
        Some(address) => Err(Refusal::FromNotOwned { address, user: user.to_string() }),
        None => Ok(()),
    }
}

/// What the checks that read a stranger's message found: one DKIM verdict per signature,
/// the DMARC evaluation of its `From:` domain, and what follows from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageVerdict {
    pub dkim: Vec<Verdict>,
    /// Whether DKIM was verified (`dkim_verify`): else `dkim` is empty, and says nothing.
    pub dkim_checked: bool,
    pub dmarc: Option<Evaluation>,
    pub refusal: Option<Refusal>,
    /// Taken, but into the recipient's Junk folder (DMARC `quarantine`).
    pub quarantine: bool,
}

/// DMARC (RFC 7489) for a message whose sender checks found `findings` and whose DKIM
/// signatures gave `dkim`: only for strangers (`Findings::checks_message`), whose `From:`
/// must hold exactly one address (§6.6.1). `roll` is a random number below 100 for `pct`.
pub fn check_author(
    findings: &authres::Findings,
    headers: &Headers<'_>,
    dkim: Vec<Verdict>,
    dns: &dyn Resolve,
    until: Instant,
    roll: u8,
) -> MessageVerdict {
    let mut verdict = MessageVerdict { dkim, dkim_checked: true, dmarc: None, refusal: None, quarantine: false };
    if !findings.checks_message() {
        return verdict;
    }
    let authors = headers.addresses("from");
    let [author] = authors.as_slice() else {
        verdict.refusal = Some(Refusal::FromCount(authors.len()));
        return verdict;
    };
    let Some(domain) = crate::message::domain_of(author).filter(|d| !d.is_empty()) else {
        verdict.refusal = Some(Refusal::FromCount(0));
        return verdict;
    };
    let evaluation = dmarc::evaluate(&domain, findings.spf_identity(), &verdict.dkim, dns, until, roll);
    if evaluation.result == "fail" {
        match evaluation.applied {
            dmarc::Policy::Reject => verdict.refusal = Some(Refusal::DmarcReject(evaluation.from.clone())),
            dmarc::Policy::Quarantine => verdict.quarantine = true,
            dmarc::Policy::None => {}
        }
    }
    verdict.dmarc = Some(evaluation);
    verdict
}

/// The checks that read a stranger's message (DKIM, RFC 6376 §6; DMARC, RFC 7489), fed the
/// text as it streams in: each signature's body hash grows with the body, and `finish` asks
/// DNS after the final dot. The header section is the caller's `HeaderScan`, which the
/// server keeps for its own checks anyway.
pub struct MessageChecks {
    /// `None` until the header section is complete, and when DKIM is not verified.
    verifier: Option<Verifier>,
    dkim: bool,
    dmarc: bool,
    now: u64,
}

impl MessageChecks {
    /// The checks the configuration asks for, for a client whose sender checks found
    /// `findings`: none for our own users and clients (`Findings::checks_message`).
    pub fn new(config: &Config, findings: &authres::Findings, now: u64) -> Option<MessageChecks> {
        let wanted = findings.checks_message() && (config.dkim_verify || config.dmarc);
        wanted.then_some(MessageChecks { verifier: None, dkim: config.dkim_verify, dmarc: config.dmarc, now })
    }

    /// The next octets of the message past what `head` took of them (`HeaderScan::feed`),
    /// `head` being fed the same text.
    pub fn feed(&mut self, head: &HeaderScan, body: &[u8]) {
        if let Some(verifier) = &mut self.verifier {
            return verifier.feed(body);
        }
        if self.dkim && head.is_done() && !head.overflowed() {
            let mut verifier = Verifier::new(&head.headers(), self.now);
            verifier.feed(body);
            self.verifier = Some(verifier);
        }
    }

    /// After the final dot: each signature's verdict, then the `From:` domain's policy, the
    /// questions asked of `dns` before `until`. `head`, and `headers` parsed from it once for
    /// every reader. `roll`: a number below 100 for `pct`.
    pub fn finish(
        self,
        (head, headers): (&HeaderScan, &Headers<'_>),
        findings: &authres::Findings,
        dns: &dyn Resolve,
        until: Instant,
        roll: u8,
    ) -> MessageVerdict {
        let dkim = match self.verifier {
            Some(verifier) => verifier.finish(headers, dns, until),
            // A header section past the bound is not read to its end (RFC 6376 §3.4: no
            // canonical form of an unread field); its signatures cannot be checked.
            None if self.dkim && head.overflowed() => vec![Verdict {
                result: DkimResult::PermError,
                domain: String::new(),
                selector: String::new(),
                reason: Some("header section too large to verify".into()),
            }],
            None => Vec::new(),
        };
        let mut verdict = match self.dmarc {
            true => check_author(findings, headers, dkim, dns, until, roll),
            false => MessageVerdict { dkim, dkim_checked: true, dmarc: None, refusal: None, quarantine: false },
        };
        verdict.dkim_checked = self.dkim;
        verdict
    }
}

impl MessageVerdict {
    /// The fields on top of the message: `Authentication-Results:` with the SPF, DKIM and
    /// DMARC results, `Received-SPF:`, and `X-Spam: Yes` on a quarantined message.
    pub fn fields(&self, findings: &authres::Findings, authserv_id: &str) -> String {
        let dkim = self.dkim_checked.then_some(self.dkim.as_slice());
        let mut fields = findings.fields_with(authserv_id, dkim, self.dmarc.as_ref());
        if self.quarantine {
            fields += "X-Spam: Yes\r\n";
        }
        fields
    }

    /// One line for the log: each DKIM result with its domain, and DMARC's.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut line = String::with_capacity(96);
        // Each part after the first follows a comma.
        let part = |line: &mut String| {
            if !line.is_empty() {
                line.push_str(", ");
            }
        };
        if self.dkim_checked {
            if self.dkim.is_empty() {
                part(&mut line);
                line.push_str("dkim=none");
            }
            for v in &self.dkim {
                part(&mut line);
                let _ = match v.domain.as_str() {
                    "" => write!(line, "dkim={}", v.result),
                    domain => write!(line, "dkim={} ({domain})", v.result),
                };
            }
        }
        if let Some(e) = &self.dmarc {
            part(&mut line);
            let _ = match e.published {
                Some(policy) => write!(line, "dmarc={} ({}, p={})", e.result, e.from, policy.name()),
                None => write!(line, "dmarc={} ({})", e.result, e.from),
            };
        }
        if self.quarantine {
            part(&mut line);
            line.push_str("quarantined");
        }
        line
    }
}

/// A number below 100 for DMARC's `pct` (RFC 7489 §6.6.4), drawn at random.
pub fn pct_roll() -> u8 {
    // A sample, not a secret: std's per-thread random hash keys (seeded from the system once,
    // then stepped at each call) are enough, and cost nothing beside OpenSSL's generator.
    use std::hash::{BuildHasher, Hasher};
    let roll = std::collections::hash_map::RandomState::new().build_hasher().finish();
    (roll % 100) as u8
}

/// The client's name for the log and `Received:`: forward-confirmed, when `reverse_dns` is
/// on; never for a loopback address (RFC 6761 §6.3: not DNS's to answer).
pub fn client_name(config: &Config, dns: Option<&dyn Resolve>, ip: IpAddr) -> Option<String> {
    if !config.reverse_dns || ip.to_canonical().is_loopback() {
        return None;
    }
    let until = Instant::now().checked_add(config.reverse_dns_timeout).unwrap_or_else(Instant::now);
    crate::dns::confirmed_name(dns?, ip, until)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::EnhancedStatus;

    #[test]
    fn every_refusal_has_its_code_and_an_agreeing_class() {
        use Refusal as R;
        let _exhaustive = |e: &Refusal| match e {
            R::UnknownUser(_) | R::RelayDenied(_) | R::TooManyRecipients | R::NoValidRecipients => (),
            R::NeedsSmtputf8 | R::MessageTooBig | R::NotOffered(_) => (),
            R::LocalSender(_) | R::SpfFail(_) | R::SpfTempError(_) | R::FromNotOwned { .. } => (),
            R::FromCount(_) | R::DmarcReject(_) | R::BadSrs(..) | R::LookupFailed(_) => (),
        };
        for (refusal, want) in [
            (R::UnknownUser("bob".into()), "550 5.1.1"),
            (R::LookupFailed("<bob@example.test>".into()), "451 4.3.0"),
            (R::RelayDenied("<x@y.test>".into()), "554 5.7.1"),
            (R::TooManyRecipients, "452 4.5.3"),
            (R::NoValidRecipients, "554 5.5.1"),
            (R::NeedsSmtputf8, "553 5.6.7"),
            (R::MessageTooBig, "552 5.3.4"),
            (R::NotOffered("SIZE"), "555 5.5.4"),
            (R::LocalSender("<boss@example.test>".into()), "550 5.7.1"),
            (R::SpfFail("no".into()), "550 5.7.23"),
            (R::SpfTempError("later".into()), "451 4.7.24"),
            (R::FromNotOwned { address: "a@b.test".into(), user: "u".into() }, "553 5.7.1"),
            (R::FromCount(0), "550 5.7.1"),
            (R::FromCount(2), "550 5.7.1"),
            (R::DmarcReject("example.test".into()), "550 5.7.26"),
            (R::BadSrs("<SRS0=x@example.test>".into(), crate::srs::SrsError::BadHash), "550 5.1.1"),
        ] {
            let reply = Reply::from(&refusal);
            let EnhancedStatus(a, b, c) = reply.status().expect("an enhanced code");
            assert_eq!(format!("{} {a}.{b}.{c}", reply.code()), want, "{refusal:?}");
            assert!(reply.agrees() && reply.is_error(), "{refusal:?}");
        }
    }

    /// A stranger's findings: SPF softfail for `domain`, which DMARC cannot align.
    fn softfail(domain: &str) -> authres::Findings {
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let outcome = spf::Outcome {
            result: SpfResult::SoftFail,
            mechanism: Some("~all".into()),
            explanation: None,
            problem: None,
        };
        authres::Findings::Spf(authres::SpfFinding {
            identity: spf::Identity::MailFrom,
            outcome,
            ip,
            helo: "mx.remote.test".into(),
            sender: Some(format!("a@{domain}")),
            domain: domain.into(),
            receiver: "mail.example.test".into(),
        })
    }

    #[test]
    fn the_checks_after_the_dot_read_a_message_in_any_pieces() {
        use crate::dns::{DnsFailure, TxtZone};
        const NOW: u64 = 1_800_000_000;
        let text = b"From: Boss <boss@signed.test>\r\nSubject: hi\r\n\r\nbody  text\r\n\r\n";
        let (pem, record) = crate::dkim::generate(false, 2048).unwrap();
        let key = crate::dkim::Key::from_pem("signed.test", "s1", std::path::Path::new("k.pem"), &pem).unwrap();
        let mut signed = crate::dkim::sign(&key, &text[..], NOW).unwrap().into_bytes();
        signed.extend_from_slice(text);
        let zone = |name: &str| -> Result<Vec<Vec<u8>>, DnsFailure> {
            match name {
                "s1._domainkey.signed.test" => Ok(vec![record.clone().into_bytes()]),
                "_dmarc.signed.test" | "_dmarc.junk.test" => Ok(vec![b"v=DMARC1; p=quarantine".to_vec()]),
                _ => Err(DnsFailure::NotFound),
            }
        };
        let dns = TxtZone(zone);
        let config = Config::parse("hostname = mail.example.test\n", "t").unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        let run_with = |config: &Config, message: &[u8], piece: usize, findings: &authres::Findings| {
            let mut checks = MessageChecks::new(config, findings, NOW).expect("a stranger is checked");
            let mut head = HeaderScan::new(crate::message::MAX_HEADER_SECTION);
            for chunk in message.chunks(piece) {
                let taken = head.feed(chunk);
                checks.feed(&head, &chunk[taken..]);
            }
            checks.finish((&head, &head.headers()), findings, &dns, until, 0)
        };
        let run =
            |message: &[u8], piece: usize, findings: &authres::Findings| run_with(&config, message, piece, findings);
        for piece in [1, 2, 3, 7, 64, 4096] {
            // Signed by its author's domain: a pass though SPF did not align.
            let v = run(&signed, piece, &softfail("remote.test"));
            assert_eq!(v.dkim.iter().map(|d| d.result).collect::<Vec<_>>(), [DkimResult::Pass], "{piece}");
            assert_eq!(v.dmarc.as_ref().map(|e| e.result), Some("pass"), "{piece}");
            assert!(!v.quarantine && v.refusal.is_none());
            let fields = v.fields(&softfail("remote.test"), "mail.example.test");
            assert!(fields.contains(";\r\n\tdkim=pass header.d=signed.test header.s=s1;\r\n"), "{fields}");
            assert!(!fields.contains("X-Spam"), "{fields}");
            // Its body changed on the way: the signature fails, and so does DMARC.
            let mut changed = signed.clone();
            changed.extend_from_slice(b"added\r\n");
            let v = run(&changed, piece, &softfail("remote.test"));
            assert_eq!(v.dkim[0].result, DkimResult::Fail, "{piece}");
            assert!(v.quarantine, "{piece}");
            let fields = v.fields(&softfail("remote.test"), "mail.example.test");
            assert!(fields.ends_with("\r\nX-Spam: Yes\r\n"), "{fields}");
            assert_eq!(v.summary(), "dkim=fail (signed.test), dmarc=fail (signed.test, p=quarantine), quarantined");
        }
        // Our own users and clients are not read; with both checks off, nobody is.
        let trusted = authres::Findings::Unchecked(authres::Unchecked::Trusted);
        assert!(MessageChecks::new(&config, &trusted, NOW).is_none());
        let off = Config::parse("hostname = mail.example.test\ndkim_verify = off\ndmarc = off\n", "t").unwrap();
        assert!(MessageChecks::new(&off, &softfail("remote.test"), NOW).is_none());
        // DMARC alone: no dkim= result is written, and DMARC sees no DKIM pass.
        let dmarc_only = Config::parse("hostname = mail.example.test\ndkim_verify = off\n", "t").unwrap();
        let v = run_with(&dmarc_only, &signed, 4096, &softfail("remote.test"));
        assert!(v.quarantine && !v.fields(&softfail("remote.test"), "h").contains("dkim="));
        // A header section past the bound cannot be verified: permerror, never a panic.
        let mut huge = signed.clone();
        let at = huge.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2;
        let filler: Vec<u8> =
            (0..2000).flat_map(|i| format!("X-Filler-{i}: {}\r\n", "y".repeat(40)).into_bytes()).collect();
        huge.splice(at..at, filler);
        let v = run(&huge, 4096, &softfail("remote.test"));
        assert_eq!(v.dkim.len(), 1);
        assert_eq!(v.dkim[0].result, DkimResult::PermError);
        assert_eq!(v.dkim[0].reason.as_deref(), Some("header section too large to verify"));
    }

    fn policy(extra: &str, mailboxes: Option<&[&str]>, aliases: &[(&str, &str)]) -> LocalPolicy {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("postern-policy-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = format!("local_domains = example.test, localhost\nrecipient_delimiter = +\n{extra}");
        if let Some(names) = mailboxes {
            let file = dir.join(format!("mailboxes-{}", names.len()));
            std::fs::write(&file, names.iter().map(|n| format!("{n}: /home/{n}/Maildir/\n")).collect::<String>())
                .unwrap();
            text += &format!("mailboxes = {}\n", file.display());
        }
        if !aliases.is_empty() {
            let file = dir.join("aliases");
            std::fs::write(&file, aliases.iter().map(|(n, v)| format!("{n}: {v}\n")).collect::<String>()).unwrap();
            text += &format!("aliases = {}\n", file.display());
        }
        LocalPolicy::load(&Config::parse(&text, "test").unwrap()).unwrap()
    }

    fn rcpt(text: &str) -> ForwardPath {
        ForwardPath::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn with_a_mailboxes_map_only_its_names_exist() {
        let p = policy("", Some(&["alice"]), &[("team", "alice")]);
        assert_eq!(p.check_recipient(&rcpt("alice@example.test"), false), Ok(Destination::Local));
        assert_eq!(p.check_recipient(&rcpt("Alice@EXAMPLE.TEST"), false), Ok(Destination::Local));
        assert_eq!(p.check_recipient(&rcpt("alice+remote.test@example.test"), false), Ok(Destination::Local));
        assert_eq!(p.check_recipient(&rcpt("team@example.test"), false), Ok(Destination::Local));
        assert_eq!(p.check_recipient(&rcpt("POSTMASTER@example.test"), false), Ok(Destination::Local));
        assert_eq!(p.check_recipient(&ForwardPath::Postmaster, false), Ok(Destination::Local));
        assert!(matches!(p.check_recipient(&rcpt("relaytest@example.test"), false), Err(Refusal::UnknownUser(_))));
    }

    #[test]
    fn without_a_map_unsafe_names_do_not_exist() {
        let p = policy("", None, &[]);
        assert_eq!(p.check_recipient(&rcpt("bob@localhost"), false), Ok(Destination::Local));
        for bad in [
            "\"../x\"@localhost",
            "\"a/b\"@localhost",
            "a/b@localhost",
            "|cmd@localhost",
            "\"|id\"@localhost",
            "relaytest%remote.test@localhost",
            "remote.test!relaytest@localhost",
            "\"relaytest@remote.test\"@localhost",
        ] {
            assert!(matches!(p.check_recipient(&rcpt(bad), false), Err(Refusal::UnknownUser(_))), "{bad}");
        }
    }

    #[test]
    fn only_srs_addresses_we_made_are_taken_and_never_as_a_relay() {
        let srs = crate::srs::Srs::new(b"secret", "example.test");
        let p = policy("", None, &[]).with_srs(Some(srs.clone()));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let ours = format!("{}@example.test", srs.forward("bob", "remote.test", now));
        assert_eq!(p.check_recipient(&rcpt(&ours), false), Ok(Destination::Local));
        let old = format!("{}@example.test", srs.forward("bob", "remote.test", now - 30 * 86400));
        let forged = ours.replace("=bob@", "=carol@");
        for (address, why) in [(old, crate::srs::SrsError::Expired), (forged, crate::srs::SrsError::BadHash)] {
            let refused = p.check_recipient(&rcpt(&address), false);
            assert_eq!(refused, Err(Refusal::BadSrs(format!("<{address}>"), why)));
            assert_eq!(p.check_recipient(&rcpt(&address), true), refused, "trust does not change it");
        }
        let without = policy("", None, &[]);
        assert!(matches!(without.check_recipient(&rcpt(&ours), false), Err(Refusal::UnknownUser(_))));
    }

    #[test]
    fn relay_needs_trust() {
        let p = policy("", None, &[]);
        for r in [
            "relaytest@remote.test",
            "a@evilexample.test",
            "a@sub.example.test",
            "a@example.test.remote.test",
            "a@[127.0.0.1]",
        ] {
            assert!(matches!(p.check_recipient(&rcpt(r), false), Err(Refusal::RelayDenied(_))), "{r}");
            assert_eq!(p.check_recipient(&rcpt(r), true), Ok(Destination::Relay));
        }
    }

    #[test]
    fn vrfy_and_expn() {
        let p = policy("", Some(&["alice"]), &[("team", "bob@remote.test")]);
        assert_eq!(p.verify("alice").as_deref(), Some("alice@example.test"));
        assert_eq!(p.verify("<alice@localhost>").as_deref(), Some("alice@localhost"));
        assert_eq!(p.verify("mallory"), None);
        assert_eq!(p.verify("alice@remote.test"), None);
        assert_eq!(p.expand("team"), Some(vec!["bob@remote.test".to_string()]));
        assert_eq!(p.expand("alice"), None);
    }
}
