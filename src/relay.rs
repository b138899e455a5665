//! Remote delivery: where each recipient's mail goes, one connection per server for the whole
//! run (RSET between messages), and each reply turned into an outcome.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Condvar, Mutex};

use crate::client::{ClientError, Dial, Session, Timeouts, TlsPolicy};
use crate::config::{Config, TlsMode};
use crate::dane::{self, Tlsa};
use crate::dkim::Signing;
use crate::dns::{DnsFailure, PerRun, name_servers};
use crate::dns::{DnsLookup, RouteError, route_domain, shuffle_seed};
use crate::mtasts::{Applied, Mode, Policies};
use crate::outcome::{Event, attempt, judge};
use crate::smtp::address::{ForwardPath, Host, Mailbox, ReversePath};
use crate::smtp::client::{Envelope, RecipientResult, SmtpError};
use crate::spool::Queued;
use crate::spool::log::{Attempt, Protection, Recipient, Where};

/// Where a remote recipient's copy goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// Everything non-local, to the configured smarthost.
    Relayhost,
    /// An address literal: straight to that address (RFC 5321 §4.1.3), no lookup.
    Literal(IpAddr),
    /// A domain, by its MX records.
    Domain(String),
}

/// The servers to try, in order.
#[derive(PartialEq, Eq)]
pub struct Destination {
    servers: Vec<Server>,
    auth: bool,
    /// The domain's MTA-STS policy, when it has one in force.
    sts: Option<Arc<Applied>>,
}

/// One server of a destination: its name (for TLS and the log), its address, and the TLS
/// it is held to.
#[derive(PartialEq, Eq)]
struct Server {
    name: String,
    addr: SocketAddr,
    tls: TlsPolicy,
    protection: Protection,
    /// Its usable, authenticated TLSA records, for `TlsPolicy::Dane`.
    dane: Arc<[Tlsa]>,
}

impl Server {
    fn new(name: &str, addr: SocketAddr, tls: TlsPolicy) -> Server {
        let protection = match tls {
            TlsPolicy::May => Protection::Opportunistic,
            TlsPolicy::Encrypt => Protection::Encrypt,
            TlsPolicy::Verify => Protection::Verify,
            TlsPolicy::Dane => Protection::Dane,
        };
        Server { name: name.to_string(), addr, tls, protection, dane: Arc::from([]) }
    }
}

/// RFC 5321 §5.1 asks to try at least two; like Postfix, at most five addresses per message.
const MAX_ADDRESSES: usize = 5;

/// Why a route has no server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// The domain's DNS says so.
    Dns(RouteError, String),
    /// The relayhost is not configured or does not resolve.
    Relayhost(String),
    /// An address literal that is this host.
    LiteralLoop(IpAddr),
    /// The domain's MTA-STS policy (enforce) allows none of its MX hosts, or none of their
    /// TLSA records could be looked up.
    Policy(Protection, String),
}

/// One remote copy of a message: its recipient, and the sender it goes with (the message's,
/// or ours for a copy an alias forwards).
pub struct Copy<'m> {
    pub to: &'m Mailbox,
    pub from: ReversePath,
}

/// One transaction a message's copies make.
struct Transaction<'m> {
    dest: Result<Destination, NoRoute>,
    from: ReversePath,
    to: Vec<&'m Mailbox>,
}

/// What happened when a message was taken to one destination (`Relay::execute`).
#[derive(Debug)]
pub enum Execution {
    /// There was no server to try.
    NoRoute(NoRoute),
    /// No session could be had; `Where` is the last server tried, under that TLS policy.
    NoSession(Where, Protection, ClientError),
    /// A transaction ran with this server, under that TLS policy.
    Ran(Where, Protection, Result<Vec<RecipientResult>, ClientError>),
    /// The copy must be signed and its key cannot be used: it waits.
    NotSigned(String),
}

/// The run's remote side, shared by its delivery threads: open sessions kept for the next
/// message, a cap on sessions per server, servers known to be down, idle resolvers.
pub struct Relay<'a> {
    config: &'a Config,
    credentials: Option<(String, String)>,
    /// `dkim_keys`: the keys our users' mail is signed with as it leaves.
    dkim: Option<crate::dkim::Keys>,
    /// Resolvers not in use; each thread borrows one (each drives its own runtime).
    dns: Mutex<Vec<DnsLookup>>,
    pool: Mutex<Pool>,
    returned: Condvar,
    /// RFC 5321 §4.5.4.1: hosts found unreachable this run are not tried again by it.
    unreachable: Mutex<HashMap<SocketAddr, ClientError>>,
    /// The domains' MTA-STS policies (`mta_sts`), each looked up once per run.
    sts: Option<Policies>,
    /// The MX hosts' TLSA records (`dane`), each looked up once per run.
    tlsa: Option<PerRun<Result<dane::Answer, DnsFailure>>>,
}

/// Idle sessions are kept by address and TLS policy; a verified one is reused for another
/// server name only when its certificate (or, with DANE, the name's TLSA records) serves
/// that name too (`Relay::fits`).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Kept {
    addr: SocketAddr,
    tls: TlsPolicy,
}

/// Sessions by server: idle ones to reuse, and how many are open to each address in all.
#[derive(Default)]
struct Pool {
    idle: HashMap<Kept, Vec<Session>>,
    open: HashMap<SocketAddr, usize>,
}

/// Loads `user:password`, refusing a file others could read.
fn load_credentials(config: &Config) -> Result<Option<(String, String)>, String> {
    let Some(path) = &config.relayhost_auth_file else { return Ok(None) };
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!("{}: readable by others; make it mode 0600 or 0400", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim_end();
    let (user, password) = line.split_once(':').ok_or(format!("{}: expected user:password", path.display()))?;
    Ok(Some((user.to_string(), password.to_string())))
}

impl<'a> Relay<'a> {
    /// A relay that only routes (`verify`): no signing keys or relayhost credentials read,
    /// which `sendmail -bv` run by any user may not be able to read.
    pub fn for_routes(config: &'a Config) -> Relay<'a> {
        Relay {
            config,
            dkim: None,
            credentials: None,
            dns: Mutex::new(Vec::new()),
            pool: Mutex::new(Pool::default()),
            returned: Condvar::new(),
            unreachable: Mutex::new(HashMap::new()),
            sts: config.mta_sts.then(|| Policies::new(config.spool.join("mta-sts"), config.connect_timeout)),
            tlsa: config.dane.then(PerRun::default),
        }
    }

    pub fn new(config: &'a Config) -> Result<Relay<'a>, String> {
        let dkim = match &config.dkim_keys {
            Some(path) => {
                let keys = crate::dkim::Keys::load(path);
                for problem in keys.problems() {
                    log::warn!("dkim_keys: {problem} (mail of that domain waits; the rest is delivered)");
                }
                Some(keys)
            }
            None => None,
        };
        let credentials = load_credentials(config).map_err(|e| format!("relayhost_auth_file: {e}"))?;
        Ok(Relay { dkim, credentials, ..Relay::for_routes(config) })
    }

    /// Where mail to `rcpt` would go, for `sendmail -bv`: its servers as `name[address]:port`,
    /// in the order they would be tried, or why there is none, as a delivery would record it.
    /// Nothing is sent.
    pub fn verify(&self, rcpt: &Mailbox) -> Result<Vec<String>, Box<Attempt>> {
        match self.destination(&self.route(rcpt)) {
            Ok(d) => Ok(d.servers.iter().map(|s| format!("{}[{}]:{}", s.name, s.addr.ip(), s.addr.port())).collect()),
            Err(none) => {
                let key = Recipient::Address(rcpt.to_string());
                let mut recorded = record(&Execution::NoRoute(none), &[key], 0);
                Err(Box::new(recorded.remove(0)))
            }
        }
    }

    fn route(&self, rcpt: &Mailbox) -> Route {
        match (rcpt.host(), &self.config.relayhost) {
            (_, Some(_)) => Route::Relayhost,
            (Host::Literal(ip), None) => Route::Literal(*ip),
            (Host::Domain(d), None) => Route::Domain(d.folded()),
        }
    }

    /// Routes each copy, and merges the routes served by the same servers, so that one
    /// transaction carries all of a message's recipients at one host with one sender (RFC
    /// 5321 §4.5.4.1). Returns each transaction: its destination (or why there is none),
    /// its sender and its recipients.
    fn plan<'m>(&self, copies: &[Copy<'m>]) -> Vec<Transaction<'m>> {
        let mut routes: Vec<(Route, &ReversePath, Vec<&Mailbox>)> = Vec::new();
        for copy in copies {
            let route = self.route(copy.to);
            match routes.iter_mut().find(|(r, from, _)| *r == route && **from == copy.from) {
                Some((_, _, served)) => served.push(copy.to),
                None => routes.push((route, &copy.from, vec![copy.to])),
            }
        }
        let mut plans: Vec<Transaction<'m>> = Vec::new();
        for (route, from, served) in routes {
            let dest = self.destination(&route);
            let same = |t: &Transaction<'_>| t.from == *from && matches!((&t.dest, &dest), (Ok(a), Ok(b)) if a == b);
            match plans.iter_mut().find(|t| same(t)) {
                Some(t) => t.to.extend(served),
                None => plans.push(Transaction { dest, from: from.clone(), to: served }),
            }
        }
        plans
    }

    /// Takes one message to all of its remote copies that are due: one transaction per
    /// destination and sender, whose outcomes (one per recipient, named by its address) go
    /// to `done` as soon as it ends, to be recorded before the next transaction starts.
    pub fn deliver<E>(
        &self,
        q: &Queued,
        copies: &[Copy<'_>],
        now: u64,
        mut done: impl FnMut(Vec<Attempt>) -> Result<(), E>,
    ) -> Result<(), E> {
        for t in self.plan(copies) {
            let keys: Vec<Recipient> = t.to.iter().map(|m| Recipient::Address(m.to_string())).collect();
            done(record(&self.execute(q, t.dest, &t.from, &t.to), &keys, now))?;
        }
        Ok(())
    }

    /// Takes the message to the destination's first server that answers; keeps the session
    /// for the next message when it ended in a known state.
    pub fn execute(
        &self,
        q: &Queued,
        dest: Result<Destination, NoRoute>,
        from: &ReversePath,
        rcpts: &[&Mailbox],
    ) -> Execution {
        let dest = match dest {
            Ok(d) => d,
            Err(no) => return Execution::NoRoute(no),
        };
        let signature = match self.dkim_signature(q) {
            Ok(s) => s.unwrap_or_default(),
            Err(why) => return Execution::NotSigned(why),
        };
        let Connected { name, kept, protection, mut session } = match self.connect(&dest) {
            Ok(found) => found,
            Err((place, protection, e)) => return Execution::NoSession(place, protection, e),
        };
        let envelope = Envelope {
            from: from.clone(),
            recipients: rcpts.iter().map(|m| ForwardPath::Mailbox((*m).clone())).collect(),
            size: q.envelope.size + signature.len() as u64,
            body: q.envelope.body,
            smtputf8: q.envelope.smtputf8,
        };
        let message = std::io::Read::chain(signature.as_bytes(), q.message());
        let result = session.transaction(&envelope, message);
        // A refusal leaves the session in a known state, fit for RSET; anything else does not.
        let reusable = matches!(
            &result,
            Ok(_) | Err(ClientError::Smtp(SmtpError::Refused(_) | SmtpError::TooBig { .. } | SmtpError::NeedsSmtputf8))
        );
        let addr = kept.addr;
        self.check_in(kept, reusable.then_some(session));
        Execution::Ran(Where::Remote { host: name, addr }, protection, result)
    }

    /// The `DKIM-Signature:` field for a copy of our own users' mail (authenticated, trusted,
    /// local) whose `From:` domain has a key; never for mail that came in for someone here
    /// and is forwarded on. A signature that cannot be made is logged, and the copy goes
    /// unsigned; a key that cannot be used holds the copy (`Err`, why), so that it is signed
    /// once the key is fixed.
    fn dkim_signature(&self, q: &Queued) -> Result<Option<String>, String> {
        let Some(keys) = self.dkim.as_ref() else { return Ok(None) };
        if !(q.envelope.submitted || q.envelope.protocol == "LOCAL") {
            return Ok(None);
        }
        match keys.sign(q.message(), unix_now()) {
            Ok(Signing::Signed(field, key)) => {
                log::info!("{}: DKIM-Signature d={} s={} a={}", q.id, key.domain, key.selector, key.algorithm());
                Ok(Some(field))
            }
            Ok(Signing::NoKey) => Ok(None),
            Ok(Signing::KeyUnusable(why)) => Err(why),
            Err(e) => {
                log::warn!("{}: not signed: {e}", q.id);
                Ok(None)
            }
        }
    }

    fn destination(&self, route: &Route) -> Result<Destination, NoRoute> {
        let port = self.config.smtp_port;
        match route {
            Route::Relayhost => {
                let Some((host, port)) = self.config.relayhost.clone() else {
                    return Err(NoRoute::Relayhost("no relayhost configured".into()));
                };
                let tls = match self.config.relayhost_tls {
                    TlsMode::May => TlsPolicy::May,
                    TlsMode::Encrypt => TlsPolicy::Encrypt,
                    TlsMode::Verify => TlsPolicy::Verify,
                };
                let addrs = (host.as_str(), port)
                    .to_socket_addrs()
                    .map_err(|e| NoRoute::Relayhost(format!("relayhost {host}: {e}")))?;
                let servers = addrs.map(|a| Server::new(&host, a, tls)).collect();
                Ok(Destination { servers, auth: true, sts: None })
            }
            Route::Literal(ip) => {
                if self.is_self("", *ip) {
                    return Err(NoRoute::LiteralLoop(*ip));
                }
                let server = Server::new(&ip.to_string(), SocketAddr::new(*ip, port), TlsPolicy::May);
                Ok(Destination { servers: vec![server], auth: false, sts: None })
            }
            Route::Domain(domain) => {
                let idle = self.dns.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let dns = match idle {
                    Some(dns) => dns,
                    None => DnsLookup::new(&self.config.dns_servers, self.config.dns_timeout)
                        .map_err(|e| NoRoute::Dns(RouteError::Temporary(e), domain.clone()))?,
                };
                let routed = route_domain(&dns, domain, &|name, ip| self.is_self(name, ip), shuffle_seed());
                let sts = match (&routed, &self.sts) {
                    (Ok(_), Some(policies)) => policies.get(domain, &dns, unix_now()),
                    _ => None,
                };
                self.dns.lock().unwrap_or_else(|e| e.into_inner()).push(dns);
                let hosts = routed.map_err(|e| NoRoute::Dns(e, domain.clone()))?;
                self.secure(domain, hosts, sts, port)
            }
        }
    }

    /// The TLS each of a domain's MX hosts is held to (RFC 8461 §2: DANE before MTA-STS):
    /// DANE for a host with authenticated TLSA records; else the domain's MTA-STS policy,
    /// which in enforce mode leaves out the hosts it does not name; else STARTTLS when offered.
    fn secure(
        &self,
        domain: &str,
        hosts: Vec<crate::dns::MxHost>,
        sts: Option<Arc<Applied>>,
        port: u16,
    ) -> Result<Destination, NoRoute> {
        let mut servers = Vec::new();
        let (mut outside, mut unknown) = (Vec::new(), Vec::new());
        for host in &hosts {
            let dane = match self.tlsa_of(&host.name, port) {
                Ok(dane) => dane,
                Err(why) => {
                    log::warn!("{domain}: MX {}: TLSA lookup failed: {why}; not used (RFC 7672 §2.2)", host.name);
                    unknown.push(format!("{}: {why}", host.name));
                    continue;
                }
            };
            let allowed = sts.as_ref().is_none_or(|s| s.policy.allows(&host.name));
            let (tls, protection) = match (&dane, &sts) {
                (Some(records), _) if records.is_empty() => (TlsPolicy::Encrypt, Protection::Dane),
                (Some(_), _) => (TlsPolicy::Dane, Protection::Dane),
                (None, Some(s)) if s.policy.mode == Mode::Enforce => (TlsPolicy::Verify, Protection::StsEnforce),
                (None, Some(_)) => (TlsPolicy::Verify, Protection::StsTesting),
                (None, None) => (TlsPolicy::May, Protection::Opportunistic),
            };
            if dane.is_none() && !allowed {
                outside.push(host.name.clone());
                if protection == Protection::StsEnforce {
                    continue;
                }
            }
            for ip in &host.addrs {
                let mut server = Server::new(&host.name, SocketAddr::new(*ip, port), tls);
                server.protection = protection;
                server.dane = Arc::from(dane.clone().unwrap_or_default());
                servers.push(server);
            }
        }
        servers.truncate(MAX_ADDRESSES);
        if let Some(s) = &sts
            && !outside.is_empty()
        {
            let (id, mode) = (&s.id, s.policy.mode.name());
            if servers.is_empty() && unknown.is_empty() {
                let why = format!(
                    "MTA-STS policy {id} of {domain} ({mode}): no MX host is in the policy ({})",
                    outside.join(", ")
                );
                return Err(NoRoute::Policy(Protection::StsEnforce, why));
            }
            let what = if s.policy.mode == Mode::Enforce { "skips" } else { "would skip" };
            let testing = if s.policy.mode == Mode::Enforce { "" } else { "; delivering as before" };
            log::warn!("{domain}: MTA-STS policy {id} ({mode}) {what} MX {}{testing}", outside.join(", "));
        }
        if servers.is_empty() {
            return Err(NoRoute::Policy(
                Protection::Dane,
                format!("TLSA records of {domain}'s MX hosts: {}", unknown.join("; ")),
            ));
        }
        Ok(Destination { servers, auth: false, sts })
    }

    /// `Some(records)` when DANE applies to `host` (its usable records; none usable means
    /// TLS without authentication, RFC 7672 §2.2); `None` when it does not; `Err` when its
    /// TLSA records could not be looked up.
    fn tlsa_of(&self, host: &str, port: u16) -> Result<Option<Vec<Tlsa>>, String> {
        let Some(memo) = &self.tlsa else { return Ok(None) };
        let name = format!("_{port}._tcp.{host}");
        let servers = &self.config.dns_servers;
        let answer = memo.get(&name, || crate::dns::tlsa(&name_servers(servers), &name, self.config.dns_timeout));
        match answer {
            Ok(dane::Answer::Secure(records)) => Ok(Some(records.into_iter().filter(Tlsa::is_usable).collect())),
            Ok(dane::Answer::NotSecure) => Ok(None),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    /// This host: its name, or an address and port it listens on, for mail would go to
    /// `ip:smtp_port` (RFC 5321 §5.1: an MX that is this host ends the list). The same address
    /// on another port is another server, such as a filter or a second instance.
    fn is_self(&self, name: &str, ip: IpAddr) -> bool {
        let named = !name.is_empty() && name.eq_ignore_ascii_case(&self.config.hostname);
        let listening = self.config.listen.iter().map(|l| l.addr).any(|l| {
            let address = l.ip() == ip || (l.ip().is_unspecified() && ip.is_loopback());
            address && l.port() == self.config.smtp_port
        });
        named || listening
    }

    /// A kept session with one of the servers, or a new one, trying each in turn, and the TLS
    /// policy it is under. At most `max_per_destination` sessions are open to one address;
    /// past that, wait.
    fn connect(&self, dest: &Destination) -> Result<Connected, (Where, Protection, ClientError)> {
        let none = ClientError::Network { text: "no address to connect to".into(), after_data: false };
        let first = dest.servers.first().map_or(Protection::Opportunistic, |s| s.protection);
        let mut last = (Where::Nowhere, first, none);
        for server in &dest.servers {
            let (name, addr) = (&server.name, server.addr);
            let place = Where::Remote { host: name.clone(), addr };
            if let Some(e) = self.unreachable.lock().unwrap_or_else(|e| e.into_inner()).get(&addr) {
                last = (place, server.protection, e.clone());
                continue;
            }
            let kept = Kept { addr, tls: server.tls };
            // A session under a stricter policy serves a laxer one as well; in testing mode,
            // so does one kept from a server whose TLS failed the policy.
            let stricter: &[TlsPolicy] = match server.tls {
                TlsPolicy::May => &[TlsPolicy::Encrypt, TlsPolicy::Verify, TlsPolicy::Dane],
                TlsPolicy::Encrypt => &[TlsPolicy::Verify, TlsPolicy::Dane],
                TlsPolicy::Verify if server.protection == Protection::StsTesting => &[TlsPolicy::May],
                TlsPolicy::Verify | TlsPolicy::Dane => &[],
            };
            let others: Vec<Kept> = stricter.iter().map(|tls| Kept { addr, tls: *tls }).collect();
            let wanted: Vec<&Kept> = std::iter::once(&kept).chain(&others).collect();
            let session = match self.check_out(server, &wanted) {
                Some(found) => Ok(found),
                None => self.open_for(dest, server),
            };
            let failed = match session {
                Ok((kept, session)) => {
                    return Ok(Connected { name: name.clone(), kept, protection: server.protection, session });
                }
                Err(e) => e,
            };
            self.check_in(kept, None);
            log::info!("connect to {place}: {}", judge(Event::Connect(&failed)).text);
            if matches!(failed, ClientError::Network { .. }) {
                self.unreachable.lock().unwrap_or_else(|e| e.into_inner()).insert(addr, failed.clone());
            }
            last = (place, server.protection, failed);
        }
        Err(last)
    }

    /// An idle session to `addr` fit for one of `wanted` (and which one), or `None` with a
    /// slot reserved for a new one. When every slot is taken and one of them is a session
    /// kept for another name or TLS policy, that session is closed to make room (else two
    /// domains served by one address could wait on each other for ever).
    fn check_out(&self, server: &Server, wanted: &[&Kept]) -> Option<(Kept, Session)> {
        let mut evicted = None;
        let found = self.take_or_reserve(server, wanted, &mut evicted);
        if let Some(session) = evicted {
            session.quit();
        }
        found
    }

    fn take_or_reserve(
        &self,
        server: &Server,
        wanted: &[&Kept],
        evicted: &mut Option<Session>,
    ) -> Option<(Kept, Session)> {
        let addr = server.addr;
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            for kept in wanted {
                while let Some(idle) = pool.idle.get_mut(*kept) {
                    let Some(at) = idle.iter().rposition(|s| fits(server, kept.tls, s)) else { break };
                    let session = idle.swap_remove(at);
                    if session.is_usable() {
                        return Some(((*kept).clone(), session));
                    }
                    // Closed by the server while idle: its slot is free again.
                    if let Some(open) = pool.open.get_mut(&addr) {
                        *open = open.saturating_sub(1);
                    }
                }
            }
            let open = pool.open.entry(addr).or_insert(0);
            if *open < self.config.max_per_destination {
                *open += 1;
                return None;
            }
            // The slot of an idle session kept for something else passes to the new one.
            let other = pool.idle.iter_mut().filter(|(k, _)| k.addr == addr).find_map(|(_, idle)| idle.pop());
            if other.is_some() {
                *evicted = other;
                return None;
            }
            pool = self.returned.wait(pool).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Gives a session back for reuse, or frees its slot when it is `None` (closed or failed).
    fn check_in(&self, kept: Kept, session: Option<Session>) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        match session {
            Some(s) => pool.idle.entry(kept).or_default().push(s),
            None => {
                if let Some(open) = pool.open.get_mut(&kept.addr) {
                    *open = open.saturating_sub(1);
                }
            }
        }
        self.returned.notify_all();
    }

    /// A new session with one of a destination's servers, as its TLS policy asks. A server
    /// that fails DANE, or an MTA-STS policy in enforce mode, is refused, the reason saying
    /// which; one that fails a policy in testing mode is used as before, the failure logged
    /// (RFC 8461 §5, RFC 7672 §2.2).
    fn open_for(&self, dest: &Destination, server: &Server) -> Result<(Kept, Session), ClientError> {
        let (name, addr) = (server.name.as_str(), server.addr);
        let e = match self.open(dest.auth, server.tls, name, addr, &server.dane) {
            Ok(session) => return Ok((Kept { addr, tls: server.tls }, session)),
            Err(e) if !is_tls_failure(&e) => return Err(e),
            Err(e) => e,
        };
        let text = judge(Event::Connect(&e)).text;
        let why = match (server.protection, dest.sts.as_deref()) {
            (Protection::Dane, _) => format!("DANE (TLSA records of {name}): {text}"),
            (Protection::StsEnforce | Protection::StsTesting, Some(sts)) => {
                format!("MTA-STS policy {} of {} ({}): {text}", sts.id, sts.domain, sts.policy.mode.name())
            }
            _ => return Err(e),
        };
        if server.protection != Protection::StsTesting {
            return Err(ClientError::Tls(why));
        }
        log::warn!("{name}[{}]:{}: {why}; delivering as before", addr.ip(), addr.port());
        let session = self.open(dest.auth, TlsPolicy::May, name, addr, &[])?;
        Ok((Kept { addr, tls: TlsPolicy::May }, session))
    }

    fn open(
        &self,
        auth: bool,
        tls: TlsPolicy,
        name: &str,
        addr: SocketAddr,
        dane: &[Tlsa],
    ) -> Result<Session, ClientError> {
        let credentials = self.credentials.as_ref().filter(|_| auth);
        let dial = Dial {
            addr,
            server_name: name,
            helo: &self.config.hostname,
            tls,
            timeouts: self.timeouts(),
            auth: credentials.map(|(u, p)| (u.as_str(), p.as_str())),
            dane,
        };
        Session::open(&dial)
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.config.connect_timeout,
            command: self.config.smtp_timeout,
            data_done: self.config.smtp_data_done_timeout,
        }
    }

    /// Ends the run: QUIT on every kept session.
    pub fn close(&self) {
        let idle = std::mem::take(&mut self.pool.lock().unwrap_or_else(|e| e.into_inner()).idle);
        for session in idle.into_values().flatten() {
            session.quit();
        }
    }
}

/// A session `Relay::connect` found: the server's name, what it is kept for, the TLS
/// policy it is under.
struct Connected {
    name: String,
    kept: Kept,
    protection: Protection,
    session: Session,
}

/// Whether an idle session kept under `kept` may carry mail for `server`, which asked for
/// it: one under the server's own policy when verified, only if its certificate serves the
/// server's name or its chain matches the server's TLSA records; one under another policy
/// the server accepts (`Relay::connect`) as it is.
fn fits(server: &Server, kept: TlsPolicy, session: &Session) -> bool {
    match server.tls {
        TlsPolicy::Verify if kept == TlsPolicy::Verify => session.certificate_names(&server.name),
        TlsPolicy::Dane if kept == TlsPolicy::Dane => {
            dane::verify(&server.dane, &session.peer_chain, &server.name).is_ok()
        }
        _ => true,
    }
}

/// A failure of what a TLS policy asks: no STARTTLS, STARTTLS refused, a handshake or a
/// certificate that failed.
fn is_tls_failure(e: &ClientError) -> bool {
    matches!(e, ClientError::Tls(_) | ClientError::Smtp(SmtpError::TlsRequired(_)))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One attempt per recipient from what `execute` found; `keys` name the recipients in the
/// order `execute` was given them, which is the order of the server's replies.
pub fn record(execution: &Execution, keys: &[Recipient], now: u64) -> Vec<Attempt> {
    let one = |key: &Recipient, place: &Where, event: Event<'_>| attempt(now, key.clone(), place.clone(), event);
    let all = |place: &Where, event: Event<'_>| keys.iter().map(|k| one(k, place, event)).collect();
    let protection = match execution {
        Execution::NoRoute(NoRoute::Policy(p, _)) | Execution::NoSession(_, p, _) | Execution::Ran(_, p, _) => Some(*p),
        _ => None,
    };
    let attempts: Vec<Attempt> = match execution {
        Execution::NoRoute(NoRoute::Dns(e, domain)) => all(&Where::Nowhere, Event::Route(e, domain)),
        Execution::NoRoute(NoRoute::Relayhost(why)) => all(&Where::Nowhere, Event::Relayhost(why)),
        Execution::NoRoute(NoRoute::LiteralLoop(ip)) => all(&Where::Nowhere, Event::LiteralLoop(*ip)),
        Execution::NoRoute(NoRoute::Policy(_, why)) => all(&Where::Nowhere, Event::TlsPolicy(why)),
        Execution::NoSession(place, _, e) => all(place, Event::Connect(e)),
        Execution::NotSigned(why) => all(&Where::Nowhere, Event::Signing(why)),
        Execution::Ran(place, _, Err(e)) => all(place, Event::Transaction(e)),
        Execution::Ran(place, _, Ok(results)) if results.len() != keys.len() => {
            all(place, Event::Transaction(&ClientError::Smtp(SmtpError::Unexpected)))
        }
        Execution::Ran(place, _, Ok(results)) => keys
            .iter()
            .zip(results)
            .map(|(k, r)| match r {
                RecipientResult::Sent(reply) | RecipientResult::Failed(reply) => one(k, place, Event::Reply(reply)),
            })
            .collect(),
    };
    attempts.into_iter().map(|a| Attempt { protection, ..a }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::{EnhancedStatus, Parsed, parse_reply};
    use crate::spool::log::Outcome;

    fn reply(wire: &str) -> crate::smtp::reply::Reply {
        match parse_reply(wire.as_bytes()) {
            Parsed::Reply(r, _) => r,
            other => panic!("{other:?}"),
        }
    }

    fn keys() -> Vec<Recipient> {
        vec![Recipient::Address("a@b.test".into()), Recipient::Address("c@b.test".into())]
    }

    fn lines(attempts: &[Attempt]) -> Vec<String> {
        attempts.iter().map(|a| format!("{} {:?} {} {}", a.recipient, a.outcome, a.status_text(), a.relay)).collect()
    }

    #[test]
    fn each_recipient_is_recorded_from_its_own_reply() {
        let mx = Where::Remote { host: "mx.b.test".into(), addr: "192.0.2.1:25".parse().unwrap() };
        let results = vec![
            RecipientResult::Sent(reply("250 2.0.0 queued\r\n")),
            RecipientResult::Failed(reply("550 5.1.1 no c\r\n")),
        ];
        let attempts = record(&Execution::Ran(mx.clone(), Protection::Dane, Ok(results)), &keys(), 7);
        assert_eq!(
            lines(&attempts),
            ["<a@b.test> Sent 2.0.0 mx.b.test[192.0.2.1]:25", "<c@b.test> Bounced 5.1.1 mx.b.test[192.0.2.1]:25"]
        );
        assert!(attempts.iter().all(|a| a.time == 7 && a.protection == Some(Protection::Dane)));
        assert_eq!(attempts[1].text, "550 5.1.1 no c");
    }

    #[test]
    fn a_failure_of_the_whole_goes_to_every_recipient() {
        let mx = Where::Remote { host: "mx".into(), addr: "192.0.2.1:25".parse().unwrap() };
        let refused = ClientError::Smtp(SmtpError::Refused(reply("554 5.7.1 no\r\n")));
        for (execution, want) in [
            (Execution::NoRoute(NoRoute::Dns(RouteError::NullMx, "b.test".into())), "Bounced 5.1.10 -"),
            (Execution::NoRoute(NoRoute::Relayhost("none".into())), "Deferred 4.4.3 -"),
            (
                Execution::NoSession(mx.clone(), Protection::Opportunistic, refused.clone()),
                "Deferred 4.4.1 mx[192.0.2.1]:25",
            ),
            (Execution::Ran(mx.clone(), Protection::Opportunistic, Err(refused)), "Bounced 5.7.1 mx[192.0.2.1]:25"),
            (Execution::Ran(mx.clone(), Protection::Opportunistic, Ok(vec![])), "Deferred 4.5.0 mx[192.0.2.1]:25"),
            (Execution::NoRoute(NoRoute::Policy(Protection::StsEnforce, "no MX".into())), "Deferred 4.7.5 -"),
        ] {
            let got = lines(&record(&execution, &keys(), 1));
            assert_eq!(got, [format!("<a@b.test> {want}"), format!("<c@b.test> {want}")], "{execution:?}");
        }
        let looped = record(&Execution::NoRoute(NoRoute::LiteralLoop("127.0.0.1".parse().unwrap())), &keys(), 1);
        assert_eq!((looped[0].outcome, looped[0].status), (Outcome::Bounced, Some(EnhancedStatus(5, 4, 6))));
    }
}
