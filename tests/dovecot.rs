//! postern beside a real Dovecot (a private instance from Debian's packages): local mailboxes
//! handed over LMTP (RFC 2033), each recipient decided by its own reply, and what Dovecot
//! then does with the mail (IMAP, Sieve) seen as a user sees it.

mod support;

use std::path::Path;
use std::process::Command;

use postern::smtp::command::BodyType;
use support::dovecot::Dovecot;
use support::{TempDir, deliver, have, now, skip_unless, skip_unless_root};

/// The subjects of the messages in a user's mailbox, as IMAP (Python's imaplib) lists them.
fn imap_subjects(dovecot: &Dovecot, user: &str, mailbox: &str) -> Vec<String> {
    imap_fields(dovecot, user, mailbox, "SUBJECT")
}

/// The fields of that name of each message in a user's mailbox, as IMAP lists them: a line each.
fn imap_fields(dovecot: &Dovecot, user: &str, mailbox: &str, name: &str) -> Vec<String> {
    let script = format!(
        "import imaplib\n\
         m = imaplib.IMAP4('127.0.0.1', {port})\n\
         m.login('{user}', 'secret')\n\
         typ, _ = m.select('{mailbox}', readonly=True)\n\
         if typ == 'OK':\n\
         \x20   typ, data = m.search(None, 'ALL')\n\
         \x20   for n in data[0].split():\n\
         \x20       typ, msg = m.fetch(n, '(BODY.PEEK[HEADER.FIELDS ({name})])')\n\
         \x20       print(msg[0][1].decode().strip())\n\
         m.logout()\n",
        port = dovecot.imap_port
    );
    let out = Command::new("python3").arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), dovecot.log());
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

fn skip() -> bool {
    skip_unless_root("start a private Dovecot (it switches users)")
        || skip_unless(have("dovecot") && Path::new("/usr/lib/dovecot/lmtp").exists(), "dovecot-lmtpd is not installed")
        || skip_unless(
            Path::new("/usr/lib/dovecot/modules/lib90_sieve_plugin.so").exists(),
            "dovecot-sieve is not installed",
        )
}

/// A spool and configuration whose local mailboxes go to `dovecot` over `transport`.
fn configure(dir: &Path, transport: &str) -> std::path::PathBuf {
    let conf = dir.join("postern.conf");
    std::fs::write(&conf, support::config_with(dir, &format!("mailbox_transport = {transport}\n"))).unwrap();
    let d = dir.display();
    let mailboxes = format!("alice: {d}/unused/alice/\nbob: {d}/unused/bob/\ncarol: {d}/unused/carol/\n");
    std::fs::write(dir.join("mailboxes"), mailboxes).unwrap();
    conf
}

/// Queues a message of 2 KiB from a stranger; `quarantine`: as the server takes one DMARC or
/// a milter's spam verdict sends to the Junk folder.
fn queue(dir: &Path, to: &[&str], subject: &str, quarantine: bool) -> String {
    queue_with(dir, to, "", subject, quarantine)
}

/// The same, with `top` (whole fields) above the message's own, as the server puts its fields.
fn queue_with(dir: &Path, to: &[&str], top: &str, subject: &str, quarantine: bool) -> String {
    let text = format!("{top}Subject: {subject}\r\nFrom: sender@remote.test\r\n\r\n{}\r\n", "x".repeat(2000));
    let envelope = postern::spool::Envelope {
        quarantine,
        ..support::envelope("sender@remote.test", to, now(), BodyType::SevenBit)
    };
    postern::spool::Spool::open(&dir.join("spool")).unwrap().inject(&envelope, text.as_bytes()).unwrap().to_string()
}

#[test]
fn mailboxes_go_to_dovecot_over_lmtp_each_recipient_decided_by_its_own_reply() {
    if skip() {
        return;
    }
    // bob's quota is smaller than one message: Dovecot says 452 for him alone.
    let dovecot =
        Dovecot::start(&["alice@example.test secret", "bob@example.test secret userdb_quota_rule=*:storage=1K"], "");
    // A Sieve rule files what the server marked as spam into Junk.
    dovecot.sieve(
        "alice@example.test",
        "require \"fileinto\";\nif header :is \"X-Spam\" \"Yes\" { fileinto \"Junk\"; stop; }\n",
    );
    let dir = TempDir::new("lmtp");
    let conf = configure(dir.path(), &format!("lmtp:unix:{}", dovecot.lmtp.display()));
    let verify = Command::new(support::program("postern-deliver"))
        .arg("-c")
        .arg(&conf)
        .args(["--verify", "alice@example.test"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stdout);
    let lmtp = format!("lmtp:unix:{}", dovecot.lmtp.display());
    assert_eq!(said, format!("alice@example.test: deliverable: <alice@example.test> by {lmtp}\n"));
    let to = ["alice@example.test", "bob@example.test", "carol@example.test"];
    let id = queue(dir.path(), &to, "hello all", false);
    let log = deliver(&conf, None, &[]);
    assert_eq!(imap_subjects(&dovecot, "alice@example.test", "INBOX"), ["Subject: hello all"], "{log}");
    assert!(log.contains("to=<alice@example.test>, relay=lmtp:unix:"), "{log}");
    assert!(
        log.contains(&format!("{id}: to=<bob@example.test>")) && log.contains("dsn=4.2.2, status=deferred"),
        "{log}"
    );
    assert!(log.contains("to=<carol@example.test>") && log.contains("status=bounced"), "{log}");
    // bob waits alone; carol's sender is told.
    let left = std::fs::read_to_string(dir.path().join("spool/cur").join(format!("{id}.log"))).unwrap();
    assert!(left.contains(" sent <alice@example.test> 2.0.0 lmtp:unix:"), "{left}");
    assert!(left.contains(" deferred <bob@example.test> 4.2.2 "), "{left}");
    assert!(left.contains(" bounced <carol@example.test> 5.1.1 "), "{left}");

    // Quarantined: marked, and filed into Junk by the user's Sieve rule.
    queue(dir.path(), &["alice@example.test"], "cheap pills", true);
    let log = deliver(&conf, None, &[]);
    assert_eq!(imap_subjects(&dovecot, "alice@example.test", "Junk"), ["Subject: cheap pills"], "{log}");
    assert_eq!(imap_subjects(&dovecot, "alice@example.test", "INBOX"), ["Subject: hello all"]);
    // One quarantined by DMARC already has the server's mark on top: it is not marked twice.
    queue_with(dir.path(), &["alice@example.test"], "X-Spam: Yes\r\n", "forged bank", true);
    let log = deliver(&conf, None, &[]);
    let junk = imap_subjects(&dovecot, "alice@example.test", "Junk");
    assert_eq!(junk, ["Subject: cheap pills", "Subject: forged bank"], "{log}");
    assert_eq!(imap_fields(&dovecot, "alice@example.test", "Junk", "X-SPAM"), ["X-Spam: Yes", "X-Spam: Yes"]);
}

/// A run hands its messages to the LMTP server over one connection, a transaction each (RSET
/// between them), on the Unix socket as over TCP; Dovecot files every one.
#[test]
fn a_run_hands_its_messages_to_dovecot_over_one_connection() {
    if skip() {
        return;
    }
    let dovecot = Dovecot::start(&["alice@example.test secret", "bob@example.test secret"], "");
    let transports = [
        (format!("lmtp:unix:{}", dovecot.lmtp.display()), "Connect from local"),
        (format!("lmtp:127.0.0.1:{}", dovecot.lmtp_port), "Connect from 127.0.0.1"),
    ];
    for (n, (transport, connect)) in transports.iter().enumerate() {
        let dir = TempDir::new("lmtp-kept");
        let conf = configure(dir.path(), transport);
        // One delivery thread: the messages go one after another, each on the kept session.
        let text = std::fs::read_to_string(&conf).unwrap() + "max_delivery_threads = 1\n";
        std::fs::write(&conf, text).unwrap();
        for i in 0..3 {
            queue(dir.path(), &["alice@example.test"], &format!("{n} to alice {i}"), false);
        }
        queue(dir.path(), &["bob@example.test"], &format!("{n} to bob"), false);
        let before = dovecot.log().matches(connect).count();
        let log = deliver(&conf, None, &[]);
        assert_eq!(imap_subjects(&dovecot, "alice@example.test", "INBOX").len(), 3 * (n + 1), "{log}");
        assert_eq!(imap_subjects(&dovecot, "bob@example.test", "INBOX").len(), n + 1, "{log}");
        assert!(support::waiting(&dir.path().join("spool")).is_empty(), "{log}");
        let connections = dovecot.log().matches(connect).count() - before;
        assert_eq!(connections, 1, "{transport}: {}", dovecot.log());
    }
}

/// Killed after the LMTP server took the copies and before they were recorded (crash point
/// `after-lmtp-copy`): the next run hands them over again (a second copy, never a loss).
#[test]
fn killed_after_an_lmtp_delivery_the_next_run_delivers_at_worst_twice() {
    if skip() {
        return;
    }
    let dovecot = Dovecot::start(&["alice@example.test secret"], "");
    let dir = TempDir::new("lmtp-crash");
    let conf = configure(dir.path(), &format!("lmtp:127.0.0.1:{}", dovecot.lmtp_port));
    queue(dir.path(), &["alice@example.test"], "once or twice", false);
    let (status, log) = support::deliver_with(&conf, &[("POSTERN_CRASH_AT", "after-lmtp-copy")], &[]);
    assert!(!status.success() && log.contains("crash point after-lmtp-copy"), "{log}");
    assert_eq!(imap_subjects(&dovecot, "alice@example.test", "INBOX").len(), 1);
    let log = deliver(&conf, None, &[]);
    assert_eq!(imap_subjects(&dovecot, "alice@example.test", "INBOX").len(), 2, "{log}");
    assert!(support::waiting(&dir.path().join("spool")).is_empty(), "{log}");
}

/// Two domains (listed in a file), each with its own `info`, and a catch-all for one of them:
/// refused and taken at RCPT as the tables say, and each copy in its own Dovecot mailbox.
#[test]
fn two_domains_keep_their_own_users_and_one_has_a_catch_all() {
    if skip() {
        return;
    }
    let dovecot = Dovecot::start(&["info@a.example secret", "info@b.example secret", "sales@b.example secret"], "");
    let dir = TempDir::new("domains");
    let d = dir.path();
    std::fs::write(d.join("domains"), "# the domains this box takes mail for\na.example\nb.example\n").unwrap();
    let lmtp = format!("lmtp:unix:{}", dovecot.lmtp.display());
    let config = support::config_with(d, &format!("mailbox_transport = {lmtp}\n"))
        .replace("local_domains = example.test\n", &format!("local_domains = {}/domains\n", d.display()));
    // The maildir paths are Dovecot's business here; the table says who exists.
    std::fs::write(d.join("mailboxes"), "info@a.example: -\ninfo@b.example: -\nsales@b.example: -\n").unwrap();
    std::fs::write(d.join("aliases"), "postmaster: info@a.example\n@b.example: sales@b.example\n").unwrap();
    let server = support::Server::start_in(dir, &config);
    let d = server.dir.path();
    let mut c = support::Client::greeted(server.addr);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<someone@remote.test>").starts_with("250"));
    for (rcpt, want) in [
        ("info@a.example", "250"),
        ("INFO@b.example", "250"),
        ("anything@b.example", "250"),
        ("anything@a.example", "550 5.1.1"),
    ] {
        let reply = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert!(reply.starts_with(want), "{rcpt}: {reply}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.cmd("Subject: to both\r\n\r\nhello\r\n.").starts_with("250"));
    c.cmd("QUIT");
    let conf = d.join("postern.conf");
    let log = deliver(&conf, None, &[]);
    assert_eq!(imap_subjects(&dovecot, "info@a.example", "INBOX"), ["Subject: to both"], "{log}");
    assert_eq!(imap_subjects(&dovecot, "info@b.example", "INBOX"), ["Subject: to both"], "{log}");
    assert_eq!(imap_subjects(&dovecot, "sales@b.example", "INBOX"), ["Subject: to both"], "the catch-all: {log}");
    assert!(support::waiting(&d.join("spool")).is_empty(), "{log}");
}

/// `mailbox_command = dovecot-lda ...` for the system's users: run as the recipient, in a clean
/// environment with Postfix's variables, so the copy lands in the user's Dovecot mailbox
/// written as the user; its exit says what happened (75: later, 67: never).
#[test]
fn dovecot_lda_as_mailbox_command_runs_as_the_user_and_its_exit_decides() {
    if skip() || skip_unless(Path::new("/usr/lib/dovecot/dovecot-lda").exists(), "dovecot-lda is not installed") {
        return;
    }
    let user = format!("pstn-l{}", std::process::id() % 100_000);
    let dir = TempDir::new("lda");
    let d = dir.path();
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let home = d.join("home").join(&user);
    std::fs::create_dir_all(home.parent().unwrap()).unwrap();
    let out = Command::new("useradd")
        .args(["--create-home", "--shell", "/bin/sh", "--home-dir"])
        .arg(&home)
        .arg(&user)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let _account = support::Account { user: user.clone(), groups: Vec::new() };
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::write(d.join("lda.conf"), "mail_location = maildir:~/Maildir\nlog_path = /dev/stderr\n").unwrap();
    let conf = d.join("postern.conf");
    let write_config = |command: &str| {
        let config = support::config_with(d, &format!("local_users = system\nmailbox_command = {command}\n"));
        let config = support::without_mailboxes(&config, d);
        std::fs::write(&conf, config).unwrap();
    };
    let lda = format!("/usr/lib/dovecot/dovecot-lda -c {}/lda.conf -f \"$SENDER\" -a \"$RECIPIENT\"", d.display());
    write_config(&lda);
    let to = format!("{user}@example.test");
    queue(d, &[&to], "by lda", false);
    let log = deliver(&conf, None, &[]);
    let copies = support::list(&home.join("Maildir/new"));
    assert_eq!(copies.len(), 1, "{log}");
    let meta = std::fs::metadata(&copies[0]).unwrap();
    let uid = postern::sys::lookup_user(&user).unwrap().unwrap().uid;
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), uid, "written as the user");
    let copy = std::fs::read_to_string(&copies[0]).unwrap();
    assert!(copy.contains("Subject: by lda") && copy.contains("Return-Path: <sender@remote.test>"), "{copy}");
    assert!(support::waiting(&d.join("spool")).is_empty(), "{log}");

    // What the command's exit means (sysexits.h): 75 later, 67 never.
    write_config("echo \"$USER $RECIPIENT $LOCAL $DOMAIN\" >&2; exit 75");
    let id = queue(d, &[&to], "later", false);
    let log = deliver(&conf, None, &[]);
    assert!(log.contains(&format!("{id}: to=<{to}>")) && log.contains("status=deferred"), "{log}");
    assert!(log.contains(&format!("exit 75: {user} {to} {user} example.test")), "{log}");
    write_config("echo no such mailbox; exit 67");
    let log = support::deliver_with(&conf, &[], &["--id", &id]).1;
    assert!(log.contains("status=bounced") && log.contains("exit 67: no such mailbox"), "{log}");
}

/// `auth_users = dovecot:...`: logins on the submission port checked by Dovecot, PLAIN and
/// LOGIN, with one password for mail in and mail out; a Dovecot that is down is a temporary
/// failure (454), never a wrong password.
#[test]
fn logins_on_the_submission_port_are_checked_by_dovecot() {
    if skip() {
        return;
    }
    use support::{Client, FakeMx, code};
    // Dovecot slows down the answers to a client address that failed before (its auth
    // penalty, from the address postern passes as rip=): each failure here comes from an
    // address of its own.
    let dovecot = Dovecot::start(&["alice@example.test secret"], "");
    let sink = FakeMx::start("127.0.0.1:0", |_| None);
    let dir = TempDir::new("dovecot-auth");
    let extra = format!(
        "auth_users = dovecot:{}\nauth_plaintext = loopback\nrelayhost = [127.0.0.1]:{}\nerror_sleep_time = 10ms\n",
        dovecot.path().join("run/auth-client").display(),
        sink.addr.port()
    );
    let config = support::config_with(dir.path(), &extra)
        .replace("listen = 127.0.0.1:0\n", "listen = 127.0.0.1:0, 127.0.0.1:0 submission\n");
    let server = support::Server::start_in(dir, &config);
    let b64 = |text: &str| postern::smtp::client::base64(text.as_bytes());
    let session = |from: &str| {
        let mut c = Client::connect_from(from, server.port_for("submission"));
        assert!(c.reply().starts_with("220"));
        assert!(c.cmd("EHLO client.test").contains("AUTH PLAIN LOGIN"));
        c
    };
    let mut c = session("127.0.0.2");
    assert_eq!(code(&c.cmd(&format!("AUTH PLAIN {}", b64("\0alice@example.test\0wrong")))), "535 5.7.8");
    let mut c = session("127.0.0.3");
    assert_eq!(code(&c.cmd(&format!("AUTH PLAIN {}", b64("\0nobody@example.test\0secret")))), "535 5.7.8");
    let mut c = session("127.0.0.1");
    assert_eq!(code(&c.cmd(&format!("AUTH PLAIN {}", b64("\0alice@example.test\0secret")))), "235 2.7.0");
    assert_eq!(code(&c.cmd("MAIL FROM:<alice@example.test>")), "250 2.1.0");
    assert_eq!(code(&c.cmd("RCPT TO:<friend@remote.test>")), "250 2.1.5");
    assert_eq!(code(&c.cmd("DATA")), "354");
    assert_eq!(code(&c.cmd("Subject: out\r\n\r\nsent with Dovecot's password\r\n.")), "250 2.0.0");
    c.cmd("QUIT");
    let mut c = session("127.0.0.1");
    assert_eq!(code(&c.cmd("AUTH LOGIN")), "334");
    assert_eq!(code(&c.cmd(&b64("alice@example.test"))), "334");
    assert_eq!(code(&c.cmd(&b64("secret"))), "235 2.7.0");
    let log = server.log_with("SASL PLAIN authentication failed, sasl_username=nobody@example.test");
    assert!(log.contains("logins on the submission ports checked by Dovecot"), "{log}");
    assert!(log.contains("SASL PLAIN authentication failed, sasl_username=nobody@example.test"), "{log}");
    // Dovecot gone: for now, not wrong.
    drop(dovecot);
    let mut c = session("127.0.0.1");
    assert_eq!(code(&c.cmd(&format!("AUTH PLAIN {}", b64("\0alice@example.test\0secret")))), "454 4.7.0");
    let log = server.log_with("Dovecot could not check alice@example.test's password");
    assert!(log.contains("Dovecot could not check alice@example.test's password"), "{log}");
    let deliver = deliver(&server.dir.path().join("postern.conf"), None, &[]);
    assert_eq!(sink.messages().len(), 1, "{deliver}");
}

/// A Sieve vacation rule in Dovecot answers mail delivered over LMTP, and the reply leaves
/// through postern (Dovecot's submission_host): in, out, and never a loop.
#[test]
fn a_sieve_vacation_reply_leaves_through_postern() {
    if skip() {
        return;
    }
    use support::FakeMx;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dovecot = Dovecot::start(&["alice@example.test secret"], &format!("submission_host = 127.0.0.1:{port}\n"));
    dovecot.sieve(
        "alice@example.test",
        "require \"vacation\";\nvacation :days 1 :subject \"Away\" \"Back on Monday.\";\n",
    );
    let sink = FakeMx::start("127.0.0.1:0", |_| None);
    let dir = TempDir::new("vacation");
    let extra = format!(
        "mailbox_transport = lmtp:unix:{}\ntrusted_networks = 127.0.0.0/8\nrelayhost = [127.0.0.1]:{}\n",
        dovecot.lmtp.display(),
        sink.addr.port()
    );
    let config = support::config_with(dir.path(), &extra)
        .replace("listen = 127.0.0.1:0\n", &format!("listen = 127.0.0.1:{port}\n"));
    let server = support::Server::start_in(dir, &config);
    let d = server.dir.path().to_path_buf();
    let mut c = support::Client::greeted(server.addr);
    c.cmd("EHLO mx.remote.test");
    assert!(c.cmd("MAIL FROM:<sender@remote.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let text = "From: Sender <sender@remote.test>\r\nTo: alice@example.test\r\nSubject: meeting\r\n\
                Message-ID: <m1@remote.test>\r\n\r\nAre you in?\r\n.";
    assert!(c.cmd(text).starts_with("250"));
    c.cmd("QUIT");
    let conf = d.join("postern.conf");
    // Into Dovecot; the vacation reply comes back in over SMTP; then out to the sender's MX.
    let mut log = deliver(&conf, None, &[]);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sink.messages().is_empty() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(100));
        log += &deliver(&conf, None, &[]);
    }
    assert_eq!(imap_subjects(&dovecot, "alice@example.test", "INBOX"), ["Subject: meeting"], "{log}");
    let sent: Vec<String> = sink.messages().iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect();
    assert_eq!(sent.len(), 1, "{log}\n{}", dovecot.log());
    assert!(sent[0].contains("Auto-Submitted: auto-replied") && sent[0].contains("Back on Monday."), "{}", sent[0]);
    assert!(sink.commands().iter().any(|c| c == "RCPT TO:<sender@remote.test>"), "{:?}", sink.commands());
    // The reply has a null sender: nothing answers it back.
    assert!(sink.commands().iter().any(|c| c.starts_with("MAIL FROM:<>")), "{:?}", sink.commands());
}

/// `local_users = dovecot:...`: RCPT asks Dovecot's userdb who exists, so there is no second
/// list of users; a userdb that cannot answer is a temporary refusal, never a 550.
#[test]
fn rcpt_asks_dovecots_userdb_who_exists() {
    if skip() {
        return;
    }
    use support::{Client, code};
    let dovecot = Dovecot::start(&["alice@example.test secret"], "");
    let dir = TempDir::new("userdb");
    let d = dir.path().to_path_buf();
    let extra = format!(
        "local_users = dovecot:{}\nmailbox_transport = lmtp:unix:{}\n",
        dovecot.path().join("run/auth-userdb").display(),
        dovecot.lmtp.display()
    );
    let config = support::without_mailboxes(&support::config_with(&d, &extra), &d);
    std::fs::write(d.join("aliases"), "postmaster: alice@example.test\n").unwrap();
    let server = support::Server::start_in(dir, &config);
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO mx.remote.test");
    assert_eq!(code(&c.cmd("MAIL FROM:<sender@remote.test>")), "250 2.1.0");
    assert_eq!(code(&c.cmd("RCPT TO:<Alice@example.test>")), "250 2.1.5");
    assert_eq!(code(&c.cmd("RCPT TO:<nobody@example.test>")), "550 5.1.1");
    assert_eq!(code(&c.cmd("RCPT TO:<postmaster@example.test>")), "250 2.1.5");
    assert_eq!(code(&c.cmd("DATA")), "354");
    assert_eq!(code(&c.cmd("Subject: known\r\n\r\nto alice\r\n.")), "250 2.0.0");
    c.cmd("QUIT");
    let log = deliver(&d.join("postern.conf"), None, &[]);
    // Both recipients are alice's one mailbox: one copy.
    assert_eq!(imap_subjects(&dovecot, "alice@example.test", "INBOX"), ["Subject: known"], "{log}");
    let conf = d.join("postern.conf");
    let check = |program: &str| {
        let out = Command::new(support::program(program)).arg("-c").arg(&conf).arg("--check").output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, said) = check("postern-smtpd");
    assert!(ok && !said.contains("nothing answers"), "{said}");
    // Dovecot gone: whether alice exists cannot be said now.
    drop(dovecot);
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO mx.remote.test");
    c.cmd("MAIL FROM:<sender@remote.test>");
    assert_eq!(code(&c.cmd("RCPT TO:<alice@example.test>")), "451 4.3.0");
    // --check says so, as a warning: Dovecot may be started after postern.
    let (ok, said) = check("postern-deliver");
    assert!(ok, "{said}");
    for key in ["local_users: unix:", "mailbox_transport: unix:"] {
        assert!(said.contains(key) && said.contains("nothing answers there now"), "{key}: {said}");
    }
}
