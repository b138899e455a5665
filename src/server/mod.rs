//! The SMTP server's I/O edge: listeners, connection caps, one thread per session, deadlines, spooling DATA.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openssl::pkey::PKey;
use openssl::ssl::{SslAcceptor, SslMethod, SslSessionCacheMode};
use openssl::x509::X509;

use crate::auth::{Auth, Lockout, Logins, Senders};
use crate::config::{Config, Mode};
use crate::dns::{Resolve, Resolvers};
use crate::launch::Launcher;
use crate::message::{FieldFilter, HeaderScan, message_id};
use crate::milter::chain::{Chain, Connect, Verdict};
use crate::policy::{self, Authenticator, LocalPolicy, Policy};
use crate::session::Filter;
use crate::session::{Action, DataError, DataRequest, Input, MAX_HOPS, Session, SessionConfig, Step};
use crate::smtp::line::{DotReader, HopCounter, Line, LineBuffer, MAX_COMMAND_LINE, TextError};
use crate::smtp::reply::{EnhancedStatus, Reply};
use crate::spool::envelope::escape;
use crate::spool::{Draft, Envelope, QueueId, Spool, SpoolError};
use crate::{sys, trace};

mod conn;
mod greylist;
mod milters;
mod rate;
pub mod tls_files;

use crate::milter::draft::Fate;
use conn::{Conn, Transport, is_timeout};
use milters::Milters;

/// A session thread needs little stack: buffers live on the heap.
const THREAD_STACK: usize = 256 * 1024;
const READ_BUFFER: usize = 16 * 1024;
/// How long a session thread waits in accept() for its next session before it ends (unless
/// it is its listener's last).
const THREAD_LINGER: Duration = Duration::from_secs(10);

/// A listener and the session threads waiting in its accept().
struct Acceptor {
    listener: TcpListener,
    mode: Mode,
    /// Threads in accept() now.
    waiting: AtomicUsize,
    /// Held so that, with every other descriptor in use, one client at a time can still be
    /// accepted and told 421 rather than left waiting in the backlog with no greeting.
    spare: Mutex<Option<File>>,
}

/// What SIGHUP replaces: the configuration and what is made from it. A session takes the
/// one current when it starts and keeps it to its end.
pub struct Current {
    pub config: Config,
    session: SessionConfig,
    policy: LocalPolicy,
    tls: Option<SslAcceptor>,
    /// Who may log in on the submission ports, and as whom they may send.
    pub auth: Option<(Logins, Senders)>,
}

/// Loads `auth_users` and `auth_senders`, when `auth_users` is set.
pub fn load_auth(config: &Config) -> Result<Option<(Logins, Senders)>, String> {
    let Some(source) = &config.auth_users else { return Ok(None) };
    let users = Logins::load(source, config.command_timeout.min(std::time::Duration::from_secs(30)))
        .map_err(|e| format!("auth_users: {e}"))?;
    let senders = Senders::load(config).map_err(|e| format!("auth_senders: {e}"))?;
    Ok(Some((users, senders)))
}

impl Current {
    fn new(config: Config, policy: LocalPolicy, tls: Option<SslAcceptor>, auth: Option<(Logins, Senders)>) -> Current {
        let session = SessionConfig {
            hostname: config.hostname.clone(),
            message_size_limit: config.message_size_limit,
            max_recipients: config.max_recipients,
            hard_error_limit: config.hard_error_limit,
            soft_error_limit: config.soft_error_limit,
            junk_command_limit: config.junk_command_limit,
            vrfy: config.vrfy,
            expn: config.expn,
            tls_available: tls.is_some(),
            local_submission: false,
            submission: false,
            auth_plaintext: false,
        };
        Current { config, session, policy, tls, auth }
    }
}

/// Everything a session thread shares: configuration, policy, spool, connection counts.
pub struct Server {
    current: RwLock<Arc<Current>>,
    /// `sendmail -bs`: the one session is a local user's.
    local_submission: bool,
    spool: Spool,
    counts: Mutex<Counts>,
    /// Set once SIGTERM arrives: sessions say 421 and end.
    stopping: AtomicBool,
    /// The socket of every live TCP session, so shutdown can wake sessions blocked in a read.
    /// A descriptor, not a second handle: a session holds one descriptor for its socket. Its
    /// entry goes (with its `Slot`) before the socket is closed, so a number is never reused
    /// while it is still listed here.
    live: Mutex<HashMap<u64, RawFd>>,
    next_session: AtomicU64,
    /// Session threads alive, serving, lingering or waiting in accept(): when only one per
    /// listener is left (`acceptors`), memory goes back.
    session_threads: AtomicUsize,
    acceptors: AtomicUsize,
    /// Instant delivery of each committed message, unless it is off.
    launcher: Option<Arc<Launcher>>,
    tls_keeper: Option<tls_files::Keeper>,
    /// Failed logins by address; kept across reloads.
    lockout: Lockout,
    /// Connections and MAIL commands by address this minute (`max_connection_rate`,
    /// `max_message_rate`); kept across reloads.
    connection_rates: rate::Rates,
    message_rates: rate::Rates,
    /// `spool/greylist`, opened when `greylist` is first on.
    greylist: std::sync::OnceLock<Option<greylist::GreylistFile>>,
    /// Where the checks ask DNS (client names, SPF); postern-smtpd sets it
    /// (`dns::ResolverPool`), and a program that serves only pipes (`sendmail -bs`) leaves it
    /// out, and the resolver with it.
    dns: Option<Box<dyn Resolvers>>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it (even while a panic unwinds) frees the slot.
pub struct Slot {
    server: Arc<Server>,
    ip: IpAddr,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.server.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
        let mut counts = self.server.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

/// The TLS files a configuration names, the credentials systemd passed taking their place
/// (`LoadCredential=tls_cert:...`); `None` without TLS.
pub fn tls_paths(config: &Config) -> Option<(PathBuf, PathBuf)> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else { return None };
    let credential = |name: &str, configured: &Path| {
        let passed = std::env::var_os("CREDENTIALS_DIRECTORY").map(|d| Path::new(&d).join(name));
        passed.filter(|p| p.exists()).unwrap_or_else(|| configured.to_path_buf())
    };
    Some((credential("tls_cert", cert), credential("tls_key", key)))
}

/// Loads `tls_cert` (PEM, the server's certificate first, then its chain) and `tls_key` (PEM:
/// PKCS#8, PKCS#1 RSA or SEC1 EC), read by this process, into an acceptor offering TLS 1.3 and
/// 1.2 with the ciphers of today's intermediate profile (RFC 8996: nothing older than 1.2).
///
/// Under systemd with `LoadCredential=tls_cert:...` and `LoadCredential=tls_key:...`, the
/// copies systemd passes in `$CREDENTIALS_DIRECTORY` are read instead of the configured paths,
/// so the key can stay readable by root alone while the service runs as its own user.
pub fn load_tls(config: &Config) -> Result<Option<SslAcceptor>, String> {
    let Some((cert, key)) = tls_paths(config) else { return Ok(None) };
    for (name, used, configured) in [("tls_cert", &cert, &config.tls_cert), ("tls_key", &key, &config.tls_key)] {
        if Some(used) != configured.as_ref() {
            log::info!("{name}: the credential systemd passed ({}), not the configured file", used.display());
        }
    }
    let pem = tls_files::read_both(&cert, &key)?;
    tls_from_pem(&cert, &key, &pem).map(Some)
}

/// A TLS context from the certificate chain (leaf first) and the key, as PEM text.
fn tls_from_pem(cert: &Path, key: &Path, pem: &tls_files::Pem) -> Result<SslAcceptor, String> {
    let mut builder =
        SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(|e| format!("TLS setup: {e}"))?;
    let chain =
        X509::stack_from_pem(&pem.cert).map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?;
    let mut chain = chain.into_iter();
    let leaf = chain.next().ok_or(format!("{}: not a PEM certificate chain: no certificate in it", cert.display()))?;
    builder.set_certificate(&leaf).map_err(|e| format!("{}: {e}", cert.display()))?;
    for extra in chain {
        builder.add_extra_chain_cert(extra).map_err(|e| format!("{}: {e}", cert.display()))?;
    }
    let pkey = PKey::private_key_from_pem(&pem.key)
        .map_err(|e| format!("{}: not a PEM private key (PKCS#8, RSA or EC): {e}", key.display()))?;
    builder.set_private_key(&pkey).map_err(|_| format!("{} does not match {}", key.display(), cert.display()))?;
    builder.check_private_key().map_err(|_| format!("{} does not match {}", key.display(), cert.display()))?;
    // A returning client resumes with a ticket (RFC 8446 §4.6.1, RFC 5077), encrypted under a
    // key this acceptor made, so valid until a reload or restart and for two hours at most
    // (OpenSSL's session lifetime). Nothing is kept per client here: no server-side session
    // cache, whose thousands of entries would stay in memory; one ticket, not OpenSSL's two,
    // as a client of ours resumes its next connection only.
    builder.set_session_cache_mode(SslSessionCacheMode::OFF);
    builder.set_num_tickets(1).map_err(|e| format!("TLS setup: {e}"))?;
    Ok(builder.build())
}

impl Server {
    pub fn new(
        config: Config,
        policy: LocalPolicy,
        spool: Spool,
        tls: Option<SslAcceptor>,
        auth: Option<(Logins, Senders)>,
    ) -> Server {
        let lockout = Lockout::new(config.auth_failure_limit, config.auth_lockout_time);
        Server {
            lockout,
            connection_rates: rate::Rates::default(),
            message_rates: rate::Rates::default(),
            greylist: std::sync::OnceLock::new(),
            dns: None,
            current: RwLock::new(Arc::new(Current::new(config, policy, tls, auth))),
            local_submission: false,
            spool,
            counts: Mutex::new(Counts::default()),
            stopping: AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(0),
            session_threads: AtomicUsize::new(0),
            acceptors: AtomicUsize::new(0),
            launcher: None,
            tls_keeper: None,
        }
    }

    /// The configuration, policy and TLS settings in force now.
    pub fn current(&self) -> Arc<Current> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// SIGHUP: the new configuration, with its aliases and mailboxes (loaded by the caller),
    /// for every session from now on; open sessions finish under the old one. TLS files
    /// that cannot be read now keep the old ones. A configuration that changes what cannot
    /// change while the server runs (`listen`, `spool`, `user`) is refused whole, and the one
    /// in use kept: half of it would strand the mail written to the old spool. Returns what
    /// the operator should know, or why nothing changed.
    pub fn reload(&self, config: Config, policy: LocalPolicy) -> Result<Vec<String>, String> {
        let old = self.current();
        let fixed: Vec<&str> = [
            ("listen", old.config.listen == config.listen),
            ("spool", old.config.spool == config.spool),
            ("user", old.config.user == config.user),
        ]
        .into_iter()
        .filter_map(|(key, same)| (!same).then_some(key))
        .collect();
        if !fixed.is_empty() {
            return Err(format!("{} changed, which takes a restart", fixed.join(", ")));
        }
        let mut notes = Vec::new();
        let tls = match self.reload_tls(&config) {
            Ok(tls) => tls,
            Err(e) => {
                notes.push(format!("TLS files not reloaded ({e}); the ones loaded before stay in use"));
                old.tls.clone()
            }
        };
        let auth = match load_auth(&config) {
            Ok(auth) => auth,
            Err(e) => {
                notes.push(format!("{e}; the users loaded before stay in use"));
                old.auth.clone()
            }
        };
        for (key, same) in [
            ("auth_failure_limit", old.config.auth_failure_limit == config.auth_failure_limit),
            ("auth_lockout_time", old.config.auth_lockout_time == config.auth_lockout_time),
        ] {
            if !same {
                notes.push(format!("{key} changed: that takes a restart"));
            }
        }
        if let Some(launcher) = &self.launcher {
            launcher.reconfigure(&config);
            // What instant delivery could not deliver (a configuration that did not load)
            // is delivered now that one does.
            launcher.deliver_owed();
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Current::new(config, policy, tls, auth));
        Ok(notes)
    }

    /// The TLS files again: through the keeper that kept root when the files are the ones it
    /// reads, else read by this process.
    fn reload_tls(&self, config: &Config) -> Result<Option<SslAcceptor>, String> {
        match (tls_paths(config), &self.tls_keeper) {
            (Some((cert, key)), Some(keeper)) if keeper.cert == cert && keeper.key == key => {
                tls_from_pem(&cert, &key, &keeper.read()?).map(Some)
            }
            _ => load_tls(config),
        }
    }

    /// A reload reads the TLS files through `keeper` (a process that kept root).
    pub fn with_tls_keeper(mut self, keeper: Option<tls_files::Keeper>) -> Server {
        self.tls_keeper = keeper;
        self
    }

    /// The checks ask DNS through `dns`: client names (forward-confirmed), SPF.
    pub fn with_resolvers(mut self, dns: Box<dyn Resolvers>) -> Server {
        self.dns = Some(dns);
        self
    }

    /// Each message committed from now on is delivered at once by `launcher`.
    pub fn with_launcher(mut self, launcher: Option<Arc<Launcher>>) -> Server {
        self.launcher = launcher;
        self
    }

    /// Accepts on every listener until the process ends. Each listener has threads waiting in
    /// its accept() (leader/followers): the kernel wakes one per connection, and that thread
    /// serves it itself, once it has made sure another waits in accept() meanwhile. No
    /// connection is handed from one thread to another.
    pub fn serve(self: Arc<Self>, listeners: Vec<(TcpListener, Mode)>) {
        self.acceptors.store(listeners.len(), Ordering::SeqCst);
        for (listener, mode) in listeners {
            // Blocking, whatever a socket passed by systemd was made (NonBlocking=). accept()
            // gives up after THREAD_LINGER without a client, so that a thread with nothing to
            // do can end (not the listener's last). An accepted socket inherits the timeout;
            // its session's first read sets its own (`serve_tcp`).
            let _ = listener.set_nonblocking(false);
            if let Err(e) = socket2::SockRef::from(&listener).set_read_timeout(Some(THREAD_LINGER)) {
                log::warn!("listener: cannot set its accept timeout: {e}; idle session threads stay");
            }
            let spare = Mutex::new(File::open("/dev/null").ok());
            let acceptor = Arc::new(Acceptor { listener, mode, waiting: AtomicUsize::new(0), spare });
            if let Err(e) = self.spawn_acceptor(&acceptor) {
                log::error!("cannot start a thread to accept connections: {e}");
            }
        }
        // What starting up allocated and freed (the configuration, the spool's repair) goes
        // back as well, once no session is open.
        self.give_memory_back_soon();
        loop {
            thread::park();
        }
    }

    fn spawn_acceptor(self: &Arc<Self>, acceptor: &Arc<Acceptor>) -> io::Result<()> {
        let (server, acceptor) = (Arc::clone(self), Arc::clone(acceptor));
        thread::Builder::new()
            .name("smtp".into())
            .stack_size(THREAD_STACK)
            .spawn(move || server.accept_loop(&acceptor))
            .map(drop)
    }

    /// A session thread: waits in accept() and serves each connection it accepts, one at a
    /// time, until it has waited THREAD_LINGER for none while another thread waits too. The
    /// listener's last thread ends then too, once it has served a session, with a new one in
    /// its place: what the sessions wrote on its stack goes back with it.
    fn accept_loop(self: &Arc<Self>, acceptor: &Arc<Acceptor>) {
        self.session_threads.fetch_add(1, Ordering::SeqCst);
        let mut backoff = Duration::from_millis(10);
        let mut served = false;
        loop {
            acceptor.waiting.fetch_add(1, Ordering::SeqCst);
            let accepted = acceptor.listener.accept();
            // The threads still waiting in accept() besides this one.
            let others = acceptor.waiting.fetch_sub(1, Ordering::SeqCst) - 1;
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(10);
                    if others == 0
                        && let Err(e) = self.spawn_acceptor(acceptor)
                    {
                        // This thread goes back to accept() instead of serving.
                        log::warn!("cannot start a session thread: {e}");
                        let reply = Reply::too_many_connections(&self.current().config.hostname);
                        refuse_connection(stream, &reply, peer.ip().to_canonical());
                        continue;
                    }
                    served = true;
                    self.admit(stream, peer, acceptor.mode);
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if others > 0 || (served && self.spawn_acceptor(acceptor).is_ok()) {
                        break;
                    }
                }
                Err(e) if is_resource_shortage(&e) => {
                    let mut spare = acceptor.spare.lock().unwrap_or_else(|e| e.into_inner());
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) && spare.is_some() {
                        drop(spare.take()); // frees one descriptor for the accept below
                        if let Ok((stream, peer)) = acceptor.listener.accept() {
                            let reply = Reply::too_many_connections(&self.current().config.hostname);
                            refuse_connection(stream, &reply, peer.ip().to_canonical());
                        }
                        log::warn!("accept: {e}; a client was told 421");
                        *spare = File::open("/dev/null").ok();
                        if spare.is_some() {
                            continue;
                        }
                    } else {
                        // No spare either: wait for descriptors to come back instead of spinning.
                        log::warn!("accept: {e}; pausing {} ms", backoff.as_millis());
                    }
                    drop(spare);
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    let mut spare = acceptor.spare.lock().unwrap_or_else(|e| e.into_inner());
                    if spare.is_none() {
                        *spare = File::open("/dev/null").ok();
                    }
                }
                Err(e) => log::debug!("accept: {e}"),
            }
        }
        let left = self.session_threads.fetch_sub(1, Ordering::SeqCst) - 1;
        if left <= self.acceptors.load(Ordering::SeqCst) {
            self.give_memory_back_soon();
        }
    }

    /// Serves an accepted connection on this thread, within the limits on connections.
    fn admit(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr, mode: Mode) {
        let ip = peer.ip().to_canonical(); // IPv4-mapped IPv6 (dual stack) as IPv4
        let slot = match self.take_slot(ip) {
            Ok(slot) => slot,
            Err(reply) => return refuse_connection(stream, &reply, ip),
        };
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(slot.id, stream.as_raw_fd());
        self.serve_tcp(stream, ip, slot, mode);
    }

    /// After a burst of sessions, a moment after the last of their threads has ended (from
    /// that thread itself, the trim released almost nothing, as measured): what the
    /// allocator kept of their buffers goes back to the system, and so does the room the
    /// table of live sessions grew to, unless sessions began again meanwhile. A daemon that
    /// served thousands of clients an hour ago holds what it holds idle, not what it held then.
    /// Also called as the daemon begins to serve.
    fn give_memory_back_soon(self: &Arc<Self>) {
        let server = Arc::clone(self);
        let _ = thread::Builder::new().name("trim".into()).stack_size(64 * 1024).spawn(move || {
            thread::sleep(Duration::from_secs(2));
            if server.session_threads.load(Ordering::SeqCst) > server.acceptors.load(Ordering::SeqCst) {
                return;
            }
            {
                let mut live = server.live.lock().unwrap_or_else(|e| e.into_inner());
                if live.is_empty() {
                    live.shrink_to_fit();
                }
            }
            sys::release_free_memory();
        });
    }

    fn take_slot(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Reply> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.current();
        if counts.total >= cur.config.max_connections {
            return Err(Reply::too_many_connections(&cur.config.hostname));
        }
        let from_ip = counts.per_ip.entry(ip).or_insert(0);
        if *from_ip >= cur.config.max_per_ip {
            return Err(Reply::too_many_connections_from(&cur.config.hostname, &ip.to_string()));
        }
        let limit = cur.config.max_connection_rate;
        if limit > 0 && !cur.policy.is_trusted(Some(ip)) {
            let rate = self.connection_rates.hit(ip, Instant::now());
            if rate > limit {
                log::warn!("Connection rate limit exceeded: {rate} from [{ip}] within a minute");
                return Err(Reply::too_many_connections_from(&cur.config.hostname, &ip.to_string()));
            }
        }
        *from_ip += 1;
        counts.total += 1;
        Ok(Slot { server: Arc::clone(self), ip, id: self.next_session.fetch_add(1, Ordering::Relaxed) })
    }

    /// Graceful stop (SIGTERM): every session still open hears `421 4.3.2` and ends; a message
    /// whose final dot has not arrived is not queued. Returns when all have ended or `grace` passed.
    pub fn shut_down(&self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        for fd in self.live.lock().unwrap_or_else(|e| e.into_inner()).values() {
            // Wakes a session blocked in a read with end-of-input; its reply can still be written.
            sys::shutdown_read(*fd);
        }
        let deadline = later(Instant::now(), grace);
        while Instant::now() < deadline && self.counts.lock().map_or(0, |c| c.total) > 0 {
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn serve_tcp(&self, stream: TcpStream, ip: IpAddr, slot: Slot, mode: Mode) {
        if self.stopping.load(Ordering::SeqCst) {
            let _ = stream.shutdown(Shutdown::Read);
        }
        let _ = stream.set_nodelay(true);
        let cur = self.current();
        let _ = stream.set_write_timeout(Some(cur.config.command_timeout));
        let mut conn = Conn::new(Transport::Tcp(stream));
        // What the socket inherited from its listener (`serve`), for its first read to replace.
        conn.read_timeout = Some(THREAD_LINGER);
        // Declared after `conn`, so dropped before it, even while a panic unwinds: the live
        // entry goes before the socket is closed.
        let _slot = slot;
        self.run_session(&cur, &mut conn, Some(ip), mode);
    }

    /// One session on standard input and output (inetd, systemd `Accept=yes`), served as `mode`.
    pub fn serve_inetd(&self, mode: Mode) {
        let cur = self.current();
        if sys::is_socket(0) {
            let stream = sys::stream_from_stdin();
            let ip = stream.peer_addr().ok().map(|a| a.ip().to_canonical());
            let _ = stream.set_write_timeout(Some(cur.config.command_timeout));
            self.run_session(&cur, &mut Conn::new(Transport::Tcp(stream)), ip, mode);
        } else {
            // A pipe: the peer is unknown, so it is never trusted.
            let input = dup_std(0);
            let output = dup_std(1);
            match (input, output) {
                (Ok(input), Ok(output)) => {
                    self.run_session(&cur, &mut Conn::new(Transport::Pipe { input, output }), None, mode)
                }
                _ => log::error!("inetd mode: cannot use standard input and output"),
            }
        }
    }

    /// `sendmail -bs`: one session with the local user who ran it, on standard input and
    /// output whatever they are (a socket there says nothing about who is at the other end,
    /// so its peer address is not used and STARTTLS is not offered).
    pub fn serve_local_user(mut self) {
        self.local_submission = true;
        let cur = self.current();
        match (dup_std(0), dup_std(1)) {
            (Ok(input), Ok(output)) => {
                self.run_session(&cur, &mut Conn::new(Transport::Pipe { input, output }), None, Mode::Mta)
            }
            _ => log::error!("-bs: cannot use standard input and output"),
        }
    }

    /// One session, with the configuration it started with (`cur`) to its end, whatever
    /// SIGHUP brings meanwhile: one host name from the greeting to the `Received:` field.
    fn run_session(&self, cur: &Current, conn: &mut Conn, client: Option<IpAddr>, mode: Mode) {
        // TLS needs a socket; a pipe session is not offered STARTTLS.
        let pipe = matches!(conn.transport, Transport::Pipe { .. });
        let resolver = self.dns.as_ref().map(|d| d.resolver(&cur.config));
        let resolver: Option<&dyn Resolve> = resolver.as_deref();
        let name = match client {
            Some(ip) if !pipe => policy::client_name(&cur.config, resolver, ip),
            _ => None,
        };
        let name = name.as_deref();
        let peer = client_name(client, name);
        log::info!("connect from {peer}");
        let session_config = SessionConfig {
            tls_available: cur.session.tls_available && !pipe,
            local_submission: pipe && self.local_submission,
            submission: mode != Mode::Mta,
            auth_plaintext: cur.config.auth_plaintext_loopback && client.is_some_and(|ip| ip.is_loopback()),
            ..cur.session.clone()
        };
        let mut lines = LineBuffer::new(READ_BUFFER);
        if mode == Mode::Smtps {
            // RFC 8314 §3.3: TLS from the first byte, before the greeting.
            if let Err(e) = self.start_tls(cur, conn, &mut lines) {
                log::info!("TLS handshake with {peer} failed: {e}");
                conn.shutdown();
                log::info!("disconnect from {peer}");
                return;
            }
        }
        // Postscreen's pregreet test, on MTA listeners for clients not trusted: RFC 5321 §3.1
        // and §4.3.1, the client waits for the greeting; a bot that talks first is turned away.
        let pause = cur.config.greet_pause;
        if mode == Mode::Mta && !pipe && !pause.is_zero() && !cur.policy.is_trusted(client) {
            let started = Instant::now();
            if let Some(early) = talks_first(conn, pause) {
                let after = started.elapsed().as_secs_f64();
                match early.is_empty() {
                    true => log::info!("HANGUP after {after:.1} from {peer} before the greeting"),
                    false => {
                        let text: String =
                            early.iter().flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect();
                        log::info!("PREGREET {} after {after:.1} from {peer}: {text}", early.len());
                        let _ = conn.queue(&Reply::new(521, EnhancedStatus::new(5, 5, 1), "Protocol error"));
                        let _ = conn.flush();
                    }
                }
                conn.shutdown();
                log::info!("disconnect from {peer}");
                return;
            }
        }
        let auth = cur.auth.as_ref().map(|(users, senders)| Auth { users, senders, lockout: &self.lockout });
        let milters = self.connect_milters(cur, conn, (client, name), session_config.local_submission);
        if let Some((_, Verdict::Refuse(reply))) = &milters {
            log::info!("NOQUEUE: milter-reject: CONNECT from {peer}: {}; proto=SMTP", reply.summary());
        }
        // `max_message_rate`: MAIL commands of this address this minute (not trusted ones).
        let over_rate = |ip: IpAddr| {
            let limit = cur.config.max_message_rate;
            limit > 0 && self.message_rates.hit(ip, Instant::now()) > limit
        };
        let blocked = match client {
            Some(ip)
                if mode == Mode::Mta && !pipe && !cur.config.dnsbl.is_empty() && !cur.policy.is_trusted(client) =>
            {
                self.block_lists(cur, ip, &peer)
            }
            _ => None,
        };
        let greylist = match cur.config.greylist && mode == Mode::Mta && !pipe {
            true => self.greylist_file(),
            false => None,
        };
        let may_pass = |key: &str| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            greylist.is_none_or(|g| g.attempt(key, now, cur.config.greylist_delay.as_secs()))
        };
        let (mut session, mut step) = Session::new(&session_config, &cur.policy, client);
        if greylist.is_some() {
            session = session.with_greylist(&may_pass);
        }
        if let Some(reply) = blocked {
            session = session.with_blocked(reply);
        }
        if cur.config.max_message_rate > 0 {
            session = session.with_message_rate(&over_rate);
        }
        if let Some((m, verdict)) = &milters {
            session = session.with_filter(m, verdict.clone());
        }
        let milters = milters.as_ref().map(|(m, _)| m);
        if let Some(auth) = &auth {
            session = session.with_authenticator(auth);
        }
        if mode == Mode::Smtps {
            session = session.tls_from_start();
        }
        if let Some(dns) = resolver {
            session = session.with_dns(dns);
        }
        loop {
            if let Some(reply) = &step.reply {
                if step.delay {
                    thread::sleep(cur.config.error_sleep_time);
                }
                if conn.queue(reply).is_err() {
                    break;
                }
            }
            step = match step.action {
                Action::ReadLine => match self.read_command(cur, conn, &mut lines, session.line_limit()) {
                    Some(Ok(line)) => {
                        let step = session.handle(Input::Line(&line));
                        if let Some(e) = session.take_auth_event() {
                            match e.ok {
                                true => {
                                    log::info!("{peer}: sasl_method={}, sasl_username={}", e.mechanism, escape(&e.user))
                                }
                                false => log::warn!(
                                    "{peer}: SASL {} authentication failed, sasl_username={}",
                                    e.mechanism,
                                    escape(&e.user)
                                ),
                            }
                        }
                        if let Some(r) = session.take_rejection() {
                            // Postfix's shape, which log summarisers count.
                            let to = r.to.map_or(String::new(), |to| format!(" to={to}"));
                            log::info!(
                                "NOQUEUE: {}: {} from {peer}: {}; from={}{to} proto={} helo=<{}>",
                                if r.milter { "milter-reject" } else { "reject" },
                                r.stage,
                                r.reply.summary(),
                                r.from,
                                r.protocol,
                                r.helo
                            );
                        }
                        step
                    }
                    Some(Err(input)) => session.handle(input),
                    None => self.stopped_or_gone(cur),
                },
                Action::ReceiveData(request) => {
                    let peer = (client, name);
                    let received =
                        self.receive(cur, conn, &mut lines, &request, peer, (auth.as_ref(), resolver, milters));
                    if let Some(m) = milters {
                        m.abort(); // for milters the message did not reach (refused before its end)
                    }
                    match received {
                        Received::Done(result) => session.handle(Input::DataEnd(result)),
                        Received::TimedOut => session.handle(Input::Timeout),
                        Received::Lost => self.stopped_or_gone(cur),
                    }
                }
                Action::StartTls => match self.start_tls(cur, conn, &mut lines) {
                    Ok(()) => {
                        if let Some(m) = milters {
                            *m.tls_version.borrow_mut() = conn.tls_version();
                        }
                        session.handle(Input::TlsStarted)
                    }
                    Err(e) => {
                        log::info!("TLS handshake with {peer} failed: {e}");
                        break;
                    }
                },
                Action::Close => {
                    let _ = conn.flush();
                    break;
                }
            };
        }
        conn.shutdown();
        log::info!("disconnect from {peer}");
    }

    /// The greylist's file, opened on first use; `None` (logged) when it cannot be.
    fn greylist_file(&self) -> Option<&greylist::GreylistFile> {
        self.greylist
            .get_or_init(|| match greylist::GreylistFile::open(self.spool.root()) {
                Ok(file) => Some(file),
                Err(e) => {
                    log::error!("{}/{}: {e}; no greylisting", self.spool.root().display(), greylist::FILE);
                    None
                }
            })
            .as_ref()
    }

    /// What the block and allow lists (`dnsbl`) say of a client: the refusal its RCPTs get
    /// when its score reaches `dnsbl_threshold`. Every list is asked at once, all within
    /// `dnsbl_timeout`; their answers are kept for their TTL by the resolver pool.
    fn block_lists(&self, cur: &Current, ip: IpAddr, peer: &str) -> Option<Reply> {
        let config = &cur.config;
        let dns = self.dns.as_ref()?;
        let until = later(Instant::now(), config.dnsbl_timeout);
        let resolver = || dns.resolver(config);
        let said = policy::dnsbl::ask(&config.dnsbl, ip, &resolver, until);
        for (list, said) in config.dnsbl.iter().zip(&said) {
            if let policy::dnsbl::Said::ErrorCode(code) = said
                && !DNSBL_ERROR_SAID.swap(true, Ordering::Relaxed)
            {
                log::warn!(
                    "dnsbl: {} answered {code} about {peer}: an error code, not a listing, counted as none                      (Spamhaus answers so to a public resolver: set dns_servers to a resolver of your own)",
                    list.zone
                );
            }
        }
        let score = policy::dnsbl::score(&config.dnsbl, &said);
        if score.score == 0 {
            return None;
        }
        log::info!("{peer}: dnsbl score {} ({})", score.score, score.blocked_by.join(", "));
        score.refusal(ip, config.dnsbl_threshold)
    }

    /// The session's milters (`milters`, or `non_smtpd_milters` for a `sendmail -bs`
    /// session), told of the client; `None` when there are none.
    fn connect_milters(
        &self,
        cur: &Current,
        conn: &Conn,
        (client, name): (Option<IpAddr>, Option<&str>),
        local: bool,
    ) -> Option<(Milters, Verdict)> {
        let config = &cur.config;
        let list = if local { &config.non_smtpd_milters } else { &config.milters };
        // A local user's session that drops its messages into maildrop/ leaves them to the
        // pickup, which asks the same milters.
        if list.is_empty() || (local && self.spool.drops()) {
            return None;
        }
        let mut chain = Chain::new(list, config.milter_timeout, config.milter_default_action);
        let peer = client.map(|ip| (ip, conn.peer_port().unwrap_or(0)));
        let daemon = if local { "postern-sendmail" } else { "postern-smtpd" };
        let connect = Connect { hostname: &config.hostname, client_name: name, peer, daemon };
        let verdict = chain.connect(&connect, later(Instant::now(), config.command_timeout));
        let tls_version = std::cell::RefCell::new(conn.tls_version());
        let milters = Milters { chain: std::cell::RefCell::new(chain), step_time: config.command_timeout, tls_version };
        Some((milters, verdict))
    }

    /// The input ended: the peer left, or shutdown woke the session. In the latter case the
    /// client hears why (RFC 5321 §3.8: 421, then close).
    fn stopped_or_gone(&self, cur: &Current) -> Step {
        let reply = self.stopping.load(Ordering::SeqCst).then(|| Reply::shutting_down(&cur.config.hostname));
        Step { reply, action: Action::Close, delay: false }
    }

    /// RFC 3207 §4.2: plaintext read along with STARTTLS is thrown away, never acted on.
    /// The handshake has its own deadline, so a stalled client cannot hold the thread.
    fn start_tls(&self, cur: &Current, conn: &mut Conn, lines: &mut LineBuffer) -> Result<(), String> {
        conn.flush().map_err(|e| e.to_string())?;
        lines.clear();
        let acceptor = cur.tls.as_ref().ok_or("no TLS configured")?;
        let Transport::Tcp(stream) = std::mem::replace(&mut conn.transport, Transport::Closed) else {
            return Err("TLS over a pipe".into());
        };
        let timeout = Some(cur.config.starttls_timeout);
        stream.set_read_timeout(timeout).and_then(|()| stream.set_write_timeout(timeout)).map_err(|e| e.to_string())?;
        let tls = acceptor.accept(stream).map_err(|e| match e {
            openssl::ssl::HandshakeError::WouldBlock(_) => "timed out".to_string(),
            other => other.to_string(),
        })?;
        let _ = tls.get_ref().set_write_timeout(Some(cur.config.command_timeout));
        conn.transport = Transport::Tls(Box::new(tls));
        conn.read_timeout = timeout;
        Ok(())
    }

    /// One command line, or the input that stands for what happened instead; `None` when the peer is gone.
    fn read_command(
        &self,
        cur: &Current,
        conn: &mut Conn,
        lines: &mut LineBuffer,
        limit: usize,
    ) -> Option<Result<Vec<u8>, Input<'static>>> {
        conn.deadline = Some(later(Instant::now(), cur.config.command_timeout));
        match lines.read_line(conn, limit) {
            Ok(Line::Complete(line)) => Some(Ok(line)),
            Ok(Line::TooLong) if limit > MAX_COMMAND_LINE => Some(Err(Input::ResponseTooLong)),
            Ok(Line::TooLong) => Some(Err(Input::LineTooLong)),
            Ok(Line::BareLf) => Some(Err(Input::BareLf)),
            Ok(Line::Eof) => None,
            Err(e) if is_timeout(&e) => Some(Err(Input::Timeout)),
            Err(_) => None,
        }
    }

    /// Reads the message text to the final dot, streaming it into a spool draft,
    /// and commits it when nothing is wrong. Memory stays bounded whatever the size.
    /// `auth` checks a logged-in user's `From:`; `dns` answers the checks that read a
    /// stranger's message.
    fn receive(
        &self,
        cur: &Current,
        conn: &mut Conn,
        lines: &mut LineBuffer,
        req: &DataRequest,
        (client, name): (Option<IpAddr>, Option<&str>),
        (auth, dns, milters): (Option<&Auth<'_>>, Option<&dyn Resolve>, Option<&Milters>),
    ) -> Received {
        let started = Instant::now();
        let arrived = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut checks =
            dns.and_then(|dns| Some((policy::MessageChecks::new(&cur.config, &req.findings, arrived)?, dns)));
        let mut envelope = None;
        let mut draft = self.spool.draft().and_then(|mut d| {
            let tls = conn.tls_summary();
            let (e, header) = envelope_and_trace(cur, req, (client, name), arrived, d.id(), tls, checks.is_none());
            d.begin(&e)?;
            d.write(header.as_bytes())?;
            envelope = Some(e);
            Ok((d, header.len() as u64))
        });
        let mut reader = DotReader::new(req.max_size);
        // RFC 8601 §5: an Authentication-Results: field under our name is not the client's to write.
        let hostname = cur.config.hostname.as_str();
        let mut forged =
            FieldFilter::new("authentication-results", |value: &[u8]| policy::authres::names_us(value, hostname));
        let mut text = Vec::with_capacity(READ_BUFFER);
        // What of the message text went into the draft, after the filter.
        let mut passed = 0u64;
        let mut hops = HopCounter::default();
        let mut head = HeaderScan::new(crate::message::MAX_HEADER_SECTION);
        let mut out = Vec::with_capacity(READ_BUFFER);
        // Submitted mail is held back until its header is known, so that a missing Date: or
        // Message-ID: can go in front of it (RFC 6409 §8); at most the header scan's cap.
        let mut held: Option<Vec<u8>> = req.submitted.then(Vec::new);
        let mut added = 0u64;
        let write = |draft: &mut Result<(Draft<'_>, u64), SpoolError>, bytes: &[u8]| {
            if let Ok((d, _)) = draft
                && let Err(e) = d.write(bytes)
            {
                *draft = Err(e);
            }
        };
        loop {
            // The deadline grows with the bytes received: a slow trickle is cut off.
            let allowance = Duration::from_secs(reader.size() / cur.config.min_data_rate.max(1));
            conn.deadline = Some(later(started, cur.config.data_timeout.saturating_add(allowance)));
            if lines.buffered().is_empty() {
                match lines.fill(conn) {
                    Ok(0) => return Received::Lost, // §4.1.1.10: no dot, no message
                    Ok(_) => {}
                    Err(e) if is_timeout(&e) => return Received::TimedOut,
                    Err(_) => return Received::Lost,
                }
            }
            let (used, done) = reader.feed(lines.buffered(), &mut text);
            lines.consume(used);
            forged.feed(&text, &mut out);
            if done {
                forged.finish(&mut out);
            }
            text.clear();
            passed += out.len() as u64;
            hops.scan(&out);
            let taken = head.feed(&out);
            if let Some((checks, _)) = &mut checks {
                checks.feed(&head, &out[taken..]);
            }
            match &mut held {
                Some(h) => h.extend_from_slice(&out),
                None => write(&mut draft, &out),
            }
            out.clear();
            if held.is_some() && (head.is_done() || done) {
                let id = draft.as_ref().map_or(String::new(), |(d, _)| d.id().to_string());
                let fields = crate::message::missing_fields(&head.headers(), arrived, &id, &cur.config.hostname);
                added = fields.len() as u64;
                write(&mut draft, fields.as_bytes());
                write(&mut draft, &held.take().unwrap_or_default());
            }
            if done {
                break;
            }
        }
        let header_len = draft.as_ref().map_or(0, |(_, h)| *h) + added;
        let written = header_len + passed;
        let removed = forged.removed() as u64;
        let auth = auth.map(|a| a as &dyn Authenticator);
        // Parsed once for every reader of the header section below.
        let headers = head.headers();
        let not_owned = policy::check_message(req.user.as_deref(), auth, &headers).err().map(DataError::Refused);
        let refused = match reader.error() {
            Some(TextError::BareLineEnding) => Some(DataError::BareLineEnding),
            Some(TextError::TooBig) => Some(DataError::TooBig),
            None if hops.hops() >= MAX_HOPS => Some(DataError::TooManyHops),
            // Mail of ours may be signed as it leaves: every field of its header is checked,
            // so a header section larger than the check reads is refused, not waved through.
            None if req.submitted && head.overflowed() => Some(DataError::HeaderTooLarge),
            // RFC 6409 §8.1: the submission server may refuse a From: the user does not own.
            None => not_owned,
        };
        let mut size = written;
        let mut verdict = None;
        let mut fate_note = None;
        let result = match (refused, draft, envelope) {
            (Some(e), _, _) => Err(e),
            (None, Err(e), _) => Err(storage_error(&e)),
            (None, Ok(_), None) => Err(DataError::WriteFailed),
            (None, Ok((mut d, _)), Some(mut e)) => {
                // After the final dot, the checks that read the message (RFC 6376 §6, RFC
                // 7489 §6.6): what they found goes on top, or the message is refused.
                verdict = checks.map(|(checks, dns)| {
                    let until = later(Instant::now(), cur.config.spf_timeout);
                    checks.finish((&head, &headers), &req.findings, dns, until, policy::pct_roll())
                });
                let on_top = match &verdict {
                    Some(v) => match &v.refusal {
                        Some(refusal) => Err(DataError::Refused(refusal.clone())),
                        None => {
                            let fields = v.fields(&req.findings, &cur.config.hostname);
                            e.quarantine = v.quarantine;
                            d.put_on_top(&e, fields.as_bytes()).map_err(|e| storage_error(&e))
                        }
                    },
                    None => Ok(()),
                };
                // Then the milters, which see it as it will be queued, and whose changes
                // are made before the commit.
                let fate = on_top.and_then(|()| match milters {
                    _ if req.discard => Ok(Fate::Discard("milter triggers DISCARD action")),
                    Some(m) if m.chain.borrow().wants_message() => {
                        // RFC 5321 §4.5.3.2.6: the client waits 10 minutes for the reply.
                        let deadline = later(Instant::now(), Duration::from_secs(600));
                        let mut chain = m.chain.borrow_mut();
                        crate::milter::draft::end_of_message(&mut chain, &mut d, e, req.max_size, deadline)
                            .map_err(|e| storage_error(&e))
                    }
                    _ => Ok(Fate::Queue),
                });
                size = d.message_len();
                match fate {
                    Err(e) => Err(e),
                    Ok(Fate::Queue) => d.commit(size).map_err(|e| storage_error(&e)),
                    Ok(Fate::Hold(reason)) => {
                        fate_note = Some(("milter-hold", format!("milter triggers HOLD action: {reason}")));
                        d.commit_held(size).map_err(|e| storage_error(&e))
                    }
                    Ok(Fate::Discard(why)) => {
                        fate_note = Some(("milter-discard", why.to_string()));
                        Ok(d.id().clone())
                    }
                    Ok(Fate::Refuse(reply)) => Err(DataError::Filtered(reply)),
                }
            }
        };
        if removed > 0
            && let Ok(id) = &result
        {
            log::info!("{id}: removed {removed} Authentication-Results field(s) naming this host");
        }
        self.log_data_end(&result, req, client_name(client, name), size);
        if let (Ok(id), Some((what, why))) = (&result, &fate_note) {
            let peer = client_name(client, name);
            let to: Vec<String> = req.rcpts.iter().map(|r| r.to_string()).collect();
            log::info!(
                "{id}: {what}: END-OF-MESSAGE from {peer}: {why}; from={} to={} proto={} helo=<{}>",
                req.from,
                to.join(","),
                req.protocol,
                req.helo
            );
        }
        if let (Ok(id), Some(verdict)) = (&result, &verdict) {
            log::info!("{id}: {}", verdict.summary());
        }
        if let Ok(id) = &result
            && let Some(message_id) = headers.get("message-id").as_deref().and_then(message_id)
        {
            log::info!("{id}: message-id={message_id}");
        }
        if let (Ok(id), Some(launcher), None) = (&result, &self.launcher, &fate_note) {
            launcher.deliver(id);
        }
        Received::Done(result)
    }
}

/// The queue file's envelope, and the fields on top of the message: what the checks at MAIL
/// found (`Authentication-Results:`, `Received-SPF:`), then `Received:`. With `findings`
/// off, only `Received:`: the checks that read the message put the others on top of it
/// once they are done (doc/queue.md, S1).
fn envelope_and_trace(
    cur: &Current,
    req: &DataRequest,
    (client, name): (Option<IpAddr>, Option<&str>),
    arrived: u64,
    id: &QueueId,
    tls: Option<String>,
    findings: bool,
) -> (Envelope, String) {
    let envelope = Envelope {
        arrived,
        client,
        helo: Some(req.helo.clone()),
        protocol: req.protocol.to_string(),
        body: req.params.body,
        smtputf8: req.params.smtputf8,
        auth: req.user.clone(),
        submitted: req.submitted,
        quarantine: false,
        from: req.from.clone(),
        rcpts: req.rcpts.clone(),
        size: 0,
        check: None,
    };
    // A logged-in user's own address (a laptop at home) need not travel with each message.
    let hidden = req.user.is_some() && cur.config.submission_hide_client;
    let header = trace::received(&trace::Trace {
        helo: &req.helo,
        client: if hidden { None } else { client },
        client_name: if hidden { None } else { name },
        hidden,
        hostname: &cur.config.hostname,
        protocol: req.protocol,
        tls,
        id: id.as_str(),
        single_recipient: (req.rcpts.len() == 1).then(|| req.rcpts[0].to_string()),
        time: arrived,
    });
    match findings {
        true => (envelope, req.findings.fields(&cur.config.hostname) + &header),
        false => (envelope, header),
    }
}

impl Server {
    fn log_data_end(&self, result: &Result<QueueId, DataError>, req: &DataRequest, peer: String, size: u64) {
        match result {
            Ok(id) => {
                let user = req.user.as_ref().map_or(String::new(), |u| format!(", sasl_username={}", escape(u)));
                log::info!("{id}: client={peer}{user}, from={}, size={size}, nrcpt={}", req.from, req.rcpts.len())
            }
            Err(e) => log::info!(
                "NOQUEUE: {} from {peer}: {}; from={} proto={} helo=<{}>",
                if matches!(e, DataError::Filtered(_)) { "milter-reject: END-OF-MESSAGE" } else { "reject: DATA" },
                Reply::from(e).summary(),
                req.from,
                req.protocol,
                req.helo
            ),
        }
    }
}

/// A list's error code is logged once per process, with its advice.
static DNSBL_ERROR_SAID: AtomicBool = AtomicBool::new(false);

/// What a client sent within `pause` of its connection, before any greeting (empty when it
/// hung up); `None` when it waited, as a client must.
fn talks_first(conn: &mut Conn, pause: Duration) -> Option<Vec<u8>> {
    use std::io::Read;
    let Transport::Tcp(stream) = &mut conn.transport else { return None };
    if !sys::wait_readable(stream.as_raw_fd(), Some(pause)).unwrap_or(false) {
        return None;
    }
    let mut early = vec![0u8; 512];
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let n = stream.read(&mut early).unwrap_or(0);
    early.truncate(n);
    Some(early)
}

/// `from + wait`, never a panic: a wait too long for the clock is cut to a year (the
/// configuration bounds every timeout far below that; a DATA allowance grows with the bytes).
fn later(from: Instant, wait: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 86400);
    from.checked_add(wait.min(YEAR)).unwrap_or(from)
}

/// A client as the log names it: `mx.example.net[192.0.2.7]` when its name is confirmed,
/// else `unknown[192.0.2.7]`.
fn client_name(client: Option<IpAddr>, name: Option<&str>) -> String {
    let name = name.unwrap_or("unknown");
    client.map_or_else(|| format!("{name}[unknown]"), |ip| format!("{name}[{}]", ip.to_canonical()))
}

/// What the client is told of a spool failure: a full disk, or any other write failure; the
/// log says which (a full disk, no descriptor left, a device error).
fn storage_error(e: &SpoolError) -> DataError {
    log::warn!("cannot queue a message: {e}");
    match e {
        SpoolError::DiskFull => DataError::DiskFull,
        SpoolError::Io(_) | SpoolError::Collision | SpoolError::Corrupt(_) => DataError::WriteFailed,
    }
}

enum Received {
    Done(Result<QueueId, DataError>),
    TimedOut,
    Lost,
}

fn is_resource_shortage(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Descriptors a session holds all along: its socket.
pub const DESCRIPTORS_PER_SESSION: u64 = 1;
/// Descriptors kept for the files of sessions taking a message at that moment (a spool draft
/// each, during DATA): half of what the reserve leaves, and no more than this. An idle session
/// needs none, so a large limit serves many more sessions than take a message at once; a
/// session whose draft finds no descriptor hears `451 4.3.0` and may send the message again.
pub const DESCRIPTORS_FOR_DRAFTS: u64 = 1024;
/// Descriptors kept for everything else: listeners, the log, the spool's directories, the
/// spare kept for saying 421 when accept() runs out, and the libraries.
pub const DESCRIPTORS_RESERVED: u64 = 32;

/// The sessions a descriptor limit serves, and the descriptors `sessions` need: one each, the
/// drafts' share, and the reserve.
fn sessions_served(limit: u64) -> u64 {
    let room = limit.saturating_sub(DESCRIPTORS_RESERVED);
    room - (room / 2).min(DESCRIPTORS_FOR_DRAFTS)
}

fn descriptors_needed(sessions: u64) -> u64 {
    sessions
        .saturating_mul(DESCRIPTORS_PER_SESSION)
        .saturating_add(sessions.min(DESCRIPTORS_FOR_DRAFTS))
        .saturating_add(DESCRIPTORS_RESERVED)
}

/// Raises the descriptor limit as far as it goes, and lowers `max_connections` (and
/// `max_per_ip` with it) to what the limit can serve; returns the warning when it had to.
pub fn fit_to_descriptors(config: &mut Config) -> Option<String> {
    let limit = match sys::raise_descriptor_limit() {
        Ok(limit) => limit,
        Err(e) => return Some(format!("cannot read the descriptor limit: {e}")),
    };
    let room = usize::try_from(sessions_served(limit)).unwrap_or(usize::MAX).max(1);
    if config.max_connections <= room {
        return None;
    }
    let wanted = config.max_connections;
    config.max_connections = room;
    config.max_per_ip = config.max_per_ip.min(room);
    Some(format!(
        "max_connections = {wanted} needs {} descriptors, but the limit (RLIMIT_NOFILE) is {limit}: \
         serving at most {room} connections; raise the hard limit (LimitNOFILE= under systemd) for more",
        descriptors_needed(wanted as u64)
    ))
}

/// Says 421 and closes, without ever blocking the accept loop for long.
fn refuse_connection(mut stream: TcpStream, reply: &Reply, ip: IpAddr) {
    log::warn!("refused connection from [{ip}]: {}", reply.lines().join(" "));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let _ = stream.write_all(&reply.to_bytes());
    let _ = stream.shutdown(Shutdown::Write);
}

fn dup_std(fd: i32) -> io::Result<File> {
    let owned = match fd {
        0 => io::stdin().as_fd().try_clone_to_owned()?,
        _ => io::stdout().as_fd().try_clone_to_owned()?,
    };
    Ok(File::from(owned))
}

/// Binds a listening socket: SO_REUSEADDR, dual-stack for `[::]`, a deep backlog.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_certificate_is_named_with_the_system_error() {
        let config = Config::parse("tls_cert = /nonexistent/cert.pem\ntls_key = /nonexistent/key.pem\n", "t").unwrap();
        let e = load_tls(&config).err().unwrap_or_default();
        assert_eq!(e, "/nonexistent/cert.pem: No such file or directory (os error 2)");
    }

    #[test]
    fn a_large_descriptor_limit_serves_sessions_beyond_the_drafts_share() {
        // A small limit: half for sessions, half for their drafts, as ever.
        assert_eq!(sessions_served(64), 16);
        assert_eq!(sessions_served(1024), 496);
        assert_eq!(descriptors_needed(16), 64);
        // A large one: a session costs its socket; 1,024 descriptors are kept for drafts.
        assert_eq!(sessions_served(20_000), 18_944);
        assert_eq!(descriptors_needed(10_000), 11_056);
        assert!(descriptors_needed(sessions_served(20_000)) <= 20_000);
        assert_eq!(sessions_served(0), 0);
        assert_eq!(sessions_served(u64::MAX), u64::MAX - 32 - 1024);
        assert_eq!(descriptors_needed(u64::MAX), u64::MAX, "a huge max_connections is no overflow");
    }

    #[test]
    fn deadlines_never_overflow() {
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now);
        assert_eq!(later(now, Duration::from_secs(5)), now + Duration::from_secs(5));
    }
}
