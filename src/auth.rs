//! Who may log in, and as whom they may send: the `auth_users` file of `user:hash` lines (or
//! a Dovecot that checks the passwords, `crate::dovecot`),
//! the `auth_senders` table, and the lockout of addresses that keep failing (RFC 4954 §4,
//! §14: a server should slow down and limit repeated failures).
//!
//! Hashes are the crypt(3) strings `/etc/shadow`, `mkpasswd` and `doveadm pw` write:
//! `$6$` (SHA-512-crypt), `$5$` (SHA-256-crypt), `$2b$`/`$2y$`/`$2a$` (bcrypt) and `$y$`
//! (yescrypt), each verified by its crate, which compares in constant time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{Config, UserSource};
use crate::policy::{Authenticator, Verified};
use crate::table::TableError;

/// The schemes `--hash-password` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Sha512Crypt,
    Bcrypt,
    Yescrypt,
}

impl Scheme {
    pub fn parse(name: &str) -> Option<Scheme> {
        match name.to_ascii_lowercase().as_str() {
            "sha512" | "sha-512" | "sha512-crypt" => Some(Scheme::Sha512Crypt),
            "bcrypt" | "blf-crypt" => Some(Scheme::Bcrypt),
            "yescrypt" => Some(Scheme::Yescrypt),
            _ => None,
        }
    }
}

/// A crypt(3) string for `password`, with a fresh random salt.
pub fn hash_password(password: &[u8], scheme: Scheme) -> Result<String, String> {
    use password_hash::PasswordHasher;
    let mut salt = [0u8; 16];
    openssl::rand::rand_bytes(&mut salt).map_err(|e| format!("no random salt: {e}"))?;
    match scheme {
        Scheme::Sha512Crypt => sha_crypt::ShaCrypt::SHA512
            .hash_password_with_salt(password, &salt[..12])
            .map(|h| h.to_string())
            .map_err(|e| e.to_string()),
        Scheme::Bcrypt => bcrypt::hash_with_salt(password, 12, salt)
            .map(|h| h.format_for_version(bcrypt::Version::TwoB))
            .map_err(|e| e.to_string()),
        Scheme::Yescrypt => yescrypt::Yescrypt::default()
            .hash_password_with_salt(password, &salt)
            .map(|h| h.to_string())
            .map_err(|e| e.to_string()),
    }
}

/// Whether `password` matches the crypt(3) string; an unknown or broken hash never does.
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    use password_hash::PasswordVerifier;
    if hash.starts_with("$6$") || hash.starts_with("$5$") {
        sha_crypt::ShaCrypt::default().verify_password(password, hash).is_ok()
    } else if hash.starts_with("$2b$") || hash.starts_with("$2y$") || hash.starts_with("$2a$") {
        bcrypt::verify(password, hash).unwrap_or(false)
    } else if hash.starts_with("$y$") {
        yescrypt::Yescrypt::default().verify_password(password, hash).is_ok()
    } else {
        false
    }
}

/// Whether the text is a hash this file can hold.
fn known_scheme(hash: &str) -> bool {
    ["$6$", "$5$", "$2b$", "$2y$", "$2a$", "$y$"].iter().any(|p| hash.starts_with(p))
}

/// Checked for a user who does not exist when no user is listed at all (the password is
/// "unknown user"; nobody can log in with it, there is no user).
const DUMMY_HASH: &str =
    "$6$LjUQBjAnFJsL7YlW$8UjCltvgLny94mcBNhxrJlz4B0Fz.eQdHWlIC7XMeni/qVLevKvHHuXu2HAnON5ld1MPr1HgkQ2VaP2kH9ucg.";

/// The `auth_users` file: `user:hash` per line, `#` comments. Further `:` fields (the
/// passwd-file shape) are ignored, and a `{SCHEME}` prefix (`{SHA512-CRYPT}$6$...`) too.
#[derive(Debug, Default, Clone)]
pub struct Users {
    hashes: HashMap<String, String>,
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, TableError> {
        let file = path.display().to_string();
        let error = |line, message: String| TableError { file: file.clone(), line, message };
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| error(0, e.to_string()))?;
        if meta.permissions().mode() & 0o007 != 0 {
            return Err(error(0, "readable by others; make it mode 0600 or 0640".into()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| error(0, e.to_string()))?;
        Users::parse(&text).map_err(|(line, message)| error(line, message))
    }

    pub fn parse(text: &str) -> Result<Users, (usize, String)> {
        let mut hashes = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split(':');
            let (user, hash) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
            let hash = match hash.strip_prefix('{').and_then(|h| h.split_once('}')) {
                Some((_, rest)) => rest,
                None => hash,
            };
            if user.is_empty() || user.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err((i + 1, "expected user:hash".into()));
            }
            if !known_scheme(hash) {
                return Err((
                    i + 1,
                    format!("{user}: not a $6$, $5$, $2b$ or $y$ hash (make one with --hash-password)"),
                ));
            }
            if hashes.insert(user.to_string(), hash.to_string()).is_some() {
                return Err((i + 1, format!("{user} is listed twice")));
            }
        }
        Ok(Users { hashes })
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether the password is the user's. For an unknown user the password is checked
    /// against a listed user's hash and refused whatever the result, so the answer takes as
    /// long as for a user who exists (with the same scheme and cost).
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.hashes.get(user) {
            Some(hash) => verify_password(hash, password),
            None => {
                let stand_in = self.hashes.values().next().map_or(DUMMY_HASH, String::as_str);
                verify_password(stand_in, password);
                false
            }
        }
    }
}

/// Who may use which sender addresses: the `auth_senders` table (`user: address, @domain`),
/// and for a user it does not list, their login at each local domain (or the login itself
/// when it is an address).
#[derive(Debug, Default, Clone)]
pub struct Senders {
    listed: HashMap<String, Vec<String>>,
    local_domains: Vec<String>,
    delimiter: String,
}

impl Senders {
    pub fn load(config: &Config) -> Result<Senders, TableError> {
        let mut listed = HashMap::new();
        if let Some(path) = &config.auth_senders {
            for entry in crate::table::load(path)? {
                listed.insert(entry.name, entry.values.iter().map(|v| v.to_lowercase()).collect());
            }
        }
        Ok(Senders {
            listed,
            local_domains: config.local_domains.clone(),
            delimiter: config.recipient_delimiter.clone(),
        })
    }

    /// Whether `user` may send as `address` (an addr-spec, no brackets). An extension
    /// (`alice+list@`) belongs to whoever owns the address without it.
    pub fn may_send_as(&self, user: &str, address: &str) -> bool {
        let address = address.to_lowercase();
        let Some((local, domain)) = address.rsplit_once('@') else { return false };
        let base = match local.find(|c| self.delimiter.contains(c)) {
            Some(i) if !self.delimiter.is_empty() && i > 0 => &local[..i],
            _ => local,
        };
        let plain = format!("{base}@{domain}");
        let owns = |allowed: &str| match allowed.strip_prefix('@') {
            Some(d) => d == domain,
            None => allowed == address || allowed == plain,
        };
        match self.listed.get(&user.to_lowercase()) {
            Some(allowed) => allowed.iter().any(|a| owns(a)),
            None if user.contains('@') => owns(&user.to_lowercase()),
            None => self.local_domains.iter().any(|d| owns(&format!("{}@{d}", user.to_lowercase()))),
        }
    }
}

/// Failed logins per client address; past the limit within the window, the address is
/// locked out until the window has passed since its last failure.
pub struct Lockout {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    limit: u32,
    window: Duration,
}

/// Addresses remembered at most; the oldest are forgotten first past it, so a flood of
/// addresses cannot grow memory without bound.
const MAX_TRACKED: usize = 10_000;

impl Lockout {
    pub fn new(limit: u32, window: Duration) -> Lockout {
        Lockout { failures: Mutex::new(HashMap::new()), limit, window }
    }

    pub fn locked_out(&self, ip: IpAddr) -> bool {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip).is_some_and(|&(n, last)| n >= self.limit && last.elapsed() < self.window)
    }

    pub fn failed(&self, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (_, last)| last.elapsed() < self.window);
            if map.len() >= MAX_TRACKED
                && let Some(oldest) = map.iter().min_by_key(|(_, (_, last))| *last).map(|(ip, _)| *ip)
            {
                map.remove(&oldest);
            }
        }
        let entry = map.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            entry.0 = 0; // the old failures have expired
        }
        *entry = (entry.0.saturating_add(1), Instant::now());
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&ip);
    }
}

/// Who may log in: the `auth_users` file's users, or those a Dovecot knows
/// (`auth_users = dovecot:/run/dovecot/auth-client`).
#[derive(Debug, Clone)]
pub enum Logins {
    Table(Users),
    Dovecot { socket: PathBuf, timeout: Duration },
}

impl Logins {
    /// The logins `auth_users` names.
    pub fn load(source: &UserSource, timeout: Duration) -> Result<Logins, TableError> {
        match source {
            UserSource::File(path) => Users::load(path).map(Logins::Table),
            UserSource::Dovecot(socket) => Ok(Logins::Dovecot { socket: socket.clone(), timeout }),
        }
    }

    /// Whether the password is the user's. Dovecot's answer is logged when it cannot give one.
    pub fn verify(&self, client: Option<IpAddr>, user: &str, password: &[u8]) -> Verified {
        match self {
            Logins::Table(users) if users.verify(user, password) => Verified::Yes,
            Logins::Table(_) => Verified::No,
            Logins::Dovecot { socket, timeout } => {
                match crate::dovecot::verify(socket, user, password, client, *timeout) {
                    crate::dovecot::Answer::Yes(_) => Verified::Yes,
                    crate::dovecot::Answer::No => Verified::No,
                    crate::dovecot::Answer::Unavailable(why) => {
                        log::warn!("auth_users: Dovecot could not check {user}'s password: {why}");
                        Verified::Unavailable
                    }
                }
            }
        }
    }

    /// Who they are, for the log line at start.
    pub fn describe(&self) -> String {
        match self {
            Logins::Table(users) => format!("{} user(s) may log in on the submission ports", users.len()),
            Logins::Dovecot { socket, .. } => {
                format!("logins on the submission ports checked by Dovecot at {}", socket.display())
            }
        }
    }
}

/// The answers AUTH needs in one session: the users and senders of the configuration in
/// force, and the server's lockout, which outlives reloads.
pub struct Auth<'a> {
    pub users: &'a Logins,
    pub senders: &'a Senders,
    pub lockout: &'a Lockout,
}

impl Authenticator for Auth<'_> {
    fn locked_out(&self, client: Option<IpAddr>) -> bool {
        client.is_some_and(|ip| self.lockout.locked_out(ip))
    }

    fn verify(&self, client: Option<IpAddr>, user: &str, password: &[u8]) -> Verified {
        let verified = self.users.verify(client, user, password);
        match (verified, client) {
            (Verified::Yes, Some(ip)) => self.lockout.succeeded(ip),
            (Verified::No, Some(ip)) => self.lockout.failed(ip),
            _ => {}
        }
        verified
    }

    fn may_send_as(&self, user: &str, address: &str) -> bool {
        self.senders.may_send_as(user, address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_verifies_what_it_hashed() {
        for scheme in [Scheme::Sha512Crypt, Scheme::Bcrypt, Scheme::Yescrypt] {
            let hash = hash_password(b"correct horse", scheme).unwrap();
            assert!(known_scheme(&hash), "{hash}");
            assert!(verify_password(&hash, b"correct horse"), "{scheme:?}");
            assert!(!verify_password(&hash, b"correct horsf"), "{scheme:?}");
            assert_ne!(hash, hash_password(b"correct horse", scheme).unwrap(), "a fresh salt each time");
        }
    }

    #[test]
    fn hashes_other_programs_wrote() {
        // Written by the system's crypt(3) (libxcrypt), as /etc/shadow and mkpasswd have them.
        let libxcrypt = [
            "$6$saltsaltsalt$8Rl8SaMtA6lI/8fUYIU6MgNuNmR.yspkchAY1VV2x7qmA5rvOoKx72usRd2qb6YfWv/SPjcHURfWLAS4ukU2L/",
            "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$U4SOHmDd8SvW5vCUKSMR6N835VPwFAtgYNhQ9mFFeL5",
            "$2b$04$hvxXXN.xRcSKxv98.k6g0eTVVMmKS61aunoBfIW9tkjUcGHJaUslK",
        ];
        for hash in libxcrypt {
            assert!(verify_password(hash, b"pw"), "{hash}");
            assert!(!verify_password(hash, b"pW"), "{hash}");
        }
        assert!(!verify_password("$1$abc$def", b"pw") && !verify_password("", b"") && !verify_password("$6$", b""));
    }

    #[test]
    fn the_users_file() {
        let hash = hash_password(b"pw", Scheme::Sha512Crypt).unwrap();
        let text = format!("# users\nalice:{hash}\nbob@example.test:{{SHA512-CRYPT}}{hash}:1000:1000::/home/bob::\n");
        let users = Users::parse(&text).unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.verify("alice", b"pw") && users.verify("bob@example.test", b"pw"));
        assert!(!users.verify("alice", b"px") && !users.verify("carol", b"pw") && !users.verify("Alice", b"pw"));
        assert!(!Users::default().verify("carol", b"unknown user"), "nobody exists in an empty file");
        assert_eq!(Users::parse("alice:secret\n").unwrap_err().0, 1);
        assert_eq!(Users::parse(&format!("alice:{hash}\nalice:{hash}\n")).unwrap_err().0, 2);
        assert!(Users::parse("al ice:$6$x$y\n").is_err() && Users::parse("nocolon\n").is_err());
    }

    #[test]
    fn the_dummy_hash_is_a_real_one() {
        assert!(verify_password(DUMMY_HASH, b"unknown user"));
    }

    fn senders(table: &str) -> Senders {
        let listed = crate::table::parse(table)
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.values.iter().map(|v| v.to_lowercase()).collect()))
            .collect();
        Senders {
            listed,
            local_domains: vec!["example.test".into(), "mail.example.test".into()],
            delimiter: "+".into(),
        }
    }

    #[test]
    fn who_may_send_as_whom() {
        let s = senders("carol: carol@example.test, sales@example.test, @shop.test\n");
        assert!(s.may_send_as("alice", "alice@example.test"));
        assert!(s.may_send_as("alice", "Alice@Mail.Example.Test"));
        assert!(s.may_send_as("alice", "alice+lists@example.test"));
        assert!(!s.may_send_as("alice", "bob@example.test"));
        assert!(!s.may_send_as("alice", "alice@elsewhere.test"));
        assert!(!s.may_send_as("alice", "alice"));
        assert!(s.may_send_as("dave@other.test", "dave@other.test"));
        assert!(!s.may_send_as("dave@other.test", "dave@example.test"));
        assert!(s.may_send_as("carol", "sales@example.test") && s.may_send_as("carol", "anyone@shop.test"));
        assert!(!s.may_send_as("carol", "carol@mail.example.test"), "a listed user has only the list");
        assert!(!s.may_send_as("alice", "+x@example.test"));
    }

    #[test]
    fn lockout_after_the_limit_and_until_the_window_passes() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let lock = Lockout::new(3, Duration::from_millis(300));
        for _ in 0..2 {
            lock.failed(ip);
        }
        assert!(!lock.locked_out(ip));
        lock.failed(ip);
        assert!(lock.locked_out(ip) && !lock.locked_out(other));
        std::thread::sleep(Duration::from_millis(350));
        assert!(!lock.locked_out(ip));
        lock.failed(ip);
        assert!(!lock.locked_out(ip), "expired failures no longer count");
        lock.succeeded(ip);
        for _ in 0..MAX_TRACKED + 5 {
            lock.failed(other);
        }
        assert!(lock.failures.lock().unwrap().len() <= MAX_TRACKED);
    }
}
