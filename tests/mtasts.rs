//! MTA-STS (RFC 8461) and DANE (RFC 7672) end to end: policies served over HTTPS by Python's http.server on
//! 127.0.0.30:443, the records from a DNS server on loopback, postern-smtpd as the MX hosts
//! (one with a certificate from the CA the sender trusts through `SSL_CERT_FILE`, one with
//! a certificate from another CA) and a scripted MX that offers no STARTTLS. TLSA records
//! come with the AD bit a validating resolver sets, or without it.

mod support;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType::{A, MX, TLSA, TXT};
use openssl::x509::X509;
use postern::smtp::command::BodyType;
use support::dns::{Answer, FakeDns};
use support::{FakeMx, Server, TempDir, TestCa};

/// The addresses of a world's hosts: the policy host at `127.0.0.BASE`, the MX hosts with
/// the trusted CA's certificate, another CA's and no STARTTLS at BASE+1, +2, +3 (each test
/// has its own BASE, since the policy host's port is always 443).
struct Ips {
    https: &'static str,
    good: &'static str,
    rogue: &'static str,
    plain: &'static str,
}

fn ips(base: u8) -> Ips {
    let ip = |n: u8| -> &'static str { Box::leak(format!("127.0.0.{}", base + n).into_boxed_str()) };
    Ips { https: ip(0), good: ip(1), rogue: ip(2), plain: ip(3) }
}

/// Python's http.server over TLS on HTTPS_IP:443, serving `ROOT/HOST` for the policy of the
/// `Host:` asked (404 when there is none), and noting each request in `ROOT/requests`.
const HTTPS_SERVER: &str = r#"
import http.server, os, ssl, sys
root, ip, cert, key = sys.argv[1:5]
class Policy(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        with open(os.path.join(root, "requests"), "a") as f:
            f.write(host + " " + self.path + "\n")
        path = os.path.join(root, host)
        if self.path != "/.well-known/mta-sts.txt" or not os.path.isfile(path):
            self.send_error(404)
            return
        body = open(path, "rb").read()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer((ip, 443), Policy)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"#;

/// The policy web server, stopped when dropped.
struct Https {
    child: Child,
    root: PathBuf,
}

impl Https {
    fn start(root: &Path, ip: &str, cert: &Path, key: &Path) -> Https {
        std::fs::create_dir_all(root).unwrap();
        let mut child = Command::new("python3")
            .args(["-c", HTTPS_SERVER])
            .arg(root)
            .args([ip, cert.to_str().unwrap(), key.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the policy server did not start");
        Https { child, root: root.to_path_buf() }
    }

    fn serve(&self, domain: &str, policy: &str) {
        std::fs::write(self.root.join(format!("mta-sts.{domain}")), policy).unwrap();
    }

    /// The hosts asked for, one per request.
    fn requests(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.root.join("requests")).unwrap_or_default();
        text.lines().map(|l| l.split(' ').next().unwrap_or("").to_string()).collect()
    }
}

impl Drop for Https {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first certificate of a PEM file.
fn pem(path: &Path) -> X509 {
    X509::from_pem(&std::fs::read(path).unwrap()).unwrap()
}

fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

/// A receiving MX: postern-smtpd on `ip` (port `port`, 0 for any) with this certificate,
/// taking mail for anyone from loopback and keeping it in its spool.
fn mx_server(ip: &str, port: u16, cert: &(PathBuf, PathBuf)) -> Server {
    let dir = TempDir::new("mta-sts-mx");
    let extra =
        format!("trusted_networks = 127.0.0.0/8\ntls_cert = {}\ntls_key = {}\n", cert.0.display(), cert.1.display());
    let config =
        support::config_with(dir.path(), &extra).replace("listen = 127.0.0.1:0", &format!("listen = {ip}:{port}"));
    Server::start_in(dir, &config)
}

/// The recipients of what `server` has queued.
fn received(server: &Server) -> Vec<String> {
    let mut rcpts: Vec<String> = server
        .queued()
        .iter()
        .flat_map(|f| {
            let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).to_string();
            text.lines().filter_map(|l| l.strip_prefix("rcpt: ").map(str::to_string)).collect::<Vec<_>>()
        })
        .collect();
    rcpts.sort();
    rcpts
}

struct World {
    dir: TempDir,
    conf: PathBuf,
    ca: PathBuf,
    https: Https,
    good: Server,
    rogue: Server,
    plain: FakeMx,
    _dns: FakeDns,
}

/// The domains: each `NAME.test` has the MX `mx.NAME.test` and a policy `id=one` at
/// `mta-sts.NAME.test`, except `nopolicy.test`; `cached.test`'s policy is only in the cache.
fn world(tag: &str, base: u8) -> World {
    let ip = ips(base);
    let dir = TempDir::new(tag);
    let ca = TestCa::new(dir.path(), "test-ca");
    let rogue_ca = TestCa::new(dir.path(), "rogue-ca");
    let good_cert = ca.issue(dir.path(), "mx-good", &["mx.enforce.test", "mx.notlisted.test", "mx.daneta.test"]);
    // The good MX sends its CA along, as a DANE-TA server must.
    let chain = [std::fs::read(&good_cert.0).unwrap(), std::fs::read(&ca.cert).unwrap()].concat();
    std::fs::write(&good_cert.0, chain).unwrap();
    let rogue_cert = rogue_ca.issue(dir.path(), "mx-rogue", &["mx.wrongca.test", "mx.testing.test"]);
    let https_names: Vec<String> =
        ["enforce", "wrongca", "wrongname", "notlisted", "stripped", "testing", "cached", "danests"]
            .iter()
            .map(|d| format!("mta-sts.{d}.test"))
            .collect();
    let https_cert = ca.issue(dir.path(), "https", &https_names.iter().map(String::as_str).collect::<Vec<_>>());
    let https = Https::start(&dir.path().join("www"), ip.https, &https_cert.0, &https_cert.1);
    https.serve("enforce.test", &policy("enforce", "mx.enforce.test"));
    https.serve("wrongca.test", &policy("enforce", "mx.wrongca.test"));
    https.serve("wrongname.test", &policy("enforce", "mx.wrongname.test"));
    https.serve("notlisted.test", &policy("enforce", "mx.elsewhere.test"));
    https.serve("stripped.test", &policy("enforce", "*.stripped.test"));
    https.serve("testing.test", &policy("testing", "mx.elsewhere.test"));
    https.serve("danests.test", &policy("enforce", "mx.elsewhere.test"));

    let good = mx_server(ip.good, 0, &good_cert);
    let port = good.addr.port();
    let rogue = mx_server(ip.rogue, port, &rogue_cert);
    let plain = FakeMx::start(&format!("{}:{port}", ip.plain), |_| None);

    let record: &'static str = "v=STSv1; id=one;";
    let mut zone = vec![("nopolicy.test", MX, Answer::Mx(vec![(10, "mx.nopolicy.test")]))];
    zone.push(("mx.nopolicy.test", A, Answer::Ip(vec![ip.plain])));
    for (domain, mx_ip) in [
        ("enforce", ip.good),
        ("wrongca", ip.rogue),
        ("wrongname", ip.good),
        ("notlisted", ip.good),
        ("stripped", ip.plain),
        ("testing", ip.rogue),
        ("cached", ip.plain),
        ("danests", ip.rogue),
    ] {
        let name: &'static str = Box::leak(format!("{domain}.test").into_boxed_str());
        let mx: &'static str = Box::leak(format!("mx.{domain}.test").into_boxed_str());
        zone.push((name, MX, Answer::Mx(vec![(10, mx)])));
        zone.push((mx, A, Answer::Ip(vec![mx_ip])));
        zone.push((Box::leak(format!("_mta-sts.{name}").into_boxed_str()), TXT, Answer::Txt(vec![record])));
        zone.push((Box::leak(format!("mta-sts.{name}").into_boxed_str()), A, Answer::Ip(vec![ip.https])));
    }
    // DANE: each TLSA record names a certificate (by its key or whole), with or without AD.
    let (good_leaf, rogue_leaf, ca_cert) = (pem(&good_cert.0), pem(&rogue_cert.0), pem(&ca.cert));
    let spki = |c: &X509| openssl::sha::sha256(&c.public_key().unwrap().public_key_to_der().unwrap()).to_vec();
    let full512 = |c: &X509| openssl::sha::sha512(&c.to_der().unwrap()).to_vec();
    for (domain, mx_ip, record, authenticated) in [
        ("daneee", ip.rogue, (3, 1, 1, spki(&rogue_leaf)), true),
        ("daneta", ip.good, (2, 0, 2, full512(&ca_cert)), true),
        ("danebad", ip.good, (3, 1, 1, spki(&rogue_leaf)), true),
        ("daneforged", ip.rogue, (3, 1, 1, spki(&good_leaf)), false),
        ("danestrip", ip.plain, (3, 1, 1, spki(&good_leaf)), true),
        ("danests", ip.rogue, (3, 1, 1, spki(&rogue_leaf)), true),
        // PKIX-EE(1) is not for SMTP (RFC 7672 §3.1.3): TLS required, nothing matched.
        ("daneunusable", ip.rogue, (1, 1, 1, spki(&good_leaf)), true),
        ("daneunusableplain", ip.plain, (1, 1, 1, spki(&good_leaf)), true),
    ] {
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let mx = leak(format!("mx.{domain}.test"));
        if domain != "danests" {
            zone.push((leak(format!("{domain}.test")), MX, Answer::Mx(vec![(10, mx)])));
            zone.push((mx, A, Answer::Ip(vec![mx_ip])));
        }
        let tlsa = Answer::Tlsa { records: vec![record], authenticated };
        zone.push((leak(format!("_{port}._tcp.{mx}")), TLSA, tlsa));
    }
    let dns = FakeDns::start(&zone);
    let extra = format!("{}smtp_port = {port}\n", support::dns_config(Some(dns.addr)));
    let conf = dir.path().join("postern.conf");
    std::fs::write(&conf, support::config_with(dir.path(), &extra)).unwrap();
    World { conf, ca: ca.cert, https, good, rogue, plain, _dns: dns, dir }
}

impl World {
    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    fn send(&self, to: &[&str]) -> String {
        support::inject(
            &self.spool(),
            "alice@example.test",
            to,
            support::now(),
            BodyType::SevenBit,
            b"Subject: s\r\n\r\nhi\r\n",
        )
    }

    /// A delivery run that trusts the tests' CA only, stopped if it takes over a minute;
    /// its exit status and log.
    fn run(&self, env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
        let out = Command::new("timeout")
            .arg("60")
            .arg(support::program("postern-deliver"))
            .arg("-c")
            .arg(&self.conf)
            .env("SSL_CERT_FILE", &self.ca)
            .env("SSL_CERT_DIR", "/nonexistent")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (out.status, String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout))
    }

    /// The ID of the queued message for `rcpt`, as `postern-queue show` finds it.
    fn waiting_for(&self, rcpt: &str) -> Option<String> {
        support::waiting(&self.spool())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
            .find(|id| self.queue(&["show", id]).contains(rcpt))
    }

    fn queue(&self, args: &[&str]) -> String {
        let out =
            Command::new(support::program("postern-queue")).arg("-c").arg(&self.conf).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    }
}

/// The syslog-style line about `rcpt`.
fn line_for<'a>(log: &'a str, rcpt: &str) -> &'a str {
    log.lines().find(|l| l.contains(&format!("to=<{rcpt}>"))).unwrap_or_else(|| panic!("no line for {rcpt}:\n{log}"))
}

fn wait_for(what: impl Fn() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    what()
}

#[test]
fn each_policy_is_enforced_tested_or_absent_and_fetched_once_per_run() {
    if support::skip_unless_root("serve the policies on port 443") {
        return;
    }
    let w = world("mta-sts", 30);
    for to in [
        "a@enforce.test",
        "b@enforce.test",
        "c@wrongca.test",
        "d@notlisted.test",
        "i@wrongname.test",
        "e@stripped.test",
        "f@testing.test",
        "g@nopolicy.test",
    ] {
        w.send(&[to]);
    }
    let (status, log) = w.run(&[]);
    assert!(status.success(), "{log}");

    // enforce, certificate from the trusted CA for the MX name: delivered.
    for rcpt in ["a@enforce.test", "b@enforce.test"] {
        let line = line_for(&log, rcpt);
        assert!(line.contains("status=sent") && line.ends_with("tls=mta-sts:enforce"), "{line}");
    }
    // enforce, a certificate from another CA: waits, and says why.
    let line = line_for(&log, "c@wrongca.test");
    assert!(
        line.contains("dsn=4.7.5, status=deferred (MTA-STS policy one of wrongca.test (enforce): TLS handshake"),
        "{line}"
    );
    assert!(line.contains("certificate") && line.ends_with("tls=mta-sts:enforce"), "{line}");
    // enforce, the trusted CA's certificate for another name: waits.
    let line = line_for(&log, "i@wrongname.test");
    assert!(
        line.contains("dsn=4.7.5, status=deferred (MTA-STS policy one of wrongname.test (enforce): TLS handshake"),
        "{line}"
    );
    // enforce, the MX is not one the policy names: waits.
    let line = line_for(&log, "d@notlisted.test");
    assert!(line.contains("status=deferred (MTA-STS policy one of notlisted.test (enforce): no MX host is in the policy (mx.notlisted.test))"), "{line}");
    // enforce, STARTTLS not offered (stripped): waits, never sent in plaintext.
    let line = line_for(&log, "e@stripped.test");
    assert!(
        line.contains(
            "status=deferred (MTA-STS policy one of stripped.test (enforce): the server does not offer STARTTLS)"
        ),
        "{line}"
    );
    // testing: the failures are logged, the mail delivered as before.
    let line = line_for(&log, "f@testing.test");
    assert!(line.contains("status=sent") && line.ends_with("tls=mta-sts:testing"), "{line}");
    assert!(
        log.contains("testing.test: MTA-STS policy one (testing) would skip MX mx.testing.test; delivering as before"),
        "{log}"
    );
    assert!(log.contains("MTA-STS policy one of testing.test (testing): TLS handshake"), "{log}");
    // No policy: opportunistic, as before.
    let line = line_for(&log, "g@nopolicy.test");
    assert!(line.contains("status=sent") && line.ends_with("tls=opportunistic"), "{line}");

    // What each server received: nothing for the domains that wait.
    assert_eq!(received(&w.good), ["<a@enforce.test>", "<b@enforce.test>"]);
    assert!(wait_for(|| received(&w.rogue) == ["<f@testing.test>"]), "{:?}", received(&w.rogue));
    let plain = w.plain.commands();
    assert!(plain.iter().any(|c| c == "RCPT TO:<g@nopolicy.test>"), "{plain:?}");
    assert!(!plain.iter().any(|c| c.contains("stripped.test")), "{plain:?}");

    // Each domain's policy was fetched once, though two messages went to enforce.test.
    let mut asked = w.https.requests();
    asked.sort();
    let want =
        ["enforce", "notlisted", "stripped", "testing", "wrongca", "wrongname"].map(|d| format!("mta-sts.{d}.test"));
    assert_eq!(asked, want);

    // The operator sees why each message waits, and the policy of each attempt.
    let listed = w.queue(&["list"]);
    assert!(listed.contains("MTA-STS policy one of wrongca.test (enforce)"), "{listed}");
    assert!(listed.contains("no MX host is in the policy (mx.notlisted.test)"), "{listed}");
    let stripped = w.waiting_for("e@stripped.test").expect("the stripped.test message waits");
    let shown = w.queue(&["show", &stripped]);
    assert!(shown.contains("deferred <e@stripped.test> 4.7.5") && shown.contains("(tls mta-sts:enforce)"), "{shown}");

    // The policies are kept in the spool; the next run asks for none of them again.
    let cached = std::fs::read_to_string(w.spool().join("mta-sts/enforce.test")).unwrap();
    assert!(cached.starts_with("id: one\nfetched: ") && cached.contains("mode: enforce"), "{cached}");
    w.send(&["h@enforce.test"]);
    let (status, log) = w.run(&[]);
    assert!(status.success() && line_for(&log, "h@enforce.test").contains("status=sent"), "{log}");
    assert_eq!(w.https.requests().len(), 6, "fetched again: {:?}", w.https.requests());
}

#[test]
fn a_cached_policy_holds_while_its_host_is_down_and_a_crash_leaves_the_cache_whole() {
    if support::skip_unless_root("serve the policies on port 443") {
        return;
    }
    let w = world("mta-sts-cache", 40);
    // cached.test's record says id=one; the cache holds an older policy (id=zero) that the
    // policy host no longer serves (404). The cached one applies: its MX must do TLS.
    let cache = w.spool().join("mta-sts");
    std::fs::create_dir_all(&cache).unwrap();
    let body = policy("enforce", "mx.cached.test");
    std::fs::write(cache.join("cached.test"), format!("id: zero\nfetched: {}\n\n{body}", support::now() - 60)).unwrap();
    w.send(&["a@cached.test"]);
    let (status, log) = w.run(&[]);
    assert!(status.success(), "{log}");
    assert!(log.contains("cached.test: MTA-STS policy one not fetched: mta-sts.cached.test[127.0.0.40]: HTTP 404; the cached policy applies"), "{log}");
    let line = line_for(&log, "a@cached.test");
    assert!(
        line.contains(
            "status=deferred (MTA-STS policy zero of cached.test (enforce): the server does not offer STARTTLS)"
        ),
        "{line}"
    );
    assert!(!w.plain.commands().iter().any(|c| c.contains("cached.test")), "sent in plaintext");

    // A run killed while it writes a policy into the cache: no policy file, a draft, the
    // message still queued; the next run fetches again, delivers and clears the draft.
    w.send(&["b@enforce.test"]);
    let (status, log) = w.run(&[("POSTERN_CRASH_AT", "mta-sts-drafted")]);
    assert!(!status.success(), "{log}");
    let names: Vec<String> =
        std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    assert!(
        names.iter().any(|n| n.starts_with("enforce.test~")) && !names.contains(&"enforce.test".to_string()),
        "{names:?}"
    );
    let (status, log) = w.run(&[]);
    assert!(status.success() && line_for(&log, "b@enforce.test").contains("status=sent"), "{log}");
    let names: Vec<String> =
        std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    assert!(names.contains(&"enforce.test".to_string()) && !names.iter().any(|n| n.contains('~')), "{names:?}");

    // mta_sts = off: no policy asked for, mail goes as before (opportunistic).
    let text = std::fs::read_to_string(&w.conf).unwrap();
    std::fs::write(&w.conf, format!("{text}mta_sts = off\n")).unwrap();
    let before = w.https.requests().len();
    w.send(&["c@stripped.test"]);
    let (status, log) = w.run(&[]);
    let line = line_for(&log, "c@stripped.test");
    assert!(status.success() && line.contains("status=sent") && line.ends_with("tls=opportunistic"), "{log}");
    assert_eq!(w.https.requests().len(), before);
}

#[test]
fn dane_records_hold_only_when_authenticated_and_come_before_mta_sts() {
    if support::skip_unless_root("serve the policies on port 443") {
        return;
    }
    let w = world("dane", 50);
    // One session at a time per address: mail for the MX names sharing it must take turns
    // (a session kept for one name makes room for another's).
    let text = std::fs::read_to_string(&w.conf).unwrap();
    std::fs::write(&w.conf, format!("{text}max_per_destination = 1\n")).unwrap();
    for to in [
        "a@daneee.test",
        "b@daneta.test",
        "c@danebad.test",
        "d@daneforged.test",
        "e@danestrip.test",
        "f@danests.test",
        "g@daneunusable.test",
        "h@daneunusableplain.test",
        "i@enforce.test",
        "j@testing.test",
    ] {
        w.send(&[to]);
    }
    let (status, log) = w.run(&[]);
    assert!(status.success(), "{log}");
    // DANE-EE: the server's key matches; its CA and name do not matter (RFC 7672 §3.1.1).
    let line = line_for(&log, "a@daneee.test");
    assert!(line.contains("status=sent") && line.ends_with("tls=dane"), "{line}");
    // DANE-TA: the certificate chains to the CA the record names, for the MX name.
    let line = line_for(&log, "b@daneta.test");
    assert!(line.contains("status=sent") && line.ends_with("tls=dane"), "{line}");
    // Authenticated records that match nothing the server sends: the mail waits.
    let line = line_for(&log, "c@danebad.test");
    let want = "dsn=4.7.5, status=deferred (DANE (TLSA records of mx.danebad.test): no TLSA record matches";
    assert!(line.contains(want) && line.ends_with("tls=dane"), "{line}");
    // Records without the AD bit are not believed: STARTTLS when offered, as before.
    let line = line_for(&log, "d@daneforged.test");
    assert!(line.contains("status=sent") && line.ends_with("tls=opportunistic"), "{line}");
    // DANE makes TLS mandatory: no STARTTLS, no delivery.
    let line = line_for(&log, "e@danestrip.test");
    assert!(
        line.contains("status=deferred (DANE (TLSA records of mx.danestrip.test): the server does not offer STARTTLS)"),
        "{line}"
    );
    assert!(!w.plain.commands().iter().any(|c| c.contains("danestrip")), "sent in plaintext");
    // DANE before MTA-STS (RFC 8461 §2): the policy does not name the MX, DANE vouches for it.
    let line = line_for(&log, "f@danests.test");
    assert!(line.contains("status=sent") && line.ends_with("tls=dane"), "{line}");
    // Authenticated records, none usable: encrypted without authentication, never in plaintext.
    let line = line_for(&log, "g@daneunusable.test");
    assert!(line.contains("status=sent") && line.ends_with("tls=dane"), "{line}");
    let line = line_for(&log, "h@daneunusableplain.test");
    let want = "status=deferred (DANE (TLSA records of mx.daneunusableplain.test): the server does not offer STARTTLS)";
    assert!(line.contains(want), "{line}");
    for rcpt in ["i@enforce.test", "j@testing.test"] {
        assert!(line_for(&log, rcpt).contains("status=sent"), "{log}");
    }
    assert_eq!(received(&w.good), ["<b@daneta.test>", "<i@enforce.test>"]);
    assert!(wait_for(|| received(&w.rogue).len() == 5), "{:?}", received(&w.rogue));

    // dane = off: the records are not asked for; the waiting message goes, opportunistic.
    let text = std::fs::read_to_string(&w.conf).unwrap();
    std::fs::write(&w.conf, format!("{text}dane = off\n")).unwrap();
    let (status, log) = w.run(&[]);
    let waiting = support::waiting(&w.spool());
    assert!(status.success() && !waiting.is_empty(), "{log}");
    let id = w.waiting_for("c@danebad.test").unwrap();
    let out =
        Command::new(support::program("postern-deliver")).arg("-c").arg(&w.conf).args(["--id", &id]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    let line = line_for(&log, "c@danebad.test");
    assert!(line.contains("status=sent") && line.ends_with("tls=opportunistic"), "{line}");
}
