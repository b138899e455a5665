//! STARTTLS (RFC 3207) over real sockets: plaintext injection, state reset, stalled handshakes.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use native_tls::{TlsConnector, TlsStream};
use support::{Client, Server, code, have};

/// The two configuration lines that switch STARTTLS on.
fn tls_files(cert: &Path, key: &Path) -> String {
    format!("tls_cert = {}\ntls_key = {}\n", cert.display(), key.display())
}

fn tls_server(extra: &str) -> Server {
    let (cert, key) = support::shared_certificate();
    Server::start(&(tls_files(&cert, &key) + extra))
}

/// A client that can switch to TLS mid-session.
struct TlsClient {
    reader: BufReader<TlsStream<TcpStream>>,
}

impl TlsClient {
    fn upgrade(client: Client) -> TlsClient {
        let connector = TlsConnector::builder().danger_accept_invalid_certs(true).build().unwrap();
        let tls = connector.connect("mail.example.test", client.stream).expect("TLS handshake");
        TlsClient { reader: BufReader::new(tls) }
    }

    fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return lines.join("\n");
            }
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.reader.get_mut().write_all(format!("{line}\r\n").as_bytes()).unwrap();
        self.reply()
    }
}

#[test]
fn starttls_is_offered_once_and_mail_flows_under_tls() {
    let server = tls_server("");
    let mut c = Client::greeted(server.addr);
    assert!(c.cmd("EHLO x").lines().any(|l| l == "250-STARTTLS" || l == "250 STARTTLS"));
    assert_eq!(code(&c.cmd("STARTTLS")), "220 2.0.0");
    let mut t = TlsClient::upgrade(c);
    // The state is back to just after the greeting.
    assert_eq!(code(&t.cmd("MAIL FROM:<a@remote.test>")), "503 5.5.1");
    // No STARTTLS in the EHLO reply under TLS.
    let ehlo = t.cmd("EHLO x");
    assert!(ehlo.starts_with("250-") && !ehlo.contains("STARTTLS"), "{ehlo}");
    // STARTTLS again.
    assert_eq!(code(&t.cmd("STARTTLS")), "554 5.5.1");
    // Relay row 40: TLS is not authorisation.
    assert_eq!(code(&t.cmd("MAIL FROM:<a@remote.test>")), "250 2.1.0");
    assert_eq!(code(&t.cmd("RCPT TO:<relaytest@remote.test>")), "554 5.7.1");
    assert_eq!(code(&t.cmd("RCPT TO:<alice@example.test>")), "250 2.1.5");
    assert_eq!(code(&t.cmd("DATA")), "354");
    assert_eq!(code(&t.cmd("Subject: tls\r\n\r\nsecret\r\n.")), "250 2.0.0");
    assert_eq!(code(&t.cmd("QUIT")), "221 2.0.0");
    let message = String::from_utf8(support::message_of(&server.queued()[0])).unwrap();
    assert!(message.contains(" with ESMTPS id "), "{message}");
}

#[test]
fn plaintext_sent_with_starttls_is_discarded() {
    let server = tls_server("");
    // STARTTLS and RSET in one write. The RSET must never be answered.
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    c.send(b"STARTTLS\r\nRSET\r\n");
    assert_eq!(code(&c.reply()), "220 2.0.0");
    let mut t = TlsClient::upgrade(c);
    let first = t.cmd("EHLO x");
    assert!(first.starts_with("250-mail.example.test"), "the first TLS reply was `{first}`");
    // An injected MAIL does not count.
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    c.send(b"STARTTLS\r\nMAIL FROM:<a@remote.test>\r\n");
    assert_eq!(code(&c.reply()), "220 2.0.0");
    let mut t = TlsClient::upgrade(c);
    t.cmd("EHLO x");
    assert_eq!(code(&t.cmd("RCPT TO:<alice@example.test>")), "503 5.5.1");
}

#[test]
fn starttls_arguments_and_absence() {
    let server = tls_server("");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    assert_eq!(code(&c.cmd("STARTTLS foo")), "501 5.5.4");
    let plain = Server::start("");
    let mut c = Client::greeted(plain.addr);
    assert!(!c.cmd("EHLO x").contains("STARTTLS"));
    assert_eq!(code(&c.cmd("STARTTLS")), "502 5.5.1");
}

#[test]
fn a_broken_or_stalled_handshake_ends_the_session() {
    let server = tls_server("starttls_timeout = 1s\n");
    // Garbage instead of a ClientHello.
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    assert_eq!(code(&c.cmd("STARTTLS")), "220 2.0.0");
    c.send(b"this is not TLS at all\r\n\r\n");
    assert!(c.is_closed(Duration::from_secs(5)));
    // Half a ClientHello, then silence: closed at the starttls timeout.
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    assert_eq!(code(&c.cmd("STARTTLS")), "220 2.0.0");
    c.send(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]);
    let started = Instant::now();
    assert!(c.is_closed(Duration::from_secs(5)));
    assert!(started.elapsed() >= Duration::from_millis(800));
    // The server goes on.
    let mut ok = Client::greeted(server.addr);
    assert_eq!(code(&ok.cmd("NOOP")), "250 2.0.0");
}

/// Runs `openssl` with these arguments in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, and a server certificate it signed, with the key in `format`: `pkcs8`, `rsa`
/// (PKCS#1, `BEGIN RSA PRIVATE KEY`) or `ec` (SEC1, `BEGIN EC PRIVATE KEY`). Writes
/// `chain.pem` (server certificate, then the CA) and `key.pem`.
fn make_certificates(dir: &Path, format: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Test CA",
        ],
    );
    match format {
        "ec" => openssl(dir, &["ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", "key.pem"]),
        _ => openssl(dir, &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "key.pem"]),
    }
    if format == "rsa" {
        openssl(dir, &["rsa", "-in", "key.pem", "-traditional", "-out", "key.pem"]);
    }
    openssl(dir, &["req", "-new", "-key", "key.pem", "-subj", "/CN=mail.example.test", "-out", "server.csr"]);
    openssl(
        dir,
        &["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "2", "-out", "server.pem"],
    );
    let chain = [std::fs::read(dir.join("server.pem")).unwrap(), std::fs::read(dir.join("ca.pem")).unwrap()].concat();
    std::fs::write(dir.join("chain.pem"), chain).unwrap();
    let key = std::fs::read_to_string(dir.join("key.pem")).unwrap();
    let begins = match format {
        "rsa" => "-----BEGIN RSA PRIVATE KEY-----",
        "ec" => "-----BEGIN EC PRIVATE KEY-----",
        _ => "-----BEGIN PRIVATE KEY-----",
    };
    assert!(key.starts_with(begins), "{format}: the key file starts {:?}", key.lines().next());
}

fn server_with_key(format: &str) -> (Server, support::TempDir) {
    let dir = support::TempDir::new(&format!("tls-{format}"));
    make_certificates(dir.path(), format);
    let server = Server::start(&tls_files(&dir.path().join("chain.pem"), &dir.path().join("key.pem")));
    (server, dir)
}

#[test]
fn openssl_s_client_gets_tls_1_3_and_the_chain_with_every_key_format() {
    if support::skip_unless(have("openssl"), "needs the openssl command") {
        return;
    }
    for format in ["pkcs8", "rsa", "ec"] {
        let (server, dir) = server_with_key(format);
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-tls1_3", "-starttls", "smtp", "-showcerts", "-CAfile"])
            .arg(dir.path().join("ca.pem"))
            .args(["-connect", &server.addr.to_string(), "-servername", "mail.example.test"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Protocol: TLSv1.3") || text.contains("New, TLSv1.3"), "{format}: {text}");
        assert_eq!(text.matches("-----BEGIN CERTIFICATE-----").count(), 2, "{format}: the chain is sent");
        assert!(text.contains("Verify return code: 0 (ok)"), "{format}: {text}");
    }
}

#[test]
fn python_with_tls_1_3_as_minimum_sends_mail_and_the_header_names_the_cipher() {
    if support::skip_unless(have("python3") && have("openssl"), "needs python3 and the openssl command") {
        return;
    }
    let (server, dir) = server_with_key("rsa");
    let script = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.check_hostname = False  # the certificate names mail.example.test, the test dials 127.0.0.1
host, port = sys.argv[1].rsplit(":", 1)
s = smtplib.SMTP(host, int(port))
s.starttls(context=ctx)
print(s.sock.version())
s.sendmail("a@remote.test", ["alice@example.test"], b"Subject: t\r\n\r\nunder TLS 1.3\r\n")
s.quit()
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &server.addr.to_string()])
        .arg(dir.path().join("ca.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "TLSv1.3");
    let queued = server.queued();
    assert_eq!(queued.len(), 1);
    let message = String::from_utf8(support::message_of(&queued[0])).unwrap();
    assert!(message.contains("\r\n\t(using TLSv1.3 with cipher TLS_"), "{message}");
    assert!(message.contains(" with ESMTPS id "), "{message}");
}

#[test]
fn a_key_that_does_not_match_or_parse_is_refused_at_start() {
    if support::skip_unless(have("openssl"), "needs the openssl command") {
        return;
    }
    let dir = support::TempDir::new("tls-bad");
    make_certificates(dir.path(), "pkcs8");
    std::fs::write(dir.path().join("junk.pem"), "-----BEGIN PRIVATE KEY-----\nnot base64\n").unwrap();
    for (key, want) in [("ca.key", "does not match"), ("junk.pem", "not a PEM private key")] {
        let text = tls_files(&dir.path().join("chain.pem"), &dir.path().join(key));
        let mut config = postern::config::Config::parse(&text, "t").unwrap();
        config.spool = dir.path().join("spool");
        let e = postern::server::load_tls(&config).err().expect("refused");
        assert!(e.contains(want), "{key}: {e}");
    }
}

#[test]
fn a_key_passed_as_a_systemd_credential_is_used_instead_of_the_configured_path() {
    if support::skip_unless(have("openssl"), "needs the openssl command") {
        return;
    }
    let creds = support::TempDir::new("tls-credentials");
    make_certificates(creds.path(), "ec");
    std::fs::rename(creds.path().join("chain.pem"), creds.path().join("tls_cert")).unwrap();
    std::fs::rename(creds.path().join("key.pem"), creds.path().join("tls_key")).unwrap();
    let dir = support::TempDir::new("tls-credential-server");
    // The configured paths do not exist: only the credentials can make TLS work.
    let config = support::config_with(dir.path(), "tls_cert = /nonexistent/cert.pem\ntls_key = /nonexistent/key.pem\n");
    let passed = format!("CREDENTIALS_DIRECTORY={}", creds.path().display());
    let server = Server::start_wrapped(dir, &config, &["env", &passed]);
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    assert_eq!(code(&c.cmd("STARTTLS")), "220 2.0.0");
    let mut tls = TlsClient::upgrade(c);
    assert!(tls.cmd("EHLO x").starts_with("250-"));
    assert!(server.log().contains("tls_key: the credential systemd passed"), "{}", server.log());
}

/// One `openssl s_client` session: STARTTLS, then QUIT once the server's tickets have had time
/// to arrive; `-sess_out` or `-sess_in` as `session`. What s_client printed.
fn s_client_session(addr: std::net::SocketAddr, version: &str, session: (&str, &Path)) -> String {
    let mut child = std::process::Command::new("openssl")
        .args([
            "s_client",
            version,
            "-crlf",
            "-nocommands",
            "-starttls",
            "smtp",
            "-servername",
            "mail.example.test",
            "-connect",
        ])
        .arg(addr.to_string())
        .arg(session.0)
        .arg(session.1)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Its input stays open: s_client ends when the server closes after 221, not before
    // (-nocommands: a line beginning with Q is sent, not taken as "quit").
    let mut input = child.stdin.take().unwrap();
    input.write_all(b"QUIT\n").unwrap();
    let out = child.wait_with_output().unwrap();
    drop(input);
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A client that comes back resumes its TLS session with the ticket it was given (RFC 8446
/// §4.6.1 for TLS 1.3, RFC 5077 for 1.2), as `openssl s_client` sees it; a server started
/// afresh has a new ticket key, and the same ticket gets a full handshake.
#[test]
fn a_returning_client_resumes_with_its_ticket_in_tls_1_3_and_1_2() {
    if support::skip_unless(have("openssl"), "needs the openssl command") {
        return;
    }
    let dir = support::TempDir::new("tickets");
    for version in ["-tls1_3", "-tls1_2"] {
        let server = tls_server("");
        let ticket = dir.path().join(format!("session{version}"));
        let first = s_client_session(server.addr, version, ("-sess_out", &ticket));
        assert!(first.contains("New, TLSv1."), "{version}: {first}");
        assert!(first.contains("221 2.0.0"), "{version}: {first}");
        let again = s_client_session(server.addr, version, ("-sess_in", &ticket));
        assert!(again.contains("Reused, TLSv1."), "{version}: {again}");
        assert!(again.contains("221 2.0.0"), "{version}: {again}");
        drop(server);
        let restarted = tls_server("");
        let elsewhere = s_client_session(restarted.addr, version, ("-sess_in", &ticket));
        assert!(elsewhere.contains("New, TLSv1.") && elsewhere.contains("221 2.0.0"), "{version}: {elsewhere}");
    }
}

/// The certificate a server presents after STARTTLS, as DER.
fn presented_certificate(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut c = Client::greeted(addr);
    c.cmd("EHLO x");
    assert_eq!(code(&c.cmd("STARTTLS")), "220 2.0.0");
    let tls = TlsClient::upgrade(c);
    tls.reader.get_ref().peer_certificate().unwrap().unwrap().to_der().unwrap()
}

/// certbot's case: the daemon starts as root and runs as its user, the key is readable by
/// root alone, the files are renewed in place and the daemon told to reload. The renewed
/// certificate is the one presented next.
#[test]
fn a_renewed_root_only_certificate_is_taken_up_by_a_reload() {
    use std::os::unix::fs::PermissionsExt;
    if support::skip_unless_root("start the server as root with a service user") {
        return;
    }
    let service = format!("pstn-t{}", std::process::id() % 100_000);
    let added = std::process::Command::new("useradd").args(["--system", "--no-create-home", &service]).output();
    assert!(added.unwrap().status.success());
    struct Removed(String);
    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = std::process::Command::new("userdel").arg(&self.0).output();
        }
    }
    let _user = Removed(service.clone());
    let ids = postern::sys::lookup_user(&service).unwrap().unwrap();
    let dir = support::TempDir::new("tls-renewed");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    std::fs::set_permissions(&live, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (cert, key) = support::test_certificate(&live);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir(dir.path().join("spool")).unwrap();
    std::os::unix::fs::chown(dir.path().join("spool"), Some(ids.uid), Some(ids.gid)).unwrap();
    let config = support::config_with(dir.path(), &(tls_files(&cert, &key) + &format!("user = {service}\n")));
    let server = Server::start_in(dir, &config);
    let before = presented_certificate(server.addr);
    assert_eq!(before, openssl::x509::X509::from_pem(&std::fs::read(&cert).unwrap()).unwrap().to_der().unwrap());

    // Renewed: new files written beside the old and renamed over them, as certbot does.
    let renewed = server.dir.path().join("renewed");
    std::fs::create_dir(&renewed).unwrap();
    let (new_cert, new_key) = support::test_certificate(&renewed);
    std::fs::rename(&new_cert, &cert).unwrap();
    std::fs::rename(&new_key, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::process::Command::new("kill").arg("-HUP").arg(server.pid().to_string()).status().unwrap();
    let expected = openssl::x509::X509::from_pem(&std::fs::read(&cert).unwrap()).unwrap().to_der().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.log().contains("reloaded ") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = presented_certificate(server.addr);
    assert_ne!(after, before, "{}", server.log());
    assert_eq!(after, expected, "{}", server.log());
    assert!(!server.log().contains("TLS files not reloaded"), "{}", server.log());
}
