//! DKIM verification (RFC 6376 §6): each `DKIM-Signature:` field of a message, up to
//! `MAX_SIGNATURES`, checked against its key in DNS. Algorithms: rsa-sha256 with keys of
//! 1024 to 4096 bits, and ed25519-sha256 (RFC 8463); rsa-sha1 and shorter RSA keys are never
//! a pass (RFC 8301 §3.1, §3.2). A result is information: verification never refuses a
//! message by itself (§6.3).
//!
//! The parsing and hashing are pure; the key comes through `dns::Resolve`, so that tests
//! feed it. A message is fed in two steps, its header section, then its body in pieces, so
//! that the server hashes the body as it streams.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use openssl::md::Md;
use openssl::pkey::{Id, PKey, Public};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;
use openssl::sha::sha256;
use openssl::sign::Verifier as OpensslVerifier;

use super::canon::{self, Body, Canon};
use crate::dns::{DnsFailure, Resolve};
use crate::message::Headers;

/// Signatures checked per message; any more are not looked at (each costs a DNS question and
/// a pass over the body).
pub const MAX_SIGNATURES: usize = 5;

/// The largest `DKIM-Signature:` field read, and the largest key record: far past any real
/// one (a 4096-bit key's record is under 800 octets).
const MAX_FIELD: usize = 8 * 1024;

/// RFC 8301 §3.2: RSA keys shorter than this are not valid; RFC 6376 §3.3.3 asks verifiers
/// to handle up to 4096 bits, and longer ones are refused as a cost no signer needs.
const MIN_RSA_BITS: u32 = 1024;
const MAX_RSA_BITS: u32 = 4096;

/// One signature's result (RFC 8601 §2.7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkimResult {
    Pass,
    /// The signature was checked and did not verify, or may not count (expired, revoked key,
    /// a key or algorithm RFC 8301 forbids).
    Fail,
    /// DNS did not answer: try again later.
    TempError,
    /// The signature or its key record cannot be used: malformed, no key, unknown algorithm.
    PermError,
}

impl std::fmt::Display for DkimResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DkimResult::Pass => "pass",
            DkimResult::Fail => "fail",
            DkimResult::TempError => "temperror",
            DkimResult::PermError => "permerror",
        })
    }
}

/// What was found for one signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub result: DkimResult,
    /// `d=`, lower case ("" when the field had none that could be read).
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// Why it is not a pass, for the `reason=` of `Authentication-Results:`.
    pub reason: Option<String>,
}

/// §3.2: a tag-list as (name, value) pairs, each value with white space at its ends removed
/// (white space inside kept). A tag named twice, a bad name or a character outside VALCHAR
/// and white space makes the whole list invalid.
pub fn parse_tags(text: &[u8]) -> Result<Vec<(&str, &str)>, String> {
    let mut tags: Vec<(&str, &str)> = Vec::new();
    let specs: Vec<&[u8]> = text.split(|&b| b == b';').collect();
    for (i, spec) in specs.iter().enumerate() {
        let spec = trim_fws(spec);
        if spec.is_empty() {
            if i + 1 == specs.len() {
                break; // a final ";" (§3.2)
            }
            return Err("an empty tag".into());
        }
        let Some(eq) = spec.iter().position(|&b| b == b'=') else {
            return Err(format!("`{}` is not tag=value", String::from_utf8_lossy(spec)));
        };
        let name = trim_fws(&spec[..eq]);
        let value = trim_fws(&spec[eq + 1..]);
        let name_ok = name.first().is_some_and(u8::is_ascii_alphabetic)
            && name.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err(format!("`{}` is not a tag name", String::from_utf8_lossy(name)));
        }
        if !value.iter().all(|&b| matches!(b, 0x21..=0x3A | 0x3C..=0x7E | b' ' | b'\t' | b'\r' | b'\n')) {
            return Err(format!("tag {} has a character a tag value cannot hold", String::from_utf8_lossy(name)));
        }
        // Both are ASCII by now (the checks above), so both are UTF-8.
        let ascii = |octets| std::str::from_utf8(octets).map_err(|_| "a tag that is not ASCII".to_string());
        let (name, value) = (ascii(name)?, ascii(value)?);
        if tags.iter().any(|(n, _)| *n == name) {
            return Err(format!("tag {name} is given twice"));
        }
        tags.push((name, value));
    }
    Ok(tags)
}

fn trim_fws(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\r' | b'\n', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r' | b'\n'] = s {
        s = rest;
    }
    s
}

fn tag<'a>(tags: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    tags.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// Base64 with the white space that folding puts in it removed (§3.5, `b=`, `bh=`, `p=`).
fn base64(value: &str) -> Result<Vec<u8>, String> {
    let mut compact = Vec::with_capacity(value.len());
    compact.extend(value.bytes().filter(|b| !b.is_ascii_whitespace()));
    // Only ASCII octets were taken out of UTF-8, so what is left is UTF-8 still.
    let compact = String::from_utf8(compact).map_err(|_| "bad base64".to_string())?;
    openssl::base64::decode_block(&compact).map_err(|_| "bad base64".to_string())
}

/// A colon-separated list, each item trimmed (`h=` of either kind, `s=`, `t=` of a key).
fn colon_list(value: &str) -> Vec<String> {
    value.split(':').map(|s| s.trim_matches([' ', '\t', '\r', '\n']).to_string()).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    RsaSha256,
    Ed25519Sha256,
}

/// A `DKIM-Signature:` field read (§3.5).
#[derive(Debug)]
struct Signature {
    algorithm: Algorithm,
    signature: Vec<u8>,
    body_hash: Vec<u8>,
    header_canon: Canon,
    body_canon: Canon,
    domain: String,
    selector: String,
    /// The domain of `i=` (`d=` when absent).
    agent_domain: String,
    signed: Vec<String>,
    limit: Option<u64>,
}

/// A field that cannot be used, with what is known of it for the result.
struct Unusable {
    result: DkimResult,
    domain: String,
    selector: String,
    reason: String,
}

fn parse_signature(value: &[u8], now: u64) -> Result<Signature, Unusable> {
    let tags = parse_tags(value)
        .map_err(|reason| Unusable::anonymous(DkimResult::PermError, format!("signature: {reason}")))?;
    let domain = tag(&tags, "d").unwrap_or("").to_ascii_lowercase();
    let selector = tag(&tags, "s").unwrap_or("").to_string();
    let refuse =
        |result, reason: String| Unusable { result, domain: domain.clone(), selector: selector.clone(), reason };
    let perm = |reason: &str| refuse(DkimResult::PermError, reason.to_string());
    for required in ["v", "a", "b", "bh", "d", "h", "s"] {
        if tag(&tags, required).is_none() {
            return Err(perm(&format!("signature has no {required}= tag")));
        }
    }
    if tag(&tags, "v") != Some("1") {
        return Err(perm("signature version is not 1"));
    }
    let algorithm = match tag(&tags, "a").unwrap_or("").to_ascii_lowercase().as_str() {
        "rsa-sha256" => Algorithm::RsaSha256,
        "ed25519-sha256" => Algorithm::Ed25519Sha256,
        // RFC 8301 §3.1: never a pass.
        "rsa-sha1" => return Err(refuse(DkimResult::Fail, "rsa-sha1 is not accepted (RFC 8301)".into())),
        other => return Err(perm(&format!("unknown algorithm {other}"))),
    };
    let (header_canon, body_canon) = match tag(&tags, "c") {
        None => (Canon::Simple, Canon::Simple),
        Some(c) => {
            let (h, b) = c.split_once('/').unwrap_or((c, "simple"));
            let one = |s: &str| match s.to_ascii_lowercase().as_str() {
                "simple" => Some(Canon::Simple),
                "relaxed" => Some(Canon::Relaxed),
                _ => None,
            };
            match (one(h), one(b)) {
                (Some(h), Some(b)) => (h, b),
                _ => return Err(perm(&format!("unknown canonicalization {c}"))),
            }
        }
    };
    if domain.is_empty() || !domain.split('.').all(|l| !l.is_empty() && l.len() <= 63) || domain.len() > 253 {
        return Err(perm("signature's d= is not a domain"));
    }
    if selector.is_empty() || !selector.split('.').all(|l| !l.is_empty() && l.len() <= 63) {
        return Err(perm("signature's s= is not a selector"));
    }
    let signed: Vec<String> =
        colon_list(tag(&tags, "h").unwrap_or("")).into_iter().map(|n| n.to_ascii_lowercase()).collect();
    if signed.iter().any(String::is_empty) {
        return Err(perm("signature's h= has an empty name"));
    }
    // §6.1.1: From must be signed.
    if !signed.iter().any(|n| n == "from") {
        return Err(perm("From field not signed"));
    }
    let agent_domain = match tag(&tags, "i") {
        None => domain.clone(),
        Some(i) => {
            let Some((_, at)) = i.rsplit_once('@') else { return Err(perm("signature's i= has no @")) };
            let at = at.to_ascii_lowercase();
            // §6.1.1: the identity is in d= or one of its subdomains.
            if at != domain && !at.ends_with(&format!(".{domain}")) {
                return Err(perm("signature's i= is not within d="));
            }
            at
        }
    };
    if let Some(q) = tag(&tags, "q")
        && !colon_list(q).iter().any(|m| m.eq_ignore_ascii_case("dns/txt"))
    {
        return Err(perm("no query method this verifier knows"));
    }
    let number = |name: &str| -> Result<Option<u64>, Unusable> {
        match tag(&tags, name) {
            None => Ok(None),
            // §3.5: l=, t= and x= are 1 to 76 digits; past u64 is past any real time or size.
            Some(v) if !v.is_empty() && v.len() <= 76 && v.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(Some(v.parse().unwrap_or(u64::MAX)))
            }
            Some(_) => Err(perm(&format!("signature's {name}= is not a number"))),
        }
    };
    let limit = number("l")?;
    let timestamp = number("t")?;
    let expires = number("x")?;
    if let (Some(t), Some(x)) = (timestamp, expires)
        && x < t
    {
        return Err(perm("signature expires before it was made"));
    }
    if let Some(x) = expires
        && x < now
    {
        return Err(refuse(DkimResult::Fail, "signature expired".into()));
    }
    let signature = base64(tag(&tags, "b").unwrap_or("")).map_err(|_| perm("signature's b= is not base64"))?;
    let body_hash = base64(tag(&tags, "bh").unwrap_or("")).map_err(|_| perm("signature's bh= is not base64"))?;
    if signature.is_empty() || body_hash.is_empty() {
        return Err(perm("signature's b= or bh= is empty"));
    }
    Ok(Signature {
        algorithm,
        signature,
        body_hash,
        header_canon,
        body_canon,
        domain,
        selector,
        agent_domain,
        signed,
        limit,
    })
}

/// A key record read (§3.6.1).
#[derive(Clone)]
struct KeyRecord {
    key: PKey<Public>,
    /// `t=s`: `i=` must be in `d=` itself, not a subdomain.
    strict: bool,
    /// An RSA key's contexts for its checks: `Some` for every RSA key.
    rsa: Option<Arc<RsaCheckers>>,
}

/// Contexts set up to check PKCS #1 v1.5 signatures of SHA-256 digests (RFC 8017 §8.2.2)
/// with one RSA key: setting one up costs more than a check, so each is kept for the next.
/// A check takes one of its own and gives it back, and holds no lock while it checks.
struct RsaCheckers {
    key: PKey<Public>,
    idle: Mutex<Vec<PkeyCtx<Public>>>,
}

/// Contexts kept idle per key at most: as many as checks run at once, within reason.
const IDLE_CHECKERS: usize = 16;

impl RsaCheckers {
    fn new(key: &PKey<Public>) -> Result<RsaCheckers, openssl::error::ErrorStack> {
        let first = RsaCheckers::context(key)?;
        Ok(RsaCheckers { key: key.clone(), idle: Mutex::new(vec![first]) })
    }

    fn context(key: &PKey<Public>) -> Result<PkeyCtx<Public>, openssl::error::ErrorStack> {
        let mut ctx = PkeyCtx::new(key)?;
        ctx.verify_init()?;
        ctx.set_rsa_padding(Padding::PKCS1)?;
        ctx.set_signature_md(Md::sha256())?;
        Ok(ctx)
    }

    /// Whether `signature` is the key's over `digest`.
    fn check(&self, digest: &[u8], signature: &[u8]) -> Result<bool, openssl::error::ErrorStack> {
        let lock = || self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let kept = lock().pop();
        let mut ctx = match kept {
            Some(ctx) => ctx,
            None => RsaCheckers::context(&self.key)?,
        };
        let good = ctx.verify(digest, signature).unwrap_or(false);
        let mut idle = lock();
        if idle.len() < IDLE_CHECKERS {
            idle.push(ctx);
        }
        Ok(good)
    }
}

/// A key record read, from `READ_KEYS` when the same record was read for the same algorithm
/// lately: reading one (its tags, its base64, the key's DER) costs more than the signature
/// check itself, and a busy sender signs every message with the same key.
fn parse_key(record: &[u8], algorithm: Algorithm) -> Result<KeyRecord, (DkimResult, String)> {
    let lock = || READ_KEYS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, read)) = lock().iter().find(|(a, r, _)| *a == algorithm && r == record) {
        return read.clone();
    }
    let read = read_key(record, algorithm);
    if matches!(read, Err((DkimResult::TempError, _))) {
        return read; // the library's failure, not the record's
    }
    let mut kept = lock();
    if kept.len() == READ_KEYS_KEPT {
        _ = kept.remove(0);
    }
    kept.push((algorithm, record.to_vec(), read.clone()));
    read
}

fn read_key(record: &[u8], algorithm: Algorithm) -> Result<KeyRecord, (DkimResult, String)> {
    let perm = |reason: &str| (DkimResult::PermError, reason.to_string());
    let tags = parse_tags(record).map_err(|e| perm(&format!("key record: {e}")))?;
    if let Some(i) = tags.iter().position(|(n, _)| *n == "v") {
        // §3.6.1: if present, v= is first and DKIM1.
        if i != 0 || tags[0].1 != "DKIM1" {
            return Err(perm("key record version is not DKIM1"));
        }
    }
    if let Some(h) = tag(&tags, "h")
        && !colon_list(h).iter().any(|a| a.eq_ignore_ascii_case("sha256"))
    {
        return Err((DkimResult::Fail, "key record does not allow sha256".into()));
    }
    let kind = tag(&tags, "k").unwrap_or("rsa").to_ascii_lowercase();
    let wanted = if algorithm == Algorithm::RsaSha256 { "rsa" } else { "ed25519" };
    if kind != "rsa" && kind != "ed25519" {
        return Err(perm(&format!("unknown key type {kind}")));
    }
    if kind != wanted {
        return Err(perm("key type does not match the signature's algorithm"));
    }
    if let Some(s) = tag(&tags, "s")
        && !colon_list(s).iter().any(|t| t == "*" || t.eq_ignore_ascii_case("email"))
    {
        return Err(perm("key is not for email"));
    }
    let flags = colon_list(tag(&tags, "t").unwrap_or(""));
    let Some(p) = tag(&tags, "p") else { return Err(perm("key record has no p= tag")) };
    let data = base64(p).map_err(|_| perm("key record's p= is not base64"))?;
    if data.is_empty() {
        return Err((DkimResult::Fail, "key revoked".into()));
    }
    let key = if kind == "ed25519" {
        PKey::public_key_from_raw_bytes(&data, Id::ED25519)
            .map_err(|_| perm("key record's p= is not an Ed25519 key"))?
    } else {
        let key = PKey::public_key_from_der(&data)
            .or_else(|_| openssl::rsa::Rsa::public_key_from_der_pkcs1(&data).and_then(PKey::from_rsa))
            .map_err(|_| perm("key record's p= is not an RSA key"))?;
        if key.id() != Id::RSA {
            return Err(perm("key record's p= is not an RSA key"));
        }
        let bits = key.bits();
        if bits < MIN_RSA_BITS {
            return Err((DkimResult::Fail, format!("{bits}-bit key is too short (RFC 8301)")));
        }
        if bits > MAX_RSA_BITS {
            return Err(perm(&format!("{bits}-bit key is longer than {MAX_RSA_BITS} bits")));
        }
        key
    };
    let rsa = match key.id() {
        Id::RSA => {
            let checkers =
                RsaCheckers::new(&key).map_err(|e| (DkimResult::TempError, format!("cannot check RSA: {e}")))?;
            Some(Arc::new(checkers))
        }
        _ => None,
    };
    Ok(KeyRecord { key, strict: flags.iter().any(|f| f == "s"), rsa })
}

/// Key records read lately, with what each read to for an algorithm (a key, or why there is
/// none: a record says the same each time it is read); at most `READ_KEYS_KEPT`, the oldest
/// going first.
static READ_KEYS: Mutex<Vec<ReadKey>> = Mutex::new(Vec::new());
type ReadKey = (Algorithm, Vec<u8>, Result<KeyRecord, (DkimResult, String)>);
const READ_KEYS_KEPT: usize = 32;

/// The `DKIM-Signature:` field's value with the value of its `b=` tag removed, white space
/// around it too (§3.7): what its own hash covers.
fn without_b(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut rest = value;
    loop {
        let end = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
        let spec = &rest[..end];
        let eq = spec.iter().position(|&b| b == b'=');
        match eq {
            Some(eq) if trim_fws(&spec[..eq]) == b"b" => out.extend_from_slice(&spec[..=eq]),
            _ => out.extend_from_slice(spec),
        }
        if end == rest.len() {
            return out;
        }
        out.push(b';');
        rest = &rest[end + 1..];
    }
}

/// A message's signatures being checked: made from the header section, fed the body.
pub struct Verifier {
    checks: Vec<Check>,
    /// One body hash for each canonicalization and `l=` the signatures ask for: signatures
    /// that ask the same (a sender's and its provider's, both relaxed) share one pass.
    bodies: Vec<BodyHash>,
}

enum Check {
    Unusable(Unusable),
    /// `body`: its index in `bodies`.
    Hashing {
        signature: Box<Signature>,
        field: usize,
        body: usize,
    },
}

struct BodyHash {
    canon: Canon,
    limit: Option<u64>,
    /// `Err` once the hash library failed (then no signature on it can be checked).
    body: Result<Body, String>,
}

impl Unusable {
    /// A field that says nothing usable about its signer.
    fn anonymous(result: DkimResult, reason: String) -> Unusable {
        Unusable { result, domain: String::new(), selector: String::new(), reason }
    }
}

impl Verifier {
    /// Reads the `DKIM-Signature:` fields of the header section `headers` at time `now`
    /// (seconds since the epoch, for `x=`). `finish` is given the same section, parsed once
    /// by the caller for every check that reads it.
    pub fn new(headers: &Headers<'_>, now: u64) -> Verifier {
        let mut checks = Vec::new();
        let mut bodies: Vec<BodyHash> = Vec::new();
        for (i, field) in headers.fields.iter().enumerate() {
            if !field.name.trim_end_matches([' ', '\t']).eq_ignore_ascii_case("dkim-signature") {
                continue;
            }
            if checks.len() == MAX_SIGNATURES {
                break;
            }
            if field.raw.len() > MAX_FIELD {
                checks.push(Check::Unusable(Unusable::anonymous(
                    DkimResult::PermError,
                    "signature field too large".into(),
                )));
                continue;
            }
            let signature = match parse_signature(field.raw, now) {
                Ok(signature) => signature,
                Err(unusable) => {
                    checks.push(Check::Unusable(unusable));
                    continue;
                }
            };
            let (canon, limit) = (signature.body_canon, signature.limit);
            let body = match bodies.iter().position(|b| b.canon == canon && b.limit == limit) {
                Some(at) => at,
                None => {
                    bodies.push(BodyHash { canon, limit, body: Ok(Body::new(canon, limit)) });
                    bodies.len() - 1
                }
            };
            checks.push(Check::Hashing { signature: Box::new(signature), field: i, body });
        }
        Verifier { checks, bodies }
    }

    /// Whether the message has any signature to check.
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// The next piece of the body.
    pub fn feed(&mut self, bytes: &[u8]) {
        for hash in &mut self.bodies {
            if let Ok(body) = &mut hash.body
                && let Err(e) = body.feed(bytes)
            {
                hash.body = Err(e);
            }
        }
    }

    /// One verdict per signature, in the order of the fields, each key asked of `dns`
    /// before `until`; `headers`, the section `new` read. No signature: no verdicts (the
    /// caller says `dkim=none`).
    pub fn finish(self, headers: &Headers<'_>, dns: &dyn Resolve, until: Instant) -> Vec<Verdict> {
        let hashes: Vec<Result<Vec<u8>, String>> =
            self.bodies.into_iter().map(|h| h.body.and_then(|b| b.finish()).map(|(hash, _)| hash)).collect();
        self.checks
            .into_iter()
            .map(|check| match check {
                Check::Unusable(u) => {
                    Verdict { result: u.result, domain: u.domain, selector: u.selector, reason: Some(u.reason) }
                }
                Check::Hashing { signature, field, body } => {
                    let outcome = if field < headers.fields.len() {
                        check_one(&signature, headers, field, &hashes[body], dns, until)
                    } else {
                        Err((DkimResult::PermError, "header section changed".to_string()))
                    };
                    let (result, reason) = match outcome {
                        Ok(()) => (DkimResult::Pass, None),
                        Err((result, reason)) => (result, Some(reason)),
                    };
                    Verdict { result, domain: signature.domain, selector: signature.selector, reason }
                }
            })
            .collect()
    }
}

/// §6.1.2 and §6.1.3 for one signature whose body hash is complete.
fn check_one(
    signature: &Signature,
    headers: &Headers<'_>,
    field: usize,
    body_hash: &Result<Vec<u8>, String>,
    dns: &dyn Resolve,
    until: Instant,
) -> Result<(), (DkimResult, String)> {
    let perm = |reason: &str| (DkimResult::PermError, reason.to_string());
    let name = format!("{}._domainkey.{}", signature.selector, signature.domain);
    let records = match dns.txt(&name, until) {
        Ok(records) => records,
        Err(DnsFailure::Temporary(why)) => return Err((DkimResult::TempError, format!("key lookup: {why}"))),
        Err(DnsFailure::NotFound | DnsFailure::NoData) => return Err(perm("no key for signature")),
    };
    // §3.6.2.2: several records are undefined; the first one usable is taken.
    let mut problem = perm("no key for signature");
    let mut key = None;
    for record in records.iter().filter(|r| r.len() <= MAX_FIELD) {
        match parse_key(record, signature.algorithm) {
            Ok(k) => {
                key = Some(k);
                break;
            }
            Err(p) => problem = p,
        }
    }
    let key = key.ok_or(problem)?;
    if key.strict && signature.agent_domain != signature.domain {
        return Err(perm("key requires i= in d= itself (t=s)"));
    }
    let body_hash = body_hash.as_ref().map_err(|e| (DkimResult::TempError, e.clone()))?;
    if *body_hash != signature.body_hash {
        return Err((DkimResult::Fail, "body hash did not verify".into()));
    }
    // OpenSSL's SHA-256 itself: a digest fetched by name costs more than hashing the fields.
    let digest = sha256(&signed_data(signature, headers, field));
    let crypto = |e: openssl::error::ErrorStack| (DkimResult::Fail, format!("signature did not verify: {e}"));
    let good = match signature.algorithm {
        Algorithm::RsaSha256 => {
            let Some(checkers) = &key.rsa else { return Err(perm("key record's p= is not an RSA key")) };
            checkers
                .check(&digest, &signature.signature)
                .map_err(|e| (DkimResult::TempError, format!("cannot check RSA: {e}")))?
        }
        Algorithm::Ed25519Sha256 => {
            // RFC 8463 §3: PureEdDSA over the SHA-256 hash of the data.
            let mut verifier = OpensslVerifier::new_without_digest(&key.key).map_err(crypto)?;
            verifier.verify_oneshot(&signature.signature, &digest).unwrap_or(false)
        }
    };
    if good { Ok(()) } else { Err((DkimResult::Fail, "signature did not verify".into())) }
}

/// §3.7: the signed header fields in the order of `h=`, each name taking its instances from
/// the bottom up (a name with none left adds nothing, §5.4.2), then the signature field
/// itself without `b=`'s value and without its final CRLF.
fn signed_data(signature: &Signature, headers: &Headers<'_>, own: usize) -> Vec<u8> {
    let mut used = vec![false; headers.fields.len()];
    let mut data = Vec::with_capacity(1024);
    for name in &signature.signed {
        let found = (0..headers.fields.len())
            .rev()
            .find(|&i| !used[i] && headers.fields[i].name.trim_end_matches([' ', '\t']).eq_ignore_ascii_case(name));
        if let Some(i) = found {
            used[i] = true;
            let field = &headers.fields[i];
            canon::header_into(signature.header_canon, field.name, field.raw, &mut data);
        }
    }
    let field = &headers.fields[own];
    canon::header_into(signature.header_canon, field.name, &without_b(field.raw), &mut data);
    data.truncate(data.len() - 2);
    data
}

/// A whole message (header, empty line, body) checked at once.
pub fn verify(message: &[u8], dns: &dyn Resolve, now: u64, until: Instant) -> Vec<Verdict> {
    let (headers, at) = Headers::parse(message);
    let mut verifier = Verifier::new(&headers, now);
    verifier.feed(&message[at..]);
    verifier.finish(&headers, dns, until)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::TxtZone;
    use std::collections::HashMap;
    use std::time::Duration;

    /// TXT records by name; a name mapped to `None` times out.
    struct Zone(HashMap<String, Option<Vec<Vec<u8>>>>);

    impl Zone {
        fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, DnsFailure> {
            match self.0.get(name) {
                Some(Some(records)) => Ok(records.clone()),
                Some(None) => Err(DnsFailure::Temporary("timed out".into())),
                None => Err(DnsFailure::NotFound),
            }
        }
    }

    const MESSAGE: &[u8] =
        b"From: Alice <alice@example.test>\r\nTo: bob@remote.test\r\nSubject: hi\r\n\r\nbody  text\r\n\r\n";
    const NOW: u64 = 1_800_000_000;

    /// `MESSAGE` signed with a new key, and the zone publishing that key's record.
    fn signed(ed25519: bool) -> (Vec<u8>, Zone, String) {
        let (pem, record) = crate::dkim::generate(ed25519, 2048).unwrap();
        let key = crate::dkim::Key::from_pem("example.test", "s1", std::path::Path::new("k.pem"), &pem).unwrap();
        let field = crate::dkim::sign(&key, MESSAGE, NOW).unwrap();
        let mut message = field.into_bytes();
        message.extend_from_slice(MESSAGE);
        let zone =
            Zone(HashMap::from([("s1._domainkey.example.test".to_string(), Some(vec![record.clone().into_bytes()]))]));
        (message, zone, record)
    }

    fn results(message: &[u8], zone: &Zone) -> Vec<(DkimResult, Option<String>)> {
        let until = Instant::now() + Duration::from_secs(5);
        verify(message, &TxtZone(|n: &str| zone.txt(n)), NOW, until).into_iter().map(|v| (v.result, v.reason)).collect()
    }

    fn one(message: &[u8], zone: &Zone) -> (DkimResult, String) {
        let mut all = results(message, zone);
        assert_eq!(all.len(), 1, "{all:?}");
        let (result, reason) = all.remove(0);
        (result, reason.unwrap_or_default())
    }

    #[test]
    fn our_own_signatures_verify_and_tampering_fails() {
        for ed25519 in [false, true] {
            let (message, zone, _) = signed(ed25519);
            let verdicts =
                verify(&message, &TxtZone(|n: &str| zone.txt(n)), NOW, Instant::now() + Duration::from_secs(5));
            assert_eq!(verdicts.len(), 1);
            assert_eq!(
                (verdicts[0].result, verdicts[0].domain.as_str(), verdicts[0].selector.as_str()),
                (DkimResult::Pass, "example.test", "s1")
            );
            // Relaxed: white space changes inside lines and empty lines at the end do not count.
            let text = String::from_utf8(message.clone()).unwrap();
            let spaced =
                text.replace("body  text", "body \t text").replace("Subject: hi", "Subject:   hi") + "\r\n\r\n";
            assert_eq!(one(spaced.as_bytes(), &zone).0, DkimResult::Pass);
            let body = text.replace("body  text", "body text!");
            assert_eq!(one(body.as_bytes(), &zone), (DkimResult::Fail, "body hash did not verify".into()));
            let header = text.replace("Subject: hi", "Subject: ho");
            assert_eq!(one(header.as_bytes(), &zone), (DkimResult::Fail, "signature did not verify".into()));
            // A From: added on top: From is over-signed, so it counts.
            let added = format!("From: mallory@evil.test\r\n{text}");
            assert_eq!(one(added.as_bytes(), &zone).0, DkimResult::Fail);
            // A field not signed may be added.
            let unsigned = format!("X-Note: any\r\n{text}");
            assert_eq!(one(unsigned.as_bytes(), &zone).0, DkimResult::Pass);
        }
    }

    #[test]
    fn key_records_decide() {
        let (message, _, record) = signed(false);
        let zone = |records: Option<Vec<&str>>| {
            Zone(HashMap::from([(
                "s1._domainkey.example.test".to_string(),
                records.map(|r| r.into_iter().map(|s| s.as_bytes().to_vec()).collect()),
            )]))
        };
        let p = record.split("p=").nth(1).unwrap().to_string();
        assert_eq!(one(&message, &Zone(HashMap::new())), (DkimResult::PermError, "no key for signature".into()));
        assert_eq!(one(&message, &zone(None)).0, DkimResult::TempError);
        assert_eq!(one(&message, &zone(Some(vec!["v=DKIM1; k=rsa; p="]))), (DkimResult::Fail, "key revoked".into()));
        let pass = |r: &str| one(&message, &zone(Some(vec![r]))).0;
        assert_eq!(pass(&format!("k=rsa; p={p}")), DkimResult::Pass, "v= is optional");
        assert_eq!(pass(&format!("v=DKIM1; h=sha1:sha256; s=email; t=y; p={p}")), DkimResult::Pass);
        assert_eq!(pass(&format!("v=DKIM1; h=sha1; p={p}")), DkimResult::Fail);
        assert_eq!(pass(&format!("v=DKIM1; s=other; p={p}")), DkimResult::PermError);
        assert_eq!(pass(&format!("k=ed25519; p={p}")), DkimResult::PermError);
        assert_eq!(pass(&format!("p={p}; v=DKIM1")), DkimResult::PermError, "v= must come first");
        assert_eq!(pass("v=DKIM1; p=!!!"), DkimResult::PermError);
        assert_eq!(pass(&format!("v=DKIM1; t=s; p={p}")), DkimResult::Pass, "no i=: the identity is d= itself");
        // Of several records, the first usable one.
        assert_eq!(one(&message, &zone(Some(vec!["garbage", &format!("v=DKIM1; p={p}")]))).0, DkimResult::Pass);
        // A 512-bit key is never a pass (RFC 8301 §3.2).
        let short = openssl::rsa::Rsa::generate(512).unwrap();
        let der = openssl::base64::encode_block(&PKey::from_rsa(short).unwrap().public_key_to_der().unwrap());
        assert_eq!(
            one(&message, &zone(Some(vec![&format!("p={der}")]))),
            (DkimResult::Fail, "512-bit key is too short (RFC 8301)".into())
        );
    }

    #[test]
    fn signature_tags_decide() {
        let (message, zone, _) = signed(true);
        let text = String::from_utf8(message).unwrap();
        let with = |from: &str, to: &str| {
            assert!(text.contains(from), "{from}");
            one(text.replacen(from, to, 1).as_bytes(), &zone)
        };
        assert_eq!(with("a=ed25519-sha256", "a=rsa-sha1").0, DkimResult::Fail);
        assert_eq!(with("a=ed25519-sha256", "a=foo-sha512").0, DkimResult::PermError);
        assert_eq!(with("v=1", "v=2").0, DkimResult::PermError);
        assert_eq!(with("v=1;", "v=1; v=1;").0, DkimResult::PermError);
        assert_eq!(with("v=1;", "v=1; x=1700000000;").0, DkimResult::PermError, "x= before t=");
        let expiring = text.replacen("v=1;", &format!("v=1; x={};", NOW + 1), 1);
        let later = verify(
            expiring.as_bytes(),
            &TxtZone(|n: &str| zone.txt(n)),
            NOW + 2,
            Instant::now() + Duration::from_secs(5),
        );
        assert_eq!((later[0].result, later[0].reason.as_deref()), (DkimResult::Fail, Some("signature expired")));
        assert_eq!(
            with("v=1;", "v=1; i=@mail.example.test;").0,
            DkimResult::Fail,
            "signed without i=: the hash differs"
        );
        assert_eq!(with("v=1;", "v=1; i=@other.test;").0, DkimResult::PermError);
        assert_eq!(with("v=1;", "v=1; l=x;").0, DkimResult::PermError);
        assert_eq!(with("c=relaxed/relaxed", "c=odd/relaxed").0, DkimResult::PermError);
        let unsigned_from = text.replacen("h=from", "h=x-a", 1).replacen(":from", ":x-b", 1);
        assert_eq!(one(unsigned_from.as_bytes(), &zone), (DkimResult::PermError, "From field not signed".into()));
        assert_eq!(with("d=example.test", "d=").0, DkimResult::PermError);
        assert_eq!(with("s=s1", "s=s2"), (DkimResult::PermError, "no key for signature".into()));
    }

    #[test]
    fn signatures_are_bounded_and_each_has_its_verdict() {
        let (message, zone, _) = signed(false);
        let text = String::from_utf8(message).unwrap();
        let broken = "DKIM-Signature: v=1; a=rsa-sha256; d=x.test\r\n";
        let two = format!("{broken}{text}");
        let all = results(two.as_bytes(), &zone);
        assert_eq!(all.iter().map(|r| r.0).collect::<Vec<_>>(), [DkimResult::PermError, DkimResult::Pass]);
        let many = format!("{}{text}", broken.repeat(MAX_SIGNATURES + 3));
        assert_eq!(results(many.as_bytes(), &zone).len(), MAX_SIGNATURES);
        assert!(results(MESSAGE, &zone).is_empty(), "no signature: no verdict");
    }

    #[test]
    fn a_key_record_read_is_kept_for_its_algorithm_only() {
        let (_, record) = crate::dkim::generate(false, 2048).unwrap();
        let rsa = parse_key(record.as_bytes(), Algorithm::RsaSha256).map(|k| k.key.bits());
        assert_eq!(rsa.ok(), Some(2048));
        assert_eq!(parse_key(record.as_bytes(), Algorithm::RsaSha256).map(|k| k.key.bits()).ok(), Some(2048));
        // The same p= as an Ed25519 key is no key, kept RSA key or not.
        let as_ed25519 = record.replace("k=rsa", "k=ed25519");
        let e = parse_key(as_ed25519.as_bytes(), Algorithm::Ed25519Sha256).err();
        assert_eq!(e, Some((DkimResult::PermError, "key record's p= is not an Ed25519 key".into())));
        // More records than are kept: each is read again, and still right.
        for _ in 0..READ_KEYS_KEPT + 2 {
            let (_, other) = crate::dkim::generate(true, 0).unwrap();
            assert!(parse_key(other.as_bytes(), Algorithm::Ed25519Sha256).is_ok());
        }
        assert_eq!(parse_key(record.as_bytes(), Algorithm::RsaSha256).map(|k| k.key.bits()).ok(), Some(2048));
    }

    #[test]
    fn tag_lists() {
        let tags = parse_tags(b" v = 1 ;\r\n\tb= ab\r\n cd ; x=;").unwrap();
        assert_eq!(tags, [("v", "1"), ("b", "ab\r\n cd"), ("x", "")]);
        assert!(parse_tags(b"v=1;;b=2").is_err());
        assert!(parse_tags(b"1v=1").is_err());
        assert!(parse_tags(b"v").is_err());
        assert!(parse_tags("v=\u{e9}".as_bytes()).is_err());
        assert_eq!(without_b(b" v=1; b=abc\r\n def; bh=xyz"), b" v=1; b=; bh=xyz");
        assert_eq!(without_b(b" v=1; bh=xyz; b = abc"), b" v=1; bh=xyz; b =");
    }
}
