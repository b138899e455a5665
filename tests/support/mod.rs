//! Test support: a temp directory per test, the real `postern-smtpd` on 127.0.0.1:0, an SMTP client.
#![allow(dead_code)]

pub mod dns;
pub mod dovecot;
pub mod milter;
pub mod netns;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A directory removed when the test ends.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("postern-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The path of postern-smtpd, postern-deliver or postern-queue: a link named so beside the one
/// program the three are, as `make install` makes it (the program is what its name says).
pub fn program(name: &str) -> std::path::PathBuf {
    static MADE: AtomicUsize = AtomicUsize::new(0);
    let one = Path::new(env!("CARGO_BIN_EXE_postern"));
    let link = one.with_file_name(name);
    if std::fs::read_link(&link).ok().as_deref() != Some(Path::new("postern")) {
        // Made aside and renamed over whatever is there: tests running at once never see
        // no link, nor an older build of the program under that name.
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let aside = one.with_file_name(format!(".{name}.{}.{n}", std::process::id()));
        let _ = std::fs::remove_file(&aside);
        std::os::unix::fs::symlink("postern", &aside).unwrap();
        std::fs::rename(&aside, &link).unwrap();
    }
    link
}

pub fn smtpd_binary() -> std::path::PathBuf {
    program("postern-smtpd")
}

/// The configuration every test server starts from: the names the tests share.
/// Local domain example.test, users alice and postmaster, no trusted network. Instant
/// delivery is off, so a test sees what is queued; `instant()` turns it back on.
pub fn base_config(dir: &Path) -> String {
    std::fs::write(dir.join("mailboxes"), format!("alice: {}/maildirs/alice/\n", dir.display())).unwrap();
    std::fs::write(dir.join("aliases"), "postmaster: alice\nstaff: alice, bob@remote.test\n").unwrap();
    format!(
        "hostname = mail.example.test\nlisten = 127.0.0.1:0\nspool = {d}/spool\nlocal_domains = example.test\nlog = stderr\n\
         instant_delivery = off\n\
         mailboxes = {d}/mailboxes\naliases = {d}/aliases\nrecipient_delimiter = +\n{DNS_DEFAULT}",
        d = dir.display()
    )
}

/// A configuration text with instant delivery on.
pub fn instant(config: &str) -> String {
    config.replace("instant_delivery = off\n", "instant_delivery = on\n")
}

/// Tests never ask the system resolver: unless a test starts its own DNS server, names are
/// looked up at a closed loopback port, which fails at once (a temporary failure).
pub const DNS_DEFAULT: &str = "dns_timeout = 1s\n";

pub fn dns_config(server: Option<SocketAddr>) -> String {
    format!("dns_servers = {}\n", server.map_or_else(|| "127.0.0.1:9".to_string(), |s| s.to_string()))
}

/// The base configuration plus `extra`, with the closed DNS port unless `extra` names servers.
pub fn config_with(dir: &Path, extra: &str) -> String {
    let dns = if extra.contains("dns_servers") { String::new() } else { dns_config(None) };
    format!("{}{extra}{dns}", base_config(dir))
}

/// `config` with no `mailboxes` file (written for `dir`): the users are the system's or
/// Dovecot's.
pub fn without_mailboxes(config: &str, dir: &Path) -> String {
    config.replace(&format!("mailboxes = {}/mailboxes\n", dir.display()), "")
}

/// A running `postern-smtpd`, killed when dropped.
pub struct Server {
    pub child: Child,
    /// The first listener's address.
    pub addr: SocketAddr,
    /// Every listener: its address and mode (`smtp`, `submission`, `smtps`), in `listen` order.
    pub listeners: Vec<(SocketAddr, String)>,
    pub dir: TempDir,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts with the base configuration plus `extra` lines (later keys must not repeat base ones).
    pub fn start(extra: &str) -> Server {
        let dir = TempDir::new("smtpd");
        let config = config_with(dir.path(), extra);
        Server::start_in(dir, &config)
    }

    pub fn start_in(dir: TempDir, config: &str) -> Server {
        Server::start_wrapped(dir, config, &[])
    }

    /// Starts the server under a wrapper command such as `prlimit --nofile=32` or strace.
    pub fn start_wrapped(dir: TempDir, config: &str, wrapper: &[&str]) -> Server {
        let conf = dir.path().join("postern.conf");
        std::fs::write(&conf, config).unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(smtpd_binary());
                c
            }
            None => Command::new(smtpd_binary()),
        };
        let mut child = command
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start postern-smtpd");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let wanted = config
            .lines()
            .find_map(|l| l.strip_prefix("listen = "))
            .map_or(1, |v| v.split(',').filter(|e| !e.trim().is_empty()).count());
        let mut listeners = Vec::new();
        while listeners.len() < wanted {
            let line: String = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| {
                panic!("server did not start: {:?}", log.lock().unwrap());
            });
            let mut words = line.split_whitespace();
            let addr: SocketAddr = words.next().unwrap().parse().unwrap();
            let mode = words.next().unwrap_or("(smtp)").trim_matches(['(', ')']).to_string();
            listeners.push((addr, mode));
        }
        Server { child, addr: listeners[0].0, listeners, dir, log }
    }

    /// Whether the server exited by itself within `within` (a crash point, a fatal error).
    pub fn exits_within(&mut self, within: Duration) -> bool {
        let until = std::time::Instant::now() + within;
        while std::time::Instant::now() < until {
            if self.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Kills the server with SIGKILL and hands back its directory.
    pub fn kill9(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, TempDir(PathBuf::new()));
        std::mem::forget(self);
        dir
    }

    /// The address of the first listener serving `mode`.
    pub fn port_for(&self, mode: &str) -> SocketAddr {
        self.listeners.iter().find(|(_, m)| m == mode).map(|(a, _)| *a).expect("a listener in that mode")
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Files in spool/new, sorted by name (arrival).
    pub fn queued(&self) -> Vec<PathBuf> {
        list(&self.spool().join("new"))
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The log once it has `text` (it is read as the server writes it), or as it is after
    /// 10 s.
    pub fn log_with(&self, text: &str) -> String {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(text) || Instant::now() > until {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        status_field(self.pid(), "VmHWM:")
    }

    pub fn rss_kib(&self) -> u64 {
        status_field(self.pid(), "VmRSS:")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A wrapper such as strace would leave its program running: kill children first.
        for pid in children(self.child.id()) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child processes of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    list.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

pub fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// The message part of a spool file (after the envelope's blank line).
pub fn message_of(spool_file: &Path) -> Vec<u8> {
    let bytes = std::fs::read(spool_file).unwrap();
    let at = bytes.windows(2).position(|w| w == b"\n\n").expect("envelope end");
    bytes[at + 2..].to_vec()
}

/// The message without the fields the server put on top (`Authentication-Results:`,
/// `Received-SPF:`, then our `Received:`): what the client sent, un-stuffed.
pub fn body_of(spool_file: &Path) -> Vec<u8> {
    let message = message_of(spool_file);
    let text = String::from_utf8_lossy(&message);
    let mut at = 0;
    let mut fields = message.split_inclusive(|&b| b == b'\n').peekable();
    for name in ["Authentication-Results:", "Received-SPF:", "Received: from "] {
        if !fields.peek().is_some_and(|l| l.starts_with(name.as_bytes())) {
            assert!(name != "Received: from ", "no Received: of ours on top: {text}");
            continue;
        }
        // Each is folded: it ends at the first line that does not start with a tab.
        at += fields.next().unwrap().len();
        while let Some(line) = fields.next_if(|l| l.starts_with(b"\t")) {
            at += line.len();
        }
    }
    message[at..].to_vec()
}

/// A plain SMTP client over TCP that reads whole replies.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(addr).unwrap())
    }

    /// A client connected from the loopback address `source`: another client to the server.
    pub fn connect_from(source: &str, addr: SocketAddr) -> Client {
        Client::from_stream(tcp_from(source, addr))
    }

    fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    /// Connects and reads the greeting, asserting it is 220.
    pub fn greeted(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr);
        let greeting = c.reply();
        assert!(greeting.starts_with("220 "), "{greeting}");
        c
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// One whole reply, all lines joined with \n; empty at end of stream.
    pub fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return lines.join("\n"),
                Ok(_) => {}
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    /// Sends one command line and returns the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// True when the server closed the connection (read returns 0 within the timeout).
    pub fn is_closed(&mut self, within: Duration) -> bool {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
        false
    }

    /// MAIL, RCPT for each recipient, DATA, each reply checked; the text comes next.
    pub fn open_data(&mut self, from: &str, to: &[&str]) {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert!(r.starts_with("250"), "MAIL FROM:<{from}>: {r}");
        for rcpt in to {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>"));
            assert!(r.starts_with("250"), "RCPT {rcpt}: {r}");
        }
        let r = self.cmd("DATA");
        assert!(r.starts_with("354"), "DATA: {r}");
    }

    /// The message text after DATA's 354, already dot-stuffed; then the final dot, on a line
    /// of its own; returns the reply to it.
    pub fn mail_text(&mut self, text: &[u8]) -> String {
        self.send(text);
        self.send(if text.is_empty() || text.ends_with(b"\r\n") { b".\r\n" } else { b"\r\n.\r\n" });
        self.reply()
    }

    /// A whole transaction; returns the reply to the final dot.
    pub fn mail(&mut self, from: &str, to: &[&str], body: &[u8]) -> String {
        self.open_data(from, to);
        self.send(body);
        self.send(b"\r\n.\r\n");
        self.reply()
    }
}

/// A TCP connection to `addr` from the address `source` (`127.0.0.4`).
pub fn tcp_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(source.parse().unwrap(), 0).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

/// The reply code and enhanced code of a reply's last line: "250 2.1.0".
/// Replies without an enhanced code give just the code: "354".
pub fn code(reply: &str) -> String {
    let last = reply.lines().last().unwrap_or("");
    let mut words = last.split_whitespace();
    let number = words.next().unwrap_or("").to_string();
    match words.next() {
        Some(status) if status.split('.').count() == 3 && status.split('.').all(|p| p.parse::<u16>().is_ok()) => {
            format!("{number} {status}")
        }
        _ => number,
    }
}

/// What a fake server saw.
#[derive(Default, Debug)]
pub struct FakeLog {
    pub connections: usize,
    pub commands: Vec<String>,
    /// The DATA text exactly as received, dot-stuffing and final dot included.
    pub raw_messages: Vec<Vec<u8>>,
}

/// A scripted SMTP server on loopback. `respond` sees each command line (and "." after the
/// text) and may return a reply to send instead of the usual one (which may be several lines,
/// or bytes that are not SMTP at all).
pub struct FakeMx {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<FakeLog>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

type Responder = dyn Fn(&str) -> Option<String> + Send + Sync;

impl FakeMx {
    pub fn start(bind: &str, respond: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> FakeMx {
        let listener = std::net::TcpListener::bind(bind).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(FakeLog::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let respond: Arc<Responder> = Arc::new(respond);
        let (log2, stop2) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                log2.lock().unwrap().connections += 1;
                let (log3, respond) = (Arc::clone(&log2), Arc::clone(&respond));
                std::thread::spawn(move || fake_session(stream, &log3, &*respond));
            }
        });
        FakeMx { addr, log, stop }
    }

    pub fn commands(&self) -> Vec<String> {
        self.log.lock().unwrap().commands.clone()
    }

    pub fn connections(&self) -> usize {
        self.log.lock().unwrap().connections
    }

    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.log.lock().unwrap().raw_messages.clone()
    }
}

impl Drop for FakeMx {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn fake_session(stream: TcpStream, log: &Mutex<FakeLog>, respond: &Responder) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let mut out = stream.try_clone().unwrap();
    let mut input = BufReader::new(stream);
    let mut say = |text: String| {
        let text = if text.ends_with('\n') { text } else { text + "\r\n" };
        out.write_all(text.as_bytes()).is_ok()
    };
    if !say(respond("CONNECT").unwrap_or_else(|| "220 fake.test ESMTP".into())) {
        return;
    }
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let command = line.trim_end().to_string();
        log.lock().unwrap().commands.push(command.clone());
        let verb = command.split([' ', ':']).next().unwrap_or("").to_ascii_uppercase();
        let usual = match verb.as_str() {
            "EHLO" => "250-fake.test\r\n250-PIPELINING\r\n250-SIZE 10000000\r\n250 8BITMIME".to_string(),
            "HELO" | "MAIL" | "RSET" | "NOOP" => "250 2.0.0 ok".into(),
            "RCPT" => "250 2.1.5 ok".into(),
            "DATA" => "354 go ahead".into(),
            "QUIT" => "221 2.0.0 bye".into(),
            _ => "502 5.5.1 not here".into(),
        };
        let reply = respond(&command).unwrap_or(usual);
        let data_accepted = verb == "DATA" && reply.starts_with("354");
        if !say(reply) || verb == "QUIT" {
            return;
        }
        if data_accepted {
            let mut raw = Vec::new();
            while !raw.ends_with(b"\r\n.\r\n") && raw != b".\r\n" {
                let mut chunk = Vec::new();
                if input.read_until(b'\n', &mut chunk).unwrap_or(0) == 0 {
                    return;
                }
                raw.extend_from_slice(&chunk);
            }
            log.lock().unwrap().raw_messages.push(raw);
            // A reply ending in " [hang up]" is sent without those words, then the server closes.
            let reply = respond(".").unwrap_or_else(|| "250 2.0.0 queued".into());
            let hang_up = reply.ends_with(" [hang up]");
            if !say(reply.trim_end_matches(" [hang up]").to_string()) || hang_up {
                return;
            }
        }
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Queues a message straight into a spool, as if a client had sent it at `arrived`.
pub fn inject(
    spool: &Path,
    from: &str,
    to: &[&str],
    arrived: u64,
    body: postern::smtp::command::BodyType,
    text: &[u8],
) -> String {
    let envelope = envelope(from, to, arrived, body);
    postern::spool::Spool::open(spool).unwrap().inject(&envelope, text).unwrap().to_string()
}

/// The envelope of a message a client at 192.0.2.1 sent at `arrived`.
pub fn envelope(
    from: &str,
    to: &[&str],
    arrived: u64,
    body: postern::smtp::command::BodyType,
) -> postern::spool::Envelope {
    use postern::smtp::address::{ForwardPath, ReversePath};
    postern::spool::Envelope {
        arrived,
        client: Some("192.0.2.1".parse().unwrap()),
        helo: Some("client.test".into()),
        protocol: "ESMTP".into(),
        body,
        smtputf8: false,
        auth: None,
        submitted: false,
        quarantine: false,
        from: ReversePath::parse(from.as_bytes()).unwrap(),
        rcpts: to.iter().map(|t| ForwardPath::parse(t.as_bytes()).unwrap()).collect(),
        size: 0,
        check: None,
    }
}

/// Runs postern-deliver with `conf` (at time `at`, when given) and returns what it logged.
pub fn deliver(conf: &Path, at: Option<u64>, args: &[&str]) -> String {
    let mut command = Command::new(program("postern-deliver"));
    command.arg("-c").arg(conf).args(args);
    if let Some(at) = at {
        command.env("POSTERN_NOW", at.to_string());
    }
    let out = command.output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    text
}

/// Messages waiting in spool/new and spool/cur (their logs not counted).
pub fn waiting(spool: &Path) -> Vec<PathBuf> {
    let mut all = list(&spool.join("new"));
    all.extend(list(&spool.join("cur")));
    all.retain(|p| p.extension().is_none());
    all
}

/// Waits until no instant delivery process holds `spool` (one ends `postern::instant::IDLE`
/// after its last message), so that a step run with instant delivery off finds what it
/// queued still queued. Panics after 10 s.
pub fn instant_delivery_ended(spool: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let Ok(lock) = std::fs::File::open(spool.join(postern::spool::INSTANT_LOCK)) else { return };
        if postern::sys::try_lock_exclusive(&lock).unwrap_or(false) {
            return;
        }
        assert!(Instant::now() < deadline, "an instant delivery process still holds {}", spool.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The files of a maildir's new/, read as text.
pub fn maildir(path: &Path) -> Vec<String> {
    list(&path.join("new")).iter().map(|p| std::fs::read_to_string(p).unwrap()).collect()
}

/// A temp directory with a `postern.conf` in it: the base configuration plus `extra`.
pub fn configured(tag: &str, extra: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(tag);
    let conf = dir.path().join("postern.conf");
    std::fs::write(&conf, config_with(dir.path(), extra)).unwrap();
    (dir, conf)
}

/// The Python of the tests' virtualenv (target/venv, which `make test` fills with the
/// independent implementations the tests check against).
pub fn venv_python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python")
}

/// Whether that Python can import these modules (`"dkim, nacl"`).
pub fn venv_has(modules: &str) -> bool {
    Command::new(venv_python()).args(["-c", &format!("import {modules}")]).output().is_ok_and(|o| o.status.success())
}

/// Says on the real stderr (not the captured test output) that a test did not run, and why;
/// `make test` shows these lines. Returns true when the test must stop here.
pub fn skip_unless(condition: bool, why: &str) -> bool {
    if !condition {
        let test = std::thread::current().name().unwrap_or("?").to_string();
        let _ = std::io::stderr().write_all(format!("SKIP {test}: {why}\n").as_bytes());
    }
    !condition
}

/// True (after a SKIP line) when the test cannot run because it needs root.
pub fn skip_unless_root(why: &str) -> bool {
    skip_unless(postern::sys::is_root(), &format!("needs root to {why}"))
}

/// A user and groups made for one test, removed at its end.
pub struct Account {
    pub user: String,
    pub groups: Vec<String>,
}

impl Drop for Account {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.user).output();
        for g in &self.groups {
            let _ = Command::new("groupdel").arg(g).output();
        }
    }
}

/// A small tmpfs mounted on a fresh temp directory; unmounted, then removed, when dropped.
pub struct SmallFs {
    pub dir: TempDir,
}

impl SmallFs {
    /// Needs root; the caller checks `skip_unless_root` first.
    pub fn mount(tag: &str, size: &str) -> SmallFs {
        let dir = TempDir::new(tag);
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        assert!(status.unwrap().success(), "mount tmpfs on {}", dir.path().display());
        SmallFs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Free blocks of the filesystem, as statfs(2) counts them (pages on tmpfs).
    pub fn free_blocks(&self) -> u64 {
        let out = Command::new("stat").args(["-f", "-c", "%a"]).arg(self.path()).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// Fills the filesystem with `filler`, then frees `free` pages of it again.
    pub fn fill_leaving(&self, free: u64) {
        use std::io::Seek;
        let path = self.path().join("filler");
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let page = [0x55u8; 4096];
        while file.write_all(&page).is_ok() {}
        let len = file.stream_position().unwrap() / 4096 * 4096;
        file.set_len(len.saturating_sub(free * 4096)).unwrap();
        assert_eq!(self.free_blocks(), free, "the filesystem should have {free} free pages");
    }

    /// Frees the space the filler took.
    pub fn empty_filler(&self) {
        let _ = std::fs::remove_file(self.path().join("filler"));
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Runs postern-deliver with `conf` and `env`; returns whether it exited 0, and its log.
pub fn deliver_with(conf: &Path, env: &[(&str, &str)], args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut command = Command::new(program("postern-deliver"));
    command.arg("-c").arg(conf).args(args).envs(env.iter().copied());
    let out = command.output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (out.status, text)
}

/// A stand-in for /dev/log: a datagram socket in a temp directory, read as it receives (a
/// full socket would hold the sender up), and what it received.
pub struct SyslogSink {
    pub path: PathBuf,
    received: Arc<Mutex<Vec<String>>>,
}

impl SyslogSink {
    pub fn bind(dir: &Path) -> SyslogSink {
        let path = dir.join("dev-log");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = socket.recv(&mut buf) {
                sink.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).to_string());
            }
        });
        SyslogSink { path, received }
    }

    /// Every datagram received so far, after a moment for late ones.
    pub fn lines(&self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(200));
        self.received.lock().unwrap().clone()
    }
}

/// The base configuration logging to `sink` instead of stderr.
pub fn config_logging_to(dir: &Path, sink: &SyslogSink, extra: &str) -> String {
    config_with(dir, extra).replace("log = stderr\n", &format!("syslog_socket = {}\n", sink.path.display()))
}

/// Whether a program is on the PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

/// A fresh self-signed certificate and key for `mail.example.test` (EC P-256), written into
/// `dir` as `cert.pem` and `key.pem`; nothing of it is kept in the repository.
pub fn test_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    use openssl::x509::extension::SubjectAlternativeName;
    let key = new_ec_key();
    let name = x509_name("mail.example.test");
    let mut cert = certificate_builder(&name, &name, &key, 1);
    let san = SubjectAlternativeName::new().dns("mail.example.test").build(&cert.x509v3_context(None, None)).unwrap();
    cert.append_extension(san).unwrap();
    cert.sign(&key, openssl::hash::MessageDigest::sha256()).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.build().to_pem().unwrap()).unwrap();
    std::fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    (cert_path, key_path)
}

/// One certificate and key for the whole test program, made on first use (see
/// `test_certificate`), in a directory of its own under the system's temp directory.
pub fn shared_certificate() -> (PathBuf, PathBuf) {
    static MADE: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("postern-certificate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        test_certificate(&dir)
    })
    .clone()
}

/// Runs `command` with `input` on its standard input; its output and status.
pub fn run_with_input(command: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // A program that refuses before reading its input may be gone already: not an error here.
    let _ = child.stdin.take().unwrap().write_all(input);
    child.wait_with_output().unwrap()
}

/// The `auth_users` line for `user`, as `postern-smtpd --hash-password` prints it.
pub fn hash_line(user: &str, password: &str, scheme: &str) -> String {
    let mut command = Command::new(smtpd_binary());
    command.args(["--hash-password", "--scheme", scheme, user]);
    let out = run_with_input(&mut command, format!("{password}\n").as_bytes());
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with(&format!("{user}:$")) && line.ends_with('\n'), "{line}");
    line
}

/// A certificate authority of the tests' own (EC P-256), for servers whose certificates a
/// client checks: trusted by pointing `SSL_CERT_FILE` at `cert`.
pub struct TestCa {
    pub cert: PathBuf,
    key: openssl::pkey::PKey<openssl::pkey::Private>,
    x509: openssl::x509::X509,
}

impl TestCa {
    /// A new authority named `name`, its certificate written to `dir/NAME.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        use openssl::x509::extension::{BasicConstraints, KeyUsage};
        let key = new_ec_key();
        let subject = x509_name(name);
        let mut cert = certificate_builder(&subject, &subject, &key, 1);
        cert.append_extension(BasicConstraints::new().critical().ca().build().unwrap()).unwrap();
        cert.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build().unwrap()).unwrap();
        cert.sign(&key, openssl::hash::MessageDigest::sha256()).unwrap();
        let x509 = cert.build();
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, x509.to_pem().unwrap()).unwrap();
        TestCa { cert: path, key, x509 }
    }

    /// A server certificate for `names` signed by this authority: `dir/STEM.pem` and
    /// `dir/STEM.key`.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        use openssl::x509::extension::SubjectAlternativeName;
        let key = new_ec_key();
        let mut cert = certificate_builder(&x509_name(names[0]), self.x509.subject_name(), &key, 2);
        let mut san = SubjectAlternativeName::new();
        for name in names {
            san.dns(name);
        }
        let san = san.build(&cert.x509v3_context(Some(&self.x509), None)).unwrap();
        cert.append_extension(san).unwrap();
        cert.sign(&self.key, openssl::hash::MessageDigest::sha256()).unwrap();
        let (cert_path, key_path) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
        std::fs::write(&cert_path, cert.build().to_pem().unwrap()).unwrap();
        std::fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        (cert_path, key_path)
    }
}

fn new_ec_key() -> openssl::pkey::PKey<openssl::pkey::Private> {
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    openssl::pkey::PKey::from_ec_key(openssl::ec::EcKey::generate(&group).unwrap()).unwrap()
}

fn x509_name(common_name: &str) -> openssl::x509::X509Name {
    let mut name = openssl::x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(openssl::nid::Nid::COMMONNAME, common_name).unwrap();
    name.build()
}

fn certificate_builder(
    subject: &openssl::x509::X509NameRef,
    issuer: &openssl::x509::X509NameRef,
    key: &openssl::pkey::PKey<openssl::pkey::Private>,
    serial: u32,
) -> openssl::x509::X509Builder {
    use openssl::asn1::Asn1Time;
    let mut cert = openssl::x509::X509::builder().unwrap();
    cert.set_version(2).unwrap();
    cert.set_serial_number(&openssl::bn::BigNum::from_u32(serial).unwrap().to_asn1_integer().unwrap()).unwrap();
    cert.set_subject_name(subject).unwrap();
    cert.set_issuer_name(issuer).unwrap();
    cert.set_pubkey(key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(2).unwrap()).unwrap();
    cert
}
