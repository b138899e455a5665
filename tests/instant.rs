//! Instant delivery: a message committed by postern-smtpd or postern-sendmail is in its
//! maildir well under a second later, with no delivery run from cron or a timer.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Client, Server, TempDir, config_with, instant, list};

/// Waits up to `limit` for a file in `maildir`/new; how long it took.
fn arrival(maildir: &Path, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if !list(&maildir.join("new")).is_empty() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

#[test]
fn mail_accepted_by_the_server_is_in_the_maildir_within_a_second() {
    let dir = TempDir::new("instant-smtpd");
    let config = instant(&config_with(dir.path(), ""));
    let server = Server::start_in(dir, &config);
    let maildir = server.dir.path().join("maildirs/alice");
    let mut client = Client::greeted(server.addr);
    client.cmd("EHLO client.test");
    let reply = client.mail("someone@remote.test", &["alice@example.test"], b"Subject: now\r\n\r\nat once\r\n");
    assert!(reply.starts_with("250 "), "{reply}");
    let took = arrival(&maildir, Duration::from_secs(5));
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(1)),
        "from the 250 to the maildir: {took:?}\n{}",
        server.log()
    );
    // The copy is recorded, then the message leaves the queue, a moment after the copy lands.
    let started = Instant::now();
    while !support::waiting(&server.spool()).is_empty() && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(support::waiting(&server.spool()).is_empty(), "delivered and removed from the queue");
}

#[test]
fn instant_delivery_off_leaves_mail_for_the_run() {
    let server = Server::start("");
    let mut client = Client::greeted(server.addr);
    client.cmd("EHLO client.test");
    assert!(client.mail("someone@remote.test", &["alice@example.test"], b"x\r\n").starts_with("250 "));
    assert_eq!(arrival(&server.dir.path().join("maildirs/alice"), Duration::from_millis(1500)), None);
    assert_eq!(support::waiting(&server.spool()).len(), 1);
}

#[test]
fn mail_from_sendmail_is_delivered_at_once_without_a_daemon() {
    let dir = TempDir::new("instant-sendmail");
    let conf = dir.path().join("postern.conf");
    std::fs::write(&conf, instant(&config_with(dir.path(), ""))).unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_postern-sendmail"))
        .arg("alice")
        .env("POSTERN_CONF", &conf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Subject: from cron\n\nhi\n").unwrap();
    // The caller's pipe is not held by the delivery child: sendmail's output ends at once.
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(started.elapsed() < Duration::from_secs(1), "sendmail returned after {:?}", started.elapsed());
    let took = arrival(&dir.path().join("maildirs/alice"), Duration::from_secs(5));
    assert!(took.is_some_and(|t| t < Duration::from_secs(1)), "{took:?}");
}

/// `instant_delivery` follows a reload: off at start, a message waits in the queue; turned
/// on by SIGHUP, the next one lands at once.
#[test]
fn a_reload_turns_instant_delivery_on() {
    let server = support::Server::start("");
    let conf = server.dir.path().join("postern.conf");
    let send = |subject: &str| {
        let mut c = support::Client::greeted(server.addr);
        c.cmd("EHLO client.test");
        c.open_data("someone@remote.test", &["alice@example.test"]);
        assert!(c.mail_text(format!("Subject: {subject}\r\n\r\nx\r\n").as_bytes()).starts_with("250 "));
    };
    let alice = server.dir.path().join("maildirs/alice");
    send("waits");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(support::maildir(&alice).is_empty(), "instant delivery is off");
    std::fs::write(&conf, support::instant(&std::fs::read_to_string(&conf).unwrap())).unwrap();
    std::process::Command::new("kill").arg("-HUP").arg(server.pid().to_string()).status().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !server.log().contains("reloaded ") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    send("at once");
    while !support::maildir(&alice).iter().any(|m| m.contains("Subject: at once"))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(support::maildir(&alice).iter().any(|m| m.contains("Subject: at once")), "{}", server.log());
}

/// The server and every process it started, stopped first so that none starts another,
/// then killed with SIGKILL, as a crash or an OOM kill of the whole group leaves them.
fn kill_everything(server: Server) -> TempDir {
    let pid = server.pid();
    let signal = |sig: &str, pid: u32| {
        let _ = Command::new("kill").arg(sig).arg(pid.to_string()).status();
    };
    signal("-STOP", pid);
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let below = support::children(all[i]);
        below.iter().for_each(|&c| signal("-STOP", c));
        all.extend(below);
        i += 1;
    }
    all[1..].iter().for_each(|&c| signal("-KILL", c));
    server.kill9()
}

/// The crash the queue's copies are made for: the server and its deliveries in flight are
/// killed at once, three times, under load. Every acknowledged message reaches alice's
/// maildir exactly once: a copy made but not yet recorded is found by the next run under
/// the name its run noted, not made a second time (doc/queue.md).
#[test]
fn killed_with_deliveries_in_flight_nothing_is_lost_or_copied_twice() {
    let mut dir = TempDir::new("instant-kill");
    let config = instant(&config_with(dir.path(), "max_connections = 100\nmax_per_ip = 100\n"));
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    for round in 0..3 {
        let server = Server::start_in(dir, &config);
        let addr = server.addr;
        let stop = Instant::now() + Duration::from_millis(1200);
        let clients: Vec<_> = (0..8)
            .map(|t| {
                let acknowledged = std::sync::Arc::clone(&acknowledged);
                std::thread::spawn(move || {
                    let mut c = Client::greeted(addr);
                    let mut say = |line: &str| {
                        let _ = c.stream.write_all(line.as_bytes());
                        c.reply()
                    };
                    say("EHLO crash.test\r\n");
                    for n in 0..5000 {
                        if Instant::now() > stop + Duration::from_secs(5) {
                            return;
                        }
                        let subject = format!("r{round}-t{t}-n{n}");
                        let sent = say("MAIL FROM:<a@remote.test>\r\n").starts_with("250")
                            && say("RCPT TO:<alice@example.test>\r\n").starts_with("250")
                            && say("DATA\r\n").starts_with("354")
                            && say(&format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n")).starts_with("250 ");
                        if !sent {
                            return;
                        }
                        acknowledged.lock().unwrap().push(subject);
                    }
                })
            })
            .collect();
        std::thread::sleep(stop - Instant::now());
        dir = kill_everything(server);
        for c in clients {
            c.join().unwrap();
        }
    }
    // What the kills left in the queue goes in one whole run.
    support::deliver(&dir.path().join("postern.conf"), None, &[]);
    assert!(support::waiting(&dir.path().join("spool")).is_empty());
    let mut copies = std::collections::HashMap::<String, usize>::new();
    for message in support::maildir(&dir.path().join("maildirs/alice")) {
        let subject = message.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or("").to_string();
        *copies.entry(subject).or_default() += 1;
    }
    let acknowledged = acknowledged.lock().unwrap();
    assert!(acknowledged.len() > 100, "too few messages before the kills: {}", acknowledged.len());
    let lost: Vec<&String> = acknowledged.iter().filter(|s| !copies.contains_key(*s)).collect();
    let twice: Vec<(&String, &usize)> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(lost.is_empty(), "{} acknowledged messages lost: {lost:?}", lost.len());
    assert!(twice.is_empty(), "{} messages copied more than once: {twice:?}", twice.len());
}
