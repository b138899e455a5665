//! DKIM signing (RFC 6376, RFC 8463) checked by independent verifiers: Python's dkimpy and
//! Perl's Mail::DKIM, for an RSA-2048 and an Ed25519 key, over folded headers,
//! trailing white space, empty and 8-bit bodies. Keys come from `postern-deliver
//! --dkim-keygen`, and the records the verifiers use are the ones it printed.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::{Client, FakeMx, Server, TempDir, code, config_with, have, skip_unless};

const PASSWORD: &str = "pw for dkim";

/// `postern-deliver --dkim-keygen`: the key file, and the TXT record from the zone line printed.
fn keygen(dir: &Path, domain: &str, selector: &str, extra: &[&str]) -> (PathBuf, String) {
    let file = dir.join(format!("{selector}.pem"));
    let out = Command::new(support::program("postern-deliver"))
        .args(["--dkim-keygen", domain, selector])
        .arg(&file)
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("{domain} {selector} {}", file.display())), "{text}");
    let zone = text.lines().find(|l| l.starts_with(&format!("{selector}._domainkey.{domain}. IN TXT"))).unwrap();
    let record: String = zone.split('"').skip(1).step_by(2).collect();
    assert!(record.starts_with("v=DKIM1; k="), "{zone}");
    (file, record)
}

struct Setup {
    server: Server,
    sink: FakeMx,
    conf: PathBuf,
    /// `selector._domainkey.domain` -> the record.
    records: HashMap<String, String>,
}

fn setup() -> Setup {
    let dir = TempDir::new("dkim");
    let (rsa, rsa_record) = keygen(dir.path(), "example.test", "rsa1", &[]);
    let (ed, ed_record) = keygen(dir.path(), "ed.test", "ed1", &["--ed25519"]);
    std::fs::write(
        dir.path().join("dkim_keys"),
        format!("# domain selector key\nexample.test rsa1 {}\ned.test ed1 {}\n", rsa.display(), ed.display()),
    )
    .unwrap();
    let users = dir.path().join("users");
    std::fs::write(
        &users,
        format!(
            "alice:{}\n",
            postern::auth::hash_password(PASSWORD.as_bytes(), postern::auth::Scheme::Sha512Crypt).unwrap()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&users, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(dir.path().join("senders"), "alice: alice@example.test, @ed.test\n").unwrap();
    let sink = FakeMx::start("127.0.0.1:0", |_| None);
    let (cert, key) = support::test_certificate(dir.path());
    let extra = format!(
        "tls_cert = {}\ntls_key = {}\nauth_users = {u}\nauth_senders = {d}/senders\nauth_plaintext = loopback\ndkim_keys = {d}/dkim_keys\n\
         relayhost = [127.0.0.1]:{port}\n",
        cert.display(),
        key.display(),
        u = users.display(),
        d = dir.path().display(),
        port = sink.addr.port()
    );
    let config = config_with(dir.path(), &extra)
        .replace("listen = 127.0.0.1:0\n", "listen = 127.0.0.1:0, 127.0.0.1:0 submission\n");
    let conf = dir.path().join("postern.conf");
    let server = Server::start_in(dir, &config);
    let records = HashMap::from([
        ("rsa1._domainkey.example.test".to_string(), rsa_record),
        ("ed1._domainkey.ed.test".to_string(), ed_record),
    ]);
    Setup { server, sink, conf, records }
}

/// The messages the tests sign: each a case the canonicalization must get right.
fn cases(from: &str) -> Vec<(&'static str, String)> {
    let head = |subject: &str| format!("From: Alice <{from}>\r\nTo: friend@remote.test\r\nSubject: {subject}\r\n");
    vec![
        ("plain", head("plain") + "\r\nHello.\r\n"),
        (
            "folded",
            format!(
                "From: Alice\r\n <{from}>\r\nTo: friend@remote.test,\r\n\tother@remote.test\r\nSubject: a subject\r\n  \
                 folded   over\r\n\tthree lines\r\nCc:   spaced@remote.test   \r\n\r\nbody\r\n"
            ),
        ),
        ("trailing", head("trailing   white space \t") + "\r\nline with spaces   \r\n\ttabbed\t\t\r\n\r\n\r\n\r\n"),
        ("empty", head("empty body") + "\r\n"),
        (
            "eightbit",
            head("8-bit")
                + "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
              Content-Transfer-Encoding: 8bit\r\n\r\nGr\u{fc}\u{df}e aus K\u{f6}ln \u{2014} \u{fc}ber alles\r\n",
        ),
        ("dots", head("dots") + "\r\n.leading dot\r\n..two\r\n.\r\nend\r\n"),
        // Relaxed keeps the space after a colon inside a value (RFC 6376 §3.4.2).
        ("colons", head("colons: Re:  a reply : here") + "Date: Sat, 5 Dec 2026 06:00:00 +0000\r\n\r\nbody\r\n"),
    ]
}

/// Sends each case as alice on the submission port; returns the sink's copies, un-stuffed.
fn send_and_deliver(s: &Setup, from: &str) -> Vec<(String, Vec<u8>)> {
    let cases = cases(from);
    let token = postern::smtp::client::base64(format!("\0alice\0{PASSWORD}").as_bytes());
    let mut c = Client::greeted(s.server.port_for("submission"));
    c.cmd("EHLO laptop.test");
    assert_eq!(code(&c.cmd(&format!("AUTH PLAIN {token}"))), "235 2.7.0");
    for (_, text) in &cases {
        c.open_data(from, &["friend@remote.test"]);
        let stuffed = text.replace("\r\n.", "\r\n..");
        let reply = c.mail_text(stuffed.as_bytes());
        assert!(reply.starts_with("250 "), "{reply}");
    }
    let before = s.sink.messages().len();
    support::deliver(&s.conf, None, &[]);
    let got = s.sink.messages();
    assert_eq!(got.len() - before, cases.len(), "{}", s.server.log());
    // Delivery order is not arrival order: each copy is named by the case whose subject it has.
    got[before..]
        .iter()
        .map(|raw| {
            let message = unstuff(raw);
            let text = String::from_utf8_lossy(&message);
            let (name, _) = cases.iter().find(|(_, t)| text.contains(subject_of(t))).expect("a known case");
            (name.to_string(), message)
        })
        .collect()
}

/// The first line of a case's Subject: field, which names it.
fn subject_of(text: &str) -> &str {
    let start = text.find("Subject: ").unwrap();
    let line = &text[start..];
    &line[..line.find("\r\n").unwrap()]
}

/// The message as the sink's SMTP peer meant it: dot-stuffing and the final dot removed.
fn unstuff(raw: &[u8]) -> Vec<u8> {
    let body = raw.strip_suffix(b".\r\n").unwrap_or(raw);
    let mut out = Vec::new();
    for line in body.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

/// Verifies each message with dkimpy against the printed records; returns its verdicts.
fn dkimpy(messages: &[(String, Vec<u8>)], records: &HashMap<String, String>, dir: &Path) -> Vec<String> {
    let python = support::venv_python();
    let mut paths = Vec::new();
    for (name, bytes) in messages {
        let path = dir.join(format!("{name}.eml"));
        std::fs::write(&path, bytes).unwrap();
        paths.push(path.display().to_string());
    }
    let table: Vec<String> = records.iter().map(|(k, v)| format!("{k:?}: {v:?}")).collect();
    let script = format!(
        r#"
import sys, dkim
records = {{{table}}}
def dns(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    return records.get(name.rstrip("."), "").encode()
for path in sys.argv[1:]:
    msg = open(path, "rb").read()
    print(path, "pass" if dkim.verify(msg, dnsfunc=dns) else "fail")
"#,
        table = table.join(", ")
    );
    let out = Command::new(python).arg("-c").arg(script).args(&paths).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

fn have_dkimpy() -> bool {
    support::venv_has("dkim, nacl")
}

fn check_with_dkimpy(from: &str, algorithm: &str) {
    if skip_unless(have_dkimpy(), "dkimpy is not in target/venv (make test-deps installs it)") {
        return;
    }
    let s = setup();
    let messages = send_and_deliver(&s, from);
    for (name, m) in &messages {
        let text = String::from_utf8_lossy(m);
        assert!(text.starts_with("DKIM-Signature: v=1; a="), "{name}: {text}");
        assert!(text.contains(&format!("a={algorithm};")), "{name}: {text}");
        assert!(text.contains("h=from:from:") && text.contains("c=relaxed/relaxed;"), "{name}: {text}");
    }
    let dir = TempDir::new("dkimpy");
    let verdicts = dkimpy(&messages, &s.records, dir.path());
    assert_eq!(verdicts.len(), messages.len());
    for v in &verdicts {
        assert!(v.ends_with(" pass"), "{verdicts:?}");
    }
    // The verifier can fail: a changed body, or a From: added above the signature, does not pass.
    let first = messages.iter().find(|(n, _)| n == "plain").map(|(_, m)| m).unwrap();
    let tampered = String::from_utf8_lossy(first).replace("Hello.", "Hello!").into_bytes();
    assert_ne!(&tampered, first);
    let added = [b"From: mallory@evil.test\r\n".as_slice(), first].concat();
    let bad = dkimpy(&[("tampered".into(), tampered), ("added".into(), added)], &s.records, dir.path());
    assert!(bad.iter().all(|v| v.ends_with(" fail")), "{bad:?}");
}

#[test]
fn rsa_signatures_verify_with_dkimpy() {
    check_with_dkimpy("alice@example.test", "rsa-sha256");
}

#[test]
fn ed25519_signatures_verify_with_dkimpy() {
    check_with_dkimpy("alice@ed.test", "ed25519-sha256");
}

/// Perl's Mail::DKIM (what SpamAssassin and amavis verify with) looks the keys up in DNS:
/// a dnsmasq on a loopback port serves the printed records. Debian's Mail::DKIM has no
/// Ed25519 (RFC 8463) yet, so it checks the RSA signatures; dkimpy checks both.
#[test]
fn rsa_signatures_verify_with_mail_dkim() {
    let perl_ok = Command::new("perl")
        .args(["-MMail::DKIM::Verifier", "-MCrypt::PK::Ed25519", "-MNet::DNS", "-e1"])
        .status()
        .is_ok_and(|s| s.success());
    if skip_unless(perl_ok && have("dnsmasq"), "Mail::DKIM, CryptX, Net::DNS or dnsmasq missing") {
        return;
    }
    let s = setup();
    let mut messages = send_and_deliver(&s, "alice@example.test");
    let plain = messages.iter().find(|(n, _)| n == "plain").map(|(_, m)| m.clone()).unwrap();
    let tampered = String::from_utf8_lossy(&plain).replace("Hello.", "Hello!").into_bytes();
    assert_ne!(tampered, plain);
    messages.push(("tampered".into(), tampered));
    let dir = TempDir::new("mail-dkim");
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut args = vec![
        "-k".to_string(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        format!("--port={port}"),
        "--listen-address=127.0.0.1".into(),
        "--bind-interfaces".into(),
        format!("--pid-file={}/dnsmasq.pid", dir.path().display()),
    ];
    for (name, record) in &s.records {
        let parts: Vec<String> =
            record.as_bytes().chunks(200).map(|c| format!("\"{}\"", String::from_utf8_lossy(c))).collect();
        args.push(format!("--txt-record={name},{}", parts.join(",")));
    }
    let mut dns = Command::new("dnsmasq").args(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut paths = Vec::new();
    for (name, bytes) in &messages {
        let path = dir.path().join(format!("{name}.eml"));
        std::fs::write(&path, bytes).unwrap();
        paths.push(path.display().to_string());
    }
    let script = format!(
        r#"
use Mail::DKIM::Verifier; use Net::DNS::Resolver;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(nameservers => ['127.0.0.1'], port => {port},
    udp_timeout => 3, tcp_timeout => 3, retry => 1));
for my $f (@ARGV) {{
    open(my $in, '<', $f) or die "$f: $!";
    my $v = Mail::DKIM::Verifier->new;
    while (<$in>) {{ s/\r?\n\z//; $v->PRINT("$_\015\012"); }}
    $v->CLOSE;
    print "$f ", $v->result, " ", ($v->result_detail // ""), "\n";
}}
"#
    );
    let out = Command::new("perl").arg("-e").arg(script).args(&paths).output().unwrap();
    let _ = dns.kill();
    let _ = dns.wait();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    let verdicts: Vec<&str> = said.lines().collect();
    assert_eq!(verdicts.len(), messages.len(), "{said}");
    for (line, (name, _)) in verdicts.iter().zip(&messages) {
        let want = if name == "tampered" { " fail" } else { " pass" };
        assert!(line.contains(want), "{name}: {said}");
    }
}

#[test]
fn relayed_and_forwarded_mail_is_not_signed() {
    let s = setup();
    // A stranger on the MTA port writes to a local alias that forwards to the outside,
    // with one of our domains in From:: that copy leaves unsigned.
    let mut c = Client::greeted(s.server.addr);
    c.cmd("EHLO stranger.test");
    let reply = c.mail(
        "someone@remote.test",
        &["staff@example.test"],
        b"From: alice@example.test\r\nSubject: forged\r\n\r\nnot from alice",
    );
    assert!(reply.starts_with("250 "), "{reply}");
    support::deliver(&s.conf, None, &[]);
    let out = s.sink.messages();
    assert_eq!(out.len(), 1, "the forwarded copy to bob@remote.test");
    assert!(!String::from_utf8_lossy(&out[0]).contains("DKIM-Signature"), "{}", String::from_utf8_lossy(&out[0]));
    // The copy delivered here is not signed either.
    let local = support::maildir(&s.server.dir.path().join("maildirs/alice"));
    assert_eq!(local.len(), 1);
    assert!(!local[0].contains("DKIM-Signature"));
    // The positive control: the same From:, after alice logged in, is signed.
    let token = postern::smtp::client::base64(format!("\0alice\0{PASSWORD}").as_bytes());
    let mut c = Client::greeted(s.server.port_for("submission"));
    c.cmd("EHLO laptop.test");
    c.cmd(&format!("AUTH PLAIN {token}"));
    c.open_data("alice@example.test", &["friend@remote.test"]);
    assert!(c.mail_text(b"From: alice@example.test\r\nSubject: x\r\n\r\nsigned").starts_with("250 "));
    support::deliver(&s.conf, None, &[]);
    let out = s.sink.messages();
    assert!(String::from_utf8_lossy(&out[1]).starts_with("DKIM-Signature: "), "{}", s.server.log());
}

/// What a newcomer does: a certificate, a password line and a key; swaks with STARTTLS and
/// AUTH on 587 to an outside domain; the copy that arrives verifies against the printed record.
/// Without AUTH, or as someone else's address, nothing is sent.
#[test]
fn swaks_on_587_with_tls_and_auth_arrives_signed_and_verified() {
    if skip_unless(have("swaks") && have_dkimpy(), "swaks, or dkimpy in target/venv, is missing") {
        return;
    }
    let s = setup();
    let p = s.server.port_for("submission").port().to_string();
    let swaks = |more: &[&str]| {
        let base = ["--server", "127.0.0.1", "--port", &p, "--tls", "--to", "friend@remote.test"];
        let out = Command::new("swaks").args(base).args(more).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let sent = swaks(&["--auth", "--auth-user", "alice", "--auth-password", PASSWORD, "--from", "alice@example.test"]);
    assert!(sent.contains("235 2.7.0") && sent.contains("250 2.0.0 Ok: queued"), "{sent}");
    let refused = swaks(&["--from", "alice@example.test"]);
    assert!(refused.contains("530 5.7.0"), "{refused}");
    let other = swaks(&["--auth", "--auth-user", "alice", "--auth-password", PASSWORD, "--from", "bob@example.test"]);
    assert!(other.contains("553 5.7.1"), "{other}");
    support::deliver(&s.conf, None, &[]);
    let got = s.sink.messages();
    assert_eq!(got.len(), 1, "only the logged-in message left");
    let dir = TempDir::new("newcomer");
    let verdicts = dkimpy(&[("swaks".into(), unstuff(&got[0]))], &s.records, dir.path());
    assert!(verdicts[0].ends_with(" pass"), "{verdicts:?}: {}", String::from_utf8_lossy(&got[0]));
}

/// A key the delivery run cannot read holds its own domain's outgoing mail, with the reason
/// in `postern-queue list` and `--check`; local copies and other domains' mail go on, and
/// once the key is back the waiting copy leaves signed.
#[test]
fn an_unusable_key_holds_its_own_domain_alone() {
    let s = setup();
    let dir = s.server.dir.path();
    let ed_key = dir.join("ed1.pem");
    let saved = dir.join("ed1.saved");
    std::fs::rename(&ed_key, &saved).unwrap();
    let token = postern::smtp::client::base64(format!("\0alice\0{PASSWORD}").as_bytes());
    let mut c = Client::greeted(s.server.port_for("submission"));
    c.cmd("EHLO laptop.test");
    assert_eq!(code(&c.cmd(&format!("AUTH PLAIN {token}"))), "235 2.7.0");
    c.open_data("alice@ed.test", &["friend@remote.test", "alice@example.test"]);
    assert!(c.mail_text(b"From: alice@ed.test\r\nSubject: ed\r\n\r\nwaits").starts_with("250 "));
    c.open_data("alice@example.test", &["friend@remote.test"]);
    assert!(c.mail_text(b"From: alice@example.test\r\nSubject: rsa\r\n\r\nleaves").starts_with("250 "));

    let log = support::deliver(&s.conf, None, &[]);
    let out = s.sink.messages();
    assert_eq!(out.len(), 1, "only the example.test copy leaves: {log}");
    assert!(
        String::from_utf8_lossy(&out[0]).starts_with("DKIM-Signature: ")
            && String::from_utf8_lossy(&out[0]).contains("Subject: rsa")
    );
    assert_eq!(support::maildir(&dir.join("maildirs/alice")).len(), 1, "the local copy is delivered");
    assert!(log.contains("ed1.pem") && log.contains("dsn=4.3.5") && log.contains("status=deferred"), "{log}");
    let listed = Command::new(support::program("postern-queue")).arg("-c").arg(&s.conf).arg("list").output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.contains("ed1.pem: No such file or directory"), "{listed}");
    let check =
        Command::new(support::program("postern-deliver")).arg("-c").arg(&s.conf).arg("--check").output().unwrap();
    let said = String::from_utf8_lossy(&check.stderr).to_string();
    assert!(!check.status.success() && said.contains("dkim_keys") && said.contains("dkim_keys:3: "), "{said}");

    std::fs::rename(&saved, &ed_key).unwrap();
    support::deliver(
        &s.conf,
        None,
        &["--id", &support::waiting(&dir.join("spool"))[0].file_name().unwrap().to_string_lossy()],
    );
    let out = s.sink.messages();
    assert_eq!(out.len(), 2, "{}", s.server.log());
    assert!(
        String::from_utf8_lossy(&out[1]).starts_with("DKIM-Signature: ")
            && String::from_utf8_lossy(&out[1]).contains("d=ed.test")
    );
}

/// A `From:` hidden past the header the server checks is never signed as someone else: a
/// submitted header section larger than the check reads is refused, and nothing leaves.
#[test]
fn a_from_past_the_checked_header_is_refused_not_signed() {
    let s = setup();
    let token = postern::smtp::client::base64(format!("\0alice\0{PASSWORD}").as_bytes());
    let mut c = Client::greeted(s.server.port_for("submission"));
    c.cmd("EHLO laptop.test");
    assert_eq!(code(&c.cmd(&format!("AUTH PLAIN {token}"))), "235 2.7.0");
    let padding = "X-Padding: ".to_string() + &"p".repeat(60) + "\r\n";
    let message =
        |lines: usize| format!("{}From: CEO <ceo@example.test>\r\nSubject: pay\r\n\r\nnow\r\n", padding.repeat(lines));
    // Within the check, the forged From: is seen and refused.
    c.open_data("alice@example.test", &["friend@remote.test"]);
    assert_eq!(code(&c.mail_text(message(100).as_bytes())), "553 5.7.1");
    // Past it, the whole message is refused: its fields could not all be checked.
    c.open_data("alice@example.test", &["friend@remote.test"]);
    let reply = c.mail_text(message(1000).as_bytes());
    assert_eq!(code(&reply), "552 5.3.4", "{reply}");
    assert!(reply.contains("header section too large"), "{reply}");
    // The session goes on, and an honest message still goes out signed.
    c.open_data("alice@example.test", &["friend@remote.test"]);
    assert!(c.mail_text(b"From: alice@example.test\r\nSubject: ok\r\n\r\nfine\r\n").starts_with("250 "));
    support::deliver(&s.conf, None, &[]);
    let out = s.sink.messages();
    assert_eq!(out.len(), 1, "{}", s.server.log());
    let sent = String::from_utf8_lossy(&out[0]);
    assert!(sent.starts_with("DKIM-Signature: ") && !sent.contains("ceo@"), "{sent}");
}
