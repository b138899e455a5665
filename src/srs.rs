//! The Sender Rewriting Scheme: a copy an alias forwards off this host leaves with a sender
//! of ours, so the receiver's SPF check (RFC 7208 §2.4 checks the MAIL FROM domain) passes
//! for us, and a bounce to that sender finds its way back to the original one.
//!
//! The addresses are in the shape every SRS implementation writes and reads:
//!
//! ```text
//! SRS0=HHHH=TT=orig-domain=orig-local@srs-domain        forwarded once, by us
//! SRS1=HHHH=first-host==HHHH=TT=orig-domain=orig-local@srs-domain
//!                                                        forwarded again, by us
//! ```
//!
//! `HHHH` is the first four characters of the base64 HMAC-SHA1, keyed by our secret, of the
//! fields after it (lower-cased, run together); `TT` the day of the rewrite, modulo 1024, in
//! two base32 characters. A bounce to an `SRS0` address is taken for 21 days after it was
//! made; one whose hash does not match (forged, altered, or made with another secret) is
//! refused, so the scheme can never be used to relay. An `SRS1` address sends the bounce
//! on to the `SRS0` address at the first forwarder, which checks its own hash and age.
//!
//! Pure but for `load_secret`, which reads (and the first time makes) the secret file.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;

use crate::smtp::address::Mailbox;

/// How long a bounce to an address we made is taken, in days.
pub const MAX_AGE_DAYS: u64 = 21;
const HASH_LEN: usize = 4;
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// The timestamp's cycle: two base32 characters.
const DAYS_CYCLE: u64 = 32 * 32;

/// Why an SRS address was not turned back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrsError {
    /// Not the shape of one (missing fields, a bad timestamp character).
    Malformed,
    /// The hash is not ours: forged, altered, or made with another secret.
    BadHash,
    /// Made more than `MAX_AGE_DAYS` ago (or in the future).
    Expired,
}

impl std::fmt::Display for SrsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SrsError::Malformed => "not a well-formed SRS address",
            SrsError::BadHash => "an SRS address this host did not make (its hash does not match)",
            SrsError::Expired => "an SRS address older than 21 days",
        })
    }
}

/// The rewriting of one host: its secret and the domain its addresses are in.
#[derive(Clone)]
pub struct Srs {
    secret: Vec<u8>,
    domain: String,
}

impl std::fmt::Debug for Srs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Srs").field("domain", &self.domain).finish_non_exhaustive()
    }
}

/// The part of `local` after an `SRS0`/`SRS1` tag (any case) and its separator (`=`, `+`
/// or `-`, as an administrator's recipient delimiter may turn the first one into).
fn after_tag<'a>(local: &'a str, tag: &str) -> Option<&'a str> {
    let head = local.get(..tag.len())?;
    let rest = &local[tag.len()..];
    (head.eq_ignore_ascii_case(tag) && rest.starts_with(['=', '+', '-'])).then(|| &rest[1..])
}

/// Whether the local part has the shape of an SRS address.
pub fn is_srs(local: &str) -> bool {
    after_tag(local, "SRS0").is_some() || after_tag(local, "SRS1").is_some()
}

/// The day `now` falls on, in two base32 characters.
fn timestamp(now: u64) -> String {
    let day = now / 86400;
    let c = |n: u64| char::from(BASE32[usize::try_from(n % 32).unwrap_or(0)]);
    [c(day / 32), c(day)].iter().collect()
}

/// Whether a timestamp is from the last `MAX_AGE_DAYS` days (the cycle wraps every 1024).
fn timestamp_fresh(tt: &str, now: u64) -> Result<bool, SrsError> {
    if tt.len() != 2 {
        return Err(SrsError::Malformed);
    }
    let mut made = 0;
    for b in tt.bytes() {
        let digit = BASE32.iter().position(|&d| d == b.to_ascii_uppercase()).ok_or(SrsError::Malformed)?;
        made = made * 32 + digit as u64;
    }
    let today = (now / 86400) % DAYS_CYCLE;
    let age = (today + DAYS_CYCLE - made) % DAYS_CYCLE;
    Ok(age <= MAX_AGE_DAYS)
}

impl Srs {
    pub fn new(secret: &[u8], domain: &str) -> Srs {
        Srs { secret: secret.to_vec(), domain: domain.to_ascii_lowercase() }
    }

    /// The domain our SRS addresses are in.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn hash(&self, fields: &[&str]) -> String {
        let mac = (|| {
            let key = PKey::hmac(&self.secret).ok()?;
            let mut signer = Signer::new(MessageDigest::sha1(), &key).ok()?;
            for f in fields {
                signer.update(f.to_ascii_lowercase().as_bytes()).ok()?;
            }
            signer.sign_to_vec().ok()
        })()
        .unwrap_or_default();
        openssl::base64::encode_block(&mac).chars().take(HASH_LEN).collect()
    }

    /// A hash given in an address is ours: compared without regard to case, since a server
    /// on the way may have changed it (RFC 5321 §2.4 asks it not to).
    fn hash_matches(&self, given: &str, fields: &[&str]) -> bool {
        given.len() == HASH_LEN && given.eq_ignore_ascii_case(&self.hash(fields))
    }

    /// The local part (in our domain) that stands for the sender `local@domain` on a copy
    /// forwarded at `now`. A sender that is already an SRS address keeps its first
    /// forwarder, and only our hash is added (`SRS1`).
    pub fn forward(&self, local: &str, domain: &str, now: u64) -> String {
        if let Some(rest) = after_tag(local, "SRS1") {
            let mut fields = rest.splitn(3, '=');
            if let (Some(_), Some(host), Some(user)) = (fields.next(), fields.next(), fields.next()) {
                return format!("SRS1={}={host}={user}", self.hash(&[host, user]));
            }
        }
        if after_tag(local, "SRS0").is_some() {
            // The separator stays with what is kept: `SRS1=HHHH=host==HHHH=...`.
            let kept = &local["SRS0".len()..];
            return format!("SRS1={}={domain}={kept}", self.hash(&[domain, kept]));
        }
        let tt = timestamp(now);
        format!("SRS0={}={tt}={domain}={local}", self.hash(&[&tt, domain, local]))
    }

    /// What `reverse` makes of a recipient in our SRS domain whose local part has the SRS
    /// shape; `None` for any other address, which is not ours to turn back.
    pub fn reverse_mailbox(&self, m: &Mailbox, now: u64) -> Option<Result<(String, String), SrsError>> {
        let local = m.local_part_text();
        let ours = is_srs(&local) && m.domain().is_some_and(|d| d.eq_ignore_case(&self.domain));
        ours.then(|| self.reverse(&local, now))
    }

    /// The address (local part, domain) an SRS local part of ours stands for, checked: its
    /// hash, and for `SRS0` its age. `SRS1` leads to the first forwarder's `SRS0` address.
    pub fn reverse(&self, local: &str, now: u64) -> Result<(String, String), SrsError> {
        if let Some(rest) = after_tag(local, "SRS1") {
            let mut fields = rest.splitn(3, '=');
            let (Some(hash), Some(host), Some(user)) = (fields.next(), fields.next(), fields.next()) else {
                return Err(SrsError::Malformed);
            };
            if host.is_empty() || user.is_empty() {
                return Err(SrsError::Malformed);
            }
            if !self.hash_matches(hash, &[host, user]) {
                return Err(SrsError::BadHash);
            }
            return Ok((format!("SRS0{user}"), host.to_string()));
        }
        let rest = after_tag(local, "SRS0").ok_or(SrsError::Malformed)?;
        let mut fields = rest.splitn(4, '=');
        let (Some(hash), Some(tt), Some(host), Some(user)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(SrsError::Malformed);
        };
        if host.is_empty() || user.is_empty() {
            return Err(SrsError::Malformed);
        }
        let fresh = timestamp_fresh(tt, now)?;
        if !self.hash_matches(hash, &[tt, host, user]) {
            return Err(SrsError::BadHash);
        }
        match fresh {
            true => Ok((user.to_string(), host.to_string())),
            false => Err(SrsError::Expired),
        }
    }
}

/// The rewriting the configuration asks for; `None` when `srs = off`, when there is no
/// domain for it, or when the secret cannot be had (said in the log: forwarded copies then
/// keep their sender, and bounces to SRS addresses are refused as unknown). `make`: the
/// secret is made when there is none (the server and delivery, which own the spool).
pub fn from_config(config: &crate::config::Config, make: bool) -> Option<Srs> {
    let domain = config.srs_domain().filter(|_| config.srs)?;
    let path = config.srs_secret_path();
    let secret = match make {
        true => load_secret(&path),
        false => read_secret(&path),
    };
    match secret {
        Ok(secret) => Some(Srs::new(&secret, domain)),
        Err(e) if !make => {
            log::debug!("srs_secret {}: {e}", path.display());
            None
        }
        Err(e) => {
            log::warn!("srs_secret {}: {e}; forwarded mail keeps its sender", path.display());
            None
        }
    }
}

/// The secret in `path`: its first line.
fn read_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)?;
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the secret file is empty"));
    }
    Ok(line.as_bytes().to_vec())
}

/// The secret in `path` (its first line): made, 256 random bits in hex, mode 0600, when
/// there is none yet. Two processes making it at once both end with the one that landed.
pub fn load_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    match read_secret(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    let mut random = [0u8; 32];
    openssl::rand::rand_bytes(&mut random).map_err(std::io::Error::other)?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    // Written whole under another name, then linked in: a reader never sees half of it.
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let draft = path.with_file_name(format!("{name}.new.{}", std::process::id()));
    let made = (|| {
        let _ = std::fs::remove_file(&draft); // a dead process's, that had our number
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&draft)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(format!("{hex}\n").as_bytes())?;
        f.sync_all()?;
        crate::fault::crash_point("srs-secret-drafted");
        std::fs::hard_link(&draft, path)
    })();
    let _ = std::fs::remove_file(&draft);
    match made {
        Ok(()) => {
            // Drafts a killed process left: the secret is in place, they are of no use.
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with(&format!("{name}.new.")) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            Ok(hex.into_bytes())
        }
        // Another process made it first (and may have swept this one's draft).
        Err(e) if matches!(e.kind(), std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotFound) => {
            read_secret(path)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86400;
    /// 2026-12-05.
    const NOW: u64 = 1_796_428_800;

    fn srs() -> Srs {
        Srs::new(b"the secret", "forward.test")
    }

    #[test]
    fn a_forwarded_sender_turns_back_into_itself() {
        let local = srs().forward("alice", "origin.test", NOW);
        assert!(local.starts_with("SRS0=") && local.ends_with("=origin.test=alice"), "{local}");
        let tt = &local[10..12];
        assert_eq!(tt, timestamp(NOW));
        assert_eq!(srs().reverse(&local, NOW), Ok(("alice".into(), "origin.test".into())));
        assert_eq!(srs().reverse(&local.to_lowercase(), NOW + 3 * DAY), Ok(("alice".into(), "origin.test".into())));
        assert_eq!(srs().reverse(&local, NOW + MAX_AGE_DAYS * DAY), Ok(("alice".into(), "origin.test".into())));
        assert_eq!(srs().reverse(&local, NOW + (MAX_AGE_DAYS + 1) * DAY), Err(SrsError::Expired));
        assert_eq!(srs().reverse(&local, NOW - DAY), Err(SrsError::Expired), "made tomorrow");
    }

    #[test]
    fn forged_and_altered_addresses_are_refused() {
        let local = srs().forward("alice", "origin.test", NOW);
        let other = Srs::new(b"another secret", "forward.test");
        assert_eq!(other.reverse(&local, NOW), Err(SrsError::BadHash));
        let altered = local.replace("alice", "mallory");
        assert_eq!(srs().reverse(&altered, NOW), Err(SrsError::BadHash));
        let redirected = local.replace("origin.test", "victim.test");
        assert_eq!(srs().reverse(&redirected, NOW), Err(SrsError::BadHash));
        for bad in ["SRS0=", "SRS0=abcd=AA=host", "SRS0=abcd=AA==user", "SRS1=abcd=host", "SRS0=abcd=A!=h=u", "srs2=x"]
        {
            assert_eq!(srs().reverse(bad, NOW), Err(SrsError::Malformed), "{bad}");
        }
        assert_eq!(srs().reverse("SRS0=abcd=AA=host=user", NOW), Err(SrsError::BadHash));
    }

    #[test]
    fn a_forwarded_srs_sender_keeps_its_first_forwarder() {
        let first = Srs::new(b"first", "first.test");
        let srs0 = first.forward("alice", "origin.test", NOW);
        let srs1 = srs().forward(&srs0, "first.test", NOW);
        assert!(srs1.starts_with("SRS1=") && srs1.ends_with(&format!("=first.test=={}", &srs0[5..])), "{srs1}");
        assert_eq!(srs().reverse(&srs1, NOW), Ok((srs0.clone(), "first.test".into())));
        assert_eq!(first.reverse(&srs0, NOW), Ok(("alice".into(), "origin.test".into())));
        // Forwarded a third time: still the first forwarder, with the third one's hash.
        let third = Srs::new(b"third", "third.test");
        let again = third.forward(&srs1, "forward.test", NOW);
        assert_eq!(&again[9..], &srs1[9..]);
        assert_eq!(third.reverse(&again, NOW), Ok((srs0, "first.test".into())));
        assert_eq!(srs().reverse(&again, NOW), Err(SrsError::BadHash));
    }

    #[test]
    fn the_timestamp_wraps_around_its_cycle() {
        let last = (DAYS_CYCLE - 1) * DAY;
        let tt = timestamp(last);
        assert_eq!(tt, "77");
        assert_eq!(timestamp_fresh(&tt, last + 5 * DAY), Ok(true));
        assert_eq!(timestamp(0), "AA");
        assert!(is_srs("srs0+abc") && is_srs("SRS1=x") && !is_srs("srs0") && !is_srs("SRS0x"));
    }

    #[test]
    fn the_secret_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("postern-srs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("srs-secret");
        let made = load_secret(&path).unwrap();
        assert_eq!(made.len(), 64);
        assert_eq!(load_secret(&path).unwrap(), made);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no draft is left");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
