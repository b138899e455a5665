//! postern.conf: `key = value` lines in, a checked `Config` out; every error names file, line and key.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The configuration used when no file is found: runs from a checkout, without root.
pub const EMBEDDED_DEFAULT: &str = "\
# postern's built-in configuration: a checkout, no root, nothing outside ./spool.
listen = 127.0.0.1:2525
spool = ./spool
local_domains = localhost
trusted_networks = 127.0.0.0/8, ::1
mailbox_template = ./spool/mailboxes/%u/
";

/// The `source` of the embedded default.
const EMBEDDED_SOURCE: &str = "embedded default";

/// Where the configuration came from: `-c FILE`, `$POSTERN_CONF`, /etc, or the embedded default.
pub const SYSTEM_CONFIG: &str = "/etc/postern/postern.conf";

/// An address block such as `127.0.0.0/8` or `::1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { network: addr, prefix })
    }

    /// IPv4-mapped IPv6 peers (from a dual-stack socket) match IPv4 blocks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    let (whole, rest) = (bits / 8, bits % 8);
    if a.get(..whole) != b.get(..whole) {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    matches!((a.get(whole), b.get(whole)), (Some(x), Some(y)) if x & mask == y & mask)
}

/// What a listening socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The MTA port (25): mail for this host, relay for trusted clients.
    Mta,
    /// Message submission (587, RFC 6409): STARTTLS before AUTH, AUTH before MAIL.
    Submission,
    /// Submission over implicit TLS (465, RFC 8314 §3.3): TLS from the first byte.
    Smtps,
}

impl Mode {
    pub fn parse(word: &str) -> Option<Mode> {
        match word {
            "smtp" | "mta" => Some(Mode::Mta),
            "submission" => Some(Mode::Submission),
            "smtps" | "submissions" => Some(Mode::Smtps),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Mta => "smtp",
            Mode::Submission => "submission",
            Mode::Smtps => "smtps",
        }
    }
}

/// One `listen` entry: `address:port [mode]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub mode: Mode,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file read, or "embedded default".
    pub source: String,
    /// A digest of the text it was read from: a program started by another checks that it
    /// reads the configuration its parent holds (`DIGEST_ENV`).
    pub digest: String,
    pub hostname: String,
    pub listen: Vec<Listen>,
    pub spool: PathBuf,
    pub user: Option<String>,
    /// Lower case.
    pub local_domains: Vec<String>,
    pub trusted_networks: Vec<Cidr>,
    pub mailboxes: Option<PathBuf>,
    pub mailbox_template: String,
    /// `mailbox_transport = lmtp:...`: local mailboxes are handed to this LMTP server
    /// (Dovecot's, say) instead of being written here; `None`: maildirs written here.
    pub mailbox_transport: Option<crate::client::LmtpAddress>,
    /// `mailbox_command = ...`: a system user's mailbox copy is handed to this command, run
    /// as that user (`sh -c`, Postfix's variables), instead of being written here.
    pub mailbox_command: Option<String>,
    /// `local_users = system`: the local users are the system's accounts, each copy written
    /// by a process running as its user (`table`: the mailboxes file, or any safe name).
    pub system_users: bool,
    /// `local_users = dovecot:/run/dovecot/auth-userdb`: whether a user exists is asked of
    /// Dovecot's userdb over that socket.
    pub dovecot_userdb: Option<PathBuf>,
    /// Follow system users' `~/.forward` files.
    pub forward_files: bool,
    pub aliases: Option<PathBuf>,
    /// Deliver into a maildir even when it (or its tmp/ or new/) is a symlink.
    pub follow_maildir_symlinks: bool,
    /// Characters that start an address extension (`alice+tag`); empty for none.
    pub recipient_delimiter: String,
    pub message_size_limit: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_per_ip: usize,
    pub hard_error_limit: u32,
    pub soft_error_limit: u32,
    pub error_sleep_time: Duration,
    pub junk_command_limit: u32,
    pub vrfy: bool,
    pub expn: bool,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    /// Bytes per second that extend the DATA deadline as they arrive.
    pub min_data_rate: u64,
    pub starttls_timeout: Duration,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Who may log in with AUTH on the submission ports: a file of `user:hash` lines, or a
    /// Dovecot's authentication socket.
    pub auth_users: Option<UserSource>,
    /// `user: address, @domain` lines: the senders each user may use.
    pub auth_senders: Option<PathBuf>,
    /// `auth_plaintext = loopback`: AUTH without TLS for clients on 127.0.0.0/8 and ::1.
    pub auth_plaintext_loopback: bool,
    /// Failed logins from one address, within `auth_lockout_time`, that lock it out.
    pub auth_failure_limit: u32,
    pub auth_lockout_time: Duration,
    /// Leave the client's address out of the `Received:` field of submitted mail.
    pub submission_hide_client: bool,
    /// `domain selector /path/key.pem` lines: DKIM keys for our users' outgoing mail.
    pub dkim_keys: Option<PathBuf>,
    /// On MTA listeners, wait this long before the greeting and turn away a client that
    /// talks first (zero: no wait).
    pub greet_pause: Duration,
    /// DNS block and allow lists asked about clients on MTA listeners (not trusted ones).
    pub dnsbl: Vec<crate::policy::dnsbl::List>,
    /// The score at which a client is refused.
    pub dnsbl_threshold: i32,
    /// All the lists' answers, at most.
    pub dnsbl_timeout: Duration,
    /// Defer the first attempt of each (client network, sender, recipient) from strangers
    /// whose sender did not pass SPF.
    pub greylist: bool,
    /// How long a greylisted triple must wait before its retry passes.
    pub greylist_delay: Duration,
    /// Connections a client address (not trusted) may open per minute; 0: no limit.
    pub max_connection_rate: u32,
    /// MAIL commands a client address (not trusted) may give per minute; 0: no limit.
    pub max_message_rate: u32,
    /// Look up each client's name (forward-confirmed) for the log and `Received:`.
    pub reverse_dns: bool,
    /// The whole of that lookup, at most.
    pub reverse_dns_timeout: Duration,
    /// On MTA ports, refuse a sender in `local_domains` from a client neither trusted nor
    /// logged in (550 5.7.1).
    pub reject_local_senders: bool,
    /// Check SPF (RFC 7208) at MAIL for clients neither trusted nor logged in.
    pub spf: bool,
    /// What an SPF `fail` gets: refused (550 5.7.23) or only recorded.
    pub spf_fail_reject: bool,
    /// What an SPF `temperror` gets: accepted and recorded, or deferred (451 4.7.24).
    pub spf_temperror_defer: bool,
    /// All the DNS questions of one SPF check, at most (RFC 7208 §4.6.4); also those of the
    /// checks at the end of data (DKIM keys, the DMARC policy).
    pub spf_timeout: Duration,
    /// Verify each DKIM signature (RFC 6376) of a stranger's message at the end of data.
    pub dkim_verify: bool,
    /// Apply the `From:` domain's DMARC policy (RFC 7489) to a stranger's message.
    pub dmarc: bool,
    /// The Maildir++ folder a quarantined message is delivered into, where postern writes
    /// the maildir.
    pub junk_folder: String,
    /// Rewrite the sender of a copy an alias forwards off this host (SRS), and take bounces
    /// to such senders back to the original ones.
    pub srs: bool,
    /// The domain of our SRS senders; the first of `local_domains` when `None`.
    pub srs_domain: Option<String>,
    /// The file with the SRS secret; `srs-secret` in the spool when `None`.
    pub srs_secret: Option<PathBuf>,
    /// Honour the MTA-STS policies (RFC 8461) of the domains mail goes to.
    pub mta_sts: bool,
    /// Honour the DNSSEC-authenticated TLSA records of MX hosts (DANE, RFC 7672).
    pub dane: bool,
    /// Milters asked, in order, about mail taken in over SMTP (Postfix's `smtpd_milters`).
    pub milters: Vec<crate::milter::client::Address>,
    /// Milters asked about mail from postern-sendmail.
    pub non_smtpd_milters: Vec<crate::milter::client::Address>,
    /// What a milter that is down, times out or answers garbage gets.
    pub milter_default_action: MilterDefault,
    /// How long one reply of a milter may take.
    pub milter_timeout: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub max_queue_lifetime: Duration,
    /// Zero: no delay warnings.
    pub delay_warning_time: Duration,
    /// The port remote servers listen on (25; tests move it).
    pub smtp_port: u16,
    /// Send all non-local mail to this host and port instead of looking up MX records.
    pub relayhost: Option<(String, u16)>,
    pub relayhost_tls: TlsMode,
    /// A file holding `user:password` for AUTH at the relayhost; readable by its owner only.
    pub relayhost_auth_file: Option<PathBuf>,
    /// The user `|command` and `/file` aliases run and write as.
    pub alias_user: String,
    /// How long an alias command may run before it is killed (and the copy deferred).
    pub alias_timeout: Duration,
    /// Deliver each message as soon as it is committed (a `postern-deliver --id` child).
    pub instant_delivery: bool,
    /// Messages delivered at once by one run.
    pub max_delivery_threads: usize,
    /// Connections open at once to one server address.
    pub max_per_destination: usize,
    /// Name servers for MX lookups; empty means those of /etc/resolv.conf.
    pub dns_servers: Vec<SocketAddr>,
    pub dns_timeout: Duration,
    pub connect_timeout: Duration,
    pub smtp_timeout: Duration,
    pub smtp_data_done_timeout: Duration,
    /// Where log lines go (`log = auto | stderr | syslog`).
    pub log: crate::logging::Choice,
    /// The system log's socket (`/dev/log`).
    pub syslog_socket: PathBuf,
}

/// `auth_users`: a file of `user:hash` lines, or `dovecot:/run/dovecot/auth-client`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSource {
    File(PathBuf),
    Dovecot(PathBuf),
}

impl std::fmt::Display for UserSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserSource::File(path) => write!(f, "{}", path.display()),
            UserSource::Dovecot(socket) => write!(f, "dovecot:{}", socket.display()),
        }
    }
}

/// `relayhost_tls`: when to use TLS with the relayhost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    May,
    Encrypt,
    Verify,
}

impl TlsMode {
    pub fn name(self) -> &'static str {
        match self {
            TlsMode::May => "may",
            TlsMode::Encrypt => "encrypt",
            TlsMode::Verify => "verify",
        }
    }
}

/// `milter_default_action`: what a milter that fails gets, for the rest of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MilterDefault {
    /// Every later command refused for now (`451 4.7.1`).
    Tempfail,
    /// Go on as if the milter were not there.
    Accept,
    /// Every later command refused (`550 5.7.1`).
    Reject,
}

impl MilterDefault {
    pub fn name(self) -> &'static str {
        match self {
            MilterDefault::Tempfail => "tempfail",
            MilterDefault::Accept => "accept",
            MilterDefault::Reject => "reject",
        }
    }
}

/// A configuration error: `file:line: key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Config {
    fn builtin() -> Config {
        Config {
            source: String::new(),
            digest: String::new(),
            hostname: crate::sys::fqdn(),
            listen: vec![Listen { addr: SocketAddr::from(([127, 0, 0, 1], 2525)), mode: Mode::Mta }],
            spool: PathBuf::from("./spool"),
            user: None,
            // Filled in by `parse` from the host name when the file does not say.
            local_domains: Vec::new(),
            trusted_networks: Vec::new(),
            mailboxes: None,
            mailbox_template: "./spool/mailboxes/%u/".into(),
            mailbox_transport: None,
            mailbox_command: None,
            system_users: false,
            dovecot_userdb: None,
            forward_files: false,
            aliases: None,
            follow_maildir_symlinks: false,
            instant_delivery: true,
            alias_user: "nobody".into(),
            alias_timeout: Duration::from_secs(300),
            recipient_delimiter: String::new(),
            message_size_limit: 10_240_000,
            max_recipients: 1000,
            max_connections: 100,
            max_per_ip: 10,
            hard_error_limit: 20,
            soft_error_limit: 10,
            error_sleep_time: Duration::from_secs(1),
            junk_command_limit: 100,
            vrfy: false,
            expn: false,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            min_data_rate: 500,
            starttls_timeout: Duration::from_secs(300),
            tls_cert: None,
            tls_key: None,
            auth_users: None,
            auth_senders: None,
            auth_plaintext_loopback: false,
            auth_failure_limit: 5,
            auth_lockout_time: Duration::from_secs(600),
            submission_hide_client: false,
            dkim_keys: None,
            greet_pause: Duration::ZERO,
            dnsbl: Vec::new(),
            dnsbl_threshold: 1,
            dnsbl_timeout: Duration::from_secs(2),
            greylist: false,
            greylist_delay: Duration::from_secs(300),
            max_connection_rate: 0,
            max_message_rate: 0,
            reverse_dns: true,
            reverse_dns_timeout: Duration::from_secs(2),
            reject_local_senders: true,
            spf: true,
            spf_fail_reject: true,
            spf_temperror_defer: false,
            spf_timeout: Duration::from_secs(20),
            dkim_verify: true,
            dmarc: true,
            junk_folder: "Junk".into(),
            srs: true,
            srs_domain: None,
            srs_secret: None,
            mta_sts: true,
            dane: true,
            milters: Vec::new(),
            non_smtpd_milters: Vec::new(),
            milter_default_action: MilterDefault::Tempfail,
            milter_timeout: Duration::from_secs(30),
            min_backoff: Duration::from_secs(300),
            max_backoff: Duration::from_secs(3600),
            max_queue_lifetime: Duration::from_secs(5 * 86400),
            delay_warning_time: Duration::from_secs(4 * 3600),
            smtp_port: 25,
            relayhost: None,
            relayhost_tls: TlsMode::May,
            relayhost_auth_file: None,
            max_delivery_threads: 10,
            max_per_destination: 5,
            dns_servers: Vec::new(),
            dns_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(30),
            smtp_timeout: Duration::from_secs(300),
            smtp_data_done_timeout: Duration::from_secs(600),
            log: crate::logging::Choice::Auto,
            syslog_socket: PathBuf::from("/dev/log"),
        }
    }

    /// Finds and reads the configuration: `-c FILE`, else `$POSTERN_CONF`, else
    /// /etc/postern/postern.conf when it exists, else the embedded default.
    pub fn locate(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let from_env = std::env::var_os("POSTERN_CONF").filter(|v| !v.is_empty()).map(PathBuf::from);
        let system = Path::new(SYSTEM_CONFIG);
        match explicit.map(Path::to_path_buf).or(from_env) {
            Some(path) => Config::load(&path),
            None if system.exists() => Config::load(system),
            None => Config::embedded(),
        }
    }

    /// The configuration a program was asked for: the embedded default with
    /// `--builtin-config`, else `-c FILE` or the usual places (see `locate`).
    pub fn choose(builtin: bool, explicit: Option<&Path>) -> Result<Config, ConfigError> {
        if builtin { Config::embedded() } else { Config::locate(explicit) }
    }

    /// The embedded default, whatever files exist.
    pub fn embedded() -> Result<Config, ConfigError> {
        Config::parse(EMBEDDED_DEFAULT, EMBEDDED_SOURCE)
    }

    /// Reads a configuration file. One that sets nothing is refused: it is most often a file
    /// cut short while it was being written (postern.conf(5): replace it by a rename), and
    /// its built-in values (no local domain of this host's, `./spool`) would be no one's.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{name}: {e}")))?;
        if text.lines().all(|l| without_comment(l).trim().is_empty()) {
            return Err(ConfigError(format!(
                "{name}: sets nothing (empty, or cut short while written?); write the new file beside it \
                 and rename it over the old one"
            )));
        }
        Config::parse(&text, &name)
    }

    /// Parses configuration text; keys not given keep their built-in values.
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        let mut config = Config::builtin();
        config.source = source.to_string();
        config.digest = digest(text);
        // Each key given, with the line that gave it.
        let mut seen: Vec<(String, usize)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = without_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            let err = |key: &str, msg: String| ConfigError(format!("{source}:{}: {key}: {msg}", i + 1));
            let (key, value) = line.split_once('=').ok_or_else(|| err(line, "expected `key = value`".into()))?;
            let (key, value) = (key.trim(), value.trim());
            if let Some((_, first)) = seen.iter().find(|(k, _)| k == key) {
                return Err(err(key, format!("given twice (first on line {first}); keep one")));
            }
            config.set(key, value).map_err(|msg| err(key, msg))?;
            seen.push((key.to_string(), i + 1));
        }
        let given = |key: &str| seen.iter().any(|(k, _)| k == key);
        if !given("local_domains") {
            config.local_domains = default_local_domains(&config.hostname, &crate::sys::hostname());
        }
        if config.system_users && !given("mailbox_template") {
            config.mailbox_template = "~/Maildir/".into();
        }
        if !config.system_users && config.mailbox_template.starts_with("~/") {
            return Err(ConfigError(format!(
                "{source}: mailbox_template: ~/ is a user's home, for local_users = system"
            )));
        }
        config.check().map_err(|msg| ConfigError(format!("{source}: {msg}")))?;
        Ok(config)
    }

    fn set(&mut self, key: &str, v: &str) -> Result<(), String> {
        match key {
            "hostname" => self.hostname = hostname(v)?,
            "listen" => self.listen = list(v).map(listen).collect::<Result<_, _>>()?,
            "spool" => self.spool = path(v)?,
            "user" => self.user = optional(v, word)?,
            "local_domains" => {
                // A path: a file of domains, one a line (read again at each reload).
                let listed = match v.starts_with('/') {
                    true => domains_file(v)?,
                    false => v.to_string(),
                };
                self.local_domains =
                    list(&listed).map(|d| hostname(d).map(|h| h.to_lowercase())).collect::<Result<_, _>>()?
            }
            "trusted_networks" => {
                self.trusted_networks = list(v)
                    .map(|c| Cidr::parse(c).ok_or(format!("`{c}` is not an address or CIDR block")))
                    .collect::<Result<_, _>>()?
            }
            "mailboxes" => self.mailboxes = optional(v, path)?,
            "mailbox_template" => self.mailbox_template = template(v)?,
            "mailbox_command" => self.mailbox_command = optional(v, |v| Ok(v.to_string()))?,
            "mailbox_transport" => {
                self.mailbox_transport = match v {
                    "maildir" => None,
                    _ => Some(crate::client::LmtpAddress::parse(v)?),
                }
            }
            "local_users" => {
                (self.system_users, self.dovecot_userdb) = match v {
                    "system" => (true, None),
                    "table" => (false, None),
                    _ => match v.strip_prefix("dovecot:") {
                        Some(socket) if socket.starts_with('/') => (false, Some(socket.into())),
                        _ => return Err("expected system, table or dovecot:/path/to/auth-userdb".into()),
                    },
                }
            }
            "aliases" => self.aliases = optional(v, path)?,
            "forward_files" => self.forward_files = switch(v)?,
            "follow_maildir_symlinks" => self.follow_maildir_symlinks = switch(v)?,
            "instant_delivery" => self.instant_delivery = switch(v)?,
            "alias_user" => {
                if v.is_empty() || v == "root" || !v.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                    return Err("a user name other than root".into());
                }
                self.alias_user = v.to_string();
            }
            "alias_timeout" => self.alias_timeout = timeout(v)?,
            "recipient_delimiter" => self.recipient_delimiter = delimiter(v)?,
            "message_size_limit" => self.message_size_limit = size(v)?,
            "max_recipients" => self.max_recipients = count(v, 100)?,
            "max_connections" => self.max_connections = count(v, 1)?,
            "max_per_ip" => self.max_per_ip = count(v, 1)?,
            "hard_error_limit" => self.hard_error_limit = count(v, 1)?,
            "soft_error_limit" => self.soft_error_limit = count(v, 0)?,
            "error_sleep_time" => self.error_sleep_time = bounded(duration(v)?, MINUTE)?,
            "junk_command_limit" => self.junk_command_limit = count(v, 1)?,
            "vrfy" => self.vrfy = switch(v)?,
            "expn" => self.expn = switch(v)?,
            "command_timeout" => self.command_timeout = timeout(v)?,
            "data_timeout" => self.data_timeout = timeout(v)?,
            "min_data_rate" => self.min_data_rate = count(v, 1)?,
            "starttls_timeout" => self.starttls_timeout = timeout(v)?,
            "tls_cert" => self.tls_cert = optional(v, path)?,
            "tls_key" => self.tls_key = optional(v, path)?,
            "auth_users" => {
                self.auth_users = optional(v, |v| match v.strip_prefix("dovecot:") {
                    Some(socket) if socket.starts_with('/') => Ok(UserSource::Dovecot(socket.into())),
                    Some(_) => Err("dovecot: takes the absolute path of Dovecot's auth-client socket".into()),
                    None => path(v).map(UserSource::File),
                })?
            }
            "auth_senders" => self.auth_senders = optional(v, path)?,
            "auth_plaintext" => {
                self.auth_plaintext_loopback = match v {
                    "loopback" => true,
                    "off" | "no" => false,
                    _ => return Err("expected off or loopback".into()),
                }
            }
            "auth_failure_limit" => self.auth_failure_limit = count(v, 1)?,
            "auth_lockout_time" => self.auth_lockout_time = bounded(positive(duration(v)?)?, DAY)?,
            "submission_hide_client" => self.submission_hide_client = switch(v)?,
            "dkim_keys" => self.dkim_keys = optional(v, path)?,
            "reverse_dns" => self.reverse_dns = switch(v)?,
            "dnsbl" => self.dnsbl = crate::policy::dnsbl::parse_lists(v)?,
            "dnsbl_threshold" => {
                self.dnsbl_threshold =
                    v.parse().ok().filter(|n: &i32| *n >= 1).ok_or("expected a whole number, 1 or more")?
            }
            "dnsbl_timeout" => self.dnsbl_timeout = bounded(positive(duration(v)?)?, MINUTE)?,
            "greylist" => self.greylist = switch(v)?,
            "greylist_delay" => self.greylist_delay = bounded(positive(duration(v)?)?, 3600)?,
            "max_connection_rate" => self.max_connection_rate = count(v, 0)?,
            "max_message_rate" => self.max_message_rate = count(v, 0)?,
            "greet_pause" => {
                self.greet_pause = match v {
                    "off" => Duration::ZERO,
                    _ => bounded(duration(v)?, MINUTE)?,
                }
            }
            "reject_local_senders" => self.reject_local_senders = switch(v)?,
            "spf" => self.spf = switch(v)?,
            "spf_fail" => {
                self.spf_fail_reject = match v {
                    "reject" => true,
                    "accept" => false,
                    _ => return Err("expected reject or accept".into()),
                }
            }
            "spf_temperror" => {
                self.spf_temperror_defer = match v {
                    "defer" => true,
                    "accept" => false,
                    _ => return Err("expected accept or defer".into()),
                }
            }
            "dkim_verify" => self.dkim_verify = switch(v)?,
            "dmarc" => self.dmarc = switch(v)?,
            "junk_folder" => self.junk_folder = folder(v)?,
            "srs" => self.srs = switch(v)?,
            "srs_domain" => self.srs_domain = optional(v, |v| hostname(v).map(|h| h.to_lowercase()))?,
            "srs_secret" => self.srs_secret = optional(v, path)?,
            "mta_sts" => self.mta_sts = switch(v)?,
            "dane" => self.dane = switch(v)?,
            "milters" => self.milters = milters(v)?,
            "non_smtpd_milters" => self.non_smtpd_milters = milters(v)?,
            "milter_default_action" => {
                self.milter_default_action = match v {
                    "tempfail" => MilterDefault::Tempfail,
                    "accept" => MilterDefault::Accept,
                    "reject" => MilterDefault::Reject,
                    _ => return Err("expected tempfail, accept or reject".into()),
                }
            }
            "milter_timeout" => self.milter_timeout = bounded(positive(duration(v)?)?, 10 * MINUTE)?,
            "spf_timeout" => self.spf_timeout = bounded(positive(duration(v)?)?, 5 * MINUTE)?,
            "reverse_dns_timeout" => self.reverse_dns_timeout = bounded(positive(duration(v)?)?, MINUTE)?,
            "min_backoff" => self.min_backoff = bounded(positive(duration(v)?)?, 30 * DAY)?,
            "max_backoff" => self.max_backoff = bounded(positive(duration(v)?)?, 30 * DAY)?,
            "max_queue_lifetime" => self.max_queue_lifetime = bounded(positive(duration(v)?)?, 100 * DAY)?,
            "delay_warning_time" => self.delay_warning_time = bounded(duration(v)?, 100 * DAY)?,
            "smtp_port" => self.smtp_port = count(v, 1)?,
            "relayhost" => self.relayhost = optional(v, |v| host_port(v, 25))?,
            "relayhost_tls" => {
                self.relayhost_tls = match v {
                    "may" => TlsMode::May,
                    "encrypt" => TlsMode::Encrypt,
                    "verify" => TlsMode::Verify,
                    _ => return Err("expected may, encrypt or verify".into()),
                }
            }
            "relayhost_auth_file" => self.relayhost_auth_file = optional(v, path)?,
            "max_delivery_threads" => self.max_delivery_threads = count(v, 1)?,
            "max_per_destination" => self.max_per_destination = count(v, 1)?,
            "dns_servers" => self.dns_servers = list(v).map(dns_server).collect::<Result<_, _>>()?,
            "dns_timeout" => self.dns_timeout = timeout(v)?,
            "connect_timeout" => self.connect_timeout = timeout(v)?,
            "smtp_timeout" => self.smtp_timeout = timeout(v)?,
            "smtp_data_done_timeout" => self.smtp_data_done_timeout = timeout(v)?,
            "log" => {
                self.log = match v {
                    "auto" => crate::logging::Choice::Auto,
                    "stderr" => crate::logging::Choice::Stderr,
                    "syslog" => crate::logging::Choice::Syslog,
                    _ => return Err("expected auto, stderr or syslog".into()),
                }
            }
            "syslog_socket" => self.syslog_socket = path(v)?,
            _ => return Err("unknown key".into()),
        }
        Ok(())
    }

    /// Every key with its value, written as `set` reads it, in alphabetical order: what
    /// `postern-smtpd --show-config` prints. An unset key's value is empty (`relayhost =`).
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let on = |b: bool| if b { "on" } else { "off" }.to_string();
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let join = |items: Vec<String>| items.join(", ");
        let mut out = vec![
            ("hostname", self.hostname.clone()),
            ("listen", join(self.listen.iter().map(show_listen).collect())),
            ("spool", self.spool.display().to_string()),
            ("user", self.user.clone().unwrap_or_default()),
            ("local_domains", self.local_domains.join(", ")),
            ("trusted_networks", join(self.trusted_networks.iter().map(Cidr::to_string).collect())),
            ("mailboxes", path(&self.mailboxes)),
            ("mailbox_template", self.mailbox_template.clone()),
            ("mailbox_command", self.mailbox_command.clone().unwrap_or_default()),
            ("mailbox_transport", self.mailbox_transport.as_ref().map_or("maildir".into(), ToString::to_string)),
            (
                "local_users",
                match (&self.dovecot_userdb, self.system_users) {
                    (Some(socket), _) => format!("dovecot:{}", socket.display()),
                    (None, true) => "system".into(),
                    (None, false) => "table".into(),
                },
            ),
            ("aliases", path(&self.aliases)),
            ("forward_files", on(self.forward_files)),
            ("follow_maildir_symlinks", on(self.follow_maildir_symlinks)),
            ("instant_delivery", on(self.instant_delivery)),
            ("alias_user", self.alias_user.clone()),
            ("alias_timeout", show_duration(self.alias_timeout)),
            ("recipient_delimiter", self.recipient_delimiter.clone()),
            ("message_size_limit", self.message_size_limit.to_string()),
            ("max_recipients", self.max_recipients.to_string()),
            ("max_connections", self.max_connections.to_string()),
            ("max_per_ip", self.max_per_ip.to_string()),
            ("hard_error_limit", self.hard_error_limit.to_string()),
            ("soft_error_limit", self.soft_error_limit.to_string()),
            ("error_sleep_time", show_duration(self.error_sleep_time)),
            ("junk_command_limit", self.junk_command_limit.to_string()),
            ("vrfy", on(self.vrfy)),
            ("expn", on(self.expn)),
            ("command_timeout", show_duration(self.command_timeout)),
            ("data_timeout", show_duration(self.data_timeout)),
            ("min_data_rate", self.min_data_rate.to_string()),
            ("starttls_timeout", show_duration(self.starttls_timeout)),
            ("tls_cert", path(&self.tls_cert)),
            ("tls_key", path(&self.tls_key)),
            ("auth_users", self.auth_users.as_ref().map(ToString::to_string).unwrap_or_default()),
            ("auth_senders", path(&self.auth_senders)),
            ("auth_plaintext", if self.auth_plaintext_loopback { "loopback" } else { "off" }.into()),
            ("auth_failure_limit", self.auth_failure_limit.to_string()),
            ("auth_lockout_time", show_duration(self.auth_lockout_time)),
            ("submission_hide_client", on(self.submission_hide_client)),
            ("dkim_keys", path(&self.dkim_keys)),
            ("reverse_dns", on(self.reverse_dns)),
            ("dnsbl", join(self.dnsbl.iter().map(show_list).collect())),
            ("dnsbl_threshold", self.dnsbl_threshold.to_string()),
            ("dnsbl_timeout", show_duration(self.dnsbl_timeout)),
            ("greylist", on(self.greylist)),
            ("greylist_delay", show_duration(self.greylist_delay)),
            ("max_connection_rate", self.max_connection_rate.to_string()),
            ("max_message_rate", self.max_message_rate.to_string()),
            ("greet_pause", if self.greet_pause.is_zero() { "off".into() } else { show_duration(self.greet_pause) }),
            ("reject_local_senders", on(self.reject_local_senders)),
            ("spf", on(self.spf)),
            ("spf_fail", if self.spf_fail_reject { "reject" } else { "accept" }.into()),
            ("spf_temperror", if self.spf_temperror_defer { "defer" } else { "accept" }.into()),
            ("dkim_verify", on(self.dkim_verify)),
            ("dmarc", on(self.dmarc)),
            ("junk_folder", self.junk_folder.clone()),
            ("srs", on(self.srs)),
            ("srs_domain", self.srs_domain.clone().unwrap_or_default()),
            ("srs_secret", path(&self.srs_secret)),
            ("mta_sts", on(self.mta_sts)),
            ("dane", on(self.dane)),
            ("milters", join(self.milters.iter().map(ToString::to_string).collect())),
            ("non_smtpd_milters", join(self.non_smtpd_milters.iter().map(ToString::to_string).collect())),
            ("milter_default_action", self.milter_default_action.name().into()),
            ("milter_timeout", show_duration(self.milter_timeout)),
            ("spf_timeout", show_duration(self.spf_timeout)),
            ("reverse_dns_timeout", show_duration(self.reverse_dns_timeout)),
            ("min_backoff", show_duration(self.min_backoff)),
            ("max_backoff", show_duration(self.max_backoff)),
            ("max_queue_lifetime", show_duration(self.max_queue_lifetime)),
            ("delay_warning_time", show_duration(self.delay_warning_time)),
            ("smtp_port", self.smtp_port.to_string()),
            ("relayhost", self.relayhost.as_ref().map(|(h, p)| show_host_port(h, *p)).unwrap_or_default()),
            ("relayhost_tls", self.relayhost_tls.name().into()),
            ("relayhost_auth_file", path(&self.relayhost_auth_file)),
            ("max_delivery_threads", self.max_delivery_threads.to_string()),
            ("max_per_destination", self.max_per_destination.to_string()),
            ("dns_servers", join(self.dns_servers.iter().map(ToString::to_string).collect())),
            ("dns_timeout", show_duration(self.dns_timeout)),
            ("connect_timeout", show_duration(self.connect_timeout)),
            ("smtp_timeout", show_duration(self.smtp_timeout)),
            ("smtp_data_done_timeout", show_duration(self.smtp_data_done_timeout)),
            ("log", self.log.name().into()),
            ("syslog_socket", self.syslog_socket.display().to_string()),
        ];
        out.sort_by_key(|(key, _)| *key);
        out
    }

    /// The keys whose value is not the one they would have if the file left them out
    /// (`--show-config -n`): `local_domains` is compared with the names of the host, and
    /// `mailbox_template` with `~/Maildir/` for `local_users = system`.
    pub fn changed_settings(&self) -> Vec<(&'static str, String)> {
        let mut defaults = Config::builtin();
        defaults.local_domains = default_local_domains(&self.hostname, &crate::sys::hostname());
        if self.system_users {
            defaults.mailbox_template = "~/Maildir/".into();
        }
        let defaults = defaults.settings();
        self.settings().into_iter().filter(|setting| !defaults.contains(setting)).collect()
    }

    fn check(&self) -> Result<(), String> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("tls_cert and tls_key go together".into());
        }
        if self.max_per_ip > self.max_connections {
            return Err("max_per_ip is larger than max_connections".into());
        }
        if self.relayhost_auth_file.is_some() && self.relayhost.is_none() {
            return Err("relayhost_auth_file needs a relayhost".into());
        }
        if self.min_backoff > self.max_backoff {
            return Err("min_backoff is longer than max_backoff".into());
        }
        let submission = self.listen.iter().any(|l| l.mode != Mode::Mta);
        if self.listen.iter().any(|l| l.mode == Mode::Smtps) && self.tls_cert.is_none() {
            return Err("listen: an smtps port needs tls_cert and tls_key".into());
        }
        if self.dovecot_userdb.is_some() && self.mailbox_transport.is_none() {
            return Err(
                "local_users = dovecot: needs mailbox_transport = lmtp:... (the mailboxes are Dovecot's)".into()
            );
        }
        if self.mailbox_command.is_some() && !self.system_users {
            return Err("mailbox_command is for local_users = system (it runs as the recipient)".into());
        }
        if self.mailbox_command.is_some() && self.mailbox_transport.is_some() {
            return Err("mailbox_command and mailbox_transport both say who writes the mailboxes; keep one".into());
        }
        if self.forward_files && !self.system_users {
            return Err("forward_files is for local_users = system (a .forward is in a user's home)".into());
        }
        if self.auth_senders.is_some() && self.auth_users.is_none() {
            return Err("auth_senders needs auth_users".into());
        }
        if submission && self.auth_users.is_none() {
            return Err("listen: a submission port needs auth_users (who may log in)".into());
        }
        Ok(())
    }

    /// Warnings about a configuration that works but will cause trouble.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.hostname.contains('.') {
            out.push(format!(
                "hostname `{}` is not a fully qualified name: other servers may refuse mail from this host \
                 (RFC 5321 §4.1.1.1 asks for one in HELO); set `hostname =` or put it in /etc/hosts",
                self.hostname
            ));
        }
        out
    }

    /// The file this configuration was read from; `None` for the embedded default.
    pub fn path(&self) -> Option<&Path> {
        (self.source != EMBEDDED_SOURCE).then(|| Path::new(&self.source))
    }

    /// The arguments that make another postern program read this same configuration:
    /// `-c FILE`, or `--builtin-config`.
    pub fn program_args(&self) -> Vec<std::ffi::OsString> {
        match self.path() {
            Some(path) => vec!["-c".into(), path.into()],
            None => vec!["--builtin-config".into()],
        }
    }

    /// Whether `ip` is in `trusted_networks`; an unknown peer never is.
    pub fn is_trusted(&self, ip: Option<IpAddr>) -> bool {
        ip.is_some_and(|ip| self.trusted_networks.iter().any(|c| c.contains(ip)))
    }

    /// The domain of our SRS senders: `srs_domain`, or the first local domain (`None` with
    /// neither: a box with no local domain can take no bounce back).
    pub fn srs_domain(&self) -> Option<&str> {
        self.srs_domain.as_deref().or(self.local_domains.first().map(String::as_str))
    }

    /// The file with the SRS secret.
    pub fn srs_secret_path(&self) -> PathBuf {
        self.srs_secret.clone().unwrap_or_else(|| self.spool.join("srs-secret"))
    }

    /// The domain that makes a bare local name (`root`) an address: the host name when it is
    /// a local domain, else the first local domain, else the host name (a box with no local
    /// domains sends everything on).
    pub fn origin(&self) -> &str {
        let host = self.hostname.to_lowercase();
        if self.local_domains.contains(&host) || self.local_domains.is_empty() {
            &self.hostname
        } else {
            &self.local_domains[0]
        }
    }
}

/// The variable in which a daemon tells the delivery children it starts the digest of the
/// configuration it holds; a child whose file reads otherwise (changed since, or a reload
/// refused) does not deliver with it, and says so.
pub const DIGEST_ENV: &str = "POSTERN_CONFIG_DIGEST";

/// SHA-256 of the configuration text, in hex (16 octets are plenty to tell two files apart).
fn digest(text: &str) -> String {
    openssl::sha::sha256(text.as_bytes()).iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The domains in a `local_domains` file, one a line, `#` comments, as a list.
fn domains_file(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let domains: Vec<&str> = text.lines().map(|l| without_comment(l).trim()).filter(|l| !l.is_empty()).collect();
    if domains.iter().any(|d| d.contains([',', ' ', '\t'])) {
        return Err(format!("{path}: one domain a line"));
    }
    Ok(domains.join(","))
}

/// A key that names something optional: empty leaves it unset (`relayhost =`).
fn optional<T>(v: &str, read: impl Fn(&str) -> Result<T, String>) -> Result<Option<T>, String> {
    if v.is_empty() { Ok(None) } else { read(v).map(Some) }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whole = if self.network.is_ipv4() { 32 } else { 128 };
        if self.prefix == whole { write!(f, "{}", self.network) } else { write!(f, "{}/{}", self.network, self.prefix) }
    }
}

fn show_listen(l: &Listen) -> String {
    match l.mode {
        Mode::Mta => l.addr.to_string(),
        mode => format!("{} {}", l.addr, mode.name()),
    }
}

fn show_list(l: &crate::policy::dnsbl::List) -> String {
    if l.weight == 1 { l.zone.clone() } else { format!("{}*{}", l.zone, l.weight) }
}

/// `host:port`, an address literal in brackets (`[192.0.2.1]:25`: no MX lookup).
fn show_host_port(host: &str, port: u16) -> String {
    if host.parse::<IpAddr>().is_ok() { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// A duration as `duration` reads it, in the largest unit that divides it.
fn show_duration(d: Duration) -> String {
    if d.subsec_nanos() != 0 {
        return format!("{}ms", d.as_millis());
    }
    match u32::try_from(d.as_secs()) {
        Ok(0) => "0s".into(),
        Ok(secs) => human(secs),
        Err(_) => format!("{}s", d.as_secs()),
    }
}

/// A line without its comment: from a `#` that starts the line or follows white space
/// (`hostname = mx.example.org   # the public name`) to its end.
fn without_comment(line: &str) -> &str {
    let mut prev = ' ';
    for (at, c) in line.char_indices() {
        if c == '#' && prev.is_whitespace() {
            return &line[..at];
        }
        prev = c;
    }
    line
}

/// `local_domains` when not given: the host name, the kernel's own name when it is the first
/// label of that name (`vm` for `vm.example.org`, so `root@vm` is local), and `localhost`.
fn default_local_domains(hostname: &str, kernel: &str) -> Vec<String> {
    let mut out = vec![hostname.to_lowercase()];
    let kernel = kernel.to_lowercase();
    if out[0].split('.').next() == Some(kernel.as_str()) {
        out.push(kernel);
    }
    out.push("localhost".into());
    out.dedup();
    out
}

fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// `inet:HOST:PORT, unix:/PATH, ...`, in order; empty for none.
fn milters(v: &str) -> Result<Vec<crate::milter::client::Address>, String> {
    list(v).map(crate::milter::client::Address::parse).collect()
}

fn word(v: &str) -> Result<String, String> {
    if v.is_empty() || v.contains(char::is_whitespace) {
        return Err("expected one word".into());
    }
    Ok(v.to_string())
}

fn path(v: &str) -> Result<PathBuf, String> {
    if v.is_empty() {
        return Err("expected a path".into());
    }
    Ok(PathBuf::from(v))
}

fn hostname(v: &str) -> Result<String, String> {
    crate::smtp::address::Domain::parse(v).map(|d| d.to_string()).map_err(|_| format!("`{v}` is not a domain name"))
}

fn socket_addr(v: &str) -> Result<SocketAddr, String> {
    v.parse().map_err(|_| format!("`{v}` is not address:port (IPv6 as [::]:25)"))
}

/// `address:port`, optionally followed by `submission` or `smtps`.
fn listen(v: &str) -> Result<Listen, String> {
    let mut words = v.split_whitespace();
    let addr = socket_addr(words.next().unwrap_or(""))?;
    let mode = match words.next() {
        None => Mode::Mta,
        Some(w) => Mode::parse(w).ok_or(format!("`{w}`: the mode is submission or smtps (or none, for smtp)"))?,
    };
    if let Some(extra) = words.next() {
        return Err(format!("`{extra}`: one mode per address"));
    }
    Ok(Listen { addr, mode })
}

/// `host`, `host:port`, `[1.2.3.4]:port` or `[::1]:port`; the port defaults to `default_port`.
fn host_port(v: &str, default_port: u16) -> Result<(String, u16), String> {
    let bad = || format!("`{v}` is not host or host:port");
    let (host, port) = match v.strip_prefix('[') {
        Some(rest) => {
            let (inner, after) = rest.split_once(']').ok_or_else(bad)?;
            inner.parse::<IpAddr>().map_err(|_| bad())?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => default_port,
                None => return Err(bad()),
            };
            (inner.to_string(), port)
        }
        None => match v.rsplit_once(':') {
            Some((h, p)) => (hostname(h)?, p.parse().map_err(|_| bad())?),
            None => (hostname(v)?, default_port),
        },
    };
    Ok((host, port))
}

/// `192.0.2.53`, `192.0.2.53:5353` or `[::1]:53`.
fn dns_server(v: &str) -> Result<SocketAddr, String> {
    v.parse::<SocketAddr>()
        .or_else(|_| v.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("`{v}` is not an address or address:port"))
}

fn template(v: &str) -> Result<String, String> {
    if !v.contains("%u") && !v.starts_with("~/") {
        return Err("must contain %u, the mailbox name, or start with ~/, the user's home".into());
    }
    Ok(v.to_string())
}

fn delimiter(v: &str) -> Result<String, String> {
    if v.chars().all(|c| "+-_=".contains(c)) { Ok(v.to_string()) } else { Err("only + - _ = can be delimiters".into()) }
}

/// A Maildir++ folder's name (`maildir::is_folder_name`).
fn folder(v: &str) -> Result<String, String> {
    if !crate::maildir::is_folder_name(v) {
        return Err("expected a folder name such as Junk (letters, digits, - and _; dots between words)".into());
    }
    Ok(v.to_string())
}

fn switch(v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" => Ok(true),
        "off" | "no" => Ok(false),
        _ => Err("expected on or off".into()),
    }
}

fn count<T: TryFrom<u64>>(v: &str, min: u64) -> Result<T, String> {
    let n: u64 = v.parse().map_err(|_| format!("`{v}` is not a whole number"))?;
    if n < min {
        return Err(format!("must be at least {min}"));
    }
    T::try_from(n).map_err(|_| format!("`{v}` is too large"))
}

/// `10M`, `512k`, or plain bytes.
pub fn size(v: &str) -> Result<u64, String> {
    let (digits, unit) = match v.strip_suffix(['k', 'K']) {
        Some(d) => (d, 1024),
        None => match v.strip_suffix('M') {
            Some(d) => (d, 1024 * 1024),
            None => (v, 1),
        },
    };
    let n: u64 = digits.parse().map_err(|_| format!("`{v}` is not a size (bytes, or with k or M)"))?;
    n.checked_mul(unit).filter(|&s| s > 0).ok_or_else(|| format!("`{v}` is out of range"))
}

/// `30s`, `5m`, `4h`, `5d`; a bare number is seconds. `ms` exists for tests.
pub fn duration(v: &str) -> Result<Duration, String> {
    let bad = || format!("`{v}` is not a duration (such as 30s, 5m, 4h, 5d)");
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let n: u64 = v[..split].parse().map_err(|_| bad())?;
    let secs = match &v[split..] {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    n.checked_mul(secs).map(Duration::from_secs).ok_or_else(bad)
}

fn positive(d: Duration) -> Result<Duration, String> {
    if d.is_zero() { Err("must be more than zero".into()) } else { Ok(d) }
}

const MINUTE: u32 = 60;
const DAY: u32 = 86400;

/// Every duration key has an upper bound, so that no value that parses can overflow a
/// deadline (`Instant + Duration`) or hold a thread for years.
fn bounded(d: Duration, max_secs: u32) -> Result<Duration, String> {
    if d > Duration::from_secs(u64::from(max_secs)) {
        return Err(format!("at most {}", human(max_secs)));
    }
    Ok(d)
}

/// A wait for a peer or a lookup: more than zero, at most a day.
fn timeout(v: &str) -> Result<Duration, String> {
    bounded(positive(duration(v)?)?, DAY)
}

fn human(secs: u32) -> String {
    match secs {
        s if s % DAY == 0 => format!("{}d", s / DAY),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % MINUTE == 0 => format!("{}m", s / MINUTE),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_duration_has_an_upper_bound() {
        for (key, max, over) in [
            ("error_sleep_time", "1m", "61s"),
            ("command_timeout", "1d", "25h"),
            ("data_timeout", "1d", "18446744073709551615"),
            ("starttls_timeout", "1d", "2d"),
            ("min_backoff", "30d", "31d"),
            ("max_backoff", "30d", "31d"),
            ("max_queue_lifetime", "100d", "101d"),
            ("delay_warning_time", "100d", "101d"),
            ("dns_timeout", "1d", "2d"),
            ("connect_timeout", "1d", "2d"),
            ("smtp_timeout", "1d", "2d"),
            ("smtp_data_done_timeout", "1d", "2d"),
        ] {
            let extra = if key == "min_backoff" { "max_backoff = 30d\n" } else { "" };
            let at = format!("{extra}{key} = {max}\n");
            assert!(Config::parse(&at, "t").is_ok(), "{key} = {max} is allowed");
            let e = Config::parse(&format!("{key} = {over}\n"), "t").unwrap_err().to_string();
            assert_eq!(e, format!("t:1: {key}: at most {max}"), "{key} = {over}");
        }
    }

    #[test]
    fn local_domains_default_to_the_host_names() {
        assert_eq!(default_local_domains("vm.example.org", "vm"), ["vm.example.org", "vm", "localhost"]);
        assert_eq!(default_local_domains("Mail.Example.Org", "other"), ["mail.example.org", "localhost"]);
        assert_eq!(default_local_domains("localhost", "localhost"), ["localhost"]);
        let c = Config::parse("hostname = mx.example.net\n", "t").unwrap();
        assert!(c.local_domains.contains(&"mx.example.net".to_string()));
        assert!(c.local_domains.contains(&"localhost".to_string()));
        assert!(c.warnings().is_empty());
        let bare = Config::parse("hostname = vm\nlocal_domains = vm\n", "t").unwrap();
        assert_eq!(bare.local_domains, ["vm"]);
        assert!(bare.warnings()[0].contains("not a fully qualified name"));
    }

    #[test]
    fn host_names_are_qualified_from_etc_hosts() {
        use crate::sys::qualify;
        let hosts = "127.0.0.1 localhost\n127.0.1.1\tvm.example.org vm # this host\n::1 ip6-localhost\n";
        assert_eq!(qualify("vm", hosts), "vm.example.org");
        assert_eq!(qualify("other", hosts), "other");
        assert_eq!(qualify("a.b", ""), "a.b");
        assert_eq!(qualify("vm", "# 127.0.1.1 vm.commented vm\n"), "vm");
    }

    /// What `--show-config` prints, as a file.
    fn shown(config: &Config) -> String {
        config.settings().iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
    }

    #[test]
    fn shown_settings_read_back_the_same() {
        let rich = "\
hostname = mx.example.org
listen = [::]:25, 127.0.0.1:587 submission, 127.0.0.1:465 smtps
user = postern
local_domains = example.org, Example.NET
trusted_networks = 10.0.0.0/8, ::1, 192.0.2.7
local_users = system
aliases = /etc/aliases
recipient_delimiter = +-
message_size_limit = 20M
tls_cert = /etc/c.pem
tls_key = /etc/k.pem
auth_users = /etc/users
auth_plaintext = loopback
greet_pause = 6s
dnsbl = zen.example*2, allow.example*-5, bl.example
milters = inet:[::1]:11332, unix:/run/m.sock
milter_default_action = accept
relayhost = [192.0.2.1]:587
relayhost_tls = verify
dns_servers = 127.0.0.1:5353, [::1]:53
log = syslog
smtp_timeout = 150ms
min_backoff = 90s
spf_fail = accept
spf_temperror = defer
";
        for config in [Config::parse(rich, "t.conf").unwrap(), Config::embedded().unwrap()] {
            let text = shown(&config);
            let again = Config::parse(&text, "shown").unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(shown(&again), text);
        }
        let config = Config::parse(rich, "t.conf").unwrap();
        let value = |key: &str| config.settings().into_iter().find(|(k, _)| *k == key).unwrap().1;
        assert_eq!(value("listen"), "[::]:25, 127.0.0.1:587 submission, 127.0.0.1:465 smtps");
        assert_eq!(value("trusted_networks"), "10.0.0.0/8, ::1, 192.0.2.7");
        assert_eq!(value("mailbox_template"), "~/Maildir/");
        assert_eq!(value("message_size_limit"), "20971520");
        assert_eq!(value("dnsbl"), "zen.example*2, allow.example*-5, bl.example");
        assert_eq!(value("relayhost"), "[192.0.2.1]:587");
        assert_eq!(value("min_backoff"), "90s");
        assert_eq!(value("max_queue_lifetime"), "5d");
        assert_eq!(value("srs_domain"), "");
    }

    #[test]
    fn every_key_is_shown() {
        // The keys `set` takes: each arm of its match (the words a key takes are deeper).
        let source = include_str!("config.rs");
        let body = &source[source.find("fn set(").unwrap()..source.find("fn check(").unwrap()];
        let mut taken: Vec<&str> = body
            .lines()
            .filter_map(|l| l.strip_prefix("            \"")?.split_once("\" =>").map(|(k, _)| k))
            .collect();
        taken.sort();
        let shown: Vec<&str> = Config::embedded().unwrap().settings().into_iter().map(|(k, _)| k).collect();
        assert!(taken.len() > 80, "{taken:?}");
        assert_eq!(shown, taken);
    }

    #[test]
    fn changed_settings_leave_out_the_defaults() {
        let config = Config::parse("hostname = mx.example.org\nlocal_users = system\nvrfy = off\n", "t").unwrap();
        // vrfy is off by default, and the template follows local_users.
        let keys: Vec<&str> = config.changed_settings().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["hostname", "local_users"]);
        let keys: Vec<&str> = Config::embedded().unwrap().changed_settings().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["local_domains", "trusted_networks"]);
    }

    #[test]
    fn an_empty_value_leaves_an_optional_key_unset() {
        let config = Config::parse("relayhost =\nuser =\naliases =\n", "t").unwrap();
        assert_eq!((config.relayhost, config.user, config.aliases), (None, None, None));
        assert!(Config::parse("spool =\n", "t").is_err());
    }

    #[test]
    fn embedded_default_parses() {
        let c = Config::parse(EMBEDDED_DEFAULT, "embedded default").unwrap();
        assert_eq!(c.listen, vec![Listen { addr: "127.0.0.1:2525".parse().unwrap(), mode: Mode::Mta }]);
        assert_eq!(c.local_domains, vec!["localhost"]);
        assert!(c.is_trusted(Some("127.0.0.5".parse().unwrap())));
        assert!(c.is_trusted(Some("::1".parse().unwrap())));
        assert!(c.is_trusted(Some("::ffff:127.0.0.1".parse().unwrap())));
        assert!(!c.is_trusted(Some("192.0.2.1".parse().unwrap())));
        assert!(!c.is_trusted(None));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = Config::parse("listen = 127.0.0.1:25\nmax_recipients = 5\n", "t.conf").unwrap_err();
        assert_eq!(e.0, "t.conf:2: max_recipients: must be at least 100");
        let e = Config::parse("\nfrobnicate = yes\n", "t.conf").unwrap_err();
        assert_eq!(e.0, "t.conf:2: frobnicate: unknown key");
        let e = Config::parse("vrfy = on\nvrfy = off\n", "t.conf").unwrap_err();
        assert_eq!(e.0, "t.conf:2: vrfy: given twice (first on line 1); keep one");
        assert!(Config::parse("message_size_limit = 10X\n", "t").is_err());
        assert!(Config::parse("tls_cert = /x\n", "t").is_err());
    }

    #[test]
    fn greet_pause_is_off_unless_set_and_at_most_a_minute() {
        assert_eq!(Config::parse("", "t").unwrap().greet_pause, Duration::ZERO);
        assert_eq!(Config::parse("greet_pause = 1s\n", "t").unwrap().greet_pause, Duration::from_secs(1));
        assert_eq!(Config::parse("greet_pause = 500ms\n", "t").unwrap().greet_pause, Duration::from_millis(500));
        assert_eq!(Config::parse("greet_pause = off\n", "t").unwrap().greet_pause, Duration::ZERO);
        assert!(Config::parse("greet_pause = 2m\n", "t").is_err());
    }

    #[test]
    fn milters_are_addresses_in_order() {
        let c = Config::parse(
            "milters = inet:127.0.0.1:11332, unix:/run/opendkim.sock\nmilter_default_action = accept\nmilter_timeout = 5s\n",
            "t",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<String> = c.milters.iter().map(|m| m.to_string()).collect();
        assert_eq!(names, ["inet:127.0.0.1:11332", "unix:/run/opendkim.sock"]);
        assert!(c.non_smtpd_milters.is_empty());
        assert_eq!(c.milter_default_action, MilterDefault::Accept);
        assert_eq!(c.milter_timeout, Duration::from_secs(5));
        for bad in ["milters = 127.0.0.1:11332", "milters = unix:run/x", "milter_default_action = quarantine"] {
            assert!(Config::parse(&format!("{bad}\n"), "t").is_err(), "{bad}");
        }
        assert_eq!(Config::parse("", "t").unwrap().milter_default_action, MilterDefault::Tempfail);
    }

    #[test]
    fn a_junk_folder_is_a_maildir_plus_plus_name() {
        for good in ["Junk", "Spam", "Junk.Old", "Bulk_mail-2"] {
            let c = Config::parse(&format!("junk_folder = {good}\n"), "t").unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.junk_folder, good);
        }
        for bad in ["", ".Junk", "Junk.", "../x", "a/b", "Junk..Old", "J unk", "Ünk"] {
            let e = Config::parse(&format!("junk_folder = {bad}\n"), "t");
            assert!(e.is_err(), "{bad:?} is no folder name");
        }
    }

    #[test]
    fn a_comment_after_a_value_is_no_part_of_it() {
        let c = Config::parse("hostname = mx.example.org   # the public name\n  # indented\n", "t");
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.hostname, "mx.example.org");
        let e = Config::parse("vrfy = on#off\n", "t").unwrap_err();
        assert!(e.0.contains("vrfy"), "a # inside a word is no comment: {}", e.0);
    }

    #[test]
    fn listen_modes() {
        let c = Config::parse(
            "listen = [::]:25, 127.0.0.1:587 submission, [::1]:465 smtps\ntls_cert = /c\ntls_key = /k\nauth_users = /u\n",
            "t",
        )
        .unwrap();
        let modes: Vec<(String, Mode)> = c.listen.iter().map(|l| (l.addr.to_string(), l.mode)).collect();
        assert_eq!(
            modes,
            [
                ("[::]:25".into(), Mode::Mta),
                ("127.0.0.1:587".into(), Mode::Submission),
                ("[::1]:465".into(), Mode::Smtps)
            ]
        );
        let e = |text: &str| Config::parse(text, "t").unwrap_err().0;
        assert_eq!(
            e("listen = 127.0.0.1:587 submision\n"),
            "t:1: listen: `submision`: the mode is submission or smtps (or none, for smtp)"
        );
        assert_eq!(
            e("listen = 127.0.0.1:465 smtps\nauth_users = /u\n"),
            "t: listen: an smtps port needs tls_cert and tls_key"
        );
        assert_eq!(
            e("listen = 127.0.0.1:587 submission\n"),
            "t: listen: a submission port needs auth_users (who may log in)"
        );
        assert!(Config::parse("listen = 127.0.0.1:587 submission smtps\n", "t").is_err());
        assert!(Config::parse("auth_plaintext = always\n", "t").is_err());
    }

    #[test]
    fn units() {
        assert_eq!(size("10M"), Ok(10 * 1024 * 1024));
        assert_eq!(size("512k"), Ok(512 * 1024));
        assert_eq!(size("1000"), Ok(1000));
        assert!(size("99999999999999999999M").is_err());
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("2d"), Ok(Duration::from_secs(172800)));
        assert!(duration("5 minutes").is_err());
        assert!(duration("").is_err());
    }

    #[test]
    fn local_domains_can_be_a_file() {
        let path = std::env::temp_dir().join(format!("postern-domains-{}", std::process::id()));
        std::fs::write(&path, "# ours\nA.example\n\nb.example   # the second\n").unwrap();
        let config = Config::parse(&format!("local_domains = {}\n", path.display()), "t").unwrap();
        assert_eq!(config.local_domains, ["a.example", "b.example"]);
        std::fs::write(&path, "a.example, b.example\n").unwrap();
        assert!(Config::parse(&format!("local_domains = {}\n", path.display()), "t").is_err());
        std::fs::remove_file(&path).unwrap();
        let e = Config::parse(&format!("local_domains = {}\n", path.display()), "t").unwrap_err();
        assert!(e.0.contains("No such file"), "{e}");
    }

    #[test]
    fn mailbox_transport_forms() {
        use crate::client::LmtpAddress;
        let transport =
            |v: &str| Config::parse(&format!("mailbox_transport = {v}\n"), "t").map(|c| c.mailbox_transport);
        assert_eq!(transport("maildir").unwrap(), None);
        assert_eq!(
            transport("lmtp:unix:/run/dovecot/lmtp").unwrap(),
            Some(LmtpAddress::Unix("/run/dovecot/lmtp".into()))
        );
        assert_eq!(transport("lmtp:127.0.0.1:24").unwrap(), Some(LmtpAddress::Inet("127.0.0.1".into(), 24)));
        assert_eq!(transport("lmtp:[::1]:2424").unwrap(), Some(LmtpAddress::Inet("::1".into(), 2424)));
        assert_eq!(transport("lmtp:dovecot.example").unwrap(), Some(LmtpAddress::Inet("dovecot.example".into(), 24)));
        for bad in ["lmtp:unix:run/lmtp", "smtp:x:25", "lmtp:", "lmtp:h:0", "lmtp:a b:24"] {
            assert!(transport(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn relayhost_forms() {
        assert_eq!(host_port("smtp.isp.example", 25), Ok(("smtp.isp.example".into(), 25)));
        assert_eq!(host_port("smtp.isp.example:587", 25), Ok(("smtp.isp.example".into(), 587)));
        assert_eq!(host_port("[127.0.0.1]:2525", 25), Ok(("127.0.0.1".into(), 2525)));
        assert_eq!(host_port("[::1]", 25), Ok(("::1".into(), 25)));
        assert!(host_port("[nonsense]:25", 25).is_err() && host_port("host:port", 25).is_err());
    }

    #[test]
    fn cidr_blocks() {
        let net = Cidr::parse("10.1.0.0/15").unwrap();
        assert!(net.contains("10.0.255.1".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("2001:db8::/32").unwrap().contains("2001:db8:1::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("192.0.2.1".parse().unwrap()));
    }
}
