//! Authenticated submission (RFC 6409 on 587, RFC 8314 on 465, AUTH per RFC 4954) with real
//! clients: swaks, Python's smtplib, curl and msmtp each log in and send to an outside domain,
//! which the delivery run takes to a loopback sink; what must be refused is refused.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::{Client, FakeMx, Server, TempDir, code, config_with, hash_line, have, skip_unless};

const PASSWORD: &str = "s3cret horse";

/// A server with the MTA port, 587 and 465, alice (SHA-512-crypt) and bob (bcrypt) as users,
/// relaying through a loopback sink that stands for the outside world.
struct Setup {
    server: Server,
    sink: FakeMx,
    conf: PathBuf,
}

fn setup(extra: &str) -> Setup {
    let dir = TempDir::new("submission");
    let (cert, key) = support::test_certificate(dir.path());
    let users = dir.path().join("users");
    let lines = hash_line("alice", PASSWORD, "sha512") + &hash_line("bob", "bobs password", "bcrypt");
    std::fs::write(&users, lines).unwrap();
    std::fs::set_permissions(&users, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let sink = FakeMx::start("127.0.0.1:0", |_| None);
    let extra = format!(
        "tls_cert = {}\ntls_key = {}\nauth_users = {}\nrelayhost = [127.0.0.1]:{}\nerror_sleep_time = 50ms\n{extra}",
        cert.display(),
        key.display(),
        users.display(),
        sink.addr.port()
    );
    let config = config_with(dir.path(), &extra)
        .replace("listen = 127.0.0.1:0\n", "listen = 127.0.0.1:0, 127.0.0.1:0 submission, 127.0.0.1:0 smtps\n");
    let conf = dir.path().join("postern.conf");
    let server = Server::start_in(dir, &config);
    Setup { server, sink, conf }
}

impl Setup {
    fn submission(&self) -> SocketAddr {
        self.server.port_for("submission")
    }

    fn smtps(&self) -> SocketAddr {
        self.server.port_for("smtps")
    }

    /// Runs the delivery and returns what the sink received.
    fn deliver(&self) -> Vec<String> {
        support::deliver(&self.conf, None, &[]);
        self.sink.messages().iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect()
    }

    fn queued_text(&self) -> Vec<String> {
        self.server.queued().iter().map(|p| std::fs::read_to_string(p).unwrap()).collect()
    }
}

fn swaks(args: &[&str]) -> Output {
    Command::new("swaks").args(args).output().expect("swaks")
}

fn said(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn port(addr: SocketAddr) -> String {
    addr.port().to_string()
}

#[test]
fn swaks_starttls_auth_on_587_reaches_the_outside_domain() {
    if skip_unless(have("swaks"), "swaks is not installed") {
        return;
    }
    let s = setup("");
    let p = port(s.submission());
    let out = swaks(&[
        "--server",
        "127.0.0.1",
        "--port",
        &p,
        "--tls",
        "--auth",
        "LOGIN",
        "--auth-user",
        "alice",
        "--auth-password",
        PASSWORD,
        "--from",
        "alice@example.test",
        "--to",
        "friend@remote.test",
        "--header",
        "Subject: from the laptop",
        "--body",
        "hello from 587",
    ]);
    let text = said(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("235 2.7.0") && text.contains("250 2.0.0 Ok: queued as"), "{text}");
    let queued = s.queued_text();
    assert_eq!(queued.len(), 1);
    assert!(queued[0].contains("\nauth: alice\nsubmitted: yes\n"), "{}", queued[0]);
    assert!(queued[0].contains(" with ESMTPSA id "), "{}", queued[0]);
    // The server's log is read as it writes it: a line may still be on its way.
    let log = s.server.log_with(", sasl_username=alice, from=<alice@example.test>");
    assert!(log.contains("sasl_method=LOGIN, sasl_username=alice"), "{log}");
    assert!(log.contains(", sasl_username=alice, from=<alice@example.test>"), "{log}");
    let received = s.deliver();
    assert_eq!(received.len(), 1);
    assert!(received[0].contains("Subject: from the laptop") && received[0].contains("hello from 587"));
    assert!(s.sink.commands().contains(&"RCPT TO:<friend@remote.test>".to_string()));
}

#[test]
fn swaks_implicit_tls_auth_on_465() {
    if skip_unless(have("swaks"), "swaks is not installed") {
        return;
    }
    let s = setup("");
    let p = port(s.smtps());
    let out = swaks(&[
        "--server",
        "127.0.0.1",
        "--port",
        &p,
        "--tlsc",
        "--auth",
        "PLAIN",
        "--auth-user",
        "bob",
        "--auth-password",
        "bobs password",
        "--from",
        "bob@example.test",
        "--to",
        "friend@remote.test",
    ]);
    let text = said(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("235 2.7.0"), "{text}");
    assert_eq!(s.deliver().len(), 1);
}

#[test]
fn swaks_refusals_without_auth_with_a_wrong_password_and_as_someone_else() {
    if skip_unless(have("swaks"), "swaks is not installed") {
        return;
    }
    let s = setup("");
    let p = port(s.submission());
    let base = ["--server", "127.0.0.1", "--port", &p, "--tls", "--to", "friend@remote.test"];
    let run = |more: &[&str]| {
        let args: Vec<&str> = base.iter().chain(more).copied().collect();
        said(&swaks(&args))
    };
    let no_auth = run(&["--from", "alice@example.test"]);
    assert!(no_auth.contains("530 5.7.0 Authentication required"), "{no_auth}");
    let wrong = run(&["--from", "alice@example.test", "--auth-user", "alice", "--auth-password", "guess"]);
    assert!(wrong.contains("535 5.7.8"), "{wrong}");
    let other = run(&["--from", "bob@example.test", "--auth-user", "alice", "--auth-password", PASSWORD]);
    assert!(
        other.contains("553 5.7.1 <bob@example.test>: Sender address rejected: not owned by user alice"),
        "{other}"
    );
    let header = run(&[
        "--from",
        "alice@example.test",
        "--auth-user",
        "alice",
        "--auth-password",
        PASSWORD,
        "--header",
        "From: Bob <bob@example.test>",
    ]);
    assert!(header.contains("553 5.7.1 <bob@example.test>: From: address rejected"), "{header}");
    // The MTA port takes no AUTH and relays for nobody unknown, TLS or not.
    let mta = said(&swaks(&[
        "--server",
        "127.0.0.1",
        "--port",
        &port(s.server.addr),
        "--tls",
        "--from",
        "alice@example.test",
        "--to",
        "friend@remote.test",
        "--auth-user",
        "alice",
        "--auth-password",
        PASSWORD,
    ]));
    assert!(!mta.contains("235 2.7.0"), "{mta}");
    assert!(s.server.queued().is_empty());
    assert!(s.deliver().is_empty(), "nothing reached the outside");
}

#[test]
fn python_smtplib_starttls_login_and_smtp_ssl() {
    if skip_unless(have("python3"), "python3 is not installed") {
        return;
    }
    let s = setup("");
    let script = format!(
        r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
msg = "From: alice@example.test\r\nTo: friend@remote.test\r\nSubject: smtplib {{}}\r\n\r\nbody\r\n"
with smtplib.SMTP("127.0.0.1", {sub}) as c:
    c.ehlo()
    assert "auth" not in c.esmtp_features, c.esmtp_features
    c.starttls(context=ctx)
    c.ehlo()
    assert c.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"], c.esmtp_features
    c.login("alice", "{pw}")
    c.sendmail("alice@example.test", ["friend@remote.test"], msg.format("starttls"))
with smtplib.SMTP_SSL("127.0.0.1", {ssl}, context=ctx) as c:
    try:
        c.login("alice", "wrong")
        sys.exit("a wrong password was accepted")
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535, e
with smtplib.SMTP_SSL("127.0.0.1", {ssl}, context=ctx) as c:
    c.login("alice", "{pw}")
    c.sendmail("alice@example.test", ["friend@remote.test"], msg.format("ssl"))
print("ok")
"#,
        sub = s.submission().port(),
        ssl = s.smtps().port(),
        pw = PASSWORD
    );
    let out = Command::new("python3").arg("-c").arg(&script).output().unwrap();
    assert!(out.status.success() && said(&out).contains("ok"), "{}", said(&out));
    let received = s.deliver();
    assert_eq!(received.len(), 2, "{received:?}");
    assert!(received.iter().any(|m| m.contains("Subject: smtplib starttls")));
    assert!(received.iter().any(|m| m.contains("Subject: smtplib ssl")));
}

#[test]
fn curl_over_smtps_with_a_user() {
    if skip_unless(have("curl"), "curl is not installed") {
        return;
    }
    let s = setup("");
    let dir = TempDir::new("curl");
    let message = dir.path().join("message");
    std::fs::write(&message, "From: alice@example.test\r\nTo: friend@remote.test\r\nSubject: curl\r\n\r\nvia curl\r\n")
        .unwrap();
    let url = format!("smtps://127.0.0.1:{}", s.smtps().port());
    let send = |password: &str| {
        Command::new("curl")
            .args(["-sS", "--ssl-reqd", "-k", &url, "--user", &format!("alice:{password}")])
            .args(["--mail-from", "alice@example.test", "--mail-rcpt", "friend@remote.test", "--upload-file"])
            .arg(&message)
            .output()
            .unwrap()
    };
    let bad = send("nope");
    assert!(!bad.status.success(), "{}", said(&bad));
    let good = send(PASSWORD);
    assert!(good.status.success(), "{}", said(&good));
    let received = s.deliver();
    assert_eq!(received.len(), 1);
    assert!(received[0].contains("via curl"));
}

#[test]
fn msmtp_with_starttls_and_auth() {
    if skip_unless(have("msmtp"), "msmtp is not installed") {
        return;
    }
    let s = setup("");
    let dir = TempDir::new("msmtp");
    let rc = dir.path().join("msmtprc");
    let account = |password: &str| {
        format!(
            "account default\nhost 127.0.0.1\nport {}\ntls on\ntls_starttls on\ntls_certcheck off\nauth on\n\
             user alice\npassword {password}\nfrom alice@example.test\n",
            s.submission().port()
        )
    };
    let send = |password: &str| {
        std::fs::write(&rc, account(password)).unwrap();
        std::fs::set_permissions(&rc, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let mut child = Command::new("msmtp")
            .arg("-C")
            .arg(&rc)
            .arg("friend@remote.test")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let text = "From: alice@example.test\nTo: friend@remote.test\nSubject: msmtp\n\nvia msmtp\n";
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let bad = send("nope");
    assert!(!bad.status.success() && said(&bad).contains("535"), "{}", said(&bad));
    let good = send(PASSWORD);
    assert!(good.status.success(), "{}", said(&good));
    let received = s.deliver();
    assert_eq!(received.len(), 1);
    assert!(received[0].contains("via msmtp"));
}

#[test]
fn auth_is_not_offered_before_tls_on_587() {
    let s = setup("");
    let mut c = Client::greeted(s.submission());
    let ehlo = c.cmd("EHLO laptop.test");
    assert!(ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"), "{ehlo}");
    let token = postern::smtp::client::base64(format!("\0alice\0{PASSWORD}").as_bytes());
    assert_eq!(code(&c.cmd(&format!("AUTH PLAIN {token}"))), "538 5.7.11");
    assert_eq!(code(&c.cmd("MAIL FROM:<alice@example.test>")), "530 5.7.0");
    // The MTA port offers no AUTH at all, and takes mail for local users without it.
    let mut c = Client::greeted(s.server.addr);
    assert!(!c.cmd("EHLO x").contains("AUTH"));
    assert_eq!(code(&c.cmd(&format!("AUTH PLAIN {token}"))), "503 5.5.1");
    assert_eq!(code(&c.cmd("MAIL FROM:<someone@remote.test>")), "250 2.1.0");
    assert_eq!(code(&c.cmd("RCPT TO:<alice@example.test>")), "250 2.1.5");
}

/// With plaintext AUTH allowed on loopback (as a local web app would use it), a raw client
/// can drive every failure path.
#[test]
fn failures_count_toward_the_error_limit_and_lock_the_address_out() {
    let s = setup("auth_plaintext = loopback\nauth_failure_limit = 3\nauth_lockout_time = 1h\nhard_error_limit = 10\n");
    let good = postern::smtp::client::base64(format!("\0alice\0{PASSWORD}").as_bytes());
    let bad = postern::smtp::client::base64(b"\0alice\0guess");
    let mut c = Client::greeted(s.submission());
    assert!(c.cmd("EHLO x").contains("AUTH PLAIN LOGIN"));
    for reply in ["=", "A", "AA", "AAA", "====", "!!!!"] {
        let r = c.cmd(&format!("AUTH PLAIN {reply}"));
        assert!(["501 5.5.2", "535 5.7.8", "501 5.5.4"].contains(&code(&r).as_str()), "{reply}: {r}");
    }
    assert_eq!(code(&c.cmd(&format!("AUTH PLAIN {}", "A".repeat(20_000)))), "500 5.5.2");
    assert_eq!(code(&c.cmd("AUTH PLAIN")), "334");
    assert_eq!(code(&c.cmd(&"A".repeat(13_000))), "500 5.5.6");
    assert_eq!(code(&c.cmd("AUTH LOGIN")), "334");
    assert_eq!(code(&c.cmd("*")), "501 5.7.0");
    // Nine errors so far: one more is allowed, the next is past the hard error limit.
    assert_eq!(code(&c.cmd(&format!("AUTH PLAIN {bad}"))), "535 5.7.8");
    let r = c.cmd(&format!("AUTH PLAIN {bad}"));
    assert!(r.starts_with("421 4.7.0") && r.contains("too many errors"), "past the hard error limit: {r}");
    // A fresh session: its first wrong password is the address's third, which locks it out.
    let mut c = Client::greeted(s.submission());
    c.cmd("EHLO x");
    let r = c.cmd(&format!("AUTH PLAIN {bad}"));
    assert!(r.starts_with("421 4.7.0"), "locked out: {r}");
    assert!(c.is_closed(Duration::from_secs(5)));
    let mut c = Client::greeted(s.submission());
    c.cmd("EHLO x");
    assert!(c.cmd(&format!("AUTH PLAIN {good}")).starts_with("421 4.7.0"), "the right password too, for a while");
    let log = s.server.log_with("SASL PLAIN authentication failed, sasl_username=alice");
    assert!(log.contains("SASL PLAIN authentication failed, sasl_username=alice"), "{log}");
}

#[test]
fn a_successful_login_resets_nothing_for_others_and_relays_only_for_that_session() {
    let s = setup("auth_plaintext = loopback\n");
    let good = postern::smtp::client::base64(format!("\0alice\0{PASSWORD}").as_bytes());
    let mut c = Client::greeted(s.submission());
    c.cmd("EHLO x");
    assert_eq!(code(&c.cmd(&format!("AUTH PLAIN {good}"))), "235 2.7.0");
    assert_eq!(code(&c.cmd(&format!("AUTH PLAIN {good}"))), "503 5.5.1");
    assert_eq!(code(&c.cmd("MAIL FROM:<alice+news@example.test> AUTH=<>")), "250 2.1.0");
    assert_eq!(code(&c.cmd("RCPT TO:<friend@remote.test>")), "250 2.1.5");
    assert_eq!(code(&c.cmd("RSET")), "250 2.0.0");
    // Another session from the same address is not logged in.
    let mut other = Client::greeted(s.submission());
    other.cmd("EHLO x");
    assert_eq!(code(&other.cmd("MAIL FROM:<alice@example.test>")), "530 5.7.0");
    // Nor is a session on the MTA port.
    let mut mta = Client::greeted(s.server.addr);
    mta.cmd("EHLO x");
    assert_eq!(code(&mta.cmd("MAIL FROM:<alice@example.test>")), "550 5.7.1", "our own domain, from a stranger");
    mta.cmd("MAIL FROM:<alice@remote.test>");
    assert_eq!(code(&mta.cmd("RCPT TO:<friend@remote.test>")), "554 5.7.1");
}

#[test]
fn inetd_mode_takes_the_mode_it_is_told() {
    let dir = TempDir::new("inetd-submission");
    let users = dir.path().join("users");
    std::fs::write(&users, hash_line("alice", PASSWORD, "sha512")).unwrap();
    std::fs::set_permissions(&users, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let conf = dir.path().join("postern.conf");
    std::fs::write(&conf, config_with(dir.path(), &format!("auth_users = {}\n", users.display()))).unwrap();
    let mut child = Command::new(support::smtpd_binary())
        .args(["--inetd", "--mode", "submission", "-c"])
        .arg(&conf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"EHLO x\r\nMAIL FROM:<alice@example.test>\r\nQUIT\r\n").unwrap();
    let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    assert!(out.contains("\r\n530 5.7.0 Must issue a STARTTLS command first\r\n"), "{out}");
}

#[test]
fn the_users_file_must_not_be_readable_by_everyone() {
    let dir = TempDir::new("users-mode");
    let users = dir.path().join("users");
    std::fs::write(&users, hash_line("alice", PASSWORD, "yescrypt")).unwrap();
    std::fs::set_permissions(&users, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let conf = dir.path().join("postern.conf");
    let (cert, key) = support::test_certificate(dir.path());
    let extra =
        format!("auth_users = {}\ntls_cert = {}\ntls_key = {}\n", users.display(), cert.display(), key.display());
    std::fs::write(
        &conf,
        config_with(dir.path(), &extra).replace("listen = 127.0.0.1:0\n", "listen = 127.0.0.1:0 submission\n"),
    )
    .unwrap();
    let out = Command::new(support::smtpd_binary()).arg("--check").arg("-c").arg(&conf).output().unwrap();
    assert!(!out.status.success());
    assert!(said(&out).contains("readable by others; make it mode 0600 or 0640"), "{}", said(&out));
    std::fs::set_permissions(&users, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = Command::new(support::smtpd_binary()).arg("--check").arg("-c").arg(&conf).output().unwrap();
    assert!(out.status.success(), "{}", said(&out));
}

#[test]
fn submitted_mail_gets_date_and_message_id_and_can_hide_the_client() {
    let s = setup("auth_plaintext = loopback\nsubmission_hide_client = on\n");
    let good = postern::smtp::client::base64(format!("\0alice\0{PASSWORD}").as_bytes());
    let mut c = Client::greeted(s.submission());
    c.cmd("EHLO laptop.home.test");
    assert_eq!(code(&c.cmd(&format!("AUTH PLAIN {good}"))), "235 2.7.0");
    c.open_data("alice@example.test", &["friend@remote.test"]);
    assert!(c.mail_text(b"From: alice@example.test\r\nSubject: bare\r\n\r\nno date, no id\r\n").starts_with("250 "));
    c.open_data("alice@example.test", &["friend@remote.test"]);
    let full =
        b"From: alice@example.test\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <mine@laptop>\r\n\r\nx\r\n";
    assert!(c.mail_text(full).starts_with("250 "));
    // Mail that arrives on the MTA port for a local user is left as it came.
    let mut mta = Client::greeted(s.server.addr);
    mta.cmd("EHLO stranger.test");
    assert!(
        mta.mail("someone@remote.test", &["alice@example.test"], b"Subject: inbound\r\n\r\nhi").starts_with("250 ")
    );
    let queued = s.queued_text();
    assert_eq!(queued.len(), 3);
    let bare = queued.iter().find(|q| q.contains("Subject: bare")).unwrap();
    let id = s
        .server
        .queued()
        .iter()
        .find(|p| std::fs::read_to_string(p).unwrap().contains("Subject: bare"))
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        bare.contains("\r\nDate: ") && bare.contains(&format!("\r\nMessage-ID: <{id}@mail.example.test>\r\n")),
        "{bare}"
    );
    assert!(bare.contains("Received: from laptop.home.test\r\n\tby mail.example.test"), "{bare}");
    assert!(!bare.contains("127.0.0.1]"), "the client's address is left out: {bare}");
    let kept = queued.iter().find(|q| q.contains("<mine@laptop>")).unwrap();
    assert_eq!(kept.matches("Date: ").count(), 1, "{kept}");
    assert_eq!(kept.matches("Message-ID: ").count(), 1, "{kept}");
    let inbound = queued.iter().find(|q| q.contains("Subject: inbound")).unwrap();
    assert!(!inbound.contains("\r\nDate: ") && !inbound.contains("Message-ID:"), "{inbound}");
    assert!(inbound.contains("(unknown [127.0.0.1])"), "{inbound}");
    // What was queued is whole: the delivery run sends both submitted messages out.
    assert_eq!(s.deliver().len(), 2);
}

/// systemd passes 25 and 587 to one process; FileDescriptorName= says which is which.
#[test]
fn socket_activation_takes_each_sockets_mode_from_its_name() {
    if skip_unless(have("systemd-socket-activate"), "systemd-socket-activate is not installed") {
        return;
    }
    let dir = TempDir::new("activate-modes");
    let (cert, key) = support::test_certificate(dir.path());
    let users = dir.path().join("users");
    std::fs::write(&users, hash_line("alice", PASSWORD, "sha512")).unwrap();
    std::fs::set_permissions(&users, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let conf = dir.path().join("postern.conf");
    let extra =
        format!("tls_cert = {}\ntls_key = {}\nauth_users = {}\n", cert.display(), key.display(), users.display());
    std::fs::write(&conf, config_with(dir.path(), &extra)).unwrap();
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (mta, submission) = (free(), free());
    let mut child = Command::new("systemd-socket-activate")
        .args(["-l", &mta.to_string(), "-l", &submission.to_string(), "--fdname=smtp:submission"])
        .arg(support::smtpd_binary())
        .arg("-c")
        .arg(&conf)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(mta).is_err() && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c = Client::greeted(mta);
    assert!(!c.cmd("EHLO x").contains("AUTH"));
    assert_eq!(code(&c.cmd("MAIL FROM:<someone@remote.test>")), "250 2.1.0");
    let mut s = Client::greeted(submission);
    assert!(s.cmd("EHLO x").contains("STARTTLS"));
    assert_eq!(code(&s.cmd("MAIL FROM:<alice@example.test>")), "530 5.7.0", "587 is a submission port");
    let _ = child.kill();
    let _ = child.wait();
}

/// Milters judge our own users' mail too (as Postfix's smtpd_milters): told who logged in and
/// over which TLS version.
#[test]
fn a_milter_is_told_the_login_and_the_tls_version() {
    if skip_unless(have("swaks"), "swaks is not installed") {
        return;
    }
    let milter = support::milter::FakeMilter::start(support::milter::usual);
    let s = setup(&format!("milters = {}\n", milter.address));
    let p = port(s.submission());
    let out = swaks(&[
        "--server",
        "127.0.0.1",
        "--port",
        &p,
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice",
        "--auth-password",
        PASSWORD,
        "--from",
        "alice@example.test",
        "--to",
        "friend@remote.test",
    ]);
    assert!(out.status.success(), "{}", said(&out));
    assert_eq!(milter.macro_value("{auth_authen}").as_deref(), Some("alice"));
    assert_eq!(milter.macro_value("{tls_version}").as_deref(), Some("TLSv1.3"));
    assert_eq!(milter.macro_value("{mail_addr}").as_deref(), Some("alice@example.test"));
    assert_eq!(s.queued_text().len(), 1);
}

/// What fail2ban reads: each wrong password is a line that postern's filter
/// (contrib/fail2ban/filter.d/postern.conf) finds, with the client's address, as Debian's
/// fail2ban-regex checks it against the lines the daemon wrote, with syslog's time and host
/// name in front; a good login and the rest of the log are not counted.
#[test]
fn fail2ban_finds_each_wrong_password_and_the_address() {
    if skip_unless(have("fail2ban-regex"), "fail2ban-regex is not installed (Debian's fail2ban)") {
        return;
    }
    let s = setup("auth_plaintext = loopback\n");
    let good = postern::smtp::client::base64(format!("\0alice\0{PASSWORD}").as_bytes());
    let bad = postern::smtp::client::base64(b"\0alice\0guess");
    for _ in 0..3 {
        let mut c = Client::greeted(s.submission());
        c.cmd("EHLO x");
        assert_eq!(code(&c.cmd(&format!("AUTH PLAIN {bad}"))), "535 5.7.8");
    }
    let mut c = Client::greeted(s.submission());
    c.cmd("EHLO x");
    assert_eq!(code(&c.cmd(&format!("AUTH PLAIN {good}"))), "235 2.7.0");
    c.cmd("QUIT");
    let log = s.server.log_with("sasl_method=PLAIN");
    assert_eq!(log.matches("authentication failed").count(), 3, "{log}");
    // As rsyslog writes them to /var/log/mail.log.
    let syslog: String = log.lines().map(|l| format!("Dec  6 20:00:00 mail {l}\n")).collect();
    let file = s.conf.with_file_name("mail.log");
    std::fs::write(&file, syslog).unwrap();
    let filter = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/fail2ban/filter.d/postern.conf");
    let out = Command::new("fail2ban-regex").args(["-o", "ip"]).arg(&file).arg(&filter).output().unwrap();
    let found = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{found}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(found.lines().collect::<Vec<_>>(), ["127.0.0.1"; 3], "{found}");
}
