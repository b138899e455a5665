//! postern-deliver's remote side against real servers on loopback: our own smtpd as a
//! relayhost, and a scripted fake server for every kind of reply.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use postern::smtp::command::BodyType;
use support::{FakeMx, Server, TempDir, now};

/// A sending side: spool, configuration, postern-deliver.
struct Sender {
    dir: TempDir,
    conf: PathBuf,
}

impl Sender {
    fn new(extra: &str) -> Sender {
        let (dir, conf) = support::configured("relay", extra);
        Sender { dir, conf }
    }

    fn queue(&self, from: &str, to: &[&str], text: &[u8]) -> String {
        support::inject(&self.dir.path().join("spool"), from, to, now(), BodyType::SevenBit, text)
    }

    fn deliver_at(&self, at: u64) -> String {
        support::deliver(&self.conf, Some(at), &[])
    }

    fn deliver(&self) -> String {
        self.deliver_at(now())
    }

    fn queued(&self) -> usize {
        support::waiting(&self.dir.path().join("spool")).len()
    }

    fn alice_mail(&self) -> Vec<String> {
        support::maildir(&self.dir.path().join("maildirs/alice"))
    }
}

#[test]
fn a_relayhost_gets_every_message_over_one_connection_byte_for_byte() {
    let receiver = Server::start("trusted_networks = 127.0.0.0/8\n");
    let sender = Sender::new(&format!("relayhost = [127.0.0.1]:{}\nmax_delivery_threads = 1\n", receiver.addr.port()));
    let bodies: Vec<Vec<u8>> = (0..3)
        // With Date: and Message-ID:, which the trusting receiver would otherwise add (RFC 6409 §8).
        .map(|n| {
            format!(
                "Subject: {n}\r\nDate: Fri, 4 Dec 2026 02:46:45 +0000\r\nMessage-ID: <{n}@example.test>\r\n\r\n\
                 .dot line\r\n{}\r\nlast line\r\n",
                "long ".repeat(400)
            )
            .into_bytes()
        })
        .collect();
    for body in &bodies {
        sender.queue("alice@example.test", &["bob@remote.test", "Carol@Other.Test"], body);
    }
    let log = sender.deliver();
    assert_eq!(log.matches("status=sent").count(), 6, "{log}");
    assert_eq!(sender.queued(), 0);
    let files = receiver.queued();
    assert_eq!(files.len(), 3, "one transaction per message for both recipients");
    for (file, body) in files.iter().zip(&bodies) {
        let envelope = std::fs::read_to_string(file).unwrap();
        assert!(
            envelope.contains("from: <alice@example.test>\nrcpt: <bob@remote.test>\nrcpt: <Carol@Other.Test>\n"),
            "{envelope}"
        );
        assert_eq!(&support::body_of(file), body, "byte for byte");
    }
    assert_eq!(receiver.log().matches(": connect from").count(), 1, "connection reuse:\n{}", receiver.log());
    assert!(log.contains("relay=127.0.0.1[127.0.0.1]:"), "{log}");
}

#[test]
fn each_recipient_gets_its_own_outcome() {
    let dave_tries = Arc::new(AtomicUsize::new(0));
    let tries = Arc::clone(&dave_tries);
    let mx = FakeMx::start("127.0.0.3:0", move |cmd| {
        if cmd.contains("carol") {
            return Some("550 5.1.1 <carol>: no such user".into());
        }
        if cmd.contains("dave") && tries.fetch_add(1, Ordering::SeqCst) == 0 {
            return Some("451 4.3.0 try again later".into());
        }
        None
    });
    let sender = Sender::new(&format!("smtp_port = {}\n", mx.addr.port()));
    sender.queue(
        "alice@example.test",
        &["bob@[127.0.0.3]", "carol@[127.0.0.3]", "dave@[127.0.0.3]"],
        b"Subject: three\r\n\r\nhi\r\n",
    );
    let t0 = now();
    let log = sender.deliver_at(t0);
    assert!(log.contains("to=<bob@[127.0.0.3]>") && log.contains("status=sent"), "{log}");
    assert!(
        log.contains("to=<carol@[127.0.0.3]>, relay=127.0.0.3[127.0.0.3]:")
            && log.contains("dsn=5.1.1, status=bounced"),
        "{log}"
    );
    assert!(log.contains("dsn=4.3.0, status=deferred"), "{log}");
    let commands = mx.commands();
    assert_eq!(
        commands.iter().filter(|c| c.starts_with("MAIL FROM:<alice@example.test>")).count(),
        1,
        "one transaction"
    );
    assert_eq!(mx.messages().len(), 1, "the text went once for all");
    let mail = sender.alice_mail();
    assert_eq!(mail.len(), 1, "alice hears about carol only");
    assert!(mail[0].contains("Final-Recipient: rfc822; carol@[127.0.0.3]") && !mail[0].contains("dave"), "{}", mail[0]);
    assert_eq!(sender.queued(), 1, "dave waits");
    let log = sender.deliver_at(t0 + 5 * 60);
    assert!(log.contains("to=<dave@[127.0.0.3]>") && log.contains("status=sent"), "{log}");
    assert!(!log.contains("to=<bob@"), "bob is not sent twice: {log}");
    assert_eq!(sender.queued(), 0);
}

#[test]
fn the_text_is_dot_stuffed_and_stray_line_ends_never_go_out_raw() {
    let mx = FakeMx::start("127.0.0.3:0", |_| None);
    let sender = Sender::new(&format!("smtp_port = {}\nmax_delivery_threads = 1\n", mx.addr.port()));
    sender.queue("alice@example.test", &["bob@[127.0.0.3]"], b"a\r\n.\r\nb\r\n..c\r\nno end");
    sender.queue("alice@example.test", &["bob@[127.0.0.3]"], b"planted\rbare\ncr lf\r\n");
    sender.deliver();
    let messages = mx.messages();
    assert_eq!(messages[0], b"a\r\n..\r\nb\r\n...c\r\nno end\r\n.\r\n");
    assert_eq!(messages[1], b"planted bare cr lf\r\n.\r\n");
    assert_eq!(mx.connections(), 1, "the second message reused the connection");
    assert!(mx.commands().contains(&"RSET".to_string()), "RSET between messages");
}

#[test]
fn injected_bytes_after_the_starttls_reply_defer_instead_of_being_read() {
    let mx = FakeMx::start("127.0.0.3:0", |cmd| match cmd {
        c if c.starts_with("EHLO") => Some("250-fake.test\r\n250 STARTTLS".into()),
        "STARTTLS" => Some("220 go\r\n250-INJECTED\r\n".into()),
        _ => None,
    });
    let sender = Sender::new(&format!("smtp_port = {}\n", mx.addr.port()));
    sender.queue("alice@example.test", &["bob@[127.0.0.3]"], b"x\r\n");
    let log = sender.deliver();
    assert!(log.contains("dsn=4.5.0, status=deferred"), "{log}");
    assert!(!mx.commands().iter().any(|c| c.starts_with("MAIL")), "{:?}", mx.commands());
    assert_eq!(sender.queued(), 1);
}

#[test]
fn malformed_or_hostile_replies_defer_without_harm() {
    for (name, reply) in [("short", "2"), ("code change", "250-x\r\n550 y"), ("not smtp", "hello there")] {
        let mx = FakeMx::start("127.0.0.3:0", move |cmd| cmd.starts_with("EHLO").then(|| reply.to_string()));
        let sender = Sender::new(&format!("smtp_port = {}\n", mx.addr.port()));
        sender.queue("alice@example.test", &["bob@[127.0.0.3]"], b"x\r\n");
        let log = sender.deliver();
        assert!(log.contains("status=deferred"), "{name}: {log}");
        assert_eq!(sender.queued(), 1, "{name}");
    }
}

#[test]
fn server_level_refusals() {
    // A 554 greeting, a refused connection, a MAIL refused for good, a 4xx after the dot.
    let greeting = FakeMx::start("127.0.0.3:0", |cmd| (cmd == "CONNECT").then(|| "554 5.7.1 no service".into()));
    let s = Sender::new(&format!("smtp_port = {}\n", greeting.addr.port()));
    s.queue("alice@example.test", &["bob@[127.0.0.3]"], b"x\r\n");
    assert!(s.deliver().contains("dsn=4.4.1, status=deferred"));

    let closed = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let s = Sender::new(&format!("smtp_port = {port}\n"));
    s.queue("alice@example.test", &["bob@[127.0.0.3]", "carol@[127.0.0.3]"], b"x\r\n");
    let log = s.deliver();
    assert_eq!(log.matches("dsn=4.4.1, status=deferred").count(), 2, "{log}");

    let mail_refused = FakeMx::start("127.0.0.3:0", |cmd| cmd.starts_with("MAIL").then(|| "550 5.7.1 go away".into()));
    let s = Sender::new(&format!("smtp_port = {}\n", mail_refused.addr.port()));
    s.queue("alice@example.test", &["bob@[127.0.0.3]"], b"x\r\n");
    assert!(s.deliver().contains("dsn=5.7.1, status=bounced"));
    assert_eq!(s.alice_mail().len(), 1);

    let after_dot = FakeMx::start("127.0.0.3:0", |cmd| (cmd == ".").then(|| "452 4.3.1 full".into()));
    let s = Sender::new(&format!("smtp_port = {}\n", after_dot.addr.port()));
    s.queue("alice@example.test", &["bob@[127.0.0.3]", "carol@[127.0.0.3]"], b"x\r\n");
    assert_eq!(s.deliver().matches("dsn=4.3.1, status=deferred").count(), 2);
}

#[test]
fn a_message_over_the_servers_size_is_bounced_without_sending_it() {
    let mx =
        FakeMx::start("127.0.0.3:0", |cmd| cmd.starts_with("EHLO").then(|| "250-fake.test\r\n250 SIZE 100".into()));
    let sender = Sender::new(&format!("smtp_port = {}\n", mx.addr.port()));
    sender.queue("alice@example.test", &["bob@[127.0.0.3]"], &b"y".repeat(500));
    assert!(sender.deliver().contains("dsn=5.3.4, status=bounced"));
    assert!(mx.messages().is_empty());
}

#[test]
fn relayhost_tls_encrypt_needs_starttls() {
    let (cert, key) = support::shared_certificate();
    let tls_receiver = Server::start(&format!(
        "trusted_networks = 127.0.0.0/8\ntls_cert = {}\ntls_key = {}\n",
        cert.display(),
        key.display()
    ));
    let sender =
        Sender::new(&format!("relayhost = [127.0.0.1]:{}\nrelayhost_tls = encrypt\n", tls_receiver.addr.port()));
    sender.queue("alice@example.test", &["bob@remote.test"], b"Subject: secret\r\n\r\nx\r\n");
    assert!(sender.deliver().contains("status=sent"));
    let received = String::from_utf8(support::message_of(&tls_receiver.queued()[0])).unwrap();
    assert!(received.contains(" with ESMTPS id "), "{received}");
    // postern-deliver's side negotiates TLS 1.3 with a server that offers it.
    assert!(received.contains("\r\n\t(using TLSv1.3 with cipher TLS_"), "{received}");

    let plain_receiver = Server::start("trusted_networks = 127.0.0.0/8\n");
    let sender =
        Sender::new(&format!("relayhost = [127.0.0.1]:{}\nrelayhost_tls = encrypt\n", plain_receiver.addr.port()));
    sender.queue("alice@example.test", &["bob@remote.test"], b"x\r\n");
    assert!(sender.deliver().contains("dsn=4.7.5, status=deferred"));
    assert!(plain_receiver.queued().is_empty());
}

#[test]
fn parallel_runs_keep_to_the_per_destination_cap() {
    let mx = FakeMx::start("127.0.0.3:0", |cmd| {
        if cmd == "." {
            std::thread::sleep(std::time::Duration::from_millis(20)); // a slow server: threads pile up
        }
        None
    });
    let sender =
        Sender::new(&format!("smtp_port = {}\nmax_delivery_threads = 8\nmax_per_destination = 2\n", mx.addr.port()));
    for n in 0..40 {
        sender.queue("alice@example.test", &["bob@[127.0.0.3]"], format!("Subject: {n}\r\n\r\n{n}\r\n").as_bytes());
    }
    let log = sender.deliver();
    assert_eq!(log.matches("status=sent").count(), 40, "{log}");
    assert_eq!(mx.messages().len(), 40);
    assert!(mx.connections() <= 2, "{} connections", mx.connections());
    assert_eq!(sender.queued(), 0);
}

#[test]
fn without_pipelining_every_refused_recipient_still_gets_an_outcome() {
    let mx = FakeMx::start("127.0.0.3:0", |cmd| match cmd {
        c if c.starts_with("EHLO") => Some("250-fake.test\r\n250 8BITMIME".into()),
        c if c.contains("bob") => Some("450 4.2.1 busy".into()),
        c if c.contains("carol") => Some("550 5.1.1 unknown".into()),
        _ => None,
    });
    let sender = Sender::new(&format!("smtp_port = {}\n", mx.addr.port()));
    sender.queue("alice@example.test", &["bob@[127.0.0.3]", "carol@[127.0.0.3]"], b"x\r\n");
    let log = sender.deliver();
    assert!(log.contains("to=<bob@[127.0.0.3]>") && log.contains("dsn=4.2.1, status=deferred"), "{log}");
    assert!(log.contains("dsn=5.1.1, status=bounced"), "{log}");
    assert!(!mx.commands().contains(&"DATA".to_string()), "no DATA without an accepted recipient");
}

#[test]
fn kill_9_mid_run_loses_nothing_and_repeats_at_most_what_was_in_flight() {
    let mx = FakeMx::start("127.0.0.3:0", |cmd| {
        if cmd == "." {
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
        None
    });
    let sender =
        Sender::new(&format!("smtp_port = {}\nmax_delivery_threads = 4\nmax_per_destination = 4\n", mx.addr.port()));
    for n in 0..60 {
        sender.queue("alice@example.test", &["bob@[127.0.0.3]"], format!("Subject: m{n}\r\n\r\nm{n}\r\n").as_bytes());
    }
    let mut run = Command::new(support::program("postern-deliver")).arg("-c").arg(&sender.conf).spawn().unwrap();
    let started = std::time::Instant::now();
    while mx.messages().len() < 15 && started.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    run.kill().unwrap(); // SIGKILL
    run.wait().unwrap();
    let before = mx.messages().len();
    assert!(before < 60, "the run finished before the kill");
    sender.deliver();
    assert_eq!(sender.queued(), 0);
    let subjects: Vec<String> =
        mx.messages().iter().map(|m| String::from_utf8_lossy(m).lines().next().unwrap_or("").to_string()).collect();
    let distinct: std::collections::HashSet<&String> = subjects.iter().collect();
    assert_eq!(distinct.len(), 60, "every message arrived");
    // A message whose dot was answered but whose log line was not yet written is sent again
    // (RFC 1047): never more of those than the connections that were busy at the kill.
    assert!(subjects.len() - 60 <= 4, "{} duplicates", subjects.len() - 60);
}

/// A relayhost that offers STARTTLS, then (under TLS only) AUTH PLAIN and LOGIN for one user.
fn auth_relayhost(
    user: &'static str,
    password: &'static str,
) -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let (cert, key) = support::shared_certificate();
    let identity =
        native_tls::Identity::from_pkcs8(&std::fs::read(cert).unwrap(), &std::fs::read(key).unwrap()).unwrap();
    let acceptor = Arc::new(native_tls::TlsAcceptor::new(identity).unwrap());
    let listener = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (acceptor, seen) = (Arc::clone(&acceptor), Arc::clone(&seen));
            std::thread::spawn(move || {
                fn session<S: Read + Write>(
                    s: S,
                    tls: bool,
                    good: &str,
                    seen: &std::sync::Mutex<Vec<String>>,
                ) -> Option<S> {
                    let mut r = BufReader::new(s);
                    let mut authed = false;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).ok()? == 0 {
                            return None;
                        }
                        let cmd = line.trim_end().to_string();
                        seen.lock().unwrap().push(format!("{}{cmd}", if tls { "tls: " } else { "" }));
                        let reply = match cmd.split(' ').next().unwrap_or("") {
                            "EHLO" if tls => "250-auth.test\r\n250-AUTH PLAIN LOGIN\r\n250 PIPELINING",
                            "EHLO" => "250-auth.test\r\n250 STARTTLS",
                            "STARTTLS" if !tls => {
                                r.get_mut().write_all(b"220 2.0.0 go\r\n").ok()?;
                                return Some(r.into_inner());
                            }
                            "AUTH" if tls && cmd == format!("AUTH PLAIN {good}") => {
                                authed = true;
                                "235 2.7.0 ok"
                            }
                            "AUTH" => "535 5.7.8 bad credentials",
                            "MAIL" if !authed => "530 5.7.0 authentication required",
                            "MAIL" | "RCPT" | "RSET" => "250 ok",
                            "DATA" => {
                                r.get_mut().write_all(b"354 go\r\n").ok()?;
                                let mut text = String::new();
                                while !text.ends_with("\r\n.\r\n") {
                                    if r.read_line(&mut text).ok()? == 0 {
                                        return None;
                                    }
                                }
                                "250 2.0.0 queued"
                            }
                            "QUIT" => {
                                let _ = r.get_mut().write_all(b"221 bye\r\n");
                                return None;
                            }
                            _ => "502 no",
                        };
                        r.get_mut().write_all(format!("{reply}\r\n").as_bytes()).ok()?;
                    }
                }
                let good = postern::smtp::client::base64(format!("\0{user}\0{password}").as_bytes());
                let mut plain = stream;
                plain.write_all(b"220 auth.test ESMTP\r\n").ok();
                if let Some(plain) = session(plain, false, &good, &seen)
                    && let Ok(tls) = acceptor.accept(plain)
                {
                    session(tls, true, &good, &seen);
                }
            });
        }
    });
    (addr, events)
}

fn auth_file(sender: &Sender, text: &str, mode: u32) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = sender.dir.path().join("relay-auth");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    format!("relayhost_auth_file = {}\n", path.display())
}

#[test]
fn relayhost_auth_happens_once_per_connection_and_only_under_tls() {
    let (addr, events) = auth_relayhost("smarthost-user", "s3cret:with colon");
    let sender = Sender::new("");
    let extra = format!(
        "relayhost = [127.0.0.3]:{}\nrelayhost_tls = encrypt\nmax_delivery_threads = 1\n{}",
        addr.port(),
        auth_file(&sender, "smarthost-user:s3cret:with colon\n", 0o600)
    );
    std::fs::write(&sender.conf, support::config_with(sender.dir.path(), &extra)).unwrap();
    sender.queue("alice@example.test", &["bob@remote.test"], b"Subject: 1\r\n\r\nx\r\n");
    sender.queue("alice@example.test", &["carol@remote.test"], b"Subject: 2\r\n\r\nx\r\n");
    let log = sender.deliver();
    assert_eq!(log.matches("status=sent").count(), 2, "{log}");
    let events = events.lock().unwrap().clone();
    let auths: Vec<&String> = events.iter().filter(|e| e.contains("AUTH")).collect();
    assert_eq!(auths.len(), 1, "{events:?}");
    assert!(auths[0].starts_with("tls: AUTH PLAIN "), "credentials only under TLS: {events:?}");
    assert!(!events.iter().any(|e| !e.starts_with("tls: ") && e.contains("AUTH")));
}

#[test]
fn wrong_credentials_defer_and_loose_files_are_refused() {
    let (addr, _) = auth_relayhost("user", "right");
    let sender = Sender::new("");
    let base = format!("relayhost = [127.0.0.3]:{}\n", addr.port());
    let extra = base.clone() + &auth_file(&sender, "user:wrong\n", 0o600);
    std::fs::write(&sender.conf, support::config_with(sender.dir.path(), &extra)).unwrap();
    sender.queue("alice@example.test", &["bob@remote.test"], b"x\r\n");
    let log = sender.deliver();
    assert!(log.contains("status=deferred") && log.contains("535 5.7.8"), "{log}");
    let extra = base + &auth_file(&sender, "user:right\n", 0o644);
    std::fs::write(&sender.conf, support::config_with(sender.dir.path(), &extra)).unwrap();
    let out = Command::new(support::program("postern-deliver")).arg("-c").arg(&sender.conf).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("relay-auth: readable by others"));
}

#[test]
fn relayhost_tls_verify_refuses_a_self_signed_certificate() {
    let (cert, key) = support::shared_certificate();
    let receiver = Server::start(&format!(
        "trusted_networks = 127.0.0.0/8\ntls_cert = {}\ntls_key = {}\n",
        cert.display(),
        key.display()
    ));
    let sender = Sender::new(&format!("relayhost = [127.0.0.1]:{}\nrelayhost_tls = verify\n", receiver.addr.port()));
    sender.queue("alice@example.test", &["bob@remote.test"], b"x\r\n");
    assert!(sender.deliver().contains("dsn=4.7.5, status=deferred"));
    assert!(receiver.queued().is_empty());
}

#[test]
fn helo_fallback_and_8bitmime_when_offered() {
    let old = FakeMx::start("127.0.0.3:0", |cmd| cmd.starts_with("EHLO").then(|| "502 5.5.1 what".into()));
    let sender = Sender::new(&format!("smtp_port = {}\n", old.addr.port()));
    sender.queue("alice@example.test", &["bob@[127.0.0.3]"], b"x\r\n");
    assert!(sender.deliver().contains("status=sent"));
    assert!(old.commands().iter().any(|c| c.starts_with("HELO mail.example.test")), "{:?}", old.commands());
    assert!(old.commands().contains(&"MAIL FROM:<alice@example.test>".to_string()), "no ESMTP parameters after HELO");

    let modern = FakeMx::start("127.0.0.3:0", |_| None);
    let sender = Sender::new(&format!("smtp_port = {}\n", modern.addr.port()));
    let text = "caf\u{e9}\r\n".as_bytes();
    support::inject(
        &sender.dir.path().join("spool"),
        "alice@example.test",
        &["bob@[127.0.0.3]"],
        now(),
        BodyType::EightBitMime,
        text,
    );
    assert!(sender.deliver().contains("status=sent"));
    let mail = modern.commands().into_iter().find(|c| c.starts_with("MAIL")).unwrap();
    assert!(mail.contains(" BODY=8BITMIME") && mail.contains(" SIZE="), "{mail}");
}

#[test]
fn a_slow_final_reply_within_the_timeout_counts_and_one_past_it_defers() {
    // RFC 5321 §4.5.3.2.6; timing out too early would send the message twice.
    let slow = FakeMx::start("127.0.0.3:0", |cmd| {
        if cmd == "." {
            std::thread::sleep(std::time::Duration::from_millis(1500));
        }
        None
    });
    let sender = Sender::new(&format!("smtp_port = {}\nsmtp_data_done_timeout = 2s\n", slow.addr.port()));
    sender.queue("alice@example.test", &["bob@[127.0.0.3]"], b"x\r\n");
    assert!(sender.deliver().contains("status=sent"));
    let too_slow = FakeMx::start("127.0.0.3:0", |cmd| {
        if cmd == "." {
            std::thread::sleep(std::time::Duration::from_millis(2500));
        }
        None
    });
    let sender = Sender::new(&format!("smtp_port = {}\nsmtp_data_done_timeout = 1s\n", too_slow.addr.port()));
    sender.queue("alice@example.test", &["bob@[127.0.0.3]"], b"x\r\n");
    let log = sender.deliver();
    assert!(log.contains("status=deferred") && log.contains("after the message was sent"), "{log}");
}

#[test]
fn a_kept_connection_the_server_closed_is_replaced_not_used() {
    let mx = FakeMx::start("127.0.0.3:0", |cmd| (cmd == ".").then(|| "250 2.0.0 queued [hang up]".into()));
    let sender = Sender::new(&format!("smtp_port = {}\nmax_delivery_threads = 1\n", mx.addr.port()));
    for n in 0..3 {
        sender.queue("alice@example.test", &["bob@[127.0.0.3]"], format!("Subject: {n}\r\n\r\nx\r\n").as_bytes());
    }
    let log = sender.deliver();
    assert_eq!(log.matches("status=sent").count(), 3, "{log}");
    assert_eq!(mx.connections(), 3);
}

/// A report to a sender whose address needs SMTPUTF8 is sent with SMTPUTF8 (RFC 6533 §3).
#[test]
fn a_report_to_an_smtputf8_sender_goes_with_smtputf8() {
    use postern::smtp::address::{ForwardPath, ReversePath};
    let receiver = FakeMx::start("127.0.0.1:0", |command| {
        command
            .to_ascii_uppercase()
            .starts_with("EHLO")
            .then(|| "250-fake.test\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8".to_string())
    });
    let sender = Sender::new(&format!("relayhost = [127.0.0.1]:{}\n", receiver.addr.port()));
    let envelope = postern::spool::Envelope {
        arrived: now(),
        client: Some("192.0.2.1".parse().unwrap()),
        helo: Some("client.test".into()),
        protocol: "ESMTP".into(),
        body: BodyType::EightBitMime,
        smtputf8: true,
        auth: None,
        submitted: false,
        quarantine: false,
        from: ReversePath::parse("jörg@bücher.test".as_bytes()).unwrap(),
        rcpts: vec![ForwardPath::parse(b"nobody@example.test").unwrap()],
        size: 0,
        check: None,
    };
    let spool = postern::spool::Spool::open(&sender.dir.path().join("spool")).unwrap();
    spool.inject(&envelope, "Subject: grüße\r\n\r\nhallo\r\n".as_bytes()).unwrap();
    let log = sender.deliver();
    let commands = receiver.commands();
    let mail = commands.iter().find(|c| c.starts_with("MAIL FROM:<>")).unwrap_or_else(|| panic!("{commands:?}\n{log}"));
    assert!(mail.contains("SMTPUTF8"), "{mail}");
    assert!(commands.iter().any(|c| c.starts_with("RCPT TO:<jörg@bücher.test>")), "{commands:?}");
}
