//! Remote delivery: where each recipient's mail goes, one connection per server for the whole
//! run (RSET between messages), and each reply turned into an outcome.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Condvar, Mutex};

use crate::client::{ClientError, Dial, RecipientResult, Session, Timeouts, TlsPolicy, Transaction};
use crate::config::{Config, TlsMode};
use crate::dns::{DnsLookup, route_domain, shuffle_seed};
use crate::smtp::address::{Host, Mailbox};
use crate::spool::Queued;
use crate::spool::log::{Attempt, Outcome};

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

/// The servers to try, in order, each with its name for TLS and the log.
#[derive(PartialEq, Eq)]
pub struct Destination {
    addrs: Vec<(String, SocketAddr)>,
    tls: TlsPolicy,
    auth: bool,
}

/// RFC 5321 §5.1 asks to try at least two; like Postfix, at most five addresses per message.
const MAX_ADDRESSES: usize = 5;

/// A route that has no server: deferred or bounced, with status and text.
pub struct NoRoute {
    bounce: bool,
    status: String,
    text: String,
}

/// The run's remote side, shared by its delivery threads: open sessions kept for the next
/// message, a cap on sessions per server, servers known to be down, idle resolvers.
pub struct Relay<'a> {
    config: &'a Config,
    credentials: Option<(String, String)>,
    /// Resolvers not in use; each thread borrows one (each drives its own runtime).
    dns: Mutex<Vec<DnsLookup>>,
    pool: Mutex<Pool>,
    returned: Condvar,
    /// RFC 5321 §4.5.4.1: hosts found unreachable this run are not tried again by it.
    unreachable: Mutex<HashMap<SocketAddr, ClientError>>,
}

/// Sessions by server address: idle ones to reuse, and how many are open in all.
#[derive(Default)]
struct Pool {
    idle: HashMap<SocketAddr, Vec<Session>>,
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
    pub fn new(config: &'a Config) -> Result<Relay<'a>, String> {
        Ok(Relay {
            config,
            credentials: load_credentials(config)?,
            dns: Mutex::new(Vec::new()),
            pool: Mutex::new(Pool::default()),
            returned: Condvar::new(),
            unreachable: Mutex::new(HashMap::new()),
        })
    }

    pub fn route(&self, rcpt: &Mailbox) -> Route {
        match (rcpt.host(), &self.config.relayhost) {
            (_, Some(_)) => Route::Relayhost,
            (Host::Literal(ip), None) => Route::Literal(*ip),
            (Host::Domain(d), None) => Route::Domain(d.folded()),
        }
    }

    /// Finds the servers for each route, and merges routes served by the same servers, so that
    /// one transaction carries all of a message's recipients at one host (RFC 5321 §4.5.4.1).
    /// Returns each destination (or why there is none) with the indexes of the routes it serves.
    pub fn plan(&self, routes: &[Route]) -> Vec<(Result<Destination, NoRoute>, Vec<usize>)> {
        let mut plans: Vec<(Result<Destination, NoRoute>, Vec<usize>)> = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let dest = self.destination(route);
            let same = plans.iter_mut().find(|(d, _)| matches!((d, &dest), (Ok(a), Ok(b)) if a == b));
            match same {
                Some((_, served)) => served.push(i),
                None => plans.push((dest, vec![i])),
            }
        }
        plans
    }

    /// Delivers one message to recipients that share a destination; one attempt per recipient.
    pub fn deliver(
        &self,
        q: &Queued,
        dest: Result<Destination, NoRoute>,
        rcpts: &[&Mailbox],
        now: u64,
    ) -> Vec<Attempt> {
        let keys: Vec<String> = rcpts.iter().map(|m| format!("<{m}>")).collect();
        let all = |outcome, status: String, relay: &str, text: &str| {
            keys.iter()
                .map(|k| Attempt {
                    time: now,
                    outcome,
                    recipient: k.clone(),
                    status: status.clone(),
                    relay: relay.into(),
                    text: text.into(),
                })
                .collect::<Vec<_>>()
        };
        let dest = match dest {
            Ok(d) => d,
            Err(no) => {
                let outcome = if no.bounce { Outcome::Bounced } else { Outcome::Deferred };
                return all(outcome, no.status, "-", &no.text);
            }
        };
        let (name, addr, mut session) = match self.connect(&dest) {
            Ok(found) => found,
            Err((relay, e)) => return all(Outcome::Deferred, connect_status(&e), &relay, &e.text()),
        };
        let relay = relay_name(&name, addr);
        let from = q.envelope.from.mailbox().map_or_else(String::new, |m| m.to_string());
        let recipients: Vec<String> = rcpts.iter().map(|m| m.to_string()).collect();
        let tx = Transaction {
            from: &from,
            recipients: &recipients,
            size: q.envelope.size,
            eight_bit: q.envelope.body == crate::smtp::command::BodyType::EightBitMime,
            smtputf8: q.envelope.smtputf8,
            message: q.message(),
        };
        let result = session.transaction(tx);
        let result = result.and_then(|r| match r.len() == keys.len() {
            true => Ok(r),
            false => Err(ClientError::Protocol(format!("{} replies for {} recipients", r.len(), keys.len()))),
        });
        // A broken connection is not kept; a refusal leaves it in a known state, fit for RSET.
        let reusable = !matches!(result, Err(ClientError::Network(_) | ClientError::Protocol(_) | ClientError::Tls(_)));
        let attempts = match result {
            Ok(results) => keys
                .iter()
                .zip(results)
                .map(|(k, r)| {
                    let reply = match &r {
                        RecipientResult::Sent(reply) | RecipientResult::Failed(reply) => reply,
                    };
                    let outcome = match (&r, reply.is_permanent()) {
                        (RecipientResult::Sent(_), _) => Outcome::Sent,
                        (RecipientResult::Failed(_), true) => Outcome::Bounced,
                        (RecipientResult::Failed(_), false) => Outcome::Deferred,
                    };
                    Attempt {
                        time: now,
                        outcome,
                        recipient: k.clone(),
                        status: reply.status(),
                        relay: relay.clone(),
                        text: reply.display(),
                    }
                })
                .collect(),
            Err(e) => {
                let outcome = if e.is_permanent() { Outcome::Bounced } else { Outcome::Deferred };
                all(outcome, transaction_status(&e), &relay, &e.text())
            }
        };
        self.check_in(addr, reusable.then_some(session));
        attempts
    }

    fn destination(&self, route: &Route) -> Result<Destination, NoRoute> {
        let port = self.config.smtp_port;
        let defer = |text: String| NoRoute { bounce: false, status: "4.4.3".into(), text };
        match route {
            Route::Relayhost => {
                let Some((host, port)) = self.config.relayhost.clone() else {
                    return Err(defer("no relayhost configured".into()));
                };
                let tls = match self.config.relayhost_tls {
                    TlsMode::May => TlsPolicy::May,
                    TlsMode::Encrypt => TlsPolicy::Encrypt,
                    TlsMode::Verify => TlsPolicy::Verify,
                };
                let addrs =
                    (host.as_str(), port).to_socket_addrs().map_err(|e| defer(format!("relayhost {host}: {e}")))?;
                Ok(Destination { addrs: addrs.map(|a| (host.clone(), a)).collect(), tls, auth: true })
            }
            Route::Literal(ip) => {
                if self.is_self("", *ip) {
                    let text = format!("mail for [{ip}] loops back to myself");
                    return Err(NoRoute { bounce: true, status: "5.4.6".into(), text });
                }
                Ok(Destination {
                    addrs: vec![(ip.to_string(), SocketAddr::new(*ip, port))],
                    tls: TlsPolicy::May,
                    auth: false,
                })
            }
            Route::Domain(domain) => {
                let idle = self.dns.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let dns = match idle {
                    Some(dns) => dns,
                    None => DnsLookup::new(&self.config.dns_servers, self.config.dns_timeout).map_err(defer)?,
                };
                let routed = route_domain(&dns, domain, &|name, ip| self.is_self(name, ip), shuffle_seed());
                self.dns.lock().unwrap_or_else(|e| e.into_inner()).push(dns);
                let hosts = routed.map_err(|e| {
                    let (status, bounce, text) = e.outcome(domain);
                    NoRoute { bounce, status: status.into(), text }
                })?;
                let addrs = hosts
                    .iter()
                    .flat_map(|h| h.addrs.iter().map(|ip| (h.name.clone(), SocketAddr::new(*ip, port))))
                    .take(MAX_ADDRESSES)
                    .collect();
                Ok(Destination { addrs, tls: TlsPolicy::May, auth: false })
            }
        }
    }

    /// This host: its name, or an address and port it listens on, for mail would go to
    /// `ip:smtp_port` (RFC 5321 §5.1: an MX that is this host ends the list). The same address
    /// on another port is another server, such as a filter or a second instance.
    fn is_self(&self, name: &str, ip: IpAddr) -> bool {
        let named = !name.is_empty() && name.eq_ignore_ascii_case(&self.config.hostname);
        let listening = self.config.listen.iter().any(|l| {
            let address = l.ip() == ip || (l.ip().is_unspecified() && ip.is_loopback());
            address && l.port() == self.config.smtp_port
        });
        named || listening
    }

    /// A kept session for one of the addresses, or a new one, trying each address in turn.
    /// At most `max_per_destination` sessions are open to one address; past that, wait.
    fn connect(&self, dest: &Destination) -> Result<(String, SocketAddr, Session), (String, ClientError)> {
        let mut last = ("-".to_string(), ClientError::Network("no address to connect to".into()));
        for (name, addr) in &dest.addrs {
            if let Some(e) = self.unreachable.lock().unwrap_or_else(|e| e.into_inner()).get(addr) {
                last = (relay_name(name, *addr), e.clone());
                continue;
            }
            let session = match self.check_out(*addr) {
                Some(session) => return Ok((name.clone(), *addr, session)),
                None => self.open(dest, name, *addr),
            };
            match session {
                Ok(session) => return Ok((name.clone(), *addr, session)),
                Err(e) => {
                    self.check_in(*addr, None);
                    log::info!("connect to {}: {}", relay_name(name, *addr), e.text());
                    if matches!(e, ClientError::Network(_)) {
                        self.unreachable.lock().unwrap_or_else(|e| e.into_inner()).insert(*addr, e.clone());
                    }
                    last = (relay_name(name, *addr), e);
                }
            }
        }
        Err(last)
    }

    /// An idle session to `addr`, or `None` with a slot reserved for a new one.
    fn check_out(&self, addr: SocketAddr) -> Option<Session> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            while let Some(session) = pool.idle.get_mut(&addr).and_then(Vec::pop) {
                if session.is_usable() {
                    return Some(session);
                }
                // Closed by the server while idle: its slot is free again.
                if let Some(open) = pool.open.get_mut(&addr) {
                    *open = open.saturating_sub(1);
                }
            }
            let open = pool.open.entry(addr).or_insert(0);
            if *open < self.config.max_per_destination {
                *open += 1;
                return None;
            }
            pool = self.returned.wait(pool).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Gives a session back for reuse, or frees its slot when it is `None` (closed or failed).
    fn check_in(&self, addr: SocketAddr, session: Option<Session>) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        match session {
            Some(s) => pool.idle.entry(addr).or_default().push(s),
            None => {
                if let Some(open) = pool.open.get_mut(&addr) {
                    *open = open.saturating_sub(1);
                }
            }
        }
        self.returned.notify_all();
    }

    fn open(&self, dest: &Destination, name: &str, addr: SocketAddr) -> Result<Session, ClientError> {
        let credentials = self.credentials.as_ref().filter(|_| dest.auth);
        let dial = Dial {
            addr,
            server_name: name,
            helo: &self.config.hostname,
            tls: dest.tls,
            timeouts: self.timeouts(),
            auth: credentials.map(|(u, p)| (u.as_str(), p.as_str())),
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

fn connect_status(e: &ClientError) -> String {
    match e {
        ClientError::Refused(_) => "4.4.1".into(), // refused to talk: try later, or another host
        other => other.status(),
    }
}

fn transaction_status(e: &ClientError) -> String {
    match e {
        ClientError::Network(_) => "4.4.2".into(),
        other => other.status(),
    }
}

fn relay_name(name: &str, addr: SocketAddr) -> String {
    format!("{name}[{}]:{}", addr.ip(), addr.port())
}
