//! SRS end to end: a stranger's message to an alias that forwards off this host leaves with
//! our SRS sender (what the next server received is read from its spool), a bounce to that
//! sender comes back and goes on to the original sender, a forged one is refused at RCPT,
//! and another SRS implementation (pysrs) reads our addresses and makes ones we take.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{Client, Server, TempDir, code, skip_unless};

const SECRET: &str = "a test secret";

/// The next server: remote.test's, with bob, relaying for loopback (so the bounce can go on
/// to origin.test through it); it keeps what it takes in its spool.
fn next_hop() -> Server {
    let dir = TempDir::new("srs-next");
    let config = support::config_with(dir.path(), "trusted_networks = 127.0.0.0/8\n")
        .replace("local_domains = example.test", "local_domains = remote.test");
    let d = dir.path().display().to_string();
    std::fs::write(dir.path().join("mailboxes"), format!("alice: {d}/maildirs/alice/\nbob: {d}/maildirs/bob/\n"))
        .unwrap();
    Server::start_in(dir, &config)
}

/// This host: example.test, `staff: alice, bob@remote.test`, everything off the host through
/// the next server, mail from 127.0.0.1 trusted (our users), from 127.0.0.4 a stranger's.
fn forwarder(next: SocketAddr) -> Server {
    let dir = TempDir::new("srs");
    std::fs::write(dir.path().join("srs-secret"), format!("{SECRET}\n")).unwrap();
    let extra = format!(
        "relayhost = [{}]:{}\ntrusted_networks = 127.0.0.1/32\nsrs_secret = {}\n",
        next.ip(),
        next.port(),
        dir.path().join("srs-secret").display()
    );
    let config = support::instant(&support::config_with(dir.path(), &extra));
    Server::start_in(dir, &config)
}

/// A connection from a stranger's address.
fn stranger(addr: SocketAddr) -> Client {
    let mut c = Client::connect_from("127.0.0.4", addr);
    assert!(c.reply().starts_with("220"));
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    c
}

/// The envelopes (`from:` and `rcpt:` lines) of what `server` has queued, once there are `n`.
fn envelopes(server: &Server, n: usize) -> Vec<String> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let files: Vec<PathBuf> = server.queued();
        if files.len() >= n || Instant::now() > until {
            return files
                .iter()
                .map(|f| {
                    let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).to_string();
                    text.lines()
                        .filter(|l| l.starts_with("from:") || l.starts_with("rcpt:"))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .collect();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn have_pysrs() -> bool {
    support::venv_has("SRS")
}

/// pysrs with our secret: `reverse ADDRESS` or `forward SENDER DOMAIN`, its answer or its error.
fn pysrs(args: &[&str]) -> String {
    // pysrs 1.0.3 still calls base64.encodestring, which Python 3.9 renamed encodebytes.
    let script = "import sys, base64\nbase64.encodestring = base64.encodebytes\nimport SRS\n\
                  s = SRS.new(secret=sys.argv[1], maxage=21, hashlength=4)\n\
                  try:\n    print(s.reverse(sys.argv[3]) if sys.argv[2] == 'reverse' else s.forward(sys.argv[3], sys.argv[4]))\n\
                  except Exception as e:\n    print('error:', repr(e))\n";
    let out =
        std::process::Command::new(support::venv_python()).args(["-c", script, SECRET]).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_run_killed_while_making_the_secret_leaves_no_half_secret() {
    let (dir, conf) = support::configured("srs-crash", "");
    let spool = dir.path().join("spool");
    let (status, out) = support::deliver_with(&conf, &[("POSTERN_CRASH_AT", "srs-secret-drafted")], &[]);
    assert!(!status.success() && out.contains("crash point srs-secret-drafted"), "{out}");
    assert!(!spool.join("srs-secret").exists());
    let drafts = |spool: &Path| support::list(spool).iter().filter(|p| p.to_string_lossy().contains(".new.")).count();
    assert_eq!(drafts(&spool), 1, "the killed run's draft");
    support::deliver(&conf, None, &[]);
    let secret = std::fs::read_to_string(spool.join("srs-secret")).unwrap();
    assert!(secret.len() == 65 && secret.trim().bytes().all(|b| b.is_ascii_hexdigit()), "{secret:?}");
    assert_eq!(drafts(&spool), 0, "swept once the secret is in place");
    support::deliver(&conf, None, &[]);
    assert_eq!(std::fs::read_to_string(spool.join("srs-secret")).unwrap(), secret, "made once, then kept");
}

#[test]
fn a_forwarded_copy_leaves_with_our_srs_sender_and_its_bounce_finds_the_original_sender() {
    let next = next_hop();
    let here = forwarder(next.addr);
    let mut c = stranger(here.addr);
    let reply = c.mail("carol@origin.test", &["staff@example.test"], b"Subject: hi\r\n\r\nforwarded\r\n");
    assert!(reply.starts_with("250"), "{reply}");

    // Alice's copy stays here with its sender; bob's left with ours.
    let got = envelopes(&next, 1);
    assert_eq!(got.len(), 1, "{}", here.log());
    let from = got[0].lines().next().unwrap().strip_prefix("from: <").unwrap().trim_end_matches('>').to_string();
    assert!(from.starts_with("SRS0=") && from.ends_with("=origin.test=carol@example.test"), "{}", got[0]);
    assert!(got[0].ends_with("rcpt: <bob@remote.test>"), "{}", got[0]);
    let alice = support::maildir(&here.dir.path().join("maildirs/alice"));
    assert!(alice.len() == 1 && alice[0].starts_with("Return-Path: <carol@origin.test>"), "{alice:?}");
    let log = here.log_with("(SRS)");
    assert!(log.contains(&format!("forwarded to <bob@remote.test> as from=<{from}> (SRS)")), "{log}");

    // Another implementation turns it back the same way.
    if !skip_unless(have_pysrs(), "pysrs is not in target/venv (make test-deps installs it)") {
        assert_eq!(pysrs(&["reverse", &from]), "carol@origin.test");
    }

    // The next server's bounce to it is taken here and goes on to carol, through the next
    // server again, with a null sender.
    let mut c = stranger(here.addr);
    let reply = c.mail("", &[&from], b"Subject: Undelivered Mail\r\n\r\nbounced\r\n");
    assert!(reply.starts_with("250"), "{reply}");
    let got = envelopes(&next, 2);
    assert!(got.iter().any(|e| e == "from: <>\nrcpt: <carol@origin.test>"), "{got:?}\n{}", here.log());

    // A forged or altered one is refused at RCPT, from a trusted client too.
    for forged in [from.replace("=carol@", "=mallory@"), "SRS0=abcd=AA=victim.test=x@example.test".to_string()] {
        for mut c in [stranger(here.addr), Client::greeted(here.addr)] {
            c.cmd("EHLO client.test");
            assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
            let reply = c.cmd(&format!("RCPT TO:<{forged}>"));
            assert_eq!(code(&reply), "550 5.1.1", "{reply}");
            assert!(reply.contains("SRS address"), "{reply}");
        }
    }
}

#[test]
fn our_users_mail_keeps_its_sender_and_addresses_another_implementation_made_are_taken() {
    let next = next_hop();
    let here = forwarder(next.addr);
    // From 127.0.0.1, which is trusted: our users' mail leaves with its own sender.
    let mut c = Client::greeted(here.addr);
    c.cmd("EHLO client.test");
    let reply = c.mail("carol@origin.test", &["staff@example.test"], b"Subject: ours\r\n\r\nours\r\n");
    assert!(reply.starts_with("250"), "{reply}");
    let got = envelopes(&next, 1);
    assert_eq!(got, ["from: <carol@origin.test>\nrcpt: <bob@remote.test>"], "{}", here.log());

    if skip_unless(have_pysrs(), "pysrs is not in target/venv (make test-deps installs it)") {
        return;
    }
    let srs0 = pysrs(&["forward", "dave@elsewhere.test", "example.test"]);
    let srs1 = pysrs(&["forward", "SRS0=abcd=AA=origin.test=erin@first.test", "example.test"]);
    assert!(srs0.starts_with("SRS0=") && srs1.starts_with("SRS1="), "{srs0} {srs1}");
    let mut c = stranger(here.addr);
    assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
    for address in [&srs0, &srs1] {
        let reply = c.cmd(&format!("RCPT TO:<{address}>"));
        assert!(reply.starts_with("250"), "{address}: {reply}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.mail_text(b"Subject: bounce\r\n\r\nback\r\n").starts_with("250"));
    let got = envelopes(&next, 2);
    let want = ["rcpt: <dave@elsewhere.test>", "rcpt: <SRS0=abcd=AA=origin.test=erin@first.test>"];
    for rcpt in want {
        assert!(got.iter().any(|e| e.contains(rcpt)), "{rcpt} in {got:?}\n{}", here.log());
    }
}
