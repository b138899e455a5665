//! postern-deliver end to end: spool -> maildir, aliases, bounces, retries, expiry, locking.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use postern::smtp::command::BodyType;
use support::{Client, Server, TempDir, code};

const HOUR: u64 = 3600;

/// A spool, a configuration, and the maildirs of base_config (alice; postmaster -> alice).
struct Setup {
    dir: TempDir,
    conf: PathBuf,
}

impl Setup {
    fn new(extra: &str) -> Setup {
        let (dir, conf) = support::configured("deliver", &format!("min_backoff = 5m\nmax_backoff = 1h\n{extra}"));
        Setup { dir, conf }
    }

    fn alice(&self) -> PathBuf {
        self.dir.path().join("maildirs/alice")
    }

    /// Queues a message as a client would have: from, to, arrived at `arrived`.
    fn queue(&self, from: &str, to: &[&str], arrived: u64, text: &str) -> String {
        support::inject(&self.dir.path().join("spool"), from, to, arrived, BodyType::SevenBit, text.as_bytes())
    }

    /// Runs postern-deliver at time `now`; returns its log.
    fn deliver(&self, now: u64, args: &[&str]) -> String {
        support::deliver(&self.conf, Some(now), args)
    }

    fn queued(&self) -> Vec<PathBuf> {
        support::waiting(&self.dir.path().join("spool"))
    }

    fn log_of(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("spool/cur").join(format!("{id}.log"))).unwrap_or_default()
    }
}

use support::{maildir as maildir_messages, now};

/// Parses a report with Python's email package; returns "action status final-recipient" lines.
fn parse_report(message: &str) -> Vec<String> {
    let script = r#"
import email, sys
m = email.message_from_string(sys.stdin.read())
assert m.get_content_type() == 'multipart/report', m.get_content_type()
assert m.get_param('report-type') == 'delivery-status'
assert m['Auto-Submitted'] == 'auto-replied'
parts = m.get_payload()
assert [p.get_content_type() for p in parts] == ['text/plain', 'message/delivery-status', 'text/rfc822-headers'], parts
blocks = parts[1].get_payload()
assert blocks[0]['Reporting-MTA'].startswith('dns; ')
for b in blocks[1:]:
    print(b['Action'], b['Status'], b['Final-Recipient'])
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), message.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{message}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

#[test]
fn mail_accepted_by_smtpd_reaches_alices_maildir() {
    let server = Server::start("");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO client.test");
    let reply =
        c.mail("sender@remote.test", &["Alice+news@EXAMPLE.TEST"], b"Subject: hello\r\n\r\nfirst line\r\n..dot\r\n");
    assert_eq!(code(&reply), "250 2.0.0");
    let conf = server.dir.path().join("postern.conf");
    let out = Command::new(support::program("postern-deliver")).arg("-c").arg(&conf).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let delivered = maildir_messages(&server.dir.path().join("maildirs/alice"));
    assert_eq!(delivered.len(), 1, "{log}");
    let m = &delivered[0];
    assert!(
        m.starts_with(
            "Return-Path: <sender@remote.test>\nDelivered-To: alice@example.test\n\
             Authentication-Results: mail.example.test (loopback client, not checked); none\nReceived: from client.test"
        ),
        "{m}"
    );
    assert!(
        m.ends_with("Subject: hello\n\nfirst line\n.dot\n\n") || m.ends_with("Subject: hello\n\nfirst line\n.dot\n"),
        "{m:?}"
    );
    assert!(!m.contains('\r'));
    assert!(log.contains("to=<alice@example.test>, orig_to=<Alice+news@EXAMPLE.TEST>, relay=maildir"), "{log}");
    assert!(log.contains("dsn=2.0.0, status=sent"), "{log}");
    assert!(server.queued().is_empty() && support::list(&server.spool().join("cur")).is_empty(), "queue not emptied");
}

#[test]
fn aliases_fan_out_and_remote_targets_wait_in_cur() {
    let s = Setup::new("");
    let id = s.queue("sender@remote.test", &["staff@example.test"], now(), "Subject: staff\r\n\r\nhi\r\n");
    s.deliver(now(), &[]);
    assert_eq!(maildir_messages(&s.alice()).len(), 1);
    let log = s.log_of(&id);
    assert!(log.contains(" sent <alice@example.test> 2.0.0 maildir "), "{log}");
    assert!(
        log.contains(" deferred <bob@remote.test> 4.4.3 "),
        "no DNS here, so remote.test is a temporary failure: {log}"
    );
    assert_eq!(s.queued(), vec![s.dir.path().join("spool/cur").join(&id)]);
    // A second run delivers nothing twice.
    s.deliver(now(), &[]);
    assert_eq!(maildir_messages(&s.alice()).len(), 1);
}

#[test]
fn an_unknown_local_user_comes_back_to_the_sender_as_a_report() {
    let s = Setup::new("");
    let arrived = now() - 60;
    let id = s.queue(
        "alice@example.test",
        &["alice@example.test", "mallory@example.test", "|id@example.test"],
        arrived,
        "Subject: to three\r\nFrom: alice\r\n\r\nbody\r\n",
    );
    let log = s.deliver(now(), &[]);
    let mail = maildir_messages(&s.alice());
    assert_eq!(mail.len(), 2, "the message and the report: {log}");
    let report = mail.iter().find(|m| m.contains("multipart/report")).unwrap();
    assert!(report.starts_with("Return-Path: <>\n"), "{report}");
    let lines = parse_report(report);
    assert_eq!(lines, ["failed 5.1.1 rfc822; mallory@example.test", "failed 5.1.1 rfc822; |id@example.test"]);
    assert!(report.contains("Subject: to three"), "original headers are returned");
    assert!(!Path::new("/tmp/pwned").exists());
    assert!(s.queued().is_empty(), "{log}");
    assert!(log.contains(&format!("{id}: sender non-delivery notification")), "{log}");
}

#[test]
fn a_delivered_to_loop_bounces_with_5_4_6() {
    let s = Setup::new("");
    // The copy for alice already went through alice; the report comes back to the sender, alice.
    s.queue(
        "alice@example.test",
        &["alice@example.test"],
        now(),
        "Delivered-To: alice@example.test\r\nSubject: loop\r\n\r\nx\r\n",
    );
    let log = s.deliver(now(), &[]);
    let mail = maildir_messages(&s.alice());
    assert_eq!(mail.len(), 1, "{log}");
    assert_eq!(parse_report(&mail[0]), ["failed 5.4.6 rfc822; alice@example.test"]);
    assert!(s.queued().is_empty());
}

#[test]
fn a_failed_delivery_is_retried_only_after_its_backoff() {
    let s = Setup::new("");
    // A maildir whose new/ is a symlink is refused: a temporary failure.
    std::fs::create_dir_all(s.alice()).unwrap();
    let elsewhere = s.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, s.alice().join("new")).unwrap();
    let t0 = now();
    let id = s.queue("sender@remote.test", &["alice@example.test"], t0, "Subject: retry\r\n\r\nx\r\n");
    let log = s.deliver(t0, &[]);
    assert!(log.contains("dsn=4.3.0, status=deferred"), "{log}");
    assert_eq!(s.queued(), vec![s.dir.path().join("spool/cur").join(&id)]);
    std::fs::remove_file(s.alice().join("new")).unwrap();
    // Four minutes later nothing is tried; five minutes later it is delivered.
    let log = s.deliver(t0 + 4 * 60, &[]);
    assert!(!log.contains("to=<alice@example.test>"), "{log}");
    assert!(maildir_messages(&s.alice()).is_empty());
    let log = s.deliver(t0 + 5 * 60, &[]);
    assert!(log.contains("status=sent"), "{log}");
    assert_eq!(maildir_messages(&s.alice()).len(), 1);
    assert!(s.queued().is_empty());
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
fn after_the_queue_lifetime_a_deferred_message_bounces() {
    let s = Setup::new("max_queue_lifetime = 5d\ndelay_warning_time = 0\n");
    let sender_box = s.dir.path().join("maildirs/alice");
    // Deliveries to bob (a template mailbox via an alias on a dead path) keep failing.
    std::fs::write(s.dir.path().join("aliases"), "postmaster: alice\nbob: carol\n").unwrap();
    std::fs::write(
        s.dir.path().join("mailboxes"),
        format!("alice: {}/\ncarol: /proc/no/such/maildir/\n", sender_box.display()),
    )
    .unwrap();
    let t0 = now() - 5 * 24 * HOUR + 600;
    let id = s.queue("alice@example.test", &["bob@example.test"], t0, "Subject: doomed\r\n\r\nx\r\n");
    let log = s.deliver(t0, &[]);
    assert!(log.contains("status=deferred"), "{log}");
    let log = s.deliver(t0 + 5 * 24 * HOUR, &[]);
    assert!(log.contains("status=bounced"), "{log}");
    let mail = maildir_messages(&sender_box);
    assert_eq!(mail.len(), 1, "{log}");
    assert_eq!(parse_report(&mail[0]), ["failed 4.3.0 rfc822; carol@example.test"]);
    assert!(mail[0].contains("Original-Recipient: rfc822; bob@example.test"));
    assert!(s.queued().is_empty());
    assert!(s.log_of(&id).is_empty(), "the log goes with the message");
}

#[test]
fn a_delay_warning_goes_once() {
    let s = Setup::new("delay_warning_time = 4h\n");
    std::fs::write(s.dir.path().join("aliases"), "postmaster: alice\nbob: carol\n").unwrap();
    std::fs::write(
        s.dir.path().join("mailboxes"),
        format!("alice: {}/\ncarol: /proc/no/such/maildir/\n", s.alice().display()),
    )
    .unwrap();
    let t0 = now() - 5 * HOUR;
    s.queue("alice@example.test", &["bob@example.test"], t0, "Subject: slow\r\n\r\nx\r\n");
    s.deliver(t0, &[]);
    assert!(maildir_messages(&s.alice()).is_empty());
    s.deliver(t0 + 4 * HOUR, &[]);
    let mail = maildir_messages(&s.alice());
    assert_eq!(mail.len(), 1);
    assert_eq!(parse_report(&mail[0]), ["delayed 4.3.0 rfc822; carol@example.test"]);
    assert!(mail[0].contains("Will-Retry-Until: "));
    s.deliver(t0 + 5 * HOUR, &[]);
    assert_eq!(maildir_messages(&s.alice()).len(), 1, "the warning is sent once");
    assert_eq!(s.queued().len(), 1, "the message itself is still queued");
}

#[test]
fn a_failed_report_goes_to_the_postmaster_and_never_loops() {
    let s = Setup::new("");
    s.queue("", &["mallory@example.test"], now(), "Subject: a bounce that bounces\r\n\r\nx\r\n");
    let log = s.deliver(now(), &[]);
    let mail = maildir_messages(&s.alice());
    assert_eq!(mail.len(), 1, "postmaster (alice) hears of it: {log}");
    assert_eq!(parse_report(&mail[0]), ["failed 5.1.1 rfc822; mallory@example.test"]);
    // A null-sender message failing for the postmaster itself is dropped with a log line.
    let s = Setup::new("");
    std::fs::write(s.dir.path().join("aliases"), "postmaster: nobody-here\n").unwrap();
    s.queue("", &["postmaster@example.test"], now(), "x\r\n");
    let log = s.deliver(now(), &[]);
    assert!(log.contains("no report"), "{log}");
    assert!(s.queued().is_empty(), "{log}");
}

#[test]
fn two_overlapping_runs_deliver_each_message_once() {
    let s = Setup::new("");
    for n in 0..60 {
        s.queue("sender@remote.test", &["alice@example.test"], now(), &format!("Subject: {n}\r\n\r\n{n}\r\n"));
    }
    let conf = s.conf.clone();
    let runs: Vec<_> = (0..2)
        .map(|_| Command::new(support::program("postern-deliver")).arg("-c").arg(&conf).spawn().unwrap())
        .collect();
    for mut r in runs {
        assert!(r.wait().unwrap().success());
    }
    assert_eq!(maildir_messages(&s.alice()).len(), 60);
    assert!(s.queued().is_empty());
}

#[test]
fn a_message_delivered_by_another_run_since_the_listing_is_passed_over_quietly() {
    // The whole run holds its listing while it waits on a slow relay; meanwhile an instant
    // delivery (`--id`) delivers the second message, which the run then finds gone.
    let slow = support::FakeMx::start("127.0.0.1:0", |line| {
        (line == "CONNECT").then(|| std::thread::sleep(std::time::Duration::from_millis(1500)));
        None
    });
    let s = Setup::new(&format!("max_delivery_threads = 1\nrelayhost = [127.0.0.1]:{}\n", slow.addr.port()));
    s.queue("sender@remote.test", &["bob@remote.test"], now(), "Subject: slow\r\n\r\nx\r\n");
    let local = s.queue("sender@remote.test", &["alice@example.test"], now(), "Subject: local\r\n\r\nx\r\n");
    let conf = s.conf.clone();
    let whole = std::thread::spawn(move || support::deliver_with(&conf, &[], &[]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while slow.connections() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(slow.connections(), 1, "the whole run is at the relay");
    s.deliver(now(), &["--id", &local]);
    assert_eq!(maildir_messages(&s.alice()).len(), 1);
    let (status, log) = whole.join().unwrap();
    assert!(status.success(), "{log}");
    assert!(!log.contains("cannot open"), "a false warning: {log}");
    assert_eq!(slow.messages().len(), 1, "{log}");
    assert_eq!(maildir_messages(&s.alice()).len(), 1, "{log}");
    assert!(s.queued().is_empty(), "{log}");
}

#[test]
fn a_truncated_queue_file_is_put_aside_not_delivered() {
    let s = Setup::new("");
    let id = s.queue("sender@remote.test", &["alice@example.test"], now(), "Subject: whole\r\n\r\nsome text here\r\n");
    let path = s.dir.path().join("spool/new").join(&id);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 10).unwrap();
    let log = s.deliver(now(), &[]);
    assert!(log.contains("moved to corrupt/"), "{log}");
    assert!(maildir_messages(&s.alice()).is_empty());
    assert!(s.dir.path().join("spool/corrupt").join(&id).exists());
}

#[test]
fn dry_run_changes_nothing_and_id_forces_a_retry() {
    let s = Setup::new("");
    let t0 = now();
    let id = s.queue("sender@remote.test", &["alice@example.test"], t0, "Subject: x\r\n\r\nx\r\n");
    let out = s.deliver(t0, &["--dry-run"]);
    assert!(
        out.contains(&format!(
            "{id} (new): from <sender@remote.test>, 17 octets, 0 minutes old, due now: <alice@example.test>"
        )),
        "{out}"
    );
    assert!(maildir_messages(&s.alice()).is_empty());
    assert_eq!(s.queued().len(), 1);
    // Make it fail once, then force it well before its back-off ends.
    std::fs::create_dir_all(s.alice()).unwrap();
    std::os::unix::fs::symlink("/tmp", s.alice().join("new")).unwrap();
    s.deliver(t0, &[]);
    std::fs::remove_file(s.alice().join("new")).unwrap();
    s.deliver(t0 + 10, &[]);
    assert!(maildir_messages(&s.alice()).is_empty(), "still backing off");
    let out = s.deliver(t0 + 10, &["--dry-run"]);
    assert!(
        out.contains("(cur)") && out.contains("due now: nobody") && out.contains("last error: 4.3.0"),
        "the reason: {out}"
    );
    s.deliver(t0 + 10, &["--id", &id]);
    assert_eq!(maildir_messages(&s.alice()).len(), 1);
    // Held mail is named too, with how to release it.
    let held = s.queue(
        "sender@remote.test",
        &["alice@example.test"],
        t0,
        "Subject: y

y
",
    );
    let spool = postern::spool::Spool::open(&s.dir.path().join("spool")).unwrap();
    spool.hold(&postern::spool::QueueId::parse(&held).unwrap()).unwrap();
    let out = s.deliver(t0 + 20, &["--dry-run"]);
    assert!(
        out.contains(&format!(
            "{held} (hold): from <sender@remote.test>, 14 octets: held; `postern-queue release {held}`"
        )),
        "{out}"
    );
}

#[test]
fn started_as_root_with_a_user_it_delivers_as_that_user() {
    if support::skip_unless_root("deliver as another user") {
        return;
    }
    let s = Setup::new("user = nobody\n");
    let nobody = postern::sys::lookup_user("nobody").unwrap().unwrap();
    s.queue("sender@remote.test", &["alice@example.test"], now(), "Subject: x\r\n\r\nx\r\n");
    let chown = |p: &Path| std::os::unix::fs::chown(p, Some(nobody.uid), Some(nobody.gid)).unwrap();
    chown(s.dir.path());
    for entry in walk(&s.dir.path().join("spool")) {
        chown(&entry);
    }
    s.deliver(now(), &[]);
    let delivered = support::list(&s.alice().join("new"));
    assert_eq!(delivered.len(), 1);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&delivered[0]).unwrap()), nobody.uid);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for entry in support::list(dir) {
        if entry.is_dir() {
            out.extend(walk(&entry));
        } else {
            out.push(entry);
        }
    }
    out
}

#[test]
fn logs_left_without_their_message_are_swept_but_held_ones_kept() {
    let s = Setup::new("");
    let cur = s.dir.path().join("spool/cur");
    let hold = s.dir.path().join("spool/hold");
    std::fs::create_dir_all(&cur).unwrap();
    std::fs::create_dir_all(&hold).unwrap();
    let (orphan, held) = ("00000000000010000000001", "00000000000020000000002");
    std::fs::write(cur.join(format!("{orphan}.log")), "1 deferred <a@b> 4.0.0 - x\n").unwrap();
    std::fs::write(hold.join(held), "held message").unwrap();
    std::fs::write(cur.join(format!("{held}.log")), "1 deferred <a@b> 4.0.0 - x\n").unwrap();
    let log = s.deliver(now(), &[]);
    assert!(!cur.join(format!("{orphan}.log")).exists(), "{log}");
    assert!(cur.join(format!("{held}.log")).exists());
    assert!(log.contains("removed a delivery log left without its message"));
}

/// A message the server quarantined (DMARC): each maildir copy goes into the Junk folder,
/// and neither a delay warning nor a report is sent when another recipient fails, since its
/// sender is most likely forged.
#[test]
fn a_quarantined_message_goes_to_junk_and_its_failures_are_reported_to_nobody() {
    let s = Setup::new("max_queue_lifetime = 5d\ndelay_warning_time = 1h\njunk_folder = Spam\n");
    std::fs::write(s.dir.path().join("aliases"), "postmaster: alice\nbob: carol\n").unwrap();
    std::fs::write(
        s.dir.path().join("mailboxes"),
        format!("alice: {}/\ncarol: /proc/no/such/maildir/\n", s.alice().display()),
    )
    .unwrap();
    let t0 = now() - 5 * 24 * HOUR + 600;
    let envelope = postern::spool::Envelope {
        arrived: t0,
        client: Some("192.0.2.1".parse().unwrap()),
        helo: Some("client.test".into()),
        protocol: "ESMTP".into(),
        body: BodyType::SevenBit,
        smtputf8: false,
        auth: None,
        submitted: false,
        quarantine: true,
        from: postern::smtp::address::ReversePath::parse(b"alice@example.test").unwrap(),
        rcpts: ["alice@example.test", "bob@example.test"]
            .iter()
            .map(|t| postern::smtp::address::ForwardPath::parse(t.as_bytes()).unwrap())
            .collect(),
        size: 0,
        check: None,
    };
    let spool = postern::spool::Spool::open(&s.dir.path().join("spool")).unwrap();
    let id = spool.inject(&envelope, b"X-Spam: Yes\r\nSubject: phish\r\n\r\nx\r\n").unwrap().to_string();
    let log = s.deliver(t0, &[]);
    assert!(log.contains("/maildirs/alice/.Spam/new/"), "{log}");
    let log = s.deliver(t0 + 2 * HOUR, &[]);
    assert!(log.contains(&format!("{id}: no report: the message was quarantined")), "no warning: {log}");
    let log = s.deliver(t0 + 5 * 24 * HOUR, &[]);
    assert!(log.contains("status=bounced"), "{log}");
    assert!(log.contains(&format!("{id}: no report: the message was quarantined")), "{log}");
    assert!(maildir_messages(&s.alice()).is_empty(), "nothing in the inbox: no copy, no warning, no report");
    let junk = maildir_messages(&s.alice().join(".Spam"));
    assert_eq!(junk.len(), 1);
    assert!(junk[0].contains("Subject: phish"), "{}", junk[0]);
    assert!(s.queued().is_empty(), "{log}");
}
