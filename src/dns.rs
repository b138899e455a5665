//! MX routing (RFC 5321 §5.1, RFC 7505): which hosts serve a domain, in which order.
//!
//! `route_domain` is pure over the `Lookup` trait; `DnsLookup` is the one place that talks
//! to DNS (hickory-resolver, its async API driven by a current-thread runtime). Names are
//! always queried fully qualified, with no search list (§5.1: no guessing of partial names).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

/// What one DNS question came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsFailure {
    /// NXDOMAIN: the name does not exist.
    NotFound,
    /// The name exists with no records of the type asked (NODATA).
    NoData,
    /// SERVFAIL, a timeout, a refusal: try again later.
    Temporary(String),
}

/// The two questions routing asks.
pub trait Lookup {
    /// MX records as (preference, exchange without the final dot; "" for the null MX).
    fn mx(&self, domain: &str) -> Result<Vec<(u16, String)>, DnsFailure>;
    /// A and AAAA records, CNAMEs followed.
    fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsFailure>;
}

/// One host that accepts the domain's mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    pub preference: u16,
    pub name: String,
    pub addrs: Vec<IpAddr>,
}

/// Why a domain has no host to deliver to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// A temporary DNS failure (4.4.3): retry.
    Temporary(String),
    /// A better MX than ours could not be resolved (4.4.4): retry.
    NoPrimary(String),
    /// NXDOMAIN (5.1.2).
    NoDomain,
    /// RFC 7505 null MX (5.1.10).
    NullMx,
    /// MX hosts, or the domain itself, have no addresses (5.4.4).
    NoAddress,
    /// The best remaining MX is this host (5.4.6).
    Loop,
}

/// The hosts for `domain`, best first: MX order by preference, random among equals; the domain
/// itself when it has no MX at all; never the domain's A records when it has MX records.
pub fn route_domain(
    dns: &impl Lookup,
    domain: &str,
    is_self: &dyn Fn(&str, IpAddr) -> bool,
    seed: u64,
) -> Result<Vec<MxHost>, RouteError> {
    let records = match dns.mx(domain) {
        Ok(records) if !records.is_empty() => records,
        Ok(_) | Err(DnsFailure::NoData) => return implicit_mx(dns, domain, is_self),
        Err(DnsFailure::NotFound) => return Err(RouteError::NoDomain),
        Err(DnsFailure::Temporary(why)) => return Err(RouteError::Temporary(why)),
    };
    if records.iter().all(|(_, exchange)| exchange.is_empty()) {
        return Err(RouteError::NullMx); // RFC 7505 §3
    }
    let mut ordered: Vec<(u16, String)> = records
        .into_iter()
        .filter(|(_, exchange)| !exchange.is_empty())
        .filter(|(_, exchange)| {
            let numeric = exchange.parse::<IpAddr>().is_ok();
            if numeric {
                log::warn!("{domain}: MX {exchange} is an address, not a host name; ignored");
            }
            !numeric
        })
        .collect();
    shuffle_equal_preferences(&mut ordered, seed);
    let mut hosts = Vec::new();
    let mut temporary: Option<(u16, String)> = None;
    for (preference, name) in ordered {
        match dns.addresses(&name) {
            Ok(addrs) if !addrs.is_empty() => hosts.push(MxHost { preference, name, addrs }),
            Ok(_) | Err(DnsFailure::NotFound | DnsFailure::NoData) => {}
            Err(DnsFailure::Temporary(why)) => {
                temporary.get_or_insert((preference, format!("{name}: {why}")));
            }
        }
    }
    let self_preference =
        hosts.iter().filter(|h| h.addrs.iter().any(|a| is_self(&h.name, *a))).map(|h| h.preference).min();
    if let Some(ours) = self_preference {
        // §5.1: drop our own entry and every one not better than it.
        hosts.retain(|h| h.preference < ours);
        if hosts.is_empty() {
            return Err(match temporary {
                Some((p, why)) if p < ours => RouteError::NoPrimary(why),
                _ => RouteError::Loop,
            });
        }
    }
    if hosts.is_empty() {
        return Err(match temporary {
            Some((_, why)) => RouteError::Temporary(why),
            None => RouteError::NoAddress,
        });
    }
    Ok(hosts)
}

/// §5.1: no MX at all means the domain itself is the host, with preference 0.
fn implicit_mx(
    dns: &impl Lookup,
    domain: &str,
    is_self: &dyn Fn(&str, IpAddr) -> bool,
) -> Result<Vec<MxHost>, RouteError> {
    match dns.addresses(domain) {
        Ok(addrs) if addrs.iter().any(|a| is_self(domain, *a)) => Err(RouteError::Loop),
        Ok(addrs) if !addrs.is_empty() => Ok(vec![MxHost { preference: 0, name: domain.to_string(), addrs }]),
        Ok(_) | Err(DnsFailure::NotFound | DnsFailure::NoData) => Err(RouteError::NoAddress),
        Err(DnsFailure::Temporary(why)) => Err(RouteError::Temporary(why)),
    }
}

/// §5.1: equal preferences MUST be tried in random order. A small xorshift is enough here.
fn shuffle_equal_preferences(records: &mut [(u16, String)], seed: u64) {
    let mut state = seed | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    records.sort_by_key(|(p, _)| *p);
    let mut start = 0;
    while start < records.len() {
        let end =
            records[start..].iter().position(|(p, _)| *p != records[start].0).map_or(records.len(), |n| start + n);
        for i in (start + 1..end).rev() {
            let j = start + (next() % (i - start + 1) as u64) as usize;
            records.swap(i, j);
        }
        start = end;
    }
}

/// A seed for the shuffle that differs from run to run.
pub fn shuffle_seed() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

/// DNS through hickory-resolver: the system's name servers, or `dns_servers`.
pub struct DnsLookup {
    runtime: tokio::runtime::Runtime,
    resolver: TokioResolver,
}

impl DnsLookup {
    /// `servers` empty means /etc/resolv.conf's name servers (its search list is dropped).
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<DnsLookup, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("DNS runtime: {e}"))?;
        let (name_servers, mut options) = if servers.is_empty() {
            let (config, options) =
                hickory_resolver::system_conf::read_system_conf().map_err(|e| format!("/etc/resolv.conf: {e}"))?;
            (config.into_parts().2, options)
        } else {
            (servers.iter().map(|s| name_server(*s)).collect(), ResolverOpts::default())
        };
        options.ndots = 0;
        options.timeout = timeout;
        options.attempts = 2;
        options.use_hosts_file = ResolveHosts::Never;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let config = ResolverConfig::from_name_servers(name_servers);
        let _context = runtime.enter();
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(|e| format!("DNS resolver: {e}"))?;
        Ok(DnsLookup { runtime, resolver })
    }
}

/// The questions the server's checks ask DNS: SPF (RFC 7208 §4.4, §5) and a client's
/// name. Each answer must come before `until`, else it is a temporary failure: the checks
/// of one message share one budget of time. Pure code asks through this trait, so that
/// tests feed it answers.
pub trait Resolve {
    /// TXT records, each one's strings joined (RFC 7208 §3.3).
    fn txt(&self, name: &str, until: Instant) -> Result<Vec<Vec<u8>>, DnsFailure>;
    /// A records (`v6` false) or AAAA records (`v6` true), CNAMEs followed.
    fn ips(&self, name: &str, v6: bool, until: Instant) -> Result<Vec<IpAddr>, DnsFailure>;
    /// MX records as (preference, exchange without the final dot).
    fn mx(&self, name: &str, until: Instant) -> Result<Vec<(u16, String)>, DnsFailure>;
    /// PTR names of an address, without the final dot.
    fn ptr(&self, ip: IpAddr, until: Instant) -> Result<Vec<String>, DnsFailure>;
}

/// Where a session's checks get their resolver. The server holds one as a trait object, so
/// that a program serving pipes only (`sendmail -bs`) does not link DNS.
pub trait Resolvers: Send + Sync {
    /// A resolver asking `config`'s `dns_servers` (the system's when none are named).
    fn resolver<'a>(&'a self, config: &'a crate::config::Config) -> Box<dyn Resolve + 'a>;
}

/// A zone of TXT records only, answered by a function of the name: what the DKIM and DMARC
/// checks ask, for their tests and fuzz targets. Every other question is NXDOMAIN.
pub struct TxtZone<F: Fn(&str) -> Result<Vec<Vec<u8>>, DnsFailure>>(pub F);

impl<F: Fn(&str) -> Result<Vec<Vec<u8>>, DnsFailure>> Resolve for TxtZone<F> {
    fn txt(&self, name: &str, _: Instant) -> Result<Vec<Vec<u8>>, DnsFailure> {
        (self.0)(name)
    }
    fn ips(&self, _: &str, _: bool, _: Instant) -> Result<Vec<IpAddr>, DnsFailure> {
        Err(DnsFailure::NotFound)
    }
    fn mx(&self, _: &str, _: Instant) -> Result<Vec<(u16, String)>, DnsFailure> {
        Err(DnsFailure::NotFound)
    }
    fn ptr(&self, _: IpAddr, _: Instant) -> Result<Vec<String>, DnsFailure> {
        Err(DnsFailure::NotFound)
    }
}

/// The client's name, when forward-confirmed (FCrDNS): a PTR name of `ip` whose A or AAAA
/// records include `ip` again. `None` when none does, or when DNS does not answer before
/// `until`; the caller then says `unknown`. Never a verdict on mail.
pub fn confirmed_name(dns: &dyn Resolve, ip: IpAddr, until: Instant) -> Option<String> {
    let ip = ip.to_canonical();
    let names = dns.ptr(ip, until).ok()?;
    let candidates = names
        .into_iter()
        .take(MAX_PTR_NAMES)
        .map(|name| {
            let addrs = dns.ips(&name, ip.is_ipv6(), until).unwrap_or_default();
            (name, addrs)
        })
        .collect();
    confirm(ip, candidates)
}

/// The server's resolvers: one per `dns_servers` list, each lent for one question and kept
/// for the next (a resolver holds a runtime and sockets; a session does not keep one).
#[derive(Default)]
pub struct ResolverPool {
    idle: std::sync::Mutex<Vec<(Vec<SocketAddr>, DnsLookup)>>,
    memo: std::sync::Mutex<Memo>,
}

/// Answers the pool keeps until their TTL runs out, in front of the resolvers' own caches: an
/// answer from hickory's cache still costs a turn of its runtime, a kept one a map lookup.
/// Only records are kept (a failure is asked again); at most `MEMO_ENTRIES`.
/// Each answer is shared: a hit copies none of its records, only what the asker reads of them.
#[derive(Default)]
struct Memo(std::collections::HashMap<MemoKey, (Arc<[RData]>, Instant)>);

/// The servers asked, the kind of record, the name in lower case.
type MemoKey = (Vec<SocketAddr>, RecordType, String);

const MEMO_ENTRIES: usize = 4096;

impl Memo {
    fn get(&self, key: &MemoKey, now: Instant) -> Option<Arc<[RData]>> {
        self.0.get(key).filter(|(_, until)| *until > now).map(|(records, _)| Arc::clone(records))
    }

    fn put(&mut self, key: MemoKey, records: Arc<[RData]>, until: Instant, now: Instant) {
        if self.0.len() >= MEMO_ENTRIES {
            self.0.retain(|_, (_, kept)| *kept > now);
            if self.0.len() >= MEMO_ENTRIES {
                self.0.clear();
            }
        }
        self.0.insert(key, (records, until));
    }
}

/// Resolvers kept idle at most.
const IDLE_RESOLVERS: usize = 8;

impl Resolvers for ResolverPool {
    fn resolver<'a>(&'a self, config: &'a crate::config::Config) -> Box<dyn Resolve + 'a> {
        Box::new(Pooled { pool: self, config })
    }
}

struct Pooled<'a> {
    pool: &'a ResolverPool,
    config: &'a crate::config::Config,
}

impl Pooled<'_> {
    fn with<T>(&self, ask: impl FnOnce(&DnsLookup) -> Result<T, DnsFailure>) -> Result<T, DnsFailure> {
        let servers = &self.config.dns_servers;
        let kept = {
            let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
            let at = idle.iter().position(|(s, _)| s == servers);
            at.map(|i| idle.swap_remove(i).1)
        };
        let dns = match kept {
            Some(dns) => dns,
            None => DnsLookup::new(servers, self.config.dns_timeout).map_err(DnsFailure::Temporary)?,
        };
        let answer = ask(&dns);
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_RESOLVERS {
            idle.push((servers.clone(), dns));
        }
        answer
    }
}

impl Pooled<'_> {
    /// The records of `kind` for `name`: kept ones while their TTL lasts, else asked.
    fn records(&self, name: &str, kind: RecordType, until: Instant) -> Result<Arc<[RData]>, DnsFailure> {
        let key = (self.config.dns_servers.clone(), kind, name.to_ascii_lowercase());
        let now = Instant::now();
        if let Some(records) = self.pool.memo.lock().unwrap_or_else(|e| e.into_inner()).get(&key, now) {
            return Ok(records);
        }
        let (records, valid_until) = self.with(|dns| dns.ask(name, kind, until))?;
        let records: Arc<[RData]> = records.into();
        self.pool.memo.lock().unwrap_or_else(|e| e.into_inner()).put(key, Arc::clone(&records), valid_until, now);
        Ok(records)
    }
}

impl Resolve for Pooled<'_> {
    fn txt(&self, name: &str, until: Instant) -> Result<Vec<Vec<u8>>, DnsFailure> {
        self.records(name, RecordType::TXT, until).map(|r| txt_strings(&r))
    }
    fn ips(&self, name: &str, v6: bool, until: Instant) -> Result<Vec<IpAddr>, DnsFailure> {
        self.records(name, if v6 { RecordType::AAAA } else { RecordType::A }, until).map(|r| addresses(&r))
    }
    fn mx(&self, name: &str, until: Instant) -> Result<Vec<(u16, String)>, DnsFailure> {
        self.records(name, RecordType::MX, until).map(|r| exchanges(r.iter()))
    }
    fn ptr(&self, ip: IpAddr, until: Instant) -> Result<Vec<String>, DnsFailure> {
        self.records(&reverse_name(ip), RecordType::PTR, until).map(|r| pointers(&r))
    }
}

impl DnsLookup {
    /// One question of `kind` about `name`, answered before `until`: the records of that
    /// kind, and until when they may be kept (their TTL).
    fn ask(&self, name: &str, kind: RecordType, until: Instant) -> Result<(Vec<RData>, Instant), DnsFailure> {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DnsFailure::Temporary("out of time for DNS".into()));
        }
        if name.len() > 253 || name.split('.').any(|label| label.is_empty() || label.len() > 63) {
            return Err(DnsFailure::NotFound); // not a name DNS can hold
        }
        let question = self.resolver.lookup(absolute(name), kind);
        let answer = self.runtime.block_on(async { tokio::time::timeout(left, question).await });
        let lookup = match answer {
            Err(_) => return Err(DnsFailure::Temporary("timed out".into())),
            Ok(found) => found.map_err(|e| classify(&e))?,
        };
        let records: Vec<RData> =
            lookup.answers().iter().filter(|r| r.record_type() == kind).map(|r| r.data.clone()).collect();
        if records.is_empty() { Err(DnsFailure::NoData) } else { Ok((records, lookup.valid_until())) }
    }
}

/// TXT records, each one's strings joined (RFC 7208 §3.3).
fn txt_strings(records: &[RData]) -> Vec<Vec<u8>> {
    records
        .iter()
        .filter_map(|r| match r {
            RData::TXT(txt) => Some(txt.txt_data.concat()),
            _ => None,
        })
        .collect()
}

fn addresses(records: &[RData]) -> Vec<IpAddr> {
    records
        .iter()
        .filter_map(|r| match r {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// The MX records' preferences and exchanges, read where they are (a memo's shared answer, or
/// a lookup's records), not copied first.
fn exchanges<'a>(records: impl IntoIterator<Item = &'a RData>) -> Vec<(u16, String)> {
    records
        .into_iter()
        .filter_map(|r| match r {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii().trim_end_matches('.').to_lowercase())),
            _ => None,
        })
        .collect()
}

fn pointers(records: &[RData]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match r {
            RData::PTR(name) => Some(name.0.to_ascii().trim_end_matches('.').to_lowercase()),
            _ => None,
        })
        .collect()
}

/// The name PTR records of `ip` live under (RFC 1035 §3.5, RFC 3596 §2.5).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            name + "ip6.arpa"
        }
    }
}

/// PTR names checked at most, so that a zone with many cannot hold a session long.
const MAX_PTR_NAMES: usize = 3;

/// The first of the PTR names (each with its addresses) that points back at `ip`, and is a
/// valid host name (it goes into the log and a `Received:` field).
pub fn confirm(ip: IpAddr, candidates: Vec<(String, Vec<IpAddr>)>) -> Option<String> {
    candidates.into_iter().find_map(|(name, addrs)| {
        let valid = crate::smtp::address::Domain::parse(&name).is_ok() && name.contains('.');
        (valid && addrs.iter().any(|a| a.to_canonical() == ip)).then_some(name)
    })
}

fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
    for connection in &mut server.connections {
        connection.port = addr.port();
    }
    server
}

fn classify(e: &NetError) -> DnsFailure {
    if e.is_nx_domain() {
        DnsFailure::NotFound
    } else if e.is_no_records_found() {
        DnsFailure::NoData
    } else {
        DnsFailure::Temporary(e.to_string())
    }
}

/// `name.`: absolute, so no search domain is ever appended (RFC 5321 §5.1: names are looked up as written).
fn absolute(name: &str) -> String {
    if name.ends_with('.') { name.to_string() } else { format!("{name}.") }
}

/// Answers kept for the run, one per name: the first thread to ask makes it, the others
/// wait for it.
pub struct PerRun<T>(std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<std::sync::OnceLock<T>>>>);

impl<T> Default for PerRun<T> {
    fn default() -> Self {
        PerRun(std::sync::Mutex::new(std::collections::HashMap::new()))
    }
}

impl<T: Clone> PerRun<T> {
    pub fn get(&self, name: &str, make: impl FnOnce() -> T) -> T {
        let cell = std::sync::Arc::clone(
            self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(name.to_string()).or_default(),
        );
        cell.get_or_init(make).clone()
    }
}

/// Whether `host` is the name `pattern` (both in lower case, without a final dot), or one
/// label more than a `*.` pattern's parent: `*.example.net` is `mx1.example.net`, never
/// `a.b.example.net` (RFC 8461 §4.1, RFC 6125 §6.4.3).
pub fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => pattern == host,
    }
}

/// The name servers `dns_servers` names, or /etc/resolv.conf's.
pub fn name_servers(servers: &[SocketAddr]) -> Vec<SocketAddr> {
    if !servers.is_empty() {
        return servers.to_vec();
    }
    let Ok((config, _)) = hickory_resolver::system_conf::read_system_conf() else { return Vec::new() };
    let mut found: Vec<SocketAddr> = Vec::new();
    for server in config.into_parts().2 {
        for connection in &server.connections {
            let addr = SocketAddr::new(server.ip, connection.port);
            if !found.contains(&addr) {
                found.push(addr);
            }
        }
    }
    found
}

/// `name`'s TLSA records and whether they are DNSSEC-authenticated (RFC 7672 §2.2), from
/// the first of `servers` that answers within `timeout`: over UDP, and TCP when the answer
/// is truncated. hickory-resolver's own questions carry neither AD nor DO, and its answers
/// hide the AD bit; so this one question is asked here, built and read by `dane`.
pub fn tlsa(servers: &[SocketAddr], name: &str, timeout: Duration) -> Result<crate::dane::Answer, DnsFailure> {
    let mut last = DnsFailure::Temporary("no name server to ask".into());
    for server in servers.iter().take(3) {
        match ask_tlsa(*server, name, timeout) {
            Ok(answer) => return Ok(answer),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn ask_tlsa(server: SocketAddr, name: &str, timeout: Duration) -> Result<crate::dane::Answer, DnsFailure> {
    use std::io::{Read, Write};
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => DnsFailure::Temporary("timed out".into()),
        _ => DnsFailure::Temporary(e.to_string()),
    };
    let mut random = [0u8; 2];
    openssl::rand::rand_bytes(&mut random).map_err(|e| DnsFailure::Temporary(e.to_string()))?;
    let id = u16::from_be_bytes(random);
    let question = crate::dane::question(id, name)?;
    let deadline = Instant::now() + timeout;
    let local: SocketAddr =
        if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = std::net::UdpSocket::bind(local).map_err(io)?;
    socket.connect(server).map_err(io)?;
    socket.send(&question).map_err(io)?;
    let mut buf = vec![0u8; 65535];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DnsFailure::Temporary("timed out".into()));
        }
        socket.set_read_timeout(Some(left)).map_err(io)?;
        let n = socket.recv(&mut buf).map_err(io)?;
        // Another question's reply, or a forgery's guess: wait for ours.
        if n < 2 || u16::from_be_bytes([buf[0], buf[1]]) != id {
            continue;
        }
        if let Some(answer) = crate::dane::read_answer(&buf[..n], id, name)? {
            return Ok(answer);
        }
        break; // truncated: over TCP (RFC 7766 §5)
    }
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
    let mut tcp = std::net::TcpStream::connect_timeout(&server, left).map_err(io)?;
    tcp.set_read_timeout(Some(left)).map_err(io)?;
    tcp.set_write_timeout(Some(left)).map_err(io)?;
    let mut framed = (question.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&question);
    tcp.write_all(&framed).map_err(io)?;
    let mut length = [0u8; 2];
    tcp.read_exact(&mut length).map_err(io)?;
    let reply = &mut buf[..usize::from(u16::from_be_bytes(length))];
    tcp.read_exact(reply).map_err(io)?;
    crate::dane::read_answer(reply, id, name)?.ok_or(DnsFailure::Temporary("a truncated reply over TCP".into()))
}

impl DnsLookup {
    /// TXT records of `name`, each one's strings joined.
    pub fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, DnsFailure> {
        self.ask(name, RecordType::TXT, Instant::now() + Duration::from_secs(30))
            .map(|(records, _)| txt_strings(&records))
    }
}

impl Lookup for DnsLookup {
    fn mx(&self, domain: &str) -> Result<Vec<(u16, String)>, DnsFailure> {
        let lookup = self.runtime.block_on(self.resolver.mx_lookup(absolute(domain))).map_err(|e| classify(&e))?;
        Ok(exchanges(lookup.answers().iter().map(|r| &r.data)))
    }

    fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsFailure> {
        let lookup = self.runtime.block_on(self.resolver.lookup_ip(absolute(host))).map_err(|e| classify(&e))?;
        Ok(lookup.iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    type MxAnswer = Result<Vec<(u16, String)>, DnsFailure>;
    type MxEntry<'a> = (&'static str, Result<Vec<(u16, &'a str)>, DnsFailure>);

    #[test]
    fn kept_answers_last_their_ttl_and_never_grow_past_the_bound() {
        let mut memo = Memo::default();
        let now = Instant::now();
        let key = |name: &str| (vec!["127.0.0.1:53".parse().unwrap()], RecordType::TXT, name.to_string());
        let txt = |t: &str| -> Arc<[RData]> {
            vec![RData::TXT(hickory_resolver::proto::rr::rdata::TXT::new(vec![t.to_string()]))].into()
        };
        memo.put(key("a.test"), txt("v=spf1 -all"), now + Duration::from_secs(300), now);
        assert_eq!(memo.get(&key("a.test"), now).map(|r| txt_strings(&r)), Some(vec![b"v=spf1 -all".to_vec()]));
        assert_eq!(memo.get(&key("a.test"), now + Duration::from_secs(301)), None, "its TTL is over");
        assert_eq!(memo.get(&key("b.test"), now), None);
        let other_servers = (vec!["127.0.0.2:53".parse().unwrap()], RecordType::TXT, "a.test".to_string());
        assert_eq!(memo.get(&other_servers, now), None, "kept per list of servers");
        for i in 0..2 * MEMO_ENTRIES {
            memo.put(key(&format!("{i}.test")), txt("x"), now + Duration::from_secs(300), now);
            assert!(memo.0.len() <= MEMO_ENTRIES);
        }
    }

    #[test]
    fn a_name_counts_only_when_it_points_back() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let back = |n: &str, a: &[&str]| (n.to_string(), a.iter().map(|a| a.parse().unwrap()).collect::<Vec<_>>());
        assert_eq!(confirm(ip, vec![back("mx.example.test", &["192.0.2.7"])]), Some("mx.example.test".into()));
        assert_eq!(confirm(ip, vec![back("liar.example.test", &["192.0.2.8"])]), None);
        assert_eq!(
            confirm(
                ip,
                vec![back("liar.example.test", &["192.0.2.8"]), back("ok.example.test", &["::ffff:192.0.2.7"])]
            ),
            Some("ok.example.test".into())
        );
        assert_eq!(confirm(ip, vec![back("bad name\n.test", &["192.0.2.7"])]), None, "not a host name");
        assert_eq!(confirm(ip, vec![back("localhost", &["192.0.2.7"])]), None, "not qualified");
        assert_eq!(confirm(ip, Vec::new()), None);
    }

    #[derive(Default)]
    struct Zone {
        mx: HashMap<&'static str, MxAnswer>,
        ips: HashMap<String, Result<Vec<IpAddr>, DnsFailure>>,
    }

    impl Lookup for Zone {
        fn mx(&self, domain: &str) -> Result<Vec<(u16, String)>, DnsFailure> {
            self.mx.get(domain).cloned().unwrap_or(Err(DnsFailure::NotFound))
        }
        fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsFailure> {
            self.ips.get(host).cloned().unwrap_or(Err(DnsFailure::NotFound))
        }
    }

    fn zone(mx: &[MxEntry<'_>], ips: &[(&str, Result<&[&str], DnsFailure>)]) -> Zone {
        Zone {
            mx: mx
                .iter()
                .map(|(d, r)| (*d, r.clone().map(|v| v.into_iter().map(|(p, n)| (p, n.to_string())).collect())))
                .collect(),
            ips: ips
                .iter()
                .map(|(h, r)| (h.to_string(), r.clone().map(|v| v.iter().map(|a| a.parse().unwrap()).collect())))
                .collect(),
        }
    }

    fn never_self(_: &str, _: IpAddr) -> bool {
        false
    }

    fn names(r: &Result<Vec<MxHost>, RouteError>) -> Vec<String> {
        r.as_ref().unwrap().iter().map(|h| h.name.clone()).collect()
    }

    #[test]
    fn mx_order_and_implicit_mx() {
        let z = zone(
            &[("d.test", Ok(vec![(20, "b.d.test"), (10, "a.d.test")])), ("a-only.test", Err(DnsFailure::NoData))],
            &[("a.d.test", Ok(&["127.0.0.3"])), ("b.d.test", Ok(&["127.0.0.4"])), ("a-only.test", Ok(&["127.0.0.5"]))],
        );
        assert_eq!(names(&route_domain(&z, "d.test", &never_self, 1)), ["a.d.test", "b.d.test"]);
        assert_eq!(names(&route_domain(&z, "a-only.test", &never_self, 1)), ["a-only.test"]);
    }

    #[test]
    fn equal_preferences_are_shuffled() {
        let z = zone(
            &[("d.test", Ok(vec![(10, "a"), (10, "b"), (10, "c"), (5, "first")]))],
            &[
                ("a", Ok(&["127.0.0.1"])),
                ("b", Ok(&["127.0.0.2"])),
                ("c", Ok(&["127.0.0.3"])),
                ("first", Ok(&["127.0.0.9"])),
            ],
        );
        let orders: std::collections::HashSet<Vec<String>> =
            (1..50).map(|seed| names(&route_domain(&z, "d.test", &never_self, seed * 7919))).collect();
        assert!(orders.len() > 1, "never shuffled");
        assert!(orders.iter().all(|o| o[0] == "first"));
    }

    #[test]
    fn failures_map_to_their_outcomes() {
        let z = zone(
            &[
                ("null.test", Ok(vec![(0, "")])),
                ("servfail.test", Err(DnsFailure::Temporary("SERVFAIL".into()))),
                ("dead.test", Ok(vec![(10, "gone.dead.test")])),
                ("numeric.test", Ok(vec![(10, "192.0.2.1")])),
                ("mixed.test", Ok(vec![(10, "slow.mixed.test"), (20, "gone.mixed.test")])),
            ],
            &[
                ("nodata.test", Err(DnsFailure::NoData)),
                ("slow.mixed.test", Err(DnsFailure::Temporary("timeout".into()))),
            ],
        );
        assert_eq!(route_domain(&z, "null.test", &never_self, 1), Err(RouteError::NullMx));
        assert!(matches!(route_domain(&z, "servfail.test", &never_self, 1), Err(RouteError::Temporary(_))));
        assert_eq!(route_domain(&z, "nxdomain.test", &never_self, 1), Err(RouteError::NoDomain));
        assert_eq!(route_domain(&z, "dead.test", &never_self, 1), Err(RouteError::NoAddress));
        assert_eq!(route_domain(&z, "numeric.test", &never_self, 1), Err(RouteError::NoAddress));
        assert!(matches!(route_domain(&z, "mixed.test", &never_self, 1), Err(RouteError::Temporary(_))));
    }

    #[test]
    fn a_domain_with_mx_records_never_falls_back_to_its_own_address() {
        let z = zone(&[("d.test", Ok(vec![(10, "gone.d.test")]))], &[("d.test", Ok(&["127.0.0.9"]))]);
        assert_eq!(route_domain(&z, "d.test", &never_self, 1), Err(RouteError::NoAddress));
    }

    #[test]
    fn our_own_mx_and_worse_ones_are_dropped() {
        let z = zone(
            &[
                ("d.test", Ok(vec![(10, "other.test"), (20, "me.test"), (30, "worse.test")])),
                ("only.test", Ok(vec![(10, "me.test")])),
                ("primary.test", Ok(vec![(5, "broken.test"), (10, "me.test")])),
            ],
            &[
                ("other.test", Ok(&["127.0.0.3"])),
                ("me.test", Ok(&["127.0.0.1"])),
                ("worse.test", Ok(&["127.0.0.4"])),
                ("broken.test", Err(DnsFailure::Temporary("timeout".into()))),
            ],
        );
        let is_self = |name: &str, ip: IpAddr| name == "me.test" || ip == IpAddr::from([127, 0, 0, 1]);
        assert_eq!(names(&route_domain(&z, "d.test", &is_self, 1)), ["other.test"]);
        assert_eq!(route_domain(&z, "only.test", &is_self, 1), Err(RouteError::Loop));
        assert!(matches!(route_domain(&z, "primary.test", &is_self, 1), Err(RouteError::NoPrimary(_))));
    }
}
