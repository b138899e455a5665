//! MTA-STS (RFC 8461): a domain's promise that its MX hosts take mail over TLS with a
//! certificate valid for their names, and the cache that keeps the promise between runs.
//!
//! The parsers (the `_mta-sts` TXT record, the HTTP reply, the policy, the cache file) and
//! the cache's decisions are pure; `Policies` is the I/O: DNS through `DnsLookup`, the HTTPS
//! fetch over the TLS library already linked, the cache files in `spool/mta-sts/`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dns::{DnsFailure, DnsLookup, Lookup, PerRun};

/// What the policy asks of a sender (§3.2 `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to matching MX hosts, over TLS with a valid certificate.
    Enforce,
    /// Deliver as before; report what enforce would have refused.
    Testing,
    /// The domain has withdrawn its policy.
    None,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A domain's policy (§3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// MX patterns, lower case: a host name, or `*.` and a domain (§4.1).
    pub mx: Vec<String>,
    /// Seconds the policy may be kept.
    pub max_age: u64,
}

/// §3.2: `max_age` is at most a year (31557600 seconds).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// §3.3: the policy body is limited to 64 KiB.
pub const MAX_POLICY: usize = 64 * 1024;

/// The HTTP header block we read at most before the body.
const MAX_HEAD: usize = 8 * 1024;

/// The whole fetch (connect, TLS, request, reply) must end within this.
const FETCH_TIME: Duration = Duration::from_secs(30);

/// Addresses of the policy host tried at most.
const FETCH_ADDRESSES: usize = 2;

impl Policy {
    /// Parses a policy body (§3.2): `key: value` lines ended by LF or CRLF; the first
    /// `version`, `mode` and `max_age` count, every `mx` does; other keys are ignored.
    pub fn parse(body: &[u8]) -> Result<Policy, String> {
        let text = std::str::from_utf8(body).map_err(|_| "the policy is not UTF-8 text".to_string())?;
        let (mut version, mut mode, mut max_age) = (None, None, None);
        let mut mx = Vec::new();
        for (n, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim_matches([' ', '\t']).is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(format!("line {} is not a `key: value` field", n + 1));
            };
            let value = value.trim_matches([' ', '\t']);
            match key {
                "version" => {
                    version.get_or_insert(value);
                }
                "mode" => {
                    mode.get_or_insert(value);
                }
                "max_age" => {
                    max_age.get_or_insert(value);
                }
                "mx" => mx.push(mx_pattern(value)?),
                _ => {} // §3.2: extensions are ignored
            }
        }
        if version != Some("STSv1") {
            return Err(format!("version is {}, not STSv1", version.unwrap_or("missing")));
        }
        let mode = match mode {
            Some("enforce") => Mode::Enforce,
            Some("testing") => Mode::Testing,
            Some("none") => Mode::None,
            other => return Err(format!("mode is {}, not enforce, testing or none", other.unwrap_or("missing"))),
        };
        let max_age = match max_age {
            Some(v) if !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()) => {
                v.parse::<u64>().map_err(|e| e.to_string())?.min(MAX_AGE_LIMIT)
            }
            other => return Err(format!("max_age is {}, not a number of seconds", other.unwrap_or("missing"))),
        };
        if mx.is_empty() && mode != Mode::None {
            return Err("the policy names no mx".into());
        }
        Ok(Policy { mode, mx, max_age })
    }

    /// §4.1: whether `host` is one of the policy's MX hosts. A pattern `*.example.net`
    /// stands for exactly one label more (`mx1.example.net`, not `a.b.example.net`).
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|pattern| crate::dns::name_matches(pattern, &host))
    }
}

/// An `mx` value: `["*."] Domain`, in lower case, without a final dot.
fn mx_pattern(value: &str) -> Result<String, String> {
    let name = value.trim_end_matches('.').to_ascii_lowercase();
    let domain = name.strip_prefix("*.").unwrap_or(&name);
    let valid = crate::smtp::address::Domain::parse(domain).is_ok() && domain.is_ascii() && !domain.contains('*');
    if valid { Ok(name) } else { Err(format!("mx {value:?} is not a host name or *.domain")) }
}

/// What `_mta-sts.DOMAIN` says (§3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// No `v=STSv1` record: the domain has no policy (unless one is cached).
    Absent,
    /// The policy's id: a change means a new policy to fetch.
    Id(String),
    /// A record that is not usable (two of them, or no valid `id`): treated as absent.
    Invalid(String),
}

/// §3.1: the records that begin with `v=STSv1;` count; exactly one must, with an `id` of
/// 1 to 32 letters and digits.
pub fn parse_record(txts: &[Vec<u8>]) -> Record {
    let ours: Vec<&[u8]> = txts
        .iter()
        .map(Vec::as_slice)
        .filter(|t| {
            t.strip_prefix(b"v=STSv1").is_some_and(|rest| rest.is_empty() || matches!(rest[0], b';' | b' ' | b'\t'))
        })
        .collect();
    let record = match ours.as_slice() {
        [] => return Record::Absent,
        [one] => String::from_utf8_lossy(one),
        _ => return Record::Invalid("more than one v=STSv1 record".into()),
    };
    let id = record.split(';').skip(1).find_map(|field| field.trim_matches([' ', '\t']).strip_prefix("id="));
    match id {
        Some(id) if (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            Record::Id(id.to_string())
        }
        Some(id) => Record::Invalid(format!("id {id:?} is not 1 to 32 letters and digits")),
        None => Record::Invalid("the record has no id".into()),
    }
}

/// The body of an HTTP reply to our GET, once all of it is in: `Ok(None)` while more is to
/// come. §3.3: only a 200 counts (a redirect is not followed), the media type must be
/// `text/plain`, and the body is at most `MAX_POLICY` octets. `eof`: the server has closed.
pub fn parse_response(bytes: &[u8], eof: bool) -> Result<Option<Vec<u8>>, String> {
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        if bytes.len() > MAX_HEAD {
            return Err("the reply's header is too long".into());
        }
        return if eof { Err("the reply ended in its header".into()) } else { Ok(None) };
    };
    if head_end > MAX_HEAD {
        return Err("the reply's header is too long".into());
    }
    let head = String::from_utf8_lossy(&bytes[..head_end]);
    let body = &bytes[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let mut words = status.splitn(3, ' ');
    let (version, code) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") || code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("not an HTTP reply: {:?}", status.chars().take(60).collect::<String>()));
    }
    let fields: Vec<(String, &str)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim())).collect();
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    if code.starts_with('3') {
        let to = field("location").unwrap_or("elsewhere");
        return Err(format!("HTTP {code}: a redirect to {to}, not followed (RFC 8461 §3.3)"));
    }
    if code != "200" {
        return Err(format!("HTTP {code}"));
    }
    let media = field("content-type").unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if media != "text/plain" {
        return Err(format!("the policy is served as {:?}, not text/plain (RFC 8461 §3.2)", media));
    }
    let chunked = field("transfer-encoding").is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return dechunk(body, eof);
    }
    match field("content-length") {
        Some(len) => {
            let len: usize = len.parse().map_err(|_| format!("Content-Length {len:?} is not a number"))?;
            if len > MAX_POLICY {
                return Err(format!("the policy is {len} octets, more than {MAX_POLICY}"));
            }
            match body.len() {
                n if n >= len => Ok(Some(body[..len].to_vec())),
                _ if eof => Err("the reply ended before its Content-Length".into()),
                _ => Ok(None),
            }
        }
        None if body.len() > MAX_POLICY => Err(format!("the policy is more than {MAX_POLICY} octets")),
        None if eof => Ok(Some(body.to_vec())),
        None => Ok(None),
    }
}

/// A chunked body (RFC 9112 §7.1), whole once its last chunk is in.
fn dechunk(mut rest: &[u8], eof: bool) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return if eof { Err("the reply ended inside a chunk".into()) } else { Ok(None) };
        };
        let size_text = String::from_utf8_lossy(&rest[..end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = match usize::from_str_radix(size_text, 16) {
            Ok(n) if size_text.len() <= 8 => n,
            _ => return Err(format!("a chunk size {size_text:?} that is not a number")),
        };
        if size == 0 {
            return Ok(Some(body));
        }
        if body.len() + size > MAX_POLICY {
            return Err(format!("the policy is more than {MAX_POLICY} octets"));
        }
        rest = &rest[end + 2..];
        if rest.len() < size + 2 {
            return if eof { Err("the reply ended inside a chunk".into()) } else { Ok(None) };
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// A policy as the cache keeps it: the record's id it came with and when it was fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub id: String,
    pub fetched: u64,
    pub policy: Policy,
    /// The body as it was served, kept as it is in the cache file.
    pub body: Vec<u8>,
}

impl Cached {
    /// Valid until `fetched + max_age` (§5.1).
    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.fetched.saturating_add(self.policy.max_age)
    }

    /// The cache file: `id:` and `fetched:` lines, a blank line, the body as served.
    pub fn to_file(&self) -> Vec<u8> {
        let mut file = format!("id: {}\nfetched: {}\n\n", self.id, self.fetched).into_bytes();
        file.extend_from_slice(&self.body);
        file
    }

    pub fn from_file(bytes: &[u8]) -> Result<Cached, String> {
        let end = bytes.windows(2).position(|w| w == b"\n\n").ok_or("no blank line after the cache's header")?;
        let head = std::str::from_utf8(&bytes[..end]).map_err(|_| "the cache's header is not text")?;
        let (mut id, mut fetched) = (None, None);
        for line in head.lines() {
            match line.split_once(": ") {
                Some(("id", v)) => id = Some(v.to_string()),
                Some(("fetched", v)) => fetched = v.parse().ok(),
                _ => return Err(format!("unknown line {line:?} in the cache's header")),
            }
        }
        let (Some(id), Some(fetched)) = (id, fetched) else { return Err("the cache's header is incomplete".into()) };
        let body = bytes[end + 2..].to_vec();
        let policy = Policy::parse(&body)?;
        Ok(Cached { id, fetched, policy, body })
    }
}

/// What to do about a domain, from its record and the cached policy (§5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The cached policy holds.
    UseCached,
    /// Fetch the policy with this id (the cached one, if fresh, is the fallback).
    Fetch(String),
    /// No policy applies.
    Nothing,
}

/// §5.1: a new id (or none cached, or the cached one expired) means a fetch; a record that
/// is missing, broken or does not answer leaves a fresh cached policy in force, so that
/// taking the record away cannot switch the policy off before it expires.
pub fn decide(record: &Result<Record, DnsFailure>, cached: Option<&Cached>, now: u64) -> Step {
    let fresh = cached.filter(|c| c.is_fresh(now));
    match (record, fresh) {
        (Ok(Record::Id(id)), Some(c)) if c.id == *id => Step::UseCached,
        (Ok(Record::Id(id)), _) => Step::Fetch(id.clone()),
        (_, Some(_)) => Step::UseCached,
        (_, None) => Step::Nothing,
    }
}

/// The policy a run applies to a domain, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub domain: String,
    pub id: String,
    pub policy: Policy,
    /// Taken from the cache (not fetched by this run).
    pub cached: bool,
}

/// The run's MTA-STS policies: each domain's looked up once per run (its first message's
/// thread does it while the others wait), kept in `spool/mta-sts/DOMAIN` between runs.
pub struct Policies {
    dir: PathBuf,
    connect_timeout: Duration,
    known: PerRun<Option<Arc<Applied>>>,
}

impl Policies {
    pub fn new(dir: PathBuf, connect_timeout: Duration) -> Policies {
        Policies { dir, connect_timeout, known: PerRun::default() }
    }

    /// The policy that applies to `domain` (lower case), or `None`; mode `none` counts as none.
    pub fn get(&self, domain: &str, dns: &DnsLookup, now: u64) -> Option<Arc<Applied>> {
        self.known.get(domain, || self.look_up(domain, dns, now).map(Arc::new)).filter(|a| a.policy.mode != Mode::None)
    }

    fn look_up(&self, domain: &str, dns: &DnsLookup, now: u64) -> Option<Applied> {
        let path = self.dir.join(domain);
        let cached = match std::fs::read(&path) {
            Ok(bytes) => Cached::from_file(&bytes)
                .map_err(|e| log::warn!("{}: {e}; fetching the policy again", path.display()))
                .ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                log::warn!("{}: {e}", path.display());
                None
            }
        };
        let record = dns.txt(&format!("_mta-sts.{domain}")).map(|t| parse_record(&t)).or_else(|e| match e {
            DnsFailure::NotFound | DnsFailure::NoData => Ok(Record::Absent),
            e => Err(e),
        });
        if let Ok(Record::Invalid(why)) = &record {
            log::warn!("{domain}: MTA-STS record not used: {why}");
        }
        let from_cache = |c: Cached| Applied { domain: domain.into(), id: c.id, policy: c.policy, cached: true };
        match decide(&record, cached.as_ref(), now) {
            Step::Nothing => None,
            Step::UseCached => cached.map(from_cache),
            Step::Fetch(id) => match self.fetch(domain, dns) {
                Ok((policy, body)) => {
                    log::info!("{domain}: MTA-STS policy {id} fetched: mode {}", policy.mode.name());
                    let fresh = Cached { id: id.clone(), fetched: now, policy: policy.clone(), body };
                    if let Err(e) = self.keep(domain, &fresh) {
                        log::warn!("{}: {e}; the policy is used by this run only", path.display());
                    }
                    Some(Applied { domain: domain.into(), id, policy, cached: false })
                }
                Err(why) => {
                    let fallback = cached.filter(|c| c.is_fresh(now));
                    let what = if fallback.is_some() { "the cached policy applies" } else { "no policy applies" };
                    log::warn!("{domain}: MTA-STS policy {id} not fetched: {why}; {what}");
                    fallback.map(from_cache)
                }
            },
        }
    }

    /// GET `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (§3.3): the certificate
    /// verified for that name, no redirect followed, size and time capped.
    fn fetch(&self, domain: &str, dns: &DnsLookup) -> Result<(Policy, Vec<u8>), String> {
        let host = format!("mta-sts.{domain}");
        let deadline = Instant::now() + FETCH_TIME;
        let addrs = dns.addresses(&host).map_err(|e| format!("{host}: {e:?}"))?;
        let mut last = format!("{host} has no address");
        for ip in addrs.into_iter().take(FETCH_ADDRESSES) {
            match self.get_from(&host, SocketAddr::new(ip, 443), deadline) {
                Ok(body) => {
                    let policy = Policy::parse(&body).map_err(|e| format!("{host}: {e}"))?;
                    return Ok((policy, body));
                }
                Err(e) => last = format!("{host}[{ip}]: {e}"),
            }
        }
        Err(last)
    }

    fn get_from(&self, host: &str, addr: SocketAddr, deadline: Instant) -> Result<Vec<u8>, String> {
        let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let tcp = TcpStream::connect_timeout(&addr, self.connect_timeout.min(left())).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(left())).map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(left())).map_err(|e| e.to_string())?;
        let connector = native_tls::TlsConnector::new().map_err(|e| e.to_string())?;
        let mut tls = connector.connect(host, tcp).map_err(|e| format!("TLS: {e}"))?;
        let request = format!(
            "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\nUser-Agent: postern\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            if Instant::now() >= deadline {
                return Err("timed out".into());
            }
            tls.get_ref().set_read_timeout(Some(left())).map_err(|e| e.to_string())?;
            let n = match tls.read(&mut buf) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Err("timed out".into());
                }
                Err(e) => return Err(e.to_string()),
            };
            reply.extend_from_slice(&buf[..n]);
            if let Some(body) = parse_response(&reply, n == 0)? {
                return Ok(body);
            }
            if reply.len() > MAX_HEAD + MAX_POLICY + 1024 {
                return Err(format!("the reply is more than {MAX_POLICY} octets"));
            }
        }
    }

    /// Writes the policy to its cache file: whole under a draft name (`DOMAIN~PID`, never
    /// a domain's name), synced, then renamed over the old one, so a reader sees one or the
    /// other. A crash leaves at most a draft, which the next write of that domain removes.
    fn keep(&self, domain: &str, policy: &Cached) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(domain);
        let draft = self.dir.join(format!("{domain}~{}", std::process::id()));
        let written = (|| {
            let _ = std::fs::remove_file(&draft);
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&draft)?;
            f.write_all(&policy.to_file())?;
            f.sync_all()?;
            crate::fault::crash_point("mta-sts-drafted");
            std::fs::rename(&draft, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&draft);
        }
        sweep_drafts(&self.dir, domain);
        written
    }
}

/// Removes the drafts of `domain` that killed runs left (a run's own is gone by now).
fn sweep_drafts(dir: &Path, domain: &str) {
    let prefix = format!("{domain}~");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &[u8] =
        b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\nmx: *.example.net\r\nmax_age: 86400\r\n";

    #[test]
    fn a_policy_reads_as_the_rfc_writes_it() {
        let p = Policy::parse(POLICY).unwrap();
        assert_eq!(
            p,
            Policy {
                mode: Mode::Enforce,
                mx: vec!["mail.example.test".into(), "*.example.net".into()],
                max_age: 86400
            }
        );
        // LF endings, extensions, repeated fields (the first counts), whitespace.
        let p = Policy::parse(
            b"version: STSv1\nmode:testing\nmode: enforce\nmx:  MX.Example.Test. \nfoo: bar\nmax_age: 9999999999\n",
        )
        .unwrap();
        assert_eq!((p.mode, p.mx, p.max_age), (Mode::Testing, vec!["mx.example.test".to_string()], MAX_AGE_LIMIT));
        assert_eq!(Policy::parse(b"version: STSv1\nmode: none\nmax_age: 1\n").unwrap().mode, Mode::None);
        assert!(Policy::parse(b"version: STSv1\nmode: none\nmax_age: 99999999999\n").is_err(), "11 digits");
    }

    #[test]
    fn a_broken_policy_is_refused_with_its_reason() {
        for (body, why) in [
            (&b"version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n"[..], "version"),
            (b"mode: enforce\nmx: a.test\nmax_age: 1\n", "version is missing"),
            (b"version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", "mode is strict"),
            (b"version: STSv1\nmode: enforce\nmx: a.test\n", "max_age is missing"),
            (b"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n", "max_age is -1"),
            (b"version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
            (b"version: STSv1\nmode: enforce\nmx: a..test\nmax_age: 1\n", "not a host name"),
            (b"version: STSv1\nmode: enforce\nmx: a.*.test\nmax_age: 1\n", "not a host name"),
            (b"<html>\nversion: STSv1\n", "line 1"),
            (b"version: STSv1\n\xff\n", "UTF-8"),
        ] {
            let e = Policy::parse(body).unwrap_err();
            assert!(e.contains(why), "{e} for {:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn mx_patterns_match_as_section_4_1_says() {
        let p = Policy::parse(POLICY).unwrap();
        assert!(p.allows("mail.example.test") && p.allows("MAIL.example.test."));
        assert!(p.allows("mx1.example.net"));
        assert!(!p.allows("a.b.example.net"), "a wildcard is one label");
        assert!(!p.allows("example.net") && !p.allows(".example.net"));
        assert!(!p.allows("evil-mail.example.test") && !p.allows("mail.example.test.evil"));
    }

    #[test]
    fn the_record_gives_the_id_once() {
        let rec = |list: &[&str]| parse_record(&list.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>());
        assert_eq!(rec(&["v=STSv1; id=20160831085700Z;"]), Record::Id("20160831085700Z".into()));
        assert_eq!(rec(&["v=spf1 -all", "v=STSv1;id=abc"]), Record::Id("abc".into()));
        assert_eq!(rec(&["v=STSv1; ext=1; id=abc ; "]), Record::Id("abc".into()));
        assert_eq!(rec(&[]), Record::Absent);
        assert_eq!(rec(&["v=STSv10; id=abc", "something else"]), Record::Absent);
        assert!(matches!(rec(&["v=STSv1; id=a", "v=STSv1; id=b"]), Record::Invalid(_)));
        assert!(matches!(rec(&["v=STSv1;"]), Record::Invalid(_)));
        assert!(matches!(rec(&["v=STSv1; id=has-dash"]), Record::Invalid(_)));
        assert!(matches!(rec(&[&format!("v=STSv1; id={}", "a".repeat(33))]), Record::Invalid(_)));
    }

    #[test]
    fn only_a_whole_plain_text_200_is_a_policy() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(ok, false), Ok(Some(b"hello".to_vec())));
        assert_eq!(parse_response(&ok[..ok.len() - 1], false), Ok(None), "waits for the rest");
        assert!(parse_response(&ok[..ok.len() - 1], true).is_err(), "cut short");
        let close = b"HTTP/1.0 200 OK\r\ncontent-type: TEXT/PLAIN\r\n\r\nbody";
        assert_eq!(parse_response(close, false), Ok(None));
        assert_eq!(parse_response(close, true), Ok(Some(b"body".to_vec())));
        let chunked = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked, false), Ok(Some(b"abcde".to_vec())));
        assert_eq!(parse_response(&chunked[..chunked.len() - 7], false), Ok(None));
        for (reply, why) in [
            (&b"HTTP/1.1 301 Moved\r\nLocation: https://evil.test/\r\n\r\n"[..], "not followed"),
            (b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\n", "HTTP 404"),
            (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>", "text/html"),
            (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 99999\r\n\r\n", "more than"),
            (b"SMTP 220 hello\r\n\r\n", "not an HTTP reply"),
            (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        ] {
            let e = parse_response(reply, true).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let huge =
            [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec(), vec![b'a'; MAX_POLICY + 1]].concat();
        assert!(parse_response(&huge, false).is_err());
        assert!(parse_response(&vec![b'a'; MAX_HEAD + 1], false).is_err(), "a header without end");
    }

    fn cached(id: &str, fetched: u64) -> Cached {
        Cached { id: id.into(), fetched, policy: Policy::parse(POLICY).unwrap(), body: POLICY.to_vec() }
    }

    #[test]
    fn the_cache_file_reads_back() {
        let c = cached("abc", 1000);
        assert_eq!(Cached::from_file(&c.to_file()), Ok(c));
        assert!(Cached::from_file(b"id: abc\n\nversion: STSv1\n").is_err());
        assert!(Cached::from_file(b"id: abc\nfetched: 1\n").is_err());
        assert!(Cached::from_file(b"id: abc\nfetched: 1\n\nversion: STSv2\n").is_err());
    }

    #[test]
    fn a_cached_policy_holds_until_it_expires_or_its_id_changes() {
        let id = |s: &str| Ok(Record::Id(s.into()));
        let c = cached("abc", 1000);
        let fresh = 1000 + 86399;
        let stale = 1000 + 86400;
        assert_eq!(decide(&id("abc"), Some(&c), fresh), Step::UseCached);
        assert_eq!(decide(&id("new"), Some(&c), fresh), Step::Fetch("new".into()));
        assert_eq!(decide(&id("abc"), Some(&c), stale), Step::Fetch("abc".into()));
        assert_eq!(decide(&id("abc"), None, fresh), Step::Fetch("abc".into()));
        // §5.1: no record, a broken one or no answer: a fresh cached policy still holds.
        for record in [Ok(Record::Absent), Ok(Record::Invalid("two".into())), Err(DnsFailure::Temporary("x".into()))] {
            assert_eq!(decide(&record, Some(&c), fresh), Step::UseCached);
            assert_eq!(decide(&record, Some(&c), stale), Step::Nothing);
            assert_eq!(decide(&record, None, fresh), Step::Nothing);
        }
    }
}
