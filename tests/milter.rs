//! Milters, as a user of postern meets them: a scripted milter on loopback for every step,
//! answer, change and failure of the protocol, and private rspamd and OpenDKIM instances from
//! Debian's packages, chained, judging real mail.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::milter::{FakeMilter, OpenDkim, Rspamd, Then, pkt, strings, usual};
use support::{Client, Server, TempDir, code, config_with, instant, list, maildir, message_of, skip_unless};

const MESSAGE: &[u8] = b"From: Bob <bob@remote.test>\r\nTo: alice@example.test\r\nSubject: hello\r\n\
    Date: Sat, 5 Dec 2026 06:00:00 +0000\r\nMessage-ID: <1@remote.test>\r\n\r\nHello Alice.\r\n..a dot\r\n";

fn start(milters: &str, extra: &str) -> Server {
    Server::start(&format!("milters = {milters}\nmilter_timeout = 2s\n{extra}"))
}

fn send(server: &Server, to: &[&str], text: &[u8]) -> String {
    let mut c = Client::greeted(server.addr);
    assert!(c.cmd("EHLO client.remote.test").starts_with("250"));
    c.open_data("bob@remote.test", to);
    let reply = c.mail_text(text);
    c.cmd("QUIT");
    reply
}

fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < until, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_step_reaches_the_milter_with_postfix_macros_and_the_message_as_queued() {
    let milter = FakeMilter::start(usual);
    let server = start(&milter.address, "");
    assert_eq!(code(&send(&server, &["alice@example.test"], MESSAGE)), "250 2.0.0");
    // QUIT follows the session's end.
    eventually("QUIT at the milter", Duration::from_secs(5), || !milter.sent(b'Q').is_empty());
    let commands: Vec<u8> =
        milter.seen.lock().unwrap().iter().map(|(c, _)| *c).filter(|c| !matches!(c, b'D' | b'L' | b'B')).collect();
    assert_eq!(String::from_utf8(commands).unwrap(), "OCHMRTNEQ");
    // The client as Postfix names it, and the macros Postfix sends.
    let connect = &milter.sent(b'C')[0];
    assert!(connect.starts_with(b"[127.0.0.1]\x004"), "{connect:?}");
    assert!(connect.ends_with(b"127.0.0.1\0"), "{connect:?}");
    for (name, value) in [
        ("j", "mail.example.test"),
        ("{daemon_name}", "postern-smtpd"),
        ("{client_addr}", "127.0.0.1"),
        ("{client_name}", "[127.0.0.1]"),
        ("_", "[127.0.0.1] [127.0.0.1]"),
        ("{mail_addr}", "bob@remote.test"),
        ("{rcpt_addr}", "alice@example.test"),
    ] {
        assert_eq!(milter.macro_value(name).as_deref(), Some(value), "{name}");
    }
    let id = milter.macro_value("i").unwrap();
    assert_eq!(milter.sent(b'H'), [b"client.remote.test\0".to_vec()]);
    assert_eq!(milter.sent(b'M'), [b"<bob@remote.test>\0".to_vec()]);
    assert_eq!(milter.sent(b'R'), [b"<alice@example.test>\0".to_vec()]);
    // Header fields as queued (our Received: with them), without the space after the colon;
    // the body as queued: CRLF, dot-unstuffed.
    let headers = milter.sent(b'L');
    assert!(headers.iter().any(|h| h.starts_with(b"Received\0from client.remote.test")), "{headers:?}");
    assert!(headers.contains(&b"Subject\0hello\0".to_vec()), "{headers:?}");
    assert_eq!(milter.sent(b'B').concat(), b"Hello Alice.\r\n.a dot\r\n");
    let queued = server.queued();
    assert_eq!(queued.len(), 1);
    assert!(queued[0].ends_with(&id));
}

/// A milter that changes everything it may at the end of the message.
fn changer(command: u8, data: &[u8]) -> Then {
    if command != b'E' {
        return usual(command, data);
    }
    Then::Send(vec![
        pkt(b'h', &strings(&["X-Filter", "seen"])),
        // Our own authserv-id: kept, since a milter wrote it, not the client.
        pkt(
            b'i',
            &[&0u32.to_be_bytes()[..], &strings(&["Authentication-Results", "mail.example.test; filter=pass"])]
                .concat(),
        ),
        pkt(b'm', &[&1u32.to_be_bytes()[..], &strings(&["Subject", "[checked] hello"])].concat()),
        pkt(b'+', &strings(&["<carol@remote.test>"])),
        pkt(b'-', &strings(&["<alice@example.test>"])),
        pkt(b'+', &strings(&["<postmaster@example.test>"])),
        pkt(b'e', &strings(&["<bounces@remote.test>"])),
        pkt(b'b', b"Cleaned\nby the filter.\r\n"),
        pkt(b'c', b""),
    ])
}

#[test]
fn changes_are_made_before_the_commit() {
    let milter = FakeMilter::start(changer);
    let server = start(&milter.address, "");
    // The client's own field under our name is removed, as without milters.
    let forged = [&b"Authentication-Results: mail.example.test; spf=pass\r\n"[..], MESSAGE].concat();
    assert_eq!(code(&send(&server, &["alice@example.test"], &forged)), "250 2.0.0");
    let queued = server.queued();
    let file = std::fs::read_to_string(&queued[0]).unwrap();
    let (envelope, message) = file.split_once("\n\n").unwrap();
    assert!(envelope.contains("from: <bounces@remote.test>\n"), "{envelope}");
    assert!(envelope.contains("rcpt: <carol@remote.test>\nrcpt: <postmaster@example.test>\n"), "{envelope}");
    assert!(!envelope.contains("alice@example.test"), "{envelope}");
    assert!(message.starts_with("Authentication-Results: mail.example.test; filter=pass\r\n"), "{message}");
    assert!(!message.contains("spf=pass"), "{message}");
    assert!(message.contains("\r\nSubject: [checked] hello\r\n"), "{message}");
    assert!(message.contains("\r\nX-Filter: seen\r\n\r\nCleaned\r\nby the filter.\r\n"), "{message}");
    assert!(message.ends_with("\r\n\r\nCleaned\r\nby the filter.\r\n"), "{message}");
    // The size and check of the file are those of the message as changed: it opens cleanly.
    let size: usize = envelope.lines().find_map(|l| l.strip_prefix("size: ")).unwrap().parse().unwrap();
    assert_eq!(size, message_of(&queued[0]).len());
    let listed = Command::new(support::program("postern-queue"))
        .arg("-c")
        .arg(server.dir.path().join("postern.conf"))
        .arg("list")
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("bounces@remote.test") && !listed.contains("corrupt"), "{listed}");
}

#[test]
fn changes_to_a_message_larger_than_memory_go_through_a_second_draft() {
    let milter = FakeMilter::start(changer);
    let server = start(&milter.address, "");
    let mut big = MESSAGE.to_vec();
    for i in 0..4000 {
        big.extend_from_slice(format!("line {i} of a long message, to be spilled into its file\r\n").as_bytes());
    }
    assert_eq!(code(&send(&server, &["alice@example.test"], &big)), "250 2.0.0");
    let queued = server.queued();
    let message = message_of(&queued[0]);
    assert!(message.ends_with(b"\r\n\r\nCleaned\r\nby the filter.\r\n"));
    assert!(list(&server.spool().join("tmp")).is_empty());
    // The body the milter saw was the whole of it, in chunks of at most 65535 octets.
    let chunks = milter.sent(b'B');
    assert!(chunks.len() >= 4 && chunks.iter().all(|c| c.len() <= 65535), "{}", chunks.len());
    assert!(chunks.concat().ends_with(b"line 3999 of a long message, to be spilled into its file\r\n"));
}

/// Killed after a held message is named in hold/ and before its fsync (crash point
/// `after-commit-name`): the client heard no 250, the message is whole in hold/, and no
/// delivery run takes it.
#[test]
fn killed_while_committing_into_hold_the_message_stays_held_and_whole() {
    let milter = FakeMilter::start(|command, data| match command {
        b'E' => Then::Send(vec![pkt(b'q', b"held\0"), pkt(b'a', b"")]),
        _ => usual(command, data),
    });
    let dir = TempDir::new("milter-hold-crash");
    let config = config_with(dir.path(), &format!("milters = {}\n", milter.address));
    let mut server = Server::start_wrapped(dir, &config, &["env", "POSTERN_CRASH_AT=after-commit-name"]);
    let reply = send(&server, &["alice@example.test"], MESSAGE);
    assert!(!reply.contains("250"), "no 250 before the fsync: {reply}");
    assert!(server.exits_within(Duration::from_secs(10)));
    let held = list(&server.spool().join("hold"));
    assert_eq!(held.len(), 1);
    assert!(message_of(&held[0]).ends_with(b"Hello Alice.\r\n.a dot\r\n"));
    let out = support::deliver(&server.dir.path().join("postern.conf"), None, &[]);
    assert!(maildir(&server.dir.path().join("maildirs/alice")).is_empty(), "{out}");
    assert_eq!(list(&server.spool().join("hold")).len(), 1, "{out}");
}

#[test]
fn refusals_discards_and_quarantine() {
    let milter = FakeMilter::start(|command, data| {
        let text = String::from_utf8_lossy(data);
        match command {
            b'M' if text.contains("later@") => Then::Send(vec![pkt(b't', b"")]),
            b'R' if text.contains("postmaster@") => Then::Send(vec![pkt(b'y', b"550 5.7.1 Blocked by the filter\0")]),
            b'L' if text.contains("please discard") => Then::Send(vec![pkt(b'd', b"")]),
            _ => usual(command, data),
        }
    });
    let server = start(&milter.address, "");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO client.remote.test");
    assert_eq!(code(&c.cmd("MAIL FROM:<later@remote.test>")), "451 4.7.1");
    assert!(c.cmd("MAIL FROM:<bob@remote.test>").starts_with("250"));
    assert_eq!(c.cmd("RCPT TO:<postmaster@example.test>"), "550 5.7.1 Blocked by the filter");
    assert!(c.cmd("RCPT TO:<alice@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let text = [&b"Subject: please discard\r\n"[..], &MESSAGE[MESSAGE.len() - 30..]].concat();
    assert_eq!(code(&c.mail_text(&text)), "250 2.0.0");
    c.cmd("QUIT");
    assert!(server.queued().is_empty());
    let log = server.log_with("milter-discard");
    assert!(log.contains("NOQUEUE: milter-reject: MAIL from unknown[127.0.0.1]: 451 4.7.1"), "{log}");
    assert!(
        log.contains("NOQUEUE: milter-reject: RCPT from unknown[127.0.0.1]: 550 5.7.1 Blocked by the filter;"),
        "{log}"
    );
    assert!(log.contains(": milter-discard: END-OF-MESSAGE from unknown[127.0.0.1]: milter triggers DISCARD"), "{log}");
}

#[test]
fn a_quarantined_message_waits_in_the_hold_queue_for_the_operator() {
    let milter = FakeMilter::start(|command, data| match command {
        b'E' => Then::Send(vec![pkt(b'q', b"suspicious attachment\0"), pkt(b'a', b"")]),
        _ => usual(command, data),
    });
    let dir = TempDir::new("milter-hold");
    let config = instant(&config_with(dir.path(), &format!("milters = {}\n", milter.address)));
    let server = Server::start_in(dir, &config);
    assert_eq!(code(&send(&server, &["alice@example.test"], MESSAGE)), "250 2.0.0");
    let held = list(&server.spool().join("hold"));
    assert_eq!(held.len(), 1, "{}", server.log());
    assert!(server.queued().is_empty());
    let log = server.log_with("milter-hold");
    assert!(
        log.contains(
            "milter-hold: END-OF-MESSAGE from unknown[127.0.0.1]: milter triggers HOLD action: suspicious attachment"
        ),
        "{log}"
    );
    // Not delivered until released; then delivered as any other.
    std::thread::sleep(Duration::from_millis(500));
    let alice = server.dir.path().join("maildirs/alice");
    assert!(maildir(&alice).is_empty());
    let conf = server.dir.path().join("postern.conf");
    let queue = |args: &[&str]| {
        let out = Command::new(support::program("postern-queue")).arg("-c").arg(&conf).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let id = held[0].file_name().unwrap().to_str().unwrap().to_string();
    let (ok, listed) = queue(&["list"]);
    assert!(ok && listed.contains(&id), "{listed}");
    let (ok, out) = queue(&["release", &id]);
    assert!(ok, "{out}");
    Command::new(support::program("postern-deliver")).arg("-c").arg(&conf).status().unwrap();
    eventually("the released message in the inbox", Duration::from_secs(10), || maildir(&alice).len() == 1);
}

#[test]
fn spam_a_milter_marks_goes_to_junk_and_is_never_bounced() {
    let milter = FakeMilter::start(|command, data| match command {
        b'E' => Then::Send(vec![
            pkt(b'h', &strings(&["X-Spam-Flag", "YES"])),
            pkt(b'h', &strings(&["X-Spam-Status", "Yes, score=16.2 required=5.0"])),
            pkt(b'a', b""),
        ]),
        _ => usual(command, data),
    });
    let dir = TempDir::new("milter-junk");
    let config = instant(&config_with(dir.path(), &format!("milters = {}\n", milter.address)));
    let server = Server::start_in(dir, &config);
    // A client's own mark marks nothing: it is the milter's that counts.
    let marked_by_client = [&b"X-Spam-Flag: YES\r\n"[..], MESSAGE].concat();
    let plain = FakeMilter::start(usual);
    let dir2 = TempDir::new("milter-nojunk");
    let config2 = instant(&config_with(dir2.path(), &format!("milters = {}\n", plain.address)));
    let server2 = Server::start_in(dir2, &config2);
    assert_eq!(code(&send(&server2, &["alice@example.test"], &marked_by_client)), "250 2.0.0");
    let inbox2 = server2.dir.path().join("maildirs/alice");
    eventually("the message in the inbox", Duration::from_secs(10), || maildir(&inbox2).len() == 1);

    assert_eq!(code(&send(&server, &["alice@example.test"], MESSAGE)), "250 2.0.0");
    let alice = server.dir.path().join("maildirs/alice");
    let junk = alice.join(".Junk");
    eventually("the spam in .Junk/", Duration::from_secs(10), || maildir(&junk).len() == 1);
    assert!(maildir(&alice).is_empty());
    let delivered = &maildir(&junk)[0];
    assert!(delivered.contains("\nX-Spam-Flag: YES\n"), "{delivered}");
    let queued = list(&server.spool().join("new")).len() + list(&server.spool().join("cur")).len();
    assert_eq!(queued, 0, "no report queued: {}", server.log());
}

/// An alias that forwards off the host forwards the spam as marked; the server there refuses
/// it, and no report goes back to the sender.
#[test]
fn spam_forwarded_by_an_alias_goes_as_marked_and_its_failure_is_not_reported() {
    let milter = FakeMilter::start(|command, data| match command {
        b'E' => Then::Send(vec![pkt(b'h', &strings(&["X-Spam-Flag", "YES"])), pkt(b'a', b"")]),
        _ => usual(command, data),
    });
    let remote = support::FakeMx::start("127.0.0.1:0", |cmd| (cmd == ".").then(|| "550 5.7.1 No spam here\r\n".into()));
    let dir = TempDir::new("milter-forward");
    let extra = format!("milters = {}\nrelayhost = [127.0.0.1]:{}\n", milter.address, remote.addr.port());
    let config = instant(&config_with(dir.path(), &extra));
    let server = Server::start_in(dir, &config);
    // staff: alice, bob@remote.test (the base aliases).
    assert_eq!(code(&send(&server, &["staff@example.test"], MESSAGE)), "250 2.0.0");
    let junk = server.dir.path().join("maildirs/alice/.Junk");
    eventually("alice's copy in .Junk/", Duration::from_secs(10), || maildir(&junk).len() == 1);
    eventually("the forwarded copy at the remote server", Duration::from_secs(10), || !remote.messages().is_empty());
    let forwarded = String::from_utf8_lossy(&remote.messages()[0]).into_owned();
    assert!(forwarded.contains("\r\nX-Spam-Flag: YES\r\n"), "{forwarded}");
    eventually("the message finished", Duration::from_secs(10), || support::waiting(&server.spool()).is_empty());
    assert_eq!(remote.messages().len(), 1, "no report was sent there either");
    let log = server.log_with("no report: the message was quarantined");
    assert!(log.contains("no report: the message was quarantined"), "{log}");
}

#[test]
fn a_milter_that_is_down_hangs_or_talks_garbage_gets_the_default_action() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let down = format!("inet:{closed}");
    for (default, want) in [("tempfail", "451 4.7.1"), ("reject", "550 5.7.1"), ("accept", "250")] {
        let server = start(&down, &format!("milter_default_action = {default}\n"));
        let mut c = Client::greeted(server.addr);
        assert_eq!(code(&c.cmd("EHLO client.remote.test")), want, "{default}");
        if default == "accept" {
            c.open_data("bob@remote.test", &["alice@example.test"]);
            assert_eq!(code(&c.mail_text(MESSAGE)), "250 2.0.0");
            assert_eq!(server.queued().len(), 1);
        } else {
            // Every later command too: the session cannot go on without its filter.
            assert_eq!(code(&c.cmd("MAIL FROM:<bob@remote.test>")), want, "{default}");
        }
        let log = server.log_with(&format!("milter {down}: "));
        assert!(log.contains(&format!("milter {down}: ")), "{log}");
    }
    // One that hangs at the end of the message, and one that answers garbage at RCPT: each
    // costs at most milter_timeout (2 s here).
    let hangs = FakeMilter::start(|command, data| if command == b'E' { Then::Hang } else { usual(command, data) });
    let server = start(&hangs.address, "");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO client.remote.test");
    c.open_data("bob@remote.test", &["alice@example.test"]);
    let started = Instant::now();
    assert_eq!(code(&c.mail_text(MESSAGE)), "451 4.7.1");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(6), "{took:?}");
    assert_eq!(code(&c.cmd("MAIL FROM:<bob@remote.test>")), "451 4.7.1");
    assert!(server.queued().is_empty());
    let garbage = FakeMilter::start(|command, data| if command == b'R' { Then::Garbage } else { usual(command, data) });
    let server = start(&garbage.address, "");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO client.remote.test");
    assert!(c.cmd("MAIL FROM:<bob@remote.test>").starts_with("250"));
    assert_eq!(code(&c.cmd("RCPT TO:<alice@example.test>")), "451 4.7.1");
    let log = server.log_with("milter_default_action = tempfail");
    assert!(log.contains("milter_default_action = tempfail"), "{log}");
}

/// rspamd as a public MX's milter, as its own integration guide sets it up, with OpenDKIM
/// (verify mode) chained after it.
#[test]
fn rspamd_and_opendkim_judge_mail_from_strangers() {
    if skip_unless(Rspamd::available(), "rspamd is not installed") {
        return;
    }
    let dir = TempDir::new("rspamd");
    let rspamd = Rspamd::start(dir.path());
    let opendkim = OpenDkim::available().then(|| OpenDkim::start(dir.path(), "mail.example.test"));
    let mut milters = rspamd.address.clone();
    if let Some(o) = &opendkim {
        milters += &format!(", {}", o.address);
    }
    let smtpd_dir = TempDir::new("rspamd-smtpd");
    let config = instant(&config_with(smtpd_dir.path(), &format!("milters = {milters}\n")));
    let server = Server::start_in(smtpd_dir, &config);
    let alice = server.dir.path().join("maildirs/alice");

    // A plain message arrives with the fields rspamd adds (and OpenDKIM's verdict).
    assert_eq!(code(&send(&server, &["alice@example.test"], MESSAGE)), "250 2.0.0", "{}", server.log());
    eventually("the plain message in the inbox", Duration::from_secs(15), || maildir(&alice).len() == 1);
    let delivered = &maildir(&alice)[0];
    assert!(delivered.contains("\nX-Spamd-Result: default: False"), "{delivered}");
    assert!(delivered.contains("\nX-Spam-Status: No, score="), "{delivered}");
    if opendkim.is_some() {
        // Under our own authserv-id, and kept: a milter wrote it, not the client.
        let ours = delivered.find("\nAuthentication-Results: mail.example.test; dkim=none").unwrap_or(usize::MAX);
        assert!(ours < delivered.find("\nReceived: ").unwrap(), "{delivered}");
    } else {
        skip_unless(false, "opendkim is not installed: rspamd alone");
    }

    // GTUBE: refused with rspamd's own reply, nothing queued.
    let gtube = gtube_message("XJS");
    let reply = send(&server, &["alice@example.test"], &gtube);
    assert_eq!(reply, "554 5.7.1 Gtube pattern", "{}", rspamd.log());
    let log = server.log_with("NOQUEUE: milter-reject: END-OF-MESSAGE from");
    assert!(log.contains("NOQUEUE: milter-reject: END-OF-MESSAGE from"), "{log}");

    // rspamd's test pattern for "add header": marked as spam, into .Junk/.
    assert_eq!(code(&send(&server, &["alice@example.test"], &gtube_message("YJS"))), "250 2.0.0");
    let junk = alice.join(".Junk");
    eventually("the spam in .Junk/", Duration::from_secs(15), || maildir(&junk).len() == 1);
    assert!(maildir(&junk)[0].contains("\nX-Spam: Yes\n"), "{}", maildir(&junk)[0]);
    assert_eq!(maildir(&alice).len(), 1);
    let left = list(&server.spool().join("new")).len() + list(&server.spool().join("cur")).len();
    assert_eq!(left, 0, "{}", server.log());
}

/// A message carrying one of rspamd's test patterns (`XJS`: reject, `YJS`: add header).
fn gtube_message(prefix: &str) -> Vec<u8> {
    format!(
        "From: Bob <bob@remote.test>\r\nTo: alice@example.test\r\nSubject: a test of the filter\r\n\
         Date: Sat, 5 Dec 2026 06:00:00 +0000\r\nMessage-ID: <{prefix}@remote.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n\
         This message tests the spam filter of this host.\r\n\r\n\
         {prefix}*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n\r\n\
         It was sent from outside the network.\r\n"
    )
    .into_bytes()
}

/// The stamp a `non_smtpd_milters` milter puts on what it sees.
fn stamper(command: u8, data: &[u8]) -> Then {
    match command {
        b'E' => Then::Send(vec![pkt(b'h', &strings(&["X-Local-Filter", "seen"])), pkt(b'a', b"")]),
        _ => usual(command, data),
    }
}

/// A milter that refuses every recipient with its own reply.
fn refuser(command: u8, data: &[u8]) -> Then {
    match command {
        b'R' => Then::Send(vec![pkt(b'y', b"550 5.7.1 Not from here\0")]),
        _ => usual(command, data),
    }
}

fn sendmail(conf: &Path, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_postern-sendmail"));
    support::run_with_input(command.args(args).env("POSTERN_CONF", conf), input)
}

#[test]
fn mail_from_sendmail_passes_the_non_smtpd_milters_only() {
    let (stamp, refuse) = (FakeMilter::start(stamper), FakeMilter::start(refuser));
    // The SMTP milters are not asked about mail from postern-sendmail.
    let extra = format!("non_smtpd_milters = {}\nmilters = {}\n", stamp.address, refuse.address);
    let (dir, conf) = support::configured("milter-sendmail", &extra);
    let out = sendmail(&conf, &["alice"], b"Subject: from cron\n\nhello\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let queued = list(&dir.path().join("spool/new"));
    assert_eq!(queued.len(), 1);
    let message = String::from_utf8(message_of(&queued[0])).unwrap();
    assert!(message.contains("\r\nX-Local-Filter: seen\r\n\r\nhello\r\n"), "{message}");
    assert!(refuse.seen.lock().unwrap().is_empty());
    // Told of a client that is this host, and of no HELO.
    assert!(stamp.sent(b'C')[0].starts_with(b"localhost\0"), "{:?}", stamp.sent(b'C'));
    assert!(stamp.sent(b'H').is_empty());
    assert_eq!(stamp.macro_value("{daemon_name}").as_deref(), Some("postern-sendmail"));
    // A `sendmail -bs` session (root's, into the queue itself) is asked the same way.
    let session = b"EHLO localhost\r\nMAIL FROM:<root@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n\
        Subject: bs\r\n\r\nhi\r\n.\r\nQUIT\r\n";
    let out = sendmail(&conf, &["-bs"], session);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("250 2.0.0 Ok: queued as"), "{said}");
    let queued = list(&dir.path().join("spool/new"));
    assert_eq!(queued.len(), 2);
    let bs = queued.iter().map(|q| String::from_utf8(message_of(q)).unwrap()).find(|m| m.contains("Subject: bs"));
    assert!(bs.is_some_and(|m| m.contains("\r\nX-Local-Filter: seen\r\n\r\nhi\r\n")));
    assert!(refuse.seen.lock().unwrap().is_empty());

    // A refusal is the caller's to hear: nothing is queued.
    let (dir, conf) =
        support::configured("milter-sendmail-refused", &format!("non_smtpd_milters = {}\n", refuse.address));
    let out = sendmail(&conf, &["alice"], b"Subject: from cron\n\nhello\n");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{said}");
    assert!(said.contains("refused by a milter: 550 5.7.1 Not from here"), "{said}");
    assert!(list(&dir.path().join("spool/new")).is_empty());
}

/// What a user without access to the queue drops into maildrop/ passes them at its pickup:
/// stamped, or, refused with nobody left to tell, held for the operator.
#[test]
fn a_picked_up_message_passes_the_non_smtpd_milters_at_its_pickup() {
    use postern::smtp::address::{ForwardPath, ReversePath};
    use postern::spool::{Envelope, QueueId};
    let (stamp, refuse) = (FakeMilter::start(stamper), FakeMilter::start(refuser));
    for (milter, delivered) in [(&stamp, true), (&refuse, false)] {
        let (dir, conf) = support::configured("milter-pickup", &format!("non_smtpd_milters = {}\n", milter.address));
        let spool = dir.path().join("spool");
        std::fs::create_dir_all(spool.join("maildrop")).unwrap();
        let id = QueueId::generate();
        let from = ReversePath::parse(b"user@example.test").unwrap();
        let to = vec![ForwardPath::parse(b"alice@example.test").unwrap()];
        let envelope = Envelope::local(support::now(), from, to, Default::default(), false);
        postern::spool::maildrop::drop_message(&spool, &id, &envelope, b"Subject: dropped\r\n\r\nhello\r\n").unwrap();
        let out = support::deliver(&conf, None, &[]);
        let alice = maildir(&dir.path().join("maildirs/alice"));
        if delivered {
            assert_eq!(alice.len(), 1, "{out}");
            assert!(alice[0].contains("\nX-Local-Filter: seen\n"), "{}", alice[0]);
        } else {
            assert!(alice.is_empty(), "{out}");
            assert_eq!(list(&spool.join("hold")).len(), 1, "{out}");
            assert!(out.contains("held: refused by a milter: 550 5.7.1 Not from here"), "{out}");
        }
        assert!(list(&spool.join("maildrop")).is_empty(), "{out}");
    }
}
