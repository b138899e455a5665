//! Milters for the tests: a scripted one on loopback, written from the protocol's definition
//! (libmilter's mfdef.h: a 4-octet length, a command octet, its data), and private instances
//! of rspamd and OpenDKIM from Debian's packages.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the scripted milter does on a packet.
pub enum Then {
    /// Sends these packets (none: a packet that gets no reply).
    Send(Vec<Vec<u8>>),
    /// Never answers, and keeps the connection open.
    Hang,
    /// Sends octets that are not the protocol.
    Garbage,
}

/// One packet: length, command, data.
pub fn pkt(command: u8, data: &[u8]) -> Vec<u8> {
    let mut out = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(command);
    out.extend_from_slice(data);
    out
}

/// NUL-terminated strings, one after the other.
pub fn strings(parts: &[&str]) -> Vec<u8> {
    parts.iter().flat_map(|p| p.bytes().chain([0])).collect()
}

pub fn cont() -> Then {
    Then::Send(vec![pkt(b'c', b"")])
}

/// The usual answer: negotiate everything (version 6, every action, every step answered),
/// nothing for macros, abort and quit, continue for the rest and accept at the end.
pub fn usual(command: u8, _: &[u8]) -> Then {
    match command {
        b'O' => {
            let mut data = Vec::new();
            for n in [6u32, 0x1FF, 0] {
                data.extend_from_slice(&n.to_be_bytes());
            }
            Then::Send(vec![pkt(b'O', &data)])
        }
        b'D' | b'A' | b'Q' => Then::Send(vec![]),
        b'E' => Then::Send(vec![pkt(b'a', b"")]),
        _ => cont(),
    }
}

type Script = dyn Fn(u8, &[u8]) -> Then + Send + Sync;

/// Every packet a milter was sent: its command and data.
pub type Seen = Arc<Mutex<Vec<(u8, Vec<u8>)>>>;

/// A milter on a loopback port, answering each packet by `script`; every packet it was sent,
/// in order, is kept in `seen`.
pub struct FakeMilter {
    /// `inet:127.0.0.1:PORT`.
    pub address: String,
    pub seen: Seen,
}

impl FakeMilter {
    pub fn start(script: impl Fn(u8, &[u8]) -> Then + Send + Sync + 'static) -> FakeMilter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("inet:{}", listener.local_addr().unwrap());
        let seen: Seen = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let seen2 = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (seen, script) = (Arc::clone(&seen2), Arc::clone(&script));
                std::thread::spawn(move || serve(stream, &seen, &*script));
            }
        });
        FakeMilter { address, seen }
    }

    /// The data of every packet of that command sent so far.
    pub fn sent(&self, command: u8) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().iter().filter(|(c, _)| *c == command).map(|(_, d)| d.clone()).collect()
    }

    /// The value of a macro as last sent.
    pub fn macro_value(&self, name: &str) -> Option<String> {
        let mut found = None;
        for data in self.sent(b'D') {
            let parts: Vec<&[u8]> = data[1..].split(|&b| b == 0).collect();
            for pair in parts.chunks(2) {
                if pair.len() == 2 && pair[0] == name.as_bytes() {
                    found = Some(String::from_utf8_lossy(pair[1]).into_owned());
                }
            }
        }
        found
    }
}

fn serve(mut stream: TcpStream, seen: &Mutex<Vec<(u8, Vec<u8>)>>, script: &Script) {
    loop {
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).is_err() {
            return;
        }
        let len = u32::from_be_bytes(len) as usize;
        let mut packet = vec![0u8; len];
        if len == 0 || stream.read_exact(&mut packet).is_err() {
            return;
        }
        let (command, data) = (packet[0], &packet[1..]);
        seen.lock().unwrap().push((command, data.to_vec()));
        match script(command, data) {
            Then::Send(packets) => {
                for p in packets {
                    if stream.write_all(&p).is_err() {
                        return;
                    }
                }
            }
            Then::Hang => {
                std::thread::sleep(Duration::from_secs(60));
                return;
            }
            Then::Garbage => {
                let _ = stream.write_all(b"\xff\xff\xff\xffHELLO THERE");
                return;
            }
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A private rspamd: its proxy worker in milter mode on a loopback port, no Redis, no
/// outside DNS (a closed loopback port), its test patterns on, `milter_headers` writing for
/// loopback clients too, and no local networks, so the test client is a stranger. Stopped
/// (its process group) when dropped.
pub struct Rspamd {
    child: Child,
    pub address: String,
    pub dir: PathBuf,
}

impl Rspamd {
    pub fn available() -> bool {
        Command::new("rspamd").arg("--version").output().is_ok_and(|o| o.status.success())
    }

    pub fn start(dir: &Path) -> Rspamd {
        let (port, controller) = (free_port(), free_port());
        let r = dir.join("rspamd");
        for sub in ["override.d", "local.d", "run", "log"] {
            std::fs::create_dir_all(r.join(sub)).unwrap();
        }
        // Its compiled expressions are kept between runs, so it starts in a second or two.
        let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/rspamd-db");
        std::fs::create_dir_all(&db).unwrap();
        let write = |name: &str, text: String| std::fs::write(r.join(name), text).unwrap();
        write(
            "override.d/worker-proxy.inc",
            format!(
                "milter = yes;\ntimeout = 120s;\nbind_socket = \"127.0.0.1:{port}\";\n\
                 upstream \"local\" {{ default = yes; self_scan = yes; }}\ncount = 1;\n"
            ),
        );
        write("override.d/worker-normal.inc", "enabled = false;\n".into());
        write("override.d/worker-fuzzy.inc", "enabled = false;\n".into());
        write("override.d/worker-controller.inc", format!("bind_socket = \"127.0.0.1:{controller}\";\n"));
        write(
            "local.d/options.inc",
            "dns { nameserver = [\"127.0.0.1:9\"]; timeout = 0.2s; retransmits = 1; }\n\
             local_addrs = [];\nenable_test_patterns = true;\n"
                .into(),
        );
        write(
            "local.d/milter_headers.conf",
            "skip_local = false;\nskip_authenticated = false;\nextended_spam_headers = true;\n\
             use = [\"x-spamd-result\", \"x-spam-status\", \"x-spam-level\"];\n"
                .into(),
        );
        write(
            "local.d/logging.inc",
            format!("type = \"file\";\nfilename = \"{}\";\nlevel = \"info\";\n", r.join("log/rspamd.log").display()),
        );
        let mut command = Command::new("rspamd");
        command
            .args(["-f", "-u", "root", "-g", "root", "-c", "/etc/rspamd/rspamd.conf"])
            .arg("--var")
            .arg(format!("LOCAL_CONFDIR={}", r.display()))
            .arg("--var")
            .arg(format!("DBDIR={}", db.display()))
            .arg("--var")
            .arg(format!("RUNDIR={}", r.join("run").display()))
            .arg("--var")
            .arg(format!("LOGDIR={}", r.join("log").display()));
        let child = start_group(&mut command);
        let rspamd = Rspamd { child, address: format!("inet:127.0.0.1:{port}"), dir: r };
        assert!(wait_for_port(port, Duration::from_secs(90)), "rspamd did not start: {}", rspamd.log());
        rspamd
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log/rspamd.log")).unwrap_or_default()
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

/// A private OpenDKIM in verify mode on a loopback port, adding an `Authentication-Results:`
/// field under `authserv_id` to every message, signed or not.
pub struct OpenDkim {
    child: Child,
    pub address: String,
}

impl OpenDkim {
    pub fn available() -> bool {
        Path::new("/usr/sbin/opendkim").exists()
    }

    pub fn start(dir: &Path, authserv_id: &str) -> OpenDkim {
        let port = free_port();
        let conf = dir.join("opendkim.conf");
        std::fs::write(
            &conf,
            format!(
                "Mode v\nSocket inet:{port}@127.0.0.1\nAuthservID {authserv_id}\nAlwaysAddARHeader yes\n\
                 Background no\nSyslog no\nPidFile {}\nNameservers 127.0.0.1\nDNSTimeout 1\n",
                dir.join("opendkim.pid").display()
            ),
        )
        .unwrap();
        let child = start_group(Command::new("/usr/sbin/opendkim").arg("-f").arg("-x").arg(&conf));
        assert!(wait_for_port(port, Duration::from_secs(20)), "opendkim did not start");
        OpenDkim { child, address: format!("inet:127.0.0.1:{port}") }
    }
}

impl Drop for OpenDkim {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

/// A private daemon in the foreground, in a process group of its own (`stop_group` stops it
/// and the workers it forks), its output thrown away.
fn start_group(command: &mut Command) -> Child {
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
    command.spawn().unwrap_or_else(|e| panic!("start {:?}: {e}", command.get_program()))
}

fn stop_group(child: &mut Child) {
    let pgid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", "--", &format!("-{pgid}")]).status();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status();
    let _ = child.wait();
}
