//! postern-deliver against Postfix's own programs: smtp-sink injecting failures, and a private
//! Postfix instance relaying for us, whose queued copy must be byte-identical.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use postern::smtp::command::BodyType;
use support::TempDir;

fn require(tool: &str) {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().unwrap().status.success();
    assert!(found, "{tool} is missing: `make test` installs it (tools/ensure-test-deps)");
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind(format!("{ip}:0")).unwrap().local_addr().unwrap().port()
}

fn wait_for(addr: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Sender {
    dir: TempDir,
    conf: PathBuf,
}

impl Sender {
    fn new(extra: &str) -> Sender {
        let (dir, conf) = support::configured("interop", extra);
        Sender { dir, conf }
    }

    fn queue(&self, to: &[&str], text: &[u8]) {
        support::inject(
            &self.dir.path().join("spool"),
            "alice@example.test",
            to,
            support::now(),
            BodyType::SevenBit,
            text,
        );
    }

    fn deliver(&self) -> String {
        support::deliver(&self.conf, None, &[])
    }

    fn queued(&self) -> usize {
        support::waiting(&self.dir.path().join("spool")).len()
    }
}

/// smtp-sink on 127.0.0.3 with the given options, killed when dropped.
struct Sink {
    child: Child,
    port: u16,
    dumps: TempDir,
}

impl Sink {
    fn start(options: &[&str]) -> Sink {
        require("smtp-sink");
        let port = free_port("127.0.0.3");
        let dumps = TempDir::new("sink");
        std::os::unix::fs::chown(dumps.path(), Some(postfix_uid()), None).unwrap();
        let child = Command::new("smtp-sink")
            .args(["-u", "postfix", "-d"])
            .arg(format!("{}/%M.", dumps.path().display()))
            .args(options)
            .arg(format!("127.0.0.3:{port}"))
            .arg("10")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(&format!("127.0.0.3:{port}"));
        Sink { child, port, dumps }
    }

    fn dumped(&self) -> Vec<String> {
        support::list(self.dumps.path())
            .iter()
            .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).to_string())
            .collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn postfix_uid() -> u32 {
    postern::sys::lookup_user("postfix").unwrap().expect("the postfix user (package postfix)").uid
}

#[test]
fn smtp_sink_accepts_and_injects_failures() {
    if support::skip_unless_root("run smtp-sink, which switches to the postfix user") {
        return;
    }
    let ok = Sink::start(&[]);
    let s = Sender::new(&format!("smtp_port = {}\n", ok.port));
    s.queue(&["bob@[127.0.0.3]", "carol@[127.0.0.3]"], b"Subject: to the sink\r\n\r\nhello sink\r\n");
    let log = s.deliver();
    assert_eq!(log.matches("status=sent").count(), 2, "{log}");
    let started = Instant::now();
    while ok.dumped().is_empty() && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let dump = ok.dumped().join("");
    assert!(dump.contains("hello sink") && dump.contains("bob@[127.0.0.3]"), "{dump}");

    for (options, want) in [
        (vec!["-r", "RCPT"], "status=deferred"),
        (vec!["-f", "MAIL"], "status=bounced"),
        (vec!["-f", "RCPT"], "status=bounced"),
        (vec!["-r", "."], "status=deferred"),
        (vec!["-q", "."], "status=deferred"),
        (vec!["-q", "EHLO"], "status=deferred"),
    ] {
        let sink = Sink::start(&options);
        let s = Sender::new(&format!("smtp_port = {}\n", sink.port));
        s.queue(&["bob@[127.0.0.3]"], b"Subject: x\r\n\r\nx\r\n");
        let log = s.deliver();
        assert!(log.contains(want), "{options:?}: {log}");
        assert_eq!(s.queued(), usize::from(want == "status=deferred"), "{options:?}");
    }
}

/// A Postfix instance of the test's own: config, queue and data under a temp dir, a loopback
/// port, and every message held in its hold queue. Stopped when dropped.
struct PrivatePostfix {
    dir: TempDir,
    port: u16,
}

impl PrivatePostfix {
    fn start() -> PrivatePostfix {
        require("postfix");
        let dir = TempDir::new("postfix");
        let (etc, queue, data) = (dir.path().join("etc"), dir.path().join("queue"), dir.path().join("data"));
        for d in [&etc, &queue, &data] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::os::unix::fs::chown(&data, Some(postfix_uid()), None).unwrap();
        let port = free_port("127.0.0.1");
        std::fs::write(
            etc.join("main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {q}\ndata_directory = {d}\nmail_owner = postfix\n\
                 setgid_group = postdrop\ninet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmyhostname = pf.test\n\
                 mydestination =\nmynetworks = 127.0.0.0/8\nalias_maps =\nalias_database =\n\
                 smtpd_recipient_restrictions = check_client_access static:HOLD, permit_mynetworks, reject\n\
                 maillog_file = {m}/maillog\nmaillog_file_prefixes = {m}\n",
                q = queue.display(),
                d = data.display(),
                m = dir.path().display()
            ),
        )
        .unwrap();
        let master = std::fs::read_to_string("/etc/postfix/master.cf").unwrap();
        let master: String = master
            .lines()
            .map(|l| {
                if l.starts_with("smtp ") && l.contains(" inet ") {
                    format!("127.0.0.1:{port} inet n - n - - smtpd")
                } else {
                    l.to_string()
                }
            })
            .map(|l| l + "\n")
            .collect();
        std::fs::write(etc.join("master.cf"), master).unwrap();
        let out = Command::new("postfix").arg("-c").arg(&etc).arg("start").output().unwrap();
        assert!(out.status.success(), "postfix start: {}", String::from_utf8_lossy(&out.stderr));
        wait_for(&format!("127.0.0.1:{port}"));
        PrivatePostfix { dir, port }
    }

    fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn held(&self) -> Vec<String> {
        let hold = self.dir.path().join("queue/hold");
        let started = Instant::now();
        loop {
            let ids: Vec<String> =
                support::list(&hold).iter().map(|p| p.file_name().unwrap().to_string_lossy().to_string()).collect();
            if !ids.is_empty() || started.elapsed() > Duration::from_secs(10) {
                return ids;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The queued message, header and body, as postcat prints it.
    fn message(&self, id: &str) -> String {
        let out = Command::new("postcat").arg("-c").arg(self.etc()).args(["-h", "-b", "-q", id]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for PrivatePostfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix").arg("-c").arg(self.etc()).arg("stop").output();
    }
}

fn without_first_received(message: &str) -> &str {
    assert!(message.starts_with("Received: "), "{message}");
    let mut at = message.find('\n').unwrap() + 1;
    while message[at..].starts_with([' ', '\t']) {
        at += message[at..].find('\n').unwrap() + 1;
    }
    &message[at..]
}

#[test]
fn a_real_postfix_relay_queues_exactly_what_we_sent() {
    if support::skip_unless_root("run a private Postfix instance") {
        return;
    }
    let postfix = PrivatePostfix::start();
    let s = Sender::new(&format!("relayhost = [127.0.0.1]:{}\n", postfix.port));
    let sent = "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nFrom: alice@example.test\r\nTo: bob@remote.test\r\n\
                Message-ID: <interop.1@example.test>\r\nSubject: through postfix\r\n\r\n.a line with a dot\r\n\
                ..two dots\r\n\r\nlast line\r\n";
    s.queue(&["bob@remote.test"], sent.as_bytes());
    let log = s.deliver();
    assert!(log.contains("status=sent"), "{log}");
    let held = postfix.held();
    assert_eq!(held.len(), 1, "{log}");
    let queued = postfix.message(&held[0]);
    assert_eq!(without_first_received(&queued), sent.replace("\r\n", "\n"), "byte for byte, but for line ends");
    assert!(queued.contains("pf.test"), "Postfix's own Received header is first: {queued}");
}

#[test]
fn the_bench_paths_exist() {
    // The interop tests and make bench share these programs; say clearly when one is gone.
    for tool in ["postcat", "postfix", "smtp-sink", "smtp-source"] {
        require(tool);
    }
    assert!(Path::new("/etc/postfix/master.cf").exists());
}
