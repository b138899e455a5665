//! DKIM signing (RFC 6376) with RSA-SHA256 and Ed25519-SHA256 (RFC 8463): the `dkim_keys`
//! table, relaxed/relaxed canonicalization, the `DKIM-Signature:` field, and new keys with
//! the DNS record to publish. Verification is in `verify`; both use `canon`. The signature itself is the `openssl` crate's, already linked
//! for TLS; the canonicalization is ours, checked against independent verifiers in the tests.
//!
//! Delivery signs, not acceptance (doc/postern.conf.5 says why): a copy of our own users'
//! mail (`submitted` in its envelope) leaving for another host, whose `From:` domain has a key.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Private};
use openssl::sign::Signer as OpensslSigner;

use crate::message::Headers;
use crate::table::TableError;

pub mod canon;
pub mod verify;

pub use canon::relaxed_header;
use canon::{Body, Canon};

/// The fields signed when present (RFC 6376 §5.4.1), each instance of each; `From` once more
/// than it appears, so that no `From:` can be added after signing (§8.15).
const SIGNED: [&str; 14] = [
    "from",
    "reply-to",
    "subject",
    "date",
    "to",
    "cc",
    "message-id",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "list-unsubscribe",
];

/// RFC 8301 §3.2: RSA keys shorter than this must not be used to sign.
pub const MIN_RSA_BITS: u32 = 2048;

#[derive(Clone)]
pub struct Key {
    pub domain: String,
    pub selector: String,
    pub path: PathBuf,
    pkey: PKey<Private>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({} {} {})", self.domain, self.selector, self.path.display())
    }
}

impl Key {
    /// `rsa-sha256` or `ed25519-sha256`, as the key is.
    pub fn algorithm(&self) -> &'static str {
        if self.pkey.id() == Id::ED25519 { "ed25519-sha256" } else { "rsa-sha256" }
    }

    /// Reads a PEM private key: RSA of at least 2048 bits, or Ed25519.
    pub fn load(domain: &str, selector: &str, path: &Path) -> Result<Key, String> {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Key::from_pem(domain, selector, path, &pem).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A key from PEM text; `path` is only where it came from.
    pub fn from_pem(domain: &str, selector: &str, path: &Path, pem: &[u8]) -> Result<Key, String> {
        let pkey = PKey::private_key_from_pem(pem).map_err(|_| "not a PEM private key".to_string())?;
        check_kind(&pkey)?;
        Ok(Key { domain: domain.to_lowercase(), selector: selector.to_string(), path: path.to_path_buf(), pkey })
    }

    /// The TXT record (RFC 6376 §3.6.1, RFC 8463 §4.2) to publish at `selector._domainkey.domain`.
    pub fn dns_record(&self) -> Result<String, String> {
        dns_record(&self.pkey)
    }
}

fn check_kind(pkey: &PKey<Private>) -> Result<(), String> {
    match pkey.id() {
        Id::RSA if pkey.bits() >= MIN_RSA_BITS => Ok(()),
        Id::RSA => Err(format!("an RSA key of {} bits; DKIM needs {MIN_RSA_BITS} or more", pkey.bits())),
        Id::ED25519 => Ok(()),
        _ => Err("neither RSA nor Ed25519".into()),
    }
}

fn dns_record(pkey: &PKey<Private>) -> Result<String, String> {
    let e = |e: openssl::error::ErrorStack| e.to_string();
    let (kind, public) = match pkey.id() {
        Id::ED25519 => ("ed25519", pkey.raw_public_key().map_err(e)?),
        _ => ("rsa", pkey.public_key_to_der().map_err(e)?),
    };
    Ok(format!("v=DKIM1; k={kind}; p={}", openssl::base64::encode_block(&public)))
}

/// The `dkim_keys` file: `domain selector /path/key.pem` per line, `#` comments; one key per
/// domain. A key that cannot be used holds its own domain's outgoing mail (it waits, with the
/// reason), never anyone else's: a copy of ours never leaves unsigned because a file broke.
#[derive(Debug, Default, Clone)]
pub struct Keys {
    by_domain: HashMap<String, Result<Key, String>>,
    /// The file itself could not be read: every copy of ours waits, whatever its domain.
    unreadable: Option<String>,
    problems: Vec<TableError>,
    /// Every key file the lines name, for `--check`.
    paths: Vec<PathBuf>,
}

/// What signing a copy came to.
pub enum Signing<'a> {
    /// The field, made with this key.
    Signed(String, &'a Key),
    /// Its `From:` domain has no key: the copy goes as it is.
    NoKey,
    /// Its domain's key (or the whole file) cannot be used: the copy waits.
    KeyUnusable(String),
}

impl Keys {
    /// Reads the file; each problem is kept (for `--check` and the log) and costs only the
    /// domain on its line.
    pub fn load(path: &Path) -> Keys {
        let file = path.display().to_string();
        let mut keys = Keys::default();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let problem = TableError { file, line: 0, message: e.to_string() };
                keys.unreadable = Some(format!("dkim_keys {problem}"));
                keys.problems.push(problem);
                return keys;
            }
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (domain, key) = parse_key_line(line, &mut keys.paths);
            let Some(domain) = domain else {
                let message = key.err().unwrap_or_default();
                keys.problems.push(TableError { file: file.clone(), line: i + 1, message });
                continue;
            };
            if keys.by_domain.contains_key(&domain) {
                let message = format!("{domain} has a key already");
                keys.problems.push(TableError { file: file.clone(), line: i + 1, message });
                continue;
            }
            let key = key.map_err(|message| TableError { file: file.clone(), line: i + 1, message });
            if let Err(problem) = &key {
                keys.problems.push(problem.clone());
            }
            keys.by_domain.insert(domain, key.map_err(|p| format!("DKIM key for this domain unusable: {p}")));
        }
        keys
    }

    /// What is wrong in the file, line by line.
    pub fn problems(&self) -> &[TableError] {
        &self.problems
    }

    /// The key files the lines name.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Keys that can be used.
    pub fn len(&self) -> usize {
        self.by_domain.values().filter(|k| k.is_ok()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn for_domain(&self, domain: &str) -> Option<&Key> {
        self.by_domain.get(&domain.to_lowercase()).and_then(|k| k.as_ref().ok())
    }

    /// Why mail from `domain` cannot be signed now, when it has a key that cannot be used.
    fn unusable(&self, domain: Option<&str>) -> Option<String> {
        if let Some(why) = &self.unreadable {
            return Some(why.clone());
        }
        match self.by_domain.get(&domain?.to_lowercase()) {
            Some(Err(why)) => Some(why.clone()),
            _ => None,
        }
    }
}

/// One line: the domain it is for (when that much parses), and its key or what is wrong; the
/// key file it names goes into `paths`.
fn parse_key_line(line: &str, paths: &mut Vec<PathBuf>) -> (Option<String>, Result<Key, String>) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [domain, selector, key] = words[..] else {
        return (None, Err("expected `domain selector /path/to/key.pem`".into()));
    };
    paths.push(PathBuf::from(key));
    if crate::smtp::address::Domain::parse(domain).is_err() {
        return (None, Err(format!("`{domain}` is not a domain")));
    }
    let folded = Some(domain.to_lowercase());
    if !selector.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')) {
        return (folded, Err(format!("`{selector}` is not a selector")));
    }
    (folded, Key::load(domain, selector, Path::new(key)))
}

/// Reads a message's header section whole (up to 1 MB, far past any real one), feeding
/// whatever of the body came with it to `body`. The section ends where `Headers::parse`
/// ends it, so the fields signed are the fields every other part of postern reads.
/// The largest header section signed: what the server checked (`MAX_HEADER_SECTION`) and the
/// trace and added fields it put on top. A larger one is not signed: its `From:` may lie past
/// what the server checked.
const MAX_SIGNED_HEADER: usize = crate::message::MAX_HEADER_SECTION + 16 * 1024;

fn read_head(message: &mut impl Read, buf: &mut [u8], body: &mut Body) -> Result<Vec<u8>, String> {
    let mut head = Vec::new();
    loop {
        let n = message.read(buf).map_err(|e| format!("reading the message: {e}"))?;
        let before = head.len();
        head.extend_from_slice(&buf[..n]);
        let end = crate::message::header_end(&head, before.saturating_sub(3));
        if end.is_none_or(|at| at > MAX_SIGNED_HEADER) && head.len() > MAX_SIGNED_HEADER {
            return Err(format!("a header section larger than {MAX_SIGNED_HEADER} octets is not signed"));
        }
        if n == 0 || end.is_some() {
            let (_, at) = Headers::parse(&head);
            body.feed(&head[at..])?;
            head.truncate(at);
            return Ok(head);
        }
    }
}

/// The `DKIM-Signature:` field, CRLF-ended and folded, for `message` (header and body, CRLF
/// lines), signed with `key` at time `now`.
pub fn sign(key: &Key, mut message: impl Read, now: u64) -> Result<String, String> {
    let (mut buf, mut body) = (vec![0u8; 64 * 1024], Body::new(Canon::Relaxed, None));
    let head = read_head(&mut message, &mut buf, &mut body)?;
    sign_rest(key, &head, body, message, &mut buf, now)
}

impl Keys {
    /// The field for `message` with the key of its `From:` domain, and that key; `NoKey`, read
    /// no further than the header, when the domain has none.
    pub fn sign(&self, mut message: impl Read, now: u64) -> Result<Signing<'_>, String> {
        let (mut buf, mut body) = (vec![0u8; 64 * 1024], Body::new(Canon::Relaxed, None));
        let head = read_head(&mut message, &mut buf, &mut body)?;
        let domain = from_domain(&head);
        if let Some(why) = self.unusable(domain.as_deref()) {
            return Ok(Signing::KeyUnusable(why));
        }
        let Some(key) = domain.and_then(|d| self.for_domain(&d)) else { return Ok(Signing::NoKey) };
        Ok(Signing::Signed(sign_rest(key, &head, body, message, &mut buf, now)?, key))
    }
}

/// The signature once the header is read: the rest of the body streamed into its hash.
fn sign_rest(
    key: &Key,
    head: &[u8],
    mut body: Body,
    mut message: impl Read,
    buf: &mut [u8],
    now: u64,
) -> Result<String, String> {
    loop {
        let n = message.read(buf).map_err(|e| format!("reading the message: {e}"))?;
        if n == 0 {
            break;
        }
        body.feed(&buf[..n])?;
    }
    let bh = openssl::base64::encode_block(&body.finish()?.0);
    let (headers, _) = Headers::parse(head);
    // §5.4.2: several instances of a name are signed from the bottom up.
    let mut names = Vec::new();
    let mut data = Vec::new();
    for name in SIGNED {
        let instances: Vec<_> = headers.fields.iter().filter(|f| f.name.eq_ignore_ascii_case(name)).collect();
        for field in instances.iter().rev() {
            names.push(name);
            canon::relaxed_header_into(field.name, field.raw, &mut data);
        }
        if name == "from" {
            names.push("from"); // over-signed: the null instance (§5.4.2)
        }
    }
    // Each tag is atoms that folding may separate: h= may fold before each colon (§3.5).
    let mut h_atoms = vec![format!("h={}", names.first().unwrap_or(&"from"))];
    h_atoms.extend(names.iter().skip(1).map(|n| format!(":{n}")));
    let tags: Vec<Vec<String>> = vec![
        vec!["v=1".to_string()],
        vec![format!("a={}", key.algorithm())],
        vec!["c=relaxed/relaxed".into()],
        vec![format!("d={}", key.domain)],
        vec![format!("s={}", key.selector)],
        vec![format!("t={now}")],
        h_atoms,
        vec![format!("bh={bh}")],
        vec!["b=".into()],
    ];
    let mut field = String::from("DKIM-Signature:");
    let mut width = field.len();
    for (i, tag) in tags.iter().enumerate() {
        let last = tag.len() - 1;
        for (j, atom) in tag.iter().enumerate() {
            let text = if j == last && i + 1 < tags.len() { format!("{atom};") } else { atom.clone() };
            let gap = usize::from(j == 0);
            if width + gap + text.len() > 78 {
                field += "\r\n\t";
                width = 1;
            } else if j == 0 {
                field.push(' ');
                width += 1;
            }
            field += &text;
            width += text.len();
        }
    }
    let value = field.split_once(':').map_or("", |(_, v)| v);
    let mut signed = data;
    let mut own = relaxed_header("DKIM-Signature", value.as_bytes());
    own.truncate(own.len() - 2); // §3.7: without its CRLF
    signed.extend_from_slice(&own);
    let signature = signature(&key.pkey, &signed)?;
    let b = openssl::base64::encode_block(&signature);
    // The signature folded in lines of 72, which verifiers unfold (§3.5: FWS in b= is ignored).
    let mut out = field;
    let mut rest = b.as_str();
    let first = 78usize.saturating_sub(out.rsplit("\r\n\t").next().map_or(0, str::len) + 1).max(8);
    let mut take = first.min(rest.len());
    while !rest.is_empty() {
        out += &rest[..take];
        rest = &rest[take..];
        if !rest.is_empty() {
            out += "\r\n\t";
        }
        take = 70.min(rest.len());
    }
    out += "\r\n";
    Ok(out)
}

fn signature(pkey: &PKey<Private>, data: &[u8]) -> Result<Vec<u8>, String> {
    let e = |e: openssl::error::ErrorStack| e.to_string();
    if pkey.id() == Id::ED25519 {
        // RFC 8463 §3: PureEdDSA over the SHA-256 hash of the data.
        let digest = openssl::sha::sha256(data);
        let mut signer = OpensslSigner::new_without_digest(pkey).map_err(e)?;
        return signer.sign_oneshot_to_vec(&digest).map_err(e);
    }
    let mut signer = OpensslSigner::new(MessageDigest::sha256(), pkey).map_err(e)?;
    signer.update(data).map_err(e)?;
    signer.sign_to_vec().map_err(e)
}

/// A new private key (RSA of `bits`, or Ed25519) in PEM, and its DNS record.
pub fn generate(ed25519: bool, bits: u32) -> Result<(Vec<u8>, String), String> {
    let e = |e: openssl::error::ErrorStack| e.to_string();
    let pkey = if ed25519 {
        PKey::generate_ed25519().map_err(e)?
    } else {
        if bits < MIN_RSA_BITS {
            return Err(format!("RSA keys for DKIM have {MIN_RSA_BITS} bits or more"));
        }
        PKey::from_rsa(openssl::rsa::Rsa::generate(bits).map_err(e)?).map_err(e)?
    };
    let pem = pkey.private_key_to_pem_pkcs8().map_err(e)?;
    Ok((pem, dns_record(&pkey)?))
}

/// The record as a zone file line, in strings of at most 255 octets (RFC 1035 §3.3.14).
pub fn zone_line(domain: &str, selector: &str, record: &str) -> String {
    let strings: Vec<String> =
        record.as_bytes().chunks(255).map(|c| format!("\"{}\"", String::from_utf8_lossy(c))).collect();
    format!("{selector}._domainkey.{domain}. IN TXT ( {} )", strings.join(" "))
}

/// The address of a `From:` field's first mailbox, for finding its domain's key.
pub fn from_domain(message_head: &[u8]) -> Option<String> {
    let (headers, _) = Headers::parse(message_head);
    crate::message::domain_of(headers.addresses("from").first()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_their_folding() {
        let head = b"From: a@b.test\r\nSubject: one\r\n two\r\nX-Empty:\r\n\r\n";
        let (headers, _) = Headers::parse(head);
        let names: Vec<&str> = headers.fields.iter().map(|f| f.name).collect();
        assert_eq!(names, ["From", "Subject", "X-Empty"]);
        assert_eq!(headers.fields[1].raw, b" one\r\n two");
        assert_eq!(headers.fields[2].raw, b"");
    }

    #[test]
    fn a_domain_without_a_key_is_not_signed_and_one_with_is() {
        let dir = std::env::temp_dir().join(format!("postern-dkim-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (pem, _) = generate(true, 0).unwrap();
        std::fs::write(dir.join("k.pem"), &pem).unwrap();
        let file = dir.join("keys");
        let lines = format!(
            "example.test s1 {0}/k.pem\nbroken.test s1 {0}/missing.pem\nbad line\nexample.test s2 {0}/k.pem\n",
            dir.display()
        );
        std::fs::write(&file, lines).unwrap();
        let keys = Keys::load(&file);
        let lines: Vec<usize> = keys.problems().iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 3, 4], "{:?}", keys.problems());
        assert_eq!(keys.len(), 1);
        let sign = |from: &str| keys.sign(format!("From: a@{from}\r\n\r\nx\r\n").as_bytes(), 0).unwrap();
        match sign("example.test") {
            Signing::Signed(field, key) => assert!(field.starts_with("DKIM-Signature: ") && key.selector == "s1"),
            _ => panic!("not signed"),
        }
        assert!(matches!(sign("other.test"), Signing::NoKey));
        match sign("broken.test") {
            Signing::KeyUnusable(why) => assert!(why.contains("missing.pem: No such file"), "{why}"),
            _ => panic!("a domain whose key is unusable must wait"),
        }
        let none = Keys::load(&dir.join("no-such-file"));
        assert!(matches!(none.sign(&b"From: a@other.test\r\n\r\nx\r\n"[..], 0).unwrap(), Signing::KeyUnusable(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn signature_fields_are_well_formed_for_both_key_types() {
        for ed25519 in [false, true] {
            let (pem, record) = generate(ed25519, 2048).unwrap();
            let pkey = PKey::private_key_from_pem(&pem).unwrap();
            let key = Key { domain: "example.test".into(), selector: "s1".into(), path: PathBuf::new(), pkey };
            let message = b"From: Alice <alice@example.test>\r\nTo: bob@remote.test\r\nSubject: hi\r\n\r\nbody\r\n";
            let field = sign(&key, &message[..], 1_800_000_000).unwrap();
            assert!(field.starts_with("DKIM-Signature: v=1; a="), "{field}");
            assert!(field.contains("h=from:from:subject:to;") || field.contains("h=from:from:subject:to"), "{field}");
            assert!(field.lines().all(|l| l.len() <= 78), "{field}");
            assert!(record.starts_with(if ed25519 { "v=DKIM1; k=ed25519; p=" } else { "v=DKIM1; k=rsa; p=" }));
            assert_eq!(from_domain(message), Some("example.test".into()));
        }
    }

    #[test]
    fn short_rsa_keys_are_refused() {
        let pkey = PKey::from_rsa(openssl::rsa::Rsa::generate(1024).unwrap()).unwrap();
        assert!(check_kind(&pkey).unwrap_err().contains("1024 bits"));
        assert!(generate(false, 1024).is_err());
        let zone = zone_line("example.test", "s1", &"x".repeat(300));
        assert!(zone.starts_with("s1._domainkey.example.test. IN TXT ( \"xxx") && zone.contains("\" \"x"), "{zone}");
    }
}
